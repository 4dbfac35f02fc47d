//! `VdiskHandle::plan_direct_read` on a pool of two io_uring file devices: what it plans, what
//! it refuses, and that a plan made before the block was overwritten can never pass its
//! checksum check with the new data (the rule the VMM's direct reads rely on).

use engine::{DirectRead, Engine, EngineConfig, BLOCK_BYTES, CHUNK_BYTES};

const MIB: u64 = 1 << 20;

/// Reads `len` bytes at `off` of `fd` (positional, aligned buffer: the fd may be O_DIRECT).
fn pread(fd: i32, off: u64, len: usize) -> Vec<u8> {
    let mut buf = blockdev::AlignedBuf::zeroed(len);
    // SAFETY: a positional read of `len` bytes into a live buffer of that size.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off as libc::off_t) };
    assert_eq!(n, len as isize);
    buf.to_vec()
}

#[test]
fn plans_plain_reads_refuses_the_rest_and_a_stale_plan_never_verifies() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("engine-direct-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let engine = rt.block_on(async {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "direct".into(),
        })
        .await
        .unwrap();
        for i in 0..2 {
            let path = dir.join(format!("d{i}.img"));
            blockdev::create_sparse_file(&path, 64 * MIB).unwrap();
            match blockdev::open_device(&path) {
                Ok(d) => {
                    e.add_disk(d).await.unwrap();
                }
                Err(err) => {
                    println!("skipped: io_uring device unavailable here: {err}");
                    return None;
                }
            }
        }
        e.create_vdisk("d", 16 * MIB).await.unwrap();
        Some(e)
    });
    let Some(engine) = engine else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let h = engine.open_vdisk("d").unwrap();
    let bs = BLOCK_BYTES as usize;
    let a = vec![0xa1u8; 2 * bs];
    let b = vec![0xb2u8; bs];
    rt.block_on(h.write(0, &a)).unwrap();
    rt.block_on(h.write(CHUNK_BYTES - BLOCK_BYTES, &a)).unwrap();
    rt.block_on(h.flush()).unwrap();

    let mut p = DirectRead::new();
    assert!(
        h.plan_direct_read(0, 2 * BLOCK_BYTES, &mut p),
        "written blocks"
    );
    assert_eq!(p.blocks(), 2);
    let on_dev = pread(p.fd(), p.offset(), 2 * bs);
    assert_eq!(on_dev, a, "the plan points at the data");
    assert!(p.block_ok(0, &on_dev[..bs]) && p.block_ok(1, &on_dev[bs..]));
    // A verified direct read counts once for the disk and once for the replica's disk it read,
    // as an ordinary read does.
    let disk_reads = |e: &Engine| e.stats().disks.iter().map(|d| d.reads).sum::<u64>();
    let (before, disks_before) = (engine.stats().reads, disk_reads(&engine));
    h.count_direct_read(&p, 2 * BLOCK_BYTES, std::time::Instant::now());
    assert_eq!(engine.stats().reads - before, 1);
    assert_eq!(
        disk_reads(&engine) - disks_before,
        1,
        "the replica's disk read it"
    );
    assert!(!p.block_ok(0, &b), "other bytes do not verify");

    let mut q = DirectRead::new();
    for (off, len, why) in [
        (4 * MIB, BLOCK_BYTES, "a hole"),
        (0, 3 * BLOCK_BYTES, "a range running into a hole"),
        (512, BLOCK_BYTES, "a misaligned offset"),
        (0, 512, "a partial block"),
        (
            CHUNK_BYTES - BLOCK_BYTES,
            2 * BLOCK_BYTES,
            "a range across chunks",
        ),
        (16 * MIB, BLOCK_BYTES, "a range past the end"),
    ] {
        assert!(!h.plan_direct_read(off, len, &mut q), "{why}");
    }

    // Overwrite block 0 and flush (its old place may now be freed and reused): the old plan's
    // bytes on the device either are still the old data or fail the old checksum.
    rt.block_on(h.write(0, &b)).unwrap();
    rt.block_on(h.flush()).unwrap();
    let now = pread(p.fd(), p.offset(), bs);
    assert_eq!(p.block_ok(0, &now), now == a[..bs], "stale plan");
    assert!(!p.block_ok(0, &b), "the new data never passes the old plan");
    assert!(h.plan_direct_read(0, BLOCK_BYTES, &mut q));
    assert_eq!(
        pread(q.fd(), q.offset(), bs),
        b,
        "a new plan sees the write"
    );

    // A snapshot's handle plans the version as of the snapshot (at_gen), not the live one:
    // its checksums are the old data's and its bytes on the device are the old data.
    rt.block_on(engine.create_snapshot("d", "s")).unwrap();
    rt.block_on(h.write(0, &a[..bs])).unwrap();
    rt.block_on(h.flush()).unwrap();
    let snap = engine.open_snapshot("d", "s").unwrap();
    let mut s = DirectRead::new();
    assert!(
        snap.plan_direct_read(0, BLOCK_BYTES, &mut s),
        "snapshot block"
    );
    let old = pread(s.fd(), s.offset(), bs);
    assert_eq!(old, b, "the snapshot's version");
    assert!(s.block_ok(0, &old) && !s.block_ok(0, &a[..bs]));
    assert!(h.plan_direct_read(0, BLOCK_BYTES, &mut q));
    assert_eq!(pread(q.fd(), q.offset(), bs), a[..bs], "the live version");
    assert!(q.block_ok(0, &a[..bs]) && !q.block_ok(0, &b));

    // A deleted disk plans nothing (the ordinary path answers, with its error).
    rt.block_on(engine.delete_vdisk("d")).unwrap();
    assert!(
        !h.plan_direct_read(BLOCK_BYTES, BLOCK_BYTES, &mut q),
        "deleted"
    );
    assert!(!snap.plan_direct_read(0, BLOCK_BYTES, &mut s), "deleted");
    p.release();
    q.release();
    s.release();
    drop(h);
    drop(snap);
    rt.block_on(engine.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
