//! Upgrades never lose data: raft snapshots and logs written by older binaries (fixtures in
//! tests/fixtures/, never regenerated) load with the identical state and entries; bad or
//! unknown-format bytes on disk or from a peer give an error naming what and where, never a
//! panic.
//!
//! Fixtures: `v1_*` were written by the code at commit ff0dd6f (bincode, format v1) with the
//! generator that commit 3969e43 added; `v2_*` by the first versioned format (this file writes
//! them when CAIRN_GEN_FIXTURES=v2 is set and they are missing). `*.json` hold what they contain.
use std::path::{Path, PathBuf};

use cluster::format::FORMAT_VERSION;
use cluster::network::PeerRequest;
use cluster::{
    ClusterState, Command, CommandResult, Entry, LogId, LogStore, StateMachineStore, TypeConfig,
    Vote,
};
use openraft::raft::AppendEntriesRequest;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use serde_json::Value;
use tempfile::TempDir;

type RequestLog = cluster::dedup::RequestLog;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A state directory holding `file` as its snapshot (or log).
fn dir_with(file: &str, as_name: &str) -> TempDir {
    let dir = TempDir::new().unwrap();
    std::fs::copy(fixture(file), dir.path().join(as_name)).unwrap();
    dir
}

fn expected_state() -> (ClusterState, RequestLog) {
    serde_json::from_slice(&std::fs::read(fixture("v1_snapshot.json")).unwrap()).unwrap()
}

fn expected_log() -> (Option<Vote>, Option<LogId>, Value) {
    let (vote, committed, mut entries): (Option<Vote>, Option<LogId>, Value) =
        serde_json::from_slice(&std::fs::read(fixture("v1_log.json")).unwrap()).unwrap();
    with_defaults_added_since(&mut entries);
    (vote, committed, entries)
}

/// Fields added since the fixtures were written (under the compatibility rule: defaulted)
/// appear in what the older entries decode to with their defaults.
fn with_defaults_added_since(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(init)) = m.get_mut("InitCluster") {
                init.entry("lease_ms").or_insert(Value::from(0));
            }
            m.values_mut().for_each(with_defaults_added_since);
        }
        Value::Array(a) => a.iter_mut().for_each(with_defaults_added_since),
        _ => {}
    }
}

fn state_of(sm: &StateMachineStore) -> (ClusterState, RequestLog) {
    let r = sm.reader();
    let a = r.read();
    (a.state.clone(), a.requests.clone())
}

fn check_snapshot(file: &str, expect_requests: bool) {
    let dir = dir_with(file, "snapshot");
    let sm = StateMachineStore::open(dir.path()).expect("an older snapshot loads");
    let (state, requests) = expected_state();
    let (got_state, got_requests) = state_of(&sm);
    assert_eq!(got_state, state);
    assert!(!state.vm_specs.is_empty() && state.ca.is_some() && !state.vdisks.is_empty());
    if expect_requests {
        assert_eq!(got_requests, requests);
        assert_eq!(got_requests.len(), 2);
    } else {
        assert!(got_requests.is_empty());
    }
    let last = sm.reader().read().last_applied.expect("last applied");
    assert_eq!(last.index, 42, "2 + 40 commands");
    // The next snapshot is written in the current format and loads alike.
    let mut sm2 = sm.clone();
    rt().block_on(async {
        sm2.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    });
    drop((sm, sm2));
    let raw = std::fs::read(dir.path().join("snapshot")).unwrap();
    assert_eq!(&raw[..8], b"CAIRNSN2");
    let again = StateMachineStore::open(dir.path()).unwrap();
    assert_eq!(state_of(&again).0, state);
    assert_eq!(again.reader().read().last_applied, Some(last));
}

#[test]
fn v1_snapshot_loads_with_identical_state() {
    check_snapshot("v1_snapshot.bin", true);
}

#[test]
fn v1_state_only_snapshot_loads_with_identical_state() {
    check_snapshot("v1_snapshot_state_only.bin", false);
}

#[test]
fn v2_snapshot_loads_with_identical_state() {
    check_snapshot("v2_snapshot.bin", true);
}

fn check_log(file: &str) {
    let dir = dir_with(file, "log");
    rt().block_on(async {
        let (vote, committed, entries) = expected_log();
        {
            let (mut log, rep) = LogStore::open(dir.path()).expect("an older log loads");
            assert_eq!(rep.torn_bytes, 0);
            assert_eq!(log.read_vote().await.unwrap(), vote);
            assert_eq!(log.read_committed().await.unwrap(), committed);
            let got = log.try_get_log_entries(0..).await.unwrap();
            assert_eq!(serde_json::to_value(&got).unwrap(), entries);
            assert_eq!(got.len(), 41, "42 entries, the first purged");
            // Applying the older entries gives the state the older binary had (the snapshot
            // fixture was taken from the same commands; entry 1 was a blank one, purged).
            let sm_dir = TempDir::new().unwrap();
            let mut sm = StateMachineStore::open(sm_dir.path()).unwrap();
            let results = sm.apply(got.clone()).await.unwrap();
            assert!(results
                .iter()
                .any(|r| matches!(r, CommandResult::Rejected(_))));
            assert_eq!(state_of(&sm), expected_state());
            // A new entry after the old ones, in the current format.
            let next = LogId::new(got.last().unwrap().log_id.leader_id, 43);
            log.blocking_append([Entry {
                log_id: next,
                payload: EntryPayload::Normal(Command::Noop),
            }])
            .await
            .unwrap();
        }
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        let got = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(got.len(), 42);
        assert_eq!(
            serde_json::to_value(&got[..41]).unwrap(),
            entries,
            "old entries unchanged after new ones were appended"
        );
    });
}

#[test]
fn v1_log_loads_with_identical_entries() {
    check_log("v1_log.bin");
}

#[test]
fn v2_log_loads_with_identical_entries() {
    check_log("v2_log.bin");
}

/// Writes the v2 fixtures from the v1 ones with this binary, when asked and missing.
#[test]
fn v2_fixtures_are_present() {
    let want = std::env::var("CAIRN_GEN_FIXTURES").ok();
    if want.as_deref() == Some("v2") && !fixture("v2_log.bin").exists() {
        assert_eq!(FORMAT_VERSION, 2);
        let dir = dir_with("v1_snapshot.bin", "snapshot");
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        rt().block_on(async {
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap()
        });
        std::fs::copy(dir.path().join("snapshot"), fixture("v2_snapshot.bin")).unwrap();
        let (vote, committed, _) = expected_log();
        let src = dir_with("v1_log.bin", "log");
        let dst = TempDir::new().unwrap();
        rt().block_on(async {
            let (mut old, _) = LogStore::open(src.path()).unwrap();
            let entries = old.try_get_log_entries(0..).await.unwrap();
            let (mut new, _) = LogStore::open(dst.path()).unwrap();
            new.save_vote(&vote.unwrap()).await.unwrap();
            new.blocking_append(entries).await.unwrap();
            new.save_committed(committed).await.unwrap();
            new.save_vote(&vote.unwrap()).await.unwrap();
        });
        std::fs::copy(dst.path().join("log"), fixture("v2_log.bin")).unwrap();
    }
    for f in ["v2_snapshot.bin", "v2_log.bin"] {
        let raw = std::fs::read(fixture(f)).unwrap();
        assert!(raw.len() > 100, "{f}");
    }
}

fn open_err(dir: &Path) -> String {
    StateMachineStore::open(dir)
        .map(|_| ())
        .expect_err("must not load")
        .to_string()
}

#[test]
fn flipped_bytes_in_a_snapshot_are_an_error_naming_the_file() {
    for file in ["v1_snapshot.bin", "v2_snapshot.bin"] {
        let good = std::fs::read(fixture(file)).unwrap();
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("snapshot");
        // Every byte of the header and a spread of the body.
        let step = (good.len() / 97).max(1);
        for i in (0..24).chain((24..good.len()).step_by(step)) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let e = open_err(dir.path());
            assert!(e.contains(&path.display().to_string()), "{file}[{i}]: {e}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("header says"), "{e}");
    }
}

/// A snapshot image with valid framing around `data`.
fn image_v2(meta_json: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = (meta_json.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(meta_json);
    body.extend_from_slice(data);
    let mut out = b"CAIRNSN2".to_vec();
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn unknown_snapshot_versions_are_an_error_naming_the_version() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("snapshot");
    let meta = r#"{"last_log_id":null,"last_membership":{"log_id":null,"membership":{"configs":[],"nodes":{}}},"snapshot_id":"s-7"}"#;
    let mut data = b"CAIRN-SD".to_vec();
    data.extend_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    data.extend_from_slice(b"{}");
    std::fs::write(&path, image_v2(meta.as_bytes(), &data)).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("snapshot s-7"), "{e}");
    assert!(
        e.contains(&format!("format version {}", FORMAT_VERSION + 1)),
        "{e}"
    );

    let mut img = image_v2(meta.as_bytes(), b"");
    img[..8].copy_from_slice(b"CAIRNSN9");
    std::fs::write(&path, img).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("not a cairn snapshot image"), "{e}");

    std::fs::write(&path, image_v2(&meta.as_bytes()[..20], b"")).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("snapshot meta"), "{e}");

    // The same data from a leader: refused, nothing changes.
    rt().block_on(async {
        let dir = dir_with("v2_snapshot.bin", "snapshot");
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        let before = state_of(&sm);
        let m: cluster::SnapshotMeta = serde_json::from_str(meta).unwrap();
        let e = sm
            .install_snapshot(&m, Box::new(std::io::Cursor::new(data.clone())))
            .await
            .expect_err("unknown version refused")
            .to_string();
        assert!(e.contains("received from the leader"), "{e}");
        assert_eq!(state_of(&sm), before);
        assert_eq!(
            std::fs::read(dir.path().join("snapshot")).unwrap(),
            std::fs::read(fixture("v2_snapshot.bin")).unwrap()
        );
    });
}

/// A log file with one record of `kind` and `payload` after the good fixture's records.
fn log_with(kind: u8, payload: &[u8]) -> TempDir {
    let dir = dir_with("v2_log.bin", "log");
    let mut raw = std::fs::read(dir.path().join("log")).unwrap();
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    raw.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    raw.extend_from_slice(&crc.to_le_bytes());
    raw.push(kind);
    raw.extend_from_slice(payload);
    std::fs::write(dir.path().join("log"), raw).unwrap();
    dir
}

fn log_err(dir: &Path) -> String {
    LogStore::open(dir)
        .map(|_| ())
        .expect_err("must not load")
        .to_string()
}

#[test]
fn unknown_or_bad_log_records_are_an_error_naming_the_offset() {
    let at = std::fs::metadata(fixture("v2_log.bin")).unwrap().len();
    let newer = {
        let mut p = (FORMAT_VERSION + 1).to_le_bytes().to_vec();
        p.extend_from_slice(b"{}");
        p
    };
    let cases: [(u8, &[u8], &str); 5] = [
        (6, &newer, "log entry is in format version 3"),
        (6, b"\x02\x00{\"log_id\":", "log entry (format 2, JSON)"),
        (6, b"\x02", "too short for a version"),
        (1, b"\x01\x01\x01\x01\x63", "format v1 (bincode)"),
        (9, b"", "record kind 9 unknown"),
    ];
    for (kind, payload, want) in cases {
        let e = log_err(log_with(kind, payload).path());
        assert!(e.contains(&format!("record at {at}")), "{e}");
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn peers_get_commands_in_the_versioned_form_and_refuse_what_they_cannot_read() {
    let (_, _, entries) = expected_log();
    let entries: Vec<Entry> = serde_json::from_value(entries).unwrap();
    for e in &entries {
        if let EntryPayload::Normal(cmd) = &e.payload {
            let b = transport::encode(&PeerRequest::Propose(cmd.clone()), 1 << 20).unwrap();
            match transport::decode::<PeerRequest>(&b, 1 << 20).unwrap() {
                PeerRequest::Propose(back) => assert_eq!(&back, cmd),
                other => panic!("decoded as {other:?}"),
            }
        }
    }
    // A newer peer's command with a field this binary does not know: refused by name.
    let json = br#"{"SetMemberState":{"id":2,"state":"Active","reason":"upgrade"}}"#;
    let mut blob = FORMAT_VERSION.to_le_bytes().to_vec();
    blob.extend_from_slice(json);
    let mut b = transport::encode(&PeerRequest::Propose(Command::Noop), 1 << 20).unwrap();
    b.truncate(1); // the variant tag of Propose
    b.extend_from_slice(&transport::encode(&blob, 1 << 20).unwrap());
    let e = transport::decode::<PeerRequest>(&b, 1 << 20)
        .expect_err("unknown field")
        .to_string();
    assert!(e.contains("unknown field `reason`"), "{e}");
    // A whole append-entries round trips; a flipped byte anywhere in one never panics.
    let req = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: None,
        entries: entries.clone(),
        leader_commit: None,
    };
    let b = transport::encode(&PeerRequest::AppendEntries(req), 1 << 20).unwrap();
    match transport::decode::<PeerRequest>(&b, 1 << 20).unwrap() {
        PeerRequest::AppendEntries(back) => assert_eq!(
            serde_json::to_value(&back.entries).unwrap(),
            serde_json::to_value(&entries).unwrap()
        ),
        other => panic!("decoded as {other:?}"),
    }
    let mut refused = 0;
    for i in 0..b.len() {
        let mut c = b.clone();
        c[i] ^= 0x21;
        refused += usize::from(transport::decode::<PeerRequest>(&c, 1 << 20).is_err());
    }
    assert!(
        refused > b.len() / 2,
        "most flips are refused: {refused}/{}",
        b.len()
    );
}
