//! virtio devices (1.x, modern) and the pieces they share: the device trait the PCI transport
//! drives, queue interrupts, and the per-queue I/O thread fed by an ioeventfd (virtio-blk's
//! busy-polls its ring for a short, adaptive window after each request before it sleeps).

pub mod blk;
pub mod blk_async;
#[cfg(test)]
mod blk_async_tests;
pub mod blk_direct;
#[cfg(test)]
mod blk_direct_tests;
mod blk_driver;
pub mod blk_pool;
#[cfg(test)]
mod blk_tests;
pub mod blk_uring;
pub mod bridge_vlan;
pub mod console;
pub mod net;
pub mod pci;
pub mod rng;
pub mod tap;

use crate::error::{io_err, Result};
use crate::memory::GuestMemoryMmap;
use crate::pci::msix::{Msix, NO_VECTOR};
use crate::stats::{DeviceCounters, ThreadCpu};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// virtio device ids.
pub const TYPE_NET: u32 = 1;
/// Block device.
pub const TYPE_BLOCK: u32 = 2;
/// Console.
pub const TYPE_CONSOLE: u32 = 3;
/// Entropy source.
pub const TYPE_RNG: u32 = 4;

/// Feature bits common to all devices.
pub const F_VERSION_1: u64 = 1 << 32;
/// Indirect descriptors.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// Event index suppression.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// Sends a queue's used-buffer interrupt through its MSI-X vector.
#[derive(Clone)]
pub struct QueueIrq {
    /// The device's vectors.
    pub msix: Arc<Msix>,
    /// Vector chosen by the driver (NO_VECTOR = none).
    pub vector: u16,
    /// Counted in the device stats.
    pub counters: Arc<DeviceCounters>,
}

impl QueueIrq {
    /// Signals the guest.
    pub fn trigger(&self) {
        if self.vector != NO_VECTOR && self.msix.trigger(self.vector) {
            self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a device's threads run: under seccomp or not, and where their CPU time is counted.
#[derive(Clone)]
pub struct ThreadEnv {
    /// Install the device seccomp filter on each thread.
    pub seccomp: bool,
    /// CPU-time accounting for the VM's device threads.
    pub cpu: Arc<ThreadCpu>,
}

/// A queue handed to a device on activation.
pub struct ActiveQueue {
    /// Queue index.
    pub index: u16,
    /// The configured queue.
    pub queue: Queue,
    /// ioeventfd the driver kicks.
    pub notify: EventFd,
    /// Used-buffer interrupt.
    pub irq: QueueIrq,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// Features the driver accepted.
    pub features: u64,
    /// The enabled queues.
    pub queues: Vec<ActiveQueue>,
    /// Install seccomp on device threads.
    pub seccomp: bool,
    /// Name prefix for threads.
    pub name: String,
    /// Where device threads register for CPU-time accounting.
    pub cpu: Arc<ThreadCpu>,
}

/// A virtio device model, driven by the PCI transport.
pub trait VirtioDevice: Send {
    /// virtio device id.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (its length is the queue count).
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Offered features.
    fn features(&self) -> u64;
    /// Device-specific config read.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Device-specific config write (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<()>;
    /// Stops serving (joins threads); the device can be activated again afterwards.
    fn reset(&mut self);
    /// The device's counters.
    fn counters(&self) -> Arc<DeviceCounters>;
}

/// Reads a little-endian config blob at `offset` into `data` (zeros beyond the end).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o + i))
            .copied()
            .unwrap_or(0);
    }
}

/// Longest time a polled queue thread keeps looking at its ring after its last request before
/// it sleeps (QEMU's iothread default, `poll-max-ns`, is the same 32 us).
pub const POLL_MAX: Duration = Duration::from_micros(32);
/// Where a grown poll window starts.
const POLL_START: Duration = Duration::from_micros(4);

/// A queue that a [`Worker`] busy-polls between guest notifications
/// ([`Worker::spawn_polled`]). While the thread polls, the guest's notifications stay off: a
/// guest that adds requests then does not exit to kick, and the thread finds them without a
/// wake-up.
pub trait PolledQueue: Send + 'static {
    /// Serves every request available now, leaving guest notifications off; returns whether
    /// it took any (a pass that took none ends the polling: the ring's index may be garbage).
    fn serve(&mut self) -> bool;
    /// Whether the guest made requests available that `serve` has not taken (a cheap look at
    /// the ring's index).
    fn pending(&mut self) -> bool;
    /// Turns guest notifications back on before the thread sleeps; true if requests arrived
    /// in between (the thread then serves them instead of sleeping).
    fn arm(&mut self) -> bool;
    /// A descriptor that becomes readable when the queue has completions of its own to
    /// collect (an io_uring's eventfd); the thread sleeps on it too. `serve` collects them
    /// and `pending` reports them.
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }
    /// Called just before the thread sleeps: clears the completion descriptor and says
    /// whether completions are ready after all (the thread then serves instead of sleeping).
    fn settle(&mut self) -> bool {
        false
    }
}

/// How long a polled queue thread polls, adapted like QEMU's adaptive polling: a guest that
/// comes back soon after the window closed grows it (up to [`POLL_MAX`]); one that comes back
/// later than that shrinks it, down to no polling, so a slow or idle guest costs no spinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    ns: u64,
    max: u64,
}

impl PollWindow {
    /// A window that may grow to `max`, starting there.
    pub fn new(max: Duration) -> Self {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Self { ns: max, max }
    }

    /// The current window.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.ns)
    }

    /// The guest came back `idle` after the last request was served (polling included) and
    /// had to kick.
    pub fn woke_after(&mut self, idle: Duration) {
        let idle = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let start = u64::try_from(POLL_START.as_nanos()).unwrap_or(0);
        if idle <= self.ns {
            // The kick came in the window's last moments: the window is right.
        } else if idle > self.max {
            self.ns /= 2;
            if self.ns < start {
                self.ns = 0;
            }
        } else {
            self.ns = (self.ns * 2).clamp(start, self.max);
        }
    }
}

/// Handle to a running I/O thread.
pub struct Worker {
    stop: EventFd,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Spawns a thread that calls `on_event(false)` when `notify` fires and `on_event(true)` when
    /// `extra` (e.g. a tap fd) is readable, until stopped. `on_event` returns whether `extra`
    /// should keep being watched (false while the device cannot take more input, e.g. no rx
    /// buffers; the next kick re-arms it).
    pub fn spawn(
        name: String,
        seccomp: bool,
        cpu: Arc<ThreadCpu>,
        notify: EventFd,
        extra: Option<RawFd>,
        on_event: impl FnMut(bool) -> bool + Send + 'static,
    ) -> Result<Worker> {
        let env = ThreadEnv { seccomp, cpu };
        Self::spawn_with(name, env, notify, extra, Arc::default(), on_event)
    }

    /// [`Worker::spawn`] with the flag [`Worker::stop`] sets before it signals the thread
    /// (a polling thread reads it to leave its poll loop).
    fn spawn_with(
        name: String,
        env: ThreadEnv,
        notify: EventFd,
        extra: Option<RawFd>,
        stopping: Arc<AtomicBool>,
        mut on_event: impl FnMut(bool) -> bool + Send + 'static,
    ) -> Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("worker stop eventfd"))?;
        let stop2 = stop.try_clone().map_err(io_err("clone eventfd"))?;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let _cpu = env.cpu.enter();
                if env.seccomp && crate::seccomp::apply(crate::seccomp::ThreadKind::Device).is_err()
                {
                    return;
                }
                // Serve anything queued before the first kick.
                let mut watch_extra = on_event(false);
                let mut fds = [
                    libc::pollfd {
                        fd: notify.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stop2.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: extra.unwrap_or(-1),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                loop {
                    // SAFETY: `fds` is a valid array of pollfd for its whole length; negative fds are ignored by poll.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                    if n < 0 {
                        continue;
                    }
                    if fds[1].revents != 0 {
                        return;
                    }
                    if fds[0].revents != 0 {
                        let _ = notify.read();
                        watch_extra = on_event(false);
                    }
                    if fds[2].revents != 0 {
                        watch_extra = on_event(true);
                    }
                    fds[2].fd = if watch_extra { extra.unwrap_or(-1) } else { -1 };
                    fds[2].revents = 0;
                }
            })
            .map_err(io_err("spawn device thread"))?;
        Ok(Worker {
            stop,
            stopping,
            thread: Some(thread),
        })
    }

    /// Spawns a thread that serves `queue` on each kick of `notify` and then polls it for a
    /// while ([`PollWindow`], at most `poll_max`) before sleeping again, until stopped.
    pub fn spawn_polled(
        name: String,
        env: ThreadEnv,
        notify: EventFd,
        poll_max: Duration,
        mut queue: impl PolledQueue,
    ) -> Result<Worker> {
        let stopping = Arc::new(AtomicBool::new(false));
        let stopping2 = stopping.clone();
        let mut window = PollWindow::new(poll_max);
        // None until the first pass (the one before any kick), which adapts nothing.
        let mut idle_since: Option<Instant> = None;
        let extra = queue.completion_fd();
        Self::spawn_with(name, env, notify, extra, stopping, move |completions| {
            // Only a kick tells how long the guest stayed away.
            if let (Some(t), false) = (idle_since, completions) {
                window.woke_after(t.elapsed());
            }
            idle_since = Some(serve_and_poll(&mut queue, &window, &stopping2));
            extra.is_some()
        })
    }

    /// Stops and joins the thread.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `queue`, polls it for `window`, serves again whatever came, and so on, until the window
/// passes with nothing new and notifications are back on (or the worker is stopping). Returns
/// when the last request was served.
fn serve_and_poll(
    queue: &mut impl PolledQueue,
    window: &PollWindow,
    stopping: &AtomicBool,
) -> Instant {
    // Set when notifications were re-armed with requests pending: the next pass must take some,
    // else the ring's index is garbage and the thread sleeps rather than spin on it.
    let mut rearmed = false;
    loop {
        let took = queue.serve();
        let served = Instant::now();
        if stopping.load(Ordering::Acquire) {
            queue.arm();
            return served;
        }
        if !took {
            if rearmed || !queue.arm() {
                if queue.settle() {
                    continue;
                }
                return served;
            }
            rearmed = true;
            continue;
        }
        rearmed = false;
        let deadline = served + window.get();
        let mut found = false;
        while !found && Instant::now() < deadline {
            for _ in 0..32 {
                if queue.pending() {
                    found = true;
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if found {
            continue;
        }
        if !queue.arm() {
            if queue.settle() {
                continue;
            }
            return served;
        }
        rearmed = true;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod poll_tests {
    use super::*;

    /// A queue whose guest adds `more` requests one at a time while the thread polls, and whose
    /// ring index may be garbage (always pending, nothing to take).
    struct Fake {
        more: usize,
        garbage: bool,
        serves: usize,
        arms: usize,
    }

    impl PolledQueue for Fake {
        fn serve(&mut self) -> bool {
            self.serves += 1;
            !self.garbage
        }
        fn pending(&mut self) -> bool {
            if self.garbage {
                return true;
            }
            if self.more > 0 {
                self.more -= 1;
                return true;
            }
            false
        }
        fn arm(&mut self) -> bool {
            self.arms += 1;
            self.garbage
        }
    }

    #[test]
    fn polling_serves_what_arrives_then_arms_once() {
        let mut q = Fake {
            more: 3,
            garbage: false,
            serves: 0,
            arms: 0,
        };
        let w = PollWindow::new(Duration::from_millis(1));
        serve_and_poll(&mut q, &w, &AtomicBool::new(false));
        // The first pass plus one per request found while polling; the last window expires
        // (it sees nothing more) and notifications are re-armed once.
        assert_eq!((q.serves, q.arms), (4, 1));
    }

    #[test]
    fn a_garbage_ring_index_is_not_spun_on() {
        let mut q = Fake {
            more: 0,
            garbage: true,
            serves: 0,
            arms: 0,
        };
        let w = PollWindow::new(Duration::from_millis(1));
        serve_and_poll(&mut q, &w, &AtomicBool::new(false));
        assert_eq!(
            (q.serves, q.arms),
            (2, 1),
            "one more look after re-arming, then sleep"
        );
    }

    #[test]
    fn a_stopping_worker_stops_polling() {
        let mut q = Fake {
            more: 1000,
            garbage: false,
            serves: 0,
            arms: 0,
        };
        let w = PollWindow::new(Duration::from_millis(1));
        serve_and_poll(&mut q, &w, &AtomicBool::new(true));
        assert_eq!((q.serves, q.arms), (1, 1));
    }

    #[test]
    fn window_grows_for_a_quick_guest_and_shrinks_to_nothing_for_a_slow_one() {
        let us = Duration::from_micros;
        let mut w = PollWindow::new(us(32));
        assert_eq!(w.get(), us(32));
        // Kicks that come long after the window: halve, then stop polling below the start.
        for _ in 0..3 {
            w.woke_after(us(1000));
        }
        assert_eq!(w.get(), us(4));
        w.woke_after(us(1000));
        assert_eq!(w.get(), Duration::ZERO);
        // A kick soon after the window closed: grow (from the start size, then doubling).
        w.woke_after(us(10));
        assert_eq!(w.get(), us(4));
        w.woke_after(us(10));
        assert_eq!(w.get(), us(8));
        w.woke_after(us(20));
        assert_eq!(w.get(), us(16));
        w.woke_after(us(20));
        assert_eq!(w.get(), us(32));
        w.woke_after(us(31));
        assert_eq!(w.get(), us(32), "never past the maximum");
    }
}
