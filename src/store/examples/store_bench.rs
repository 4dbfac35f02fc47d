//! Micro benchmark of the store's overhead: 4 KiB random read/write at QD1 and QD32 through
//! `Store` on a file-backed `UringDevice`, next to the same pattern on the raw device. Not a
//! test; the system benchmark with fio as the anchor is `cairn bench engine`.
//!
//! usage: store_bench DIR [SECONDS] [SIZE_MIB]   (creates DIR/raw.img and DIR/store.img)
//! ONLY_RAM=1 skips the file figures and prints only the CPU cost per operation on RAM devices.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{AlignedBuf, BlockDevice, UringDevice, UringOptions, BLOCK_SIZE};
use store::{Label, ObjectId, Store};

const CHUNK_BLOCKS: u64 = 256;

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn raw(dev: Arc<dyn BlockDevice>, span: u64, depth: u64, write: bool, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..depth {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = 0x1234_5678_9abc_def1u64 ^ (w << 32);
            let mut buf = AlignedBuf::zeroed(BLOCK_SIZE);
            let data = AlignedBuf::from_slice(&[0x5a; BLOCK_SIZE]).into_write();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let off = (next(&mut x) % span) * BLOCK_SIZE as u64;
                if write {
                    dev.write_at(off, data.clone()).await.expect("write");
                } else {
                    buf = dev.read_at(off, buf).await.expect("read");
                }
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / secs as f64
}

async fn through_store(s: Arc<Store>, span: u64, depth: u64, write: bool, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..depth {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = 0x1234_5678_9abc_def1u64 ^ (w << 32);
            let data = AlignedBuf::from_slice(&[0x5a; BLOCK_SIZE]).into_write();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let b = next(&mut x) % span;
                let obj = ObjectId {
                    vdisk: 1,
                    chunk: b / CHUNK_BLOCKS,
                };
                if write {
                    s.write(obj, b % CHUNK_BLOCKS, data.clone(), 1, 0)
                        .await
                        .expect("write");
                } else {
                    s.read(obj, b % CHUNK_BLOCKS, 1, u64::MAX)
                        .await
                        .expect("read");
                }
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / secs as f64
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: store_bench DIR [SECONDS] [SIZE_MIB]"))?;
    let secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let size_mib: u64 = args.next().map_or(Ok(1024), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let size = size_mib << 20;
        // The store gets headroom for redirect-on-write; both touch the same span of blocks.
        let span = (size / BLOCK_SIZE as u64) / 2;
        let raw_path = format!("{dir}/raw.img");
        let store_path = format!("{dir}/store.img");
        let _ = std::fs::remove_file(&raw_path);
        let _ = std::fs::remove_file(&store_path);
        blockdev::create_sparse_file(&raw_path, size)?;
        blockdev::create_sparse_file(&store_path, size)?;
        let rdev: Arc<dyn BlockDevice> = Arc::new(UringDevice::open(&raw_path, UringOptions::default())?);
        let chunk = AlignedBuf::from_slice(&vec![0xa5; 1 << 20]).into_write();
        for off in (0..span * BLOCK_SIZE as u64).step_by(1 << 20) {
            rdev.write_at(off, chunk.clone()).await?;
        }
        rdev.flush().await?;
        let sdev: Arc<dyn BlockDevice> = Arc::new(UringDevice::open(&store_path, UringOptions::default())?);
        let label = Label {
            pool_id: uuid::Uuid::new_v4(),
            disk_id: uuid::Uuid::new_v4(),
            node_id: 1,
            created_unix: 0,
        };
        let s = Arc::new(Store::format(sdev, label).await?);
        for c in 0..span / CHUNK_BLOCKS {
            s.write(ObjectId { vdisk: 1, chunk: c }, 0, chunk.clone(), 1, 0).await?;
        }
        s.flush().await?;
        let only_ram = std::env::var("ONLY_RAM").is_ok();
        for (name, depth, write) in [
            ("randread_qd1", 1, false),
            ("randread_qd32", 32, false),
            ("randwrite_qd1", 1, true),
            ("randwrite_qd32", 32, true),
        ] {
            if only_ram {
                break;
            }
            let r = raw(rdev.clone(), span, depth, write, secs).await;
            let t0 = cpu();
            let o = through_store(s.clone(), span, depth, write, secs).await;
            let cpu_s = cpu() - t0;
            println!(
                "{{\"metric\":\"{name}\",\"store_iops\":{o:.0},\"raw_iops\":{r:.0},\"ratio\":{:.3},\"store_cpu_s\":{cpu_s:.2}}}",
                o / r
            );
        }
        s.close().await?;
        println!("{{\"stats\":\"{:?}\"}}", s.stats());
        // Pure CPU overhead per operation: the same loops on RAM devices.
        let ram_size = 256u64 << 20;
        let ram_span = ram_size / BLOCK_SIZE as u64 / 2;
        let rram: Arc<dyn BlockDevice> = Arc::new(blockdev::RamDevice::new("ram", ram_size));
        let sram = Arc::new(Store::format(Arc::new(blockdev::RamDevice::new("ram", ram_size)), s.label().clone()).await?);
        for off in (0..ram_span * BLOCK_SIZE as u64).step_by(1 << 20) {
            rram.write_at(off, chunk.clone()).await?;
        }
        for c in 0..ram_span / CHUNK_BLOCKS {
            sram.write(ObjectId { vdisk: 1, chunk: c }, 0, chunk.clone(), 1, 0).await?;
        }
        for (name, write) in [("ram_read_qd1", false), ("ram_write_qd1", true)] {
            // CPU time, not wall time: robust on a loaded machine.
            let t0 = cpu();
            let r = raw(rram.clone(), ram_span, 1, write, secs).await * secs as f64;
            let t1 = cpu();
            let o = through_store(sram.clone(), ram_span, 1, write, secs).await * secs as f64;
            let t2 = cpu();
            println!(
                "{{\"metric\":\"{name}\",\"store_cpu_ns_per_op\":{:.0},\"raw_cpu_ns_per_op\":{:.0}}}",
                (t2 - t1) * 1e9 / o,
                (t1 - t0) * 1e9 / r
            );
        }
        anyhow::Ok(())
    })
}

/// Process CPU seconds (user + system) from /proc/self/stat.
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}
