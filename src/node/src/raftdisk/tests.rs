//! The raft vdisk medium on a real engine over file disks: round trips, restart, crash states
//! (torn frames, stale frames, torn header flips, bit flips), bounds, and openraft's storage
//! suite on the log and snapshot stores over it.
use std::path::Path;
use std::sync::Arc;

use cluster::{LogStore, Part, RaftMedia, StateMachineStore};
use engine::{Engine, EngineConfig};

use super::*;

const DISK_BYTES: u64 = 256 << 20;

fn small() -> Layout {
    Layout {
        identity_bytes: 64 << 10,
        snapshot_bytes: 256 << 10,
        log_bytes: 256 << 10,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn make_disks(dir: &Path) {
    for i in 0..2 {
        std::fs::File::create(dir.join(format!("d{i}")))
            .unwrap()
            .set_len(DISK_BYTES)
            .unwrap();
    }
}

/// An engine over the two file disks in `dir` (a restart when they hold a pool already).
async fn engine(dir: &Path) -> Engine {
    let e = Engine::open(EngineConfig {
        node_id: 1,
        node_name: "t".into(),
    })
    .await
    .unwrap();
    for i in 0..2 {
        let dev = crate::disks::open_device(&dir.join(format!("d{i}"))).unwrap();
        e.add_disk(dev).await.unwrap();
    }
    e
}

/// Runs `f` on a plain thread (where the media's synchronous calls are meant to run).
fn sync<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

#[test]
fn content_survives_reopen_and_engine_restart() {
    let dir = tempfile::tempdir().unwrap();
    make_disks(dir.path());
    let rt = runtime();
    let e = rt.block_on(engine(dir.path()));
    let media = rt.block_on(VdiskMedia::open(&e, small())).unwrap();
    assert!(media.is_blank());
    sync(|| {
        media.open(Part::Identity).unwrap().replace(b"who").unwrap();
        let mut log = media.open(Part::Log).unwrap();
        log.write_at(0, b"abc").unwrap();
        log.write_at(3, b"def").unwrap();
        log.sync().unwrap();
        media
            .open(Part::Snapshot)
            .unwrap()
            .replace(&[7u8; 5000])
            .unwrap();
        // A wrong offset is refused without harm.
        assert!(log.write_at(2, b"x").is_err());
        log.write_at(6, b"g").unwrap();
        log.sync().unwrap();
    });
    drop(media);
    rt.block_on(e.shutdown()).unwrap();
    drop(e);
    let e = rt.block_on(engine(dir.path()));
    let media = rt
        .block_on(VdiskMedia::open(&e, Layout::default()))
        .unwrap();
    assert!(!media.is_blank());
    sync(|| {
        assert_eq!(
            media.open(Part::Identity).unwrap().read_all().unwrap(),
            b"who"
        );
        assert_eq!(
            media.open(Part::Log).unwrap().read_all().unwrap(),
            b"abcdefg"
        );
        assert_eq!(
            media.open(Part::Snapshot).unwrap().read_all().unwrap(),
            vec![7u8; 5000]
        );
    });
    // The superblock's layout wins over the one asked for at reopen.
    assert_eq!(
        media.shared.area(Part::Log).unwrap().half_bytes,
        (256 << 10) / 2 - 4096
    );
    rt.block_on(e.shutdown()).unwrap();
}

/// What a crash can leave behind, written straight onto the vdisk, then reopened.
#[test]
fn crash_states_keep_exactly_the_durable_content() {
    let dir = tempfile::tempdir().unwrap();
    make_disks(dir.path());
    let rt = runtime();
    let e = rt.block_on(engine(dir.path()));
    let name = "cairn-node-raft-crash";
    let open = || {
        rt.block_on(VdiskMedia::open_named(&e, name, small()))
            .unwrap()
    };
    let read = |m: &VdiskMedia, p: Part| sync(|| m.open(p).unwrap().read_all().unwrap());
    let h = e.open_vdisk(name).ok();
    assert!(h.is_none());
    let media = open();
    let h = e.open_vdisk(name).unwrap();
    sync(|| {
        let mut log = media.open(Part::Log).unwrap();
        log.write_at(0, b"one").unwrap();
        log.write_at(3, b"two").unwrap();
        log.sync().unwrap();
    });
    let (gen, half, used, base_half) = {
        let a = media.shared.area(Part::Log).unwrap();
        (a.generation, a.half, a.used, a.half_off(a.half))
    };
    drop(media);

    // 1. A torn append: half a frame (header ok, payload cut) after the last good one.
    let torn = encode_frame(gen, 6, b"three-three-three");
    rt.block_on(h.write(base_half + used, &torn[..4096]))
        .unwrap();
    let mut bad = torn.clone();
    bad[FRAME_HEADER + 2] ^= 0xff;
    rt.block_on(h.write(base_half + used, &bad)).unwrap();
    let media = open();
    assert_eq!(read(&media, Part::Log), b"onetwo");
    // Reopen rewrote the log into a fresh generation (the torn frame can never come back).
    let (gen2, half2) = {
        let a = media.shared.area(Part::Log).unwrap();
        (a.generation, a.half)
    };
    assert!(gen2 > gen);
    assert_ne!(half2, half);
    drop(media);

    // 2. A later frame that outlived an earlier lost one (writes reordered before a flush):
    // zeros where frame 2 should be, a valid frame 3 after it. Never resurrected.
    let media = open();
    let (gen3, off3, used3) = {
        let a = media.shared.area(Part::Log).unwrap();
        (a.generation, a.half_off(a.half), a.used)
    };
    drop(media);
    let f3 = encode_frame(gen3, 6 + 4, b"late");
    rt.block_on(h.write(off3 + used3 + 4096, &f3)).unwrap();
    let media = open();
    assert_eq!(read(&media, Part::Log), b"onetwo");
    sync(|| {
        let mut log = media.open(Part::Log).unwrap();
        log.write_at(6, b"abcd").unwrap();
        log.sync().unwrap();
    });
    drop(media);
    let media = open();
    assert_eq!(read(&media, Part::Log), b"onetwoabcd");

    // 3. A replace cut before its header flip: new frame in the other half, header slot torn.
    let (g, hf, base) = {
        let a = media.shared.area(Part::Log).unwrap();
        (a.generation, a.half, a.base)
    };
    let other = media.shared.area(Part::Log).unwrap().half_off(1 - hf);
    drop(media);
    rt.block_on(h.write(other, &encode_frame(g + 1, 0, b"replaced")))
        .unwrap();
    let mut slot = encode_slot(Part::Log, g + 1, 1 - hf);
    slot[20] ^= 1;
    rt.block_on(h.write(base + ((g + 1) % 2) * BLOCK, &slot))
        .unwrap();
    let media = open();
    assert_eq!(read(&media, Part::Log), b"onetwoabcd");
    // The same with an intact header: the replace is there.
    let (g, hf, base) = {
        let a = media.shared.area(Part::Log).unwrap();
        (a.generation, a.half, a.base)
    };
    let other = media.shared.area(Part::Log).unwrap().half_off(1 - hf);
    drop(media);
    rt.block_on(h.write(other, &encode_frame(g + 1, 0, b"replaced")))
        .unwrap();
    let slot = encode_slot(Part::Log, g + 1, 1 - hf);
    rt.block_on(h.write(base + ((g + 1) % 2) * BLOCK, &slot))
        .unwrap();
    let media = open();
    assert_eq!(read(&media, Part::Log), b"replaced");

    // 4. A flipped bit in the snapshot's only frame: the snapshot reads empty (never wrong
    // bytes); the snapshot store above refuses nothing it cannot check.
    sync(|| {
        media
            .open(Part::Snapshot)
            .unwrap()
            .replace(b"snap")
            .unwrap()
    });
    let off = {
        let a = media.shared.area(Part::Snapshot).unwrap();
        a.half_off(a.half)
    };
    drop(media);
    let mut blk = vec![0u8; 4096];
    rt.block_on(h.read(off, &mut blk)).unwrap();
    blk[FRAME_HEADER + 1] ^= 4;
    rt.block_on(h.write(off, &blk)).unwrap();
    let media = open();
    assert_eq!(read(&media, Part::Snapshot), b"");

    // 5. Garbage superblock: a clear error, nothing rewritten.
    drop(media);
    rt.block_on(h.write(0, &[0x55u8; 4096])).unwrap();
    let err = rt
        .block_on(VdiskMedia::open_named(&e, name, small()))
        .unwrap_err();
    assert!(err.to_string().contains("not a cairn raft disk"), "{err}");
    rt.block_on(e.shutdown()).unwrap();
}

#[test]
fn bounds_repack_and_fail_stop() {
    let dir = tempfile::tempdir().unwrap();
    make_disks(dir.path());
    let rt = runtime();
    let e = rt.block_on(engine(dir.path()));
    let media = rt.block_on(VdiskMedia::open(&e, small())).unwrap();
    let half = media.shared.area(Part::Log).unwrap().half_bytes;
    sync(|| {
        let mut log = media.open(Part::Log).unwrap();
        // Many small appends (one block each) overflow the half: it is repacked, not refused.
        let mut len = 0u64;
        for i in 0..(half / 4096) * 3 {
            log.write_at(len, &[i as u8; 10]).unwrap();
            len += 10;
        }
        log.sync().unwrap();
        assert_eq!(log.read_all().unwrap().len() as u64, len);
        assert!(media.used_bytes(Part::Log) <= half);
        // Content bigger than a half is refused with a clear error, and nothing changes.
        let err = log.replace(&vec![1u8; half as usize]).unwrap_err();
        assert!(err.to_string().contains("area is full"), "{err}");
        assert_eq!(log.read_all().unwrap().len() as u64, len);
        // Stale media (after a set-aside) refuse every call.
        media.set_aside().unwrap();
        assert!(log.read_all().is_err());
        assert!(!cluster::has_identity(&media).unwrap());
        media.restore_aside().unwrap();
        let mut log = media.open(Part::Log).unwrap();
        assert_eq!(log.read_all().unwrap().len() as u64, len);
        // A poisoned area fails every later call (fail-stop).
        media.shared.area(Part::Log).unwrap().poisoned = Some("test".into());
        assert!(log.write_at(len, b"x").is_err());
        assert!(log.read_all().is_err());
    });
    rt.block_on(e.shutdown()).unwrap();
}

/// The raft stores over the vdisk: log + snapshot survive an engine restart; migration from
/// files happens once and keeps the files.
#[test]
fn raft_stores_on_the_vdisk_and_migration_from_files() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
    let dir = tempfile::tempdir().unwrap();
    make_disks(dir.path());
    let files = dir.path().join("cluster");
    fn lid(i: u64) -> cluster::LogId {
        cluster::LogId::new(CommittedLeaderId::new(1, 1), i)
    }
    fn entry(i: u64) -> cluster::Entry {
        cluster::Entry {
            log_id: lid(i),
            payload: EntryPayload::Blank,
        }
    }
    let rt = runtime();
    // A member state as files (what an earlier version left).
    rt.block_on(async {
        let fm = cluster::FileMedia::new(&files);
        fm.open(Part::Identity).unwrap().replace(b"{}").unwrap();
        let (mut log, _) = LogStore::open_on(fm.open(Part::Log).unwrap()).unwrap();
        log.save_vote(&cluster::Vote::new(5, 1)).await.unwrap();
        log.blocking_append((1..=3).map(entry)).await.unwrap();
    });
    let e = rt.block_on(engine(dir.path()));
    let media = rt.block_on(VdiskMedia::open(&e, small())).unwrap();
    assert!(sync(|| migrate_files(&files, &media)).unwrap());
    assert!(!files.exists() && files.with_extension("migrated").exists());
    assert!(
        !sync(|| migrate_files(&files, &media)).unwrap(),
        "only once"
    );
    let m2 = media.clone();
    let h = rt.spawn(async move {
        let (mut log, _) = LogStore::open_on(m2.open(Part::Log).unwrap()).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(cluster::Vote::new(5, 1))
        );
        log.blocking_append((4..=6).map(entry)).await.unwrap();
        let mut sm = StateMachineStore::open_on(m2.open(Part::Snapshot).unwrap()).unwrap();
        sm.apply((1..=6).map(entry)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    });
    rt.block_on(h).unwrap();
    drop(media);
    rt.block_on(e.shutdown()).unwrap();
    drop(e);
    let e = rt.block_on(engine(dir.path()));
    let media = rt.block_on(VdiskMedia::open(&e, small())).unwrap();
    let h = rt.spawn(async move {
        assert!(cluster::has_identity(&media).unwrap());
        let (mut log, rep) = LogStore::open_on(media.open(Part::Log).unwrap()).unwrap();
        assert_eq!(rep.torn_bytes, 0);
        let got = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(got.len(), 6);
        let mut sm = StateMachineStore::open_on(media.open(Part::Snapshot).unwrap()).unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, Some(lid(6)));
    });
    rt.block_on(h).unwrap();
    rt.block_on(e.shutdown()).unwrap();
}

mod suite {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct VdiskBuilder {
        rt: tokio::runtime::Runtime,
        engine: Engine,
        next: std::sync::atomic::AtomicU64,
        _dir: tempfile::TempDir,
    }

    impl StoreBuilder<cluster::TypeConfig, LogStore, StateMachineStore, VdiskMedia>
        for Arc<VdiskBuilder>
    {
        async fn build(
            &self,
        ) -> std::result::Result<(VdiskMedia, LogStore, StateMachineStore), cluster::StorageError>
        {
            let n = self.next.fetch_add(1, Ordering::SeqCst);
            let name = format!("cairn-node-raft-{n}");
            // The engine lives on its own runtime; the suite's runtime only drives raft.
            let media = block(self.rt.handle(), async {
                VdiskMedia::open_named(&self.engine, &name, small())
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))
            })
            .expect("open raft vdisk");
            let (log, _) = LogStore::open_on(media.open(Part::Log).unwrap()).expect("log");
            let sm = StateMachineStore::open_on(media.open(Part::Snapshot).unwrap()).expect("sm");
            Ok((media, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite_passes_on_the_raft_vdisk() {
        let dir = tempfile::tempdir().unwrap();
        make_disks(dir.path());
        let rt = runtime();
        let engine = rt.block_on(super::engine(dir.path()));
        let b = Arc::new(VdiskBuilder {
            rt,
            engine,
            next: Default::default(),
            _dir: dir,
        });
        Suite::test_all(b.clone()).expect("openraft storage suite on the raft vdisk");
        b.rt.block_on(b.engine.shutdown()).unwrap();
    }
}

/// A node started with its raft state as files (an earlier version), restarted with the
/// default placement: the state moves onto the pool once, and across further restarts the
/// node keeps its cluster id (CA), member id, membership and committed definitions, with no
/// raft files left in the data directory.
#[test]
fn node_restart_keeps_cluster_identity_on_the_pool() {
    use cluster::{Command, CommandResult, VdiskDef};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let cfg = |place: crate::RaftPlace| {
        let mut c = crate::NodeConfig::new(&data);
        c.disk_count = 2;
        c.disk_size_bytes = DISK_BYTES;
        c.api_listen = None;
        c.raft_place = place;
        c
    };
    let rt = runtime();
    type Seen = (String, u64, usize, String, bool);
    let look = |n: &crate::Node| -> Seen {
        let m = n.inner.cluster.member().unwrap();
        let ca = m.read(|s| format!("{:?}", s.ca.as_ref().map(|c| c.fingerprint())));
        let members = m.read(|s| s.members.len());
        let has_def = m.read(|s| s.vdisks.contains_key("kept"));
        (m.cluster_id().to_string(), m.id(), members, ca, has_def)
    };
    let first = rt.block_on(async {
        let n = crate::Node::start(cfg(crate::RaftPlace::Files))
            .await
            .unwrap();
        let m = n.inner.cluster.member().unwrap();
        let r = m
            .propose(Command::CreateVdisk(VdiskDef {
                id: "kept".into(),
                name: "kept".into(),
                size_bytes: 1 << 20,
                parent_snapshot: None,
            }))
            .await
            .unwrap();
        assert_eq!(r, CommandResult::Ok);
        let seen = look(&n);
        n.shutdown().await.unwrap();
        seen
    });
    assert!(first.4, "definition committed");
    assert!(data.join("cluster/identity").exists());
    for round in 0..2 {
        let seen = rt.block_on(async {
            let n = crate::Node::start(cfg(crate::RaftPlace::Auto))
                .await
                .unwrap();
            assert!(n.engine().vdisk(RAFT_VDISK).is_ok(), "round {round}");
            let seen = look(&n);
            n.shutdown().await.unwrap();
            seen
        });
        assert_eq!(seen, first, "round {round}");
        assert!(
            !data.join("cluster").exists(),
            "no raft files after the move"
        );
        assert!(
            data.join("cluster.migrated/identity").exists(),
            "files kept as a backup"
        );
        assert!(data.join(POOL_MARKER).exists());
    }
}
