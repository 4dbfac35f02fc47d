//! Micro benchmark of `UringDevice`: 4 KiB random read/write at QD1 and QD32 on a file, the same
//! shape as `fio --ioengine=io_uring --direct=1 --bs=4k --rw=randread --iodepth=N` so the two
//! can be compared. Not a test; the system benchmark lives in `cairn bench`.
//!
//! usage: uring_bench FILE [SECONDS] [SIZE_MIB] [METRIC-FILTER]
//! (the file is created and pre-written if it is missing or too small)

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{AlignedBuf, BlockDevice, UringDevice, UringOptions, BLOCK_SIZE};

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

async fn run(dev: Arc<UringDevice>, depth: u64, write: bool, secs: u64) -> f64 {
    let blocks = dev.info().size_bytes / BLOCK_SIZE as u64;
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
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % blocks) * BLOCK_SIZE as u64;
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

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: uring_bench FILE [SECONDS] [SIZE_MIB]"))?;
    let secs: u64 = args.next().map_or(Ok(10), |s| s.parse())?;
    let size_mib: u64 = args.next().map_or(Ok(1024), |s| s.parse())?;
    let filter = args.next().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let size = size_mib << 20;
        let exists = std::fs::metadata(&path)
            .map(|m| m.len() >= size)
            .unwrap_or(false);
        if !exists {
            blockdev::create_sparse_file(&path, size)?;
        }
        let dev = Arc::new(UringDevice::open(&path, UringOptions::default())?);
        if !exists {
            let chunk = AlignedBuf::from_slice(&vec![0xa5; 1 << 20]).into_write();
            for off in (0..size).step_by(1 << 20) {
                dev.write_at(off, chunk.clone()).await?;
            }
            dev.flush().await?;
        }
        for (name, depth, write) in [
            ("randread_qd1", 1, false),
            ("randread_qd32", 32, false),
            ("randwrite_qd1", 1, true),
            ("randwrite_qd32", 32, true),
        ] {
            if !name.contains(filter.as_str()) {
                continue;
            }
            let cpu0 = cpu_seconds();
            let iops = run(dev.clone(), depth, write, secs).await;
            let cpu_us_per_io = (cpu_seconds() - cpu0) * 1e6 / (iops * secs as f64);
            println!(
                "{{\"metric\":\"{name}\",\"iops\":{iops:.0},\"cpu_us_per_io\":{cpu_us_per_io:.2}}}"
            );
        }
        anyhow::Ok(())
    })
}
