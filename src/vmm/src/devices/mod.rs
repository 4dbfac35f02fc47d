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

/// Ids of [`BoundedLog`]s, unique in the process.
static NEXT_LOG_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// An answer of [`BoundedLog::since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The bytes the reader had not seen (the newest ones when there were more than asked).
    pub bytes: Vec<u8>,
    /// The log they come from; pass it back with `total` on the next call.
    pub log_id: u64,
    /// Bytes pushed to that log so far.
    pub total: u64,
}

/// A byte buffer that keeps at most `cap` bytes, dropping the oldest (console and debug logs).
pub struct BoundedLog {
    buf: Mutex<std::collections::VecDeque<u8>>,
    /// Bytes pushed so far, under the same lock as `buf`, so [`BoundedLog::since`] can say
    /// exactly which bytes a reader has not seen.
    total: Mutex<u64>,
    /// Tells this log from the one of the next machine (a restart starts a new log).
    id: u64,
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
            total: Mutex::new(0),
            id: NEXT_LOG_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
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
            // Lock order: buf, then total (here and in `since`).
            let mut t = self.total.lock();
            *t = t.wrapping_add(bytes.len() as u64);
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

    /// What a reader that has seen the first `from` bytes of the log with id `log_id` has not:
    /// the newest `max` bytes at most of those pushed since, plus this log's id and count. A
    /// reader of another log (a new machine) gets this log's newest `max` bytes. Copies only
    /// what it returns, not the whole log.
    pub fn since(&self, log_id: u64, from: u64, max: usize) -> LogChunk {
        let b = self.buf.lock();
        let total = *self.total.lock();
        let kept = b.len();
        let unseen = if log_id == self.id {
            usize::try_from(total.saturating_sub(from)).unwrap_or(usize::MAX)
        } else {
            kept
        };
        let n = unseen.min(kept).min(max);
        LogChunk {
            bytes: b.range(kept - n..).copied().collect(),
            log_id: self.id,
            total,
        }
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

    #[test]
    fn since_returns_only_what_a_reader_has_not_seen() {
        let log = BoundedLog::new(8);
        let other = BoundedLog::new(8);
        let first = log.since(0, 0, 100);
        assert!(first.bytes.is_empty());
        assert_eq!(first.total, 0);
        log.push(b"hello ");
        // A reader of another log (or none yet) gets the newest bytes, at most `max`.
        let c = log.since(other.since(0, 0, 1).log_id, 0, 4);
        assert_eq!(c.bytes, b"llo ");
        assert_eq!(c.total, 6);
        let c = log.since(c.log_id, c.total, 100);
        assert!(c.bytes.is_empty(), "nothing new");
        log.push(b"world");
        let d = log.since(c.log_id, c.total, 100);
        assert_eq!(d.bytes, b"world");
        assert_eq!(d.total, 11);
        // More than the log keeps was written since: only what is kept (the cap) comes back.
        log.push(b"0123456789");
        let e = log.since(d.log_id, d.total, 100);
        assert_eq!(e.bytes, b"23456789");
        assert_eq!(e.total, 21);
    }
}
