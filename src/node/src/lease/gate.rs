//! The node's I/O gate (see the parent module's docs for when it opens and closes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::wait_limit;

/// The node's I/O gate: open while the lease is valid (or none is needed).
///
/// It holds the lease's end itself, so a request arriving after it is refused even if the
/// lease task has not run yet (a node waking from a freeze): an atomic load and, while a lease
/// is in force, a monotonic clock read.
#[derive(Clone)]
pub(crate) struct Gate(Arc<GateInner>);

/// `GateInner::until_ms` when no lease is needed.
const ALWAYS: u64 = u64::MAX;

struct GateInner {
    /// Requests pass while `base.elapsed()` is below this many milliseconds ([`ALWAYS`]: no
    /// lease needed; 0: closed).
    until_ms: AtomicU64,
    base: std::time::Instant,
    opened: Notify,
    wait: Duration,
}

impl Gate {
    pub(super) fn new() -> Gate {
        Gate(Arc::new(GateInner {
            until_ms: AtomicU64::new(ALWAYS),
            base: std::time::Instant::now(),
            opened: Notify::new(),
            wait: wait_limit(),
        }))
    }

    pub(crate) fn is_open(&self) -> bool {
        match self.0.until_ms.load(Ordering::Acquire) {
            ALWAYS => true,
            0 => false,
            until => (self.0.base.elapsed().as_millis() as u64) < until,
        }
    }

    /// Whether the gate is open for good (no lease needed).
    pub(super) fn always(&self) -> bool {
        self.0.until_ms.load(Ordering::Acquire) == ALWAYS
    }

    /// Open until `end` (rounded down to the millisecond), or for good.
    pub(super) fn open_until(&self, end: Option<std::time::Instant>) {
        let until = match end {
            None => ALWAYS,
            Some(e) if e <= std::time::Instant::now() => 0,
            Some(e) => (e.saturating_duration_since(self.0.base).as_millis() as u64).max(1),
        };
        self.0.until_ms.store(until, Ordering::Release);
        self.0.opened.notify_waiters();
    }

    /// How long the lease in force has left; `None` when closed or no lease is needed.
    pub(super) fn remaining(&self) -> Option<Duration> {
        match self.0.until_ms.load(Ordering::Acquire) {
            0 | ALWAYS => None,
            until => Some(Duration::from_millis(until).saturating_sub(self.0.base.elapsed()))
                .filter(|d| !d.is_zero()),
        }
    }

    pub(super) fn close(&self) {
        self.0.until_ms.store(0, Ordering::Release);
    }

    /// Returns at once while the gate is open; else waits for it up to the wait limit, then
    /// fails with EIO.
    pub(crate) async fn pass(&self) -> std::io::Result<()> {
        if self.is_open() {
            return Ok(());
        }
        self.wait_open().await
    }

    #[cold]
    async fn wait_open(&self) -> std::io::Result<()> {
        let deadline = Instant::now() + self.0.wait;
        loop {
            let opened = self.0.opened.notified();
            tokio::pin!(opened);
            // Registered before the check, so an opening in between is not missed.
            opened.as_mut().enable();
            if self.is_open() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, opened).await.is_err() {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
    }
}

/// The error a closed gate gives a control request (an image transfer).
pub(crate) fn closed_error() -> control::ControlError {
    control::ControlError::new(
        control::ErrorCode::Io,
        "this node is cut off from the cluster's majority (its isolation lease expired): its \
         virtual disks are not served until it is back",
    )
}
