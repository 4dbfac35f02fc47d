//! The controller's cluster side: `cluster_*` requests, and the virtual disk / snapshot / VM
//! operations that are recorded in the replicated cluster state around the engine call.
//!
//! Virtual disk names are reserved cluster-wide *before* the engine creates the disk and
//! released *before* it deletes it, so two members never both create the same name and a
//! failed commit (no quorum) changes nothing. Snapshots, imports and VMs are recorded after the
//! local operation (best effort, logged on failure). Must never: let a front end reach raft
//! except through here.

use std::net::SocketAddr;

use cluster::{Command, VmDef, VmPower};
use control::{ClusterDataView, ControlError, Reply, Request, VdiskView, VmView};

use crate::clusterhost::ClusterHost;
use crate::controller::NodeController;
use crate::convert;

impl NodeController {
    /// `cluster_status`, `cluster_token`, `cluster_join`, `cluster_remove`.
    pub(crate) async fn cluster_request(&self, req: &Request) -> Result<Reply, ControlError> {
        let host = &self.inner.cluster;
        match req {
            Request::ClusterStatus => Ok(Reply::Cluster(Box::new(host.status(self.data_view())?))),
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
                Ok(Reply::Cluster(Box::new(host.status(self.data_view())?)))
            }
            Request::ClusterRemove { node, force } => {
                host.remove(node, *force).await?;
                Ok(Reply::Done)
            }
            other => Err(ControlError::internal(format!(
                "{} is not a cluster request",
                other.action()
            ))),
        }
    }

    fn data_view(&self) -> ClusterDataView {
        let p = self.inner.engine.pool();
        let mut v = ClusterDataView {
            degraded_chunks: p.degraded_chunks,
            rebuilding: p.rebalancing,
            ..ClusterDataView::default()
        };
        self.inner.mirror.fill(&self.inner.engine, &mut v);
        v
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

    pub(crate) async fn record_vm(&self, vm: &VmView) {
        let vm = vm.clone();
        self.inner
            .cluster
            .record("vm", |me| {
                Command::PutVm(VmDef {
                    id: ClusterHost::vm_id(me, &vm.name),
                    name: vm.name.clone(),
                    vcpus: u32::from(vm.vcpus),
                    memory_mib: vm.memory_mib,
                    vdisks: ClusterHost::vdisk_ids(me, &vm.disks),
                    node: Some(me),
                    power: VmPower::Stopped,
                })
            })
            .await;
    }

    pub(crate) async fn record_vm_deleted(&self, name: &str) {
        self.inner
            .cluster
            .record("vm", |me| Command::DeleteVm {
                id: ClusterHost::vm_id(me, name),
            })
            .await;
    }
}
