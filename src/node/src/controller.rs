//! The node's `control::Controller`: the one place every request is executed. It checks the
//! role policy and the request's own validation first (so bad input changes nothing), calls the
//! engine, converts the answer to typed replies, and writes an audit line for every mutation.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use control::{
    allowed, Actor, BoxFuture, ControlError, ControlResult, Controller, DiskView, ErrorCode, Range,
    Reply, Request, StatsView, Via,
};

use crate::disks::{self, Seen};
use crate::{convert, transfer, NodeInner};

/// Virtual disks whose I/O counters one `Stats` answer carries (the API charts as many).
pub(crate) const MAX_VDISK_IO: usize = 256;

/// Cheap to clone; every clone executes against the same node.
#[derive(Clone)]
pub struct NodeController {
    pub(crate) inner: Arc<NodeInner>,
}

impl Controller for NodeController {
    fn execute(&self, actor: Actor, req: Request) -> BoxFuture<'_, ControlResult> {
        Box::pin(async move {
            let started = Instant::now();
            // As asked: passed on so, the member that runs the VM gives it its own default
            // bridge.
            let asked = req.clone();
            let req = with_default_bridge(req, self.inner.cfg.default_bridge().as_deref());
            self.inner.requests.fetch_add(1, Ordering::Relaxed);
            let result = if !allowed(actor.role, &req) {
                Err(ControlError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "role {:?} may not {}",
                        actor.role,
                        req.action().replace('_', " ")
                    ),
                ))
            } else if let Err(e) = req.validate() {
                Err(e)
            } else {
                // Counted on drop, so a mutation whose caller went away midway still counts.
                let _changed = req.is_mutation().then(|| Changed(&self.inner.changes));
                let holder = match actor.via {
                    Via::Api => crate::forward::holder_now(&self.inner, &req).await,
                    _ => Ok(None),
                };
                match holder {
                    Err(e) => Err(e),
                    // Another member holds what it is about: carried out there.
                    Ok(Some((id, name))) => {
                        crate::forward::run_there(&self.inner, (id, &name), &actor, &asked).await
                    }
                    // A bound reached by a definition is the caller's to change (409), see
                    // admission.
                    Ok(None) => match self.dispatch(&req).await {
                        Ok(r) if actor.via == Via::Api && req.is_list() => {
                            Ok(crate::forward::with_others(&self.inner, &actor, r).await)
                        }
                        other => other.map_err(|err| crate::admission::map_error(&req, err)),
                    },
                }
            };
            if req.is_mutation() || result.is_err() {
                self.inner.audit(&actor, &req, &result, started.elapsed());
            }
            result
        })
    }

    fn generation(&self) -> Option<u64> {
        Some(self.inner.changes.load(Ordering::Acquire))
    }

    fn spans_members(&self) -> bool {
        crate::forward::spans_members(&self.inner)
    }

    fn take_node_events(&self) -> Vec<control::NodeEvent> {
        self.inner.events.take()
    }

    fn console_port(
        &self,
        actor: Actor,
        name: &str,
    ) -> Result<Arc<dyn control::ConsolePort>, ControlError> {
        let watch = Request::VmConsole {
            name: name.to_string(),
            max_bytes: None,
        };
        if !allowed(actor.role, &watch) {
            return Err(ControlError::new(
                ErrorCode::Forbidden,
                format!("role {:?} may not watch VM consoles", actor.role),
            ));
        }
        watch.validate()?;
        let can_type = allowed(
            actor.role,
            &Request::VmStart {
                name: name.to_string(),
            },
        );
        if actor.via == Via::Api {
            // Another member runs it: that member's console, through peer calls.
            if let Some((to, member)) = crate::forward::holder(&self.inner, &watch)? {
                let rt = tokio::runtime::Handle::try_current()
                    .map_err(|e| ControlError::internal(e.to_string()))?;
                return Ok(Arc::new(crate::forward::console::RemotePort {
                    inner: self.inner.clone(),
                    to,
                    member,
                    actor,
                    name: name.to_string(),
                    can_type,
                    rt,
                }));
            }
        }
        Ok(Arc::new(self.inner.vms.console_port(name, can_type)?))
    }
}

/// `req` with `bridge` (the node's default, see `NodeConfig::vm_bridge`) given to every NIC of
/// a `vm create` or `vm update` that names no bridge; any other request, or no default, as is.
/// A NIC whose bridge is `none` ([`control::NO_BRIDGE`]) named one: it keeps its plain tap.
fn with_default_bridge(mut req: Request, bridge: Option<&str>) -> Request {
    let Some(bridge) = bridge else { return req };
    let nics = match &mut req {
        Request::VmCreate { nics, .. } => nics,
        Request::VmUpdate {
            nics: Some(nics), ..
        } => nics,
        _ => return req,
    };
    for n in nics.iter_mut().filter(|n| n.bridge.is_none()) {
        n.bridge = Some(bridge.to_string());
    }
    req
}

/// Bumps the node's change counter ([`Controller::generation`]) when a mutation ends.
struct Changed<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

impl NodeController {
    /// Refuses a change to a VM or virtual disk that a planned move whose outcome is not known
    /// yet holds (`crate::takeover::settles`): deleted, cloned, snapshotted, rolled back or
    /// resized here, it might be the target's already, or the move might still make it so
    /// (what this node did would be lost, or the target's copy would differ from the one it
    /// adopted). Attaching a held disk is refused too: a running VM would serve it at once;
    /// and so is its export to a file. Starts and NBD exports are refused where they happen
    /// (`crate::harestart`), moves in `crate::takeover`. The same for a disk whose local copy is from before it left and came
    /// back, not replaced yet (`crate::takeover::gather::not_adopted_yet`).
    fn refuse_held(&self, req: &Request) -> Result<(), ControlError> {
        let s = &self.inner.cluster.settles;
        let why = match req {
            Request::VdiskResize { name, .. } => s.holds_vdisk(name, "be resized"),
            Request::VdiskDelete { name } => s.holds_vdisk(name, "be deleted"),
            Request::VdiskClone { source, .. } => s.holds_vdisk(source, "be cloned"),
            Request::SnapshotCreate { vdisk, .. } => s.holds_vdisk(vdisk, "be snapshotted"),
            Request::SnapshotDelete { vdisk, .. } => {
                s.holds_vdisk(vdisk, "have its snapshots deleted")
            }
            Request::SnapshotRollback { vdisk, .. } => s.holds_vdisk(vdisk, "be rolled back"),
            // The target may be writing it already: the file would hold data it never had.
            Request::VdiskExport { name, .. } => s.holds_vdisk(name, "be exported to a file"),
            Request::VmDelete { name } => s.holds_vm(name, "be deleted"),
            Request::VmUpdate { name, .. } | Request::VmDiskDetach { name, .. } => {
                s.holds_vm(name, "be changed")
            }
            Request::VmDiskAttach { name, vdisk } => s
                .holds_vm(name, "be changed")
                .or_else(|| s.holds_vdisk(vdisk, "be attached to a VM")),
            _ => None,
        };
        // A local copy from before the disk left and came back is neither served nor changed
        // (a clone, snapshot or export to a file of it would serve stale data; a change would
        // be lost when it is replaced by the current copy).
        let disk = match req {
            Request::VdiskResize { name, .. }
            | Request::VdiskDelete { name }
            | Request::VdiskExport { name, .. } => Some(name),
            Request::VdiskClone { source, .. } => Some(source),
            Request::SnapshotCreate { vdisk, .. }
            | Request::SnapshotDelete { vdisk, .. }
            | Request::SnapshotRollback { vdisk, .. }
            | Request::VmDiskAttach { vdisk, .. } => Some(vdisk),
            _ => None,
        };
        let why = why.or_else(|| {
            disk.and_then(|d| crate::takeover::gather::not_adopted_yet(&self.inner, d))
        });
        match why {
            Some(why) => Err(ControlError::new(ErrorCode::Unavailable, why)),
            None => Ok(()),
        }
    }

    async fn dispatch(&self, req: &Request) -> ControlResult {
        let engine = &self.inner.engine;
        let e = convert::error;
        // The node's own virtual disks (the appliance's record) are not the user's.
        crate::internal::refuse_internal(req)?;
        self.refuse_held(req)?;
        Ok(match req {
            Request::DiskList => Reply::Disks(self.disk_views()),
            Request::DiskAdd { path } => Reply::Disk(self.add_disk(Path::new(path), true).await?),
            Request::DiskRemove { disk } => {
                // Another member's disk (this pool keeps copies on it) is that member's to
                // remove: drained from here, the copies would only come back.
                if let Some(d) = engine
                    .disks()
                    .into_iter()
                    .find(|d| (d.id == *disk || d.name == *disk) && d.node_id != self.inner.node_id)
                {
                    return Err(ControlError::conflict(format!(
                        "disk {} is on another member (node {}): remove it there (cairn disk \
                         remove {} on that node), or through any member's web UI or API",
                        d.name, d.node_id, d.id
                    )));
                }
                // The engine refuses to drain the last active disk as "no space" (its data
                // would have nowhere to go). To the caller that is a request the pool's state
                // refuses (409), not a server out of room (507, which reads as our fault).
                let info = engine.remove_disk(disk).await.map_err(|err| {
                    if err.kind() == engine::ErrorKind::NoSpace {
                        ControlError::conflict(err.to_string())
                    } else {
                        e(err)
                    }
                })?;
                Reply::Disk(convert::disk(info, self.inner.node_id))
            }
            Request::DiskScrub => {
                engine.start_scrub().map_err(e)?;
                Reply::Done
            }
            Request::DiskProbe { path } => {
                let canon = disks::check_disk_path(Path::new(path))?;
                let dev = disks::open_device(&canon)?;
                Reply::Probe(convert::probe(
                    engine::Engine::probe(&*dev).await.map_err(e)?,
                ))
            }
            Request::PoolInfo => Reply::Pool(convert::pool(engine.pool())),
            Request::VdiskCreate { name, size_bytes } => {
                crate::admission::refuse_reserved_vdisk_name(name)?;
                crate::admission::check_vdisk_size(engine, name, *size_bytes)?;
                Reply::Vdisk(self.create_vdisk_recorded(name, *size_bytes).await?)
            }
            Request::VdiskList => {
                let mut v: Vec<_> = engine
                    .vdisks()
                    .into_iter()
                    .filter(|v| !crate::internal::is_internal_vdisk(&v.name))
                    .map(convert::vdisk)
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                Reply::Vdisks(v)
            }
            Request::VdiskGet { name } => {
                Reply::Vdisk(convert::vdisk(engine.vdisk(name).map_err(e)?))
            }
            Request::VdiskResize { name, size_bytes } => {
                let cur = engine.vdisk(name).map_err(e)?;
                // The current size is the disk's state: a shrink is a conflict with it (409).
                if *size_bytes < cur.size_bytes {
                    return Err(ControlError::conflict(format!(
                        "{name} is {}; virtual disks can only grow, not shrink to {}",
                        control::format_size(cur.size_bytes),
                        control::format_size(*size_bytes)
                    )));
                }
                if *size_bytes == cur.size_bytes {
                    Reply::Vdisk(convert::vdisk(cur))
                } else {
                    crate::admission::check_vdisk_size(engine, name, *size_bytes)?;
                    Reply::Vdisk(convert::vdisk(
                        engine.resize_vdisk(name, *size_bytes).await.map_err(e)?,
                    ))
                }
            }
            Request::VdiskDelete { name } => {
                self.refuse_if_exported(name, None)?;
                // In use is a conflict with the pool's state (409), not a node too busy to
                // answer (503, "try again later"): only deleting the VM changes the answer.
                if let Some(vm) = self.inner.vms.user_of(name) {
                    return Err(ControlError::new(
                        ErrorCode::Conflict,
                        format!("{name} is a disk of VM {vm}; delete the VM first: cairn vm delete {vm}"),
                    ));
                }
                self.delete_vdisk_recorded(name).await?;
                Reply::Done
            }
            Request::VdiskClone {
                source,
                snapshot,
                name,
            } => Reply::Vdisk({
                crate::admission::refuse_reserved_vdisk_name(name)?;
                self.clone_vdisk_recorded(source, snapshot.as_deref(), name)
                    .await?
            }),
            Request::VdiskImport { name, file } => {
                crate::admission::refuse_reserved_vdisk_name(name)?;
                let pool_paths = self.pool_paths();
                let t = transfer::import(
                    engine,
                    name,
                    Path::new(file),
                    &pool_paths,
                    &self.inner.cfg.data_dir.join("importing"),
                )
                .await?;
                if let Ok(v) = engine.vdisk(name) {
                    self.record_vdisk(&convert::vdisk(v)).await;
                }
                Reply::Transfer(t)
            }
            Request::VdiskExport {
                name,
                snapshot,
                file,
            } => {
                // As an NBD export (the other checks are `refuse_held`'s): not a copy the
                // cluster assigns to another node.
                crate::harestart::refuse_owned_elsewhere(&self.inner, name)?;
                let handle = match snapshot {
                    Some(s) => engine.open_snapshot(name, s),
                    None => engine.open_vdisk(name),
                }
                .map_err(e)?;
                Reply::Transfer(
                    transfer::export(
                        handle,
                        name,
                        Path::new(file),
                        &self.inner.cfg.disks_dir(),
                        &self.inner.lease.gate(),
                    )
                    .await?,
                )
            }
            Request::SnapshotCreate { vdisk, name } => {
                let s = engine.create_snapshot(vdisk, name).await.map_err(e)?;
                self.record_snapshot(vdisk, name, true).await;
                Reply::Snapshot(convert::snapshot(s))
            }
            Request::SnapshotList { vdisk } => Reply::Snapshots(
                engine
                    .snapshots(vdisk)
                    .map_err(e)?
                    .into_iter()
                    .map(convert::snapshot)
                    .collect(),
            ),
            Request::SnapshotDelete { vdisk, name } => {
                self.refuse_if_exported(vdisk, Some(name))?;
                engine.delete_snapshot(vdisk, name).await.map_err(e)?;
                self.record_snapshot(vdisk, name, false).await;
                Reply::Done
            }
            Request::SnapshotRollback { vdisk, name } => {
                self.refuse_if_exported(vdisk, None)?;
                if let Some(vm) = self.inner.vms.active_user_of(vdisk) {
                    return Err(ControlError::new(
                        ErrorCode::Conflict,
                        format!("{vdisk} is in use by running VM {vm}; stop it first: cairn vm stop {vm}"),
                    ));
                }
                engine.rollback(vdisk, name).await.map_err(e)?;
                Reply::Done
            }
            Request::SnapshotDiff { vdisk, from, to } => Reply::Ranges(
                match crate::admission::diff_order(engine, vdisk, from, to.as_deref())? {
                    Some(none) => none,
                    None => engine
                        .changed_ranges(vdisk, from, to.as_deref())
                        .await
                        .map_err(e)?
                        .into_iter()
                        .map(|(offset, len)| Range { offset, len })
                        .collect(),
                },
            ),
            Request::NbdStart {
                vdisk,
                snapshot,
                listen,
                read_only,
            } => Reply::NbdExport({
                crate::harestart::check_disk_here(&self.inner, vdisk)?;
                self.inner
                    .exports
                    .start(
                        engine,
                        vdisk,
                        snapshot.as_deref(),
                        listen.as_deref(),
                        *read_only,
                        self.inner.cfg.nbd_bind_ip,
                        self.inner.lease.gate(),
                    )
                    .await?
            }),
            Request::NbdStop { id } => {
                self.inner.exports.stop(*id).await?;
                Reply::Done
            }
            Request::NbdList => Reply::NbdExports(self.inner.exports.list()),
            Request::Stats => Reply::Stats(Box::new(self.stats())),
            Request::VmCreate {
                name,
                vcpus,
                memory_mib,
                disks,
                kernel,
                cmdline,
                nics,
            } => {
                crate::forward::refuse_vm_name_elsewhere(&self.inner, name)?;
                let vm = self
                    .inner
                    .vms
                    .create(
                        engine,
                        name,
                        *vcpus,
                        *memory_mib,
                        disks,
                        kernel,
                        cmdline.as_deref(),
                        nics,
                    )
                    .await?;
                self.record_vm(&vm).await;
                Reply::Vm(Box::new(vm))
            }
            Request::VmList => Reply::Vms(self.inner.vms.list().await?),
            Request::VmGet { name } => Reply::Vm(Box::new(self.inner.vms.get_view(name).await?)),
            Request::VmStart { name } => Reply::Vm(Box::new(
                crate::harestart::start_vm(&self.inner, name).await?,
            )),
            Request::VmStop {
                name,
                force,
                timeout_ms,
            } => {
                let vm = self.inner.vms.stop(name, *force, *timeout_ms).await?;
                // Stopped on purpose: a takeover must not start it elsewhere.
                let power = Some(cluster::VmPower::Stopped);
                crate::harestart::record_vm(&self.inner, &vm, power).await;
                Reply::Vm(Box::new(vm))
            }
            Request::VmPause { name } => {
                Reply::Vm(Box::new(self.inner.vms.pause(name, true).await?))
            }
            Request::VmResume { name } => {
                Reply::Vm(Box::new(self.inner.vms.pause(name, false).await?))
            }
            Request::VmDelete { name } => {
                let disks = self
                    .inner
                    .vms
                    .defined()
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, d)| d)
                    .unwrap_or_default();
                self.inner.vms.delete(name).await?;
                self.record_vm_deleted(name, &disks).await;
                Reply::Done
            }
            Request::VmConsole { name, max_bytes } => {
                Reply::Console(self.inner.vms.console(name, *max_bytes)?)
            }
            Request::VmDiskAttach { name, vdisk } => {
                let vm = self.inner.vms.attach_disk(engine, name, vdisk).await?;
                self.record_vm(&vm).await;
                Reply::Vm(Box::new(vm))
            }
            Request::VmDiskDetach {
                name,
                vdisk,
                force,
                timeout_ms,
            } => {
                let vm = self
                    .inner
                    .vms
                    .detach_disk(name, vdisk, *force, *timeout_ms)
                    .await?;
                self.record_vm(&vm).await;
                Reply::Vm(Box::new(vm))
            }
            Request::VmUpdate {
                name,
                new_name,
                description,
                vcpus,
                memory_mib,
                cmdline,
                disks,
                nics,
            } => {
                if let Some(n) = new_name.as_deref().filter(|n| n != name) {
                    crate::forward::refuse_vm_name_elsewhere(&self.inner, n)?;
                }
                let change = crate::vms::VmChange {
                    new_name: new_name.clone(),
                    description: description.clone(),
                    vcpus: *vcpus,
                    memory_mib: *memory_mib,
                    cmdline: cmdline.clone(),
                    disks: disks.clone(),
                    nics: nics.clone(),
                };
                let (vm, renamed_from) = self.inner.vms.update(name, change).await?;
                if let Some(old) = renamed_from {
                    self.record_vm_deleted(&old, &vm.disks).await;
                }
                self.record_vm(&vm).await;
                Reply::Vm(Box::new(vm))
            }
            Request::ClusterStatus
            | Request::ClusterToken { .. }
            | Request::ClusterJoin { .. }
            | Request::ClusterLocate { .. }
            | Request::ClusterRemove { .. }
            | Request::VdiskTakeover { .. }
            | Request::VmMove { .. } => self.cluster_request(req).await?,
            _ => {
                return Err(ControlError::invalid(format!(
                    "{} is not supported by this node",
                    req.action()
                )))
            }
        })
    }

    fn disk_views(&self) -> Vec<DiskView> {
        self.inner
            .engine
            .disks()
            .into_iter()
            .map(|d| convert::disk(d, self.inner.node_id))
            .collect()
    }

    /// Canonical paths of the pool's disks (import must never read one as an image).
    fn pool_paths(&self) -> Vec<PathBuf> {
        self.inner
            .engine
            .disks()
            .into_iter()
            .filter_map(|d| std::fs::canonicalize(&d.name).ok())
            .collect()
    }

    fn refuse_if_exported(&self, vdisk: &str, snapshot: Option<&str>) -> Result<(), ControlError> {
        if let Some(x) = self.inner.exports.find(vdisk, snapshot) {
            return Err(ControlError::conflict(format!(
                "{vdisk}{} is exported over NBD on {} (export {}); stop it first: cairn nbd stop {}",
                snapshot.map(|s| format!("@{s}")).unwrap_or_default(),
                x.listen,
                x.id,
                x.id
            )));
        }
        Ok(())
    }

    fn stats(&self) -> StatsView {
        let engine = &self.inner.engine;
        StatsView {
            node_name: self.inner.node_name.clone(),
            node_id: self.inner.node_id,
            uptime_secs: self.inner.started.elapsed().as_secs(),
            pool: convert::pool(engine.pool()),
            disks: self.disk_views(),
            vdisks: engine
                .vdisks()
                .iter()
                .filter(|v| !crate::internal::is_internal_vdisk(&v.name))
                .count(),
            nbd_exports: self.inner.exports.list().len(),
            requests: self.inner.requests.load(Ordering::Relaxed),
            engine: self.engine_stats_json(),
        }
    }

    /// The engine's counters plus `vdisk_io`: per user-visible virtual disk, its I/O counters
    /// (at most [`MAX_VDISK_IO`], in name order) so the API can chart IOPS, throughput and
    /// latency per virtual disk.
    fn engine_stats_json(&self) -> serde_json::Value {
        let engine = &self.inner.engine;
        let mut v = serde_json::to_value(engine.stats()).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            let mut io: Vec<_> = engine
                .vdisks_stats()
                .into_iter()
                .filter(|s| !crate::internal::is_internal_vdisk(&s.name))
                .collect();
            io.sort_by(|a, b| a.name.cmp(&b.name));
            io.truncate(MAX_VDISK_IO);
            obj.insert(
                "vdisk_io".into(),
                serde_json::to_value(io).unwrap_or(serde_json::Value::Null),
            );
        }
        v
    }

    /// Add one disk path to the pool. `explicit` is an admin's `disk add` (errors are reported
    /// and a path outside the disk directory is linked into it so restarts find it again);
    /// otherwise it is the watcher or startup, which remember refusals instead of retrying.
    pub(crate) async fn add_disk(
        &self,
        path: &Path,
        explicit: bool,
    ) -> Result<DiskView, ControlError> {
        let canon = disks::check_disk_path(path)?;
        let mut reg = self.inner.disks.lock().await;
        if reg.seen.get(&canon) == Some(&Seen::InPool) {
            return Err(ControlError::new(
                ErrorCode::AlreadyExists,
                format!("{} is already a disk of this pool", path.display()),
            ));
        }
        let result = async {
            let dev = disks::open_device(&canon)?;
            // The engine probes again and refuses foreign data itself; probing here first
            // gives the clearer message and guarantees nothing is opened for writing by it.
            if let engine::DiskProbe::Foreign { reason } =
                engine::Engine::probe(&*dev).await.map_err(convert::error)?
            {
                return Err(ControlError::new(
                    ErrorCode::ForeignData,
                    format!(
                        "{} holds data that is not Cairn's ({reason}); it was not touched",
                        path.display()
                    ),
                ));
            }
            let info = self
                .inner
                .engine
                .add_disk(dev)
                .await
                .map_err(convert::error)?;
            Ok(convert::disk(info, self.inner.node_id))
        }
        .await;
        match &result {
            Ok(view) => {
                reg.seen.insert(canon.clone(), Seen::InPool);
                tracing::info!(disk = %view.id, path = %canon.display(), "disk joined the pool");
                if explicit {
                    self.link_into_disk_dir(&canon, &mut reg);
                }
            }
            Err(err) => {
                if let Some((len, mtime_ns)) = disks::fingerprint(&canon) {
                    reg.seen
                        .insert(canon.clone(), Seen::Refused { len, mtime_ns });
                }
                tracing::warn!(path = %canon.display(), error = %err, "disk not added");
            }
        }
        result
    }

    /// Remember a disk added from outside `DATA/disks/` with a symlink there, so the next start
    /// opens it with the others.
    fn link_into_disk_dir(&self, canon: &Path, reg: &mut disks::DiskRegistry) {
        let dir = self.inner.cfg.disks_dir();
        if let Ok(d) = std::fs::canonicalize(&dir) {
            if canon.starts_with(&d) {
                return;
            }
        }
        let base = canon
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        for i in 0..1000 {
            let link = dir.join(if i == 0 {
                format!("ext-{base}")
            } else {
                format!("ext-{base}-{i}")
            });
            match std::os::unix::fs::symlink(canon, &link) {
                Ok(()) => {
                    reg.seen.insert(link, Seen::InPool);
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    tracing::warn!(path = %canon.display(), error = %e, "could not link disk into the disk directory; it must be added again after a restart");
                    return;
                }
            }
        }
    }

    /// One pass of the disk directory watcher: add every new file; retry a refused one only
    /// after it changed.
    pub(crate) async fn scan_disk_dir(&self) {
        for path in disks::scan(&self.inner.cfg.disks_dir()) {
            let Ok(canon) = std::fs::canonicalize(&path) else {
                continue;
            };
            {
                let reg = self.inner.disks.lock().await;
                match reg.seen.get(&canon) {
                    Some(Seen::InPool) => continue,
                    Some(Seen::Refused { len, mtime_ns })
                        if disks::fingerprint(&canon) == Some((*len, *mtime_ns)) =>
                    {
                        continue
                    }
                    _ => {}
                }
            }
            let actor = Actor::internal("disk-watch");
            let req = Request::DiskAdd {
                path: canon.display().to_string(),
            };
            let started = Instant::now();
            let result = self.add_disk(&canon, false).await.map(Reply::Disk);
            self.inner.audit(&actor, &req, &result, started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::VmNicSpec;

    fn nic(tap: &str, bridge: Option<&str>, vlan: Option<u16>) -> VmNicSpec {
        VmNicSpec {
            tap: tap.into(),
            mac: None,
            bridge: bridge.map(Into::into),
            vlan,
        }
    }

    fn update(nics: Option<Vec<VmNicSpec>>) -> Request {
        Request::VmUpdate {
            name: "web".into(),
            new_name: None,
            description: None,
            vcpus: None,
            memory_mib: None,
            cmdline: None,
            disks: None,
            nics,
        }
    }

    fn nics_of(req: &Request) -> Vec<VmNicSpec> {
        match req {
            Request::VmCreate { nics, .. } => nics.clone(),
            Request::VmUpdate { nics, .. } => nics.clone().unwrap_or_default(),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn nics_without_a_bridge_get_the_nodes_default_and_named_ones_keep_theirs() {
        let create = Request::VmCreate {
            name: "web".into(),
            vcpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            kernel: "/k".into(),
            cmdline: None,
            nics: vec![
                nic("tap0", None, None),
                nic("tap1", Some("br9"), None),
                nic("tap2", None, Some(10)),
                nic("tap3", Some("none"), None),
            ],
        };
        let filled = with_default_bridge(create.clone(), Some("cairn0"));
        assert_eq!(
            nics_of(&filled),
            vec![
                nic("tap0", Some("cairn0"), None),
                nic("tap1", Some("br9"), None),
                nic("tap2", Some("cairn0"), Some(10)),
                nic("tap3", Some("none"), None),
            ]
        );
        // Now a VLAN without a bridge of its own passes the checks; without the default it
        // is refused as before.
        filled.validate().unwrap();
        let e = create.clone().validate().unwrap_err();
        assert!(e.message.contains("no bridge"), "{}", e.message);
        assert_eq!(with_default_bridge(create.clone(), None), create);

        let up = with_default_bridge(
            update(Some(vec![
                nic("tap0", None, None),
                nic("tap1", Some("none"), None),
            ])),
            Some("cairn0"),
        );
        assert_eq!(
            nics_of(&up),
            vec![
                nic("tap0", Some("cairn0"), None),
                nic("tap1", Some("none"), None)
            ]
        );
        // An update that leaves the NICs alone stays so; other requests are untouched.
        assert_eq!(
            with_default_bridge(update(None), Some("cairn0")),
            update(None)
        );
        assert_eq!(
            with_default_bridge(Request::VmList, Some("cairn0")),
            Request::VmList
        );
    }
}
