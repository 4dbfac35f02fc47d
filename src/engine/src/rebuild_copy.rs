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
//! Batches are pipelined: while one batch does step 2, the batch before it does steps 3-5 and
//! the batch after it step 1, so the devices keep copying during flushes and metadata writes.
//! Each batch still takes its steps in order, and a batch's intents are recorded before any of
//! its imports. A batch whose intents were recorded but that is never copied (shutdown) leaves
//! intents that cover no import; the maintenance pass clears them.
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
use crate::rebuild::Phase;
use crate::replica::{is_device_failure, Reachability};
use crate::types::DiskState;

/// Chunk moves in flight at once within a batch (each keeps one request in flight per device
/// at a time: a read on the source, then a write on the target). 8 and 16 were no faster in
/// the rebuild benchmark. Session 10 (`bench_rebuild DIR 4096 1 ram|dev`, alternated): 8 won
/// 6 of 9 RAM-line pairs at load 6-19 but lost all 3 at load 5 (1144-1461 vs 1518-1758
/// MiB/s) and all 3 one-device pairs (547-754 vs 593-804): deeper device queues make each
/// target flush and metadata write several times slower (flush_ms 920-1930 vs 160-750), and
/// a batch's copies wait for the batch before it to finish. 16 was slower everywhere.
pub(crate) const REBUILD_PARALLEL: usize = 4;

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
    /// module docs), pipelined: while one batch's copies run, the previous batch is flushed,
    /// recorded and its old replicas dropped, and the next batch's intents are recorded, so
    /// the devices never sit idle during a flush or a metadata write. Each batch keeps its own
    /// order of steps; only different batches overlap. Stops between batches when the engine
    /// shuts down or intents cannot be recorded.
    pub(crate) async fn move_batches(
        &self,
        work: &[(ObjectId, Slots)],
        batch: usize,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let mut add = |b: BatchOutcome| {
            out.pending += b.pending;
            out.changed |= b.changed;
            out.stop |= b.stop;
        };
        let stopping = || self.shutting_down.load(Ordering::Acquire);
        let mut prev: Option<Started> = None;
        let mut batches = work.chunks(batch.max(1));
        // The next batch, its intents recorded while the batch before it copied.
        let mut ready: Option<Intended<'_>> = None;
        loop {
            let cur = match ready.take() {
                Some(r) if stopping() => {
                    add(self.abandon_batch(r));
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
                add(cur.out);
                break;
            }
            let upcoming = batches.next().filter(|_| !stopping());
            let finish_prev = async {
                match prev.take() {
                    Some(p) => Some(self.finish_batch(p).await),
                    None => None,
                }
            };
            let intend_next = async {
                match upcoming {
                    Some(b) => Some(self.intend_batch(b).await),
                    None => None,
                }
            };
            let (done, started, next) =
                futures::join!(finish_prev, self.copy_batch(cur), intend_next);
            if let Some(d) = done {
                add(d);
            }
            prev = Some(started);
            ready = next;
        }
        if let Some(p) = prev {
            add(self.finish_batch(p).await);
        }
        // Chunks never started (shutdown or a stop) stay pending for the next pass.
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
    async fn copy_batch(&self, i: Intended<'_>) -> Started {
        let copied: Vec<Copied> = futures::stream::iter(i.batch.iter().copied())
            .map(|(obj, target)| self.copy_missing(obj, target))
            .buffer_unordered(REBUILD_PARALLEL)
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
    async fn copy_missing(&self, obj: ObjectId, target: Slots) -> Copied {
        let mut out = Copied {
            obj,
            target,
            made: Vec::new(),
            tried: Vec::new(),
            bytes: 0,
            pending: 0,
            failed: Vec::new(),
        };
        if let Some((src, dst)) = self.index.get(obj).and_then(|h| {
            let dst = target
                .as_slice()
                .iter()
                .find(|t| !h.contains(**t))
                .and_then(|t| self.disk(*t))?;
            Some((self.live_disks(h).into_iter().next()?, dst))
        }) {
            self.pace_copy(&src, &dst).await;
        }
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
                match self.import_copy(obj, &src, &dst).await {
                    Ok(bytes) => {
                        self.rebuild.charge(bytes);
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
