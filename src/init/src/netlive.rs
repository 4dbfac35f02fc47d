//! Applying the management network to the kernel, and replacing it live (no reboot): the
//! node's bridge over the uplink, VLAN link, static address or DHCP (a smoltcp client thread),
//! default route, and the node's resolver file. Owns the record of what this node applied, so
//! that exactly that can be taken down again. A DHCP renewal with another address replaces the
//! address on the link, a lost lease takes it off; any new management address (renewal, menu
//! change) is announced on the console and handed to the node service, which moves the cluster
//! member when the cluster runs on the management network.
//!
//! The bridge ([`BRIDGE`], as in Scale HC3, where every VM NIC sits on a bridge over the node's
//! uplink): made once over the chosen uplink, with the uplink's MAC (so a DHCP server sees the
//! same client as before), and kept when the configuration changes (VM taps may be its ports);
//! a new uplink replaces the old one as its port. Layout:
//!
//! ```text
//!   no VLAN:    eth0 ── port of cairn0 ── cairn0 holds the address, routes; VM taps join cairn0
//!   VLAN 42:    eth0 ── port of cairn0 (VM taps, untagged and their own VLANs)
//!                 └── eth0.42 holds the address, routes
//! ```
//!
//! With a management VLAN the VLAN link sits on the uplink, beside the bridge, not on the
//! bridge: the kernel hands a frame tagged 42 to eth0.42 before the bridge sees it, so the
//! management network does not depend on the bridge's VLAN state. When a VM NIC with a VLAN
//! later turns VLAN filtering on on cairn0 (see `vmm::virtio::bridge_vlan`), a VLAN link on
//! cairn0 would lose its frames (the uplink port and the bridge itself carry only VLAN 1 by
//! default); this one keeps them. The price: VMs cannot share the management VLAN. The uplink
//! port also carries VLANs 2-4094 tagged (a trunk, as on Proxmox's VLAN-aware bridges), so the
//! VMs' VLANs reach the wire once filtering is on; a kernel without bridge VLAN filtering
//! refuses that, which is logged (and it cannot start VLAN NICs anyway).
//!
//! Must never touch an address, route or link it did not create (other than bringing the chosen
//! parent link up and making it the bridge's port), and must never leave a running node with
//! neither configuration: when a new one cannot be applied, the previous one is restored; when
//! the bridge cannot be made, the uplink is configured directly and the reason logged.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::net::{ClusterNet, NetConfig, NetMode};
use crate::netlink::{if_index, link_mac, Netlink};
use crate::{dhcp, logln};

/// The bridge PID 1 makes over the management uplink; VM NICs that name no bridge join it
/// (the node learns the name from [`bridge`]).
pub const BRIDGE: &str = "cairn0";

/// VLANs the uplink carries tagged as the bridge's port (all but the default, 1).
const TRUNK_VLANS: (u16, u16) = (2, 4094);

/// What the network is now (for the status screen).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStatus {
    /// The link as configured: the uplink, or its VLAN link.
    pub link: String,
    /// The bridge that holds the address for `link` (None: `link` holds it itself).
    pub bridge: Option<String>,
    pub addr: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// What this node put into the kernel.
#[derive(Debug)]
struct Applied {
    cfg: NetConfig,
    /// The link as configured (the uplink or its VLAN link), as the console shows it.
    link: String,
    /// The bridge holding the address instead of `link` (no VLAN, the bridge made).
    bridge: Option<String>,
    /// The link holding the address: the bridge, or `link`.
    index: u32,
    /// The VLAN link was created here (and is deleted when the configuration goes).
    created_vlan: bool,
    addr: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
}

impl Applied {
    fn status(&self) -> NetStatus {
        NetStatus {
            link: self.link.clone(),
            bridge: self.bridge.clone(),
            addr: self.addr,
            gateway: self.gateway,
            dns: self.dns.clone(),
        }
    }
}

/// The bridge as made here, and its port.
#[derive(Debug)]
struct Bridge {
    index: u32,
    /// The uplink that is its port (name, index); None after a failed change of uplink.
    uplink: Option<(String, u32)>,
}

static APPLIED: Mutex<Option<Applied>> = Mutex::new(None);
/// Taken only inside a replacement (`REPLACING`), or to read it.
static BRIDGE_MADE: Mutex<Option<Bridge>> = Mutex::new(None);
/// Serializes whole replacements (take down + bring up + maybe restore).
static REPLACING: Mutex<()> = Mutex::new(());
/// The DHCP thread whose number this is may apply leases; every other one stops.
static DHCP_GENERATION: AtomicU64 = AtomicU64::new(0);
static RESOLV_PATH: OnceLock<PathBuf> = OnceLock::new();

fn applied() -> std::sync::MutexGuard<'static, Option<Applied>> {
    APPLIED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where DNS servers are written (default /run/resolv.conf; tests point it elsewhere). Only the
/// first call has an effect.
pub fn set_resolv_path(p: PathBuf) {
    let _ = RESOLV_PATH.set(p);
}

fn write_resolv(dns: &[Ipv4Addr]) {
    let path = RESOLV_PATH.get_or_init(|| PathBuf::from("/run/resolv.conf"));
    let mut s = String::from("# written by cairn PID 1\n");
    for d in dns.iter().take(3) {
        s.push_str(&format!("nameserver {d}\n"));
    }
    if let Err(e) = std::fs::write(path, s) {
        logln!("cannot write {}: {e}", path.display());
    }
}

/// The network as applied now; `None` before the first configuration.
pub fn status() -> Option<NetStatus> {
    applied().as_ref().map(Applied::status)
}

/// Brings loopback up (always wanted, also before the wizard).
pub fn loopback_up() {
    let r = Netlink::open().and_then(|mut nl| nl.link_up(if_index("lo")?));
    if let Err(e) = r {
        logln!("loopback: {e}");
    }
}

/// The cluster link as applied (its address is the cluster's; see `service`).
static CLUSTER_APPLIED: Mutex<Option<ClusterNet>> = Mutex::new(None);

/// Brings the cluster link up with its static address (at boot, once). An address the link
/// already has is fine (the same configuration applied again).
pub fn apply_cluster(c: &ClusterNet) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    let index = if_index(&c.iface).map_err(|e| format!("no link {}: {e}", c.iface))?;
    nl.link_up(index)
        .map_err(|e| format!("{}: link up: {e}", c.iface))?;
    match nl.add_addr(index, c.addr, c.prefix) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
            return Err(format!(
                "{}: add address {}/{}: {e}",
                c.iface, c.addr, c.prefix
            ))
        }
        _ => {}
    }
    *CLUSTER_APPLIED.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
    logln!("network: cluster link {c}");
    Ok(())
}

/// The cluster link's address, once applied.
pub fn cluster_addr() -> Option<Ipv4Addr> {
    CLUSTER_APPLIED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|c| c.addr)
}

/// Applies the first configuration at boot. With DHCP, waits up to `dhcp_timeout` for the
/// first lease; if none comes the client keeps trying in the background (renewals too).
pub fn apply(cfg: &NetConfig, dhcp_timeout: Duration) -> Result<NetStatus, String> {
    replace(cfg, dhcp_timeout)
}

/// Replaces whatever configuration is applied with `cfg`, live. If `cfg` cannot be applied
/// (missing link, the kernel refuses, no DHCP lease within `dhcp_timeout`), it is taken down
/// again and the previous configuration is restored; the error says so.
pub fn replace(cfg: &NetConfig, dhcp_timeout: Duration) -> Result<NetStatus, String> {
    let _one = REPLACING.lock().unwrap_or_else(|p| p.into_inner());
    let old = take_down();
    let err = match bring_up(cfg, dhcp_timeout) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    // At boot there is nothing to go back to: leave DHCP trying.
    let Some(old) = old else { return Err(err) };
    take_down();
    logln!("network: {err}; restoring {old}");
    match bring_up(&old, dhcp_timeout) {
        Ok(_) => Err(format!("{err} (the previous configuration was restored)")),
        Err(e2) => Err(format!(
            "{err}; restoring the previous configuration failed too: {e2}"
        )),
    }
}

/// Removes what this node applied (stops DHCP, deletes the address and route, or the VLAN link
/// with everything on it). Returns the configuration that was applied.
fn take_down() -> Option<NetConfig> {
    DHCP_GENERATION.fetch_add(1, Ordering::SeqCst);
    let a = applied().take()?;
    let r = Netlink::open().and_then(|mut nl| {
        if a.created_vlan {
            return nl.del_link(a.index);
        }
        if let Some(g) = a.gateway {
            ignore_gone(nl.del_default_route(a.index, g))?;
        }
        if let Some((ip, p)) = a.addr {
            ignore_gone(nl.del_addr(a.index, ip, p))?;
        }
        Ok(())
    });
    match r {
        Ok(()) => logln!("network: {} taken down from {}", a.cfg, a.link),
        Err(e) => logln!("network: taking down {} on {}: {e}", a.cfg, a.link),
    }
    Some(a.cfg)
}

/// Deleting something already gone (the kernel drops routes with their address) is fine.
fn ignore_gone(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EADDRNOTAVAIL)) => Ok(()),
        r => r,
    }
}

fn bring_up(cfg: &NetConfig, dhcp_timeout: Duration) -> Result<NetStatus, String> {
    let mut nl = Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    let parent = if_index(&cfg.iface).map_err(|e| format!("no link {}: {e}", cfg.iface))?;
    nl.link_up(parent)
        .map_err(|e| format!("{}: link up: {e}", cfg.iface))?;
    let bridge = match ensure_bridge(&mut nl, &cfg.iface, parent) {
        Ok(index) => Some(index),
        Err(e) => {
            logln!(
                "network: no bridge {BRIDGE} over {}: {e}; configuring {} directly (VM NICs have no bridge to join)",
                cfg.iface,
                cfg.iface
            );
            None
        }
    };
    let (link, created_vlan) = match cfg.vlan {
        None => (cfg.iface.clone(), false),
        Some(vid) => {
            let name = format!("{}.{vid}", cfg.iface);
            let created = if if_index(&name).is_err() {
                nl.add_vlan(parent, &name, vid)
                    .map_err(|e| format!("create VLAN {name}: {e}"))?;
                true
            } else {
                false
            };
            (name, created)
        }
    };
    // Without a VLAN the bridge holds the address; a VLAN link stays on the uplink (see the
    // module's layout).
    let (index, on_bridge) = match (cfg.vlan, bridge) {
        (None, Some(b)) => (b, Some(BRIDGE.to_string())),
        _ => (if_index(&link).map_err(|e| format!("{link}: {e}"))?, None),
    };
    let holder = on_bridge.clone().unwrap_or_else(|| link.clone());
    // Recorded before anything else can fail, so a failure is taken down completely.
    *applied() = Some(Applied {
        cfg: cfg.clone(),
        link: link.clone(),
        bridge: on_bridge,
        index,
        created_vlan,
        addr: None,
        gateway: None,
        dns: Vec::new(),
    });
    nl.link_up(index)
        .map_err(|e| format!("{holder}: link up: {e}"))?;
    match &cfg.mode {
        NetMode::Static {
            addr,
            prefix,
            gateway,
            dns,
        } => {
            let mut g = applied();
            let a = g.as_mut().ok_or("network: configuration vanished")?;
            set_addr(&mut nl, a, *addr, *prefix, *gateway, dns)
        }
        NetMode::Dhcp => {
            if holder == link {
                logln!("network: DHCP on {link}");
            } else {
                logln!("network: DHCP on {link} (bridge {holder})");
            }
            let generation = DHCP_GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
            // The smoltcp device is not Send: the client lives on its own thread (renewals),
            // and hands the first lease back here.
            let (tx, rx) = std::sync::mpsc::channel::<Result<NetStatus, String>>();
            let (thread_link, thread_holder) = (link.clone(), holder);
            std::thread::Builder::new()
                .name("dhcp".into())
                .spawn(move || dhcp_thread(thread_link, thread_holder, index, generation, tx))
                .map_err(|e| format!("dhcp thread: {e}"))?;
            rx.recv_timeout(dhcp_timeout + Duration::from_secs(1))
                .map_err(|_| format!("{link}: no DHCP lease within {} s", dhcp_timeout.as_secs()))?
        }
    }
}

/// The bridge VM NICs join when they name none: [`BRIDGE`] once it was made over the uplink
/// (None: it could not be, or no network was applied yet).
pub fn bridge() -> Option<String> {
    let g = BRIDGE_MADE.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref()
        .filter(|b| b.uplink.is_some())
        .map(|_| BRIDGE.to_string())
}

/// Makes [`BRIDGE`] (once, with the uplink's MAC) and the uplink its port (instead of an
/// earlier uplink, whose MAC the bridge then gives up for the new one's); returns the bridge's
/// index. A bridge made here whose port cannot be added is deleted again; one already made
/// (VM taps may be its ports) is kept. Never takes over a link of that name made by someone
/// else.
fn ensure_bridge(nl: &mut Netlink, uplink: &str, uplink_index: u32) -> Result<u32, String> {
    let mut g = BRIDGE_MADE.lock().unwrap_or_else(|p| p.into_inner());
    let ours = g
        .as_ref()
        .map(|b| b.index)
        .filter(|i| if_index(BRIDGE).ok() == Some(*i));
    if let (Some(index), Some(b)) = (ours, g.as_ref()) {
        if b.uplink.as_ref().map(|u| u.1) == Some(uplink_index) {
            return Ok(index);
        }
    }
    let mac = link_mac(uplink).map_err(|e| format!("{uplink} has no MAC address: {e}"))?;
    let (index, created) = match ours {
        Some(index) => (index, false),
        None => {
            *g = None;
            if if_index(BRIDGE).is_ok() {
                return Err(format!(
                    "a link named {BRIDGE} exists that this node did not make"
                ));
            }
            nl.add_bridge(BRIDGE, mac).map_err(|e| {
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    "this kernel cannot make bridges (CONFIG_BRIDGE)".to_string()
                } else {
                    format!("create bridge {BRIDGE}: {e}")
                }
            })?;
            let index = if_index(BRIDGE).map_err(|e| format!("{BRIDGE} after creating it: {e}"))?;
            (index, true)
        }
    };
    let undo = |nl: &mut Netlink, g: &mut Option<Bridge>, why: String| {
        if created {
            if let Err(e) = nl.del_link(index) {
                logln!("network: deleting {BRIDGE} again: {e}");
            }
            *g = None;
        } else {
            *g = Some(Bridge {
                index,
                uplink: None,
            });
        }
        Err(why)
    };
    if !created {
        // Another uplink was the port: it leaves, and the bridge takes the new one's MAC.
        if let Some((old, old_index)) = g.as_ref().and_then(|b| b.uplink.clone()) {
            if let Err(e) = nl.set_master(old_index, 0) {
                if e.raw_os_error() != Some(libc::ENODEV) {
                    logln!("network: taking {old} out of {BRIDGE}: {e}");
                }
            }
        }
        if let Err(e) = nl.set_mac(index, mac) {
            return undo(
                nl,
                &mut g,
                format!("give {BRIDGE} the MAC of {uplink}: {e}"),
            );
        }
    }
    if let Err(e) = nl.set_master(uplink_index, index) {
        return undo(nl, &mut g, format!("make {uplink} a port of {BRIDGE}: {e}"));
    }
    if let Err(e) = nl.link_up(index) {
        let _ = nl.set_master(uplink_index, 0);
        return undo(nl, &mut g, format!("{BRIDGE}: link up: {e}"));
    }
    *g = Some(Bridge {
        index,
        uplink: Some((uplink.to_string(), uplink_index)),
    });
    drop(g);
    logln!("network: bridge {BRIDGE} over {uplink} (VM NICs join it)");
    match nl.add_port_vlans(uplink_index, TRUNK_VLANS.0, TRUNK_VLANS.1) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => logln!(
            "network: {uplink} carries no VM VLANs: this kernel has no bridge VLAN filtering"
        ),
        Err(e) => logln!(
            "network: {uplink} does not carry VLANs {}-{} for VMs: {e}",
            TRUNK_VLANS.0,
            TRUNK_VLANS.1
        ),
    }
    Ok(index)
}

/// Puts `addr/prefix` (and the default route via `gw`) on the applied link, replacing the
/// address and route it had, and records them.
fn set_addr(
    nl: &mut Netlink,
    a: &mut Applied,
    addr: Ipv4Addr,
    prefix: u8,
    gw: Option<Ipv4Addr>,
    dns: &[Ipv4Addr],
) -> Result<NetStatus, String> {
    let link = a.bridge.clone().unwrap_or_else(|| a.link.clone());
    if let Some(old_gw) = a.gateway.filter(|g| Some(*g) != gw) {
        let _ = ignore_gone(nl.del_default_route(a.index, old_gw));
        a.gateway = None;
    }
    if let Some((old, p)) = a.addr.filter(|o| *o != (addr, prefix)) {
        let _ = ignore_gone(nl.del_addr(a.index, old, p));
        a.addr = None;
    }
    nl.add_addr(a.index, addr, prefix)
        .map_err(|e| format!("{link}: add address {addr}/{prefix}: {e}"))?;
    a.addr = Some((addr, prefix));
    if let Some(g) = gw {
        nl.add_default_route(a.index, g)
            .map_err(|e| format!("{link}: default route via {g}: {e}"))?;
        a.gateway = Some(g);
    }
    a.dns = dns.to_vec();
    write_resolv(dns);
    let on = a
        .bridge
        .as_ref()
        .map(|b| format!(" on bridge {b}"))
        .unwrap_or_default();
    logln!(
        "network: {} {addr}/{prefix}{on} gateway {gw:?} dns {dns:?}",
        a.link
    );
    note_address(addr);
    Ok(a.status())
}

/// The DHCP client of `link` (as configured; named in messages), running on `holder`, the link
/// that holds the address (the bridge, or `link` itself), index `index`.
fn dhcp_thread(
    link: String,
    holder: String,
    index: u32,
    generation: u64,
    first: std::sync::mpsc::Sender<Result<NetStatus, String>>,
) {
    let current = || DHCP_GENERATION.load(Ordering::SeqCst) == generation;
    let setup = Netlink::open()
        .map_err(|e| format!("netlink: {e}"))
        .and_then(|nl| Ok((nl, dhcp::Client::new(&holder)?)));
    let (mut nl, mut client) = match setup {
        Ok(x) => x,
        Err(e) => {
            let _ = first.send(Err(e));
            return;
        }
    };
    let mut first = Some(first);
    let mut tracker = dhcp::LeaseTracker::default();
    loop {
        if !current() {
            logln!("network: DHCP client on {link} stopped");
            return;
        }
        // Short slices, so a replaced configuration stops this thread within a second.
        let ev = match client.next_event(Duration::from_secs(1)) {
            Ok(ev) => ev,
            Err(_) => continue,
        };
        let mut g = applied();
        // Checked under the lock take_down() also holds: a stale client never applies.
        let a = match g.as_mut() {
            Some(a) if current() && a.index == index => a,
            _ => return,
        };
        match tracker.on_event(ev) {
            dhcp::LeaseAction::Nothing => {}
            dhcp::LeaseAction::Apply { lease: l, .. } => {
                let r = set_addr(&mut nl, a, l.addr, l.prefix, l.router, &l.dns);
                drop(g);
                if let Some(tx) = first.take() {
                    let _ = tx.send(r);
                } else if let Err(e) = r {
                    logln!("network: applying a renewed lease: {e}");
                }
            }
            dhcp::LeaseAction::Drop { addr } => {
                // The address is no longer ours to use: off the link until a lease comes
                // back (the client keeps trying; the node keeps its cluster address).
                clear_addr(&mut nl, a);
                drop(g);
                logln!(
                    "network: DHCP lease for {addr} lost on {link}; address removed, still trying"
                );
            }
        }
    }
}

/// Takes the applied link's address and default route off (a lost lease).
fn clear_addr(nl: &mut Netlink, a: &mut Applied) {
    if let Some(g) = a.gateway.take() {
        let _ = ignore_gone(nl.del_default_route(a.index, g));
    }
    if let Some((ip, p)) = a.addr.take() {
        if let Err(e) = ignore_gone(nl.del_addr(a.index, ip, p)) {
            logln!("network: removing {ip}/{p}: {e}");
        }
    }
}

/// The management address most recently put on a link (kept when it goes away, so the next
/// one can be told apart from it).
static LAST_ADDR: Mutex<Option<Ipv4Addr>> = Mutex::new(None);

/// Says where the UI is when the management address changes and lets the node service move
/// its cluster member (`service::address_changed`). The first address (at boot) is no change.
fn note_address(addr: Ipv4Addr) {
    let before = LAST_ADDR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(addr);
    match before {
        Some(b) if b != addr => {
            logln!(
                "network: address changed from {b} to {addr}; UI now at https://{addr}:{}/",
                crate::service::API_PORT
            );
            crate::service::address_changed();
        }
        _ => {}
    }
}
