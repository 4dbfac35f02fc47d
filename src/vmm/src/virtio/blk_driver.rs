//! The long-lived tasks that run one virtio-blk queue's requests on the disk's runtime, so a
//! request costs no task spawn: the queue thread drops each parsed request into a driver's inbox
//! and wakes the driver once per pass; the driver starts it as a future in one of its fixed
//! slots and polls only the slots whose wakers fired. Each slot's waker is made once, at the
//! driver's start. A queue has one driver per runtime worker (requests are dealt round-robin),
//! so the engine work of one queue still spreads over the workers (a single driver per queue
//! ran every request's engine work on one worker and lost two thirds of the write rate).
//!
//! After each pass (every ready slot polled once) the driver calls the queue's `after_pass`
//! (virtio-blk publishes every completion of the pass with one interrupt). A driver yields to
//! the runtime between passes, so requests that keep waking themselves cannot starve others.
//!
//! It owns only scheduling: it never looks into a job or guest memory. Dropping a job (a driver
//! that is gone, a slot table that is full) is how a job is refused; the job's own drop answers
//! it.

use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// A started request.
pub(super) type ReqFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the queue thread, the slot wakers and the driver task share.
pub(super) struct Driver<J> {
    /// Jobs handed over and not yet started, and whether the driver is gone (then nothing is
    /// accepted). Reserved to the slot count.
    inbox: Mutex<(Vec<J>, bool)>,
    /// Slots whose wakers fired since the driver last looked, each listed at most once.
    ready: Mutex<Vec<usize>>,
    queued: Box<[AtomicBool]>,
    notify: tokio::sync::Notify,
    stop: AtomicBool,
    slots: usize,
}

impl<J: Send + 'static> Driver<J> {
    /// A driver that runs at most `slots` jobs at once.
    pub(super) fn new(slots: usize) -> Arc<Self> {
        let slots = slots.max(1);
        Arc::new(Self {
            inbox: Mutex::new((Vec::with_capacity(slots), false)),
            ready: Mutex::new(Vec::with_capacity(slots)),
            queued: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            notify: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            slots,
        })
    }

    /// Hands `job` over; it starts after the next [`Driver::kick`]. A driver that is gone
    /// refuses it (the job is dropped here).
    pub(super) fn push(&self, job: J) {
        let mut inbox = self.inbox.lock();
        if inbox.1 {
            drop(inbox);
            drop(job);
            return;
        }
        inbox.0.push(job);
    }

    /// Wakes the driver for the jobs pushed since the last kick.
    pub(super) fn kick(&self) {
        self.notify.notify_one();
    }

    /// Asks the driver to end once it has no job left (none may be pushed afterwards).
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
}

/// One slot's waker (made once per slot).
struct SlotWaker<J> {
    driver: Arc<Driver<J>>,
    idx: usize,
}

impl<J: Send + 'static> Wake for SlotWaker<J> {
    fn wake(self: Arc<Self>) {
        self.driver.wake_slot(self.idx);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.driver.wake_slot(self.idx);
    }
}

/// Marks the driver gone when its task ends or is dropped (the runtime shut down): jobs still
/// in the inbox are dropped (answered by their own drop) and later pushes are refused.
struct Gone<'a, J>(&'a Driver<J>);

impl<J> Drop for Gone<'_, J> {
    fn drop(&mut self) {
        let left = {
            let mut inbox = self.0.inbox.lock();
            inbox.1 = true;
            std::mem::take(&mut inbox.0)
        };
        drop(left);
    }
}

/// The driver task: starts jobs with `start`, polls woken slots, calls `after_pass` after each
/// pass; returns once stopped with no job left.
pub(super) async fn drive<J: Send + 'static>(
    d: Arc<Driver<J>>,
    start: impl Fn(J) -> ReqFuture,
    after_pass: impl Fn(),
) {
    let _gone = Gone(&d);
    let wakers: Vec<Waker> = (0..d.slots)
        .map(|idx| {
            Waker::from(Arc::new(SlotWaker {
                driver: d.clone(),
                idx,
            }))
        })
        .collect();
    // Declared after the wakers' owner so running futures drop first (their drop may publish).
    let mut slots: Vec<Option<ReqFuture>> = (0..d.slots).map(|_| None).collect();
    let mut free: Vec<usize> = (0..d.slots).rev().collect();
    let mut jobs: Vec<J> = Vec::with_capacity(d.slots);
    let mut ready: Vec<usize> = Vec::with_capacity(d.slots);
    loop {
        // Woken slots first (their completions go out with this pass), then new jobs.
        std::mem::swap(&mut *d.ready.lock(), &mut ready);
        for &i in &ready {
            d.queued[i].store(false, SeqCst);
        }
        {
            let mut inbox = d.inbox.lock();
            std::mem::swap(&mut inbox.0, &mut jobs);
        }
        for job in jobs.drain(..) {
            match free.pop() {
                Some(i) => {
                    slots[i] = Some(start(job));
                    ready.push(i);
                }
                // Never with the queue's in-flight limit at or below the slot count.
                None => drop(job),
            }
        }
        for i in ready.drain(..) {
            let Some(f) = slots[i].as_mut() else {
                continue;
            };
            let mut cx = Context::from_waker(&wakers[i]);
            if let Poll::Ready(()) = f.as_mut().poll(&mut cx) {
                slots[i] = None;
                free.push(i);
            }
        }
        after_pass();
        let more = !d.ready.lock().is_empty() || !d.inbox.lock().0.is_empty();
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        if d.stop.load(SeqCst) && free.len() == d.slots {
            return;
        }
        d.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Jobs are futures that wait for a oneshot; completions are counted per pass; stop ends
    /// the task only once every job finished; a gone driver refuses (drops) new jobs.
    #[test]
    fn runs_jobs_in_slots_and_ends_only_when_idle() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let d: Arc<Driver<tokio::sync::oneshot::Receiver<()>>> = Driver::new(8);
        let done = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        let (done2, started2, passes2) = (done.clone(), started.clone(), passes.clone());
        let task = rt.spawn(drive(
            d.clone(),
            move |rx| {
                let done = done2.clone();
                let started = started2.clone();
                Box::pin(async move {
                    started.fetch_add(1, SeqCst);
                    let _ = rx.await;
                    done.fetch_add(1, SeqCst);
                })
            },
            move || {
                passes2.fetch_add(1, SeqCst);
            },
        ));
        let mut senders = Vec::new();
        for _ in 0..8 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            d.push(rx);
            senders.push(tx);
        }
        d.kick();
        d.stop();
        // Stopped with jobs running: the task must not end before they finish.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!task.is_finished(), "ended with jobs running");
        assert_eq!(done.load(SeqCst), 0);
        // Every job running before any may finish (under load the driver may not have run its
        // first pass yet): their ends then come in a later pass.
        for _ in 0..2000 {
            if started.load(SeqCst) == 8 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(started.load(SeqCst), 8, "the driver never started its jobs");
        for tx in senders {
            tx.send(()).unwrap();
        }
        rt.block_on(task).unwrap();
        assert_eq!(done.load(SeqCst), 8);
        assert!(passes.load(SeqCst) >= 2);
        // Gone: a pushed job is dropped at once (its sender sees the receiver closed).
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        d.push(rx);
        assert!(tx.is_closed(), "a gone driver must refuse jobs");
    }
}
