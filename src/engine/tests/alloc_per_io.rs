//! Heap allocations per 4 KiB read and write on a two-replica disk: an upper bound, so a change
//! that adds a boxed future, a `Vec` or an `Arc` per request to the hot path fails here instead
//! of showing up only as CPU in `cairn bench engine`. Counted by a global allocator that counts
//! only on this test's thread while a window is open (a current-thread runtime runs every task
//! there); the smallest count of several windows is taken, so a background task that happens
//! to run inside one window (a metadata flush) cannot fail the test. Not timed.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;

struct Counting;

thread_local! {
    /// Allocations on this thread since the window opened; None while no window is open.
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

fn note() {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = COUNT.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added
// (a const-initialised thread-local Cell, which never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
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

/// The smallest number of allocations `op` made per call, over `windows` windows of `n` calls.
async fn min_allocs_per_op<F, Fut>(windows: usize, n: u64, mut op: F) -> anyhow::Result<f64>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut best = u64::MAX;
    let mut i = 0;
    for _ in 0..windows {
        COUNT.with(|c| c.set(Some(0)));
        for _ in 0..n {
            op(i).await?;
            i += 1;
        }
        let got = COUNT.with(|c| c.take()).unwrap_or(0);
        best = best.min(got);
    }
    Ok(best as f64 / n as f64)
}

#[tokio::test(flavor = "current_thread")]
async fn few_allocations_per_4k_read_and_write() -> anyhow::Result<()> {
    // The devices of a real pool: io_uring on two files (buffered where the file system refuses
    // O_DIRECT, as on tmpfs: the same code path above the kernel).
    let dir = std::env::temp_dir().join(format!("engine-alloc-per-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut devs = Vec::new();
    for i in 0..2 {
        let path = dir.join(format!("d{i}.img"));
        blockdev::create_sparse_file(&path, 64 * MIB)?;
        match blockdev::open_device(&path) {
            Ok(d) => devs.push(d),
            Err(e) => {
                println!("skipped: io_uring device unavailable here: {e}");
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(());
            }
        }
    }
    let r = count_on(&devs).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// The counts and their bounds on an engine over `devs`.
async fn count_on(devs: &[std::sync::Arc<dyn blockdev::BlockDevice>]) -> anyhow::Result<()> {
    let e = engine_on(devs).await?;
    let size = 8 * MIB;
    e.create_vdisk("v", size).await?;
    let h = e.open_vdisk("v")?;
    h.write(0, &pattern(1, size as usize)).await?;
    let blocks = size / 4096;
    // Scattered offsets (every chunk has replicas and index entries after the fill).
    let off = |i: u64| (i.wrapping_mul(2_654_435_761) % blocks) * 4096;
    let data = pattern(2, 4096);
    let mut buf = vec![0u8; 4096];
    // Warm up: buffer pools and per-chunk state exist before anything is counted.
    for i in 0..256 {
        h.write(off(i), &data).await?;
        h.read(off(i), &mut buf).await?;
        std::hint::black_box(h.read_owned(off(i), 4096).await?);
    }

    let write = min_allocs_per_op(5, 64, |i| {
        let h = &h;
        let data = &data;
        async move { Ok(h.write(off(i), data).await?) }
    })
    .await?;
    let read_owned = min_allocs_per_op(5, 64, |i| {
        let h = &h;
        async move {
            std::hint::black_box(h.read_owned(off(i), 4096).await?);
            Ok(())
        }
    })
    .await?;
    let bufp = &mut buf;
    let mut read = f64::MAX;
    for w in 0..5u64 {
        COUNT.with(|c| c.set(Some(0)));
        for i in 0..64 {
            h.read(off(w * 64 + i), bufp).await?;
        }
        read = read.min(COUNT.with(|c| c.take()).unwrap_or(0) as f64 / 64.0);
    }
    println!("allocations per 4 KiB I/O: write {write}, read_owned {read_owned}, read {read}");
    // What they are now: a write shares its one buffer between the replicas through an `Arc`;
    // a read allocates nothing. A debug build's store also recomputes the caller's checksums
    // into a `Vec` per replica (a debug_assert).
    let debug_checks = if cfg!(debug_assertions) { 2.0 } else { 0.0 };
    assert!(
        write <= 1.0 + debug_checks,
        "{write} allocations per 4 KiB write"
    );
    assert_eq!(read_owned, 0.0, "allocations per 4 KiB read_owned");
    assert_eq!(read, 0.0, "allocations per 4 KiB read");
    e.shutdown().await?;
    Ok(())
}
