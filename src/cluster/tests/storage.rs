//! The durable log store and state machine: openraft's storage conformance suite, persistence
//! across reopen, torn-tail recovery, compaction, snapshot persistence.
use std::collections::BTreeSet;
use std::io::Write;

use cluster::{
    CairnNode, ClusterState, Command, CommandResult, Entry, LogId, LogStore, MemMedia, Part,
    RaftMedia, StateMachineStore, StorageError, TypeConfig, VdiskDef, Vote,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("tempdir");
        let (log, _) = LogStore::open(&dir.path().join("log")).expect("open log");
        let sm = StateMachineStore::open(&dir.path().join("sm")).expect("open sm");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

/// The same stores on in-memory media: the log and snapshot code is the same, only the
/// medium differs (the node crate runs the suite on its raft vdisk medium too).
struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, MemMedia> for MemBuilder {
    async fn build(&self) -> Result<(MemMedia, LogStore, StateMachineStore), StorageError> {
        let media = MemMedia::default();
        let (log, _) = LogStore::open_on(media.open(Part::Log).expect("log medium")).expect("log");
        let sm =
            StateMachineStore::open_on(media.open(Part::Snapshot).expect("sm medium")).expect("sm");
        Ok((media, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_memory_media() {
    Suite::test_all(MemBuilder).expect("openraft storage suite on memory media");
}

/// Reopening on the same media gives back the log and the snapshot (the medium, not the
/// file system, is what persists).
#[test]
fn memory_media_reopen_keeps_log_and_snapshot() {
    let media = MemMedia::default();
    rt().block_on(async {
        {
            let (mut log, _) = LogStore::open_on(media.open(Part::Log).unwrap()).unwrap();
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
            log.blocking_append((1..=4).map(|i| cmd_entry(1, i, &format!("m{i}"))))
                .await
                .unwrap();
            let mut sm = StateMachineStore::open_on(media.open(Part::Snapshot).unwrap()).unwrap();
            sm.apply([cmd_entry(1, 1, "m1")]).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        }
        let (mut log, rep) = LogStore::open_on(media.open(Part::Log).unwrap()).unwrap();
        assert_eq!(rep.torn_bytes, 0);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 4))
        );
        let sm = StateMachineStore::open_on(media.open(Part::Snapshot).unwrap()).unwrap();
        assert!(sm.reader().read().state.vdisks.contains_key("m1"));
        // A torn tail on the medium is cut the same way as in a file.
        let mut m = media.open(Part::Log).unwrap();
        let len = m.read_all().unwrap().len() as u64;
        m.write_at(len, &[9, 0, 0, 0, 1, 2]).unwrap();
        let (_, rep) = LogStore::open_on(media.open(Part::Log).unwrap()).unwrap();
        assert_eq!(rep.torn_bytes, 6);
        assert_eq!(m.read_all().unwrap().len() as u64, len);
    });
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn cmd_entry(term: u64, index: u64, name: &str) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::CreateVdisk(VdiskDef {
            id: name.into(),
            name: name.into(),
            size_bytes: 1 << 20,
            parent_snapshot: None,
        })),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn log_survives_reopen_with_vote_truncate_purge_and_committed() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        {
            let (mut log, rep) = LogStore::open(dir.path()).unwrap();
            assert_eq!(rep.records, 0);
            log.save_vote(&Vote::new(3, 2)).await.unwrap();
            log.blocking_append((1..=10).map(|i| cmd_entry(1, i, &format!("v{i}"))))
                .await
                .unwrap();
            log.truncate(log_id(1, 8)).await.unwrap();
            log.blocking_append([cmd_entry(2, 8, "x")]).await.unwrap();
            log.purge(log_id(1, 3)).await.unwrap();
            log.save_committed(Some(log_id(2, 8))).await.unwrap();
            log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        }
        let (mut log, rep) = LogStore::open(dir.path()).unwrap();
        assert_eq!(rep.torn_bytes, 0);
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 1))
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 8)));
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(st.last_log_id, Some(log_id(2, 8)));
        let got = log.try_get_log_entries(0..100).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, vec![4, 5, 6, 7, 8]);
        assert_eq!(got.last().unwrap().log_id, log_id(2, 8));
    });
}

/// A crash mid-append leaves a partial record (or garbage) at the end: it is cut at open, and
/// everything acknowledged before it is intact. Tested at every cut point of the last record.
#[test]
fn torn_tail_is_detected_and_cut() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("log");
    let (full_len, good_len) = rt().block_on(async {
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        log.blocking_append((1..=5).map(|i| cmd_entry(1, i, &format!("v{i}"))))
            .await
            .unwrap();
        let good = log.file_bytes();
        log.blocking_append([cmd_entry(1, 6, "torn")])
            .await
            .unwrap();
        (log.file_bytes(), good)
    });
    let original = std::fs::read(&path).unwrap();
    assert_eq!(original.len() as u64, full_len);
    for cut in (good_len..full_len).step_by(7) {
        std::fs::write(&path, &original[..cut as usize]).unwrap();
        let (mut log, rep) = LogStore::open(dir.path()).unwrap();
        assert_eq!(rep.torn_bytes, cut - good_len, "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        let st = rt().block_on(log.get_log_state()).unwrap();
        assert_eq!(st.last_log_id, Some(log_id(1, 5)));
    }
    // A flipped bit in the last record fails its checksum: also a torn tail.
    let mut bad = original.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let (mut log, rep) = LogStore::open(dir.path()).unwrap();
    assert!(rep.torn_bytes > 0);
    assert_eq!(
        rt().block_on(log.get_log_state()).unwrap().last_log_id,
        Some(log_id(1, 5))
    );
    // Appending after the cut works and survives reopen.
    rt().block_on(log.blocking_append([cmd_entry(1, 6, "again")]))
        .unwrap();
    drop(log);
    let (mut log, rep) = LogStore::open(dir.path()).unwrap();
    assert_eq!(rep.torn_bytes, 0);
    assert_eq!(
        rt().block_on(log.get_log_state()).unwrap().last_log_id,
        Some(log_id(1, 6))
    );
}

#[test]
fn garbage_file_is_refused_not_reset() {
    let dir = TempDir::new().unwrap();
    std::fs::File::create(dir.path().join("log"))
        .unwrap()
        .write_all(b"hello world, not a log")
        .unwrap();
    assert!(matches!(
        LogStore::open(dir.path()),
        Err(cluster::Error::Corrupt(_))
    ));
}

#[test]
fn purged_log_is_compacted_and_still_correct() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        let big = "x".repeat(1200);
        let mut idx = 0;
        for _ in 0..40 {
            let batch: Vec<Entry> = (0..100)
                .map(|_| {
                    idx += 1;
                    cmd_entry(1, idx, &format!("{big}{idx}"))
                })
                .collect();
            log.blocking_append(batch).await.unwrap();
        }
        let before = log.file_bytes();
        log.purge(log_id(1, idx - 10)).await.unwrap();
        assert!(
            log.file_bytes() < before / 4,
            "compaction did not shrink {} -> {}",
            before,
            log.file_bytes()
        );
        drop(log);
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, idx - 10)));
        assert_eq!(st.last_log_id, Some(log_id(1, idx)));
        assert_eq!(
            log.try_get_log_entries(0..u64::MAX).await.unwrap().len(),
            10
        );
    });
}

#[test]
fn snapshot_persists_across_reopen() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let members = Membership::<u64, CairnNode>::new(vec![BTreeSet::from([1])], None);
        let entries = vec![
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Membership(members),
            },
            cmd_entry(1, 2, "a"),
            cmd_entry(1, 3, "a"),
        ];
        let r = sm.apply(entries).await.unwrap();
        assert_eq!(r[1], CommandResult::Ok);
        assert!(matches!(r[2], CommandResult::Rejected(_)), "duplicate name");
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 3)));

        let mut sm2 = StateMachineStore::open(dir.path()).unwrap();
        let (applied, mem) = sm2.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 3)));
        assert_eq!(mem.log_id(), &Some(log_id(1, 1)));
        assert!(sm2.reader().read().state.vdisks.contains_key("a"));
        let cur = sm2.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, snap.meta);

        // A corrupted snapshot file is an error at open, never an empty state.
        let p = dir.path().join("snapshot");
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len() - 1;
        b[n] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(matches!(
            StateMachineStore::open(dir.path()),
            Err(cluster::Error::Corrupt(_))
        ));
        let _ = ClusterState::default();
    });
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Bytes on disk are untrusted: any content after a valid header opens to a log or a
        /// clear error, never a panic; a valid prefix followed by garbage keeps the prefix.
        #[test]
        fn arbitrary_log_bytes_never_panic(garbage in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let dir = TempDir::new().unwrap();
            rt().block_on(async {
                let (mut log, _) = LogStore::open(dir.path()).unwrap();
                log.blocking_append((1..=3).map(|i| cmd_entry(1, i, "p"))).await.unwrap();
            });
            let path = dir.path().join("log");
            let mut bytes = std::fs::read(&path).unwrap();
            let good = bytes.len();
            bytes.extend_from_slice(&garbage);
            std::fs::write(&path, &bytes).unwrap();
            match LogStore::open(dir.path()) {
                Ok((mut log, rep)) => {
                    let st = rt().block_on(log.get_log_state()).unwrap();
                    prop_assert!(st.last_log_id.map(|l| l.index).unwrap_or(0) >= 3);
                    prop_assert!(rep.torn_bytes <= garbage.len() as u64);
                    prop_assert!(std::fs::metadata(&path).unwrap().len() >= good as u64);
                }
                Err(e) => prop_assert!(matches!(e, cluster::Error::Corrupt(_)), "{e}"),
            }
        }

        /// The state machine never panics on any command sequence, and a rejected command
        /// leaves the state unchanged.
        #[test]
        fn state_apply_total(ops in proptest::collection::vec((0u8..8, 0u8..4, 0u8..3), 0..60)) {
            use cluster::{Command as C, SnapshotDef, VmDef, VmPower};
            let mut s = ClusterState::default();
            for (kind, a, b) in ops {
                let name = format!("o{a}");
                let cmd = match kind {
                    0 => C::CreateVdisk(VdiskDef { id: name.clone(), name, size_bytes: 1, parent_snapshot: None }),
                    1 => C::DeleteVdisk { id: name },
                    2 => C::CreateSnapshot(SnapshotDef { id: format!("s{b}"), vdisk: name, name: "s".into() }),
                    3 => C::DeleteSnapshot { id: format!("s{b}") },
                    4 => C::CloneVdisk { snapshot: format!("s{b}"), new: VdiskDef { id: name.clone(), name, size_bytes: 1, parent_snapshot: None } },
                    5 => C::PutVm(VmDef { id: format!("vm{b}"), name: "vm".into(), vcpus: 1, memory_mib: 1, vdisks: vec![name], node: (b > 0).then_some(u64::from(b)), power: VmPower::Stopped }),
                    6 => C::DeleteVm { id: format!("vm{b}") },
                    _ => C::RemoveMember { id: u64::from(a) },
                };
                let before = s.clone();
                if let CommandResult::Rejected(_) = s.apply(&cmd) {
                    prop_assert_eq!(&s, &before);
                }
                // Invariants: snapshots point at existing disks, VMs at existing disks.
                for snap in s.snapshots.values() {
                    prop_assert!(s.vdisks.contains_key(&snap.vdisk));
                }
                for vm in s.vms.values() {
                    for d in &vm.vdisks {
                        prop_assert!(s.vdisks.contains_key(d));
                    }
                }
            }
        }
    }
}

/// `ClusterNode::settle` relies on the request log: once the no-op fence for an id applied, a
/// late copy of the tagged command under that id must never apply, and an id whose command
/// applied first answers that command's result. Both must hold on a member that restarted from
/// the snapshot (the log before it compacted away) and on one that installed the snapshot
/// from a leader.
#[test]
fn a_settled_request_stays_settled_after_a_snapshot_reopen_and_install() {
    let dir = TempDir::new().unwrap();
    let once = |term: u64, index: u64, request: &str, cmd: Command| Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Once {
            request: request.into(),
            cmd: Box::new(cmd),
        }),
    };
    let vdisk = |name: &str| match cmd_entry(1, 0, name).payload {
        EntryPayload::Normal(c) => c,
        _ => unreachable!(),
    };
    rt().block_on(async {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let members = Membership::<u64, CairnNode>::new(vec![BTreeSet::from([1])], None);
        let r = sm
            .apply(vec![
                Entry {
                    log_id: log_id(1, 1),
                    payload: EntryPayload::Membership(members),
                },
                cmd_entry(1, 2, "a"),
                // Settled before its command reached a leader.
                once(1, 3, "fenced", Command::Noop),
                // Applied first (refused: the name is taken), settled after.
                once(1, 4, "applied", vdisk("a")),
            ])
            .await
            .unwrap();
        assert_eq!(r[2], CommandResult::Ok);
        let refused = r[3].clone();
        assert!(matches!(refused, CommandResult::Rejected(_)), "{refused:?}");
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let data = snap.snapshot.into_inner();

        let check = |sm: StateMachineStore, label: &'static str| {
            let refused = refused.clone();
            async move {
                let mut sm = sm;
                let r = sm
                    .apply(vec![
                        once(2, 5, "fenced", vdisk("late")),
                        once(2, 6, "applied", Command::Noop),
                    ])
                    .await
                    .unwrap();
                assert_eq!(r[0], CommandResult::Ok, "{label}: the fence's result");
                assert_eq!(r[1], refused, "{label}: the command's own result");
                let names: Vec<String> = sm.reader().read().state.vdisks.keys().cloned().collect();
                assert_eq!(
                    names,
                    vec!["a".to_string()],
                    "{label}: the late copy applied"
                );
            }
        };
        // Restarted from the snapshot alone.
        check(StateMachineStore::open(dir.path()).unwrap(), "reopened").await;
        // A member that received the snapshot from a leader.
        let other = TempDir::new().unwrap();
        let mut fresh = StateMachineStore::open(other.path()).unwrap();
        fresh
            .install_snapshot(&snap.meta, Box::new(std::io::Cursor::new(data)))
            .await
            .unwrap();
        check(fresh, "installed").await;
    });
}
