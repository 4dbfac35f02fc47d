//! High availability for VMs: after a takeover (see `crate::takeover`) the VMs that ran on the
//! lost node run again on the node that took their disks over, and the lost node, when it
//! returns, never runs them too.
//!
//! # What the cluster knows
//! Every VM's cluster record (`cluster::VmDef`) says where it runs (`node`) and whether it
//! should run (`power`: `Running` after a `vm start`; `Stopped` after a `vm stop`, or once the
//! node sees the guest's machine ended on its own — a guest that powered off is not brought
//! back by a takeover), and its full node-side definition (kernel, command line, NICs) is kept
//! next to it (`cluster::Command::PutVmSpec`) whenever the node records the VM.
//! A takeover (`MoveVdisks`) moves the records' `node` to the new owner.
//!
//! # The new owner ([`step`], each mirror tick after the adoptions)
//! A VM the cluster assigns to this node that is not defined here can only come from a
//! takeover, or from a planned move (`cairn vm move`, `crate::takeover::vm_move`): once every one of its virtual disks is adopted (served here), it is defined from
//! the recorded definition, and started if it should run — through [`start_vm`], the same path
//! as `vm start`. Its node event says which: `vm_move` ("received from NODE by a planned
//! move") when the cluster records the VM as handed over (`ClusterState::vms_handed_over`),
//! else `vm_takeover`. A VM moved here whose name a VM defined here already has (VM names are
//! unique per node, not per cluster) is neither defined nor started, and neither VM nor record
//! is changed: an error event (`vm_name_clash`) says so once and how to resolve it (rename or
//! delete the VM defined here; the moved one is then defined at the next tick). Renaming the
//! moved VM instead would surprise whoever addresses it by name, and changes to the local VM
//! meanwhile go to its own record ([`record_id`] tells the two apart by their disks). A failed start (too little memory, the kernel file missing here, KVM not
//! usable) is logged with its reason, shown by `vm show` as `last_exit`, and tried again after
//! 30 s, doubling up to 10 min, while the cluster still says the VM should run here; the other
//! VMs start regardless. A VM already defined here is never started by this module (a node
//! restart does not start VMs, with or without HA) — except one whose restart this node still
//! owed when it stopped: owed restarts are saved in the data directory (`pending`) and tried
//! again at once when the node is back.
//!
//! # The old owner ([`forget_moved`], each tick before stale disks are dropped)
//! A VM defined here whose cluster record now sits on another node with the same disks was
//! taken over: its machine, if it still runs (a hung node that woke up), is killed at once —
//! its disks are fenced already, so its writes fail, but two copies of a guest must not run —
//! and its definition here is dropped (without touching the cluster record, which is the new
//! owner's now). [`start_vm`] refuses to start a VM whose disks another node owns.
//!
//! Must never: start a VM whose disks are not all served by this node, start a VM the user
//! stopped, retry a failing start sooner than the back-off, or delete a cluster record.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::{ClusterNode, ClusterState, Command, VmDef, VmPower};
use control::{ControlError, VmView};

use crate::NodeInner;

/// First retry of a failed restart; each further one waits twice as long, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(600);

mod pending;
use pending::Pending;

/// Restarts under way on this node (kept with the running mirror).
#[derive(Default)]
pub(crate) struct HaRestart {
    /// VMs defined here after a takeover that should run and have not started yet, by id;
    /// also in `file` ([`pending`]).
    pending: HashMap<String, Pending>,
    /// Where `pending` is kept; None until loaded (at the first [`step`]).
    file: Option<PathBuf>,
    /// Problems already logged (logged once while they persist).
    logged: HashSet<String>,
}

impl HaRestart {
    /// Logs `what` unless it was logged already; whether it was new.
    fn once(&mut self, what: String) -> bool {
        let new = self.logged.insert(what.clone());
        if new {
            tracing::warn!(problem = %what, "HA restart");
        }
        new
    }

    /// Loads the owed restarts saved by an earlier run of this node, once.
    fn load(&mut self, data_dir: &Path) {
        if self.file.is_none() {
            let file = data_dir.join(pending::FILE);
            self.pending.extend(pending::load(&file));
            if !self.pending.is_empty() {
                let names: Vec<&str> = self.pending.values().map(|p| p.name.as_str()).collect();
                tracing::warn!(vms = ?names, "HA restart: restarts owed before this node restarted are tried again now");
            }
            self.file = Some(file);
        }
    }

    /// Saves the owed restarts (a failure is logged once; the next change writes them again).
    fn save(&mut self) {
        let Some(file) = &self.file else {
            return;
        };
        if let Err(e) = pending::save(file, &self.pending) {
            self.once(format!(
                "the owed restarts could not be saved in {}: {e}; a restart of this node \
                 before the next change would forget them",
                file.display()
            ));
        }
    }
}

/// A VM the cluster assigns to a node, as this module needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Assigned {
    id: String,
    name: String,
    /// Its virtual disks' names, in attach order.
    disks: Vec<String>,
    run: bool,
    spec: Option<String>,
    /// The member that handed it over by a planned move (`vm move`), if that was its last
    /// move; None: it came by a takeover (or was always here).
    handed_by: Option<u64>,
}

/// The name of virtual disk `id` (ids are `"{owner}/{name}"`).
fn disk_name(s: &ClusterState, id: &str) -> String {
    s.vdisks.get(id).map_or_else(
        || id.split_once('/').map_or(id, |(_, n)| n).to_string(),
        |d| d.name.clone(),
    )
}

/// Every VM the cluster assigns to `me`.
fn assigned_to(s: &ClusterState, me: u64) -> Vec<Assigned> {
    s.vms
        .values()
        .filter(|vm| vm.node == Some(me))
        .map(|vm| Assigned {
            id: vm.id.clone(),
            name: vm.name.clone(),
            disks: vm.vdisks.iter().map(|d| disk_name(s, d)).collect(),
            run: vm.power == VmPower::Running,
            spec: s.vm_specs.get(&vm.id).cloned(),
            handed_by: s.vms_handed_over.get(&vm.id).copied(),
        })
        .collect()
}

/// What a VM moved here whose name a VM defined here already has is told (see [`step`]).
fn clash_text(a: &Assigned) -> String {
    let how = if a.handed_by.is_some() {
        "was moved to this node by `vm move`"
    } else {
        "was taken over by this node from a lost node"
    };
    let then = if a.run {
        "defined and started"
    } else {
        "defined (stopped)"
    };
    format!(
        "VM {name} ({id}) {how}, but another VM named {name} is defined here: the moved VM is \
         not defined or started here, and nothing of either is changed. Rename the VM defined \
         here (cairn vm edit {name} --rename NEW) or delete it; the moved VM is then {then} \
         within a few seconds",
        name = a.name,
        id = a.id,
    )
}

/// The node event for VM `a` defined here from the cluster's record: (level, kind, text). A
/// planned move is the receiving side of `vm move`; anything else came by a takeover.
fn defined_event(s: &ClusterState, a: &Assigned) -> (&'static str, &'static str, String) {
    match a.handed_by {
        Some(from) => {
            let by = s.members.get(&from).map_or_else(
                || format!("member {from}"),
                |x| format!("{} ({from})", x.name),
            );
            (
                "info",
                "vm_move",
                format!(
                    "VM {} received from {by} by a planned move (`vm move`): defined on this \
                     node with its disks",
                    a.name
                ),
            )
        }
        None => (
            "warning",
            "vm_takeover",
            format!(
                "VM {} defined on this node with its disks, taken over from a lost node",
                a.name
            ),
        ),
    }
}

/// The node a VM defined here (`name` on `disks`) was moved to, if a takeover moved it: no
/// record of that name is on `me`, and one on another node uses the same disks.
fn moved_to(s: &ClusterState, me: u64, name: &str, disks: &[String]) -> Option<u64> {
    if disks.is_empty() || s.vms.values().any(|v| v.name == name && v.node == Some(me)) {
        return None;
    }
    let mine: HashSet<&str> = disks.iter().map(String::as_str).collect();
    s.vms.values().find_map(|v| {
        let other = v.node.filter(|n| *n != me)?;
        let theirs: Vec<String> = v.vdisks.iter().map(|d| disk_name(s, d)).collect();
        let same = theirs.len() == mine.len() && theirs.iter().all(|d| mine.contains(d.as_str()));
        (v.name == name && same).then_some(other)
    })
}

/// The member owning the virtual disk named `disk`, if the cluster knows it.
pub(crate) fn disk_owner(s: &ClusterState, disk: &str) -> Option<u64> {
    s.vdisks
        .values()
        .find(|d| d.name == disk)
        .and_then(|d| cluster::vdisk_owner(&d.id))
}

/// The id of this node's cluster record of VM `name` defined here on `disks` (a VM taken
/// over keeps the id it was created with, `"{first node}/{name}"`). Two records of one name
/// can be on this node while a VM moved here clashes with the one defined here (see [`step`]):
/// the record with the same disks, else this node's own id, else the first — never the moved
/// VM's record for a change of the VM defined here.
fn record_id(s: &ClusterState, me: u64, name: &str, disks: &[String]) -> String {
    let own = format!("{me}/{name}");
    let mine: Vec<&VmDef> = s
        .vms
        .values()
        .filter(|v| v.node == Some(me) && v.name == name)
        .collect();
    let wanted: HashSet<&str> = disks.iter().map(String::as_str).collect();
    let same_disks = mine.iter().find(|v| {
        let theirs: Vec<String> = v.vdisks.iter().map(|d| disk_name(s, d)).collect();
        theirs.len() == wanted.len() && theirs.iter().all(|d| wanted.contains(d.as_str()))
    });
    same_disks
        .or_else(|| mine.iter().find(|v| v.id == own))
        .or_else(|| mine.first())
        .map_or(own, |v| v.id.clone())
}

/// The first of `disks` the cluster assigns to another node, with that node (None outside a
/// cluster).
fn owned_elsewhere<'a>(inner: &NodeInner, disks: &'a [String]) -> Option<(&'a str, u64)> {
    let m = inner.cluster.member().ok()?;
    let me = m.id();
    m.read(|s| {
        disks.iter().find_map(|d| {
            disk_owner(s, d)
                .filter(|o| *o != me)
                .map(|o| (d.as_str(), o))
        })
    })
}

/// Refuses to start `name` when one of its disks belongs to another node (taken over).
fn check_runs_here(inner: &NodeInner, name: &str) -> Result<(), ControlError> {
    let Some((_, disks)) = inner.vms.defined().into_iter().find(|(n, _)| n == name) else {
        return Ok(());
    };
    match owned_elsewhere(inner, &disks) {
        Some((d, o)) => Err(ControlError::conflict(format!(
            "{name}'s virtual disk {d} belongs to node {o} now (taken over while this node was \
             away); the VM runs there"
        ))),
        None => Ok(()),
    }
}

/// Refuses to serve virtual disk `disk` here (an NBD export) when the cluster assigns it to
/// another node: after a takeover or a planned move this node's copy is stale until dropped.
/// Also while a planned move of it is not settled yet (`crate::takeover::settles`), and while
/// this node's copy is one from before the disk left and came back, not replaced yet
/// (`crate::takeover::gather::not_adopted_yet`).
pub(crate) fn check_disk_here(inner: &NodeInner, disk: &str) -> Result<(), ControlError> {
    if let Some(why) = inner.cluster.settles.holds_vdisk(disk, "be exported") {
        return Err(ControlError::new(control::ErrorCode::Unavailable, why));
    }
    if let Some(why) = crate::takeover::gather::not_adopted_yet(inner, disk) {
        return Err(ControlError::new(control::ErrorCode::Unavailable, why));
    }
    refuse_owned_elsewhere(inner, disk)
}

/// Refuses to export virtual disk `disk` from here (over NBD or to a file) when the cluster
/// assigns it to another node: this node's copy may be stale.
pub(crate) fn refuse_owned_elsewhere(inner: &NodeInner, disk: &str) -> Result<(), ControlError> {
    match owned_elsewhere(inner, &[disk.to_string()]) {
        Some((_, o)) => Err(ControlError::conflict(format!(
            "virtual disk {disk} is served by node {o}; export it there (this node's copy may \
             be stale)"
        ))),
        None => Ok(()),
    }
}

/// Start VM `name`: the one path for `vm start` and restarts after a takeover. Records in the
/// cluster that the VM should run.
pub(crate) async fn start_vm(inner: &NodeInner, name: &str) -> Result<VmView, ControlError> {
    if let Some(why) = inner.cluster.settles.holds_vm(name, "start") {
        return Err(ControlError::new(control::ErrorCode::Unavailable, why));
    }
    // A disk attached (or defined) since its own planned move left its outcome unknown: the
    // VM would serve it while the move may still make it the target's.
    let disks = inner
        .vms
        .defined()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, d)| d)
        .unwrap_or_default();
    if let Some(why) = disks.iter().find_map(|d| {
        inner
            .cluster
            .settles
            .holds_vdisk(d, "be served by a VM")
            .or_else(|| crate::takeover::gather::not_adopted_yet(inner, d))
    }) {
        return Err(ControlError::new(control::ErrorCode::Unavailable, why));
    }
    check_runs_here(inner, name)?;
    // A node cut off from the majority starts nothing on disks it may no longer own (waits
    // for its isolation lease, bounded; see `crate::lease`).
    inner
        .lease
        .gate()
        .pass()
        .await
        .map_err(|_| crate::lease::closed_error())?;
    let v = inner.vms.start(&inner.engine, name).await?;
    record_vm(inner, &v, Some(VmPower::Running)).await;
    Ok(v)
}

/// Record VM `vm` in the cluster state with its definition; `power` if given, else what the
/// cluster had (a new VM: stopped). Nothing when this node is not in a cluster.
pub(crate) async fn record_vm(inner: &NodeInner, vm: &VmView, power: Option<VmPower>) {
    let Ok(m) = inner.cluster.member() else {
        return;
    };
    let me = m.id();
    let (id, had, vdisks) = m.read(|s| {
        let id = record_id(s, me, &vm.name, &vm.disks);
        let had = s.vms.get(&id).map(|v| v.power);
        let vdisks = vm
            .disks
            .iter()
            .map(|n| {
                s.vdisks
                    .values()
                    .find(|d| d.name == *n)
                    .map_or_else(|| format!("{me}/{n}"), |d| d.id.clone())
            })
            .collect();
        (id, had, vdisks)
    });
    let def = VmDef {
        id: id.clone(),
        name: vm.name.clone(),
        vcpus: u32::from(vm.vcpus),
        memory_mib: vm.memory_mib,
        vdisks,
        node: Some(me),
        power: power.or(had).unwrap_or(VmPower::Stopped),
    };
    inner.cluster.record("vm", |_| Command::PutVm(def)).await;
    if let Some(spec) = inner.vms.spec_of(&vm.name) {
        inner
            .cluster
            .record("vm definition", |_| Command::PutVmSpec { id, spec })
            .await;
    }
}

/// Remove this node's cluster record of VM `name`, which was defined here on `disks`.
pub(crate) async fn record_vm_deleted(inner: &NodeInner, name: &str, disks: &[String]) {
    let Ok(m) = inner.cluster.member() else {
        return;
    };
    let id = m.read(|s| record_id(s, m.id(), name, disks));
    inner
        .cluster
        .record("vm", |_| Command::DeleteVm { id })
        .await;
}

/// The old owner's side (see the module docs): stop and forget VMs taken over by another node.
pub(crate) async fn forget_moved(inner: &NodeInner, m: &ClusterNode) {
    let me = m.id();
    for (name, disks) in inner.vms.defined() {
        let Some(to) = m.read(|s| moved_to(s, me, &name, &disks)) else {
            continue;
        };
        match inner.vms.forget(&name).await {
            Ok(true) => {
                crate::events::record(
                    inner,
                    "warning",
                    "vm_moved_away",
                    &name,
                    format!(
                        "VM {name} was moved to node {to} with its disks while this node was \
                         hung or cut off; its machine here was killed"
                    ),
                );
                tracing::warn!(
                vm = %name,
                node = to,
                "takeover: VM {name} was moved to node {to} with its disks while this node was \
                 hung or cut off; its machine still ran here and is killed (its disks are \
                 fenced), its definition here dropped: it runs on node {to}"
                )
            }
            Ok(false) => tracing::warn!(
                vm = %name,
                node = to,
                "takeover: VM {name} was moved to node {to} with its disks while this node was \
                 away; its definition here is dropped: it runs on node {to}"
            ),
            Err(e) => tracing::warn!(vm = %name, error = %e, "takeover: forgetting a moved VM"),
        }
    }
}

/// The new owner's side (see the module docs): define VMs moved here, start those that should
/// run, retry failed starts with back-off.
pub(crate) async fn step(inner: &NodeInner, m: &ClusterNode, ha: &mut HaRestart) {
    let me = m.id();
    ha.load(&inner.cfg.data_dir);
    let assigned = m.read(|s| assigned_to(s, me));
    let defined: HashMap<String, Vec<String>> = inner.vms.defined().into_iter().collect();
    // Guests that ended on their own are no longer meant to run.
    for a in assigned
        .iter()
        .filter(|a| a.run && !ha.pending.contains_key(&a.id))
    {
        if defined.get(&a.name) != Some(&a.disks) || !inner.vms.has_exited(&a.name) {
            continue;
        }
        if let Ok(v) = inner.vms.get_view(&a.name).await {
            record_vm(inner, &v, Some(VmPower::Stopped)).await;
            // Said once the record is applied here: from then on a takeover leaves it stopped.
            // (Not applied yet: tried again next tick.)
            let id = a.id.as_str();
            if m.read(|s| s.vms.get(id).map(|x| x.power)) != Some(VmPower::Stopped) {
                continue;
            }
            tracing::info!(
                vm = %a.name,
                exit = ?v.last_exit,
                "VM {} ended on its own; recorded as stopped",
                a.name
            );
        }
    }
    for a in &assigned {
        // (An owed restart whose VM is not defined: this node stopped between saving it and
        // defining the VM. Defined now.)
        if ha.pending.contains_key(&a.id) && defined.contains_key(&a.name) {
            continue;
        }
        match defined.get(&a.name) {
            Some(d) if *d == a.disks => continue,
            Some(_) => {
                // Never renamed behind the admin's back (scripts and the UI address VMs by
                // name) nor defined over the VM here: refused, said once as an error event.
                let text = clash_text(a);
                if ha.once(text.clone()) {
                    crate::events::record(inner, "error", "vm_name_clash", &a.name, text);
                }
                continue;
            }
            None => {}
        }
        // Its disks are adopted one by one; define it once all are served here.
        if a.disks.iter().any(|d| inner.engine.vdisk(d).is_err()) {
            continue;
        }
        let Some(spec) = &a.spec else {
            ha.once(format!(
                "VM {} ({}) was moved to this node, but the cluster holds no definition of it \
                 (recorded by an older build); define it here by hand",
                a.name, a.id
            ));
            continue;
        };
        if a.run {
            // Saved before the VM is defined here (see `pending`).
            ha.pending.insert(
                a.id.clone(),
                Pending {
                    name: a.name.clone(),
                    attempts: 0,
                    next: Instant::now(),
                },
            );
            ha.save();
        }
        match inner.vms.import(&inner.engine, spec).await {
            Ok(_) => {
                let (level, kind, text) = m.read(|s| defined_event(s, a));
                tracing::warn!(vm = %a.name, start = a.run, kind, "{text}");
                crate::events::record(inner, level, kind, &a.name, text);
            }
            Err(e) => {
                ha.once(format!(
                    "VM {} ({}) was moved to this node, but its definition was refused: {}",
                    a.name, a.id, e.message
                ));
                if ha.pending.remove(&a.id).is_some() {
                    ha.save();
                }
                continue;
            }
        }
    }
    // Starts due now; a VM no longer meant to run here (stopped, deleted, moved) is let go.
    let wanted: HashSet<&str> = assigned
        .iter()
        .filter(|a| a.run)
        .map(|a| a.id.as_str())
        .collect();
    let owed = ha.pending.len();
    ha.pending.retain(|id, p| {
        let keep = wanted.contains(id.as_str());
        if !keep {
            inner.vms.set_note(&p.name, None);
        }
        keep
    });
    if ha.pending.len() != owed {
        ha.save();
    }
    let now = Instant::now();
    let due: Vec<String> = ha
        .pending
        .iter()
        .filter(|(_, p)| p.next <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for id in due {
        let Some(mut p) = ha.pending.remove(&id) else {
            continue;
        };
        let name = p.name.clone();
        if inner.vms.is_running(&name) {
            // Started meanwhile (by hand): nothing owed any more.
            ha.save();
            continue;
        }
        match start_vm(inner, &name).await {
            Ok(_) => {
                ha.save();
                tracing::warn!(
                    vm = %name,
                    attempts = p.attempts + 1,
                    "takeover: VM {name} restarted on this node after its node was lost"
                );
                crate::events::record(
                    inner,
                    "warning",
                    "vm_ha_restart",
                    &name,
                    format!(
                        "VM {name} restarted on this node after its node was lost (attempt {})",
                        p.attempts + 1
                    ),
                );
            }
            Err(e) => {
                p.attempts += 1;
                let wait = backoff(p.attempts);
                p.next = Instant::now() + wait;
                let note = format!(
                    "not restarted after the takeover (attempt {}, next in {} s): {}",
                    p.attempts,
                    wait.as_secs(),
                    e.message
                );
                tracing::warn!(
                    vm = %name,
                    reason = %e.message,
                    attempts = p.attempts,
                    retry_in_s = wait.as_secs(),
                    "takeover: VM {name} could not be restarted on this node"
                );
                if p.attempts == 1 {
                    crate::events::record(
                        inner,
                        "error",
                        "vm_ha_restart",
                        &name,
                        format!("VM {name} {note}"),
                    );
                }
                inner.vms.set_note(&name, Some(note));
                ha.pending.insert(id, p);
                ha.save();
            }
        }
    }
}

/// How long to wait after the `attempts`-th failed start.
fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1u32 << doublings).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::VdiskDef;

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for id in ["2/a", "2/b", "2/c"] {
            s.vdisks.insert(
                id.into(),
                VdiskDef {
                    id: id.into(),
                    name: id[2..].into(),
                    size_bytes: 1,
                    parent_snapshot: None,
                },
            );
        }
        let vm = |id: &str, name: &str, disks: &[&str], node, power| VmDef {
            id: id.into(),
            name: name.into(),
            vcpus: 1,
            memory_mib: 32,
            vdisks: disks.iter().map(|d| d.to_string()).collect(),
            node: Some(node),
            power,
        };
        // web was created on 1 and taken over by 2; db is 2's own; old stays on 1.
        for v in [
            vm("1/web", "web", &["2/a", "2/b"], 2, VmPower::Running),
            vm("2/db", "db", &["2/c"], 2, VmPower::Stopped),
            vm("1/old", "old", &[], 1, VmPower::Running),
        ] {
            s.vms.insert(v.id.clone(), v);
        }
        s.vm_specs.insert("1/web".into(), "{}".into());
        s
    }

    #[test]
    fn the_new_owner_sees_the_moved_vms_with_their_disk_names() {
        let s = state();
        let mut a = assigned_to(&s, 2);
        a.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].name, "web");
        assert_eq!(a[1].disks, vec!["a", "b"]);
        assert!(a[1].run && !a[0].run);
        assert_eq!(a[1].spec.as_deref(), Some("{}"));
        assert_eq!(a[0].spec, None);
        assert_eq!(record_id(&s, 2, "web", &["a".into(), "b".into()]), "1/web");
        assert_eq!(record_id(&s, 2, "web", &["a".into()]), "1/web");
        assert_eq!(record_id(&s, 2, "new", &[]), "2/new");
        assert_eq!(disk_owner(&s, "b"), Some(2));
        assert_eq!(disk_owner(&s, "zz"), None);
    }

    #[test]
    fn a_vm_moved_onto_a_name_in_use_is_refused_and_never_touches_the_local_record() {
        let mut s = state();
        // Node 2 has its own VM "web" on disk c when 1/web (disks a, b) is taken over to it.
        s.vms.get_mut("2/db").unwrap().name = "web".into();
        let moved = assigned_to(&s, 2)
            .into_iter()
            .find(|a| a.id == "1/web")
            .unwrap();
        let text = clash_text(&moved);
        assert!(
            text.contains("VM web (1/web) was taken over by this node"),
            "{text}"
        );
        assert!(text.contains("cairn vm edit web --rename NEW"), "{text}");
        assert!(text.contains("then defined and started"), "{text}");
        // Changes to the local web (on c) go to its own record, whatever the map order; the
        // moved VM's record is found by its disks.
        assert_eq!(record_id(&s, 2, "web", &["c".into()]), "2/db");
        assert_eq!(record_id(&s, 2, "web", &["b".into(), "a".into()]), "1/web");
        // Disks changed in the same edit: this node's own id when it has one.
        s.vms.insert(
            "2/web".into(),
            VmDef {
                id: "2/web".into(),
                ..s.vms["2/db"].clone()
            },
        );
        s.vms.remove("2/db");
        assert_eq!(record_id(&s, 2, "web", &["c".into(), "z".into()]), "2/web");
        s.vms_handed_over.insert("1/web".into(), 1);
        let moved = assigned_to(&s, 2)
            .into_iter()
            .find(|a| a.id == "1/web")
            .unwrap();
        assert!(clash_text(&moved).contains("was moved to this node by `vm move`"));
    }

    #[test]
    fn a_vm_received_by_a_planned_move_is_no_takeover() {
        let mut s = state();
        s.members.insert(
            1,
            cluster::Member {
                id: 1,
                name: "alpha".into(),
                addr: "127.0.0.1:1".into(),
                join_addr: "127.0.0.1:2".into(),
                role: cluster::Role::Data,
                state: cluster::MemberState::Active,
            },
        );
        let web = |s: &ClusterState| {
            assigned_to(s, 2)
                .into_iter()
                .find(|a| a.name == "web")
                .unwrap()
        };
        let (level, kind, text) = defined_event(&s, &web(&s));
        assert_eq!((level, kind), ("warning", "vm_takeover"), "{text}");
        assert!(text.contains("taken over from a lost node"), "{text}");
        assert!(!text.contains("vm move"), "{text}");
        s.vms_handed_over.insert("1/web".into(), 1);
        let (level, kind, text) = defined_event(&s, &web(&s));
        assert_eq!((level, kind), ("info", "vm_move"), "{text}");
        assert!(
            text.contains("received from alpha (1) by a planned move"),
            "{text}"
        );
        s.members.clear();
        let (_, _, text) = defined_event(&s, &web(&s));
        assert!(text.contains("received from member 1"), "{text}");
    }

    #[test]
    fn the_old_owner_finds_only_vms_moved_with_the_same_disks() {
        let s = state();
        assert_eq!(moved_to(&s, 1, "web", &["b".into(), "a".into()]), Some(2));
        // Another VM of that name with other disks: not this one.
        assert_eq!(moved_to(&s, 1, "web", &["a".into()]), None);
        // Still recorded here: not moved.
        assert_eq!(moved_to(&s, 1, "old", &["x".into()]), None);
        // The new owner never forgets its own.
        assert_eq!(moved_to(&s, 2, "web", &["a".into(), "b".into()]), None);
        // No disks: never moved by a takeover.
        assert_eq!(moved_to(&s, 1, "web", &[]), None);
    }

    #[test]
    fn a_vm_spec_goes_with_its_vm_and_is_bounded() {
        let mut s = state();
        let put = |id: &str, n: usize| Command::PutVmSpec {
            id: id.into(),
            spec: "x".repeat(n),
        };
        assert_eq!(s.apply(&put("2/db", 10)), cluster::CommandResult::Ok);
        let big = s.apply(&put("2/db", cluster::MAX_VM_SPEC_BYTES + 1));
        let refused = matches!(big, cluster::CommandResult::Rejected(_));
        assert!(refused, "{big:?}");
        let ghost = s.apply(&put("9/ghost", 1));
        let refused = matches!(ghost, cluster::CommandResult::Rejected(_));
        assert!(refused, "{ghost:?}");
        assert_eq!(s.vm_specs["2/db"].len(), 10);
        s.apply(&Command::DeleteVm { id: "2/db".into() });
        assert!(!s.vm_specs.contains_key("2/db"));
    }

    #[test]
    fn retries_back_off_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(30));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(5), Duration::from_secs(480));
        assert_eq!(backoff(6), MAX_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }
}
