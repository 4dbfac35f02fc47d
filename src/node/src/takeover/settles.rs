//! Planned moves whose outcome is not known yet (see `super::outcome`), kept in
//! `DATA/move-settles.json` as well as in memory, so a restart of this node before the cluster
//! answers keeps what the mover froze: the VM stays claimed (it cannot start here) and the
//! moved disks cannot be exported here, while the move may still commit and make them the
//! target's. On start (`resume`) every kept entry is claimed again, before the node takes
//! requests, and settled in the background; an entry is removed once the cluster answered and
//! this node acted on the answer (handed the VM / disk over, or kept it).
//!
//! An entry is written before the mover answers "not known yet" (a failed write is logged and
//! said in that answer: the claim then holds until the node restarts only).
//!
//! A bad file is never taken as "nothing pending": an entry that cannot be read is logged,
//! kept in the file as it was (rewrites carry it over) and its request is not settled by this
//! node (the admin checks where the VM or disk is, then removes it); meanwhile it holds every
//! VM and disk whose name it holds anywhere. A file that is not a JSON object at all is moved
//! aside to `move-settles.json.unreadable` (a time suffix added if that exists; logged, with
//! the name) so no later write replaces it, and while that file exists no VM starts and no
//! disk is exported here: which of them may still move elsewhere cannot be told.
//!
//! Must never: drop an entry before the cluster answered and the answer was acted on, or let a
//! VM start (a disk be exported) here while its move may still commit elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::outcome::Outcome;
use crate::NodeInner;

/// The file, under the node's data directory.
pub(crate) const FILE: &str = "move-settles.json";
/// Largest file read (an entry is a few hundred bytes; one per unsettled move).
const MAX_FILE_BYTES: u64 = 8 << 20;

/// What a pending move moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Moved {
    /// `cairn vm move`: the VM and those of its disks this node owned. `id`: the VM's record
    /// in the cluster state (`cluster::VmDef::id`, which `Command::MoveVm` moves unchanged),
    /// what tells this VM from another of the same name; None in entries written before it
    /// was kept (those decide by the name).
    Vm {
        name: String,
        disks: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// `cairn vdisk takeover`: one virtual disk.
    Vdisk { name: String },
}

impl Moved {
    /// Whether cluster state `s` still assigns what moves to member `from` (the mover): the
    /// VM's own record (by its id) on it and every disk that moved with the VM owned by it, or
    /// the disk of that name owned by it. Read after the move's fence committed (nothing can
    /// move it then but later commands), this tells "not moved (or moved back since)" from
    /// "moved away", also when the cluster forgot the move's own answer (`super::outcome`).
    /// Not the VM's name: another VM of that name can be recorded on the mover (one moved
    /// there whose name clashes, `crate::harestart`), and a VM whose disks all stayed (or that
    /// has none) has no disk to tell them apart; `Command::MoveVm` moves the record (its id
    /// unchanged) and the disks at once. An entry without the id (written before it was kept)
    /// falls back to a record of that name.
    pub(crate) fn still_on(&self, s: &cluster::ClusterState, from: u64) -> bool {
        let owned = |d: &String| crate::harestart::disk_owner(s, d) == Some(from);
        match self {
            Moved::Vm { name, disks, id } => {
                let record_here = match id {
                    Some(id) => s.vms.get(id).is_some_and(|v| v.node == Some(from)),
                    None => s
                        .vms
                        .values()
                        .any(|v| v.name == *name && v.node == Some(from)),
                };
                record_here && disks.iter().all(owned)
            }
            Moved::Vdisk { name } => owned(name),
        }
    }

    /// What moves, for messages ("virtual disk d", "VM v with disks [..]").
    fn describe(&self) -> String {
        match self {
            Moved::Vm { name, disks, .. } => describe_vm(name, disks),
            Moved::Vdisk { name } => describe_vdisk(name),
        }
    }

    /// The virtual disks that must not be exported here while the move is unsettled.
    fn disks(&self) -> Vec<String> {
        match self {
            Moved::Vm { disks, .. } => disks.clone(),
            Moved::Vdisk { name } => vec![name.clone()],
        }
    }
}

/// How a planned move of VM `name` with `disks` is named in messages (also while in flight).
pub(crate) fn describe_vm(name: &str, disks: &[String]) -> String {
    format!("VM {name} with disks {disks:?}")
}

/// How a planned move of virtual disk `name` is named in messages (also while in flight).
pub(crate) fn describe_vdisk(name: &str) -> String {
    format!("virtual disk {name}")
}

/// One unsettled move (keyed by its request id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) moved: Moved,
    /// This node's id (the mover).
    pub(crate) from: u64,
    /// The target member's id and name.
    pub(crate) to: u64,
    pub(crate) to_name: String,
    /// Why the proposal's outcome is unknown.
    pub(crate) why: String,
}

/// What the file holds: readable entries, and those that are not (kept verbatim).
#[derive(Debug, Default, PartialEq)]
struct Contents {
    entries: BTreeMap<String, Entry>,
    bad: BTreeMap<String, serde_json::Value>,
}

/// Reads `file`. Ok with the readable entries and the unreadable ones (each with its error);
/// Err: the file as a whole cannot be read (missing is Ok and empty).
fn read(file: &Path) -> Result<(Contents, Vec<String>), String> {
    let Some(b) = crate::statefile::read_bounded(file, MAX_FILE_BYTES)? else {
        return Ok(Default::default());
    };
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&b).map_err(|e| format!("not a JSON object of moves: {e}"))?;
    let mut c = Contents::default();
    let mut errors = Vec::new();
    for (request, v) in raw {
        match serde_json::from_value::<Entry>(v.clone()) {
            Ok(e) => {
                c.entries.insert(request, e);
            }
            Err(e) => {
                errors.push(format!("request {request}: {e}"));
                c.bad.insert(request, v);
            }
        }
    }
    Ok((c, errors))
}

/// Writes `c` to `file` (temporary file, sync, rename, sync the directory).
fn write(file: &Path, c: &Contents) -> std::io::Result<()> {
    let mut all: BTreeMap<&str, serde_json::Value> =
        c.bad.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    for (k, e) in &c.entries {
        all.insert(k, serde_json::to_value(e).map_err(std::io::Error::other)?);
    }
    let bytes = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?;
    crate::statefile::replace(file, &bytes)
}

/// The unsettled moves of this node (in `ClusterHost`).
pub(crate) struct Settles {
    file: PathBuf,
    contents: parking_lot::Mutex<Contents>,
    /// Where an unreadable file was moved aside: everything is held while it exists.
    unreadable: Option<PathBuf>,
    /// Moves this node is making now ([`Settles::in_flight`]), by a sequence number; in
    /// memory only (a restart ends them: one whose outcome was unknown is in `contents`).
    flying: parking_lot::Mutex<(u64, BTreeMap<u64, Flying>)>,
}

/// A move in progress ([`Settles::in_flight`]): what moves, from and to which member.
struct Flying {
    what: String,
    from: u64,
    to: u64,
    to_name: String,
}

/// A planned move this node is making, reported by [`Settles::involving`] (so `cairn cluster
/// remove` of its target or source is refused) from before the move reads its target's state
/// the last time until it has an outcome (and, if that is unknown, its entry is saved).
/// Dropping it ends the report.
///
/// Why: the target is checked to be an active member (read fresh) right before the move is
/// proposed, and the removal asks every member for unsettled moves before its last look at
/// what the leaving member owns. A move this node registered before that ask is either still
/// reported then (the removal is refused) or has committed before it (the last look sees the
/// disk on the member and refuses); one registered after it reads the target after the drain
/// was committed, sees it draining and is refused. So no move can commit to a member between
/// the removal's last look and its leaving.
pub(crate) struct InFlight<'a> {
    settles: &'a Settles,
    key: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.settles.flying.lock().1.remove(&self.key);
    }
}

impl Settles {
    /// Loads `DATA/move-settles.json` (see the module docs for a bad file).
    pub(crate) fn open(data: &Path) -> Settles {
        let file = data.join(FILE);
        let mut unreadable = None;
        let contents = match read(&file) {
            Ok((c, errors)) => {
                for e in errors {
                    tracing::error!(
                        file = %file.display(),
                        error = %e,
                        "planned move: an unsettled move cannot be read; it is kept in the file \
                         and not settled by this node: check where its VM or disk is (cairn vm \
                         list, cairn vdisk list on every node), then remove the entry"
                    );
                }
                c
            }
            Err(e) => {
                // Never over an earlier unreadable file.
                let mut aside = file.with_extension("json.unreadable");
                if aside.exists() {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis())
                        .unwrap_or(0);
                    aside = file.with_extension(format!("json.unreadable.{now}"));
                }
                let moved = std::fs::rename(&file, &aside);
                tracing::error!(
                    file = %file.display(),
                    error = %e,
                    moved_aside_to = %aside.display(),
                    moved_aside = moved.is_ok(),
                    "planned move: the unsettled moves cannot be read; no VM starts and no disk \
                     is exported here until that file is removed: check every VM and disk named \
                     in it on every node, then remove it"
                );
                unreadable = Some(if moved.is_ok() { aside } else { file.clone() });
                Contents::default()
            }
        };
        Settles {
            file,
            flying: Default::default(),
            contents: parking_lot::Mutex::new(contents),
            unreadable,
        }
    }

    /// Why nothing may start, be exported or be changed here: the file could not be read at
    /// start and what it held is still there (see the module docs).
    fn holds_all(&self) -> Option<String> {
        let p = self.unreadable.as_ref().filter(|p| p.exists())?;
        Some(format!(
            "the node's unsettled planned moves could not be read (kept as {}): a VM or disk whose \
             move may still commit elsewhere cannot be told apart, so none starts, is exported, \
             changed or deleted here: check each VM and disk named in that file on every node, \
             then remove it",
            p.display()
        ))
    }

    /// Why `name` is held by an entry that cannot be read: it names it somewhere.
    fn held_by_bad(&self, c: &Contents, name: &str) -> Option<String> {
        let (request, _) = c.bad.iter().find(|(_, v)| names(v, name))?;
        Some(format!(
            "{name} is named by unsettled planned move {request} in {}, which cannot be read: \
             check where {name} is on every node, then remove that entry",
            self.file.display()
        ))
    }

    /// Records `entry` under `request`; Err: it is kept in memory only.
    pub(crate) fn add(&self, request: &str, entry: Entry) -> std::io::Result<()> {
        let mut c = self.contents.lock();
        c.entries.insert(request.to_string(), entry);
        write(&self.file, &c)
    }

    /// Removes `request` (settled and acted on).
    pub(crate) fn remove(&self, request: &str) -> std::io::Result<()> {
        let mut c = self.contents.lock();
        if c.entries.remove(request).is_none() {
            return Ok(());
        }
        write(&self.file, &c)
    }

    /// Every readable entry.
    pub(crate) fn entries(&self) -> Vec<(String, Entry)> {
        let c = self.contents.lock();
        c.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Why VM `name` cannot `doing` here now ("start", "be deleted", "be changed"), if an
    /// unsettled move holds it: the answer says what to do.
    pub(crate) fn holds_vm(&self, name: &str, doing: &str) -> Option<String> {
        if let Some(why) = self.holds_all() {
            return Some(why);
        }
        let c = self.contents.lock();
        if let Some(why) = self.held_by_bad(&c, name) {
            return Some(why);
        }
        c.entries.values().find_map(|e| match &e.moved {
            Moved::Vm { name: n, .. } if n == name => Some(format!(
                "VM {name} is being moved to member {to_name} ({}): move outcome not known yet \
                 ({}); it cannot {doing} here until the cluster answers. This node asks it again \
                 in the background, then hands the VM over if the move committed or keeps it: \
                 try again then, here if it stayed, on {to_name} if it moved",
                e.to,
                e.why,
                to_name = e.to_name,
            )),
            _ => None,
        })
    }

    /// Why virtual disk `name` cannot `doing` here now ("be exported", "be deleted", ...), if
    /// an unsettled move holds it: the answer says what to do.
    pub(crate) fn holds_vdisk(&self, name: &str, doing: &str) -> Option<String> {
        if let Some(why) = self.holds_all() {
            return Some(why);
        }
        let c = self.contents.lock();
        if let Some(why) = self.held_by_bad(&c, name) {
            return Some(why);
        }
        c.entries.values().find_map(|e| {
            e.moved.disks().iter().any(|d| d == name).then(|| {
                format!(
                    "virtual disk {name} is being moved to member {to_name} ({}): move outcome \
                     not known yet ({}); it cannot {doing} here until the cluster answers. This \
                     node asks it again in the background: try again then, here if the move did \
                     not commit, on {to_name} if it did",
                    e.to,
                    e.why,
                    to_name = e.to_name,
                )
            })
        })
    }
}

impl Settles {
    /// Registers a move of `what` (described for an error: "virtual disk d") from member `from`
    /// to `to` (`to_name`) as in progress until the returned guard is dropped (see
    /// [`InFlight`]).
    pub(crate) fn in_flight(
        &self,
        what: String,
        from: u64,
        to: u64,
        to_name: &str,
    ) -> InFlight<'_> {
        let mut f = self.flying.lock();
        f.0 += 1;
        let key = f.0;
        let to_name = to_name.to_string();
        f.1.insert(
            key,
            Flying {
                what,
                from,
                to,
                to_name,
            },
        );
        InFlight { settles: self, key }
    }

    /// This node's unsettled moves that involve member `member` (moved from or to it; every one
    /// when this node, `me`, is that member), each described for an error; an entry that cannot
    /// be read, or a file that could not, counts (what it involves cannot be told).
    pub(crate) fn involving(&self, me: u64, member: u64) -> Vec<String> {
        let mut out: Vec<String> = self.holds_all().into_iter().collect();
        let involved = |from: u64, to: u64| me == member || from == member || to == member;
        for f in self
            .flying
            .lock()
            .1
            .values()
            .filter(|f| involved(f.from, f.to))
        {
            out.push(format!(
                "on member {me}: {} from member {} to {} ({}), being moved now",
                f.what, f.from, f.to_name, f.to
            ));
        }
        let c = self.contents.lock();
        for (request, e) in &c.entries {
            if !involved(e.from, e.to) {
                continue;
            }
            let what = e.moved.describe();
            out.push(format!(
                "request {request} on member {me}: {what} from member {} to {} ({}), not known \
                 yet ({})",
                e.from, e.to_name, e.to, e.why
            ));
        }
        for request in c.bad.keys() {
            out.push(format!(
                "request {request} on member {me}: unreadable in {} (see its log)",
                self.file.display()
            ));
        }
        out
    }
}

/// Every unsettled planned move in the cluster that involves member `member` (see
/// [`Settles::involving`]): this node's (`here`) and each other data member's, asked over the
/// member transport (`Call::PendingMoves`, each bounded by `timeout`). Err: none found, but a
/// member that may
/// have some did not answer. `member` itself not answering is no such member: a move it made
/// either committed (then nothing of it is left on it) or did not and may not any more (what
/// it moved is still its own, which the caller refuses anyway); a move to it can only be on
/// the others.
pub(crate) async fn unsettled_involving(
    here: &Settles,
    m: &cluster::ClusterNode,
    member: u64,
    timeout: std::time::Duration,
) -> Result<Vec<String>, String> {
    let me = m.id();
    let mut out = here.involving(me, member);
    let others: Vec<u64> = m.read(|s| {
        s.members
            .values()
            .filter(|x| x.role == cluster::Role::Data && x.id != me)
            .map(|x| x.id)
            .collect()
    });
    let asks = others.iter().map(|peer_id| async move {
        let call = super::peer::Call::PendingMoves { member };
        let r = super::peer::call(m, *peer_id, &call, timeout).await;
        (*peer_id, r)
    });
    let mut unknown = None;
    for (peer_id, r) in futures::future::join_all(asks).await {
        match r {
            Ok(super::peer::Answer::Pending(list)) => out.extend(list),
            Ok(_) => unknown = Some(format!("member {peer_id} answered something else")),
            Err(_) if peer_id == member => {}
            Err(e) => unknown = Some(e.message),
        }
    }
    match unknown {
        Some(why) if out.is_empty() => Err(why),
        _ => Ok(out),
    }
}

/// When `cairn cluster remove` (without `--force`) asks [`refuse_removal_while_unsettled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemovalStep {
    /// Before a data member is drained: moves found refuse; a member that does not answer
    /// soon does not hold the drain up (a drain goes on while a member is away, and the last
    /// step asks again).
    BeforeDrain,
    /// Right before the member leaves: every data member but the leaving one must answer.
    Leaving,
}

/// Refuses removing member `member` (`name`) while a planned move from or to it is not settled
/// (see [`unsettled_involving`]): a move to it may still commit and leave it owning a disk once
/// it is gone, and a move from it is settled by it alone. `cairn cluster remove` (without
/// `--force`) checks this before draining and again before the member leaves (`step`).
pub(crate) async fn refuse_removal_while_unsettled(
    here: &Settles,
    m: &cluster::ClusterNode,
    member: u64,
    name: &str,
    step: RemovalStep,
) -> Result<(), control::ControlError> {
    let unavailable =
        |msg: String| control::ControlError::new(control::ErrorCode::Unavailable, msg);
    let timeout = match step {
        RemovalStep::BeforeDrain => super::peer::LEASE_ASK_TIMEOUT,
        RemovalStep::Leaving => super::peer::STEP_TIMEOUT,
    };
    match unsettled_involving(here, m, member, timeout).await {
        Ok(list) if list.is_empty() => Ok(()),
        Ok(list) => Err(unavailable(format!(
            "member {name} cannot be removed yet: planned moves from or to it are not settled: \
             [{}]. Each mover asks the cluster again in the background and hands over or keeps \
             what it moved once it answers: try again then (or pass --force if {name} is \
             dead and being replaced)",
            list.join("; ")
        ))),
        Err(why) if step == RemovalStep::BeforeDrain => {
            tracing::info!(member, reason = %why, "removal: unsettled moves not known everywhere yet; asked again before the member leaves");
            Ok(())
        }
        Err(why) => Err(unavailable(format!(
            "member {name} cannot be removed yet: whether a planned move from or to it is still \
             unsettled cannot be told ({why}): try again when every other data member answers \
             (start a member that is down, or remove it first if it is dead), or pass --force if \
             {name} itself is dead and being replaced"
        ))),
    }
}

/// Whether `v` holds the string `name` as a value anywhere (at any depth).
fn names(v: &serde_json::Value, name: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == name,
        serde_json::Value::Array(a) => a.iter().any(|x| names(x, name)),
        serde_json::Value::Object(o) => o.values().any(|x| names(x, name)),
        _ => false,
    }
}

/// Keeps `entry` (request `request`) claimed until the cluster settles it, then acts on the
/// answer and forgets it; also after a restart ([`resume`]). Returns the words the caller's
/// answer adds: nothing, or, when the entry could not be saved, that it holds until this node
/// restarts only.
pub(crate) fn pending(
    inner: &Arc<NodeInner>,
    m: &Arc<cluster::ClusterNode>,
    request: String,
    entry: Entry,
) -> String {
    let saved = inner.cluster.settles.add(&request, entry.clone());
    if let Err(e) = &saved {
        tracing::error!(request = %request, error = %e, "planned move: the unsettled move could not be saved; a restart of this node before it is settled forgets its claim");
    }
    claim(inner, &entry);
    settle_in_background(inner.clone(), m.clone(), request, entry);
    match saved {
        Ok(()) => String::new(),
        Err(e) => format!(
            " (this could not be saved: {e}; a restart of this node before then forgets it)"
        ),
    }
}

/// Claims every saved entry again and settles it in the background (at the node's start,
/// before it takes requests; `m` None: this node has no cluster member, the claims then hold).
pub(crate) fn resume(inner: &Arc<NodeInner>) {
    let entries = inner.cluster.settles.entries();
    if entries.is_empty() {
        return;
    }
    let m = inner.cluster.member().ok();
    for (request, entry) in entries {
        tracing::warn!(request = %request, moved = ?entry.moved, to = entry.to, "planned move: unsettled before this node restarted; claimed again and settled now");
        claim(inner, &entry);
        match &m {
            Some(m) => settle_in_background(inner.clone(), m.clone(), request, entry),
            None => {
                tracing::error!(request = %request, "planned move: unsettled, and this node has no cluster member to settle it with; it stays claimed")
            }
        }
    }
}

fn claim(inner: &NodeInner, entry: &Entry) {
    if let Moved::Vm { name, .. } = &entry.moved {
        inner.vms.claim_unsettled(name, entry.to, &entry.to_name);
    }
}

fn settle_in_background(
    inner: Arc<NodeInner>,
    m: Arc<cluster::ClusterNode>,
    request: String,
    entry: Entry,
) {
    let r = request.clone();
    let what = (entry.from, entry.moved.clone());
    super::outcome::settle_later(
        m.clone(),
        request,
        entry.why.clone(),
        what,
        move |o| async move {
            act(&inner, &m, &entry, o).await;
            if let Err(e) = inner.cluster.settles.remove(&r) {
                tracing::error!(request = %r, error = %e, "planned move: settled, but its entry could not be removed; it is settled again (same answer) at the next start");
            }
        },
    );
}

/// Acts on a settled move: hands over what moved, keeps what did not.
async fn act(inner: &NodeInner, m: &cluster::ClusterNode, entry: &Entry, o: Outcome) {
    let (to, tname) = (entry.to, entry.to_name.as_str());
    match (&entry.moved, o) {
        (Moved::Vm { name, .. }, Outcome::Moved(epoch)) if came_back(m, &entry.moved) => {
            // Settled again after a restart (its entry could not be removed), and the VM was
            // moved back since: the one defined here is the cluster's now, never forgotten.
            tracing::warn!(vm = %name, epoch, "planned VM move committed earlier, but its disks are this node's again: the VM defined here stays");
            inner.vms.unclaim(name);
        }
        (Moved::Vm { name, disks, .. }, Outcome::Moved(epoch)) => {
            super::vm_move::handed_over(inner, name, to, tname, disks, epoch).await;
            if let Err(e) = super::manual::wait_served(m, to, tname, disks, epoch).await {
                tracing::warn!(vm = %name, error = %e.message, "planned VM move");
            }
        }
        (Moved::Vm { name, .. }, o) => {
            tracing::warn!(vm = %name, outcome = ?o, "planned VM move did not happen: the VM stays here");
            inner.vms.unclaim(name);
        }
        (Moved::Vdisk { name }, Outcome::Moved(epoch)) => {
            super::manual::handed_over(inner, name, to, tname, epoch);
            let one = std::slice::from_ref(name);
            if let Err(e) = super::manual::wait_served(m, to, tname, one, epoch).await {
                tracing::warn!(vdisk = %name, error = %e.message, "planned move");
            }
        }
        (Moved::Vdisk { name }, o) => tracing::warn!(
            vdisk = %name,
            outcome = ?o,
            "planned move did not happen: the disk stays on this node"
        ),
    }
}

/// Whether a moved VM is this node's again (moved back since): its record (by id) here and
/// every disk that moved with it assigned here ([`Moved::still_on`]). An entry without the
/// record's id needs at least one moved disk to tell (a record of that name here may be
/// another VM's).
fn came_back(m: &cluster::ClusterNode, moved: &Moved) -> bool {
    let me = m.id();
    match moved {
        Moved::Vm { disks, id, .. } if id.is_some() || !disks.is_empty() => {
            m.read(|s| moved.still_on(s, me))
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn vm_entry() -> Entry {
        Entry {
            moved: Moved::Vm {
                name: "web".into(),
                disks: vec!["web-root".into(), "web-data".into()],
                id: Some("1/web".into()),
            },
            from: 1,
            to: 2,
            to_name: "b".into(),
            why: "no commit in time".into(),
        }
    }

    /// A node on `dir` with two small pool disks and no API; `host_cluster`: a one-member
    /// cluster of its own.
    pub(crate) async fn start_node(dir: &Path, host_cluster: bool) -> crate::Node {
        let mut cfg = crate::NodeConfig::new(dir.join("data"));
        cfg.disk_count = 2;
        cfg.disk_size_bytes = 128 << 20;
        cfg.api_listen = None;
        cfg.host_cluster = host_cluster;
        crate::Node::start(cfg).await.unwrap()
    }

    pub(crate) fn op() -> control::Actor {
        control::Actor {
            user: "op".into(),
            role: control::Role::Operator,
            via: control::Via::Api,
        }
    }

    /// A one-member node with virtual disk `d` (64 MiB) and VM `g` on it, once the cluster
    /// records both as this node's (the creates commit them; the state applies them here).
    async fn node_with_vm_g(dir: &Path) -> crate::Node {
        let n = start_node(dir, true).await;
        let ctl = n.controller();
        let r = control::Request::VdiskCreate {
            name: "d".into(),
            size_bytes: 64 << 20,
        };
        ctl.execute(op(), r).await.unwrap();
        ctl.execute(op(), vm_create(dir, "g", &["d"]))
            .await
            .unwrap();
        let m = n.inner.cluster.member().unwrap();
        let me = m.id();
        for i in 0.. {
            let here = m.read(|s| {
                crate::harestart::disk_owner(s, "d") == Some(me)
                    && s.vms.values().any(|v| v.name == "g" && v.node == Some(me))
            });
            if here {
                break;
            }
            assert!(i < 1000, "the cluster never recorded d and g on this node");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        n
    }

    /// `vm create NAME` on `disks` with a kernel that is no real one (never started here).
    fn vm_create(dir: &Path, name: &str, disks: &[&str]) -> control::Request {
        let kernel = dir.join("kernel.elf");
        std::fs::write(&kernel, b"\x7fELF not really").unwrap();
        control::Request::VmCreate {
            name: name.into(),
            vcpus: 1,
            memory_mib: 128,
            disks: disks.iter().map(|d| d.to_string()).collect(),
            kernel: kernel.to_str().unwrap().into(),
            cmdline: None,
            nics: Vec::new(),
        }
    }

    #[test]
    fn entries_survive_a_reload_and_are_removed_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settles::open(dir.path());
        assert!(s.entries().is_empty(), "no file: nothing pending");
        s.add("r1", vm_entry()).unwrap();
        let disk = Entry {
            moved: Moved::Vdisk { name: "db".into() },
            ..vm_entry()
        };
        s.add("r2", disk.clone()).unwrap();
        let back = Settles::open(dir.path());
        assert_eq!(
            back.entries(),
            vec![("r1".to_string(), vm_entry()), ("r2".to_string(), disk)]
        );
        let held = back.holds_vdisk("web-data", "be exported").unwrap();
        assert!(held.contains("move outcome not known yet"), "{held}");
        assert!(back.holds_vdisk("db", "be exported").is_some());
        assert_eq!(back.holds_vdisk("other", "be exported"), None);
        let held = back.holds_vm("web", "start").unwrap();
        assert!(held.contains("move outcome not known yet"), "{held}");
        assert_eq!(back.holds_vm("db", "start"), None);
        back.remove("r2").unwrap();
        back.remove("r2").unwrap();
        assert_eq!(
            Settles::open(dir.path()).entries(),
            vec![("r1".to_string(), vm_entry())]
        );
        back.remove("r1").unwrap();
        assert!(Settles::open(dir.path()).entries().is_empty());
        assert!(!dir.path().join("move-settles.json.tmp").exists());
    }

    /// An entry written before the VM's record id was kept still reads (and decides by the
    /// name); one with it keeps it.
    #[test]
    fn a_vm_entry_without_the_record_id_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let old = serde_json::json!({"r1": {
            "moved": {"kind": "vm", "name": "web", "disks": ["web-root"]},
            "from": 1, "to": 2, "to_name": "b", "why": "no commit in time"
        }});
        std::fs::write(dir.path().join(FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        let s = Settles::open(dir.path());
        let want = Moved::Vm {
            name: "web".into(),
            disks: vec!["web-root".into()],
            id: None,
        };
        assert_eq!(s.entries().len(), 1);
        assert_eq!(s.entries()[0].1.moved, want);
        s.add("r2", vm_entry()).unwrap();
        let back = Settles::open(dir.path()).entries();
        assert_eq!(back[1], ("r2".to_string(), vm_entry()));
    }

    #[test]
    fn a_bad_entry_is_kept_verbatim_and_the_others_still_hold() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        let good = serde_json::to_value(vm_entry()).unwrap();
        let bad =
            serde_json::json!({"moved": {"kind": "vm", "name": 5, "disks": ["db"]}, "from": 1});
        std::fs::write(
            &file,
            serde_json::to_vec(&serde_json::json!({"good": good, "bad": bad})).unwrap(),
        )
        .unwrap();
        let (c, errors) = read(&file).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("request bad:"), "{errors:?}");
        let s = Settles::open(dir.path());
        assert_eq!(s.entries(), vec![("good".to_string(), vm_entry())]);
        // What it names is held: its VM's name is no string, its disk's is.
        let held = s.holds_vdisk("db", "be exported").unwrap();
        assert!(
            held.contains("named by unsettled planned move bad"),
            "{held}"
        );
        assert!(s.holds_vm("db", "start").is_some());
        assert_eq!(s.holds_vm("other", "start"), None);
        assert_eq!(
            s.holds_vdisk("moved", "be exported"),
            None,
            "keys name nothing"
        );
        // A rewrite (the good one settled) keeps the unreadable entry as it was.
        s.remove("good").unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(raw, serde_json::json!({ "bad": bad }));
        assert_eq!(c.bad.len(), 1);
    }

    /// A disk whose planned move is unsettled cannot reach a guest another way: attached to a
    /// VM (a running one would serve it at once), or a VM defined with it started.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unsettled_disk_is_neither_attached_nor_started_with_another_vm() {
        use control::{ErrorCode, Request};
        let dir = tempfile::tempdir().unwrap();
        let n = start_node(dir.path(), false).await;
        let ctl = n.controller();
        for d in ["d", "e"] {
            let r = Request::VdiskCreate {
                name: d.into(),
                size_bytes: 64 << 20,
            };
            ctl.execute(op(), r).await.unwrap();
        }
        ctl.execute(op(), vm_create(dir.path(), "h", &["e"]))
            .await
            .unwrap();
        let entry = Entry {
            moved: Moved::Vdisk { name: "d".into() },
            ..vm_entry()
        };
        n.inner.cluster.settles.add("r1", entry).unwrap();
        let attach = Request::VmDiskAttach {
            name: "h".into(),
            vdisk: "d".into(),
        };
        let e = ctl.execute(op(), attach).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(e.message.contains("move outcome not known yet"), "{e:?}");
        // Defined with it (nothing served yet), but not started.
        ctl.execute(op(), vm_create(dir.path(), "g", &["d"]))
            .await
            .unwrap();
        let start = Request::VmStart { name: "g".into() };
        let e = ctl.execute(op(), start).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(e.message.contains("move outcome not known yet"), "{e:?}");
        n.shutdown().await.unwrap();
    }

    /// A disk or VM whose planned move is unsettled is neither changed nor deleted here: it may
    /// be the target's already (what this node did would be lost, or undo the target's) or
    /// become so. Every such request is refused, saying why and what to do, and changes nothing;
    /// once settled, the same requests pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unsettled_disk_or_vm_is_neither_changed_nor_deleted() {
        use control::{ErrorCode, Request};
        let dir = tempfile::tempdir().unwrap();
        let n = start_node(dir.path(), false).await;
        let ctl = n.controller();
        for d in ["d", "e"] {
            let r = Request::VdiskCreate {
                name: d.into(),
                size_bytes: 64 << 20,
            };
            ctl.execute(op(), r).await.unwrap();
        }
        let snap = |vdisk: &str, name: &str| Request::SnapshotCreate {
            vdisk: vdisk.into(),
            name: name.into(),
        };
        ctl.execute(op(), snap("d", "s1")).await.unwrap();
        ctl.execute(op(), vm_create(dir.path(), "h", &["e"]))
            .await
            .unwrap();
        let disk = Entry {
            moved: Moved::Vdisk { name: "d".into() },
            ..vm_entry()
        };
        n.inner.cluster.settles.add("r1", disk).unwrap();
        let vm = Entry {
            moved: Moved::Vm {
                name: "h".into(),
                disks: vec!["e".into()],
                id: None,
            },
            ..vm_entry()
        };
        n.inner.cluster.settles.add("r2", vm).unwrap();
        let resize = |name: &str| Request::VdiskResize {
            name: name.into(),
            size_bytes: 128 << 20,
        };
        let refused = [
            (Request::VdiskDelete { name: "d".into() }, "be deleted"),
            (Request::VdiskDelete { name: "e".into() }, "be deleted"),
            (
                Request::VdiskClone {
                    source: "d".into(),
                    snapshot: Some("s1".into()),
                    name: "c".into(),
                },
                "be cloned",
            ),
            (resize("d"), "be resized"),
            (snap("d", "s2"), "be snapshotted"),
            (snap("e", "s2"), "be snapshotted"),
            (
                Request::SnapshotDelete {
                    vdisk: "d".into(),
                    name: "s1".into(),
                },
                "have its snapshots deleted",
            ),
            (
                Request::SnapshotRollback {
                    vdisk: "d".into(),
                    name: "s1".into(),
                },
                "be rolled back",
            ),
            (Request::VmDelete { name: "h".into() }, "be deleted"),
            (
                Request::VmUpdate {
                    name: "h".into(),
                    new_name: Some("h2".into()),
                    description: None,
                    vcpus: None,
                    memory_mib: None,
                    cmdline: None,
                    disks: None,
                    nics: None,
                },
                "be changed",
            ),
            (
                Request::VmDiskDetach {
                    name: "h".into(),
                    vdisk: "e".into(),
                    force: true,
                    timeout_ms: None,
                },
                "be changed",
            ),
        ];
        for (r, doing) in &refused {
            let e = ctl.execute(op(), r.clone()).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::Unavailable, "{r:?}: {e:?}");
            for said in [
                "move outcome not known yet",
                &format!("it cannot {doing} here until the cluster answers"),
                "try again then",
            ] {
                assert!(e.message.contains(said), "{r:?}: {e:?}");
            }
        }
        // Nor exported to a file (an admin request).
        let out = dir.path().join("d-export.raw");
        let export = Request::VdiskExport {
            name: "d".into(),
            snapshot: None,
            file: out.display().to_string(),
        };
        let admin = control::Actor {
            role: control::Role::Admin,
            ..op()
        };
        let e = ctl.execute(admin, export).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(
            e.message.contains("it cannot be exported to a file here"),
            "{e:?}"
        );
        assert!(!out.exists(), "no file written");
        // Nothing changed.
        let engine = &n.inner.engine;
        assert_eq!(engine.vdisk("d").unwrap().size_bytes, 64 << 20);
        assert!(engine.vdisk("c").is_err(), "no clone made");
        let snaps: Vec<String> = engine
            .snapshots("d")
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(snaps, vec!["s1".to_string()]);
        assert!(engine.snapshots("e").unwrap().is_empty());
        let defined = n.inner.vms.defined();
        assert_eq!(defined, vec![("h".to_string(), vec!["e".to_string()])]);
        // Settled (not moved): the same requests pass.
        n.inner.cluster.settles.remove("r1").unwrap();
        n.inner.cluster.settles.remove("r2").unwrap();
        ctl.execute(op(), resize("d")).await.unwrap();
        ctl.execute(op(), snap("e", "s2")).await.unwrap();
        let e = Request::VmDelete { name: "h".into() };
        ctl.execute(op(), e).await.unwrap();
        n.shutdown().await.unwrap();
    }

    /// A committed VM move settled again after a restart (its entry was not removed) does not
    /// forget a VM whose disks are this node's again (moved back since).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vm_moved_back_is_not_forgotten_by_a_stale_entry() {
        use control::Request;
        let dir = tempfile::tempdir().unwrap();
        let n = node_with_vm_g(dir.path()).await;
        let ctl = n.controller();
        let m = n.inner.cluster.member().unwrap();
        let me = m.id();
        let entry = Entry {
            moved: Moved::Vm {
                name: "g".into(),
                disks: vec!["d".into()],
                id: None,
            },
            from: me,
            to: me + 1,
            to_name: "b".into(),
            why: "no commit in time".into(),
        };
        n.inner.vms.claim_unsettled("g", entry.to, &entry.to_name);
        act(&n.inner, &m, &entry, Outcome::Moved(1)).await;
        let defined: Vec<String> = n.inner.vms.defined().into_iter().map(|(v, _)| v).collect();
        assert_eq!(defined, vec!["g".to_string()]);
        // A VM none of whose disks moved with it (all on the target already, or none): its
        // record, by id, tells that it is back (before: no disk to tell, so forgotten).
        let id = m.read(|s| s.vms.values().find(|v| v.name == "g").map(|v| v.id.clone()));
        let no_disks = Entry {
            moved: Moved::Vm {
                name: "g".into(),
                disks: Vec::new(),
                id,
            },
            ..entry.clone()
        };
        n.inner.vms.claim_unsettled("g", entry.to, &entry.to_name);
        act(&n.inner, &m, &no_disks, Outcome::Moved(1)).await;
        let defined: Vec<String> = n.inner.vms.defined().into_iter().map(|(v, _)| v).collect();
        assert_eq!(defined, vec!["g".to_string()]);
        // And unclaimed: it can be changed again.
        let r = Request::VmUpdate {
            name: "g".into(),
            new_name: None,
            description: Some("back".into()),
            vcpus: None,
            memory_mib: None,
            cmdline: None,
            disks: None,
            nics: None,
        };
        ctl.execute(op(), r).await.unwrap();
        n.shutdown().await.unwrap();
    }

    /// The cluster remembers the answers of its last 8,192 tagged commands only: a move that
    /// applied before this node came back may have its answer forgotten, and its fence then
    /// answers the no-op's `Ok`. Settled from where the cluster assigns what moved: still here
    /// is "not moved", elsewhere is "moved" (the old logic kept it as not moved). A request id
    /// never proposed stands in for a forgotten one (the state machine cannot tell them apart),
    /// the records for a move whose answer was forgotten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_move_whose_answer_the_cluster_forgot_is_settled_from_where_it_is() {
        use super::super::outcome::settle;
        let dir = tempfile::tempdir().unwrap();
        let n = node_with_vm_g(dir.path()).await;
        let m = n.inner.cluster.member().unwrap();
        let me = m.id();
        let record =
            |m: &cluster::ClusterNode| m.read(|s| s.vms.values().find(|v| v.name == "g").cloned());
        let record_by_id = |m: &cluster::ClusterNode, id: &str| m.read(|s| s.vms.get(id).cloned());
        let g_id = record(&m).unwrap().id;
        let vm = Moved::Vm {
            name: "g".into(),
            disks: vec!["d".into()],
            id: Some(g_id.clone()),
        };
        // A VM whose disks all stayed (or that has none) is told by its record's id alone.
        let vm_no_disks = Moved::Vm {
            name: "g".into(),
            disks: Vec::new(),
            id: Some(g_id.clone()),
        };
        let disk = |name: &str| Moved::Vdisk { name: name.into() };
        let forgotten = || cluster::ClusterNode::request_id();
        let why = || "no commit in time".to_string();
        assert_eq!(
            settle(&m, &forgotten(), why(), me, &vm).await,
            Outcome::NotMoved(why())
        );
        assert_eq!(
            settle(&m, &forgotten(), why(), me, &vm_no_disks).await,
            Outcome::NotMoved(why())
        );
        assert_eq!(
            settle(&m, &forgotten(), why(), me, &disk("d")).await,
            Outcome::NotMoved(why())
        );
        // Moved away (the VM's record on no node of this one, a disk owned by member 999).
        let mut away = record(&m).unwrap();
        away.node = None;
        let put = m.propose(cluster::Command::PutVm(away)).await.unwrap();
        assert_eq!(put, cluster::CommandResult::Ok);
        let x = cluster::VdiskDef {
            id: "999/x".into(),
            name: "x".into(),
            size_bytes: 64 << 20,
            parent_snapshot: None,
        };
        let put = m.propose(cluster::Command::CreateVdisk(x)).await.unwrap();
        assert_eq!(put, cluster::CommandResult::Ok);
        let epoch = m.read(|s| s.placement.version);
        assert_eq!(
            settle(&m, &forgotten(), why(), me, &vm).await,
            Outcome::Moved(epoch)
        );
        assert_eq!(
            settle(&m, &forgotten(), why(), me, &disk("x")).await,
            Outcome::Moved(epoch)
        );
        // Another VM named g recorded on this node (one moved here whose name clashes): the
        // disk that moved with g tells, not the name (before: taken for g, kept as not moved).
        let clash = cluster::VmDef {
            id: "7/g".into(),
            name: "g".into(),
            vcpus: 1,
            memory_mib: 64,
            vdisks: Vec::new(),
            node: Some(me),
            power: cluster::VmPower::Stopped,
        };
        let put = m.propose(cluster::Command::PutVm(clash)).await.unwrap();
        assert_eq!(put, cluster::CommandResult::Ok);
        let with_x = Moved::Vm {
            name: "g".into(),
            disks: vec!["x".into()],
            id: None,
        };
        let epoch = m.read(|s| s.placement.version);
        assert_eq!(
            settle(&m, &forgotten(), why(), me, &with_x).await,
            Outcome::Moved(epoch)
        );
        // No disk moved with it: the record's id tells g (on no node) from the clash here
        // (before: taken for g by its name, kept as not moved).
        assert_eq!(
            settle(&m, &forgotten(), why(), me, &vm_no_disks).await,
            Outcome::Moved(epoch)
        );
        // Moved back: its own record on this node again.
        let mut back = record_by_id(&m, &g_id).unwrap();
        back.node = Some(me);
        let put = m.propose(cluster::Command::PutVm(back)).await.unwrap();
        assert_eq!(put, cluster::CommandResult::Ok);
        assert_eq!(
            settle(&m, &forgotten(), why(), me, &vm_no_disks).await,
            Outcome::NotMoved(why())
        );
        n.shutdown().await.unwrap();
    }

    /// A member is not removed while a planned move from or to it is unsettled: a move to it
    /// may still commit and leave it owning a disk once gone, one from it only it can settle.
    /// Refused through the request `cairn cluster remove` sends, naming the moves, before any
    /// draining starts; a move between other members does not hold it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_with_an_unsettled_move_is_not_removed() {
        use cluster::{Command, CommandResult, MemberState, Role};
        use control::{ErrorCode, Request};
        let dir = tempfile::tempdir().unwrap();
        let n = start_node(dir.path(), true).await;
        let ctl = n.controller();
        let m = n.inner.cluster.member().unwrap();
        let me = m.id();
        // A second data member b in the cluster state (admitted with a token; no node runs it).
        let issue = Command::IssueJoinToken {
            token_hash: "h".into(),
            expires_ms: u64::MAX,
            role: Role::Data,
        };
        assert_eq!(m.propose(issue).await.unwrap(), CommandResult::Ok);
        let consume = Command::ConsumeJoinToken {
            token_hash: "h".into(),
            now_ms: 1,
            name: "b".into(),
            addr: "127.0.0.1:1".into(),
            join_addr: "127.0.0.1:1".into(),
        };
        let CommandResult::NodeId(b) = m.propose(consume).await.unwrap() else {
            panic!("b not admitted");
        };
        let to_b = Entry {
            moved: Moved::Vdisk { name: "d".into() },
            from: me,
            to: b,
            to_name: "b".into(),
            why: "no commit in time".into(),
        };
        n.inner.cluster.settles.add("r1", to_b.clone()).unwrap();
        let remove = |node: String| Request::ClusterRemove { node, force: false };
        let admin = || control::Actor {
            role: control::Role::Admin,
            ..op()
        };
        let e = ctl.execute(admin(), remove("b".into())).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        for said in [
            "member b cannot be removed yet",
            &format!("request r1 on member {me}: virtual disk d from member {me} to b ({b})"),
            "try again then",
        ] {
            assert!(e.message.contains(said), "{said:?} not in {e:?}");
        }
        let state = m.read(|s| s.members.get(&b).map(|x| x.state));
        assert_eq!(state, Some(MemberState::Joining), "nothing changed");
        // A move being made now holds the removal the same way, until it has an outcome.
        n.inner.cluster.settles.remove("r1").unwrap();
        {
            let what = "virtual disk e".to_string();
            let _flight = n.inner.cluster.settles.in_flight(what, me, b, "b");
            let e = ctl.execute(admin(), remove("b".into())).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
            let said = format!("virtual disk e from member {me} to b ({b}), being moved now");
            assert!(e.message.contains(&said), "{said:?} not in {e:?}");
        }
        assert!(n.inner.cluster.settles.involving(me, b).is_empty());
        // Right before proposing, a move reads its target fresh: only an active data member.
        let e = crate::takeover::manual::target_still_active(&m, b, "b")
            .await
            .unwrap_err();
        assert!(e.message.contains("not an active data member"), "{e:?}");
        let drain = Command::SetMemberState {
            id: b,
            state: MemberState::Draining,
        };
        assert_eq!(m.propose(drain).await.unwrap(), CommandResult::Ok);
        let e = crate::takeover::manual::target_still_active(&m, b, "b")
            .await
            .unwrap_err();
        assert!(
            e.message.contains("being removed from the cluster"),
            "{e:?}"
        );
        crate::takeover::manual::target_still_active(&m, me, "a")
            .await
            .unwrap();
        let e = crate::takeover::manual::target_still_active(&m, b + 100, "z")
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        // Back to joining: a data member that is not drained never leaves without --force
        // (a witness, which cannot drain it, is refused so).
        let undrain = Command::SetMemberState {
            id: b,
            state: MemberState::Joining,
        };
        assert_eq!(m.propose(undrain).await.unwrap(), CommandResult::Ok);
        let e = n.inner.cluster.remove("b", false).await.unwrap_err();
        assert!(e.message.contains("is not drained"), "{e:?}");
        n.inner.cluster.settles.add("r1", to_b.clone()).unwrap();
        // This node's own removal is held by each of its unsettled moves, wherever they go.
        let elsewhere = Entry {
            to: b + 100,
            ..to_b
        };
        n.inner.cluster.settles.remove("r1").unwrap();
        n.inner.cluster.settles.add("r2", elsewhere).unwrap();
        let e = ctl
            .execute(admin(), remove(me.to_string()))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(e.message.contains("request r2"), "{e:?}");
        // A move between other members does not hold b: its removal goes on to the next check
        // (here: too few data nodes would be left to drain it onto).
        let e = ctl.execute(admin(), remove("b".into())).await.unwrap_err();
        assert!(e.message.contains("would leave 1 data node"), "{e:?}");
        // Nothing pending here, and b, which may have some, does not answer: this node's drain
        // may start (asked again before it leaves), but it may not leave.
        n.inner.cluster.settles.remove("r2").unwrap();
        let settles = &n.inner.cluster.settles;
        let ask = |step| refuse_removal_while_unsettled(settles, &m, me, "a", step);
        ask(RemovalStep::BeforeDrain).await.unwrap();
        let e = ask(RemovalStep::Leaving).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(e.message.contains("cannot be told"), "{e:?}");
        // A local copy the cluster assigns to b now (moved there) is not exported to a file
        // here, as it is not exported over NBD: it may be stale.
        let create = Request::VdiskCreate {
            name: "x".into(),
            size_bytes: 16 << 20,
        };
        ctl.execute(admin(), create).await.unwrap();
        let moved = Command::MoveVdisk {
            id: format!("{me}/x"),
            to: b,
            record: true,
            unused_outdated: Vec::new(),
        };
        let r = m.propose(moved).await.unwrap();
        assert!(matches!(r, CommandResult::PlacementVersion(_)), "{r:?}");
        let out = dir.path().join("x.raw");
        let export = Request::VdiskExport {
            name: "x".into(),
            snapshot: None,
            file: out.display().to_string(),
        };
        let e = ctl.execute(admin(), export).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
        assert!(e.message.contains(&format!("served by node {b}")), "{e:?}");
        assert!(!out.exists(), "no file written");
        n.shutdown().await.unwrap();
    }

    #[test]
    fn an_unreadable_file_is_refused_clearly_and_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        std::fs::write(&file, b"not json").unwrap();
        let e = read(&file).unwrap_err();
        assert!(e.starts_with("not a JSON object of moves"), "{e}");
        let s = Settles::open(dir.path());
        assert!(s.entries().is_empty());
        let aside = dir.path().join("move-settles.json.unreadable");
        assert_eq!(std::fs::read(&aside).unwrap(), b"not json");
        // Not "nothing pending": what it held cannot be told, so nothing starts or is exported.
        for held in [
            s.holds_vm("any", "start"),
            s.holds_vdisk("any", "be exported"),
        ] {
            let held = held.unwrap();
            assert!(held.contains("could not be read"), "{held}");
            assert!(held.contains("move-settles.json.unreadable"), "{held}");
        }
        s.add("r1", vm_entry()).unwrap();
        assert_eq!(std::fs::read(&aside).unwrap(), b"not json");
        assert!(s.holds_vm("any", "start").is_some(), "still, after a write");
        // Once the admin removed it, only the real entries hold.
        std::fs::remove_file(&aside).unwrap();
        assert_eq!(s.holds_vm("any", "start"), None);
        assert!(s.holds_vm("web", "start").is_some());
        assert_eq!(Settles::open(dir.path()).entries().len(), 1);
    }
}
