//! A fault-injecting wrapper around any `BlockDevice`, for tests of the layers above.
//!
//! It owns a volatile write cache (every write and discard since the last flush) in front of the
//! wrapped device, a seeded generator, and a set of fault rules. It can fail reads, writes, flushes
//! and discards with EIO (next N calls, a probability, or a byte range), tear a write (only some
//! 512-byte sectors land), flip bits on reads or at rest, and simulate a power cut: every cached
//! write is independently kept, dropped or torn, and the handle refuses I/O until `restore()` (or a
//! fresh handle from `reopen()`). Everything a completed flush covered is on the wrapped device and
//! is never lost. A failed flush poisons the handle.
//!
//! Given the same seed and the same sequence of calls, every decision is the same. It must never
//! be used outside tests and fault drills: cached writes are only on the wrapped device after a
//! flush, a memory-pressure write-back or a power cut that keeps them.

mod overlay;
mod rng;
mod rules;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::{
    check_io, AlignedBuf, BlockDevice, BlockError, BoxFuture, DeviceInfo, ErrorKind, Result,
    WriteBuf, BLOCK_SIZE,
};
use overlay::{Overlay, Pending};
use rng::SplitMix64;
use rules::{Effect, Rules};
pub use rules::{FaultOp, Trigger};

/// Torn writes and power cuts work at this granularity (the atomic unit of old disks).
pub const SECTOR_SIZE: usize = 512;

/// By default the cache writes its oldest entries back once it holds more than this.
const DEFAULT_MAX_UNFLUSHED_BYTES: u64 = 256 << 20;

/// How a power cut treats each unflushed write. The rest of the probability mass is "dropped".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerCutPolicy {
    /// Probability a write survives whole.
    pub keep: f64,
    /// Probability a write survives in part (a random subset of its sectors).
    pub tear: f64,
}

impl Default for PowerCutPolicy {
    fn default() -> Self {
        Self {
            keep: 0.35,
            tear: 0.3,
        }
    }
}

/// What a power cut did to the unflushed writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    pub kept: u64,
    pub dropped: u64,
    pub torn: u64,
}

/// Counts of injected faults, so tests can assert a fault really happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub read_errors: u64,
    pub write_errors: u64,
    pub flush_errors: u64,
    pub discard_errors: u64,
    pub torn_writes: u64,
    pub read_flips: u64,
    pub corrupted_blocks: u64,
    pub power_cuts: u64,
}

struct State {
    rng: SplitMix64,
    rules: Rules,
    overlay: Overlay,
    /// Bumped by every power cut; a handle whose generation differs refuses I/O.
    generation: u64,
    policy: PowerCutPolicy,
    max_unflushed_bytes: u64,
    stats: FaultStats,
}

struct Shared {
    inner: Arc<dyn BlockDevice>,
    info: DeviceInfo,
    state: Mutex<State>,
    /// Serialises everything that moves cached writes to the inner device (flush, write-back,
    /// power cut, corruption), so a power cut never races a half-done write-back.
    io_lock: futures::lock::Mutex<()>,
}

/// The fault-injecting device. Wrap it in an `Arc` and use it as an `Arc<dyn BlockDevice>`.
pub struct FaultDevice {
    shared: Arc<Shared>,
    generation: AtomicU64,
    poisoned: AtomicBool,
}

fn eio(context: impl Into<String>) -> BlockError {
    BlockError::io(
        ErrorKind::Io,
        context,
        io::Error::from_raw_os_error(libc::EIO),
    )
}

enum Fate {
    Keep,
    Drop,
    /// Which sectors land.
    Tear(Vec<bool>),
}

/// A sector mask where at least one sector lands and, if there are several, at least one doesn't.
fn tear_mask(rng: &mut SplitMix64, len: u64) -> Vec<bool> {
    let sectors = (len / SECTOR_SIZE as u64) as usize;
    let mut mask: Vec<bool> = (0..sectors).map(|_| rng.chance(0.5)).collect();
    if sectors > 1 && mask.iter().all(|&m| m) {
        mask[rng.below(sectors as u64) as usize] = false;
    }
    if !mask.iter().any(|&m| m) {
        mask[rng.below(sectors as u64) as usize] = true;
    }
    mask
}

/// Copy the sectors of `new` selected by `mask` over `old` (both the same length).
fn merge_sectors(old: &mut [u8], new: Option<&[u8]>, mask: &[bool]) {
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let r = i * SECTOR_SIZE..(i + 1) * SECTOR_SIZE;
        match new {
            Some(n) => old[r.clone()].copy_from_slice(&n[r]),
            None => old[r].fill(0),
        }
    }
}

impl FaultDevice {
    /// Wrap `inner`; every random decision derives from `seed`.
    pub fn new(inner: Arc<dyn BlockDevice>, seed: u64) -> Self {
        let mut info = inner.info().clone();
        info.name = format!("fault:{}", info.name);
        let state = State {
            rng: SplitMix64::new(seed),
            rules: Rules::default(),
            overlay: Overlay::default(),
            generation: 0,
            policy: PowerCutPolicy::default(),
            max_unflushed_bytes: DEFAULT_MAX_UNFLUSHED_BYTES,
            stats: FaultStats::default(),
        };
        let shared = Arc::new(Shared {
            inner,
            info,
            state: Mutex::new(state),
            io_lock: futures::lock::Mutex::new(()),
        });
        Self {
            shared,
            generation: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// The wrapped device (it lags behind this one by the unflushed writes).
    pub fn inner(&self) -> &Arc<dyn BlockDevice> {
        &self.shared.inner
    }

    /// Return EIO on `op` when `trigger` fires.
    pub fn fail(&self, op: FaultOp, trigger: Trigger) {
        self.shared
            .state
            .lock()
            .rules
            .add(Effect::Fail(op), trigger);
    }

    /// Tear writes when `trigger` fires: a random non-empty, incomplete subset of the write's
    /// 512-byte sectors lands (the rest keep their old contents) and the write returns EIO.
    pub fn tear_writes(&self, trigger: Trigger) {
        self.shared.state.lock().rules.add(Effect::Tear, trigger);
    }

    /// Flip one random bit in every 4 KiB block a read returns when `trigger` fires; the data on
    /// the device stays intact.
    pub fn flip_reads(&self, trigger: Trigger) {
        self.shared
            .state
            .lock()
            .rules
            .add(Effect::FlipRead, trigger);
    }

    /// Remove every fault rule (power cut and poisoning state are unaffected).
    pub fn clear_faults(&self) {
        self.shared.state.lock().rules.clear();
    }

    pub fn set_power_cut_policy(&self, policy: PowerCutPolicy) {
        self.shared.state.lock().policy = policy;
    }

    /// Bound the volatile cache; beyond it the oldest writes are written back (as a real disk
    /// cache does), which makes them survive a later power cut.
    pub fn set_max_unflushed_bytes(&self, bytes: u64) {
        self.shared.state.lock().max_unflushed_bytes = bytes.max(BLOCK_SIZE as u64);
    }

    pub fn stats(&self) -> FaultStats {
        self.shared.state.lock().stats
    }

    /// Writes and discards not yet on the wrapped device.
    pub fn unflushed_writes(&self) -> usize {
        self.shared.state.lock().overlay.len()
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Whether a power cut happened since this handle was made or restored.
    pub fn is_cut(&self) -> bool {
        self.generation.load(Ordering::Acquire) != self.shared.state.lock().generation
    }

    /// Power comes back: this handle accepts I/O again and is no longer poisoned.
    pub fn restore(&self) {
        let st = self.shared.state.lock();
        self.generation.store(st.generation, Ordering::Release);
        self.poisoned.store(false, Ordering::Release);
    }

    /// A fresh handle on the same device, rules and generator (the "restarted process"); the
    /// old handle stays dead after a power cut, so stragglers of the old instance cannot write.
    pub fn reopen(&self) -> FaultDevice {
        let generation = self.shared.state.lock().generation;
        FaultDevice {
            shared: self.shared.clone(),
            generation: AtomicU64::new(generation),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Lock the state if this handle may do I/O.
    fn admitted(&self) -> Result<MutexGuard<'_, State>> {
        let st = self.shared.state.lock();
        if self.generation.load(Ordering::Acquire) != st.generation {
            return Err(BlockError::new(
                ErrorKind::Gone,
                format!(
                    "{}: power was cut; restore() or reopen() first",
                    self.shared.info.name
                ),
            ));
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(BlockError::new(
                ErrorKind::Poisoned,
                format!(
                    "{}: a flush failed earlier; device is poisoned",
                    self.shared.info.name
                ),
            ));
        }
        Ok(st)
    }

    /// Current contents as the layer above sees them: the wrapped device patched by the cache.
    async fn read_visible(&self, offset: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        // Take the cached blocks before reading the inner device: a block leaves the cache only
        // after it reached the inner device, so this order never returns stale data.
        let cached = self
            .shared
            .state
            .lock()
            .overlay
            .cached_in(offset, buf.len() as u64);
        let mut buf = self.shared.inner.read_at(offset, buf).await?;
        let bs = BLOCK_SIZE as u64;
        for (block, c) in cached {
            let start = (block * bs - offset) as usize;
            let dst = &mut buf[start..start + BLOCK_SIZE];
            match &c.data {
                Some(d) => dst.copy_from_slice(d.as_slice()),
                None => dst.fill(0),
            }
        }
        Ok(buf)
    }

    async fn do_read(&self, offset: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        let flip = {
            let mut st = self.admitted()?;
            check_io(&self.shared.info, offset, buf.len() as u64)?;
            let st = &mut *st;
            let range = Some((offset, buf.len() as u64));
            if st
                .rules
                .fires(Effect::Fail(FaultOp::Read), range, &mut st.rng)
            {
                st.stats.read_errors += 1;
                return Err(eio(format!(
                    "{}: injected read error at {offset}",
                    self.shared.info.name
                )));
            }
            st.rules.fires(Effect::FlipRead, range, &mut st.rng)
        };
        let mut buf = self.read_visible(offset, buf).await?;
        let mut st = self.admitted()?;
        if flip {
            for block in buf.chunks_mut(BLOCK_SIZE) {
                let bit = st.rng.below(BLOCK_SIZE as u64 * 8) as usize;
                block[bit / 8] ^= 1 << (bit % 8);
            }
            st.stats.read_flips += 1;
        }
        Ok(buf)
    }

    async fn do_write(&self, offset: u64, data: Option<WriteBuf>, len: u64) -> Result<()> {
        let op = if data.is_some() {
            FaultOp::Write
        } else {
            FaultOp::Discard
        };
        let tear = {
            let mut st = self.admitted()?;
            check_io(&self.shared.info, offset, len)?;
            let st = &mut *st;
            let range = Some((offset, len));
            if st.rules.fires(Effect::Fail(op), range, &mut st.rng) {
                match op {
                    FaultOp::Write => st.stats.write_errors += 1,
                    _ => st.stats.discard_errors += 1,
                }
                return Err(eio(format!(
                    "{}: injected {op:?} error at {offset}+{len}",
                    self.shared.info.name
                )));
            }
            op == FaultOp::Write && st.rules.fires(Effect::Tear, range, &mut st.rng)
        };
        let data = match (tear, data) {
            (true, Some(new)) => {
                let mut old = self
                    .read_visible(offset, AlignedBuf::zeroed(new.len()))
                    .await?;
                let mask = {
                    let mut st = self.shared.state.lock();
                    st.stats.torn_writes += 1;
                    tear_mask(&mut st.rng, len)
                };
                merge_sectors(&mut old, Some(new.as_slice()), &mask);
                self.push(offset, len, Some(old.into_write())).await?;
                return Err(eio(format!(
                    "{}: injected torn write at {offset}+{len}",
                    self.shared.info.name
                )));
            }
            (_, data) => data,
        };
        self.push(offset, len, data).await
    }

    /// Put a write in the cache, writing the oldest entries back if the cache is over its bound.
    async fn push(&self, offset: u64, len: u64, data: Option<WriteBuf>) -> Result<()> {
        let over = {
            let mut st = self.admitted()?;
            st.overlay.push(offset, len, data);
            st.overlay.bytes() > st.max_unflushed_bytes
        };
        if over {
            let _g = self.shared.io_lock.lock().await;
            loop {
                let (cutoff, done) = {
                    let st = self.admitted()?;
                    let front = st.overlay.front().map_or(0, |p| p.seq);
                    (front, st.overlay.bytes() <= st.max_unflushed_bytes / 2)
                };
                if done || cutoff == 0 {
                    break;
                }
                self.write_back_upto(cutoff).await?;
            }
        }
        Ok(())
    }

    /// Apply one cached entry to the inner device as it was written.
    async fn apply(&self, p: &Pending) -> Result<()> {
        match &p.data {
            Some(d) => self.shared.inner.write_at(p.offset, d.clone()).await,
            None => self.shared.inner.discard(p.offset, p.len).await,
        }
    }

    /// Move cached entries with `seq <= cutoff` to the inner device, oldest first. Caller holds
    /// `io_lock`. Stops with `Gone` as soon as a power cut begins.
    async fn write_back_upto(&self, cutoff: u64) -> Result<()> {
        loop {
            let front = {
                let st = self.admitted()?;
                match st.overlay.front() {
                    Some(p) if p.seq <= cutoff => p.clone(),
                    _ => return Ok(()),
                }
            };
            self.apply(&front).await?;
            let popped = self.shared.state.lock().overlay.pop_written();
            assert_eq!(
                popped.map(|p| p.seq),
                Some(front.seq),
                "cache front changed under io_lock"
            );
        }
    }

    async fn do_flush(&self) -> Result<()> {
        let cutoff = {
            let mut st = self.admitted()?;
            let st = &mut *st;
            if st
                .rules
                .fires(Effect::Fail(FaultOp::Flush), None, &mut st.rng)
            {
                st.stats.flush_errors += 1;
                self.poisoned.store(true, Ordering::Release);
                return Err(eio(format!(
                    "{}: injected flush error",
                    self.shared.info.name
                )));
            }
            st.overlay.last_seq()
        };
        let _g = self.shared.io_lock.lock().await;
        let result = match self.write_back_upto(cutoff).await {
            Ok(()) => self.shared.inner.flush().await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind != ErrorKind::Gone => {
                self.poisoned.store(true, Ordering::Release);
                Err(e)
            }
            Err(e) => Err(e),
            // A cut that began during the inner flush means the flush never completed.
            Ok(()) => self.admitted().map(|_| ()),
        }
    }

    /// Cut the power: every handle stops accepting I/O at once, then each unflushed write is
    /// independently kept, dropped or torn (per the policy) on the wrapped device. Call
    /// `restore()` or `reopen()` to use the device again.
    pub async fn power_cut(&self) -> Result<PowerCutReport> {
        {
            let mut st = self.shared.state.lock();
            st.generation += 1;
            st.stats.power_cuts += 1;
        }
        let _g = self.shared.io_lock.lock().await;
        let decided: Vec<(Pending, Fate)> = {
            let mut st = self.shared.state.lock();
            let st = &mut *st;
            let policy = st.policy;
            let entries = st.overlay.take_all();
            entries
                .into_iter()
                .map(|p| {
                    let x = st.rng.next_f64();
                    let fate = if x < policy.keep {
                        Fate::Keep
                    } else if x < policy.keep + policy.tear {
                        Fate::Tear(tear_mask(&mut st.rng, p.len))
                    } else {
                        Fate::Drop
                    };
                    (p, fate)
                })
                .collect()
        };
        let mut report = PowerCutReport::default();
        for (p, fate) in decided {
            match fate {
                Fate::Keep => {
                    self.apply(&p).await?;
                    report.kept += 1;
                }
                Fate::Drop => report.dropped += 1,
                Fate::Tear(mask) => {
                    let buf = AlignedBuf::zeroed(p.len as usize);
                    let mut old = self.shared.inner.read_at(p.offset, buf).await?;
                    merge_sectors(&mut old, p.data.as_ref().map(|d| d.as_slice()), &mask);
                    self.shared
                        .inner
                        .write_at(p.offset, old.into_write())
                        .await?;
                    report.torn += 1;
                }
            }
        }
        Ok(report)
    }

    /// Corrupt data at rest: flip one random bit in every 4 KiB block of the range. Cached writes
    /// are written back first (as a disk would before the medium goes bad). Works on a cut
    /// device too. Returns the number of blocks corrupted.
    pub async fn corrupt(&self, offset: u64, len: u64) -> Result<u64> {
        check_io(&self.shared.info, offset, len)?;
        let _g = self.shared.io_lock.lock().await;
        loop {
            let front = self.shared.state.lock().overlay.front().cloned();
            let Some(p) = front else { break };
            self.apply(&p).await?;
            self.shared.state.lock().overlay.pop_written();
        }
        let bs = BLOCK_SIZE as u64;
        for block in offset / bs..(offset + len) / bs {
            let mut b = self
                .shared
                .inner
                .read_at(block * bs, AlignedBuf::zeroed(BLOCK_SIZE))
                .await?;
            let bit = {
                let mut st = self.shared.state.lock();
                st.stats.corrupted_blocks += 1;
                st.rng.below(bs * 8) as usize
            };
            b[bit / 8] ^= 1 << (bit % 8);
            self.shared
                .inner
                .write_at(block * bs, b.into_write())
                .await?;
        }
        Ok(len / bs)
    }
}

impl BlockDevice for FaultDevice {
    fn info(&self) -> &DeviceInfo {
        &self.shared.info
    }

    fn read_at(&self, offset: u64, buf: AlignedBuf) -> BoxFuture<'_, Result<AlignedBuf>> {
        Box::pin(self.do_read(offset, buf))
    }

    fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, Result<()>> {
        let len = data.len() as u64;
        Box::pin(self.do_write(offset, Some(data), len))
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_flush())
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_write(offset, None, len))
    }
}
