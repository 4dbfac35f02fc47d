//! rtnetlink over a raw NETLINK_ROUTE socket, shared by the node's own network set-up (`init`)
//! and the VMM's tap wiring (`vmm`): a request builder (header, fixed part, 4-byte aligned
//! attributes and nests) and a socket that sends one request at a time and waits for the
//! kernel's answer to it. The requests themselves live with their users; this crate knows only
//! the framing, built by hand to keep dependencies small.
//!
//! Must never: report a request as done without the kernel's ACK for its sequence number, or
//! panic on a malformed reply.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLMSG_ERROR: u16 = 2;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// Marks an attribute as a nest; iproute2 leaves it out for some (the kernel accepts both).
pub const NLA_F_NESTED: u16 = 0x8000;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_SETLINK: u16 = 19;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_AF_SPEC: u16 = 26;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;

/// Replies read per request before giving up on its ACK (each read may hold several).
const MAX_REPLY_READS: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One request being built: header, fixed part, attributes (each 4-byte aligned).
#[derive(Debug)]
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// A request of `kind` with `flags` (REQUEST and ACK are always added); the sequence
    /// number is set when it is sent.
    pub fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, patched in finish()
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends bytes as they are (a fixed struct), padded to 4 bytes.
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Appends one attribute. Payloads here are a few bytes: the u16 length cannot overflow.
    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.raw(payload)
    }

    /// Opens a nest of type `kind` as given (add [`NLA_F_NESTED`] to mark it); attributes
    /// up to the matching [`Msg::end_nest`] go inside.
    pub fn begin_nest(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self
    }

    pub fn end_nest(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The bytes to send, with the length and the sequence number patched in.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg`: family, interface index, flags and the mask of flags to change.
pub fn ifinfomsg(family: u8, index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = family;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// Address family of bridge requests (`PF_BRIDGE`).
pub const AF_BRIDGE: u8 = 7;
/// `IFLA_AF_SPEC` attribute holding one `struct bridge_vlan_info`.
pub const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
pub const BRIDGE_VLAN_INFO_PVID: u16 = 0x2;
pub const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 0x4;
pub const BRIDGE_VLAN_INFO_RANGE_BEGIN: u16 = 0x8;
pub const BRIDGE_VLAN_INFO_RANGE_END: u16 = 0x10;

/// Appends one `struct bridge_vlan_info` attribute (flags, VLAN id).
pub fn vlan_info(m: &mut Msg, flags: u16, vid: u16) -> &mut Msg {
    let mut p = [0u8; 4];
    p[..2].copy_from_slice(&flags.to_ne_bytes());
    p[2..].copy_from_slice(&vid.to_ne_bytes());
    m.attr(IFLA_BRIDGE_VLAN_INFO, &p)
}

/// `bridge vlan add|del dev <port> vid <first>-<last>` as iproute2 sends it: `kind`
/// RTM_SETLINK adds the range to the bridge port with interface index `port`, RTM_DELLINK
/// takes it off.
pub fn port_vlan_range_msg(kind: u16, port: u32, first: u16, last: u16) -> Msg {
    let mut m = Msg::new(kind, 0);
    m.raw(&ifinfomsg(AF_BRIDGE, port, 0, 0))
        .begin_nest(IFLA_AF_SPEC);
    vlan_info(&mut m, BRIDGE_VLAN_INFO_RANGE_BEGIN, first);
    vlan_info(&mut m, BRIDGE_VLAN_INFO_RANGE_END, last).end_nest();
    m
}

/// An open rtnetlink socket.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
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
        Ok(Socket { fd, seq: 1 })
    }

    /// Sends one request and waits for its ACK (or the kernel's error).
    pub fn request(&mut self, msg: Msg) -> io::Result<()> {
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
pub fn ack_of(buf: &[u8], seq: u32) -> io::Result<Option<io::Result<()>>> {
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

/// Interface index of a link in the calling thread's network namespace (if_nametoindex, not
/// sysfs: /sys shows the namespace it was mounted in, which need not be ours).
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "link name with a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    // Checked against what iproute2 sends for `bridge vlan add dev PORT vid 2-4094` (init puts
    // that range on its bridge's uplink port; this host's kernel refuses it, so its netns test
    // cannot check the bytes; vmm's range delete is the same layout as RTM_DELLINK).
    #[test]
    fn port_vlans_are_a_range_in_af_spec() {
        let b = port_vlan_range_msg(RTM_SETLINK, 3, 2, 4094).finish(9);
        assert_eq!(b.len(), 52);
        assert_eq!(u16_at(&b, 4), RTM_SETLINK);
        assert_eq!(b[16], AF_BRIDGE);
        assert_eq!(u32::from_ne_bytes([b[20], b[21], b[22], b[23]]), 3);
        assert_eq!((u16_at(&b, 32), u16_at(&b, 34)), (20, IFLA_AF_SPEC));
        assert_eq!((u16_at(&b, 36), u16_at(&b, 38)), (8, IFLA_BRIDGE_VLAN_INFO));
        assert_eq!((u16_at(&b, 40), u16_at(&b, 42)), (0x8, 2));
        assert_eq!((u16_at(&b, 44), u16_at(&b, 46)), (8, IFLA_BRIDGE_VLAN_INFO));
        assert_eq!((u16_at(&b, 48), u16_at(&b, 50)), (0x10, 4094));
    }

    #[test]
    fn nested_attributes_are_length_patched_and_aligned() {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.raw(&ifinfomsg(0, 0, 0, 0))
            .begin_nest(IFLA_LINKINFO | NLA_F_NESTED)
            .attr(IFLA_INFO_KIND, b"vlan")
            .end_nest();
        let b = m.finish(7);
        assert_eq!(b.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        assert_eq!(
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            7,
            "sequence"
        );
        assert_eq!(u16_at(&b, 6), NLM_F_REQUEST | NLM_F_ACK);
        // Nest header at 32: its length covers the header (4) + the kind attribute (4+4).
        assert_eq!(u16_at(&b, 32), 12);
        assert_eq!(u16_at(&b, 34), IFLA_LINKINFO | NLA_F_NESTED);
        assert_eq!(&b[40..44], b"vlan");
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
}
