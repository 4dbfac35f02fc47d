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
    AdoptionView, ClusterDataView, ClusterView, ControlError, DrainView, ErrorCode, LeaseView,
    RebuildView, Reply, Request, VdiskView, VmView,
};

use crate::clusterhost::ClusterHost;
use crate::controller::NodeController;
use crate::convert;

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

impl NodeController {
    /// `cluster_status`, `cluster_token`, `cluster_join`, `cluster_remove`.
    pub(crate) async fn cluster_request(&self, req: &Request) -> Result<Reply, ControlError> {
        let host = &self.inner.cluster;
        match req {
            Request::ClusterStatus => Ok(Reply::Cluster(Box::new(self.status_view()?))),
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
            other => Err(ControlError::internal(format!(
                "{} is not a cluster request",
                other.action()
            ))),
        }
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
            let draining: Vec<(u64, String)> = m.read(|s| {
                s.members
                    .values()
                    .filter(|x| x.state == MemberState::Draining)
                    .map(|x| (x.id, x.name.clone()))
                    .collect()
            });
            v.draining = draining
                .into_iter()
                .map(|(id, name)| self.drain_left(id, name, me))
                .collect();
        }
        self.inner.mirror.fill(engine, &mut v);
        v
    }

    /// What still depends on member `id`'s disks, as this node sees it.
    fn drain_left(&self, id: u64, name: String, me: u64) -> DrainView {
        let engine = &self.inner.engine;
        if id == me {
            DrainView {
                node: id,
                name,
                chunks_left: 0,
                hosted_chunks_left: mirror::hosted_objects(engine),
            }
        } else {
            DrainView {
                node: id,
                name,
                chunks_left: engine.chunks_on_node(id),
                hosted_chunks_left: 0,
            }
        }
    }

    /// `cluster remove NODE`: a data member is first marked draining (after checking that the
    /// others can take its data), which makes every data node re-mirror the chunks it has on
    /// that member's disks elsewhere (`mirrorhost`); once nothing here depends on it, it leaves
    /// raft. A request waits up to [`DRAIN_WAIT`] and otherwise answers with the cluster view
    /// (the member draining, with what is left): asking again continues. `--force` removes at
    /// once (a dead node being replaced). A witness holds no data and leaves at once.
    ///
    /// The wait sees this node's chunks (and, when this node is the one leaving, the copies of
    /// every other node's chunks it holds); each other node drains its own chunks likewise.
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
            if left.chunks_left == 0 && left.hosted_chunks_left == 0 {
                host.remove(node, false).await?;
                tracing::info!(member = target.id, "drained member removed");
                return Ok(Reply::Done);
            }
            if t.elapsed() >= DRAIN_WAIT {
                return Ok(Reply::Cluster(Box::new(self.status_view()?)));
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
        self.inner
            .cluster
            .reserve_vdisk(name, size_bytes, None, |n| engine.vdisk(n).is_ok())
            .await?;
        match engine.create_vdisk(name, size_bytes).await {
            Ok(v) => Ok(convert::vdisk(v)),
            Err(err) => {
                self.unreserve(name).await;
                Err(convert::error(err))
            }
        }
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
        self.inner
            .cluster
            .reserve_vdisk(name, size, parent, |n| engine.vdisk(n).is_ok())
            .await?;
        match engine.clone_vdisk(source, snapshot, name).await {
            Ok(v) => Ok(convert::vdisk(v)),
            Err(err) => {
                self.unreserve(name).await;
                Err(convert::error(err))
            }
        }
    }

    /// Undo a reservation after the engine refused the create (unless a disk of that name is
    /// here after all: then the record is right).
    async fn unreserve(&self, name: &str) {
        if self.inner.engine.vdisk(name).is_err() {
            if let Err(e) = self.inner.cluster.release_vdisk(name).await {
                tracing::warn!(vdisk = name, error = %e.message, "could not release the cluster record; the next create of this name here reclaims it");
            }
        }
    }

    pub(crate) async fn delete_vdisk_recorded(&self, name: &str) -> Result<(), ControlError> {
        let engine = &self.inner.engine;
        let _g = self.inner.cluster.vdisk_lock.lock().await;
        let info = engine.vdisk(name).map_err(convert::error)?;
        self.inner.cluster.release_vdisk(name).await?;
        if let Err(err) = engine.delete_vdisk(name).await {
            let size = info.size_bytes;
            self.inner
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
            return Err(convert::error(err));
        }
        Ok(())
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

    pub(crate) async fn record_vm_deleted(&self, name: &str) {
        crate::harestart::record_vm_deleted(&self.inner, name).await;
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
