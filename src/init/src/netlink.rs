//! The node's own rtnetlink requests: bring links up, create and delete VLAN links, add and
//! remove IPv4 addresses and the default route. The framing and the socket that waits for each
//! ACK are `rtnl`'s (shared with the VMM's tap wiring); this module owns the requests. Must
//! never assume a request worked without the kernel's ACK.

use std::io;
use std::net::Ipv4Addr;

pub use rtnl::if_index;
use rtnl::{
    Msg, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINK, IFLA_LINKINFO, NLA_F_NESTED,
    NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR,
    RTM_NEWLINK, RTM_NEWROUTE,
};

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
