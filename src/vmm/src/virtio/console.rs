//! virtio-console with one port (no multiport): transmitq bytes go to a bounded log, bytes the
//! host queues are delivered into receiveq buffers. The host side is a [`ConsolePort`].

use super::{ActivateContext, VirtioDevice, Worker, F_VERSION_1, TYPE_CONSOLE};
use crate::devices::BoundedLog;
use crate::error::{io_err, Result};
use crate::stats::DeviceCounters;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Maximum bytes of host input waiting for the guest.
pub const MAX_PENDING_INPUT: usize = 64 << 10;
const MAX_CHUNK: usize = 4096;

/// Host end of the console.
pub struct ConsolePort {
    /// Guest output.
    pub output: BoundedLog,
    input: Mutex<VecDeque<u8>>,
    input_evt: EventFd,
}

impl ConsolePort {
    fn new() -> Result<Self> {
        Ok(Self {
            output: BoundedLog::new(crate::devices::serial::CONSOLE_LOG_BYTES),
            input: Mutex::new(VecDeque::new()),
            input_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("console eventfd"))?,
        })
    }

    /// Queues bytes for the guest; returns how many were accepted (bounded).
    pub fn input(&self, bytes: &[u8]) -> usize {
        let mut q = self.input.lock();
        let n = bytes.len().min(MAX_PENDING_INPUT.saturating_sub(q.len()));
        q.extend(&bytes[..n]);
        let _ = self.input_evt.write(1);
        n
    }
}

/// The device.
pub struct Console {
    port: Arc<ConsolePort>,
    counters: Arc<DeviceCounters>,
    workers: Vec<Worker>,
}

impl Console {
    /// A console device and its host port.
    pub fn new() -> Result<(Self, Arc<ConsolePort>)> {
        let port = Arc::new(ConsolePort::new()?);
        Ok((
            Self {
                port: port.clone(),
                counters: Arc::new(DeviceCounters::default()),
                workers: Vec::new(),
            },
            port,
        ))
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 256]
    }
    fn features(&self) -> u64 {
        F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (u16 each), max_nr_ports (u32) = 1.
        super::read_config_bytes(&[80, 0, 25, 0, 1, 0, 0, 0], offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<()> {
        for aq in ctx.queues {
            let (mem, port, counters, irq) = (
                ctx.mem.clone(),
                self.port.clone(),
                self.counters.clone(),
                aq.irq,
            );
            let queue = Mutex::new(aq.queue);
            let mut buf = vec![0u8; MAX_CHUNK];
            let extra = (aq.index == 0).then(|| port.input_evt.as_raw_fd());
            let rx = aq.index == 0;
            let w = Worker::spawn(
                format!("{}-con{}", ctx.name, aq.index),
                ctx.seccomp,
                ctx.cpu.clone(),
                aq.notify,
                extra,
                move |from_extra| {
                    if from_extra {
                        let _ = port.input_evt.read();
                    }
                    let mut q = queue.lock();
                    let mut used = false;
                    loop {
                        if rx && port.input.lock().is_empty() {
                            break;
                        }
                        let Some(chain) = q.pop_descriptor_chain(&*mem) else {
                            break;
                        };
                        let head = chain.head_index();
                        let mut total = 0u32;
                        for d in chain.take(16) {
                            let n = (d.len() as usize).min(MAX_CHUNK);
                            let addr = GuestAddress(d.addr().0);
                            if rx && d.is_write_only() {
                                let mut input = port.input.lock();
                                let n = n.min(input.len());
                                for (i, b) in input.drain(..n).enumerate() {
                                    buf[i] = b;
                                }
                                drop(input);
                                if mem.write_slice(&buf[..n], addr).is_err() {
                                    break;
                                }
                                total += n as u32;
                                counters.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
                            } else if !rx && !d.is_write_only() {
                                if mem.read_slice(&mut buf[..n], addr).is_err() {
                                    break;
                                }
                                port.output.push(&buf[..n]);
                                counters.write_bytes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
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
