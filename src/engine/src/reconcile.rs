//! Making the replicas of a chunk agree again wherever they may have diverged, *before* the
//! chunk serves any I/O.
//!
//! Replicas diverge when a change reached one replica and not the other: a power cut between
//! the two replicas' writes or flushes (one store kept an unflushed write or discard, the other
//! did not), a copy interrupted by a crash (its intent deletes the partial copy at open, leaving
//! one replica), the first write of a chunk kept on one disk only, or a mutation that one
//! replica refused with a non-device error. Serving such a chunk from whichever replica answers
//! would let a later fail-over read return an older value than one already returned, and a chunk
//! left with one replica would be lost with that disk although the other disk is healthy.
//!
//! So: after an unclean shutdown (`needs_resync` in the pool metadata) every chunk is
//! *pending*. The first request that touches a pending chunk first reconciles it under the
//! chunk's exclusive stripe lock: the first live replica whose history can be read is the truth,
//! every other live replica that differs is rewritten from it, and a replica that placement
//! wants on a healthy disk but that is missing is re-created. On the first request after such an
//! open, every *under-replicated* chunk is re-mirrored at once (cheap: only the index is
//! scanned), so a chunk nobody has touched yet cannot be lost with its only disk. The background
//! resync walks the rest and ends the pending state. A clean shutdown records nothing pending,
//! so a clean restart does no work at all.
//!
//! Must never: serve a pending chunk before it is reconciled, or copy over a replica without
//! the stripe lock held exclusively.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use store::{BlockVersions, ObjectId, StoreError};

use crate::core::{Disk, Inner};
use crate::error::{EngineError, Result};
use crate::replica::{is_device_failure, Reachability};
use crate::types::DiskState;

/// Which chunks must be reconciled before they serve I/O.
#[derive(Default)]
pub(crate) struct ReconcileState {
    /// Opened after an unclean shutdown: every chunk not in `done` is pending.
    all_pending: AtomicBool,
    /// The under-replicated chunks of this open were re-mirrored.
    degraded_done: AtomicBool,
    degraded_lock: tokio::sync::Mutex<()>,
    /// Chunks reconciled since `all_pending` was set.
    done: Mutex<HashSet<ObjectId>>,
    /// Chunks whose last mutation reached only some replicas, with the slot of one that took
    /// it (the truth for the reconcile).
    suspects: Mutex<HashMap<ObjectId, u16>>,
    suspects_n: AtomicU64,
    /// Maintenance passes run ([`Inner::reconcile_suspects`]), and the suspects whose reconcile
    /// failed there: how often in a row, and the pass before which it is not tried again.
    passes: AtomicU64,
    failing: Mutex<HashMap<ObjectId, Backoff>>,
}

/// A suspect chunk the maintenance pass could not reconcile (no replica readable, a copy that
/// fails): tried again after 1, 2, 4 ... at most [`MAX_BACKOFF_PASSES`] passes instead of every
/// pass, and warned about at the 1st, 2nd, 4th, 8th ... failure instead of every time. A request
/// on the chunk still tries at once (it must, before the chunk serves it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    failures: u32,
    next_pass: u64,
}

/// Longest wait between two maintenance-pass tries of a failing suspect, in passes.
const MAX_BACKOFF_PASSES: u64 = 64;

impl Backoff {
    /// After a failure at pass `pass` (`prev`: the record of earlier ones, if any).
    fn failed(prev: Option<Backoff>, pass: u64) -> Backoff {
        let failures = prev.map_or(0, |b| b.failures).saturating_add(1);
        let wait = 1u64
            .checked_shl(failures.min(63))
            .unwrap_or(u64::MAX)
            .min(MAX_BACKOFF_PASSES);
        Backoff {
            failures,
            next_pass: pass.saturating_add(wait),
        }
    }

    /// Whether this failure is one to warn about (the 1st, 2nd, 4th, 8th ...).
    fn warn(&self) -> bool {
        self.failures.is_power_of_two()
    }
}

impl ReconcileState {
    fn pending(&self, obj: ObjectId) -> bool {
        (self.all_pending.load(Ordering::Acquire) && !self.done.lock().contains(&obj))
            || (self.suspects_n.load(Ordering::Acquire) > 0
                && self.suspects.lock().contains_key(&obj))
    }
}

/// Whether two exported histories are the same (generations and data of every version).
pub(crate) fn same_versions(a: &[BlockVersions], b: &[BlockVersions]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.block == y.block
                && x.versions.len() == y.versions.len()
                && x.versions.iter().zip(&y.versions).all(|(p, q)| {
                    p.gen == q.gen
                        && match (&p.data, &q.data) {
                            (None, None) => true,
                            (Some(d), Some(e)) => d[..] == e[..],
                            _ => false,
                        }
                })
        })
}

impl Inner {
    /// Called when a pool's metadata is adopted at open: whether its replicas may differ.
    pub(crate) fn set_reconcile_pending(&self, pending: bool) {
        let r = &self.reconcile;
        r.done.lock().clear();
        r.degraded_done.store(!pending, Ordering::Release);
        r.all_pending.store(pending, Ordering::Release);
    }

    pub(crate) fn reconcile_all_pending(&self) -> bool {
        self.reconcile.all_pending.load(Ordering::Acquire)
    }

    /// Every chunk was compared (the background resync finished): nothing is pending any more.
    pub(crate) fn reconcile_finished(&self) {
        let r = &self.reconcile;
        r.all_pending.store(false, Ordering::Release);
        r.done.lock().clear();
    }

    /// Whether `obj` was reconciled already (or never needed it).
    pub(crate) fn reconciled(&self, obj: ObjectId) -> bool {
        !self.reconcile.pending(obj)
    }

    /// `obj`'s last mutation reached only some replicas; `good` took it.
    pub(crate) fn mark_suspect(&self, obj: ObjectId, good: u16) {
        let r = &self.reconcile;
        if r.suspects.lock().insert(obj, good).is_none() {
            r.suspects_n.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Reconcile the chunks marked suspect that no request has touched since (by the
    /// maintenance pass): otherwise one stays marked until its next request, and while any is
    /// marked every request of the pool looks itself up among them.
    pub(crate) async fn reconcile_suspects(&self) {
        let r = &self.reconcile;
        if r.suspects_n.load(Ordering::Acquire) == 0 {
            return;
        }
        let pass = r.passes.fetch_add(1, Ordering::AcqRel);
        let objs: Vec<ObjectId> = {
            let suspects = r.suspects.lock();
            // Forget failures of chunks no longer suspect (reconciled by a request since).
            r.failing.lock().retain(|o, _| suspects.contains_key(o));
            suspects.keys().copied().collect()
        };
        for obj in objs {
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let prev = r.failing.lock().get(&obj).copied();
            if prev.is_some_and(|b| pass < b.next_pass) {
                continue;
            }
            match self.reconcile_chunk(obj).await {
                Ok(_) => {
                    r.failing.lock().remove(&obj);
                }
                Err(e) => {
                    let b = Backoff::failed(prev, pass);
                    r.failing.lock().insert(obj, b);
                    if b.warn() {
                        tracing::warn!(%obj, error = %e, failures = b.failures, retry_in_passes = b.next_pass - pass, "reconciling a suspect chunk failed; it stays suspect (a request on it tries again at once)");
                    }
                }
            }
        }
    }

    /// Before any request on `obj`: reconcile it if it is pending. The caller holds no stripe
    /// lock. An error means no replica of the chunk could be read.
    pub(crate) async fn ensure_reconciled(&self, obj: ObjectId) -> Result<()> {
        let r = &self.reconcile;
        if !r.all_pending.load(Ordering::Acquire) && r.suspects_n.load(Ordering::Acquire) == 0 {
            return Ok(()); // the fast path of every request on a cleanly opened pool
        }
        if r.all_pending.load(Ordering::Acquire) && !r.degraded_done.load(Ordering::Acquire) {
            self.remirror_degraded().await;
        }
        if !r.pending(obj) {
            return Ok(());
        }
        self.reconcile_chunk(obj).await.map(|_| ())
    }

    /// Re-mirror every chunk that has fewer replicas than placement wants (once per open).
    async fn remirror_degraded(&self) {
        let r = &self.reconcile;
        let _g = r.degraded_lock.lock().await;
        if r.degraded_done.load(Ordering::Acquire) {
            return;
        }
        let Some(meta) = self.meta_arc() else {
            return;
        };
        let view = self.view.read().clone();
        let mut ok = true;
        for (obj, holders) in self.index.all() {
            let Some(v) = meta.vdisk_by_id(obj.vdisk) else {
                continue; // an orphan: the maintenance task deletes it
            };
            let target = self.place_vdisk(&view, v, obj.chunk);
            if target.as_slice().iter().all(|t| holders.contains(*t)) {
                continue;
            }
            if let Err(e) = self.reconcile_chunk(obj).await {
                ok = false;
                tracing::warn!(%obj, error = %e, "re-mirroring a degraded chunk failed");
            }
        }
        r.degraded_done.store(ok, Ordering::Release);
    }

    /// Make every live replica of `obj` equal to the truth and re-create missing ones, with the
    /// stripe lock held exclusively. Returns how many replicas were rewritten or re-created.
    pub(crate) async fn reconcile_chunk(&self, obj: ObjectId) -> Result<u64> {
        let mut to_fail: Vec<(Arc<Disk>, StoreError)> = Vec::new();
        let out = {
            let _l = self.stripe(obj).write().await;
            self.reconcile_locked(obj, &mut to_fail).await
        };
        for (d, e) in to_fail {
            self.fail_disk(&d, &e).await?;
        }
        out
    }

    async fn reconcile_locked(
        &self,
        obj: ObjectId,
        to_fail: &mut Vec<(Arc<Disk>, StoreError)>,
    ) -> Result<u64> {
        let r = &self.reconcile;
        if !r.pending(obj) && r.degraded_done.load(Ordering::Acquire) {
            return Ok(0); // another request did it while we waited for the lock
        }
        let suspect_good = r.suspects.lock().get(&obj).copied();
        let Some(holders) = self.index.get(obj) else {
            self.mark_reconciled(obj);
            return Ok(0); // never written: nothing to agree on
        };
        let mut live = self.live_disks(holders);
        if live.is_empty() {
            // Nothing to copy from; reads report the chunk degraded.
            self.mark_reconciled(obj);
            return Ok(0);
        }
        if let Some(good) = suspect_good {
            if let Some(i) = live.iter().position(|d| d.slot == good) {
                live.swap(0, i);
            }
        }
        // The truth: the first live replica whose history can be read.
        let mut truth: Option<(Arc<Disk>, Vec<BlockVersions>)> = None;
        let mut others: Vec<(Arc<Disk>, Option<Vec<BlockVersions>>)> = Vec::new();
        for d in live {
            if d.replica.reachability() != Reachability::Up {
                continue; // an away peer is resynced from its dirty list when it is back
            }
            match d.replica.export_object(obj).await {
                Ok(v) if truth.is_none() => truth = Some((d, v)),
                Ok(v) => others.push((d, Some(v))),
                Err(e) if is_device_failure(&e) => to_fail.push((d, e)),
                Err(e) => {
                    tracing::warn!(%obj, disk = %d.name, error = %e, "reconcile: export failed");
                    others.push((d, None));
                }
            }
        }
        let Some((src, versions)) = truth else {
            return Err(EngineError::io(format!(
                "chunk {obj}: no replica's history could be read to reconcile it"
            )));
        };
        let mut fixed = 0;
        let mut complete = true;
        for (dst, theirs) in others {
            if theirs.is_some_and(|t| same_versions(&versions, &t)) {
                continue;
            }
            match self.copy_object(obj, &src, &dst).await {
                Ok(_) => fixed += 1,
                Err(Some(e)) if is_device_failure(&e) => to_fail.push((dst, e)),
                Err(e) => {
                    complete = false;
                    tracing::warn!(%obj, disk = %dst.name, error = ?e, "reconcile copy failed");
                }
            }
        }
        // Missing replicas on healthy disks placement wants (a copy interrupted by a crash, or
        // a first write kept by one disk only).
        if let Some(seed) = self
            .meta_arc()
            .and_then(|m| m.vdisk_by_id(obj.vdisk).map(|v| v.seed))
        {
            let target = self.place_obj(obj, seed);
            let now = self.index.get(obj).unwrap_or_default();
            for t in target.as_slice() {
                if now.contains(*t) {
                    continue;
                }
                let Some(dst) = self.disk(*t).filter(|d| {
                    d.state() == DiskState::Active && d.replica.reachability() == Reachability::Up
                }) else {
                    continue;
                };
                match self.copy_object(obj, &src, &dst).await {
                    Ok(_) => fixed += 1,
                    Err(Some(e)) if is_device_failure(&e) => to_fail.push((dst, e)),
                    Err(e) => {
                        complete = false;
                        tracing::warn!(%obj, disk = %dst.name, error = ?e, "re-mirror failed");
                    }
                }
            }
        }
        if complete {
            self.mark_reconciled(obj);
        }
        if fixed > 0 {
            self.rebalance.lock().resync_fixed += fixed;
        }
        Ok(fixed)
    }

    /// Before copy intents are forgotten: a copy that failed after it deleted the target's
    /// object may have left part of a copy there, which the index does not count but a restart
    /// would (as a replica with stale data, possibly chosen as the truth). Delete such leftovers
    /// and make that durable. True when every intent may be cleared.
    pub(crate) async fn drop_partial_copies(&self, intents: &[(String, ObjectId)]) -> bool {
        let mut touched: Vec<Arc<Disk>> = Vec::new();
        let mut ok = true;
        for (disk_id, obj) in intents {
            let Some(d) = self
                .disks
                .read()
                .iter()
                .find(|d| d.id == *disk_id && d.live())
                .cloned()
            else {
                continue; // gone or failed: refused at the next open, never served
            };
            let _l = self.stripe(*obj).write().await;
            if self.index.get(*obj).is_some_and(|s| s.contains(d.slot)) {
                continue; // the copy completed
            }
            if !d.replica.objects().contains(obj) {
                continue;
            }
            match d.replica.delete_object(*obj).await {
                Ok(()) => {
                    d.write_seq.fetch_add(1, Ordering::Release);
                    if !touched.iter().any(|t| t.slot == d.slot) {
                        touched.push(d.clone());
                    }
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(%obj, disk = %d.name, error = %e, "dropping a partial copy failed");
                }
            }
        }
        for d in touched {
            if let Err(e) = d.replica.flush().await {
                ok = false;
                tracing::warn!(disk = %d.name, error = %e, "flushing dropped partial copies failed");
            }
        }
        ok
    }

    fn mark_reconciled(&self, obj: ObjectId) {
        let r = &self.reconcile;
        if r.all_pending.load(Ordering::Acquire) {
            r.done.lock().insert(obj);
        }
        if r.suspects.lock().remove(&obj).is_some() {
            r.suspects_n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn a_failing_suspect_is_retried_ever_more_rarely_and_warned_about_at_powers_of_two() {
        use super::{Backoff, MAX_BACKOFF_PASSES};
        let mut b = None;
        let (mut pass, mut tries, mut warned) = (0u64, Vec::new(), Vec::new());
        while pass < 400 {
            if b.is_none_or(|x: Backoff| pass >= x.next_pass) {
                tries.push(pass);
                let n = Backoff::failed(b, pass);
                if n.warn() {
                    warned.push(n.failures);
                }
                b = Some(n);
            }
            pass += 1;
        }
        assert_eq!(&tries[..8], &[0, 2, 6, 14, 30, 62, 126, 190]);
        assert!(tries.windows(2).all(|w| w[1] - w[0] <= MAX_BACKOFF_PASSES));
        assert_eq!(warned, vec![1, 2, 4, 8]);
        // No overflow however long it fails.
        let long = Backoff::failed(
            Some(Backoff {
                failures: u32::MAX,
                next_pass: u64::MAX,
            }),
            u64::MAX - 1,
        );
        assert_eq!((long.failures, long.next_pass), (u32::MAX, u64::MAX));
    }

    use std::sync::Arc;

    use blockdev::{AlignedBuf, BlockDevice, RamDevice};
    use store::ObjectId;

    use crate::core::Disk;
    use crate::types::DiskState;
    use crate::{Engine, EngineConfig, VdiskHandle};

    /// A two-disk RAM pool with vdisk "v" whose first chunk holds two flushed blocks: the
    /// fixture of the replica-divergence tests here and in `background`.
    pub(crate) async fn pool() -> (Engine, VdiskHandle) {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "t".into(),
        })
        .await
        .unwrap();
        for i in 0..2 {
            let d: Arc<dyn BlockDevice> = Arc::new(RamDevice::new(format!("r{i}"), 32 << 20));
            e.add_disk(d).await.unwrap();
        }
        e.create_vdisk("v", 4 << 20).await.unwrap();
        let h = e.open_vdisk("v").unwrap();
        h.write(0, &[1u8; 8192]).await.unwrap();
        h.flush().await.unwrap();
        (e, h)
    }

    fn replicas(e: &Engine, obj: ObjectId) -> Vec<Arc<Disk>> {
        e.inner.live_disks(e.inner.index.get(obj).unwrap()).to_vec()
    }

    /// Bug found by the simulation (seed 87): after an unclean open, a read served one
    /// replica's value and a later fail-over read returned the other replica's older one. Now
    /// the first request reconciles the chunk, so fail-over returns the same value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn diverged_replicas_agree_before_the_first_read() {
        let (e, h) = pool().await;
        let obj = ObjectId {
            vdisk: h.rt.id,
            chunk: 0,
        };
        let live = replicas(&e, obj);
        assert_eq!(live.len(), 2);
        // Diverge: the first replica kept a write the second never saw (power cut between them).
        let g = h.rt.enter();
        let buf = AlignedBuf::from_slice(&[2u8; 4096]).into_write();
        let crcs = store::block_crcs(buf.as_slice()).into();
        live[0]
            .replica
            .write_with_crcs(obj, 1, buf, crcs, g.gen, g.pin)
            .await
            .unwrap();
        drop(g);
        e.inner.set_reconcile_pending(true);
        let mut first = vec![0u8; 8192];
        h.read(0, &mut first).await.unwrap();
        // Reconciled before the read, without any background pass.
        let a = live[0].replica.read(obj, 0, 2, u64::MAX).await.unwrap();
        let b = live[1].replica.read(obj, 0, 2, u64::MAX).await.unwrap();
        assert!(a[..] == b[..], "replicas still differ after the first read");
        assert!(first[..] == a[..]);
        // The disk that served the read fails: the other replica returns the same value.
        live[0].set_state(DiskState::Failed);
        let mut again = vec![0u8; 8192];
        h.read(0, &mut again).await.unwrap();
        assert_eq!(first, again);
        assert!(e.inner.rebalance.lock().resync_fixed >= 1);
    }

    /// Bug found by the simulation (seed 125): a chunk left with one replica by a crash stayed
    /// degraded in a two-disk pool and was lost with that disk. Now the first request after an
    /// unclean open re-mirrors every under-replicated chunk, even one it does not touch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lone_replica_is_remirrored_before_io() {
        let (e, h) = pool().await;
        let chunk_bytes = crate::CHUNK_BYTES;
        h.write(chunk_bytes, &[3u8; 4096]).await.unwrap();
        h.flush().await.unwrap();
        let obj = ObjectId {
            vdisk: h.rt.id,
            chunk: 0,
        };
        let live = replicas(&e, obj);
        assert_eq!(live.len(), 2);
        // Only the first disk holds chunk 0 now (as after an interrupted copy was deleted).
        live[1].replica.delete_object(obj).await.unwrap();
        e.inner.index.remove_slot(obj, live[1].slot);
        assert_eq!(e.pool().degraded_chunks, 1);
        e.inner.set_reconcile_pending(true);
        // A request on another chunk.
        let mut b = vec![0u8; 4096];
        h.read(chunk_bytes, &mut b).await.unwrap();
        assert!(b.iter().all(|&x| x == 3));
        assert_eq!(replicas(&e, obj).len(), 2, "chunk 0 was not re-mirrored");
        assert_eq!(e.pool().degraded_chunks, 0);
        // Its first disk fails: chunk 0 is still readable and writable.
        live[0].set_state(DiskState::Failed);
        let mut b = vec![0u8; 8192];
        h.read(0, &mut b).await.unwrap();
        assert!(b.iter().all(|&x| x == 1));
        h.write(0, &[4u8; 4096]).await.unwrap();
    }

    /// A copy that failed after deleting its target's object leaves a partial copy the index
    /// does not count; before its intent is forgotten it is deleted, so no restart can take it
    /// for a replica.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_copy_is_dropped_before_its_intent() {
        let (e, h) = pool().await;
        let obj = ObjectId {
            vdisk: h.rt.id,
            chunk: 0,
        };
        let live = replicas(&e, obj);
        let dst = live[1].clone();
        // As a failed copy leaves it: not in the index, still in the store, intent recorded.
        e.inner.index.remove_slot(obj, dst.slot);
        let intent = (dst.id.clone(), obj);
        assert!(e.inner.drop_partial_copies(&[intent]).await);
        assert!(!dst.replica.objects().contains(&obj));
        // A completed copy (in the index) is left alone.
        let kept = (live[0].id.clone(), obj);
        assert!(e.inner.drop_partial_copies(&[kept]).await);
        assert!(live[0].replica.objects().contains(&obj));
    }

    /// A clean pool never pays for reconciling: nothing is pending, nothing is compared.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clean_pool_reconciles_nothing() {
        let (e, h) = pool().await;
        let mut b = vec![0u8; 8192];
        h.read(0, &mut b).await.unwrap();
        assert!(e.inner.reconciled(ObjectId {
            vdisk: h.rt.id,
            chunk: 0
        }));
        assert_eq!(e.inner.rebalance.lock().resync_fixed, 0);
    }
}
