//! Replica I/O for one chunk: mirrored writes and discards, reads from one replica with
//! fail-over, and repair of a bad replica from the good one. Used by `VdiskHandle` and by
//! metadata operations that touch every chunk (clone, rollback).
//!
//! Every function here assumes the caller checked bounds; it never changes pool metadata except
//! to mark a disk Failed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use blockdev::{AlignedBuf, WriteBuf};
use store::{ObjectId, StoreError};

use crate::core::{Disk, Inner};
use crate::error::{EngineError, Result};
use crate::meta::VdiskMeta;
use crate::placement::{PlacementView, Slots};
use crate::rebuild::{Kind, Phase};
use crate::replica::is_device_failure;
use crate::{BLOCK_BYTES, CHUNK_BLOCKS};

/// One mutation sent to every live replica of a chunk.
#[derive(Clone)]
pub(crate) enum Op {
    /// `crcs` = `store::block_crcs(data)`: checksummed once, not once per replica (inline up
    /// to 64 KiB of data: a small write allocates nothing for them).
    Write {
        block: u64,
        data: WriteBuf,
        crcs: Crcs,
    },
    Discard {
        block: u64,
        nblocks: u32,
    },
    Rollback {
        snap_gen: u64,
    },
}

/// A write's block checksums.
pub(crate) type Crcs = smallvec::SmallVec<[u32; 16]>;

/// `store::block_crcs(data)` as [`Crcs`].
pub(crate) fn block_crcs(data: &[u8]) -> Crcs {
    data.chunks(BLOCK_BYTES as usize)
        .map(blockdev::crc32c)
        .collect()
}

/// Where a read's verified data goes.
pub(crate) enum ReadDest<'a> {
    /// The caller's memory (exactly the blocks read).
    Slice(&'a mut [u8]),
    /// A buffer of the replica's own, handed over (set on success).
    Owned(Option<AlignedBuf>),
}

/// A bad copy found while reading, repaired after the stripe lock is released.
pub(crate) enum Repair {
    /// One version of one block failed its checksum on `bad`.
    Version {
        bad: Arc<Disk>,
        good: Arc<Disk>,
        block: u64,
        gen: u64,
        at_gen: u64,
        nblocks: u32,
        first: u64,
    },
    /// `bad` returned EIO: rebuild its whole copy of the chunk from `good`.
    Resync { bad: Arc<Disk>, good: Arc<Disk> },
}

impl Inner {
    /// Where placement puts chunk `chunk` of `v` (only on this node's disks when `v` is
    /// node-private).
    pub(crate) fn place_vdisk(&self, view: &PlacementView, v: &VdiskMeta, chunk: u64) -> Slots {
        view.place_in(v.seed, chunk, v.local_only.then_some(self.cfg.node_id))
    }

    /// Where placement puts `obj` of the virtual disk with placement seed `seed` (looks the
    /// disk up for its node-private flag: first writes and repairs only, not the hot path).
    pub(crate) fn place_obj(&self, obj: ObjectId, seed: u64) -> Slots {
        let local = self
            .meta_arc()
            .and_then(|m| m.vdisk_by_id(obj.vdisk).map(|v| v.local_only))
            .unwrap_or(false);
        self.view
            .read()
            .place_in(seed, obj.chunk, local.then_some(self.cfg.node_id))
    }

    /// Replicas for `obj`: where it is, or (first write) where placement puts it.
    pub(crate) fn holders_or_place(&self, obj: ObjectId, seed: u64) -> Result<Slots> {
        // Placement is computed before the index's shard lock is taken (it reads the metadata).
        let s = match self.index.get(obj) {
            Some(s) => s,
            None => {
                let placed = self.place_obj(obj, seed);
                self.index.get_or_insert(obj, || placed)
            }
        };
        if s.is_empty() {
            self.index.remove(obj);
            return Err(EngineError::NoSpace("the pool has no active disk".into()));
        }
        Ok(s)
    }

    /// Send `op` to every live replica of `obj` at once; Ok when every live replica took it.
    /// A replica whose device fails is marked Failed and no longer counts as live. Waits first
    /// for earlier changes in flight of the same blocks (see `order`): the caller holds the
    /// chunk's stripe lock (shared or exclusive).
    pub(crate) async fn replicate(
        &self,
        obj: ObjectId,
        holders: Slots,
        op: &Op,
        gen: u64,
        pin: u64,
    ) -> Result<()> {
        // After every earlier change of these blocks in flight is done on every replica, and
        // until this one is: every replica sees overlapping changes in one order.
        let range = match op {
            Op::Write { block, data, .. } => {
                *block..*block + (data.len() as u64).div_ceil(BLOCK_BYTES)
            }
            Op::Discard { block, nblocks } => *block..*block + u64::from(*nblocks),
            Op::Rollback { .. } => crate::order::WHOLE_CHUNK,
        };
        let ordered = self.order.enter(obj, range).await;
        let live = self.live_disks(holders);
        if live.is_empty() {
            return Err(EngineError::Degraded(format!(
                "chunk {obj}: every replica is on a failed disk"
            )));
        }
        // The checksums in one shared allocation, only if a holder other than a local store
        // (which borrows them) takes the write.
        let shared_crcs: Option<Arc<[u32]>> = match op {
            Op::Write { crcs, .. } if live.iter().any(|d| d.local.is_none()) => {
                Some(Arc::from(&crcs[..]))
            }
            _ => None,
        };
        // A local store's write is called directly (no boxed future per request); any other
        // request goes through the `Replica` trait.
        fn issue<'a>(
            d: &'a Arc<Disk>,
            obj: ObjectId,
            op: &'a Op,
            shared_crcs: Option<&Arc<[u32]>>,
            gen: u64,
            pin: u64,
        ) -> impl std::future::Future<Output = std::result::Result<(), StoreError>> + 'a {
            use futures::future::Either;
            d.inflight.fetch_add(1, Ordering::Relaxed);
            match (op, &d.local, shared_crcs) {
                (Op::Write { block, data, crcs }, Some(s), _) => {
                    Either::Left(s.write_with_crcs(obj, *block, data.clone(), crcs, gen, pin))
                }
                // `shared_crcs` is there whenever a disk has no local store.
                (Op::Write { block, data, crcs }, None, shared) => {
                    let c = shared.cloned().unwrap_or_else(|| Arc::from(&crcs[..]));
                    Either::Right(
                        d.replica
                            .write_with_crcs(obj, *block, data.clone(), c, gen, pin),
                    )
                }
                (Op::Discard { block, nblocks }, _, _) => {
                    Either::Right(d.replica.discard(obj, *block, *nblocks, gen, pin))
                }
                (Op::Rollback { snap_gen }, _, _) => {
                    Either::Right(d.replica.rollback_object(obj, *snap_gen, gen, pin))
                }
            }
        }
        let sc = shared_crcs.as_ref();
        // From the first replica's request on, until every replica answered: a caller that
        // drops this future meanwhile leaves the change on some replicas and not on others.
        let mut issuing = Issuing {
            inner: self,
            obj,
            live: &live,
            armed: true,
        };
        let results: smallvec::SmallVec<[std::result::Result<(), StoreError>; 4]> =
            if live.len() == 2 {
                let (a, b) = futures::future::join(
                    issue(&live[0], obj, op, sc, gen, pin),
                    issue(&live[1], obj, op, sc, gen, pin),
                )
                .await;
                smallvec::smallvec![a, b]
            } else {
                futures::future::join_all(live.iter().map(|d| issue(d, obj, op, sc, gen, pin)))
                    .await
                    .into()
            };
        issuing.armed = false;
        drop(ordered);
        let mut ok = 0;
        let mut other = None;
        let mut took = None;
        let mut refused_locally = false;
        // Every count first: a failed disk's `fail_disk` below may return early (its record
        // failed) or be dropped with this future while it persists.
        for d in live.iter() {
            d.inflight.fetch_sub(1, Ordering::Relaxed);
        }
        for (d, r) in live.iter().zip(results) {
            match r {
                Ok(()) => {
                    ok += 1;
                    took = Some(d.slot);
                    d.writes.fetch_add(1, Ordering::Relaxed);
                    d.write_seq.fetch_add(1, Ordering::Release);
                }
                Err(e) if is_device_failure(&e) => self.fail_disk(d, &e).await?,
                Err(e) => {
                    refused_locally |= d.node_id == self.cfg.node_id;
                    other = Some(e);
                }
            }
        }
        if let Some(e) = other {
            if let (Some(good), true) = (took, refused_locally) {
                // A local replica refused a change another one took: make them agree before
                // the chunk serves anything else. (A peer's refusal, such as a fence, is the
                // peer's to resolve: copying over it would drop it from the chunk.)
                self.mark_suspect(obj, good);
            }
            return Err(EngineError::store(format!("chunk {obj}"), e));
        }
        if ok == 0 {
            return Err(EngineError::io(format!(
                "chunk {obj}: every replica failed"
            )));
        }
        // A replica on an unreachable node only records the change for a later resync: at
        // least one replica must really hold it (local ones are always reachable).
        if !live
            .iter()
            .any(|d| d.replica.reachability() == crate::replica::Reachability::Up)
        {
            return Err(EngineError::Degraded(format!(
                "chunk {obj}: every replica is on an unreachable node"
            )));
        }
        Ok(())
    }

    /// A change dropped while its replicas' requests were in flight (see [`Issuing`]): the
    /// chunk is reconciled before it serves anything again, from a replica of this node if it
    /// has one (a request sent to a peer may still be applied there; one to a local store
    /// never is once dropped).
    fn change_dropped(&self, obj: ObjectId, live: &[Arc<Disk>]) {
        for d in live {
            d.inflight.fetch_sub(1, Ordering::Relaxed);
        }
        let truth = live
            .iter()
            .find(|d| d.node_id == self.cfg.node_id)
            .or(live.first());
        if let Some(d) = truth {
            tracing::warn!(%obj, "a change was dropped in flight; its replicas are reconciled before the chunk serves I/O again");
            self.mark_suspect(obj, d.slot);
            self.kick_bg();
        }
    }

    /// Write whole blocks of one chunk (stripe lock shared: many writers, no mover).
    pub(crate) async fn write_blocks(
        &self,
        obj: ObjectId,
        seed: u64,
        block: u64,
        data: WriteBuf,
        gen: u64,
        pin: u64,
    ) -> Result<()> {
        debug_assert!(block + (data.len() / BLOCK_BYTES as usize) as u64 <= CHUNK_BLOCKS);
        let crcs = block_crcs(data.as_slice());
        self.ensure_reconciled(obj).await?;
        let _l = self.stripe(obj).read().await;
        let holders = self.holders_or_place(obj, seed)?;
        self.replicate(obj, holders, &Op::Write { block, data, crcs }, gen, pin)
            .await
    }

    pub(crate) async fn discard_blocks(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        gen: u64,
        pin: u64,
    ) -> Result<()> {
        self.ensure_reconciled(obj).await?;
        let _l = self.stripe(obj).read().await;
        // Nothing stored: already reads as zeros.
        let Some(holders) = self.index.get(obj) else {
            return Ok(());
        };
        self.replicate(obj, holders, &Op::Discard { block, nblocks }, gen, pin)
            .await
    }

    /// Read whole blocks of one chunk into `out`, repairing a bad replica on the way.
    pub(crate) async fn read_blocks(
        &self,
        obj: ObjectId,
        block: u64,
        at_gen: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let nblocks = u32::try_from(out.len() / BLOCK_BYTES as usize)
            .map_err(|_| EngineError::invalid("read too large"))?;
        self.read_blocks_to(obj, block, nblocks, at_gen, &mut ReadDest::Slice(out))
            .await
    }

    /// Read `nblocks` whole blocks of one chunk into a buffer of the engine's own (the verified
    /// device buffer itself when the blocks lie in one run on the device: no copy).
    pub(crate) async fn read_blocks_owned(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
    ) -> Result<AlignedBuf> {
        let mut dest = ReadDest::Owned(None);
        self.read_blocks_to(obj, block, nblocks, at_gen, &mut dest)
            .await?;
        match dest {
            ReadDest::Owned(Some(b)) => Ok(b),
            _ => Err(EngineError::io(format!(
                "chunk {obj}: a read returned no buffer"
            ))),
        }
    }

    async fn read_blocks_to(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
        dest: &mut ReadDest<'_>,
    ) -> Result<()> {
        self.ensure_reconciled(obj).await?;
        let mut repairs = Vec::new();
        let r = {
            let _l = self.stripe(obj).read().await;
            self.read_locked_to(obj, block, nblocks, at_gen, dest, &mut repairs)
                .await
        };
        self.run_repairs(obj, repairs).await;
        r
    }

    /// The read itself, with the stripe lock held (shared or exclusive) by the caller.
    pub(crate) async fn read_locked(
        &self,
        obj: ObjectId,
        block: u64,
        at_gen: u64,
        out: &mut [u8],
        repairs: &mut Vec<Repair>,
    ) -> Result<()> {
        let nblocks = u32::try_from(out.len() / BLOCK_BYTES as usize)
            .map_err(|_| EngineError::invalid("read too large"))?;
        self.read_locked_to(
            obj,
            block,
            nblocks,
            at_gen,
            &mut ReadDest::Slice(out),
            repairs,
        )
        .await
    }

    async fn read_locked_to(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
        dest: &mut ReadDest<'_>,
        repairs: &mut Vec<Repair>,
    ) -> Result<()> {
        let Some(holders) = self.index.get(obj) else {
            // Thin: never written.
            match dest {
                ReadDest::Slice(out) => out.fill(0),
                ReadDest::Owned(o) => {
                    *o = Some(zero_buf(nblocks as usize * BLOCK_BYTES as usize));
                }
            }
            return Ok(());
        };
        let mut live = self.live_disks(holders);
        if live.is_empty() {
            return Err(EngineError::Degraded(format!(
                "chunk {obj}: every replica is on a failed disk"
            )));
        }
        if live.len() > 1 && live[0].node_id != live[1].node_id {
            // Another node's replica costs a network round trip: read the local one first.
            if live[0].node_id != self.cfg.node_id {
                live.swap(0, 1);
            }
        } else if live.len() > 1 && self.balanced_reads.load(Ordering::Relaxed) {
            // Least loaded first; ties alternate by block so both disks share sequential scans.
            let a = live[0].inflight.load(Ordering::Relaxed);
            let b = live[1].inflight.load(Ordering::Relaxed);
            if b < a || (a == b && (obj.chunk ^ (block / 16)) & 1 == 1) {
                live.swap(0, 1);
            }
        }
        let mut failures: Vec<(Arc<Disk>, StoreError)> = Vec::new();
        for d in &live {
            let counted = Counted::new(d);
            // A local store is read directly (no boxed future per request).
            let r = match (&mut *dest, &d.local) {
                // Verified and copied block by block into the caller's memory (one pass).
                (ReadDest::Slice(out), Some(s)) => {
                    s.read_into(obj, block, nblocks, at_gen, out).await
                }
                (ReadDest::Slice(out), None) => {
                    d.replica.read_into(obj, block, nblocks, at_gen, out).await
                }
                // The replica's verified buffer is handed over as is.
                (ReadDest::Owned(o), local) => {
                    let read = match local {
                        Some(s) => s.read(obj, block, nblocks, at_gen).await,
                        None => d.replica.read(obj, block, nblocks, at_gen).await,
                    };
                    match read {
                        Ok(buf) if buf.len() == nblocks as usize * BLOCK_BYTES as usize => {
                            *o = Some(buf);
                            Ok(())
                        }
                        Ok(buf) => Err(StoreError::InvalidArgument(format!(
                            "replica returned {} bytes for a read of {nblocks} blocks",
                            buf.len()
                        ))),
                        Err(e) => Err(e),
                    }
                }
            };
            drop(counted);
            d.reads.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(()) => {
                    for (bad, e) in failures {
                        repairs.push(self.classify(bad, d.clone(), &e, block, nblocks, at_gen));
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.note_read_error(d, &e);
                    failures.push((d.clone(), e));
                }
            }
        }
        self.counters
            .unrecoverable_reads
            .fetch_add(1, Ordering::Relaxed);
        let corrupt = failures
            .iter()
            .any(|(_, e)| matches!(e.kind(), store::ErrorKind::Corrupt { .. }));
        let detail: Vec<String> = failures
            .iter()
            .map(|(d, e)| format!("{}: {e}", d.name))
            .collect();
        let msg = format!(
            "chunk {obj} blocks {block}+{nblocks}: {}",
            detail.join("; ")
        );
        Err(if corrupt {
            EngineError::Corrupt(msg)
        } else {
            EngineError::io(msg)
        })
    }

    pub(crate) fn note_read_error(&self, d: &Disk, e: &StoreError) {
        if matches!(e.kind(), store::ErrorKind::Corrupt { .. }) {
            self.counters
                .checksum_errors
                .fetch_add(1, Ordering::Relaxed);
            d.checksum_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.read_io_errors.fetch_add(1, Ordering::Relaxed);
            d.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn classify(
        &self,
        bad: Arc<Disk>,
        good: Arc<Disk>,
        e: &StoreError,
        first: u64,
        nblocks: u32,
        at_gen: u64,
    ) -> Repair {
        match e.kind() {
            store::ErrorKind::Corrupt { block, gen, .. } => Repair::Version {
                bad,
                good,
                block,
                gen,
                at_gen,
                nblocks,
                first,
            },
            _ => Repair::Resync { bad, good },
        }
    }

    /// Fix bad copies found by a read. Best effort: a failure here is counted and logged; the
    /// read already returned good data.
    pub(crate) async fn run_repairs(&self, obj: ObjectId, repairs: Vec<Repair>) {
        for r in repairs {
            let res = match r {
                Repair::Version {
                    bad,
                    good,
                    block,
                    gen,
                    at_gen,
                    nblocks,
                    first,
                } => {
                    self.repair_versions(obj, &bad, &good, block, gen, first, nblocks, at_gen)
                        .await
                }
                Repair::Resync { bad, good } => self.resync_chunk(obj, &bad, &good).await,
            };
            if let Err(e) = res {
                tracing::warn!(%obj, error = %e, "replica repair failed");
            }
        }
    }

    /// Repair the reported bad version, then re-read the range on the bad replica to catch the
    /// other bad blocks of the same read (bounded by the range length).
    #[allow(clippy::too_many_arguments)]
    async fn repair_versions(
        &self,
        obj: ObjectId,
        bad: &Arc<Disk>,
        good: &Arc<Disk>,
        mut block: u64,
        mut gen: u64,
        first: u64,
        nblocks: u32,
        at_gen: u64,
    ) -> Result<()> {
        for _ in 0..=nblocks {
            self.repair_one(obj, bad, good, block, gen).await?;
            let _l = self.stripe(obj).read().await;
            match bad.replica.read(obj, first, nblocks, at_gen).await {
                Ok(_) => return Ok(()),
                Err(e) => match e.kind() {
                    store::ErrorKind::Corrupt {
                        block: b, gen: g, ..
                    } if (b, g) != (block, gen) => {
                        self.counters
                            .checksum_errors
                            .fetch_add(1, Ordering::Relaxed);
                        bad.checksum_errors.fetch_add(1, Ordering::Relaxed);
                        (block, gen) = (b, g);
                    }
                    _ => {
                        return Err(EngineError::store(
                            format!("re-reading repaired chunk {obj}"),
                            e,
                        ))
                    }
                },
            }
        }
        Ok(())
    }

    /// Replace version `gen` of `block` on `bad` with the copy on `good`.
    pub(crate) async fn repair_one(
        &self,
        obj: ObjectId,
        bad: &Arc<Disk>,
        good: &Arc<Disk>,
        block: u64,
        gen: u64,
    ) -> Result<()> {
        let _l = self.stripe(obj).read().await;
        let data =
            good.replica.read(obj, block, 1, gen).await.map_err(|e| {
                EngineError::store(format!("reading good copy of {obj}/{block}"), e)
            })?;
        let wb = data.into_write();
        match bad.replica.repair(obj, block, gen, wb).await {
            Ok(()) => {
                bad.write_seq.fetch_add(1, Ordering::Release);
                bad.repairs.fetch_add(1, Ordering::Relaxed);
                self.counters.repairs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(EngineError::store(
                format!("repairing {obj}/{block} gen {gen} on {}", bad.name),
                e,
            )),
        }
    }

    /// Rebuild `bad`'s copy of `obj` from `good` (whole history), with writers held off.
    pub(crate) async fn resync_chunk(
        &self,
        obj: ObjectId,
        bad: &Arc<Disk>,
        good: &Arc<Disk>,
    ) -> Result<()> {
        let outcome = {
            let _l = self.stripe(obj).write().await;
            self.copy_object(obj, good, bad).await
        };
        match outcome {
            Ok(_) => {
                bad.repairs.fetch_add(1, Ordering::Relaxed);
                self.counters.repairs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(Some(e)) if is_device_failure(&e) => self.fail_disk(bad, &e).await,
            Err(Some(e)) => Err(EngineError::store(format!("resyncing {obj}"), e)),
            Err(None) => Err(EngineError::io(format!("resyncing {obj}: source failed"))),
        }
    }

    /// Copy `obj` with its history from `src` to `dst` and make it durable there, recording
    /// the copy's intent around it (a crash before the end deletes the copy at open). Caller
    /// holds the stripe lock exclusively. Err(Some(e)): `dst` failed; Err(None): `src` failed
    /// (or the intent could not be recorded). Returns the bytes copied. A rebalance pass copies
    /// in batches instead (`rebuild_copy`): one intent record and one flush per target for
    /// many chunks.
    pub(crate) async fn copy_object(
        &self,
        obj: ObjectId,
        src: &Arc<Disk>,
        dst: &Arc<Disk>,
    ) -> std::result::Result<u64, Option<StoreError>> {
        self.copies_in_progress.fetch_add(1, Ordering::AcqRel);
        let r = self.copy_object_durably(obj, src, dst).await;
        self.copies_in_progress.fetch_sub(1, Ordering::AcqRel);
        r
    }

    async fn copy_object_durably(
        &self,
        obj: ObjectId,
        src: &Arc<Disk>,
        dst: &Arc<Disk>,
    ) -> std::result::Result<u64, Option<StoreError>> {
        let prof = &self.rebuild.profile;
        let entry = (dst.id.clone(), obj);
        let e2 = entry.clone();
        let t = Instant::now();
        if let Err(e) = self
            .update_meta(move |m| {
                m.importing.push(e2);
                Ok(())
            })
            .await
        {
            tracing::warn!(%obj, error = %e, "recording copy intent failed");
            return Err(None);
        }
        prof.add(Phase::Meta, t);
        // Until the intent is cleared, a crash leaves this copy marked incomplete.
        let bytes = self.import_copy(obj, src, dst).await?;
        let t = Instant::now();
        dst.replica.flush().await.map_err(Some)?;
        prof.add(Phase::Flush, t);
        let t = Instant::now();
        if let Err(e) = self
            .update_meta(move |m| {
                m.importing.retain(|x| *x != entry);
                Ok(())
            })
            .await
        {
            tracing::warn!(%obj, error = %e, "recording copy completion failed");
            return Err(None);
        }
        prof.add(Phase::Meta, t);
        self.index.add(obj, dst.slot);
        prof.copied(bytes);
        Ok(bytes)
    }

    /// Export `obj`'s history from `src` and import it on `dst` (replacing whatever `dst`
    /// held), with `dst` taken out of the chunk's holders first. Nothing is flushed and `dst`
    /// is not added back: the caller makes the copy durable, then records it. Caller holds the
    /// stripe lock exclusively and recorded the copy's intent. Errors as in `copy_object`.
    pub(crate) async fn import_copy(
        &self,
        obj: ObjectId,
        src: &Arc<Disk>,
        dst: &Arc<Disk>,
    ) -> std::result::Result<u64, Option<StoreError>> {
        self.import_copy_gated(obj, src, dst, None).await
    }

    /// `import_copy` whose export and import each hold one permit of `io` (when given) while
    /// they run, so many copies in flight keep at most that many requests on the devices.
    /// Nothing else is waited for while a permit is held.
    pub(crate) async fn import_copy_gated(
        &self,
        obj: ObjectId,
        src: &Arc<Disk>,
        dst: &Arc<Disk>,
        io: Option<&tokio::sync::Semaphore>,
    ) -> std::result::Result<u64, Option<StoreError>> {
        let prof = &self.rebuild.profile;
        let p = copy_permit(io, prof).await;
        let t = Instant::now();
        let counted = prof.in_flight(Kind::Export);
        let versions = match src.replica.export_object(obj).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%obj, disk = %src.name, error = %e, "export failed");
                return Err(None);
            }
        };
        drop(counted);
        prof.add(Phase::Export, t);
        drop(p);
        let bytes: u64 = versions
            .iter()
            .map(|b| b.versions.iter().filter(|v| v.data.is_some()).count() as u64 * BLOCK_BYTES)
            .sum();
        self.index.remove_slot(obj, dst.slot);
        // The import replaces any older (partial or stale) copy on `dst` itself.
        let _p = copy_permit(io, prof).await;
        let t = Instant::now();
        let counted = prof.in_flight(Kind::Import);
        dst.replica
            .import_object(obj, versions)
            .await
            .map_err(Some)?;
        drop(counted);
        prof.add(Phase::Import, t);
        Ok(bytes)
    }
}

/// A read counted in its replica disk's in-flight I/O until dropped: also when its caller
/// drops the read mid-flight (a client gone, a timeout), else the count stayed raised for good
/// and read balancing shunned the disk.
struct Counted<'a>(&'a Disk);

impl<'a> Counted<'a> {
    fn new(d: &'a Disk) -> Self {
        d.inflight.fetch_add(1, Ordering::Relaxed);
        Counted(d)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Armed while a change's requests to its replicas are in flight. A caller may drop the
/// change's future then (a request given up by its client, a timeout): the requests it had
/// not finished are dropped with it, so the change may be recorded on one replica and not on
/// the other (each copy valid by its checksums, but different: a read returns one or the
/// other, and only scrub would notice). Dropped while armed, it marks the chunk for reconcile
/// and gives back the replicas' in-flight counts (read balancing would shun them for good).
/// Disarmed on the path that awaits every answer: nothing on the hot path but a flag.
struct Issuing<'a> {
    inner: &'a Inner,
    obj: ObjectId,
    live: &'a [Arc<Disk>],
    armed: bool,
}

impl Drop for Issuing<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.change_dropped(self.obj, self.live);
        }
    }
}

/// One permit of `io`, if given (waiting for it counts in the profile). The semaphore is
/// never closed; if it were, the copy would just go ungated.
async fn copy_permit<'a>(
    io: Option<&'a tokio::sync::Semaphore>,
    prof: &crate::rebuild::ProfileCounters,
) -> Option<tokio::sync::SemaphorePermit<'a>> {
    let io = io?;
    let t = Instant::now();
    let p = io.acquire().await.ok();
    prof.add(Phase::SlotWait, t);
    p
}

/// A zeroed aligned buffer for `len` bytes (whole blocks).
pub(crate) fn zero_buf(len: usize) -> AlignedBuf {
    AlignedBuf::zeroed(len)
}
