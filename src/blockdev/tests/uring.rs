//! The io_uring device on real files (under the target dir, which is on a real disk), checked
//! against an in-memory model.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use blockdev::{
    create_sparse_file, AlignedBuf, BlockDevice, ErrorKind, FaultDevice, FaultOp, Trigger,
    UringDevice, UringOptions, BLOCK_SIZE,
};

const BS: u64 = BLOCK_SIZE as u64;

fn temp_file(name: &str, size: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("uring-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    create_sparse_file(&p, size).unwrap();
    p
}

/// A deterministic pattern for (block, version) so any misplaced block is caught.
fn pattern(block: u64, version: u64) -> Vec<u8> {
    let mut x =
        block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ version.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (0..BLOCK_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Xs(u64);
impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qd32_random_io_matches_model() {
    let blocks = 4096u64; // 16 MiB
    let path = temp_file("qd32", blocks * BS);
    let dev = Arc::new(UringDevice::open(&path, UringOptions::default()).unwrap());
    assert!(
        dev.is_direct(),
        "the target dir is on a real disk, O_DIRECT must work"
    );
    assert_eq!(dev.info().size_bytes, blocks * BS);
    // 32 workers, each owning an interleaved set of blocks, so the model per block is exact.
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let dev = dev.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Xs(w + 1);
            let mut model: Vec<u64> = vec![0; (blocks / 32) as usize]; // 0 = never written
            for step in 1..=150u64 {
                let i = rng.next() % model.len() as u64;
                let block = i * 32 + w;
                if rng.next() & 1 == 0 {
                    let data = AlignedBuf::from_slice(&pattern(block, step)).into_write();
                    dev.write_at(block * BS, data).await.unwrap();
                    model[i as usize] = step;
                } else {
                    let r = dev
                        .read_at(block * BS, AlignedBuf::zeroed(BLOCK_SIZE))
                        .await
                        .unwrap();
                    let v = model[i as usize];
                    let want = if v == 0 {
                        vec![0; BLOCK_SIZE]
                    } else {
                        pattern(block, v)
                    };
                    assert!(r[..] == want[..], "worker {w} block {block} mismatch");
                }
            }
            model
        }));
    }
    let mut models = Vec::new();
    for t in tasks {
        models.push(t.await.unwrap());
    }
    dev.flush().await.unwrap();
    // One big multi-block read of everything, checked against the merged model.
    let all = dev
        .read_at(0, AlignedBuf::zeroed((blocks * BS) as usize))
        .await
        .unwrap();
    for block in 0..blocks {
        let v = models[(block % 32) as usize][(block / 32) as usize];
        let want = if v == 0 {
            vec![0; BLOCK_SIZE]
        } else {
            pattern(block, v)
        };
        let got = &all[(block * BS) as usize..((block + 1) * BS) as usize];
        assert!(got == &want[..], "block {block} mismatch in the full read");
    }
    drop(dev);
    std::fs::remove_file(path).unwrap();
}

/// A burst of writes started under a device plug goes to the kernel in one `io_uring_enter`
/// when the plug goes (none before), and every write completes and lands where it was meant to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugged_burst_of_writes_is_one_submission_and_all_land() {
    const N: u64 = 24;
    let path = temp_file("plugged", 64 * BS);
    let dev = UringDevice::open(&path, UringOptions::default()).unwrap();
    // Block b of the burst goes to block 2b + 1 (not in submission order on the file).
    let mut writes: Vec<_> = (0..N)
        .map(|b| {
            let data = AlignedBuf::from_slice(&pattern(b, 1)).into_write();
            Box::pin(dev.write((2 * b + 1) * BS, data))
        })
        .collect();
    let before = dev.submit_calls();
    // Through the trait, as the store reaches it.
    let plug = BlockDevice::plug(&dev).expect("an io_uring device batches");
    for w in writes.iter_mut() {
        assert!(
            futures::poll!(w.as_mut()).is_pending(),
            "a plugged write finished before the plug went"
        );
    }
    assert_eq!(
        dev.submit_calls(),
        before,
        "nothing is submitted while plugged"
    );
    drop(plug);
    assert_eq!(
        dev.submit_calls(),
        before + 1,
        "the whole burst went in one io_uring_enter"
    );
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    for b in 0..N {
        let got = dev
            .read((2 * b + 1) * BS, AlignedBuf::zeroed(BLOCK_SIZE))
            .await
            .unwrap();
        assert!(got[..] == pattern(b, 1)[..], "block {b} of the burst");
        let gap = dev
            .read(2 * b * BS, AlignedBuf::zeroed(BLOCK_SIZE))
            .await
            .unwrap();
        assert!(
            gap.iter().all(|&x| x == 0),
            "block {} was not written",
            2 * b
        );
    }
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn multi_block_write_flush_discard() {
    let path = temp_file("discard", 256 * BS);
    let dev = UringDevice::open(&path, UringOptions::default()).unwrap();
    let data: Vec<u8> = (0..64 * BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
    dev.write_at(0, AlignedBuf::from_slice(&data).into_write())
        .await
        .unwrap();
    dev.flush().await.unwrap();
    let allocated = std::fs::metadata(&path).unwrap().blocks();
    assert!(
        allocated >= 64 * 8,
        "64 blocks written: {allocated} sectors allocated"
    );
    let r = dev
        .read_at(0, AlignedBuf::zeroed(64 * BLOCK_SIZE))
        .await
        .unwrap();
    assert!(r[..] == data[..]);
    // A sub-window of a shared buffer writes only its part.
    let w = AlignedBuf::from_slice(&[9u8; 4 * BLOCK_SIZE]).into_write();
    dev.write_at(100 * BS, w.slice(BLOCK_SIZE..3 * BLOCK_SIZE))
        .await
        .unwrap();
    let r = dev
        .read_at(99 * BS, AlignedBuf::zeroed(4 * BLOCK_SIZE))
        .await
        .unwrap();
    assert!(r[..BLOCK_SIZE].iter().all(|&b| b == 0));
    assert!(r[BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&b| b == 9));
    assert!(r[3 * BLOCK_SIZE..].iter().all(|&b| b == 0));

    dev.discard(16 * BS, 32 * BS).await.unwrap();
    dev.flush().await.unwrap();
    let r = dev
        .read_at(0, AlignedBuf::zeroed(64 * BLOCK_SIZE))
        .await
        .unwrap();
    assert!(r[..16 * BLOCK_SIZE] == data[..16 * BLOCK_SIZE]);
    assert!(
        r[16 * BLOCK_SIZE..48 * BLOCK_SIZE].iter().all(|&b| b == 0),
        "discard reads zeros"
    );
    assert!(r[48 * BLOCK_SIZE..] == data[48 * BLOCK_SIZE..]);
    let after = std::fs::metadata(&path).unwrap().blocks();
    assert!(
        after + 32 * 8 <= allocated + 2 * 8,
        "discard freed space: {allocated} -> {after}"
    );
    drop(dev);
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn bad_requests_and_bad_paths() {
    let path = temp_file("bounds", 16 * BS + 100);
    let dev = UringDevice::open(&path, UringOptions::default()).unwrap();
    assert_eq!(
        dev.info().size_bytes,
        16 * BS,
        "a partial trailing block is not usable"
    );
    let e = dev
        .read_at(16 * BS, AlignedBuf::zeroed(BLOCK_SIZE))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    let e = dev
        .read_at(u64::MAX - BS + 1, AlignedBuf::zeroed(BLOCK_SIZE))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    let e = dev
        .read_at(512, AlignedBuf::zeroed(BLOCK_SIZE))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Misaligned);
    let w = AlignedBuf::zeroed(BLOCK_SIZE).into_write();
    assert_eq!(
        dev.write_at(15 * BS + 512, w).await.unwrap_err().kind,
        ErrorKind::Misaligned
    );
    assert_eq!(
        dev.discard(0, 17 * BS).await.unwrap_err().kind,
        ErrorKind::OutOfRange
    );
    assert_eq!(
        dev.discard(1, BS).await.unwrap_err().kind,
        ErrorKind::Misaligned
    );

    let e = UringDevice::open(path.with_extension("missing"), UringOptions::default());
    assert_eq!(e.err().unwrap().kind, ErrorKind::Open);
    let e = UringDevice::open(path.parent().unwrap(), UringOptions::default());
    assert_eq!(
        e.err().unwrap().kind,
        ErrorKind::Open,
        "a directory is refused"
    );
    let tiny = temp_file("tiny", 100);
    let e = UringDevice::open(&tiny, UringOptions::default());
    assert_eq!(
        e.err().unwrap().kind,
        ErrorKind::Open,
        "smaller than a block is refused"
    );
    std::fs::remove_file(tiny).unwrap();
    drop(dev);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn open_outside_runtime_is_an_error() {
    let path = temp_file("nort", 16 * BS);
    let e = UringDevice::open(&path, UringOptions::default());
    assert_eq!(e.err().unwrap().kind, ErrorKind::Open);
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn dropped_requests_keep_buffers_alive() {
    let path = temp_file("dropped", 1024 * BS);
    let dev = UringDevice::open(
        &path,
        UringOptions {
            queue_depth: 8,
            ..Default::default()
        },
    )
    .unwrap();
    // Start many requests, poll each once (so it is in the kernel), then drop it.
    for i in 0..64u64 {
        let w = AlignedBuf::from_slice(&pattern(i, 1)).into_write();
        let mut f = dev.write_at(i * BS, w);
        let _ = futures::poll!(&mut f);
        drop(f);
        let mut r = dev.read_at(i * BS, AlignedBuf::zeroed(64 * BLOCK_SIZE));
        let _ = futures::poll!(&mut r);
        drop(r);
    }
    // The slots come back: more requests than the queue depth still complete.
    for i in 0..32u64 {
        let w = AlignedBuf::from_slice(&pattern(i, 2)).into_write();
        dev.write_at(i * BS, w).await.unwrap();
    }
    let r = dev
        .read_at(0, AlignedBuf::zeroed(32 * BLOCK_SIZE))
        .await
        .unwrap();
    for i in 0..32u64 {
        assert!(r[(i * BS) as usize..((i + 1) * BS) as usize] == pattern(i, 2)[..]);
    }
    // Dropping the device with abandoned requests must wait for them, not free their buffers.
    let mut f = dev.read_at(0, AlignedBuf::zeroed(256 * BLOCK_SIZE));
    let _ = futures::poll!(&mut f);
    drop(f);
    drop(dev);
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn failed_flush_poisons_through_fault_device() {
    let path = temp_file("poison", 64 * BS);
    let dev: Arc<dyn BlockDevice> =
        Arc::new(UringDevice::open(&path, UringOptions::default()).unwrap());
    let f = FaultDevice::new(dev.clone(), 1);
    let w = AlignedBuf::from_slice(&[5u8; BLOCK_SIZE]).into_write();
    f.write_at(0, w.clone()).await.unwrap();
    f.flush().await.unwrap();
    f.fail(FaultOp::Flush, Trigger::Next(1));
    f.write_at(BS, w).await.unwrap();
    assert_eq!(f.flush().await.unwrap_err().kind, ErrorKind::Io);
    let e = f
        .read_at(0, AlignedBuf::zeroed(BLOCK_SIZE))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Poisoned);
    // What the completed flush covered is on the file.
    let r = dev
        .read_at(0, AlignedBuf::zeroed(BLOCK_SIZE))
        .await
        .unwrap();
    assert!(r.iter().all(|&b| b == 5));
    drop((f, dev));
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn tmpfs_works_direct_or_buffered() {
    let dir = std::path::Path::new("/dev/shm");
    if !dir.is_dir() {
        println!("skipped: no /dev/shm");
        return;
    }
    let path = dir.join(format!("cairn-uring-test-{}", std::process::id()));
    create_sparse_file(&path, 64 * BS).unwrap();
    let dev = UringDevice::open(&path, UringOptions::default()).unwrap();
    assert_eq!(dev.info().name.ends_with("(buffered)"), !dev.is_direct());
    let w = AlignedBuf::from_slice(&[3u8; 2 * BLOCK_SIZE]).into_write();
    dev.write_at(BS, w).await.unwrap();
    dev.flush().await.unwrap();
    let r = dev
        .read_at(0, AlignedBuf::zeroed(4 * BLOCK_SIZE))
        .await
        .unwrap();
    assert!(r[..BLOCK_SIZE].iter().all(|&b| b == 0));
    assert!(r[BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&b| b == 3));
    drop(dev);
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn buffered_when_asked() {
    let path = temp_file("buffered", 64 * BS);
    let dev = UringDevice::open(
        &path,
        UringOptions {
            direct: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!dev.is_direct());
    let w = AlignedBuf::from_slice(&[4u8; BLOCK_SIZE]).into_write();
    dev.write_at(0, w).await.unwrap();
    dev.flush().await.unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[..BLOCK_SIZE].iter().all(|&b| b == 4));
    drop(dev);
    std::fs::remove_file(path).unwrap();
}

/// A real block device: a loop device over a file (needs root and losetup; skipped otherwise).
#[tokio::test]
async fn block_device_via_loop() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: loop devices need root");
        return;
    }
    let path = temp_file("loop", 8 << 20);
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&path)
        .output();
    let loopdev = match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_string(),
        _ => {
            println!("skipped: losetup not available or no free loop device");
            std::fs::remove_file(path).unwrap();
            return;
        }
    };
    let result = async {
        let dev = UringDevice::open(&loopdev, UringOptions::default()).unwrap();
        assert!(dev.is_block_device());
        assert_eq!(dev.info().size_bytes, 8 << 20, "size via BLKGETSIZE64");
        let e = UringDevice::open(&loopdev, UringOptions::default());
        assert_eq!(
            e.err().unwrap().kind,
            ErrorKind::Open,
            "O_EXCL refuses a second opener"
        );
        let w = AlignedBuf::from_slice(&pattern(7, 7)).into_write();
        dev.write_at(7 * BS, w).await.unwrap();
        dev.flush().await.unwrap();
        let r = dev
            .read_at(7 * BS, AlignedBuf::zeroed(BLOCK_SIZE))
            .await
            .unwrap();
        assert!(r[..] == pattern(7, 7)[..]);
        dev.discard(7 * BS, BS).await.unwrap();
        let r = dev
            .read_at(7 * BS, AlignedBuf::zeroed(BLOCK_SIZE))
            .await
            .unwrap();
        assert!(r.iter().all(|&b| b == 0), "block-device discard zeroes");
    };
    let res = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    let _ = std::process::Command::new("losetup")
        .arg("-d")
        .arg(&loopdev)
        .status();
    std::fs::remove_file(path).unwrap();
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }
}

/// A device that outlives the runtime it was opened on fails cleanly instead of hanging.
#[test]
fn device_outliving_its_runtime_fails_cleanly() {
    let path = temp_file("outlive", 64 * BS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dev = rt.block_on(async {
        let dev = UringDevice::open(&path, UringOptions::default()).unwrap();
        let w = AlignedBuf::from_slice(&[1u8; BLOCK_SIZE]).into_write();
        dev.write_at(0, w).await.unwrap();
        dev
    });
    drop(rt);
    let rt2 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt2
        .block_on(dev.read_at(0, AlignedBuf::zeroed(BLOCK_SIZE)))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Gone);
    drop(dev);
    std::fs::remove_file(path).unwrap();
}
