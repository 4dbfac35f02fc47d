//! `VdiskHandle::plan_direct_write_len` and `DirectWrite::checksum_data`: a direct write planned
//! before its data is at hand (as the VMM's queue thread plans, then copies the guest's data)
//! records exactly the data checksummed after the plan; a plan whose data never came, or came
//! with another length, is never recorded and gives its blocks back.

use engine::{DirectWrite, Engine, EngineConfig, BLOCK_BYTES};
use std::time::Instant;

const MIB: u64 = 1 << 20;
const BS: usize = BLOCK_BYTES as usize;

/// Writes `data` at `off` of `fd` from an aligned buffer (the fd may be O_DIRECT).
fn pwrite(fd: i32, off: u64, data: &[u8]) {
    let buf = blockdev::AlignedBuf::from_slice(data);
    // SAFETY: a positional write of `data.len()` bytes from a live buffer of that size.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), data.len(), off as libc::off_t) };
    assert_eq!(n, data.len() as isize);
}

#[test]
fn a_write_planned_by_length_records_the_data_checksummed_after_the_plan() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("engine-direct-len-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(engine) = rt.block_on(async {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "direct-len".into(),
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
    }) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let h = engine.open_vdisk("d").unwrap();
    let old = vec![0x11u8; 2 * BS];
    rt.block_on(h.write(0, &old)).unwrap();
    let read = |len: usize| {
        let mut v = vec![0u8; len];
        rt.block_on(h.read(0, &mut v)).unwrap();
        v
    };
    let mut p = DirectWrite::new();

    // Planned by length: the data's checksums are taken after, and that data is recorded.
    let new: Vec<u8> = (0..2 * BS).map(|i| (i / 3) as u8).collect();
    assert!(h.plan_direct_write_len(0, 2 * BLOCK_BYTES, &mut p));
    assert_eq!(p.replicas(), 2, "both local replicas");
    assert!(p.checksum_data(&new));
    for i in 0..p.replicas() {
        let (fd, at, _) = p.target(i).unwrap();
        pwrite(fd, at, &new);
    }
    assert!(h.finish_direct_write(&mut p, true, Instant::now()));
    assert_eq!(read(2 * BS), new, "the checksummed data is recorded");

    // The same plan limits as with the data: a chunk never written is not planned.
    assert!(!h.plan_direct_write_len(2 * engine::CHUNK_BYTES, BLOCK_BYTES, &mut p));
    assert_eq!(p.replicas(), 0);

    // Written but never checksummed: not recorded, blocks given back.
    let used_now = engine.pool().used_raw_bytes;
    let other = vec![0x77u8; BS];
    assert!(h.plan_direct_write_len(0, BLOCK_BYTES, &mut p));
    assert!(
        engine.pool().used_raw_bytes > used_now,
        "fresh blocks taken"
    );
    let (fd, at, _) = p.target(0).unwrap();
    pwrite(fd, at, &other);
    assert!(!h.finish_direct_write(&mut p, true, Instant::now()));
    assert_eq!(engine.pool().used_raw_bytes, used_now, "blocks given back");
    assert_eq!(read(2 * BS), new, "nothing recorded");

    // Data of another length than planned: refused, the plan given back.
    assert!(h.plan_direct_write_len(0, 2 * BLOCK_BYTES, &mut p));
    assert!(!p.checksum_data(&other), "one block for a two-block plan");
    assert_eq!(p.replicas(), 0, "the plan is given back");
    assert_eq!(engine.pool().used_raw_bytes, used_now, "blocks given back");
    assert!(!h.finish_direct_write(&mut p, true, Instant::now()));
    assert!(!p.checksum_data(&other), "nothing planned");
    assert_eq!(read(2 * BS), new, "nothing recorded");
    rt.block_on(engine.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
