//! Registered (fixed) buffers: arena buffers go through READ_FIXED / WRITE_FIXED and round-trip
//! exactly; buffers outside the arena use plain READ / WRITE on the same ring; and a ring whose
//! registration the kernel refuses (RLIMIT_MEMLOCK without CAP_IPC_LOCK) does all I/O through
//! the plain path.

use std::path::PathBuf;

use crate::arena;
use crate::{AlignedBuf, BlockDevice, UringDevice, UringOptions, WriteBuf, BLOCK_SIZE};

/// The child-process marker for [`refused_registration_falls_back`].
const CHILD_ENV: &str = "BLOCKDEV_FIXED_TESTS_NO_MEMLOCK";

fn temp_file(name: &str, size: u64) -> PathBuf {
    let dir = std::env::temp_dir().join("blockdev-fixed-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    crate::create_sparse_file(&path, size).unwrap();
    path
}

/// `len` bytes where byte `i` depends on `i` and `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i / BLOCK_SIZE) as u8 ^ (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

/// Write `data` from a buffer of its own length at `offset`, read it back into a fresh buffer
/// of the same length, and check the bytes. Returns whether both buffers were arena memory.
async fn round_trip(dev: &UringDevice, offset: u64, data: &[u8]) -> bool {
    let w = AlignedBuf::from_slice(data);
    let w_in_arena = in_arena(&w);
    dev.write_at(offset, w.into_write()).await.unwrap();
    let r = dev
        .read_at(offset, AlignedBuf::for_overwrite(data.len()))
        .await
        .unwrap();
    assert!(&r[..] == data, "{} bytes at {offset} differ", data.len());
    w_in_arena && in_arena(&r)
}

fn in_arena(b: &AlignedBuf) -> bool {
    arena::get().is_some_and(|a| a.contains(b.as_ptr(), b.len()))
}

#[tokio::test]
async fn arena_and_plain_buffers_round_trip_on_one_ring() {
    let path = temp_file("mixed", 8 << 20);
    let dev = UringDevice::open(&path, UringOptions::default()).unwrap();
    if !dev.has_fixed_buffers() {
        println!("skipped: the kernel refused to register the arena here");
        return;
    }
    assert!(
        arena::get().is_some(),
        "a registered ring implies the arena"
    );
    // 1 MiB (a whole slot) and 768 KiB (part of one): arena memory, fixed ops. (Other tests
    // may hold slots for a moment; the arena has room for both of ours regardless.)
    assert!(
        round_trip(&dev, 0, &pattern(1 << 20, 1)).await,
        "1 MiB buffers come from the arena"
    );
    assert!(round_trip(&dev, 3 << 20, &pattern(768 << 10, 2)).await);
    // Below the arena's minimum (128 KiB: the size pooled long by callers) and above a slot:
    // plain READ / WRITE on the same ring.
    assert!(!round_trip(&dev, 5 << 20, &pattern(128 << 10, 3)).await);
    assert!(!round_trip(&dev, 6 << 20, &pattern(2 << 20, 4)).await);
    // A window of an arena buffer (a write of its second half): the fixed op addresses the
    // middle of the registered region.
    let whole = AlignedBuf::from_slice(&pattern(1 << 20, 5)).into_write();
    let half: WriteBuf = whole.slice((512 << 10)..(1 << 20));
    dev.write_at(1 << 20, half).await.unwrap();
    let back = dev
        .read_at(1 << 20, AlignedBuf::zeroed(512 << 10))
        .await
        .unwrap();
    assert!(back[..] == whole.as_slice()[512 << 10..]);
    // The earlier 1 MiB at 0 is untouched by all of that.
    let first = dev
        .read_at(0, AlignedBuf::for_overwrite(1 << 20))
        .await
        .unwrap();
    assert!(first[..] == pattern(1 << 20, 1)[..]);
    drop(dev);
    let _ = std::fs::remove_file(&path);
}

/// Clear CAP_IPC_LOCK from this thread's effective capabilities (io_uring then charges
/// registered memory to RLIMIT_MEMLOCK). Returns false if the calls failed.
fn drop_ipc_lock() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` records (version 3) through the pointers, which point to
    // live values of the layout the kernel expects.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    // SAFETY: capset reads the same records; dropping an effective capability needs no privilege.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    rc == 0
}

#[test]
fn refused_registration_falls_back() {
    if std::env::var_os(CHILD_ENV).is_none() {
        // Run this test again in a child process, where lowering the memory-lock limit affects
        // no other test.
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "uring::fixed_tests::refused_registration_falls_back",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(line) = stdout.lines().find(|l| l.starts_with("skipped:")) {
            println!("{line}");
            return;
        }
        assert!(stdout.contains("fallback ok"), "child output: {stdout}");
        return;
    }
    // The kernel charges registered memory (and, recently, the ring's own queues) to the
    // user's total locked memory, shared by every process of that user. As root, become
    // `nobody` (a user with nothing locked, and no capabilities: no CAP_IPC_LOCK); otherwise
    // just drop CAP_IPC_LOCK if we have it. The file is made first and given to that user.
    // Straight in the temp dir (world-writable, sticky): its owner can remove it afterwards.
    let path = std::env::temp_dir().join(format!("blockdev-fixed-refused-{}", std::process::id()));
    crate::create_sparse_file(&path, 4 << 20).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        // SAFETY: setgid / setuid change this process's ids (all threads, as glibc does it);
        // the results are checked.
        if unsafe { libc::setgid(65534) } != 0 || unsafe { libc::setuid(65534) } != 0 {
            println!("skipped: cannot become nobody here");
            return;
        }
    } else if !drop_ipc_lock() {
        println!("skipped: cannot drop CAP_IPC_LOCK here");
        return;
    }
    // Room for the ring itself, not for the 16 MiB arena.
    let limit = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: 1 << 20,
    };
    // SAFETY: setrlimit reads one rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        // Only if the hard limit is already below 1 MiB and we may not raise it.
        println!("skipped: cannot set RLIMIT_MEMLOCK to 1 MiB here");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dev = match UringDevice::open(&path, UringOptions::default()) {
            Err(e) if e.source.as_ref().and_then(|s| s.raw_os_error()) == Some(libc::ENOMEM) => {
                // This user has other locked memory already (not the case for `nobody`).
                println!("skipped: no room for the ring itself under 1 MiB locked: {e:?}");
                return;
            }
            r => r.unwrap(),
        };
        assert!(
            !dev.has_fixed_buffers(),
            "a 1 MiB memory-lock limit must refuse the arena"
        );
        // The arena exists (the ring asked for it) and serves buffers, which now go through
        // plain READ / WRITE.
        assert!(arena::get().is_some());
        assert!(round_trip(&dev, 0, &pattern(1 << 20, 9)).await);
        assert!(!round_trip(&dev, 2 << 20, &pattern(64 << 10, 10)).await);
        drop(dev);
    });
    let _ = std::fs::remove_file(&path);
    println!("fallback ok");
}
