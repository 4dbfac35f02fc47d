//! The `Store` itself: shared state, the write/read/flush paths, checkpoints and space.
//!
//! Locking: `state` (maps + allocator) is a short-held RwLock — readers share it, mutations take
//! it exclusively — and is never held across device I/O. `jbuf` (pending journal records and the
//! blocks they freed) is taken inside `state` when logging. `ring` (journal ring position) is an
//! async mutex held by the one flush/checkpoint in progress, which is what serialises metadata
//! writes. Must never: overwrite a block a durable map entry points to, reuse a freed block before
//! a flush made the free durable, or write a journal record before its data is durable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use blockdev::{AlignedBuf, BlockDevice, WriteBuf};
use parking_lot::{Mutex, RwLock};

use crate::alloc::{Allocator, Runs};
use crate::codec::{Record, Writer};
use crate::disk::{encode_maps, BatchHdr, CkptHdr};
use crate::error::{Result, StoreError};
use crate::layout::{Layout, Superblock, BS};
use crate::maps::Maps;
use crate::{ObjectId, Space, StoreStats};

/// Largest single read or write, in blocks (4 MiB).
pub const MAX_IO_BLOCKS: u32 = 1024;
/// Largest write to the device in one call when writing metadata.
const MAX_META_IO: usize = 8 << 20;

pub(crate) struct State {
    pub maps: Maps,
    pub alloc: Allocator,
    /// Blocks allocated by writes whose data is being written (not yet in the maps).
    pub inflight: u64,
}

/// Journal records logged but not yet written, and the blocks they freed.
pub(crate) struct JBuf {
    pub w: Writer,
    pub nrecs: u32,
    /// Sequence number of the newest record logged.
    pub last_seq: u64,
    pub frees: Vec<u64>,
}

/// Journal ring position; owned by the flush in progress.
pub(crate) struct Ring {
    pub head: u64,
    /// Ring blocks written since the newest checkpoint.
    pub used: u64,
    /// Ring blocks between the older and the newest checkpoint. Kept intact so that, if the
    /// newest checkpoint is ever unreadable, the older one plus the whole journal after it
    /// still recovers everything.
    pub prev_used: u64,
    pub chain: u32,
    pub ckpt_seq: u64,
    pub ckpt_slot: usize,
    /// Every record up to this sequence number is durable.
    pub durable_seq: u64,
}

pub(crate) struct MetaState {
    pub seq: u64,
    pub slot: usize,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub checksum_errors: AtomicU64,
    pub repairs: AtomicU64,
    pub flushes: AtomicU64,
    pub checkpoints: AtomicU64,
    pub journal_batches: AtomicU64,
    pub defrag_runs: AtomicU64,
    pub defrag_blocks: AtomicU64,
}

pub(crate) struct Inner {
    pub dev: Arc<dyn BlockDevice>,
    pub sb: Superblock,
    pub state: RwLock<State>,
    pub jbuf: Mutex<JBuf>,
    pub ring: tokio::sync::Mutex<Ring>,
    /// Frees taken by the flush in progress (still "pending" for `space()`).
    pub flushing_frees: AtomicU64,
    pub meta: tokio::sync::Mutex<MetaState>,
    pub meta_cache: RwLock<Option<Vec<u8>>>,
    pub poisoned: AtomicBool,
    /// A background journal write-out is running.
    pub bg_flush: AtomicBool,
    /// Large fragmented reads rewrite their range contiguously (see `defrag`).
    pub defrag_enabled: AtomicBool,
    /// Defragment candidates still to skip after a failed extent search.
    pub defrag_backoff: AtomicU64,
    pub poison_reason: Mutex<String>,
    pub counters: Counters,
}

/// The node-local store on one device. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.dev.info().name)
    }
}

pub(crate) fn check_obj_range(block: u64, n: u64) -> Result<()> {
    if n == 0 {
        return Err(StoreError::invalid("zero blocks"));
    }
    if n > u64::from(MAX_IO_BLOCKS) {
        return Err(StoreError::invalid(format!(
            "{n} blocks exceeds the maximum of {MAX_IO_BLOCKS} per call"
        )));
    }
    if block.checked_add(n).is_none_or(|e| e > 1 << 40) {
        return Err(StoreError::invalid(format!(
            "block range {block}+{n} out of range"
        )));
    }
    Ok(())
}

/// Discards move no data, so they may cover up to 4 GiB per call.
fn check_discard_range(block: u64, n: u64) -> Result<()> {
    if n == 0 {
        return Err(StoreError::invalid("zero blocks"));
    }
    if block.checked_add(n).is_none_or(|e| e > 1 << 40) {
        return Err(StoreError::invalid(format!(
            "block range {block}+{n} out of range"
        )));
    }
    Ok(())
}

pub(crate) fn check_gen(gen: u64) -> Result<()> {
    if gen == 0 || gen == u64::MAX {
        return Err(StoreError::invalid(format!(
            "generation {gen} is not valid for a write"
        )));
    }
    Ok(())
}

impl Inner {
    pub fn layout(&self) -> &Layout {
        &self.sb.layout
    }

    pub fn check_ok(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned(self.poison_reason.lock().clone()));
        }
        Ok(())
    }

    pub fn poison(&self, why: String) -> StoreError {
        let mut r = self.poison_reason.lock();
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            *r = why.clone();
        }
        StoreError::Poisoned(why)
    }

    /// Device flush; a failure poisons the store.
    pub async fn dev_flush(&self) -> Result<()> {
        self.dev.flush().await.map_err(|e| {
            self.poison(format!(
                "device flush failed on {}: {e}",
                self.dev.info().name
            ))
        })
    }

    /// Metadata write; a failure poisons the store (the on-disk state is no longer known).
    pub async fn meta_write(&self, offset: u64, bytes: Vec<u8>) -> Result<()> {
        let mut off = 0;
        while off < bytes.len() {
            let end = (off + MAX_META_IO).min(bytes.len());
            let buf = AlignedBuf::from_slice(&bytes[off..end]).into_write();
            self.dev
                .write_at(offset + off as u64, buf)
                .await
                .map_err(|e| {
                    self.poison(format!(
                        "metadata write failed on {}: {e}",
                        self.dev.info().name
                    ))
                })?;
            off = end;
        }
        Ok(())
    }

    pub async fn dev_read(&self, offset: u64, nblocks: u64, what: &str) -> Result<AlignedBuf> {
        let buf = AlignedBuf::for_overwrite((nblocks * BS) as usize);
        // An io_uring device is awaited directly: no boxed future per read.
        let r = match self.dev.as_uring() {
            Some(u) => u.read(offset, buf).await,
            None => self.dev.read_at(offset, buf).await,
        };
        r.map_err(|e| StoreError::dev(format!("reading {what} on {}", self.dev.info().name), e))
    }

    /// Apply a record to the maps and log it. Called with `state` held exclusively, which
    /// keeps map order and journal order identical.
    pub fn log(&self, st: &mut State, rec: Record) {
        st.maps.apply(&rec);
        let mut j = self.jbuf.lock();
        rec.encode(&mut j.w);
        j.nrecs += 1;
        j.last_seq += 1;
        j.frees.append(&mut st.maps.freed);
    }

    /// Journal bytes beyond which a write pays for a flush (bounded buffer).
    pub(crate) fn jbuf_limit(&self) -> usize {
        let ring_bytes = (self.layout().journal_blocks * BS) as usize;
        (ring_bytes / 8).min(1 << 20)
    }

    /// Bound the journal buffer: past the limit a background flush writes it out; past four
    /// times the limit (the disk cannot keep up) the caller waits for a flush itself.
    pub async fn maybe_flush(self: &Arc<Self>) -> Result<()> {
        let len = self.jbuf.lock().w.buf.len();
        let limit = self.jbuf_limit();
        if len <= limit {
            return Ok(());
        }
        if len <= 4 * limit {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                if !self.bg_flush.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    rt.spawn(async move {
                        // A failure poisons the store; the next caller sees it.
                        let _ = me.flush(false).await;
                        me.bg_flush.store(false, Ordering::Release);
                    });
                }
                return Ok(());
            }
        }
        self.flush(false).await
    }

    fn release(&self, frees: &[u64]) {
        if frees.is_empty() {
            return;
        }
        let mut st = self.state.write();
        for &b in frees {
            assert_eq!(
                st.maps.refs[b as usize], 0,
                "releasing referenced data block {b}"
            );
            st.alloc.release(b);
        }
    }

    /// Make every logged record durable (group commit); checkpoint when a third of the ring is used since the last one
    /// or when `force_ckpt`.
    pub async fn flush(&self, force_ckpt: bool) -> Result<()> {
        self.check_ok()?;
        let target = self.jbuf.lock().last_seq;
        let mut ring = self.ring.lock().await;
        self.check_ok()?;
        if !force_ckpt && ring.durable_seq >= target {
            return Ok(());
        }
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        let (payload, nrecs, last_seq, frees) = self.take_jbuf(Vec::new());
        // Data of every record in the batch was written before the record was logged; this
        // flush makes it durable before any record that points at it can be.
        self.dev_flush().await?;
        if nrecs > 0 {
            if !self
                .append_batch(&mut ring, &payload, nrecs, last_seq)
                .await?
            {
                // No room: the records go into a checkpoint only, so the older checkpoint is
                // no fallback any more; write the new one to both slots.
                return self.checkpoint(&mut ring, frees, true).await;
            }
            self.dev_flush().await?;
            self.release(&frees);
            self.flushing_frees.store(0, Ordering::Relaxed);
        }
        ring.durable_seq = last_seq;
        if force_ckpt || ring.used * 3 > self.layout().journal_blocks {
            return self.checkpoint(&mut ring, Vec::new(), false).await;
        }
        Ok(())
    }

    /// Take the pending records and frees (adding `frees` taken earlier).
    fn take_jbuf(&self, mut frees: Vec<u64>) -> (Vec<u8>, u32, u64, Vec<u64>) {
        let mut j = self.jbuf.lock();
        let payload = std::mem::take(&mut j.w.buf);
        frees.append(&mut j.frees);
        self.flushing_frees
            .store(frees.len() as u64, Ordering::Relaxed);
        let n = std::mem::replace(&mut j.nrecs, 0);
        (payload, n, j.last_seq, frees)
    }

    /// Write one batch at the ring head (no flush). Returns false if it does not fit.
    async fn append_batch(
        &self,
        ring: &mut Ring,
        payload: &[u8],
        nrecs: u32,
        last_seq: u64,
    ) -> Result<bool> {
        let first_seq = last_seq - u64::from(nrecs) + 1;
        let (bytes, crc) = BatchHdr::build(self.sb.nonce, first_seq, nrecs, ring.chain, payload);
        let nblocks = bytes.len() as u64 / BS;
        let jb = self.layout().journal_blocks;
        let (pos, waste) = if ring.head + nblocks <= jb {
            (ring.head, 0)
        } else {
            (0, jb - ring.head)
        };
        if ring.prev_used + ring.used + waste + nblocks > jb {
            return Ok(false);
        }
        self.meta_write((self.layout().journal_start + pos) * BS, bytes)
            .await?;
        self.counters
            .journal_batches
            .fetch_add(1, Ordering::Relaxed);
        ring.head = pos + nblocks;
        ring.used += waste + nblocks;
        ring.chain = crc;
        Ok(true)
    }

    /// Write the full maps to the older checkpoint slot (or both); afterwards the journal
    /// after the new checkpoint is empty. Records logged since the last batch are journaled
    /// first, so the older checkpoint plus the journal always equals the new checkpoint.
    async fn checkpoint(&self, ring: &mut Ring, frees: Vec<u64>, mut both: bool) -> Result<()> {
        let (payload, nentries, rest, nrest, last_seq, frees) = {
            let st = self.state.read();
            let (payload, n) = encode_maps(&st.maps);
            // No mutation can run while `state` is held, so this is an exact cut: every record
            // up to `last_seq` is in the payload and no later one is.
            let (rest, nrest, last_seq, frees) = self.take_jbuf(frees);
            (payload, n, rest, nrest, last_seq, frees)
        };
        self.dev_flush().await?;
        if nrest > 0 {
            if self.append_batch(ring, &rest, nrest, last_seq).await? {
                self.dev_flush().await?;
            } else {
                both = true;
            }
        }
        drop(rest);
        let hdr = CkptHdr {
            nonce: self.sb.nonce,
            ckpt_seq: ring.ckpt_seq + 1,
            next_seq: last_seq + 1,
            journal_pos: ring.head,
            chain: ring.chain,
            nentries,
            payload_crc: crc32c::crc32c(&payload),
        };
        let slot = 1 - ring.ckpt_slot;
        let mut bytes = hdr.encode();
        bytes.extend_from_slice(&payload);
        drop(payload);
        if both {
            self.meta_write(self.layout().ckpt[ring.ckpt_slot] * BS, bytes.clone())
                .await?;
        }
        self.meta_write(self.layout().ckpt[slot] * BS, bytes)
            .await?;
        self.dev_flush().await?;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        ring.ckpt_slot = slot;
        ring.ckpt_seq += 1;
        // The interval just closed stays untouched until the next checkpoint (see `prev_used`).
        ring.prev_used = if both { 0 } else { ring.used };
        ring.used = 0;
        ring.durable_seq = last_seq;
        self.release(&frees);
        self.flushing_frees.store(0, Ordering::Relaxed);
        Ok(())
    }

    pub fn space(&self) -> Space {
        let st = self.state.read();
        let pending =
            self.jbuf.lock().frees.len() as u64 + self.flushing_frees.load(Ordering::Relaxed);
        let total = st.alloc.total_blocks();
        let free = st.alloc.free_blocks();
        Space {
            total_blocks: total,
            used_blocks: total - free - pending.min(total - free),
            free_blocks: free,
            pending_free_blocks: pending.min(total - free),
        }
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            checksum_errors: c.checksum_errors.load(Ordering::Relaxed),
            repairs: c.repairs.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            journal_batches: c.journal_batches.load(Ordering::Relaxed),
            defrag_runs: c.defrag_runs.load(Ordering::Relaxed),
            defrag_blocks: c.defrag_blocks.load(Ordering::Relaxed),
        }
    }

    /// `alloc`, after checking that no block of the write has a newer generation (one lock
    /// acquisition for both).
    pub(crate) fn alloc_for_write(
        &self,
        obj: ObjectId,
        block: u64,
        n: u64,
        gen: u64,
    ) -> Result<Runs> {
        let st = self.state.write();
        if let Some(m) = st.maps.objs.get(&obj) {
            for (b, vs) in m.range(block..block + n) {
                if let Some(g) = vs.last().map(|v| v.gen).filter(|&g| g > gen) {
                    return Err(StoreError::invalid(format!(
                        "write to {obj} block {b} at generation {gen} below its newest {g}"
                    )));
                }
            }
        }
        self.alloc_locked(st, n)
    }

    /// Allocate `n` data blocks (never overcommits) and reserve `n` versions.
    pub fn alloc(&self, n: u64) -> Result<Runs> {
        self.alloc_locked(self.state.write(), n)
    }

    fn alloc_locked(
        &self,
        mut st: parking_lot::RwLockWriteGuard<'_, State>,
        n: u64,
    ) -> Result<Runs> {
        let cap = self.layout().version_cap;
        if st.maps.nversions + st.inflight + n > cap {
            return Err(StoreError::NoSpace(format!(
                "metadata full: {} versions of at most {cap}",
                st.maps.nversions
            )));
        }
        let mut runs = Runs::new();
        if !st.alloc.alloc(n, &mut runs) {
            return Err(StoreError::NoSpace(format!(
                "{n} blocks wanted, {} free of {}",
                st.alloc.free_blocks(),
                st.alloc.total_blocks()
            )));
        }
        st.inflight += n;
        Ok(runs)
    }

    /// Give back blocks of a write that failed before it was logged (never referenced, so they
    /// may be reused at once).
    pub fn unalloc(&self, runs: &[(u64, u64)], n: u64) {
        let mut st = self.state.write();
        st.inflight -= n;
        for &(s, l) in runs {
            for b in s..s + l {
                st.alloc.release(b);
            }
        }
    }

    /// Write `data` to the allocated runs, one device I/O per run.
    pub async fn write_runs(&self, runs: &[(u64, u64)], data: &WriteBuf) -> Result<()> {
        let err = |e| StoreError::dev(format!("writing data on {}", self.dev.info().name), e);
        if let &[(s, l)] = runs {
            // One run (the common case): no list of futures to allocate, and an io_uring device
            // is awaited directly (no boxed future).
            let (off, part) = (
                self.layout().data_offset(s),
                data.slice(0..(l * BS) as usize),
            );
            let r = match self.dev.as_uring() {
                Some(u) => u.write(off, part).await,
                None => self.dev.write_at(off, part).await,
            };
            return r.map_err(err);
        }
        let mut off = 0usize;
        let mut ios = Vec::with_capacity(runs.len());
        for &(s, l) in runs {
            let len = (l * BS) as usize;
            ios.push(
                self.dev
                    .write_at(self.layout().data_offset(s), data.slice(off..off + len)),
            );
            off += len;
        }
        // Fragmented free space: all runs in flight at once, not one after another.
        futures::future::try_join_all(ios)
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// Allocate, and if the only thing missing is space freed since the last flush, flush
    /// (which releases it) and try once more.
    pub async fn alloc_or_flush(
        &self,
        n: u64,
        check: Option<(ObjectId, u64, u64)>,
    ) -> Result<Runs> {
        let attempt = || match check {
            Some((obj, block, gen)) => self.alloc_for_write(obj, block, n, gen),
            None => self.alloc(n),
        };
        match attempt() {
            Err(StoreError::NoSpace(why)) => {
                let pending = self.jbuf.lock().frees.len() as u64
                    + self.flushing_frees.load(Ordering::Relaxed);
                if pending == 0 {
                    return Err(StoreError::NoSpace(why));
                }
                self.flush(false).await?;
                attempt()
            }
            r => r,
        }
    }
}

/// The crc32c of every block of `data` (what `Store::write_with_crcs` expects).
pub fn block_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(BS as usize).map(blockdev::crc32c).collect()
}

impl Store {
    pub async fn write(
        &self,
        obj: ObjectId,
        block: u64,
        data: WriteBuf,
        gen: u64,
        pin_gen: u64,
    ) -> Result<()> {
        // Checksums before any lock: the lock is held only for map bookkeeping.
        let crcs = block_crcs(data.as_slice());
        self.write_with_crcs(obj, block, data, &crcs, gen, pin_gen)
            .await
    }

    /// `write` with the checksums computed by the caller (`block_crcs` of the same immutable
    /// buffer), so a mirror computes them once for all its replicas instead of once per copy.
    pub async fn write_with_crcs(
        &self,
        obj: ObjectId,
        block: u64,
        data: WriteBuf,
        crcs: &[u32],
        gen: u64,
        pin_gen: u64,
    ) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        if data.is_empty() || !data.len().is_multiple_of(BS as usize) {
            return Err(StoreError::invalid(format!(
                "write of {} bytes is not whole blocks",
                data.len()
            )));
        }
        let n = (data.len() as u64) / BS;
        check_obj_range(block, n)?;
        check_gen(gen)?;
        if crcs.len() as u64 != n {
            return Err(StoreError::invalid(format!(
                "{} checksums for a write of {n} blocks",
                crcs.len()
            )));
        }
        debug_assert_eq!(crcs, block_crcs(data.as_slice()), "caller's checksums");
        let runs = inner.alloc_or_flush(n, Some((obj, block, gen))).await?;
        if let Err(e) = inner.write_runs(&runs, &data).await {
            inner.unalloc(&runs, n);
            return Err(e);
        }
        {
            let mut st = inner.state.write();
            st.inflight -= n;
            let mut i = 0usize;
            for &(s, l) in &runs {
                for phys in s..s + l {
                    let crc = crcs[i];
                    let b = block + i as u64;
                    inner.log(
                        &mut st,
                        Record::Put {
                            obj,
                            block: b,
                            gen,
                            pin_gen,
                            phys,
                            crc,
                        },
                    );
                    i += 1;
                }
            }
        }
        self.inner.maybe_flush().await
    }

    pub async fn discard(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        gen: u64,
        pin_gen: u64,
    ) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        check_discard_range(block, u64::from(nblocks))?;
        check_gen(gen)?;
        {
            let mut st = inner.state.write();
            let blocks: Vec<u64> = match st.maps.objs.get(&obj) {
                None => return Ok(()),
                Some(m) => m
                    .range(block..block + u64::from(nblocks))
                    .map(|(b, _)| *b)
                    .collect(),
            };
            for &b in &blocks {
                if let Some(g) = st.maps.newest_gen(obj, b) {
                    if g > gen {
                        return Err(StoreError::invalid(format!(
                            "discard of {obj} block {b} at generation {gen} below its newest {g}"
                        )));
                    }
                }
            }
            let cap = inner.layout().version_cap;
            if st.maps.nversions + st.inflight + blocks.len() as u64 > cap {
                return Err(StoreError::NoSpace("metadata full".into()));
            }
            for b in blocks {
                let rec = Record::Put {
                    obj,
                    block: b,
                    gen,
                    pin_gen,
                    phys: crate::maps::TOMB,
                    crc: 0,
                };
                inner.log(&mut st, rec);
            }
        }
        self.inner.maybe_flush().await
    }

    pub async fn flush(&self) -> Result<()> {
        self.inner.flush(false).await
    }

    /// Flush + checkpoint, for a clean shutdown (recovery does not need it).
    pub async fn close(&self) -> Result<()> {
        self.inner.flush(true).await
    }

    pub fn space(&self) -> Space {
        self.inner.space()
    }

    pub fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    /// Turn read-triggered defragmentation on or off (on by default).
    pub fn set_defrag(&self, enabled: bool) {
        self.inner.defrag_enabled.store(enabled, Ordering::Relaxed);
    }

    pub fn label(&self) -> &crate::Label {
        &self.inner.sb.label
    }

    /// Hold back the device's submissions while the plug lives (see `BlockDevice::plug`): a
    /// caller starting a burst of writes (a replica server decoding several peer requests from
    /// one read) takes it, starts them all, and drops it, and the burst reaches the device
    /// with one system call and one doorbell. `None` if the device has nothing to batch.
    pub fn plug(&self) -> Option<blockdev::Plug> {
        self.inner.dev.plug()
    }

    /// Whether a failed flush or metadata write poisoned this store.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }
}
