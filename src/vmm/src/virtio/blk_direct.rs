//! Direct reads for virtio-blk queues on an engine virtual disk: the queue thread asks the
//! engine where a read's blocks lie ([`engine::VdiskHandle::plan_direct_read`]: a local
//! replica's device, one run of bytes, every block's checksum), submits a READV from that device
//! straight into the guest's buffers on its own io_uring, reaps the completion, checks every
//! block's checksum over the bytes in guest memory and publishes the request itself. The request
//! never leaves the queue thread (the ordinary path goes queue thread -> runtime worker ->
//! the device's reaper -> worker -> queue thread).
//!
//! Everything else takes the ordinary path ([`super::blk_async`]), unchanged: writes, flushes,
//! reads the engine does not plan (holes, ranges across chunks, remote-only, degraded, moving or
//! fragmented chunks), guest buffers that do not split into whole blocks (every 4 KiB block
//! must lie in one guest segment, so each is checked where it landed) or that O_DIRECT cannot
//! take, and, after the fact, a read that failed, came back short or has ANY block whose
//! checksum does not match. Such a read is redone whole by the engine, which verifies, fails
//! over and repairs as always; this path never marks a replica bad or repairs anything, since a
//! mismatch here may be the guest changing its own buffer or a block that moved after the plan
//! (why a moved block is caught: see `engine::direct`). So a read never returns data whose
//! every block was not checked against the engine's checksum.
//!
//! The ring is made with the device (outside the sandbox), lent to the queue thread and given
//! back when the thread ends; an ending thread first waits for every read the kernel still has
//! (its buffers are guest memory) and finishes it.

use super::blk::{Outcome, MAX_CHAIN};
use super::blk_async::{AsyncQueue, InFlight};
use super::blk_uring::{QueueRing, RingHome};
use engine::{DirectRead, VdiskHandle};
use io_uring::{opcode, types};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use vm_memory::GuestMemoryBackend;

/// Bytes per checksummed block.
const BLOCK: usize = engine::BLOCK_BYTES as usize;

/// One read in the kernel: its request, where it reads from, and the guest buffers it fills.
struct Slot {
    iov: [libc::iovec; MAX_CHAIN],
    n: usize,
    plan: DirectRead,
    job: Option<(InFlight, u64, usize)>,
}

const NO_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

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

// SAFETY: the raw pointers in a slot's iovecs point into guest memory, which the slot's request
// (its queue's `mem`) keeps mapped while it is in the kernel; only the queue thread that owns
// this value reads or writes them.
unsafe impl Send for DirectReads {}

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
        let slot = self.slots[idx].get_or_insert_with(|| {
            Box::new(Slot {
                iov: [NO_IOV; MAX_CHAIN],
                n: 0,
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
        let mem = job.mem();
        let direct = slot.plan.direct();
        let (iov, mut n, mut at) = (&mut slot.iov, 0usize, 0usize);
        // Whole blocks per segment, so each block is checked where it landed.
        let covered = job.chain.pieces(mem, true, 0, len, |addr, plen| {
            if !at.is_multiple_of(BLOCK) || !plen.is_multiple_of(BLOCK) {
                return false;
            }
            let Some(v) = iov.get_mut(n) else {
                return false;
            };
            let Ok(s) = mem.get_slice(addr, plen) else {
                return false;
            };
            if s.len() != plen {
                return false;
            }
            let p = s.ptr_guard_mut().as_ptr();
            if direct && !(p as usize).is_multiple_of(512) {
                return false;
            }
            *v = libc::iovec {
                iov_base: p.cast(),
                iov_len: plen,
            };
            n += 1;
            at += plen;
            true
        });
        if !covered || at != len {
            slot.plan.release();
            return Some(job);
        }
        slot.n = n;
        let entry = opcode::Readv::new(types::Fd(slot.plan.fd()), slot.iov.as_ptr(), n as u32)
            .offset(slot.plan.offset())
            .build()
            .user_data(idx as u64);
        // SAFETY: the iovecs live in the boxed slot `idx`, which stays put and is not reused
        // until this entry's completion is reaped; they point into guest memory that the
        // request keeps mapped (and the thread waits for the kernel before it ends); the fd
        // stays open while the slot's plan holds the replica's store.
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
            let ok = usize::try_from(res).ok() == Some(len) && verified(slot);
            slot.plan.release();
            let c = q.counters();
            if ok {
                c.count_read(len);
                c.direct_reads.fetch_add(1, Relaxed);
                self.handle.count_direct_read(len as u64, job.start);
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

/// Whether every block the slot's read put in guest memory has the checksum its plan expects.
fn verified(slot: &Slot) -> bool {
    let mut i = 0;
    for v in &slot.iov[..slot.n] {
        for b in 0..v.iov_len / BLOCK {
            // SAFETY: the segment lies in guest memory, mapped while the request lives (it is in
            // hand here), and is `iov_len` bytes long (checked when the read started). The guest
            // may change it meanwhile: then the checksum does not match and the read is redone.
            let block = unsafe {
                std::slice::from_raw_parts(v.iov_base.cast::<u8>().add(b * BLOCK), BLOCK)
            };
            if !slot.plan.block_ok(i, block) {
                return false;
            }
            i += 1;
        }
    }
    i == slot.plan.blocks()
}
