//! Snapshot figures: create time on an empty disk vs after `--snapshot-fill` bytes written (it
//! must stay flat: metadata only), and p99 of the first write to a block after a snapshot vs a
//! normal write (copy-up must stay cheap).

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{engine_on, load, median, EngineBenchArgs, Figure};

/// Writes measured for each p99.
const SAMPLE_WRITES: usize = 2000;
const CREATES: usize = 5;

async fn create_times(engine: &engine::Engine, tag: &str) -> Result<f64> {
    let mut ms = Vec::new();
    for i in 0..CREATES {
        let name = format!("{tag}{i}");
        let t = Instant::now();
        engine.create_snapshot("snapbench", &name).await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for i in 0..CREATES {
        engine
            .delete_snapshot("snapbench", &format!("{tag}{i}"))
            .await?;
    }
    Ok(median(ms))
}

/// QD1 4 KiB writes to distinct random blocks of `[0, span)`; returns p99 latency in µs.
async fn write_p99(h: &engine::VdiskHandle, span: u64, seed: u64) -> Result<f64> {
    let mut blocks: Vec<u64> = (0..span / 4096).collect();
    blocks.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let buf = vec![0xa5u8; 4096];
    let mut lat = Vec::with_capacity(SAMPLE_WRITES);
    for b in blocks.into_iter().take(SAMPLE_WRITES) {
        let t = Instant::now();
        h.write(b * 4096, &buf).await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    Ok(load::percentile(&lat, 0.99) / 1e3)
}

pub async fn run(a: &EngineBenchArgs) -> Result<()> {
    let fill = a.snapshot_fill.max(64 << 20) & !((1 << 20) - 1);
    // Each disk holds one replica of everything, plus room for metadata and redirect-on-write.
    let disk = fill + fill / 2 + (512 << 20);
    let files = [a.dir.join("snap-a.img"), a.dir.join("snap-b.img")];
    for f in &files {
        let file = std::fs::File::create(f)?;
        file.set_len(disk)?;
    }
    let result = async {
        let (engine, h) = engine_on(&files, "snapbench", fill).await?;
        let empty_ms = create_times(&engine, "empty").await?;
        load::prefill(&h, fill).await?;
        let full_ms = create_times(&engine, "full").await?;
        Figure {
            metric: "snapshot_create_ms".into(),
            ours: full_ms,
            anchor: empty_ms,
            anchor_name: format!(
                "same engine, empty disk (ours: after {} written)",
                control::format_size(fill)
            ),
            higher_is_better: false,
        }
        .print();

        let mut normal = Vec::new();
        let mut after = Vec::new();
        for run in 0..a.runs.max(1) as u64 {
            normal.push(write_p99(&h, fill, 10 + run).await?);
            h.flush().await?;
            let name = format!("p99-{run}");
            engine.create_snapshot("snapbench", &name).await?;
            after.push(write_p99(&h, fill, 20 + run).await?);
            h.flush().await?;
            engine.delete_snapshot("snapbench", &name).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Figure {
            metric: "first_write_after_snapshot_p99_us".into(),
            ours: median(after),
            anchor: median(normal),
            anchor_name: "normal 4 KiB write p99 (same disk, no snapshot)".into(),
            higher_is_better: false,
        }
        .print();
        engine.shutdown().await?;
        anyhow::Ok(())
    }
    .await;
    if !a.keep {
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
    }
    result
}
