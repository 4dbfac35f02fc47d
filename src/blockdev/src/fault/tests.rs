use std::sync::Arc;

use super::*;
use crate::RamDevice;

const BS: u64 = BLOCK_SIZE as u64;

fn dev(seed: u64) -> (Arc<RamDevice>, FaultDevice) {
    let ram = Arc::new(RamDevice::new("ram", 64 * BS));
    let f = FaultDevice::new(ram.clone(), seed);
    (ram, f)
}

fn fill(byte: u8, blocks: usize) -> WriteBuf {
    AlignedBuf::from_slice(&vec![byte; blocks * BLOCK_SIZE]).into_write()
}

async fn read(f: &FaultDevice, offset: u64, blocks: usize) -> Result<AlignedBuf> {
    f.read_at(offset, AlignedBuf::zeroed(blocks * BLOCK_SIZE))
        .await
}

#[tokio::test]
async fn cache_then_flush_reaches_inner() {
    let (ram, f) = dev(1);
    f.write_at(0, fill(7, 2)).await.unwrap();
    f.discard(BS, BS).await.unwrap();
    assert_eq!(f.unflushed_writes(), 2);
    let r = read(&f, 0, 2).await.unwrap();
    assert!(r[..BLOCK_SIZE].iter().all(|&b| b == 7));
    assert!(r[BLOCK_SIZE..].iter().all(|&b| b == 0));
    assert!(
        ram.snapshot()[..BLOCK_SIZE].iter().all(|&b| b == 0),
        "not on inner before flush"
    );
    f.flush().await.unwrap();
    assert_eq!(f.unflushed_writes(), 0);
    assert!(ram.snapshot()[..BLOCK_SIZE].iter().all(|&b| b == 7));
    assert_eq!(f.info().size_bytes, 64 * BS);
    let e = read(&f, 64 * BS, 1).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    let e = f.write_at(100, fill(1, 1)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Misaligned);
}

#[tokio::test]
async fn eio_next_probability_range() {
    let (_ram, f) = dev(2);
    f.fail(FaultOp::Read, Trigger::Next(2));
    assert_eq!(read(&f, 0, 1).await.unwrap_err().kind, ErrorKind::Io);
    assert_eq!(read(&f, 0, 1).await.unwrap_err().kind, ErrorKind::Io);
    read(&f, 0, 1).await.unwrap();

    f.fail(
        FaultOp::Write,
        Trigger::Range {
            offset: 8 * BS,
            len: BS,
        },
    );
    f.write_at(7 * BS, fill(1, 1)).await.unwrap();
    let e = f.write_at(7 * BS, fill(1, 2)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io);
    assert_eq!(e.source.as_ref().unwrap().raw_os_error(), Some(libc::EIO));
    let r = read(&f, 8 * BS, 1).await.unwrap();
    assert!(r.iter().all(|&b| b == 0), "a failed write changes nothing");

    f.fail(FaultOp::Discard, Trigger::Always);
    assert_eq!(f.discard(0, BS).await.unwrap_err().kind, ErrorKind::Io);
    f.clear_faults();
    f.discard(0, BS).await.unwrap();

    f.fail(FaultOp::Read, Trigger::Probability(0.5));
    let mut failed = 0;
    for _ in 0..400 {
        failed += read(&f, 0, 1).await.is_err() as u32;
    }
    assert!((140..260).contains(&failed), "{failed}");
    let s = f.stats();
    assert_eq!(s.read_errors, 2 + u64::from(failed));
    assert_eq!(s.write_errors, 1);
    assert_eq!(s.discard_errors, 1);
}

#[tokio::test]
async fn failed_flush_poisons_until_restore() {
    let (ram, f) = dev(3);
    f.write_at(0, fill(9, 1)).await.unwrap();
    f.fail(FaultOp::Flush, Trigger::Next(1));
    assert_eq!(f.flush().await.unwrap_err().kind, ErrorKind::Io);
    assert!(f.is_poisoned());
    assert_eq!(read(&f, 0, 1).await.unwrap_err().kind, ErrorKind::Poisoned);
    assert_eq!(
        f.write_at(0, fill(1, 1)).await.unwrap_err().kind,
        ErrorKind::Poisoned
    );
    assert_eq!(f.flush().await.unwrap_err().kind, ErrorKind::Poisoned);
    assert!(ram.snapshot()[..BLOCK_SIZE].iter().all(|&b| b == 0));
    f.restore();
    f.flush().await.unwrap();
    assert!(ram.snapshot()[..BLOCK_SIZE].iter().all(|&b| b == 9));
}

/// An inner device whose flush fails: the failure must poison the wrapper too.
#[tokio::test]
async fn inner_flush_failure_poisons() {
    let ram = Arc::new(RamDevice::new("ram", 16 * BS));
    let inner = Arc::new(FaultDevice::new(ram, 4));
    inner.fail(FaultOp::Flush, Trigger::Always);
    let f = FaultDevice::new(inner, 5);
    assert_eq!(f.flush().await.unwrap_err().kind, ErrorKind::Io);
    assert_eq!(f.flush().await.unwrap_err().kind, ErrorKind::Poisoned);
}

#[tokio::test]
async fn torn_write_lands_in_part() {
    let (_ram, f) = dev(6);
    f.write_at(0, fill(0xaa, 2)).await.unwrap();
    f.tear_writes(Trigger::Next(1));
    let e = f.write_at(0, fill(0x55, 2)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io);
    let r = read(&f, 0, 2).await.unwrap();
    let mut new = 0;
    let mut old = 0;
    for s in r.chunks(SECTOR_SIZE) {
        if s.iter().all(|&b| b == 0x55) {
            new += 1;
        } else if s.iter().all(|&b| b == 0xaa) {
            old += 1;
        } else {
            panic!("a sector is mixed: tearing must be whole sectors");
        }
    }
    assert!(new > 0 && old > 0, "new {new} old {old}");
    assert_eq!(f.stats().torn_writes, 1);
    f.write_at(0, fill(0x55, 2)).await.unwrap();
    assert!(read(&f, 0, 2).await.unwrap().iter().all(|&b| b == 0x55));
}

fn bit_diff(a: &[u8], b: &[u8]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

#[tokio::test]
async fn flips_on_read_and_at_rest() {
    let (_ram, f) = dev(7);
    f.write_at(0, fill(0x33, 4)).await.unwrap();
    let clean = vec![0x33u8; BLOCK_SIZE];
    f.flip_reads(Trigger::Range {
        offset: BS,
        len: BS,
    });
    let r = read(&f, 0, 4).await.unwrap();
    assert_eq!(
        bit_diff(&r[..BLOCK_SIZE], &clean),
        1,
        "every returned block gets one flip"
    );
    let r = read(&f, 2 * BS, 1).await.unwrap();
    assert_eq!(bit_diff(&r, &clean), 0, "outside the range reads are clean");
    f.clear_faults();
    let r = read(&f, 0, 4).await.unwrap();
    assert!(
        r.iter().all(|&b| b == 0x33),
        "flips on read leave data at rest intact"
    );

    assert_eq!(f.corrupt(BS, 2 * BS).await.unwrap(), 2);
    for _ in 0..2 {
        let r = read(&f, 0, 4).await.unwrap();
        assert_eq!(bit_diff(&r[..BLOCK_SIZE], &clean), 0);
        assert_eq!(bit_diff(&r[BLOCK_SIZE..2 * BLOCK_SIZE], &clean), 1);
        assert_eq!(bit_diff(&r[2 * BLOCK_SIZE..3 * BLOCK_SIZE], &clean), 1);
        assert_eq!(bit_diff(&r[3 * BLOCK_SIZE..], &clean), 0);
    }
    let s = f.stats();
    assert_eq!((s.read_flips, s.corrupted_blocks), (1, 2));
}

#[tokio::test]
async fn power_cut_keeps_flushed_and_refuses_io() {
    let (_ram, f) = dev(8);
    f.write_at(0, fill(1, 8)).await.unwrap();
    f.flush().await.unwrap();
    for i in 0..8 {
        f.write_at(i * BS, fill(2 + i as u8, 1)).await.unwrap();
    }
    f.set_power_cut_policy(PowerCutPolicy {
        keep: 0.0,
        tear: 0.0,
    });
    let rep = f.power_cut().await.unwrap();
    assert_eq!(
        rep,
        PowerCutReport {
            kept: 0,
            dropped: 8,
            torn: 0
        }
    );
    assert!(f.is_cut());
    assert_eq!(read(&f, 0, 1).await.unwrap_err().kind, ErrorKind::Gone);
    assert_eq!(
        f.write_at(0, fill(1, 1)).await.unwrap_err().kind,
        ErrorKind::Gone
    );
    assert_eq!(f.flush().await.unwrap_err().kind, ErrorKind::Gone);
    f.restore();
    assert!(
        read(&f, 0, 8).await.unwrap().iter().all(|&b| b == 1),
        "flushed data survives"
    );

    f.set_power_cut_policy(PowerCutPolicy {
        keep: 1.0,
        tear: 0.0,
    });
    f.write_at(0, fill(5, 8)).await.unwrap();
    assert_eq!(f.power_cut().await.unwrap().kept, 1);
    let g = f.reopen();
    assert_eq!(
        read(&f, 0, 1).await.unwrap_err().kind,
        ErrorKind::Gone,
        "old handle stays dead"
    );
    assert!(read(&g, 0, 8).await.unwrap().iter().all(|&b| b == 5));
}

/// The value every sector may hold after a cut: flushed contents or any unflushed write to it.
/// Also checks whole-write fates: a kept write is entirely visible unless overwritten later.
async fn cut_cycle(seed: u64) -> Vec<u8> {
    let blocks = 16u64;
    let ram = Arc::new(RamDevice::new("ram", blocks * BS));
    let f = FaultDevice::new(ram, seed);
    let mut rng = SplitMix64::new(seed ^ 0xdead);
    let sectors = (blocks * BS) as usize / SECTOR_SIZE;
    // allowed[s] = values sector s may hold; durable state resets it.
    let mut durable = vec![0u8; sectors];
    let mut allowed: Vec<Vec<u8>> = vec![vec![0]; sectors];
    let mut tag = 0u8;
    for _ in 0..40 {
        if rng.chance(0.15) {
            f.flush().await.unwrap();
            for (s, a) in allowed.iter_mut().enumerate() {
                durable[s] = *a.last().unwrap();
                *a = vec![durable[s]];
            }
            continue;
        }
        tag = tag.wrapping_add(1).max(1);
        let start = rng.below(blocks);
        let n = 1 + rng.below((blocks - start).min(4));
        f.write_at(start * BS, fill(tag, n as usize)).await.unwrap();
        let first = (start * BS) as usize / SECTOR_SIZE;
        let last = ((start + n) * BS) as usize / SECTOR_SIZE;
        for a in &mut allowed[first..last] {
            a.push(tag);
        }
    }
    f.power_cut().await.unwrap();
    let g = f.reopen();
    let r = read(&g, 0, blocks as usize).await.unwrap();
    let mut out = Vec::new();
    for (s, chunk) in r.chunks(SECTOR_SIZE).enumerate() {
        let v = chunk[0];
        assert!(
            chunk.iter().all(|&b| b == v),
            "seed {seed}: sector {s} is mixed"
        );
        assert!(
            allowed[s].contains(&v),
            "seed {seed}: sector {s} holds {v}, allowed {:?}",
            allowed[s]
        );
        out.push(v);
    }
    out
}

#[tokio::test]
async fn power_cut_model_and_determinism() {
    for seed in 0..200 {
        cut_cycle(seed).await;
    }
    assert_eq!(
        cut_cycle(77).await,
        cut_cycle(77).await,
        "same seed, same outcome"
    );
    assert_ne!(cut_cycle(77).await, cut_cycle(78).await);
}

#[tokio::test]
async fn cache_bound_writes_back_oldest() {
    let (ram, f) = dev(9);
    f.set_max_unflushed_bytes(4 * BS);
    for i in 0..10u64 {
        f.write_at(i * BS, fill(i as u8 + 1, 1)).await.unwrap();
    }
    assert!(f.unflushed_writes() <= 4);
    assert_eq!(ram.snapshot()[0], 1, "the oldest write was written back");
    let r = read(&f, 0, 10).await.unwrap();
    for i in 0..10 {
        assert_eq!(r[i * BLOCK_SIZE], i as u8 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_and_flushes() {
    let ram = Arc::new(RamDevice::new("ram", 64 * BS));
    let f = Arc::new(FaultDevice::new(ram.clone(), 10));
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let block = t * 16 + i % 16;
                f.write_at(block * BS, fill((t * 50 + i) as u8, 1))
                    .await
                    .unwrap();
                if i % 7 == 0 {
                    f.flush().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    f.flush().await.unwrap();
    let snap = ram.snapshot();
    for t in 0..4u64 {
        for j in 0..16u64 {
            let last = (0..50u64).filter(|i| i % 16 == j).max().unwrap();
            assert_eq!(snap[((t * 16 + j) * BS) as usize], (t * 50 + last) as u8);
        }
    }
}
