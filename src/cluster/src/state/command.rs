//! The commands that change the cluster state ([`Command`]) and what applying one produced
//! ([`CommandResult`]); `super::ClusterState::apply` applies them.
//!
//! Their encoding is the log's and the peer protocol's (`crate::format`): every change here
//! follows its compatibility rule. Must never: change what an existing command means (give new
//! behaviour a new command, or a new field whose default means the old behaviour).
use serde::{Deserialize, Serialize};
use transport::ClusterCa;

#[cfg(doc)]
use super::{ClusterState, MAX_VM_SPEC_BYTES};
use super::{
    DiskDef, Member, MemberState, PlacementDisk, ScheduleDef, SnapshotDef, UserDef, VdiskDef, VmDef,
};
use crate::types::{NodeId, Role};

/// A change to the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// On disk and on the wire through crate::format (versioned; its compatibility rule applies).
#[serde(remote = "Self", deny_unknown_fields)]
pub enum Command {
    Noop,
    InitCluster {
        cluster_id: String,
        ca: ClusterCa,
        first: Member,
        /// The cluster-wide isolation lease length ([`ClusterState::lease_ms`]); 0: not set.
        #[serde(default)]
        lease_ms: u64,
    },
    IssueJoinToken {
        token_hash: String,
        expires_ms: u64,
        role: Role,
    },
    /// Consumes a token (single use, checked against `now_ms`) and admits a new member with a
    /// fresh node id.
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
    /// Replaces a node's disk list in the placement map (bumps the version).
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
    /// `cmd` tagged with a request id: the state machine applies it at most once per id (see
    /// [`crate::dedup`]), so the proposer may retry it after an unknown outcome. Kept last so
    /// the log encoding of the older commands does not change.
    Once {
        request: String,
        cmd: Box<Command>,
    },
    /// Takeover: every virtual disk `from` owns (id `"{from}/{name}"`) becomes `to`'s (id
    /// `"{to}/{name}"`), with its snapshot records, and the VMs on `from` that use them are
    /// assigned to `to`. Bumps the placement version and returns it: the takeover's fencing
    /// epoch. Rejected if `from` owns nothing or `to` is not a data member. After `Once` so the
    /// encoding of the older commands does not change.
    MoveVdisks {
        from: NodeId,
        to: NodeId,
    },
    /// `owner` (writing with `epoch`) is about to acknowledge writes without its replicas on
    /// `holder` (see [`ClusterState::outdated`]). Rejected if `owner` was taken over at or after
    /// `epoch`: that incarnation must stop writing.
    Outdate {
        owner: NodeId,
        holder: NodeId,
        epoch: u64,
    },
    /// The holder's copies of `owner`'s virtual disks are in sync again.
    ClearOutdated {
        owner: NodeId,
        holder: NodeId,
    },
    /// VM `id`'s node-side definition (see [`ClusterState::vm_specs`]); the VM must exist, the
    /// spec is at most [`MAX_VM_SPEC_BYTES`]. Last, so the older commands' encoding stays.
    PutVmSpec {
        id: String,
        spec: String,
    },
    /// Takeover with three or more data members: as [`Command::MoveVdisks`], but rejected
    /// while `from` has an outdated holder (any, not only `to`): the new owner gathers the
    /// chunks from every surviving holder, so one outdated copy would lose writes `from`
    /// acknowledged. Last, so the older commands' encoding stays.
    TakeOver {
        from: NodeId,
        to: NodeId,
    },
    /// Member `id` is reachable at new addresses (its host's address changed; it announced
    /// them itself, see `readdress`). Both must be `ip:port`.
    SetMemberAddr {
        id: NodeId,
        addr: String,
        join_addr: String,
    },
    /// A planned move of one virtual disk (id `"{owner}/{name}"`) to data member `to`, by its
    /// live owner (`cairn vdisk takeover`): re-keyed `"{to}/{name}"` with its snapshot records;
    /// VMs keep their node. Bumps the placement version and returns it. Rejected if the disk
    /// is unknown, `to` is not another data member, or a holder of the owner is outdated that
    /// is not in `unused_outdated`.
    MoveVdisk {
        id: String,
        to: NodeId,
        /// Record the hand-over in [`ClusterState::handed_over`]. False in entries written
        /// before the field existed (which did not record it); every new move sets it.
        #[serde(default)]
        record: bool,
        /// Members recorded outdated for the owner that, as the owner found after it stopped
        /// writing the moved disks, hold no chunk of them: the target never gathers from them,
        /// so they do not hold the move back. Empty (and not written) in entries from before
        /// the field existed, and in every move while no holder is outdated: then any outdated
        /// holder refuses the move, as it always did.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unused_outdated: Vec<NodeId>,
    },
    /// A planned move of stopped VM `id` with its virtual disks to data member `to`, by the
    /// VM's node (`cairn vm move`): each of its disks that node owns is re-keyed as in
    /// [`Command::MoveVdisk`] (recorded as handed over), disks already on `to` stay, and the
    /// VM is assigned to `to`. Bumps the placement version and returns it. Rejected, changing
    /// nothing, if the VM is unknown, has no node, is recorded as running, or uses a disk of
    /// a third member; if `to` is not another data member; or if a holder of the VM's node is
    /// outdated that is not in `unused_outdated`.
    MoveVm {
        id: String,
        to: NodeId,
        /// Record the VM's hand-over in [`ClusterState::vms_handed_over`]. False in entries
        /// written before the field existed (which did not record it); every new move sets it.
        #[serde(default)]
        record: bool,
        /// As in [`Command::MoveVdisk`]: outdated members holding no chunk of the moved disks.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unused_outdated: Vec<NodeId>,
    },
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(remote = "Self")]
pub enum CommandResult {
    #[default]
    Ok,
    /// A new member's id.
    NodeId(NodeId),
    /// The placement map's new version.
    PlacementVersion(u64),
    /// The command did not fit the state; nothing changed.
    Rejected(String),
}
