//! Direct reads: a caller with an io_uring of its own (a VM's virtio queue thread) reads a
//! virtual disk's blocks straight from a local replica's device into its memory, with no task,
//! no runtime worker and no thread hop. The engine only plans: [`VdiskHandle::plan_direct_read`]
//! says which device, at which byte offset, and what every block's checksum must be; the caller
//! reads, then checks every block with [`DirectRead::block_ok`] and, on any mismatch, failure
//! or short read, does the whole request again through [`VdiskHandle::read`] (which verifies,
//! fails over and repairs as always). The direct path itself never marks a replica bad and
//! never repairs on a checksum mismatch: a mismatch there may be the caller's own memory
//! changing under it (a guest scribbling on its buffer) or a block that moved after the plan
//! was made. A device error on the caller's ring is the device's, though: the caller hands it
//! to [`VdiskHandle::direct_device_error`], which does what the ordinary path does on it.
//!
//! Only the plain case is planned: a block-aligned range inside one chunk, every block with data
//! (holes read as zeros on the ordinary path), all in one run on an io_uring device of a live
//! local replica, the chunk reconciled and no mover holding its stripe lock. Anything else
//! returns false and the caller takes the ordinary path.
//!
//! Why a read in the kernel while the chunk changes is safe: the plan holds no lock once made,
//! so a write, discard, rebuild or rebalance may retire the planned blocks, the store free them
//! after its next flush, and another write reuse them, all before the device read happens. The
//! plan holds the replica's store (so the device, and the descriptor, stay open: a disk removed
//! meanwhile cannot have its descriptor number reused under the read), and the checksums taken
//! with the plan are of the versions the plan saw; data that changed reads back with another
//! checksum and the request goes the ordinary way. A match means the bytes are those of the
//! version the plan saw, the same rule the store's own read follows when a concurrent write
//! frees and reuses a block under it (`store::Store::read` re-checks the map only on a
//! mismatch). A write acknowledged before the plan was made is always seen: the plan reads the
//! map after it. One acknowledged while the read is in flight may or may not be, as with any
//! read and write that overlap.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::core::Disk;
use crate::handle::VdiskHandle;
use crate::{BLOCK_BYTES, CHUNK_BYTES};

/// A direct read's plan (see the module documentation). Reusable: planning again replaces it;
/// the block checksums of reads up to 128 KiB stay inline (no allocation).
#[derive(Default)]
pub struct DirectRead {
    /// Keeps the replica's store, hence its device and descriptor, alive while the read runs.
    store: Option<Arc<store::Store>>,
    /// The replica's disk (its read count), whose in-flight I/O the plan counts in until its
    /// release (the read balancing and the rebuild's pacing see it, as the ordinary read's).
    disk: Option<Arc<Disk>>,
    /// The chunk read (a device error there has it resynced).
    obj: Option<store::ObjectId>,
    fd: RawFd,
    offset: u64,
    direct: bool,
    crcs: smallvec::SmallVec<[u32; 32]>,
}

impl std::fmt::Debug for DirectRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DirectRead(fd {}, offset {}, {} blocks)",
            self.fd,
            self.offset,
            self.crcs.len()
        )
    }
}

impl DirectRead {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// The device's descriptor: read it with a positional read (never write through it). Open
    /// as long as this plan is held.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Byte offset on the device where the range starts (the range is one run there).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The descriptor is O_DIRECT: the caller's buffers must be 512-byte aligned.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Blocks in the range.
    pub fn blocks(&self) -> usize {
        self.crcs.len()
    }

    /// Whether `data` (the bytes read for block `i` of the range, `BLOCK_BYTES` long) is the
    /// version the plan saw.
    pub fn block_ok(&self, i: usize, data: &[u8]) -> bool {
        data.len() == BLOCK_BYTES as usize
            && self
                .crcs
                .get(i)
                .is_some_and(|&c| blockdev::crc32c(data) == c)
    }

    /// Lets the device go (call once the read completed).
    pub fn release(&mut self) {
        self.store = None;
        if let Some(d) = self.disk.take() {
            d.inflight.fetch_sub(1, Ordering::Relaxed);
        }
        self.obj = None;
    }

    /// Gives up a plan whose read may still be running and can no longer be waited for (the
    /// caller's ring failed or hung): the disk's in-flight count goes, the replica's store
    /// stays open for good (the descriptor number cannot be reused under the read).
    pub fn abandon(&mut self) {
        if let Some(s) = self.store.take() {
            std::mem::forget(s);
        }
        self.release();
    }

    /// This plan's read failed on the device with `errno` (the device's error, not the
    /// caller's ring's): for [`VdiskHandle::direct_device_error`]. Call before the release;
    /// None if nothing is planned.
    pub fn device_error(&self, errno: i32) -> Option<DirectDeviceError> {
        Some(DirectDeviceError {
            disk: self.disk.clone()?,
            obj: self.obj?,
            errno,
            write: false,
        })
    }
}

/// A replica device's error seen by a direct read or write on the caller's own ring (the
/// engine never saw it): [`VdiskHandle::direct_device_error`] does what the ordinary path does
/// on the same error.
pub struct DirectDeviceError {
    disk: Arc<Disk>,
    obj: store::ObjectId,
    errno: i32,
    write: bool,
}

impl std::fmt::Debug for DirectDeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.write { "write" } else { "read" };
        write!(
            f,
            "DirectDeviceError({what} of {} on {}: errno {})",
            self.obj, self.disk.name, self.errno
        )
    }
}

impl Drop for DirectRead {
    fn drop(&mut self) {
        self.release();
    }
}

impl VdiskHandle {
    /// Plans a direct read of `len` bytes at `offset` into `plan` (see the module
    /// documentation); false when the range needs the ordinary path (`plan` is then released).
    /// Takes no lock that waits and allocates nothing for reads up to 128 KiB.
    pub fn plan_direct_read(&self, offset: u64, len: u64, plan: &mut DirectRead) -> bool {
        plan.release();
        plan.crcs.clear();
        let ok = self.plan_direct(offset, len, plan);
        if !ok {
            plan.release();
        }
        ok
    }

    /// Where a direct I/O of `len` bytes at `offset` lands: its chunk, first block and block
    /// count. None unless it is whole blocks inside one chunk of this disk.
    fn direct_span(&self, offset: u64, len: u64) -> Option<(store::ObjectId, u64, u32)> {
        if len == 0
            || !offset.is_multiple_of(BLOCK_BYTES)
            || !len.is_multiple_of(BLOCK_BYTES)
            || offset / CHUNK_BYTES != (offset + len - 1) / CHUNK_BYTES
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.size_bytes())
        {
            return None;
        }
        let obj = store::ObjectId {
            vdisk: self.rt.id,
            chunk: offset / CHUNK_BYTES,
        };
        let nblocks = u32::try_from(len / BLOCK_BYTES).ok()?;
        Some((obj, (offset % CHUNK_BYTES) / BLOCK_BYTES, nblocks))
    }

    fn plan_direct(&self, offset: u64, len: u64, plan: &mut DirectRead) -> bool {
        let inner = &self.inner;
        let Some((obj, block, nblocks)) = self.direct_span(offset, len) else {
            return false;
        };
        if inner.shutting_down.load(Ordering::Acquire)
            || self.rt.deleted.load(Ordering::Acquire)
            || self.rt.deleting.load(Ordering::Acquire)
            || (self.snap.is_none() && self.rt.rolling_back.load(Ordering::Acquire))
            || self
                .snap
                .as_ref()
                .is_some_and(|s| s.deleted.load(Ordering::Acquire))
        {
            return false;
        }
        if !inner.reconciled(obj) {
            return false;
        }
        // A mover (resync, rebuild batch, rollback) holds the stripe exclusively while a chunk
        // changes hands: leave those moments to the ordinary path. The guard is not kept; see
        // the module documentation for why the read itself needs no lock.
        let Ok(_stripe) = inner.stripe(obj).try_read() else {
            return false;
        };
        let Some(holders) = inner.index.get(obj) else {
            return false; // never written: zeros, the ordinary path's job
        };
        let mut live = inner.live_disks(holders);
        // As the ordinary read orders them: sticky to the first replica until the pool is
        // known consistent, else the least loaded first.
        if inner.balanced_reads.load(Ordering::Relaxed) {
            least_loaded_first(&mut live, obj, block);
        }
        let at_gen = self.snap.as_ref().map_or(u64::MAX, |s| s.gen);
        for d in live.iter() {
            let Some(s) = &d.local else {
                continue;
            };
            plan.crcs.clear();
            if let Some(run) = s.direct_plan(obj, block, nblocks, at_gen, &mut plan.crcs) {
                plan.store = Some(s.clone());
                d.inflight.fetch_add(1, Ordering::Relaxed);
                plan.disk = Some(d.clone());
                plan.obj = Some(obj);
                plan.fd = run.fd;
                plan.offset = run.offset;
                plan.direct = run.direct;
                return plan.crcs.len() == nblocks as usize;
            }
        }
        false
    }

    /// Counts a direct read that completed with verified data in the disk's statistics and
    /// its replica disk's (`plan`'s, still held), as [`VdiskHandle::read`] counts its own
    /// (`start`: when the request began).
    pub fn count_direct_read(&self, plan: &DirectRead, len: u64, start: Instant) {
        if let Some(d) = &plan.disk {
            d.reads.fetch_add(1, Ordering::Relaxed);
        }
        let c = &self.inner.counters;
        c.reads.fetch_add(1, Ordering::Relaxed);
        c.read_bytes.fetch_add(len, Ordering::Relaxed);
        self.rt.io.read.record(len, start, true);
    }

    /// Does what the ordinary path does on a device error the caller's ring saw
    /// ([`DirectRead::device_error`], [`DirectWrite::device_error`]), which the caller then
    /// redoes through the ordinary path: a write's disk is failed (fail-stop: it takes no more
    /// I/O, is recorded Failed and its chunks are re-mirrored), a read's chunk is copied again
    /// to that disk from a live replica (a resync, which fails the disk if it fails there
    /// too). Best effort: a failure here is logged; the request's redo answers the guest.
    pub async fn direct_device_error(&self, e: DirectDeviceError) {
        let what = if e.write {
            "direct write"
        } else {
            "direct read"
        };
        let err = store::StoreError::Io {
            context: format!("{what} of {} on disk {}", e.obj, e.disk.name),
            source: blockdev::BlockError::io(
                blockdev::ErrorKind::Io,
                format!("{}: {what}", e.disk.name),
                std::io::Error::from_raw_os_error(e.errno),
            ),
        };
        let inner = &self.inner;
        if e.write {
            if let Err(r) = inner.fail_disk(&e.disk, &err).await {
                tracing::warn!(obj = %e.obj, disk = %e.disk.name, error = %r, "{what}: device error not handled");
            }
            return;
        }
        // As the ordinary read does with a device error: counted, then the chunk resynced
        // there from a live replica (`run_repairs` logs a failure).
        inner.note_read_error(&e.disk, &err);
        let good = inner.index.get(e.obj).and_then(|h| {
            inner
                .live_disks(h)
                .iter()
                .find(|d| !Arc::ptr_eq(d, &e.disk))
                .cloned()
        });
        if let Some(good) = good.filter(|_| e.disk.live()) {
            let bad = e.disk.clone();
            inner
                .run_repairs(e.obj, vec![crate::io::Repair::Resync { bad, good }])
                .await;
        }
    }
}

/// Puts the replica with the fewest I/Os in flight (its disk's `inflight`, which direct reads
/// count in as the ordinary read's do) first, as the ordinary read's balancing does; a tie
/// alternates by 64 KiB stretch of the chunk, so both copies share a sequential scan and an
/// idle pair (a lone request at queue depth 1) still spreads its reads over both disks.
fn least_loaded_first(live: &mut [Arc<Disk>], obj: store::ObjectId, block: u64) {
    if live.len() < 2 {
        return;
    }
    let (a, b) = (
        live[0].inflight.load(Ordering::Relaxed),
        live[1].inflight.load(Ordering::Relaxed),
    );
    if b < a || (a == b && (obj.chunk ^ (block / 16)) & 1 == 1) {
        live.swap(0, 1);
    }
}

/// One replica of a planned direct write: fresh blocks on a local io_uring device.
struct WriteTarget {
    store: Arc<store::Store>,
    disk: Arc<Disk>,
    alloc: store::DirectAlloc,
}

/// A direct write's plan (see [`VdiskHandle::plan_direct_write`]). While planned it holds what
/// the ordinary write holds for its whole duration: the disk's generation (a snapshot waits
/// for it) and the chunk's stripe lock shared (a resync, rebuild, rebalance or rollback of the
/// chunk waits for it), its place among the chunk's changes in flight (a write, discard or
/// rollback of the same blocks waits for it), plus fresh blocks on every replica. Reusable: finishing it (or planning
/// again) lets them go; dropping it unfinished gives the blocks back.
#[derive(Default)]
pub struct DirectWrite {
    targets: smallvec::SmallVec<[WriteTarget; 2]>,
    crcs: smallvec::SmallVec<[u32; 32]>,
    obj: Option<store::ObjectId>,
    block: u64,
    len: u64,
    /// In the chunk's changes in flight (see `order`): an overlapping change waits for it.
    order: Option<crate::order::OwnedOrdered>,
    // Dropped after the targets are settled (field order): the guards go last.
    stripe: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
    gen: Option<crate::core::OwnedGenGuard>,
}

impl std::fmt::Debug for DirectWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DirectWrite({} replicas, {} blocks)",
            self.targets.len(),
            self.crcs.len()
        )
    }
}

impl DirectWrite {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replicas to write (each with [`DirectWrite::target`]); 0 when nothing is planned.
    pub fn replicas(&self) -> usize {
        self.targets.len()
    }

    /// Replica `i`'s device descriptor, the byte offset to write the whole range at, and
    /// whether the descriptor is O_DIRECT (512-byte aligned buffers). Write through it only
    /// the bytes the plan was made from, once; the descriptor is open while the plan is held.
    pub fn target(&self, i: usize) -> Option<(RawFd, u64, bool)> {
        self.targets
            .get(i)
            .map(|t| (t.alloc.run.fd, t.alloc.run.offset, t.alloc.run.direct))
    }

    /// Takes the checksums of `data`, the bytes to write (as long as planned): what is
    /// recorded once written. The caller must write exactly these bytes to every target and
    /// not change them in between. False (and the plan given back) if nothing is planned or
    /// `data` is not as long; a plan without them is never recorded.
    pub fn checksum_data(&mut self, data: &[u8]) -> bool {
        if self.obj.is_none() || data.len() as u64 != self.len {
            self.clear();
            return false;
        }
        self.crcs.clear();
        self.crcs
            .extend(data.chunks(BLOCK_BYTES as usize).map(blockdev::crc32c));
        true
    }

    /// Replica `i`'s write failed on the device with `errno` (the device's error, not the
    /// caller's ring's): for [`VdiskHandle::direct_device_error`]. Call before the finish;
    /// None if nothing is planned there.
    pub fn device_error(&self, i: usize, errno: i32) -> Option<DirectDeviceError> {
        Some(DirectDeviceError {
            disk: self.targets.get(i)?.disk.clone(),
            obj: self.obj?,
            errno,
            write: true,
        })
    }

    /// Gives back whatever is planned (blocks first, then the guards).
    fn clear(&mut self) {
        for t in self.targets.drain(..) {
            t.store.direct_write_abort(t.alloc);
            t.disk.inflight.fetch_sub(1, Ordering::Relaxed);
        }
        self.crcs.clear();
        self.obj = None;
        self.order = None;
        self.stripe = None;
        self.gen = None;
    }

    /// Gives up a plan whose device writes may still be running and can no longer be waited
    /// for (the caller's ring failed): nothing is recorded and the guards go, so snapshots,
    /// deletes and movers of the disk do not wait forever, but the fresh blocks stay taken
    /// (never reused while a lost write may still land on them; a restart frees them, as
    /// nothing references them) and each replica's store stays open (the descriptor number
    /// cannot be reused under the write). For a rare failure: both are leaked for good.
    pub fn abandon(&mut self) {
        for t in self.targets.drain(..) {
            t.disk.inflight.fetch_sub(1, Ordering::Relaxed);
            std::mem::forget(t.store);
        }
        self.crcs.clear();
        self.obj = None;
        self.order = None;
        self.stripe = None;
        self.gen = None;
    }
}

impl Drop for DirectWrite {
    fn drop(&mut self) {
        self.clear();
    }
}

impl VdiskHandle {
    /// Plans a direct write of `data` (whole blocks) at `offset` into `plan`: the safe common
    /// case only, where the ordinary path would write one chunk already stored, at the disk's
    /// current generation, to every replica through a local store on an io_uring device, with
    /// nothing else in its way. Then fresh blocks are allocated on every replica (the old
    /// versions stay: snapshots and clones keep theirs, and a crash before the next flush
    /// leaves the old data), the checksums of `data` are taken, and the caller writes `data`
    /// to every [`DirectWrite::target`] itself and ends with
    /// [`VdiskHandle::finish_direct_write`]. The caller must not change `data` in between.
    ///
    /// False when the ordinary path must take the write (`plan` is then empty): not planned
    /// are partial blocks, ranges across chunks or past the end, a chunk never written (its
    /// placement is chosen by the ordinary path), a read-only, deleted or rolling-back disk,
    /// a chunk not yet reconciled after an unclean shutdown or held by a mover, a failed,
    /// remote or non-io_uring replica, a pool not yet marked in use, space that needs a flush
    /// first, fragmented free space, or a journal that wants a flush (the ordinary path starts
    /// it), or a change of the same blocks still in flight (the replicas would record the two
    /// in either order). Never waits; allocates nothing for writes up to 128 KiB.
    pub fn plan_direct_write(&self, offset: u64, data: &[u8], plan: &mut DirectWrite) -> bool {
        self.plan_direct_write_len(offset, data.len() as u64, plan) && plan.checksum_data(data)
    }

    /// [`VdiskHandle::plan_direct_write`] of `len` bytes before the data is at hand: a caller
    /// that must copy the data first (a VM's queue thread: the guest may change its memory)
    /// copies it only for a write that was planned, then gives it to
    /// [`DirectWrite::checksum_data`] before it writes any of it.
    pub fn plan_direct_write_len(&self, offset: u64, len: u64, plan: &mut DirectWrite) -> bool {
        plan.clear();
        let ok = self.plan_write(offset, len, plan);
        if !ok {
            plan.clear();
        }
        ok
    }

    fn plan_write(&self, offset: u64, len: u64, plan: &mut DirectWrite) -> bool {
        let inner = &self.inner;
        let Some((obj, block, nblocks)) = self.direct_span(offset, len) else {
            return false;
        };
        if self.snap.is_some()
            || inner.shutting_down.load(Ordering::Acquire)
            || !inner.unclean_marked.load(Ordering::Acquire)
            || self.rt.deleted.load(Ordering::Acquire)
            || self.rt.deleting.load(Ordering::Acquire)
            || self.rt.rolling_back.load(Ordering::Acquire)
        {
            return false;
        }
        // The ordinary write's guards, in its order: generation, then the stripe (shared).
        let g = self.rt.enter_owned();
        // Again once in flight: a shutdown, rollback or delete that began meanwhile waits for
        // what is in flight.
        if inner.shutting_down.load(Ordering::SeqCst)
            || self.rt.rolling_back.load(Ordering::SeqCst)
            || self.rt.deleting.load(Ordering::SeqCst)
            || !inner.reconciled(obj)
        {
            return false;
        }
        let Ok(stripe) = inner.stripe_arc(obj).clone().try_read_owned() else {
            return false;
        };
        plan.gen = Some(g);
        plan.stripe = Some(stripe);
        // Not over a change of these blocks in flight (it would be recorded in either order).
        let Some(o) = inner
            .order
            .try_enter_owned(obj, block..block + u64::from(nblocks))
        else {
            return false;
        };
        plan.order = Some(o);
        let Some(holders) = inner.index.get(obj) else {
            return false;
        };
        let live = inner.live_disks(holders);
        if live.is_empty() || live.len() != holders.as_slice().len() {
            return false;
        }
        let gen = plan.gen.as_ref().map_or(0, |g| g.gen);
        for d in live.iter() {
            let Some(s) = &d.local else {
                return false;
            };
            let Some(alloc) = s.direct_write_alloc(obj, block, nblocks, gen) else {
                return false;
            };
            d.inflight.fetch_add(1, Ordering::Relaxed);
            plan.targets.push(WriteTarget {
                store: s.clone(),
                disk: d.clone(),
                alloc,
            });
        }
        plan.obj = Some(obj);
        plan.block = block;
        plan.len = len;
        true
    }

    /// Ends a planned direct write. `written`: every replica's device write completed in
    /// full. Then the new versions are recorded on every replica with the plan's checksums
    /// (durable with the next flush, which covers them as it covers any acknowledged write)
    /// and the write is counted, and true comes back: the write may be acknowledged.
    /// Otherwise the fresh blocks go back, nothing changed, and false comes back: the caller
    /// does the whole write again through [`VdiskHandle::write`] (which fails over, marks a
    /// failed disk, and so on). `start`: when the request began. The plan is empty after.
    pub fn finish_direct_write(
        &self,
        plan: &mut DirectWrite,
        written: bool,
        start: Instant,
    ) -> bool {
        let (Some(obj), Some(gen)) = (plan.obj, plan.gen.as_ref()) else {
            plan.clear();
            return false;
        };
        // Nothing is recorded once the engine is shutting down (its last flush and the pool's
        // clean mark may be done: a record now would be acknowledged yet lost, or reach one
        // replica's journal and not the other's with nothing left to reconcile them), nor on a
        // replica failed meanwhile: the ordinary path then writes the live replicas only, or
        // fails the request.
        if !written
            || plan.crcs.len() as u64 * BLOCK_BYTES != plan.len
            || self.inner.shutting_down.load(Ordering::Acquire)
            || plan.targets.iter().any(|t| !t.disk.live())
        {
            plan.clear();
            return false;
        }
        let (g, pin) = (gen.gen, gen.pin);
        for t in plan.targets.drain(..) {
            // Cannot fail: the plan took one checksum per block.
            let ok = t
                .store
                .direct_write_commit(t.alloc, obj, plan.block, &plan.crcs, g, pin);
            debug_assert!(ok);
            t.disk.inflight.fetch_sub(1, Ordering::Relaxed);
            t.disk.writes.fetch_add(1, Ordering::Relaxed);
            // After the records: a flush that reads this covers them.
            t.disk.write_seq.fetch_add(1, Ordering::Release);
        }
        let c = &self.inner.counters;
        c.writes.fetch_add(1, Ordering::Relaxed);
        c.write_bytes.fetch_add(plan.len, Ordering::Relaxed);
        self.rt.io.write.record(plan.len, start, true);
        plan.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, EngineConfig};

    /// An engine on two io_uring pool files in a fresh folder, with disk "d" (16 MiB) whose
    /// first chunk holds data; None (after "skipped: ...") where io_uring is unavailable.
    async fn two_file_disks(tag: &str) -> Option<(Engine, VdiskHandle, std::path::PathBuf)> {
        let dir = std::env::temp_dir().join(format!("engine-direct-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "direct".into(),
        })
        .await
        .unwrap();
        for i in 0..2 {
            let path = dir.join(format!("d{i}.img"));
            blockdev::create_sparse_file(&path, 64 << 20).unwrap();
            match blockdev::open_device(&path) {
                Ok(d) => {
                    e.add_disk(d).await.unwrap();
                }
                Err(err) => {
                    println!("skipped: io_uring device unavailable here: {err}");
                    let _ = std::fs::remove_dir_all(&dir);
                    return None;
                }
            }
        }
        e.create_vdisk("d", 16 << 20).await.unwrap();
        let h = e.open_vdisk("d").unwrap();
        let data = vec![7u8; 256 << 10];
        h.write(0, &data).await.unwrap();
        h.flush().await.unwrap();
        Some((e, h, dir))
    }

    /// The slot of the disk a direct read of the block at `block` is planned on.
    fn planned_disk(h: &VdiskHandle, block: u64) -> u16 {
        let mut plan = DirectRead::new();
        assert!(h.plan_direct_read(block * BLOCK_BYTES, BLOCK_BYTES, &mut plan));
        plan.disk.as_ref().map(|d| d.slot).unwrap()
    }

    /// A direct read goes to the replica whose disk has the fewest I/Os in flight, as the
    /// ordinary read does; with both equally busy it alternates by 64 KiB stretch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_direct_read_takes_the_least_loaded_replica() {
        let Some((e, h, dir)) = two_file_disks("balance").await else {
            return;
        };
        let disks: Vec<Arc<Disk>> = e.inner.disks.read().iter().cloned().collect();
        assert_eq!(disks.len(), 2);
        // Idle: the two stretches of a tie go to different disks.
        let (a, b) = (planned_disk(&h, 0), planned_disk(&h, 16));
        assert_ne!(a, b, "a tie alternates by stretch");
        // One disk busy: every read of either stretch goes to the other.
        for busy in [a, b] {
            let d = disks.iter().find(|d| d.slot == busy).unwrap();
            d.inflight.fetch_add(3, Ordering::Relaxed);
            for block in [0, 1, 16, 17, 32, 48] {
                assert_ne!(
                    planned_disk(&h, block),
                    busy,
                    "block {block}, disk {busy} busy"
                );
            }
            d.inflight.fetch_sub(3, Ordering::Relaxed);
        }
        // Until the pool is known consistent, reads stay on the first replica (sticky).
        e.inner.balanced_reads.store(false, Ordering::Release);
        assert_eq!(planned_disk(&h, 0), planned_disk(&h, 16), "sticky");
        e.inner.balanced_reads.store(true, Ordering::Release);
        e.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A direct read counts in its replica disk's in-flight I/O from its plan to its release,
    /// as the ordinary read counts its own (the read balancing and the rebuild's pacing look
    /// at it); a plan dropped or given up for good lets it go, a refused one never takes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_direct_read_counts_in_its_disks_in_flight_io() {
        let Some((e, h, dir)) = two_file_disks("inflight").await else {
            return;
        };
        let inflight = || -> Vec<u64> {
            let disks = e.inner.disks.read();
            disks
                .iter()
                .map(|d| d.inflight.load(Ordering::Relaxed))
                .collect()
        };
        let mut plan = DirectRead::new();
        assert!(h.plan_direct_read(0, BLOCK_BYTES, &mut plan));
        let held = inflight();
        assert_eq!(held.iter().sum::<u64>(), 1, "{held:?}");
        plan.release();
        assert_eq!(inflight(), [0, 0], "released");
        assert!(h.plan_direct_read(0, BLOCK_BYTES, &mut plan));
        // Planning again replaces the plan: still one.
        assert!(h.plan_direct_read(BLOCK_BYTES, BLOCK_BYTES, &mut plan));
        assert_eq!(inflight().iter().sum::<u64>(), 1);
        drop(plan);
        assert_eq!(inflight(), [0, 0], "dropped");
        let mut plan = DirectRead::new();
        assert!(h.plan_direct_read(0, BLOCK_BYTES, &mut plan));
        plan.abandon();
        assert_eq!(inflight(), [0, 0], "abandoned");
        // A hole is refused: nothing counted.
        assert!(!h.plan_direct_read(CHUNK_BYTES, BLOCK_BYTES, &mut plan));
        assert_eq!(inflight(), [0, 0], "refused");
        e.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
