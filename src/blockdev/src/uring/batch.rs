//! A thread's batch of io_uring submissions (`UringDevice::submit_batched`): requests started
//! on this thread during one call only queue their entries, and each ring they touched is
//! submitted once when the call returns.
//!
//! Must never hold an entry back past the end of the call that queued it (nothing else would
//! submit it), also when that call panics.

use std::cell::RefCell;
use std::sync::Arc;

use super::ring::Ring;

thread_local! {
    /// `Some` while a batch is open on this thread: the rings with entries it held back.
    static DEFERRED: RefCell<Option<Vec<Arc<Ring>>>> = const { RefCell::new(None) };
}

/// Whether a batch is open on this thread; if so `ring` is submitted when it closes, and the
/// caller must not submit now.
pub(super) fn defer(ring: &Ring) -> bool {
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        let Some(rings) = d.as_mut() else {
            return false;
        };
        if rings.iter().any(|r| std::ptr::eq(Arc::as_ptr(r), ring)) {
            return true;
        }
        match ring.arc() {
            Some(r) => {
                rings.push(r);
                true
            }
            // Only while the ring is being dropped, when no request can start: submit now.
            None => false,
        }
    })
}

/// Closes the batch it opened and submits what it held, also when the call panicked.
struct Closer;

impl Drop for Closer {
    fn drop(&mut self) {
        let rings = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
        for r in rings {
            r.submit_pending();
        }
    }
}

/// See `UringDevice::submit_batched`.
pub(super) fn submit_batched<R>(f: impl FnOnce() -> R) -> R {
    let opened = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_some() {
            return false;
        }
        *d = Some(Vec::new());
        true
    });
    // Only the call that opened the batch closes it (a `Closer` closes whatever is open).
    let _closer = if opened { Some(Closer) } else { None };
    f()
}
