//! Pacing and progress of rebuild / rebalance copies (re-mirroring after a disk or node is
//! lost, draining a disk, spreading data onto a new one).
//!
//! Guest I/O keeps priority in two ways:
//! - **Yield to queued guest I/O:** before each chunk copy the rebuilder waits (up to
//!   [`MAX_YIELD`] per chunk, so it is never starved) while guest requests are in flight on the
//!   copy's source or target disk.
//! - **Token bucket:** copied bytes are charged to a bucket refilled at a ceiling in bytes/s.
//!   While guest I/O was seen in the last [`BUSY_WINDOW`] the ceiling is
//!   `RebuildLimits::busy_bytes_per_sec`; on an idle engine it is `max_bytes_per_sec`, and 0
//!   there means none: an idle system rebuilds at full device speed. A copy starts only when
//!   the bucket is not in debt, and reserves one chunk at once (under the same lock as the
//!   check), so copies in flight together cannot all start on the same tokens; the copy's
//!   real size, known only afterwards, replaces the reservation (a copy that moves less, or
//!   nothing, gives the rest back). Over any stretch the bytes moved are at most the ceiling
//!   times the time plus one burst and one chunk per target of the last copy admitted,
//!   however many copies are in flight.
//!
//! Progress: a pass counts the chunks it will move, then each one done and the bytes copied;
//! rate and time left are derived from the pass's elapsed time. Idle: no estimate.
//!
//! Profile: every copy adds the time it spent in each phase (pacing, waiting for the chunk's
//! lock, export, import, flush, intent records) to [`RebuildProfile`], so a benchmark can say
//! where a rebuild's time goes. Phases of copies in flight at once overlap: their sum may
//! exceed the wall time.
//!
//! Clock: pacing reads tokio's clock (the wall clock, except in a runtime with paused time,
//! where the throttle test runs it deterministically); the profile reads the wall clock.
//!
//! Must never: hold a stripe lock while it waits (pacing happens before the chunk is locked).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::time::Instant as PaceInstant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::core::{Disk, Inner};
use crate::types::RebuildProgress;

/// Guest I/O seen within this window makes the engine "busy" for pacing.
pub const BUSY_WINDOW: Duration = Duration::from_millis(250);
/// Longest a chunk copy waits for queued guest I/O on its disks before it goes anyway.
pub const MAX_YIELD: Duration = Duration::from_millis(20);
/// Default ceiling while guests do I/O.
pub const DEFAULT_BUSY_BYTES_PER_SEC: u64 = 64 << 20;
/// Bucket size: how much may be copied at once after an idle stretch (4 chunks).
const BURST_BYTES: u64 = 4 * crate::CHUNK_BYTES;

/// Rebuild speed limits (`Engine::set_rebuild_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildLimits {
    /// Ceiling at all times, bytes/s; 0 = none (an idle engine copies at device speed).
    pub max_bytes_per_sec: u64,
    /// Ceiling while guest I/O is active, bytes/s; 0 = only `max_bytes_per_sec` applies.
    pub busy_bytes_per_sec: u64,
}

impl Default for RebuildLimits {
    fn default() -> Self {
        RebuildLimits {
            max_bytes_per_sec: 0,
            busy_bytes_per_sec: DEFAULT_BUSY_BYTES_PER_SEC,
        }
    }
}

impl RebuildLimits {
    /// The ceiling in force (0 = none).
    pub fn ceiling(&self, guest_busy: bool) -> u64 {
        match (guest_busy, self.max_bytes_per_sec, self.busy_bytes_per_sec) {
            (true, 0, b) => b,
            (true, m, 0) => m,
            (true, m, b) => m.min(b),
            (false, m, _) => m,
        }
    }
}

/// A token bucket in bytes, driven by explicit refills (so its accounting is testable without
/// clocks). Tokens may go negative: a debt the next copy waits out.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: u64,
    burst: u64,
    tokens: i128,
}

impl Bucket {
    pub(crate) fn new(rate: u64, burst: u64) -> Self {
        Bucket {
            rate,
            burst,
            tokens: i128::from(burst),
        }
    }
    /// Change the rate (a full bucket stays full; debt stays).
    pub(crate) fn set_rate(&mut self, rate: u64) {
        self.rate = rate;
    }
    pub(crate) fn refill(&mut self, dt: Duration) {
        let add = i128::from(self.rate) * dt.as_nanos() as i128 / 1_000_000_000;
        self.tokens = (self.tokens + add).min(i128::from(self.burst));
    }
    pub(crate) fn charge(&mut self, bytes: u64) {
        self.tokens -= i128::from(bytes);
    }
    /// Give back bytes charged but not moved (never above a full bucket).
    pub(crate) fn refund(&mut self, bytes: u64) {
        self.tokens = (self.tokens + i128::from(bytes)).min(i128::from(self.burst));
    }
    /// How long until a copy may start (zero if tokens are not negative).
    pub(crate) fn wait(&self) -> Duration {
        if self.tokens >= 0 || self.rate == 0 {
            return Duration::ZERO;
        }
        let ns = (-self.tokens) * 1_000_000_000 / i128::from(self.rate);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

#[derive(Debug)]
struct Pace {
    bucket: Bucket,
    last_refill: PaceInstant,
}

#[derive(Debug, Default)]
struct Pass {
    started: Option<Instant>,
    progress: RebuildProgress,
}

/// Where chunk copies (rebuild, drain, rebalance, resync) spent their time since the engine
/// started, summed over copies (copies in flight at once overlap). Nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildProfile {
    /// Chunk copies finished and the bytes they moved.
    pub chunks: u64,
    pub bytes: u64,
    /// Bytes charged to the throttle, counted as each copy lands (before its batch makes it
    /// durable; a copy that is later undone still counts: it was device traffic).
    #[serde(default)]
    pub charged_bytes: u64,
    /// Waiting for the throttle (queued guest I/O, the ceiling).
    pub pace_ns: u64,
    /// Waiting for the chunk's stripe lock (guest I/O on the chunk).
    pub lock_ns: u64,
    /// Reading and verifying the source replica's history.
    pub export_ns: u64,
    /// Writing the copy on the target (drop of an old partial copy, data, map records).
    pub import_ns: u64,
    /// Making copies durable on their targets, and how many target flushes that took.
    pub flush_ns: u64,
    pub flushes: u64,
    /// Recording copy intents and their completion in the pool metadata.
    pub meta_ns: u64,
    /// Each chunk copy of a rebuild / rebalance batch from its pacing to its import's end,
    /// summed: over a pass's wall time, the mean number of chunks in flight.
    #[serde(default)]
    pub move_ns: u64,
    /// Waiting for a copy request slot (the bound on copy requests in flight).
    #[serde(default)]
    pub slot_wait_ns: u64,
    /// The copying side of a rebuild waiting for earlier batches' flushes and intent records
    /// (the pipeline held back by them).
    #[serde(default)]
    pub stall_ns: u64,
    /// Wall time with both an export (read) and an import (write) in flight, and wall time
    /// within a rebuild / rebalance pass with no copy request in flight at all.
    #[serde(default)]
    pub overlap_ns: u64,
    #[serde(default)]
    pub idle_ns: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ProfileCounters {
    chunks: AtomicU64,
    bytes: AtomicU64,
    charged_bytes: AtomicU64,
    pace_ns: AtomicU64,
    lock_ns: AtomicU64,
    export_ns: AtomicU64,
    import_ns: AtomicU64,
    flush_ns: AtomicU64,
    flushes: AtomicU64,
    meta_ns: AtomicU64,
    move_ns: AtomicU64,
    slot_wait_ns: AtomicU64,
    stall_ns: AtomicU64,
    gauge: Mutex<Gauge>,
}

/// Copy requests in flight by kind, and the wall time integrated by what was in flight.
#[derive(Debug, Default)]
struct Gauge {
    exports: u32,
    imports: u32,
    /// Rebuild / rebalance passes running (idle time counts only within one).
    passes: u32,
    since: Option<Instant>,
    overlap_ns: u64,
    idle_ns: u64,
}

impl Gauge {
    /// Charge the time since the last change to what was in flight during it.
    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(s) = self.since {
            let ns = u64::try_from(now.duration_since(s).as_nanos()).unwrap_or(u64::MAX);
            if self.exports > 0 && self.imports > 0 {
                self.overlap_ns += ns;
            } else if self.exports == 0 && self.imports == 0 && self.passes > 0 {
                self.idle_ns += ns;
            }
        }
        self.since = Some(now);
    }
}

/// What a [`InFlight`] guard counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Export,
    Import,
    Pass,
}

/// Counts one export, import or pass as in flight until dropped (see [`RebuildProfile`]).
pub(crate) struct InFlight<'a> {
    counters: &'a ProfileCounters,
    kind: Kind,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut g = self.counters.gauge.lock();
        g.tick();
        let c = match self.kind {
            Kind::Export => &mut g.exports,
            Kind::Import => &mut g.imports,
            Kind::Pass => &mut g.passes,
        };
        *c = c.saturating_sub(1);
    }
}

/// A phase of a chunk copy, for [`ProfileCounters::add`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    Pace,
    Lock,
    Export,
    Import,
    Flush,
    Meta,
    Move,
    SlotWait,
    Stall,
}

impl ProfileCounters {
    /// Add the time since `since` to `phase`.
    pub(crate) fn add(&self, phase: Phase, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let c = match phase {
            Phase::Pace => &self.pace_ns,
            Phase::Lock => &self.lock_ns,
            Phase::Export => &self.export_ns,
            Phase::Import => &self.import_ns,
            Phase::Flush => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
                &self.flush_ns
            }
            Phase::Meta => &self.meta_ns,
            Phase::Move => &self.move_ns,
            Phase::SlotWait => &self.slot_wait_ns,
            Phase::Stall => &self.stall_ns,
        };
        c.fetch_add(ns, Ordering::Relaxed);
    }

    /// Count an export, import or pass as in flight until the guard is dropped.
    pub(crate) fn in_flight(&self, kind: Kind) -> InFlight<'_> {
        let mut g = self.gauge.lock();
        g.tick();
        match kind {
            Kind::Export => g.exports += 1,
            Kind::Import => g.imports += 1,
            Kind::Pass => g.passes += 1,
        }
        InFlight {
            counters: self,
            kind,
        }
    }

    /// One chunk copy finished with `bytes` moved.
    pub(crate) fn copied(&self, bytes: u64) {
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> RebuildProfile {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (overlap_ns, idle_ns) = {
            let mut g = self.gauge.lock();
            g.tick();
            (g.overlap_ns, g.idle_ns)
        };
        RebuildProfile {
            chunks: l(&self.chunks),
            bytes: l(&self.bytes),
            charged_bytes: l(&self.charged_bytes),
            pace_ns: l(&self.pace_ns),
            lock_ns: l(&self.lock_ns),
            export_ns: l(&self.export_ns),
            import_ns: l(&self.import_ns),
            flush_ns: l(&self.flush_ns),
            flushes: l(&self.flushes),
            meta_ns: l(&self.meta_ns),
            move_ns: l(&self.move_ns),
            slot_wait_ns: l(&self.slot_wait_ns),
            stall_ns: l(&self.stall_ns),
            overlap_ns,
            idle_ns,
        }
    }
}

/// Per-engine rebuild pacing and progress.
#[derive(Debug)]
pub(crate) struct RebuildCtl {
    /// Where copies spend their time.
    pub(crate) profile: ProfileCounters,
    limits: Mutex<RebuildLimits>,
    pace: Mutex<Pace>,
    /// Guest operations counted at the last look, and when that count last changed.
    seen_ops: AtomicU64,
    ops_changed: Mutex<PaceInstant>,
    pass: Mutex<Pass>,
    /// Chunks per copy batch (`REBALANCE_BATCH` unless a test sets fewer).
    batch: AtomicUsize,
}

impl Default for RebuildCtl {
    fn default() -> Self {
        let now = PaceInstant::now();
        RebuildCtl {
            limits: Mutex::new(RebuildLimits::default()),
            pace: Mutex::new(Pace {
                bucket: Bucket::new(0, BURST_BYTES),
                last_refill: now,
            }),
            profile: ProfileCounters::default(),
            seen_ops: AtomicU64::new(0),
            ops_changed: Mutex::new(now.checked_sub(BUSY_WINDOW * 2).unwrap_or(now)),
            pass: Mutex::new(Pass::default()),
            batch: AtomicUsize::new(crate::background::REBALANCE_BATCH),
        }
    }
}

impl RebuildCtl {
    pub(crate) fn set_limits(&self, l: RebuildLimits) {
        *self.limits.lock() = l;
    }
    pub(crate) fn limits(&self) -> RebuildLimits {
        *self.limits.lock()
    }
    pub(crate) fn set_batch(&self, chunks: usize) {
        self.batch.store(chunks.max(1), Ordering::Relaxed);
    }
    pub(crate) fn batch(&self) -> usize {
        self.batch.load(Ordering::Relaxed)
    }

    /// A pass starts with `total` chunks to move. A pass with nothing to move keeps the
    /// figures of the last one that moved something (idle: not running, no estimate).
    pub(crate) fn begin(&self, total: u64) {
        let mut p = self.pass.lock();
        if total == 0 {
            p.started = None;
            p.progress.running = false;
            p.progress.eta_secs = None;
            return;
        }
        let keep = p.progress.clone();
        p.started = Some(Instant::now());
        p.progress = RebuildProgress {
            running: true,
            chunks_total: total,
            bytes_estimate: total * crate::CHUNK_BYTES,
            ceiling_bytes_per_sec: keep.ceiling_bytes_per_sec,
            throttled_ms: keep.throttled_ms,
            guest_yields: keep.guest_yields,
            ..RebuildProgress::default()
        };
    }

    /// One chunk of the pass finished (`bytes` copied for it).
    pub(crate) fn chunk_done(&self, bytes: u64) {
        let mut p = self.pass.lock();
        let elapsed = p.started.map(|s| s.elapsed());
        let g = &mut p.progress;
        g.chunks_done = (g.chunks_done + 1).min(g.chunks_total);
        g.bytes_done += bytes;
        if let Some(el) = elapsed.filter(|e| !e.is_zero()) {
            g.rate_bytes_per_sec = (g.bytes_done as f64 / el.as_secs_f64()) as u64;
            let left = g.chunks_total - g.chunks_done;
            g.eta_secs = if left == 0 {
                Some(0)
            } else {
                let per_chunk = el.as_secs_f64() / g.chunks_done as f64;
                Some((per_chunk * left as f64).ceil() as u64)
            };
        }
    }

    /// The pass ended: no estimate while idle.
    pub(crate) fn end(&self) {
        let mut p = self.pass.lock();
        p.started = None;
        p.progress.running = false;
        p.progress.eta_secs = None;
    }

    pub(crate) fn progress(&self) -> RebuildProgress {
        self.pass.lock().progress.clone()
    }

    /// Take the guest operation count now as seen, without calling it activity: a count
    /// that changed since a look long ago says nothing about guest I/O *now* (the first
    /// chunk of a rebuild after a quiet spell would otherwise run at the busy ceiling for a
    /// whole `BUSY_WINDOW`). The next look sees any I/O from here on.
    fn prime(&self, ops_now: u64) {
        self.seen_ops.store(ops_now, Ordering::Release);
    }

    /// Whether guests did I/O within `BUSY_WINDOW` (given their total operation count now).
    fn guest_busy(&self, ops_now: u64) -> bool {
        if self.seen_ops.swap(ops_now, Ordering::AcqRel) != ops_now {
            *self.ops_changed.lock() = PaceInstant::now();
            return true;
        }
        self.ops_changed.lock().elapsed() < BUSY_WINDOW
    }

    /// Charge the bytes of a copy that was not paced (no ticket) to the bucket.
    pub(crate) fn charge(&self, bytes: u64) {
        self.profile
            .charged_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        self.pace.lock().bucket.charge(bytes);
    }
}

/// A chunk copy's admission by the throttle: the bytes reserved in the bucket when it was let
/// in. The copy charges what it moves ([`PaceTicket::charge`]); what is left of the
/// reservation is given back when the ticket is dropped.
#[must_use = "a copy charges its bytes to its ticket"]
pub(crate) struct PaceTicket<'a> {
    ctl: &'a RebuildCtl,
    reserved: u64,
}

impl PaceTicket<'_> {
    /// A copy landed with `bytes` moved: they count against the reservation first, the rest
    /// is charged to the bucket.
    pub(crate) fn charge(&mut self, bytes: u64) {
        self.ctl
            .profile
            .charged_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        let covered = bytes.min(self.reserved);
        self.reserved -= covered;
        if bytes > covered {
            self.ctl.pace.lock().bucket.charge(bytes - covered);
        }
    }
}

impl Drop for PaceTicket<'_> {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.ctl.pace.lock().bucket.refund(self.reserved);
        }
    }
}

impl crate::Engine {
    /// Where chunk copies spent their time since the engine started (see `RebuildProfile`).
    pub fn rebuild_profile(&self) -> RebuildProfile {
        self.inner.rebuild.profile.get()
    }
}

/// Guest requests counted by the engine so far (reads, writes, flushes, discards).
fn guest_ops(inner: &Inner) -> u64 {
    let c = &inner.counters;
    c.reads.load(Ordering::Relaxed)
        + c.writes.load(Ordering::Relaxed)
        + c.flushes.load(Ordering::Relaxed)
        + c.discards.load(Ordering::Relaxed)
}

impl Inner {
    /// At the start of a pass of chunk copies: see `RebuildCtl::prime`.
    pub(crate) fn prime_pacing(&self) {
        self.rebuild.prime(guest_ops(self));
    }

    /// Before copying a chunk from `src` to `dst`: give way to guest I/O queued on them, then
    /// wait until the bucket is out of debt and reserve one chunk in it (see the module docs).
    /// Called with no lock held; the copy charges what it moves to the ticket.
    pub(crate) async fn pace_copy(&self, src: &Disk, dst: &Disk) -> PaceTicket<'_> {
        let ctl = &self.rebuild;
        let t_prof = Instant::now();
        let t0 = PaceInstant::now();
        let mut yielded = false;
        while (src.inflight.load(Ordering::Relaxed) > 0 || dst.inflight.load(Ordering::Relaxed) > 0)
            && t0.elapsed() < MAX_YIELD
            && !self.shutting_down.load(Ordering::Acquire)
        {
            yielded = true;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (ceiling, busy, reserved) = loop {
            let busy = yielded || ctl.guest_busy(guest_ops(self));
            let ceiling = ctl.limits().ceiling(busy);
            // The check and the reservation under one lock: copies paced at once cannot all
            // start on the same tokens.
            let wait = {
                let mut p = ctl.pace.lock();
                let now = PaceInstant::now();
                let dt = now.duration_since(p.last_refill);
                p.last_refill = now;
                p.bucket.refill(dt);
                p.bucket.set_rate(ceiling);
                if ceiling == 0 {
                    // No ceiling: forget any debt so a later ceiling starts fresh.
                    p.bucket = Bucket::new(0, BURST_BYTES);
                    Duration::ZERO
                } else {
                    let w = p.bucket.wait();
                    if w.is_zero() {
                        p.bucket.charge(crate::CHUNK_BYTES);
                    }
                    w
                }
            };
            if wait.is_zero() || self.shutting_down.load(Ordering::Acquire) {
                let reserved = if wait.is_zero() && ceiling != 0 {
                    crate::CHUNK_BYTES
                } else {
                    0
                };
                break (ceiling, busy, reserved);
            }
            // Another copy may take the tokens first: look again after the wait.
            tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
        };
        {
            let mut g = ctl.pass.lock();
            g.progress.ceiling_bytes_per_sec = ceiling;
            g.progress.guest_busy = busy;
            if yielded {
                g.progress.guest_yields += 1;
            }
            // Yielding to guests and waiting for the bucket.
            g.progress.throttled_ms += t0.elapsed().as_millis() as u64;
        }
        ctl.profile.add(Phase::Pace, t_prof);
        PaceTicket { ctl, reserved }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = crate::CHUNK_BYTES;

    /// A copier that starts a chunk whenever the bucket allows moves at most the ceiling per
    /// refill (plus the one burst and one chunk of overdraft), and no less than the ceiling
    /// allows: pure accounting, no clock.
    #[test]
    fn bucket_obeys_its_ceiling_per_refill() {
        let rate = 10 * CHUNK; // bytes per second
        let tick = Duration::from_millis(100);
        let mut b = Bucket::new(rate, BURST_BYTES);
        let mut moved_total = 0u64;
        let refills = 200u64;
        for i in 0..refills {
            b.refill(tick);
            let mut moved = 0;
            while b.wait().is_zero() {
                b.charge(CHUNK);
                moved += CHUNK;
            }
            // After the first refill (which may spend the burst), each refill admits at most
            // its own tokens plus one chunk of overdraft.
            if i > 0 {
                assert!(moved <= rate / 10 + CHUNK, "refill {i} moved {moved}");
            }
            moved_total += moved;
        }
        let allowed = rate * refills / 10;
        assert!(
            moved_total <= allowed + BURST_BYTES + CHUNK,
            "{moved_total}"
        );
        assert!(
            moved_total + CHUNK >= allowed,
            "ceiling not reached: {moved_total}"
        );
        // A debt is waited out in proportion to its size.
        let mut d = Bucket::new(rate, 0);
        d.charge(rate / 2);
        assert_eq!(d.wait(), Duration::from_millis(500));
        d.refill(Duration::from_millis(500));
        assert!(d.wait().is_zero());
    }

    /// A ticket's reservation covers the copy's bytes; what it did not use goes back to the
    /// bucket when it is dropped, and bytes beyond it become debt.
    #[test]
    fn a_ticket_gives_back_what_its_copy_did_not_move() {
        let c = RebuildCtl::default();
        let tokens = |c: &RebuildCtl| c.pace.lock().bucket.tokens;
        c.pace.lock().bucket = Bucket::new(CHUNK, 2 * CHUNK);
        // Admitted: one chunk reserved.
        c.pace.lock().bucket.charge(CHUNK);
        let mut t = PaceTicket {
            ctl: &c,
            reserved: CHUNK,
        };
        t.charge(CHUNK / 4);
        drop(t);
        assert_eq!(tokens(&c), i128::from(2 * CHUNK - CHUNK / 4));
        // A copy onto two targets moves more than it reserved: the rest is charged.
        c.pace.lock().bucket.charge(CHUNK);
        let mut t = PaceTicket {
            ctl: &c,
            reserved: CHUNK,
        };
        t.charge(CHUNK);
        t.charge(CHUNK);
        drop(t);
        assert_eq!(tokens(&c), -i128::from(CHUNK / 4));
        assert_eq!(c.profile.get().charged_bytes, CHUNK / 4 + 2 * CHUNK);
        // A copy that moved nothing gives its whole reservation back (never above a full
        // bucket).
        let mut b = Bucket::new(CHUNK, 2 * CHUNK);
        b.charge(CHUNK);
        b.refund(3 * CHUNK);
        assert_eq!(b.tokens, i128::from(2 * CHUNK));
    }

    /// Overlap counts only the time an export and an import are both in flight; idle only
    /// the time within a pass with neither.
    #[test]
    fn the_gauge_tells_overlap_from_idle() {
        let p = ProfileCounters::default();
        let nap = || std::thread::sleep(Duration::from_millis(3));
        let e = p.in_flight(Kind::Export);
        nap();
        assert_eq!((p.get().overlap_ns, p.get().idle_ns), (0, 0));
        let i = p.in_flight(Kind::Import);
        nap();
        drop(e);
        let overlap = p.get().overlap_ns;
        assert!(overlap >= 3_000_000, "{overlap}");
        drop(i);
        nap(); // nothing in flight, no pass: not idle time
        assert_eq!(p.get().idle_ns, 0);
        let pass = p.in_flight(Kind::Pass);
        nap();
        drop(pass);
        let g = p.get();
        assert!(g.idle_ns >= 3_000_000, "{g:?}");
        assert_eq!(g.overlap_ns, overlap);
    }

    #[test]
    fn ceiling_is_none_when_idle_by_default_and_capped_when_busy() {
        let l = RebuildLimits::default();
        assert_eq!(l.ceiling(false), 0);
        assert_eq!(l.ceiling(true), DEFAULT_BUSY_BYTES_PER_SEC);
        let l = RebuildLimits {
            max_bytes_per_sec: 10,
            busy_bytes_per_sec: 20,
        };
        assert_eq!((l.ceiling(false), l.ceiling(true)), (10, 10));
        let l = RebuildLimits {
            max_bytes_per_sec: 30,
            busy_bytes_per_sec: 0,
        };
        assert_eq!(l.ceiling(true), 30);
    }

    #[test]
    fn progress_reaches_total_and_has_no_eta_when_idle() {
        let c = RebuildCtl::default();
        assert_eq!(c.progress().eta_secs, None);
        c.begin(3);
        assert!(c.progress().running);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(2));
            c.chunk_done(CHUNK);
        }
        // A stray extra completion never pushes done past total.
        c.chunk_done(CHUNK);
        let p = c.progress();
        assert_eq!((p.chunks_done, p.chunks_total), (3, 3));
        assert_eq!(p.bytes_done, 4 * CHUNK);
        assert_eq!(p.eta_secs, Some(0));
        assert!(p.rate_bytes_per_sec > 0);
        c.end();
        let p = c.progress();
        assert!(!p.running);
        assert_eq!(p.eta_secs, None);
        // An empty pass keeps the last figures, idle.
        c.begin(0);
        let q = c.progress();
        assert!(!q.running);
        assert_eq!(q.eta_secs, None);
        assert_eq!((q.chunks_done, q.chunks_total), (3, 3));
        // A new pass starts from zero.
        c.begin(5);
        let q = c.progress();
        assert_eq!((q.chunks_done, q.chunks_total, q.bytes_done), (0, 5, 0));
    }
}
