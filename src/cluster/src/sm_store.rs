//! The raft state machine: applies committed commands to [`ClusterState`], builds and installs
//! snapshots, and keeps the latest snapshot durable in one checksummed image on a [`Medium`]
//! (a file, or an area of the node's internal raft vdisk).
//!
//! The state itself lives in memory; after a restart it is the last snapshot plus openraft
//! re-applying committed log entries (the log store keeps the committed index). Snapshot image,
//! written with the medium's atomic replace (for a file: temp file, synced, renamed, directory
//! synced): `"CAIRNSN2" | u32 crc32c(body) | u64 body len | body`, body =
//! `u32 meta len | JSON(meta) | data`. The data (also what a leader sends in install-snapshot)
//! is versioned itself ([`crate::format`]: `"CAIRN-SD" | u16 version | JSON`). Images written
//! before ("CAIRNSN1": body = bincode(meta, data), data in format v1) still load; the next
//! snapshot is written in the current format.
//!
//! Must never: expose a half-applied batch to readers, or keep serving after a corrupt snapshot
//! file or one in an unknown format (that is an error at open naming the medium and what failed,
//! not a silent empty state or a panic).
// openraft's trait methods return its (large) StorageError; our helpers return it too.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftLogId, RaftSnapshotBuilder, Snapshot};
use serde::{Deserialize, Serialize};

use crate::dedup::RequestLog;
use crate::format;
use crate::medium::{FileMedium, Medium};
use crate::state::{ClusterState, Command, CommandResult};
use crate::types::{
    sto_err, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Image written by this binary.
const MAGIC: &[u8; 8] = b"CAIRNSN2";
/// Image written before the versioned format (still read).
const MAGIC_V1: &[u8; 8] = b"CAIRNSN1";
const HEADER_BYTES: usize = 20;
/// Snapshots bigger than this are refused (from disk or from a peer).
pub const MAX_SNAPSHOT_BYTES: u64 = 512 * 1024 * 1024;

/// The applied state, shared with readers.
#[derive(Debug, Default)]
pub struct Applied {
    pub state: ClusterState,
    /// Results of recent request-tagged commands (exactly-once retries).
    pub requests: RequestLog,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[derive(Debug)]
struct SnapshotSlot {
    current: Option<SnapshotFile>,
    seq: u64,
}

/// Read access to the applied cluster state.
#[derive(Debug, Clone)]
pub struct StateReader(Arc<RwLock<Applied>>);

impl StateReader {
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The state machine store.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    applied: Arc<RwLock<Applied>>,
    snap: Arc<std::sync::Mutex<SnapshotSlot>>,
    /// Where the snapshot is kept; one write at a time.
    medium: Arc<std::sync::Mutex<Box<dyn Medium>>>,
}

/// Snapshot data (the state and the request log) in any readable format.
fn de_state(b: &[u8]) -> Result<(ClusterState, RequestLog), String> {
    format::decode_state(b, MAX_SNAPSHOT_BYTES)
}

fn ser_state(state: &ClusterState, requests: &RequestLog) -> Result<Vec<u8>, StorageError> {
    format::encode_state(state, requests)
        .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))
}

/// Applies one command, at most once per request id.
fn apply_once(a: &mut Applied, cmd: &Command) -> CommandResult {
    match cmd {
        Command::Once { request, .. } => {
            if let Some(r) = a.requests.get(request) {
                return r.clone();
            }
            let r = a.state.apply(cmd);
            // A malformed tag was rejected without effect: nothing to remember.
            if request.len() <= crate::dedup::MAX_REQUEST_ID_BYTES && !request.is_empty() {
                a.requests.insert(request, r.clone());
            }
            r
        }
        _ => a.state.apply(cmd),
    }
}

impl StateMachineStore {
    /// Opens the state machine in `dir` (file `dir/snapshot`), loading the latest snapshot if
    /// there is one.
    pub fn open(dir: &Path) -> Result<StateMachineStore, crate::Error> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io("create state dir", e))?;
        StateMachineStore::open_on(Box::new(FileMedium::new(dir.join("snapshot"))))
    }

    /// Opens the state machine with its snapshot on `medium`, loading the latest snapshot if
    /// there is one.
    pub fn open_on(mut medium: Box<dyn Medium>) -> Result<StateMachineStore, crate::Error> {
        let mut applied = Applied::default();
        let mut current = None;
        let bytes = medium
            .read_all()
            .map_err(|e| crate::Error::io("read snapshot", e))?;
        if !bytes.is_empty() {
            let snap = parse_snapshot_file(&bytes)
                .map_err(|e| crate::Error::Corrupt(format!("{}: {e}", medium.describe())))?;
            (applied.state, applied.requests) = de_state(&snap.data).map_err(|e| {
                crate::Error::Corrupt(format!(
                    "{}: snapshot {}: {e}",
                    medium.describe(),
                    snap.meta.snapshot_id
                ))
            })?;
            applied.last_applied = snap.meta.last_log_id;
            applied.last_membership = snap.meta.last_membership.clone();
            current = Some(snap);
        }
        Ok(StateMachineStore {
            applied: Arc::new(RwLock::new(applied)),
            snap: Arc::new(std::sync::Mutex::new(SnapshotSlot { current, seq: 0 })),
            medium: Arc::new(std::sync::Mutex::new(medium)),
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader(self.applied.clone())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, snap: &SnapshotFile) -> Result<(), StorageError> {
        let sig = Some(snap.meta.signature());
        let out = snapshot_image(snap)
            .map_err(|e| sto_err(ErrorSubject::Snapshot(sig.clone()), ErrorVerb::Write, e))?;
        let mut medium = self.medium.lock().unwrap_or_else(|e| e.into_inner());
        medium
            .replace(&out)
            .map_err(|e| sto_err(ErrorSubject::Snapshot(sig), ErrorVerb::Write, e))
    }

    /// [`Self::persist`] on a blocking thread: writing and syncing a snapshot (up to
    /// [`MAX_SNAPSHOT_BYTES`]) must not hold up an async worker (raft, the API).
    async fn persist_off_runtime(&self, file: SnapshotFile) -> Result<SnapshotFile, StorageError> {
        let this = self.clone();
        let sig = Some(file.meta.signature());
        tokio::task::spawn_blocking(move || this.persist(&file).map(|()| file))
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(sig), ErrorVerb::Write, e))?
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, SnapshotSlot> {
        self.snap.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The image of a snapshot as kept on the medium (current format).
fn snapshot_image(snap: &SnapshotFile) -> Result<Vec<u8>, String> {
    let meta = serde_json::to_vec(&snap.meta).map_err(|e| format!("snapshot meta: {e}"))?;
    let meta_len = u32::try_from(meta.len()).map_err(|_| "snapshot meta too large")?;
    let mut body = meta_len.to_le_bytes().to_vec();
    body.extend_from_slice(&meta);
    body.extend_from_slice(&snap.data);
    if body.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(format!(
            "snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
            body.len()
        ));
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a snapshot image (current or v1). The data inside is checked when it is decoded.
fn parse_snapshot_file(bytes: &[u8]) -> Result<SnapshotFile, String> {
    let (Some(magic), Some(crc), Some(len), Some(body)) = (
        bytes.get(..8),
        bytes.get(8..12),
        bytes.get(12..HEADER_BYTES),
        bytes.get(HEADER_BYTES..),
    ) else {
        return Err(format!(
            "{} bytes: too short for a snapshot header",
            bytes.len()
        ));
    };
    if magic != MAGIC && magic != MAGIC_V1 {
        return Err(format!(
            "not a cairn snapshot image (magic {:?}; this binary reads CAIRNSN1 and CAIRNSN2)",
            String::from_utf8_lossy(magic)
        ));
    }
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(len);
    let len = u64::from_le_bytes(len8);
    if body.len() as u64 != len || len > MAX_SNAPSHOT_BYTES {
        return Err(format!(
            "snapshot body is {} bytes, header says {len} (limit {MAX_SNAPSHOT_BYTES})",
            body.len()
        ));
    }
    if crc32c::crc32c(body) != crc {
        return Err("snapshot checksum mismatch".into());
    }
    if magic == MAGIC_V1 {
        use bincode::Options;
        return bincode::DefaultOptions::new()
            .with_limit(MAX_SNAPSHOT_BYTES)
            .reject_trailing_bytes()
            .deserialize(body)
            .map_err(|e| format!("snapshot image v1 (bincode meta): {e}"));
    }
    let (Some(meta_len), Some(rest)) = (body.get(..4), body.get(4..)) else {
        return Err("snapshot body too short for its meta length".into());
    };
    let meta_len = u32::from_le_bytes([meta_len[0], meta_len[1], meta_len[2], meta_len[3]]);
    let Some((meta, data)) = rest.split_at_checked(meta_len as usize) else {
        return Err(format!(
            "snapshot meta length {meta_len} runs past the body ({} bytes)",
            rest.len()
        ));
    };
    let meta = serde_json::from_slice(meta).map_err(|e| format!("snapshot meta (JSON): {e}"))?;
    Ok(SnapshotFile {
        meta,
        data: data.to_vec(),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_log_id, last_membership) = {
            let a = self.applied.read().unwrap_or_else(|e| e.into_inner());
            (
                ser_state(&a.state, &a.requests)?,
                a.last_applied,
                a.last_membership.clone(),
            )
        };
        let seq = {
            let mut s = self.slot();
            s.seq += 1;
            s.seq
        };
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            data: data.clone(),
        };
        let file = self.persist_off_runtime(file).await?;
        self.slot().current = Some(file);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.applied.read().unwrap_or_else(|e| e.into_inner());
        Ok((a.last_applied, a.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut a = self.write();
        let mut out = Vec::new();
        for e in entries {
            let log_id = *e.get_log_id();
            a.last_applied = Some(log_id);
            let r = match e.payload {
                EntryPayload::Blank => CommandResult::Ok,
                EntryPayload::Normal(cmd) => apply_once(&mut a, &cmd),
                EntryPayload::Membership(m) => {
                    a.last_membership = StoredMembership::new(Some(log_id), m);
                    CommandResult::Ok
                }
            };
            out.push(r);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let (state, requests) = de_state(&data).map_err(|e| {
            sto_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                format!(
                    "snapshot {} received from the leader: {e}",
                    meta.snapshot_id
                ),
            )
        })?;
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        // Durable first: once applied state moves past the log, the snapshot must survive.
        let file = self.persist_off_runtime(file).await?;
        {
            let mut a = self.write();
            a.state = state;
            a.requests = requests;
            a.last_applied = meta.last_log_id;
            a.last_membership = meta.last_membership.clone();
        }
        self.slot().current = Some(file);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let s = self.slot();
        Ok(s.current.as_ref().map(|f| Snapshot {
            meta: f.meta.clone(),
            snapshot: Box::new(Cursor::new(f.data.clone())),
        }))
    }
}
