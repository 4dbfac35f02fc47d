//! The openraft type configuration and the node description carried in raft membership.
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Command, CommandResult};

/// Raft node ids: allocated by the cluster, never reused.
pub type NodeId = u64;

/// What a member does. A witness votes (it gives a two-node cluster its third vote) but holds
/// no disks and runs no VMs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash, PartialOrd, Ord,
)]
pub enum Role {
    #[default]
    Data,
    Witness,
}

/// How raft reaches a node: its cluster RPC address (mutual TLS) and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CairnNode {
    /// `ip:port` of the node's cluster RPC listener.
    pub addr: String,
    pub role: Role,
}

impl std::fmt::Display for CairnNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:?})", self.addr, self.role)
    }
}

openraft::declare_raft_types!(
    /// Cairn's raft types: commands on the cluster state, file-backed snapshots read into memory.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = CairnNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, CairnNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, CairnNode>;

/// Builds an openraft storage error from anything printable.
pub(crate) fn sto_err(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

pub(crate) fn log_write_err(e: impl std::fmt::Display) -> StorageError {
    sto_err(openraft::ErrorSubject::Logs, openraft::ErrorVerb::Write, e)
}
