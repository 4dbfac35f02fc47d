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
    /// Cluster address (member RPC; the join endpoint is the next port). Fixed at the first
    /// start in `cluster.json`; None there picks a free loopback pair.
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
