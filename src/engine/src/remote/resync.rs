//! Resync of a returning peer: its dirty chunks are copied from a reachable replica in batches,
//! crash safe with one intent record, one flush of the peer and one completion record per batch
//! (instead of all three per chunk), and pipelined like a rebuild (`rebuild_copy`): one batch's
//! flush and completion record overlap the next batch's copies. Unlike a rebuild, the next
//! batch's intents are not recorded during the current batch's copies: measured (`bench_rebuild
//! ... resync`, 7 alternated pairs, load 20-24) it was slower, median 356 -> 298 MiB/s (likely
//! because each intent record also flushes the peer's device while the copies write to it).
//!
//! Per batch:
//! 1. the copy intents of the batch's chunks that the peer holds are recorded (one metadata
//!    write);
//! 2. each chunk (a few at once, each paced first, then under its stripe lock) is marked clean
//!    and exported from a reachable holder onto the peer, and the peer joins the chunk's holders
//!    in memory again at once, so guest writes from then on reach it; a chunk the peer should no
//!    longer hold has its stale copy dropped instead;
//! 3. the peer is flushed once;
//! 4. the intents of the copies made durable are cleared (one metadata write).
//!
//! A crash before 4 leaves the intents, so the maintenance pass deletes what the interrupted
//! imports left unless the copy was recorded as a holder (the same rule as one copy at a time).
//! A flush that fails, or a peer that went away before its flush, takes the batch's copies out
//! of their holders again and marks them dirty, keeping their intents: the next round drops
//! what they left and the rebalancer restores the replica. Failed copies stay dirty.
//!
//! Must never: clear an intent before the copy it covers is flushed; hold a stripe lock while
//! pacing or flushing; run two resyncs at once (their intents would share entries).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use store::ObjectId;

use crate::core::{Disk, Inner};
use crate::rebuild::Phase;
use crate::rebuild_copy::REBUILD_PARALLEL;
use crate::replica::{Reachability, PRUNE_MARK_CHUNK};

use super::RemoteCtl;

/// Dirty chunks per batch (one intent record and one flush each), as a rebuild's batches.
pub(crate) const RESYNC_BATCH: usize = 128;

/// What step 2 did for one chunk.
enum Step {
    /// Copied (not yet durable): bytes moved.
    Copied(ObjectId, u64),
    /// The copy failed: the chunk stays dirty and its intent stays.
    Failed(ObjectId),
    /// Nothing copied (no source now, a stale copy dropped, or the resync stopped).
    Nothing,
}

/// A batch past steps 1-2.
struct Started {
    intents: Vec<(String, ObjectId)>,
    steps: Vec<Step>,
}

/// Whether the resync onto `d` must stop (between chunks and batches).
fn must_stop(inner: &Inner, d: &Disk) -> bool {
    inner.shutting_down.load(Ordering::Acquire)
        || d.replica.reachability() == Reachability::Away
        || !d.live()
}

/// A reachable live holder of a chunk other than `d`, to copy from.
fn source(inner: &Inner, obj: ObjectId, d: &Disk) -> Option<Arc<Disk>> {
    inner.index.get(obj).and_then(|h| {
        inner
            .live_disks(h)
            .into_iter()
            .find(|x| x.slot != d.slot && x.replica.reachability() == Reachability::Up)
    })
}

/// Copy each dirty chunk from a reachable replica to `d` (or drop `d`'s copy of a chunk no
/// longer placed there), in pipelined batches (see the module docs), then redo missed prunes.
pub(super) async fn resync_disk(
    inner: &Inner,
    ctl: &RemoteCtl,
    d: &Arc<Disk>,
    dirty: Vec<ObjectId>,
) {
    let _one = ctl.resync.lock().await;
    inner.prime_pacing();
    let (prunes, chunks): (Vec<ObjectId>, Vec<ObjectId>) =
        dirty.into_iter().partition(|o| o.chunk == PRUNE_MARK_CHUNK);
    let mut prev: Option<Started> = None;
    for batch in chunks.chunks(RESYNC_BATCH) {
        if must_stop(inner, d) {
            break;
        }
        let finish_prev = async {
            if let Some(p) = prev.take() {
                finish_batch(inner, ctl, d, p).await;
            }
        };
        let ((), started) = futures::join!(finish_prev, start_batch(inner, d, batch));
        match started {
            Some(s) => prev = Some(s),
            None => break,
        }
    }
    if let Some(p) = prev {
        finish_batch(inner, ctl, d, p).await;
    }
    for obj in prunes {
        if must_stop(inner, d) {
            return;
        }
        // A prune missed while away: redo it with the current snapshot list.
        let gens = inner
            .meta_snapshot()
            .and_then(|m| m.vdisk_by_id(obj.vdisk).map(|v| v.snap_gens()));
        d.replica.mark_clean(obj);
        if let Some(gens) = gens {
            if let Err(e) = d.replica.prune(obj.vdisk, gens).await {
                tracing::warn!(disk = %d.name, error = %e, "replaying a prune failed");
                d.replica.mark_dirty(obj);
            }
        }
    }
}

/// Steps 1 and 2; None if the intents could not be recorded (the chunks stay dirty).
async fn start_batch(inner: &Inner, d: &Arc<Disk>, batch: &[ObjectId]) -> Option<Started> {
    let intents: Vec<(String, ObjectId)> = batch
        .iter()
        .filter(|o| inner.index.get(**o).is_some_and(|h| h.contains(d.slot)))
        .map(|o| (d.id.clone(), *o))
        .collect();
    if let Err(e) = inner.begin_copy_batch(&intents).await {
        tracing::warn!(disk = %d.name, error = %e, "recording resync intents failed");
        return None;
    }
    let intended: Vec<ObjectId> = intents.iter().map(|(_, o)| *o).collect();
    let intended = &intended;
    let steps: Vec<Step> = futures::stream::iter(batch.iter().copied())
        .map(|obj| resync_chunk(inner, d, obj, intended.contains(&obj)))
        .buffer_unordered(REBUILD_PARALLEL)
        .collect()
        .await;
    Some(Started { intents, steps })
}

/// Step 2 for one chunk (paced first, then under its stripe lock).
async fn resync_chunk(inner: &Inner, d: &Arc<Disk>, obj: ObjectId, intended: bool) -> Step {
    if must_stop(inner, d) {
        return Step::Nothing;
    }
    // Paced like a rebuild (guest I/O keeps priority), before the chunk is locked.
    let mut ticket = match source(inner, obj, d) {
        Some(src) => Some(inner.pace_copy(&src, d).await),
        None => None,
    };
    let t = Instant::now();
    let _l = inner.stripe(obj).write().await;
    inner.rebuild.profile.add(Phase::Lock, t);
    if must_stop(inner, d) {
        return Step::Nothing;
    }
    let holders = inner.index.get(obj);
    match (holders, source(inner, obj, d)) {
        (Some(h), Some(src)) if h.contains(d.slot) => {
            if !intended {
                // It became the peer's chunk after the intents were recorded: next round.
                return Step::Nothing;
            }
            d.replica.mark_clean(obj);
            match inner.import_copy(obj, &src, d).await {
                Ok(bytes) => {
                    match ticket.as_mut() {
                        Some(t) => t.charge(bytes),
                        None => inner.rebuild.charge(bytes),
                    }
                    // Guest writes from now on reach the copy too.
                    inner.index.add(obj, d.slot);
                    Step::Copied(obj, bytes)
                }
                Err(err) => {
                    d.replica.mark_dirty(obj);
                    tracing::warn!(%obj, disk = %d.name, error = ?err.map(|e| e.to_string()), "resync copy failed");
                    Step::Failed(obj)
                }
            }
        }
        (Some(h), None) if h.contains(d.slot) => {
            // No good source reachable now: keep it dirty (reads skip it).
            Step::Nothing
        }
        _ => {
            // Deleted or moved meanwhile: the peer's copy is stale.
            d.replica.mark_clean(obj);
            if let Err(e) = d.replica.delete_object(obj).await {
                tracing::warn!(%obj, disk = %d.name, error = %e, "dropping a stale copy failed");
                d.replica.mark_dirty(obj);
            } else {
                d.write_seq.fetch_add(1, Ordering::Release);
            }
            Step::Nothing
        }
    }
}

/// Steps 3 and 4: flush the peer once, then clear the intents of the durable copies.
async fn finish_batch(inner: &Inner, ctl: &RemoteCtl, d: &Arc<Disk>, s: Started) {
    let prof = &inner.rebuild.profile;
    let Started { intents, steps } = s;
    let mut keep: Vec<ObjectId> = Vec::new();
    let mut made: Vec<(ObjectId, u64)> = Vec::new();
    for st in steps {
        match st {
            Step::Copied(obj, bytes) => made.push((obj, bytes)),
            Step::Failed(obj) => keep.push(obj),
            Step::Nothing => {}
        }
    }
    if !made.is_empty() {
        let t = Instant::now();
        let r = d.replica.flush().await;
        prof.add(Phase::Flush, t);
        // An away peer's replica "flushes" without holding anything.
        let durable = r.is_ok() && d.live() && d.replica.reachability() != Reachability::Away;
        if let Err(e) = r {
            tracing::warn!(disk = %d.name, error = %e, "flushing resynced copies failed");
        }
        if !durable {
            for (obj, _) in made.drain(..) {
                let _l = inner.stripe(obj).write().await;
                inner.index.remove_slot(obj, d.slot);
                d.replica.mark_dirty(obj);
                keep.push(obj);
            }
        }
    }
    let clear: Vec<(String, ObjectId)> = intents
        .into_iter()
        .filter(|(_, o)| !keep.contains(o))
        .collect();
    if !clear.is_empty() {
        let t = Instant::now();
        let r = inner
            .update_meta(move |m| {
                m.importing.retain(|x| !clear.contains(x));
                Ok(())
            })
            .await;
        prof.add(Phase::Meta, t);
        if let Err(e) = r {
            // The copies are durable and holders; the maintenance pass clears the intents
            // (it keeps a copy that is a holder).
            tracing::warn!(disk = %d.name, error = %e, "recording resync completion failed");
        }
    }
    if !made.is_empty() {
        let mut c = ctl.counts.lock();
        let e = c.entry(d.slot).or_default();
        for (_, bytes) in &made {
            e.chunks += 1;
            e.bytes += bytes;
            prof.copied(*bytes);
        }
    }
    inner.copies_in_progress.fetch_sub(1, Ordering::AcqRel);
    tokio::task::yield_now().await;
}
