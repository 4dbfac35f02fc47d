//! A planned move of a stopped VM with all its virtual disks to another data node: `cairn vm
//! move NAME --to NODE` (to run it elsewhere, or to empty a node for maintenance).
//!
//! # Steps (on the VM's node; any member forwards the request to it)
//! 1. Refuse, changing nothing, when: the VM is running or paused (stop it first); the target is
//!    not another active data member, or is not up; any other data member is not up; a disk of
//!    the VM is on a third member, is exported over NBD here, or is used by another VM here;
//!    a disk that moves is not up to date on the other members (as `super::manual`: judged
//!    per disk, see `super::copies`).
//! 2. Claim the VM (`Vms::claim_for_move`: no start from then on), record its definition and
//!    its stopped state in the cluster, and flush every disk that moves.
//! 3. Commit `Command::MoveVm`: the VM and each of its disks this node owns are assigned to the
//!    target at once, the disks recorded as handed over (`ClusterState::handed_over`: the
//!    isolation lease of this node stays valid, also after a restart) and the VM too
//!    (`ClusterState::vms_handed_over`: the target reports it received the VM by a move, not
//!    that it took it over from a lost node).
//!    A commit whose answer is lost is settled by the cluster (`super::outcome`): the VM stays
//!    claimed (no start here) until the cluster says whether the move committed, in the
//!    background if that takes long; then step 4 runs, or the claim is given up.
//! 4. Forget the VM here, tell the target every disk was released and wait (bounded) until it
//!    serves them all (`super::manual::wait_served`) and has defined the VM
//!    (`crate::harestart` defines it from the recorded definition once its disks are served);
//!    answer with the target's view. The VM stays stopped: `vm start` on the target runs it.
//!
//! Must never: move a running or paused guest, move part of a VM (one command moves it whole),
//! or leave the VM startable on both nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{Command, VmPower};
use control::{ControlError, ErrorCode, VmView};

use super::manual::{conflict, copies_in_sync, members_up, target_still_active, wait_served};
use super::outcome::Outcome;
use super::peer::{self, Call, STEP_TIMEOUT};
use crate::NodeInner;

/// How long the VM's node waits for the target to define the VM once its disks are served.
const DEFINE_WAIT: Duration = Duration::from_secs(60);

/// The VM's node's side (see the module docs). Ok: the target's view of the VM.
pub(crate) async fn move_vm_out(
    inner: &Arc<NodeInner>,
    name: &str,
    to: u64,
) -> Result<VmView, ControlError> {
    let m = inner.cluster.member()?;
    let me = m.id();
    let Some((_, disks)) = inner.vms.defined().into_iter().find(|(n, _)| n == name) else {
        return Err(ControlError::new(
            ErrorCode::NotFound,
            format!("VM {name} is not defined on this node"),
        ));
    };
    // An earlier move of it (or of one of its disks) whose outcome is not known yet.
    let settles = &inner.cluster.settles;
    let held = settles.holds_vm(name, "be moved again").or_else(|| {
        let doing = format!("be moved with VM {name}");
        disks.iter().find_map(|d| settles.holds_vdisk(d, &doing))
    });
    if let Some(why) = held {
        return Err(ControlError::new(ErrorCode::Unavailable, why));
    }
    if to == me {
        return Err(conflict(format!("VM {name} is already on this node")));
    }
    // Said first: whatever else is in the way, a live guest must be stopped anyway (checked
    // again when the VM is claimed).
    let state = inner.vms.get_view(name).await?.state;
    if state == "running" || state == "paused" {
        return Err(conflict(format!(
            "VM {name} is {state}: stop it first (cairn vm stop {name}); a planned move never \
             moves a live guest"
        )));
    }
    let what = format!("VM {name}");
    let tname = members_up(&m, to, &what)?;
    let flying = super::settles::describe_vm(name, &disks);
    let _flight = inner.cluster.settles.in_flight(flying, me, to, &tname);
    // Which disks move: this node's; those on the target already stay; any other is refused.
    let mut moving = Vec::new();
    for d in &disks {
        let owner = m.read(|s| {
            s.vdisks
                .values()
                .find(|x| x.name == *d)
                .and_then(|x| cluster::vdisk_owner(&x.id))
        });
        match owner {
            Some(o) if o == me => moving.push(d.clone()),
            Some(o) if o == to => {}
            Some(o) => {
                return Err(conflict(format!(
                    "VM {name}'s virtual disk {d} is on member {o}, neither here nor on \
                     {tname}: move it first (cairn vdisk takeover {d} --to ...)"
                )))
            }
            None => {
                return Err(conflict(format!(
                    "VM {name}'s virtual disk {d} is not in the cluster state"
                )))
            }
        }
    }
    for d in &moving {
        if inner.engine.vdisk(d).is_err() {
            return Err(conflict(format!(
                "VM {name}'s virtual disk {d} is not served by this node yet (being adopted?)"
            )));
        }
        if let Some(why) = super::gather::not_adopted_yet(inner, d) {
            return Err(ControlError::new(ErrorCode::Unavailable, why));
        }
        copies_in_sync(inner, &m, d, &tname, &what).await?;
        let exports: Vec<String> = inner
            .exports
            .list()
            .into_iter()
            .filter(|e| e.vdisk == *d)
            .map(|e| format!("{} ({})", e.id, e.listen))
            .collect();
        if !exports.is_empty() {
            return Err(conflict(format!(
                "VM {name}'s virtual disk {d} is exported over NBD here (exports {}): stop \
                 them first",
                exports.join(", ")
            )));
        }
        if let Some((other, _)) = inner
            .vms
            .defined()
            .into_iter()
            .find(|(n, ds)| n != name && ds.contains(d))
        {
            return Err(conflict(format!(
                "VM {name}'s virtual disk {d} is also used by VM {other} here: detach it there \
                 first"
            )));
        }
    }
    let id = m.read(|s| {
        s.vms
            .values()
            .find(|v| v.name == name && v.node == Some(me))
            .map(|v| v.id.clone())
    });
    let Some(id) = id else {
        return Err(conflict(format!(
            "VM {name} has no record of this node in the cluster state (made before clustering?); \
             start and stop it once here, then move it"
        )));
    };

    inner.vms.claim_for_move(name).await?;
    let started = Instant::now();
    let epoch = match commit(inner, &m, name, &id, (to, &tname), &moving).await {
        Ok(Outcome::Moved(epoch)) => epoch,
        Ok(Outcome::Refused(why)) => {
            inner.vms.unclaim(name);
            return Err(conflict(format!("the cluster refused the move: {why}")));
        }
        Ok(Outcome::NotMoved(why)) => {
            inner.vms.unclaim(name);
            return Err(ControlError::new(
                ErrorCode::Unavailable,
                format!("moving VM {name} was not committed ({why}); it stays here"),
            ));
        }
        Ok(Outcome::Unknown { request, why }) => {
            // Still claimed, also across a restart of this node: it must not start here while
            // it may be the target's.
            let entry = super::settles::Entry {
                moved: super::settles::Moved::Vm {
                    name: name.to_string(),
                    disks: moving,
                    id: Some(id),
                },
                from: me,
                to,
                to_name: tname.clone(),
                why: why.clone(),
            };
            let kept = super::settles::pending(inner, &m, request, entry);
            return Err(ControlError::new(
                ErrorCode::Unavailable,
                format!(
                    "whether moving VM {name} to {tname} committed is not known yet ({why}); \
                     the VM cannot start here until this node finds out, as soon as the cluster \
                     answers: it then hands the VM over if the move committed, or keeps it{kept}"
                ),
            ));
        }
        Err(e) => {
            inner.vms.unclaim(name);
            return Err(e);
        }
    };
    handed_over(inner, name, to, &tname, &moving, epoch).await;
    wait_served(&m, to, &tname, &moving, epoch).await?;
    let deadline = Instant::now() + DEFINE_WAIT;
    loop {
        let ask = Call::VmDefined {
            name: name.to_string(),
        };
        if let Ok(peer::Answer::Vm(Some(v))) = peer::call(&m, to, &ask, STEP_TIMEOUT).await {
            tracing::warn!(
                vm = %name,
                to,
                took_ms = started.elapsed().as_millis() as u64,
                "planned VM move done: the target has the VM and serves its disks"
            );
            return Ok(*v);
        }
        if Instant::now() >= deadline {
            return Err(ControlError::new(
                ErrorCode::Busy,
                format!(
                    "VM {name} is moved to {tname} in the cluster (epoch {epoch}) and its disks \
                     are served there, but {tname} has not defined it after {} s; its log says \
                     why",
                    DEFINE_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Steps 2-3 (see the module docs) with the VM claimed: what became of the move. Err: nothing
/// was proposed.
async fn commit(
    inner: &NodeInner,
    m: &Arc<cluster::ClusterNode>,
    name: &str,
    id: &str,
    (to, tname): (u64, &str),
    moving: &[String],
) -> Result<Outcome, ControlError> {
    let view = inner.vms.get_view(name).await?;
    // The definition the target defines the VM from, and "stopped" (a guest that ended on its
    // own may still be recorded as running), committed before the move.
    crate::harestart::record_vm(inner, &view, Some(VmPower::Stopped)).await;
    let (recorded, power) = m
        .read_fresh(|s| (s.vm_specs.contains_key(id), s.vms.get(id).map(|v| v.power)))
        .await
        .map_err(|e| ControlError::new(ErrorCode::Unavailable, e.to_string()))?;
    if !recorded || power != Some(VmPower::Stopped) {
        return Err(ControlError::new(
            ErrorCode::Unavailable,
            format!(
                "VM {name}'s definition and stopped state could not be recorded in the cluster; \
                 nothing moved, try again"
            ),
        ));
    }
    let _g = inner.cluster.vdisk_lock.lock().await;
    let mut ids = Vec::new();
    for d in moving {
        let h = inner.engine.open_vdisk(d).map_err(crate::convert::error)?;
        h.flush().await.map_err(crate::convert::error)?;
        ids.push(inner.engine.vdisk(d).map_err(crate::convert::error)?.id);
    }
    target_still_active(m, to, tname).await?;
    // No longer written: outdated members holding none of them may stay outdated.
    let cmd = Command::MoveVm {
        id: id.to_string(),
        to,
        record: true,
        unused_outdated: super::copies::unused_outdated(m, &ids).await,
    };
    let moved = super::settles::Moved::Vm {
        name: name.to_string(),
        disks: moving.to_vec(),
        id: Some(id.to_string()),
    };
    Ok(super::outcome::commit(m, cmd, m.id(), &moved).await)
}

/// Step 4's start, once the move committed at `epoch`: forget the VM here, log and record it.
pub(super) async fn handed_over(
    inner: &NodeInner,
    name: &str,
    to: u64,
    tname: &str,
    moving: &[String],
    epoch: u64,
) {
    tracing::warn!(vm = %name, to, epoch, disks = ?moving, "planned VM move committed");
    if let Err(e) = inner.vms.forget(name).await {
        tracing::warn!(vm = %name, error = %e.message, "planned VM move: forgetting the VM here");
    }
    crate::events::record(
        inner,
        "info",
        "vm_move",
        name,
        format!(
            "VM {name} handed over to member {tname} ({to}) with its virtual disks {moving:?} \
             by a planned move (epoch {epoch}); it is no longer defined on this node"
        ),
    );
}
