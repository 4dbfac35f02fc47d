//! Concurrent request execution for one virtio-blk queue whose backend blocks (files, the
//! engine): the queue thread walks chains and hands them to a fixed set of I/O lanes, each with
//! its own bounce buffer, which complete requests out of order (virtio allows that). Channels and
//! lanes are created once at activation; no allocation per request beyond the channel's
//! amortized blocks.

use super::blk::{BlkQueueHandler, Chain};
use super::{ActivateContext, ActiveQueue, QueueIrq, Worker};
use crate::backend::DiskBackend;
use crate::error::{io_err, Result};
use crate::memory::GuestMemoryMmap;
use crate::stats::DeviceCounters;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use virtio_queue::{Queue, QueueT};

/// Upper bound on lanes per queue.
pub const MAX_LANES: usize = 64;

struct Job {
    head: u16,
    chain: Chain,
    start: Instant,
}

/// Jobs from the dispatcher to the lanes. Idle lanes all wait on the condvar and a job wakes
/// exactly one of them (a receiver behind a mutex would wake a second lane per job: the one
/// waiting for the mutex). Capacity is the queue size, reserved once: in-flight requests never
/// exceed it, so pushing never allocates.
struct Jobs {
    state: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

impl Jobs {
    fn push(&self, job: Job) {
        self.state.lock().0.push_back(job);
        self.ready.notify_one();
    }

    /// The next job, or None once closed and drained.
    fn pop(&self) -> Option<Job> {
        let mut st = self.state.lock();
        loop {
            if let Some(j) = st.0.pop_front() {
                return Some(j);
            }
            if st.1 {
                return None;
            }
            self.ready.wait(&mut st);
        }
    }
}

/// Owned by the dispatcher: when it goes (the worker stopped), the lanes finish and exit.
struct CloseOnDrop(Arc<Jobs>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.state.lock().1 = true;
        self.0.ready.notify_all();
    }
}

/// A queue served by lanes.
pub struct Pool {
    dispatcher: Worker,
    lanes: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Stops the dispatcher (dropping the job sender) and joins the lanes.
    pub fn stop(&mut self) {
        self.dispatcher.stop();
        for l in self.lanes.drain(..) {
            let _ = l.join();
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Interrupts the guest (the queue's [`QueueIrq`]).
    irq: Box<dyn Fn() + Send + Sync>,
    mem: Arc<GuestMemoryMmap>,
    counters: Arc<DeviceCounters>,
}

impl Shared {
    fn add_used(&self, head: u16, len: u32, start: Instant) {
        let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters
            .latency_ns_total
            .fetch_add(elapsed, Ordering::Relaxed);
        let mut q = self.queue.lock();
        if q.add_used(&*self.mem, head, len).is_ok()
            && q.needs_notification(&*self.mem).unwrap_or(true)
        {
            drop(q);
            (self.irq)();
        }
    }
}

/// Hands every chain available to the lanes and re-arms guest notifications. A ring index that
/// points past what can be taken ends it after one more look (it never spins on it, as
/// [`BlkQueueHandler::process_queue`]).
fn dispatch(shared: &Shared, jobs: &Jobs, qindex: usize) {
    let mem = shared.mem.clone();
    let mut rearmed = false;
    loop {
        let mut took = false;
        let mut q = shared.queue.lock();
        if q.event_idx_enabled() {
            let _ = q.disable_notification(&*mem);
        }
        while let Some(chain) = q.pop_descriptor_chain(&*mem) {
            took = true;
            shared.counters.count_queue(qindex);
            let start = Instant::now();
            let head = chain.head_index();
            match Chain::walk(
                &mem,
                chain.map(|d| (d.addr().0, d.len(), d.is_write_only())),
            ) {
                Ok(chain) => {
                    drop(q);
                    jobs.push(Job { head, chain, start });
                    q = shared.queue.lock();
                }
                Err(_) => {
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    drop(q);
                    shared.add_used(head, 0, start);
                    q = shared.queue.lock();
                }
            }
        }
        if !took && rearmed {
            break;
        }
        if !q.event_idx_enabled() || !q.enable_notification(&*mem).unwrap_or(false) {
            break;
        }
        rearmed = true;
    }
}

/// Starts the dispatcher and `lanes` I/O threads for `aq`.
pub fn spawn(
    ctx: &ActivateContext,
    aq: ActiveQueue,
    backend: Arc<dyn DiskBackend>,
    serial: &str,
    counters: Arc<DeviceCounters>,
    lanes: usize,
) -> Result<Pool> {
    // In-flight requests never exceed the queue size, so that bounds the channel.
    let bound = usize::from(aq.queue.max_size());
    let irq: QueueIrq = aq.irq;
    let shared = Arc::new(Shared {
        queue: Mutex::new(aq.queue),
        irq: Box::new(move || irq.trigger()),
        mem: ctx.mem.clone(),
        counters: counters.clone(),
    });
    let jobs = Arc::new(Jobs {
        state: Mutex::new((VecDeque::with_capacity(bound), false)),
        ready: Condvar::new(),
    });
    let tx = CloseOnDrop(jobs.clone());
    let mut handles = Vec::new();
    for lane in 0..lanes {
        let mut handler =
            BlkQueueHandler::new(backend.clone(), ctx.mem.clone(), serial, counters.clone());
        let (rx, shared, seccomp, cpu) =
            (jobs.clone(), shared.clone(), ctx.seccomp, ctx.cpu.clone());
        let h = std::thread::Builder::new()
            .name(format!("{}-q{}-l{lane}", ctx.name, aq.index))
            .spawn(move || {
                let _cpu = cpu.enter();
                if seccomp && crate::seccomp::apply(crate::seccomp::ThreadKind::Device).is_err() {
                    return;
                }
                while let Some(job) = rx.pop() {
                    let len = handler.complete(&job.chain);
                    shared.add_used(job.head, len, job.start);
                }
            })
            .map_err(io_err("spawn blk lane"))?;
        handles.push(h);
    }
    let dshared = shared.clone();
    let qindex = usize::from(aq.index);
    let dispatcher = Worker::spawn(
        format!("{}-q{}", ctx.name, aq.index),
        ctx.seccomp,
        ctx.cpu.clone(),
        aq.notify,
        None,
        move |_| {
            dispatch(&dshared, &tx.0, qindex);
            true
        },
    )?;
    Ok(Pool {
        dispatcher,
        lanes: handles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    #[test]
    fn ring_index_past_the_queue_size_is_not_spun_on() {
        const QLEN: u16 = 16;
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        let vq = MockSplitQueue::new(&*mem, QLEN);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_event_idx(true);
        // The guest claims QLEN + 5 new chains: more than the ring holds, so none can be
        // taken, and the index stays "pending" however often the dispatcher re-arms.
        mem.write_obj(QLEN + 5, vq.avail_addr().unchecked_add(2))
            .unwrap();
        let shared = Shared {
            queue: Mutex::new(q),
            irq: Box::new(|| panic!("nothing completed, nothing to interrupt for")),
            mem: mem.clone(),
            counters: Arc::default(),
        };
        let jobs = Jobs {
            state: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
        };
        dispatch(&shared, &jobs, 0);
        assert!(
            jobs.state.lock().0.is_empty(),
            "no chain taken from a garbage index"
        );
        let uidx: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(uidx, 0);
    }
}
