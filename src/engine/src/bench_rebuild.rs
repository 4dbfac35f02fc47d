//! `cairn bench cluster`'s rebuild figure: how fast redundancy is rebuilt after a node is lost,
//! against the device's sequential bandwidth measured in the same run on the same kind of file.
//!
//! Set-up: three engines on disk files (io_uring), one per node. Node 1 owns a virtual disk and
//! attaches node 2's and node 3's disks as its remote replicas (the replica objects of those
//! engines, as `mirror` does over the network, minus the network), so each chunk has one
//! replica on node 1 and one on node 2 or 3. The virtual disk is filled, then node 3 is lost
//! (its disk given up, as after the grace period) and the rebuild copies node 3's share from
//! node 1 onto node 2. Ours = bytes rebuilt / time until redundancy is back; anchor =
//! sequential 1 MiB writes (QD 4, one flush at the end) of as many bytes as were rebuilt, on
//! a fresh file before the fill and on node 3's file after the rebuild: the higher of the
//! two is the anchor (a busy machine only ever makes the ratio look worse). The rebuild both
//! reads (node 1) and writes (node 2) a different file, so a rebuild at the write bandwidth of
//! one device is the ideal.
//!
//! Where the time went: the line carries the rebuild's profile (`Engine::rebuild_profile`):
//! milliseconds spent pacing, waiting for chunk locks, exporting (read + verify), importing
//! (write + map records), flushing targets and recording intents, summed over the copies in
//! flight at once, and the number of target flushes.
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
    /// Where the rebuild's time went, summed over copies in flight (ms), and target flushes.
    pub pace_ms: f64,
    pub lock_ms: f64,
    pub export_ms: f64,
    pub import_ms: f64,
    pub flush_ms: f64,
    pub meta_ms: f64,
    pub flushes: u64,
    pub chunks: u64,
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

async fn engine_with_file(dir: &Path, node: u64, size: u64) -> Result<(Engine, PathBuf)> {
    let e = Engine::open(EngineConfig {
        node_id: node,
        node_name: format!("rebuild{node}"),
    })
    .await?;
    let p = dir.join(format!("rebuild-node{node}.img"));
    let _ = std::fs::remove_file(&p);
    blockdev::create_sparse_file(&p, size).map_err(io_err(&p))?;
    let dev = blockdev::open_device(&p).map_err(io_err(&p))?;
    e.add_disk(dev).await?;
    Ok((e, p))
}

/// Sequential 1 MiB writes at queue depth 4 over `len` bytes of the file, one flush at the
/// end; MiB/s.
async fn seq_write_mibs(path: &Path, len: u64) -> Result<f64> {
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

/// Runs the rebuild benchmark and returns its JSON line.
pub async fn rebuild_after_node_loss(opts: &RebuildOpts) -> Result<Vec<RebuildLine>> {
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| EngineError::io(format!("{}: {e}", opts.dir.display())))?;
    let data = opts.data_bytes.clamp(64 << 20, 8 << 30) / crate::CHUNK_BYTES * crate::CHUNK_BYTES;
    // Node 1 holds every chunk; node 2 must be able to take all of them after the loss.
    let size = data + data / 2 + (256 << 20);
    let (e1, _) = engine_with_file(&opts.dir, 1, size).await?;
    let (e2, _) = engine_with_file(&opts.dir, 2, size).await?;
    let (e3, p3) = engine_with_file(&opts.dir, 3, size).await?;
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
    let _ = std::fs::remove_file(&pa);
    blockdev::create_sparse_file(&pa, data).map_err(io_err(&pa))?;
    let anchor_before = seq_write_mibs(&pa, data / 2).await;
    let _ = std::fs::remove_file(&pa);
    let anchor_before = anchor_before?;
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
    e1.shutdown().await?;
    e2.shutdown().await?;
    e3.shutdown().await?;
    drop(h);
    let anchor_after = seq_write_mibs(&p3, bytes.max(64 << 20)).await?;
    let anchor = anchor_before.max(anchor_after);
    Ok(vec![RebuildLine {
        bench: "cluster",
        metric: "rebuild_after_node_loss_mib_s".into(),
        ours,
        anchor,
        anchor_name: "device_seq_write_1m_qd4_mib_s",
        ratio: if anchor > 0.0 { ours / anchor } else { 0.0 },
        higher_is_better: true,
        bytes,
        secs,
        pass_mib_s,
        anchor_runs_mib_s: [anchor_before, anchor_after],
        pace_ms: ms(prof.pace_ns, prof0.pace_ns),
        lock_ms: ms(prof.lock_ns, prof0.lock_ns),
        export_ms: ms(prof.export_ns, prof0.export_ns),
        import_ms: ms(prof.import_ns, prof0.import_ns),
        flush_ms: ms(prof.flush_ns, prof0.flush_ns),
        meta_ms: ms(prof.meta_ns, prof0.meta_ns),
        flushes: prof.flushes - prof0.flushes,
        chunks: prof.chunks - prof0.chunks,
    }])
}
