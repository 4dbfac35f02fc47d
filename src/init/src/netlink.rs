//! The node's own rtnetlink requests: bring links up, create and delete VLAN links and the
//! node's bridge, make a link a bridge port (or no port), set a link's MAC, put a range of
//! VLANs on a bridge port, add and remove IPv4 addresses and the default route. The framing and the socket that waits for each
//! ACK are `rtnl`'s (shared with the VMM's tap wiring); this module owns the requests. Must
//! never assume a request worked without the kernel's ACK.

use std::io;
use std::net::Ipv4Addr;

pub use rtnl::if_index;
use rtnl::{
    Msg, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINK, IFLA_LINKINFO, NLA_F_NESTED,
    NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR,
    RTM_NEWLINK, RTM_NEWROUTE, RTM_SETLINK,
};

const IFLA_ADDRESS: u16 = 1;
const IFLA_MASTER: u16 = 10;
const IFLA_VLAN_ID: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    rtnl::ifinfomsg(libc::AF_UNSPEC as u8, index, flags, change)
}

/// An open rtnetlink socket.
#[derive(Debug)]
pub struct Netlink(rtnl::Socket);

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        rtnl::Socket::open().map(Netlink)
    }

    /// Sends one request and waits for its ACK (or error).
    fn request(&mut self, msg: Msg) -> io::Result<()> {
        self.0.request(msg)
    }

    /// Sets a link administratively up.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        let up = libc::IFF_UP as u32;
        m.raw(&ifinfomsg(index, up, up));
        self.request(m)
    }

    /// Creates `name` as VLAN `vid` on top of link `parent`.
    pub fn add_vlan(&mut self, parent: u32, name: &str, vid: u16) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        m.raw(&ifinfomsg(0, 0, 0))
            .attr(IFLA_IFNAME, &n)
            .attr(IFLA_LINK, &parent.to_ne_bytes())
            .begin_nest(IFLA_LINKINFO | NLA_F_NESTED)
            .attr(IFLA_INFO_KIND, b"vlan")
            .begin_nest(IFLA_INFO_DATA | NLA_F_NESTED)
            .attr(IFLA_VLAN_ID, &vid.to_ne_bytes())
            .end_nest()
            .end_nest();
        self.request(m)
    }

    /// Creates bridge `name` with hardware address `mac` (`ip link add NAME address MAC type
    /// bridge`). A MAC given at creation is the bridge's own: it stays when ports come and go,
    /// instead of following the lowest port MAC.
    pub fn add_bridge(&mut self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        self.request(add_bridge_msg(name, mac))
    }

    /// Makes link `port` a port of `master` (`ip link set PORT master MASTER`); `master` 0 takes
    /// it out of whatever it is a port of (`nomaster`).
    pub fn set_master(&mut self, port: u32, master: u32) -> io::Result<()> {
        self.request(set_master_msg(port, master))
    }

    /// Sets a link's hardware address (`ip link set LINK address MAC`).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.raw(&ifinfomsg(index, 0, 0)).attr(IFLA_ADDRESS, &mac);
        self.request(m)
    }

    /// Puts VLANs `first..=last` on bridge port `port`, tagged (`bridge vlan add dev PORT vid
    /// FIRST-LAST`). Needs bridge VLAN filtering in the kernel (EOPNOTSUPP otherwise).
    pub fn add_port_vlans(&mut self, port: u32, first: u16, last: u16) -> io::Result<()> {
        self.request(rtnl::port_vlan_range_msg(RTM_SETLINK, port, first, last))
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
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.raw(&ifinfomsg(index, 0, 0));
        self.request(m)
    }
}

fn add_bridge_msg(name: &str, mac: [u8; 6]) -> Msg {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    m.raw(&ifinfomsg(0, 0, 0))
        .attr(IFLA_IFNAME, &n)
        .attr(IFLA_ADDRESS, &mac)
        .begin_nest(IFLA_LINKINFO | NLA_F_NESTED)
        .attr(IFLA_INFO_KIND, b"bridge")
        .end_nest();
    m
}

fn set_master_msg(port: u32, master: u32) -> Msg {
    let mut m = Msg::new(RTM_NEWLINK, 0);
    m.raw(&ifinfomsg(port, 0, 0))
        .attr(IFLA_MASTER, &master.to_ne_bytes());
    m
}

/// A link's hardware address, read in the calling thread's network namespace (an ioctl, not
/// sysfs: /sys shows the namespace it was mounted in).
pub fn link_mac(name: &str) -> io::Result<[u8; 6]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad link name {name:?}"),
        ));
    }
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq we own; the name is NUL-terminated (zeroed tail).
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &mut req,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR wrote the hardware address into ifru_hwaddr.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

fn addr_msg(kind: u16, flags: u16, index: u32, addr: Ipv4Addr, prefix: u8) -> Msg {
    let mut m = Msg::new(kind, flags);
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
    let mut m = Msg::new(kind, flags);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn a_bridge_is_made_with_its_own_mac() {
        let b = add_bridge_msg("cairn0", [2, 0, 0, 0, 0, 1]).finish(1);
        // ifname attr at 32 (4 + "cairn0\0" padded to 8), address at 44, linkinfo at 56.
        assert_eq!((u16_at(&b, 32), u16_at(&b, 34)), (11, IFLA_IFNAME));
        assert_eq!(&b[36..43], b"cairn0\0");
        assert_eq!((u16_at(&b, 44), u16_at(&b, 46)), (10, IFLA_ADDRESS));
        assert_eq!(&b[48..54], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(
            (u16_at(&b, 56), u16_at(&b, 58)),
            (16, IFLA_LINKINFO | NLA_F_NESTED)
        );
        assert_eq!(&b[64..70], b"bridge");
        assert_eq!(b.len(), 72);
    }
}
