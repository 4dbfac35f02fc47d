//! virtio-blk queues served by an [`AsyncDisk`] (the engine): the queue thread walks and parses
//! each chain and hands it to one of the queue's drivers ([`super::blk_driver`]: long-lived
//! tasks on the disk's runtime, one per worker, so no task is spawned per request); the request
//! runs there, writes its data and status byte, and the driver publishes every completion of
//! its pass at once. No thread blocks per request. Engine reads are copied once, from the
//! engine's verified buffers straight into guest memory; read and write buffers are reused
//! (the engine hands a write's buffer back when no replica holds it any more).
//!
//! What it guarantees:
//! - at most `limit` (the queue size) requests per queue in flight; at the limit the queue
//!   thread stops taking chains and the next completion wakes it (backpressure, also against a
//!   guest that offers one head twice);
//! - completions are published in bursts: a finished request is staged, and whoever publishes
//!   puts every staged completion on the used ring at once, then raises one interrupt (or none,
//!   as the event index or NO_INTERRUPT say); a request counts as in flight until published;
//! - a FLUSH starts only after every write, discard and write-zeroes submitted before it on any
//!   queue of the device completed ([`WriteOrder`]), then runs the disk's flush;
//! - [`AsyncQueue::close`] (device reset, hot-unplug) waits for every in-flight request; if one
//!   is stuck past the bound it closes the gate, after which no request touches guest memory.
//!
//! It must never write guest memory through anything but a walked, checked [`Chain`], and never
//! after `close` returned.

use super::blk::{parse, Chain, Outcome, Req, SERIAL_BYTES, S_OK};
use super::blk_direct::DirectReads;
use super::blk_driver::{drive, Driver, ReqFuture};
use crate::backend::AsyncDisk;
use crate::memory::GuestMemoryMmap;
use crate::stats::DeviceCounters;
use blockdev::AlignedBuf;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

/// How long a reset waits for in-flight requests before it stops them from touching guest
/// memory (an engine request normally ends in milliseconds; one waiting on an unreachable
/// replica ends with the engine's own timeout).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Orders flushes after earlier writes across a device's queues. Writes are counted per epoch;
/// a flush closes the current epoch and waits until it and every older one has no writes left.
/// The epoch list holds at most one entry per epoch with writes outstanding plus the current
/// one, so it is bounded by the requests in flight; it is reserved once.
pub struct WriteOrder {
    /// (epoch, writes outstanding), oldest first; the back is the current epoch.
    epochs: Mutex<VecDeque<(u64, usize)>>,
    changed: tokio::sync::Notify,
}

impl WriteOrder {
    /// An order for a device with `max_inflight` requests in flight at most (all queues).
    pub fn new(max_inflight: usize) -> Self {
        let mut v = VecDeque::with_capacity(max_inflight + 2);
        v.push_back((0, 0));
        Self {
            epochs: Mutex::new(v),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Counts a write submitted now; returns its epoch for [`WriteOrder::end_write`].
    pub fn begin_write(&self) -> u64 {
        let mut e = self.epochs.lock();
        let back = e.back_mut().expect("the current epoch is always present");
        back.1 += 1;
        back.0
    }

    /// The write of `epoch` completed (or failed).
    pub fn end_write(&self, epoch: u64) {
        let mut e = self.epochs.lock();
        if let Some(entry) = e.iter_mut().find(|(ep, _)| *ep == epoch) {
            entry.1 = entry.1.saturating_sub(1);
        }
        if Self::trim(&mut e) {
            drop(e);
            self.changed.notify_waiters();
        }
    }

    /// Closes the current epoch for a flush submitted now; returns what it must wait for.
    pub fn begin_flush(&self) -> u64 {
        let mut e = self.epochs.lock();
        let cur = e.back().map_or(0, |b| b.0);
        e.push_back((cur + 1, 0));
        Self::trim(&mut e);
        cur
    }

    /// True once every write of `epoch` and older epochs completed.
    pub fn done(&self, epoch: u64) -> bool {
        self.epochs.lock().front().is_none_or(|f| f.0 > epoch)
    }

    /// Waits until [`WriteOrder::done`] for `epoch`.
    pub async fn wait(&self, epoch: u64) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.done(epoch) {
                return;
            }
            changed.await;
        }
    }

    /// Drops drained epochs from the front (never the current one); true if any went.
    fn trim(e: &mut VecDeque<(u64, usize)>) -> bool {
        let mut any = false;
        while e.len() > 1 && e.front().is_some_and(|f| f.1 == 0) {
            e.pop_front();
            any = true;
        }
        any
    }
}

/// One queue's state, shared by its queue thread and its request tasks.
pub struct AsyncQueue {
    queue: Mutex<Queue>,
    mem: Arc<GuestMemoryMmap>,
    disk: Arc<dyn AsyncDisk>,
    order: Arc<WriteOrder>,
    counters: Arc<DeviceCounters>,
    irq: Box<dyn Fn() + Send + Sync>,
    serial: [u8; SERIAL_BYTES],
    size: u64,
    read_only: bool,
    queue_index: usize,
    /// Requests taken from the ring and not yet published (or abandoned after close).
    inflight: AtomicUsize,
    limit: usize,
    /// The queue thread stopped at the limit and wants a kick from the next completion.
    throttled: AtomicBool,
    /// Written to wake the queue thread (a clone of its notify eventfd).
    kick: EventFd,
    /// Completions waiting for the used ring: (head, used length). Reserved to `limit`.
    burst: Mutex<Vec<(u16, u32)>>,
    /// Read and write buffers kept for reuse (at most `limit`), so a request allocates none.
    bufs: Mutex<Vec<AlignedBuf>>,
    /// The tasks that run this queue's requests, and the next one to deal a request to.
    drivers: Vec<Arc<Driver<Job>>>,
    next_driver: AtomicUsize,
    /// False once closed: requests still running afterwards leave guest memory alone.
    live: RwLock<bool>,
    closing: AtomicBool,
    drained: (Mutex<()>, Condvar),
}

/// What [`AsyncQueue::new`] needs besides the queue.
pub struct QueueSetup {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// The disk.
    pub disk: Arc<dyn AsyncDisk>,
    /// The device's flush order (shared by its queues).
    pub order: Arc<WriteOrder>,
    /// The device's counters.
    pub counters: Arc<DeviceCounters>,
    /// Raises the queue's interrupt.
    pub irq: Box<dyn Fn() + Send + Sync>,
    /// Serial number (GET_ID).
    pub serial: [u8; SERIAL_BYTES],
    /// Disk size in bytes.
    pub size: u64,
    /// Refuse writes.
    pub read_only: bool,
    /// Index for the per-queue counters.
    pub queue_index: usize,
    /// Woken when a completion frees room after the limit was hit.
    pub kick: EventFd,
    /// Requests in flight at most (the queue size; at least 1).
    pub limit: usize,
}

/// A parsed request on its way to a driver.
type Job = (InFlight, Req);

/// Most drivers per queue (one per runtime worker up to this).
const MAX_DRIVERS: usize = 4;

/// Largest buffer kept for reuse (bigger reads allocate; guests mostly read 4-128 KiB).
const KEEP_BUF_BYTES: usize = 128 << 10;

/// A request in flight. Finishing it stages the outcome for the used ring; dropping it
/// unfinished (its task was cancelled, e.g. the runtime shut down) completes it with IOERR and
/// publishes, so every request taken from the ring is answered and counted out exactly once.
pub(super) struct InFlight {
    q: Arc<AsyncQueue>,
    head: u16,
    pub(super) chain: Chain,
    pub(super) start: Instant,
    /// The write epoch to end (writes, discards, write-zeroes).
    epoch: Option<u64>,
    /// A flush's target: the epoch whose writes it waits for.
    flush_after: Option<u64>,
    finished: bool,
}

impl InFlight {
    /// Guest memory (mapped while the request lives).
    pub(super) fn mem(&self) -> &GuestMemoryMmap {
        &self.q.mem
    }

    /// Writes `data` (reads, GET_ID) and the status into the chain and stages the completion;
    /// [`AsyncQueue::publish`] puts it on the used ring. Nothing touches guest memory once the
    /// queue is closed (the request is then only counted out).
    pub(super) fn finish(&mut self, out: Outcome, data: Option<&[u8]>) {
        self.finish_with(out, data.map(Data::Bytes));
    }

    /// [`InFlight::finish`] for data in any form.
    fn finish_with(&mut self, out: Outcome, data: Option<Data<'_>>) {
        self.finished = true;
        if let Some(ep) = self.epoch.take() {
            self.q.order.end_write(ep);
        }
        let q = &self.q;
        let live = q.live.read();
        if !*live {
            drop(live);
            q.release(1);
            return;
        }
        let mut out = out;
        if let Some(d) = data {
            if out.status == S_OK && !d.scatter(&self.chain, &q.mem) {
                out = Outcome::IOERR;
            }
        }
        if out.status != S_OK {
            q.counters.errors.fetch_add(1, SeqCst);
        }
        let used = match self.chain.status_addr() {
            Some(a) if q.mem.write_obj(out.status, a).is_ok() => out.used_len,
            _ => 0,
        };
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        q.counters
            .latency_ns_total
            .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        q.burst.lock().push((self.head, used));
    }
}

/// Data a request returns to the guest.
pub(super) enum Data<'a> {
    /// One slice.
    Bytes(&'a [u8]),
    /// The disk's own pieces, in order, `len` bytes in all (copied once, straight from them).
    Parts(&'a engine::ReadData, usize),
}

impl Data<'_> {
    /// Copies the data into the chain's writable space; false if it does not fit or the
    /// length is not the one asked for.
    pub(super) fn scatter(&self, chain: &Chain, mem: &GuestMemoryMmap) -> bool {
        match self {
            Data::Bytes(d) => chain.scatter(mem, 0, d),
            Data::Parts(r, len) => {
                if r.len() != *len {
                    return false;
                }
                let mut at = 0u64;
                r.parts().all(|p| {
                    let ok = chain.scatter(mem, at, p);
                    at += p.len() as u64;
                    ok
                })
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Outcome::IOERR, None);
            self.q.publish();
        }
    }
}

/// Runs one request on the disk and finishes it.
async fn run(mut job: InFlight, req: Req) {
    let q = job.q.clone();
    match req {
        Req::Flush => {
            q.counters.flush_ops.fetch_add(1, SeqCst);
            if let Some(target) = job.flush_after {
                q.order.wait(target).await;
            }
            let r = q.disk.flush().await;
            job.finish(outcome(r.is_ok(), 0), None);
        }
        Req::Read { off, len } => {
            if let Some(read) = q.disk.read_owned(off, len) {
                match read.await {
                    Ok(data) => {
                        q.counters.count_read(len);
                        job.finish_with(Outcome::ok(len as u64), Some(Data::Parts(&data, len)));
                    }
                    Err(_) => job.finish(Outcome::IOERR, None),
                }
                return;
            }
            let (buf, r) = q.disk.read(off, q.take_buf(len), len).await;
            if r.is_ok() {
                q.counters.count_read(len);
            }
            match buf.get(..len) {
                Some(data) => job.finish(outcome(r.is_ok(), len as u64), Some(data)),
                None => job.finish(Outcome::IOERR, None),
            }
            q.put_buf(buf);
        }
        Req::Write { off, len } => {
            let mut buf = q.take_buf(len);
            let gathered = {
                let live = q.live.read();
                *live && job.chain.gather(&q.mem, 16, &mut buf[..len])
            };
            let ok = if gathered {
                let (back, r) = q.disk.write(off, buf, len).await;
                if let Some(b) = back {
                    q.put_buf(b);
                }
                r.is_ok()
            } else {
                q.put_buf(buf);
                false
            };
            if ok {
                q.counters.count_write(len);
            }
            job.finish(outcome(ok, 0), None);
        }
        Req::Discard { off, len } | Req::WriteZeroes { off, len } => {
            let r = if matches!(req, Req::WriteZeroes { .. }) {
                q.disk.write_zeroes(off, len).await
            } else {
                q.disk.discard(off, len).await
            };
            q.counters.discard_ops.fetch_add(1, SeqCst);
            job.finish(outcome(r.is_ok(), 0), None);
        }
        // Answered on the queue thread; never handed over.
        Req::GetId { .. } | Req::Done(_) => job.finish(Outcome::IOERR, None),
    }
}

impl AsyncQueue {
    /// State for one queue.
    /// Starts its drivers on the disk's runtime; they end after [`AsyncQueue::close`] (or
    /// [`AsyncQueue::stop_drivers`]) once their requests finished.
    pub fn new(queue: Queue, setup: QueueSetup) -> Arc<Self> {
        let limit = setup.limit.max(1);
        let workers = setup.disk.runtime().metrics().num_workers();
        let drivers = (0..workers.clamp(1, MAX_DRIVERS))
            .map(|_| Driver::new(limit))
            .collect();
        let q = Arc::new(Self {
            queue: Mutex::new(queue),
            mem: setup.mem,
            disk: setup.disk,
            order: setup.order,
            counters: setup.counters,
            irq: setup.irq,
            serial: setup.serial,
            size: setup.size,
            read_only: setup.read_only,
            queue_index: setup.queue_index,
            inflight: AtomicUsize::new(0),
            limit,
            throttled: AtomicBool::new(false),
            kick: setup.kick,
            burst: Mutex::new(Vec::with_capacity(limit)),
            bufs: Mutex::new(Vec::with_capacity(limit)),
            drivers,
            next_driver: AtomicUsize::new(0),
            live: RwLock::new(true),
            closing: AtomicBool::new(false),
            drained: (Mutex::new(()), Condvar::new()),
        });
        for d in &q.drivers {
            let published = q.clone();
            let start = |(job, req): Job| -> ReqFuture { Box::pin(run(job, req)) };
            q.disk
                .runtime()
                .spawn(drive(d.clone(), start, move || published.publish()));
        }
        q
    }

    /// Lets the drivers end once their requests finished. No request may be submitted after.
    pub fn stop_drivers(&self) {
        for d in &self.drivers {
            d.stop();
        }
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(SeqCst)
    }

    /// Counts out `n` requests: wakes a throttled queue thread and a waiting `close`.
    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let left = self.inflight.fetch_sub(n, SeqCst) - n;
        if self.throttled.swap(false, SeqCst) {
            let _ = self.kick.write(1);
        }
        if left == 0 && self.closing.load(SeqCst) {
            let _g = self.drained.0.lock();
            self.drained.1.notify_all();
        }
    }

    /// Puts every staged completion on the used ring and raises at most one interrupt (none
    /// if the event index or NO_INTERRUPT say so), then counts them out.
    pub(super) fn publish(&self) {
        let n = {
            let live = self.live.read();
            let mut q = self.queue.lock();
            let mut b = self.burst.lock();
            let n = b.len();
            let mut ok = true;
            for (h, l) in b.drain(..) {
                ok &= *live && q.add_used(&*self.mem, h, l).is_ok();
            }
            drop(b);
            let notify = n > 0 && ok && q.needs_notification(&*self.mem).unwrap_or(true);
            drop(q);
            if notify {
                (self.irq)();
            }
            n
        };
        self.release(n);
    }

    /// A buffer of `len` bytes rounded up to whole blocks, as [`AlignedBuf::for_overwrite`]
    /// sizes it (a kept one of exactly that size if there is one: the engine writes straight
    /// from a buffer only when the request fills it).
    fn take_buf(&self, len: usize) -> AlignedBuf {
        let want = len.max(1).div_ceil(blockdev::BLOCK_SIZE) * blockdev::BLOCK_SIZE;
        let mut bufs = self.bufs.lock();
        match bufs.iter().rposition(|b| b.len() == want) {
            Some(i) => bufs.swap_remove(i),
            None => {
                drop(bufs);
                AlignedBuf::for_overwrite(len)
            }
        }
    }

    /// Keeps `buf` for a later request (bounded in count and size).
    fn put_buf(&self, buf: AlignedBuf) {
        let mut bufs = self.bufs.lock();
        if bufs.len() < self.limit && buf.len() <= KEEP_BUF_BYTES {
            bufs.push(buf);
        }
    }

    /// Takes every available chain (up to the in-flight limit), parses it and starts it, then
    /// re-arms guest notifications (what a kick without polling does). A ring index that points
    /// past what can be taken ends it after one more look.
    pub fn poll(self: &Arc<Self>) {
        let mut rearmed = false;
        loop {
            let took = self.take_available();
            if !took && rearmed {
                break;
            }
            if !self.arm() {
                break;
            }
            rearmed = true;
        }
    }

    /// Takes every available chain (up to the in-flight limit), parses it and starts it, with
    /// guest notifications left off; returns whether it took any.
    pub fn take_available(self: &Arc<Self>) -> bool {
        self.take_available_with(None)
    }

    /// [`AsyncQueue::take_available`], reading what it can through `direct` (the queue
    /// thread's own ring; see [`super::blk_direct`]).
    pub(super) fn take_available_with(
        self: &Arc<Self>,
        mut direct: Option<&mut DirectReads>,
    ) -> bool {
        let mem = self.mem.clone();
        let mut staged = false;
        let mut took = false;
        // Drivers that got requests in this pass (each is woken once, at the end).
        let mut handed = [false; MAX_DRIVERS];
        // Notifications need no turning off: with the event index the guest kicks only when
        // it passes the avail_event that arming last wrote; without it, it always kicks.
        let mut q = self.queue.lock();
        loop {
            if self.inflight.load(SeqCst) >= self.limit {
                // Ask for a kick, then look again: a completion between the two sees it.
                self.throttled.store(true, SeqCst);
                if self.inflight.load(SeqCst) >= self.limit {
                    break;
                }
                self.throttled.store(false, SeqCst);
            }
            let Some(chain) = q.pop_descriptor_chain(&*mem) else {
                break;
            };
            drop(q);
            took = true;
            self.counters.count_queue(self.queue_index);
            self.inflight.fetch_add(1, SeqCst);
            let head = chain.head_index();
            let start = Instant::now();
            match Chain::walk(
                &mem,
                chain.map(|d| (d.addr().0, d.len(), d.is_write_only())),
            ) {
                Ok(c) => match self.submit(head, c, start, direct.as_deref_mut()) {
                    Some(d) => handed[d] = true,
                    None => staged = true,
                },
                Err(_) => {
                    // No usable status byte: answer with a zero length.
                    self.counters.errors.fetch_add(1, SeqCst);
                    self.burst.lock().push((head, 0));
                    staged = true;
                }
            }
            q = self.queue.lock();
        }
        drop(q);
        if let Some(d) = direct {
            d.submit();
        }
        for (d, _) in self.drivers.iter().zip(handed).filter(|(_, h)| *h) {
            d.kick();
        }
        if staged {
            self.publish();
        }
        took
    }

    /// Turns guest notifications back on; true if chains arrived meanwhile.
    pub fn arm(&self) -> bool {
        super::blk::arm(&mut self.queue.lock(), &self.mem)
    }

    /// Whether the guest made chains available that were not taken yet (and there is room
    /// to take them).
    pub fn pending(&self) -> bool {
        if self.inflight.load(Relaxed) >= self.limit {
            return false;
        }
        super::blk::pending(&self.queue.lock(), &self.mem)
    }

    /// Parses one chain; answers it here if no disk I/O is needed (returns None, the caller
    /// publishes), starts a read on `direct` if it can (returns None, nothing to publish yet),
    /// else hands it to a driver (returns the driver's index; the caller kicks it).
    fn submit(
        self: &Arc<Self>,
        head: u16,
        chain: Chain,
        start: Instant,
        direct: Option<&mut DirectReads>,
    ) -> Option<usize> {
        let req = parse(&self.mem, &chain, self.size, self.read_only);
        // The order is fixed here, in ring order: writes join the current epoch, a flush
        // closes it and later waits for it.
        let (epoch, flush_after) = match req {
            Req::Write { .. } | Req::Discard { .. } | Req::WriteZeroes { .. } => {
                (Some(self.order.begin_write()), None)
            }
            Req::Flush => (None, Some(self.order.begin_flush())),
            _ => (None, None),
        };
        let mut job = InFlight {
            q: self.clone(),
            head,
            chain,
            start,
            epoch,
            flush_after,
            finished: false,
        };
        match req {
            Req::Done(out) => {
                job.finish(out, None);
                None
            }
            Req::GetId { len } => {
                let serial = self.serial;
                job.finish(Outcome::ok(len as u64), Some(&serial[..len]));
                None
            }
            Req::Read { off, len } => match direct {
                Some(d) => d.start(job, off, len).map(|job| self.hand_over(job, req)),
                None => Some(self.hand_over(job, req)),
            },
            Req::Write { off, len } => match direct {
                Some(d) => d
                    .start_write(job, off, len)
                    .map(|job| self.hand_over(job, req)),
                None => Some(self.hand_over(job, req)),
            },
            _ => Some(self.hand_over(job, req)),
        }
    }

    /// Gives a parsed request to the next driver; returns its index (the caller kicks it).
    fn hand_over(&self, job: InFlight, req: Req) -> usize {
        let n = self.next_driver.fetch_add(1, Relaxed) % self.drivers.len();
        self.drivers[n].push((job, req));
        n
    }

    /// Runs a read on the disk's ordinary path (a direct read that did not verify).
    pub(super) fn redo_read(&self, job: InFlight, off: u64, len: usize) {
        let n = self.hand_over(job, Req::Read { off, len });
        self.drivers[n].kick();
    }

    /// Runs a write on the disk's ordinary path (a direct write that did not complete: it
    /// gathers the guest's data again and writes it all).
    pub(super) fn redo_write(&self, job: InFlight, off: u64, len: usize) {
        let n = self.hand_over(job, Req::Write { off, len });
        self.drivers[n].kick();
    }

    /// Has the engine do what its ordinary path does on a device error that a direct read or
    /// write saw on the queue thread's ring ([`engine::VdiskHandle::direct_device_error`]),
    /// then runs the request on the ordinary path: a write only once the engine is done (the
    /// failed disk is out by then and the redo writes the live replicas), a read at once.
    pub(super) fn redo_after_device_error(
        &self,
        job: InFlight,
        req: Req,
        handle: &engine::VdiskHandle,
        e: engine::DirectDeviceError,
    ) {
        let h = handle.clone();
        if let Req::Write { .. } = req {
            self.disk.runtime().spawn(async move {
                h.direct_device_error(e).await;
                let q = job.q.clone();
                let n = q.hand_over(job, req);
                q.drivers[n].kick();
            });
            return;
        }
        self.disk
            .runtime()
            .spawn(async move { h.direct_device_error(e).await });
        let n = self.hand_over(job, req);
        self.drivers[n].kick();
    }

    /// The device's counters.
    pub(super) fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    /// Stops taking part in the device: waits up to `timeout` for every request in flight to
    /// finish, then closes the gate so that a request still running never touches guest memory.
    /// Returns the number of requests abandoned (0 when all drained). The queue thread must be
    /// stopped first.
    pub fn close(&self, timeout: Duration) -> usize {
        self.closing.store(true, SeqCst);
        let deadline = Instant::now() + timeout;
        {
            let mut g = self.drained.0.lock();
            while self.inflight.load(SeqCst) > 0 {
                if self.drained.1.wait_until(&mut g, deadline).timed_out() {
                    break;
                }
            }
        }
        *self.live.write() = false;
        self.stop_drivers();
        self.inflight.load(SeqCst)
    }
}

/// The queue thread's side of an [`AsyncQueue`] ([`super::Worker::spawn_polled`]), with the
/// thread's own ring for direct reads when the disk has them; stops the queue's drivers when
/// dropped, i.e. when the queue thread ends (reset, VM deleted), after every direct read the
/// kernel still has completed.
pub struct PolledAsyncQueue {
    q: Arc<AsyncQueue>,
    direct: Option<DirectReads>,
}

impl PolledAsyncQueue {
    /// The thread's side of `q`, reading through `direct` where it can.
    pub fn new(q: Arc<AsyncQueue>, direct: Option<DirectReads>) -> Self {
        Self { q, direct }
    }

    /// For tests: the direct reads and writes.
    #[cfg(test)]
    pub(super) fn direct(&self) -> Option<&DirectReads> {
        self.direct.as_ref()
    }

    /// For tests: the direct reads and writes, to change.
    #[cfg(test)]
    pub(super) fn direct_mut(&mut self) -> Option<&mut DirectReads> {
        self.direct.as_mut()
    }

    /// For tests: gives up the direct ring as when it cannot be waited on
    /// ([`DirectReads::leak`]).
    #[cfg(test)]
    pub(super) fn leak_direct(&mut self) {
        if let Some(d) = self.direct.as_mut() {
            d.leak();
        }
    }
}

impl super::PolledQueue for PolledAsyncQueue {
    fn serve(&mut self) -> bool {
        // Completions first: they free slots (and in-flight room) for the chains.
        let reaped = self.direct.as_mut().is_some_and(|d| d.reap(&self.q));
        self.q.take_available_with(self.direct.as_mut()) || reaped
    }

    fn pending(&mut self) -> bool {
        self.direct
            .as_mut()
            .is_some_and(DirectReads::completions_ready)
            || self.q.pending()
    }

    fn arm(&mut self) -> bool {
        self.q.arm()
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.direct.as_ref().map(DirectReads::completion_fd)
    }

    fn settle(&mut self) -> bool {
        self.direct.as_mut().is_some_and(DirectReads::settle)
    }
}

impl Drop for PolledAsyncQueue {
    fn drop(&mut self) {
        if let Some(d) = self.direct.as_mut() {
            d.drain(&self.q);
        }
        self.q.stop_drivers();
    }
}

fn outcome(ok: bool, data: u64) -> Outcome {
    if ok {
        Outcome::ok(data)
    } else {
        Outcome::IOERR
    }
}
