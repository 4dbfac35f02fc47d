//! virtio devices (1.x, modern) and the pieces they share: the device trait the PCI transport
//! drives, queue interrupts, and the per-queue I/O thread fed by an ioeventfd.

pub mod blk;
pub mod blk_async;
#[cfg(test)]
mod blk_async_tests;
mod blk_driver;
pub mod blk_pool;
#[cfg(test)]
mod blk_tests;
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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
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

/// Handle to a running I/O thread.
pub struct Worker {
    stop: EventFd,
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
        mut on_event: impl FnMut(bool) -> bool + Send + 'static,
    ) -> Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("worker stop eventfd"))?;
        let stop2 = stop.try_clone().map_err(io_err("clone eventfd"))?;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let _cpu = cpu.enter();
                if seccomp && crate::seccomp::apply(crate::seccomp::ThreadKind::Device).is_err() {
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
            thread: Some(thread),
        })
    }

    /// Stops and joins the thread.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
