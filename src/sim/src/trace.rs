//! The event trace of one run: every decision and every observed outcome, stamped with virtual
//! time, folded into a hash (two runs of one seed must give the same hash) and kept in a short
//! tail for the failure report.
//!
//! Must never: record anything that legitimately differs between two runs of one seed (wall
//! clock, random ids, addresses).
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Lines kept for the failure report.
const TAIL_LINES: usize = 60;

#[derive(Debug)]
struct Inner {
    start: tokio::time::Instant,
    hash: u64,
    /// The disk half's lines alone (the cluster half's are `hash` minus these).
    disk_hash: u64,
    meta_hash: u64,
    events: u64,
    /// Recent lines of the cluster half and of the disk half (kept apart so a failure in one
    /// is not buried under the other's chatter).
    tail: VecDeque<String>,
    disk_tail: VecDeque<String>,
}

/// A shared trace (cheap to clone).
#[derive(Debug, Clone)]
pub struct Trace(Arc<Mutex<Inner>>);

/// FNV-1a, fixed and portable (std's hasher may change between Rust releases).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Trace {
    /// Starts a trace; must be called inside the run's runtime (virtual time starts here).
    pub fn new() -> Trace {
        Trace(Arc::new(Mutex::new(Inner {
            start: tokio::time::Instant::now(),
            hash: 0xcbf2_9ce4_8422_2325,
            disk_hash: 0xcbf2_9ce4_8422_2325,
            meta_hash: 0xcbf2_9ce4_8422_2325,
            events: 0,
            tail: VecDeque::new(),
            disk_tail: VecDeque::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Virtual milliseconds since the start of the run.
    pub fn now_ms(&self) -> u64 {
        let start = self.lock().start;
        tokio::time::Instant::now()
            .saturating_duration_since(start)
            .as_millis() as u64
    }

    /// Virtual microseconds since the start (history timestamps).
    pub fn now_us(&self) -> u64 {
        let start = self.lock().start;
        tokio::time::Instant::now()
            .saturating_duration_since(start)
            .as_micros() as u64
    }

    pub fn event(&self, what: impl AsRef<str>) {
        let line = format!("{:>7}ms {}", self.now_ms(), what.as_ref());
        let mut t = self.lock();
        t.hash = fnv(t.hash, line.as_bytes());
        t.hash = fnv(t.hash, b"\n");
        t.events += 1;
        let disk = what.as_ref().starts_with("disk:");
        if disk {
            t.disk_hash = fnv(fnv(t.disk_hash, line.as_bytes()), b"\n");
        } else {
            t.meta_hash = fnv(fnv(t.meta_hash, line.as_bytes()), b"\n");
        }
        let tail = if disk { &mut t.disk_tail } else { &mut t.tail };
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }

    pub fn hash(&self) -> u64 {
        self.lock().hash
    }

    /// Hashes of the cluster half's and the disk half's lines.
    pub fn half_hashes(&self) -> (u64, u64) {
        let t = self.lock();
        (t.meta_hash, t.disk_hash)
    }

    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// The last lines of the cluster half (`disk == false`) or of the disk half.
    pub fn tail(&self, disk: bool) -> Vec<String> {
        let t = self.lock();
        let tail = if disk { &t.disk_tail } else { &t.tail };
        tail.iter().cloned().collect()
    }
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}
