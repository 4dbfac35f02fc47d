//! A drain's progress as the draining member itself sees it, so that every member's
//! `cluster status` (and the API's) shows every draining member's progress and time left, not
//! only the answering node's own chunks on it.
//!
//! The draining member counts the chunk copies of other nodes still on its disks; the most it
//! counted since it first looked is the drain's size, and the rate since that moment gives the
//! time left. It looks whenever it is asked (`Call::DrainProgress`) or makes its own status.
//! Nothing is persisted: after a restart the count starts again from the first look.
//! Must never: block on anything (it is read inside status requests).

use std::time::{Duration, Instant};

use control::{DrainProgressView, RebuildView};

/// The most chunks seen and when (the rate counts from then).
#[derive(Debug, Clone, Copy)]
struct Peak {
    chunks: u64,
    at: Instant,
}

/// This node's view of its own drain (one per node: a member drains once, then leaves).
#[derive(Debug, Default)]
pub(crate) struct DrainTrack {
    peak: parking_lot::Mutex<Option<Peak>>,
}

impl DrainTrack {
    /// Record that `left` chunk copies are still on this node's disks at `now`, and the
    /// progress that makes.
    pub(crate) fn observe(&self, left: u64, now: Instant) -> DrainProgressView {
        let mut p = self.peak.lock();
        let peak = match *p {
            Some(pk) if pk.chunks >= left => pk,
            _ => {
                let pk = Peak {
                    chunks: left,
                    at: now,
                };
                *p = Some(pk);
                pk
            }
        };
        progress(peak.chunks, left, now.saturating_duration_since(peak.at))
    }

    /// This node is not draining (any more): a later drain counts afresh.
    pub(crate) fn reset(&self) {
        *self.peak.lock() = None;
    }
}

/// `left` of `at_start` chunks still to move after `elapsed`: percent moved, and the time left
/// at the average rate so far (None before anything moved).
pub(crate) fn progress(at_start: u64, left: u64, elapsed: Duration) -> DrainProgressView {
    let left = left.min(at_start);
    let moved = at_start - left;
    let eta_secs = if moved == 0 || elapsed.is_zero() {
        None
    } else {
        let ms = u128::from(left) * elapsed.as_millis() / u128::from(moved);
        Some(u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX))
    };
    DrainProgressView {
        chunks_left: left,
        chunks_at_start: at_start,
        percent: RebuildView::percent_of(moved, at_start),
        eta_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_time_left_follow_the_rate_since_the_peak() {
        let t = DrainTrack::default();
        let t0 = Instant::now();
        let first = t.observe(100, t0);
        assert_eq!(first.chunks_at_start, 100);
        assert_eq!(first.percent, 0);
        assert_eq!(first.eta_secs, None, "nothing moved yet: no rate");
        // 25 moved in 10 s: 75 left take 30 s more.
        let later = t.observe(75, t0 + Duration::from_secs(10));
        assert_eq!(later.chunks_left, 75);
        assert_eq!(later.percent, 25);
        assert_eq!(later.eta_secs, Some(30));
        // More chunks than ever seen (a copy placed here meanwhile): the size grows, the rate
        // counts afresh.
        let grown = t.observe(120, t0 + Duration::from_secs(20));
        assert_eq!((grown.chunks_at_start, grown.percent), (120, 0));
        assert_eq!(grown.eta_secs, None);
        let done = t.observe(0, t0 + Duration::from_secs(30));
        assert_eq!((done.percent, done.eta_secs), (100, Some(0)));
        t.reset();
        assert_eq!(
            t.observe(7, t0 + Duration::from_secs(40)).chunks_at_start,
            7
        );
    }

    #[test]
    fn an_empty_drain_is_done_and_times_round_up() {
        assert_eq!(progress(0, 0, Duration::ZERO).percent, 100);
        assert_eq!(progress(0, 0, Duration::ZERO).eta_secs, None);
        // 2 moved in 1 s, 1 left: half a second, shown as 1 s.
        assert_eq!(progress(3, 1, Duration::from_secs(1)).eta_secs, Some(1));
        // A count above the size is clamped, never a negative move.
        assert_eq!(progress(5, 9, Duration::from_secs(1)).chunks_left, 5);
    }
}
