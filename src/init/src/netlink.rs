//! rtnetlink over a raw NETLINK_ROUTE socket: bring links up, create and delete VLAN links, add
//! and remove IPv4 addresses and the default route. Owns the message encoding (a handful of fixed structs and
//! attributes, built by hand to keep dependencies small). Must never assume a request worked
//! without the kernel's ACK.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_VLAN_ID: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NLA_F_NESTED: u16 = 0x8000;

/// Builds one netlink request: header, fixed part, attributes (4-byte aligned).
#[derive(Debug)]
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Msg {
            buf,
            nests: Vec::new(),
        }
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }
    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.raw(payload)
    }
    fn begin_nest(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }
    fn end_nest(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// An open rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
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
        // SAFETY: `fd` is a fresh descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sends one request and waits for its ACK (or error).
    fn request(&mut self, msg: Msg) -> io::Result<()> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut bytes = msg.finish();
        bytes[8..12].copy_from_slice(&seq.to_ne_bytes());
        // SAFETY: `bytes` is a valid buffer of the given length for the duration of the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        for _ in 0..16 {
            // SAFETY: `buf` is writable for its whole length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or([0; 4]));
                if len < 16 || off + len > n {
                    return Err(io::Error::other("malformed netlink reply"));
                }
                if kind == NLMSG_ERROR && mseq == seq && len >= 20 {
                    let err =
                        i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or([0; 4]));
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-err))
                    };
                }
                off += align4(len);
            }
        }
        Err(io::Error::other("no netlink ACK"))
    }

    /// Sets a link administratively up.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0, 0);
        let up = libc::IFF_UP as u32;
        m.raw(&ifinfomsg(index as i32, up, up));
        self.request(m)
    }

    /// Creates `name` as VLAN `vid` on top of link `parent`.
    pub fn add_vlan(&mut self, parent: u32, name: &str, vid: u16) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0);
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        m.raw(&ifinfomsg(0, 0, 0))
            .attr(IFLA_IFNAME, &n)
            .attr(IFLA_LINK, &parent.to_ne_bytes())
            .begin_nest(IFLA_LINKINFO)
            .attr(IFLA_INFO_KIND, b"vlan")
            .begin_nest(IFLA_INFO_DATA)
            .attr(IFLA_VLAN_ID, &vid.to_ne_bytes())
            .end_nest()
            .end_nest();
        self.request(m)
    }

    /// Adds an IPv4 address with its broadcast address (replacing an identical one).
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let m = addr_msg(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE,
            index,
            addr,
            prefix,
        );
        self.request(m)
    }

    /// Removes an IPv4 address from a link.
    pub fn del_addr(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.request(addr_msg(RTM_DELADDR, 0, index, addr, prefix))
    }

    /// Adds (or replaces) the default route via `gw` on link `index`.
    pub fn add_default_route(&mut self, index: u32, gw: Ipv4Addr) -> io::Result<()> {
        self.request(route_msg(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            index,
            gw,
        ))
    }

    /// Removes the default route via `gw` on link `index`.
    pub fn del_default_route(&mut self, index: u32, gw: Ipv4Addr) -> io::Result<()> {
        self.request(route_msg(RTM_DELROUTE, 0, index, gw))
    }

    /// Deletes a link (used for VLAN links this node created; its addresses and routes go too).
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELLINK, 0, 0);
        m.raw(&ifinfomsg(index as i32, 0, 0));
        self.request(m)
    }
}

fn addr_msg(kind: u16, flags: u16, index: u32, addr: Ipv4Addr, prefix: u8) -> Msg {
    let mut m = Msg::new(kind, flags, 0);
    let mut fixed = [0u8; 8];
    fixed[0] = libc::AF_INET as u8;
    fixed[1] = prefix;
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    let bcast = Ipv4Addr::from(u32::from(addr) | !mask);
    m.raw(&fixed)
        .attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets())
        .attr(IFA_BROADCAST, &bcast.octets());
    m
}

fn route_msg(kind: u16, flags: u16, index: u32, gw: Ipv4Addr) -> Msg {
    let mut m = Msg::new(kind, flags, 0);
    let mut fixed = [0u8; 12];
    fixed[0] = libc::AF_INET as u8;
    fixed[4] = libc::RT_TABLE_MAIN;
    fixed[5] = libc::RTPROT_BOOT;
    fixed[6] = libc::RT_SCOPE_UNIVERSE;
    fixed[7] = libc::RTN_UNICAST;
    m.raw(&fixed)
        .attr(RTA_GATEWAY, &gw.octets())
        .attr(RTA_OIF, &index.to_ne_bytes());
    m
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

    #[test]
    fn nested_attributes_are_length_patched_and_aligned() {
        let mut m = Msg::new(RTM_NEWLINK, 0, 7);
        m.raw(&ifinfomsg(0, 0, 0))
            .begin_nest(IFLA_LINKINFO)
            .attr(IFLA_INFO_KIND, b"vlan")
            .end_nest();
        let b = m.finish();
        assert_eq!(b.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        // nest header at 32: its length covers the header (4) + the kind attribute (4+4).
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 12);
        assert_eq!(
            u16::from_ne_bytes([b[34], b[35]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
        assert_eq!(&b[40..44], b"vlan");
    }
}
