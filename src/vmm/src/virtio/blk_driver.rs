//! The slots that run one virtio-blk queue's requests, and the long-lived task on the disk's
//! runtime that polls them, so a request costs no task spawn: the queue thread makes each
//! parsed request a future and puts it in a free slot, either polling it there for the first
//! time ([`Driver::start`]: the request reaches the engine, and its io_uring entry the kernel,
//! with no runtime worker woken) or leaving the first poll to the driver ([`Driver::hand`]).
//! What a request waits on wakes the slot's waker (made once, at the driver's start); the
//! driver task polls only the slots whose wakers fired. A queue has one driver per runtime
//! worker (requests are dealt round-robin), so the engine work of one queue still spreads over
//! the workers (a single driver per queue ran every request's engine work on one worker and
//! lost two thirds of the write rate).
//!
//! After each pass (every ready slot polled once) the driver calls the queue's `after_pass`
//! (virtio-blk publishes every completion of the pass with one interrupt); the queue thread
//! publishes what finished in its first polls itself. A driver yields to the runtime between
//! passes, so requests that keep waking themselves cannot starve others.
//!
//! A slot's future is only ever polled under the slot's lock, so the queue thread's first poll
//! and the driver's later ones never overlap; a wake that fires during the first poll makes the
//! driver wait for it and poll once more. It owns only scheduling: it never looks into a
//! request or guest memory. Dropping a request future (a driver that is gone, no free slot) is
//! how a request is refused; the future's own drop answers it.

use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::task::{Context, Wake, Waker};

/// A started request.
pub(super) type ReqFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the queue thread, the slot wakers and the driver task share.
pub(super) struct Driver {
    /// The running requests, one per slot; a future is polled only under its slot's lock.
    running: Box<[Mutex<Option<ReqFuture>>]>,
    /// Free slots, and whether the driver is gone (then nothing is started). Reserved to the
    /// slot count.
    free: Mutex<(Vec<usize>, bool)>,
    /// Slots whose wakers fired since the driver last looked, each listed at most once.
    ready: Mutex<Vec<usize>>,
    queued: Box<[AtomicBool]>,
    /// One waker per slot (they hold the driver weakly: no cycle).
    wakers: Box<[Waker]>,
    notify: tokio::sync::Notify,
    stop: AtomicBool,
    slots: usize,
}

impl Driver {
    /// A driver that runs at most `slots` requests at once.
    pub(super) fn new(slots: usize) -> Arc<Self> {
        let slots = slots.max(1);
        Arc::new_cyclic(|weak: &Weak<Driver>| Self {
            running: (0..slots).map(|_| Mutex::new(None)).collect(),
            free: Mutex::new(((0..slots).rev().collect(), false)),
            ready: Mutex::new(Vec::with_capacity(slots)),
            queued: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            wakers: (0..slots)
                .map(|idx| {
                    Waker::from(Arc::new(SlotWaker {
                        driver: weak.clone(),
                        idx,
                    }))
                })
                .collect(),
            notify: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            slots,
        })
    }

    /// Starts `fut` in a free slot and polls it for the first time on the calling thread
    /// (which must be inside the disk's runtime context); returns true if it finished in that
    /// poll (the caller publishes). A driver that is gone, or has no free slot (never with the
    /// queue's in-flight limit at or below the slot count), refuses it: the future is dropped
    /// here, unpolled, and its drop answers the request; that also counts as finished.
    pub(super) fn start(&self, fut: ReqFuture) -> bool {
        let Some((idx, mut slot)) = self.take_slot() else {
            drop(fut);
            return true;
        };
        let mut fut = fut;
        let mut cx = Context::from_waker(&self.wakers[idx]);
        if fut.as_mut().poll(&mut cx).is_ready() {
            drop(slot);
            self.free.lock().0.push(idx);
            return true;
        }
        *slot = Some(fut);
        false
    }

    /// Puts `fut` in a free slot for the driver to poll (its first poll runs on the runtime);
    /// refused like [`Driver::start`]. Returns true if refused (the caller publishes).
    pub(super) fn hand(&self, fut: ReqFuture) -> bool {
        let Some((idx, mut slot)) = self.take_slot() else {
            drop(fut);
            return true;
        };
        *slot = Some(fut);
        drop(slot);
        self.wake_slot(idx);
        false
    }

    /// A free slot, locked; None if there is none or the driver is gone.
    fn take_slot(&self) -> Option<(usize, parking_lot::MutexGuard<'_, Option<ReqFuture>>)> {
        let mut free = self.free.lock();
        if free.1 {
            return None;
        }
        let idx = free.0.pop()?;
        // Locked before the free list is let go: a driver that goes meanwhile waits for this
        // slot and then drops its future ([`Gone`]), so none is stranded in a slot.
        let slot = self.running[idx].lock();
        drop(free);
        Some((idx, slot))
    }

    /// Asks the driver to end once it has no request left (none may be started afterwards).
    pub(super) fn stop(&self) {
        self.stop.store(true, SeqCst);
        self.notify.notify_one();
    }

    fn wake_slot(&self, idx: usize) {
        if !self.queued[idx].swap(true, SeqCst) {
            self.ready.lock().push(idx);
            self.notify.notify_one();
        }
    }

    /// Polls slot `idx` if it holds a request; frees the slot if the request finished.
    fn poll_slot(&self, idx: usize) {
        let done = {
            let mut slot = self.running[idx].lock();
            let Some(f) = slot.as_mut() else {
                return;
            };
            let mut cx = Context::from_waker(&self.wakers[idx]);
            let done = f.as_mut().poll(&mut cx).is_ready();
            if done {
                *slot = None;
            }
            done
        };
        if done {
            self.free.lock().0.push(idx);
        }
    }

    fn idle(&self) -> bool {
        self.free.lock().0.len() == self.slots
    }
}

/// One slot's waker (made once per slot).
struct SlotWaker {
    driver: Weak<Driver>,
    idx: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(d) = self.driver.upgrade() {
            d.wake_slot(self.idx);
        }
    }
}

/// Marks the driver gone when its task ends or is dropped (the runtime shut down): requests
/// still in slots are dropped (answered by their own drop) and later starts are refused.
struct Gone<'a>(&'a Driver);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.free.lock().1 = true;
        for slot in self.0.running.iter() {
            let fut = slot.lock().take();
            drop(fut);
        }
    }
}

/// The driver task: polls woken slots, calls `after_pass` after each pass; returns once
/// stopped with no request left.
pub(super) async fn drive(d: Arc<Driver>, after_pass: impl Fn()) {
    let _gone = Gone(&d);
    let mut ready: Vec<usize> = Vec::with_capacity(d.slots);
    loop {
        std::mem::swap(&mut *d.ready.lock(), &mut ready);
        for &i in &ready {
            d.queued[i].store(false, SeqCst);
        }
        for i in ready.drain(..) {
            d.poll_slot(i);
        }
        after_pass();
        if !d.ready.lock().is_empty() {
            tokio::task::yield_now().await;
            continue;
        }
        if d.stop.load(SeqCst) && d.idle() {
            return;
        }
        d.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Requests are futures that wait for a oneshot: the first poll happens in `start`, the
    /// rest on the driver; a handed request is polled by the driver alone; stop ends the task
    /// only once every request finished; a gone driver refuses (drops) new requests.
    #[test]
    fn runs_requests_in_slots_and_ends_only_when_idle() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let d = Driver::new(8);
        let done = Arc::new(AtomicUsize::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        let passes2 = passes.clone();
        let task = rt.spawn(drive(d.clone(), move || {
            passes2.fetch_add(1, SeqCst);
        }));
        let polled = Arc::new(AtomicUsize::new(0));
        let mut senders = Vec::new();
        let _rt = rt.enter();
        // Finished in its first poll: reported so, and its slot is free again at once (all
        // eight below find one).
        assert!(d.start(Box::pin(async {})));
        // Handed over: the driver polls it to the end, and its slot comes free again.
        let (htx, hrx) = std::sync::mpsc::channel::<()>();
        assert!(!d.hand(Box::pin(async move {
            tokio::task::yield_now().await;
            let _ = htx.send(());
        })));
        assert_eq!(
            hrx.recv_timeout(std::time::Duration::from_secs(30)),
            Ok(()),
            "the driver never ran a handed request"
        );
        while !d.idle() {
            std::thread::yield_now();
        }
        for _ in 0..8 {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (done, polled) = (done.clone(), polled.clone());
            let fut: ReqFuture = Box::pin(async move {
                polled.fetch_add(1, SeqCst);
                let _ = rx.await;
                done.fetch_add(1, SeqCst);
            });
            assert!(!d.start(fut), "a waiting request must stay in its slot");
            senders.push(tx);
        }
        // Every first poll ran here, before the driver did anything.
        assert_eq!(polled.load(SeqCst), 8);
        // No free slot: refused (dropped unpolled), reported as finished.
        let (tx9, rx9) = tokio::sync::oneshot::channel::<()>();
        assert!(d.start(Box::pin(async move {
            let _ = rx9.await;
        })));
        assert!(tx9.is_closed(), "a request without a slot must be dropped");
        d.stop();
        // Stopped with requests running: the task must not end before they finish.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!task.is_finished(), "ended with requests running");
        assert_eq!(done.load(SeqCst), 0);
        for tx in senders {
            tx.send(()).unwrap();
        }
        rt.block_on(task).unwrap();
        assert_eq!(done.load(SeqCst), 8);
        assert!(passes.load(SeqCst) >= 1);
        // Gone: a started request is dropped at once (its sender sees the receiver closed).
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(d.start(Box::pin(async move {
            let _ = rx.await;
        })));
        assert!(tx.is_closed(), "a gone driver must refuse requests");
    }
}
