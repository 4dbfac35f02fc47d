//! `VdiskHandle::plan_direct_write` / `finish_direct_write` on a pool of two io_uring file
//! devices, the caller writing the replicas itself as the VMM's queue thread does: what is
//! planned and what is refused, that a finished write reads back through the ordinary and the
//! direct read path and scrubs clean on both replicas, that an unfinished or failed one changes
//! nothing and gives its blocks back, that snapshots keep their version, and that after a crash
//! (the engine dropped without shutdown, its unflushed records lost) every direct write
//! acknowledged before a completed flush is there and every other block is old or new.

use engine::{DirectRead, DirectWrite, Engine, EngineConfig, BLOCK_BYTES, CHUNK_BYTES};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BS: usize = BLOCK_BYTES as usize;

/// Writes `data` at `off` of `fd` (positional, from an aligned buffer: the fd may be
/// O_DIRECT), as the queue thread's ring does.
fn pwrite(fd: i32, off: u64, data: &[u8]) {
    let buf = blockdev::AlignedBuf::from_slice(data);
    // SAFETY: a positional write of `data.len()` bytes from a live buffer of that size.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), data.len(), off as libc::off_t) };
    assert_eq!(n, data.len() as isize);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An engine on the two device files in `dir` (made on first use); None if io_uring devices
/// cannot be opened here.
fn open_engine(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Option<Engine> {
    rt.block_on(async {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "direct".into(),
        })
        .await
        .unwrap();
        for i in 0..2 {
            let path = dir.join(format!("d{i}.img"));
            if !path.exists() {
                blockdev::create_sparse_file(&path, 64 * MIB).unwrap();
            }
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
        Some(e)
    })
}

/// A direct write of `data` at `off`, every replica written: whether the engine planned it.
fn direct_write(h: &engine::VdiskHandle, off: u64, data: &[u8]) -> bool {
    let mut p = DirectWrite::new();
    if !h.plan_direct_write(off, data, &mut p) {
        return false;
    }
    assert_eq!(p.replicas(), 2, "both local replicas");
    for i in 0..p.replicas() {
        let (fd, at, _) = p.target(i).unwrap();
        pwrite(fd, at, data);
    }
    assert!(h.finish_direct_write(&mut p, true, Instant::now()));
    assert_eq!(p.replicas(), 0, "a finished plan is empty");
    true
}

fn read(rt: &tokio::runtime::Runtime, h: &engine::VdiskHandle, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rt.block_on(h.read(off, &mut v)).unwrap();
    v
}

#[test]
fn direct_writes_record_like_ordinary_ones_and_survive_a_crash() {
    let dir = std::env::temp_dir().join(format!("engine-direct-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = runtime();
    let Some(engine) = open_engine(&rt, &dir) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    rt.block_on(engine.create_vdisk("d", 16 * MIB)).unwrap();
    let h = engine.open_vdisk("d").unwrap();
    let a = vec![0xa1u8; 2 * BS];
    let b = vec![0xb2u8; 2 * BS];
    let c = vec![0xc3u8; BS];
    // The chunk's first write places it (the ordinary path's job).
    assert!(!direct_write(&h, 0, &a), "a chunk never written");
    rt.block_on(h.write(0, &a)).unwrap();

    let writes = engine.stats().writes;
    assert!(direct_write(&h, 0, &b), "an overwrite of a stored chunk");
    assert_eq!(engine.stats().writes - writes, 1, "counted as a write");
    assert_eq!(read(&rt, &h, 0, 2 * BS), b, "the ordinary read sees it");
    let mut r = DirectRead::new();
    assert!(h.plan_direct_read(0, 2 * BLOCK_BYTES, &mut r));
    assert!(
        r.block_ok(0, &b[..BS]) && r.block_ok(1, &b[BS..]),
        "and the direct read"
    );
    r.release();

    let mut p = DirectWrite::new();
    for (off, len, why) in [
        (512, BS, "a misaligned offset"),
        (0, 512, "a partial block"),
        (CHUNK_BYTES - BLOCK_BYTES, 2 * BS, "a range across chunks"),
        (16 * MIB, BS, "a range past the end"),
        (2 * CHUNK_BYTES, BS, "a chunk never written"),
    ] {
        assert!(!h.plan_direct_write(off, &vec![1u8; len], &mut p), "{why}");
        assert_eq!(p.replicas(), 0, "{why}");
    }

    // A plan given up (a replica's write failed) or dropped records nothing and gives its
    // blocks back at once.
    let used = engine.pool().used_raw_bytes;
    assert!(h.plan_direct_write(0, &c, &mut p));
    assert!(engine.pool().used_raw_bytes > used, "fresh blocks taken");
    let (fd, at, _) = p.target(0).unwrap();
    pwrite(fd, at, &c);
    assert!(!h.finish_direct_write(&mut p, false, Instant::now()));
    assert_eq!(engine.pool().used_raw_bytes, used, "blocks given back");
    assert_eq!(read(&rt, &h, 0, 2 * BS), b, "old data");
    let mut dropped = DirectWrite::new();
    assert!(h.plan_direct_write(0, &c, &mut dropped));
    drop(dropped);
    assert_eq!(engine.pool().used_raw_bytes, used, "blocks given back");
    assert_eq!(read(&rt, &h, 0, 2 * BS), b, "old data");

    // A snapshot keeps the version it saw; its handle is read-only.
    rt.block_on(engine.create_snapshot("d", "s")).unwrap();
    assert!(direct_write(&h, 0, &c), "a write after a snapshot");
    let snap = engine.open_snapshot("d", "s").unwrap();
    assert!(!snap.plan_direct_write(0, &c, &mut p), "a snapshot");
    assert_eq!(read(&rt, &snap, 0, 2 * BS), b, "the snapshot's version");
    assert_eq!(read(&rt, &h, 0, BS), c, "the live version");
    drop(snap);

    // Both replicas hold what their checksums say.
    rt.block_on(async { engine.start_scrub() }).unwrap();
    assert!(rt.block_on(engine.wait_scrub(Duration::from_secs(60))));
    let st = engine.stats();
    assert_eq!((st.checksum_errors, st.repairs), (0, 0), "scrub");

    // Crash: block 8 flushed, blocks 4 and 9 written after the last flush.
    let d = vec![0xd4u8; BS];
    let e = vec![0xe5u8; BS];
    let f = vec![0xf6u8; BS];
    rt.block_on(h.write(8 * BLOCK_BYTES, &vec![0x11u8; 2 * BS]))
        .unwrap();
    assert!(direct_write(&h, 8 * BLOCK_BYTES, &e));
    rt.block_on(h.flush()).unwrap();
    assert!(direct_write(&h, 4 * BLOCK_BYTES, &d));
    assert!(direct_write(&h, 9 * BLOCK_BYTES, &f));
    drop(h);
    drop(engine);
    drop(rt);

    let rt = runtime();
    let engine = open_engine(&rt, &dir).expect("reopened");
    let h = engine.open_vdisk("d").unwrap();
    let img = read(&rt, &h, 0, 10 * BS);
    assert_eq!(img, read(&rt, &h, 0, 10 * BS), "two reads agree");
    let block = |i: usize| &img[i * BS..(i + 1) * BS];
    assert_eq!(block(0), &c[..], "flushed direct write");
    assert_eq!(block(1), &b[BS..], "flushed direct write");
    assert_eq!(block(8), &e[..], "flushed direct write");
    assert!(
        block(4) == &d[..] || block(4) == &[0u8; BS][..],
        "block 4 old or new"
    );
    assert!(
        block(9) == &f[..] || block(9) == &[0x11u8; BS][..],
        "block 9 old or new"
    );
    rt.block_on(async { engine.start_scrub() }).unwrap();
    assert!(rt.block_on(engine.wait_scrub(Duration::from_secs(60))));
    assert_eq!(engine.stats().checksum_errors, 0, "scrub after the crash");
    // And the disk takes direct writes again once the pool is marked in use.
    rt.block_on(h.write(0, &a)).unwrap();
    assert!(direct_write(&h, 0, &b));
    assert_eq!(read(&rt, &h, 0, 2 * BS), b);
    drop(h);
    rt.block_on(engine.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plan abandoned while its device writes may still run (the VMM's ring failed and cannot
/// be waited for) records nothing and lets its guards go, so a snapshot and a delete of the
/// disk do not wait for it forever (a plan leaked whole, as the queue thread used to leak its
/// slots, held them for good), while its fresh blocks stay taken: a write that may still land
/// there never hits blocks given to someone else.
#[test]
fn an_abandoned_direct_write_lets_its_guards_go_and_keeps_its_blocks() {
    let dir = std::env::temp_dir().join(format!("engine-direct-abandon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = runtime();
    let Some(engine) = open_engine(&rt, &dir) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    rt.block_on(engine.create_vdisk("d", 16 * MIB)).unwrap();
    let h = engine.open_vdisk("d").unwrap();
    let a = vec![0xa1u8; BS];
    rt.block_on(h.write(0, &a)).unwrap();
    let used = engine.pool().used_raw_bytes;

    let b = vec![0xb2u8; BS];
    let mut p = DirectWrite::new();
    assert!(h.plan_direct_write(0, &b, &mut p));
    let (fd, at, _) = p.target(0).unwrap();
    pwrite(fd, at, &b);
    p.abandon();
    assert_eq!(p.replicas(), 0, "an abandoned plan is empty");
    assert!(
        !h.finish_direct_write(&mut p, true, Instant::now()),
        "nothing left to record"
    );
    drop(p);
    assert!(
        engine.pool().used_raw_bytes > used,
        "the fresh blocks stay taken"
    );
    assert_eq!(read(&rt, &h, 0, BS), a, "nothing recorded");
    // The guards went: both wait for every write holding them (a hang here is the bug; the
    // timeout only turns it into a failure).
    let limit = Duration::from_secs(60);
    rt.block_on(async { tokio::time::timeout(limit, engine.create_snapshot("d", "s")).await })
        .expect("a snapshot waited for an abandoned write")
        .unwrap();
    assert!(
        direct_write(&h, 0, &b),
        "the chunk takes direct writes again"
    );
    assert_eq!(read(&rt, &h, 0, BS), b);
    drop(h);
    rt.block_on(async { tokio::time::timeout(limit, engine.delete_vdisk("d")).await })
        .expect("a delete waited for an abandoned write")
        .unwrap();
    rt.block_on(engine.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A direct write whose device writes complete after the engine began shutting down is not
/// recorded (its blocks go back and the caller redoes it on the ordinary path, which refuses):
/// the shutdown's last flush and the pool's clean mark may already be done, so a record then
/// would be acknowledged yet lost, or reach one replica's journal and not the other's. The
/// shutdown waits for the plan in flight meanwhile.
#[test]
fn a_direct_write_finished_after_shutdown_is_not_recorded() {
    let dir = std::env::temp_dir().join(format!("engine-direct-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = runtime();
    let Some(engine) = open_engine(&rt, &dir) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    rt.block_on(engine.create_vdisk("d", 16 * MIB)).unwrap();
    let h = engine.open_vdisk("d").unwrap();
    let a = vec![0xa1u8; BS];
    rt.block_on(h.write(0, &a)).unwrap();
    let b = vec![0xb2u8; BS];
    let mut p = DirectWrite::new();
    assert!(h.plan_direct_write(0, &b, &mut p));
    for i in 0..p.replicas() {
        let (fd, at, _) = p.target(i).unwrap();
        pwrite(fd, at, &b);
    }
    let sd = {
        let e = engine.clone();
        rt.spawn(async move { e.shutdown().await })
    };
    // Once the shutdown began, the ordinary path refuses writes (block 4: not the plan's).
    while rt.block_on(h.write(4 * BLOCK_BYTES, &a)).is_ok() {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !sd.is_finished(),
        "the shutdown waits for the plan in flight"
    );
    assert!(
        !h.finish_direct_write(&mut p, true, Instant::now()),
        "recorded after the shutdown"
    );
    assert_eq!(p.replicas(), 0);
    rt.block_on(sd).unwrap().unwrap();
    assert!(
        rt.block_on(h.write(0, &b)).is_err(),
        "the ordinary path refuses it"
    );
    drop(h);
    drop(engine);
    drop(rt);
    let rt = runtime();
    let engine = open_engine(&rt, &dir).expect("reopened");
    let h = engine.open_vdisk("d").unwrap();
    assert_eq!(read(&rt, &h, 0, BS), a, "the old data");
    drop(h);
    rt.block_on(engine.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Overlapping changes in flight reach both replicas in one order, direct writes included: a
/// direct write is not planned over a planned one of the same blocks (other blocks are), and
/// an ordinary write of the same blocks waits until the planned one is recorded, so it is the
/// last on every replica.
#[test]
fn overlapping_direct_and_ordinary_writes_keep_one_order() {
    let dir = std::env::temp_dir().join(format!("engine-direct-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = runtime();
    let Some(engine) = open_engine(&rt, &dir) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let id = rt.block_on(engine.create_vdisk("d", 16 * MIB)).unwrap().id;
    let h = engine.open_vdisk("d").unwrap();
    rt.block_on(h.write(0, &vec![0xa1u8; 2 * BS])).unwrap();
    let b = vec![0xb2u8; BS];
    let c = vec![0xc3u8; BS];
    let mut p = DirectWrite::new();
    assert!(h.plan_direct_write(0, &b, &mut p));
    let mut q = DirectWrite::new();
    assert!(
        !h.plan_direct_write(0, &c, &mut q),
        "over a planned write of the same block"
    );
    assert!(
        direct_write(&h, BLOCK_BYTES, &c),
        "another block of the chunk"
    );
    // An ordinary write of block 0 waits for the planned one.
    let w = {
        let (h, c) = (h.clone(), c.clone());
        rt.spawn(async move { h.write(0, &c).await })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !w.is_finished(),
        "the ordinary write waits for the planned one"
    );
    for i in 0..p.replicas() {
        let (fd, at, _) = p.target(i).unwrap();
        pwrite(fd, at, &b);
    }
    assert!(h.finish_direct_write(&mut p, true, Instant::now()));
    rt.block_on(w).unwrap().unwrap();
    let obj = store::ObjectId {
        vdisk: id,
        chunk: 0,
    };
    for (info, r) in engine.local_replicas() {
        let got = rt.block_on(r.read(obj, 0, 1, u64::MAX)).unwrap();
        assert_eq!(
            &got[..],
            &c[..],
            "the later write is the last on {}",
            info.name
        );
    }
    drop(h);
    rt.block_on(engine.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
