//! `cairn bench cluster`, mirrored I/O part (issue 6 "Performance"): two engines in this
//! process, each on its own io_uring file disk under `dir`, node 2's replica server on its own
//! loopback address with real mutual TLS, and a virtual disk of node 1 mirrored onto node 2.
//!
//! - Mirrored 4 KiB random write latency at queue depth 1 versus the model "local write + one
//!   round trip + remote write", each part measured in the same run on the same files (a store
//!   write on node 1's disk, a 4 KiB-payload-free RPC round trip, a store write on node 2's
//!   disk). Target <= 1.2 x the model.
//! - Mirrored 4 KiB random write IOPS at queue depth 32 versus a single-node engine with two
//!   file disks in the same directory. Target >= 0.8 x.
//!
//! It never touches anything outside `dir` and 127.0.0.0/8.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::AlignedBuf;
use engine::bench::{Pattern, Workload};
use engine::{Engine, EngineConfig, Replica};
use store::ObjectId;

use crate::error::{MirrorError, Result};
use crate::{attach_peer, EpochBook, MirrorConfig, PeerLink, ReplicaServer};

/// One JSON line, as the other benchmarks print them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchLine {
    pub bench: &'static str,
    pub metric: String,
    pub ours: f64,
    pub anchor: f64,
    pub anchor_name: &'static str,
    pub ratio: f64,
    pub higher_is_better: bool,
}

#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Scratch directory for the disk files (on the file system to measure).
    pub dir: PathBuf,
    /// Measurement time per figure.
    pub duration: Duration,
    /// Loopback addresses of node 1 and node 2.
    pub ips: [String; 2],
    /// Size of each disk file.
    pub disk_bytes: u64,
}

const VDISK_BYTES: u64 = 256 << 20;
const REGION: u64 = 64 << 20;

async fn engine_on_files(
    dir: &std::path::Path,
    node: u64,
    disks: usize,
    size: u64,
) -> Result<Engine> {
    let e = Engine::open(EngineConfig {
        node_id: node,
        node_name: format!("bench{node}"),
    })
    .await?;
    for i in 0..disks {
        let p = dir.join(format!("node{node}-disk{i}.img"));
        let _ = std::fs::remove_file(&p);
        let io = |e: blockdev::BlockError| MirrorError::State(format!("{}: {e}", p.display()));
        blockdev::create_sparse_file(&p, size).map_err(io)?;
        let dev = blockdev::open_device(&p).map_err(io)?;
        e.add_disk(dev).await?;
    }
    Ok(e)
}

/// If `CAIRN_PERF_CTL` names a `perf record --control=fifo:...` control FIFO, send it `cmd`
/// ("enable" / "disable"), so a profile (`perf record -D -1 --control ...`) covers only the
/// mirrored queue-depth-32 run. Best effort: a profile is a diagnostic.
fn perf_ctl(cmd: &str) {
    if let Some(p) = std::env::var_os("CAIRN_PERF_CTL") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(p) {
            let _ = writeln!(f, "{cmd}");
        }
    }
}

/// User + system CPU time of this process so far, ms (from /proc/self/stat; 0 without it).
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the name), in
    // USER_HZ ticks (100 per second on Linux).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 10.0
}

/// Runs `w` on `h`, returning the result and the process's CPU time per I/O (µs).
async fn run_timed(
    h: &engine::VdiskHandle,
    w: &Workload,
) -> Result<(engine::bench::BenchResult, f64)> {
    let c0 = cpu_ms();
    let r = engine::bench::run(h, w).await?;
    let cpu_us = (cpu_ms() - c0) * 1000.0 / (r.ops.max(1) as f64);
    Ok((r, cpu_us))
}

/// Mean latency (µs) of QD1 4 KiB store writes on `r`, over `dur`, on a scratch object.
async fn store_write_lat(r: &Arc<dyn Replica>, dur: Duration) -> Result<f64> {
    let obj = ObjectId {
        vdisk: 1 << 62,
        chunk: 0,
    };
    let buf = AlignedBuf::from_slice(&[0x5au8; 4096]).into_write();
    let crcs: Arc<[u32]> = store::block_crcs(buf.as_slice()).into();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        r.write_with_crcs(obj, n % 256, buf.clone(), crcs.clone(), 1, 0)
            .await
            .map_err(|e| MirrorError::State(format!("store write: {e}")))?;
        n += 1;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    let _ = r.delete_object(obj).await;
    Ok(us)
}

fn line(
    metric: &str,
    ours: f64,
    anchor: f64,
    anchor_name: &'static str,
    higher: bool,
) -> BenchLine {
    BenchLine {
        bench: "cluster",
        metric: metric.to_string(),
        ours,
        anchor,
        anchor_name,
        ratio: if anchor > 0.0 { ours / anchor } else { 0.0 },
        higher_is_better: higher,
    }
}

fn workload(qd: u32, dur: Duration) -> Workload {
    Workload {
        pattern: Pattern::RandWrite,
        request_bytes: 4096,
        queue_depth: qd,
        duration: dur,
        region_bytes: REGION,
        flush_every: 0,
    }
}

/// Runs the mirrored-I/O benchmark and returns its JSON lines.
pub async fn mirrored_io(opts: &BenchOpts) -> Result<Vec<BenchLine>> {
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| MirrorError::State(format!("{}: {e}", opts.dir.display())))?;
    let ca = transport::ClusterCa::generate("bench")?;
    let (id1, id2) = (ca.issue(1)?, ca.issue(2)?);
    let e1 = engine_on_files(&opts.dir, 1, 1, opts.disk_bytes).await?;
    let e2 = engine_on_files(&opts.dir, 2, 1, opts.disk_bytes).await?;
    let srv = ReplicaServer::new(2, &opts.dir.join("node2-state"))?;
    srv.serve_engine(&e2);
    let bad_ip = |e: std::net::AddrParseError| MirrorError::State(format!("address: {e}"));
    let handle = srv
        .start(format!("{}:0", opts.ips[1]).parse().map_err(bad_ip)?, &id2)
        .await?;
    let link = PeerLink::new(
        2,
        handle.local_addr(),
        &id1,
        Arc::new(EpochBook::new(1)),
        MirrorConfig::default(),
    )?;
    attach_peer(&e1, &link).await?;
    e1.create_vdisk("m", VDISK_BYTES).await?;
    let hm = e1.open_vdisk("m")?;
    engine::bench::prefill(&hm, REGION).await?;

    let dur = opts.duration;
    let qd1 = engine::bench::run(&hm, &workload(1, dur)).await?;
    let ours_lat = 1e6 / qd1.iops.max(1e-9);
    // The model's parts, on the same files in the same run.
    let local = e1
        .local_replicas()
        .into_iter()
        .next()
        .ok_or_else(|| MirrorError::Protocol("node 1 has no disk".into()))?
        .1;
    let remote = e2
        .local_replicas()
        .into_iter()
        .next()
        .ok_or_else(|| MirrorError::Protocol("node 2 has no disk".into()))?
        .1;
    let part = dur.mul_f64(0.5).max(Duration::from_millis(300));
    let local_us = store_write_lat(&local, part).await?;
    let remote_us = store_write_lat(&remote, part).await?;
    let disk_id = srv.disks()[0].id.clone();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < part {
        link.ping(&disk_id).await?;
        n += 1;
    }
    let rtt_us = start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    let model = local_us + rtt_us + remote_us;
    tracing::info!(local_us, rtt_us, remote_us, "mirrored write model parts");

    perf_ctl("enable");
    let (qd32, qd32_cpu) = run_timed(&hm, &workload(32, dur)).await?;
    perf_ctl("disable");
    e1.shutdown().await?;
    e2.shutdown().await?;
    drop(handle);

    let es = engine_on_files(&opts.dir, 3, 2, opts.disk_bytes).await?;
    es.create_vdisk("s", VDISK_BYTES).await?;
    let hs = es.open_vdisk("s")?;
    engine::bench::prefill(&hs, REGION).await?;
    let (single, single_cpu) = run_timed(&hs, &workload(32, dur)).await?;
    es.shutdown().await?;

    Ok(vec![
        line(
            "mirrored_write_4k_qd1_lat_us",
            ours_lat,
            model,
            "local write + round trip + remote write",
            false,
        ),
        line(
            "mirrored_write_4k_qd32_iops",
            qd32.iops,
            single.iops,
            "single-node engine, two disks",
            true,
        ),
        // Where the difference goes: CPU of the whole process (both nodes) per write.
        line(
            "mirrored_write_4k_qd32_cpu_us_per_io",
            qd32_cpu,
            single_cpu,
            "single-node engine, two disks",
            false,
        ),
    ])
}
