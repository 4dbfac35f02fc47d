//! COM1 (16550 from vm-superio) with its interrupt on an irqfd, and the i8042 whose only job is
//! the reset line. Console output lands in a bounded log; input is queued by the host.

use super::{BoundedLog, ExitLatch, ExitReason};
use crate::bus::BusDevice;
use parking_lot::Mutex;
use std::io;
use std::sync::Arc;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Maximum bytes of console output kept.
pub const CONSOLE_LOG_BYTES: usize = 1 << 20;

/// An EventFd used as a vm-superio interrupt trigger (the fd is an irqfd for the serial GSI).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Sink writing console bytes into the shared log.
pub struct LogWriter(pub Arc<BoundedLog>);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The COM1 device on the port bus.
pub struct SerialConsole {
    inner: Mutex<Serial<EventFdTrigger, vm_superio::serial::NoEvents, LogWriter>>,
    /// Console output.
    pub output: Arc<BoundedLog>,
}

impl SerialConsole {
    /// A console raising `irq` on writes that need an interrupt.
    pub fn new(irq: EventFd) -> Self {
        let output = Arc::new(BoundedLog::new(CONSOLE_LOG_BYTES));
        Self {
            inner: Mutex::new(Serial::new(EventFdTrigger(irq), LogWriter(output.clone()))),
            output,
        }
    }

    /// Queues bytes for the guest to read; returns how many fit in the FIFO.
    pub fn input(&self, bytes: &[u8]) -> usize {
        self.inner.lock().enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialConsole {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset)
            .map(|o| self.inner.lock().read(o))
            .unwrap_or(0xff);
        data.fill(v);
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first()) {
            // A failed interrupt trigger loses one interrupt, never the VM.
            let _ = self.inner.lock().write(o, v);
        }
    }
}

/// Reset trigger that records a reset request in the exit latch.
pub struct ResetTrigger(pub Arc<ExitLatch>);

impl Trigger for ResetTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.set(ExitReason::Reset("i8042"));
        Ok(())
    }
}

/// The i8042 controller at 0x60/0x64 (reset only).
pub struct I8042 {
    inner: Mutex<I8042Device<ResetTrigger>>,
}

impl I8042 {
    /// An i8042 that reports resets to `exit`.
    pub fn new(exit: Arc<ExitLatch>) -> Self {
        Self {
            inner: Mutex::new(I8042Device::new(ResetTrigger(exit))),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset)
            .map(|o| self.inner.lock().read(o))
            .unwrap_or(0xff);
        data.fill(v);
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first()) {
            let _ = self.inner.lock().write(o, v);
        }
    }
}
