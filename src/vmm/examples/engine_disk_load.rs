//! Developer probe: how much `EngineDisk`'s blocking calls from plain threads cost over the engine
//! alone, with no guest (virtio-blk no longer uses them: it submits tasks through `AsyncDisk`). One engine on two pre-written pool files
//! in DIR; 4 KiB random writes (or reads) at QD 1 and 32, first through `engine::bench::run`
//! (async tasks), then through `EngineDisk` from QD plain threads (the old blk I/O lanes).
//! Usage: cargo run --release -p vmm --example engine_disk_load -- DIR [SECONDS] [read|sparse|read,sparse]
//! (`sparse`: pool files left sparse, as the VMM bench had them, to show what holes cost.)

use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::backend::DiskBackend;

fn prewrite(path: &std::path::Path, bytes: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20]; // blank: the engine adopts only blank disks
    let mut off = 0;
    while off < bytes {
        f.write_all_at(&chunk, off)?;
        off += chunk.len() as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/var/tmp/edl".into()));
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mode = args.next().unwrap_or_default();
    let read = mode.contains("read");
    let sparse = mode.contains("sparse");
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let region = 256u64 << 20;
    let (engine, h) = rt.block_on(async {
        let e = engine::Engine::open(engine::EngineConfig {
            node_id: 1,
            node_name: "probe".into(),
        })
        .await?;
        for i in 0..2 {
            let p = dir.join(format!("pool{i}.img"));
            if sparse {
                let _ = std::fs::remove_file(&p);
                blockdev::create_sparse_file(&p, 1 << 30)?;
            } else {
                prewrite(&p, 1 << 30)?;
            }
            e.add_disk(blockdev::open_device(&p)?).await?;
        }
        e.create_vdisk("probe", region).await?;
        let h = e.open_vdisk("probe")?;
        engine::bench::prefill(&h, region).await?;
        anyhow::Ok((e, h))
    })?;
    let pattern = if read {
        engine::bench::Pattern::RandRead
    } else {
        engine::bench::Pattern::RandWrite
    };
    for qd in [1u32, 32] {
        let w = engine::bench::Workload {
            pattern,
            request_bytes: 4096,
            queue_depth: qd,
            duration: Duration::from_secs(secs),
            region_bytes: region,
            flush_every: 0,
        };
        let r = rt.block_on(engine::bench::run(&h, &w))?;
        println!(
            "engine async  qd={qd:2} iops={:.0} p50={}us",
            r.iops, r.lat_p50_us
        );
        let disk: Arc<dyn DiskBackend> =
            Arc::new(vmm::EngineDisk::new(h.clone(), rt.handle().clone()));
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(secs);
        let threads: Vec<_> = (0..qd)
            .map(|q| {
                let disk = disk.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0x33u8; 4096];
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(q);
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let off = (x % (region / 4096)) * 4096;
                        let r = if read {
                            disk.read(off, &mut buf)
                        } else {
                            disk.write(off, &buf)
                        };
                        if r.is_err() {
                            break;
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let ops: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        println!(
            "EngineDisk    qd={qd:2} iops={:.0}",
            ops as f64 / t0.elapsed().as_secs_f64()
        );
    }
    drop(h);
    rt.block_on(engine.shutdown())?;
    Ok(())
}
