//! Quick engine benchmark on two file-backed (io_uring, O_DIRECT) disks:
//! `cargo run --release -p engine --example engine_bench -- DIR [SECONDS] [RandWrite32,SeqRead4]`
//! (the named patterns only, in the order given: `SeqRead4` after `RandWrite32` reads data the
//! random writes scattered, as `cairn bench engine`'s sequence does).
//! The system-level comparison against fio is `cairn bench engine`; this is a developer tool.
//! Prints CPU time and context switches (all, and voluntary: the process's own sleeps, which
//! load does not inflate the way it does preemptions) per I/O.

use std::sync::Arc;
use std::time::Duration;

use engine::bench::{prefill, run, Pattern, Workload};
use engine::{Engine, EngineConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: engine_bench DIR [SECONDS]"))?;
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let only: Option<String> = args.next();
    let e = Engine::open(EngineConfig {
        node_id: 1,
        node_name: "bench".into(),
    })
    .await?;
    for i in 0..2 {
        let path = format!("{dir}/disk{i}.img");
        let _ = std::fs::remove_file(&path);
        // Written in full, as `cairn bench engine` does: a write into a hole of a sparse file
        // makes the file system allocate, and io_uring hands such writes to its worker threads
        // (each a context switch), which the figures should not include.
        write_zero_file(&path, 2 << 30)?;
        e.add_disk(blockdev::open_device(&path)?).await?;
    }
    let region = 512u64 << 20;
    e.create_vdisk("bench", region).await?;
    let h = e.open_vdisk("bench")?;
    prefill(&h, region).await?;
    let h = Arc::new(h);
    let all = [
        (Pattern::RandRead, 4096, 1),
        (Pattern::RandRead, 4096, 32),
        (Pattern::RandWrite, 4096, 1),
        (Pattern::RandWrite, 4096, 32),
        (Pattern::SeqRead, 1 << 20, 4),
        (Pattern::SeqWrite, 1 << 20, 4),
    ];
    let chosen = match only.as_deref() {
        None => all.to_vec(),
        Some(list) => list
            .split(',')
            .map(|name| {
                all.iter()
                    .find(|(p, _, qd)| format!("{p:?}{qd}") == name)
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("unknown pattern {name}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    for (pattern, bs, qd) in chosen {
        let w = Workload {
            pattern,
            request_bytes: bs,
            queue_depth: qd,
            duration: Duration::from_secs(secs),
            region_bytes: region,
            flush_every: 0,
        };
        let (cpu0, cs0) = (cpu_secs(), context_switches());
        let r = run(&h, &w).await?;
        let ops = r.ops.max(1) as f64;
        let cpu_us = (cpu_secs() - cpu0) / ops * 1e6;
        let cs = context_switches();
        let per_io = |now: u64, then: u64| now.saturating_sub(then) as f64 / ops;
        println!(
            "{}",
            serde_json::json!({"pattern": format!("{pattern:?}"), "bs": bs, "qd": qd,
                "cpu_us_per_io": cpu_us, "switches_per_io": per_io(cs.0 + cs.1, cs0.0 + cs0.1),
                "voluntary_switches_per_io": per_io(cs.0, cs0.0), "result": r})
        );
    }
    e.shutdown().await?;
    Ok(())
}

/// A file of `size` bytes written in full (no holes).
fn write_zero_file(path: &str, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Context switches (voluntary, involuntary) of every thread of this process so far; threads
/// that ended meanwhile are not counted (the runtime's workers live for the whole run).
/// Voluntary ones are the process's own sleeps and wake-ups; involuntary ones grow with the
/// machine's load (preemption).
fn context_switches() -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    let (mut vol, mut invol) = (0, 0);
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let count = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                vol += count(v);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                invol += count(v);
            }
        }
    }
    (vol, invol)
}

/// CPU seconds (user + system) this process has used (USER_HZ = 100).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}
