//! `cairn bench cluster`'s rebuild figures: how fast redundancy is rebuilt after a node is
//! lost, against the device's sequential write bandwidth measured in the same run.
//!
//! Set-up: three engines, one per node, on io_uring files pre-written like a block device
//! (through the same O_DIRECT device, so none of them sits in the page cache).
//! Node 1 owns a virtual disk and attaches node 2's and node 3's disks as its remote replicas
//! (the replica objects of those engines, as `mirror` does over the network, minus the
//! network); placement spreads each chunk's two replicas over two of the three nodes. The
//! virtual disk is filled, then node 3 is lost (its disk given up, as after the grace period)
//! and the rebuild copies node 3's share: chunks it shared with node 1 from node 1 onto node
//! 2, those it shared with node 2 from node 2 onto node 1 (a profile of the RAM line shows
//! about half the imports landing on node 1's RAM disk). Ours = bytes rebuilt / time until
//! redundancy is back. Anchor = sequential 1 MiB writes (QD 4, one buffer written over and
//! over, one flush at the end) through the same io_uring device type as the engine's disks
//! (O_DIRECT unless the file system refuses it, then neither uses it), in the same directory,
//! on files pre-written the same way: once before the fill on a fresh file of half the data
//! (about the bytes a rebuild moves), once after the rebuild over as many bytes as were
//! rebuilt on node 3's file (the same size as the nodes' files); the higher of the two (a busy
//! machine only ever makes the ratio look worse). The rebuild's device traffic is about as many
//! bytes (reads and writes mixed), so 1.0 would be a rebuild as fast as the device writes.
//!
//! Two lines, because this machine has one device and a cluster has one per node:
//! - `rebuild_after_node_loss_mib_s`: node 1's disk is in RAM, standing for the surviving
//!   node's own device (written over once before use, so its memory's first-touch page faults
//!   are not charged to the rebuild; `CAIRN_BENCH_RAM_PRETOUCH=0` skips that); the rebuild's
//!   device traffic is node 2's: writes of the chunks copied onto it, reads of those copied
//!   from it. The device's write bandwidth is the ideal.
//! - `rebuild_after_node_loss_one_device_mib_s`: node 1's disk is a file on the same device
//!   too, so the rebuild reads and writes one device at once; its ideal is well below the
//!   write bandwidth (fio reading one file and writing another at once gets about 0.6x).
//!
//! Beside the anchor (not instead of it), each line carries the device's throughput for the
//! rebuild's own mix of 1 MiB reads and writes (`mixed_rw_mib_s`, measured before the fill on
//! the anchor's file) and ours over it: on a device whose mixed throughput is below its write
//! bandwidth, that is the RAM line's ceiling, and it tells the engine's share of a shortfall
//! from the device's. `ratio_to_ideal` divides by the device bytes each line moves per byte
//! rebuilt (the mix itself on the RAM line, half of it on the one-device line), so the two lines
//! compare: the one-device line's anchor ratio is at most about half the mix over the write
//! bandwidth, well under 0.7, whatever the engine does.
//!
//! Where the time went: each line carries the rebuild's profile (`Engine::rebuild_profile`):
//! milliseconds spent pacing, waiting for chunk locks, exporting (read + verify), importing
//! (write + map records), flushing targets and recording intents, summed over the copies in
//! flight at once, the number of target flushes, and the process's CPU time; and what the device
//! read and wrote meanwhile (more than the rebuild's own traffic: other processes were using it),
//! the share of the time it was busy and its mean queue depth: a device busy half the time
//! at a queue of 2 was waiting for the engine (or for the CPU the engine waited for), not the
//! other way round.
//!
//! It only measures; correctness lives in the tests. Must never run against a pool in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{AlignedBuf, BlockDevice};

use crate::error::{EngineError, Result};
use crate::{Engine, EngineConfig, RemoteDisk};

/// One JSON line, as the other benchmarks print them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildLine {
    pub bench: &'static str,
    pub metric: String,
    pub ours: f64,
    pub anchor: f64,
    pub anchor_name: &'static str,
    pub ratio: f64,
    pub higher_is_better: bool,
    /// Bytes the rebuild copied and how long it took (loss to redundancy back).
    pub bytes: u64,
    pub secs: f64,
    /// The rebuild pass's own rate (without noticing the loss and confirming the end).
    pub pass_mib_s: f64,
    /// The two anchor measurements (before the fill, after the rebuild).
    pub anchor_runs_mib_s: [f64; 2],
    /// Context, not the anchor: the same device's throughput for the rebuild's own mix, 1 MiB
    /// reads and writes alternating at queue depth 4 (reads and writes counted), measured
    /// before the fill, and ours over it. The RAM line's device traffic is that mix over about
    /// `bytes`, so a rebuild as fast as the device allows reaches 1.0 of it there (and the
    /// anchor ratio is then this over the write anchor); the one-device line moves every byte
    /// twice, so 0.5.
    pub mixed_rw_mib_s: f64,
    pub ratio_to_mixed: f64,
    /// The fair reading of both lines: ours over the fastest rebuild the device allows, the
    /// mixed throughput over the device bytes moved per byte rebuilt (1 on the RAM line, 2 on
    /// the one-device line, which reads and writes every byte on the same device). 1.0 is a
    /// rebuild that keeps the device as busy as fio's mix does; the one-device line's anchor
    /// ratio cannot exceed about half of the mixed over the write bandwidth (about 0.46 on
    /// the development VM's disk, quiet: mix 3300, writes 3550 MiB/s), far below the issue's
    /// 0.7, whatever the engine does.
    #[serde(default)]
    pub ideal_mib_s: f64,
    #[serde(default)]
    pub ratio_to_ideal: f64,
    /// Where the rebuild's time went, summed over copies in flight (ms), and target flushes.
    pub pace_ms: f64,
    pub lock_ms: f64,
    pub export_ms: f64,
    pub import_ms: f64,
    pub flush_ms: f64,
    pub meta_ms: f64,
    pub flushes: u64,
    pub chunks: u64,
    /// Chunk copies summed from their pacing to their import's end (ms), waiting for a
    /// request slot (ms), and the copying side held back by earlier batches' flushes and
    /// intent records (ms).
    #[serde(default)]
    pub move_ms: f64,
    #[serde(default)]
    pub slot_wait_ms: f64,
    #[serde(default)]
    pub stall_ms: f64,
    /// Over the rebuild's wall time: the mean number of chunk copies in flight, of export and
    /// import requests in flight (both from the sums above), the share of the time an export
    /// (read) and an import (write) were in flight together, and the share with no copy
    /// request in flight during the pass.
    #[serde(default)]
    pub moves_in_flight: f64,
    #[serde(default)]
    pub exports_in_flight: f64,
    #[serde(default)]
    pub imports_in_flight: f64,
    #[serde(default)]
    pub overlap_share: f64,
    #[serde(default)]
    pub idle_share: f64,
    /// CPU time of this process (all threads, user + system) during the rebuild, ms (0 if
    /// /proc is not there): near 2x `secs` on two cores means CPU-bound.
    pub cpu_ms: f64,
    /// The machine's 1-minute load average when the line was taken (0 without /proc): the
    /// figure's context on a shared machine.
    #[serde(default)]
    pub load_1m: f64,
    /// What the block device holding the files read and wrote during the rebuild, MiB, from
    /// the kernel's counters (0 where they are not there): the rebuild's own traffic is about
    /// `bytes` (the RAM line) or twice that (one device); much more means other processes used
    /// the device meanwhile, and the figure is not the engine's alone.
    pub device_read_mib: f64,
    pub device_written_mib: f64,
    /// Over the rebuild, from the same counters: the share of the time the device had
    /// requests in flight, and their mean number (its queue depth, every process's).
    #[serde(default)]
    pub device_busy: f64,
    #[serde(default)]
    pub device_queue: f64,
    /// The mean size of the device's completed reads and writes meanwhile (KiB): near the
    /// chunk size when the copies reach it as whole chunks, far below when they arrive split
    /// (or when other processes' small requests dominate).
    #[serde(default)]
    pub device_read_kib_per_req: f64,
    #[serde(default)]
    pub device_write_kib_per_req: f64,
}

/// Several runs of one line: the median and range of the ratio (and of ours and the anchor),
/// so one noisy run does not make the figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildSummary {
    pub bench: &'static str,
    pub metric: String,
    pub runs: usize,
    pub ratio_median: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    pub ours_median_mib_s: f64,
    pub anchor_median_mib_s: f64,
    pub secs_median: f64,
    /// Median of ours over the device's mixed read/write throughput (see `RebuildLine`).
    pub ratio_to_mixed_median: f64,
    /// Median of ours over the fastest rebuild the device allows (see `RebuildLine`).
    #[serde(default)]
    pub ratio_to_ideal_median: f64,
    pub load_min: f64,
    pub load_max: f64,
}

/// Median of `v` (mean of the middle two for an even count); 0 for none.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One summary per metric of `lines` (in the order the metrics first appear).
pub fn summarize(lines: &[RebuildLine]) -> Vec<RebuildSummary> {
    let mut metrics: Vec<&str> = Vec::new();
    for l in lines {
        if !metrics.contains(&l.metric.as_str()) {
            metrics.push(&l.metric);
        }
    }
    metrics
        .into_iter()
        .map(|m| {
            let of: Vec<&RebuildLine> = lines.iter().filter(|l| l.metric == m).collect();
            let col =
                |f: fn(&RebuildLine) -> f64| -> Vec<f64> { of.iter().map(|l| f(l)).collect() };
            let ratios = col(|l| l.ratio);
            let loads = col(|l| l.load_1m);
            RebuildSummary {
                bench: "cluster",
                metric: m.to_string(),
                runs: of.len(),
                ratio_median: median(&mut ratios.clone()),
                ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratio_max: ratios.iter().copied().fold(0.0, f64::max),
                ours_median_mib_s: median(&mut col(|l| l.ours)),
                anchor_median_mib_s: median(&mut col(|l| l.anchor)),
                secs_median: median(&mut col(|l| l.secs)),
                ratio_to_mixed_median: median(&mut col(|l| l.ratio_to_mixed)),
                ratio_to_ideal_median: median(&mut col(|l| l.ratio_to_ideal)),
                load_min: loads.iter().copied().fold(f64::INFINITY, f64::min),
                load_max: loads.iter().copied().fold(0.0, f64::max),
            }
        })
        .collect()
}

/// The machine's 1-minute load average (0 without /proc/loadavg).
pub fn load_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Bytes read and written so far by the block device that holds `path` (the whole-device or
/// partition line of /proc/diskstats with the file system's device number); None where there
/// is no such line (tmpfs, overlay, no /proc).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeviceIo {
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Reads and writes completed (fields 4 and 8 of the line).
    pub reads: u64,
    pub writes: u64,
    /// Milliseconds the device had requests in flight, and those milliseconds weighted by
    /// the requests in flight (fields 13 and 14 of the line).
    pub busy_ms: u64,
    pub weighted_ms: u64,
}

impl DeviceIo {
    pub(crate) fn of(path: &Path) -> Option<DeviceIo> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path).ok()?.dev();
        // glibc's major()/minor() encoding of a dev_t.
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
        stats.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
            if num(0)? != major || num(1)? != minor {
                return None;
            }
            // Sectors read and written (fields 6 and 10 of the line) are 512 bytes each.
            Some(DeviceIo {
                read_bytes: num(5)? * 512,
                written_bytes: num(9)? * 512,
                reads: num(3)?,
                writes: num(7)?,
                busy_ms: num(12).unwrap_or(0),
                weighted_ms: num(13).unwrap_or(0),
            })
        })
    }

    /// MiB read and written since `before` (zeros if either reading is missing).
    pub(crate) fn since(now: Option<DeviceIo>, before: Option<DeviceIo>) -> (f64, f64) {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        match (now, before) {
            (Some(n), Some(b)) => (
                mib(n.read_bytes.saturating_sub(b.read_bytes)),
                mib(n.written_bytes.saturating_sub(b.written_bytes)),
            ),
            _ => (0.0, 0.0),
        }
    }

    /// The mean size in KiB of the reads and of the writes completed since `before` (zeros
    /// if either reading is missing or nothing completed).
    pub(crate) fn request_kib_since(now: Option<DeviceIo>, before: Option<DeviceIo>) -> (f64, f64) {
        let mean = |bytes: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                bytes as f64 / 1024.0 / n as f64
            }
        };
        match (now, before) {
            (Some(n), Some(b)) => (
                mean(
                    n.read_bytes.saturating_sub(b.read_bytes),
                    n.reads.saturating_sub(b.reads),
                ),
                mean(
                    n.written_bytes.saturating_sub(b.written_bytes),
                    n.writes.saturating_sub(b.writes),
                ),
            ),
            _ => (0.0, 0.0),
        }
    }

    /// Over `secs` since `before`: the share of the time the device was busy, and the mean
    /// number of requests in flight (zeros if either reading is missing).
    pub(crate) fn load_since(
        now: Option<DeviceIo>,
        before: Option<DeviceIo>,
        secs: f64,
    ) -> (f64, f64) {
        match (now, before) {
            (Some(n), Some(b)) if secs > 0.0 => (
                n.busy_ms.saturating_sub(b.busy_ms) as f64 / 1e3 / secs,
                n.weighted_ms.saturating_sub(b.weighted_ms) as f64 / 1e3 / secs,
            ),
            _ => (0.0, 0.0),
        }
    }
}

/// If `CAIRN_PERF_CTL` names a `perf record --control=fifo:...` control FIFO, send it `cmd`
/// ("enable" / "disable"), so a profile (`perf record -D -1 --control ...`) covers only the
/// rebuilds, not the set-up. Best effort: a profile is a diagnostic.
fn perf_ctl(cmd: &str) {
    if let Some(p) = std::env::var_os("CAIRN_PERF_CTL") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(p) {
            let _ = writeln!(f, "{cmd}");
        }
    }
}

/// User + system CPU time of this process so far, ms (from /proc/self/stat; 0 without it).
pub(crate) fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the name), in
    // USER_HZ ticks (100 per second on Linux).
    (ticks(11) + ticks(12)) * 10.0
}

#[derive(Debug, Clone)]
pub struct RebuildOpts {
    /// Scratch directory for the disk files (on the file system to measure).
    pub dir: PathBuf,
    /// Bytes written to the virtual disk before the node is lost (about half is rebuilt).
    pub data_bytes: u64,
}

fn io_err(p: &Path) -> impl Fn(blockdev::BlockError) -> EngineError + '_ {
    move |e| EngineError::io(format!("{}: {e}", p.display()))
}

/// An engine (node `node`) with one disk: a pre-written file in `dir`, or RAM.
pub(crate) async fn engine_with_disk(
    dir: &Path,
    node: u64,
    size: u64,
    ram: bool,
) -> Result<(Engine, PathBuf)> {
    let e = Engine::open(EngineConfig {
        node_id: node,
        node_name: format!("rebuild{node}"),
    })
    .await?;
    let p = dir.join(format!("rebuild-node{node}.img"));
    let dev: Arc<dyn BlockDevice> = if ram {
        let d: Arc<dyn BlockDevice> =
            Arc::new(blockdev::RamDevice::new(format!("ram-node{node}"), size));
        if pretouch_ram() {
            fill_zeros(&d, &p).await?;
        }
        d
    } else {
        prewrite_file(&p, size).await?;
        blockdev::open_device(&p).map_err(io_err(&p))?
    };
    e.add_disk(dev).await?;
    Ok((e, p))
}

/// Whether the RAM disk is written over once before use (`CAIRN_BENCH_RAM_PRETOUCH=0` turns
/// it off, to compare with older figures). A fresh RAM device's memory is mapped on its first
/// write: those page faults would be charged to the rebuild's imports onto it, a cost no real
/// device has.
fn pretouch_ram() -> bool {
    std::env::var("CAIRN_BENCH_RAM_PRETOUCH").map_or(true, |v| v != "0")
}

/// Writes zeros over the whole of `dev` (1 MiB at a time, queue depth 4), then flushes it.
async fn fill_zeros(dev: &Arc<dyn BlockDevice>, what: &Path) -> Result<()> {
    use futures::StreamExt;
    let step: u64 = 1 << 20;
    let size = dev.info().size_bytes;
    let zeros = AlignedBuf::zeroed(step as usize).into_write();
    let tail = AlignedBuf::zeroed((size % step) as usize).into_write();
    let mut writes = futures::stream::iter((0..size.div_ceil(step)).map(|i| {
        let off = i * step;
        let buf = if size - off >= step {
            zeros.clone()
        } else {
            tail.clone()
        };
        dev.write_at(off, buf)
    }))
    .buffer_unordered(4);
    while let Some(r) = writes.next().await {
        r.map_err(io_err(what))?;
    }
    dev.flush().await.map_err(io_err(what))
}

/// Creates `path` filled with `bytes` zero bytes, written through the same O_DIRECT io_uring
/// device the engine and the anchor use, then flushed: every block allocated and written, as
/// on a block device (a sparse file's first writes allocate, which the file system makes far
/// slower than overwrites, and which a real disk never does), and nothing of it left in the
/// page cache (buffered writes would leave the file cached, and the first direct write over
/// each cached range would pay for dropping those pages, in the anchor or the rebuild
/// depending on what was written before). The engine adopts a disk whose first MiB is blank,
/// so zeros.
pub(crate) async fn prewrite_file(path: &Path, bytes: u64) -> Result<()> {
    let err = |e: std::io::Error| EngineError::io(format!("{}: {e}", path.display()));
    let f = std::fs::File::create(path).map_err(err)?;
    f.set_len(bytes).map_err(err)?;
    drop(f);
    let dev: Arc<dyn BlockDevice> = blockdev::open_device(path).map_err(io_err(path))?;
    fill_zeros(&dev, path).await?;
    let f = std::fs::File::open(path).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Sequential 1 MiB writes at queue depth 4 over `len` bytes of the file, one flush at the
/// end; MiB/s.
pub(crate) async fn seq_write_mibs(path: &Path, len: u64) -> Result<f64> {
    let dev: Arc<dyn BlockDevice> = blockdev::open_device(path).map_err(io_err(path))?;
    let step = crate::CHUNK_BYTES;
    let n = (len / step).max(1);
    let pattern: Vec<u8> = (0..step).map(|i| (i as u8) | 1).collect();
    let data = AlignedBuf::from_slice(&pattern).into_write();
    let start = Instant::now();
    let mut next = 0u64;
    let mut inflight = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    while next < n || !inflight.is_empty() {
        while next < n && inflight.len() < 4 {
            inflight.push(dev.write_at(next * step, data.clone()));
            next += 1;
        }
        if let Some(r) = inflight.next().await {
            r.map_err(io_err(path))?;
        }
    }
    dev.flush().await.map_err(io_err(path))?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok((n * step) as f64 / secs / f64::from(1u32 << 20))
}

/// 1 MiB reads of the first half of the file and writes of the second half, alternating, at
/// queue depth 4 over `len` bytes in all, one flush at the end; MiB/s of reads and writes.
pub(crate) async fn mixed_rw_mibs(path: &Path, len: u64) -> Result<f64> {
    use futures::{FutureExt, StreamExt};
    let dev: Arc<dyn BlockDevice> = blockdev::open_device(path).map_err(io_err(path))?;
    let step = crate::CHUNK_BYTES;
    let half = (len / step / 2).max(1);
    let pattern: Vec<u8> = (0..step).map(|i| (i as u8) | 1).collect();
    let data = AlignedBuf::from_slice(&pattern).into_write();
    let n = 2 * half;
    let start = Instant::now();
    let mut next = 0u64;
    let mut inflight = futures::stream::FuturesUnordered::new();
    while next < n || !inflight.is_empty() {
        while next < n && inflight.len() < 4 {
            let i = next / 2;
            inflight.push(if next.is_multiple_of(2) {
                dev.read_at(i * step, AlignedBuf::for_overwrite(step as usize))
                    .map(|r| r.map(drop))
                    .boxed()
            } else {
                dev.write_at((half + i) * step, data.clone()).boxed()
            });
            next += 1;
        }
        if let Some(r) = inflight.next().await {
            r.map_err(io_err(path))?;
        }
    }
    dev.flush().await.map_err(io_err(path))?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok((n * step) as f64 / secs / f64::from(1u32 << 20))
}

/// Runs the rebuild benchmark and returns its JSON lines (see the module docs).
pub async fn rebuild_after_node_loss(opts: &RebuildOpts) -> Result<Vec<RebuildLine>> {
    let mut lines = Vec::new();
    for ram_source in [true, false] {
        lines.push(rebuild_line(opts, ram_source).await?);
    }
    Ok(lines)
}

/// One run of one line: `ram_source` picks the RAM line (node 1's disk in RAM) or the
/// one-device line. Removes its files afterwards.
pub async fn rebuild_line(opts: &RebuildOpts, ram_source: bool) -> Result<RebuildLine> {
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| EngineError::io(format!("{}: {e}", opts.dir.display())))?;
    let metric = if ram_source {
        "rebuild_after_node_loss_mib_s"
    } else {
        "rebuild_after_node_loss_one_device_mib_s"
    };
    let r = one_rebuild(opts, ram_source, metric).await;
    for n in 1..=3 {
        let _ = std::fs::remove_file(opts.dir.join(format!("rebuild-node{n}.img")));
    }
    r
}

async fn one_rebuild(opts: &RebuildOpts, ram_source: bool, metric: &str) -> Result<RebuildLine> {
    let data = opts.data_bytes.clamp(64 << 20, 8 << 30) / crate::CHUNK_BYTES * crate::CHUNK_BYTES;
    // Node 1 holds every chunk; node 2 must be able to take all of them after the loss (plus
    // room for the store's own records).
    let size = data + data / 4 + (256 << 20);
    let (e1, _) = engine_with_disk(&opts.dir, 1, size, ram_source).await?;
    let (e2, _) = engine_with_disk(&opts.dir, 2, size, false).await?;
    let (e3, p3) = engine_with_disk(&opts.dir, 3, size, false).await?;
    for (peer, node) in [(&e2, 2u64), (&e3, 3u64)] {
        let (info, replica) = peer
            .local_replicas()
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::io("a bench node has no disk"))?;
        e1.add_remote_disk(RemoteDisk {
            id: info.id,
            name: format!("node{node}:{}", info.name),
            node_id: node,
            size_bytes: info.size_bytes,
            replica,
        })
        .await?;
    }
    // The anchor's first run, on a fresh file of its own (node 3's is in use until the loss).
    let pa = opts.dir.join("rebuild-anchor.img");
    prewrite_file(&pa, data / 2).await?;
    let anchor_before = seq_write_mibs(&pa, data / 2).await;
    let mixed = match anchor_before {
        Ok(_) => mixed_rw_mibs(&pa, data / 2).await,
        Err(_) => Ok(0.0),
    };
    let _ = std::fs::remove_file(&pa);
    let anchor_before = anchor_before?;
    let mixed = mixed?;
    e1.create_vdisk("rebuild", data).await?;
    let h = e1.open_vdisk("rebuild")?;
    crate::bench::prefill(&h, data).await?;
    if !e1.wait_rebalanced(Duration::from_secs(600)).await {
        return Err(EngineError::Busy(
            "the pool did not settle before the loss".into(),
        ));
    }
    let lost = e1
        .inner
        .disks
        .read()
        .iter()
        .find(|d| d.node_id == 3)
        .cloned()
        .ok_or_else(|| EngineError::io("node 3's disk is not attached"))?;
    let before = e1.stats().rebalance.bytes_copied;
    let prof0 = e1.rebuild_profile();
    let cpu0 = cpu_ms();
    let io0 = DeviceIo::of(&opts.dir);
    perf_ctl("enable");
    let start = Instant::now();
    let why = store::StoreError::Io {
        context: "bench: node 3 lost".into(),
        source: blockdev::BlockError::new(blockdev::ErrorKind::Gone, "node lost"),
    };
    e1.inner.fail_disk(&lost, &why).await?;
    if !e1.wait_rebalanced(Duration::from_secs(1200)).await {
        return Err(EngineError::Busy(
            "the rebuild did not finish in 20 min".into(),
        ));
    }
    let secs = start.elapsed().as_secs_f64();
    perf_ctl("disable");
    let cpu = cpu_ms() - cpu0;
    let io1 = DeviceIo::of(&opts.dir);
    let (device_read_mib, device_written_mib) = DeviceIo::since(io1, io0);
    let (device_busy, device_queue) = DeviceIo::load_since(io1, io0, secs);
    let (device_read_kib_per_req, device_write_kib_per_req) = DeviceIo::request_kib_since(io1, io0);
    let bytes = e1.stats().rebalance.bytes_copied - before;
    if e1.pool().degraded_chunks != 0 {
        return Err(EngineError::Degraded(
            "chunks still degraded after the rebuild".into(),
        ));
    }
    let ours = bytes as f64 / secs.max(1e-9) / f64::from(1u32 << 20);
    let pass_mib_s = e1.rebuild_progress().rate_bytes_per_sec as f64 / f64::from(1u32 << 20);
    let prof = e1.rebuild_profile();
    let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
    // Nanoseconds summed over the rebuild, over its wall time: a mean count or a share.
    let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e9 / secs.max(1e-9);
    e1.shutdown().await?;
    e2.shutdown().await?;
    e3.shutdown().await?;
    drop(h);
    let anchor_after = seq_write_mibs(&p3, bytes.max(64 << 20)).await?;
    let anchor = anchor_before.max(anchor_after);
    // Device bytes moved per byte rebuilt: the RAM line reads or writes each on the device
    // once, the one-device line reads and writes each there.
    let ideal = if ram_source { mixed } else { mixed / 2.0 };
    Ok(RebuildLine {
        bench: "cluster",
        metric: metric.into(),
        ours,
        anchor,
        anchor_name: "device_seq_write_1m_qd4_mib_s",
        ratio: if anchor > 0.0 { ours / anchor } else { 0.0 },
        higher_is_better: true,
        bytes,
        secs,
        pass_mib_s,
        anchor_runs_mib_s: [anchor_before, anchor_after],
        mixed_rw_mib_s: mixed,
        ratio_to_mixed: if mixed > 0.0 { ours / mixed } else { 0.0 },
        ideal_mib_s: ideal,
        ratio_to_ideal: if ideal > 0.0 { ours / ideal } else { 0.0 },
        pace_ms: ms(prof.pace_ns, prof0.pace_ns),
        lock_ms: ms(prof.lock_ns, prof0.lock_ns),
        export_ms: ms(prof.export_ns, prof0.export_ns),
        import_ms: ms(prof.import_ns, prof0.import_ns),
        flush_ms: ms(prof.flush_ns, prof0.flush_ns),
        meta_ms: ms(prof.meta_ns, prof0.meta_ns),
        flushes: prof.flushes - prof0.flushes,
        chunks: prof.chunks - prof0.chunks,
        move_ms: ms(prof.move_ns, prof0.move_ns),
        slot_wait_ms: ms(prof.slot_wait_ns, prof0.slot_wait_ns),
        stall_ms: ms(prof.stall_ns, prof0.stall_ns),
        moves_in_flight: per_sec(prof.move_ns, prof0.move_ns),
        exports_in_flight: per_sec(prof.export_ns, prof0.export_ns),
        imports_in_flight: per_sec(prof.import_ns, prof0.import_ns),
        overlap_share: per_sec(prof.overlap_ns, prof0.overlap_ns),
        idle_share: per_sec(prof.idle_ns, prof0.idle_ns),
        cpu_ms: cpu,
        load_1m: load_1m(),
        device_read_mib,
        device_written_mib,
        device_busy,
        device_queue,
        device_read_kib_per_req,
        device_write_kib_per_req,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device's busy share and mean queue come from the differences of its busy and
    /// weighted milliseconds over the wall time; a missing reading gives zeros, not a guess.
    #[test]
    fn device_load_is_busy_share_and_mean_queue() {
        let before = DeviceIo {
            read_bytes: 0,
            written_bytes: 0,
            reads: 0,
            writes: 0,
            busy_ms: 10_000,
            weighted_ms: 50_000,
        };
        let after = DeviceIo {
            busy_ms: 11_000,
            weighted_ms: 58_000,
            ..before
        };
        assert_eq!(
            DeviceIo::load_since(Some(after), Some(before), 2.0),
            (0.5, 4.0)
        );
        assert_eq!(DeviceIo::load_since(None, Some(before), 2.0), (0.0, 0.0));
        let moved = DeviceIo {
            read_bytes: 8 << 20,
            written_bytes: 1 << 20,
            reads: 8,
            writes: 4,
            ..before
        };
        assert_eq!(
            DeviceIo::request_kib_since(Some(moved), Some(before)),
            (1024.0, 256.0)
        );
        assert_eq!(
            DeviceIo::request_kib_since(Some(before), Some(before)),
            (0.0, 0.0)
        );
        assert_eq!(DeviceIo::load_since(Some(after), None, 2.0), (0.0, 0.0));
        assert_eq!(
            DeviceIo::load_since(Some(after), Some(before), 0.0),
            (0.0, 0.0)
        );
    }
}
