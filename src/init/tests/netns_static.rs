//! PID 1's live network changes against the real kernel, inside a network namespace this test
//! creates: a static address with a gateway and DNS for a veth link (held by the node's bridge
//! over it), a live change to another address (the first address and route must be gone), and
//! a change that cannot work (the previous configuration must come back). Needs CAP_SYS_ADMIN/CAP_NET_ADMIN and `ip`
//! (iproute2); without them it reports itself skipped.

mod common;

use std::time::Duration;

use common::{cfg, in_namespace, ip};
use init::netlive;

fn body() -> Result<(), String> {
    let t = Duration::from_secs(2);
    let s = netlive::apply(&cfg("cv0", None, "10.77.0.2/24 10.77.0.1 10.77.0.53"), t)?;
    assert_eq!(s.link, "cv0");
    assert_eq!(s.bridge.as_deref(), Some("cairn0"));
    assert_eq!(s.addr, Some(("10.77.0.2".parse().unwrap(), 24)));
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?.contains("10.77.0.2/24"));
    assert!(ip(&["-4", "route", "show", "default"])?.contains("via 10.77.0.1 dev cairn0"));
    let resolv = std::fs::read_to_string(
        std::env::temp_dir().join(format!("cairn-netns-{}/resolv.conf", std::process::id())),
    )
    .map_err(|e| e.to_string())?;
    assert!(resolv.contains("nameserver 10.77.0.53"), "{resolv}");

    // Live change: the old address and route are gone, the new ones are there.
    let s = netlive::replace(&cfg("cv0", None, "10.78.0.2/16 10.78.0.1"), t)?;
    assert_eq!(s.addr, Some(("10.78.0.2".parse().unwrap(), 16)));
    let addrs = ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?;
    assert!(addrs.contains("10.78.0.2/16"), "{addrs}");
    assert!(!addrs.contains("10.77.0.2"), "{addrs}");
    let routes = ip(&["-4", "route", "show", "default"])?;
    assert!(routes.contains("via 10.78.0.1 dev cairn0"), "{routes}");
    assert!(!routes.contains("10.77.0.1"), "{routes}");

    // A change that cannot be applied (no such link): an error, and the previous one is back.
    let e = netlive::replace(&cfg("nope0", None, "10.79.0.2/24"), t).unwrap_err();
    assert!(e.contains("no link nope0"), "{e}");
    assert!(e.contains("previous configuration was restored"), "{e}");
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?.contains("10.78.0.2/16"));
    assert!(ip(&["-4", "route", "show", "default"])?.contains("via 10.78.0.1 dev cairn0"));
    assert_eq!(
        netlive::status().unwrap().addr,
        Some(("10.78.0.2".parse().unwrap(), 16))
    );
    Ok(())
}

#[test]
fn static_address_changes_live_in_a_namespace() {
    in_namespace(body);
}
