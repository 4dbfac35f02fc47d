//! One io_uring instance shared by all requests of a device, and the task that reaps it.
//!
//! Owns the ring, a fixed table of in-flight slots (each holding the request's buffer until the
//! kernel is done with it), and a semaphore that bounds in-flight requests to the slot count, so
//! the submission and completion queues can never overflow.
//!
//! Completions are reaped by whoever is at hand: a thread that has just called `io_uring_enter`
//! to submit reaps the completion queue before it returns (its own finished requests are posted
//! on the way out of that call) and wakes their futures. The reaper task, woken through an
//! eventfd registered with the tokio reactor, is only needed when nobody submits: it wakes the
//! waiting futures, lets them run, then submits everything they queued with one
//! `io_uring_enter`. The same "plug" ([`Ring::plug`]) lets any caller queue several requests and
//! submit them with one call.
//!
//! The eventfd is switched off (IORING_CQ_EVENTFD_DISABLED) while anyone who will look at the
//! completion queue afterwards is at work — a submitter inside `io_uring_enter`, or the reaper
//! between its wake-up and going back to sleep — so a busy ring does not signal it per
//! completion. Whoever switches it back on reaps once more afterwards; a completion posted while
//! it was off is therefore always reaped, and one posted after signals the reaper.
//!
//! The ring is set up so that a completion does not interrupt the submitting thread with an
//! IPI (COOP_TASKRUN: the kernel finishes it at that thread's next kernel entry, or wakes it if
//! it sleeps), and so that one bad entry in a batch fails only itself (SUBMIT_ALL). Kernels
//! without these flags get a plain ring.
//!
//! The registered-buffer arena (`arena.rs`) is registered with the ring as buffer 0 when the
//! kernel accepts it (it may refuse: RLIMIT_MEMLOCK for a process without CAP_IPC_LOCK, old
//! kernels); [`Ring::fixed_buffers`] says whether it did, and requests on arena memory may then
//! use READ_FIXED / WRITE_FIXED. Without it every request uses plain READ / WRITE.
//!
//! It must never free or reuse a slot (and its buffer) before the kernel's completion for it was
//! reaped, even when the request future was dropped, and must never reap a completion twice
//! (the completion queue is only read under the core lock).

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use io_uring::{squeue, IoUring};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{Notify, Semaphore};

use crate::arena::{self, Arena};
use crate::{AlignedBuf, WriteBuf};

/// Wakers of finished requests, collected under the core lock and woken after it (inline: a
/// reap allocates nothing unless many requests finish at once).
type Wakers = smallvec::SmallVec<[Waker; 8]>;

/// The buffer a request lends the kernel while it is in flight.
pub(crate) enum Hold {
    None,
    Read(AlignedBuf),
    Write(WriteBuf),
}

enum Slot {
    Free,
    Waiting {
        waker: Option<Waker>,
        hold: Hold,
    },
    Done {
        res: i32,
        hold: Hold,
    },
    /// The future was dropped; the slot is freed when the completion arrives.
    Abandoned {
        _hold: Hold,
    },
}

struct Core {
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_flight: usize,
    /// Requests the kernel has (pushed, completion not yet reaped).
    in_kernel: usize,
    /// A thread is in the submit loop ([`Ring::submit_pending`]): others leave their entries in
    /// the queue for it, since it looks at the queue again after each `io_uring_enter`.
    submitting: bool,
    /// Callers that will reap after they are done (see [`Ring::quiet_begin`]); while any is
    /// about, the eventfd is off.
    quiet: usize,
    /// Live plugs ([`Ring::plug`]): while any is held, requests only queue; the last one to go
    /// submits everything queued.
    plugs: usize,
}

pub(crate) struct Ring {
    // Declared before `file`: the ring (and its fixed-file reference) goes first.
    uring: IoUring,
    core: Mutex<Core>,
    permits: Semaphore,
    notify: Notify,
    closing: AtomicBool,
    /// The reaper task is gone (its runtime shut down): new requests fail instead of hanging.
    reaper_gone: AtomicBool,
    /// The arena is registered as buffer 0 (it lives as long as the process, so for as long as
    /// the ring may use it).
    fixed: Option<&'static Arena>,
    /// `io_uring_enter` calls made to submit (a diagnostic: requests per call show batching).
    submit_calls: AtomicU64,
    /// Kept open for as long as the ring may reference it.
    _file: std::fs::File,
}

impl Ring {
    /// A ring with `depth` slots (a power of two), the file registered as fixed file 0, and its
    /// reaper spawned on the current tokio runtime.
    pub(crate) fn start(file: std::fs::File, depth: u32) -> io::Result<Arc<Ring>> {
        let uring = match IoUring::builder()
            .setup_cqsize(depth * 2)
            .setup_coop_taskrun()
            .setup_submit_all()
            .build(depth)
        {
            // Older kernels (< 5.19) refuse the flags: a plain ring works the same, slower.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                IoUring::builder().setup_cqsize(depth * 2).build(depth)?
            }
            r => r?,
        };
        uring.submitter().register_files(&[file.as_raw_fd()])?;
        let fixed = arena::get_or_create().filter(|a| {
            // SAFETY: the arena is mapped for the life of the process and never unmapped or
            // remapped, so the region stays valid for as long as the ring exists.
            unsafe { uring.submitter().register_buffers(&[a.iovec()]) }.is_ok()
        });
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a freshly created descriptor that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        uring.submitter().register_eventfd(efd.as_raw_fd())?;
        // SAFETY: the AsyncFd owns the OwnedFd and nothing else closes or replaces it.
        let afd = unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE)? };
        let n = depth as usize;
        let core = Core {
            slots: (0..n).map(|_| Slot::Free).collect(),
            free: (0..n).rev().collect(),
            in_flight: 0,
            in_kernel: 0,
            submitting: false,
            quiet: 0,
            plugs: 0,
        };
        let ring = Arc::new(Ring {
            uring,
            core: Mutex::new(core),
            permits: Semaphore::new(n),
            notify: Notify::new(),
            closing: AtomicBool::new(false),
            reaper_gone: AtomicBool::new(false),
            fixed,
            submit_calls: AtomicU64::new(0),
            _file: file,
        });
        tokio::spawn(reaper(ring.clone(), afd));
        Ok(ring)
    }

    /// The registered arena, if this ring has it as buffer 0: a request whose memory lies wholly
    /// inside it may use READ_FIXED / WRITE_FIXED with buffer index 0.
    pub(crate) fn fixed_buffers(&self) -> Option<&'static Arena> {
        self.fixed
    }

    /// Ask the reaper to exit once nothing is in flight (the device was dropped).
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Submit `entry` and wait for its result (a negative errno or a byte count).
    ///
    /// The first poll queues the entry with the task's waker in place, and (unless a plug holds
    /// submissions or another thread is submitting) submits it, all under one take of the core
    /// lock; the submit loop then reaps under a second one. A request that completes while it
    /// is submitted is woken like any other and finishes on its next poll.
    ///
    /// # Safety
    /// Every address in `entry` must point into the buffer held by `hold` (heap memory that
    /// stays put while `hold` lives), and its fd must be fixed file 0. A READ_FIXED / WRITE_FIXED
    /// entry must name buffer 0 and lie inside the arena [`Ring::fixed_buffers`] returned.
    pub(crate) async unsafe fn run(&self, entry: squeue::Entry, hold: Hold) -> (i32, Hold) {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut start = Some((entry, hold, permit));
        let mut guard: Option<SlotGuard<'_>> = None;
        poll_fn(|cx| {
            if let Some(g) = guard.as_mut() {
                return g.poll(cx);
            }
            let (entry, hold, permit) = start.take().expect("polled again after it finished");
            let (idx, submit_now) = {
                let mut core = self.core.lock();
                // Checked under the lock the reaper's exit path also takes, so no request can
                // slip in after the final drain.
                if self.reaper_gone.load(Ordering::Acquire) {
                    return Poll::Ready((-libc::ESHUTDOWN, hold));
                }
                permit.forget();
                let idx = core.free.pop().expect("a permit guarantees a free slot");
                core.slots[idx] = Slot::Waiting {
                    waker: Some(cx.waker().clone()),
                    hold,
                };
                core.in_flight += 1;
                core.in_kernel += 1;
                // SAFETY: SubmissionQueues are only created while holding `core`, so this is
                // the only one; it is dropped (publishing the tail) before the lock is released.
                let mut sq = unsafe { self.uring.submission_shared() };
                let entry = entry.user_data(idx as u64);
                // SAFETY: the buffer `entry` points to lives in slot `idx` until its completion
                // is reaped (a dropped future only marks the slot abandoned), per this fn's
                // contract.
                let pushed = unsafe { sq.push(&entry) };
                // In-flight requests are bounded by the slot count = SQ size, so there is room.
                assert!(
                    pushed.is_ok(),
                    "submission queue full despite the in-flight bound"
                );
                drop(sq);
                let go = core.plugs == 0 && !core.submitting;
                if go {
                    core.submitting = true;
                    self.quiet_begin(&mut core);
                }
                (idx, go)
            };
            let g = guard.insert(SlotGuard {
                ring: self,
                idx,
                finished: false,
            });
            if submit_now {
                if let Some(done) = self.submit_loop(Some(idx)) {
                    // Finished inside its own io_uring_enter: the result is ours already.
                    g.finished = true;
                    return Poll::Ready(done);
                }
            }
            // The waker is in the slot: a completion reaped by anyone wakes the task, and the
            // next poll takes the result.
            Poll::Pending
        })
        .await
    }

    /// Hold submissions: requests started while the plug lives only queue their entries; dropping
    /// the last plug submits them all with one `io_uring_enter`.
    pub(crate) fn plug(&self) -> Plug<'_> {
        self.core.lock().plugs += 1;
        Plug { ring: self }
    }

    /// [`Ring::plug`] that owns a reference to the ring (for a device's callers, who hold it
    /// across their own polls rather than inside one borrow).
    pub(crate) fn plug_owned(self: &Arc<Self>) -> OwnedPlug {
        self.core.lock().plugs += 1;
        OwnedPlug { ring: self.clone() }
    }

    /// The end of a plug: the last one to go submits what was queued.
    fn unplug(&self) {
        let last = {
            let mut core = self.core.lock();
            core.plugs -= 1;
            core.plugs == 0
        };
        if last {
            self.submit_pending();
        }
    }

    /// `io_uring_enter` calls made to submit so far.
    pub(crate) fn submit_calls(&self) -> u64 {
        self.submit_calls.load(Ordering::Relaxed)
    }

    /// Entries in the submission queue the kernel has not taken yet. Callers hold `core`.
    fn queued(&self, _core: &Core) -> usize {
        // SAFETY: SubmissionQueues are only created while holding `core` (the argument proves
        // the caller holds it); this one only reads the head and tail.
        unsafe { self.uring.submission_shared() }.len()
    }

    /// One `io_uring_enter` for everything queued, unless nothing is, a plug holds it, or
    /// another thread is already submitting (it takes these entries on its next round). Loops
    /// until the kernel took every entry, so nothing queued is left behind when it returns;
    /// reaps the completion queue after each call and wakes the finished requests.
    fn submit_pending(&self) {
        {
            let mut core = self.core.lock();
            if core.plugs > 0 || core.submitting || self.queued(&core) == 0 {
                return;
            }
            core.submitting = true;
            self.quiet_begin(&mut core);
        }
        self.submit_loop(None);
    }

    /// The submit loop of [`Ring::submit_pending`], entered with `submitting` set and a
    /// [`Ring::quiet_begin`] done by the caller. The check that the queue is empty and the end
    /// of `submitting` happen under one take of the lock: an entry another thread queues
    /// meanwhile (leaving it to us, since we are submitting) is never stranded. If the request
    /// in slot `mine` finished meanwhile, its slot is freed under that same lock and its result
    /// returned (its waker was still woken, as for any completion).
    fn submit_loop(&self, mine: Option<usize>) -> Option<(i32, Hold)> {
        let mut wakers = Wakers::new();
        let mut done = false;
        let mut last = None;
        for _ in 0..1000 {
            self.submit_calls.fetch_add(1, Ordering::Relaxed);
            match self.uring.submit() {
                Ok(_) => {}
                Err(e) if is_transient(&e) => std::thread::yield_now(),
                Err(_) => break,
            }
            // The kernel stops short of the whole queue only in rare cases (no memory for a
            // request; a bad entry on kernels without SUBMIT_ALL): what it left is still ours,
            // as is whatever other threads queued meanwhile.
            let mut core = self.core.lock();
            self.reap_locked(&mut core, &mut wakers);
            if core.plugs > 0 || self.queued(&core) == 0 {
                done = true;
                last = Some(core);
                break;
            }
        }
        let mut core = last.unwrap_or_else(|| self.core.lock());
        core.submitting = false;
        self.quiet_end(&mut core, &mut wakers);
        let out = mine.and_then(|idx| take_done(&mut core, idx));
        drop(core);
        if out.is_some() {
            self.permits.add_permits(1);
        }
        if !done {
            // The entries stay in the queue; the next submit (any request's or the reaper's)
            // takes them. Nothing is freed, so the kernel can never see a dangling buffer.
            self.notify.notify_one();
        }
        for w in wakers {
            w.wake();
        }
        out
    }

    /// Someone will reap the completion queue after this (in [`Ring::quiet_end`]): the kernel
    /// need not signal the eventfd meanwhile.
    fn quiet_begin(&self, core: &mut Core) {
        core.quiet += 1;
        if core.quiet == 1 {
            // SAFETY: CompletionQueues are only created while holding `core`.
            unsafe { self.uring.completion_shared() }.disable_eventfd();
        }
    }

    /// The end of a [`Ring::quiet_begin`]. The last one switches the eventfd back on and then
    /// reaps: a completion posted while it was off is reaped here, one posted later signals it.
    /// (The kernel stores the queue tail, then a full barrier, then reads the flag; this side
    /// stores the flag, a full barrier, then reads the tail: one of the two sees the other.)
    fn quiet_end(&self, core: &mut Core, wakers: &mut Wakers) {
        core.quiet -= 1;
        if core.quiet == 0 {
            // SAFETY: CompletionQueues are only created while holding `core`.
            unsafe { self.uring.completion_shared() }.enable_eventfd();
            fence(Ordering::SeqCst);
        }
        self.reap_locked(core, wakers);
    }

    /// Move every posted completion into its slot; the wakers of finished requests go to
    /// `wakers` (woken by the caller once `core` is released). Returns how many were reaped.
    fn reap_locked(&self, core: &mut Core, wakers: &mut Wakers) -> usize {
        // SAFETY: CompletionQueues are only created while holding `core`; dropping it (at the
        // end of this fn) hands the consumed entries back to the kernel.
        let cq = unsafe { self.uring.completion_shared() };
        let mut freed = 0;
        let mut reaped = 0;
        for cqe in cq {
            reaped += 1;
            let idx = cqe.user_data() as usize;
            let Some(slot) = core.slots.get_mut(idx) else {
                continue;
            };
            match std::mem::replace(slot, Slot::Free) {
                Slot::Waiting { waker, hold } => {
                    *slot = Slot::Done {
                        res: cqe.result(),
                        hold,
                    };
                    wakers.extend(waker);
                }
                Slot::Abandoned { .. } => {
                    core.free.push(idx);
                    core.in_flight -= 1;
                    freed += 1;
                }
                other => *slot = other,
            }
        }
        if freed > 0 {
            self.permits.add_permits(freed);
        }
        core.in_kernel -= reaped;
        reaped
    }

    /// Reap and wake; returns whether the queue is busy: completions arrived while others are
    /// still in the kernel.
    fn reap(&self) -> bool {
        let mut wakers = Wakers::new();
        let busy = {
            let mut core = self.core.lock();
            let reaped = self.reap_locked(&mut core, &mut wakers);
            reaped > 0 && core.in_kernel > 0
        };
        for w in wakers {
            w.wake();
        }
        busy
    }

    fn in_flight(&self) -> usize {
        self.core.lock().in_flight
    }

    /// Entries in the submission queue that the kernel has not taken yet.
    #[cfg(test)]
    pub(crate) fn queued_for_test(&self) -> usize {
        let core = self.core.lock();
        self.queued(&core)
    }

    /// (requests holding a slot, requests whose completion is not reaped yet)
    #[cfg(test)]
    pub(crate) fn counts_for_test(&self) -> (usize, usize) {
        let core = self.core.lock();
        (core.in_flight, core.in_kernel)
    }

    /// Act as a submitter at work: the eventfd goes off until [`Ring::quiet_end_for_test`].
    #[cfg(test)]
    pub(crate) fn quiet_begin_for_test(&self) {
        self.quiet_begin(&mut self.core.lock());
    }

    #[cfg(test)]
    pub(crate) fn quiet_end_for_test(&self) {
        let mut wakers = Wakers::new();
        self.quiet_end(&mut self.core.lock(), &mut wakers);
        for w in wakers {
            w.wake();
        }
    }

    /// Completions posted and not reaped yet.
    #[cfg(test)]
    pub(crate) fn posted_for_test(&self) -> usize {
        let _core = self.core.lock();
        // SAFETY: CompletionQueues are only created while holding `core`.
        unsafe { self.uring.completion_shared() }.len()
    }

    /// Whether the kernel would signal the eventfd for a new completion now.
    #[cfg(test)]
    pub(crate) fn eventfd_enabled_for_test(&self) -> bool {
        let _core = self.core.lock();
        // SAFETY: CompletionQueues are only created while holding `core`.
        !unsafe { self.uring.completion_shared() }.eventfd_disabled()
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Abandoned requests may still be in the kernel (e.g. the runtime stopped the reaper):
        // their buffers die with us, so wait for them first.
        while self.in_flight() > 0 {
            match self.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(_) => break,
            }
            self.reap();
        }
    }
}

/// Held submissions (see [`Ring::plug`]); the last one dropped submits what was queued.
pub(crate) struct Plug<'a> {
    ring: &'a Ring,
}

impl Drop for Plug<'_> {
    fn drop(&mut self) {
        self.ring.unplug();
    }
}

/// Held submissions, like [`Plug`], owning a reference to the ring.
pub(crate) struct OwnedPlug {
    ring: Arc<Ring>,
}

impl Drop for OwnedPlug {
    fn drop(&mut self) {
        self.ring.unplug();
    }
}

/// If slot `idx` holds a finished request, free the slot (its permit is the caller's to give
/// back once the lock is released) and return the result.
fn take_done(core: &mut Core, idx: usize) -> Option<(i32, Hold)> {
    let slot = &mut core.slots[idx];
    if !matches!(slot, Slot::Done { .. }) {
        return None;
    }
    let Slot::Done { res, hold } = std::mem::replace(slot, Slot::Free) else {
        unreachable!("checked Done above")
    };
    core.free.push(idx);
    core.in_flight -= 1;
    Some((res, hold))
}

/// The request's claim on its slot; dropping it early abandons the slot to the reaper.
struct SlotGuard<'a> {
    ring: &'a Ring,
    idx: usize,
    finished: bool,
}

impl SlotGuard<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<(i32, Hold)> {
        let mut core = self.ring.core.lock();
        let slot = &mut core.slots[self.idx];
        match slot {
            Slot::Waiting { waker, .. } => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Slot::Done { .. } => {
                let done = take_done(&mut core, self.idx).expect("matched Done above");
                self.finished = true;
                drop(core);
                self.ring.permits.add_permits(1);
                Poll::Ready(done)
            }
            Slot::Free | Slot::Abandoned { .. } => {
                panic!("slot {} lost while its request was waiting", self.idx)
            }
        }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut core = self.ring.core.lock();
        let slot = &mut core.slots[self.idx];
        match std::mem::replace(slot, Slot::Free) {
            Slot::Waiting { hold, .. } => *slot = Slot::Abandoned { _hold: hold },
            Slot::Done { .. } => {
                core.free.push(self.idx);
                core.in_flight -= 1;
                drop(core);
                self.ring.permits.add_permits(1);
            }
            other => *slot = other,
        }
    }
}

/// Dropped with the reaper task, also when its runtime shuts down under it: completes what the
/// kernel still has synchronously and makes later requests fail with ESHUTDOWN.
struct ReaperExit(Arc<Ring>);

impl Drop for ReaperExit {
    fn drop(&mut self) {
        let ring = &self.0;
        {
            let _core = ring.core.lock();
            ring.reaper_gone.store(true, Ordering::Release);
        }
        while ring.core.lock().in_kernel > 0 {
            match ring.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(_) => break,
            }
            ring.reap();
        }
    }
}

/// The reaper task. Its exit guard exists from the start, not from its first poll: submitters
/// reap their own completions, so a runtime can shut down without ever having run the reaper,
/// and dropping the never-polled task must still make later requests fail with ESHUTDOWN
/// (before, such requests waited for a reaper that was gone: a hang).
fn reaper(ring: Arc<Ring>, afd: AsyncFd<OwnedFd>) -> impl std::future::Future<Output = ()> {
    let exit = ReaperExit(ring.clone());
    async move {
        let _exit = exit;
        reap_loop(ring, afd).await
    }
}

async fn reap_loop(ring: Arc<Ring>, afd: AsyncFd<OwnedFd>) {
    loop {
        if ring.closing.load(Ordering::Acquire) && ring.in_flight() == 0 {
            return;
        }
        // Parked only while the eventfd is on: `quiet_end` switched it on and reaped after.
        tokio::select! {
            ready = afd.readable() => match ready {
                // Edge-triggered: clearing before reaping cannot lose a completion, since any
                // completion after the reap signals the eventfd again. The counter is never
                // read; it cannot overflow in practice (2^64 completions).
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => return,
            },
            _ = ring.notify.notified() => {}
        }
        ring.quiet_begin(&mut ring.core.lock());
        while ring.reap() {
            // The queue is busy: let the woken futures run first, and submit whatever they
            // queue with one syscall when the plug goes; then look again, with the eventfd
            // still off. (At low depth this would only add latency.)
            let _plug = ring.plug();
            tokio::task::yield_now().await;
        }
        ring.submit_pending();
        let mut wakers = Wakers::new();
        ring.quiet_end(&mut ring.core.lock(), &mut wakers);
        for w in wakers {
            w.wake();
        }
    }
}
