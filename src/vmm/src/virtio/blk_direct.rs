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
//! Direct writes, the same way: for a write the engine plans
//! ([`engine::VdiskHandle::plan_direct_write_len`]: one chunk already stored, every replica a
//! local io_uring device, nothing moving it), the queue thread then copies the guest's data
//! into a buffer of its own (so the checksums the engine records are those of the bytes every
//! replica gets, whatever the guest does to its memory meanwhile; a write not planned is not
//! copied here, only by the ordinary path), puts one WRITE per replica on its ring,
//! into fresh blocks the engine allocated, and once every one completed in full has the engine
//! record the new versions ([`engine::VdiskHandle::finish_direct_write`]) before it answers the
//! guest. The plan holds the guards the ordinary write holds (the disk's generation, the
//! chunk's stripe lock shared) until then. A write that failed or came back short on any
//! replica records nothing (its fresh blocks go back) and is redone whole by the engine. A
//! later FLUSH covers it as any write: it is counted in the device's write order until
//! answered, and recorded on its replica disks before that.
//!
//! Everything else takes the ordinary path ([`super::blk_async`]), unchanged: writes the
//! engine does not plan (a chunk's first write, partial blocks, across chunks, a snapshot, a
//! degraded, moving, remote or not yet reconciled chunk, fragmented free space, a journal that
//! wants a flush), flushes, discards, reads the engine does not plan (holes, ranges across
//! chunks, remote-only, degraded, moving or fragmented chunks), reads and writes over
//! [`MAX_DIRECT`], and, after the fact, a read that failed, came back short or has ANY block
//! whose checksum does not match. Such a read is redone whole by the engine, which verifies,
//! fails over and repairs as always; this path never marks a replica bad or repairs anything
//! on a checksum mismatch, since a mismatch here may be the guest changing its own buffer or a
//! block that moved after the plan (why a moved block is caught: see `engine::direct`). So a
//! read never returns data whose every block was not checked against the engine's checksum.
//! A device error on the ring (a read or a replica's write failing with EIO, say) is the
//! device's, though, and the engine does with it what its own path does
//! ([`engine::VdiskHandle::direct_device_error`]: a write's disk is failed before the write is
//! redone on the live replicas, a read's chunk is resynced on that disk beside the redo).
//!
//! The ring is made with the device (outside the sandbox), lent to the queue thread and given
//! back when the thread ends; an ending thread first waits for every read and write the kernel
//! still has and finishes it (its buffers must outlive the kernel's use of them), for at most
//! the ring's drain limit (30 s): past it (a hung device) the ring and the buffers are leaked
//! and what is left answered with an error ([`DirectReads::leak`]).

use super::blk::{Outcome, Req};
use super::blk_async::{AsyncQueue, InFlight};
use super::blk_uring::{QueueRing, RingHome};
use blockdev::AlignedBuf;
use engine::{DirectRead, DirectWrite, VdiskHandle};
use io_uring::{opcode, types};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// Bytes per checksummed block.
const BLOCK: usize = engine::BLOCK_BYTES as usize;

/// The largest read or write served here (what the engine plans without allocating); larger
/// ones take the ordinary path.
pub const MAX_DIRECT: usize = 128 << 10;

/// A slot keeps its buffer for the next read up to this size; a larger one goes back to the
/// buffer pool when its read ends, so idle slots never hold much memory.
const KEEP_BUF: usize = 16 << 10;

/// One read or write in the kernel: its request, where it reads from (or writes to), and the
/// buffer it reads into (or writes from).
struct Slot {
    buf: Option<AlignedBuf>,
    plan: DirectRead,
    wplan: DirectWrite,
    job: Option<(InFlight, u64, usize)>,
    /// A write: its device writes (one per replica) still in the kernel, and whether every
    /// one reaped so far wrote the whole range.
    write: bool,
    writes_left: usize,
    written: bool,
    /// A write: a replica (index in the plan) whose write failed, with its result (the first
    /// device error, else the first short count).
    failed: Option<(usize, i32)>,
}

impl Slot {
    fn new() -> Box<Slot> {
        Box::new(Slot {
            buf: None,
            plan: DirectRead::new(),
            wplan: DirectWrite::new(),
            job: None,
            write: false,
            writes_left: 0,
            written: false,
            failed: None,
        })
    }
}

/// A slot's buffer, `len` bytes (pooled: a steady stream of requests allocates nothing).
fn slot_buf(buf: &mut Option<AlignedBuf>, len: usize) -> &mut AlignedBuf {
    match buf.take() {
        Some(b) if b.len() == len => buf.insert(b),
        _ => buf.insert(AlignedBuf::for_overwrite(len)),
    }
}

/// Entries the ring's submission queue has room for.
fn sq_room(r: &mut QueueRing) -> usize {
    let sq = r.ring.submission();
    sq.capacity() - sq.len()
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
    /// For tests: the next completion reaped fails with this errno instead (a device error).
    #[cfg(test)]
    pub(super) fail_next: Option<i32>,
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
            #[cfg(test)]
            fail_next: None,
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
        let slot = self.slots[idx].get_or_insert_with(Slot::new);
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
        // Aligned for O_DIRECT.
        let buf = slot_buf(&mut slot.buf, len);
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
        slot.write = false;
        self.free.pop();
        self.in_kernel += 1;
        self.queued += 1;
        None
    }

    /// Starts `job`, a write of `len` bytes at `off`, on the ring if the engine plans it
    /// ([`VdiskHandle::plan_direct_write_len`]): then the guest's data is copied into the
    /// slot's buffer (what the checksums are taken of and what every replica gets, whatever
    /// the guest does to its memory meanwhile) and one WRITE per replica goes on the ring.
    /// Else gives the job back for the ordinary path, uncopied (None: started).
    pub(super) fn start_write(&mut self, job: InFlight, off: u64, len: usize) -> Option<InFlight> {
        let (Some(r), Some(&idx)) = (self.ring.as_mut(), self.free.last()) else {
            return Some(job);
        };
        let Ok(len32) = u32::try_from(len) else {
            return Some(job);
        };
        if len > MAX_DIRECT
            || len == 0
            || !len.is_multiple_of(BLOCK)
            || !off.is_multiple_of(BLOCK as u64)
        {
            return Some(job);
        }
        let slot = self.slots[idx].get_or_insert_with(Slot::new);
        // Planned before the copy: a write the engine does not plan (a chunk's first write, a
        // change of the same blocks in flight...) is copied once, by the ordinary path only.
        if !self
            .handle
            .plan_direct_write_len(off, len as u64, &mut slot.wplan)
        {
            return Some(job);
        }
        let buf = slot_buf(&mut slot.buf, len);
        // The checksums are those of this copy, which every replica gets.
        if !job.chain.gather(job.mem(), 16, &mut buf[..]) || !slot.wplan.checksum_data(buf) {
            // Nothing written: the fresh blocks go back; the ordinary path answers it (with
            // the same checks).
            self.handle
                .finish_direct_write(&mut slot.wplan, false, job.start);
            return Some(job);
        }
        let Some(buf) = slot.buf.as_ref() else {
            return Some(job);
        };
        let n = slot.wplan.replicas();
        // Room for every replica's entry at once, or none goes in.
        if sq_room(r) < n {
            r.submit();
            self.queued = 0;
        }
        if sq_room(r) < n {
            self.handle
                .finish_direct_write(&mut slot.wplan, false, job.start);
            return Some(job);
        }
        let mut pushed = 0;
        for i in 0..n {
            let Some((fd, at, _)) = slot.wplan.target(i) else {
                continue;
            };
            // The replica's index goes in the high half: a failed write names its disk.
            let entry = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len32)
                .offset(at)
                .build()
                .user_data(idx as u64 | (i as u64) << 32);
            // SAFETY: the buffer lives in the boxed slot `idx`, which stays put and is neither
            // changed, reused nor dropped until every entry's completion is reaped (the thread
            // waits for the kernel before it ends, and leaks the slots if it cannot); the fd
            // stays open while the slot's plan holds the replica's store.
            if unsafe { r.ring.submission().push(&entry) }.is_ok() {
                pushed += 1;
            }
        }
        if pushed == 0 {
            self.handle
                .finish_direct_write(&mut slot.wplan, false, job.start);
            return Some(job);
        }
        slot.job = Some((job, off, len));
        slot.write = true;
        slot.failed = None;
        slot.writes_left = pushed;
        // A replica left out (never, with the room checked above) fails the write, which the
        // engine then does again whole.
        slot.written = pushed == n;
        self.free.pop();
        self.in_kernel += 1;
        self.queued += pushed;
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
        for &(data, res) in &done {
            #[cfg(test)]
            let res = self.fail_next.take().map_or(res, |e| -e);
            // A slot's index, and for a write the replica's (see `start_write`).
            let (idx, replica) = (data & 0xffff_ffff, data >> 32);
            let Some(slot) = self.slots.get_mut(idx).and_then(|s| s.as_mut()) else {
                continue;
            };
            if slot.write {
                if slot.writes_left == 0 || slot.job.is_none() {
                    continue;
                }
                slot.writes_left -= 1;
                let len = slot.job.as_ref().map_or(0, |j| j.2);
                if usize::try_from(res).ok() != Some(len) {
                    slot.written = false;
                    // A device error wins over a short count.
                    if slot.failed.is_none_or(|(_, r)| device_errno(r).is_none()) {
                        slot.failed = Some((replica, res));
                    }
                }
                if slot.writes_left > 0 {
                    continue;
                }
            }
            let Some((mut job, off, len)) = slot.job.take() else {
                continue;
            };
            self.free.push(idx);
            if slot.write {
                self.in_kernel -= 1;
                // Before the finish: the plan names the replicas' disks.
                let err = slot
                    .failed
                    .and_then(|(i, res)| slot.wplan.device_error(i, device_errno(res)?));
                let ok = self
                    .handle
                    .finish_direct_write(&mut slot.wplan, slot.written, job.start);
                if slot.buf.as_ref().is_some_and(|b| b.len() > KEEP_BUF) {
                    slot.buf = None;
                }
                let c = q.counters();
                if ok {
                    c.count_write(len);
                    c.direct_writes.fetch_add(1, Relaxed);
                    job.finish(Outcome::ok(0), None);
                    staged = true;
                } else {
                    c.direct_fallbacks.fetch_add(1, Relaxed);
                    let req = Req::Write { off, len };
                    match err {
                        Some(e) => q.redo_after_device_error(job, req, &self.handle, e),
                        None => q.redo_write(job, off, len),
                    }
                }
                continue;
            }
            self.in_kernel -= 1;
            let ok = usize::try_from(res).ok() == Some(len)
                && verified(slot)
                && slot.buf.as_ref().is_some_and(|b| to_guest(&job, &b[..len]));
            // Before the release: the plan names the replica's disk that read it.
            let err = if ok {
                self.handle
                    .count_direct_read(&slot.plan, len as u64, job.start);
                None
            } else {
                device_errno(res).and_then(|e| slot.plan.device_error(e))
            };
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
                match err {
                    Some(e) => {
                        q.redo_after_device_error(job, Req::Read { off, len }, &self.handle, e)
                    }
                    None => q.redo_read(job, off, len),
                }
            }
        }
        done.clear();
        self.done = done;
        if staged {
            q.publish();
        }
        any
    }

    /// Waits for every read and write the kernel still has and finishes it (the thread is
    /// ending). A ring that cannot be waited on, or whose reads and writes are not all back
    /// within its drain limit ([`super::blk_uring::DRAIN_LIMIT`]: a hung device), is leaked with
    /// the slots' buffers rather than freed under the kernel's feet, and what it still has is
    /// answered with an error ([`DirectReads::leak`]), so the VM's stop or reset does not hang
    /// with the device.
    pub(super) fn drain(&mut self, q: &AsyncQueue) {
        self.submit();
        let Some(limit) = self.ring.as_ref().map(|r| r.drain_limit) else {
            return;
        };
        let deadline = Instant::now() + limit;
        while self.in_kernel > 0 {
            let Some(r) = self.ring.as_mut() else {
                return;
            };
            if !r.wait_one(deadline) {
                // What came back meanwhile is finished as usual; the rest is given up.
                self.reap(q);
                if self.in_kernel > 0 {
                    self.leak();
                }
                return;
            }
            self.reap(q);
        }
    }
}

impl DirectReads {
    /// For tests: slots holding a buffer.
    #[cfg(test)]
    pub(super) fn buffers(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.buf.is_some())
            .count()
    }

    /// For tests: the device stops answering. The kernel gets a read from a pipe nobody ever
    /// writes (or closes), then a NOP that waits for it (IO_DRAIN), behind which the kernel
    /// holds every later request on the ring; neither belongs to a slot (their completions
    /// would be ignored). A drain now gives up after `limit`. False if the ring is gone.
    #[cfg(test)]
    pub(super) fn hang_for_test(&mut self, limit: std::time::Duration) -> bool {
        let Some(r) = self.ring.as_mut() else {
            return false;
        };
        r.drain_limit = limit;
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two-element array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return false;
        }
        // Both ends stay open for good (the read never ends), and so does its buffer.
        let buf: &'static mut [u8; 64] = Box::leak(Box::new([0u8; 64]));
        let read = opcode::Read::new(types::Fd(fds[0]), buf.as_mut_ptr(), 64)
            .build()
            .user_data(u64::MAX);
        let barrier = opcode::Nop::new()
            .build()
            .flags(io_uring::squeue::Flags::IO_DRAIN)
            .user_data(u64::MAX);
        // SAFETY: the buffer and the descriptor are never freed or closed.
        let pushed = unsafe { r.ring.submission().push_multiple(&[read, barrier]) }.is_ok();
        r.submit();
        pushed
    }

    /// The kernel may still use the slots' buffers and cannot be waited for: the ring and
    /// the buffers are leaked, but nothing else is held: a write's plan is abandoned (its
    /// guards go, so a snapshot, delete or mover of the disk never waits for it forever;
    /// nothing is recorded, its fresh blocks stay taken) and every request is answered with
    /// an error by dropping it (the kernel only ever touches the slots' own buffers, never
    /// guest memory; a write left unanswered would also hold every later FLUSH of the device
    /// back for good). A read's plan is abandoned too (its disk's in-flight count goes, its
    /// store stays open for good: it keeps the descriptor open).
    pub(super) fn leak(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            slot.wplan.abandon();
            slot.plan.abandon();
            drop(slot.job.take());
        }
        std::mem::forget(self.ring.take());
        std::mem::forget(std::mem::take(&mut self.slots));
    }
}

impl Drop for DirectReads {
    fn drop(&mut self) {
        // `drain` ran (the owner's Drop) unless the ring was leaked; never give back a ring
        // with reads in it.
        if self.in_kernel == 0 {
            *self.home.lock() = self.ring.take();
        } else {
            self.leak();
        }
    }
}

/// The errno of a read's or write's result on the ring that is the device's error, which the
/// engine's own device path would take as one (it takes every negative result, see
/// `blockdev`): not the ring's own (a cancelled, interrupted or retried request), nor a short
/// count (the ordinary path would go on).
fn device_errno(res: i32) -> Option<i32> {
    (res < 0 && !matches!(-res, libc::ECANCELED | libc::EINTR | libc::EAGAIN)).then_some(-res)
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
