//! Background work: pruning snapshot versions no one needs, deleting orphaned objects of
//! deleted disks, rebalancing chunk replicas onto the disks placement wants (disk added,
//! draining, failed), and scrubbing. Guest I/O keeps priority: one chunk at a time, each under
//! its stripe lock only for the copy (or comparison) of that chunk, yielding between chunks.
//!
//! Scrub (`scrub`) verifies each replica against its checksums, then the replicas of every
//! chunk against each other.
//!
//! It never acts before the engine is in use (until then the metadata may still be replaced by
//! a newer copy from a disk added later).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::core::{Disk, Inner};
use crate::error::{EngineError, Result};
use crate::placement::Slots;
use crate::pool::Engine;
use crate::types::DiskState;

mod scrub;

/// Chunk copies whose intents are recorded together and made durable with one flush per
/// target disk (128 MiB at most: the flush and the two metadata writes of a batch stall its
/// copies, so at 32 they took a fifth of a rebuild's time).
pub(crate) const REBALANCE_BATCH: usize = 128;

pub(crate) fn spawn_maintenance(inner: &Arc<Inner>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        // A full pass scans every chunk: run one when asked, and otherwise only now and then
        // while something is still pending (for example a chunk with no disk to go to yet).
        const RETRY_PENDING: Duration = Duration::from_secs(10);
        let mut last_pass = tokio::time::Instant::now();
        loop {
            let Some(inner) = weak.upgrade() else { break };
            if inner.shutting_down.load(Ordering::Acquire) {
                break;
            }
            let mut again = false;
            if inner.in_use.load(Ordering::Acquire) {
                let asked = inner.bg_dirty.swap(false, Ordering::AcqRel);
                let queued = inner.meta.read().as_ref().is_some_and(|m| {
                    !m.prune_pending.is_empty()
                        || !m.rollbacks.is_empty()
                        || !m.importing.is_empty()
                });
                let pending = inner.rebalance.lock().chunks_pending > 0
                    && last_pass.elapsed() >= RETRY_PENDING;
                if asked || queued || pending {
                    let _bg = inner.bg.lock().await;
                    if inner.shutting_down.load(Ordering::Acquire) {
                        break;
                    }
                    again = inner.maintenance_pass().await;
                    last_pass = tokio::time::Instant::now();
                }
            }
            if !again {
                // Hold the engine only briefly, so dropping it ends this task.
                let _ =
                    tokio::time::timeout(Duration::from_millis(500), inner.kick.notified()).await;
            }
            drop(inner);
            tokio::task::yield_now().await;
        }
    });
}

impl Inner {
    /// One round of background work; true if it changed something (run again soon).
    pub(crate) async fn maintenance_pass(&self) -> bool {
        // Intents left by a previous run were dealt with when their disks were opened; those of
        // copies that failed here left a partial object behind, removed (durably) first.
        let intents = self
            .meta
            .read()
            .as_ref()
            .map(|m| m.importing.clone())
            .unwrap_or_default();
        if !intents.is_empty()
            && self.copies_in_progress.load(Ordering::Acquire) == 0
            && self.drop_partial_copies(&intents).await
        {
            let r = self
                .update_meta(|m| {
                    if self.copies_in_progress.load(Ordering::Acquire) == 0 {
                        m.importing.retain(|x| !intents.contains(x));
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "clearing copy intents failed");
            }
        }
        self.redo_rollbacks().await;
        self.resync_after_crash().await;
        self.reconcile_suspects().await;
        self.prune_pending().await;
        match self.rebalance_pass().await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, "rebalance pass failed");
                false
            }
        }
    }

    /// Finish rollbacks a crash (or an error) interrupted, before any prune can drop the
    /// snapshot versions they restore.
    async fn redo_rollbacks(&self) {
        let Some(m) = self.meta_snapshot() else {
            return;
        };
        if m.rollbacks.is_empty() {
            return;
        }
        let _op = self.op.lock().await;
        if self.shutting_down.load(Ordering::Acquire) {
            return;
        }
        // Re-read under the op lock: a rollback that was running when we looked is done now.
        let Some(m) = self.meta_snapshot() else {
            return;
        };
        for (vid, snap_gen) in m.rollbacks.clone() {
            let r = if m.vdisk_by_id(vid).is_some() {
                self.finish_rollback(vid, snap_gen).await
            } else {
                self.update_meta(|m| {
                    m.rollbacks.retain(|r| r.0 != vid);
                    Ok(())
                })
                .await
            };
            if let Err(e) = r {
                tracing::warn!(vdisk = vid, error = %e, "completing a rollback failed");
            }
        }
    }

    /// After an unclean shutdown the two replicas of a chunk may differ where writes were never
    /// flushed. Reconcile every chunk not reconciled yet by a request (see `reconcile`); only
    /// when every chunk was done may reads alternate again and the pool stop counting as
    /// needing it.
    async fn resync_after_crash(&self) {
        if !self.meta.read().as_ref().is_some_and(|m| m.needs_resync) {
            return;
        }
        // The metadata is the record: whatever set it, every chunk counts as pending now.
        if !self.reconcile_all_pending() {
            self.set_reconcile_pending(true);
        }
        self.rebalance.lock().resync_running = true;
        let mut all = true;
        for (obj, _) in self.index.all() {
            if self.shutting_down.load(Ordering::Acquire) {
                self.rebalance.lock().resync_running = false;
                return;
            }
            if self.reconciled(obj) {
                continue;
            }
            if let Err(e) = self.reconcile_chunk(obj).await {
                tracing::warn!(%obj, error = %e, "resync of a chunk failed");
            }
            all &= self.reconciled(obj);
            self.rebalance.lock().resync_checked += 1;
            tokio::task::yield_now().await;
        }
        if !all {
            self.rebalance.lock().resync_running = false;
            return; // retried by the next pass
        }
        let r = self
            .update_meta(|m| {
                m.needs_resync = false;
                Ok(())
            })
            .await;
        match r {
            Ok(()) => {
                self.reconcile_finished();
                self.balanced_reads.store(true, Ordering::Release);
            }
            Err(e) => tracing::warn!(error = %e, "recording the end of resync failed"),
        }
        self.rebalance.lock().resync_running = false;
    }

    async fn prune_pending(&self) {
        let Some(m) = self.meta_snapshot() else {
            return;
        };
        for vid in m.prune_pending.clone() {
            if let Some(v) = m.vdisk_by_id(vid) {
                let gens = v.snap_gens();
                let disks: Vec<Arc<Disk>> = self
                    .disks
                    .read()
                    .iter()
                    .filter(|d| d.live())
                    .cloned()
                    .collect();
                let mut ok = true;
                for d in disks {
                    match d.replica.prune(vid, gens.clone()).await {
                        Ok(()) => {
                            d.write_seq.fetch_add(1, Ordering::Release);
                        }
                        Err(e) => {
                            ok = false;
                            tracing::warn!(disk = %d.name, error = %e, "prune failed");
                        }
                    }
                }
                if !ok {
                    continue;
                }
            }
            let r = self
                .update_meta(|m| {
                    m.prune_pending.retain(|p| *p != vid);
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "recording prune failed");
            }
        }
    }

    /// Bring every chunk to its placement: copy missing replicas, then drop extra ones.
    async fn rebalance_pass(&self) -> Result<bool> {
        let Some(meta) = self.meta_snapshot() else {
            return Ok(false);
        };
        let view = self.view.read().clone();
        self.rebalance.lock().running = true;
        let entries = self.index.all();
        let mut pending = 0u64;
        let mut changed = false;
        let mut work: Vec<(store::ObjectId, Slots)> = Vec::new();
        for (obj, holders) in entries {
            if self.shutting_down.load(Ordering::Acquire) {
                break;
            }
            let Some(v) = meta.vdisk_by_id(obj.vdisk) else {
                if obj.vdisk < meta.next_vdisk_id
                    && !self.building.lock().contains(&obj.vdisk)
                    && self
                        .meta
                        .read()
                        .as_ref()
                        .is_some_and(|m| m.vdisk_by_id(obj.vdisk).is_none())
                {
                    // An object of a deleted disk (or an interrupted clone): remove it.
                    let _l = self.stripe(obj).write().await;
                    for d in self.live_disks(holders) {
                        if d.replica.delete_object(obj).await.is_ok() {
                            d.write_seq.fetch_add(1, Ordering::Release);
                        }
                    }
                    self.index.remove(obj);
                    self.rebalance.lock().orphans_deleted += 1;
                    changed = true;
                }
                continue;
            };
            let target = self.place_vdisk(&view, v, obj.chunk);
            let missing = target.as_slice().iter().any(|t| !holders.contains(*t));
            let extra = holders.as_slice().iter().any(|h| !target.contains(*h));
            if !missing && !extra {
                continue;
            }
            if self.live_disks(holders).is_empty() {
                pending += 1; // nothing to copy from; stays degraded
                continue;
            }
            work.push((obj, target));
        }
        self.rebuild.begin(work.len() as u64);
        self.prime_pacing();
        // Copies run in batches: one intent record and one flush per target disk for many
        // chunks, one batch's flush overlapping the next one's copies (see `rebuild_copy`).
        let b = self.move_batches(&work, self.rebuild.batch()).await;
        pending += b.pending;
        changed |= b.changed;
        // Make moves durable so the old copies' removal cannot be undone by a crash.
        if changed {
            if let Err(e) = self.flush_all().await {
                tracing::warn!(error = %e, "flush after rebalance failed");
            }
        }
        self.rebuild.end();
        self.finish_drains().await;
        let mut rb = self.rebalance.lock();
        rb.running = false;
        rb.passes += 1;
        rb.chunks_pending = pending;
        Ok(changed)
    }

    /// Draining disks that hold no replica any more leave the pool.
    async fn finish_drains(&self) {
        let draining: Vec<Arc<Disk>> = self
            .disks
            .read()
            .iter()
            .filter(|d| d.state() == DiskState::Draining)
            .cloned()
            .collect();
        for d in draining {
            let holds = self.index.all().iter().any(|(_, s)| s.contains(d.slot));
            if holds {
                continue;
            }
            let id = d.id.clone();
            let r = self
                .update_meta(|m| {
                    if let Some(dm) = m.disks.iter_mut().find(|dm| dm.id == id) {
                        dm.state = DiskState::Removed;
                    }
                    m.map_version += 1;
                    Ok(())
                })
                .await;
            match r {
                Ok(()) => {
                    d.set_state(DiskState::Removed);
                    let _ = d.replica.close().await;
                    tracing::info!(disk = %d.name, "drained disk removed from the pool");
                }
                Err(e) => tracing::warn!(disk = %d.name, error = %e, "recording removal failed"),
            }
        }
    }
}

impl Engine {
    /// Set the rebuild speed limits (see `RebuildLimits`); they apply from the next chunk.
    pub fn set_rebuild_limits(&self, limits: crate::RebuildLimits) {
        self.inner.rebuild.set_limits(limits);
    }

    pub fn rebuild_limits(&self) -> crate::RebuildLimits {
        self.inner.rebuild.limits()
    }

    /// For tests only: chunks per rebuild copy batch (default 128, at least 1), from the next
    /// pass on. Small batches let a test cut power while several batches are in the pipeline.
    #[doc(hidden)]
    pub fn set_rebalance_batch(&self, chunks: usize) {
        self.inner.rebuild.set_batch(chunks);
    }

    /// Progress of the current (or last) rebuild pass (also in `stats().rebalance.rebuild`).
    pub fn rebuild_progress(&self) -> crate::RebuildProgress {
        self.inner.rebuild.progress()
    }

    /// Chunks of this engine with a replica on a live disk of node `node_id`: what still
    /// depends on that node (0 once its disks are drained or given up).
    pub fn chunks_on_node(&self, node_id: u64) -> u64 {
        let inner = &self.inner;
        let disks = inner.disks.read();
        let on: Vec<u16> = disks
            .iter()
            .filter(|d| d.node_id == node_id && d.live())
            .map(|d| d.slot)
            .collect();
        drop(disks);
        if on.is_empty() {
            return 0;
        }
        inner
            .index
            .all()
            .iter()
            .filter(|(_, s)| on.iter().any(|x| s.contains(*x)))
            .count() as u64
    }

    /// Verify every replica's blocks in the background; bad copies are repaired from the other
    /// replica. Then the replicas of each chunk are compared with each other and a differing
    /// one is rewritten from one source (see `compare_replicas`). Progress and results in
    /// `stats().scrub`.
    pub fn start_scrub(&self) -> Result<()> {
        let inner = self.inner.clone();
        {
            let mut s = inner.scrub.lock();
            if s.running {
                return Err(EngineError::Busy("a scrub is already running".into()));
            }
            s.running = true;
            s.disks_done = 0;
            s.checked_blocks = 0;
            s.corrupt_found = 0;
            s.repaired = 0;
            s.unrepairable = 0;
            s.chunks_compared = 0;
            s.replicas_differed = 0;
            s.replicas_rewritten = 0;
            s.replicas_not_compared = 0;
        }
        inner.in_use.store(true, Ordering::Release);
        tokio::spawn(async move {
            let _bg = inner.bg.lock().await;
            if inner.shutting_down.load(Ordering::Acquire) {
                inner.scrub.lock().running = false;
                return;
            }
            inner.scrub_all().await
        });
        Ok(())
    }

    /// Wait until background rebalancing has nothing left to do (or the timeout passes);
    /// true if settled. For tests, tools and orderly disk removal.
    pub async fn wait_rebalanced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.inner.in_use.store(true, Ordering::Release);
            let passes = self.inner.rebalance.lock().passes;
            self.inner.kick_bg();
            // Wait for a full pass that started after this call.
            loop {
                if tokio::time::Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.inner.kick_bg();
                let rb = self.inner.rebalance.lock().clone();
                if rb.passes >= passes + 2 && !rb.running {
                    if rb.chunks_pending == 0 {
                        let draining = self
                            .inner
                            .disks
                            .read()
                            .iter()
                            .any(|d| d.state() == DiskState::Draining);
                        if !draining {
                            return true;
                        }
                    }
                    break;
                }
            }
        }
    }

    /// Wait for a running scrub to finish (or the timeout); true if finished.
    pub async fn wait_scrub(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inner.scrub.lock().running {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

/// Whether two exports hold the same versions with the same contents.
#[cfg(test)]
mod tests {
    use blockdev::AlignedBuf;
    use store::ObjectId;

    /// Replicas that differ (as after a crash between the two replicas' flushes) are made equal
    /// again from the replica reads used, and reads stick to that replica until then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resync_makes_diverged_replicas_equal() {
        let (e, h) = crate::reconcile::tests::pool().await;
        let inner = &e.inner;
        let obj = ObjectId {
            vdisk: h.rt.id,
            chunk: 0,
        };
        let holders = inner.index.get(obj).unwrap();
        let live = inner.live_disks(holders);
        assert_eq!(live.len(), 2);
        // Diverge: the second replica gets a write the first never saw.
        let g = h.rt.enter();
        let buf = AlignedBuf::from_slice(&[2u8; 4096]).into_write();
        let crcs = store::block_crcs(buf.as_slice()).into();
        live[1]
            .replica
            .write_with_crcs(obj, 1, buf, crcs, g.gen, g.pin)
            .await
            .unwrap();
        drop(g);
        inner
            .balanced_reads
            .store(false, std::sync::atomic::Ordering::Release);
        inner
            .update_meta(|m| {
                m.needs_resync = true;
                Ok(())
            })
            .await
            .unwrap();
        // Sticky reads: always the first replica's contents.
        for _ in 0..4 {
            let mut b = vec![0u8; 8192];
            h.read(0, &mut b).await.unwrap();
            assert!(b.iter().all(|&x| x == 1));
        }
        inner.maintenance_pass().await;
        assert!(!inner.meta.read().as_ref().unwrap().needs_resync);
        assert!(inner
            .balanced_reads
            .load(std::sync::atomic::Ordering::Acquire));
        assert_eq!(inner.rebalance.lock().resync_fixed, 1);
        let a = live[0].replica.read(obj, 0, 2, u64::MAX).await.unwrap();
        let b = live[1].replica.read(obj, 0, 2, u64::MAX).await.unwrap();
        assert!(a[..] == b[..], "replicas still differ");
        assert!(b.iter().all(|&x| x == 1));
    }
}
