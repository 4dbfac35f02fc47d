//! virtio-blk queues on a host file, served by the queue thread's own io_uring: the thread that
//! takes a chain from the guest's ring submits its read or write (straight between the file and
//! guest memory, no bounce buffer), reaps the completion and publishes it itself, so a request
//! never crosses threads (QEMU's iothread works the same way). The lanes path
//! ([`super::blk_pool`]) hands each request to another thread and back, two wake-ups per
//! request that a lone request (queue depth 1) pays in full.
//!
//! The ring is made with the device ([`QueueRing::new`], outside the sandbox: a device thread
//! may not set up rings), lent to the queue thread while the queue is active and given back when
//! the thread stops. It is set up with COOP_TASKRUN and TASKRUN_FLAG: the kernel finishes a
//! completion on the queue thread at its next kernel entry instead of interrupting it; a polling
//! thread sees the flag and enters the kernel to collect it, a sleeping one (in `poll` on the
//! kick eventfd and the ring's completion eventfd) is woken to finish it, which signals the
//! eventfd. After each burst of work the thread keeps polling both rings for a short adaptive
//! window ([`super::PollWindow`]) before it re-arms guest notifications and sleeps.
//!
//! What it guarantees:
//! - at most as many requests in the kernel as the ring has slots (the queue size rounded up);
//!   the completion queue is twice that, so it never overflows;
//! - a read or write whose guest buffers the file cannot take directly (an O_DIRECT file and a
//!   buffer not 512-byte aligned, a buffer across two memory regions), or that fails or comes
//!   back short on the ring, is done again synchronously by the ordinary handler
//!   ([`BlkQueueHandler::complete`]), so the guest sees the same outcome as on the lanes path;
//! - a flush goes through the ring (an fdatasync covering every write completed before it) and
//!   is never retried after a failure (a second fdatasync may report success for lost data);
//!   discard, write-zeroes and GET_ID run synchronously on the thread;
//! - a stopping thread waits for every request the kernel still has (their buffers are guest
//!   memory) and publishes it before it gives the ring back, for at most [`DRAIN_LIMIT`]: past
//!   it (a hung device) the ring is leaked with the guest memory mapping (the kernel may still
//!   read or write it) and the requests left unanswered, so a stop or reset of the VM does not
//!   hang with the device.

use super::blk::{arm, parse, pending, BlkQueueHandler, Chain, Req, MAX_CHAIN, S_IOERR, S_OK};
use super::PollWindow;
use crate::memory::GuestMemoryMmap;
use crate::stats::DeviceCounters;
use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

/// How long a stopping queue waits for the requests the kernel still has before it gives up on
/// them (a hung device): long enough for any device that still answers, even one retrying its
/// commands (a SCSI disk's timeout is 30 s), short enough that a VM stop does not hang for good.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// One queue's io_uring: the file as fixed file 0 (or no file, for a ring that reads devices
/// given per request: [`super::blk_direct`]) and an eventfd signalled on each completion.
pub struct QueueRing {
    // Declared before the file: the ring (and its reference to the fixed file) goes first.
    pub(super) ring: IoUring,
    pub(super) efd: EventFd,
    pub(super) slots: usize,
    /// How long a stopping queue waits for the kernel ([`DRAIN_LIMIT`]; less in tests).
    pub(super) drain_limit: Duration,
    /// The file was opened O_DIRECT: buffers must be 512-byte aligned.
    direct: bool,
    _file: Option<Arc<File>>,
}

impl QueueRing {
    /// A ring for a queue of `queue_size` on `file`; None if the kernel refuses io_uring (the
    /// queue then uses the lanes path).
    pub fn new(file: Arc<File>, queue_size: u16) -> Option<QueueRing> {
        let mut r = Self::unbound(queue_size)?;
        r.ring
            .submitter()
            .register_files(&[file.as_raw_fd()])
            .ok()?;
        // SAFETY: F_GETFL on a descriptor we hold open; no memory is passed.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        r.direct = flags >= 0 && flags & libc::O_DIRECT != 0;
        r._file = Some(file);
        Some(r)
    }

    /// A ring for a queue of `queue_size` with no file of its own; None if the kernel refuses
    /// io_uring.
    pub fn unbound(queue_size: u16) -> Option<QueueRing> {
        let depth = u32::from(queue_size.max(1)).next_power_of_two();
        let ring = match IoUring::builder()
            .setup_cqsize(depth * 2)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(depth)
        {
            // Kernels before 5.19 refuse the flags: a plain ring interrupts the thread instead.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
                .setup_cqsize(depth * 2)
                .build(depth)
                .ok()?,
            r => r.ok()?,
        };
        let efd = EventFd::new(libc::EFD_NONBLOCK).ok()?;
        ring.submitter().register_eventfd(efd.as_raw_fd()).ok()?;
        Some(QueueRing {
            ring,
            efd,
            slots: depth as usize,
            drain_limit: DRAIN_LIMIT,
            direct: false,
            _file: None,
        })
    }

    /// Whether the kernel has a completion for the ring's thread to collect (or to finish
    /// first, COOP_TASKRUN), or entries a refused submit (EAGAIN, ENOMEM) left queued: nothing
    /// signals the eventfd for those until they are handed to the kernel, so the thread must
    /// not sleep on it (`collect` submits them).
    pub(super) fn completions_ready(&mut self) -> bool {
        let sq = self.ring.submission();
        let kernel_work = sq.taskrun() || !sq.is_empty();
        drop(sq);
        kernel_work || !self.ring.completion().is_empty()
    }

    /// Hands the queued entries to the kernel. If it takes none now (no memory), they stay
    /// queued and the next submit or reap takes them.
    pub(super) fn submit(&mut self) {
        for _ in 0..3 {
            match self.ring.submit() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    /// Finishes the kernel's pending work on this thread (entries left queued go in with it)
    /// and moves every posted completion, as (user data, result), into `done`.
    pub(super) fn collect(&mut self, done: &mut Vec<(usize, i32)>) {
        let queued = !self.ring.submission().is_empty();
        if queued || self.ring.submission().taskrun() {
            let _ = self.ring.submit();
        }
        done.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
    }

    /// Waits for at least one completion, until `deadline` at the latest; false if the
    /// deadline passed or the ring cannot be waited on. True may come back early (a signal, a
    /// completion already collected): the caller reaps and asks again.
    pub(super) fn wait_one(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if !self.ring.params().is_feature_ext_arg() {
            return self.poll_one(left);
        }
        let ts = types::Timespec::from(left);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => true,
            // ETIME: the time is up, which the next call sees.
            Err(e) => matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::ETIME)
            ),
        }
    }

    /// [`QueueRing::wait_one`] on a kernel whose io_uring_enter takes no timeout (before
    /// 5.11): sleeps on the completion eventfd instead, cleared first (it may count
    /// completions already collected) and the ring looked at after the clear.
    fn poll_one(&mut self, left: Duration) -> bool {
        let _ = self.efd.read();
        self.submit();
        if !self.ring.completion().is_empty() {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: self.efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one pollfd, valid for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n > 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR))
    }

    /// The eventfd that becomes readable when a completion is posted.
    pub fn completion_fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }
}

/// Where a queue's ring lives while no thread has it.
pub type RingHome = Arc<Mutex<Option<QueueRing>>>;

#[derive(Clone, Copy)]
enum Op {
    Read(usize),
    Write(usize),
    Flush,
}

struct Job {
    head: u16,
    chain: Chain,
    op: Op,
    start: Instant,
}

/// One request in the kernel: its chain and the iovecs (into guest memory) the kernel reads.
struct Slot {
    iov: [libc::iovec; MAX_CHAIN],
    job: Option<Job>,
}

const NO_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// One queue served through its own ring (see the module documentation).
pub struct UringQueue {
    ring: Option<QueueRing>,
    home: RingHome,
    queue: Queue,
    irq: Box<dyn Fn() + Send>,
    mem: Arc<GuestMemoryMmap>,
    /// Runs what the ring does not (and redoes what failed on it), synchronously.
    handler: BlkQueueHandler,
    counters: Arc<DeviceCounters>,
    size: u64,
    read_only: bool,
    queue_index: usize,
    /// Allocated on first use and kept (a slot is about 2 KiB).
    slots: Vec<Option<Box<Slot>>>,
    free: Vec<usize>,
    in_kernel: usize,
    /// Completions of one reap, reserved to the slot count.
    done: Vec<(usize, i32)>,
    window: PollWindow,
    idle_since: Option<Instant>,
}

// SAFETY: the raw pointers in a slot's iovecs point into guest memory, which `mem` keeps mapped
// for as long as this queue lives; only the thread that owns the queue reads or writes them.
unsafe impl Send for UringQueue {}

/// What [`UringQueue::new`] needs besides the ring.
pub struct UringSetup {
    /// The queue as the driver set it up.
    pub queue: Queue,
    /// Interrupts the guest (the queue's [`super::QueueIrq`]).
    pub irq: Box<dyn Fn() + Send>,
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// The synchronous handler for everything the ring does not do.
    pub handler: BlkQueueHandler,
    /// The device's counters.
    pub counters: Arc<DeviceCounters>,
    /// Disk size in bytes.
    pub size: u64,
    /// Writes fail.
    pub read_only: bool,
    /// The queue's index.
    pub queue_index: usize,
}

impl UringQueue {
    /// A queue served through `ring`, taken out of `home` (where it goes back when the queue
    /// is dropped).
    pub fn new(home: RingHome, ring: QueueRing, s: UringSetup) -> UringQueue {
        let n = ring.slots;
        UringQueue {
            ring: Some(ring),
            home,
            queue: s.queue,
            irq: s.irq,
            mem: s.mem,
            handler: s.handler,
            counters: s.counters,
            size: s.size,
            read_only: s.read_only,
            queue_index: s.queue_index,
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            in_kernel: 0,
            done: Vec::with_capacity(n),
            window: PollWindow::new(super::POLL_MAX),
            idle_since: None,
        }
    }

    /// The eventfd to sleep on for completions.
    pub fn completion_fd(&self) -> RawFd {
        self.ring.as_ref().map_or(-1, QueueRing::completion_fd)
    }

    /// A kick (`completions` false) or the completion eventfd (`completions` true): serves,
    /// reaps and polls until a window passes with nothing new and notifications are back on.
    pub fn on_event(&mut self, completions: bool) {
        if completions {
            if let Some(r) = self.ring.as_ref() {
                let _ = r.efd.read();
            }
        } else if let Some(t) = self.idle_since {
            self.window.woke_after(t.elapsed());
        }
        let mut last = Instant::now();
        // Set when notifications were re-armed with chains pending: the next pass must take
        // some, else the ring's index may be garbage and the thread sleeps rather than spin.
        let mut rearmed = false;
        loop {
            let (took, mut published) = self.serve();
            published |= self.reap();
            if published && self.queue.needs_notification(&*self.mem).unwrap_or(true) {
                (self.irq)();
            }
            if took || published {
                last = Instant::now();
                rearmed = false;
                continue;
            }
            let deadline = last + self.window.get();
            let mut found = false;
            while !found && Instant::now() < deadline {
                for _ in 0..32 {
                    if self.ready() {
                        found = true;
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            if found {
                continue;
            }
            if rearmed || !arm(&mut self.queue, &self.mem) {
                // About to sleep: the eventfd counted completions reaped while polling, so it
                // is cleared first (else the sleep ends at once), then the ring looked at once
                // more (a completion posted after the clear signals it again).
                if let Some(r) = self.ring.as_ref() {
                    let _ = r.efd.read();
                }
                // Completions only: chains still pending here are ones the passes above could
                // not take (no free slot, or a ring index past the queue size), and looking
                // at them would spin until the kernel's requests are done.
                if self.completions_ready() {
                    continue;
                }
                break;
            }
            rearmed = true;
        }
        self.idle_since = Some(last);
    }

    /// Whether a pass would find work: a chain it can take, or a completion to collect.
    fn ready(&mut self) -> bool {
        self.completions_ready() || (!self.free.is_empty() && pending(&self.queue, &self.mem))
    }

    /// Whether the kernel has a completion for this thread to collect (or to finish first).
    fn completions_ready(&mut self) -> bool {
        let Some(r) = self.ring.as_mut() else {
            return false;
        };
        self.in_kernel > 0 && r.completions_ready()
    }

    /// Takes every chain available (while a slot is free), starts reads, writes and flushes on
    /// the ring with one submission, runs the rest synchronously. Returns whether it took any
    /// chain and whether it put any on the used ring.
    fn serve(&mut self) -> (bool, bool) {
        let mem = self.mem.clone();
        let (mut took, mut published, mut queued) = (false, false, 0usize);
        while !self.free.is_empty() {
            let Some(chain) = self.queue.pop_descriptor_chain(&*mem) else {
                break;
            };
            took = true;
            self.counters.count_queue(self.queue_index);
            let start = Instant::now();
            let head = chain.head_index();
            let walked = Chain::walk(
                &mem,
                chain.map(|d| (d.addr().0, d.len(), d.is_write_only())),
            );
            let chain = match walked {
                Ok(c) => c,
                Err(_) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    published |= self.publish(head, 0, start);
                    continue;
                }
            };
            match self.start(Job {
                head,
                chain,
                op: Op::Flush,
                start,
            }) {
                Ok(()) => queued += 1,
                Err(job) => {
                    let len = self.handler.complete(&job.chain);
                    published |= self.publish(job.head, len, job.start);
                }
            }
        }
        if queued > 0 {
            self.submit();
        }
        (took, published)
    }

    /// Queues `job` on the ring (its `op` is set here from the parsed request), or gives it back
    /// for the synchronous handler (boxed: that path is the rare one).
    fn start(&mut self, mut job: Job) -> Result<(), Box<Job>> {
        let Some(r) = self.ring.as_mut() else {
            return Err(Box::new(job));
        };
        let (op, off) = match parse(&self.mem, &job.chain, self.size, self.read_only) {
            Req::Read { off, len } => (Op::Read(len), off),
            Req::Write { off, len } => (Op::Write(len), off),
            Req::Flush => (Op::Flush, 0),
            _ => return Err(Box::new(job)),
        };
        job.op = op;
        let Some(idx) = self.free.pop() else {
            return Err(Box::new(job));
        };
        let slot = self.slots[idx].get_or_insert_with(|| {
            Box::new(Slot {
                iov: [NO_IOV; MAX_CHAIN],
                job: None,
            })
        });
        let mut n = 0usize;
        let covered = match op {
            Op::Flush => true,
            // Reads fill the writable space from its start; write data follows the header.
            Op::Read(len) | Op::Write(len) => {
                let (space, from) = match op {
                    Op::Read(_) => (true, 0),
                    _ => (false, 16),
                };
                let (mem, direct, iov) = (&self.mem, r.direct, &mut slot.iov);
                job.chain.pieces(mem, space, from, len, |addr, plen| {
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
                    if direct && !(p as usize | plen).is_multiple_of(512) {
                        return false;
                    }
                    *v = libc::iovec {
                        iov_base: p.cast(),
                        iov_len: plen,
                    };
                    n += 1;
                    true
                })
            }
        };
        if !covered {
            self.free.push(idx);
            return Err(Box::new(job));
        }
        let fd = types::Fixed(0);
        let entry = match op {
            Op::Read(_) => opcode::Readv::new(fd, slot.iov.as_ptr(), n as u32)
                .offset(off)
                .build(),
            Op::Write(_) => opcode::Writev::new(fd, slot.iov.as_ptr(), n as u32)
                .offset(off)
                .build(),
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(idx as u64);
        // SAFETY: the iovecs live in the boxed slot `idx`, which stays put and is not reused
        // until this entry's completion is reaped; they point into guest memory that `mem`
        // keeps mapped for the queue's life (and the queue waits for the kernel before it
        // goes); the fd is fixed file 0, the file the ring registered.
        let pushed = unsafe { r.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Not with at most `slots` entries in flight, but never lose the request.
            self.free.push(idx);
            return Err(Box::new(job));
        }
        slot.job = Some(job);
        self.in_kernel += 1;
        Ok(())
    }

    /// Hands the queued entries to the kernel.
    fn submit(&mut self) {
        if let Some(r) = self.ring.as_mut() {
            r.submit();
        }
    }

    /// Collects every posted completion and finishes its request; returns whether any went on
    /// the used ring.
    fn reap(&mut self) -> bool {
        let Some(r) = self.ring.as_mut() else {
            return false;
        };
        if self.in_kernel == 0 {
            return false;
        }
        let mut done = std::mem::take(&mut self.done);
        r.collect(&mut done);
        let mut published = false;
        for &(idx, res) in &done {
            published |= self.finish(idx, res);
        }
        done.clear();
        self.done = done;
        published
    }

    /// The kernel finished slot `idx` with `res`: completes its request (done again
    /// synchronously if a read or write did not fully succeed) and publishes it.
    fn finish(&mut self, idx: usize, res: i32) -> bool {
        let Some(job) = self
            .slots
            .get_mut(idx)
            .and_then(|s| s.as_mut())
            .and_then(|s| s.job.take())
        else {
            return false;
        };
        self.free.push(idx);
        self.in_kernel -= 1;
        let status = |q: &Self, s: u8| match job.chain.status_addr() {
            Some(a) => q.mem.write_obj(s, a).is_ok(),
            None => false,
        };
        let used = match job.op {
            Op::Read(len) | Op::Write(len) if usize::try_from(res).ok() == Some(len) => {
                if let Op::Read(_) = job.op {
                    self.counters.count_read(len);
                } else {
                    self.counters.count_write(len);
                }
                let data = if let Op::Read(_) = job.op { len } else { 0 };
                if status(self, S_OK) {
                    u32::try_from(data + 1).unwrap_or(u32::MAX)
                } else {
                    0
                }
            }
            // Failed or short (or refused, e.g. EINVAL for an alignment the file system wants
            // larger): the handler does it again and answers as the lanes path would.
            Op::Read(_) | Op::Write(_) => self.handler.complete(&job.chain),
            Op::Flush => {
                self.counters.flush_ops.fetch_add(1, Ordering::Relaxed);
                let s = if res == 0 {
                    S_OK
                } else {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    S_IOERR
                };
                if status(self, s) {
                    1
                } else {
                    0
                }
            }
        };
        self.publish(job.head, used, job.start)
    }

    /// Puts one completion on the used ring; false if the ring is unusable.
    fn publish(&mut self, head: u16, len: u32, start: Instant) -> bool {
        let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters
            .latency_ns_total
            .fetch_add(elapsed, Ordering::Relaxed);
        self.queue.add_used(&*self.mem, head, len).is_ok()
    }
}

impl Drop for UringQueue {
    /// Waits for what the kernel still has, publishes it, and gives the ring back. A ring that
    /// cannot be waited on, or whose requests are not all back within its drain limit (a hung
    /// device), is leaked rather than freed under the kernel's feet, with the guest memory
    /// mapping (the kernel may still read or write it); its requests stay unanswered (the
    /// queue is going away; answering one would let the guest reuse a buffer the kernel may
    /// still write).
    fn drop(&mut self) {
        let mut published = false;
        let deadline = Instant::now() + self.ring.as_ref().map_or(DRAIN_LIMIT, |r| r.drain_limit);
        while self.in_kernel > 0 {
            let Some(r) = self.ring.as_mut() else {
                return;
            };
            if !r.wait_one(deadline) {
                published |= self.reap();
                if self.in_kernel > 0 {
                    std::mem::forget(self.mem.clone());
                    std::mem::forget(self.ring.take());
                    break;
                }
            }
            published |= self.reap();
        }
        if published && self.queue.needs_notification(&*self.mem).unwrap_or(true) {
            (self.irq)();
        }
        if self.in_kernel == 0 {
            *self.home.lock() = self.ring.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DiskBackend;
    use crate::backend_file::FileDisk;
    use crate::virtio::blk::{T_FLUSH, T_GET_ID, T_IN, T_OUT};
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicUsize;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};

    const QLEN: u16 = 32;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    /// Request `r`: header at HDR + r * 0x100 (type, sector), status byte at STATUS + r, and the
    /// given data descriptors; descriptors r * 4.. of the table; appended to the avail ring.
    fn push(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        r: u16,
        rtype: u32,
        sector: u64,
        data: &[(u64, u32, u16)],
    ) {
        let hdr = HDR + u64::from(r) * 0x100;
        mem.write_obj(rtype, GuestAddress(hdr)).unwrap();
        mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS + u64::from(r)))
            .unwrap();
        let mut descs = vec![(hdr, 16, 0)];
        descs.extend_from_slice(data);
        descs.push((STATUS + u64::from(r), 1, WRITE));
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = r * 4 + i as u16;
            let f = if i + 1 < descs.len() {
                flags | NEXT
            } else {
                flags
            };
            let d = SplitDescriptor::new(addr, len, f, idx + 1);
            vq.desc_table().store(idx, RawDescriptor::from(d)).unwrap();
        }
        let avail = vq.avail_addr();
        let aidx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
        mem.write_obj(r * 4, avail.unchecked_add(4 + u64::from(aidx % QLEN) * 2))
            .unwrap();
        mem.write_obj(aidx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
    }

    fn used_idx(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap()
    }

    /// The queue under test over `disk` (its sizes and handler) and `ring`, with fresh
    /// counters, which it returns too.
    fn uring_queue(
        disk: &Arc<FileDisk>,
        ring: QueueRing,
        mem: &Arc<GuestMemoryMmap>,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        home: RingHome,
        irq: Box<dyn Fn() + Send>,
    ) -> (UringQueue, Arc<DeviceCounters>) {
        let counters = Arc::new(DeviceCounters::default());
        let handler = BlkQueueHandler::new(
            disk.clone() as Arc<dyn DiskBackend>,
            mem.clone(),
            "serial-uring",
            counters.clone(),
        );
        let setup = UringSetup {
            queue: vq.create_queue().unwrap(),
            irq,
            mem: mem.clone(),
            handler,
            counters: counters.clone(),
            size: disk.size_bytes(),
            read_only: false,
            queue_index: 0,
        };
        (UringQueue::new(home, ring, setup), counters)
    }

    /// Runs the queue (as its thread would on kicks and completions) until `want` requests
    /// were published; no time bound beyond a generous safety net.
    fn run_until(
        q: &mut UringQueue,
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        want: u16,
    ) {
        q.on_event(false);
        for _ in 0..100_000 {
            if used_idx(mem, vq) == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
            q.on_event(true);
        }
        panic!("requests never completed");
    }

    /// Writes, reads (into aligned and misaligned guest buffers), a flush, GET_ID and a read
    /// past the end, on a buffered and (where the file system allows it) an O_DIRECT file:
    /// data, status bytes, used lengths and counters as the lanes path gives them; dropping the
    /// queue gives the ring back.
    #[test]
    fn serves_a_file_through_the_queue_threads_ring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0x11u8; 1 << 20]).unwrap();
        for direct in [false, true] {
            let disk = match FileDisk::open(&path, false, direct) {
                Ok(d) => Arc::new(d),
                Err(e) => {
                    println!("skipped: direct={direct}: {e}");
                    continue;
                }
            };
            let Some(ring) = QueueRing::new(disk.host_file().unwrap(), QLEN) else {
                println!("skipped: io_uring unavailable");
                return;
            };
            let mem =
                Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap());
            let vq = MockSplitQueue::new(&*mem, QLEN);
            let irqs = Arc::new(AtomicUsize::new(0));
            let irqs2 = irqs.clone();
            let home: RingHome = Arc::new(Mutex::new(None));
            let irq = Box::new(move || {
                irqs2.fetch_add(1, Ordering::Relaxed);
            });
            let (mut q, counters) = uring_queue(&disk, ring, &mem, &vq, home.clone(), irq);
            let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 ^ 0x5a).collect();
            mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
            // The write as two 4 KiB segments.
            push(
                &mem,
                &vq,
                0,
                T_OUT,
                8,
                &[(DATA, 4096, 0), (DATA + 4096, 4096, 0)],
            );
            run_until(&mut q, &mem, &vq, 1);
            assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
            let mut on_file = vec![0u8; 8192];
            std::fs::File::open(&path)
                .unwrap()
                .read_exact_at(&mut on_file, 4096)
                .unwrap();
            assert!(on_file == pattern, "the write reached the file");

            let (d1, d2) = (DATA + 0x1_0000, DATA + 0x2_0001);
            push(&mem, &vq, 1, T_IN, 8, &[(d1, 8192, WRITE)]);
            // Misaligned: O_DIRECT cannot take it, the handler does it through its buffer.
            push(&mem, &vq, 2, T_IN, 16, &[(d2, 4096, WRITE)]);
            push(&mem, &vq, 3, T_FLUSH, 0, &[]);
            push(&mem, &vq, 4, T_GET_ID, 0, &[(DATA + 0x3_0000, 20, WRITE)]);
            push(&mem, &vq, 5, T_IN, 2048, &[(DATA + 0x4_0000, 4096, WRITE)]);
            run_until(&mut q, &mem, &vq, 6);
            let status = |r: u64| mem.read_obj::<u8>(GuestAddress(STATUS + r)).unwrap();
            assert_eq!(
                [status(1), status(2), status(3), status(4), status(5)],
                [S_OK, S_OK, S_OK, S_OK, S_IOERR]
            );
            let mut back = vec![0u8; 8192];
            mem.read_slice(&mut back, GuestAddress(d1)).unwrap();
            assert!(back == pattern, "read into an aligned buffer");
            let mut back = vec![0u8; 4096];
            mem.read_slice(&mut back, GuestAddress(d2)).unwrap();
            assert!(back == pattern[4096..], "read into a misaligned buffer");
            let mut id = [0u8; 12];
            mem.read_slice(&mut id, GuestAddress(DATA + 0x3_0000))
                .unwrap();
            assert_eq!(&id, b"serial-uring");
            // Used lengths: data + status for reads and GET_ID, the status alone otherwise.
            let used_len = |i: u64| -> (u32, u32) {
                let e = vq.used_addr().unchecked_add(4 + i * 8);
                (
                    mem.read_obj(e).unwrap(),
                    mem.read_obj(e.unchecked_add(4)).unwrap(),
                )
            };
            let mut lens: Vec<(u32, u32)> = (0..6).map(used_len).collect();
            lens.sort_unstable();
            assert_eq!(
                lens,
                [(0, 1), (4, 8193), (8, 4097), (12, 1), (16, 21), (20, 1)]
            );
            assert_eq!(counters.read_ops.load(Ordering::Relaxed), 2);
            assert_eq!(counters.write_ops.load(Ordering::Relaxed), 1);
            assert_eq!(counters.flush_ops.load(Ordering::Relaxed), 1);
            assert!(irqs.load(Ordering::Relaxed) >= 2, "completions interrupt");
            assert!(home.lock().is_none(), "the queue holds its ring");
            drop(q);
            assert!(home.lock().is_some(), "a dropped queue gives the ring back");
        }
    }

    /// More requests than the ring has slots (a ring made for a queue of 2 under a queue of 32):
    /// the rest wait in the guest's ring until a slot frees, and every one is served once with
    /// its own data.
    #[test]
    fn more_requests_than_ring_slots_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let content: Vec<u8> = (0..1u32 << 20).map(|i| (i / 512) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let disk = Arc::new(FileDisk::open(&path, false, false).unwrap());
        let Some(ring) = QueueRing::new(disk.host_file().unwrap(), 2) else {
            println!("skipped: io_uring unavailable");
            return;
        };
        assert_eq!(ring.slots, 2);
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap());
        let vq = MockSplitQueue::new(&*mem, QLEN);
        let home = Arc::new(Mutex::new(None));
        let (mut q, counters) = uring_queue(&disk, ring, &mem, &vq, home, Box::new(|| {}));
        // Requests 0..8 read sectors 3 * r into their own 4 KiB buffer.
        for r in 0..8u16 {
            let buf = DATA + u64::from(r) * 0x1_0000;
            push(&mem, &vq, r, T_IN, 3 * u64::from(r), &[(buf, 4096, WRITE)]);
        }
        run_until(&mut q, &mem, &vq, 8);
        for r in 0..8u64 {
            assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS + r)).unwrap(), S_OK);
            let mut back = vec![0u8; 4096];
            mem.read_slice(&mut back, GuestAddress(DATA + r * 0x1_0000))
                .unwrap();
            let off = (3 * r * 512) as usize;
            assert!(
                back == content[off..off + 4096],
                "request {r} read its own sectors"
            );
        }
        assert_eq!(counters.read_ops.load(Ordering::Relaxed), 8);
        assert_eq!(q.in_kernel, 0);
    }

    /// A guest that moves its avail index past the queue size while a request is still in the
    /// kernel: the thread looks at the index, then sleeps (returns to its poll) instead of
    /// spinning on it until the request completes. The "file" is a pipe nobody writes yet, so
    /// the read stays in the kernel until the test lets it finish.
    #[test]
    fn a_bad_avail_index_is_not_spun_on_while_requests_are_in_the_kernel() {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let disk = Arc::new(FileDisk::open(&path, false, false).unwrap());
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let Some(ring) = QueueRing::new(Arc::new(rd), QLEN) else {
            println!("skipped: io_uring unavailable");
            return;
        };
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap());
        let vq = MockSplitQueue::new(&*mem, QLEN);
        let home = Arc::new(Mutex::new(None));
        let (mut q, _counters) = uring_queue(&disk, ring, &mem, &vq, home, Box::new(|| {}));
        push(&mem, &vq, 0, T_IN, 0, &[(DATA, 4096, WRITE)]);
        q.on_event(false);
        assert_eq!(q.in_kernel, 1, "the read waits on the empty pipe");
        let avail = vq.avail_addr().unchecked_add(2);
        mem.write_obj(1u16 + 3 * QLEN, avail).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            q.on_event(false);
            let _ = tx.send(());
            q
        });
        // A safety net, not a timing: a correct thread returns at once; a spinning one only
        // when the read completes, which the pipe write below lets it do.
        let returned = rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok();
        wr.write_all(&[0x77u8; 4096]).unwrap();
        let q = t.join().unwrap();
        assert!(returned, "the thread spun on a bad avail index");
        mem.write_obj(1u16, avail).unwrap();
        // Dropping waits for the read and publishes it.
        drop(q);
        assert_eq!(used_idx(&mem, &vq), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x77);
    }

    /// A queue that ends while its file never answers a request (a hung device) stops waiting
    /// at its drain limit (30 s in production, 50 ms here) instead of hanging its thread, and
    /// so the VM's stop, for good: the ring is not given back (the kernel still has the read)
    /// and the request is left unanswered. The "file" is a pipe nobody ever writes or closes.
    #[test]
    fn a_queue_ending_on_a_hung_file_gives_up_after_its_drain_limit() {
        use std::os::fd::FromRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let disk = Arc::new(FileDisk::open(&path, false, false).unwrap());
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the read end was just created and is owned by nobody else. The write end
        // stays open for good: the read never ends.
        let rd = unsafe { File::from_raw_fd(fds[0]) };
        let Some(mut ring) = QueueRing::new(Arc::new(rd), QLEN) else {
            println!("skipped: io_uring unavailable");
            return;
        };
        ring.drain_limit = std::time::Duration::from_millis(50);
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap());
        let vq = MockSplitQueue::new(&*mem, QLEN);
        let home: RingHome = Arc::new(Mutex::new(None));
        let (mut q, _counters) = uring_queue(&disk, ring, &mem, &vq, home.clone(), Box::new(|| {}));
        push(&mem, &vq, 0, T_IN, 0, &[(DATA, 4096, WRITE)]);
        q.on_event(false);
        assert_eq!(q.in_kernel, 1, "the read waits on the empty pipe");
        // A safety net, not a timing: the drop gives up after 50 ms; before, it never returned.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(q);
            let _ = tx.send(());
        });
        let ended = rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok();
        assert!(ended, "the queue waited for the hung file for good");
        assert!(
            home.lock().is_none(),
            "a ring the kernel still uses is not given back"
        );
        assert_eq!(used_idx(&mem, &vq), 0, "the read is left unanswered");
    }

    /// The wait of kernels whose io_uring_enter takes no timeout (before 5.11), run here on
    /// any kernel: nothing back within the time given is false, a completion is true.
    #[test]
    fn the_eventfd_wait_of_older_kernels_ends_at_its_time() {
        let Some(mut r) = QueueRing::unbound(QLEN) else {
            println!("skipped: io_uring unavailable");
            return;
        };
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // Both ends stay open for good (the read never ends), and so does its buffer.
        let buf: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
        let read = opcode::Read::new(types::Fd(fds[0]), buf.as_mut_ptr(), 8)
            .build()
            .user_data(1);
        // SAFETY: the buffer and the descriptor are never freed or closed.
        unsafe { r.ring.submission().push(&read) }.unwrap();
        let ms = std::time::Duration::from_millis(20);
        assert!(!r.poll_one(ms), "nothing came back");
        let nop = opcode::Nop::new().build().user_data(2);
        // SAFETY: a NOP references no memory.
        unsafe { r.ring.submission().push(&nop) }.unwrap();
        let far = std::time::Duration::from_secs(60);
        let mut done = Vec::new();
        while done.is_empty() {
            assert!(r.poll_one(far), "the NOP came back");
            r.collect(&mut done);
        }
        assert_eq!(done, vec![(2, 0)]);
    }
}
