//! The cluster state machine's data: members, the versioned placement map, disk / virtual disk /
//! snapshot / VM definitions, users, schedules and join tokens, and the commands that change it.
//!
//! `apply` is deterministic: everything time-dependent (token expiry) comes inside the command,
//! stamped by the proposer. A command that does not fit the current state is *rejected* with a
//! result, not an error: it still consumes its log entry, and every replica rejects it alike.
//! Must never: read a clock, randomness or anything outside the command and the state.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use transport::ClusterCa;

use crate::types::{NodeId, Role};

/// Bounds on what one command may carry, so a bad proposer cannot bloat the state.
pub const MAX_NAME_BYTES: usize = 256;
pub const MAX_DISKS_PER_NODE: usize = 256;
pub const MAX_OBJECTS: usize = 100_000;
/// Largest node-side VM definition ([`Command::PutVmSpec`]).
pub const MAX_VM_SPEC_BYTES: usize = 64 << 10;
/// Longest isolation lease a cluster may be created with ([`ClusterState::lease_ms`]).
pub const MAX_LEASE_MS: u64 = 120_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Admitted with a token; not yet a voter.
    Joining,
    Active,
    /// Being removed: its data is moved away first (by the engine), then it leaves.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    /// Cluster RPC address (mutual TLS).
    pub addr: String,
    /// Join endpoint address (server-only TLS, token-authenticated).
    pub join_addr: String,
    pub role: Role,
    pub state: MemberState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskState {
    /// Takes new data.
    In,
    /// Data is being moved off; takes no new data.
    Draining,
    /// Holds nothing and takes nothing (failed or removed).
    Out,
}

/// One disk in the placement map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementDisk {
    pub disk_id: String,
    /// Relative share of new data; normally the usable capacity in bytes.
    pub weight: u64,
    pub state: DiskState,
}

/// The versioned placement map the engine consumes. Nodes are the first failure domain: the
/// two replicas of a chunk always go to two different nodes here, and within a node to its
/// disks by weight. Witness nodes never appear. Every change bumps `version`; the engine fences
/// replica I/O by it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementMap {
    pub version: u64,
    pub nodes: BTreeMap<NodeId, Vec<PlacementDisk>>,
}

impl PlacementMap {
    /// Nodes that can take new data (at least one disk `In` with non-zero weight).
    pub fn writable_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().filter_map(|(id, disks)| {
            disks
                .iter()
                .any(|d| d.state == DiskState::In && d.weight > 0)
                .then_some(*id)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDef {
    pub id: String,
    pub node: NodeId,
    /// Stable device identity (serial / by-id path).
    pub device: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VdiskDef {
    pub id: String,
    pub name: String,
    pub size_bytes: u64,
    /// Snapshot this disk was cloned from, if any.
    pub parent_snapshot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDef {
    pub id: String,
    pub vdisk: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmPower {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDef {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub vdisks: Vec<String>,
    /// Node the VM should run on (`None`: the scheduler picks a data node).
    pub node: Option<NodeId>,
    pub power: VmPower,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDef {
    pub name: String,
    /// PHC-format password hash (hashing happens before proposing; never a plain password).
    pub password_hash: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDef {
    pub id: String,
    pub vdisk: String,
    pub every_secs: u64,
    pub keep: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenDef {
    pub expires_ms: u64,
    pub role: Role,
}

/// Everything the cluster agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterState {
    pub cluster_id: String,
    /// The cluster CA including its key: members need it to issue certificates to joiners.
    pub ca: Option<ClusterCa>,
    pub members: BTreeMap<NodeId, Member>,
    pub next_node_id: NodeId,
    pub placement: PlacementMap,
    pub disks: BTreeMap<String, DiskDef>,
    pub vdisks: BTreeMap<String, VdiskDef>,
    pub snapshots: BTreeMap<String, SnapshotDef>,
    pub vms: BTreeMap<String, VmDef>,
    pub users: BTreeMap<String, UserDef>,
    pub schedules: BTreeMap<String, ScheduleDef>,
    /// SHA-256 (hex) of each outstanding join token's secret.
    pub join_tokens: BTreeMap<String, JoinTokenDef>,
    /// (owner, holder): the owner acknowledged writes its replicas on the holder did not get
    /// (the holder was unreachable), so the holder's copies are outdated until resynced and it
    /// must not take the owner's virtual disks over. Committed before the first such write.
    pub outdated: std::collections::BTreeSet<(NodeId, NodeId)>,
    /// Members whose virtual disks were taken over, with the takeover's epoch: an incarnation
    /// of that member with an older write epoch may no longer write alone.
    pub taken_over: BTreeMap<NodeId, u64>,
    /// Each VM's full definition as its node keeps it (kernel, command line, NICs: the node's
    /// own format, opaque here), by VM id, so another node can restart the VM after taking its
    /// disks over. Removed with the VM.
    pub vm_specs: BTreeMap<String, String>,
    /// The isolation lease length in milliseconds, one value for every member (the node's
    /// lease module explains why it must be): set when the cluster is created. 0: a cluster
    /// created before this field existed (members fall back to their own setting).
    #[serde(default)]
    pub lease_ms: u64,
    /// Virtual disks (by id) whose last move was a planned hand-over, with the member that
    /// handed each over ([`Command::MoveVdisk`] with `record`, [`Command::MoveVm`]): that
    /// member stopped serving the disk itself, so finding its old copy assigned elsewhere is
    /// no sign that it was cut off and taken over (its isolation lease stays valid, also after
    /// a restart). Follows the disk when a takeover moves it on; dropped when the disk comes
    /// back to that member or is deleted. Never names a disk's current owner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handed_over: BTreeMap<String, NodeId>,
    /// VMs (by id) whose last move was a planned one ([`Command::MoveVm`] with `record`), with
    /// the member that handed each over: the receiving node reports it as received by a move,
    /// not as taken over from a lost node. Dropped when a takeover moves the VM on, when its
    /// record is put on another node, and with the VM. Never names the VM's current node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vms_handed_over: BTreeMap<String, NodeId>,
}

mod command;
pub use command::{Command, CommandResult};

fn reject(msg: impl Into<String>) -> CommandResult {
    CommandResult::Rejected(msg.into())
}

fn check_name(name: &str) -> Result<(), CommandResult> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(reject(format!("name must be 1..={MAX_NAME_BYTES} bytes")));
    }
    Ok(())
}

fn check_room<K, V>(map: &BTreeMap<K, V>) -> Result<(), CommandResult> {
    if map.len() >= MAX_OBJECTS {
        return Err(reject("too many objects"));
    }
    Ok(())
}

impl ClusterState {
    /// Applies one command. Never panics on any input; a rejected command changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match self.apply_inner(cmd) {
            Ok(r) => r,
            Err(r) => r,
        }
    }

    fn apply_inner(&mut self, cmd: &Command) -> Result<CommandResult, CommandResult> {
        use Command::*;
        match cmd {
            Noop => {}
            InitCluster {
                cluster_id,
                ca,
                first,
                lease_ms,
            } => {
                if self.ca.is_some() {
                    return Err(reject("cluster already initialised"));
                }
                check_name(cluster_id)?;
                self.cluster_id = cluster_id.clone();
                self.ca = Some(ca.clone());
                self.members.insert(first.id, first.clone());
                self.next_node_id = first.id.saturating_add(1).max(self.next_node_id);
                self.lease_ms = (*lease_ms).min(MAX_LEASE_MS);
            }
            IssueJoinToken {
                token_hash,
                expires_ms,
                role,
            } => {
                check_room(&self.join_tokens)?;
                self.join_tokens.insert(
                    token_hash.clone(),
                    JoinTokenDef {
                        expires_ms: *expires_ms,
                        role: *role,
                    },
                );
            }
            ConsumeJoinToken {
                token_hash,
                now_ms,
                name,
                addr,
                join_addr,
            } => {
                check_name(name)?;
                // Expired tokens are dropped as a side effect of any consume attempt.
                self.join_tokens.retain(|_, t| t.expires_ms > *now_ms);
                let token = self
                    .join_tokens
                    .remove(token_hash)
                    .ok_or_else(|| reject("join token unknown, used or expired"))?;
                let id = self.next_node_id.max(1);
                self.next_node_id = id + 1;
                self.members.insert(
                    id,
                    Member {
                        id,
                        name: name.clone(),
                        addr: addr.clone(),
                        join_addr: join_addr.clone(),
                        role: token.role,
                        state: MemberState::Joining,
                    },
                );
                return Ok(CommandResult::NodeId(id));
            }
            SetMemberAddr {
                id,
                addr,
                join_addr,
            } => {
                if [addr, join_addr]
                    .iter()
                    .any(|a| a.parse::<std::net::SocketAddr>().is_err())
                {
                    return Err(reject("a member address must be ip:port"));
                }
                let m = self
                    .members
                    .get_mut(id)
                    .ok_or_else(|| reject("no such member"))?;
                m.addr = addr.clone();
                m.join_addr = join_addr.clone();
            }
            SetMemberState { id, state } => {
                let m = self
                    .members
                    .get_mut(id)
                    .ok_or_else(|| reject("no such member"))?;
                m.state = *state;
            }
            RemoveMember { id } => {
                self.members
                    .remove(id)
                    .ok_or_else(|| reject("no such member"))?;
                if self.placement.nodes.remove(id).is_some() {
                    self.placement.version += 1;
                }
                self.disks.retain(|_, d| d.node != *id);
            }
            SetNodeDisks { node, disks } => {
                let m = self
                    .members
                    .get(node)
                    .ok_or_else(|| reject("no such member"))?;
                if m.role == Role::Witness {
                    return Err(reject("a witness holds no disks"));
                }
                if disks.len() > MAX_DISKS_PER_NODE {
                    return Err(reject("too many disks"));
                }
                self.placement.nodes.insert(*node, disks.clone());
                self.placement.version += 1;
                return Ok(CommandResult::PlacementVersion(self.placement.version));
            }
            PutDisk(d) => {
                check_name(&d.id)?;
                let m = self
                    .members
                    .get(&d.node)
                    .ok_or_else(|| reject("no such member"))?;
                if m.role == Role::Witness {
                    return Err(reject("a witness holds no disks"));
                }
                check_room(&self.disks)?;
                self.disks.insert(d.id.clone(), d.clone());
            }
            RemoveDisk { id } => {
                self.disks
                    .remove(id)
                    .ok_or_else(|| reject("no such disk"))?;
            }
            CreateVdisk(v) => {
                check_name(&v.id)?;
                check_name(&v.name)?;
                check_room(&self.vdisks)?;
                if self.vdisks.contains_key(&v.id) || self.vdisks.values().any(|x| x.name == v.name)
                {
                    return Err(reject("virtual disk exists"));
                }
                self.vdisks.insert(v.id.clone(), v.clone());
            }
            DeleteVdisk { id } => {
                if self.snapshots.values().any(|s| &s.vdisk == id) {
                    return Err(reject("virtual disk has snapshots"));
                }
                if self.vms.values().any(|vm| vm.vdisks.contains(id)) {
                    return Err(reject("virtual disk is attached to a VM"));
                }
                self.vdisks
                    .remove(id)
                    .ok_or_else(|| reject("no such virtual disk"))?;
                self.handed_over.remove(id);
            }
            CreateSnapshot(s) => {
                check_name(&s.id)?;
                check_name(&s.name)?;
                check_room(&self.snapshots)?;
                if !self.vdisks.contains_key(&s.vdisk) {
                    return Err(reject("no such virtual disk"));
                }
                if self.snapshots.contains_key(&s.id) {
                    return Err(reject("snapshot exists"));
                }
                self.snapshots.insert(s.id.clone(), s.clone());
            }
            DeleteSnapshot { id } => {
                self.snapshots
                    .remove(id)
                    .ok_or_else(|| reject("no such snapshot"))?;
            }
            CloneVdisk { snapshot, new } => {
                if !self.snapshots.contains_key(snapshot) {
                    return Err(reject("no such snapshot"));
                }
                let mut v = new.clone();
                v.parent_snapshot = Some(snapshot.clone());
                return self.apply_inner(&CreateVdisk(v));
            }
            PutVm(vm) => {
                check_name(&vm.id)?;
                check_name(&vm.name)?;
                if !self.vms.contains_key(&vm.id) {
                    check_room(&self.vms)?;
                }
                if let Some(missing) = vm.vdisks.iter().find(|d| !self.vdisks.contains_key(*d)) {
                    return Err(reject(format!("no such virtual disk {missing}")));
                }
                if let Some(n) = vm.node {
                    match self.members.get(&n) {
                        Some(m) if m.role == Role::Data => {}
                        _ => return Err(reject("VMs run only on data nodes")),
                    }
                }
                if self.vms.get(&vm.id).map(|v| v.node) != Some(vm.node) {
                    self.vms_handed_over.remove(&vm.id);
                }
                self.vms.insert(vm.id.clone(), vm.clone());
            }
            DeleteVm { id } => {
                self.vms.remove(id).ok_or_else(|| reject("no such VM"))?;
                self.vm_specs.remove(id);
                self.vms_handed_over.remove(id);
            }
            PutVmSpec { id, spec } => {
                if !self.vms.contains_key(id) {
                    return Err(reject("no such VM"));
                }
                if spec.len() > MAX_VM_SPEC_BYTES {
                    return Err(reject(format!(
                        "VM definition is over {MAX_VM_SPEC_BYTES} bytes"
                    )));
                }
                self.vm_specs.insert(id.clone(), spec.clone());
            }
            PutUser(u) => {
                check_name(&u.name)?;
                if !self.users.contains_key(&u.name) {
                    check_room(&self.users)?;
                }
                self.users.insert(u.name.clone(), u.clone());
            }
            DeleteUser { name } => {
                self.users
                    .remove(name)
                    .ok_or_else(|| reject("no such user"))?;
            }
            PutSchedule(s) => {
                check_name(&s.id)?;
                if !self.vdisks.contains_key(&s.vdisk) {
                    return Err(reject("no such virtual disk"));
                }
                if s.every_secs == 0 {
                    return Err(reject("schedule interval must be positive"));
                }
                if !self.schedules.contains_key(&s.id) {
                    check_room(&self.schedules)?;
                }
                self.schedules.insert(s.id.clone(), s.clone());
            }
            DeleteSchedule { id } => {
                self.schedules
                    .remove(id)
                    .ok_or_else(|| reject("no such schedule"))?;
            }
            MoveVdisks { from, to } => return self.move_vdisks(*from, *to),
            TakeOver { from, to } => return self.take_over(*from, *to),
            MoveVdisk {
                id,
                to,
                record,
                unused_outdated,
            } => return self.move_vdisk(id, *to, *record, unused_outdated),
            MoveVm {
                id,
                to,
                record,
                unused_outdated,
            } => return self.move_vm(id, *to, *record, unused_outdated),
            Outdate {
                owner,
                holder,
                epoch,
            } => {
                if self.taken_over.get(owner).is_some_and(|t| *t >= *epoch) {
                    return Err(reject(
                        "this member's virtual disks were taken over; it may not write alone",
                    ));
                }
                if !self.members.contains_key(owner) || !self.members.contains_key(holder) {
                    return Err(reject("no such member"));
                }
                self.outdated.insert((*owner, *holder));
            }
            ClearOutdated { owner, holder } => {
                self.outdated.remove(&(*owner, *holder));
            }
            // Deduplication is the state machine's (it keeps the request log); here the
            // command simply applies. Tags do not nest.
            Once { request, cmd } => {
                if request.is_empty() || request.len() > crate::dedup::MAX_REQUEST_ID_BYTES {
                    return Err(reject("bad request id"));
                }
                if let Once { .. } = **cmd {
                    return Err(reject("nested request id"));
                }
                return self.apply_inner(cmd);
            }
        }
        Ok(CommandResult::Ok)
    }
}

mod takeover;
pub use takeover::vdisk_owner;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn member(id: NodeId, role: Role) -> Member {
        Member {
            id,
            name: format!("n{id}"),
            addr: "127.0.0.1:1".into(),
            join_addr: "127.0.0.1:2".into(),
            role,
            state: MemberState::Active,
        }
    }

    pub(crate) fn vdisk(id: &str) -> VdiskDef {
        VdiskDef {
            id: id.into(),
            name: id.into(),
            size_bytes: 1 << 30,
            parent_snapshot: None,
        }
    }

    pub(crate) fn init() -> ClusterState {
        let mut s = ClusterState::default();
        let ca = ClusterCa::generate("c").unwrap();
        let r = s.apply(&Command::InitCluster {
            cluster_id: "c".into(),
            ca,
            first: member(1, Role::Data),
            lease_ms: 3000,
        });
        assert_eq!(r, CommandResult::Ok);
        s
    }

    #[test]
    fn the_lease_length_is_set_once_at_creation_and_defaults_to_unset() {
        let mut s = init();
        assert_eq!(s.lease_ms, 3000);
        // A second InitCluster (even with another length) changes nothing.
        let again = s.apply(&Command::InitCluster {
            cluster_id: "d".into(),
            ca: ClusterCa::generate("d").unwrap(),
            first: member(2, Role::Data),
            lease_ms: 9000,
        });
        assert!(matches!(again, CommandResult::Rejected(_)), "{again:?}");
        assert_eq!(s.lease_ms, 3000);
        // A command and a state from a binary without the field load as "not set".
        let mut v = serde_json::to_value(&s).unwrap();
        v.as_object_mut().unwrap().remove("lease_ms");
        let old: ClusterState = serde_json::from_value(v).unwrap();
        assert_eq!(old.lease_ms, 0);
        // Bounded: a proposer cannot set an absurd lease.
        let mut t = ClusterState::default();
        let r = t.apply(&Command::InitCluster {
            cluster_id: "e".into(),
            ca: ClusterCa::generate("e").unwrap(),
            first: member(1, Role::Data),
            lease_ms: u64::MAX,
        });
        assert_eq!(r, CommandResult::Ok);
        assert_eq!(t.lease_ms, MAX_LEASE_MS);
    }

    #[test]
    fn join_token_is_single_use_and_expires() {
        let mut s = init();
        s.apply(&Command::IssueJoinToken {
            token_hash: "h".into(),
            expires_ms: 1000,
            role: Role::Witness,
        });
        let consume = |now_ms| Command::ConsumeJoinToken {
            token_hash: "h".into(),
            now_ms,
            name: "w".into(),
            addr: "a".into(),
            join_addr: "j".into(),
        };
        assert_eq!(s.apply(&consume(10)), CommandResult::NodeId(2));
        assert_eq!(s.members[&2].role, Role::Witness);
        assert!(
            matches!(s.apply(&consume(10)), CommandResult::Rejected(_)),
            "second use"
        );
        s.apply(&Command::IssueJoinToken {
            token_hash: "h".into(),
            expires_ms: 1000,
            role: Role::Data,
        });
        assert!(
            matches!(s.apply(&consume(1000)), CommandResult::Rejected(_)),
            "expired"
        );
        assert!(s.join_tokens.is_empty());
    }

    #[test]
    fn witness_holds_no_disks_and_runs_no_vms() {
        let mut s = init();
        s.members.insert(2, member(2, Role::Witness));
        let disks = vec![PlacementDisk {
            disk_id: "d".into(),
            weight: 1,
            state: DiskState::In,
        }];
        assert!(matches!(
            s.apply(&Command::SetNodeDisks {
                node: 2,
                disks: disks.clone()
            }),
            CommandResult::Rejected(_)
        ));
        assert_eq!(
            s.apply(&Command::SetNodeDisks { node: 1, disks }),
            CommandResult::PlacementVersion(1)
        );
        assert_eq!(s.placement.writable_nodes().collect::<Vec<_>>(), vec![1]);
        s.apply(&Command::CreateVdisk(vdisk("v")));
        let vm = VmDef {
            id: "vm".into(),
            name: "vm".into(),
            vcpus: 1,
            memory_mib: 64,
            vdisks: vec!["v".into()],
            node: Some(2),
            power: VmPower::Stopped,
        };
        assert!(matches!(
            s.apply(&Command::PutVm(vm.clone())),
            CommandResult::Rejected(_)
        ));
        assert_eq!(
            s.apply(&Command::PutVm(VmDef {
                node: Some(1),
                ..vm
            })),
            CommandResult::Ok
        );
        assert!(matches!(
            s.apply(&Command::DeleteVdisk { id: "v".into() }),
            CommandResult::Rejected(_)
        ));
    }

    #[test]
    fn vdisk_snapshot_clone_lifecycle() {
        let mut s = init();
        assert_eq!(
            s.apply(&Command::CreateVdisk(vdisk("a"))),
            CommandResult::Ok
        );
        assert!(matches!(
            s.apply(&Command::CreateVdisk(vdisk("a"))),
            CommandResult::Rejected(_)
        ));
        let snap = SnapshotDef {
            id: "s".into(),
            vdisk: "a".into(),
            name: "s".into(),
        };
        assert_eq!(s.apply(&Command::CreateSnapshot(snap)), CommandResult::Ok);
        assert_eq!(
            s.apply(&Command::CloneVdisk {
                snapshot: "s".into(),
                new: vdisk("b")
            }),
            CommandResult::Ok
        );
        assert_eq!(s.vdisks["b"].parent_snapshot.as_deref(), Some("s"));
        assert!(matches!(
            s.apply(&Command::DeleteVdisk { id: "a".into() }),
            CommandResult::Rejected(_)
        ));
        let before = s.clone();
        assert!(matches!(
            s.apply(&Command::CreateVdisk(vdisk(""))),
            CommandResult::Rejected(_)
        ));
        assert_eq!(s, before, "a rejected command changes nothing");
    }
}
