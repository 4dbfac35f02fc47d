//! The controller's cluster side: `cluster_*` requests, and the virtual disk / snapshot / VM
//! operations that are recorded in the replicated cluster state around the engine call.
//!
//! Virtual disk names are reserved cluster-wide *before* the engine creates the disk and
//! released *before* it deletes it, so two members never both create the same name and a
//! failed commit (no quorum) changes nothing. Snapshots, imports and VMs are recorded after the
//! local operation (best effort, logged on failure). Must never: let a front end reach raft
//! except through here.

use std::net::SocketAddr;
use std::time::Duration;

use cluster::{Command, MemberState, Role};
use control::{
    AdoptionView, ClusterDataView, ClusterView, ControlError, DrainProgressView, DrainView,
    ErrorCode, LeaseView, MemberStatsView, RebuildView, Reply, Request, VdiskView, VmView,
};

use crate::clusterhost::ClusterHost;
use crate::controller::NodeController;
use crate::convert;
use crate::takeover::{manual, peer};
use crate::NodeInner;

mod drainprogress;

pub(crate) use drainprogress::DrainTrack;

/// The lease states a member may report about itself.
const LEASE_STATES: [&str; 3] = ["held", "expired", "not_needed"];

/// How long one `cluster_remove` request waits for a member's drain before it answers with the
/// progress (the CLI asks again until the member is gone).
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// Pause before the first drain check: the mirror starts draining within its tick.
const DRAIN_FIRST_LOOK: Duration = Duration::from_millis(600);

/// One pool disk as the drain capacity check sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskRoom {
    pub node: u64,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub active: bool,
}

/// Whether the data nodes left after removing member `id` can take what its disks hold:
/// at least two of them (each chunk on two nodes) and enough free space on their active disks.
pub(crate) fn drain_capacity(
    name: &str,
    id: u64,
    remaining_data_nodes: usize,
    disks: &[DiskRoom],
) -> Result<(), ControlError> {
    if remaining_data_nodes < 2 {
        return Err(ControlError::new(
            ErrorCode::NoSpace,
            format!(
                "removing {name} would leave {remaining_data_nodes} data node(s): its data could \
                 not stay mirrored on two nodes; join another data node first, or pass --force \
                 if {name} is dead and being replaced"
            ),
        ));
    }
    let held: u64 = disks
        .iter()
        .filter(|d| d.node == id)
        .map(|d| d.used_bytes)
        .sum();
    let free: u64 = disks
        .iter()
        .filter(|d| d.node != id && d.active)
        .map(|d| d.size_bytes.saturating_sub(d.used_bytes))
        .sum();
    if held > free {
        return Err(ControlError::new(
            ErrorCode::NoSpace,
            format!(
                "the other nodes' disks have {} free, but {name}'s disks hold {}: add disks or \
                 nodes first, or pass --force if {name} is dead and being replaced",
                control::format_size(free),
                control::format_size(held)
            ),
        ));
    }
    Ok(())
}

/// What still depends on member `id`'s disks, as this node sees it: its chunks on `id`'s disks
/// (or, when this node is `id`, the copies of other nodes' chunks it holds).
pub(crate) fn drain_left_here(inner: &NodeInner, id: u64, name: String, me: u64) -> DrainView {
    let engine = &inner.engine;
    if id == me {
        DrainView {
            node: id,
            name,
            chunks_left: 0,
            hosted_chunks_left: mirror::hosted_objects(engine),
            progress: None,
        }
    } else {
        DrainView {
            node: id,
            name,
            chunks_left: engine.chunks_on_node(id),
            hosted_chunks_left: 0,
            progress: None,
        }
    }
}

/// This node's own figures for the cluster-wide node and disk lists (`GET /nodes`, the web
/// UI's Nodes and disks view), as `Call::Stats` answers them.
pub(crate) fn own_stats(inner: &NodeInner) -> MemberStatsView {
    let engine = &inner.engine;
    let (mem_used_bytes, mem_total_bytes) = api::stats::read_mem().unwrap_or((0, 0));
    // The pool also lists the other members' disks (as remote replicas): only this node's own.
    let disks: Vec<control::DiskView> = engine
        .disks()
        .into_iter()
        .filter(|d| d.node_id == inner.node_id)
        .map(|d| convert::disk(d, inner.node_id))
        .collect();
    MemberStatsView {
        uptime_secs: inner.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        mem_used_bytes,
        mem_total_bytes,
        raw_bytes: disks.iter().map(|d| d.size_bytes).sum(),
        used_raw_bytes: disks.iter().map(|d| d.used_bytes).sum(),
        disks,
        vdisks: engine
            .vdisks()
            .iter()
            .filter(|v| !crate::internal::is_internal_vdisk(&v.name))
            .count() as u64,
        io: {
            let e = engine.stats();
            control::MemberIoView {
                reads: e.reads,
                writes: e.writes,
                read_bytes: e.read_bytes,
                write_bytes: e.write_bytes,
            }
        },
    }
}

/// This node's own drain as it counts it now: the copies of other nodes' chunks still on its
/// disks (see `drainprogress`).
pub(crate) fn own_drain_progress(inner: &NodeInner) -> DrainProgressView {
    let left = mirror::hosted_objects(&inner.engine);
    inner.cluster.drain.observe(left, std::time::Instant::now())
}

/// The members the cluster state marks draining, by id with their names.
pub(crate) fn draining_members(m: &cluster::ClusterNode) -> Vec<(u64, String)> {
    m.read(|s| {
        s.members
            .values()
            .filter(|x| x.state == MemberState::Draining)
            .map(|x| (x.id, x.name.clone()))
            .collect()
    })
}

/// What `cluster status` asks the other members before it answers, all at once: each one's
/// lease (and so whether it answers, [`members_leases`]) and each draining member's own
/// progress ([`drains_progress`]).
pub(crate) async fn ask_members(m: &cluster::ClusterNode, v: &mut ClusterView) {
    let me = v.me;
    let draining: Vec<u64> = v
        .data
        .draining
        .iter()
        .filter(|d| d.node != me && d.progress.is_none())
        .map(|d| d.node)
        .collect();
    // Other data members that are not down are asked for their figures.
    let data: Vec<u64> = v
        .members
        .iter()
        .filter(|x| x.id != me && x.role != "witness" && x.health != "down")
        .map(|x| x.id)
        .collect();
    let (_, drains, stats) = futures::join!(
        members_leases(m, v),
        drains_progress(m, &draining),
        members_stats(m, &data)
    );
    for (id, s) in stats {
        if let Some(x) = v.members.iter_mut().find(|x| x.id == id) {
            x.stats = s;
        }
    }
    for (id, p) in drains {
        if let Some(d) = v.data.draining.iter_mut().find(|d| d.node == id) {
            d.progress = p;
        }
    }
}

/// Each of the members `ids`, asked for its own figures (bounded by `LEASE_ASK_TIMEOUT`, all
/// at once); None for one that does not answer (or is too old to).
async fn members_stats(
    m: &cluster::ClusterNode,
    ids: &[u64],
) -> Vec<(u64, Option<MemberStatsView>)> {
    let asks = ids.iter().map(|&id| async move {
        match peer::call(m, id, &peer::Call::Stats, peer::LEASE_ASK_TIMEOUT).await {
            Ok(peer::Answer::Stats(s)) => (id, Some(*s)),
            _ => (id, None),
        }
    });
    futures::future::join_all(asks).await
}

/// Each of the draining members `ids`, asked for its own progress (bounded by
/// `LEASE_ASK_TIMEOUT`, all at once); None for one that does not answer.
async fn drains_progress(
    m: &cluster::ClusterNode,
    ids: &[u64],
) -> Vec<(u64, Option<DrainProgressView>)> {
    let asks = ids.iter().map(|id| async move {
        let call = &peer::Call::DrainProgress;
        match peer::call(m, *id, call, peer::LEASE_ASK_TIMEOUT).await {
            Ok(peer::Answer::Drain(p)) => (*id, Some(p)),
            _ => (*id, None),
        }
    });
    futures::future::join_all(asks).await
}

/// Each other member's lease state, asked over the member transport (all at once, each bounded
/// by `LEASE_ASK_TIMEOUT`): it also says who answers now, not only whose heartbeat came last.
/// A data member reports `held`, `expired` or `not_needed`; a witness has no lease and is
/// `not_needed` once it answers at all (it refuses node calls); either is `unreachable` when it
/// does not answer (or is down for the failure detector). Data nodes and witnesses both ask.
async fn members_leases(m: &cluster::ClusterNode, v: &mut ClusterView) {
    let me = v.me;
    let asks = v.members.iter().filter(|x| x.id != me).map(|x| {
        let (id, down, witness) = (x.id, x.health == "down", x.role == "witness");
        async move {
            if down {
                return (id, "unreachable".to_string());
            }
            if witness {
                let reachable = peer::answers(m, id, peer::LEASE_ASK_TIMEOUT).await;
                let state = if reachable {
                    "not_needed"
                } else {
                    "unreachable"
                };
                return (id, state.to_string());
            }
            let call = &peer::Call::Lease;
            let state = match peer::call(m, id, call, peer::LEASE_ASK_TIMEOUT).await {
                Ok(peer::Answer::Lease { state }) if LEASE_STATES.contains(&state.as_str()) => {
                    state
                }
                _ => "unreachable".to_string(),
            };
            (id, state)
        }
    });
    for (id, state) in futures::future::join_all(asks).await {
        if let Some(x) = v.members.iter_mut().find(|x| x.id == id) {
            x.lease = Some(state);
        }
    }
}

impl NodeController {
    /// `cluster_status`, `cluster_token`, `cluster_join`, `cluster_locate`, `cluster_remove`,
    /// `vdisk_takeover`, `vm_move`.
    pub(crate) async fn cluster_request(&self, req: &Request) -> Result<Reply, ControlError> {
        let host = &self.inner.cluster;
        match req {
            Request::ClusterStatus => {
                let mut v = self.status_view()?;
                if let Some(me) = v.members.iter_mut().find(|x| x.id == v.me) {
                    me.stats = Some(own_stats(&self.inner));
                }
                if let Ok(m) = self.inner.cluster.member() {
                    ask_members(&m, &mut v).await;
                }
                Ok(Reply::Cluster(Box::new(v)))
            }
            Request::VdiskTakeover { name, to, force } => {
                self.vdisk_takeover(name, to, *force).await
            }
            Request::VmMove { name, to } => self.vm_move(name, to).await,
            Request::ClusterToken { witness, ttl_secs } => {
                Ok(Reply::ClusterToken(host.token(*witness, *ttl_secs).await?))
            }
            Request::ClusterJoin { address, token } => {
                let a: SocketAddr = address
                    .parse()
                    .map_err(|_| ControlError::invalid("cluster address is not ip:port"))?;
                // The node's own internal disks (the appliance's record) do not count as data.
                let vdisks = self.inner.engine.vdisks();
                let own = vdisks
                    .iter()
                    .filter(|v| !crate::internal::is_internal_vdisk(&v.name))
                    .count();
                let local = own + self.inner.vms.list().await?.len();
                host.join(a, token, local).await?;
                Ok(Reply::Cluster(Box::new(self.status_view()?)))
            }
            Request::ClusterRemove { node, force } => self.remove_member(node, *force).await,
            Request::ClusterLocate { node, address } => {
                host.locate(node, address).await?;
                Ok(Reply::Done)
            }
            other => Err(ControlError::internal(format!(
                "{} is not a cluster request",
                other.action()
            ))),
        }
    }

    /// `vm_move`: a planned move of a stopped VM with its disks, run on the VM's node
    /// (forwarded there when this node is not it; see `crate::takeover::vm_move`).
    async fn vm_move(&self, name: &str, to: &str) -> Result<Reply, ControlError> {
        let m = self.inner.cluster.member()?;
        let me = m.id();
        let (to_id, _) = manual::target_of(&m, to)?;
        let here = self.inner.vms.defined().iter().any(|(n, _)| n == name);
        let node = if here {
            Some(me)
        } else {
            m.read_fresh(|s| s.vms.values().find(|v| v.name == name).and_then(|v| v.node))
                .await
                .map_err(|e| ControlError::new(ErrorCode::Unavailable, e.to_string()))?
        };
        let Some(node) = node else {
            return Err(ControlError::new(
                ErrorCode::NotFound,
                format!("no VM {name} in the cluster"),
            ));
        };
        if node == to_id {
            return Err(ControlError::new(
                ErrorCode::Conflict,
                format!("VM {name} is already on {to}"),
            ));
        }
        let v = if node == me {
            crate::takeover::vm_move::move_vm_out(&self.inner, name, to_id).await?
        } else {
            let call = peer::Call::MoveVm {
                name: name.to_string(),
                to: to_id,
            };
            match peer::call(&m, node, &call, peer::MOVE_TIMEOUT).await {
                Ok(peer::Answer::Vm(Some(v))) => *v,
                Ok(_) => {
                    return Err(ControlError::internal(
                        "the VM's node answered the move with something else",
                    ))
                }
                // The VM's node's own refusal as it gave it, or that it did not answer.
                Err(e) => return Err(e),
            }
        };
        Ok(Reply::Vm(Box::new(v)))
    }

    /// `vdisk_takeover`: a planned move, run on the disk's holder (forwarded there when this
    /// node is not it; see `crate::takeover::manual`).
    async fn vdisk_takeover(
        &self,
        name: &str,
        to: &str,
        force: bool,
    ) -> Result<Reply, ControlError> {
        let m = self.inner.cluster.member()?;
        let me = m.id();
        let (to_id, _) = manual::target_of(&m, to)?;
        let owner = m
            .read_fresh(|s| {
                s.vdisks
                    .values()
                    .find(|d| d.name == name)
                    .and_then(|d| cluster::vdisk_owner(&d.id))
            })
            .await
            .map_err(|e| ControlError::new(ErrorCode::Unavailable, e.to_string()))?;
        let Some(owner) = owner else {
            return Err(ControlError::new(
                ErrorCode::NotFound,
                format!("no virtual disk {name} in the cluster"),
            ));
        };
        if owner == to_id {
            return Err(ControlError::new(
                ErrorCode::Conflict,
                format!("virtual disk {name} is already served by {to}"),
            ));
        }
        let v = if owner == me {
            manual::move_out(&self.inner, name, to_id, force).await?
        } else {
            let call = peer::Call::MoveOut {
                name: name.to_string(),
                to: to_id,
                force,
            };
            match peer::call(&m, owner, &call, peer::MOVE_TIMEOUT).await {
                Ok(peer::Answer::Vdisk(Some(v))) => v,
                Ok(_) => {
                    return Err(ControlError::internal(
                        "the holder answered the move with something else",
                    ))
                }
                Err(e) if e.code == ErrorCode::Unavailable => {
                    return Err(ControlError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the holder of {name} (member {owner}) cannot be asked to move it: \
                             {} (a dead holder's disks are taken over automatically)",
                            e.message
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Reply::Vdisk(v))
    }

    /// `cluster status` with this node's isolation lease.
    fn status_view(&self) -> Result<ClusterView, ControlError> {
        let mut v = self.inner.cluster.status(self.data_view())?;
        let me = v.me;
        let Some(mine) = v.members.iter_mut().find(|x| x.id == me) else {
            return Ok(v);
        };
        if mine.role != "data" {
            return Ok(v); // a witness has no lease
        }
        let st = self.inner.lease.state();
        let state = match (st.needed, st.remaining) {
            (false, _) => "not_needed",
            (true, Some(_)) => "held",
            (true, None) => "expired",
        };
        mine.lease = Some(state.to_string());
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        v.lease = Some(LeaseView {
            state: state.to_string(),
            remaining_ms: st.remaining.map(|d| d.as_millis() as u64),
            length_ms: st.length.as_millis() as u64,
            problem: if st.needed && st.remaining.is_none() {
                if st.problem.is_empty() {
                    "no renewal confirmed by the cluster yet".to_string()
                } else {
                    st.problem
                }
            } else {
                String::new()
            },
            awaiting_adoption: st
                .waiting
                .into_iter()
                .map(|(id, vdisk, left)| AdoptionView {
                    vdisk,
                    id,
                    held_for_ms: left.as_millis() as u64,
                    held_until_unix_ms: now_ms + left.as_millis() as u64,
                })
                .collect(),
        });
        Ok(v)
    }

    fn data_view(&self) -> ClusterDataView {
        let engine = &self.inner.engine;
        let p = engine.pool();
        let r = engine.rebuild_progress();
        let mut v = ClusterDataView {
            degraded_chunks: p.degraded_chunks,
            rebuilding: p.rebalancing,
            rebuild: RebuildView {
                running: r.running,
                chunks_total: r.chunks_total,
                chunks_done: r.chunks_done,
                percent: RebuildView::percent_of(r.chunks_done, r.chunks_total),
                bytes_done: r.bytes_done,
                rate_bytes_per_sec: r.rate_bytes_per_sec,
                eta_secs: r.eta_secs,
                ceiling_bytes_per_sec: r.ceiling_bytes_per_sec,
                guest_busy: r.guest_busy,
            },
            ..ClusterDataView::default()
        };
        if let Ok(m) = self.inner.cluster.member() {
            let me = m.id();
            let draining = draining_members(&m);
            if !draining.iter().any(|(id, _)| *id == me) {
                self.inner.cluster.drain.reset();
            }
            v.draining = draining
                .into_iter()
                .map(|(id, name)| {
                    let mut d = self.drain_left(id, name, me);
                    if id == me {
                        d.progress = Some(own_drain_progress(&self.inner));
                    }
                    d
                })
                .collect();
        }
        self.inner.mirror.fill(
            engine,
            (self.inner.node_id, self.inner.started.elapsed()),
            &mut v,
        );
        v
    }

    /// What still depends on member `id`'s disks, as this node sees it.
    fn drain_left(&self, id: u64, name: String, me: u64) -> DrainView {
        drain_left_here(&self.inner, id, name, me)
    }

    /// Chunks left to drain from member `id` on every other data member (asked over the
    /// member transport, each bounded), or why that is not known yet (a member that does not
    /// answer: its chunks may still be on `id`).
    async fn drain_left_elsewhere(&self, m: &cluster::ClusterNode, id: u64) -> Result<u64, String> {
        let me = m.id();
        let others: Vec<u64> = m.read(|s| {
            s.members
                .values()
                .filter(|x| x.role == Role::Data && x.id != me && x.id != id)
                .map(|x| x.id)
                .collect()
        });
        let asks = others.iter().map(|peer_id| {
            let call = peer::Call::DrainLeft { id };
            async move {
                match peer::call(m, *peer_id, &call, peer::STEP_TIMEOUT).await {
                    Ok(peer::Answer::Left(n)) => Ok(n),
                    Ok(_) => Err(format!("member {peer_id} answered something else")),
                    Err(e) => Err(e.message),
                }
            }
        });
        let mut total = 0u64;
        for r in futures::future::join_all(asks).await {
            total = total.saturating_add(r?);
        }
        Ok(total)
    }

    /// `cluster remove NODE`: a data member is first marked draining (after checking that the
    /// others can take its data), which makes every data node re-mirror the chunks it has on
    /// that member's disks elsewhere (`mirrorhost`); once nothing here depends on it, it leaves
    /// raft. A request waits up to [`DRAIN_WAIT`] and otherwise answers with the cluster view
    /// (the member draining, with what is left): asking again continues. `--force` removes at
    /// once (a dead node being replaced). A witness holds no data and leaves at once.
    ///
    /// The wait sees this node's chunks (and, when this node is the one leaving, the copies of
    /// every other node's chunks it holds), and asks every other data member for its own
    /// chunks left on the leaving one (`Call::DrainLeft`): the member leaves only when none
    /// is left anywhere, and not while a data member does not answer. Refused, before and
    /// after the drain, while a planned move from or to the member is not settled on any
    /// member (`crate::takeover::settles::refuse_removal_while_unsettled`).
    async fn remove_member(&self, node: &str, force: bool) -> Result<Reply, ControlError> {
        let host = &self.inner.cluster;
        if force {
            host.remove(node, true).await?;
            return Ok(Reply::Done);
        }
        let m = host.member()?;
        let me = m.id();
        let (target, members) = m.read(|s| {
            (
                s.members
                    .values()
                    .find(|x| x.name == node || x.id.to_string() == node)
                    .cloned(),
                s.members.values().cloned().collect::<Vec<_>>(),
            )
        });
        let target = target.ok_or_else(|| {
            ControlError::not_found(format!(
                "no member {node:?} in this cluster (see `cairn cluster status`)"
            ))
        })?;
        if target.role != Role::Data {
            host.remove(node, false).await?;
            return Ok(Reply::Done);
        }
        // What the member owns, as committed by now (a disk it created a moment ago may not
        // be applied on this member yet).
        let (name, vdisks, vms) = m
            .read_fresh(|s| crate::clusterhost::owned_by(s, target.id))
            .await
            .map_err(crate::clusterhost::cluster_error)?;
        if !vdisks.is_empty() || !vms.is_empty() {
            return Err(ControlError::conflict(format!(
                "member {name} still owns virtual disks [{}] and VMs [{}]: delete them (or move \
                 them to another node) first, or pass --force if the node is dead and being \
                 replaced",
                vdisks.join(", "),
                vms.join(", ")
            )));
        }
        // Asked again by `host.remove` before it leaves; said here before any draining starts.
        crate::takeover::settles::refuse_removal_while_unsettled(
            &host.settles,
            &m,
            target.id,
            &name,
            crate::takeover::settles::RemovalStep::BeforeDrain,
        )
        .await?;
        if target.state != MemberState::Draining {
            let remaining = members
                .iter()
                .filter(|x| {
                    x.id != target.id && x.role == Role::Data && x.state != MemberState::Draining
                })
                .count();
            let disks: Vec<DiskRoom> = self
                .inner
                .engine
                .disks()
                .into_iter()
                .filter(|d| d.attached)
                .map(|d| DiskRoom {
                    node: d.node_id,
                    size_bytes: d.size_bytes,
                    used_bytes: d.used_bytes,
                    active: d.state == engine::DiskState::Active,
                })
                .collect();
            drain_capacity(&name, target.id, remaining, &disks)?;
            let cmd = Command::SetMemberState {
                id: target.id,
                state: MemberState::Draining,
            };
            match m
                .propose(cmd)
                .await
                .map_err(crate::clusterhost::cluster_error)?
            {
                cluster::CommandResult::Rejected(why) => {
                    return Err(ControlError::conflict(format!(
                        "the cluster refused to drain {name}: {why}"
                    )))
                }
                _ => tracing::info!(member = target.id, "member draining before removal"),
            }
        }
        let t = tokio::time::Instant::now();
        // Give the mirror a tick to start draining before the first look.
        tokio::time::sleep(DRAIN_FIRST_LOOK).await;
        loop {
            let left = self.drain_left(target.id, name.clone(), me);
            let here_done = left.chunks_left == 0 && left.hosted_chunks_left == 0;
            let elsewhere = if here_done {
                self.drain_left_elsewhere(&m, target.id).await
            } else {
                Err("this node's chunks first".into())
            };
            if here_done && elsewhere == Ok(0) {
                host.remove(node, false).await?;
                tracing::info!(member = target.id, "drained member removed");
                return Ok(Reply::Done);
            }
            if t.elapsed() >= DRAIN_WAIT {
                if let (true, Err(why)) = (here_done, &elsewhere) {
                    tracing::info!(member = target.id, reason = %why, "drain: waiting for the other members");
                }
                let mut v = self.status_view()?;
                ask_members(&m, &mut v).await;
                return Ok(Reply::Cluster(Box::new(v)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) async fn create_vdisk_recorded(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> Result<VdiskView, ControlError> {
        let engine = &self.inner.engine;
        let _g = self.inner.cluster.vdisk_lock.lock().await;
        self.reserved(name, size_bytes, None, || {
            engine.create_vdisk(name, size_bytes)
        })
        .await
    }

    pub(crate) async fn clone_vdisk_recorded(
        &self,
        source: &str,
        snapshot: Option<&str>,
        name: &str,
    ) -> Result<VdiskView, ControlError> {
        let engine = &self.inner.engine;
        let _g = self.inner.cluster.vdisk_lock.lock().await;
        let size = engine.vdisk(source).map_err(convert::error)?.size_bytes;
        let me = self.inner.cluster.member_id().unwrap_or(0);
        let parent = snapshot.map(|s| format!("{me}/{source}@{s}"));
        self.reserved(name, size, parent, || {
            engine.clone_vdisk(source, snapshot, name)
        })
        .await
    }

    /// Reserves `name` cluster-wide, then runs the engine's `create`; undoes the reservation
    /// if the engine refuses. Called under the vdisk lock. A clustered node marks the create
    /// in `DATA/creating/NAME` first and keeps the mark while a reservation may be left
    /// without a disk (a kill before the engine's create, a reservation or release whose
    /// commit is unknown): only such a marked record is this node's to reclaim, at its next
    /// create of the name or at the next start. A record assigned here by a takeover or a move
    /// before its disk is adopted looks the same otherwise, and releasing it would drop the
    /// disk from the cluster.
    async fn reserved<F>(
        &self,
        name: &str,
        size: u64,
        parent: Option<String>,
        create: impl FnOnce() -> F,
    ) -> Result<VdiskView, ControlError>
    where
        F: std::future::Future<Output = engine::Result<engine::VdiskInfo>>,
    {
        let engine = &self.inner.engine;
        let creating = self.creating_marks();
        let (marker, reclaim) = match self.inner.cluster.member() {
            Ok(_) => {
                let left = creating.join(name).exists() && engine.vdisk(name).is_err();
                (Some(crate::transfer::mark(&creating, name)?), left)
            }
            Err(_) => (None, false),
        };
        let unmark = || {
            if let Some(m) = &marker {
                let _ = std::fs::remove_file(m);
            }
        };
        if let Err(e) = self
            .inner
            .cluster
            .reserve_vdisk(name, size, parent, reclaim)
            .await
        {
            // Not reserved for sure, unless the cluster did not confirm either way.
            if e.code != ErrorCode::Unavailable {
                unmark();
            }
            return Err(e);
        }
        match create().await {
            Ok(v) => {
                unmark();
                Ok(convert::vdisk(v))
            }
            Err(err) => {
                if self.unreserve(name).await {
                    unmark();
                }
                Err(convert::error(err))
            }
        }
    }

    /// Undo a reservation after the engine refused the create (unless a disk of that name is
    /// here after all: then the record is right). Whether the record is settled (released,
    /// or naming the disk here).
    async fn unreserve(&self, name: &str) -> bool {
        if self.inner.engine.vdisk(name).is_err() {
            if let Err(e) = self.inner.cluster.release_vdisk(name).await {
                tracing::warn!(vdisk = name, error = %e.message, "could not release the cluster record; the next create of this name here reclaims it");
                return false;
            }
        } else {
            // A disk of that name was here without a record (its delete was cut short after the
            // release and its record could not be made again): the reservation names it again,
            // as the start-up reconcile would. Logged in the same words.
            tracing::warn!(vdisk = name, "recorded a local virtual disk in the cluster");
        }
        true
    }

    /// Deletes a virtual disk: its cluster record first (the name is free cluster-wide from
    /// then on), then the engine's disk. A clustered node marks the delete in
    /// `DATA/deleting/NAME` before it starts, and keeps the mark while the outcome is not
    /// settled (a kill between the two steps, a release whose commit is unknown, a record
    /// that could not be made again): the start-up reconcile finishes such a delete when the
    /// cluster no longer has the record, and keeps the disk when it still has, instead of
    /// naming the disk again under a name another member may hold by then.
    pub(crate) async fn delete_vdisk_recorded(&self, name: &str) -> Result<(), ControlError> {
        let engine = &self.inner.engine;
        let _g = self.inner.cluster.vdisk_lock.lock().await;
        let info = engine.vdisk(name).map_err(convert::error)?;
        let marker = match self.inner.cluster.member() {
            Ok(_) => Some(crate::transfer::mark(&self.deleting_marks(), name)?),
            Err(_) => None,
        };
        let unmark = || {
            if let Some(m) = &marker {
                let _ = std::fs::remove_file(m);
            }
        };
        if let Err(e) = self.inner.cluster.release_vdisk(name).await {
            // A clear refusal leaves the record: nothing to finish. Otherwise the release may
            // still commit: the mark stays for the next start to settle.
            if e.code != ErrorCode::Unavailable {
                unmark();
            }
            return Err(e);
        }
        if let Err(err) = engine.delete_vdisk(name).await {
            let size = info.size_bytes;
            let recorded = self
                .inner
                .cluster
                .record("vdisk", |me| {
                    Command::CreateVdisk(cluster::VdiskDef {
                        id: format!("{me}/{name}"),
                        name: name.to_string(),
                        size_bytes: size,
                        parent_snapshot: None,
                    })
                })
                .await;
            if recorded {
                unmark();
            }
            return Err(convert::error(err));
        }
        unmark();
        Ok(())
    }

    /// Where deletes in progress are marked (see [`Self::delete_vdisk_recorded`]).
    pub(crate) fn deleting_marks(&self) -> std::path::PathBuf {
        self.inner
            .cfg
            .data_dir
            .join(crate::clusterhost::DELETING_DIR)
    }

    /// Where creates in progress are marked (see [`Self::reserved`]).
    pub(crate) fn creating_marks(&self) -> std::path::PathBuf {
        self.inner
            .cfg
            .data_dir
            .join(crate::clusterhost::CREATING_DIR)
    }

    pub(crate) async fn record_vdisk(&self, v: &VdiskView) {
        let (name, size) = (v.name.clone(), v.size_bytes);
        self.inner
            .cluster
            .record("vdisk", |me| {
                Command::CreateVdisk(cluster::VdiskDef {
                    id: format!("{me}/{name}"),
                    name,
                    size_bytes: size,
                    parent_snapshot: None,
                })
            })
            .await;
    }

    pub(crate) async fn record_snapshot(&self, vdisk: &str, name: &str, created: bool) {
        self.inner
            .cluster
            .record("snapshot", |me| {
                if created {
                    ClusterHost::snapshot_cmd(me, vdisk, name)
                } else {
                    ClusterHost::snapshot_delete_cmd(me, vdisk, name)
                }
            })
            .await;
    }

    /// Record `vm` (with its definition) in the cluster, keeping whether it should run.
    pub(crate) async fn record_vm(&self, vm: &VmView) {
        crate::harestart::record_vm(&self.inner, vm, None).await;
    }

    /// Remove the cluster record of VM `name`, defined here on `disks` until now.
    pub(crate) async fn record_vm_deleted(&self, name: &str, disks: &[String]) {
        crate::harestart::record_vm_deleted(&self.inner, name, disks).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(node: u64, size_mib: u64, used_mib: u64) -> DiskRoom {
        DiskRoom {
            node,
            size_bytes: size_mib << 20,
            used_bytes: used_mib << 20,
            active: true,
        }
    }

    #[test]
    fn drain_needs_two_other_data_nodes_and_room() {
        let disks = [disk(1, 100, 40), disk(2, 100, 40), disk(3, 100, 60)];
        // Two nodes left with 120 MiB free for node 3's 60 MiB: fine.
        assert!(drain_capacity("c", 3, 2, &disks).is_ok());
        // One node left: nowhere to keep the second replica.
        let e = drain_capacity("c", 3, 1, &disks).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSpace);
        assert!(e.message.contains("--force"), "{}", e.message);
        // Not enough free space on the others.
        let full = [disk(1, 100, 90), disk(2, 100, 90), disk(3, 100, 60)];
        let e = drain_capacity("c", 3, 2, &full).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSpace);
        assert!(e.message.contains("free"), "{}", e.message);
        // A draining (inactive) disk's room does not count.
        let mut d = full;
        d[0] = DiskRoom {
            active: false,
            ..disk(1, 1000, 0)
        };
        assert!(drain_capacity("c", 3, 2, &d).is_err());
    }
}
