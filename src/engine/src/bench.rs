//! Load generator for `cairn bench engine`: runs one workload (random or sequential, read or
//! write, any request size and queue depth) against a `VdiskHandle` for a fixed time and reports
//! IOPS, bandwidth and latency percentiles. Queue depth N = N concurrent requesters, each with
//! its own buffer (no allocation per request beyond what the engine itself does).
//!
//! It only measures; it never checks data (correctness lives in the tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::handle::VdiskHandle;
use crate::placement::mix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub pattern: Pattern,
    /// Bytes per request (a multiple of 4 KiB).
    pub request_bytes: u64,
    pub queue_depth: u32,
    pub duration: Duration,
    /// Requests stay inside [0, region_bytes) of the disk (pre-write it for read tests).
    pub region_bytes: u64,
    /// Flush after every this many writes per requester (0 = never).
    pub flush_every: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchResult {
    pub ops: u64,
    pub bytes: u64,
    pub secs: f64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
}

/// Run `w` against `h`. Errors from the engine abort the run.
pub async fn run(h: &VdiskHandle, w: &Workload) -> Result<BenchResult> {
    let bs = w.request_bytes;
    if bs == 0 || !bs.is_multiple_of(crate::BLOCK_BYTES) || bs > crate::MAX_IO_BYTES {
        return Err(EngineError::invalid(
            "request size must be a multiple of 4 KiB, at most 64 MiB",
        ));
    }
    if w.queue_depth == 0 || w.queue_depth > 1024 {
        return Err(EngineError::invalid("queue depth must be 1..=1024"));
    }
    let region = w.region_bytes.min(h.size_bytes()) / bs * bs;
    if region < bs {
        return Err(EngineError::invalid("region smaller than one request"));
    }
    let slots = region / bs;
    let start = Instant::now();
    let deadline = start + w.duration;
    let mut tasks = Vec::new();
    for q in 0..w.queue_depth {
        let h = h.clone();
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; bs as usize];
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (mix64(u64::from(q) ^ i as u64) & 0xff) as u8;
            }
            let mut lats: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut x = mix64(u64::from(q) + 1);
            // Sequential requesters start at evenly spaced points of the region.
            let mut seq = slots * u64::from(q) / u64::from(w.queue_depth);
            let mut writes = 0u32;
            while Instant::now() < deadline {
                let slot = match w.pattern {
                    Pattern::RandRead | Pattern::RandWrite => {
                        x = mix64(x);
                        x % slots
                    }
                    Pattern::SeqRead | Pattern::SeqWrite => {
                        seq = (seq + 1) % slots;
                        seq
                    }
                };
                let t = Instant::now();
                match w.pattern {
                    Pattern::RandRead | Pattern::SeqRead => {
                        // The engine's own verified buffers, as the NBD server takes them.
                        let d = h.read_owned(slot * bs, bs).await?;
                        std::hint::black_box(&d);
                    }
                    Pattern::RandWrite | Pattern::SeqWrite => {
                        h.write(slot * bs, &buf).await?;
                        writes += 1;
                        if w.flush_every > 0 && writes.is_multiple_of(w.flush_every) {
                            h.flush().await?;
                        }
                    }
                }
                lats.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Ok::<_, EngineError>(lats)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        let lats = t
            .await
            .map_err(|e| EngineError::io(format!("bench task: {e}")))??;
        all.extend(lats);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all[i])
    };
    let ops = all.len() as u64;
    Ok(BenchResult {
        ops,
        bytes: ops * bs,
        secs,
        iops: ops as f64 / secs,
        mib_per_s: (ops * bs) as f64 / secs / (1u64 << 20) as f64,
        lat_p50_us: pct(0.5),
        lat_p99_us: pct(0.99),
    })
}

/// Fill [0, len) of the disk with non-zero data in 1 MiB writes, then flush, so reads measure
/// real I/O (a never-written block reads as zeros without touching any disk).
pub async fn prefill(h: &VdiskHandle, len: u64) -> Result<()> {
    let step = crate::CHUNK_BYTES;
    let buf: Arc<Vec<u8>> = Arc::new((0..step).map(|i| (mix64(i) & 0xff) as u8 | 1).collect());
    let end = len.min(h.size_bytes());
    let mut off = 0;
    while off < end {
        let n = step.min(end - off) as usize;
        h.write(off, &buf[..n]).await?;
        off += n as u64;
    }
    h.flush().await
}
