//! `cairn bench engine`: the block engine against its anchors (BENCHMARKS.md), one JSON line
//! per figure. A benchmark, never part of the test run.
//!
//! Phases, each on files this command writes itself under `--dir`:
//! 1. engine: a two-replica virtual disk on two pre-written files, driven in-process at QD 1 and
//!    32 (4 KiB random) and 1 MiB sequential, against fio (io_uring, O_DIRECT) on the same files:
//!    reads spread over both files, each read run followed at once by its fio run (fio only
//!    reads, the engine stays open); writes as two jobs writing both files (the mirror's work),
//!    once the engine is shut down (they overwrite its data);
//! 2. NBD: fio's nbd engine against our NBD export and against qemu-storage-daemon serving a
//!    qcow2 image on the same file system;
//! 3. snapshots: create time on an empty disk vs after `--snapshot-fill` written, and p99 of the
//!    first write after a snapshot vs a normal write.

mod fio;
mod load;
mod nbdbench;
mod snap;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use engine::{Engine, EngineConfig, VdiskHandle};

#[derive(Debug, Args)]
pub struct EngineBenchArgs {
    /// Directory for the bench files (on the file system to measure).
    #[arg(long, default_value = "/var/tmp/cairn-bench")]
    pub dir: PathBuf,
    /// Size of each of the two pre-written device files.
    #[arg(long, value_parser = crate::cli::size_arg, default_value = "1G")]
    pub file_size: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Runs per figure; the median is printed.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Data written before the second snapshot-create measurement.
    #[arg(long, value_parser = crate::cli::size_arg, default_value = "4G")]
    pub snapshot_fill: u64,
    #[arg(long)]
    pub skip_nbd: bool,
    #[arg(long)]
    pub skip_snapshot: bool,
    /// Measure only these patterns (comma-separated: randread_4k_qd1, randread_4k_qd32,
    /// randwrite_4k_qd1, randwrite_4k_qd32, seqread_1m, seqwrite_1m), in the usual order.
    /// The reads after a random-write row read what it laid out: a row alone may differ.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Also print each of our runs' latency percentiles (stderr).
    #[arg(long)]
    pub latency: bool,
    /// Leave the bench files in place afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// One printed figure.
pub struct Figure {
    pub metric: String,
    pub ours: f64,
    pub anchor: f64,
    pub anchor_name: String,
    pub higher_is_better: bool,
}

impl Figure {
    pub fn print(&self) {
        let ratio = if self.anchor > 0.0 {
            self.ours / self.anchor
        } else {
            0.0
        };
        let line = serde_json::json!({
            "bench": "engine", "metric": self.metric,
            "ours": round(self.ours), "anchor": round(self.anchor),
            "anchor_name": self.anchor_name, "ratio": (ratio * 1000.0).round() / 1000.0,
            "higher_is_better": self.higher_is_better,
        });
        println!("{line}");
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub fn run(args: EngineBenchArgs) -> i32 {
    crate::nodecmd::init_tracing();
    match run_inner(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn bench engine: {e:#}");
            1
        }
    }
}

fn run_inner(a: &EngineBenchArgs) -> Result<()> {
    let known: Vec<&str> = patterns(0).iter().map(|p| p.0).collect();
    if let Some(bad) = a.only.iter().find(|s| !known.contains(&s.as_str())) {
        anyhow::bail!("--only: no pattern {bad:?} (known: {})", known.join(", "));
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("create {}", a.dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let files = [a.dir.join("dev-a.img"), a.dir.join("dev-b.img")];
    for f in &files {
        write_zero_file(f, a.file_size)?;
    }
    let span = (a.file_size / 4) & !((1 << 20) - 1);
    let dur = Duration::from_secs(a.seconds);
    rt.block_on(engine_phase(a, &files, span, dur))?;
    if !a.skip_nbd {
        for f in &files {
            write_zero_file(f, a.file_size)?;
        }
        rt.block_on(nbdbench::run(a, &files, span, dur))?;
    }
    if !a.skip_snapshot {
        rt.block_on(snap::run(a))?;
    }
    if !a.keep {
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
    }
    Ok(())
}

/// A file of `size` bytes written in full (so reads hit the device, not holes).
pub fn write_zero_file(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let chunk = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// An engine on the given device files with one vdisk `name` of `size` bytes.
pub async fn engine_on(files: &[PathBuf], name: &str, size: u64) -> Result<(Engine, VdiskHandle)> {
    let engine = Engine::open(EngineConfig {
        node_id: 1,
        node_name: "bench".into(),
    })
    .await?;
    for f in files {
        let dev = node::open_device(f).map_err(|e| anyhow::anyhow!(e.message))?;
        engine.add_disk(dev).await?;
    }
    engine.create_vdisk(name, size).await?;
    let h = engine.open_vdisk(name)?;
    Ok((engine, h))
}

/// The patterns `--only` keeps (all six without it).
pub fn selected(
    a: &EngineBenchArgs,
    span: u64,
) -> Vec<(&'static str, load::Pattern, &'static str, &'static str)> {
    patterns(span)
        .into_iter()
        .filter(|p| a.only.is_empty() || a.only.iter().any(|s| s == p.0))
        .collect()
}

/// The six I/O patterns: (metric stem, pattern for the engine, fio rw, fio bs, qd).
pub fn patterns(span: u64) -> Vec<(&'static str, load::Pattern, &'static str, &'static str)> {
    let p = |write, random, block_bytes, qd| load::Pattern {
        write,
        random,
        block_bytes,
        qd,
        span_bytes: span,
    };
    vec![
        ("randread_4k_qd1", p(false, true, 4096, 1), "randread", "4k"),
        (
            "randread_4k_qd32",
            p(false, true, 4096, 32),
            "randread",
            "4k",
        ),
        (
            "randwrite_4k_qd1",
            p(true, true, 4096, 1),
            "randwrite",
            "4k",
        ),
        (
            "randwrite_4k_qd32",
            p(true, true, 4096, 32),
            "randwrite",
            "4k",
        ),
        ("seqread_1m", p(false, false, 1 << 20, 8), "read", "1m"),
        ("seqwrite_1m", p(true, false, 1 << 20, 8), "write", "1m"),
    ]
}

/// One run of the anchor (fio) for a pattern: (IOPS per mirror, CPU us per I/O per mirror).
fn anchor_run(
    names: &[String],
    pat: load::Pattern,
    rw: &str,
    bs: &str,
    dur: Duration,
) -> Result<(f64, f64)> {
    let mut args: Vec<String> = [
        "--ioengine=io_uring",
        "--direct=1",
        "--time_based",
        "--group_reporting=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--runtime={}", dur.as_secs()));
    args.push(format!("--size={}", pat.span_bytes));
    args.push(format!("--rw={rw}"));
    args.push(format!("--bs={bs}"));
    args.push(format!("--iodepth={}", pat.qd));
    let writers = pat.write;
    if writers {
        // The mirror's work: the same writes to both files, at the same depth.
        for (i, n) in names.iter().enumerate() {
            args.push(format!("--name=w{i}"));
            args.push(format!("--filename={n}"));
        }
    } else {
        args.push("--name=r".into());
        args.push(format!("--filename={}", names.join(":")));
        args.push("--file_service_type=random".into());
    }
    let r = fio::run(&args)?;
    let per = if writers { 2.0 } else { 1.0 };
    Ok((r.iops / per, r.cpu_secs / (r.ios / per).max(1.0) * 1e6))
}

async fn engine_phase(
    a: &EngineBenchArgs,
    files: &[PathBuf; 2],
    span: u64,
    dur: Duration,
) -> Result<()> {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let (engine, h) = engine_on(files, "bench", span).await?;
    load::prefill(&h, span).await?;
    // Per pattern: (ours IOPS, ours CPU, anchor IOPS, anchor CPU), one entry per run.
    let mut runs: Vec<[Vec<f64>; 4]> = Vec::new();
    let pats = selected(a, span);
    for &(stem, pat, rw, bs) in &pats {
        let mut m: [Vec<f64>; 4] = Default::default();
        for _ in 0..a.runs {
            let r = load::run(&h, pat, dur).await?;
            if a.latency {
                let q = |p| load::percentile(&r.lat_ns, p) / 1000.0;
                eprintln!(
                    "cairn bench engine: {stem}: ours {:.0} IOPS, latency p10 {:.0} p50 {:.0} \
                     p90 {:.0} p99 {:.0} us",
                    r.iops(),
                    q(0.1),
                    q(0.5),
                    q(0.9),
                    q(0.99)
                );
            }
            m[0].push(r.iops());
            m[1].push(r.cpu_secs / r.ops.max(1) as f64 * 1e6);
            h.flush().await?;
            if !pat.write {
                // The read anchor right after ours, on the same files (fio only reads them),
                // so both see the same device and machine: with the anchors a minute or two
                // later, the ratio also measured whatever the host did in between.
                let (names, (rw, bs)) = (names.clone(), (rw.to_string(), bs.to_string()));
                let (i, c) =
                    tokio::task::spawn_blocking(move || anchor_run(&names, pat, &rw, &bs, dur))
                        .await??;
                m[2].push(i);
                m[3].push(c);
            }
        }
        runs.push(m);
    }
    engine.shutdown().await?;
    drop(h);
    drop(engine);

    // The write anchors on the very same files once the engine is done with them (they
    // overwrite its data).
    for (&(_, pat, rw, bs), m) in pats.iter().zip(runs.iter_mut()) {
        if pat.write {
            for _ in 0..a.runs {
                let (i, c) = anchor_run(&names, pat, rw, bs, dur)?;
                m[2].push(i);
                m[3].push(c);
            }
        }
    }
    for (&(stem, pat, _, _), m) in pats.iter().zip(runs) {
        let [our_iops, our_cpu, anchor_iops, anchor_cpu] = m.map(median);
        let seq = stem.starts_with("seq");
        Figure {
            metric: if seq {
                format!("{stem}_mib_s")
            } else {
                format!("{stem}_iops")
            },
            // 1 MiB blocks: IOPS and MiB/s are the same number.
            ours: our_iops,
            anchor: anchor_iops,
            anchor_name: if pat.write {
                "fio io_uring direct, same writes to both files".into()
            } else {
                "fio io_uring direct, reads over both files".into()
            },
            higher_is_better: true,
        }
        .print();
        Figure {
            metric: format!("{stem}_cpu_us_per_io"),
            ours: our_cpu,
            anchor: anchor_cpu,
            anchor_name: "fio usr+sys".into(),
            higher_is_better: false,
        }
        .print();
    }
    Ok(())
}
