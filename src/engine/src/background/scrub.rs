//! Scrub: every replica's data checked against its own checksums (bad blocks repaired from a
//! peer), then the replicas of every chunk compared with each other. Two replicas can each be
//! valid by their checksums and still hold different versions (overlapping writes recorded in
//! different orders, a rollback racing a write): no per-replica check sees that, so each chunk's
//! replicas are compared by their version records and a differing one is rewritten from one
//! source. Guest I/O keeps priority: one chunk at a time under its stripe lock, yielding between
//! chunks. Must never compare a chunk while a change of it is in flight.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use store::{ObjectId, StoreError, VersionRecord};

use crate::core::{Disk, Inner};
use crate::replica::{is_device_failure, Reachability};

impl Inner {
    /// One scrub: every replica against its checksums, then every chunk's replicas against each
    /// other. The caller holds the background lock (no rebalance or prune runs meanwhile).
    pub(super) async fn scrub_all(&self) {
        let disks: Vec<Arc<Disk>> = self
            .disks
            .read()
            .iter()
            .filter(|d| d.live())
            .cloned()
            .collect();
        self.scrub.lock().disks_total = disks.len() as u64;
        for d in disks {
            if self.shutting_down.load(Ordering::Acquire) {
                break;
            }
            match d.replica.scrub().await {
                Ok(report) => {
                    self.scrub.lock().checked_blocks += report.checked_blocks;
                    for (obj, block, gen) in report.corrupt {
                        self.scrub.lock().corrupt_found += 1;
                        d.checksum_errors.fetch_add(1, Ordering::Relaxed);
                        let peers: Vec<Arc<Disk>> = self
                            .index
                            .get(obj)
                            .map(|h| self.live_disks(h))
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|p| p.slot != d.slot)
                            .collect();
                        let mut fixed = false;
                        for p in peers {
                            if self.repair_one(obj, &d, &p, block, gen).await.is_ok() {
                                fixed = true;
                                break;
                            }
                        }
                        let mut s = self.scrub.lock();
                        if fixed {
                            s.repaired += 1;
                        } else {
                            s.unrepairable += 1;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(disk = %d.name, error = %e, "scrub failed");
                    if is_device_failure(&e) {
                        let _ = self.fail_disk(&d, &e).await;
                    }
                }
            }
            self.scrub.lock().disks_done += 1;
        }
        // After the per-replica pass, so a corrupt block was repaired before its chunk is
        // compared (the comparison itself reads only metadata).
        self.compare_replicas().await;
        if let Err(e) = self.flush_all().await {
            tracing::warn!(error = %e, "flush after scrub failed");
        }
        let mut s = self.scrub.lock();
        s.running = false;
        s.passes += 1;
    }

    /// Make the replicas of every chunk hold the same versions. Each chunk is compared under its
    /// stripe lock held exclusively, which every change of a chunk (ordinary and direct writes,
    /// discards, rollbacks, copies) holds shared while it is in flight: a change half applied
    /// (on one replica, not yet on the other) is never taken for a difference. The comparison
    /// reads only the replicas' version records (block, generation, crc of each version: memory
    /// of the stores, no device I/O); equal records mean equal bytes wherever the data matches
    /// its crc, which the per-replica pass just verified (and every read verifies). Data is
    /// read only for a chunk whose records differ: its whole history is copied from the chosen
    /// source (`compare_source`) over each differing replica, as a rebuild copies it.
    ///
    /// Chunks still pending a reconcile after an unclean shutdown are left to it (it compares
    /// them with the crash rule before they serve I/O). A replica on another node lists its
    /// records over the mirror protocol (metadata only); one that cannot (the peer away, or
    /// too old to know the request: `Replica::version_records` is None) is counted in
    /// `replicas_not_compared`.
    async fn compare_replicas(&self) {
        for (obj, holders) in self.index.all() {
            if self.shutting_down.load(Ordering::Acquire) {
                break;
            }
            if holders.as_slice().len() < 2 || !self.reconciled(obj) {
                continue;
            }
            let mut to_fail: Vec<(Arc<Disk>, StoreError)> = Vec::new();
            {
                let _l = self.stripe(obj).write().await;
                self.compare_chunk_locked(obj, &mut to_fail).await;
            }
            for (d, e) in to_fail {
                if let Err(err) = self.fail_disk(&d, &e).await {
                    tracing::warn!(disk = %d.name, error = %err, "failing a disk after scrub failed");
                }
            }
            tokio::task::yield_now().await;
        }
    }

    async fn compare_chunk_locked(
        &self,
        obj: ObjectId,
        to_fail: &mut Vec<(Arc<Disk>, StoreError)>,
    ) {
        // Re-read under the lock: a mover may have changed the holders meanwhile, and a
        // failed change may have marked the chunk for reconcile (whose rule, not scrub's,
        // picks its good replica).
        let Some(holders) = self.index.get(obj) else {
            return;
        };
        if !self.reconciled(obj) {
            return;
        }
        let mut records: Vec<(Arc<Disk>, Vec<VersionRecord>)> = Vec::new();
        let mut not_compared = 0;
        for d in self.live_disks(holders) {
            if d.replica.reachability() != Reachability::Up {
                not_compared += 1; // resynced from its dirty list when it is back
                continue;
            }
            match d.replica.version_records(obj).await {
                Ok(Some(r)) => records.push((d, r)),
                Ok(None) => not_compared += 1,
                Err(e) if is_device_failure(&e) => to_fail.push((d, e)),
                Err(e) => {
                    not_compared += 1;
                    tracing::warn!(%obj, disk = %d.name, error = %e, "scrub: listing versions failed");
                }
            }
        }
        self.scrub.lock().replicas_not_compared += not_compared;
        if records.len() < 2 {
            return;
        }
        self.scrub.lock().chunks_compared += 1;
        let src_i = compare_source(&records);
        let src = records[src_i].0.clone();
        for (i, (dst, theirs)) in records.iter().enumerate() {
            if i == src_i || *theirs == records[src_i].1 {
                continue;
            }
            self.scrub.lock().replicas_differed += 1;
            tracing::warn!(
                %obj,
                source = %src.name,
                replica = %dst.name,
                "scrub: replicas of a chunk hold different versions; rewriting from the source"
            );
            match self.copy_object(obj, &src, dst).await {
                Ok(_) => self.scrub.lock().replicas_rewritten += 1,
                Err(Some(e)) if is_device_failure(&e) => to_fail.push((dst.clone(), e)),
                Err(e) => {
                    tracing::warn!(%obj, disk = %dst.name, error = ?e, "scrub: rewriting a replica failed");
                }
            }
        }
    }
}

/// Which of a chunk's differing replicas the others are made equal to. The one whose newest
/// version has the highest generation: it took a change of a later generation that the others
/// missed, and the change is kept rather than undone. Among equals (the
/// usual case: two overlapping writes of one generation recorded in different orders, where
/// either result is one the guest may have seen and neither is more right), the first live
/// holder, the replica a crash reconcile takes as the truth and reads stick to while they do
/// not alternate, so a scrub and a resync never pull a chunk in opposite directions.
fn compare_source(records: &[(Arc<Disk>, Vec<VersionRecord>)]) -> usize {
    let newest = |r: &[VersionRecord]| r.iter().map(|v| v.gen).max();
    let mut best = 0;
    for (i, (_, r)) in records.iter().enumerate().skip(1) {
        if newest(r) > newest(&records[best].1) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use blockdev::AlignedBuf;
    use store::ObjectId;

    use crate::core::Disk;
    use crate::{Engine, ScrubStats, VdiskHandle};

    /// The fixture's chunk 0 and its two replicas (first holder first).
    fn chunk0(e: &Engine, h: &VdiskHandle) -> (ObjectId, Vec<Arc<Disk>>) {
        let obj = ObjectId {
            vdisk: h.rt.id,
            chunk: 0,
        };
        let live = e.inner.live_disks(e.inner.index.get(obj).unwrap()).to_vec();
        assert_eq!(live.len(), 2);
        (obj, live)
    }

    /// Write one block of `fill` through replica `d` only, in the disk's current generation:
    /// what one replica's half of a write looks like (or, left alone, what two overlapping
    /// writes recorded in different orders leave: each replica valid by its own checksums).
    async fn write_one_replica(h: &VdiskHandle, d: &Disk, obj: ObjectId, block: u64, fill: u8) {
        let g = h.rt.enter();
        let buf = AlignedBuf::from_slice(&[fill; 4096]).into_write();
        let crcs = store::block_crcs(buf.as_slice()).into();
        d.replica
            .write_with_crcs(obj, block, buf, crcs, g.gen, g.pin)
            .await
            .unwrap();
    }

    /// Blocks 0..2 of chunk 0 as each replica holds them (live view).
    async fn per_replica(live: &[Arc<Disk>], obj: ObjectId) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for d in live {
            out.push(d.replica.read(obj, 0, 2, u64::MAX).await.unwrap().to_vec());
        }
        out
    }

    async fn scrub(e: &Engine) -> ScrubStats {
        e.start_scrub().unwrap();
        assert!(
            e.wait_scrub(Duration::from_secs(30)).await,
            "scrub never ended"
        );
        e.stats().scrub
    }

    fn blocks(fills: [u8; 2]) -> Vec<u8> {
        fills.iter().flat_map(|&f| [f; 4096]).collect()
    }

    /// Two replicas holding different versions of the same block and generation, each valid by
    /// its checksums (overlapping writes recorded in different orders): the per-replica pass
    /// sees nothing, the comparison finds the chunk and rewrites the second replica from the
    /// first holder. Before the comparison existed, scrub reported nothing and the replicas
    /// kept answering reads differently.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrub_rewrites_a_replica_that_differs() {
        let (e, h) = crate::reconcile::tests::pool().await;
        let (obj, live) = chunk0(&e, &h);
        write_one_replica(&h, &live[1], obj, 1, 2).await;
        let before = per_replica(&live, obj).await;
        assert_eq!(before[0], blocks([1, 1]));
        assert_eq!(before[1], blocks([1, 2]));

        let s = scrub(&e).await;
        assert_eq!((s.corrupt_found, s.unrepairable), (0, 0), "{s:?}");
        assert_eq!(s.chunks_compared, 1, "{s:?}");
        assert_eq!(s.replicas_differed, 1, "{s:?}");
        assert_eq!(s.replicas_rewritten, 1, "{s:?}");
        assert_eq!(s.replicas_not_compared, 0, "{s:?}");
        let after = per_replica(&live, obj).await;
        assert_eq!(after[0], blocks([1, 1]));
        assert_eq!(after[1], after[0], "replicas still differ after scrub");
        assert_eq!(e.pool().degraded_chunks, 0);

        // Equal now: the next scrub compares the chunk and finds nothing.
        let s = scrub(&e).await;
        assert_eq!((s.chunks_compared, s.replicas_differed), (1, 0), "{s:?}");
    }

    /// A replica holding a version of a later generation that the other lacks (it took a change
    /// after a snapshot that the other missed) is the source: the change is kept on both, and
    /// the snapshot still reads its own data from either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrub_keeps_the_replica_with_the_newer_generation() {
        let (e, h) = crate::reconcile::tests::pool().await;
        let (obj, live) = chunk0(&e, &h);
        e.create_snapshot("v", "s").await.unwrap();
        write_one_replica(&h, &live[1], obj, 0, 3).await;
        assert_eq!(per_replica(&live, obj).await[1], blocks([3, 1]));

        let s = scrub(&e).await;
        assert_eq!((s.replicas_differed, s.replicas_rewritten), (1, 1), "{s:?}");
        for got in per_replica(&live, obj).await {
            assert_eq!(got, blocks([3, 1]));
        }
        let snap_gen = h.rt.enter().pin;
        for d in &live {
            let snap = d.replica.read(obj, 0, 2, snap_gen).await.unwrap();
            assert_eq!(snap[..], blocks([1, 1])[..], "snapshot on {}", d.name);
        }
    }

    /// A write in flight (on one replica, not yet on the other) holds the chunk's stripe lock
    /// shared: scrub compares the chunk only once it is done on both, and finds nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrub_does_not_take_a_write_in_flight_for_a_difference() {
        let (e, h) = crate::reconcile::tests::pool().await;
        let (obj, live) = chunk0(&e, &h);
        let inflight = e.inner.stripe(obj).read().await;
        write_one_replica(&h, &live[0], obj, 1, 5).await;
        e.start_scrub().unwrap();
        // Let the per-replica pass end, so the comparison is reached while the write is
        // half done (it then waits for the stripe lock).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = e.stats().scrub;
            if s.disks_done == s.disks_total && s.disks_total > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "per-replica pass never ended"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        write_one_replica(&h, &live[1], obj, 1, 5).await;
        drop(inflight);
        assert!(e.wait_scrub(Duration::from_secs(30)).await);
        let s = e.stats().scrub;
        assert_eq!((s.chunks_compared, s.replicas_differed), (1, 0), "{s:?}");
        for got in per_replica(&live, obj).await {
            assert_eq!(got, blocks([1, 5]));
        }
    }
}
