//! The data half of a run: the real engine over two mirrored `RamDevice`s behind seeded
//! `FaultDevice`s. Random writes, discards, flushes and reads run in cycles; one disk (the "bad"
//! one) gets EIO on reads, writes or flushes, torn writes or bit flips on reads; a seeded
//! tripwire may cut the power in the middle of an operation, and every cycle ends in a power cut
//! (unflushed writes kept, dropped or torn per a seeded policy) or a clean shutdown; the engine
//! then restarts on the same media.
//!
//! Checked against a model of every 4 KiB block: between restarts a read returns exactly the
//! last acknowledged value; after a restart each block holds its value as of the last completed
//! flush or one written after it (so every write acknowledged before a completed flush is
//! intact); reads never return anything else. The good disk never gets a fault, so every I/O must
//! succeed: an error is allowed only when both replicas are bad, which this workload never does.
//!
//! Must never: accept a value that no write produced, or excuse an error on a good replica.
use std::collections::BTreeSet;
use std::sync::Arc;

use blockdev::{BlockDevice, FaultDevice, FaultOp, PowerCutPolicy, RamDevice, Trigger};
use engine::{DiskState, Engine, EngineConfig, VdiskHandle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::SimError;
use crate::trace::Trace;
use crate::tripwire::{Tripwire, Wire};

const BS: usize = 4096;
const DISK_BYTES: u64 = 16 << 20;

/// Size of the data workload.
#[derive(Debug, Clone, Copy)]
pub struct DiskConfig {
    pub cycles: usize,
    pub ops_per_cycle: usize,
    /// Virtual disk size in 4 KiB blocks.
    pub blocks: u64,
    /// Also cut the power in the middle of operations (at a seeded write or flush).
    pub midop_cuts: bool,
}

/// What the data half of a run saw.
#[derive(Debug, Clone, Default)]
pub struct DiskReport {
    pub writes: u64,
    pub flushes: u64,
    pub reads: u64,
    pub restarts: u64,
    /// Blocks whose unflushed value was still there after a power cut.
    pub kept_unflushed: u64,
    /// Unflushed device writes a power cut dropped or tore.
    pub cut_lost_writes: u64,
    /// Faults the bad disk really injected (read/write/flush errors, tears, flips, corruptions).
    pub faults_injected: u64,
    /// The engine marked the bad disk failed, or refused it at a restart.
    pub bad_disk_dropped: bool,
}

/// Content of a block written with `tag` (tag 0: zeroes, the value of a never-written block).
fn content(tag: u64) -> Vec<u8> {
    if tag == 0 {
        return vec![0; BS];
    }
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(BS);
    while out.len() < BS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Which tag `got` is, among `cands`.
fn which(got: &[u8], cands: impl IntoIterator<Item = u64>) -> Option<u64> {
    cands.into_iter().find(|t| content(*t) == got)
}

/// Per-block model.
struct Model {
    /// What the media holds for sure since the last completed flush (or restart).
    durable: Vec<u64>,
    /// Values written since, that a crash may or may not keep.
    pending: Vec<BTreeSet<u64>>,
    /// What a read must return now; `None` when a failed write left it open.
    live: Vec<Option<u64>>,
    /// Tags below this were handed out (for naming stale values in reports).
    next_tag: u64,
}

impl Model {
    fn new(blocks: u64) -> Model {
        Model {
            durable: vec![0; blocks as usize],
            pending: vec![BTreeSet::new(); blocks as usize],
            live: vec![Some(0); blocks as usize],
            next_tag: 1,
        }
    }

    fn wrote(&mut self, b: usize, tag: u64, acked: bool) {
        self.next_tag = self.next_tag.max(tag + 1);
        self.pending[b].insert(tag);
        self.live[b] = acked.then_some(tag);
    }

    /// Checks a read of block `b` while the engine runs.
    fn check_read(&mut self, b: usize, got: &[u8]) -> Result<(), String> {
        match self.live[b] {
            Some(t) if content(t) == got => Ok(()),
            Some(t) => Err(format!(
                "block {b} read back {}, the last acknowledged write was tag {t}",
                describe(got, self.next_tag)
            )),
            None => {
                let t = which(
                    got,
                    std::iter::once(self.durable[b]).chain(self.pending[b].iter().copied()),
                )
                .ok_or_else(|| format!("block {b} reads a value never written"))?;
                self.live[b] = Some(t);
                Ok(())
            }
        }
    }

    /// After a completed flush (`img` read right after it) or a restart: the floor moves up.
    fn settle(&mut self, img: &[u8], after_restart: bool) -> Result<u64, String> {
        let mut kept = 0;
        for (b, got) in img.chunks(BS).enumerate() {
            let t = if after_restart {
                which(
                    got,
                    std::iter::once(self.durable[b]).chain(self.pending[b].iter().copied()),
                )
                .ok_or_else(|| {
                    format!(
                        "after restart block {b} holds {}: neither its flushed value (tag {}) nor \
                         a newer one",
                        describe(got, self.next_tag),
                        self.durable[b]
                    )
                })?
            } else {
                self.check_read(b, got)?;
                self.live[b].unwrap_or(0)
            };
            if after_restart && t != self.durable[b] {
                kept += 1;
            }
            self.durable[b] = t;
            self.pending[b].clear();
            self.live[b] = Some(t);
        }
        Ok(kept)
    }
}

/// Names what a block holds: zeroes, or the write (tag) that produced it, if any did.
fn describe(got: &[u8], next_tag: u64) -> String {
    if got.iter().all(|x| *x == 0) {
        return "zeroes (an older value)".into();
    }
    match which(got, 1..next_tag) {
        Some(t) => format!("tag {t} (an older value)"),
        None => "bytes no write produced".into(),
    }
}

struct Run {
    rng: StdRng,
    /// A stream of its own, so adding mid-operation cuts left the other decisions unchanged.
    cut_rng: StdRng,
    trace: Trace,
    cfg: DiskConfig,
    ram: Vec<Arc<RamDevice>>,
    devs: Vec<Arc<FaultDevice>>,
    /// Cuts the power in the middle of an operation when armed (one per engine instance).
    wire: Arc<Wire>,
    bad: usize,
    /// The bad disk got a fault that may make the engine fail it (or refuse it at a restart).
    bad_may_go: bool,
    /// The bad disk is out of the pool: no more faults for it.
    bad_gone: bool,
    model: Model,
    next_tag: u64,
    report: DiskReport,
}

fn fail(cycle: usize, what: impl std::fmt::Display) -> SimError {
    SimError::Check(format!("disk cycle {cycle}: {what}"))
}

impl Run {
    async fn start(&mut self, cycle: usize) -> Result<(Engine, VdiskHandle), SimError> {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "sim".into(),
        })
        .await
        .map_err(|e| fail(cycle, format!("engine open: {e}")))?;
        self.wire = Wire::new(&self.devs);
        for (i, d) in self.devs.iter().enumerate() {
            let dev = Arc::new(Tripwire {
                dev: d.clone(),
                wire: self.wire.clone(),
            });
            match e.add_disk(dev as Arc<dyn BlockDevice>).await {
                Ok(_) => {}
                Err(err) if i == self.bad && (self.bad_may_go || self.bad_gone) => {
                    self.trace.event(format!("disk: bad disk refused: {err}"));
                    self.bad_gone = true;
                    self.report.bad_disk_dropped = true;
                }
                Err(err) => return Err(fail(cycle, format!("add_disk {i}: {err}"))),
            }
        }
        if cycle == 0 {
            e.create_vdisk("v", self.cfg.blocks * BS as u64)
                .await
                .map_err(|e| fail(cycle, format!("create_vdisk: {e}")))?;
        }
        let h = e
            .open_vdisk("v")
            .map_err(|e| fail(cycle, format!("open_vdisk: {e}")))?;
        if cycle == 0 {
            h.flush()
                .await
                .map_err(|e| fail(cycle, format!("first flush: {e}")))?;
        }
        Ok((e, h))
    }

    /// Arms this cycle's fault on the bad disk.
    fn arm_fault(&mut self, cycle: usize) {
        if self.bad_gone {
            return;
        }
        let d = &self.devs[self.bad];
        let p = self.rng.gen_range(0.05..0.3);
        let n = self.rng.gen_range(1..4);
        let what = match self.rng.gen_range(0..8) {
            0 => {
                d.fail(FaultOp::Read, Trigger::Probability(p));
                "read EIO"
            }
            1 => {
                d.flip_reads(Trigger::Probability(p));
                "read bit flips"
            }
            2 => {
                d.fail(FaultOp::Write, Trigger::Next(n));
                self.bad_may_go = true;
                "write EIO"
            }
            3 => {
                d.tear_writes(Trigger::Next(1));
                self.bad_may_go = true;
                "torn write"
            }
            4 => {
                d.fail(FaultOp::Flush, Trigger::Next(1));
                self.bad_may_go = true;
                "flush EIO"
            }
            _ => "none",
        };
        self.trace.event(format!(
            "disk: cycle {cycle} fault on disk {}: {what}",
            self.bad
        ));
    }

    async fn read_all(&self, h: &VdiskHandle) -> Result<Vec<u8>, engine::EngineError> {
        let mut img = vec![0u8; self.cfg.blocks as usize * BS];
        h.read(0, &mut img).await?;
        Ok(img)
    }

    /// One random operation; `Ok(false)` when the power went in the middle of it.
    async fn op(&mut self, cycle: usize, e: &Engine, h: &VdiskHandle) -> Result<bool, SimError> {
        let state = |e: &Engine| {
            let disks: Vec<_> = e.disks().iter().map(|d| (d.state, d.errors)).collect();
            format!(
                "disks (state, errors) {disks:?}, degraded chunks {}",
                e.pool().degraded_chunks
            )
        };
        let blocks = self.cfg.blocks;
        match self.rng.gen_range(0..20) {
            0..=8 => {
                let n = self.rng.gen_range(1..=8u64).min(blocks);
                let b = self.rng.gen_range(0..=blocks - n);
                let tags: Vec<u64> = (0..n).map(|i| self.next_tag + i).collect();
                self.next_tag += n;
                let data: Vec<u8> = tags.iter().flat_map(|t| content(*t)).collect();
                let r = h.write(b * BS as u64, &data).await;
                self.trace.event(format!(
                    "disk: write {b}+{n} -> {:?}",
                    r.as_ref().map_err(|e| e.kind())
                ));
                let cut = self.wire.fired();
                for (i, t) in tags.iter().enumerate() {
                    self.model
                        .wrote((b + i as u64) as usize, *t, r.is_ok() && !cut);
                }
                self.report.writes += 1;
                if cut {
                    return Ok(false);
                }
                r.map_err(|err| {
                    fail(
                        cycle,
                        format!("write failed with one good replica: {err}; {}", state(e)),
                    )
                })?;
            }
            9 => {
                let n = self.rng.gen_range(1..=16u64).min(blocks);
                let b = self.rng.gen_range(0..=blocks - n);
                let r = h.discard(b * BS as u64, n * BS as u64).await;
                self.trace.event(format!(
                    "disk: discard {b}+{n} -> {:?}",
                    r.as_ref().map_err(|e| e.kind())
                ));
                let cut = self.wire.fired();
                for i in b..b + n {
                    self.model.wrote(i as usize, 0, r.is_ok() && !cut);
                }
                if cut {
                    return Ok(false);
                }
                r.map_err(|e| fail(cycle, format!("discard failed: {e}")))?;
            }
            10..=12 => {
                let r = h.flush().await;
                self.trace.event(format!(
                    "disk: flush -> {:?}",
                    r.as_ref().map_err(|e| e.kind())
                ));
                self.report.flushes += 1;
                if self.wire.fired() {
                    return Ok(false);
                }
                r.map_err(|err| {
                    fail(
                        cycle,
                        format!("flush failed with one good replica: {err}; {}", state(e)),
                    )
                })?;
                let img = self
                    .read_all(h)
                    .await
                    .map_err(|e| fail(cycle, format!("read after flush: {e}")))?;
                self.model.settle(&img, false).map_err(|e| fail(cycle, e))?;
            }
            _ => {
                let n = self.rng.gen_range(1..=16u64).min(blocks);
                let b = self.rng.gen_range(0..=blocks - n);
                let mut buf = vec![0u8; n as usize * BS];
                let r = h.read(b * BS as u64, &mut buf).await;
                self.trace.event(format!(
                    "disk: read {b}+{n} -> {:?}",
                    r.as_ref().map_err(|e| e.kind())
                ));
                self.report.reads += 1;
                if self.wire.fired() {
                    return Ok(false);
                }
                r.map_err(|err| {
                    fail(
                        cycle,
                        format!("read failed with one good replica: {err}; {}", state(e)),
                    )
                })?;
                for (i, got) in buf.chunks(BS).enumerate() {
                    self.model
                        .check_read(b as usize + i, got)
                        .map_err(|e| fail(cycle, e))?;
                }
            }
        }
        Ok(true)
    }

    /// Ends a cycle: a clean shutdown or a power cut, then fresh device handles.
    async fn stop(&mut self, cycle: usize, e: Engine, h: VdiskHandle) -> Result<(), SimError> {
        self.wire.arm(0);
        if self.wire.fired() {
            let lost = self.wire.lost();
            self.trace.event(format!(
                "disk: power cut in the middle of an operation, {lost} writes lost"
            ));
            self.report.cut_lost_writes += lost;
            return self.reopen(e, h);
        }
        let clean = self.rng.gen_range(0..5) == 0;
        if clean {
            let r = e.shutdown().await;
            self.trace.event(format!(
                "disk: shutdown -> {:?}",
                r.as_ref().map_err(|e| e.kind())
            ));
            r.map_err(|e| fail(cycle, format!("shutdown: {e}")))?;
            // A clean shutdown flushes: every acknowledged value is now the floor.
            let m = &mut self.model;
            for b in 0..m.live.len() {
                if let Some(t) = m.live[b] {
                    m.durable[b] = t;
                    m.pending[b].clear();
                }
            }
        }
        let policy = match self.rng.gen_range(0..3) {
            0 => PowerCutPolicy::default(),
            1 => PowerCutPolicy {
                keep: 1.0,
                tear: 0.0,
            },
            _ => PowerCutPolicy {
                keep: 0.0,
                tear: 0.5,
            },
        };
        for d in &self.devs {
            d.set_power_cut_policy(policy);
        }
        let cuts = futures::future::join_all(self.devs.iter().map(|d| d.power_cut())).await;
        for c in cuts {
            let c = c.map_err(|e| fail(cycle, format!("power cut: {e}")))?;
            self.trace
                .event(format!("disk: power cut {policy:?}: {c:?}"));
        }
        self.reopen(e, h)
    }

    /// The devices after a cut, as a restarted process sees them.
    fn reopen(&mut self, e: Engine, h: VdiskHandle) -> Result<(), SimError> {
        if !e.disks().iter().all(|d| d.state != DiskState::Failed) {
            self.report.bad_disk_dropped = true;
        }
        drop(h);
        drop(e);
        self.report.faults_injected = self
            .devs
            .iter()
            .map(|d| {
                let s = d.stats();
                s.read_errors
                    + s.write_errors
                    + s.flush_errors
                    + s.torn_writes
                    + s.read_flips
                    + s.corrupted_blocks
            })
            .sum();
        self.devs = self.devs.iter().map(|d| Arc::new(d.reopen())).collect();
        for d in &self.devs {
            d.clear_faults();
        }
        Ok(())
    }
}

/// Runs the data half of seed `seed`.
pub async fn run(seed: u64, cfg: DiskConfig, trace: Trace) -> Result<DiskReport, SimError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ram: Vec<Arc<RamDevice>> = (0..2)
        .map(|i| Arc::new(RamDevice::new(format!("ram{i}"), DISK_BYTES)))
        .collect();
    let devs = ram
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Arc::new(FaultDevice::new(
                r.clone() as Arc<dyn BlockDevice>,
                seed.wrapping_add(i as u64)
                    .wrapping_mul(0x2545_f491_4f6c_dd1d),
            ))
        })
        .collect();
    let bad = rng.gen_range(0..2);
    let mut run = Run {
        rng,
        cut_rng: StdRng::seed_from_u64(seed ^ 0x0c07),
        trace,
        cfg,
        ram,
        devs,
        wire: Wire::new(&[]),
        bad,
        bad_may_go: false,
        bad_gone: false,
        model: Model::new(cfg.blocks),
        next_tag: 1,
        report: DiskReport::default(),
    };
    for cycle in 0..cfg.cycles {
        let (e, h) = run.start(cycle).await?;
        if cycle > 0 {
            run.report.restarts += 1;
            let img = run
                .read_all(&h)
                .await
                .map_err(|e| fail(cycle, format!("read after restart: {e}")))?;
            let mut again = vec![0u8; img.len()];
            h.read(0, &mut again)
                .await
                .map_err(|e| fail(cycle, format!("second read after restart: {e}")))?;
            if img != again {
                return Err(fail(cycle, "two reads after restart differ"));
            }
            let kept = run.model.settle(&img, true).map_err(|e| fail(cycle, e))?;
            run.report.kept_unflushed += kept;
            run.trace.event(format!(
                "disk: restart {cycle} verified, {kept} unflushed kept, degraded chunks {}",
                e.pool().degraded_chunks
            ));
        }
        if cycle == 0 {
            run.trace.event(format!(
                "disk: started, degraded chunks {}",
                e.pool().degraded_chunks
            ));
        }
        run.arm_fault(cycle);
        if cfg.midop_cuts && run.cut_rng.gen_bool(0.5) {
            let n = run.cut_rng.gen_range(1..=cfg.ops_per_cycle as i64 * 3);
            run.wire.arm(n);
            run.trace
                .event(format!("disk: power cut armed at write/flush {n}"));
        }
        for _ in 0..cfg.ops_per_cycle {
            if !run.op(cycle, &e, &h).await? {
                break;
            }
        }
        run.stop(cycle, e, h).await?;
    }
    // Final: clean media, a last restart must verify too.
    let (e, h) = run.start(cfg.cycles).await?;
    let img = run
        .read_all(&h)
        .await
        .map_err(|e| fail(cfg.cycles, format!("final read: {e}")))?;
    run.model
        .settle(&img, true)
        .map_err(|e| fail(cfg.cycles, e))?;
    let _ = e.shutdown().await;
    drop(run.ram);
    Ok(run.report)
}
