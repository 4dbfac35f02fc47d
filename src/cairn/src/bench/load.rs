//! An in-process load generator for a virtual disk: N concurrent requesters (N = queue depth),
//! each issuing one I/O at a time, all driven by one task, like fio's io_uring engine at
//! iodepth N.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use engine::VdiskHandle;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    pub write: bool,
    pub random: bool,
    pub block_bytes: usize,
    pub qd: usize,
    /// I/O stays inside [0, span_bytes).
    pub span_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub ops: u64,
    pub secs: f64,
    pub cpu_secs: f64,
    pub lat_ns: Vec<u64>,
}

impl LoadResult {
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

pub fn percentile(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)] as f64
}

/// CPU seconds (user + system) this process has used. USER_HZ is 100 on Linux.
pub fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 overall: 12 and 13 after the ")".
    let tick = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

pub async fn run(handle: &VdiskHandle, p: Pattern, duration: Duration) -> Result<LoadResult> {
    let blocks = (p.span_bytes / p.block_bytes as u64).max(1);
    let cursor = AtomicU64::new(0);
    let deadline = Instant::now() + duration;
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    // Every requester is driven by one task, as a VM queue's driver and an NBD connection
    // drive their requests (and as fio's one job drives its queue): a burst of completions
    // wakes one task, not one per requester, so the runtime has no reason to hand requesters
    // to another worker thread.
    let h = handle.clone();
    let driver = tokio::spawn(async move {
        let requesters = (0..p.qd).map(|t| requester(&h, p, t, blocks, &cursor, deadline));
        let mut r = LoadResult::default();
        for lat in engine::bench::drive_all(requesters.collect()).await {
            let lat = lat?;
            r.ops += lat.len() as u64;
            r.lat_ns.extend(lat);
        }
        anyhow::Ok(r)
    });
    let mut r = driver.await??;
    r.secs = t0.elapsed().as_secs_f64();
    r.cpu_secs = cpu_secs() - cpu0;
    Ok(r)
}

/// One requester of `run` (number `t`): I/O after I/O until `deadline`; returns each one's
/// latency (ns).
async fn requester(
    h: &VdiskHandle,
    p: Pattern,
    t: usize,
    blocks: u64,
    cursor: &AtomicU64,
    deadline: Instant,
) -> Result<Vec<u64>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64 * 7919 + 1);
    let mut buf = vec![0u8; p.block_bytes];
    rng.fill(&mut buf[..]);
    let mut lat = Vec::with_capacity(1 << 16);
    while Instant::now() < deadline {
        let block = if p.random {
            rng.gen_range(0..blocks)
        } else {
            cursor.fetch_add(1, Ordering::Relaxed) % blocks
        };
        let off = block * p.block_bytes as u64;
        let s = Instant::now();
        if p.write {
            // Vary the data so nothing can shortcut identical blocks.
            buf[0] = buf[0].wrapping_add(1);
            h.write(off, &buf).await?;
        } else {
            // The engine's verified buffers, taken as the NBD server takes them (no copy into
            // a buffer of ours: fio's anchor copies nothing either).
            let d = h.read_owned(off, p.block_bytes as u64).await?;
            std::hint::black_box(&d);
        }
        lat.push(s.elapsed().as_nanos() as u64);
    }
    Ok(lat)
}

/// Write the whole span once (1 MiB sequential, QD 8) so later reads hit the device.
pub async fn prefill(handle: &VdiskHandle, span_bytes: u64) -> Result<()> {
    let step = 1u64 << 20;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let h = handle.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t + 100);
            let mut buf = vec![0u8; step as usize];
            rng.fill(&mut buf[..]);
            loop {
                let off = next.fetch_add(step, Ordering::Relaxed);
                if off >= span_bytes {
                    return anyhow::Ok(());
                }
                let len = (span_bytes - off).min(step) as usize;
                h.write(off, &buf[..len]).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    handle.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_and_cpu() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(super::percentile(&v, 0.99), 99.0);
        assert_eq!(super::percentile(&[], 0.99), 0.0);
        assert!(super::cpu_secs() >= 0.0);
    }
}
