//! How a node is started: where its data lives, which disks it creates on first start, where it
//! listens. Plain data; `Node::start` acts on it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Default number of file-backed disks created on first start.
pub const DEFAULT_DISK_COUNT: u32 = 4;
/// Default size of each file-backed disk (sparse).
pub const DEFAULT_DISK_SIZE_BYTES: u64 = 8 << 30;
/// Bound on disks created at first start (each is a file and an engine store).
pub const MAX_DISK_COUNT: u32 = 64;
/// Smallest disk file the node creates (the store needs room for its metadata).
pub const MIN_DISK_SIZE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Everything the node keeps: `disks/`, `node.json`, `cairn.sock`, `audit.log`.
    pub data_dir: PathBuf,
    /// Disk files `disk0.img..` created (sparse) under `data_dir/disks/` on first start only.
    pub disk_count: u32,
    pub disk_size_bytes: u64,
    /// Unix socket for the CLI; default `data_dir/cairn.sock`.
    pub socket_path: Option<PathBuf>,
    /// Node name (default: the host name). The id is generated once and kept in `node.json`.
    pub node_name: Option<String>,
    /// Address NBD exports bind to unless a request names one.
    pub nbd_bind_ip: IpAddr,
    /// Where the HTTPS API listens, if the `api` crate is wired in; None disables it.
    pub api_listen: Option<SocketAddr>,
    /// How often `data_dir/disks/` is checked for new disk files.
    pub disk_watch_interval: Duration,
    /// Cluster address (member RPC; the join endpoint is the next port). Saved at the first
    /// start in `cluster.json`; None there picks a free loopback pair. A different address at a
    /// later start moves the member there (see [`check_cluster_readdress`]).
    pub cluster_listen: Option<SocketAddr>,
    /// Create this node's raft member on first start (a one-member cluster); when off, the
    /// node has no member until it joins a cluster.
    pub host_cluster: bool,
    /// Where the raft member keeps its identity, log and snapshot (see `raftdisk`). The raft
    /// vdisk is node-private (`Engine::create_local_vdisk`: both replicas on this node's disks),
    /// so it never waits on a peer nor needs the quorum it implements to write. `Auto` on a host
    /// (an existing DATA/cluster moves onto the pool once); the appliance (no persistent DATA)
    /// uses Pool.
    pub raft_place: RaftPlace,
    /// Memory the running VMs may hold together, in MiB; None: the host's RAM less a reserve
    /// for the host (1/8, at least 512 MiB). A start beyond it is refused (409).
    pub vm_ram_limit_mib: Option<u64>,
    /// The system log the HTTPS API serves (`GET /api/v1/system/log`): the lines the process
    /// running the node keeps (the appliance's PID 1, `cairn node`); None: the API answers 404.
    pub system_log: Option<api::LogSource>,
    /// The bridge a VM NIC's tap joins when the NIC names none: the appliance's bridge over its
    /// uplink, named by PID 1, which made it (`init::netlive::BRIDGE`). Filled into `vm create`
    /// and `vm update` requests before they are checked, so a NIC with a VLAN needs no bridge
    /// either and the definition shows the bridge. None (`cairn node`): such a tap is only
    /// brought up. A NIC that wants a plain tap here too says bridge `none` (`control::NO_BRIDGE`).
    pub vm_bridge: Option<String>,
    /// Where the default bridge comes from when it can change while the node runs (the
    /// appliance: PID 1 makes the bridge when the uplink is configured, also later from the
    /// console's menu): asked at each `vm create` / `vm update`, instead of `vm_bridge`.
    pub vm_bridge_source: Option<fn() -> Option<String>>,
}

/// Where a node's raft state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftPlace {
    /// On the pool once it has disks (files before that, moved over once); never back to
    /// files after the move.
    Auto,
    /// Files under `data_dir/cluster`.
    Files,
    /// On the pool's internal raft vdisk; starting without pool disks is an error.
    Pool,
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            disk_count: DEFAULT_DISK_COUNT,
            disk_size_bytes: DEFAULT_DISK_SIZE_BYTES,
            socket_path: None,
            node_name: None,
            nbd_bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            disk_watch_interval: Duration::from_secs(2),
            cluster_listen: None,
            host_cluster: true,
            raft_place: RaftPlace::Auto,
            vm_ram_limit_mib: None,
            system_log: None,
            vm_bridge: None,
            vm_bridge_source: None,
        }
    }

    /// The bridge a VM NIC that names none joins now (see `vm_bridge`, `vm_bridge_source`).
    pub fn default_bridge(&self) -> Option<String> {
        match self.vm_bridge_source {
            Some(now) => now(),
            None => self.vm_bridge.clone(),
        }
    }

    pub fn disks_dir(&self) -> PathBuf {
        self.data_dir.join("disks")
    }

    pub fn socket(&self) -> PathBuf {
        self.socket_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cairn.sock"))
    }
}

/// Whether this node may move its cluster address from `old` (saved at an earlier start, or the
/// one it runs on) to `new`. The move itself goes through the cluster's readdress path (the
/// member reopens on `new` and announces it; the leader updates raft and the member entry).
/// Refused, with the reason, when other members could not use `new`:
/// - an unspecified, multicast or broadcast IP is not an address a peer can connect to;
/// - the port after `new`'s (the join endpoint) and the one after that (the mirror) must exist;
/// - moving from a routable address onto loopback when the cluster has members elsewhere
///   (`other_members_remote`): they could never reach it again.
pub fn check_cluster_readdress(
    old: SocketAddr,
    new: SocketAddr,
    other_members_remote: bool,
) -> Result<(), String> {
    let ip = new.ip();
    let unusable = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if unusable {
        return Err(format!(
            "cannot move the cluster address from {old} to {new}: {ip} is not an address other \
             members can connect to (give this host's own address on the cluster network)"
        ));
    }
    if new.port() == 0 || new.port() > u16::MAX - 2 {
        return Err(format!(
            "cannot move the cluster address from {old} to {new}: the member needs port {} and \
             the two after it (join endpoint, mirror)",
            new.port()
        ));
    }
    if ip.is_loopback() && !old.ip().is_loopback() && other_members_remote {
        return Err(format!(
            "cannot move the cluster address from {old} to {new}: the cluster has members on \
             other hosts, which could never reach a loopback address (remove this node from the \
             cluster first, or give an address they can reach)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn readdress_to_a_reachable_address_is_allowed() {
        check_cluster_readdress(a("10.0.2.15:8444"), a("10.0.2.20:8444"), true).unwrap();
        check_cluster_readdress(a("127.0.0.1:7000"), a("127.0.0.9:7100"), false).unwrap();
        // Loopback to routable is fine (peers on this host reach a local address too).
        check_cluster_readdress(a("127.0.0.1:7000"), a("10.0.0.5:7000"), true).unwrap();
        // A one-member cluster (or one whose members are all local) may go to loopback.
        check_cluster_readdress(a("10.0.2.15:8444"), a("127.0.0.1:8444"), false).unwrap();
    }

    #[test]
    fn readdress_refusals_say_why() {
        let e = check_cluster_readdress(a("10.0.2.15:8444"), a("0.0.0.0:8444"), false).unwrap_err();
        assert!(
            e.contains("not an address other members can connect to"),
            "{e}"
        );
        let e =
            check_cluster_readdress(a("10.0.2.15:8444"), a("224.0.0.1:8444"), false).unwrap_err();
        assert!(e.contains("not an address"), "{e}");
        let e = check_cluster_readdress(a("10.0.2.15:8444"), a("255.255.255.255:8444"), false)
            .unwrap_err();
        assert!(e.contains("not an address"), "{e}");
        let e =
            check_cluster_readdress(a("10.0.2.15:8444"), a("10.0.2.16:65534"), false).unwrap_err();
        assert!(e.contains("two after it"), "{e}");
        let e =
            check_cluster_readdress(a("10.0.2.15:8444"), a("127.0.0.1:8444"), true).unwrap_err();
        assert!(e.contains("members on other hosts"), "{e}");
    }
}
