//! The node's object definitions in the cluster state: virtual disk names reserved and
//! released around the engine's create and delete, snapshots and other records written after
//! the local operation, and the start-up reconcile of this node's disks with the cluster's
//! records.
//!
//! Must never: leave a name reserved by this node that the engine refused, or record an object
//! as this node's that it does not hold.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use cluster::{Command, CommandResult, SnapshotDef, VdiskDef};
use control::{ControlError, ErrorCode};

use super::{cluster_error, ClusterHost};

/// Under the node's data folder: virtual disk deletes in progress, one empty file per name
/// (`NodeController::delete_vdisk_recorded`).
pub(crate) const DELETING_DIR: &str = "deleting";
/// Under the node's data folder: virtual disk creates in progress (`NodeController::reserved`).
pub(crate) const CREATING_DIR: &str = "creating";

impl ClusterHost {
    fn vdisk_id(me: u64, name: &str) -> String {
        format!("{me}/{name}")
    }

    /// Reserves a virtual disk name cluster-wide before the engine creates it. With `reclaim`
    /// (the caller knows this node left a reservation of the name behind: a create cut short
    /// between reserve and create), this node's definition of the name is released first;
    /// without, it is a disk assigned here and not adopted yet, and the name is taken.
    pub(crate) async fn reserve_vdisk(
        &self,
        name: &str,
        size_bytes: u64,
        parent_snapshot: Option<String>,
        reclaim: bool,
    ) -> std::result::Result<(), ControlError> {
        let Ok(m) = self.member() else {
            return Ok(());
        };
        let def = VdiskDef {
            id: Self::vdisk_id(m.id(), name),
            name: name.to_string(),
            size_bytes,
            parent_snapshot,
        };
        for _ in 0..2 {
            match m
                .propose(Command::CreateVdisk(def.clone()))
                .await
                .map_err(cluster_error)?
            {
                CommandResult::Rejected(msg) => {
                    let holder = m.read(|s| {
                        s.vdisks
                            .values()
                            .find(|v| v.name == name)
                            .map(|v| v.id.clone())
                    });
                    match holder {
                        Some(id) if id == def.id && reclaim => {
                            tracing::warn!(vdisk = name, "released a stale cluster record");
                            m.propose(Command::DeleteVdisk { id })
                                .await
                                .map_err(cluster_error)?;
                        }
                        Some(id) => {
                            return Err(ControlError::new(
                                ErrorCode::AlreadyExists,
                                format!(
                                    "virtual disk {name} already exists in the cluster (defined by member {})",
                                    id.split('/').next().unwrap_or("?")
                                ),
                            ))
                        }
                        None => return Err(ControlError::conflict(msg)),
                    }
                }
                _ => return Ok(()),
            }
        }
        Err(ControlError::conflict(format!(
            "virtual disk {name}: its cluster definition keeps changing; retry"
        )))
    }

    /// Drops this node's definition of `name` (and its snapshots') from the cluster state.
    pub(crate) async fn release_vdisk(&self, name: &str) -> std::result::Result<(), ControlError> {
        let Ok(m) = self.member() else {
            return Ok(());
        };
        let id = Self::vdisk_id(m.id(), name);
        let snaps: Vec<String> = m.read(|s| {
            s.snapshots
                .values()
                .filter(|x| x.vdisk == id)
                .map(|x| x.id.clone())
                .collect()
        });
        for s in snaps {
            m.propose(Command::DeleteSnapshot { id: s })
                .await
                .map_err(cluster_error)?;
        }
        // Always proposed, whatever this member's (possibly lagging) copy of the state says:
        // the leader's state decides, and "no such virtual disk" means already released.
        match m
            .propose(Command::DeleteVdisk { id: id.clone() })
            .await
            .map_err(cluster_error)?
        {
            CommandResult::Rejected(msg) if msg.contains("snapshots") => {
                // Snapshot records this member had not applied yet: wait for them, then retry.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let snaps: Vec<String> = m.read(|s| {
                    s.snapshots
                        .values()
                        .filter(|x| x.vdisk == id)
                        .map(|x| x.id.clone())
                        .collect()
                });
                for s in snaps {
                    m.propose(Command::DeleteSnapshot { id: s })
                        .await
                        .map_err(cluster_error)?;
                }
                match m
                    .propose(Command::DeleteVdisk { id })
                    .await
                    .map_err(cluster_error)?
                {
                    CommandResult::Rejected(msg) if !msg.contains("no such") => {
                        Err(ControlError::conflict(msg))
                    }
                    _ => Ok(()),
                }
            }
            CommandResult::Rejected(msg) if !msg.contains("no such") => {
                Err(ControlError::conflict(msg))
            }
            _ => Ok(()),
        }
    }

    /// Records a definition change that already happened on this node. Best effort: the
    /// local object exists either way; a failure is logged (and the vdisk reconcile at
    /// start repairs vdisk records). Returns whether the record is in (false also without a
    /// cluster).
    pub(crate) async fn record(&self, what: &str, cmd: impl FnOnce(u64) -> Command) -> bool {
        let Ok(m) = self.member() else { return false };
        match m.propose(cmd(m.id())).await {
            Ok(CommandResult::Rejected(msg)) => {
                tracing::warn!(what, reason = %msg, "cluster state refused a record");
                false
            }
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(what, error = %e, "could not record in the cluster state");
                false
            }
        }
    }

    pub(crate) fn snapshot_cmd(me: u64, vdisk: &str, name: &str) -> Command {
        let vid = Self::vdisk_id(me, vdisk);
        Command::CreateSnapshot(SnapshotDef {
            id: format!("{vid}@{name}"),
            vdisk: vid,
            name: name.to_string(),
        })
    }

    pub(crate) fn snapshot_delete_cmd(me: u64, vdisk: &str, name: &str) -> Command {
        Command::DeleteSnapshot {
            id: format!("{}@{name}", Self::vdisk_id(me, vdisk)),
        }
    }

    /// Makes the cluster state agree with the engine about this node's virtual disks: records
    /// the ones it lacks (made before clustering, or a crash before the record) and releases
    /// this node's records of disks the engine does not have when a create of that name was
    /// cut short here (marked in `creating`, see `NodeController::reserved`: a crash between
    /// the reservation and the engine's create). An unmarked record of a disk not here is one
    /// assigned by a takeover or move and not adopted yet: left for the takeover to adopt.
    /// Runs at start under the vdisk lock, so no create is in flight; retries while there is
    /// no leader, for a bounded time.
    ///
    /// A disk whose delete was cut short (marked in `deleting`, see
    /// `NodeController::delete_vdisk_recorded`) is never named again: its delete is finished if
    /// the cluster released its record, and the mark dropped (the disk kept) if it did not.
    pub(crate) async fn reconcile_vdisks(
        &self,
        engine: &engine::Engine,
        deleting: &Path,
        creating: &Path,
    ) {
        let _g = self.vdisk_lock.lock().await;
        let Ok(m) = self.member() else { return };
        let me = m.id();
        let prefix = format!("{me}/");
        for attempt in 0..20u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let marked = marked_names(deleting);
            let creates = marked_names(creating);
            let local: Vec<(String, u64)> = engine
                .vdisks()
                .into_iter()
                // The node's own internal disks are per node, never cluster objects.
                .filter(|v| !crate::internal::is_internal_vdisk(&v.name))
                .map(|v| (v.name, v.size_bytes))
                .collect();
            // A fresh read: this node's own view may still lack a reservation its previous run
            // proposed and the leader committed just before the kill (or a release it made),
            // and reconciling against that view would leave the record behind for good.
            let fresh = m
                .read_fresh(|s| {
                    let stale: Vec<String> = s
                        .vdisks
                        .values()
                        .filter(|v| {
                            v.id.starts_with(&prefix) && !local.iter().any(|(n, _)| *n == v.name)
                        })
                        .map(|v| v.name.clone())
                        .collect();
                    let recorded: HashSet<String> = s
                        .vdisks
                        .keys()
                        .filter(|id| id.starts_with(&prefix))
                        .cloned()
                        .collect();
                    (stale, recorded)
                })
                .await;
            let (stale, recorded) = match fresh {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster reconcile: no fresh view yet");
                    continue;
                }
            };
            let mut failed = false;
            // Deletes cut short: settled first, by what the fresh view says of the record.
            let mut unsettled: HashSet<String> = HashSet::new();
            for name in &marked {
                let mark = deleting.join(name);
                if !local.iter().any(|(n, _)| n == name) {
                    let _ = std::fs::remove_file(&mark);
                } else if recorded.contains(&Self::vdisk_id(me, name)) {
                    // The release never committed: the delete did not happen.
                    tracing::warn!(vdisk = %name, "a delete cut short before the cluster released the name: the disk is kept");
                    let _ = std::fs::remove_file(&mark);
                } else {
                    match engine.delete_vdisk(name).await {
                        Ok(()) => {
                            tracing::warn!(vdisk = %name, "finished a delete cut short after the cluster released the name");
                            let _ = std::fs::remove_file(&mark);
                        }
                        Err(e) if e.kind() == engine::ErrorKind::NotFound => {
                            let _ = std::fs::remove_file(&mark);
                        }
                        Err(e) => {
                            tracing::error!(vdisk = %name, error = %e, "could not finish a delete cut short; retried at the next start");
                            unsettled.insert(name.clone());
                        }
                    }
                }
            }
            let local: Vec<(String, u64)> = local
                .into_iter()
                .filter(|(n, _)| engine.vdisk(n).is_ok())
                .collect();
            for name in stale {
                if !creates.contains(&name) {
                    tracing::info!(vdisk = %name, "assigned to this node and not here: left for the takeover to adopt");
                    continue;
                }
                match self.release_vdisk(&name).await {
                    Ok(()) => {
                        tracing::warn!(vdisk = %name, "released a stale cluster record");
                        let _ = std::fs::remove_file(creating.join(&name));
                    }
                    Err(e) => {
                        tracing::debug!(vdisk = %name, error = %e.message, "release failed");
                        failed = true;
                    }
                }
            }
            // Creates that finished (the disk is here) or left nothing in the cluster.
            for name in &creates {
                if !recorded.contains(&Self::vdisk_id(me, name)) || engine.vdisk(name).is_ok() {
                    let _ = std::fs::remove_file(creating.join(name));
                }
            }
            for (name, size_bytes) in &local {
                let id = Self::vdisk_id(me, name);
                if recorded.contains(&id) || unsettled.contains(name) {
                    continue;
                }
                let def = VdiskDef {
                    id,
                    name: name.clone(),
                    size_bytes: *size_bytes,
                    parent_snapshot: None,
                };
                match m.propose(Command::CreateVdisk(def)).await {
                    Ok(CommandResult::Rejected(msg)) => {
                        tracing::warn!(vdisk = %name, reason = %msg, "local virtual disk not recorded in the cluster")
                    }
                    // Made before clustering, or its delete was cut short between the release
                    // and the engine's delete: the disk is kept (never deleted behind the
                    // user's back) and named again.
                    Ok(_) => {
                        tracing::warn!(vdisk = %name, "recorded a local virtual disk in the cluster")
                    }
                    Err(_) => failed = true,
                }
            }
            if !failed {
                return;
            }
        }
        tracing::warn!("cluster reconcile gave up (no leader); retried at next start");
    }
}

/// Names marked in `dir` (creates or deletes in progress).
fn marked_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| engine::validate_name(n).is_ok())
        .collect()
}
