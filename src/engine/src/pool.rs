//! The pool: `Engine` itself, and adding, removing, listing and probing disks. A blank disk is
//! formatted with this pool's label and joins; one of ours is opened (the store recovers) and,
//! while the engine has not served anything yet, the newest pool metadata found on any disk is
//! adopted; anything else is refused and never written.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blockdev::BlockDevice;
use store::{Label, Probe, Store};
use uuid::Uuid;

use crate::core::{now_unix, Disk, Inner};
use crate::error::{EngineError, Result};
use crate::meta::{DiskMeta, PoolMeta, MAX_DISKS};
use crate::replica::LocalReplica;
use crate::types::*;
use crate::{BLOCK_BYTES, OVERCOMMIT};

/// The block engine of one node. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    pub(crate) remote: Arc<crate::remote::RemoteCtl>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine(node {})", self.inner.cfg.node_id)
    }
}

impl Engine {
    /// Start an engine with no disks; add them with `add_disk` (after a restart add them all
    /// before opening virtual disks: the metadata is recovered from the disks themselves).
    pub async fn open(cfg: EngineConfig) -> Result<Engine> {
        let inner = Arc::new(Inner::new(cfg));
        crate::background::spawn_maintenance(&inner);
        Ok(Engine {
            inner,
            remote: Arc::default(),
        })
    }

    /// Probe without claiming: Blank / Cairn / Foreign(reason).
    pub async fn probe(dev: &dyn BlockDevice) -> Result<DiskProbe> {
        let p = Store::probe(dev)
            .await
            .map_err(|e| EngineError::store(format!("probing {}", dev.info().name), e))?;
        Ok(match p {
            Probe::Blank => DiskProbe::Blank,
            Probe::Ours(l) => DiskProbe::Cairn {
                pool_id: l.pool_id.to_string(),
                disk_id: l.disk_id.to_string(),
            },
            Probe::Foreign(reason) => DiskProbe::Foreign { reason },
        })
    }

    /// Blank disk: formatted and joins the pool (rebalance starts in the background). Our disk:
    /// opened and recovered. Foreign data or another pool's disk: Err(ForeignData), never written.
    pub async fn add_disk(&self, dev: Arc<dyn BlockDevice>) -> Result<DiskInfo> {
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        if inner.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::Busy("the engine is shutting down".into()));
        }
        let name = dev.info().name.clone();
        if inner.disks.read().len() >= MAX_DISKS {
            return Err(EngineError::NoSpace(format!(
                "at most {MAX_DISKS} disks per engine"
            )));
        }
        if dev.info().size_bytes < crate::MIN_DISK_BYTES {
            return Err(EngineError::invalid(format!(
                "{name}: {} bytes is smaller than the minimum disk size {}",
                dev.info().size_bytes,
                crate::MIN_DISK_BYTES
            )));
        }
        let probe = Store::probe(&*dev)
            .await
            .map_err(|e| EngineError::store(format!("probing {name}"), e))?;
        let slot = match probe {
            Probe::Foreign(reason) => {
                return Err(EngineError::ForeignData(format!("{name}: {reason}")))
            }
            Probe::Blank => self.join_blank(dev, name).await?,
            Probe::Ours(label) => self.join_ours(dev, name, label).await?,
        };
        inner.refresh_view();
        inner.kick_bg();
        let d = inner
            .disk(slot)
            .ok_or_else(|| EngineError::io("disk vanished while joining"))?;
        Ok(self.disk_info(&d))
    }

    async fn join_blank(&self, dev: Arc<dyn BlockDevice>, name: String) -> Result<u16> {
        let inner = &self.inner;
        let existing = inner.meta.read().as_ref().map(|m| m.pool_id.clone());
        let pool_id = match &existing {
            Some(p) => Uuid::parse_str(p)
                .map_err(|e| EngineError::Corrupt(format!("pool id {p:?}: {e}")))?,
            None => crate::ids::new_uuid(),
        };
        let disk_id = crate::ids::new_uuid();
        let label = Label {
            pool_id,
            disk_id,
            node_id: inner.cfg.node_id,
            created_unix: now_unix(),
        };
        let size_bytes = dev.info().size_bytes;
        let store = Store::format(dev, label)
            .await
            .map_err(|e| EngineError::store(format!("formatting {name}"), e))?;
        let dm = DiskMeta {
            id: disk_id.to_string(),
            name: name.clone(),
            node_id: inner.cfg.node_id,
            size_bytes,
            state: DiskState::Active,
        };
        let slot = self.attach(Arc::new(store), &dm);
        let r = match existing {
            None => {
                let mut m = PoolMeta::new(pool_id.to_string());
                m.disks.push(dm);
                inner.balanced_reads.store(true, Ordering::Release);
                inner.install_new_meta(m).await
            }
            Some(_) => {
                inner
                    .update_meta(|m| {
                        m.disks.push(dm);
                        m.map_version += 1;
                        Ok(())
                    })
                    .await
            }
        };
        if let Err(e) = r {
            // Formatted but not a member: leave it out of this engine (it rejoins on next add).
            if let Some(d) = inner.disk(slot) {
                d.set_state(DiskState::Removed);
            }
            return Err(e);
        }
        tracing::info!(disk = %name, "blank disk formatted and joined the pool");
        Ok(slot)
    }

    async fn join_ours(
        &self,
        dev: Arc<dyn BlockDevice>,
        name: String,
        label: Label,
    ) -> Result<u16> {
        let inner = &self.inner;
        let disk_id = label.disk_id.to_string();
        let current = inner.meta_snapshot();
        if let Some(m) = &current {
            if m.pool_id != label.pool_id.to_string() {
                return Err(EngineError::ForeignData(format!(
                    "{name} belongs to another Cairn pool ({}); this pool is {}",
                    label.pool_id, m.pool_id
                )));
            }
        }
        if inner
            .disks
            .read()
            .iter()
            .any(|d| d.id == disk_id && d.state() != DiskState::Removed)
        {
            return Err(EngineError::AlreadyExists(format!(
                "{name}: disk {disk_id} is already in the pool"
            )));
        }
        let store = Store::open(dev.clone())
            .await
            .map_err(|e| EngineError::store(format!("opening {name}"), e))?;
        let found = store.get_meta().and_then(|b| match PoolMeta::decode(&b) {
            Ok(m) if m.pool_id == label.pool_id.to_string() => Some(m),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(disk = %name, error = %e, "ignoring unreadable pool metadata copy");
                None
            }
        });
        let in_use = inner.in_use.load(Ordering::Acquire);
        // Adopt the newest metadata while nothing has been served from an older one.
        let adopted = match (&current, found) {
            (None, Some(f)) => Some(f),
            (None, None) => {
                let mut m = PoolMeta::new(label.pool_id.to_string());
                m.seq = 0;
                Some(m)
            }
            (Some(c), Some(f)) if f.seq > c.seq && !in_use => Some(f),
            _ => None,
        };
        if let Some(mut m) = adopted {
            if !m.clean {
                m.needs_resync = true; // persisted with the next metadata change
            }
            inner.set_reconcile_pending(m.needs_resync);
            inner
                .balanced_reads
                .store(m.clean && !m.needs_resync, Ordering::Release);
            inner.unclean_marked.store(!m.clean, Ordering::Release);
            // Disks attached earlier follow the newer record of their state.
            for d in inner.disks.read().iter() {
                if let Some(dm) = m.disks.iter().find(|dm| dm.id == d.id) {
                    if d.state() != DiskState::Removed || dm.state == DiskState::Removed {
                        d.set_state(dm.state);
                    }
                }
            }
            *inner.meta.write() = Some(m);
        }
        let meta = inner
            .meta_snapshot()
            .ok_or_else(|| EngineError::io("no pool metadata"))?;
        let member = meta.disks.iter().find(|d| d.id == disk_id).cloned();
        match member.as_ref().map(|d| d.state) {
            Some(DiskState::Failed) | Some(DiskState::Removed) => {
                let st = member.as_ref().map(|d| d.state);
                return Err(EngineError::invalid(format!(
                    "{name} was {st:?} in this pool and its contents are stale; wipe it to add it again"
                )));
            }
            Some(_) if in_use => {
                return Err(EngineError::Busy(format!(
                    "{name} is a pool member returning after I/O started; its replicas may be stale. \
                     Restart the node with all disks present"
                )));
            }
            _ => {}
        }
        let size_bytes = dev.info().size_bytes;
        let dm = member.clone().unwrap_or(DiskMeta {
            id: disk_id.clone(),
            name: name.clone(),
            node_id: label.node_id,
            size_bytes,
            state: DiskState::Active,
        });
        let store = Arc::new(store);
        let slot = self.attach(
            store,
            &DiskMeta {
                name: name.clone(),
                ..dm.clone()
            },
        );
        if let Some(d) = inner.disk(slot) {
            let mut deleted = false;
            for obj in d.replica.objects() {
                if obj.vdisk & crate::replica::FOREIGN_VDISK_BIT != 0 {
                    continue; // a replica this node holds for another node's virtual disk
                }
                if meta
                    .importing
                    .iter()
                    .any(|(id, o)| *id == disk_id && *o == obj)
                {
                    // An interrupted copy: never serve it.
                    if let Err(e) = d.replica.delete_object(obj).await {
                        tracing::warn!(%obj, error = %e, "deleting an incomplete copy failed");
                    }
                    d.write_seq.fetch_add(1, Ordering::Release);
                    deleted = true;
                    continue;
                }
                inner.index.add(obj, slot);
            }
            // The intents are cleared by the next maintenance pass: the deletes must be durable
            // first, or a crash would bring the stale partial copy back as a valid replica
            // (and it could win a later reconcile over the copy holding flushed writes).
            if deleted {
                if let Err(e) = d.replica.flush().await {
                    d.set_state(DiskState::Failed);
                    return Err(EngineError::store(
                        format!("{name}: making deleted partial copies durable"),
                        e,
                    ));
                }
            }
        }
        if member.is_none() {
            // Ours but never recorded (a crash between format and join): join now.
            let r = inner
                .update_meta(|m| {
                    m.disks.push(DiskMeta {
                        name: name.clone(),
                        ..dm
                    });
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
        }
        tracing::info!(disk = %name, "pool disk opened");
        Ok(slot)
    }

    fn attach(&self, store: Arc<Store>, dm: &DiskMeta) -> u16 {
        let mut disks = self.inner.disks.write();
        let slot = disks.len() as u16;
        disks.push(Arc::new(Disk::new(
            slot,
            dm.id.clone(),
            dm.name.clone(),
            dm.node_id,
            dm.size_bytes,
            Arc::new(LocalReplica(store)),
            dm.state,
        )));
        slot
    }

    /// Start draining a disk; it leaves the pool (Removed) once the rebalancer emptied it.
    pub async fn remove_disk(&self, disk: &str) -> Result<DiskInfo> {
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        let d = self.find_disk(disk)?;
        match d.state() {
            DiskState::Active => {}
            DiskState::Draining => return Ok(self.disk_info(&d)),
            s => return Err(EngineError::invalid(format!("disk {} is {s:?}", d.name))),
        }
        let others = inner
            .disks
            .read()
            .iter()
            .filter(|x| x.slot != d.slot && x.state() == DiskState::Active)
            .count();
        if others == 0 {
            return Err(EngineError::NoSpace(format!(
                "{} is the last active disk of the pool",
                d.name
            )));
        }
        inner.in_use.store(true, Ordering::Release);
        let id = d.id.clone();
        inner
            .update_meta(|m| {
                if let Some(dm) = m.disks.iter_mut().find(|dm| dm.id == id) {
                    dm.state = DiskState::Draining;
                }
                m.map_version += 1;
                Ok(())
            })
            .await?;
        d.set_state(DiskState::Draining);
        inner.refresh_view();
        inner.kick_bg();
        Ok(self.disk_info(&d))
    }

    fn find_disk(&self, key: &str) -> Result<Arc<Disk>> {
        self.inner
            .disks
            .read()
            .iter()
            .rev()
            .find(|d| d.id == key || d.name == key)
            .cloned()
            .ok_or_else(|| EngineError::not_found(format!("disk {key:?}")))
    }

    pub(crate) fn disk_info(&self, d: &Disk) -> DiskInfo {
        DiskInfo {
            id: d.id.clone(),
            name: d.name.clone(),
            node_id: d.node_id,
            size_bytes: d.size_bytes,
            used_bytes: d.replica.space().used_blocks * BLOCK_BYTES,
            state: d.state(),
            errors: d.errors.load(Ordering::Relaxed),
            attached: true,
        }
    }

    /// Every pool disk: attached ones with live figures, plus members recorded in the pool
    /// metadata that are not attached (yet).
    pub fn disks(&self) -> Vec<DiskInfo> {
        let attached: Vec<Arc<Disk>> = self.inner.disks.read().clone();
        let mut out: Vec<DiskInfo> = Vec::new();
        let meta = self.inner.meta_snapshot();
        for d in &attached {
            if out.iter().any(|o| o.id == d.id) {
                continue;
            }
            if let Some(latest) = attached.iter().rev().find(|x| x.id == d.id) {
                out.push(self.disk_info(latest));
            }
        }
        if let Some(m) = meta {
            for dm in &m.disks {
                if !out.iter().any(|o| o.id == dm.id) {
                    out.push(DiskInfo {
                        id: dm.id.clone(),
                        name: dm.name.clone(),
                        node_id: dm.node_id,
                        size_bytes: dm.size_bytes,
                        used_bytes: 0,
                        state: dm.state,
                        errors: 0,
                        attached: false,
                    });
                }
            }
        }
        out
    }

    pub fn pool(&self) -> PoolInfo {
        let inner = &self.inner;
        let disks: Vec<Arc<Disk>> = inner
            .disks
            .read()
            .iter()
            .filter(|d| d.live())
            .cloned()
            .collect();
        let raw_bytes: u64 = disks
            .iter()
            .filter(|d| d.state() == DiskState::Active)
            .map(|d| d.size_bytes)
            .sum();
        let used_raw_bytes: u64 = disks
            .iter()
            .map(|d| d.replica.space().used_blocks * BLOCK_BYTES)
            .sum();
        let usable_bytes = raw_bytes / 2;
        let want = disks
            .iter()
            .filter(|d| d.state() == DiskState::Active)
            .count()
            .clamp(1, crate::placement::REPLICAS);
        let degraded = inner
            .index
            .all()
            .iter()
            .filter(|(_, s)| inner.live_disks(*s).len() < want)
            .count() as u64;
        let rb = inner.rebalance.lock().clone();
        PoolInfo {
            pool_id: inner
                .meta
                .read()
                .as_ref()
                .map(|m| m.pool_id.clone())
                .unwrap_or_default(),
            raw_bytes,
            used_raw_bytes,
            usable_bytes,
            logical_limit_bytes: usable_bytes.saturating_mul(OVERCOMMIT),
            disks: disks.len(),
            degraded_chunks: degraded,
            misplaced_chunks: rb.chunks_pending,
            rebalancing: rb.running || rb.chunks_pending > 0,
        }
    }

    pub fn stats(&self) -> EngineStats {
        let inner = &self.inner;
        let c = &inner.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let disks = inner
            .disks
            .read()
            .iter()
            .map(|d| DiskStats {
                id: d.id.clone(),
                name: d.name.clone(),
                reads: l(&d.reads),
                writes: l(&d.writes),
                flushes: l(&d.flushes),
                errors: l(&d.errors),
                checksum_errors: l(&d.checksum_errors),
                repairs: l(&d.repairs),
            })
            .collect();
        EngineStats {
            reads: l(&c.reads),
            writes: l(&c.writes),
            read_bytes: l(&c.read_bytes),
            write_bytes: l(&c.write_bytes),
            flushes: l(&c.flushes),
            discards: l(&c.discards),
            checksum_errors: l(&c.checksum_errors),
            read_io_errors: l(&c.read_io_errors),
            repairs: l(&c.repairs),
            unrecoverable_reads: l(&c.unrecoverable_reads),
            degraded_chunks: self.pool().degraded_chunks,
            scrub: inner.scrub.lock().clone(),
            rebalance: RebalanceStats {
                rebuild: inner.rebuild.progress(),
                ..inner.rebalance.lock().clone()
            },
            disks,
        }
    }

    /// How long [`Engine::shutdown`] waits for the writes in flight before it gives up on
    /// them (default [`DEFAULT_SHUTDOWN_DRAIN`](crate::DEFAULT_SHUTDOWN_DRAIN)).
    pub fn set_shutdown_drain(&self, limit: std::time::Duration) {
        *self.inner.shutdown_drain.lock() = limit;
    }

    /// Refuse new writes (Busy), wait for the writes in flight (direct write plans included),
    /// flush everything, record a clean shutdown in the pool metadata, close every store.
    /// Writes still in flight after the drain limit (`set_shutdown_drain`: a device that does
    /// not answer) are given up with a logged error: the pool is then not marked clean (the
    /// next open reconciles the replicas, one of which may hold such a write) and an error
    /// comes back once the stores are closed. Further calls fail with Busy.
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        // SeqCst: see `VdiskHandle::enter_write`.
        if inner.shutting_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        inner.kick_bg();
        let drained = self.drain_writes().await;
        // Background work stops at its next check; after this nothing else touches the disks.
        let _bg = inner.bg.lock().await;
        let _op = inner.op.lock().await;
        let flushed = inner.flush_all().await;
        let mut result = flushed.and(drained);
        if result.is_ok() && inner.meta.read().is_some() {
            // A peer that missed writes must be compared in full at the next start, since the
            // list of what it missed does not survive this process.
            let peers_stale = !crate::remote::remotes_in_sync(inner);
            result = inner
                .update_meta(|m| {
                    m.clean = true;
                    m.needs_resync |= peers_stale;
                    Ok(())
                })
                .await;
        }
        let disks: Vec<Arc<Disk>> = inner
            .disks
            .read()
            .iter()
            .filter(|d| d.live())
            .cloned()
            .collect();
        for d in disks {
            if let Err(e) = d.replica.close().await {
                tracing::warn!(disk = %d.name, error = %e, "closing store failed");
                if result.is_ok() {
                    result = Err(EngineError::store(format!("closing {}", d.name), e));
                }
            }
        }
        inner.closed.store(true, Ordering::Release);
        result
    }

    /// Waits until no write of any disk is in flight, up to the drain limit.
    async fn drain_writes(&self) -> Result<()> {
        let inner = &self.inner;
        let limit = *inner.shutdown_drain.lock();
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            let n: u64 = inner
                .vdisks
                .read()
                .values()
                .map(|rt| rt.writes_in_flight())
                .sum();
            if n == 0 {
                return Ok(());
            }
            if start.elapsed() >= limit {
                tracing::error!(
                    writes = n,
                    waited_ms = limit.as_millis() as u64,
                    "shutdown: writes still in flight (a device does not answer); giving up on \
                     them, the pool is not marked clean"
                );
                return Err(EngineError::io(format!(
                    "{n} writes still in flight after {:?} (a device does not answer); the pool is \
                     not marked clean, its replicas are reconciled at the next start",
                    limit
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(10));
        }
    }
}
