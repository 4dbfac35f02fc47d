//! DHCPv4 without a userland: smoltcp's DHCP client over an AF_PACKET socket on one link. The
//! lease is applied to the kernel through netlink (see `net`). Owns the smoltcp interface and
//! socket set. Must never apply a half-received lease (only `Configured` events are used).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{wait as phy_wait, Medium, RawSocket};
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

/// A DHCP client bound to one link.
pub struct Client {
    device: RawSocket,
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: smoltcp::iface::SocketHandle,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dhcp::Client")
    }
}

impl Client {
    /// Opens the packet socket on `ifname` (the link must be up).
    pub fn new(ifname: &str) -> Result<Client, String> {
        let mac = mac_of(ifname)?;
        let mut device = RawSocket::new(ifname, Medium::Ethernet)
            .map_err(|e| format!("{ifname}: packet socket: {e}"))?;
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = random_seed();
        let iface = Interface::new(config, &mut device, Instant::now());
        let mut sockets = SocketSet::new(Vec::new());
        let mut sock = dhcpv4::Socket::new();
        // Retry discovery quickly: the node is useless without an address.
        sock.set_max_lease_duration(None);
        let handle = sockets.add(sock);
        Ok(Client {
            device,
            iface,
            sockets,
            handle,
        })
    }

    /// Runs the client until the next lease change or `timeout`. `Ok(None)` = lease lost.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Lease>, String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let now = Instant::now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            match self.sockets.get_mut::<dhcpv4::Socket>(self.handle).poll() {
                Some(dhcpv4::Event::Configured(c)) => {
                    return Ok(Some(Lease {
                        addr: c.address.address(),
                        prefix: c.address.prefix_len(),
                        router: c.router,
                        dns: c.dns_servers.iter().copied().collect(),
                    }))
                }
                Some(dhcpv4::Event::Deconfigured) => return Ok(None),
                None => {}
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err("no DHCP answer".into());
            }
            let wait = self
                .iface
                .poll_delay(now, &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()).min(left))
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
