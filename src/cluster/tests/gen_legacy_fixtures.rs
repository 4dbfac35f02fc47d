//! One-shot generator of the legacy (bincode, format v1) fixtures in tests/fixtures/: run with
//! CAIRN_GEN_FIXTURES=1 on the commit that still writes the v1 formats. Removed once run.
use std::path::PathBuf;

use cluster::{
    CairnNode, Command, DiskDef, DiskState, Entry, LogId, LogStore,
    Member, MemberState, PlacementDisk, Role, ScheduleDef, SnapshotDef, StateMachineStore, UserDef,
    VdiskDef, VmDef, VmPower, Vote,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn vdisk(id: &str, parent: Option<&str>) -> VdiskDef {
    VdiskDef {
        id: id.into(),
        name: id.rsplit('/').next().unwrap().into(),
        size_bytes: 1 << 30,
        parent_snapshot: parent.map(Into::into),
    }
}

fn commands() -> Vec<Command> {
    let ca = transport::ClusterCa::generate("fixture-cluster").unwrap();
    let member = |id, name: &str, role, state| Member {
        id,
        name: name.into(),
        addr: format!("127.0.0.{id}:7001"),
        join_addr: format!("127.0.0.{id}:7002"),
        role,
        state,
    };
    vec![
        Command::Noop,
        Command::InitCluster {
            cluster_id: "fixture-cluster".into(),
            ca,
            first: member(1, "a", Role::Data, MemberState::Active),
        },
        Command::IssueJoinToken {
            token_hash: "aa".repeat(32),
            expires_ms: 2_000_000,
            role: Role::Data,
        },
        Command::IssueJoinToken {
            token_hash: "bb".repeat(32),
            expires_ms: 3_000_000,
            role: Role::Witness,
        },
        Command::ConsumeJoinToken {
            token_hash: "aa".repeat(32),
            now_ms: 1_000_000,
            name: "b".into(),
            addr: "127.0.0.2:7001".into(),
            join_addr: "127.0.0.2:7002".into(),
        },
        Command::SetMemberState {
            id: 2,
            state: MemberState::Active,
        },
        Command::IssueJoinToken {
            token_hash: "cc".repeat(32),
            expires_ms: 4_000_000,
            role: Role::Data,
        },
        Command::ConsumeJoinToken {
            token_hash: "cc".repeat(32),
            now_ms: 1_000_001,
            name: "c".into(),
            addr: "127.0.0.3:7001".into(),
            join_addr: "127.0.0.3:7002".into(),
        },
        Command::SetMemberState {
            id: 3,
            state: MemberState::Draining,
        },
        Command::SetNodeDisks {
            node: 1,
            disks: vec![
                PlacementDisk {
                    disk_id: "d1".into(),
                    weight: 1 << 40,
                    state: DiskState::In,
                },
                PlacementDisk {
                    disk_id: "d2".into(),
                    weight: 7,
                    state: DiskState::Draining,
                },
            ],
        },
        Command::SetNodeDisks {
            node: 2,
            disks: vec![PlacementDisk {
                disk_id: "d3".into(),
                weight: 1 << 39,
                state: DiskState::Out,
            }],
        },
        Command::PutDisk(DiskDef {
            id: "d1".into(),
            node: 1,
            device: "/dev/disk/by-id/nvme-A".into(),
            size_bytes: 1 << 40,
        }),
        Command::PutDisk(DiskDef {
            id: "gone".into(),
            node: 1,
            device: "/dev/x".into(),
            size_bytes: 1,
        }),
        Command::RemoveDisk { id: "gone".into() },
        Command::CreateVdisk(vdisk("1/root", None)),
        Command::CreateVdisk(vdisk("1/tmp", None)),
        Command::DeleteVdisk { id: "1/tmp".into() },
        Command::CreateSnapshot(SnapshotDef {
            id: "1/root@s1".into(),
            vdisk: "1/root".into(),
            name: "s1".into(),
        }),
        Command::CreateSnapshot(SnapshotDef {
            id: "1/root@s2".into(),
            vdisk: "1/root".into(),
            name: "s2".into(),
        }),
        Command::DeleteSnapshot {
            id: "1/root@s2".into(),
        },
        Command::CloneVdisk {
            snapshot: "1/root@s1".into(),
            new: vdisk("1/clone", Some("1/root@s1")),
        },
        Command::PutVm(VmDef {
            id: "vm1".into(),
            name: "web".into(),
            vcpus: 2,
            memory_mib: 2048,
            vdisks: vec!["1/root".into(), "1/clone".into()],
            node: Some(1),
            power: VmPower::Running,
        }),
        Command::PutVm(VmDef {
            id: "vm2".into(),
            name: "db".into(),
            vcpus: 1,
            memory_mib: 512,
            vdisks: vec![],
            node: None,
            power: VmPower::Stopped,
        }),
        Command::PutVmSpec {
            id: "vm1".into(),
            spec: r#"{"kernel":"/boot/vmlinuz","nics":[{"mac":"52:54:00:00:00:01"}]}"#.into(),
        },
        Command::PutVmSpec {
            id: "vm2".into(),
            spec: "{}".into(),
        },
        Command::DeleteVm { id: "vm2".into() },
        Command::PutUser(UserDef {
            name: "admin".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            role: "admin".into(),
        }),
        Command::PutUser(UserDef {
            name: "old".into(),
            password_hash: "x".into(),
            role: "viewer".into(),
        }),
        Command::DeleteUser { name: "old".into() },
        Command::PutSchedule(ScheduleDef {
            id: "sch1".into(),
            vdisk: "1/root".into(),
            every_secs: 3600,
            keep: 24,
        }),
        Command::PutSchedule(ScheduleDef {
            id: "sch2".into(),
            vdisk: "1/root".into(),
            every_secs: 60,
            keep: 1,
        }),
        Command::DeleteSchedule { id: "sch2".into() },
        Command::Once {
            request: "0123456789abcdef0123456789abcdef".into(),
            cmd: Box::new(Command::CreateVdisk(vdisk("1/once", None))),
        },
        Command::Once {
            request: "fedcba9876543210fedcba9876543210".into(),
            cmd: Box::new(Command::DeleteVdisk {
                id: "1/missing".into(),
            }),
        },
        Command::Outdate {
            owner: 1,
            holder: 2,
            epoch: 5,
        },
        Command::Outdate {
            owner: 2,
            holder: 1,
            epoch: 6,
        },
        Command::ClearOutdated {
            owner: 2,
            holder: 1,
        },
        Command::CreateVdisk(vdisk("3/data", None)),
        Command::MoveVdisks { from: 3, to: 2 },
        Command::RemoveMember { id: 3 },
    ]
}

fn entries() -> Vec<Entry> {
    let mut out = vec![
        Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(1, 2),
            payload: EntryPayload::Membership(Membership::new(
                vec![[1u64, 2].into_iter().collect()],
                [
                    (
                        1u64,
                        CairnNode {
                            addr: "127.0.0.1:7001".into(),
                            role: Role::Data,
                        },
                    ),
                    (
                        2u64,
                        CairnNode {
                            addr: "127.0.0.2:7001".into(),
                            role: Role::Data,
                        },
                    ),
                    (
                        4u64,
                        CairnNode {
                            addr: "127.0.0.4:7001".into(),
                            role: Role::Witness,
                        },
                    ),
                ]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
            )),
        },
    ];
    for (i, c) in commands().into_iter().enumerate() {
        out.push(Entry {
            log_id: log_id(2, 3 + i as u64),
            payload: EntryPayload::Normal(c),
        });
    }
    out
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn generate_legacy_fixtures() {
    if std::env::var_os("CAIRN_GEN_FIXTURES").is_none() {
        println!("skipped: set CAIRN_GEN_FIXTURES=1 to write the legacy fixtures");
        return;
    }
    let out = fixtures();
    std::fs::create_dir_all(&out).unwrap();
    let tmp = tempfile::TempDir::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let entries = entries();
        // The state machine: every entry applied, then a snapshot (image with the pair form).
        let mut sm = StateMachineStore::open(&tmp.path().join("sm")).unwrap();
        let results = sm.apply(entries.clone()).await.unwrap();
        assert!(
            results
                .iter()
                .any(|r| matches!(r, cluster::CommandResult::Rejected(_))),
            "the fixture includes a rejected command"
        );
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let (state, requests) = {
            let r = sm.reader();
            let a = r.read();
            (a.state.clone(), a.requests.clone())
        };
        assert!(!requests.is_empty());
        assert_eq!(state.members.len(), 2);
        std::fs::copy(tmp.path().join("sm/snapshot"), out.join("v1_snapshot.bin")).unwrap();
        std::fs::write(
            out.join("v1_snapshot.json"),
            serde_json::to_vec_pretty(&(&state, &requests)).unwrap(),
        )
        .unwrap();

        // The older "state alone" snapshot data, in the same image layout.
        use bincode::Options;
        let opts = || {
            bincode::DefaultOptions::new()
                .with_limit(512 * 1024 * 1024)
                .reject_trailing_bytes()
        };
        let meta = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .unwrap()
            .meta
            .clone();
        let data = opts().serialize(&state).unwrap();
        let body = opts().serialize(&(&meta, &data)).unwrap();
        let mut img = b"CAIRNSN1".to_vec();
        img.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        img.extend_from_slice(&(body.len() as u64).to_le_bytes());
        img.extend_from_slice(&body);
        std::fs::write(out.join("v1_snapshot_state_only.bin"), img).unwrap();
        // Check the current code loads it (the pair form must not be required).
        std::fs::create_dir_all(tmp.path().join("sm2")).unwrap();
        std::fs::copy(
            out.join("v1_snapshot_state_only.bin"),
            tmp.path().join("sm2/snapshot"),
        )
        .unwrap();
        let sm2 = StateMachineStore::open(&tmp.path().join("sm2")).unwrap();
        assert_eq!(sm2.reader().read().state, state);

        // The log: vote, every entry plus two that get truncated, committed, a purge.
        let (mut log, _) = LogStore::open(&tmp.path().join("log")).unwrap();
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        let mut extra = entries.clone();
        let n = extra.len() as u64;
        extra.push(Entry {
            log_id: log_id(2, n + 1),
            payload: EntryPayload::Normal(Command::Noop),
        });
        extra.push(Entry {
            log_id: log_id(2, n + 2),
            payload: EntryPayload::Blank,
        });
        log.blocking_append(extra).await.unwrap();
        log.truncate(log_id(2, n + 1)).await.unwrap();
        log.save_committed(Some(log_id(2, n))).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        let kept = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(kept.len() as u64, n - 1);
        let vote = log.read_vote().await.unwrap();
        let committed = log.read_committed().await.unwrap();
        drop(log);
        std::fs::copy(tmp.path().join("log/log"), out.join("v1_log.bin")).unwrap();
        std::fs::write(
            out.join("v1_log.json"),
            serde_json::to_vec_pretty(&(&vote, &committed, &kept)).unwrap(),
        )
        .unwrap();
    });
}
