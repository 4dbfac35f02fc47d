//! Format v1, frozen: the bincode layout the cluster crate wrote up to commit ff0dd6f (raft log
//! entry records of kind 1, snapshot images `CAIRNSN1`, snapshot data as bincode of
//! `(ClusterState, RequestLog)` or, older still, of the state alone).
//!
//! bincode is not self-describing: it can only be read with the exact types that wrote it. So
//! these are private copies of those types as they were, never to be edited (the fixtures in
//! tests/fixtures/v1_* pin them). Reading v1 is decode into these copies, then migrate into the
//! current types through JSON ([`super::migrate`]), which is the same additive rule that keeps
//! format 2 readable: a field the current types gained since is filled by its
//! `#[serde(default)]`, and a field or variant they dropped fails with its name.
//!
//! Must never: change a type below (that would silently misread every v1 byte on disk), or
//! recurse without a bound on bytes from disk or a peer.
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openraft::LogId;
use serde::{Deserialize, Deserializer, Serialize};

type NodeId = u64;

/// How deep `Once` may nest in a v1 command (bincode has no recursion limit of its own).
const MAX_NESTING: u32 = 16;

fn opts(limit: u64) -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(limit)
        .reject_trailing_bytes()
}

fn de<T: serde::de::DeserializeOwned>(b: &[u8], limit: u64) -> Result<T, String> {
    use bincode::Options;
    NESTING.with(|n| n.set(0));
    opts(limit).deserialize(b).map_err(|e| e.to_string())
}

/// Snapshot data in format v1: the state and request log, or (older) the state alone, which
/// fails to decode as the pair because it ends early.
pub(super) fn decode_state(
    b: &[u8],
    limit: u64,
) -> Result<(crate::ClusterState, crate::dedup::RequestLog), String> {
    let (state, requests) = match de::<(ClusterState, RequestLog)>(b, limit) {
        Ok((s, r)) => (s, Some(r)),
        Err(e) => match de::<ClusterState>(b, limit) {
            Ok(s) => (s, None),
            Err(_) => return Err(format!("format v1 (bincode): {e}")),
        },
    };
    let state = super::migrate(&state, "v1 cluster state")?;
    let requests = match requests {
        Some(r) => super::migrate(&r, "v1 request log")?,
        None => crate::dedup::RequestLog::default(),
    };
    Ok((state, requests))
}

/// A raft log entry in format v1 (the payload of a kind-1 log record).
pub(super) fn decode_entry(b: &[u8], limit: u64) -> Result<crate::types::Entry, String> {
    let e: Entry = de(b, limit).map_err(|e| format!("format v1 (bincode): {e}"))?;
    super::migrate(&e, "v1 log entry")
}

/// What a v1 binary makes of a command from the wire (for the mixed-version tests).
#[cfg(test)]
pub(super) fn decode_command(b: &[u8], limit: u64) -> Result<(), String> {
    de::<Command>(b, limit).map(drop)
}

thread_local! {
    static NESTING: Cell<u32> = const { Cell::new(0) };
}

/// `Once { cmd }` decoded with a depth bound, so a crafted chain of `Once` cannot overflow the
/// stack.
fn nested<'de, D: Deserializer<'de>>(d: D) -> Result<Box<Command>, D::Error> {
    let depth = NESTING.with(|n| n.get());
    if depth >= MAX_NESTING {
        return Err(serde::de::Error::custom(format!(
            "commands nested more than {MAX_NESTING} deep"
        )));
    }
    NESTING.with(|n| n.set(depth + 1));
    let r = Command::deserialize(d);
    NESTING.with(|n| n.set(depth));
    r.map(Box::new)
}

#[derive(Serialize, Deserialize)]
struct Entry {
    log_id: LogId<NodeId>,
    payload: Payload,
}

#[derive(Serialize, Deserialize)]
enum Payload {
    Blank,
    Normal(Command),
    Membership(Membership),
}

#[derive(Serialize, Deserialize)]
struct Membership {
    configs: Vec<BTreeSet<NodeId>>,
    nodes: BTreeMap<NodeId, Node>,
}

#[derive(Serialize, Deserialize)]
struct Node {
    addr: String,
    role: Role,
}

#[derive(Serialize, Deserialize)]
enum Role {
    Data,
    Witness,
}

#[derive(Serialize, Deserialize)]
struct Ca {
    cluster_id: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

#[derive(Serialize, Deserialize)]
struct RequestLog {
    results: BTreeMap<String, CommandResult>,
    order: VecDeque<String>,
}

#[derive(Serialize, Deserialize)]
enum MemberState {
    Joining,
    Active,
    Draining,
}

#[derive(Serialize, Deserialize)]
struct Member {
    id: NodeId,
    name: String,
    addr: String,
    join_addr: String,
    role: Role,
    state: MemberState,
}

#[derive(Serialize, Deserialize)]
enum DiskState {
    In,
    Draining,
    Out,
}

#[derive(Serialize, Deserialize)]
struct PlacementDisk {
    disk_id: String,
    weight: u64,
    state: DiskState,
}

#[derive(Serialize, Deserialize)]
struct PlacementMap {
    version: u64,
    nodes: BTreeMap<NodeId, Vec<PlacementDisk>>,
}

#[derive(Serialize, Deserialize)]
struct DiskDef {
    id: String,
    node: NodeId,
    device: String,
    size_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct VdiskDef {
    id: String,
    name: String,
    size_bytes: u64,
    parent_snapshot: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotDef {
    id: String,
    vdisk: String,
    name: String,
}

#[derive(Serialize, Deserialize)]
enum VmPower {
    Running,
    Stopped,
}

#[derive(Serialize, Deserialize)]
struct VmDef {
    id: String,
    name: String,
    vcpus: u32,
    memory_mib: u64,
    vdisks: Vec<String>,
    node: Option<NodeId>,
    power: VmPower,
}

#[derive(Serialize, Deserialize)]
struct UserDef {
    name: String,
    password_hash: String,
    role: String,
}

#[derive(Serialize, Deserialize)]
struct ScheduleDef {
    id: String,
    vdisk: String,
    every_secs: u64,
    keep: u32,
}

#[derive(Serialize, Deserialize)]
struct JoinTokenDef {
    expires_ms: u64,
    role: Role,
}

#[derive(Serialize, Deserialize)]
struct ClusterState {
    cluster_id: String,
    ca: Option<Ca>,
    members: BTreeMap<NodeId, Member>,
    next_node_id: NodeId,
    placement: PlacementMap,
    disks: BTreeMap<String, DiskDef>,
    vdisks: BTreeMap<String, VdiskDef>,
    snapshots: BTreeMap<String, SnapshotDef>,
    vms: BTreeMap<String, VmDef>,
    users: BTreeMap<String, UserDef>,
    schedules: BTreeMap<String, ScheduleDef>,
    join_tokens: BTreeMap<String, JoinTokenDef>,
    outdated: BTreeSet<(NodeId, NodeId)>,
    taken_over: BTreeMap<NodeId, u64>,
    vm_specs: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
enum Command {
    Noop,
    InitCluster {
        cluster_id: String,
        ca: Ca,
        first: Member,
    },
    IssueJoinToken {
        token_hash: String,
        expires_ms: u64,
        role: Role,
    },
    ConsumeJoinToken {
        token_hash: String,
        now_ms: u64,
        name: String,
        addr: String,
        join_addr: String,
    },
    SetMemberState {
        id: NodeId,
        state: MemberState,
    },
    RemoveMember {
        id: NodeId,
    },
    SetNodeDisks {
        node: NodeId,
        disks: Vec<PlacementDisk>,
    },
    PutDisk(DiskDef),
    RemoveDisk {
        id: String,
    },
    CreateVdisk(VdiskDef),
    DeleteVdisk {
        id: String,
    },
    CreateSnapshot(SnapshotDef),
    DeleteSnapshot {
        id: String,
    },
    CloneVdisk {
        snapshot: String,
        new: VdiskDef,
    },
    PutVm(VmDef),
    DeleteVm {
        id: String,
    },
    PutUser(UserDef),
    DeleteUser {
        name: String,
    },
    PutSchedule(ScheduleDef),
    DeleteSchedule {
        id: String,
    },
    Once {
        request: String,
        #[serde(deserialize_with = "nested")]
        cmd: Box<Command>,
    },
    MoveVdisks {
        from: NodeId,
        to: NodeId,
    },
    Outdate {
        owner: NodeId,
        holder: NodeId,
        epoch: u64,
    },
    ClearOutdated {
        owner: NodeId,
        holder: NodeId,
    },
    PutVmSpec {
        id: String,
        spec: String,
    },
}

#[derive(Serialize, Deserialize)]
enum CommandResult {
    Ok,
    NodeId(NodeId),
    PlacementVersion(u64),
    Rejected(String),
}
