//! Quick engine benchmark on two file-backed (io_uring, O_DIRECT) disks:
//! `cargo run --release -p engine --example engine_bench -- DIR [SECONDS] [RandWrite32,SeqRead4]`
//! (the named patterns only, in the order given: `SeqRead4` after `RandWrite32` reads data the
//! random writes scattered, as `cairn bench engine`'s sequence does).
//! The system-level comparison against fio is `cairn bench engine`; this is a developer tool.

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
        blockdev::create_sparse_file(&path, 2 << 30)?;
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
        let cpu0 = cpu_secs();
        let r = run(&h, &w).await?;
        let cpu_us = (cpu_secs() - cpu0) / r.ops.max(1) as f64 * 1e6;
        println!(
            "{}",
            serde_json::json!({"pattern": format!("{pattern:?}"), "bs": bs, "qd": qd,
                "cpu_us_per_io": cpu_us, "result": r})
        );
    }
    e.shutdown().await?;
    Ok(())
}

/// CPU seconds (user + system) this process has used (USER_HZ = 100).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}
