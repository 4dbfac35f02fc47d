//! Replicas on other nodes: attaching a peer's disk to this engine's pool, watching whether its
//! node is reachable, resyncing only the chunks written while it was away, and giving up on it
//! (marking the disk Failed so the rebalancer rebuilds redundancy elsewhere) after a grace
//! period.
//!
//! The network side (RPC, timeouts, heartbeats, fencing) lives in the `mirror` crate's
//! `RemoteReplica`; this module only sees the [`Replica`] trait's reachability and dirty-object
//! hooks. Timeouts, with the `mirror` defaults:
//! - a request to a peer that does not answer fails after the mirror call timeout (2 s); the
//!   holder is then *away* and every later mutation is recorded instead of sent, so guest I/O
//!   continues on the surviving replica within about 2 s of the failure (at once if the peer's
//!   connection is refused or reset);
//! - heartbeats every 250 ms notice an idle peer going away (two misses) and coming back;
//! - this module checks every [`WATCH_TICK`]: a returning holder's dirty chunks are copied from
//!   the surviving replica in batches (`resync`: under each chunk's stripe lock, so writers
//!   wait for that chunk only; one intent record and one flush per batch); a holder away for longer than the grace period (default [`DEFAULT_GRACE`],
//!   `Engine::set_remote_grace`) is marked Failed and its chunks re-mirrored elsewhere.
//!
//! It never decides who owns a virtual disk: fencing epochs are set by the cluster layer on the
//! `mirror` side.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use store::{ObjectId, StoreError};

use crate::core::{Disk, Inner};
use crate::error::{EngineError, Result};
use crate::meta::DiskMeta;
use crate::pool::Engine;
use crate::replica::{Reachability, Replica};
use crate::types::{DiskInfo, DiskState};

mod resync;

/// How often reachability is checked and resync runs.
pub const WATCH_TICK: Duration = Duration::from_millis(200);
/// How long a peer may be away before its replicas are rebuilt elsewhere.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// A disk of another node, served by that node's replica server.
pub struct RemoteDisk {
    /// The disk's id (its store label's disk UUID), stable across restarts.
    pub id: String,
    pub name: String,
    pub node_id: u64,
    pub size_bytes: u64,
    pub replica: Arc<dyn Replica>,
}

impl std::fmt::Debug for RemoteDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteDisk({} on node {})", self.name, self.node_id)
    }
}

/// One remote disk as the engine sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RemoteStatus {
    pub id: String,
    pub name: String,
    pub node_id: u64,
    pub state: DiskState,
    pub reachability: Reachability,
    /// Seconds since the node went away (0 while reachable).
    pub away_secs: u64,
    /// Chunks waiting for a resync.
    pub dirty_chunks: u64,
    /// Chunks copied by resyncs since this engine started.
    pub resynced_chunks: u64,
    pub resynced_bytes: u64,
    /// Times this disk came back and was resynced.
    pub resyncs: u64,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    chunks: u64,
    bytes: u64,
    resyncs: u64,
}

/// Per-engine state of remote disks (policy and counters).
pub(crate) struct RemoteCtl {
    grace: Mutex<Duration>,
    counts: Mutex<HashMap<u16, Counts>>,
    watching: std::sync::atomic::AtomicBool,
    /// Held by the resync running now (the watcher's and `remote_tick`'s rounds never overlap
    /// their copies and intents).
    resync: tokio::sync::Mutex<()>,
}

impl Default for RemoteCtl {
    fn default() -> Self {
        RemoteCtl {
            grace: Mutex::new(DEFAULT_GRACE),
            counts: Mutex::new(HashMap::new()),
            watching: std::sync::atomic::AtomicBool::new(false),
            resync: tokio::sync::Mutex::new(()),
        }
    }
}

impl Engine {
    /// How long a peer may be unreachable before its replicas are rebuilt on other disks.
    pub fn set_remote_grace(&self, grace: Duration) {
        *self.remote.grace.lock() = grace;
    }

    /// Every disk of this engine's own node, with its replica, for the replica server that
    /// serves them to peers.
    pub fn local_replicas(&self) -> Vec<(DiskInfo, Arc<dyn Replica>)> {
        let node = self.inner.cfg.node_id;
        let disks: Vec<Arc<Disk>> = self.inner.disks.read().clone();
        disks
            .iter()
            .filter(|d| d.node_id == node && d.live())
            .map(|d| (self.disk_info(d), d.replica.clone()))
            .collect()
    }

    /// Attach a disk of another node to this pool: placement then puts the second replica of
    /// each chunk on it (node is the first failure domain). The pool must have a local disk.
    /// If this engine already served I/O, the peer's existing copies are not trusted: every one
    /// of them is resynced from the local replica (or deleted if no longer wanted).
    pub async fn add_remote_disk(&self, rd: RemoteDisk) -> Result<DiskInfo> {
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        if inner.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::Busy("the engine is shutting down".into()));
        }
        if rd.node_id == inner.cfg.node_id {
            return Err(EngineError::invalid(format!(
                "remote disk {} claims to be on this node ({})",
                rd.name, rd.node_id
            )));
        }
        if rd.size_bytes < crate::MIN_DISK_BYTES {
            return Err(EngineError::invalid(format!(
                "remote disk {}: {} bytes is below the minimum disk size",
                rd.name, rd.size_bytes
            )));
        }
        let meta = inner.meta_snapshot().ok_or_else(|| {
            EngineError::Degraded("add a local disk before a remote one (no pool yet)".into())
        })?;
        if inner.disks.read().iter().any(|d| {
            d.id == rd.id && d.state() != DiskState::Removed && d.state() != DiskState::Failed
        }) {
            return Err(EngineError::AlreadyExists(format!(
                "disk {} is already in the pool",
                rd.id
            )));
        }
        if inner.disks.read().len() >= crate::meta::MAX_DISKS {
            return Err(EngineError::NoSpace("no free disk slot".into()));
        }
        let member = meta.disks.iter().find(|d| d.id == rd.id).cloned();
        let was_failed = matches!(
            member.as_ref().map(|d| d.state),
            Some(DiskState::Failed) | Some(DiskState::Removed)
        );
        let in_use = inner.in_use.load(Ordering::Acquire);
        let ours: Vec<ObjectId> = rd
            .replica
            .objects()
            .into_iter()
            .filter(|o| meta.vdisk_by_id(o.vdisk).is_some() || o.vdisk < meta.next_vdisk_id)
            .collect();
        if was_failed {
            // Its copies are from before it was given up: drop them; the rebalancer refills it.
            for obj in &ours {
                rd.replica.delete_object(*obj).await.map_err(|e| {
                    EngineError::store(format!("clearing stale copy {obj} on {}", rd.name), e)
                })?;
            }
            rd.replica
                .flush()
                .await
                .map_err(|e| EngineError::store(format!("flushing {}", rd.name), e))?;
        }
        let slot = {
            let mut disks = inner.disks.write();
            let slot = disks.len() as u16;
            disks.push(Arc::new(Disk::new(
                slot,
                rd.id.clone(),
                rd.name.clone(),
                rd.node_id,
                rd.size_bytes,
                rd.replica.clone(),
                DiskState::Active,
            )));
            slot
        };
        if !was_failed {
            for obj in ours {
                if in_use {
                    // Possibly stale: resync before it serves or counts as a replica.
                    rd.replica.mark_dirty(obj);
                    if inner.index.get(obj).is_some() {
                        inner.index.add(obj, slot);
                    }
                } else {
                    inner.index.add(obj, slot);
                }
            }
        }
        let dm = DiskMeta {
            id: rd.id.clone(),
            name: rd.name.clone(),
            node_id: rd.node_id,
            size_bytes: rd.size_bytes,
            state: DiskState::Active,
        };
        let r = inner
            .update_meta(|m| {
                match m.disks.iter_mut().find(|d| d.id == dm.id) {
                    Some(d) => *d = dm.clone(),
                    None => m.disks.push(dm.clone()),
                }
                m.map_version += 1;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            if let Some(d) = inner.disk(slot) {
                d.set_state(DiskState::Removed);
            }
            return Err(e);
        }
        inner.refresh_view();
        inner.kick_bg();
        if !self.remote.watching.swap(true, Ordering::AcqRel) {
            spawn_watch(Arc::downgrade(inner), self.remote.clone());
        }
        tracing::info!(disk = %rd.name, node = rd.node_id, "remote disk joined the pool");
        let d = inner
            .disk(slot)
            .ok_or_else(|| EngineError::io("disk vanished while joining"))?;
        Ok(self.disk_info(&d))
    }

    /// The remote disks attached to this engine.
    pub fn remote_disks(&self) -> Vec<RemoteStatus> {
        let node = self.inner.cfg.node_id;
        let counts = self.remote.counts.lock().clone();
        let disks: Vec<Arc<Disk>> = self.inner.disks.read().clone();
        disks
            .iter()
            .filter(|d| d.node_id != node && d.state() != DiskState::Removed)
            .map(|d| {
                let c = counts.get(&d.slot).copied().unwrap_or_default();
                RemoteStatus {
                    id: d.id.clone(),
                    name: d.name.clone(),
                    node_id: d.node_id,
                    state: d.state(),
                    reachability: d.replica.reachability(),
                    away_secs: d.replica.away_since().map_or(0, |t| t.elapsed().as_secs()),
                    dirty_chunks: d.replica.dirty_objects().len() as u64,
                    resynced_chunks: c.chunks,
                    resynced_bytes: c.bytes,
                    resyncs: c.resyncs,
                }
            })
            .collect()
    }

    /// Whether every remote disk is reachable with nothing left to resync.
    pub fn remotes_in_sync(&self) -> bool {
        remotes_in_sync(&self.inner)
    }

    /// Run one reachability check / resync round now (tests and tools; the watcher does the
    /// same every `WATCH_TICK`).
    pub async fn remote_tick(&self) {
        watch_round(&self.inner, &self.remote).await;
    }
}

pub(crate) fn remotes_in_sync(inner: &Inner) -> bool {
    let node = inner.cfg.node_id;
    inner
        .disks
        .read()
        .iter()
        .filter(|d| d.node_id != node && d.live())
        .all(|d| {
            d.replica.reachability() == Reachability::Up && d.replica.dirty_objects().is_empty()
        })
}

fn spawn_watch(weak: Weak<Inner>, ctl: Arc<RemoteCtl>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(WATCH_TICK).await;
            let Some(inner) = weak.upgrade() else { break };
            if inner.shutting_down.load(Ordering::Acquire) {
                break;
            }
            watch_round(&inner, &ctl).await;
        }
    });
}

async fn watch_round(inner: &Inner, ctl: &RemoteCtl) {
    let node = inner.cfg.node_id;
    let remotes: Vec<Arc<Disk>> = inner
        .disks
        .read()
        .iter()
        .filter(|d| d.node_id != node && d.live())
        .cloned()
        .collect();
    let grace = *ctl.grace.lock();
    for d in remotes {
        if inner.shutting_down.load(Ordering::Acquire) {
            return;
        }
        match d.replica.reachability() {
            Reachability::Away => {
                if d.replica.away_since().is_some_and(|t| t.elapsed() >= grace) {
                    tracing::warn!(disk = %d.name, node = d.node_id, "peer away past the grace period; rebuilding its replicas elsewhere");
                    let e = StoreError::Io {
                        context: format!(
                            "node {} unreachable for longer than {grace:?}",
                            d.node_id
                        ),
                        source: blockdev::BlockError::new(blockdev::ErrorKind::Gone, "peer away"),
                    };
                    if let Err(e) = inner.fail_disk(&d, &e).await {
                        tracing::warn!(disk = %d.name, error = %e, "recording the failed remote disk");
                    }
                }
            }
            Reachability::Back | Reachability::Up => {
                let dirty = d.replica.dirty_objects();
                if !dirty.is_empty() {
                    resync::resync_disk(inner, ctl, &d, dirty).await;
                }
                if d.replica.dirty_objects().is_empty()
                    && d.replica.reachability() == Reachability::Back
                {
                    d.replica.resync_done();
                    ctl.counts.lock().entry(d.slot).or_default().resyncs += 1;
                    tracing::info!(disk = %d.name, node = d.node_id, "returning peer resynced");
                }
            }
        }
    }
}
