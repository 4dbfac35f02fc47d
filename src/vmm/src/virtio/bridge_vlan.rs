//! Puts a tap's bridge port on one 802.1Q VLAN, untagged towards the guest (what Proxmox's
//! `tag=` does on a VLAN-aware bridge), over rtnetlink: VLAN filtering on for the bridge
//! (`ip link set BR type bridge vlan_filtering 1`), every VLAN off the port
//! (`bridge vlan del dev TAP vid 1-4094`), then the one VLAN as the port's PVID, egress
//! untagged (`bridge vlan add dev TAP vid N pvid untagged`). The messages are the ones
//! iproute2 sends for those commands, framed and sent by `rtnl` (as `init::netlink`'s are).
//!
//! Turning filtering on does not move the bridge's other ports: the kernel gives every port
//! the bridge's default PVID (1) untagged when it joins, filtering or not, so NICs without a
//! VLAN and an untagged uplink keep talking to each other as before. Frames an uplink carries
//! tagged need that VLAN on the uplink (`bridge vlan add dev UPLINK vid N`), the operator's
//! choice: this module never touches ports other than the tap it is given.
//!
//! Must never: leave a port on a VLAN other than the one asked for without an error (the tap
//! stays down then and the VM does not start), or assume a request worked without the
//! kernel's ACK.

use rtnl::{vlan_info, Msg, Socket, IFLA_AF_SPEC, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO};
use rtnl::{AF_BRIDGE, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED};
use rtnl::{RTM_DELLINK, RTM_NEWLINK, RTM_SETLINK};

const IFLA_BR_VLAN_FILTERING: u16 = 7;
/// Lowest and highest VLAN id that names a network (802.1Q reserves 0 and 4095).
pub const MIN_VLAN_ID: u16 = 1;
pub const MAX_VLAN_ID: u16 = 4094;
/// A link request on interface `index` of address `family` (no flags changed). Nests are
/// written without NLA_F_NESTED, as iproute2 writes them.
fn link_msg(kind: u16, family: u8, index: u32) -> Msg {
    let mut m = Msg::new(kind, 0);
    m.raw(&rtnl::ifinfomsg(family, index, 0, 0));
    m
}

/// `ip link set <bridge> type bridge vlan_filtering 1` (a no-op when it is on already).
fn filtering_on_msg(bridge: u32) -> Msg {
    let mut m = link_msg(RTM_NEWLINK, 0, bridge);
    m.begin_nest(IFLA_LINKINFO)
        .attr(IFLA_INFO_KIND, b"bridge")
        .begin_nest(IFLA_INFO_DATA)
        .attr(IFLA_BR_VLAN_FILTERING, &[1])
        .end_nest()
        .end_nest();
    m
}

/// `bridge vlan del dev <port> vid 1-4094`: the kernel skips VLANs the port does not have.
fn all_vlans_off_msg(port: u32) -> Msg {
    rtnl::port_vlan_range_msg(RTM_DELLINK, port, MIN_VLAN_ID, MAX_VLAN_ID)
}

/// `bridge vlan add dev <port> vid <vid> pvid untagged`.
fn access_vlan_msg(port: u32, vid: u16) -> Msg {
    let mut m = link_msg(RTM_SETLINK, AF_BRIDGE, port);
    m.begin_nest(IFLA_AF_SPEC);
    vlan_info(
        &mut m,
        BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED,
        vid,
    )
    .end_nest();
    m
}

/// Puts `tap` (a port of `bridge_name`, interface indexes `port` and `bridge`) on VLAN `vid`
/// only, as its PVID, untagged; turns VLAN filtering on on the bridge first. Errors say what
/// the operator can do about them.
pub(crate) fn set_access_vlan(
    bridge: u32,
    bridge_name: &str,
    port: u32,
    tap: &str,
    vid: u16,
) -> Result<(), String> {
    if !(MIN_VLAN_ID..=MAX_VLAN_ID).contains(&vid) {
        return Err(format!(
            "VLAN id {vid} must be from {MIN_VLAN_ID} to {MAX_VLAN_ID}"
        ));
    }
    let mut nl = Socket::open().map_err(|e| format!("netlink socket: {e}"))?;
    nl.request(filtering_on_msg(bridge)).map_err(|e| {
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            format!(
                "cannot put tap {tap} on VLAN {vid}: this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING), so bridge {bridge_name} cannot keep VLANs apart"
            )
        } else {
            format!("cannot turn VLAN filtering on on bridge {bridge_name}: {e}")
        }
    })?;
    nl.request(all_vlans_off_msg(port))
        .map_err(|e| format!("cannot take tap {tap} off the default VLAN of {bridge_name}: {e}"))?;
    nl.request(access_vlan_msg(port, vid))
        .map_err(|e| format!("cannot put tap {tap} on VLAN {vid} of bridge {bridge_name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnl::IFLA_BRIDGE_VLAN_INFO;
    use rtnl::{NLM_F_ACK, NLM_F_REQUEST};

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The header and ifinfomsg every message starts with.
    fn head(b: &[u8], kind: u16, family: u8, index: u32) {
        assert_eq!(u32_at(b, 0) as usize, b.len(), "length patched");
        assert_eq!(b.len() % 4, 0, "aligned");
        assert_eq!(u16_at(b, 4), kind);
        assert_eq!(u16_at(b, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(b, 8), 9, "sequence");
        assert_eq!(b[16], family);
        assert_eq!(u32_at(b, 20), index);
        assert_eq!(&b[24..32], &[0; 8], "flags and change mask untouched");
    }

    // The layouts below are what `strace -e sendmsg` shows iproute2 6.1 sending for the same
    // commands (lengths 44, 52 and 60 bytes).

    #[test]
    fn access_vlan_is_a_pvid_untagged_vlan_info_in_af_spec() {
        let b = access_vlan_msg(3, 10).finish(9);
        assert_eq!(b.len(), 44);
        head(&b, RTM_SETLINK, AF_BRIDGE, 3);
        assert_eq!((u16_at(&b, 32), u16_at(&b, 34)), (12, IFLA_AF_SPEC));
        assert_eq!((u16_at(&b, 36), u16_at(&b, 38)), (8, IFLA_BRIDGE_VLAN_INFO));
        assert_eq!((u16_at(&b, 40), u16_at(&b, 42)), (0x6, 10), "flags, vid");
    }

    #[test]
    fn all_vlans_off_is_a_1_to_4094_range_delete() {
        let b = all_vlans_off_msg(3).finish(9);
        assert_eq!(b.len(), 52);
        head(&b, RTM_DELLINK, AF_BRIDGE, 3);
        assert_eq!((u16_at(&b, 32), u16_at(&b, 34)), (20, IFLA_AF_SPEC));
        assert_eq!((u16_at(&b, 36), u16_at(&b, 38)), (8, IFLA_BRIDGE_VLAN_INFO));
        assert_eq!((u16_at(&b, 40), u16_at(&b, 42)), (0x8, 1));
        assert_eq!((u16_at(&b, 44), u16_at(&b, 46)), (8, IFLA_BRIDGE_VLAN_INFO));
        assert_eq!((u16_at(&b, 48), u16_at(&b, 50)), (0x10, 4094));
    }

    #[test]
    fn filtering_on_is_a_bridge_linkinfo_change() {
        let b = filtering_on_msg(5).finish(9);
        assert_eq!(b.len(), 60);
        head(&b, RTM_NEWLINK, 0, 5);
        assert_eq!((u16_at(&b, 32), u16_at(&b, 34)), (28, IFLA_LINKINFO));
        assert_eq!((u16_at(&b, 36), u16_at(&b, 38)), (10, IFLA_INFO_KIND));
        assert_eq!(&b[40..46], b"bridge");
        assert_eq!((u16_at(&b, 48), u16_at(&b, 50)), (12, IFLA_INFO_DATA));
        assert_eq!(
            (u16_at(&b, 52), u16_at(&b, 54)),
            (5, IFLA_BR_VLAN_FILTERING)
        );
        assert_eq!(b[56], 1);
    }

    #[test]
    fn reserved_vlan_ids_are_refused_before_any_request() {
        for vid in [0, 4095] {
            let e = set_access_vlan(1, "br0", 2, "tap0", vid).unwrap_err();
            assert!(e.contains("from 1 to 4094"), "{e}");
        }
    }
}
