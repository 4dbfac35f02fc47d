//! The DHCP client and lease tracker against a scripted DHCP server: real smoltcp packet
//! handling on an in-memory wire, with the clock injected (renewal at half the lease, expiry at
//! its end), so a renewal that changes the address, a refused renewal and a lost lease are
//! played out in full in milliseconds.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::phy::{ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::{Duration as SDuration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet,
    Ipv4Repr, UdpPacket, UdpRepr,
};

use super::{Client, Lease, LeaseAction, LeaseTracker, FRAME_FILTER};

const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SERVER_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const LEASE_SECS: u32 = 60;

/// Frames in flight between the client and the scripted server.
#[derive(Default)]
struct Wire {
    to_client: VecDeque<Vec<u8>>,
    from_client: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.to_client.pop_front()?;
        Some((Rx(f), Tx(&mut self.from_client)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.from_client))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Discover,
    /// A REQUEST while selecting (requested address) or renewing (its own address).
    Request(Ipv4Addr),
}

/// The server's script: what to answer to each ask (None: stay silent).
type Script<'a> = &'a mut dyn FnMut(Ask) -> Option<(DhcpMessageType, Ipv4Addr)>;

fn v4(a: Ipv4Addr) -> Ipv4Address {
    a
}

/// One server frame: a DHCP reply broadcast to the client.
fn reply(xid: u32, kind: DhcpMessageType, yiaddr: Ipv4Addr) -> Vec<u8> {
    let dhcp = DhcpRepr {
        message_type: kind,
        transaction_id: xid,
        secs: 0,
        client_hardware_address: EthernetAddress(CLIENT_MAC),
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: v4(yiaddr),
        server_ip: v4(SERVER_IP),
        router: Some(v4(SERVER_IP)),
        subnet_mask: Some(v4(Ipv4Addr::new(255, 255, 255, 0))),
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(v4(SERVER_IP)),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: Some(LEASE_SECS),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let dhcp_len = dhcp.buffer_len();
    let udp = UdpRepr {
        src_port: 67,
        dst_port: 68,
    };
    let ip = Ipv4Repr {
        src_addr: v4(SERVER_IP),
        dst_addr: Ipv4Address::BROADCAST,
        next_header: IpProtocol::Udp,
        payload_len: 8 + dhcp_len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(SERVER_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; 14 + ip.buffer_len() + 8 + dhcp_len];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut ipp = Ipv4Packet::new_unchecked(frame.payload_mut());
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut ipp, &caps);
    let mut udpp = UdpPacket::new_unchecked(ipp.payload_mut());
    udp.emit(
        &mut udpp,
        &IpAddress::Ipv4(v4(SERVER_IP)),
        &IpAddress::Ipv4(Ipv4Address::BROADCAST),
        dhcp_len,
        |p| {
            let mut d = DhcpPacket::new_unchecked(p);
            dhcp.emit(&mut d).expect("emit DHCP");
        },
        &caps,
    );
    buf
}

/// The server's answer to an ARP request for its address (renewals are unicast to it).
fn arp_reply(frame: &EthernetFrame<&[u8]>) -> Option<Vec<u8>> {
    let arp = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).ok()?).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = arp
    else {
        return None;
    };
    if target_protocol_addr != v4(SERVER_IP) {
        return None;
    }
    let answer = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(SERVER_MAC),
        source_protocol_addr: v4(SERVER_IP),
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let mut buf = vec![0u8; 14 + answer.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(SERVER_MAC),
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut f);
    answer.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    Some(buf)
}

/// Parses a client frame: the DHCP ask, its transaction id and the IPv4 destination, if it is
/// one.
fn ask_of(frame: &EthernetFrame<&[u8]>) -> Option<(Ask, u32, Ipv4Addr)> {
    let ip = Ipv4Packet::new_checked(frame.payload()).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.dst_port() != 67 {
        return None;
    }
    let pkt = DhcpPacket::new_checked(udp.payload()).ok()?;
    let d = DhcpRepr::parse(&pkt).ok()?;
    let ask = match d.message_type {
        DhcpMessageType::Discover => Ask::Discover,
        DhcpMessageType::Request => {
            let a = d.requested_ip.unwrap_or(d.client_ip);
            Ask::Request(a)
        }
        _ => return None,
    };
    Some((ask, d.transaction_id, ip.dst_addr()))
}

/// The client, a clock and the tracker: the network side as `netlive` runs it.
struct Rig {
    client: Client<Wire>,
    now: Instant,
    tracker: LeaseTracker,
    asks: Vec<Ask>,
    /// Every ask with when it was sent and where to.
    sent: Vec<(Instant, Ask, Ipv4Addr)>,
}

impl Rig {
    fn new() -> Rig {
        let now = Instant::from_secs(1_000);
        Rig {
            client: Client::with_device(Wire::default(), CLIENT_MAC, 7, now),
            now,
            tracker: LeaseTracker::default(),
            asks: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Runs the client in 250 ms steps of the injected clock for up to `secs`, the server
    /// answering per `script`, until an event turns into an action other than `Nothing`.
    fn run(&mut self, secs: u64, script: Script<'_>) -> Option<LeaseAction> {
        let end = self.now + SDuration::from_secs(secs);
        while self.now <= end {
            if let Some(ev) = self.client.poll_at(self.now) {
                match self.tracker.on_event(ev) {
                    LeaseAction::Nothing => {}
                    a => return Some(a),
                }
            }
            let sent = std::mem::take(&mut self.client.device_mut().from_client);
            for f in sent {
                let Ok(frame) = EthernetFrame::new_checked(&f[..]) else {
                    continue;
                };
                let answer = match frame.ethertype() {
                    EthernetProtocol::Arp => arp_reply(&frame),
                    EthernetProtocol::Ipv4 => ask_of(&frame).and_then(|(ask, xid, dst)| {
                        self.asks.push(ask);
                        self.sent.push((self.now, ask, dst));
                        script(ask).map(|(kind, a)| reply(xid, kind, a))
                    }),
                    _ => None,
                };
                if let Some(a) = answer {
                    self.client.device_mut().to_client.push_back(a);
                }
            }
            // Deliver answers at once, else step the clock.
            if self.client.device_mut().to_client.is_empty() {
                self.now += SDuration::from_millis(250);
            }
        }
        None
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A server that offers and acknowledges `addr`.
fn serving(addr: Ipv4Addr) -> impl FnMut(Ask) -> Option<(DhcpMessageType, Ipv4Addr)> {
    move |ask| match ask {
        Ask::Discover => Some((DhcpMessageType::Offer, addr)),
        Ask::Request(_) => Some((DhcpMessageType::Ack, addr)),
    }
}

fn applied(a: Option<LeaseAction>) -> (Lease, Option<Ipv4Addr>) {
    match a {
        Some(LeaseAction::Apply { lease, moved_from }) => (lease, moved_from),
        other => panic!("expected a lease to apply, got {other:?}"),
    }
}

/// First lease: applied, no move.
fn leased(r: &mut Rig, addr: Ipv4Addr) {
    let (l, moved) = applied(r.run(30, &mut serving(addr)));
    assert_eq!(l.addr, addr);
    assert_eq!(l.prefix, 24);
    assert_eq!(l.router, Some(SERVER_IP));
    assert_eq!(moved, None);
}

#[test]
fn a_renewal_with_another_address_moves_the_node() {
    let mut r = Rig::new();
    leased(&mut r, ip("10.0.2.15"));
    let t0 = r.now;
    // The server now hands out .20: the renewal (at half the lease) is acknowledged with it.
    let (l, moved) = applied(r.run(60, &mut serving(ip("10.0.2.20"))));
    assert_eq!(l.addr, ip("10.0.2.20"));
    assert_eq!(moved, Some(ip("10.0.2.15")));
    // Renewed (unicast from half the lease, or broadcast from 7/8) before the lease ended.
    let waited = (r.now - t0).secs();
    assert!(
        (29..60).contains(&waited),
        "renewed after {waited} s of a {LEASE_SECS} s lease"
    );
    assert_eq!(r.asks.last(), Some(&Ask::Request(ip("10.0.2.15"))));
    assert_eq!(r.tracker.current().map(|l| l.addr), Some(ip("10.0.2.20")));
}

#[test]
fn a_renewal_with_the_same_address_changes_nothing() {
    let mut r = Rig::new();
    leased(&mut r, ip("10.0.2.15"));
    let asks_before = r.asks.len();
    // Two full lease periods of renewals, all acknowledged with the same address.
    assert_eq!(
        r.run(2 * u64::from(LEASE_SECS), &mut serving(ip("10.0.2.15"))),
        None
    );
    let renewals = r.asks[asks_before..]
        .iter()
        .filter(|a| **a == Ask::Request(ip("10.0.2.15")))
        .count();
    assert!(
        renewals >= 2,
        "only {renewals} renewals in two lease periods"
    );
    assert_eq!(r.tracker.current().map(|l| l.addr), Some(ip("10.0.2.15")));
}

/// RFC 2131 4.4.5: at half the lease the client renews with the server that gave it, unicast
/// (after finding its MAC with ARP); broadcasting (rebinding) is for when that server does not
/// answer by 7/8 of the lease.
#[test]
fn renewals_are_unicast_to_the_server_from_half_the_lease() {
    let mut r = Rig::new();
    leased(&mut r, ip("10.0.2.15"));
    let t0 = r.now;
    let from = r.sent.len();
    // Until just before the rebinding time: renewals acknowledged, nothing changes.
    assert_eq!(r.run(50, &mut serving(ip("10.0.2.15"))), None);
    let renewals: Vec<_> = r.sent[from..]
        .iter()
        .filter(|(_, a, _)| *a == Ask::Request(ip("10.0.2.15")))
        .collect();
    let Some((at, _, dst)) = renewals.first() else {
        panic!("no renewal before the rebinding time; sent {:?}", r.sent);
    };
    assert_eq!(*dst, SERVER_IP, "the renewal was not unicast to the server");
    assert_eq!((*at - t0).secs(), u64::from(LEASE_SECS / 2));
    assert_eq!(r.tracker.current().map(|l| l.addr), Some(ip("10.0.2.15")));
}

#[test]
fn a_lease_lost_unanswered_drops_the_address_and_a_new_one_moves_the_node() {
    let mut r = Rig::new();
    leased(&mut r, ip("10.0.2.15"));
    let t0 = r.now;
    // The server is gone: renewals and rebinds go unanswered until the lease ends.
    let lost = r.run(2 * u64::from(LEASE_SECS), &mut |_| None);
    assert_eq!(
        lost,
        Some(LeaseAction::Drop {
            addr: ip("10.0.2.15")
        })
    );
    let waited = (r.now - t0).secs();
    assert!(
        (59..=61).contains(&waited),
        "lost after {waited} s, not at the lease's end"
    );
    assert_eq!(r.tracker.current(), None);
    // It comes back with another address: discovered afresh, and it is a move.
    let (l, moved) = applied(r.run(60, &mut serving(ip("10.0.2.30"))));
    assert_eq!(l.addr, ip("10.0.2.30"));
    assert_eq!(moved, Some(ip("10.0.2.15")));
}

#[test]
fn a_refused_renewal_drops_the_lease_then_takes_the_new_offer() {
    let mut r = Rig::new();
    leased(&mut r, ip("10.0.2.15"));
    let mut naked = false;
    let mut script = |ask: Ask| match ask {
        Ask::Request(a) if a == ip("10.0.2.15") => {
            naked = true;
            Some((DhcpMessageType::Nak, ip("0.0.0.0")))
        }
        Ask::Discover => Some((DhcpMessageType::Offer, ip("10.0.2.21"))),
        Ask::Request(_) => Some((DhcpMessageType::Ack, ip("10.0.2.21"))),
    };
    assert_eq!(
        r.run(60, &mut script),
        Some(LeaseAction::Drop {
            addr: ip("10.0.2.15")
        })
    );
    let (l, moved) = applied(r.run(60, &mut script));
    assert!(naked);
    assert_eq!(l.addr, ip("10.0.2.21"));
    assert_eq!(moved, Some(ip("10.0.2.15")));
}

#[test]
fn the_tracker_reports_only_changes() {
    let lease = |a: &str| Lease {
        addr: ip(a),
        prefix: 24,
        router: None,
        dns: vec![],
    };
    let mut t = LeaseTracker::default();
    // smoltcp's "deconfigured" at its start is no loss.
    assert_eq!(t.on_event(None), LeaseAction::Nothing);
    assert_eq!(
        t.on_event(Some(lease("10.0.0.5"))),
        LeaseAction::Apply {
            lease: lease("10.0.0.5"),
            moved_from: None
        }
    );
    assert_eq!(t.on_event(Some(lease("10.0.0.5"))), LeaseAction::Nothing);
    // Same address, new DNS: applied, no move.
    let mut dns = lease("10.0.0.5");
    dns.dns = vec![ip("10.0.0.1")];
    assert_eq!(
        t.on_event(Some(dns.clone())),
        LeaseAction::Apply {
            lease: dns,
            moved_from: None
        }
    );
    assert_eq!(
        t.on_event(None),
        LeaseAction::Drop {
            addr: ip("10.0.0.5")
        }
    );
    assert_eq!(t.on_event(None), LeaseAction::Nothing);
    // The same address back after a loss is no move.
    assert_eq!(
        t.on_event(Some(lease("10.0.0.5"))),
        LeaseAction::Apply {
            lease: lease("10.0.0.5"),
            moved_from: None
        }
    );
}

/// Runs a classic BPF program (the instructions [`FRAME_FILTER`] uses) on a frame the way the
/// kernel does: the number of bytes kept, 0 = dropped (a load past the end drops too).
fn run_bpf(prog: &[libc::sock_filter], frame: &[u8]) -> u32 {
    let load = |off: usize, n: usize| {
        frame
            .get(off..off + n)
            .map(|b| b.iter().fold(0u32, |v, c| v << 8 | u32::from(*c)))
    };
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    loop {
        let i = prog[pc];
        pc += 1;
        let k = i.k as usize;
        let loaded = match i.code {
            0x28 => load(k, 2),
            0x30 => load(k, 1),
            0x48 => load(x as usize + k, 2),
            0xb1 => {
                let Some(b) = load(k, 1) else { return 0 };
                x = 4 * (b & 0xf);
                continue;
            }
            0x15 | 0x45 => {
                let hit = if i.code == 0x15 {
                    a == i.k
                } else {
                    a & i.k != 0
                };
                pc += usize::from(if hit { i.jt } else { i.jf });
                continue;
            }
            0x06 => return i.k,
            c => panic!("BPF instruction {c:#x} not modelled"),
        };
        match loaded {
            Some(v) => a = v,
            None => return 0,
        }
    }
}

/// The packet socket takes DHCP replies and ARP replies only: never the node's own traffic to
/// the address smoltcp now shares with the kernel.
#[test]
fn the_packet_socket_takes_only_dhcp_and_arp_replies() {
    let pass = |f: &[u8]| run_bpf(&FRAME_FILTER, f) > 0;
    let offer = reply(1, DhcpMessageType::Offer, ip("10.0.2.15"));
    assert!(pass(&offer), "a DHCP reply was filtered out");
    let edit = |at: usize, bytes: &[u8]| {
        let mut f = offer.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    assert!(!pass(&edit(23, &[6])), "TCP passed");
    assert!(!pass(&edit(23, &[1])), "ICMP passed");
    assert!(!pass(&edit(34, &[0x04, 0xd2])), "UDP from port 1234 passed");
    assert!(
        !pass(&edit(36, &[0, 67])),
        "UDP to port 67 (a client's ask) passed"
    );
    assert!(!pass(&edit(20, &[0x20, 0])), "a first fragment passed");
    assert!(!pass(&edit(20, &[0, 1])), "a later fragment passed");
    assert!(!pass(&edit(12, &[0x86, 0xdd])), "IPv6 passed");
    assert!(!pass(&offer[..30]), "a truncated frame passed");
    // IP options move the UDP header: the ports are read after them.
    let mut opts = offer.clone();
    opts[14] = 0x46;
    opts.splice(34..34, [1u8, 1, 1, 0]);
    assert!(pass(&opts), "a DHCP reply with IP options was filtered out");
    opts[41] = 67;
    assert!(!pass(&opts), "UDP to port 67 after IP options passed");

    let ask = {
        let mut f = vec![0u8; 14 + 28];
        let mut e = EthernetFrame::new_unchecked(&mut f[..]);
        EthernetRepr {
            src_addr: EthernetAddress(CLIENT_MAC),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut e);
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(CLIENT_MAC),
            source_protocol_addr: v4(ip("10.0.2.15")),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: v4(SERVER_IP),
        }
        .emit(&mut ArpPacket::new_unchecked(e.payload_mut()));
        f
    };
    assert!(
        !pass(&ask),
        "an ARP request passed (the kernel answers those)"
    );
    let answer = arp_reply(&EthernetFrame::new_checked(&ask[..]).unwrap()).unwrap();
    assert!(pass(&answer), "an ARP reply was filtered out");
}
