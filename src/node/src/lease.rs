//! The isolation lease: a data node cut off from the cluster's majority stops serving its
//! virtual disks and pauses its VMs before another node can have taken them over, and the node
//! that takes them over waits until the old owner's lease has surely run out.
//!
//! # Why
//! A takeover (`crate::takeover`) fences the old owner's *writes* (its peer refuses them), but
//! reads are served from the local replica. Without a lease, an owner alive behind a cut link
//! would go on returning its stale copy to NBD clients and guests after the survivor wrote
//! newer data, and its VMs would run on as zombies. VMware calls the answer "isolation
//! response"; here it is a quorum lease.
//!
//! # The lease (every data node with at least one other data member)
//! A task renews the lease every [`renew_every`] (a fifth of the lease, 1 s by default) by a
//! linearizable round trip through raft (`ClusterNode::read_fresh`: on the leader a quorum
//! confirms its leadership; on a follower a no-op is committed through the leader and applied
//! here) whose read also checks that the cluster state still assigns this node's virtual
//! disks to it. A renewal that succeeds makes the lease valid until the moment it was *sent*
//! (monotonic clock) plus the lease length L. L is one value for the whole cluster, kept in
//! the replicated state (`ClusterState::lease_ms`, [`resolve_length`]): the argument below
//! compares the old owner's L with the survivor's hold, so two members using different values
//! would break it. It is set when the cluster is created (`CAIRN_LEASE_MS` of the creating
//! node, 0.5-120 s, default 5 s); a member whose `CAIRN_LEASE_MS` disagrees warns and uses the
//! cluster's. (A cluster created before the field existed has none: there each member uses
//! its own setting, as before.) When the lease is not valid — expired, never obtained
//! since the start, or a renewal saw a disk of this node assigned to another member — the
//! node's I/O gate ([`Gate`]) closes: NBD exports and image transfers of this node's virtual
//! disks wait for it to open again, up to [`wait_limit`] (`CAIRN_LEASE_WAIT_MS`, default 30 s)
//! and then fail with EIO, instead of being answered from a possibly stale replica; and every
//! running VM is paused (guests issue no I/O while paused). When a renewal succeeds again (a
//! short partition healed without a takeover) the gate opens and the VMs this lease paused are
//! resumed — except VMs the cluster moved to another node, which `crate::harestart` stops.
//! A node alone (no cluster, a single data member, a witness) never closes its gate, nor does
//! one whose other voters are no majority without it (two data members and no witness: no
//! takeover can commit while either is cut off, so there is nothing to protect). Node-
//! private virtual disks (the raft log's) are never gated: the renewal itself needs them.
//!
//! Checking the gate costs one atomic load per request (and a monotonic clock read while a
//! lease is in force: the gate holds the lease's end, so it shuts on time even when the lease
//! task runs late, as on a node waking from a freeze). Guests are stopped by the pause, not by
//! a gate in the virtio path: requests a guest issued before the pause complete (from the
//! local copy, which is still the newest: the survivor serves nothing until the hold below
//! ends), and a user resuming a VM on an isolated node sees it paused again at the next
//! renewal attempt (`vm start` waits for the gate like I/O does).
//!
//! # The survivor ([`Lease::adoptable`])
//! A virtual disk the cluster assigns to this node that the engine lacks came from a takeover
//! (`MoveVdisks`). It is adopted — and so served, and its VMs started — only once it has been
//! seen so for L plus a margin M ([`hold`]; M = max(2 s, L/2)). The timing argument: the
//! old owner's last successful renewal was sent at T0 and linearized (read the state) before
//! the move committed at C, since a renewal reading the state after C sees its disks assigned
//! elsewhere and fails; so T0 < C, and the old owner stops serving by T0 + L < C + L. This node
//! first sees the move applied at S >= C, and serves from S + L + M > C + L: M covers the old
//! owner's timer firing late (a loaded machine), its pause taking effect, and requests admitted
//! just before its gate closed. The wait counts from this node's observation, not from the
//! proposal: a proposal may take seconds to commit, and an owner renewing meanwhile holds a
//! lease past proposal + L. After a restart the wait starts again at the first observation (the
//! commit was earlier, so that is later than needed, never sooner).
//!
//! How this fits the takeover delay D (`CAIRN_TAKEOVER_DELAY_MS`, default 20 s) and the
//! failure detector (heartbeats every 250 ms, a member Down after 3 s without one): with a
//! clean cut the old owner can renew nothing after the cut, so it stops serving at most L after
//! it (5 s), long before the survivor even proposes the move (D after it saw the owner Down).
//! The hold matters when the partition is asymmetric: the old owner still reaches the leader
//! (say the witness) but not the survivor, keeps renewing, and the survivor, which sees it
//! Down, commits the move through the witness. The old owner's next renewal then reads the
//! move and fails, and the argument above bounds what it served. A partition shorter than D
//! costs the cut-off owner at most the partition's length plus a renewal of waiting I/O and
//! paused guests, and no takeover. L must stay well under D (L + M too), so a takeover is never
//! slower because of the lease than because of the delay itself.
//!
//! Must never: open the gate without a renewal sent less than L ago, resume a VM this lease
//! did not pause or one the cluster moved away, gate a node-private disk, or serve an adopted
//! disk before the hold has passed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterNode, Role};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::NodeInner;

mod gate;
pub(crate) use gate::{closed_error, Gate};

/// Default lease length (see the module docs).
pub(crate) const DEFAULT_LENGTH: Duration = Duration::from_secs(5);
/// Default bound on a request waiting at a closed gate.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MIN_LENGTH: Duration = Duration::from_millis(500);
const MAX_LENGTH: Duration = Duration::from_secs(120);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// How long a planned move's release waits for the disk to be seen missing here.
const RELEASE_KEPT: Duration = Duration::from_secs(600);
/// How often "is a lease needed here" is looked at while none is.
const IDLE_TICK: Duration = Duration::from_millis(500);

fn env_ms(name: &str, default: Duration, min: Duration, max: Duration) -> Duration {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms).clamp(min, max),
            Err(_) => {
                tracing::warn!(value = %v, "{name} is not a number of milliseconds; using the default");
                default
            }
        },
        Err(_) => default,
    }
}

/// This node's `CAIRN_LEASE_MS` (0.5-120 s), if set.
fn env_length() -> Option<Duration> {
    std::env::var_os("CAIRN_LEASE_MS")
        .map(|_| env_ms("CAIRN_LEASE_MS", DEFAULT_LENGTH, MIN_LENGTH, MAX_LENGTH))
}

/// The lease length a new cluster is created with: `CAIRN_LEASE_MS`, else 5 s.
pub(crate) fn creation_length_ms() -> u64 {
    env_length().unwrap_or(DEFAULT_LENGTH).as_millis() as u64
}

/// The lease length L in force, from the cluster's value (`cluster_ms`, 0: none recorded) and
/// this node's setting; also whether the setting disagrees with the cluster (to be warned of).
pub(crate) fn resolve_length(env: Option<Duration>, cluster_ms: u64) -> (Duration, bool) {
    if cluster_ms == 0 {
        return (env.unwrap_or(DEFAULT_LENGTH), false);
    }
    let l = Duration::from_millis(cluster_ms).clamp(MIN_LENGTH, MAX_LENGTH);
    (l, env.is_some_and(|e| e != l))
}

/// How long a request waits at a closed gate before failing with EIO: `CAIRN_LEASE_WAIT_MS`
/// (0-600 s), else 30 s.
pub(crate) fn wait_limit() -> Duration {
    env_ms(
        "CAIRN_LEASE_WAIT_MS",
        DEFAULT_WAIT,
        Duration::ZERO,
        MAX_WAIT,
    )
}

/// How often a lease of length `l` is renewed: a fifth of it.
fn renew_every(l: Duration) -> Duration {
    l / 5
}

/// How long a node taking disks over waits before serving them: L + max(2 s, L/2).
pub(crate) fn hold_for(l: Duration) -> Duration {
    l + (l / 2).max(Duration::from_secs(2))
}

/// The lease's state, kept in the node.
pub(crate) struct Lease {
    gate: Gate,
    /// What was last logged: valid (or not needed) or not.
    shown_valid: AtomicBool,
    /// VMs this lease paused (resumed when it is valid again).
    paused: parking_lot::Mutex<HashSet<String>>,
    /// Virtual disks assigned to this node but not here yet: `id -> (name, first seen)`.
    seen_missing: parking_lot::Mutex<HashMap<String, (String, Instant)>>,
    /// Virtual disk ids whose old owner said it stopped serving them (a planned move,
    /// `crate::takeover::manual`): adopted without the hold.
    released: parking_lot::Mutex<HashMap<String, Instant>>,
    /// L in force (ms), as last resolved ([`Lease::refresh_length`]).
    length_ms: AtomicU64,
    /// The cluster value a disagreeing `CAIRN_LEASE_MS` was last warned about (0: none).
    warned_for: AtomicU64,
    /// Whether this node needs a lease (as the lease task last found).
    needed: AtomicBool,
    /// Why the lease is not valid, as the lease task last found (empty: no problem).
    problem: parking_lot::Mutex<String>,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            gate: Gate::new(),
            shown_valid: AtomicBool::new(true),
            paused: Default::default(),
            seen_missing: Default::default(),
            released: Default::default(),
            length_ms: AtomicU64::new(DEFAULT_LENGTH.as_millis() as u64),
            warned_for: AtomicU64::new(0),
            needed: AtomicBool::new(false),
            problem: Default::default(),
        }
    }
}

/// A snapshot of the lease for `cluster status`.
pub(crate) struct LeaseState {
    pub length: Duration,
    /// Whether this node needs a lease at all.
    pub needed: bool,
    /// Time left on the lease (None: not valid).
    pub remaining: Option<Duration>,
    pub problem: String,
    /// Virtual disks waiting for adoption: `(id, name, time left of the hold)`.
    pub waiting: Vec<(String, String, Duration)>,
}

impl Lease {
    pub(crate) fn gate(&self) -> Gate {
        self.gate.clone()
    }

    /// L in force (see [`resolve_length`]).
    pub(crate) fn length(&self) -> Duration {
        Duration::from_millis(self.length_ms.load(Ordering::Acquire))
    }

    /// Re-reads L from the cluster state (`cluster_ms`) and this node's setting; warns once per
    /// cluster value when the setting disagrees.
    fn refresh_length(&self, cluster_ms: u64) -> Duration {
        let env = env_length();
        let (l, disagrees) = resolve_length(env, cluster_ms);
        if disagrees && self.warned_for.swap(cluster_ms, Ordering::AcqRel) != cluster_ms {
            tracing::warn!(
                env_ms = env.map(|e| e.as_millis() as u64),
                cluster_ms = l.as_millis() as u64,
                "isolation lease: CAIRN_LEASE_MS differs from the cluster's lease length; using \
                 the cluster's (every member must use the same one)"
            );
        }
        self.length_ms
            .store(l.as_millis() as u64, Ordering::Release);
        l
    }

    /// The lease as `cluster status` shows it.
    pub(crate) fn state(&self) -> LeaseState {
        let remaining = self.gate.remaining();
        let hold = hold_for(self.length());
        let waiting = self
            .seen_missing
            .lock()
            .iter()
            .map(|(id, (name, first))| {
                (
                    id.clone(),
                    name.clone(),
                    hold.saturating_sub(first.elapsed()),
                )
            })
            .collect();
        LeaseState {
            length: self.length(),
            needed: self.needed.load(Ordering::Acquire),
            remaining,
            problem: self.problem.lock().clone(),
            waiting,
        }
    }

    /// Virtual disk `id`, assigned to this node, was released by its old owner after it
    /// stopped serving it (a planned move): no hold before adopting it.
    pub(crate) fn release(&self, id: &str) {
        let mut r = self.released.lock();
        // Kept a while (a tick may not see the disk missing yet), not forever.
        r.retain(|_, at| at.elapsed() < RELEASE_KEPT);
        r.insert(id.to_string(), Instant::now());
    }

    /// Of `missing` (virtual disks assigned to this node that it lacks: `(id, name)`), those
    /// seen so for [`hold`], or released by their old owner — adoptable now. Remembers when
    /// each was first seen.
    pub(crate) fn held_back(&self, missing: Vec<(String, String)>) -> Vec<(String, String)> {
        let hold = hold_for(self.length());
        let mut seen = self.seen_missing.lock();
        seen.retain(|k, _| missing.iter().any(|(id, _)| id == k));
        let released = self.released.lock();
        missing
            .into_iter()
            .filter(|(id, name)| {
                if released.contains_key(id) {
                    return true;
                }
                let first = seen.entry(id.clone()).or_insert_with(|| {
                    tracing::warn!(
                        vdisk = %name,
                        hold_ms = hold.as_millis() as u64,
                        "takeover: waiting for the old owner's isolation lease to run out before \
                         serving this virtual disk"
                    );
                    (name.clone(), Instant::now())
                });
                first.1.elapsed() >= hold
            })
            .collect()
    }
}

/// What a renewal learned.
struct Renewal {
    /// This node's virtual disks the cluster assigns to another member, other than those it
    /// handed over itself and no longer uses ([`lost_disks`]).
    lost: Vec<String>,
    /// VM names whose record moved to another member.
    moved_vms: HashSet<String>,
}

/// The member whose lease this node needs: a data member with at least one other data member,
/// in a cluster whose other voters could commit a takeover without it.
fn needed(inner: &NodeInner) -> Option<Arc<ClusterNode>> {
    let m = inner.cluster.member().ok()?;
    if m.role() != Role::Data {
        return None;
    }
    let me = m.id();
    let peers = m.read(|s| {
        s.members
            .values()
            .filter(|x| x.id != me && x.role == Role::Data)
            .count()
    });
    let status = m.status();
    let voters = status.members.iter().filter(|x| x.voter).count();
    let others = status
        .members
        .iter()
        .filter(|x| x.voter && x.id != me)
        .count();
    needs_lease(true, peers, voters, others).then_some(m)
}

/// The rule of [`needed`] for any member: a data member (`data`) with `data_peers` other data
/// members, among `voters` voters of which `others` are not it.
pub(crate) fn needs_lease(data: bool, data_peers: usize, voters: usize, others: usize) -> bool {
    data && data_peers > 0 && others_could_take_over(voters, others)
}

/// Whether the voters other than this node form a majority of all voters: only then can a
/// takeover of this node's disks commit while it is cut off. Two data voters and no witness
/// can never (each needs the other), so there the lease would only pause the survivor's VMs
/// when its peer dies, and protect nothing.
fn others_could_take_over(voters: usize, others: usize) -> bool {
    others > voters / 2
}

/// Of this node's local virtual disks `local`, those the cluster state `s` assigns to another
/// member as if taken over (see [`Renewal::lost`]). A disk this node handed over itself by a
/// planned move (`ClusterState::handed_over`, replicated, so a restart of either node changes
/// nothing) is not lost while nothing here uses it (`in_use`: NBD exports, VMs that run or are
/// paused): its old copy is merely waiting to be dropped. One still in use here would be
/// served stale (a move whose commit this node gave up on and that committed after all): lost.
fn lost_disks(
    s: &cluster::ClusterState,
    me: u64,
    local: &[String],
    in_use: &HashSet<String>,
) -> Vec<String> {
    local
        .iter()
        .filter(|n| {
            s.vdisks.values().any(|d| {
                d.name == **n
                    && cluster::vdisk_owner(&d.id) != Some(me)
                    && (s.handed_over.get(&d.id) != Some(&me) || in_use.contains(*n))
            })
        })
        .cloned()
        .collect()
}

async fn renew(inner: &NodeInner, m: &ClusterNode) -> Result<Renewal, String> {
    let me = m.id();
    let local: Vec<String> = inner
        .engine
        .vdisks()
        .into_iter()
        .map(|v| v.name)
        .filter(|n| !crate::internal::is_internal_vdisk(n))
        .collect();
    let mut in_use: HashSet<String> = inner.exports.list().into_iter().map(|e| e.vdisk).collect();
    in_use.extend(
        local
            .iter()
            .filter(|n| inner.vms.active_user_of(n).is_some())
            .cloned(),
    );
    let defined: Vec<String> = inner.vms.defined().into_iter().map(|(n, _)| n).collect();
    m.read_fresh(|s| {
        let lost = lost_disks(s, me, &local, &in_use);
        let moved_vms = defined
            .iter()
            .filter(|n| {
                let here = s.vms.values().any(|v| v.name == **n && v.node == Some(me));
                let away = s.vms.values().any(|v| v.name == **n && v.node != Some(me));
                away && !here
            })
            .cloned()
            .collect();
        Renewal { lost, moved_vms }
    })
    .await
    .map_err(|e| e.to_string())
}

/// Close the gate and pause every running VM (recording which).
async fn close(inner: &NodeInner, why: &str) {
    let lease = &inner.lease;
    lease.gate.close();
    if lease.shown_valid.swap(false, Ordering::AcqRel) {
        tracing::warn!(
            reason = why,
            "isolation lease: not valid; this node's virtual disks are not served and its VMs \
             are paused until it is renewed"
        );
    }
    let Ok(vms) = inner.vms.list().await else {
        return;
    };
    for vm in vms.into_iter().filter(|v| v.state == "running") {
        match inner.vms.pause(&vm.name, true).await {
            Ok(_) => {
                lease.paused.lock().insert(vm.name.clone());
                tracing::warn!(vm = %vm.name, "isolation lease: VM paused");
            }
            Err(e) => {
                tracing::warn!(vm = %vm.name, error = %e, "isolation lease: pausing a VM failed")
            }
        }
    }
}

/// Open the gate until `end` (or for good) and resume the VMs this lease paused, except those
/// moved away.
async fn open(inner: &NodeInner, end: Option<Instant>, moved: &HashSet<String>) {
    let lease = &inner.lease;
    lease.gate.open_until(end.map(Instant::into_std));
    if !lease.shown_valid.swap(true, Ordering::AcqRel) {
        tracing::warn!("isolation lease: valid again; serving this node's virtual disks");
    }
    let paused: Vec<String> = lease.paused.lock().drain().collect();
    let defined: HashSet<String> = inner.vms.defined().into_iter().map(|(n, _)| n).collect();
    for name in paused {
        if !defined.contains(&name) {
            continue; // forgotten meanwhile (moved away: `crate::harestart`)
        }
        if moved.contains(&name) {
            tracing::warn!(vm = %name, "isolation lease: VM moved to another node; left paused");
            continue;
        }
        match inner.vms.pause(&name, false).await {
            Ok(_) => tracing::warn!(vm = %name, "isolation lease: VM resumed"),
            Err(e) => {
                tracing::warn!(vm = %name, error = %e, "isolation lease: resuming a VM failed")
            }
        }
    }
}

/// Sleeps until `until`; closes the gate (and pauses VMs) if the lease runs out meanwhile.
/// Returns false on shutdown.
async fn wait_watching(
    inner: &NodeInner,
    until: Instant,
    valid_until: &mut Option<Instant>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        let expiry = *valid_until;
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return true,
            _ = tokio::time::sleep_until(expiry.unwrap_or(until)), if expiry.is_some_and(|e| e < until) => {
                *valid_until = None;
                close(inner, "no renewal confirmed by the cluster within the lease").await;
            }
            _ = shutdown.changed() => return false,
        }
    }
}

/// The lease task (see the module docs); runs until shutdown.
pub(crate) async fn run(inner: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let mut valid_until: Option<Instant> = None;
    let mut last_problem = String::new();
    loop {
        let cluster_ms = inner.cluster.member().map_or(0, |m| m.read(|s| s.lease_ms));
        let l = inner.lease.refresh_length(cluster_ms);
        let need = needed(&inner);
        inner.lease.needed.store(need.is_some(), Ordering::Release);
        let Some(m) = need else {
            valid_until = None;
            inner.lease.problem.lock().clear();
            if !inner.lease.gate.always() || !inner.lease.paused.lock().is_empty() {
                open(&inner, None, &HashSet::new()).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE_TICK) => continue,
                _ = shutdown.changed() => return,
            }
        };
        if valid_until.is_none() {
            // Never renewed since the start (or expired): nothing is served until a renewal.
            close(&inner, "no valid lease yet").await;
        }
        let sent = Instant::now();
        // A renewal answered after `sent + l` is worthless: it is given up then.
        let answer = {
            let fut = renew(&inner, &m);
            tokio::pin!(fut);
            loop {
                let expiry = valid_until;
                tokio::select! {
                    r = &mut fut => break Some(r),
                    _ = tokio::time::sleep_until(sent + l) => break None,
                    _ = tokio::time::sleep_until(expiry.unwrap_or(sent)), if expiry.is_some() => {
                        valid_until = None;
                        close(&inner, "no renewal confirmed by the cluster within the lease").await;
                    }
                    _ = shutdown.changed() => return,
                }
            }
        };
        let problem = match answer {
            Some(Ok(r)) if r.lost.is_empty() => {
                if Instant::now() < sent + l {
                    valid_until = Some(sent + l);
                    open(&inner, valid_until, &r.moved_vms).await;
                }
                String::new()
            }
            Some(Ok(r)) => {
                valid_until = None;
                close(
                    &inner,
                    "the cluster assigns this node's virtual disks to another member",
                )
                .await;
                format!(
                    "virtual disks {:?} are assigned to another member (taken over)",
                    r.lost
                )
            }
            Some(Err(e)) => format!("renewal failed: {e}"),
            None => "renewal not confirmed within the lease".to_string(),
        };
        if problem != last_problem {
            if !problem.is_empty() {
                tracing::warn!(problem = %problem, "isolation lease");
            }
            *inner.lease.problem.lock() = problem.clone();
            last_problem = problem;
        }
        if !wait_watching(
            &inner,
            sent + renew_every(l),
            &mut valid_until,
            &mut shutdown,
        )
        .await
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
