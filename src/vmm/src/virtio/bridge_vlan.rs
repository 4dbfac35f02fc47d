//! Puts a tap's bridge port on one 802.1Q VLAN, untagged towards the guest (what Proxmox's
//! `tag=` does on a VLAN-aware bridge), over rtnetlink: VLAN filtering on for the bridge
//! (`ip link set BR type bridge vlan_filtering 1`), every VLAN off the port
//! (`bridge vlan del dev TAP vid 1-4094`), then the one VLAN as the port's PVID, egress
//! untagged (`bridge vlan add dev TAP vid N pvid untagged`). The messages are the ones
//! iproute2 sends for those commands, built by hand like `init::netlink` (vmm does not depend
//! on init).
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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const AF_BRIDGE: u8 = 7;
const IFLA_LINKINFO: u16 = 18;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_BR_VLAN_FILTERING: u16 = 7;
const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
const BRIDGE_VLAN_INFO_PVID: u16 = 0x2;
const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 0x4;
const BRIDGE_VLAN_INFO_RANGE_BEGIN: u16 = 0x8;
const BRIDGE_VLAN_INFO_RANGE_END: u16 = 0x10;
/// Lowest and highest VLAN id that names a network (802.1Q reserves 0 and 4095).
pub const MIN_VLAN_ID: u16 = 1;
pub const MAX_VLAN_ID: u16 = 4094;
/// Replies read per request before giving up on its ACK (each read may hold several).
const MAX_REPLY_READS: usize = 16;

/// One rtnetlink request: header, `ifinfomsg`, attributes (each 4-byte aligned). Nests are
/// written without NLA_F_NESTED, as iproute2 writes them.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    fn new(kind: u16, family: u8, index: u32) -> Msg {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set when sent
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
                                                    // ifinfomsg: family, pad, type, index, flags, change.
        buf.extend_from_slice(&[family, 0, 0, 0]);
        buf.extend_from_slice(&index.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        // Payloads here are a few bytes; the u16 length cannot overflow.
        let len = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn vlan_info(&mut self, flags: u16, vid: u16) -> &mut Self {
        let mut p = [0u8; 4];
        p[..2].copy_from_slice(&flags.to_ne_bytes());
        p[2..].copy_from_slice(&vid.to_ne_bytes());
        self.attr(IFLA_BRIDGE_VLAN_INFO, &p)
    }

    fn begin_nest(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self
    }

    fn end_nest(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `ip link set <bridge> type bridge vlan_filtering 1` (a no-op when it is on already).
fn filtering_on_msg(bridge: u32) -> Msg {
    let mut m = Msg::new(RTM_NEWLINK, 0, bridge);
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
    let mut m = Msg::new(RTM_DELLINK, AF_BRIDGE, port);
    m.begin_nest(IFLA_AF_SPEC)
        .vlan_info(BRIDGE_VLAN_INFO_RANGE_BEGIN, MIN_VLAN_ID)
        .vlan_info(BRIDGE_VLAN_INFO_RANGE_END, MAX_VLAN_ID)
        .end_nest();
    m
}

/// `bridge vlan add dev <port> vid <vid> pvid untagged`.
fn access_vlan_msg(port: u32, vid: u16) -> Msg {
    let mut m = Msg::new(RTM_SETLINK, AF_BRIDGE, port);
    m.begin_nest(IFLA_AF_SPEC)
        .vlan_info(BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED, vid)
        .end_nest();
    m
}

struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sends one request and waits for its ACK (or the kernel's error).
    fn request(&mut self, msg: Msg) -> io::Result<()> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let bytes = msg.finish(seq);
        // SAFETY: `bytes` is valid for reads of its length for the duration of the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        for _ in 0..MAX_REPLY_READS {
            // SAFETY: `buf` is valid for writes of its whole length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
            if let Some(r) = ack_of(&buf[..n.min(buf.len())], seq)? {
                return r;
            }
        }
        Err(io::Error::other("no netlink ACK"))
    }
}

/// The answer to request `seq` in one read of replies, if it is there: Ok(()) for an ACK, the
/// kernel's errno otherwise.
fn ack_of(buf: &[u8], seq: u32) -> io::Result<Option<io::Result<()>>> {
    let word = |at: usize| -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&buf[at..at + 4]);
        u32::from_ne_bytes(w)
    };
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let len = word(off) as usize;
        if len < 16 || len > buf.len() - off {
            return Err(io::Error::other("malformed netlink reply"));
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if kind == NLMSG_ERROR && word(off + 8) == seq && len >= 20 {
            let err = word(off + 16) as i32;
            return Ok(Some(if err == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(err.saturating_neg()))
            }));
        }
        off += align4(len);
    }
    Ok(None)
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
    let mut nl = Netlink::open().map_err(|e| format!("netlink socket: {e}"))?;
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

    fn reply(kind: u16, seq: u32, err: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&err.to_ne_bytes());
        b.extend_from_slice(&[0; 16]); // the request's header, echoed
        b
    }

    #[test]
    fn acks_are_matched_by_sequence_and_bad_replies_refused() {
        assert!(ack_of(&reply(NLMSG_ERROR, 4, 0), 4)
            .unwrap()
            .unwrap()
            .is_ok());
        let e = ack_of(&reply(NLMSG_ERROR, 4, -libc::EOPNOTSUPP), 4)
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
        // Another request's answer, or not an answer at all: keep reading.
        assert!(ack_of(&reply(NLMSG_ERROR, 3, 0), 4).unwrap().is_none());
        assert!(ack_of(&reply(RTM_NEWLINK, 4, 0), 4).unwrap().is_none());
        // Two in one read: the second is ours.
        let mut two = reply(NLMSG_ERROR, 3, 0);
        two.extend(reply(NLMSG_ERROR, 4, -libc::ENODEV));
        let e = ack_of(&two, 4).unwrap().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        // A length past the end, or shorter than a header: an error, not a panic.
        let mut long = reply(NLMSG_ERROR, 4, 0);
        long[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(ack_of(&long, 4).is_err());
        let mut short = reply(NLMSG_ERROR, 4, 0);
        short[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(ack_of(&short, 4).is_err());
        // A truncated tail shorter than a header is ignored.
        assert!(ack_of(&[0; 10], 4).unwrap().is_none());
    }

    #[test]
    fn reserved_vlan_ids_are_refused_before_any_request() {
        for vid in [0, 4095] {
            let e = set_access_vlan(1, "br0", 2, "tap0", vid).unwrap_err();
            assert!(e.contains("from 1 to 4094"), "{e}");
        }
    }
}
