//! Takeover commands on the cluster state: moving a lost member's virtual disks to another
//! data member (`Command::MoveVdisks`), with the "outdated holder" rule that keeps a takeover
//! from losing writes the owner acknowledged without that holder (`Command::Outdate`).
//! Must never: change anything when a command is rejected.

use std::collections::BTreeMap;

use super::VmPower;
use super::{reject, ClusterState, CommandResult};
use crate::types::{NodeId, Role};

/// The member that owns virtual disk `id` (`"{owner}/{name}"`).
pub fn vdisk_owner(id: &str) -> Option<NodeId> {
    id.split_once('/').and_then(|(n, _)| n.parse().ok())
}

impl ClusterState {
    pub(super) fn move_vdisks(
        &mut self,
        from: NodeId,
        to: NodeId,
    ) -> Result<CommandResult, CommandResult> {
        match self.members.get(&to) {
            Some(m) if m.role == Role::Data && to != from => {}
            _ => return Err(reject("takeover target must be another data member")),
        }
        let moving: Vec<String> = self
            .vdisks
            .keys()
            .filter(|id| vdisk_owner(id) == Some(from))
            .cloned()
            .collect();
        if moving.is_empty() {
            return Err(reject("the member owns no virtual disks"));
        }
        if self.outdated.contains(&(from, to)) {
            return Err(reject(
                "the target's copies are outdated (the owner wrote without them); taking over \
                 would lose acknowledged writes",
            ));
        }
        self.rehome(&moving, from, to, true)?;
        self.taken_over.insert(from, self.placement.version);
        self.outdated.retain(|(o, _)| *o != from);
        Ok(CommandResult::PlacementVersion(self.placement.version))
    }

    /// `Command::MoveVdisk`: one virtual disk handed over by its live owner (a planned move,
    /// `cairn vdisk takeover`). The owner keeps its other disks and its write epoch (no
    /// `taken_over` entry); VMs keep their node (the owner refuses a move under a VM unless
    /// forced). Rejected while a holder of the owner is outdated, unless the owner found it
    /// holds none of the disk's chunks (`unused_outdated`, see [`Self::check_planned_target`]).
    /// `record`: the hand-over is recorded in `handed_over` (every move but those logged
    /// before the field existed).
    pub(super) fn move_vdisk(
        &mut self,
        id: &str,
        to: NodeId,
        record: bool,
        unused_outdated: &[NodeId],
    ) -> Result<CommandResult, CommandResult> {
        let Some(from) = vdisk_owner(id).filter(|_| self.vdisks.contains_key(id)) else {
            return Err(reject(format!("no virtual disk {id}")));
        };
        self.check_planned_target(from, to, unused_outdated)?;
        let moving = [id.to_string()];
        self.rehome(&moving, from, to, false)?;
        if record {
            self.record_handed(&moving, from, to);
        }
        Ok(CommandResult::PlacementVersion(self.placement.version))
    }

    /// `Command::MoveVm`: stopped VM `id` and every disk of it its node owns, handed over to
    /// `to` at once (a planned move, `cairn vm move`). `record`: the VM's hand-over is recorded
    /// in `vms_handed_over` (every move but those logged before the field existed).
    pub(super) fn move_vm(
        &mut self,
        id: &str,
        to: NodeId,
        record: bool,
        unused_outdated: &[NodeId],
    ) -> Result<CommandResult, CommandResult> {
        let Some(vm) = self.vms.get(id) else {
            return Err(reject(format!("no VM {id}")));
        };
        let Some(from) = vm.node else {
            return Err(reject(format!("VM {id} is assigned to no node")));
        };
        if vm.power == VmPower::Running {
            return Err(reject(format!(
                "VM {id} is recorded as running: stop it first"
            )));
        }
        self.check_planned_target(from, to, unused_outdated)?;
        let mut moving = Vec::new();
        for d in &vm.vdisks {
            match vdisk_owner(d).filter(|_| self.vdisks.contains_key(d)) {
                Some(o) if o == from => moving.push(d.clone()),
                Some(o) if o == to => {}
                _ => {
                    return Err(reject(format!(
                        "virtual disk {d} of VM {id} is neither on the VM's member {from} nor \
                         on the target {to}"
                    )))
                }
            }
        }
        self.rehome(&moving, from, to, false)?;
        self.record_handed(&moving, from, to);
        if let Some(vm) = self.vms.get_mut(id) {
            vm.node = Some(to);
        }
        if record {
            self.vms_handed_over.insert(id.to_string(), from);
        } else {
            self.vms_handed_over.remove(id);
        }
        Ok(CommandResult::PlacementVersion(self.placement.version))
    }

    /// A planned move from live member `from` to `to`: `to` must be another data member, and
    /// no holder of `from` outdated unless it is in `unused_outdated`.
    ///
    /// Why: the new owner gathers the moved disks' chunks from every member but the old owner
    /// and takes the first copy it finds of each, so an outdated copy of a moved chunk could be
    /// the one it takes, losing writes the owner acknowledged. Which members hold chunks of
    /// which disk is not in this state; the owner lists it. It names in `unused_outdated` the
    /// outdated members it found to hold no chunk of the moved disks, asked after it stopped
    /// writing them (so none can receive one written without it later). A member outdated
    /// after that look is not in the list and refuses the move, as does every outdated member
    /// in an entry written before the list existed. So a move is never made while an outdated
    /// copy of a moved chunk exists, and an outdated member holding only other disks' chunks
    /// no longer holds back every planned move of its owner.
    fn check_planned_target(
        &self,
        from: NodeId,
        to: NodeId,
        unused_outdated: &[NodeId],
    ) -> Result<(), CommandResult> {
        match self.members.get(&to) {
            Some(m) if m.role == Role::Data && to != from => {}
            _ => return Err(reject("the target must be another data member")),
        }
        if let Some((_, holder)) = self
            .outdated
            .iter()
            .find(|(o, h)| *o == from && !unused_outdated.contains(h))
        {
            return Err(reject(format!(
                "member {holder}'s copies of member {from}'s virtual disks are outdated (the \
                 owner wrote without them) and may include chunks of the moved disks; moving \
                 would lose acknowledged writes"
            )));
        }
        Ok(())
    }

    /// Record that `from` handed `moved` (their ids before the move) over to `to` by a planned
    /// move.
    fn record_handed(&mut self, moved: &[String], from: NodeId, to: NodeId) {
        for id in moved {
            if let Some((_, name)) = id.split_once('/') {
                self.handed_over.insert(format!("{to}/{name}"), from);
            }
        }
    }

    /// Re-key virtual disks `moving` (all owned by `from`) as `to`'s, with their snapshot
    /// records, schedules and VM references; `move_vms`: VMs on `from` that use them are
    /// assigned to `to`. Bumps the placement version. Checked whole before anything changes.
    fn rehome(
        &mut self,
        moving: &[String],
        from: NodeId,
        to: NodeId,
        move_vms: bool,
    ) -> Result<(), CommandResult> {
        let renamed = |id: &str| match id.split_once('/') {
            Some((_, name)) if moving.iter().any(|m| m == id) => format!("{to}/{name}"),
            _ => id.to_string(),
        };
        // Checked whole before anything changes: a clash leaves the state as it was.
        for id in moving {
            let new = renamed(id);
            if self.vdisks.contains_key(&new) {
                return Err(reject(format!("virtual disk {new} exists")));
            }
        }
        for id in moving {
            if let Some(mut v) = self.vdisks.remove(id) {
                v.id = renamed(id);
                self.vdisks.insert(v.id.clone(), v);
            }
            // Who handed the disk over last stays known as it moves on (its old copy there is
            // still no sign of its isolation), unless the disk comes back to it.
            if let Some(by) = self.handed_over.remove(id) {
                if by != to {
                    self.handed_over.insert(renamed(id), by);
                }
            }
        }
        // Snapshot ids are "{vdisk id}@{name}": re-keyed with their disk, so the new owner
        // names them the way it names its own (references from clones follow).
        let snap_ids: Vec<String> = self
            .snapshots
            .values()
            .filter(|x| moving.contains(&x.vdisk))
            .map(|x| x.id.clone())
            .collect();
        let mut rekeyed = BTreeMap::new();
        for id in snap_ids {
            if let Some(mut snap) = self.snapshots.remove(&id) {
                let old_vdisk = snap.vdisk.clone();
                snap.vdisk = renamed(&old_vdisk);
                if id == format!("{old_vdisk}@{}", snap.name) {
                    let new_id = format!("{}@{}", snap.vdisk, snap.name);
                    if !self.snapshots.contains_key(&new_id) {
                        rekeyed.insert(id.clone(), new_id.clone());
                        snap.id = new_id;
                    }
                }
                self.snapshots.insert(snap.id.clone(), snap);
            }
        }
        for v in self.vdisks.values_mut() {
            if let Some(p) = v.parent_snapshot.as_ref().and_then(|p| rekeyed.get(p)) {
                v.parent_snapshot = Some(p.clone());
            }
        }
        for s in self.schedules.values_mut() {
            s.vdisk = renamed(&s.vdisk);
        }
        for vm in self.vms.values_mut() {
            let uses = vm.vdisks.iter().any(|d| moving.contains(d));
            vm.vdisks = vm.vdisks.iter().map(|d| renamed(d)).collect();
            if move_vms && uses && vm.node == Some(from) {
                vm.node = Some(to);
                // Taken over, not handed over: the new node reports a takeover.
                self.vms_handed_over.remove(&vm.id);
            }
        }
        self.placement.version += 1;
        Ok(())
    }

    /// `Command::TakeOver`: the new owner gathers `from`'s chunks from every holder, so no
    /// holder of `from` may be outdated.
    pub(super) fn take_over(
        &mut self,
        from: NodeId,
        to: NodeId,
    ) -> Result<CommandResult, CommandResult> {
        if let Some((_, holder)) = self.outdated.iter().find(|(o, _)| *o == from) {
            return Err(reject(format!(
                "member {holder}'s copies of member {from}'s virtual disks are outdated (the \
                 owner wrote without them); taking over would lose acknowledged writes"
            )));
        }
        self.move_vdisks(from, to)
    }
}

#[cfg(test)]
mod tests;
