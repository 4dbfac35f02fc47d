//! Direct reads for virtio-blk queues on an engine virtual disk: the queue thread asks the
//! engine where a read's blocks lie ([`engine::VdiskHandle::plan_direct_read`]: a local
//! replica's device, one run of bytes, every block's checksum), submits a READ from that device
//! into a buffer of its own on its own io_uring, reaps the completion, checks every block's
//! checksum, copies the data into the guest's buffers and publishes the request itself. The
//! request never leaves the queue thread (the ordinary path goes queue thread -> runtime worker
//! -> the device's reaper -> worker -> queue thread).
//!
//! The device is never read straight into guest memory: until its checksum is checked, a block
//! read may be another disk's data (a block freed and reused after the plan was made, see
//! `engine::direct`), which a guest watching its buffer must never see. One copy of the bytes
//! is cheap next to the thread hops this path saves.
//!
//! Everything else takes the ordinary path ([`super::blk_async`]), unchanged: writes, flushes,
//! reads the engine does not plan (holes, ranges across chunks, remote-only, degraded, moving or
//! fragmented chunks), reads over [`MAX_DIRECT`], and, after the fact, a read that failed, came
//! back short or has ANY block whose checksum does not match. Such a read is redone whole by the engine, which verifies, fails
//! over and repairs as always; this path never marks a replica bad or repairs anything, since a
//! mismatch here may be the guest changing its own buffer or a block that moved after the plan
//! (why a moved block is caught: see `engine::direct`). So a read never returns data whose
//! every block was not checked against the engine's checksum.
//!
//! The ring is made with the device (outside the sandbox), lent to the queue thread and given
//! back when the thread ends; an ending thread first waits for every read the kernel still has
//! (its buffers are guest memory) and finishes it.

use super::blk::Outcome;
use super::blk_async::{AsyncQueue, InFlight};
use super::blk_uring::{QueueRing, RingHome};
use blockdev::AlignedBuf;
use engine::{DirectRead, VdiskHandle};
use io_uring::{opcode, types};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use vm_memory::{Bytes, GuestAddress};

/// Bytes per checksummed block.
const BLOCK: usize = engine::BLOCK_BYTES as usize;

/// The largest read served here (what the engine plans without allocating); larger ones take
/// the ordinary path.
pub const MAX_DIRECT: usize = 128 << 10;

/// A slot keeps its buffer for the next read up to this size; a larger one goes back to the
/// buffer pool when its read ends, so idle slots never hold much memory.
const KEEP_BUF: usize = 16 << 10;

/// One read in the kernel: its request, where it reads from, and the buffer it reads into.
struct Slot {
    buf: Option<AlignedBuf>,
    plan: DirectRead,
    job: Option<(InFlight, u64, usize)>,
}

/// A queue thread's direct reads (see the module documentation).
pub struct DirectReads {
    ring: Option<QueueRing>,
    home: RingHome,
    handle: VdiskHandle,
    /// Allocated on first use and kept.
    slots: Vec<Option<Box<Slot>>>,
    free: Vec<usize>,
    in_kernel: usize,
    /// Entries pushed since the last submit.
    queued: usize,
    /// Completions of one reap, reserved to the slot count.
    done: Vec<(usize, i32)>,
}

impl DirectReads {
    /// Direct reads of `handle` through the ring in `home` (taken out; it goes back when this
    /// is dropped). None if the ring is not there.
    pub fn new(home: RingHome, handle: VdiskHandle) -> Option<DirectReads> {
        let ring = home.lock().take()?;
        let n = ring.slots;
        Some(DirectReads {
            ring: Some(ring),
            home,
            handle,
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            in_kernel: 0,
            queued: 0,
            done: Vec::with_capacity(n),
        })
    }

    /// The eventfd the ring signals on completions.
    pub fn completion_fd(&self) -> RawFd {
        self.ring.as_ref().map_or(-1, |r| r.efd.as_raw_fd())
    }

    /// Starts `job`, a read of `len` bytes at `off`, on the ring if the engine plans it and the
    /// guest buffers allow (None); else gives it back for the ordinary path.
    pub(super) fn start(&mut self, job: InFlight, off: u64, len: usize) -> Option<InFlight> {
        let (Some(r), Some(&idx)) = (self.ring.as_mut(), self.free.last()) else {
            return Some(job);
        };
        if len > MAX_DIRECT {
            return Some(job);
        }
        let slot = self.slots[idx].get_or_insert_with(|| {
            Box::new(Slot {
                buf: None,
                plan: DirectRead::new(),
                job: None,
            })
        });
        if !self
            .handle
            .plan_direct_read(off, len as u64, &mut slot.plan)
        {
            return Some(job);
        }
        let Ok(len32) = u32::try_from(len) else {
            slot.plan.release();
            return Some(job);
        };
        // Aligned for O_DIRECT; pooled, so a steady stream of reads allocates nothing.
        let buf = match slot.buf.take() {
            Some(b) if b.len() == len => slot.buf.insert(b),
            _ => slot.buf.insert(AlignedBuf::for_overwrite(len)),
        };
        let entry = opcode::Read::new(types::Fd(slot.plan.fd()), buf.as_mut_ptr(), len32)
            .offset(slot.plan.offset())
            .build()
            .user_data(idx as u64);
        // SAFETY: the buffer lives in the boxed slot `idx`, which stays put and is neither
        // reused nor dropped until this entry's completion is reaped (the thread waits for the
        // kernel before it ends, and leaks the slots if it cannot); the fd stays open while the
        // slot's plan holds the replica's store.
        if unsafe { r.ring.submission().push(&entry) }.is_err() {
            slot.plan.release();
            return Some(job);
        }
        slot.job = Some((job, off, len));
        self.free.pop();
        self.in_kernel += 1;
        self.queued += 1;
        None
    }

    /// Hands the reads started since the last call to the kernel.
    pub(super) fn submit(&mut self) {
        if self.queued > 0 {
            if let Some(r) = self.ring.as_mut() {
                r.submit();
            }
            self.queued = 0;
        }
    }

    /// Whether the kernel has a completion for this thread to collect.
    pub(super) fn completions_ready(&mut self) -> bool {
        self.in_kernel > 0 && self.ring.as_mut().is_some_and(QueueRing::completions_ready)
    }

    /// Before sleeping: clears the eventfd (it counted completions reaped while polling), then
    /// looks once more (one posted after the clear signals it again).
    pub(super) fn settle(&mut self) -> bool {
        if let Some(r) = self.ring.as_ref() {
            let _ = r.efd.read();
        }
        self.completions_ready()
    }

    /// Collects every posted completion: a verified read is finished here and published with
    /// the others of this reap, any other goes to the ordinary path. Returns whether any
    /// completion was collected.
    pub(super) fn reap(&mut self, q: &AsyncQueue) -> bool {
        if self.in_kernel == 0 {
            return false;
        }
        let Some(r) = self.ring.as_mut() else {
            return false;
        };
        let mut done = std::mem::take(&mut self.done);
        r.collect(&mut done);
        let any = !done.is_empty();
        let mut staged = false;
        for &(idx, res) in &done {
            let Some(slot) = self.slots.get_mut(idx).and_then(|s| s.as_mut()) else {
                continue;
            };
            let Some((mut job, off, len)) = slot.job.take() else {
                continue;
            };
            self.free.push(idx);
            self.in_kernel -= 1;
            let ok = usize::try_from(res).ok() == Some(len)
                && verified(slot)
                && slot.buf.as_ref().is_some_and(|b| to_guest(&job, &b[..len]));
            if ok {
                // Before the release: the plan names the replica's disk that read it.
                self.handle
                    .count_direct_read(&slot.plan, len as u64, job.start);
            }
            slot.plan.release();
            if slot.buf.as_ref().is_some_and(|b| b.len() > KEEP_BUF) {
                slot.buf = None;
            }
            let c = q.counters();
            if ok {
                c.count_read(len);
                c.direct_reads.fetch_add(1, Relaxed);
                job.finish(Outcome::ok(len as u64), None);
                staged = true;
            } else {
                c.direct_fallbacks.fetch_add(1, Relaxed);
                q.redo_read(job, off, len);
            }
        }
        done.clear();
        self.done = done;
        if staged {
            q.publish();
        }
        any
    }

    /// Waits for every read the kernel still has and finishes it (the thread is ending). A
    /// ring that cannot be waited on is leaked, with the reads' buffers' requests, rather than
    /// freed under the kernel's feet.
    pub(super) fn drain(&mut self, q: &AsyncQueue) {
        self.submit();
        while self.in_kernel > 0 {
            let Some(r) = self.ring.as_mut() else {
                return;
            };
            if !r.wait_one() {
                std::mem::forget(self.ring.take());
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            self.reap(q);
        }
    }
}

impl Drop for DirectReads {
    fn drop(&mut self) {
        // `drain` ran (the owner's Drop) unless the ring was leaked; never give back a ring
        // with reads in it.
        if self.in_kernel == 0 {
            *self.home.lock() = self.ring.take();
        } else {
            std::mem::forget(self.ring.take());
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

/// Whether every block of the slot's buffer has the checksum its plan expects.
fn verified(slot: &Slot) -> bool {
    let Some(buf) = slot.buf.as_ref() else {
        return false;
    };
    let blocks = slot.plan.blocks();
    buf.len() >= blocks * BLOCK
        && buf
            .chunks_exact(BLOCK)
            .take(blocks)
            .enumerate()
            .all(|(i, block)| slot.plan.block_ok(i, block))
}

/// Copies verified `data` into the request's guest buffers; false if they do not take it all
/// (the ordinary path then answers the request, with the same checks as always).
fn to_guest(job: &InFlight, data: &[u8]) -> bool {
    let mem = job.mem();
    let mut at = 0usize;
    job.chain
        .pieces(mem, true, 0, data.len(), |addr: GuestAddress, n| {
            let Some(piece) = data.get(at..at + n) else {
                return false;
            };
            at += n;
            mem.write_slice(piece, addr).is_ok()
        })
        && at == data.len()
}
