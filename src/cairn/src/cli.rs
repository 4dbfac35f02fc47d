//! The command line, declared with clap. Parsing only: sizes and names are checked with the same
//! functions the node uses, so the CLI and the node reject the same input in the same words.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a hyperconverged appliance (node and CLI)"
)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Which node the CLI talks to.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The node's data directory (its socket is DIR/cairn.sock).
    #[arg(long, global = true, env = "CAIRN_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The node's control socket (overrides --data).
    #[arg(long, global = true, env = "CAIRN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Talk to a node's HTTPS API instead of its socket (`https://host:8443`).
    #[arg(long, global = true, env = "CAIRN_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// API token for --server (create one under Users & tokens).
    #[arg(
        long,
        global = true,
        env = "CAIRN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Certificate to trust for --server (the node's own: Settings, or DATA/api/tls/cert.pem).
    #[arg(long, global = true, env = "CAIRN_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

impl Target {
    pub fn socket_path(&self) -> PathBuf {
        if let Some(s) = &self.socket {
            return s.clone();
        }
        self.data
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"))
            .join("cairn.sock")
    }
}

pub fn size_arg(s: &str) -> Result<u64, String> {
    control::parse_size(s).map_err(|e| e.message)
}

fn name_arg(s: &str) -> Result<String, String> {
    control::validate_name("the", s).map_err(|e| e.message)?;
    Ok(s.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node on this host in the foreground (Ctrl-C stops it).
    Node(NodeArgs),
    /// Physical disks of the pool.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Virtual disks.
    #[command(subcommand)]
    Vdisk(VdiskCmd),
    /// Snapshots of virtual disks.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Running NBD exports.
    #[command(subcommand)]
    Nbd(NbdCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(crate::vmcmd::VmCmd),
    /// Pool capacity.
    Pool,
    /// Node statistics.
    Stats,
    /// Benchmarks (not tests): compare against the anchors in BENCHMARKS.md.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// The cluster this node belongs to: status, join tokens, join, remove.
    #[command(subcommand)]
    Cluster(crate::clustercmd::ClusterCmd),
    /// Run a witness in the foreground: no disks, no VMs, only a cluster vote.
    Witness(crate::clustercmd::WitnessArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Data directory (created if missing).
    #[arg(long, env = "CAIRN_DATA", value_name = "DIR", default_value = "data")]
    pub data: PathBuf,
    /// Number of sparse disk files to create on first start.
    #[arg(long, default_value_t = node::DEFAULT_DISK_COUNT)]
    pub disks: u32,
    /// Size of each disk file created on first start.
    #[arg(long, value_parser = size_arg, default_value = "8G")]
    pub disk_size: u64,
    /// Node name (default: host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Address NBD exports bind to by default.
    #[arg(long, default_value = "127.0.0.1")]
    pub nbd_bind: std::net::IpAddr,
    /// HTTPS API address.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub api_listen: std::net::SocketAddr,
    /// Do not serve the HTTPS API.
    #[arg(long)]
    pub no_api: bool,
    /// Cluster address (ip:port; the join endpoint is the next port). Fixed at the first
    /// start; default a free port on 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    pub cluster_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum DiskCmd {
    /// List the pool's disks.
    List,
    /// Add a file or block device to the pool (data that is not Cairn's is refused, untouched).
    Add { path: PathBuf },
    /// Drain a disk and take it out of the pool.
    Remove { disk: String },
    /// Verify every block of every disk in the background.
    Scrub,
    /// Say what a file or device holds, without claiming it.
    Probe { path: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum VdiskCmd {
    /// Create a thin virtual disk (SIZE like 10G, 512M, 4096).
    Create {
        #[arg(value_parser = name_arg)]
        name: String,
        #[arg(value_parser = size_arg)]
        size: u64,
    },
    List,
    Show {
        name: String,
    },
    /// Grow a virtual disk.
    Resize {
        name: String,
        #[arg(value_parser = size_arg)]
        size: u64,
    },
    Delete {
        name: String,
    },
    /// Thin clone of a disk (or of one of its snapshots).
    Clone {
        source: String,
        #[arg(value_parser = name_arg)]
        name: String,
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Create NAME from a raw image file.
    Import {
        #[arg(value_parser = name_arg)]
        name: String,
        file: PathBuf,
    },
    /// Write a disk (or snapshot) to a new sparse raw image file.
    Export {
        name: String,
        file: PathBuf,
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Planned move of a disk to another data node (clustering): its holder stops serving
    /// it and flushes, NODE (id or name) adopts it from its replicas and serves it. Refused
    /// while a chunk of the disk is not up to date on the other nodes, and while a VM on its
    /// node uses it, running or stopped, even with --force: move the VM with all its disks
    /// (`cairn vm move VM --to NODE`) or detach the disk first. An NBD-exported disk only
    /// with --force (the exports are stopped).
    Takeover {
        name: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        force: bool,
    },
    /// Export a disk (or snapshot) over NBD.
    Nbd {
        name: String,
        #[arg(long)]
        snapshot: Option<String>,
        /// ip:port (default 127.0.0.1 and a free port).
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        read_only: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    Create {
        vdisk: String,
        #[arg(value_parser = name_arg)]
        name: String,
    },
    List {
        vdisk: String,
    },
    Delete {
        vdisk: String,
        name: String,
    },
    /// Roll a disk back to a snapshot.
    Rollback {
        vdisk: String,
        name: String,
    },
    /// Byte ranges that differ between snapshot FROM and TO (default: the live disk).
    Diff {
        vdisk: String,
        from: String,
        to: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NbdCmd {
    List,
    Stop { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// The block engine against fio and qemu-storage-daemon (see BENCHMARKS.md).
    Engine(crate::bench::EngineBenchArgs),
    /// The HTTPS API against nginx serving the same JSON (see BENCHMARKS.md).
    Api(crate::apibench::ApiBenchArgs),
    /// The VMM against QEMU on the same test guest and backing file (see BENCHMARKS.md).
    Vmm(crate::benchmore::VmmBenchArgs),
    /// Metadata commits of a three-member cluster against openraft's in-memory store, and
    /// mirrored I/O between two node processes over mutual TLS against one engine.
    Cluster(crate::benchmore::ClusterBenchArgs),
    /// Node 2 of `cairn bench cluster`'s mirrored I/O, started by it as a separate process.
    #[command(hide = true)]
    ClusterPeer(crate::benchmore::ClusterPeerArgs),
}
