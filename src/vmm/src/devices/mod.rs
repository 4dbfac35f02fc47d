//! Legacy platform devices: debug ports for test guests, the 16550 console, the i8042 reset line,
//! and the ACPI PM1 registers (power button, soft-off).

pub mod acpi_pm;
pub mod debug;
pub mod serial;

use parking_lot::{Condvar, Mutex};
use std::time::Duration;

/// Why a VM stopped running guest code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote an exit code to the debug exit port.
    DebugExit(u8),
    /// The guest asked for a reset (i8042 pulse, KVM system reset) or triple-faulted.
    Reset(&'static str),
    /// The guest powered off (KVM system event shutdown).
    Shutdown,
    /// The host stopped the VM.
    Stopped,
    /// A vCPU hit an unrecoverable error (entry failure, internal error).
    Error(String),
}

/// One-shot latch recording the first exit reason; vCPU threads poll it, the owner waits on it.
#[derive(Default)]
pub struct ExitLatch {
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
}

impl ExitLatch {
    /// Records `reason` unless one is already recorded; returns true if it was the first.
    pub fn set(&self, reason: ExitReason) -> bool {
        let mut r = self.reason.lock();
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        self.cond.notify_all();
        true
    }

    /// The recorded reason, if any.
    pub fn get(&self) -> Option<ExitReason> {
        self.reason.lock().clone()
    }

    /// True once any reason is recorded.
    pub fn is_set(&self) -> bool {
        self.reason.lock().is_some()
    }

    /// Waits up to `timeout` for a reason.
    pub fn wait(&self, timeout: Duration) -> Option<ExitReason> {
        let mut r = self.reason.lock();
        if r.is_none() {
            let _ = self.cond.wait_while_for(&mut r, |r| r.is_none(), timeout);
        }
        r.clone()
    }

    /// Clears the latch (before a restart).
    pub fn clear(&self) {
        *self.reason.lock() = None;
    }
}

/// A byte buffer that keeps at most `cap` bytes, dropping the oldest (console and debug logs).
pub struct BoundedLog {
    buf: Mutex<std::collections::VecDeque<u8>>,
    cap: usize,
    /// Bytes pushed so far; watchers ([`BoundedLog::watch`]) wake on every push, so a console
    /// viewer is told about output instead of polling for it.
    written: tokio::sync::watch::Sender<u64>,
}

impl BoundedLog {
    /// A log that holds at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Mutex::new(std::collections::VecDeque::new()),
            cap,
            written: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Appends, dropping the oldest bytes beyond the cap, and wakes the watchers (without
    /// blocking: a vCPU thread calls this).
    pub fn push(&self, bytes: &[u8]) {
        {
            let mut b = self.buf.lock();
            b.extend(bytes.iter().copied());
            let excess = b.len().saturating_sub(self.cap);
            b.drain(..excess);
        }
        self.written
            .send_modify(|n| *n = n.wrapping_add(bytes.len() as u64));
    }

    /// A receiver that changes on every push (its value counts the bytes pushed) and ends
    /// when the log is dropped with its machine.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.buf.lock().iter().copied().collect()
    }

    /// Empties the log.
    pub fn clear(&self) {
        self.buf.lock().clear();
    }
}

#[cfg(test)]
mod log_tests {
    use super::BoundedLog;

    #[test]
    fn push_keeps_the_newest_bytes_and_wakes_watchers() {
        let log = BoundedLog::new(4);
        let mut rx = log.watch();
        assert!(!rx.has_changed().unwrap());
        log.push(b"abcdef");
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 6);
        assert_eq!(log.snapshot(), b"cdef");
        assert!(!rx.has_changed().unwrap());
        log.push(b"g");
        assert_eq!(*rx.borrow_and_update(), 7);
        // A dropped log ends its watchers (a console then follows the next machine).
        drop(log);
        assert!(rx.has_changed().is_err());
    }
}
