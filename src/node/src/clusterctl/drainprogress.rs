//! A drain's progress as the draining member itself sees it, so that every member's
//! `cluster status` (and the API's) shows every draining member's progress and time left, not
//! only the answering node's own chunks on it.
//!
//! The draining member counts the chunk copies of other nodes still on its disks; the most it
//! counted since it first looked is the drain's size, and the rate since that moment gives the
//! time left. It looks whenever it is asked (`Call::DrainProgress`) or makes its own status.
//! The peak and when it was first seen are kept in `DATA/drain-progress.json` (written only
//! when the peak changes, so rarely), so a restart of the draining member keeps the drain's
//! size and rate instead of counting afresh from its first look after the restart; the file
//! is removed once the member is not draining. It is a display aid: written without a sync
//! (a power cut may lose the last change; the count then starts again, as it did before the
//! file existed), and an unreadable file is ignored.
//! Must never: block on anything but a small file write (it is read inside status requests).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use control::{DrainProgressView, RebuildView};

/// The most chunks seen and when (the rate counts from then).
#[derive(Debug, Clone, Copy)]
struct Peak {
    chunks: u64,
    at: Instant,
}

/// The peak as saved: `at` as wall-clock time (an `Instant` means nothing after a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedPeak {
    chunks: u64,
    at_unix_ms: u64,
}

/// Largest file read.
const MAX_FILE_BYTES: u64 = 4096;

/// This node's view of its own drain (one per node: a member drains once, then leaves).
#[derive(Debug, Default)]
pub(crate) struct DrainTrack {
    peak: parking_lot::Mutex<Option<Peak>>,
    /// Where the peak is kept (None: in memory only).
    file: Option<PathBuf>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn read_peak(file: &Path) -> Option<SavedPeak> {
    let f = std::fs::File::open(file).ok()?;
    let mut b = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE_BYTES), &mut b).ok()?;
    match serde_json::from_slice(&b) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "drain progress: saved count ignored");
            None
        }
    }
}

impl DrainTrack {
    /// A track kept in `file`, starting from the peak saved there by an earlier run (its time
    /// mapped onto this run's clock: `now` minus its age by the wall clock; a time in the
    /// future counts as now).
    pub(crate) fn persisted(file: PathBuf, now: Instant) -> DrainTrack {
        DrainTrack::persisted_at(file, now, SystemTime::now())
    }

    /// [`DrainTrack::persisted`] with the wall clock reading `wall` at `now`.
    fn persisted_at(file: PathBuf, now: Instant, wall: SystemTime) -> DrainTrack {
        let peak = read_peak(&file).map(|p| {
            let age_ms = unix_ms(wall).saturating_sub(p.at_unix_ms);
            Peak {
                chunks: p.chunks,
                at: now
                    .checked_sub(Duration::from_millis(age_ms))
                    .unwrap_or(now),
            }
        });
        DrainTrack {
            peak: parking_lot::Mutex::new(peak),
            file: Some(file),
        }
    }

    fn save(&self, pk: Peak, now: Instant) {
        let Some(file) = &self.file else {
            return;
        };
        let at = SystemTime::now()
            .checked_sub(now.saturating_duration_since(pk.at))
            .unwrap_or_else(SystemTime::now);
        let saved = SavedPeak {
            chunks: pk.chunks,
            at_unix_ms: unix_ms(at),
        };
        let tmp = file.with_extension("json.tmp");
        let r = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = r {
            tracing::warn!(file = %file.display(), error = %e, "drain progress: count not saved");
        }
    }

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
                self.save(pk, now);
                pk
            }
        };
        progress(peak.chunks, left, now.saturating_duration_since(peak.at))
    }

    /// This node is not draining (any more): a later drain counts afresh.
    pub(crate) fn reset(&self) {
        if self.peak.lock().take().is_some() {
            if let Some(file) = &self.file {
                let _ = std::fs::remove_file(file);
            }
        }
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
    fn a_restart_keeps_the_drains_size_and_rate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drain-progress.json");
        let t0 = Instant::now();
        let t = DrainTrack::persisted(file.clone(), t0);
        assert_eq!(t.observe(100, t0).chunks_at_start, 100);
        drop(t);
        // The member restarts with 75 left: the size is kept, not counted afresh.
        let t1 = Instant::now();
        let back = DrainTrack::persisted(file.clone(), t1);
        let v = back.observe(75, t1);
        assert_eq!((v.chunks_at_start, v.percent), (100, 25), "counted afresh");
        // A peak first seen 10 s ago by the wall clock: 25 moved in 10 s, 75 left take 30 s.
        // (The wall clock is given, so the figure does not depend on how fast this test runs.)
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ten_s_ago = unix_ms(wall) - 10_000;
        std::fs::write(
            &file,
            format!("{{\"chunks\":100,\"at_unix_ms\":{ten_s_ago}}}"),
        )
        .unwrap();
        let t2 = Instant::now();
        let eta = DrainTrack::persisted_at(file.clone(), t2, wall)
            .observe(75, t2)
            .eta_secs;
        assert_eq!(eta, Some(30));
        // Not draining any more: the file goes, a later drain counts afresh.
        back.reset();
        assert!(!file.exists());
        let again = DrainTrack::persisted(file.clone(), t1);
        assert_eq!(again.observe(7, t1).chunks_at_start, 7);
        // An unreadable file is ignored.
        std::fs::write(&file, b"{").unwrap();
        let bad = DrainTrack::persisted(file, t1);
        assert_eq!(bad.observe(3, t1).chunks_at_start, 3);
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
