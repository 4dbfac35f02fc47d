//! virtio-rng: fills device-writable buffers from the host's getrandom(2). Bounded per request.

use super::{ActivateContext, VirtioDevice, Worker, F_EVENT_IDX, F_VERSION_1, TYPE_RNG};
use crate::error::Result;
use crate::stats::DeviceCounters;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

/// Maximum bytes served per descriptor.
pub const MAX_BYTES_PER_DESC: usize = 4096;

/// The entropy device.
pub struct Rng {
    counters: Arc<DeviceCounters>,
    workers: Vec<Worker>,
}

impl Rng {
    /// A new device.
    pub fn new() -> Self {
        Self {
            counters: Arc::new(DeviceCounters::default()),
            workers: Vec::new(),
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

fn getrandom(buf: &mut [u8]) -> bool {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).is_ok_and(|n| n == buf.len())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256]
    }
    fn features(&self) -> u64 {
        F_VERSION_1 | F_EVENT_IDX
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<()> {
        for aq in ctx.queues {
            let mem = ctx.mem.clone();
            let queue = Mutex::new(aq.queue);
            let irq = aq.irq;
            let counters = self.counters.clone();
            let mut buf = vec![0u8; MAX_BYTES_PER_DESC];
            let w = Worker::spawn(
                format!("{}-rng", ctx.name),
                ctx.seccomp,
                ctx.cpu.clone(),
                aq.notify,
                None,
                move |_| {
                    let mut q = queue.lock();
                    let mut used = false;
                    while let Some(chain) = q.pop_descriptor_chain(&*mem) {
                        let head = chain.head_index();
                        let mut total = 0u32;
                        for d in chain.take(16) {
                            if !d.is_write_only() {
                                continue;
                            }
                            let n = (d.len() as usize).min(MAX_BYTES_PER_DESC);
                            if !getrandom(&mut buf[..n])
                                || mem
                                    .write_slice(&buf[..n], GuestAddress(d.addr().0))
                                    .is_err()
                            {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            total += n as u32;
                        }
                        counters.read_ops.fetch_add(1, Ordering::Relaxed);
                        counters
                            .read_bytes
                            .fetch_add(u64::from(total), Ordering::Relaxed);
                        if q.add_used(&*mem, head, total).is_err() {
                            break;
                        }
                        used = true;
                    }
                    if used && q.needs_notification(&*mem).unwrap_or(true) {
                        irq.trigger();
                    }
                    true
                },
            )?;
            self.workers.push(w);
        }
        Ok(())
    }
    fn reset(&mut self) {
        for mut w in self.workers.drain(..) {
            w.stop();
        }
    }
    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}
