//! A planned move of one virtual disk to another data node: `cairn vdisk takeover NAME --to
//! NODE` (for maintenance, or to bring a disk next to where its VM will run).
//!
//! # Steps (on the disk's holder; any member forwards the request to it)
//! 1. Refuse, changing nothing, when: the target is not another active data member, or is not
//!    up; any other data member is not up (each may hold chunks the target gathers); a chunk
//!    of this disk has no up-to-date copy on another member, or fewer live copies than its
//!    mirroring asks (`super::copies`, judged per disk): the target adopts from the copies
//!    held elsewhere, never from this node's; a running or paused VM uses the disk (always: a
//!    guest must never lose its disk under it — stop it first); a VM defined here uses it,
//!    stopped or not, unless that VM's record is on the target (moving a disk next to its
//!    VM): `--force` does not change that — `cairn vm move` moves a VM with all its disks, a
//!    disk moved away alone would leave the VM here unable to start; NBD exports serve it
//!    (unless `force`: the exports are stopped).
//! 2. Stop serving: exports stopped, the disk flushed (durable on every replica).
//! 3. Commit `Command::MoveVdisk` (new id `"{to}/{name}"`, placement version bumped: the epoch),
//!    which records in the cluster state that this node handed the disk over
//!    (`ClusterState::handed_over`): the isolation lease (`crate::lease`) then knows the disk's
//!    new assignment is no takeover of this node and keeps serving its other disks — from the
//!    replicated state, so also after a restart of this node before its old copy is dropped.
//!    A commit whose answer is lost is settled by the cluster (`super::outcome`) before this
//!    node acts: it hands the disk over only if the move committed, and keeps it only if the
//!    move can no longer commit; while the cluster cannot say, it hands nothing over (the
//!    exports it stopped stay stopped), and finishes the step in the background once it can.
//! 4. Tell the target the holder stopped (`Call::Released`): it adopts at its next takeover tick
//!    without the isolation lease's hold (that hold guards against an owner serving behind a
//!    partition; this one said it stopped, and committed the move itself). The adoption fences
//!    every holder's copy first, as any takeover (`super::gather`).
//! 5. Wait (bounded) until the target serves the disk, telling it again now and then (a target
//!    restarted meanwhile forgot it), and answer with its view. The stale local copy is dropped
//!    by `super::drop_stale` once the target's fence is seen.
//!
//! Must never: move a disk out from under a running guest, move it when the target could not
//! gather every chunk, or leave it served by both nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{Command, MemberState, NodeHealth, Role};
use control::{ControlError, ErrorCode, VdiskView};

use super::outcome::Outcome;
use super::peer::{self, Call, STEP_TIMEOUT};
use crate::NodeInner;

/// How long the holder waits for the target to serve the moved disk.
const SERVE_WAIT: Duration = Duration::from_secs(90);
/// How often the holder tells the target again that it stopped serving a moved disk.
const RELEASE_AGAIN: Duration = Duration::from_secs(2);

pub(crate) fn conflict(msg: String) -> ControlError {
    ControlError::new(ErrorCode::Conflict, msg)
}

/// Resolve member `node` (id or name) to its id, refusing anything but an active data member.
pub(crate) fn target_of(
    m: &cluster::ClusterNode,
    node: &str,
) -> Result<(u64, String), ControlError> {
    let st = m.status();
    let x = st
        .members
        .iter()
        .find(|x| x.name == node || x.id.to_string() == node)
        .ok_or_else(|| {
            ControlError::new(ErrorCode::NotFound, format!("no cluster member {node}"))
        })?;
    if x.role != Role::Data {
        return Err(ControlError::invalid(format!(
            "member {} is a witness: it keeps no data and serves no virtual disks",
            x.name
        )));
    }
    if x.state != MemberState::Active {
        return Err(conflict(format!(
            "member {} is not active (joining or draining): it takes no virtual disks",
            x.name
        )));
    }
    Ok((x.id, x.name.clone()))
}

/// The holder's side (see the module docs). Ok: the target serves the disk (its view).
pub(crate) async fn move_out(
    inner: &Arc<NodeInner>,
    name: &str,
    to: u64,
    force: bool,
) -> Result<VdiskView, ControlError> {
    let m = inner.cluster.member()?;
    let me = m.id();
    let id = format!("{me}/{name}");
    if !m.read(|s| s.vdisks.contains_key(&id)) || inner.engine.vdisk(name).is_err() {
        return Err(ControlError::new(
            ErrorCode::NotFound,
            format!("virtual disk {name} is not served by this node"),
        ));
    }
    if let Some(why) = inner
        .cluster
        .settles
        .holds_vdisk(name, "be moved again")
        .or_else(|| super::gather::not_adopted_yet(inner, name))
    {
        return Err(ControlError::new(ErrorCode::Unavailable, why));
    }
    if to == me {
        return Err(conflict(format!(
            "virtual disk {name} is already on this node"
        )));
    }
    let tname = members_up(&m, to, name)?;
    let what = super::settles::describe_vdisk(name);
    let _flight = inner.cluster.settles.in_flight(what, me, to, &tname);
    if let Some(vm) = inner.vms.active_user_of(name) {
        return Err(conflict(format!(
            "virtual disk {name} is used by VM {vm}, which is running on this node: stop the \
             VM first (a planned move never pulls a disk from under a guest)"
        )));
    }
    // Even with --force: the disk alone would leave its VM here, defined but unable to start
    // (and a later `vm move` of it refused, its disk on another node). The VM moves whole.
    if let Some(vm) = inner.vms.user_of(name) {
        return Err(conflict(format!(
            "virtual disk {name} is attached to VM {vm} (stopped) on this node: move the VM \
             with all its disks (cairn vm move {vm} --to {tname}), or detach the disk from it \
             first; --force never moves a disk away from its VM"
        )));
    }
    if !force {
        let exports: Vec<String> = inner
            .exports
            .list()
            .into_iter()
            .filter(|e| e.vdisk == name)
            .map(|e| format!("{} ({})", e.id, e.listen))
            .collect();
        if !exports.is_empty() {
            return Err(conflict(format!(
                "virtual disk {name} is exported over NBD here (exports {}): stop them, or pass \
                 --force to stop them (their clients lose the connection)",
                exports.join(", ")
            )));
        }
    }

    // Last (it asks every other member): whatever else is in the way is said first.
    copies_in_sync(inner, &m, name, &tname, name).await?;

    // Stop serving, under the lock every virtual disk change takes.
    let started = Instant::now();
    let epoch = {
        let _g = inner.cluster.vdisk_lock.lock().await;
        if let Some(vm) = inner.vms.active_user_of(name) {
            return Err(conflict(format!(
                "virtual disk {name} is used by VM {vm}, which was started meanwhile"
            )));
        }
        if let Some(vm) = inner.vms.user_of(name) {
            return Err(conflict(format!(
                "virtual disk {name} was attached to VM {vm} meanwhile: move the VM with its \
                 disks (cairn vm move {vm} --to {tname})"
            )));
        }
        for e in inner.exports.list() {
            if e.vdisk == name {
                inner.exports.stop(e.id).await?;
            }
        }
        let h = inner
            .engine
            .open_vdisk(name)
            .map_err(crate::convert::error)?;
        h.flush().await.map_err(crate::convert::error)?;
        drop(h);
        // No longer written: outdated members holding none of it may stay outdated.
        let vid = inner.engine.vdisk(name).map_err(crate::convert::error)?.id;
        target_still_active(&m, to, &tname).await?;
        let cmd = Command::MoveVdisk {
            id: id.clone(),
            to,
            record: true,
            unused_outdated: super::copies::unused_outdated(&m, &[vid]).await,
        };
        let moved = super::settles::Moved::Vdisk {
            name: name.to_string(),
        };
        match super::outcome::commit(&m, cmd, me, &moved).await {
            Outcome::Moved(epoch) => epoch,
            Outcome::Refused(why) => {
                return Err(conflict(format!("the cluster refused the move: {why}")))
            }
            Outcome::NotMoved(why) => {
                return Err(ControlError::new(
                    ErrorCode::Unavailable,
                    format!("moving {name} was not committed ({why}); it stays here"),
                ))
            }
            Outcome::Unknown { request, why } => {
                // The disk stays unexported here until the cluster says what happened, also
                // across a restart of this node.
                let entry = super::settles::Entry {
                    moved,
                    from: me,
                    to,
                    to_name: tname.clone(),
                    why: why.clone(),
                };
                let kept = super::settles::pending(inner, &m, request, entry);
                return Err(ControlError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "whether moving {name} to {tname} committed is not known yet ({why}); \
                         this node finds out as soon as the cluster answers, then hands the \
                         disk over if it did or keeps it if not (`cairn vdisk list` shows \
                         where it is){kept}"
                    ),
                ));
            }
        }
    };
    handed_over(inner, name, to, &tname, epoch);
    let mut views = wait_served(&m, to, &tname, &[name.to_string()], epoch).await?;
    tracing::warn!(
        vdisk = %name,
        to,
        took_ms = started.elapsed().as_millis() as u64,
        "planned move done: the target serves the disk"
    );
    views
        .pop()
        .ok_or_else(|| ControlError::internal("the target's view of the disk is missing"))
}

/// Logs and records (node event) that virtual disk `name` was handed over to `to` at `epoch`.
pub(super) fn handed_over(inner: &NodeInner, name: &str, to: u64, tname: &str, epoch: u64) {
    tracing::warn!(vdisk = %name, to, epoch, "planned move committed; the target adopts the disk");
    crate::events::record(
        inner,
        "info",
        "vdisk_move",
        name,
        format!(
            "virtual disk {name} handed over to member {tname} ({to}) by a planned move \
             (epoch {epoch}); this node stopped serving it"
        ),
    );
}

/// After a planned move of `names` to member `to` committed (at `epoch`): tell `to` this node
/// stopped serving them (`Call::Released`), and wait (bounded) until it serves every one;
/// their views, in order. The release is repeated every few seconds while `to` does not serve
/// them yet: a target restarted meanwhile forgot it (it would adopt after the lease hold, which
/// is safe, only slower).
pub(crate) async fn wait_served(
    m: &cluster::ClusterNode,
    to: u64,
    tname: &str,
    names: &[String],
    epoch: u64,
) -> Result<Vec<VdiskView>, ControlError> {
    let deadline = Instant::now() + SERVE_WAIT;
    let mut served: Vec<Option<VdiskView>> = vec![None; names.len()];
    let mut next_release = Instant::now();
    loop {
        if Instant::now() >= next_release {
            next_release = Instant::now() + RELEASE_AGAIN;
            for (name, _) in names.iter().zip(&served).filter(|(_, v)| v.is_none()) {
                let id = format!("{to}/{name}");
                if let Err(e) = peer::call(m, to, &Call::Released { id }, STEP_TIMEOUT).await {
                    // Not fatal: the target adopts after the lease hold instead.
                    tracing::warn!(vdisk = %name, error = %e.message, "planned move: the target was not told");
                }
            }
        }
        for (name, slot) in names.iter().zip(served.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let ask = Call::Serving { name: name.clone() };
            if let Ok(peer::Answer::Vdisk(Some(v))) = peer::call(m, to, &ask, STEP_TIMEOUT).await {
                *slot = Some(v);
            }
        }
        if served.iter().all(Option::is_some) {
            return Ok(served.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            let waiting: Vec<&str> = names
                .iter()
                .zip(&served)
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            return Err(ControlError::new(
                ErrorCode::Busy,
                format!(
                    "virtual disks {waiting:?} are moved to {tname} in the cluster (epoch \
                     {epoch}), but {tname} does not serve them yet after {} s; `cairn cluster \
                     status` shows their adoption",
                    SERVE_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Refuses (conflict) unless member `to` (`tname`) is still an active data member, read fresh
/// (through the leader): called right before a planned move is proposed, with the move
/// registered in flight (`super::settles::InFlight`), so a move never commits to a member
/// that `cairn cluster remove` is draining or has removed meanwhile.
pub(crate) async fn target_still_active(
    m: &cluster::ClusterNode,
    to: u64,
    tname: &str,
) -> Result<(), ControlError> {
    let target = m
        .read_fresh(|s| s.members.get(&to).map(|x| (x.role, x.state)))
        .await
        .map_err(|e| {
            ControlError::new(
                ErrorCode::Unavailable,
                format!(
                    "the target's state could not be read from the cluster ({e}); nothing moved"
                ),
            )
        })?;
    match target {
        Some((Role::Data, MemberState::Active)) => Ok(()),
        Some((_, MemberState::Draining)) => Err(conflict(format!(
            "member {tname} is being removed from the cluster (draining since the move began): \
             it takes no virtual disks; nothing moved"
        ))),
        Some(_) => Err(conflict(format!(
            "member {tname} is not an active data member: it takes no virtual disks; nothing \
             moved"
        ))),
        None => Err(ControlError::new(
            ErrorCode::NotFound,
            format!("member {tname} ({to}) left the cluster meanwhile; nothing moved"),
        )),
    }
}

/// Refuse (unavailable) moving `what` to member `to` unless `to` and every other data member
/// but this node are up (each may hold chunks the target must gather); `to`'s name.
pub(crate) fn members_up(
    m: &cluster::ClusterNode,
    to: u64,
    what: &str,
) -> Result<String, ControlError> {
    let me = m.id();
    let st = m.status();
    let target =
        st.members.iter().find(|x| x.id == to).ok_or_else(|| {
            ControlError::new(ErrorCode::NotFound, format!("no cluster member {to}"))
        })?;
    let tname = target.name.clone();
    for x in st
        .members
        .iter()
        .filter(|x| x.role == Role::Data && x.id != me)
    {
        if x.health != NodeHealth::Up {
            let why = if x.id == to {
                format!("the target {} is not up", x.name)
            } else {
                format!(
                    "member {} is not up (it may hold chunks the target must gather)",
                    x.name
                )
            };
            return Err(ControlError::new(
                ErrorCode::Unavailable,
                format!("cannot move {what}: {why}"),
            ));
        }
    }
    Ok(tname)
}

/// Refuse unless the target can gather every chunk of virtual disk `name` up to date from the
/// members other than this one (`super::copies`: judged for this disk alone; a resync or
/// rebuild of other disks is no reason to wait). `what` names the move in the error.
pub(crate) async fn copies_in_sync(
    inner: &NodeInner,
    m: &cluster::ClusterNode,
    name: &str,
    tname: &str,
    what: &str,
) -> Result<(), ControlError> {
    let st = m.status();
    let target = st.members.iter().find(|x| x.name == tname).map(|x| x.id);
    let linked = inner
        .engine
        .remote_disks()
        .into_iter()
        .any(|d| Some(d.node_id) == target && d.state != engine::DiskState::Removed);
    if !linked {
        return Err(conflict(format!(
            "cannot move {what}: {tname} holds no replica of this node's disks yet"
        )));
    }
    super::copies::disk_up_to_date(inner, m, name, what).await
}
