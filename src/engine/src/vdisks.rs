//! Virtual disk and snapshot operations: create, resize, delete, open, snapshot, rollback, thin
//! clone, changed ranges. Snapshots are O(1) (record the generation, bump it, persist); clones
//! share blocks through `clone_object` per chunk; every metadata change is durable before it
//! returns.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use store::ObjectId;

use crate::core::{now_unix, Inner, SnapRt, VdiskRt};
use crate::error::{EngineError, Result};
use crate::handle::VdiskHandle;
use crate::io::Op;
use crate::meta::{
    validate_name, SnapMeta, VdiskMeta, MAX_SNAPSHOTS_PER_VDISK, MAX_SNAPSHOTS_TOTAL,
};
use crate::placement::mix64;
use crate::pool::Engine;
use crate::types::{SnapshotInfo, VdiskInfo, VdiskStats};
use crate::{BLOCK_BYTES, CHUNK_BYTES, MAX_VDISK_BYTES, OVERCOMMIT};

/// A disk's refusal of new I/O (`rolling_back`, `deleting`) raised by an operation that waits
/// for the writes already admitted: if the operation ends before it recorded its change (an
/// error, or its caller dropped it while it waited: a client gone, a timeout), the flag is put
/// back to what the metadata says (`keep`), else the disk refused I/O until a restart.
/// Forgotten once the change is recorded.
struct Fence<'a> {
    inner: &'a Inner,
    flag: &'a std::sync::atomic::AtomicBool,
    id: u64,
    keep: fn(&crate::meta::PoolMeta, u64) -> bool,
}

impl Drop for Fence<'_> {
    fn drop(&mut self) {
        let keep = self
            .inner
            .meta
            .read()
            .as_ref()
            .is_some_and(|m| (self.keep)(m, self.id));
        self.flag.store(keep, Ordering::Release);
    }
}

impl Inner {
    /// Runtime state for a disk recorded in the metadata (created on first use).
    pub(crate) fn rt_for(&self, v: &VdiskMeta) -> Arc<VdiskRt> {
        if let Some(rt) = self.vdisk_rt(v.id) {
            return rt;
        }
        let pending = self
            .meta
            .read()
            .as_ref()
            .is_some_and(|m| m.rollbacks.iter().any(|r| r.0 == v.id));
        let mut map = self.vdisks.write();
        map.entry(v.id)
            .or_insert_with(|| {
                let rt = VdiskRt::new(v.id, v.seed, v.size_bytes, v.gen, v.pin_gen());
                rt.rolling_back.store(pending, Ordering::Release);
                Arc::new(rt)
            })
            .clone()
    }

    fn logical_limit(&self) -> u64 {
        let raw: u64 = self
            .disks
            .read()
            .iter()
            .filter(|d| d.state() == crate::types::DiskState::Active)
            .map(|d| d.size_bytes)
            .sum();
        (raw / 2).saturating_mul(OVERCOMMIT).min(MAX_VDISK_BYTES)
    }

    fn check_size(&self, size_bytes: u64) -> Result<u64> {
        if size_bytes == 0 {
            return Err(EngineError::invalid("size must be greater than zero"));
        }
        let size = size_bytes
            .checked_next_multiple_of(BLOCK_BYTES)
            .ok_or_else(|| EngineError::invalid("size too large"))?;
        let limit = self.logical_limit();
        if size > limit {
            return Err(EngineError::NoSpace(format!(
                "size {size} exceeds the pool's logical limit of {limit} bytes \
                 (usable capacity x {OVERCOMMIT})"
            )));
        }
        Ok(size)
    }

    fn info(&self, v: &VdiskMeta) -> VdiskInfo {
        let chunks = self.index.count_of(v.id);
        VdiskInfo {
            name: v.name.clone(),
            id: v.id,
            size_bytes: v.size_bytes,
            used_bytes: (chunks * CHUNK_BYTES).min(v.size_bytes),
            snapshots: v.snapshots.iter().filter(|s| !s.hidden).count(),
            created_unix: v.created_unix,
        }
    }

    fn vdisk_stats(&self, v: &VdiskMeta) -> VdiskStats {
        let info = self.info(v);
        let mut s = VdiskStats {
            name: info.name,
            id: v.id,
            size_bytes: v.size_bytes,
            used_bytes: info.used_bytes,
            latency_buckets_us: crate::core::LATENCY_BUCKETS_US.to_vec(),
            ..VdiskStats::default()
        };
        // Never opened since start: all zeros, histograms included.
        let zero = crate::types::OpStats {
            latency_hist: vec![0; crate::core::LATENCY_BUCKETS_US.len() + 1],
            ..Default::default()
        };
        (s.read, s.write, s.flush, s.discard) = (zero.clone(), zero.clone(), zero.clone(), zero);
        if let Some(rt) = self.vdisk_rt(v.id) {
            s.read = rt.io.read.snapshot();
            s.write = rt.io.write.snapshot();
            s.flush = rt.io.flush.snapshot();
            s.discard = rt.io.discard.snapshot();
        }
        s
    }

    /// Take a snapshot (hidden ones back a clone of the live disk). Returns its record.
    async fn snapshot_locked(&self, vdisk: &str, snap: &str, hidden: bool) -> Result<SnapMeta> {
        let (sm, gen, id) = self
            .update_meta(|m| {
                let total = m.total_snapshots();
                let next_snap = m.next_snap_id;
                let v = m.vdisk_mut(vdisk)?;
                if v.snapshots.iter().any(|s| s.name == snap) {
                    return Err(EngineError::AlreadyExists(format!("snapshot {snap:?} of {vdisk:?}")));
                }
                if v.snapshots.len() >= MAX_SNAPSHOTS_PER_VDISK || total >= MAX_SNAPSHOTS_TOTAL {
                    return Err(EngineError::NoSpace(format!(
                        "snapshot limit reached ({MAX_SNAPSHOTS_PER_VDISK} per disk, {MAX_SNAPSHOTS_TOTAL} per pool)"
                    )));
                }
                let sm = SnapMeta { name: snap.to_string(), id: next_snap, gen: v.gen, created_unix: now_unix(), hidden };
                v.gen += 1;
                v.snapshots.push(sm.clone());
                let out = (sm, v.gen, v.id);
                m.next_snap_id += 1;
                Ok(out)
            })
            .await?;
        if let Some(rt) = self.vdisk_rt(id) {
            // Writes that already picked the old generation land in the snapshot; wait for them
            // so the snapshot is stable once this returns.
            rt.change_gens(gen, sm.gen).await;
        }
        Ok(sm)
    }

    async fn delete_snapshot_locked(&self, vdisk: &str, snap_id: u64) -> Result<()> {
        let (id, gen, pin) = self
            .update_meta(|m| {
                let v = m.vdisk_mut(vdisk)?;
                let before = v.snapshots.len();
                v.snapshots.retain(|s| s.id != snap_id);
                if v.snapshots.len() == before {
                    return Err(EngineError::not_found(format!(
                        "snapshot {snap_id} of {vdisk:?}"
                    )));
                }
                let out = (v.id, v.gen, v.pin_gen());
                if !m.prune_pending.contains(&out.0) {
                    m.prune_pending.push(out.0);
                }
                Ok(out)
            })
            .await?;
        if let Some(rt) = self.vdisk_rt(id) {
            if let Some(s) = rt.snaps.write().remove(&snap_id) {
                s.deleted.store(true, Ordering::Release);
            }
            rt.change_gens(gen, pin).await;
        }
        self.kick_bg();
        Ok(())
    }

    /// Roll every chunk of `vid` back to `snap_gen` (idempotent), make it durable, then clear
    /// the record. Caller holds the op lock.
    pub(crate) async fn finish_rollback(&self, vid: u64, snap_gen: u64) -> Result<()> {
        if let Some(rt) = self.vdisk_rt(vid) {
            let g = rt.enter();
            if self.shutting_down.load(Ordering::SeqCst) {
                // Still recorded: the next open finishes it.
                return Err(EngineError::Busy("the engine is shutting down".into()));
            }
            for (obj, _) in self.index.of_vdisk(vid) {
                let _l = self.stripe(obj).read().await;
                let Some(holders) = self.index.get(obj) else {
                    continue;
                };
                self.replicate(obj, holders, &Op::Rollback { snap_gen }, g.gen, g.pin)
                    .await?;
            }
        } else {
            // Not opened in this run: build its state from the metadata first.
            let m = self
                .meta_snapshot()
                .ok_or_else(|| EngineError::io("no pool metadata"))?;
            if let Some(v) = m.vdisk_by_id(vid) {
                self.rt_for(v);
                return Box::pin(self.finish_rollback(vid, snap_gen)).await;
            }
        }
        self.flush_all().await?;
        self.update_meta(|m| {
            m.rollbacks.retain(|r| *r != (vid, snap_gen));
            Ok(())
        })
        .await?;
        if let Some(rt) = self.vdisk_rt(vid) {
            rt.rolling_back.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Delete every object of a disk from every live replica (space is freed; a crash midway
    /// leaves orphans the maintenance task removes).
    pub(crate) async fn delete_objects(&self, vdisk: u64) {
        for (obj, holders) in self.index.of_vdisk(vdisk) {
            let _l = self.stripe(obj).write().await;
            for d in self.live_disks(holders) {
                match d.replica.delete_object(obj).await {
                    Ok(()) => {
                        d.write_seq.fetch_add(1, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(%obj, disk = %d.name, error = %e, "delete_object failed")
                    }
                }
            }
            self.index.remove(obj);
        }
    }
}

impl Engine {
    pub async fn create_vdisk(&self, name: &str, size_bytes: u64) -> Result<VdiskInfo> {
        self.create_vdisk_placed(name, size_bytes, false).await
    }

    /// A node-private virtual disk: both replicas on this node's own disks, never on a peer's,
    /// so its writes never wait for (or need the cluster's permission without) a peer. For the
    /// node's own state — its raft log and configuration record — which must stay writable
    /// exactly when the rest of the cluster is unreachable.
    pub async fn create_local_vdisk(&self, name: &str, size_bytes: u64) -> Result<VdiskInfo> {
        self.create_vdisk_placed(name, size_bytes, true).await
    }

    /// Make an existing virtual disk node-private (see `create_local_vdisk`); the background
    /// rebalance then moves replicas it has on peers' disks onto this node's. Idempotent.
    pub async fn make_vdisk_local(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        if self.meta()?.vdisk(name)?.local_only {
            return Ok(());
        }
        inner
            .update_meta(|m| {
                let v = m
                    .vdisks
                    .iter_mut()
                    .find(|v| v.name == name)
                    .ok_or_else(|| EngineError::NotFound(format!("virtual disk {name:?}")))?;
                v.local_only = true;
                Ok(())
            })
            .await
    }

    async fn create_vdisk_placed(
        &self,
        name: &str,
        size_bytes: u64,
        local_only: bool,
    ) -> Result<VdiskInfo> {
        validate_name(name)?;
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        inner.mark_unclean().await?;
        let size = inner.check_size(size_bytes)?;
        let v = inner
            .update_meta(|m| {
                if m.vdisks.iter().any(|v| v.name == name) {
                    return Err(EngineError::AlreadyExists(format!("virtual disk {name:?}")));
                }
                let id = m.take_vdisk_id()?;
                let v = VdiskMeta {
                    name: name.to_string(),
                    id,
                    size_bytes: size,
                    gen: 1,
                    seed: mix64(id ^ crate::ids::new_uuid().as_u64_pair().0),
                    created_unix: now_unix(),
                    snapshots: Vec::new(),
                    local_only,
                };
                m.vdisks.push(v.clone());
                Ok(v)
            })
            .await?;
        Ok(inner.info(&v))
    }

    pub fn vdisks(&self) -> Vec<VdiskInfo> {
        let meta = self.inner.meta_arc();
        meta.map(|m| m.vdisks.iter().map(|v| self.inner.info(v)).collect())
            .unwrap_or_default()
    }

    pub fn vdisk(&self, name: &str) -> Result<VdiskInfo> {
        let m = self.meta()?;
        Ok(self.inner.info(m.vdisk(name)?))
    }

    /// I/O counters of one virtual disk since the engine started (zeros until it is opened),
    /// with its size and space used.
    pub fn vdisk_stats(&self, name: &str) -> Result<VdiskStats> {
        let m = self.meta()?;
        Ok(self.inner.vdisk_stats(m.vdisk(name)?))
    }

    /// `vdisk_stats` of every virtual disk, in metadata order.
    pub fn vdisks_stats(&self) -> Vec<VdiskStats> {
        self.inner
            .meta_arc()
            .map(|m| m.vdisks.iter().map(|v| self.inner.vdisk_stats(v)).collect())
            .unwrap_or_default()
    }

    fn meta(&self) -> Result<Arc<crate::meta::PoolMeta>> {
        self.inner
            .meta_arc()
            .ok_or_else(|| EngineError::not_found("the pool has no disks yet"))
    }

    /// Grow a disk (shrinking is refused: it would silently drop data).
    pub async fn resize_vdisk(&self, name: &str, new_size_bytes: u64) -> Result<VdiskInfo> {
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        inner.mark_unclean().await?;
        let size = inner.check_size(new_size_bytes)?;
        let v = inner
            .update_meta(|m| {
                let v = m.vdisk_mut(name)?;
                if size < v.size_bytes {
                    return Err(EngineError::invalid(format!(
                        "{name}: shrinking from {} to {size} bytes is not supported",
                        v.size_bytes
                    )));
                }
                v.size_bytes = size;
                Ok(v.clone())
            })
            .await?;
        if let Some(rt) = inner.vdisk_rt(v.id) {
            rt.size_bytes.store(size, Ordering::Release);
        }
        Ok(inner.info(&v))
    }

    /// Delete a disk and all its snapshots. Clones keep their data (shared blocks are
    /// reference counted in the stores). New I/O on the disk is refused (Busy) from the start,
    /// and the writes already admitted are waited for first (else one landing after its chunk
    /// was deleted would leave an orphan object); if some are still in flight after the drain
    /// limit (30 s: a device that does not answer), Busy and nothing is deleted.
    pub async fn delete_vdisk(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        inner.mark_unclean().await?;
        let rt = inner.rt_for(self.meta()?.vdisk(name)?);
        let id = rt.id;
        // SeqCst: see `VdiskHandle::enter_write`.
        rt.deleting.store(true, Ordering::SeqCst);
        // Not deleted after all (an error, or the caller gone while it waited): serves again.
        let fence = Fence {
            inner,
            flag: &rt.deleting,
            id,
            keep: |m, id| m.vdisk_by_id(id).is_none(),
        };
        let limit = *inner.io_drain.lock();
        let removed = match rt.drain_writes(limit).await {
            Ok(()) => {
                inner
                    .update_meta(|m| {
                        m.vdisk(name)?;
                        m.vdisks.retain(|v| v.id != id);
                        m.prune_pending.retain(|p| *p != id);
                        Ok(())
                    })
                    .await
            }
            Err(n) => Err(EngineError::Busy(format!(
                "{name:?}: {n} writes still in flight after {limit:?} (a device does not \
                 answer); not deleted"
            ))),
        };
        removed?;
        std::mem::forget(fence);
        if let Some(rt) = inner.vdisks.write().remove(&id) {
            rt.deleted.store(true, Ordering::Release);
            for s in rt.snaps.read().values() {
                s.deleted.store(true, Ordering::Release);
            }
        }
        inner.delete_objects(id).await;
        Ok(())
    }

    pub fn open_vdisk(&self, name: &str) -> Result<VdiskHandle> {
        let m = self.meta()?;
        let v = m.vdisk(name)?;
        self.inner.in_use.store(true, Ordering::Release);
        let rt = self.inner.rt_for(v);
        Ok(VdiskHandle {
            inner: self.inner.clone(),
            rt,
            snap: None,
            name: name.to_string(),
        })
    }

    pub fn open_snapshot(&self, vdisk: &str, snap: &str) -> Result<VdiskHandle> {
        let m = self.meta()?;
        let v = m.vdisk(vdisk)?;
        let s = v.snapshot(snap)?;
        self.inner.in_use.store(true, Ordering::Release);
        let rt = self.inner.rt_for(v);
        let srt = rt
            .snaps
            .write()
            .entry(s.id)
            .or_insert_with(|| {
                Arc::new(SnapRt {
                    gen: s.gen,
                    deleted: false.into(),
                })
            })
            .clone();
        Ok(VdiskHandle {
            inner: self.inner.clone(),
            rt,
            snap: Some(srt),
            name: format!("{vdisk}@{snap}"),
        })
    }

    /// O(1): record the current generation as the snapshot's, bump it, persist.
    pub async fn create_snapshot(&self, vdisk: &str, snap: &str) -> Result<SnapshotInfo> {
        validate_name(snap)?;
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        inner.mark_unclean().await?;
        let sm = inner.snapshot_locked(vdisk, snap, false).await?;
        Ok(SnapshotInfo {
            vdisk: vdisk.to_string(),
            name: sm.name,
            id: sm.id,
            created_unix: sm.created_unix,
        })
    }

    pub fn snapshots(&self, vdisk: &str) -> Result<Vec<SnapshotInfo>> {
        let m = self.meta()?;
        let v = m.vdisk(vdisk)?;
        Ok(v.snapshots
            .iter()
            .filter(|s| !s.hidden)
            .map(|s| SnapshotInfo {
                vdisk: vdisk.to_string(),
                name: s.name.clone(),
                id: s.id,
                created_unix: s.created_unix,
            })
            .collect())
    }

    /// Remove the snapshot from the metadata; its old versions are pruned in the background.
    pub async fn delete_snapshot(&self, vdisk: &str, snap: &str) -> Result<()> {
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        inner.mark_unclean().await?;
        let id = self.meta()?.vdisk(vdisk)?.snapshot(snap)?.id;
        inner.delete_snapshot_locked(vdisk, id).await
    }

    /// Make the live disk's contents equal to the snapshot's (later snapshots stay).
    pub async fn rollback(&self, vdisk: &str, snap: &str) -> Result<()> {
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        inner.mark_unclean().await?;
        let m = self.meta()?;
        let v = m.vdisk(vdisk)?;
        let snap_gen = v.snapshot(snap)?.gen;
        let id = v.id;
        let rt = inner.rt_for(v);
        // New writes are refused from here on; those already admitted (past their checks) are
        // waited for, else one would land after its chunk was rolled back and stay.
        rt.rolling_back.store(true, Ordering::SeqCst);
        // Not recorded after all (an error, or the caller gone while it waited): the disk
        // serves again, unless an earlier rollback of it is still to be finished.
        let fence = Fence {
            inner,
            flag: &rt.rolling_back,
            id,
            keep: |m, id| m.rollbacks.iter().any(|r| r.0 == id),
        };
        let limit = *inner.io_drain.lock();
        let recorded = match rt.drain_writes(limit).await {
            Ok(()) => {
                inner
                    .update_meta(|m| {
                        m.rollbacks.push((id, snap_gen));
                        Ok(())
                    })
                    .await
            }
            Err(n) => Err(EngineError::Busy(format!(
                "{vdisk:?}: {n} writes still in flight after {limit:?} (a device does not \
                 answer); not rolled back"
            ))),
        };
        recorded?;
        // Recorded: from here a rollback not finished is finished by the maintenance pass.
        std::mem::forget(fence);
        inner.finish_rollback(id, snap_gen).await
    }

    /// Thin clone of a disk's current contents (`snap: None`) or of one of its snapshots.
    /// Metadata only; the clone is independent of its source from the moment it exists.
    pub async fn clone_vdisk(
        &self,
        src: &str,
        snap: Option<&str>,
        new_name: &str,
    ) -> Result<VdiskInfo> {
        validate_name(new_name)?;
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        inner.mark_unclean().await?;
        let m = self.meta()?;
        let v = m.vdisk(src)?.clone();
        if m.vdisks.iter().any(|x| x.name == new_name) {
            return Err(EngineError::AlreadyExists(format!(
                "virtual disk {new_name:?}"
            )));
        }
        // A live clone is taken from a hidden snapshot so concurrent writes cannot tear it.
        let (at_gen, hidden) = match snap {
            Some(s) => (v.snapshot(s)?.gen, None),
            None => {
                let name = format!("~clone-{}", m.next_vdisk_id);
                let sm = inner.snapshot_locked(src, &name, true).await?;
                (sm.gen, Some(sm.id))
            }
        };
        let result = self.clone_objects(&v, at_gen, new_name).await;
        if let Some(id) = hidden {
            if let Err(e) = inner.delete_snapshot_locked(src, id).await {
                tracing::warn!(error = %e, "removing the clone's temporary snapshot failed");
            }
        }
        result
    }

    async fn clone_objects(&self, v: &VdiskMeta, at_gen: u64, new_name: &str) -> Result<VdiskInfo> {
        let inner = &self.inner;
        // Reserve the id first: if we crash midway, the copies are orphans of an id that is
        // never reused, and maintenance deletes them.
        let new_id = inner.update_meta(|m| m.take_vdisk_id()).await?;
        inner.building.lock().insert(new_id);
        let r = self
            .clone_objects_reserved(v, at_gen, new_name, new_id)
            .await;
        inner.building.lock().remove(&new_id);
        r
    }

    async fn clone_objects_reserved(
        &self,
        v: &VdiskMeta,
        at_gen: u64,
        new_name: &str,
        new_id: u64,
    ) -> Result<VdiskInfo> {
        let inner = &self.inner;
        for (obj, _) in inner.index.of_vdisk(v.id) {
            let _l = inner.stripe(obj).read().await;
            let Some(holders) = inner.index.get(obj) else {
                continue;
            };
            let dst = ObjectId {
                vdisk: new_id,
                chunk: obj.chunk,
            };
            let live = inner.live_disks(holders);
            if live.is_empty() {
                return Err(EngineError::Degraded(format!(
                    "chunk {obj}: no live replica to clone"
                )));
            }
            let results = futures::future::join_all(
                live.iter()
                    .map(|d| d.replica.clone_object(obj, at_gen, dst, 1)),
            )
            .await;
            let mut ok = 0;
            for (d, r) in live.iter().zip(results) {
                match r {
                    Ok(()) => {
                        ok += 1;
                        d.write_seq.fetch_add(1, Ordering::Release);
                        inner.index.add(dst, d.slot);
                    }
                    Err(e) if crate::replica::is_device_failure(&e) => {
                        inner.fail_disk(d, &e).await?
                    }
                    Err(e) => return Err(EngineError::store(format!("cloning chunk {obj}"), e)),
                }
            }
            if ok == 0 {
                return Err(EngineError::io(format!(
                    "cloning chunk {obj}: every replica failed"
                )));
            }
        }
        // The shared references must be durable before the clone is recorded.
        inner.flush_all().await?;
        let nv = inner
            .update_meta(|m| {
                if m.vdisks.iter().any(|x| x.name == new_name) {
                    return Err(EngineError::AlreadyExists(format!(
                        "virtual disk {new_name:?}"
                    )));
                }
                let nv = VdiskMeta {
                    name: new_name.to_string(),
                    id: new_id,
                    size_bytes: v.size_bytes,
                    gen: 1,
                    seed: v.seed,
                    created_unix: now_unix(),
                    snapshots: Vec::new(),
                    local_only: false,
                };
                m.vdisks.push(nv.clone());
                Ok(nv)
            })
            .await?;
        inner.kick_bg();
        Ok(inner.info(&nv))
    }

    /// Byte ranges (offset, len) whose contents differ between snapshot `from` and snapshot
    /// `to` (None = the live disk), from metadata only. Conservative: a block rewritten with
    /// the same data counts as changed.
    pub async fn changed_ranges(
        &self,
        vdisk: &str,
        from: &str,
        to: Option<&str>,
    ) -> Result<Vec<(u64, u64)>> {
        let m = self.meta()?;
        let v = m.vdisk(vdisk)?;
        let from_gen = v.snapshot(from)?.gen;
        let to_gen = match to {
            Some(t) => v.snapshot(t)?.gen,
            None => u64::MAX,
        };
        if to_gen <= from_gen {
            return Err(EngineError::invalid(format!(
                "snapshot {from:?} is not older than {to:?}"
            )));
        }
        let inner = &self.inner;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (obj, holders) in inner.index.of_vdisk(v.id) {
            let live = inner.live_disks(holders);
            let d = live
                .first()
                .ok_or_else(|| EngineError::Degraded(format!("chunk {obj}: no live replica")))?;
            let mut blocks = d.replica.changed_blocks(obj, from_gen, to_gen);
            blocks.sort_unstable();
            for b in blocks {
                let off = obj.chunk * CHUNK_BYTES + b * BLOCK_BYTES;
                if off >= v.size_bytes {
                    continue;
                }
                match out.last_mut() {
                    Some((o, l)) if *o + *l == off => *l += BLOCK_BYTES,
                    _ => out.push((off, BLOCK_BYTES)),
                }
            }
        }
        Ok(out)
    }
}

/// Rollback and delete against writes already admitted to the disk (past their checks). One
/// thread: a write is held before its chunk exists by the test holding the chunk's stripe
/// lock; every other step is ordered by yields only.
#[cfg(test)]
mod fence_tests {
    use std::sync::Arc;

    use blockdev::{BlockDevice, RamDevice};
    use store::ObjectId;

    use crate::{Engine, EngineConfig, CHUNK_BYTES};

    const BS: usize = crate::BLOCK_BYTES as usize;

    async fn engine() -> Engine {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "t".into(),
        })
        .await
        .unwrap();
        for i in 0..2 {
            let d = Arc::new(RamDevice::new(format!("r{i}"), 64 << 20));
            e.add_disk(d as Arc<dyn BlockDevice>).await.unwrap();
        }
        e
    }

    async fn settle(done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// A write of 0x2 to chunk 1 of `h`, admitted (counted in flight) and held before it
    /// reaches its chunk: the chunk's stripe lock stays taken until the returned guard drops.
    async fn a_write_held_in_flight<'a>(
        e: &'a Engine,
        h: &crate::VdiskHandle,
    ) -> (
        tokio::sync::RwLockWriteGuard<'a, ()>,
        tokio::task::JoinHandle<crate::Result<()>>,
    ) {
        let chunk1 = ObjectId {
            vdisk: h.rt.id,
            chunk: 1,
        };
        let lock = e.inner.stripe(chunk1).write().await;
        let w = {
            let h = h.clone();
            tokio::spawn(async move { h.write(CHUNK_BYTES, &[2u8; BS]).await })
        };
        settle(|| h.rt.writes_in_flight() == 1).await;
        assert_eq!(h.rt.writes_in_flight(), 1);
        (lock, w)
    }

    /// Before, a write that passed the "rolling back" check before the rollback began, to a
    /// chunk the rollback did not list yet (or had rolled back already), landed after it and
    /// stayed on both replicas: the disk no longer equalled the snapshot.
    #[tokio::test]
    async fn a_rollback_waits_for_writes_already_admitted() {
        let e = engine().await;
        e.create_vdisk("v", 4 * CHUNK_BYTES).await.unwrap();
        let h = e.open_vdisk("v").unwrap();
        h.write(0, &[1u8; BS]).await.unwrap();
        e.create_snapshot("v", "s").await.unwrap();
        // A write to chunk 1 (empty in the snapshot), admitted, held before it creates the
        // chunk.
        let (lock, w) = a_write_held_in_flight(&e, &h).await;
        let rb = {
            let e = e.clone();
            tokio::spawn(async move { e.rollback("v", "s").await })
        };
        settle(|| rb.is_finished()).await;
        // Refused while the rollback runs (or waits to).
        assert_eq!(
            h.write(2 * CHUNK_BYTES, &[3u8; BS])
                .await
                .unwrap_err()
                .kind(),
            crate::ErrorKind::Busy
        );
        drop(lock);
        w.await.unwrap().unwrap();
        rb.await.unwrap().unwrap();
        let mut got = vec![0u8; 3 * BS];
        for (i, off) in [0, CHUNK_BYTES, 2 * CHUNK_BYTES].into_iter().enumerate() {
            h.read(off, &mut got[i * BS..(i + 1) * BS]).await.unwrap();
        }
        let mut want = vec![0u8; 3 * BS];
        want[..BS].fill(1);
        assert!(
            got == want,
            "after the rollback the disk equals the snapshot (chunk 1 holds {:#x}, chunk 2 {:#x})",
            got[BS],
            got[2 * BS]
        );
        e.shutdown().await.unwrap();
    }

    /// Objects of virtual disk `id` on any disk's store.
    fn stored_objects(e: &Engine, id: u64) -> Vec<ObjectId> {
        let disks = e.inner.disks.read().clone();
        disks
            .iter()
            .flat_map(|d| d.replica.objects())
            .filter(|o| o.vdisk == id)
            .collect()
    }

    /// Before, a delete removed the disk's objects while a write admitted before it was still
    /// on its way: the write then created its chunk again, an object of a disk that no longer
    /// exists (an orphan until the maintenance pass). Now new I/O is refused at once and the
    /// delete waits for the write.
    #[tokio::test]
    async fn a_delete_waits_for_writes_already_admitted() {
        let e = engine().await;
        e.create_vdisk("v", 4 * CHUNK_BYTES).await.unwrap();
        let h = e.open_vdisk("v").unwrap();
        h.write(0, &[1u8; BS]).await.unwrap();
        let id = h.rt.id;
        let (lock, w) = a_write_held_in_flight(&e, &h).await;
        let del = {
            let e = e.clone();
            tokio::spawn(async move { e.delete_vdisk("v").await })
        };
        settle(|| del.is_finished()).await;
        let err = h.write(2 * CHUNK_BYTES, &[3u8; BS]).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Busy);
        assert!(err.to_string().contains("being deleted"), "{err}");
        let mut buf = vec![0u8; BS];
        let err = h.read(0, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Busy, "{err}");
        assert!(
            !del.is_finished(),
            "the delete waits for the write in flight"
        );
        drop(lock);
        w.await.unwrap().unwrap();
        del.await.unwrap().unwrap();
        assert_eq!(
            stored_objects(&e, id),
            Vec::<ObjectId>::new(),
            "orphans left"
        );
        assert_eq!(e.vdisk("v").unwrap_err().kind(), crate::ErrorKind::NotFound);
        let err = h.read(0, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound, "{err}");
        e.shutdown().await.unwrap();
    }

    /// A write that does not end (a device that does not answer) within the drain limit: the
    /// delete and the rollback give up with Busy and change nothing; the disk serves again.
    #[tokio::test]
    async fn a_delete_or_rollback_past_the_drain_limit_changes_nothing() {
        let e = engine().await;
        *e.inner.io_drain.lock() = std::time::Duration::from_millis(20);
        e.create_vdisk("v", 4 * CHUNK_BYTES).await.unwrap();
        let h = e.open_vdisk("v").unwrap();
        h.write(0, &[1u8; BS]).await.unwrap();
        e.create_snapshot("v", "s").await.unwrap();
        h.write(0, &[4u8; BS]).await.unwrap();
        let (lock, w) = a_write_held_in_flight(&e, &h).await;
        let err = e.delete_vdisk("v").await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Busy, "{err}");
        assert!(err.to_string().contains("not deleted"), "{err}");
        let err = e.rollback("v", "s").await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Busy, "{err}");
        assert!(err.to_string().contains("not rolled back"), "{err}");
        drop(lock);
        w.await.unwrap().unwrap();
        // Nothing changed, and the disk takes I/O again.
        assert_eq!(e.vdisk("v").unwrap().id, h.rt.id);
        h.write(2 * CHUNK_BYTES, &[3u8; BS]).await.unwrap();
        let mut got = vec![0u8; BS];
        for (off, want) in [(0, 4u8), (CHUNK_BYTES, 2), (2 * CHUNK_BYTES, 3)] {
            h.read(off, &mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == want), "at {off}: {:#x}", got[0]);
        }
        e.shutdown().await.unwrap();
    }

    /// A delete or rollback dropped by its caller while it waits for a write already admitted
    /// (a client gone, a timeout): nothing was recorded, so the disk serves again. Before, its
    /// flag stayed raised and the disk refused every request (Busy) until a restart.
    #[tokio::test]
    async fn a_delete_or_rollback_dropped_while_waiting_leaves_the_disk_serving() {
        let e = engine().await;
        e.create_vdisk("v", 4 * CHUNK_BYTES).await.unwrap();
        let h = e.open_vdisk("v").unwrap();
        h.write(0, &[1u8; BS]).await.unwrap();
        e.create_snapshot("v", "s").await.unwrap();
        h.write(0, &[4u8; BS]).await.unwrap();
        for rollback in [false, true] {
            let (lock, w) = a_write_held_in_flight(&e, &h).await;
            let op = {
                let e = e.clone();
                tokio::spawn(async move {
                    if rollback {
                        e.rollback("v", "s").await
                    } else {
                        e.delete_vdisk("v").await
                    }
                })
            };
            let flag = if rollback {
                &h.rt.rolling_back
            } else {
                &h.rt.deleting
            };
            settle(|| flag.load(std::sync::atomic::Ordering::Acquire)).await;
            assert!(flag.load(std::sync::atomic::Ordering::Acquire), "waiting");
            op.abort();
            assert!(op.await.unwrap_err().is_cancelled());
            drop(lock);
            w.await.unwrap().unwrap();
            h.write(2 * CHUNK_BYTES, &[3u8; BS])
                .await
                .unwrap_or_else(|err| panic!("rollback {rollback}: {err}"));
        }
        let mut got = vec![0u8; BS];
        for (off, want) in [(0, 4u8), (CHUNK_BYTES, 2), (2 * CHUNK_BYTES, 3)] {
            h.read(off, &mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == want), "at {off}: {:#x}", got[0]);
        }
        e.shutdown().await.unwrap();
    }

    /// A read admitted before a delete, which reaches its chunk only after the delete removed
    /// it (here: it reconciles the chunk first, then queues for the chunk behind the delete).
    /// Before, it read the removed chunk as never written: zeros, Ok, data the disk never
    /// held. Now it fails (NotFound), as a read begun after the delete.
    #[tokio::test]
    async fn a_read_overtaken_by_a_delete_returns_no_zeros() {
        let e = engine().await;
        e.create_vdisk("v", 4 * CHUNK_BYTES).await.unwrap();
        let h = e.open_vdisk("v").unwrap();
        h.write(0, &[1u8; BS]).await.unwrap();
        let chunk0 = ObjectId {
            vdisk: h.rt.id,
            chunk: 0,
        };
        let holders = e.inner.index.get(chunk0).unwrap();
        let good = e.inner.live_disks(holders)[0].slot;
        e.inner.mark_suspect(chunk0, good);
        let lock = e.inner.stripe(chunk0).write().await;
        let r = {
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; BS];
                h.read(0, &mut buf).await.map(|()| buf)
            })
        };
        settle(|| false).await;
        let del = {
            let e = e.clone();
            tokio::spawn(async move { e.delete_vdisk("v").await })
        };
        settle(|| h.rt.deleted.load(std::sync::atomic::Ordering::Acquire)).await;
        assert!(h.rt.deleted.load(std::sync::atomic::Ordering::Acquire));
        settle(|| false).await;
        drop(lock);
        del.await.unwrap().unwrap();
        match r.await.unwrap() {
            Ok(buf) => panic!("the read returned {:#x} from a deleted chunk", buf[0]),
            Err(err) => assert_eq!(err.kind(), crate::ErrorKind::NotFound, "{err}"),
        }
        e.shutdown().await.unwrap();
    }
}
