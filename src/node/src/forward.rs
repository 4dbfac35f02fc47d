//! The web UI and REST API of every member manage the whole cluster (issue 5): a request that
//! came in through the API ([`Via::Api`]) about a virtual disk or VM the cluster assigns to
//! another member is carried out by that member (a peer call, [`Call::Execute`]), and the lists
//! of virtual disks and VMs add every other member's (in pages, [`Call::ListPage`]), each of
//! those items naming its member (`node`). The CLI on a node's unix socket keeps managing that
//! node only, and so do the node's own tasks.
//!
//! What it must never do: carry out a request on another member that the caller's role does
//! not allow (the receiver checks the role again too), pass a request on twice (what arrives
//! from a member is never passed on), pass on what a planned move not settled here still
//! claims (refused here, as before), or let a list wait unbounded for a member.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{NodeHealth, NodeId, Role};
use control::{
    Actor, ControlError, ControlResult, Controller, ErrorCode, Reply, Request, VdiskView, Via,
    VmView,
};
use serde::Serialize;

pub(crate) mod console;

use crate::controller::NodeController;
use crate::takeover::peer::{self, Answer, Call};
use crate::NodeInner;

/// How long a request carried out on another member may take (a clone or delete waits for the
/// engine), as it would here; a VM stop or disk detach waits its own timeout on top.
const EXECUTE_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests passed on at once from this node; more wait for a turn. They share each member's
/// connection with raft, whose messages must not wait behind them.
const MAX_PASSED_ON: usize = 16;
/// A VM's console output passed on between members: its JSON (control bytes escaped up to six
/// times their size) stays under the member transport's bound.
const MAX_CONSOLE_PASSED_ON: u64 = 32 << 10;
/// Bound on one page of another member's list.
const PAGE_TIMEOUT: Duration = peer::LEASE_ASK_TIMEOUT;
/// Bound on all of one member's list: past it, the list goes without that member's items
/// (the UI names what the cluster has and no list showed).
const LIST_TIMEOUT: Duration = Duration::from_secs(3);
/// Encoded list items in one page, well under the member transport's bound on a reply.
const PAGE_BYTES: usize = cluster::MAX_APP_BYTES / 4 * 3;

/// This node's share of passing requests on (one per node, in `NodeInner`).
pub(crate) struct Forwarding {
    /// Turns for requests passed on at once ([`MAX_PASSED_ON`]).
    turns: tokio::sync::Semaphore,
    /// When this node last caught up with the cluster for a name new to it ([`holder_now`]).
    last_catch_up: parking_lot::Mutex<Option<Instant>>,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding {
            turns: tokio::sync::Semaphore::new(MAX_PASSED_ON),
            last_catch_up: parking_lot::Mutex::new(None),
        }
    }
}

/// A virtual disk or VM view as the lists carry it between members.
pub(crate) trait Listed: Serialize + Sized {
    /// Whether these are VMs (else virtual disks), as [`Call::ListPage`] asks.
    const VMS: bool;
    fn name(&self) -> &str;
    /// Names the member that holds it (None: the node answering).
    fn set_node(&mut self, node: Option<String>);
    fn into_page(items: Vec<Self>, more: bool) -> Answer;
    fn from_page(a: Answer) -> Option<(Vec<Self>, bool)>;
}

impl Listed for VdiskView {
    const VMS: bool = false;
    fn name(&self) -> &str {
        &self.name
    }
    fn set_node(&mut self, node: Option<String>) {
        self.node = node;
    }
    fn into_page(items: Vec<Self>, more: bool) -> Answer {
        Answer::VdiskPage { items, more }
    }
    fn from_page(a: Answer) -> Option<(Vec<Self>, bool)> {
        match a {
            Answer::VdiskPage { items, more } => Some((items, more)),
            _ => None,
        }
    }
}

impl Listed for VmView {
    const VMS: bool = true;
    fn name(&self) -> &str {
        &self.name
    }
    fn set_node(&mut self, node: Option<String>) {
        self.node = node;
    }
    fn into_page(items: Vec<Self>, more: bool) -> Answer {
        Answer::VmPage { items, more }
    }
    fn from_page(a: Answer) -> Option<(Vec<Self>, bool)> {
        match a {
            Answer::VmPage { items, more } => Some((items, more)),
            _ => None,
        }
    }
}

/// The name of member `id`, as this node's view of the cluster has it.
fn member_name(m: &cluster::ClusterNode, id: NodeId) -> Option<String> {
    m.read(|s| s.members.get(&id).map(|x| x.name.clone()))
}

/// `actor`'s request as member `from` passed it on: carried out by this node's controller,
/// which checks the role again and passes nothing on further ([`Via::Peer`]). Only a data
/// member passes requests on (a witness has no API whose requests it could pass on).
pub(crate) fn as_peer(
    inner: &Arc<NodeInner>,
    from: NodeId,
    actor: Actor,
) -> Result<(NodeController, Actor), ControlError> {
    let m = inner.cluster.member()?;
    if m.read(|s| s.members.get(&from).map(|x| x.role)) != Some(Role::Data) {
        return Err(ControlError::new(
            ErrorCode::Forbidden,
            format!("member {from} is not a data member: it passes on no requests"),
        ));
    }
    let ctl = NodeController {
        inner: inner.clone(),
    };
    let actor = Actor {
        via: Via::Peer,
        ..actor
    };
    Ok((ctl, actor))
}

/// Whether `req` is one another member may pass on to this one.
fn taken_from_members(req: &Request) -> bool {
    about(req).is_some() || matches!(req, Request::VmCreate { .. } | Request::DiskRemove { .. })
}

/// What a request is about, by name.
enum About<'a> {
    Vdisk(&'a str),
    Vm(&'a str),
}

/// The virtual disk or VM `req` is about, for the requests another member carries out when it
/// holds that disk or VM. Creates and imports happen on the node asked; NBD exports and
/// exports to a file are of this node's host.
fn about(req: &Request) -> Option<About<'_>> {
    Some(match req {
        Request::VdiskGet { name }
        | Request::VdiskResize { name, .. }
        | Request::VdiskDelete { name } => About::Vdisk(name),
        Request::VdiskClone { source, .. } => About::Vdisk(source),
        Request::SnapshotCreate { vdisk, .. }
        | Request::SnapshotList { vdisk }
        | Request::SnapshotDelete { vdisk, .. }
        | Request::SnapshotRollback { vdisk, .. }
        | Request::SnapshotDiff { vdisk, .. } => About::Vdisk(vdisk),
        Request::VmGet { name }
        | Request::VmStart { name }
        | Request::VmStop { name, .. }
        | Request::VmPause { name }
        | Request::VmResume { name }
        | Request::VmDelete { name }
        | Request::VmConsole { name, .. }
        | Request::VmDiskAttach { name, .. }
        | Request::VmDiskDetach { name, .. }
        | Request::VmUpdate { name, .. } => About::Vm(name),
        _ => return None,
    })
}

/// The other member (id, name) the cluster assigns what `req` is about to; None when it is
/// this node's, not in the cluster, or claimed by a planned move not settled here (then this
/// node refuses it in words, as before). A new VM goes where its disks are; one whose disks
/// are on different members is refused.
pub(crate) fn holder(
    inner: &NodeInner,
    req: &Request,
) -> Result<Option<(NodeId, String)>, ControlError> {
    if let Request::VmCreate { name, disks, .. } = req {
        return vm_home(inner, name, disks);
    }
    if let Request::DiskRemove { disk } = req {
        return Ok(disk_home(inner, disk).map(|(id, member, _)| (id, member)));
    }
    let found = holder_of(inner, req);
    let attach = match req {
        Request::VmDiskAttach { name, vdisk }
            if found.is_none() && inner.vms.defined().iter().any(|(n, _)| n == name) =>
        {
            Some((name, vdisk))
        }
        _ => None,
    };
    if let Some((name, vdisk)) = attach {
        // The VM is this node's: a disk another member holds cannot be served to it here.
        let disk = Request::VdiskGet {
            name: vdisk.clone(),
        };
        if let Some((_, member)) = holder_of(inner, &disk) {
            return Err(ControlError::new(
                ErrorCode::Conflict,
                format!(
                    "virtual disk {vdisk} is on member {member} and VM {name} runs on this \
                     node: a VM's disks are on the member that runs it (move one of them \
                     first: cairn vdisk takeover, cairn vm move)"
                ),
            ));
        }
    }
    Ok(found)
}

/// [`holder`], with this node's view of the cluster brought up to date first when `req`
/// names something neither that view records nor this node has: a disk another member just
/// cloned, a VM it just created, may be committed and not applied here yet. At most one such
/// catch-up per [`CATCH_UP_EVERY`] (on a follower it is a raft write): names that exist
/// nowhere are refused as before, without one each.
pub(crate) async fn holder_now(
    inner: &NodeInner,
    req: &Request,
) -> Result<Option<(NodeId, String)>, ControlError> {
    let found = holder(inner, req)?;
    if found.is_some() || !unknown_here(inner, req) {
        return Ok(found);
    }
    let Ok(m) = inner.cluster.member() else {
        return Ok(found);
    };
    {
        let mut last = inner.forward.last_catch_up.lock();
        if last.is_some_and(|t| t.elapsed() < CATCH_UP_EVERY) {
            return Ok(found);
        }
        *last = Some(Instant::now());
    }
    let _ = tokio::time::timeout(CATCH_UP_TIMEOUT, m.read_fresh(|_| ())).await;
    holder(inner, req)
}

/// See [`holder_now`].
const CATCH_UP_EVERY: Duration = Duration::from_millis(500);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `req` names a virtual disk or VM (or a new VM's disk) that this node's view of the
/// cluster does not record and this node does not have.
fn unknown_here(inner: &NodeInner, req: &Request) -> bool {
    let Ok(m) = inner.cluster.member() else {
        return false;
    };
    let disk_unknown = |d: &str| {
        inner.engine.vdisk(d).is_err() && m.read(|s| !s.vdisks.values().any(|x| x.name == d))
    };
    match (req, about(req)) {
        (Request::VmCreate { disks, .. }, _) => disks.iter().any(|d| disk_unknown(d)),
        (_, Some(About::Vdisk(d))) => disk_unknown(d),
        (_, Some(About::Vm(v))) => {
            !inner.vms.defined().iter().any(|(n, _)| n == v)
                && m.read(|s| !s.vms.values().any(|x| x.name == v))
        }
        (_, None) => false,
    }
}

/// The other member (id, name) whose own disk `disk` (id or name) is, with the disk's id:
/// this node's pool lists the other members' disks too (it keeps copies there), and removing
/// one is that member's work. None for a disk of this node's, or one it does not list.
fn disk_home(inner: &NodeInner, disk: &str) -> Option<(NodeId, String, String)> {
    let disks = inner.engine.disks();
    let matches = |d: &&engine::DiskInfo| d.id == disk || d.name == disk;
    if disks
        .iter()
        .filter(matches)
        .any(|d| d.node_id == inner.node_id)
    {
        return None;
    }
    let d = disks
        .iter()
        .find(|d| matches(d) && d.node_id != inner.node_id)?;
    let m = inner.cluster.member().ok()?;
    let member = member_name(&m, d.node_id)?;
    Some((d.node_id, member, d.id.clone()))
}

/// `req` as the member that holds what it names takes it: a disk by its id (this node names
/// another member's disks after their host and path, that member by its path alone).
fn as_passed_on(inner: &NodeInner, req: &Request) -> Request {
    match req {
        Request::DiskRemove { disk } => match disk_home(inner, disk) {
            Some((_, _, id)) => Request::DiskRemove { disk: id },
            None => req.clone(),
        },
        // The newest output only, so that the answer fits between members.
        Request::VmConsole { name, max_bytes } => Request::VmConsole {
            name: name.clone(),
            max_bytes: Some(
                max_bytes
                    .unwrap_or(control::DEFAULT_CONSOLE_BYTES)
                    .min(MAX_CONSOLE_PASSED_ON),
            ),
        },
        other => other.clone(),
    }
}

/// How long `req` may take on the member it is passed on to.
fn execute_timeout(req: &Request) -> Duration {
    let waits = match req {
        Request::VmStop { timeout_ms, .. } | Request::VmDiskDetach { timeout_ms, .. } => {
            timeout_ms.unwrap_or(control::DEFAULT_STOP_TIMEOUT_MS)
        }
        _ => 0,
    };
    EXECUTE_TIMEOUT + Duration::from_millis(waits)
}

/// Where VM `name` on `disks` is to be created: the member that holds all of them when that
/// is another one.
fn vm_home(
    inner: &NodeInner,
    name: &str,
    disks: &[String],
) -> Result<Option<(NodeId, String)>, ControlError> {
    let Ok(m) = inner.cluster.member() else {
        return Ok(None);
    };
    let me = m.id();
    let (owners, names) = m.read(|s| {
        let owners: Vec<NodeId> = disks
            .iter()
            .map(|d| crate::harestart::disk_owner(s, d).unwrap_or(me))
            .collect();
        let names: HashMap<NodeId, String> = s
            .members
            .iter()
            .map(|(id, x)| (*id, x.name.clone()))
            .collect();
        (owners, names)
    });
    let Some(&first) = owners.first() else {
        return Ok(None);
    };
    if owners.iter().any(|o| *o != first) {
        let wheres: Vec<String> = disks
            .iter()
            .zip(&owners)
            .map(|(d, o)| match (*o == me, names.get(o)) {
                (true, _) | (false, None) => format!("{d} on this node"),
                (false, Some(n)) => format!("{d} on member {n}"),
            })
            .collect();
        return Err(ControlError::new(
            ErrorCode::Conflict,
            format!(
                "VM {name} would run where its virtual disks are, and they are on different \
                 members ({}): move them to one member first (cairn vdisk takeover)",
                wheres.join(", ")
            ),
        ));
    }
    if first == me || inner.cluster.settles.holds_vdisk(&disks[0], "x").is_some() {
        return Ok(None);
    }
    Ok(names.get(&first).map(|n| (first, n.clone())))
}

fn holder_of(inner: &NodeInner, req: &Request) -> Option<(NodeId, String)> {
    let what = about(req)?;
    let m = inner.cluster.member().ok()?;
    let me = m.id();
    let settles = &inner.cluster.settles;
    let owner = match what {
        About::Vdisk(d) => {
            if settles.holds_vdisk(d, "be changed").is_some() {
                return None;
            }
            m.read(|s| crate::harestart::disk_owner(s, d))?
        }
        About::Vm(v) => {
            if settles.holds_vm(v, "be changed").is_some() {
                return None;
            }
            m.read(|s| {
                let mut named = s.vms.values().filter(|x| x.name == v);
                // One of that name assigned here (a VM moved here may share a name with one
                // defined here): this node's.
                if named.clone().any(|x| x.node == Some(me)) {
                    return None;
                }
                named.find_map(|x| x.node)
            })?
        }
    };
    if owner == me {
        return None;
    }
    Some((owner, member_name(&m, owner)?))
}

/// Refuses VM name `name` for a new (or renamed) VM here when the cluster records a VM of that
/// name on another member: with every member's VMs in one list and addressed by name, two of
/// one name would be one too many (and a takeover would bring them onto one node).
pub(crate) fn refuse_vm_name_elsewhere(inner: &NodeInner, name: &str) -> Result<(), ControlError> {
    let Ok(m) = inner.cluster.member() else {
        return Ok(());
    };
    let me = m.id();
    let other = m.read(|s| {
        s.vms
            .values()
            .filter(|v| v.name == name && v.node != Some(me))
            .find_map(|v| {
                v.node
                    .and_then(|n| s.members.get(&n))
                    .map(|x| x.name.clone())
            })
    });
    match other {
        Some(member) => Err(ControlError::new(
            ErrorCode::AlreadyExists,
            format!("a VM named {name} exists on member {member}: VM names are the cluster's"),
        )),
        None => Ok(()),
    }
}

/// Carries out `req` on member `to` (named `to_name`) for `actor`: its answer, with views
/// naming that member, or its refusal as it gave it.
pub(crate) async fn run_there(
    inner: &NodeInner,
    (to, to_name): (NodeId, &str),
    actor: &Actor,
    req: &Request,
) -> ControlResult {
    let m = inner.cluster.member()?;
    let call = Call::Execute {
        actor: actor.clone(),
        req: as_passed_on(inner, req),
    };
    let _turn = inner
        .forward
        .turns
        .acquire()
        .await
        .map_err(|e| ControlError::internal(e.to_string()))?;
    match peer::call(&m, to, &call, execute_timeout(req)).await {
        Ok(Answer::Executed(r)) => Ok(naming(*r, to_name)),
        Ok(_) => Err(ControlError::internal(format!(
            "member {to_name} answered {} with something else",
            req.action()
        ))),
        Err(e) => Err(from_member(e, to, to_name, req)),
    }
}

/// A failed call to member `to` in words that name it; its own refusals as they are.
fn from_member(e: ControlError, to: NodeId, to_name: &str, req: &Request) -> ControlError {
    let Some(rest) = e.message.strip_prefix(&format!("member {to} ")) else {
        return e;
    };
    let what = match about(req) {
        Some(About::Vdisk(d)) => format!("virtual disk {d}"),
        Some(About::Vm(v)) => format!("VM {v}"),
        None => match req {
            Request::VmCreate { name, .. } => format!("new VM {name}'s disk"),
            Request::DiskRemove { disk } => format!("disk {disk}"),
            _ => "it".to_string(),
        },
    };
    if rest.contains("answered with over") {
        return ControlError::invalid(format!(
            "the answer about {what} is too large to pass on between members (over {} KiB): \
             ask for less, or ask member {to_name} itself",
            cluster::MAX_APP_BYTES >> 10
        ));
    }
    let message = if rest.contains("unreadable call") {
        format!(
            "{what} is on member {to_name}, which runs an older Cairn that takes no requests \
             from other members: use {to_name}'s own web UI or CLI"
        )
    } else {
        format!("{what} is on member {to_name}, which could not be asked: it {rest}")
    };
    ControlError::new(e.code, message)
}

/// `r` with its virtual disk or VM views naming member `name`.
fn naming(r: Reply, name: &str) -> Reply {
    match r {
        Reply::Vdisk(mut v) => {
            v.node = Some(name.to_string());
            Reply::Vdisk(v)
        }
        Reply::Vm(mut v) => {
            v.node = Some(name.to_string());
            Reply::Vm(v)
        }
        other => other,
    }
}

/// Receives a request another member took through its API: carried out here for the same
/// person and role (checked again), unless it is not one that is passed on, or the cluster
/// assigns what it names to yet another member by now (the caller's view was behind).
pub(crate) async fn execute_here(
    inner: &Arc<NodeInner>,
    from: NodeId,
    actor: Actor,
    req: Request,
) -> ControlResult {
    let (ctl, actor) = as_peer(inner, from, actor)?;
    if !taken_from_members(&req) {
        return Err(ControlError::new(
            ErrorCode::Forbidden,
            format!("{} is not carried out for another member", req.action()),
        ));
    }
    if let Some((_, name)) = holder(inner, &req)? {
        return Err(ControlError::new(
            ErrorCode::Conflict,
            format!(
                "member {name} holds it now, not this one; ask again ({})",
                req.action().replace('_', " ")
            ),
        ));
    }
    tracing::debug!(action = req.action(), from, user = %actor.user, "request from a member");
    ctl.execute(actor, req).await
}

/// One page of this node's own virtual disks (`vms`: VMs) after name `after`, for member
/// `from`'s API list.
pub(crate) async fn list_page(
    inner: &Arc<NodeInner>,
    from: NodeId,
    actor: Actor,
    vms: bool,
    after: Option<&str>,
) -> Result<Answer, ControlError> {
    tracing::trace!(from, vms, "list page asked by a member");
    let (ctl, actor) = as_peer(inner, from, actor)?;
    let req = if vms {
        Request::VmList
    } else {
        Request::VdiskList
    };
    match ctl.execute(actor, req).await? {
        Reply::Vdisks(v) => Ok(page_answer(v, after)),
        Reply::Vms(v) => Ok(page_answer(v, after)),
        _ => Err(ControlError::internal(
            "a list answered with something else",
        )),
    }
}

fn page_answer<T: Listed>(items: Vec<T>, after: Option<&str>) -> Answer {
    let (items, more) = page(items, after);
    T::into_page(items, more)
}

/// The items named after `after`, in name order, as many as fit in [`PAGE_BYTES`] encoded (at
/// least one); whether more follow.
fn page<T: Listed>(mut items: Vec<T>, after: Option<&str>) -> (Vec<T>, bool) {
    items.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut rest = items
        .into_iter()
        .filter(|x| after.is_none_or(|a| x.name() > a))
        .peekable();
    while let Some(x) = rest.peek() {
        let len = serde_json::to_vec(x).map_or(PAGE_BYTES, |b| b.len() + 1);
        if !out.is_empty() && bytes + len > PAGE_BYTES {
            return (out, true);
        }
        bytes += len;
        out.extend(rest.next());
    }
    (out, false)
}

/// Whether the cluster has a data member besides this node (whose items the API lists add).
pub(crate) fn spans_members(inner: &NodeInner) -> bool {
    let Ok(m) = inner.cluster.member() else {
        return false;
    };
    let me = m.id();
    m.read(|s| {
        s.members
            .iter()
            .any(|(id, x)| *id != me && x.role == Role::Data)
    })
}

/// `reply` (this node's list of virtual disks or VMs) with every other data member's added
/// that answers in time, each of those naming its member. A name listed twice (this node's
/// stale copy of a disk taken over, not dropped yet) is shown once: the holder's.
pub(crate) async fn with_others(inner: &NodeInner, actor: &Actor, reply: Reply) -> Reply {
    let Ok(m) = inner.cluster.member() else {
        return reply;
    };
    let me = m.id();
    let others: Vec<(NodeId, String)> = m
        .status()
        .members
        .into_iter()
        .filter(|x| x.id != me && x.role == Role::Data && x.health != NodeHealth::Down)
        .map(|x| (x.id, x.name))
        .collect();
    if others.is_empty() {
        return reply;
    }
    // Who holds each name, where it may come twice: a disk's owner; a VM's member as its
    // record names it, this node's where one of that name is recorded here too (as requests
    // about it go, see `holder`).
    match reply {
        Reply::Vdisks(here) => {
            let owner: HashMap<String, NodeId> = m.read(|s| {
                s.vdisks
                    .values()
                    .filter_map(|d| cluster::vdisk_owner(&d.id).map(|o| (d.name.clone(), o)))
                    .collect()
            });
            Reply::Vdisks(merge(here, gather(&m, &others, actor).await, &owner, me))
        }
        Reply::Vms(here) => {
            let owner: HashMap<String, NodeId> = m.read(|s| {
                let here: std::collections::HashSet<&str> = s
                    .vms
                    .values()
                    .filter(|x| x.node == Some(me))
                    .map(|x| x.name.as_str())
                    .collect();
                s.vms
                    .values()
                    .filter(|x| !here.contains(x.name.as_str()))
                    .filter_map(|x| x.node.map(|n| (x.name.clone(), n)))
                    .collect()
            });
            Reply::Vms(merge(here, gather(&m, &others, actor).await, &owner, me))
        }
        other => other,
    }
}

/// This node's items and the others' (member id, name, item), one per name, sorted by name:
/// where a name comes twice, the item of the member `owner` names (this node's otherwise).
fn merge<T: Listed>(
    here: Vec<T>,
    theirs: Vec<(NodeId, String, T)>,
    owner: &HashMap<String, NodeId>,
    me: NodeId,
) -> Vec<T> {
    let mut by_name: HashMap<String, (NodeId, T)> = HashMap::new();
    let here = here.into_iter().map(|x| (me, None, x));
    let theirs = theirs.into_iter().map(|(id, n, x)| (id, Some(n), x));
    for (id, node, mut x) in here.chain(theirs) {
        let name = x.name().to_string();
        let right = owner.get(&name).copied().unwrap_or(me);
        if let Some((had, _)) = by_name.get(&name) {
            if *had == right || id != right {
                continue;
            }
        }
        x.set_node(node);
        by_name.insert(name, (id, x));
    }
    let mut out: Vec<T> = by_name.into_values().map(|(_, x)| x).collect();
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

/// Every page of each of `members`' own lists (all members at once, each bounded by
/// [`LIST_TIMEOUT`]); a member that does not answer in time (or is too old to) adds nothing.
async fn gather<T: Listed>(
    m: &cluster::ClusterNode,
    members: &[(NodeId, String)],
    actor: &Actor,
) -> Vec<(NodeId, String, T)> {
    let vms = T::VMS;
    let asks = members.iter().map(|(id, name)| async move {
        let started = Instant::now();
        let mut got: Vec<T> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let call = Call::ListPage {
                actor: actor.clone(),
                vms,
                after: after.clone(),
            };
            let left = LIST_TIMEOUT.saturating_sub(started.elapsed());
            let answer = peer::call(m, *id, &call, left.min(PAGE_TIMEOUT)).await;
            let Some((items, more)) = answer.ok().and_then(T::from_page) else {
                tracing::debug!(member = %name, vms, "a member's list did not come");
                return Vec::new();
            };
            let last = items.last().map(|_| got.len() + items.len() - 1);
            got.extend(items);
            match (more, last) {
                (true, Some(i)) => after = Some(got[i].name().to_string()),
                _ => break,
            }
        }
        got.into_iter()
            .map(|x| (*id, name.clone(), x))
            .collect::<Vec<_>>()
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, size: u64) -> VdiskView {
        VdiskView {
            name: name.into(),
            id: 0,
            size_bytes: size,
            used_bytes: 0,
            snapshots: 0,
            created_unix: 0,
            node: None,
        }
    }

    #[test]
    fn pages_follow_on_by_name_and_stay_under_the_bound() {
        let many: Vec<VdiskView> = (0..20_000)
            .rev()
            .map(|i| disk(&format!("d{i:05}"), 1))
            .collect();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let (items, more) = page(many.clone(), after.as_deref());
            pages += 1;
            let bytes = serde_json::to_vec(&items).unwrap().len();
            assert!(bytes <= PAGE_BYTES + 2, "page of {bytes} bytes");
            assert!(!items.is_empty());
            after = items.last().map(|v| v.name.clone());
            seen.extend(items.into_iter().map(|v| v.name));
            if !more {
                break;
            }
        }
        assert!(pages > 1, "20000 disks fit one page");
        let want: Vec<String> = (0..20_000).map(|i| format!("d{i:05}")).collect();
        assert_eq!(seen, want);
        // Past the end: nothing, and no more.
        let (items, more) = page(many, Some("zz"));
        assert!(items.is_empty() && !more);
    }

    #[test]
    fn a_passed_on_stop_may_wait_its_own_timeout() {
        let stop = |t| Request::VmStop {
            name: "v".into(),
            force: false,
            timeout_ms: t,
        };
        assert_eq!(
            execute_timeout(&stop(Some(600_000))),
            EXECUTE_TIMEOUT + Duration::from_secs(600)
        );
        assert!(execute_timeout(&stop(None)) > EXECUTE_TIMEOUT);
        let get = Request::VdiskGet { name: "d".into() };
        assert_eq!(execute_timeout(&get), EXECUTE_TIMEOUT);
    }

    #[test]
    fn merged_lists_name_each_once_the_holders_copy_winning() {
        let me = 1;
        let here = vec![disk("a", 1), disk("t", 1), disk("u", 1)];
        let theirs = vec![
            (2, "b".to_string(), disk("t", 2)),
            (2, "b".to_string(), disk("x", 2)),
            (3, "c".to_string(), disk("u", 3)),
        ];
        // t was taken over by b (this node's copy is stale); u is this node's (c's is stale).
        let owner: HashMap<String, NodeId> = [
            ("t".to_string(), 2),
            ("u".to_string(), 1),
            ("x".to_string(), 2),
        ]
        .into();
        let out = merge(here, theirs, &owner, me);
        let got: Vec<(&str, Option<&str>, u64)> = out
            .iter()
            .map(|v| (v.name.as_str(), v.node.as_deref(), v.size_bytes))
            .collect();
        assert_eq!(
            got,
            [
                ("a", None, 1),
                ("t", Some("b"), 2),
                ("u", None, 1),
                ("x", Some("b"), 2)
            ]
        );
    }
}
