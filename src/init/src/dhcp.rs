//! DHCPv4 without a userland: smoltcp's DHCP client over an AF_PACKET socket on one link. The
//! lease is applied to the kernel through netlink (see `netlive`). Owns the smoltcp interface
//! and socket set, and [`LeaseTracker`]: what a renewal (same or another address) or a lost
//! lease means for the link and the node. Must never apply a half-received lease (only
//! `Configured` events are used).
//!
//! The lease's address is also put on the smoltcp interface: smoltcp routes (and resolves with
//! ARP) only inside its own subnets, and without it a renewal could not be sent unicast to the
//! server at half the lease; it failed quietly and the lease was only renewed by broadcast
//! (rebinding) at 7/8 of it. The kernel owns that address, so smoltcp must never see the
//! kernel's traffic to it (it would answer TCP with "protocol unreachable"): the packet socket
//! carries only DHCP replies and ARP replies ([`FRAME_FILTER`]).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{wait as phy_wait, Device, Medium, RawSocket};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

/// What a DHCP server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// The link's MAC, read in this thread's network namespace (a bridge made in a test's
/// namespace is not in /sys, which shows the namespace it was mounted in).
fn mac_of(ifname: &str) -> Result<[u8; 6], String> {
    crate::netlink::link_mac(ifname).map_err(|e| format!("{ifname}: no MAC address: {e}"))
}

fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b)
}

/// One classic BPF instruction (`struct sock_filter`).
const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const BPF_LD_H_ABS: u16 = 0x28;
const BPF_LD_B_ABS: u16 = 0x30;
const BPF_LD_H_IND: u16 = 0x48;
const BPF_LDX_B_MSH: u16 = 0xb1;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

/// What the DHCP client's packet socket takes from the link: ARP replies, and unfragmented
/// IPv4 UDP from port 67 to port 68. Everything else (the node's own traffic) stays with the
/// kernel. Jump offsets count from the next instruction.
pub const FRAME_FILTER: [libc::sock_filter; 16] = [
    bpf(BPF_LD_H_ABS, 0, 0, 12),       // 0: ethertype
    bpf(BPF_JEQ_K, 0, 2, 0x0806),      // 1: ARP -> 2, else 4
    bpf(BPF_LD_H_ABS, 0, 0, 20),       // 2: ARP operation
    bpf(BPF_JEQ_K, 10, 11, 2),         // 3: reply -> accept, else drop
    bpf(BPF_JEQ_K, 0, 10, 0x0800),     // 4: IPv4 -> 5, else drop
    bpf(BPF_LD_B_ABS, 0, 0, 23),       // 5: IP protocol
    bpf(BPF_JEQ_K, 0, 8, 17),          // 6: UDP -> 7, else drop
    bpf(BPF_LD_H_ABS, 0, 0, 20),       // 7: flags and fragment offset
    bpf(BPF_JSET_K, 6, 0, 0x3fff),     // 8: a fragment -> drop
    bpf(BPF_LDX_B_MSH, 0, 0, 14),      // 9: X = IP header length
    bpf(BPF_LD_H_IND, 0, 0, 14),       // 10: UDP source port
    bpf(BPF_JEQ_K, 0, 3, 67),          // 11: 67 -> 12, else drop
    bpf(BPF_LD_H_IND, 0, 0, 16),       // 12: UDP destination port
    bpf(BPF_JEQ_K, 0, 1, 68),          // 13: 68 -> accept, else drop
    bpf(BPF_RET_K, 0, 0, 0x0004_0000), // 14: accept (whole frame)
    bpf(BPF_RET_K, 0, 0, 0),           // 15: drop
];

/// Puts [`FRAME_FILTER`] on the packet socket `fd`.
fn attach_frame_filter(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: FRAME_FILTER.len() as u16,
        filter: FRAME_FILTER.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at a static program of `len` instructions; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A DHCP client: smoltcp's DHCP socket on a device (a packet socket on a link; tests inject
/// frames and the clock).
pub struct Client<D: Device = RawSocket> {
    device: D,
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: smoltcp::iface::SocketHandle,
}

impl<D: Device> std::fmt::Debug for Client<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dhcp::Client")
    }
}

impl Client<RawSocket> {
    /// Opens the packet socket on `ifname` (the link must be up), passing only DHCP and ARP
    /// replies ([`FRAME_FILTER`]).
    pub fn new(ifname: &str) -> Result<Client, String> {
        let mac = mac_of(ifname)?;
        let device = RawSocket::new(ifname, Medium::Ethernet)
            .map_err(|e| format!("{ifname}: packet socket: {e}"))?;
        // Frames that arrived before the filter are harmless: smoltcp has no address yet.
        attach_frame_filter(device.as_raw_fd())
            .map_err(|e| format!("{ifname}: packet socket filter: {e}"))?;
        Ok(Client::with_device(
            device,
            mac,
            random_seed(),
            Instant::now(),
        ))
    }

    /// Runs the client until the next lease change or `timeout`. `Ok(None)` = lease lost.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Lease>, String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if let Some(ev) = self.poll_at(now) {
                return Ok(ev);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err("no DHCP answer".into());
            }
            let wait = self
                .poll_delay(now)
                .map(|d| d.min(left))
                .unwrap_or(left)
                .min(Duration::from_millis(500));
            phy_wait(
                self.device.as_raw_fd(),
                Some(smoltcp::time::Duration::from_micros(wait.as_micros() as u64)),
            )
            .map_err(|e| format!("dhcp wait: {e}"))?;
        }
    }
}

impl<D: Device> Client<D> {
    /// A client on `device` with hardware address `mac`, its clock starting at `now`.
    pub fn with_device(mut device: D, mac: [u8; 6], seed: u64, now: Instant) -> Client<D> {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = seed;
        let iface = Interface::new(config, &mut device, now);
        let mut sockets = SocketSet::new(Vec::new());
        let mut sock = dhcpv4::Socket::new();
        // Retry discovery quickly: the node is useless without an address.
        sock.set_max_lease_duration(None);
        let handle = sockets.add(sock);
        Client {
            device,
            iface,
            sockets,
            handle,
        }
    }

    /// Processes what the device holds and the timers due at `now`. `Some(Some(lease))`: a
    /// lease was acquired or changed (renewals that change nothing are not reported);
    /// `Some(None)`: the lease is gone (expired unanswered, or the server said no).
    pub fn poll_at(&mut self, now: Instant) -> Option<Option<Lease>> {
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        let (cidr, lease) = match self.sockets.get_mut::<dhcpv4::Socket>(self.handle).poll()? {
            dhcpv4::Event::Configured(c) => (
                Some(c.address),
                Some(Lease {
                    addr: c.address.address(),
                    prefix: c.address.prefix_len(),
                    router: c.router,
                    dns: c.dns_servers.iter().copied().collect(),
                }),
            ),
            dhcpv4::Event::Deconfigured => (None, None),
        };
        self.set_iface_addr(cidr);
        Some(lease)
    }

    /// The smoltcp interface's address: the lease's (so renewals reach the server unicast),
    /// none without a lease.
    fn set_iface_addr(&mut self, addr: Option<Ipv4Cidr>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some(a) = addr {
                // Room for one address is all this interface needs.
                let _ = addrs.push(IpCidr::Ipv4(a));
            }
        });
    }

    /// How long until the client has something to do (a retry, a renewal, the lease's end).
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// The device (tests read what the client sent).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }
}

/// What the network side must do about one client event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// Put the lease on the link (first lease, or the address, router or DNS changed).
    /// `moved_from`: the address the node had before, when this one differs (the node moves
    /// its cluster member; the UI is at the new address).
    Apply {
        lease: Lease,
        moved_from: Option<Ipv4Addr>,
    },
    /// The lease is gone: take its address and route off the link (the client keeps trying;
    /// the node keeps its cluster address until a lease names another one).
    Drop { addr: Ipv4Addr },
    /// Nothing changes.
    Nothing,
}

/// Turns the client's events into actions, remembering the address across a loss, so that a
/// lease for another address after a loss still counts as a move.
#[derive(Debug, Default)]
pub struct LeaseTracker {
    current: Option<Lease>,
    /// The last address held (kept through a loss).
    last_addr: Option<Ipv4Addr>,
}

impl LeaseTracker {
    pub fn on_event(&mut self, ev: Option<Lease>) -> LeaseAction {
        match ev {
            Some(l) if self.current.as_ref() == Some(&l) => LeaseAction::Nothing,
            Some(l) => {
                let moved_from = self.last_addr.filter(|a| *a != l.addr);
                self.last_addr = Some(l.addr);
                self.current = Some(l.clone());
                LeaseAction::Apply {
                    lease: l,
                    moved_from,
                }
            }
            // smoltcp reports "deconfigured" at its start too: only a held lease can be lost.
            None => match self.current.take() {
                Some(l) => LeaseAction::Drop { addr: l.addr },
                None => LeaseAction::Nothing,
            },
        }
    }

    /// The lease held now.
    pub fn current(&self) -> Option<&Lease> {
        self.current.as_ref()
    }
}

#[cfg(test)]
mod tests;
