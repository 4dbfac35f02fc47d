//! Batched submission through a plug: requests queued together go to the kernel in one call,
//! each completes with its own result, a bad entry fails only itself, and nothing queued is
//! left behind when the plug goes.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;

use io_uring::{opcode, squeue, types};

use super::ring::{Hold, Ring};
use crate::{AlignedBuf, BLOCK_SIZE};

type Run<'a> = Pin<Box<dyn Future<Output = (i32, Hold)> + 'a>>;

const BLOCKS: usize = 32;

/// A file whose block `i` is filled with byte `i + 1`, opened for the ring.
fn pattern_file(name: &str) -> std::fs::File {
    let dir = std::env::temp_dir().join("blockdev-ring-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..BLOCKS {
        f.write_all(&vec![(i + 1) as u8; BLOCK_SIZE]).unwrap();
    }
    f.sync_all().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    f
}

/// A read of block `i` into its own buffer.
fn read_block(ring: &Ring, i: usize) -> Run<'_> {
    let mut buf = AlignedBuf::zeroed(BLOCK_SIZE);
    let entry = opcode::Read::new(types::Fixed(0), buf.as_mut_ptr(), BLOCK_SIZE as u32)
        .offset((i * BLOCK_SIZE) as u64)
        .build();
    // SAFETY: the entry points into `buf`, which moves into the hold (its heap memory stays
    // put); the fd is fixed file 0.
    Box::pin(unsafe { ring.run(entry, Hold::Read(buf)) })
}

/// Polls every future once (each queues its entry) and checks none finished yet.
async fn start_all(futs: &mut [Run<'_>]) {
    for f in futs.iter_mut() {
        assert!(
            futures::poll!(f.as_mut()).is_pending(),
            "a plugged request finished before the plug went"
        );
    }
}

fn queued(ring: &Ring) -> usize {
    ring.queued_for_test()
}

fn check_read(i: usize, (res, hold): (i32, Hold)) {
    assert_eq!(res, BLOCK_SIZE as i32, "read of block {i}");
    let Hold::Read(b) = hold else {
        panic!("read {i} lost its buffer")
    };
    assert!(
        b.iter().all(|&x| x == (i + 1) as u8),
        "block {i} has the wrong bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugged_requests_go_in_one_batch_and_all_complete() {
    let ring = Ring::start(pattern_file("batch"), 64).unwrap();
    let plug = ring.plug();
    let mut futs: Vec<Run<'_>> = (0..BLOCKS).map(|i| read_block(&ring, i)).collect();
    start_all(&mut futs).await;
    assert_eq!(
        queued(&ring),
        BLOCKS,
        "every plugged request waits in the queue"
    );
    drop(plug);
    assert_eq!(queued(&ring), 0, "unplugging submits everything queued");
    let results = futures::future::join_all(futs).await;
    for (i, r) in results.into_iter().enumerate() {
        check_read(i, r);
    }
    // Nested plugs: only the last one to go submits.
    let outer = ring.plug();
    let inner = ring.plug();
    let mut futs: Vec<Run<'_>> = (0..4).map(|i| read_block(&ring, i)).collect();
    start_all(&mut futs).await;
    drop(inner);
    assert_eq!(
        queued(&ring),
        4,
        "an inner plug leaves the batch to the outer one"
    );
    drop(outer);
    assert_eq!(queued(&ring), 0);
    for (i, r) in futures::future::join_all(futs)
        .await
        .into_iter()
        .enumerate()
    {
        check_read(i, r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_entry_in_a_batch_fails_only_itself() {
    let ring = Ring::start(pattern_file("bad"), 64).unwrap();
    let plug = ring.plug();
    let mut futs: Vec<Run<'_>> = (0..8).map(|i| read_block(&ring, i)).collect();
    // Buffer selection on an fsync is refused while the kernel takes the entry from the queue
    // (before it runs): without SUBMIT_ALL (or the resubmit loop) it would halt the batch.
    let bad = opcode::Fsync::new(types::Fixed(0))
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
    // SAFETY: the entry carries no buffer; the fd is fixed file 0.
    futs.insert(4, Box::pin(unsafe { ring.run(bad, Hold::None) }));
    // A read past a fixed-file index that does not exist fails when it runs.
    let mut buf = AlignedBuf::zeroed(BLOCK_SIZE);
    let stray = opcode::Read::new(types::Fixed(9), buf.as_mut_ptr(), BLOCK_SIZE as u32).build();
    // SAFETY: the entry points into `buf`, moved into the hold; a bad fixed index is refused
    // by the kernel without touching memory.
    futs.insert(7, Box::pin(unsafe { ring.run(stray, Hold::Read(buf)) }));
    futs.extend((8..16).map(|i| read_block(&ring, i)));
    start_all(&mut futs).await;
    assert_eq!(queued(&ring), 18);
    drop(plug);
    assert_eq!(
        queued(&ring),
        0,
        "the batch went in whole despite the bad entries"
    );
    let mut results = futures::future::join_all(futs).await;
    let (stray_res, _) = results.remove(7);
    let (bad_res, _) = results.remove(4);
    assert!(bad_res < 0, "the refused fsync failed ({bad_res})");
    assert!(
        stray_res < 0,
        "the read on a missing file failed ({stray_res})"
    );
    for (i, r) in results.into_iter().enumerate() {
        check_read(i, r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_plugged_requests_keeps_the_ring_usable() {
    let ring = Ring::start(pattern_file("drop"), 8).unwrap();
    {
        let _plug = ring.plug();
        let mut futs: Vec<Run<'_>> = (0..8).map(|i| read_block(&ring, i)).collect();
        start_all(&mut futs).await;
        // Dropped while queued: their slots are abandoned until the kernel answers.
        drop(futs);
    }
    assert_eq!(queued(&ring), 0);
    // All 8 slots come back once the abandoned reads complete; new reads then succeed.
    let futs: Vec<Run<'_>> = (8..16).map(|i| read_block(&ring, i)).collect();
    for (i, r) in futures::future::join_all(futs)
        .await
        .into_iter()
        .enumerate()
    {
        check_read(i + 8, r);
    }
}
