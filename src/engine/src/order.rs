//! One order for overlapping changes of a chunk on every replica.
//!
//! A change (write, discard, rollback) goes to every replica of its chunk at once, and each
//! replica records it when its own device write completes. Two changes of the same blocks in
//! flight at once could therefore be recorded in one order on one replica and in the other
//! order on the other: each copy valid by its checksums, but different, so a read would return
//! one value or the other depending on the replica serving it (and scrub, which checks
//! checksums, would not notice). So a change waits until every earlier change in flight that
//! overlaps its blocks is done on every replica; changes of other blocks never wait for each
//! other. A direct write's plan (`direct`) never waits: it is not planned while an overlapping
//! change is in flight, and a change that comes while it is planned waits for it like for any
//! other.
//!
//! The changes in flight are kept per shard of chunks (a few per shard at queue depth 32): a
//! change takes the shard's mutex twice (enter, leave) and allocates nothing unless it has to
//! wait. Waits only ever go to changes entered earlier, so they cannot form a cycle, and every
//! change entered holds its chunk's stripe lock shared (so a mover, which takes it exclusively,
//! never finds one in flight) and then needs nothing but its own I/O to finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use store::ObjectId;

use crate::placement::mix64;

/// Shards of the table (a power of two).
const SHARDS: usize = 256;

/// Overlapping changes in flight, per shard of chunks.
pub(crate) struct WriteOrder {
    shards: Box<[Arc<Shard>]>,
}

#[derive(Default)]
pub(crate) struct Shard {
    state: Mutex<ShardState>,
}

#[derive(Default)]
struct ShardState {
    next: u64,
    entries: Vec<Entry>,
}

/// One change in flight: blocks `start..end` of `obj`.
struct Entry {
    obj: ObjectId,
    start: u64,
    end: u64,
    id: u64,
    /// Made by the first change that waits for this one.
    done: Option<Arc<Done>>,
}

#[derive(Default)]
struct Done {
    set: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Done {
    async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.set.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }
}

impl Entry {
    fn overlaps(&self, obj: ObjectId, range: &std::ops::Range<u64>) -> bool {
        self.obj == obj && self.start < range.end && range.start < self.end
    }
}

impl ShardState {
    /// Records a change of `range` of `obj` in flight; its id.
    fn push(&mut self, obj: ObjectId, range: std::ops::Range<u64>) -> u64 {
        let id = self.next;
        self.next += 1;
        self.entries.push(Entry {
            obj,
            start: range.start,
            end: range.end,
            id,
            done: None,
        });
        id
    }
}

impl Shard {
    fn leave(&self, id: u64) {
        let done = {
            let mut s = self.state.lock();
            let Some(i) = s.entries.iter().position(|e| e.id == id) else {
                return;
            };
            s.entries.swap_remove(i).done
        };
        if let Some(d) = done {
            d.set.store(true, Ordering::Release);
            d.notify.notify_waiters();
        }
    }
}

/// A change in flight (see [`WriteOrder::enter`]); leaves when dropped.
pub(crate) struct Ordered<'a> {
    shard: &'a Shard,
    id: u64,
}

impl Drop for Ordered<'_> {
    fn drop(&mut self) {
        self.shard.leave(self.id);
    }
}

/// [`Ordered`] that outlives a borrow (a direct write's, held from its plan to its record).
pub(crate) struct OwnedOrdered {
    shard: Arc<Shard>,
    id: u64,
}

impl Drop for OwnedOrdered {
    fn drop(&mut self) {
        self.shard.leave(self.id);
    }
}

/// Whole-chunk range (a rollback).
pub(crate) const WHOLE_CHUNK: std::ops::Range<u64> = 0..u64::MAX;

impl WriteOrder {
    pub(crate) fn new() -> Self {
        WriteOrder {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, obj: ObjectId) -> &Arc<Shard> {
        &self.shards[(mix64(obj.vdisk.rotate_left(17) ^ obj.chunk) as usize) & (SHARDS - 1)]
    }

    /// Enters a change of blocks `range` of `obj`, after every earlier change in flight that
    /// overlaps it is done. Dropping the future while it waits leaves again.
    pub(crate) async fn enter(&self, obj: ObjectId, range: std::ops::Range<u64>) -> Ordered<'_> {
        let shard = self.shard(obj);
        let mut waits: smallvec::SmallVec<[Arc<Done>; 2]> = smallvec::SmallVec::new();
        let id = {
            let mut s = shard.state.lock();
            for e in s.entries.iter_mut().filter(|e| e.overlaps(obj, &range)) {
                waits.push(e.done.get_or_insert_with(Default::default).clone());
            }
            s.push(obj, range)
        };
        let me = Ordered { shard, id };
        for d in waits {
            d.wait().await;
        }
        me
    }

    /// Enters a change of blocks `range` of `obj` only if no change overlapping it is in
    /// flight (never waits).
    pub(crate) fn try_enter_owned(
        &self,
        obj: ObjectId,
        range: std::ops::Range<u64>,
    ) -> Option<OwnedOrdered> {
        let shard = self.shard(obj);
        let mut s = shard.state.lock();
        if s.entries.iter().any(|e| e.overlaps(obj, &range)) {
            return None;
        }
        let id = s.push(obj, range);
        Some(OwnedOrdered {
            shard: shard.clone(),
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    fn obj(chunk: u64) -> ObjectId {
        ObjectId { vdisk: 7, chunk }
    }

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let w = futures::task::noop_waker();
        Pin::new(f).poll(&mut Context::from_waker(&w))
    }

    #[test]
    fn overlapping_changes_wait_in_order_and_others_do_not() {
        let o = WriteOrder::new();
        let a = match poll_once(&mut Box::pin(o.enter(obj(1), 0..4))) {
            Poll::Ready(g) => g,
            Poll::Pending => panic!("nothing in flight: entered at once"),
        };
        // Other blocks of the chunk, and the same blocks of another chunk, do not wait.
        let mut other = Box::pin(o.enter(obj(1), 4..8));
        let other = match poll_once(&mut other) {
            Poll::Ready(g) => g,
            Poll::Pending => panic!("blocks 4..8 do not overlap 0..4"),
        };
        let mut elsewhere = Box::pin(o.enter(obj(2), 0..4));
        assert!(poll_once(&mut elsewhere).is_ready(), "another chunk");
        // Overlapping: waits for `a`; a later one waits for both.
        let mut b = Box::pin(o.enter(obj(1), 3..5));
        assert!(poll_once(&mut b).is_pending(), "3..5 overlaps 0..4");
        assert!(
            o.try_enter_owned(obj(1), 2..3).is_none(),
            "a direct plan is refused over a change in flight"
        );
        let mut c = Box::pin(o.enter(obj(1), WHOLE_CHUNK));
        assert!(poll_once(&mut c).is_pending());
        drop(a);
        assert!(poll_once(&mut c).is_pending(), "still waits for 4..8");
        drop(other);
        assert!(
            poll_once(&mut c).is_pending(),
            "and for 3..5, entered earlier"
        );
        let Poll::Ready(b) = poll_once(&mut b) else {
            panic!("b goes once a is done")
        };
        drop(b);
        assert!(poll_once(&mut c).is_ready());
    }

    #[test]
    fn a_waiter_dropped_while_waiting_leaves() {
        let o = WriteOrder::new();
        let a = o.try_enter_owned(obj(1), 0..1).expect("nothing in flight");
        let mut b = Box::pin(o.enter(obj(1), 0..1));
        assert!(poll_once(&mut b).is_pending());
        drop(b);
        drop(a);
        assert!(
            o.try_enter_owned(obj(1), 0..1).is_some(),
            "neither is in flight any more"
        );
    }
}
