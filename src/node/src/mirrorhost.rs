//! Mirrored I/O between the cluster's data nodes: every data node serves its pool disks to its
//! peers (`mirror::ReplicaServer`) and attaches every other data member's disks to its own
//! engine as remote replicas (`mirror::attach_peer` -> `Engine::add_remote_disk`). The engine's
//! placement treats the node as the first failure domain, so each chunk of a virtual disk then
//! has one replica on a disk of this node and one on a disk of another node.
//!
//! # How it runs
//! A background task ticks every [`TICK`] and follows the raft membership: nothing runs while
//! this node is alone (a single node keeps both replicas on its own disks); once the cluster
//! state lists another data member, the replica server starts on the mirror endpoint (the
//! cluster address's port + 2, like the join endpoint is port + 1), the fencing epoch is
//! obtained (below), and then each other data member is linked and its disks attached. A
//! member that joins later is attached when it appears; one that leaves the membership (or
//! starts draining) has its disks drained out of this node's pool (`Engine::remove_disk`), so
//! redundancy is rebuilt elsewhere. `attach_peer` is retried every few seconds per peer, which
//! also re-adds a peer's disks the engine gave up on (away past the grace period) once the
//! peer is back, and picks up disks a peer added.
//!
//! Transport: mutual TLS with a certificate for this member's id issued from the cluster CA
//! (which every member holds in the replicated state), so only members of this cluster reach
//! the replica server, and each peer can only touch the copies it wrote itself (the server files
//! them under the peer's certificate id).
//!
//! # Fencing epochs, derived from raft
//! At every start of the mirror (process start, or this node joining a cluster) the node
//! commits its disk list to the cluster's placement map through raft (`SetNodeDisks`); the
//! placement map's version, returned by that commit, is strictly greater than every version
//! committed before, by any node. That version becomes this node's write epoch for all its
//! virtual disks (`EpochBook::set_base`), and every mutation it sends carries it. Replica
//! servers keep the highest epoch seen per virtual disk durably and refuse lower ones, so after
//! a restart the previous incarnation's delayed writes are refused. A node taking a virtual
//! disk over commits a newer version (`MoveVdisks`) and retires the held copy (epoch maximum,
//! here and on the other peers via `PeerLink::raise_for`), fencing the old owner even if it is
//! still running behind a partition (see `crate::takeover`). No peer is attached before the
//! epoch is committed, so nothing is ever sent with an epoch raft did not hand out.
//!
//! Writing alone: a write or other change that an away peer's replica does not get is
//! acknowledged only once the cluster has recorded that the peer's copies are outdated
//! (`Command::Outdate`, committed once per away period, before the first such write; cleared
//! when the peer is back in sync). That peer can then not take this node's disks over without
//! those writes, and an owner cut off from the majority gets write errors instead of
//! acknowledging writes a takeover would lose (`crate::takeover::AlonePermit`).
//!
//! # Failures
//! A peer that dies or hangs makes its replicas *away* within the mirror call timeout (2 s) or
//! two missed heartbeats (250 ms each); guest I/O continues on the local replica and the chunks
//! written meanwhile are tracked; when the peer answers again only those are resynced (the
//! engine's remote watcher, `engine::remote`). Past the engine's grace period (300 s) the
//! peer's disks are given up and the data re-mirrored on the remaining disks.
//!
//! Takeover: each tick also describes this node's virtual disks to its peers, takes over the
//! virtual disks of a data member down past the takeover delay (`CAIRN_TAKEOVER_DELAY_MS`,
//! default 20 s), adopts what raft assigned to this node from the copies held here and on the
//! other holders, and drops stale local copies of disks another node took over (all in
//! `crate::takeover`).
//!
//! With three or more data members one survivor takes over and gathers the chunks the other
//! holders keep over this transport; the moved VMs restart there (`crate::harestart`). Not
//! done yet: a manual `cairn vdisk takeover`. (An owner cut off from the majority stops
//! serving its disks and pauses its VMs once its isolation lease runs out: `crate::lease`.)
//!
//! Must never: attach a peer before the epoch is committed, attach this node's own disks as
//! remote, or serve disks to anything without a certificate from this cluster's CA.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{Command, CommandResult, Member, MemberState, PlacementDisk, Role};
use control::{ClusterDataView, RemoteReplicaView};
use engine::{DiskState, Engine, Reachability};
use mirror::{EpochBook, MirrorConfig, PeerLink, ReplicaServer};
use tokio::sync::watch;
use transport::{NodeIdentity, ServerHandle};

use crate::NodeInner;

/// How often membership is looked at.
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// After a start, how long a member's disk may stay unattached before the status calls it
/// away (a member that answers is attached within a few ticks).
const AWAY_AT_START_AFTER: Duration = Duration::from_secs(5);
/// Pause between attach attempts for one peer after a success / a failure.
const ATTACH_EVERY: Duration = Duration::from_secs(5);
const ATTACH_RETRY: Duration = Duration::from_secs(2);
/// Bound on one attach attempt (a hung peer must not stall the loop for others).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on committing the epoch (no quorum: retried next tick).
const EPOCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The mirror endpoint of a member whose cluster address is `cluster`.
pub(crate) fn mirror_addr(cluster: SocketAddr) -> Option<SocketAddr> {
    let port = cluster.port().checked_add(2)?;
    Some(SocketAddr::new(cluster.ip(), port))
}

/// What `cluster status` shows about the mirror.
#[derive(Default, Clone)]
struct Shown {
    epoch: u64,
    listen: Option<SocketAddr>,
}

/// The node's mirror: status for front ends; the work happens in [`run`].
#[derive(Default)]
pub(crate) struct MirrorHost {
    shown: parking_lot::Mutex<Shown>,
    /// The replica server of the running mirror (kept after it stops: what it was told stays
    /// true), for what peers described to this node (`crate::takeover::gather`).
    server: parking_lot::Mutex<Option<Arc<ReplicaServer>>>,
}

struct Peer {
    addr: SocketAddr,
    link: Arc<PeerLink>,
    next_try: Instant,
}

/// The mirror of one cluster membership (cluster id, member id).
struct Running {
    cluster_id: String,
    me: u64,
    identity: NodeIdentity,
    server: Arc<ReplicaServer>,
    handle: Option<ServerHandle>,
    epochs: Arc<EpochBook>,
    epoch: u64,
    peers: HashMap<u64, Peer>,
    /// Last problem logged, so a persisting one is logged once.
    last_warning: String,
    takeover: crate::takeover::Takeover,
    permit: crate::takeover::AlonePermit,
}

impl Running {
    fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }

    fn warn(&mut self, what: String) {
        if what != self.last_warning {
            tracing::warn!(problem = %what, "mirror");
            self.last_warning = what;
        }
    }
}

impl MirrorHost {
    /// The replica server of the mirror, once one ran (None: this node never mirrored).
    pub(crate) fn server(&self) -> Option<Arc<ReplicaServer>> {
        self.server.lock().clone()
    }

    /// At node start, before the mirror first runs (its first tick, or never while this node
    /// is alone or its peers are all draining): a replica server opened on the mirror's state
    /// only to read what peers described to this node and which of their copies were retired
    /// here. Without it, `crate::takeover::gather::not_adopted_yet` found nothing until the
    /// mirror ran, so a local copy from before a disk left and came back could be exported,
    /// started with a VM or answered as served to a mover right after a restart. The mirror
    /// replaces it with its own server when it starts (both read the same files; this one
    /// never serves or writes).
    pub(crate) fn open_state(&self, inner: &NodeInner) {
        let Ok(m) = inner.cluster.member() else {
            return;
        };
        if m.role() != Role::Data || self.server.lock().is_some() {
            return;
        }
        match ReplicaServer::new(m.id(), &state_dir(inner, m.cluster_id())) {
            Ok(server) => {
                let mut slot = self.server.lock();
                if slot.is_none() {
                    *slot = Some(server);
                }
            }
            Err(e) => tracing::warn!(error = %e, "mirror: reading the replica server state"),
        }
    }

    /// A replica server to read from, as if a mirror had run (tests).
    #[cfg(test)]
    pub(crate) fn set_server(&self, server: Arc<ReplicaServer>) {
        *self.server.lock() = Some(server);
    }

    /// Fills the mirror part of `cluster status` for node `own`, up for `uptime`.
    pub(crate) fn fill(
        &self,
        engine: &Engine,
        (own, uptime): (u64, Duration),
        view: &mut ClusterDataView,
    ) {
        let shown = self.shown.lock().clone();
        view.write_epoch = shown.epoch;
        view.mirror_listen = shown.listen.map(|a| a.to_string());
        view.hosted_chunks = mirror::hosted_objects(engine);
        view.remote_replicas = engine
            .remote_disks()
            .into_iter()
            .filter(|r| r.state != DiskState::Removed)
            .map(|r| RemoteReplicaView {
                disk: r.name,
                node: r.node_id,
                state: format!("{:?}", r.state).to_lowercase(),
                reachability: match r.reachability {
                    Reachability::Up => "up",
                    Reachability::Away => "away",
                    Reachability::Back => "resyncing",
                }
                .into(),
                away_secs: r.away_secs,
                dirty_chunks: r.dirty_chunks,
                resynced_chunks: r.resynced_chunks,
                resyncs: r.resyncs,
                since_start: false,
            })
            .collect();
        // Another member's disk this pool keeps copies on and has not reached since this node
        // started (the member was down then): the mirror attaches a disk only once its member
        // answers, so it was not listed at all and the data looked fully redundant. Away since
        // the start at least; its copies are all checked and resynced when it comes back.
        if uptime >= AWAY_AT_START_AFTER {
            let listed: Vec<String> = view
                .remote_replicas
                .iter()
                .map(|r| r.disk.clone())
                .collect();
            for d in engine.disks() {
                let live = matches!(d.state, DiskState::Active | DiskState::Draining);
                if d.node_id == own || d.attached || !live || listed.contains(&d.name) {
                    continue;
                }
                view.remote_replicas.push(RemoteReplicaView {
                    disk: d.name,
                    node: d.node_id,
                    state: format!("{:?}", d.state).to_lowercase(),
                    reachability: "away".into(),
                    away_secs: uptime.as_secs(),
                    dirty_chunks: 0,
                    resynced_chunks: 0,
                    resyncs: 0,
                    since_start: true,
                });
            }
        }
        view.stale_chunks = view.remote_replicas.iter().map(|r| r.dirty_chunks).sum();
    }
}

/// Runs the mirror until `shutdown` (see the module docs).
pub(crate) async fn run(inner: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let mut running: Option<Running> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => break,
        }
        // A step may wait on raft or a hung peer for a while: a shutdown does not wait for it
        // (the engine's own shutdown flushes whatever was attached).
        tokio::select! {
            _ = step(&inner, &mut running) => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Some(r) = running.take() {
        r.stop();
    }
    *inner.mirror.shown.lock() = Shown::default();
}

async fn step(inner: &NodeInner, running: &mut Option<Running>) {
    let Ok(m) = inner.cluster.member() else {
        if let Some(r) = running.take() {
            r.stop();
        }
        return;
    };
    if m.role() != Role::Data {
        return;
    }
    let me = m.id();
    let (members, ca) = m.read(|s| {
        (
            s.members.values().cloned().collect::<Vec<Member>>(),
            s.ca.clone(),
        )
    });
    let peers: Vec<Member> = members
        .into_iter()
        .filter(|x| x.id != me && x.role == Role::Data && x.state != MemberState::Draining)
        .collect();
    if running
        .as_ref()
        .is_some_and(|r| r.me != me || r.cluster_id != m.cluster_id())
    {
        // This node joined another cluster: its identity and peers changed.
        if let Some(r) = running.take() {
            r.stop();
        }
    }
    if running.is_none() {
        if peers.is_empty() {
            return; // alone: both replicas stay on this node's disks
        }
        let Some(ca) = ca else { return };
        let identity = match ca.issue(me) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "mirror: no certificate from the cluster CA");
                return;
            }
        };
        let dir = state_dir(inner, m.cluster_id());
        let server = match ReplicaServer::new(me, &dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "mirror: replica server state");
                return;
            }
        };
        *inner.mirror.server.lock() = Some(server.clone());
        let epochs = Arc::new(EpochBook::new(1));
        let permit = crate::takeover::AlonePermit::new(m.clone());
        epochs.set_alone_permit(permit.handle());
        *running = Some(Running {
            cluster_id: m.cluster_id().to_string(),
            me,
            identity,
            server,
            handle: None,
            epochs,
            epoch: 0,
            peers: HashMap::new(),
            last_warning: String::new(),
            takeover: Default::default(),
            permit,
        });
    }
    let Some(r) = running.as_mut() else { return };
    let engine = &inner.engine;

    // Serve this node's disks (again: disks may have been added).
    r.server.serve_engine(engine);
    let Some(addr) = mirror_addr(inner.cluster.address()) else {
        r.warn("cluster port too high for a mirror endpoint".into());
        return;
    };
    // The member moved while running (a DHCP renewal, `cairn node` on a new address): peers
    // now mirror to the new address (they follow Member.addr), so listen there instead.
    if let Some(h) = r.handle.as_ref().filter(|h| h.local_addr() != addr) {
        tracing::info!(old = %h.local_addr(), new = %addr, "mirror: the cluster address moved");
        r.handle = None;
    }
    if r.handle.is_none() {
        match r.server.start(addr, &r.identity).await {
            Ok(h) => {
                tracing::info!(%addr, member = me, "mirror: serving this node's disks to peers");
                inner.mirror.shown.lock().listen = Some(h.local_addr());
                r.handle = Some(h);
            }
            Err(e) => {
                r.warn(format!("cannot listen on {addr}: {e}"));
                return;
            }
        }
    }

    // The write epoch, committed through raft before anything is sent to a peer.
    if r.epoch == 0 {
        let disks: Vec<PlacementDisk> = engine
            .local_replicas()
            .into_iter()
            .map(|(d, _)| PlacementDisk {
                disk_id: d.id,
                weight: d.size_bytes,
                state: cluster::DiskState::In,
            })
            .collect();
        let cmd = Command::SetNodeDisks { node: me, disks };
        match tokio::time::timeout(EPOCH_TIMEOUT, m.propose(cmd)).await {
            Ok(Ok(CommandResult::PlacementVersion(v))) => {
                r.epochs.set_base(v);
                r.permit.set_epoch(v);
                r.epoch = v;
                inner.mirror.shown.lock().epoch = v;
                tracing::info!(epoch = v, member = me, "mirror: write epoch committed");
            }
            Ok(Ok(other)) => {
                r.warn(format!(
                    "the cluster refused this node's disk list: {other:?}"
                ));
                return;
            }
            Ok(Err(e)) => {
                r.warn(format!("committing the write epoch: {e}"));
                return;
            }
            Err(_) => {
                r.warn("committing the write epoch: no commit in time".into());
                return;
            }
        }
    }

    // Link and attach every other data member.
    let now = Instant::now();
    for p in &peers {
        let addr = match p.addr.parse::<SocketAddr>().ok().and_then(mirror_addr) {
            Some(a) => a,
            None => {
                r.warn(format!(
                    "member {} has no usable address {:?}",
                    p.id, p.addr
                ));
                continue;
            }
        };
        if let Some(peer) = r.peers.get_mut(&p.id).filter(|x| x.addr != addr) {
            // The member moved: the replicas attached through this link call it there now
            // (a new link would serve only disks attached from now on, leaving these away
            // until the grace period rebuilt their data elsewhere).
            peer.link.retarget(addr).await;
            peer.addr = addr;
            peer.next_try = now;
        }
        if !r.peers.contains_key(&p.id) {
            let link = match PeerLink::new(
                p.id,
                addr,
                &r.identity,
                r.epochs.clone(),
                MirrorConfig::default(),
            ) {
                Ok(l) => l,
                Err(e) => {
                    r.warn(format!("link to member {}: {e}", p.id));
                    continue;
                }
            };
            r.peers.insert(
                p.id,
                Peer {
                    addr,
                    link,
                    next_try: now,
                },
            );
        }
        let Some(peer) = r.peers.get_mut(&p.id) else {
            continue;
        };
        if peer.next_try > now {
            continue;
        }
        match tokio::time::timeout(ATTACH_TIMEOUT, mirror::attach_peer(engine, &peer.link)).await {
            Ok(Ok(added)) => {
                peer.next_try = now + ATTACH_EVERY;
                for d in added {
                    tracing::info!(disk = %d.name, member = p.id, "mirror: peer disk attached as a remote replica");
                }
            }
            Ok(Err(e)) => {
                peer.next_try = now + ATTACH_RETRY;
                tracing::debug!(member = p.id, error = %e, "mirror: attach failed; retrying");
            }
            Err(_) => {
                peer.next_try = now + ATTACH_RETRY;
                tracing::debug!(member = p.id, "mirror: attach timed out; retrying");
            }
        }
    }

    // Descriptions for the peers, takeovers of lost members, stale copies after one.
    let links: Vec<(u64, Arc<PeerLink>)> = r
        .peers
        .iter()
        .map(|(id, p)| (*id, p.link.clone()))
        .collect();
    crate::takeover::step(inner, &m, &r.server, &links, &mut r.takeover).await;
    crate::takeover::clear_outdated(inner, &r.permit).await;

    // Members that left (or drain): their disks leave this pool, redundancy is rebuilt here.
    let gone: Vec<u64> = r
        .peers
        .keys()
        .copied()
        .filter(|id| !peers.iter().any(|p| p.id == *id))
        .collect();
    for id in gone {
        let mut all_done = true;
        for d in engine.remote_disks() {
            if d.node_id != id || d.state != DiskState::Active {
                continue;
            }
            match engine.remove_disk(&d.id).await {
                Ok(_) => {
                    tracing::info!(disk = %d.name, member = id, "mirror: member left; draining its disk from this pool")
                }
                Err(e) => {
                    all_done = false;
                    tracing::warn!(disk = %d.name, error = %e, "mirror: draining a departed member's disk");
                }
            }
        }
        if all_done {
            r.peers.remove(&id);
        }
    }
}

/// The mirror's state directory (the replica server's epochs and peers' descriptions) for
/// cluster `cluster_id`.
pub(crate) fn state_dir(inner: &NodeInner, cluster_id: &str) -> std::path::PathBuf {
    inner.cfg.data_dir.join("mirror").join(sanitize(cluster_id))
}

/// A cluster id as a directory name (it is hex, but never trust a name for a path).
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_endpoint_is_two_ports_up() {
        let a: SocketAddr = "127.0.0.2:7000".parse().unwrap();
        assert_eq!(mirror_addr(a), Some("127.0.0.2:7002".parse().unwrap()));
        assert_eq!(mirror_addr("127.0.0.1:65534".parse().unwrap()), None);
        assert_eq!(sanitize("ab/../c"), "ab____c");
    }
}
