//! DHCPv4 without a userland: smoltcp's DHCP client over an AF_PACKET socket on one link. The
//! lease is applied to the kernel through netlink (see `netlive`). Owns the smoltcp interface
//! and socket set, and [`LeaseTracker`]: what a renewal (same or another address) or a lost
//! lease means for the link and the node. Must never apply a half-received lease (only
//! `Configured` events are used).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{wait as phy_wait, Device, Medium, RawSocket};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};

/// What a DHCP server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

fn mac_of(ifname: &str) -> Result<[u8; 6], String> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))
        .map_err(|e| format!("{ifname}: no MAC address: {e}"))?;
    let parts: Vec<u8> = s
        .trim()
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    parts
        .try_into()
        .map_err(|_| format!("{ifname}: malformed MAC address {s:?}"))
}

fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b)
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
    /// Opens the packet socket on `ifname` (the link must be up).
    pub fn new(ifname: &str) -> Result<Client, String> {
        let mac = mac_of(ifname)?;
        let device = RawSocket::new(ifname, Medium::Ethernet)
            .map_err(|e| format!("{ifname}: packet socket: {e}"))?;
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
        match self.sockets.get_mut::<dhcpv4::Socket>(self.handle).poll()? {
            dhcpv4::Event::Configured(c) => Some(Some(Lease {
                addr: c.address.address(),
                prefix: c.address.prefix_len(),
                router: c.router,
                dns: c.dns_servers.iter().copied().collect(),
            })),
            dhcpv4::Event::Deconfigured => Some(None),
        }
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
