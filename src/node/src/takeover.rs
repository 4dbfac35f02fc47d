//! Surviving the loss of a virtual disk's owner: another data node takes its virtual disks over
//! from the copies it holds, and the old owner, when it returns, drops its stale copies.
//!
//! # What a holder has
//! A node mirroring onto this one leaves here one replica of every chunk of its virtual disks,
//! with every block version (so its snapshots), filed under (owner id, owner's disk id) by the
//! replica server. Each mirror tick the owner also *describes* its virtual disks to every peer
//! (`PeerLink::describe`: name, engine id, size, generation, placement seed, snapshots), which
//! the holder keeps durably (`ReplicaServer::described`). So the held copy describes itself; no
//! raft traffic per write or per snapshot. A description can lag the owner by one tick (500 ms):
//! blocks written meanwhile are kept (adoption raises the generation past every version found),
//! a snapshot taken in that window is lost, and a virtual disk created and written in that window
//! cannot be adopted (it is reported).
//!
//! # Takeover (the survivor)
//! Each tick, for every other data member that the failure detector shows `Down` for longer than
//! the takeover delay ([`delay`]: `CAIRN_TAKEOVER_DELAY_MS`, default 20 s, `off` disables it)
//! and that owns virtual disks in the cluster state, one survivor takes them over:
//! - with two data members, the other one, committing `Command::MoveVdisks { from, to: me }`;
//! - with three or more, the survivor with the lowest id among the active data members this
//!   node sees up (`taker_rank`); should it not have taken over one delay later, the next one
//!   in line tries, and so on. It commits `Command::TakeOver { from, to: me }`, which the
//!   cluster refuses while any holder of `from` is outdated (the new owner gathers chunks from
//!   every holder, so one outdated copy would lose acknowledged writes).
//!
//! Either way the member's virtual disks, snapshot records and VM assignments become this
//! node's and the placement map's version rises; that version is the takeover's epoch
//! (strictly above any before). A majority is needed and the first commit moves everything (a
//! second finds nothing left to move), so two survivors can never both win, and a node cut
//! off from the majority changes nothing.
//!
//! Then (and after any restart, until done) every virtual disk the cluster state assigns to this
//! node that the engine does not have is *adopted* (`gather`), once it has been seen so for the
//! isolation lease's hold (L + max(2 s, L/2), 7.5 s by default), by which time the old owner,
//! if alive behind a partition, has surely stopped serving it (`crate::lease` gives the timing
//! argument, with the takeover delay and asymmetric partitions):
//! 1. every other data member but the old owner must be reachable: each may hold chunks (with
//!    three or more data nodes a chunk's two replicas may both be on other nodes than this
//!    one), so with one of them unreachable the takeover of that disk waits and says so —
//!    never a partial disk;
//! 2. every holder's copy is fenced forever, before anything is read: this node's
//!    (`ReplicaServer::retire`) and each other holder's (`PeerLink::raise_for` to the maximum
//!    epoch), so the old owner, alive behind a partition or restarted with a newer epoch, can
//!    never write any of them again (its writes fail instead of being acknowledged alone);
//! 3. the other holders list the chunks they keep (`PeerLink::held_objects`, answered only for a
//!    retired copy); `Engine::adopt_vdisk_gathered` copies the chunks held here and fetches the
//!    others (`PeerLink::export_held`: every block version, in checksummed pages) into a local
//!    virtual disk, recorded only once all of it is durable; from then on it is served and
//!    mirrored like any other (the maintenance pass re-mirrors it; a holder that is away gets
//!    the chunks when it returns).
//!
//! The copies on the other holders stay until the adopted disk is recorded: a holder drops its
//! retired copy once the disk's new owner describes that disk to it (it describes only what
//! its engine recorded) and the cluster assigns the disk to that owner.
//!
//! # The old owner's return
//! Each tick, a local virtual disk whose name the cluster state assigns to another member is a
//! candidate stale copy. It is dropped (NBD exports of it stopped, the engine's disk deleted)
//! once the peer holding its mirror confirms that copy was retired (an epoch probe: `Raise` to
//! epoch 0 answers `Fenced` with the current epoch); until then it is only reported, so a name
//! clash that is not a takeover never deletes anything.
//!
//! The disk may come back (moved back, or taken back from its new owner) before that copy is
//! dropped: the cluster assigns it here again while the current data is the other member's
//! copy, which that member still describes here (same placement seed, not retired here). Such
//! a local copy is never served, changed or moved (`gather::not_adopted_yet`); it is dropped
//! once a holder confirms it retired, as above, and the disk is adopted from the current copy
//! like any other (`gather::replace_stale`).
//!
//! VMs: the cluster's VM record moves with its disks (`node` = the new owner); once the disks
//! are adopted, `crate::harestart` defines the VM here from the definition kept in the cluster
//! and starts it if it was meant to run, and the returning old owner stops and forgets its copy
//! of the VM (before its stale disks are dropped).
//!
//! Must never: adopt without first fencing every holder's copy, adopt a disk part of which
//! may sit on an unreachable member, take over from a member that is not down past the delay,
//! or drop a local disk the holder did not confirm as retired.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{ClusterNode, Command, CommandResult, MemberStatus, NodeHealth, Role};
use engine::VdiskRecord;
use mirror::{MirrorError, PeerLink, ReplicaServer};

use crate::NodeInner;

pub(crate) mod copies;
pub(crate) mod gather;
pub(crate) mod manual;
pub(crate) mod outcome;
pub(crate) mod peer;
pub(crate) mod settles;
pub(crate) mod vm_move;

/// Default takeover delay (see the module docs).
pub(crate) const DEFAULT_DELAY: Duration = Duration::from_secs(20);
/// A description is sent again after this long even if unchanged (cheap; heals a lost one).
const REDESCRIBE: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// The takeover delay: `CAIRN_TAKEOVER_DELAY_MS` (milliseconds, or `off`), else 20 s.
pub(crate) fn delay() -> Option<Duration> {
    match std::env::var("CAIRN_TAKEOVER_DELAY_MS") {
        Ok(v) if v.trim() == "off" => None,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) => Some(Duration::from_millis(ms)),
            Err(_) => {
                tracing::warn!(value = %v, "CAIRN_TAKEOVER_DELAY_MS is not a number or `off`; using the default");
                Some(DEFAULT_DELAY)
            }
        },
        Err(_) => Some(DEFAULT_DELAY),
    }
}

/// Per-mirror takeover state (kept with the running mirror).
#[derive(Default)]
pub(crate) struct Takeover {
    /// What each peer was last told, and when.
    told: HashMap<u64, (Vec<VdiskRecord>, Instant)>,
    /// When this node first saw a member down without ever having heard from it.
    down_since: HashMap<u64, Instant>,
    /// Problems already logged (logged once while they persist).
    logged: HashSet<String>,
    /// VM restarts after takeovers.
    ha: crate::harestart::HaRestart,
}

impl Takeover {
    fn once(&mut self, what: String) {
        if self.logged.insert(what.clone()) {
            tracing::warn!(problem = %what, "takeover");
        }
    }
}

/// One tick of the takeover work (see the module docs). `links` are this node's peer links.
pub(crate) async fn step(
    inner: &NodeInner,
    m: &Arc<ClusterNode>,
    server: &ReplicaServer,
    links: &[(u64, Arc<PeerLink>)],
    t: &mut Takeover,
) {
    describe(inner, links, t).await;
    maybe_take_over(inner, m, t).await;
    crate::harestart::forget_moved(inner, m).await;
    gather::adopt_assigned(inner, m, server, links, t).await;
    gather::drop_adopted(inner, m, server).await;
    crate::harestart::step(inner, m, &mut t.ha).await;
    drop_stale(inner, m, links, t).await;
}

/// Send this node's virtual disk descriptions to every peer whose copy is out of date.
async fn describe(inner: &NodeInner, links: &[(u64, Arc<PeerLink>)], t: &mut Takeover) {
    let records: Vec<VdiskRecord> = inner
        .engine
        .vdisk_records()
        .into_iter()
        .filter(|v| v.id <= mirror::wire::MAX_WIRE_VDISK)
        .take(mirror::wire::MAX_DESCRIBED)
        .collect();
    for (id, link) in links {
        let fresh = t
            .told
            .get(id)
            .is_some_and(|(r, at)| *r == records && at.elapsed() < REDESCRIBE);
        if fresh {
            continue;
        }
        match tokio::time::timeout(CALL_TIMEOUT, link.describe(records.clone())).await {
            Ok(Ok(())) => {
                t.told.insert(*id, (records.clone(), Instant::now()));
            }
            Ok(Err(e)) => tracing::debug!(member = id, error = %e, "describing virtual disks"),
            Err(_) => tracing::debug!(member = id, "describing virtual disks: timed out"),
        }
    }
}

/// This node's place in the line of survivors that may take `lost`'s virtual disks over
/// (0 = first), or None when it is not in line. The line: active data members other than
/// `lost` that this node sees up (itself included), by id — every survivor computes the same
/// line from the same view, and a differing view costs at most a refused second commit.
fn taker_rank(data: &[&MemberStatus], me: u64, lost: u64) -> Option<usize> {
    let mut line: Vec<u64> = data
        .iter()
        .filter(|y| {
            y.id != lost
                && y.state == cluster::MemberState::Active
                && (y.id == me || y.health == NodeHealth::Up)
        })
        .map(|y| y.id)
        .collect();
    line.sort_unstable();
    line.iter().position(|id| *id == me)
}

/// Commit a takeover of a member down past the delay (see the module docs).
async fn maybe_take_over(inner: &NodeInner, m: &Arc<ClusterNode>, t: &mut Takeover) {
    let Some(delay) = delay() else { return };
    let me = m.id();
    let status = m.status();
    let data: Vec<_> = status
        .members
        .iter()
        .filter(|x| x.role == Role::Data)
        .collect();
    for x in &data {
        if x.id == me || x.health != NodeHealth::Down {
            t.down_since.remove(&x.id);
            continue;
        }
        let down_for = match x.last_seen_ms_ago {
            Some(ms) => Duration::from_millis(ms),
            None => t
                .down_since
                .entry(x.id)
                .or_insert_with(Instant::now)
                .elapsed(),
        };
        if down_for < delay {
            continue;
        }
        let (owned, outdated) = m.read(|s| {
            let owned = s
                .vdisks
                .keys()
                .filter(|id| cluster::vdisk_owner(id) == Some(x.id))
                .count();
            let outdated: Vec<u64> = s
                .outdated
                .iter()
                .filter(|(o, _)| *o == x.id)
                .map(|(_, h)| *h)
                .collect();
            (owned, outdated)
        });
        if owned == 0 {
            continue;
        }
        let cmd = if data.len() == 2 {
            Command::MoveVdisks { from: x.id, to: me }
        } else {
            let Some(rank) = taker_rank(&data, me, x.id) else {
                continue;
            };
            // The first in line after the delay; each next one a delay later, should the
            // ones before it not have taken over (their commit moves everything away).
            if down_for < delay.saturating_mul(rank as u32 + 1) {
                continue;
            }
            if !outdated.is_empty() {
                t.once(format!(
                    "member {} is down with {owned} virtual disks, but the copies members \
                     {outdated:?} hold are outdated (it wrote without them): no takeover \
                     until it returns",
                    x.id
                ));
                continue;
            }
            Command::TakeOver { from: x.id, to: me }
        };
        // Reported in flight (so `cluster remove` of this node waits for it) from before this
        // node reads its own state fresh until the proposal has an outcome: a node being
        // drained never takes disks over (see `settles::InFlight`).
        let what = format!("a takeover of its {owned} virtual disks");
        let my_name = data
            .iter()
            .find(|y| y.id == me)
            .map_or("", |y| y.name.as_str());
        let _flight = inner.cluster.settles.in_flight(what, x.id, me, my_name);
        if let Err(e) = manual::target_still_active(m, me, my_name).await {
            t.once(format!(
                "member {} is down with {owned} virtual disks; not taken over here: {}",
                x.id, e.message
            ));
            continue;
        }
        tracing::warn!(
            member = x.id,
            down_ms = down_for.as_millis() as u64,
            vdisks = owned,
            "takeover: member down past the takeover delay; taking its virtual disks over"
        );
        match tokio::time::timeout(PROPOSE_TIMEOUT, m.propose(cmd)).await {
            Ok(Ok(CommandResult::PlacementVersion(epoch))) => {
                tracing::warn!(
                    from = x.id,
                    epoch,
                    "takeover: committed; this node owns the member's virtual disks now"
                );
                crate::events::record(
                    inner,
                    "warning",
                    "vdisk_takeover",
                    &x.name,
                    format!(
                        "member {} ({}) was lost; this node took its virtual disks over \
                         (epoch {epoch})",
                        x.name, x.id
                    ),
                );
            }
            Ok(Ok(other)) => t.once(format!("taking over member {} refused: {other:?}", x.id)),
            Ok(Err(e)) => tracing::warn!(from = x.id, error = %e, "takeover: no commit"),
            Err(_) => tracing::warn!(from = x.id, "takeover: no commit in time"),
        }
    }
}

/// Whether the mirror of this node's `vdisk` on `link`'s peer was retired (taken over).
async fn retired_on(link: &PeerLink, me: u64, vdisk: u64) -> Option<bool> {
    match tokio::time::timeout(CALL_TIMEOUT, link.raise_for(me, vdisk, 0)).await {
        Ok(Ok(())) => Some(false),
        Ok(Err(MirrorError::Peer(mirror::wire::WireError::Fenced { current, .. }))) => {
            Some(current == u64::MAX)
        }
        _ => None,
    }
}

/// Drop local virtual disks the cluster assigns to another member once a holder confirms
/// their mirror was retired (see the module docs).
async fn drop_stale(
    inner: &NodeInner,
    m: &Arc<ClusterNode>,
    links: &[(u64, Arc<PeerLink>)],
    t: &mut Takeover,
) {
    let me = m.id();
    for v in inner.engine.vdisks() {
        if crate::internal::is_internal_vdisk(&v.name) {
            continue;
        }
        let owner = m.read(|s| {
            s.vdisks
                .values()
                .find(|d| d.name == v.name)
                .and_then(|d| cluster::vdisk_owner(&d.id))
        });
        let Some(owner) = owner.filter(|o| *o != me) else {
            continue;
        };
        let mut confirmed = false;
        for (_, link) in links {
            if retired_on(link, me, v.id).await == Some(true) {
                confirmed = true;
                break;
            }
        }
        if !confirmed {
            t.once(format!(
                "virtual disk {} is owned by member {owner} in the cluster; this node's copy is \
                 stale and is dropped once a peer confirms the takeover",
                v.name
            ));
            continue;
        }
        let _g = inner.cluster.vdisk_lock.lock().await;
        for e in inner.exports.list() {
            if e.vdisk == v.name {
                let _ = inner.exports.stop(e.id).await;
            }
        }
        match inner.engine.delete_vdisk(&v.name).await {
            Ok(()) => tracing::warn!(
                vdisk = %v.name,
                owner,
                "takeover: member {owner} took this virtual disk over while this node was away; \
                 the stale local copy is dropped and never served again"
            ),
            Err(e) => tracing::warn!(vdisk = %v.name, error = %e, "dropping a stale copy failed"),
        }
    }
}

/// Bound on recording "writing without a holder" in the cluster; the write waits that long.
const OUTDATE_TIMEOUT: Duration = Duration::from_secs(6);
/// After a refusal, writes without that holder fail at once for this long (no proposal storm).
const REFUSED_FOR: Duration = Duration::from_secs(1);

/// The node's [`mirror::AlonePermit`]: before the first write acknowledged without an away
/// holder, `Command::Outdate` is committed (so that holder can never take this node's virtual
/// disks over without those writes, and a takeover that won first makes this node's writes
/// fail instead); once the holder is back in sync, `ClearOutdated` (see [`clear_outdated`]).
pub(crate) struct AlonePermit(Arc<PermitInner>);

pub(crate) struct PermitInner {
    member: Arc<ClusterNode>,
    /// This node's write epoch (0 until committed).
    epoch: std::sync::atomic::AtomicU64,
    /// Held while proposing Outdate or ClearOutdated, so the two never interleave.
    gate: tokio::sync::Mutex<()>,
    /// Holders this node committed as outdated (the local state may lag the leader's).
    granted: parking_lot::Mutex<HashSet<u64>>,
    refused: parking_lot::Mutex<HashMap<u64, Instant>>,
}

impl AlonePermit {
    pub(crate) fn new(member: Arc<ClusterNode>) -> AlonePermit {
        AlonePermit(Arc::new(PermitInner {
            member,
            epoch: Default::default(),
            gate: Default::default(),
            granted: Default::default(),
            refused: Default::default(),
        }))
    }

    pub(crate) fn handle(&self) -> Arc<dyn mirror::AlonePermit> {
        Arc::new(AlonePermit(self.0.clone()))
    }

    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.0
            .epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
    }
}

impl PermitInner {
    fn known(&self, holder: u64) -> bool {
        let me = self.member.id();
        self.granted.lock().contains(&holder)
            || self.member.read(|s| s.outdated.contains(&(me, holder)))
    }

    async fn ask(&self, holder: u64) -> bool {
        if self.known(holder) {
            return true;
        }
        let _g = self.gate.lock().await;
        if self.known(holder) {
            return true;
        }
        if self
            .refused
            .lock()
            .get(&holder)
            .is_some_and(|t| t.elapsed() < REFUSED_FOR)
        {
            return false;
        }
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Acquire);
        let me = self.member.id();
        let cmd = Command::Outdate {
            owner: me,
            holder,
            epoch,
        };
        let why = match tokio::time::timeout(OUTDATE_TIMEOUT, self.member.propose(cmd)).await {
            Ok(Ok(CommandResult::Ok)) => {
                self.granted.lock().insert(holder);
                tracing::warn!(
                    holder,
                    "mirror: member {holder} is unreachable; recorded in the cluster that its \
                     copies are outdated, writes continue on this node"
                );
                return true;
            }
            Ok(Ok(other)) => format!("{other:?}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no commit in time".into(),
        };
        self.refused.lock().insert(holder, Instant::now());
        tracing::warn!(
            holder,
            reason = %why,
            "mirror: writes without member {holder} refused (the cluster did not confirm this \
             node may write alone)"
        );
        false
    }
}

impl mirror::AlonePermit for AlonePermit {
    fn permit(&self, holder: u64) -> blockdev::BoxFuture<'static, bool> {
        let inner = self.0.clone();
        Box::pin(async move { inner.ask(holder).await })
    }
}

/// Clear this node's "outdated" records for holders whose every disk is attached, up and has
/// nothing left to resync.
pub(crate) async fn clear_outdated(inner: &NodeInner, permit: &AlonePermit) {
    let p = &permit.0;
    let me = p.member.id();
    let mut holders: HashSet<u64> = p.granted.lock().clone();
    holders.extend(p.member.read(|s| {
        s.outdated
            .iter()
            .filter(|(o, _)| *o == me)
            .map(|(_, h)| *h)
            .collect::<Vec<_>>()
    }));
    for h in holders {
        let in_sync = |inner: &NodeInner| {
            let disks: Vec<_> = inner
                .engine
                .remote_disks()
                .into_iter()
                .filter(|d| d.node_id == h && d.state != engine::DiskState::Removed)
                .collect();
            !disks.is_empty()
                && disks.iter().all(|d| {
                    d.state == engine::DiskState::Active
                        && d.reachability == engine::Reachability::Up
                        && d.dirty_chunks == 0
                })
        };
        if !in_sync(inner) {
            continue;
        }
        let _g = p.gate.lock().await;
        // Writes without the holder pass the gate: checked again under it.
        if !in_sync(inner) {
            continue;
        }
        let cmd = Command::ClearOutdated {
            owner: me,
            holder: h,
        };
        match tokio::time::timeout(OUTDATE_TIMEOUT, p.member.propose(cmd)).await {
            Ok(Ok(CommandResult::Ok)) => {
                p.granted.lock().remove(&h);
                tracing::info!(holder = h, "mirror: member {h} is in sync again");
            }
            other => {
                tracing::debug!(holder = h, result = ?other.map(|r| r.map_err(|e| e.to_string())), "clearing the outdated record")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, health: NodeHealth, state: cluster::MemberState) -> MemberStatus {
        MemberStatus {
            id,
            name: format!("n{id}"),
            addr: "127.0.0.1:1".into(),
            role: Role::Data,
            state,
            voter: true,
            health,
            last_seen_ms_ago: None,
        }
    }

    #[test]
    fn the_lowest_healthy_active_survivor_is_first_in_line() {
        use cluster::MemberState::{Active, Draining};
        use NodeHealth::{Down, Unknown, Up};
        let ms = [
            member(1, Down, Active),
            member(2, Unknown, Active),
            member(3, Up, Draining),
            member(4, Up, Active),
            member(5, Up, Active),
        ];
        let data: Vec<&MemberStatus> = ms.iter().collect();
        // Node 4 sees itself and 5 up; 2 is not known up, 3 is leaving.
        assert_eq!(taker_rank(&data, 4, 1), Some(0));
        assert_eq!(taker_rank(&data, 5, 1), Some(1));
        assert_eq!(
            taker_rank(&data, 3, 1),
            None,
            "a draining member never takes over"
        );
        // A node always counts itself as up: 2's own view puts it first.
        assert_eq!(taker_rank(&data, 2, 1), Some(0));
        assert_eq!(
            taker_rank(&data, 1, 1),
            None,
            "the lost member is not in line"
        );
    }
}
