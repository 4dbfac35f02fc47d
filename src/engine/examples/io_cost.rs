//! What one 4 KiB I/O costs the engine: heap allocations per I/O (exact, from a counting global
//! allocator; unaffected by machine load) and CPU microseconds per I/O (user + system of the whole
//! process, so it is noisy on a shared machine), for random reads and writes at QD 1 and 32 on a
//! two-replica disk over two file-backed io_uring devices (the setup of `cairn bench engine`).
//! Also context switches per I/O (each one a sleep and a wake-up somewhere in the process).
//! `cargo run --release -p engine --example io_cost -- DIR [IOS_PER_PATTERN] [PATTERN]`
//! A developer tool: the comparison against fio is `cairn bench engine`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use engine::{Engine, EngineConfig, VdiskHandle};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// (CPU seconds user + system, voluntary + involuntary context switches) of this process, from
/// getrusage (microsecond resolution).
fn usage() -> (f64, f64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return (0.0, 0.0);
    }
    // SAFETY: getrusage filled it.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        tv(ru.ru_utime) + tv(ru.ru_stime),
        (ru.ru_nvcsw + ru.ru_nivcsw) as f64,
    )
}

/// `ios` 4 KiB I/Os at random block offsets in [0, region), spread over `qd` tasks.
async fn drive(h: &VdiskHandle, write: bool, qd: u64, ios: u64, region: u64) -> anyhow::Result<()> {
    let blocks = region / 4096;
    let mut tasks = Vec::new();
    for q in 0..qd {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![(q as u8) | 1; 4096];
            let mut x = q.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for _ in 0..ios / qd {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % blocks) * 4096;
                if write {
                    buf[0] = buf[0].wrapping_add(1);
                    h.write(off, &buf).await?;
                } else {
                    let d = h.read_owned(off, 4096).await?;
                    std::hint::black_box(&d);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// A file of `size` zero bytes written in full, as `cairn bench engine` makes its devices (a
/// sparse file would make every first write allocate on the file system).
fn write_zeros(path: &str, size: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 4 << 20];
    for _ in 0..size / chunk.len() {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: io_cost DIR [IOS_PER_PATTERN] [PATTERN]"))?;
    let ios: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50_000);
    let only = args.next();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "io_cost".into(),
        })
        .await?;
        for i in 0..2 {
            let path = format!("{dir}/disk{i}.img");
            let _ = std::fs::remove_file(&path);
            write_zeros(&path, 512 << 20)?;
            e.add_disk(blockdev::open_device(&path)?).await?;
        }
        let region = 128u64 << 20;
        e.create_vdisk("io_cost", region).await?;
        let h = Arc::new(e.open_vdisk("io_cost")?);
        engine::bench::prefill(&h, region).await?;
        // Warm up every path (buffer pools, index entries) before counting.
        drive(&h, true, 32, 4096, region).await?;
        drive(&h, false, 32, 4096, region).await?;
        for (name, write, qd) in [
            ("randread_qd1", false, 1),
            ("randread_qd32", false, 32),
            ("randwrite_qd1", true, 1),
            ("randwrite_qd32", true, 32),
        ] {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let n = ios / qd * qd;
            let a0 = ALLOCS.load(Ordering::Relaxed);
            let (c0, s0) = usage();
            let t0 = Instant::now();
            drive(&h, write, qd, n, region).await?;
            let secs = t0.elapsed().as_secs_f64();
            let (c1, s1) = usage();
            let cpu = c1 - c0;
            let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
            println!(
                "{name:15} allocs/io {:6.2}  cpu us/io {:6.2}  csw/io {:5.2}  iops {:8.0}",
                allocs as f64 / n as f64,
                cpu / n as f64 * 1e6,
                (s1 - s0) / n as f64,
                n as f64 / secs
            );
        }
        e.shutdown().await?;
        for i in 0..2 {
            let _ = std::fs::remove_file(format!("{dir}/disk{i}.img"));
        }
        anyhow::Ok(())
    })
}
