//! PID 1's VLAN handling against the real kernel, inside a network namespace this test creates:
//! a live change from a plain veth link (the address on the node's bridge over it) to VLAN 42 on
//! it (a tagged link on the uplink, beside the bridge, with the address; the old address gone,
//! the uplink still the bridge's port), and back (the VLAN link this node created is deleted,
//! the address on the bridge again). Needs the host
//! kernel's 8021q support as well as what `netns_static` needs; otherwise reports itself
//! skipped. (The appliance kernel's VLAN path is also checked on the wire by the appliance
//! suite's `live` scenario.)

mod common;

use std::time::Duration;

use common::{cfg, in_namespace, ip};
use init::netlive;

fn body() -> Result<(), String> {
    if let Err(e) = ip(&[
        "link", "add", "link", "cv0", "name", "probe.9", "type", "vlan", "id", "9",
    ]) {
        return Err(format!(
            "skipped: this kernel has no VLAN support: {}",
            e.trim()
        ));
    }
    ip(&["link", "del", "probe.9"])?;
    let t = Duration::from_secs(2);
    netlive::apply(&cfg("cv0", None, "10.77.0.2/24 10.77.0.1"), t)?;
    let s = netlive::replace(&cfg("cv0", Some(42), "10.78.0.2/24 10.78.0.1"), t)?;
    assert_eq!(s.link, "cv0.42");
    let vlan = ip(&["-d", "link", "show", "cv0.42"])?;
    assert!(vlan.contains("vlan protocol 802.1Q id 42"), "{vlan}");
    assert!(vlan.contains("cv0.42@cv0"), "{vlan}");
    assert_eq!(s.bridge, None, "the VLAN link holds the address itself");
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "cv0.42"])?.contains("10.78.0.2/24"));
    assert!(!ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?.contains("10.77.0.2"));
    assert!(ip(&["link", "show", "cv0"])?.contains("master cairn0"));
    let routes = ip(&["-4", "route", "show", "default"])?;
    assert!(routes.contains("via 10.78.0.1 dev cv0.42"), "{routes}");

    netlive::replace(&cfg("cv0", None, "10.77.0.3/24"), t)?;
    assert!(
        ip(&["link", "show", "cv0.42"]).is_err(),
        "cv0.42 still exists"
    );
    assert!(ip(&["-4", "-o", "addr", "show", "dev", "cairn0"])?.contains("10.77.0.3/24"));
    Ok(())
}

#[test]
fn vlan_changes_live_in_a_namespace() {
    in_namespace(body);
}
