//! Direct reads: a caller with an io_uring of its own (a VM's virtio queue thread) reads a
//! virtual disk's blocks straight from a local replica's device into its memory, with no task,
//! no runtime worker and no thread hop. The engine only plans: [`VdiskHandle::plan_direct_read`]
//! says which device, at which byte offset, and what every block's checksum must be; the caller
//! reads, then checks every block with [`DirectRead::block_ok`] and, on any mismatch, failure
//! or short read, does the whole request again through [`VdiskHandle::read`] (which verifies,
//! fails over and repairs as always). The direct path itself never marks a replica bad and
//! never repairs: a mismatch there may be the caller's own memory changing under it (a guest
//! scribbling on its buffer) or a block that moved after the plan was made.
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
    /// The replica's disk (its read count).
    disk: Option<Arc<Disk>>,
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
        self.disk = None;
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

    fn plan_direct(&self, offset: u64, len: u64, plan: &mut DirectRead) -> bool {
        let inner = &self.inner;
        if len == 0
            || !offset.is_multiple_of(BLOCK_BYTES)
            || !len.is_multiple_of(BLOCK_BYTES)
            || offset / CHUNK_BYTES != (offset + len - 1) / CHUNK_BYTES
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.size_bytes())
            || inner.shutting_down.load(Ordering::Acquire)
            || self.rt.deleted.load(Ordering::Acquire)
            || (self.snap.is_none() && self.rt.rolling_back.load(Ordering::Acquire))
            || self
                .snap
                .as_ref()
                .is_some_and(|s| s.deleted.load(Ordering::Acquire))
        {
            return false;
        }
        let obj = store::ObjectId {
            vdisk: self.rt.id,
            chunk: offset / CHUNK_BYTES,
        };
        let block = (offset % CHUNK_BYTES) / BLOCK_BYTES;
        let Ok(nblocks) = u32::try_from(len / BLOCK_BYTES) else {
            return false;
        };
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
        // Both local copies share reads (alternating by 64 KiB stretch, as the ordinary path's
        // tie-break does).
        if live.len() > 1 && (obj.chunk ^ (block / 16)) & 1 == 1 {
            live.swap(0, 1);
        }
        let at_gen = self.snap.as_ref().map_or(u64::MAX, |s| s.gen);
        for d in live.iter() {
            let Some(s) = &d.local else {
                continue;
            };
            plan.crcs.clear();
            if let Some(run) = s.direct_plan(obj, block, nblocks, at_gen, &mut plan.crcs) {
                plan.store = Some(s.clone());
                plan.disk = Some(d.clone());
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
}
