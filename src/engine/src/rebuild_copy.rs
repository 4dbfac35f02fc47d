//! One batch of a rebalance pass's chunk moves (re-mirroring after a disk or node is lost,
//! draining, spreading onto a new disk), made crash safe with one metadata record and one flush
//! per target disk for the whole batch instead of both per chunk:
//!
//! 1. the batch's copy intents are recorded (one metadata write);
//! 2. each chunk (a few at once, each paced first, then under its stripe lock) is exported from
//!    a live holder and imported on each missing target. The target joins the chunk's holders
//!    in memory at once, so guest writes from then on reach it too and the copy cannot go
//!    stale, but nothing durable says it is complete;
//! 3. every target of the batch is flushed once;
//! 4. the intents of the copies whose target flushed are cleared (one metadata write): from
//!    here a restart keeps those copies;
//! 5. only then are the replicas placement no longer wants dropped, chunk by chunk.
//!
//! Batches are pipelined: while one batch does step 2, the batch after it does step 1 and the
//! batches before it steps 3-5, one after the other, so the devices keep copying during
//! flushes and metadata writes. Copying does not wait for the previous batch to finish: up to
//! [`UNFINISHED_AHEAD`] copied batches may queue for steps 3-5 before the copies stop and
//! wait (a slow flush or metadata write then holds back at most that many batches, never each
//! batch's copies). Each batch still takes its steps in order, a batch's intents are recorded
//! before any of its imports, and batches are finished in the order they were copied. A batch
//! whose intents were recorded but that is never copied (shutdown) leaves intents that cover
//! no import; the maintenance pass clears them.
//!
//! A crash before 4 leaves the intents: opening the target disk deletes its copies, and the old
//! replicas, never dropped, still hold every chunk. A target whose flush fails (or that went
//! away) is taken out of its chunks' holders again and keeps its intents, so its copies are
//! deleted by the next maintenance pass; its chunks stay pending for the next pass.
//!
//! Must never: drop a replica before the chunk's new copies are durable and their intents
//! cleared; hold a stripe lock while pacing or flushing.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use store::{ObjectId, StoreError};

use crate::core::{Disk, Inner};
use crate::placement::Slots;
use crate::rebuild::{Kind, Phase};
use crate::replica::{is_device_failure, Reachability};
use crate::types::DiskState;

/// Chunk copies in flight at once in a returning peer's resync (each keeps one request in
/// flight per device at a time: a read on the source, then a write on the target).
pub(crate) const REBUILD_PARALLEL: usize = 4;

/// Chunk moves in flight at once within a rebuild / rebalance batch. Each keeps one request
/// in flight at a time, and after a node loss half the moves read a surviving device and half
/// write it, so 4 moves left that device fewer than 4 requests on average: below the queue
/// depth of the benchmark's anchor (sequential writes at QD 4) and of its read/write mix.
/// Session 10 (`bench_rebuild DIR 4096 1 ram|dev`, alternated): 8 alone won 6 of 9 RAM-line
/// pairs at load 6-19 (median 1333 vs 964 MiB/s) but lost all 3 at load 5 (1144-1461 vs
/// 1518-1758) and all 3 one-device pairs (547-754 vs 593-804): deeper device queues made each
/// target flush and metadata write several times slower (flush_ms 920-1930 vs 160-750), and
/// a batch's copies then waited for the batch before it to finish. Session 11: copies no
/// longer wait for that (see [`UNFINISHED_AHEAD`]) and the 8 moves share
/// [`COPY_IO_PARALLEL`] requests; against 4 moves with the old pipeline, alternated at load
/// 10-19, the RAM line won 3 of 4 pairs (median 1115 vs 666 MiB/s, ratio 0.54 vs 0.415), the
/// one-device line lost 5 of 6 (median 662 vs 754 MiB/s); at load 1-3.3 the RAM line won all
/// 5 pairs (1138-1992 vs 932-1634 MiB/s, ratio median 0.47 vs 0.41, 0.53 vs 0.46 of the
/// mix) and the one-device line 2 of 3, the third even (857-1357 vs 868-1103; ratio 0.27-0.40
/// vs 0.28-0.32). 16 was slower everywhere (each chunk's data is out of cache by its
/// checksum). Session 16's profile (`bench_rebuild`: `moves_in_flight`,
/// `exports_in_flight` + `imports_in_flight`, `slot_wait_ms`; load 14-18): 7.4-7.8 of the 8
/// moves in flight, 3.5-3.9 of the [`COPY_IO_PARALLEL`] requests, each move waiting about
/// half its time for a request slot: the gate is the limit, not the moves. Tried there and
/// not kept: a gate per disk (4 requests on each disk, 8 in all) with 16 moves, 6 pairs
/// alternated old/new at load 11-28 (`bench_rebuild DIR 4096 1 ram`, `DIR 2048 1 dev`): the
/// one-device line won 3 (median 738 vs 558 MiB/s, range 339-933 vs 393-727), the RAM line
/// lost 5 (median 418 vs 927, 272-734 vs 562-1283). Its requests in flight stayed at
/// 3.7-3.8 in all while the device was busy less (0.19-0.53 vs 0.45-0.69). At load 4-6
/// (4 pairs) it won 1 of 4 on each line, ratios even (RAM 0.60-0.66 vs 0.59-0.64,
/// one-device 0.35-0.40 vs 0.36-0.45). There 14.6 of its 16 moves were in flight, about 11
/// of them waiting for a slot, and 3.7 requests in flight over both disks, while the kernel
/// saw the surviving node's device busy 0.6-0.7 at a queue of 2.0-2.9: likely a slot is
/// held for more than the device's part of a request (the export's checksum pass, the
/// import's map records, the wake-up after the completion), so 4 slots give the device
/// fewer requests. Untried: 6 slots per disk, or a slot held only around the device
/// request (in `store`).
/// The throttle's overdraft no longer grows with the moves (each copy reserves its chunk
/// when admitted; see `rebuild`).
pub(crate) const MOVE_PARALLEL: usize = 8;

/// Copied batches that may queue for their flush and intent record (besides the one being
/// finished) while the next batch copies. Bounds how far the durable state may trail the
/// copies: at most this many batches plus three (the one finishing, one copied or copying,
/// the next one with its intents recorded) hold recorded intents, and all but the last hold
/// copies that are not yet durable. Before session 11 that was three. Session 16's profile:
/// the copying side waited for the finishing side (`stall_ms`) under 0.1 ms per rebuild, so
/// flushes and intent records do not hold the copies back at this depth.
const UNFINISHED_AHEAD: usize = 1;

/// Copy requests (exports and imports) in flight at once over all the moves of a pass: the
/// queue depth of the benchmark's anchor. Moves beyond it wait for a request slot instead of
/// adding requests, so one is always ready when a request ends (a device no longer idles
/// while a move sits between its read and its write, or in its pacing and locking), and on
/// one device shared by source and target (the one-device line) the queue stays at 4, where
/// 8 moves alone made it 8 and lost.
const COPY_IO_PARALLEL: usize = 4;

/// What a batch did, for the pass.
#[derive(Debug, Default)]
pub(crate) struct BatchOutcome {
    /// Replicas still missing (or extra) afterwards.
    pub pending: u64,
    pub changed: bool,
    /// The intents could not be recorded: stop the pass (retried later).
    pub stop: bool,
}

/// What step 2 did for one chunk.
struct Copied {
    obj: ObjectId,
    target: Slots,
    /// Targets that received a copy (holders in memory, not yet durable).
    made: Vec<Arc<Disk>>,
    bytes: u64,
    /// Targets whose import failed: whatever it left is deleted later (their intents stay).
    tried: Vec<Arc<Disk>>,
    /// Missing replicas that could not be copied now.
    pending: u64,
    /// Targets that failed a copy: marked Failed.
    failed: Vec<(Arc<Disk>, StoreError)>,
}

impl BatchOutcome {
    fn add(&mut self, b: BatchOutcome) {
        self.pending += b.pending;
        self.changed |= b.changed;
        self.stop |= b.stop;
    }
}

/// A batch past step 1: its intents are recorded (or `out.stop` says they could not be).
struct Intended<'a> {
    batch: &'a [(ObjectId, Slots)],
    intents: Vec<(String, ObjectId)>,
    out: BatchOutcome,
}

/// A batch past steps 1-2: its intents are recorded and its copies made (not yet durable).
struct Started {
    intents: Vec<(String, ObjectId)>,
    copied: Vec<Copied>,
    out: BatchOutcome,
}

impl Inner {
    /// Step 1 of a copy batch (rebuild, drain and resync alike): count the batch as a copy in
    /// progress and record its intents durably, so a crash mid-copy drops the half-written
    /// replicas on restart. On failure the count is given back and nothing was recorded; the
    /// caller must not copy.
    pub(crate) async fn begin_copy_batch(
        &self,
        intents: &[(String, ObjectId)],
    ) -> crate::Result<()> {
        self.copies_in_progress.fetch_add(1, Ordering::AcqRel);
        if intents.is_empty() {
            return Ok(());
        }
        let add = intents.to_vec();
        let t = Instant::now();
        let r = self
            .update_meta(move |m| {
                m.importing.extend(add);
                Ok(())
            })
            .await;
        self.rebuild.profile.add(Phase::Meta, t);
        if r.is_err() {
            self.copies_in_progress.fetch_sub(1, Ordering::AcqRel);
        }
        r
    }

    /// Bring every chunk of `work` to its target placement, `batch` chunks at a time (see the
    /// module docs), pipelined: one side records each batch's intents (the next batch's while
    /// the current one copies) and copies it; the other flushes, records and drops the old
    /// replicas of the copied batches in order, at most [`UNFINISHED_AHEAD`] behind, so
    /// neither the devices' copying nor a flush or metadata write waits for the other. Each
    /// batch keeps its own order of steps; only different batches overlap. Stops between
    /// batches when the engine shuts down or intents cannot be recorded; batches already
    /// copied are still finished.
    pub(crate) async fn move_batches(
        &self,
        work: &[(ObjectId, Slots)],
        batch: usize,
    ) -> BatchOutcome {
        let _pass = self.rebuild.profile.in_flight(Kind::Pass);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Started>(UNFINISHED_AHEAD);
        let io = &tokio::sync::Semaphore::new(COPY_IO_PARALLEL);
        let copy_side = async move {
            let stopping = || self.shutting_down.load(Ordering::Acquire);
            let mut out = BatchOutcome::default();
            let mut batches = work.chunks(batch.max(1));
            // The next batch, its intents recorded while the batch before it copied.
            let mut ready: Option<Intended<'_>> = None;
            loop {
                let cur = match ready.take() {
                    Some(r) if stopping() => {
                        out.add(self.abandon_batch(r));
                        break;
                    }
                    Some(r) => r,
                    None => {
                        let Some(b) = batches.next().filter(|_| !stopping()) else {
                            break;
                        };
                        self.intend_batch(b).await
                    }
                };
                if cur.out.stop {
                    out.add(cur.out);
                    break;
                }
                let upcoming = batches.next().filter(|_| !stopping());
                let intend_next = async {
                    match upcoming {
                        Some(b) => Some(self.intend_batch(b).await),
                        None => None,
                    }
                };
                let (started, next) = futures::join!(self.copy_batch(cur, io), intend_next);
                ready = next;
                // Waits while UNFINISHED_AHEAD batches queue for their flush.
                let t = Instant::now();
                let sent = tx.send(started).await;
                self.rebuild.profile.add(Phase::Stall, t);
                if let Err(unsent) = sent {
                    // Only if the finishing side is gone, which it is not before this side
                    // ends; finish here rather than leave the copies undecided.
                    out.add(self.finish_batch(unsent.0).await);
                }
            }
            // Chunks never started (shutdown or a stop) stay pending for the next pass.
            out
        };
        let finish_side = async {
            let mut out = BatchOutcome::default();
            while let Some(started) = rx.recv().await {
                out.add(self.finish_batch(started).await);
            }
            out
        };
        let (mut out, finished) = futures::join!(copy_side, finish_side);
        out.add(finished);
        out
    }

    /// Step 1 of a batch: record its intents.
    async fn intend_batch<'a>(&self, batch: &'a [(ObjectId, Slots)]) -> Intended<'a> {
        let mut out = BatchOutcome::default();
        let intents: Vec<(String, ObjectId)> = batch
            .iter()
            .flat_map(|(obj, target)| {
                let holders = self.index.get(*obj).unwrap_or_default();
                target
                    .as_slice()
                    .iter()
                    .filter(move |t| !holders.contains(**t))
                    .filter_map(|t| self.disk(*t))
                    .map(|d| (d.id.clone(), *obj))
                    .collect::<Vec<_>>()
            })
            .collect();
        if let Err(e) = self.begin_copy_batch(&intents).await {
            tracing::warn!(error = %e, "recording copy intents failed");
            out.pending += batch.len() as u64;
            out.stop = true;
        }
        Intended {
            batch,
            intents,
            out,
        }
    }

    /// A batch whose intents are recorded but that will not be copied (the engine shuts
    /// down): its chunks stay pending; its intents cover no import, so the maintenance pass
    /// clears them (a target that never received the chunk has nothing to delete).
    fn abandon_batch(&self, i: Intended<'_>) -> BatchOutcome {
        self.copies_in_progress.fetch_sub(1, Ordering::AcqRel);
        BatchOutcome {
            pending: i.batch.len() as u64,
            ..BatchOutcome::default()
        }
    }

    /// Step 2 of a batch whose intents are recorded: make its copies, several chunks at once
    /// so each device keeps requests in flight.
    async fn copy_batch(&self, i: Intended<'_>, io: &tokio::sync::Semaphore) -> Started {
        let copied: Vec<Copied> = futures::stream::iter(i.batch.iter().copied())
            .map(|(obj, target)| async move {
                let t = Instant::now();
                let c = self.copy_missing(obj, target, io).await;
                self.rebuild.profile.add(Phase::Move, t);
                c
            })
            .buffer_unordered(MOVE_PARALLEL)
            .collect()
            .await;
        Started {
            intents: i.intents,
            copied,
            out: i.out,
        }
    }

    /// Steps 3 to 5 of a batch whose copies are made: flush each target once, clear the
    /// intents of the durable copies, then drop the replicas placement no longer wants.
    async fn finish_batch(&self, started: Started) -> BatchOutcome {
        let prof = &self.rebuild.profile;
        let Started {
            intents,
            mut copied,
            mut out,
        } = started;
        let failed: Vec<(Arc<Disk>, StoreError)> =
            copied.iter_mut().flat_map(|c| c.failed.drain(..)).collect();
        for (d, e) in &failed {
            let _ = self.fail_disk(d, e).await;
        }
        // Step 3: one flush per target.
        let mut targets: Vec<Arc<Disk>> = Vec::new();
        for d in copied.iter().flat_map(|c| c.made.iter()) {
            if !targets.iter().any(|t| t.slot == d.slot) {
                targets.push(d.clone());
            }
        }
        let flushed = futures::future::join_all(targets.iter().map(|d| async move {
            let t = Instant::now();
            let r = d.replica.flush().await;
            prof.add(Phase::Flush, t);
            (d.clone(), r)
        }))
        .await;
        let mut bad: HashSet<u16> = HashSet::new();
        for (d, r) in flushed {
            match r {
                // An away peer's replica "flushes" without holding anything.
                Ok(()) if d.live() && d.replica.reachability() == Reachability::Up => {}
                Ok(()) => {
                    bad.insert(d.slot);
                }
                Err(e) => {
                    bad.insert(d.slot);
                    tracing::warn!(disk = %d.name, error = %e, "flushing rebuilt copies failed");
                    if is_device_failure(&e) {
                        let _ = self.fail_disk(&d, &e).await;
                    }
                }
            }
        }
        // Copies that are not durable leave the holders again; their intents stay, so the next
        // maintenance pass deletes whatever they left (as it does for failed imports).
        let mut keep: Vec<(String, ObjectId)> = Vec::new();
        for c in &mut copied {
            let (ok, lost): (Vec<_>, Vec<_>) =
                c.made.drain(..).partition(|d| !bad.contains(&d.slot));
            if !lost.is_empty() {
                let _l = self.stripe(c.obj).write().await;
                for d in &lost {
                    self.index.remove_slot(c.obj, d.slot);
                    c.pending += 1;
                }
            }
            keep.extend(lost.iter().chain(&c.tried).map(|d| (d.id.clone(), c.obj)));
            c.made = ok;
        }
        // Step 4: the durable copies are recorded (and the intents of copies never tried).
        let clear: Vec<(String, ObjectId)> =
            intents.into_iter().filter(|x| !keep.contains(x)).collect();
        let recorded = if clear.is_empty() {
            true
        } else {
            let t = Instant::now();
            let r = self
                .update_meta(move |m| {
                    m.importing.retain(|x| !clear.contains(x));
                    Ok(())
                })
                .await;
            prof.add(Phase::Meta, t);
            match r {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "recording copy completion failed");
                    false
                }
            }
        };
        // Step 5: progress, then drop what placement no longer wants.
        for c in copied {
            if !c.made.is_empty() {
                let mut rb = self.rebalance.lock();
                rb.chunks_copied += c.made.len() as u64;
                rb.bytes_copied += c.bytes;
                drop(rb);
                prof.copied(c.bytes);
                out.changed = true;
            }
            let mut pending = c.pending;
            if recorded {
                let (p, changed) = self.drop_extras(c.obj, &c.target).await;
                pending += p;
                out.changed |= changed;
            } else {
                pending += 1; // the old replicas stay until the new ones are recorded
            }
            if pending == 0 {
                self.rebuild.chunk_done(c.bytes);
            }
            out.pending += pending;
        }
        self.copies_in_progress.fetch_sub(1, Ordering::AcqRel);
        tokio::task::yield_now().await;
        out
    }

    /// Step 2 for one chunk: copy it onto every target that lacks it (paced first, then under
    /// the stripe lock). Each copy joins the holders in memory; nothing is flushed.
    async fn copy_missing(
        &self,
        obj: ObjectId,
        target: Slots,
        io: &tokio::sync::Semaphore,
    ) -> Copied {
        let mut out = Copied {
            obj,
            target,
            made: Vec::new(),
            tried: Vec::new(),
            bytes: 0,
            pending: 0,
            failed: Vec::new(),
        };
        let paced = self.index.get(obj).and_then(|h| {
            let dst = target
                .as_slice()
                .iter()
                .find(|t| !h.contains(**t))
                .and_then(|t| self.disk(*t))?;
            Some((self.live_disks(h).into_iter().next()?, dst))
        });
        let mut ticket = match paced {
            Some((src, dst)) => Some(self.pace_copy(&src, &dst).await),
            None => None,
        };
        let t = Instant::now();
        let _l = self.stripe(obj).write().await;
        self.rebuild.profile.add(Phase::Lock, t);
        let Some(holders) = self.index.get(obj) else {
            return out;
        };
        for t in target.as_slice() {
            if holders.contains(*t) {
                continue;
            }
            // A peer that is away (or still resyncing) would only record the copy as dirty.
            let Some(dst) = self.disk(*t).filter(|d| {
                d.state() == DiskState::Active && d.replica.reachability() == Reachability::Up
            }) else {
                continue;
            };
            let mut done = false;
            for src in self.live_disks(holders) {
                match self.import_copy_gated(obj, &src, &dst, Some(io)).await {
                    Ok(bytes) => {
                        match ticket.as_mut() {
                            Some(t) => t.charge(bytes),
                            None => self.rebuild.charge(bytes),
                        }
                        out.bytes += bytes;
                        // Guest writes from now on reach the copy too.
                        self.index.add(obj, dst.slot);
                        out.made.push(dst.clone());
                        done = true;
                        break;
                    }
                    Err(Some(e)) => {
                        out.tried.push(dst.clone());
                        if is_device_failure(&e) {
                            out.failed.push((dst.clone(), e));
                        } else {
                            tracing::warn!(%obj, disk = %dst.name, error = %e, "import failed");
                        }
                        break;
                    }
                    Err(None) => continue, // try the other source
                }
            }
            if !done {
                out.pending += 1;
            }
        }
        out
    }

    /// Step 5 for one chunk: once every wanted replica is in place and live, drop the others.
    /// Returns (replica sets still pending, whether something changed).
    async fn drop_extras(&self, obj: ObjectId, target: &Slots) -> (u64, bool) {
        let _l = self.stripe(obj).write().await;
        let Some(now) = self.index.get(obj) else {
            return (0, false);
        };
        let complete = target
            .as_slice()
            .iter()
            .all(|t| now.contains(*t) && self.disk(*t).is_some_and(|d| d.live()));
        if !complete {
            return (u64::from(!target.is_empty()), false);
        }
        let mut changed = false;
        for h in now
            .as_slice()
            .iter()
            .copied()
            .filter(|h| !target.contains(*h))
        {
            self.index.remove_slot(obj, h);
            if let Some(d) = self.disk(h).filter(|d| d.live()) {
                match d.replica.delete_object(obj).await {
                    // Durable with the next flush of that disk (a stale copy that survives a
                    // crash can only hold data from before that flush).
                    Ok(()) => {
                        d.write_seq.fetch_add(1, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(%obj, disk = %d.name, error = %e, "dropping old replica failed")
                    }
                }
            }
            self.rebalance.lock().chunks_dropped += 1;
            changed = true;
        }
        (0, changed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use blockdev::{BlockDevice, RamDevice};
    use store::ObjectId;

    use crate::placement::Slots;
    use crate::{Engine, EngineConfig};

    /// Many small batches, so the copying side runs ahead of the finishing side: every chunk
    /// ends on its target holders with exact contents, every batch's target was flushed, and
    /// no copy intent is left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_batches_all_land_durable_and_recorded() {
        const CHUNKS: u64 = 12;
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "t".into(),
        })
        .await
        .unwrap();
        for i in 0..3 {
            let d: Arc<dyn BlockDevice> = Arc::new(RamDevice::new(format!("r{i}"), 64 << 20));
            e.add_disk(d).await.unwrap();
        }
        e.create_vdisk("v", CHUNKS * crate::CHUNK_BYTES)
            .await
            .unwrap();
        let h = e.open_vdisk("v").unwrap();
        let data: Vec<u8> = (0..CHUNKS * crate::CHUNK_BYTES)
            .map(|i| (i / 4096 * 7 + i % 251) as u8)
            .collect();
        h.write(0, &data).await.unwrap();
        h.flush().await.unwrap();
        assert!(e.wait_rebalanced(Duration::from_secs(60)).await);
        let inner = &e.inner;
        // No maintenance pass may move chunks meanwhile.
        let _bg = inner.bg.lock().await;
        // Each chunk moves its second replica onto the disk that does not hold it.
        let work: Vec<(ObjectId, Slots)> = (0..CHUNKS)
            .map(|chunk| {
                let obj = ObjectId {
                    vdisk: h.rt.id,
                    chunk,
                };
                let holders = inner.index.get(obj).expect("written chunk has holders");
                assert_eq!(holders.len(), 2);
                let free = (0..3u16).find(|s| !holders.contains(*s)).unwrap();
                let mut target = holders;
                target.remove(holders.as_slice()[1]);
                target.insert(free);
                (obj, target)
            })
            .collect();
        let flushes0 = e.rebuild_profile().flushes;
        let out = inner.move_batches(&work, 2).await;
        assert_eq!((out.pending, out.changed, out.stop), (0, true, false));
        for (obj, target) in &work {
            let now = inner.index.get(*obj).unwrap();
            let (mut a, mut b) = (now.as_slice().to_vec(), target.as_slice().to_vec());
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "{obj} is not on its target disks");
        }
        let importing = inner.meta_snapshot().unwrap().importing.len();
        assert_eq!(importing, 0, "copy intents left behind");
        // One flush per target disk per batch (six batches, at least one target each).
        assert!(e.rebuild_profile().flushes - flushes0 >= CHUNKS / 2);
        // Each replica holds the data (reads from either disk of a chunk).
        for (obj, target) in &work {
            for slot in target.as_slice() {
                let d = inner.disk(*slot).unwrap();
                let got = d
                    .replica
                    .read(*obj, 0, crate::CHUNK_BLOCKS as u32, u64::MAX)
                    .await
                    .unwrap();
                let off = (obj.chunk * crate::CHUNK_BYTES) as usize;
                assert!(
                    got[..] == data[off..off + crate::CHUNK_BYTES as usize],
                    "{obj} differs on disk slot {slot}"
                );
            }
        }
    }
}
