//! Load generator for `cairn bench engine`: runs one workload (random or sequential, read or
//! write, any request size and queue depth) against a `VdiskHandle` for a fixed time and reports
//! IOPS, bandwidth and latency percentiles. Queue depth N = N concurrent requesters, each with
//! its own buffer (no allocation per request beyond what the engine itself does), all driven by
//! one task.
//!
//! It only measures; it never checks data (correctness lives in the tests).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::handle::VdiskHandle;
use crate::placement::mix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub pattern: Pattern,
    /// Bytes per request (a multiple of 4 KiB).
    pub request_bytes: u64,
    pub queue_depth: u32,
    pub duration: Duration,
    /// Requests stay inside [0, region_bytes) of the disk (pre-write it for read tests).
    pub region_bytes: u64,
    /// Flush after every this many writes per requester (0 = never).
    pub flush_every: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchResult {
    pub ops: u64,
    pub bytes: u64,
    pub secs: f64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
}

/// Run `w` against `h`. Errors from the engine abort the run.
pub async fn run(h: &VdiskHandle, w: &Workload) -> Result<BenchResult> {
    let bs = w.request_bytes;
    if bs == 0 || !bs.is_multiple_of(crate::BLOCK_BYTES) || bs > crate::MAX_IO_BYTES {
        return Err(EngineError::invalid(
            "request size must be a multiple of 4 KiB, at most 64 MiB",
        ));
    }
    if w.queue_depth == 0 || w.queue_depth > 1024 {
        return Err(EngineError::invalid("queue depth must be 1..=1024"));
    }
    let region = w.region_bytes.min(h.size_bytes()) / bs * bs;
    if region < bs {
        return Err(EngineError::invalid("region smaller than one request"));
    }
    let slots = region / bs;
    let start = Instant::now();
    let deadline = start + w.duration;
    // Every requester is driven by one task, as a VM queue's driver and an NBD connection
    // drive their requests (and as fio's one job drives its queue): a burst of completions
    // wakes one task, not one per requester, so the runtime has no reason to hand requesters
    // to another worker (with one task per requester, 3x the voluntary context switches per
    // I/O at queue depth 32).
    let h = h.clone();
    let w = w.clone();
    let driver = tokio::spawn(async move {
        let requesters = (0..w.queue_depth).map(|q| requester(&h, &w, q, slots, deadline));
        let mut all: Vec<u32> = Vec::new();
        for lats in drive_all(requesters.collect()).await {
            all.extend(lats?);
        }
        Ok::<_, EngineError>(all)
    });
    let mut all = driver
        .await
        .map_err(|e| EngineError::io(format!("bench task: {e}")))??;
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all[i])
    };
    let ops = all.len() as u64;
    Ok(BenchResult {
        ops,
        bytes: ops * bs,
        secs,
        iops: ops as f64 / secs,
        mib_per_s: (ops * bs) as f64 / secs / (1u64 << 20) as f64,
        lat_p50_us: pct(0.5),
        lat_p99_us: pct(0.99),
    })
}

/// Drive `futs` to completion in the calling task; returns their outputs in order. Only futures
/// that were woken are polled again, and a future woken while the task is polling them (one
/// request's completion found by another's submit) is polled in the same pass without waking
/// the task. `FuturesUnordered` instead wakes its own task whenever it polled every future once
/// (at queue depth 1, after every request): tokio then queues the task as yielded and wakes
/// another worker thread for it, one more sleep and wake-up per I/O.
pub async fn drive_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    struct Ready {
        woken: Mutex<Vec<usize>>,
        /// The task is in its pass: it looks at `woken` again before it returns.
        polling: AtomicBool,
        task: AtomicWaker,
    }
    struct One {
        ready: Arc<Ready>,
        idx: usize,
    }
    impl Wake for One {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.ready.woken.lock().push(self.idx);
            if !self.ready.polling.load(Ordering::SeqCst) {
                self.ready.task.wake();
            }
        }
    }
    let n = futs.len();
    let ready = Arc::new(Ready {
        woken: Mutex::new((0..n).collect()),
        polling: AtomicBool::new(false),
        task: AtomicWaker::new(),
    });
    let wakers: Vec<Waker> = (0..n)
        .map(|idx| {
            Waker::from(Arc::new(One {
                ready: ready.clone(),
                idx,
            }))
        })
        .collect();
    let mut futs: Vec<Option<Pin<Box<F>>>> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = (0..n).map(|_| None).collect();
    let mut left = n;
    let mut batch = Vec::with_capacity(n);
    poll_fn(|cx| {
        ready.task.register(cx.waker());
        ready.polling.store(true, Ordering::SeqCst);
        // Bounded, so futures that keep waking themselves (tokio's budget ran out) cannot hold
        // the thread: past it the task is woken and yields.
        let mut polls = 0;
        loop {
            std::mem::swap(&mut *ready.woken.lock(), &mut batch);
            if batch.is_empty() {
                ready.polling.store(false, Ordering::SeqCst);
                // A wake between the swap and the store saw `polling` set and left it to us.
                if ready.woken.lock().is_empty() {
                    break;
                }
                ready.polling.store(true, Ordering::SeqCst);
                continue;
            }
            if polls > 4 * n {
                ready.woken.lock().append(&mut batch);
                ready.polling.store(false, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                break;
            }
            for idx in batch.drain(..) {
                let Some(f) = futs[idx].as_mut() else {
                    continue;
                };
                polls += 1;
                if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&wakers[idx])) {
                    out[idx] = Some(v);
                    futs[idx] = None;
                    left -= 1;
                }
            }
        }
        if left == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// One requester of `run`: I/O after I/O until `deadline`; returns each one's latency (µs).
async fn requester(
    h: &VdiskHandle,
    w: &Workload,
    q: u32,
    slots: u64,
    deadline: Instant,
) -> Result<Vec<u32>> {
    let bs = w.request_bytes;
    let mut buf = vec![0u8; bs as usize];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (mix64(u64::from(q) ^ i as u64) & 0xff) as u8;
    }
    let mut lats: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut x = mix64(u64::from(q) + 1);
    // Sequential requesters start at evenly spaced points of the region.
    let mut seq = slots * u64::from(q) / u64::from(w.queue_depth);
    let mut writes = 0u32;
    while Instant::now() < deadline {
        let slot = match w.pattern {
            Pattern::RandRead | Pattern::RandWrite => {
                x = mix64(x);
                x % slots
            }
            Pattern::SeqRead | Pattern::SeqWrite => {
                seq = (seq + 1) % slots;
                seq
            }
        };
        let t = Instant::now();
        match w.pattern {
            Pattern::RandRead | Pattern::SeqRead => {
                // The engine's own verified buffers, as the NBD server takes them.
                let d = h.read_owned(slot * bs, bs).await?;
                std::hint::black_box(&d);
            }
            Pattern::RandWrite | Pattern::SeqWrite => {
                h.write(slot * bs, &buf).await?;
                writes += 1;
                if w.flush_every > 0 && writes.is_multiple_of(w.flush_every) {
                    h.flush().await?;
                }
            }
        }
        lats.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    Ok(lats)
}

/// Fill [0, len) of the disk with non-zero data in 1 MiB writes, then flush, so reads measure
/// real I/O (a never-written block reads as zeros without touching any disk).
pub async fn prefill(h: &VdiskHandle, len: u64) -> Result<()> {
    let step = crate::CHUNK_BYTES;
    let buf: Arc<Vec<u8>> = Arc::new((0..step).map(|i| (mix64(i) & 0xff) as u8 | 1).collect());
    let end = len.min(h.size_bytes());
    let mut off = 0;
    while off < end {
        let n = step.min(end - off) as usize;
        h.write(off, &buf[..n]).await?;
        off += n as u64;
    }
    h.flush().await
}

#[cfg(test)]
mod tests {
    use super::drive_all;
    use futures::channel::oneshot;
    use parking_lot::Mutex;
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    /// Counts the wake-ups of the task driving `drive_all`.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    type Relay = Arc<Mutex<Option<oneshot::Sender<u32>>>>;

    /// Waits for its value, counts its polls, and once done sends `relay`'s value, if any.
    fn waiter(
        i: usize,
        rx: oneshot::Receiver<u32>,
        relay: Option<Relay>,
        polls: Arc<Vec<AtomicUsize>>,
    ) -> impl Future<Output = u32> {
        let mut rx = Some(rx);
        std::future::poll_fn(move |cx| {
            polls[i].fetch_add(1, Ordering::SeqCst);
            let r = rx.as_mut().expect("never polled after it finished");
            match Pin::new(r).poll(cx) {
                Poll::Ready(v) => {
                    rx = None;
                    if let Some(tx) = relay.as_ref().and_then(|r| r.lock().take()) {
                        tx.send(20).expect("the receiver waits");
                    }
                    Poll::Ready(v.expect("sent") + i as u32)
                }
                Poll::Pending => Poll::Pending,
            }
        })
    }

    #[test]
    fn drive_all_polls_only_woken_futures_and_never_wakes_its_own_task() {
        let polls: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        let (tx0, rx0) = oneshot::channel();
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        // Future 1, when done, sends future 2's value: a sibling woken while the driver polls,
        // which must be served in the same pass without waking the driver's task.
        let relay: Relay = Arc::new(Mutex::new(Some(tx2)));
        let futs = vec![
            waiter(0, rx0, None, polls.clone()),
            waiter(1, rx1, Some(relay), polls.clone()),
            waiter(2, rx2, None, polls.clone()),
        ];
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let counts = || -> Vec<usize> { polls.iter().map(|p| p.load(Ordering::SeqCst)).collect() };
        let wakes = || task.0.load(Ordering::SeqCst);

        let mut all = pin!(drive_all(futs));
        assert!(all.as_mut().poll(&mut cx).is_pending());
        assert_eq!(counts(), [1, 1, 1], "each polled once to start");
        assert_eq!(wakes(), 0, "nothing woke the task");

        tx0.send(0).expect("future 0 waits");
        assert_eq!(wakes(), 1, "a value for future 0 wakes the task");
        assert!(all.as_mut().poll(&mut cx).is_pending());
        assert_eq!(counts(), [2, 1, 1], "only the woken future is polled");

        tx1.send(10).expect("future 1 waits");
        assert_eq!(wakes(), 2);
        match all.as_mut().poll(&mut cx) {
            Poll::Ready(out) => assert_eq!(out, [0, 11, 22], "outputs in order"),
            Poll::Pending => panic!("future 2 was woken during the pass and not polled"),
        }
        assert_eq!(counts(), [2, 2, 2]);
        assert_eq!(wakes(), 2, "the driver never woke its own task");
    }

    #[test]
    fn drive_all_of_nothing_is_ready_at_once() {
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let mut none = pin!(drive_all(Vec::<std::future::Ready<u32>>::new()));
        assert_eq!(none.as_mut().poll(&mut cx), Poll::Ready(vec![]));
    }
}
