//! A Cairn node on one host: its data directory, its disks, its engine, and the one
//! `control::Controller` every front end (CLI socket, HTTPS API) goes through.
//!
//! `Node::start` creates `DATA/disks/` and, on first start only, sparse disk files; opens every
//! disk file and adds it to the engine (which recovers its metadata from them); watches the disk
//! directory for new files; and serves the CLI on `DATA/cairn.sock`. `run` does all that on its
//! own tokio runtime until SIGINT/SIGTERM, then shuts the engine down cleanly.
//!
//! This crate never touches disk contents itself (the engine does) and never decides policy
//! outside `controller` (front ends only forward).
#![forbid(unsafe_code)]

mod admission;
mod clusterctl;
mod clusterhost;
mod config;
mod controller;
mod convert;
mod disks;
mod error;
mod events;
mod exports;
mod filedev;
mod forward;
mod harestart;
mod https;
mod identity;
mod internal;
mod lease;
mod mirrorhost;
pub mod raftdisk;
pub mod socket;
mod statefile;
mod takeover;
mod transfer;
mod vms;
mod witness;

pub use config::{
    check_cluster_readdress, NodeConfig, RaftPlace, DEFAULT_DISK_COUNT, DEFAULT_DISK_SIZE_BYTES,
    MIN_DISK_SIZE_BYTES,
};
pub use controller::NodeController;
pub use disks::open_device;
pub use error::{NodeError, Result};
pub use exports::VdiskExport;
pub use filedev::FileDevice;
pub use internal::{is_internal_vdisk, INTERNAL_VDISK_PREFIX};
pub use witness::{run_witness, WitnessConfig};

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{Actor, ControlError, Controller, Reply, Request};
use engine::{Engine, EngineConfig};
use tokio::sync::watch;

pub(crate) struct NodeInner {
    pub(crate) cfg: NodeConfig,
    pub(crate) node_id: u64,
    pub(crate) node_name: String,
    pub(crate) engine: Engine,
    pub(crate) disks: tokio::sync::Mutex<disks::DiskRegistry>,
    pub(crate) exports: exports::Exports,
    pub(crate) vms: vms::Vms,
    pub(crate) cluster: clusterhost::ClusterHost,
    pub(crate) mirror: mirrorhost::MirrorHost,
    /// The isolation lease and the I/O gate it drives (see `lease`).
    pub(crate) lease: lease::Lease,
    /// What the node did by itself, for the API (see `events`).
    pub(crate) events: events::NodeEvents,
    /// Requests passed on to other members (see `forward`).
    pub(crate) forward: forward::Forwarding,
    pub(crate) started: Instant,
    pub(crate) requests: AtomicU64,
    /// Mutations executed so far (see `Controller::generation`).
    pub(crate) changes: AtomicU64,
    audit_log: parking_lot::Mutex<Option<File>>,
}

impl NodeInner {
    /// One audit line per mutation (and per failed request): who, what, when, result.
    pub(crate) fn audit(
        &self,
        actor: &Actor,
        req: &Request,
        result: &std::result::Result<Reply, ControlError>,
        took: Duration,
    ) {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (ok, code, message) = match result {
            Ok(_) => (true, None, None),
            Err(e) => (false, Some(e.code.as_str()), Some(e.message.as_str())),
        };
        let line = serde_json::json!({
            "ts_unix_ms": ts_ms, "user": actor.user, "role": actor.role, "via": actor.via,
            "action": req.action(), "request": req, "ok": ok, "code": code,
            "message": message, "took_ms": took.as_millis() as u64,
        });
        if ok {
            tracing::info!(user = %actor.user, action = req.action(), "audit: ok");
        } else {
            tracing::info!(user = %actor.user, action = req.action(), error = message.unwrap_or(""), "audit: failed");
        }
        if let Some(f) = self.audit_log.lock().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// A running node. Dropping it without `shutdown` leaves the engine to recover on next start.
pub struct Node {
    inner: Arc<NodeInner>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The HTTPS API, when `cfg.api_listen` is set.
    api: Option<api::ApiHandle>,
    _lock: File,
}

impl Node {
    /// Start a node on `cfg.data_dir` (see the module docs). Must run inside a tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node> {
        let data = cfg.data_dir.clone();
        std::fs::create_dir_all(cfg.disks_dir())
            .map_err(|e| NodeError::io("create data directory", &data, e))?;
        let lock = identity::lock(&data)?;
        let (id, first_start) = identity::load_or_create(&cfg)?;
        if first_start {
            let made = disks::create_initial_disks(&cfg)?;
            tracing::info!(
                count = made.len(),
                size = cfg.disk_size_bytes,
                "created sparse disk files"
            );
            identity::save(&data, &id)?;
        }
        let engine = Engine::open(EngineConfig {
            node_id: id.node_id,
            node_name: id.node_name.clone(),
        })
        .await?;
        let cluster = clusterhost::ClusterHost::new(
            &data,
            &id.node_name,
            cfg.cluster_listen,
            cluster::Role::Data,
        )?;
        let audit_path = data.join("audit.log");
        let audit_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&audit_path)
            .map_err(|e| NodeError::io("open audit log", &audit_path, e))?;
        let inner = Arc::new(NodeInner {
            node_id: id.node_id,
            node_name: id.node_name.clone(),
            engine,
            disks: Default::default(),
            exports: Default::default(),
            vms: vms::Vms::load(&data, cfg.vm_ram_limit_mib)?,
            cluster,
            mirror: Default::default(),
            lease: Default::default(),
            events: Default::default(),
            forward: Default::default(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            audit_log: parking_lot::Mutex::new(Some(audit_file)),
            cfg,
        });
        let ctl = NodeController {
            inner: inner.clone(),
        };
        // Every disk file present now joins (or re-joins: the engine recovers from them).
        ctl.scan_disk_dir().await;
        // The member's state lives on the pool (raftdisk), so it opens once the disks are in.
        let media = raftdisk::host_media(&inner.engine, &data, inner.cfg.raft_place).await?;
        inner
            .cluster
            .open_member(inner.cfg.host_cluster, media)
            .await?;
        // Moves whose outcome was not known when this node stopped: claimed again before any
        // request is taken, settled in the background.
        takeover::settles::resume(&inner);
        // What peers described here, before any request is taken: a local copy from before a
        // disk left and came back is refused from the start (`takeover::gather`).
        inner.mirror.open_state(&inner);
        transfer::clean_interrupted_imports(&inner.engine, &data.join("importing")).await;
        {
            // The cluster's record of this node's virtual disks is made to match the engine;
            // in the background, since it waits for a leader.
            let inner = inner.clone();
            use crate::clusterhost::{CREATING_DIR, DELETING_DIR};
            let (deleting, creating) = (data.join(DELETING_DIR), data.join(CREATING_DIR));
            tokio::spawn(async move {
                inner
                    .cluster
                    .reconcile_vdisks(&inner.engine, &deleting, &creating)
                    .await
            });
        }

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let sock = inner.cfg.socket();
        // We hold the lock, so a socket file left behind is stale.
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)
            .map_err(|e| NodeError::io("bind control socket", &sock, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| NodeError::io("protect control socket", &sock, e))?;
        tasks.push(tokio::spawn(socket::serve(
            listener,
            Arc::new(ctl.clone()),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(watch_disks(ctl, shutdown_rx.clone())));
        // Mirrored I/O with the other data members (see mirrorhost).
        tasks.push(tokio::spawn(mirrorhost::run(
            inner.clone(),
            shutdown_rx.clone(),
        )));
        // The isolation lease: a node cut off from the majority stops serving (see lease).
        tasks.push(tokio::spawn(takeover::peer::run(
            inner.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(lease::run(inner.clone(), shutdown_rx)));
        let api_ctl = Arc::new(NodeController {
            inner: inner.clone(),
        });
        let api = https::start(&inner.cfg, api_ctl).await?;
        Ok(Node {
            inner,
            shutdown_tx,
            tasks,
            api,
            _lock: lock,
        })
    }

    /// The control surface, for front ends (the HTTPS API).
    pub fn controller(&self) -> Arc<dyn Controller> {
        Arc::new(NodeController {
            inner: self.inner.clone(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn socket_path(&self) -> PathBuf {
        self.inner.cfg.socket()
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// Where the HTTPS API listens (None when disabled).
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().map(|a| a.local_addr)
    }

    /// The HTTPS API's certificate store (None when the API is disabled), for re-issuing the
    /// node's own certificate when the host's address changes (see `api::ApiHandle::certs`).
    pub fn api_certs(&self) -> Option<std::sync::Arc<api::tls::CertStore>> {
        self.api.as_ref().map(|a| a.certs())
    }

    /// This node's cluster address (member RPC; joiners use it with `cluster join`).
    pub fn cluster_addr(&self) -> std::net::SocketAddr {
        self.inner.cluster.address()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    /// Moves this node's cluster member to `addr` while it runs (the host's address changed):
    /// the member reopens there and announces it to the cluster. Refused (nothing changes)
    /// when other members could not use `addr`; see `config::check_cluster_readdress`.
    pub async fn set_cluster_addr(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::result::Result<(), control::ControlError> {
        self.inner.cluster.readdress(addr).await
    }

    /// Stop serving, end NBD exports, and flush and checkpoint the engine.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown_tx.send(true);
        if let Some(a) = self.api {
            a.shutdown().await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.inner.exports.stop_all().await;
        self.inner.vms.stop_all().await;
        self.inner.cluster.shutdown().await;
        let res = self.inner.engine.shutdown().await;
        let _ = std::fs::remove_file(self.inner.cfg.socket());
        res.map_err(NodeError::from)
    }
}

async fn watch_disks(ctl: NodeController, mut shutdown: watch::Receiver<bool>) {
    let every = ctl.inner.cfg.disk_watch_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => ctl.scan_disk_dir().await,
            _ = shutdown.changed() => return,
        }
    }
}

/// Run a node in the foreground until SIGINT or SIGTERM (blocking; builds its own runtime).
/// `on_started` is called once the node serves (the binary prints where to find it).
pub fn run(cfg: NodeConfig, on_started: impl FnOnce(&Node)) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-node")
        .build()
        .map_err(|e| NodeError::Runtime(e.to_string()))?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| NodeError::Runtime(format!("SIGTERM handler: {e}")))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| NodeError::Runtime(format!("SIGINT handler: {e}")))?;
        let node = Node::start(cfg).await?;
        on_started(&node);
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        node.shutdown().await
    })
}
