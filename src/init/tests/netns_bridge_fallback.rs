//! When PID 1 cannot put its bridge over the uplink, it configures the uplink directly and
//! logs why, inside a network namespace this test creates: an uplink that cannot be a bridge
//! port (itself a bridge: the kernel refuses bridges of bridges) gets the address itself, and
//! the bridge made for it is deleted again; a link named cairn0 that the node did not make is
//! never taken over nor removed. Either way the node has no bridge to offer VM NICs. Needs what
//! `netns_static` needs and bridges in the kernel; otherwise reports itself skipped.

mod common;

use std::time::Duration;

use common::{cfg, in_namespace, ip};
use init::netlive;

/// Whether a log line since `after` contains `what`.
fn logged(after: u64, what: &str) -> bool {
    init::log::recent(after, 10_000)
        .iter()
        .any(|l| l.text.contains(what))
}

fn last_seq() -> u64 {
    init::log::recent(0, 100_000)
        .last()
        .map(|l| l.seq)
        .unwrap_or(0)
}

fn body() -> Result<(), String> {
    if let Err(e) = ip(&["link", "add", "up0", "type", "bridge"]) {
        return Err(format!("skipped: this kernel has no bridges: {}", e.trim()));
    }
    let t = Duration::from_secs(2);

    // up0 is a bridge: cairn0 is made, cannot take it as a port, and goes again.
    let before = last_seq();
    let s = netlive::apply(&cfg("up0", None, "10.77.0.2/24 10.77.0.1"), t)?;
    assert_eq!(s.link, "up0");
    assert_eq!(s.bridge, None);
    assert_eq!(netlive::bridge(), None);
    assert!(
        logged(
            before,
            "network: no bridge cairn0 over up0: make up0 a port of cairn0"
        ),
        "{:?}",
        init::log::recent(before, 100)
    );
    assert!(logged(before, "configuring up0 directly"));
    assert!(
        ip(&["link", "show", "cairn0"]).is_err(),
        "cairn0 left behind"
    );
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "up0"])?.contains("10.77.0.2/24"));
    let routes = ip(&["-4", "route", "show", "default"])?;
    assert!(routes.contains("via 10.77.0.1 dev up0"), "{routes}");

    // Someone else's link named cairn0: left alone, cv0 configured directly.
    ip(&[
        "link", "add", "cairn0", "type", "veth", "peer", "name", "cairn0p",
    ])?;
    let before = last_seq();
    let s = netlive::replace(&cfg("cv0", None, "10.78.0.2/24 10.78.0.1"), t)?;
    assert_eq!((s.link.as_str(), s.bridge.as_deref()), ("cv0", None));
    assert!(logged(
        before,
        "no bridge cairn0 over cv0: a link named cairn0 exists that this node did not make"
    ));
    let other = ip(&["-d", "link", "show", "cairn0"])?;
    assert!(other.contains("veth"), "{other}");
    assert!(!ip(&["link", "show", "cv0"])?.contains("master"));
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "cv0"])?.contains("10.78.0.2/24"));
    assert!(!ip(&["-4", "-o", "addr", "show", "dev", "up0"])?.contains("10.77.0.2"));
    assert!(ip(&["-4", "route", "show", "default"])?.contains("via 10.78.0.1 dev cv0"));
    assert_eq!(netlive::bridge(), None);
    Ok(())
}

#[test]
fn without_its_bridge_the_node_configures_the_uplink_directly_and_says_why() {
    in_namespace(body);
}
