//! Every storage action and query a Cairn node accepts.

use crate::error::ControlError;
use crate::parse::{validate_name, validate_path, validate_vdisk_size};
use serde::{Deserialize, Serialize};

/// One request to the node. Serialized as `{"action":"vdisk_create","name":..,"size_bytes":..}`.
///
/// Host paths (`path`, `file`) are absolute paths on the node's host; the CLI resolves relative
/// paths before sending. VM requests will be added here by the VMM work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    // ---- physical disks and the pool
    DiskList,
    /// Add a file or block device to the pool (blank: formatted; ours: reopened; foreign: refused).
    DiskAdd {
        path: String,
    },
    /// Drain a disk and take it out of the pool (by id or name).
    DiskRemove {
        disk: String,
    },
    /// Start verifying every block of every disk in the background.
    DiskScrub,
    /// Say what a file or device holds without claiming it.
    DiskProbe {
        path: String,
    },
    PoolInfo,

    // ---- virtual disks
    VdiskCreate {
        name: String,
        size_bytes: u64,
    },
    VdiskList,
    VdiskGet {
        name: String,
    },
    /// Grow a disk (shrinking is refused).
    VdiskResize {
        name: String,
        size_bytes: u64,
    },
    VdiskDelete {
        name: String,
    },
    /// Thin clone of a disk's current contents or of one of its snapshots.
    VdiskClone {
        source: String,
        #[serde(default)]
        snapshot: Option<String>,
        name: String,
    },
    /// Create `name` sized to the raw image `file` (rounded up to 4 KiB) and copy it in.
    VdiskImport {
        name: String,
        file: String,
    },
    /// Write a disk (or one of its snapshots) to a new sparse raw image `file`.
    VdiskExport {
        name: String,
        #[serde(default)]
        snapshot: Option<String>,
        file: String,
    },

    // ---- snapshots
    SnapshotCreate {
        vdisk: String,
        name: String,
    },
    SnapshotList {
        vdisk: String,
    },
    SnapshotDelete {
        vdisk: String,
        name: String,
    },
    SnapshotRollback {
        vdisk: String,
        name: String,
    },
    /// Byte ranges that differ between snapshot `from` and snapshot `to` (None: the live disk).
    SnapshotDiff {
        vdisk: String,
        from: String,
        #[serde(default)]
        to: Option<String>,
    },

    // ---- NBD exports (backup and import tools; never the VM data path)
    NbdStart {
        vdisk: String,
        #[serde(default)]
        snapshot: Option<String>,
        /// `ip:port` to listen on; default 127.0.0.1 with a free port.
        #[serde(default)]
        listen: Option<String>,
        /// Export read-only even though it is a live disk (snapshots are always read-only).
        #[serde(default)]
        read_only: bool,
    },
    NbdStop {
        id: u64,
    },
    NbdList,

    // ---- observability
    Stats,

    // ---- virtual machines (checks in `vm.rs`)
    /// Define a VM (nothing runs until `vm_start`). `kernel` is a PVH ELF or bzImage on the host.
    VmCreate {
        name: String,
        vcpus: u8,
        memory_mib: u64,
        /// Virtual disk names, attached in this order as virtio-blk devices.
        #[serde(default)]
        disks: Vec<String>,
        kernel: String,
        #[serde(default)]
        cmdline: Option<String>,
        /// NICs, `net0`, `net1`, ... in this order (checked like `vm_update`'s).
        #[serde(default)]
        nics: Vec<crate::vm::VmNicSpec>,
    },
    VmList,
    VmGet {
        name: String,
    },
    VmStart {
        name: String,
    },
    /// Ask the guest to shut down, wait `timeout_ms` (default 10 s), then stop it by force;
    /// `force` stops at once.
    VmStop {
        name: String,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    VmPause {
        name: String,
    },
    VmResume {
        name: String,
    },
    /// Delete a stopped VM's definition (its virtual disks are kept).
    VmDelete {
        name: String,
    },
    /// Attach a virtual disk to a VM as one more virtio-blk device: at once when it runs (the
    /// guest sees a PCI device appear), at its next start otherwise. Kept in its definition.
    VmDiskAttach {
        name: String,
        vdisk: String,
    },
    /// Detach a virtual disk from a VM. A running guest is asked to release it (ACPI eject)
    /// and has `timeout_ms` (default 10 s) to do so; without an answer the disk stays attached
    /// and the request fails, unless `force`, which removes it anyway. Taken out of the
    /// definition only when it is gone from the VM.
    VmDiskDetach {
        name: String,
        vdisk: String,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Change a VM's definition; only the fields given change. Renaming, vCPUs, memory, the
    /// command line, the disk order (`disks`: the current disks reordered, the first boots) and
    /// the NICs need the VM stopped; the description can change any time. Checks in `vm.rs`.
    VmUpdate {
        name: String,
        #[serde(default)]
        new_name: Option<String>,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        vcpus: Option<u8>,
        #[serde(default)]
        memory_mib: Option<u64>,
        #[serde(default)]
        cmdline: Option<String>,
        #[serde(default)]
        disks: Option<Vec<String>>,
        #[serde(default)]
        nics: Option<Vec<crate::vm::VmNicSpec>>,
    },
    /// The last `max_bytes` (default 64 KiB) of the VM's serial console output.
    VmConsole {
        name: String,
        #[serde(default)]
        max_bytes: Option<u64>,
    },

    // ---- cluster (checks in `cluster.rs`)
    /// Members, leader, health, raft term and commit index, degraded / rebuilding data.
    ClusterStatus,
    /// Issue a one-time join token (for a witness when `witness`), valid `ttl_secs`
    /// (default 1 hour).
    ClusterToken {
        #[serde(default)]
        witness: bool,
        #[serde(default)]
        ttl_secs: Option<u64>,
    },
    /// Make this fresh node (nothing defined on it yet) join the cluster of the member at
    /// `address` (its cluster address) with a token from `cluster_token`.
    ClusterJoin {
        address: String,
        token: String,
    },
    /// Tell this node that member `node` (id or name) is at cluster address `address` now:
    /// for when every member's address changed at once and none can reach another to announce
    /// its own. Checked there first (the member must answer with its certificate).
    ClusterLocate {
        node: String,
        address: String,
    },
    /// Remove a member (by id or name) from the cluster.
    ClusterRemove {
        node: String,
        /// Remove even while the member owns virtual disks or VMs (a dead node being replaced).
        #[serde(default)]
        force: bool,
    },
    /// A planned move of virtual disk `name` to data member `to` (id or name): its holder
    /// stops serving it and flushes, `to` adopts it from the replicas and serves it. Refused
    /// while a VM on its holder uses it, running or stopped, `force` or not (`vm_move` moves a
    /// VM with its disks); NBD exports of it only with `force`.
    VdiskTakeover {
        name: String,
        to: String,
        #[serde(default)]
        force: bool,
    },
    /// A planned move of stopped VM `name` with all its virtual disks to data member `to` (id
    /// or name): the VM's node hands the disks over at once, `to` adopts them and defines the
    /// VM (stopped: `vm_start` on `to` runs it). Refused while the VM runs or is paused.
    VmMove {
        name: String,
        to: String,
    },
}

impl Request {
    /// Read a request from JSON, refusing fields its action does not have. The derived reader
    /// already does so for actions with fields; one without fields (`disk_list`) would take
    /// `{"action":"disk_list","x":1}`, so every given field must be one the request has.
    pub fn from_json(v: serde_json::Value) -> Result<Request, serde_json::Error> {
        use serde::de::Error as _;
        let given: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let req: Request = serde_json::from_value(v)?;
        let known = serde_json::to_value(&req)?;
        if let Some(k) = given.iter().find(|k| known.get(k.as_str()).is_none()) {
            return Err(serde_json::Error::custom(format!(
                "unknown field `{k}`: action `{}` takes no such field",
                req.action()
            )));
        }
        Ok(req)
    }

    /// Whether this is the list of virtual disks or of VMs (which the API of a cluster member
    /// answers with every member's).
    pub fn is_list(&self) -> bool {
        matches!(self, Request::VdiskList | Request::VmList)
    }

    /// Whether executing this request changes state (and so is audited and needs more than the
    /// read-only role).
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            Request::DiskList
                | Request::DiskProbe { .. }
                | Request::PoolInfo
                | Request::VdiskList
                | Request::VdiskGet { .. }
                | Request::SnapshotList { .. }
                | Request::SnapshotDiff { .. }
                | Request::NbdList
                | Request::Stats
                | Request::VmList
                | Request::VmGet { .. }
                | Request::VmConsole { .. }
                | Request::ClusterStatus
        )
    }

    /// A short stable name for logs and the audit trail (`"vdisk_create"`).
    pub fn action(&self) -> &'static str {
        match self {
            Request::DiskList => "disk_list",
            Request::DiskAdd { .. } => "disk_add",
            Request::DiskRemove { .. } => "disk_remove",
            Request::DiskScrub => "disk_scrub",
            Request::DiskProbe { .. } => "disk_probe",
            Request::PoolInfo => "pool_info",
            Request::VdiskCreate { .. } => "vdisk_create",
            Request::VdiskList => "vdisk_list",
            Request::VdiskGet { .. } => "vdisk_get",
            Request::VdiskResize { .. } => "vdisk_resize",
            Request::VdiskDelete { .. } => "vdisk_delete",
            Request::VdiskClone { .. } => "vdisk_clone",
            Request::VdiskImport { .. } => "vdisk_import",
            Request::VdiskExport { .. } => "vdisk_export",
            Request::SnapshotCreate { .. } => "snapshot_create",
            Request::SnapshotList { .. } => "snapshot_list",
            Request::SnapshotDelete { .. } => "snapshot_delete",
            Request::SnapshotRollback { .. } => "snapshot_rollback",
            Request::SnapshotDiff { .. } => "snapshot_diff",
            Request::NbdStart { .. } => "nbd_start",
            Request::NbdStop { .. } => "nbd_stop",
            Request::NbdList => "nbd_list",
            Request::Stats => "stats",
            Request::VmCreate { .. } => "vm_create",
            Request::VmList => "vm_list",
            Request::VmGet { .. } => "vm_get",
            Request::VmStart { .. } => "vm_start",
            Request::VmStop { .. } => "vm_stop",
            Request::VmPause { .. } => "vm_pause",
            Request::VmResume { .. } => "vm_resume",
            Request::VmDelete { .. } => "vm_delete",
            Request::VmDiskAttach { .. } => "vm_disk_attach",
            Request::VmUpdate { .. } => "vm_update",
            Request::VmDiskDetach { .. } => "vm_disk_detach",
            Request::VmConsole { .. } => "vm_console",
            Request::ClusterStatus => "cluster_status",
            Request::ClusterToken { .. } => "cluster_token",
            Request::ClusterJoin { .. } => "cluster_join",
            Request::ClusterLocate { .. } => "cluster_locate",
            Request::ClusterRemove { .. } => "cluster_remove",
            Request::VdiskTakeover { .. } => "vdisk_takeover",
            Request::VmMove { .. } => "vm_move",
        }
    }

    /// Check names, sizes and paths without touching any state. The controller calls this
    /// before anything else, so bad input never changes anything.
    pub fn validate(&self) -> Result<(), ControlError> {
        let vd = |n: &str| validate_name("virtual disk", n);
        let snap = |n: &str| validate_name("snapshot", n);
        match self {
            Request::DiskList
            | Request::DiskScrub
            | Request::PoolInfo
            | Request::VdiskList
            | Request::NbdList
            | Request::Stats
            | Request::NbdStop { .. } => Ok(()),
            Request::DiskAdd { path } | Request::DiskProbe { path } => validate_path("disk", path),
            Request::DiskRemove { disk } => {
                if disk.is_empty() || disk.chars().count() > 256 {
                    Err(ControlError::invalid("disk id is empty or too long"))
                } else {
                    Ok(())
                }
            }
            Request::VdiskCreate { name, size_bytes }
            | Request::VdiskResize { name, size_bytes } => {
                vd(name)?;
                validate_vdisk_size(*size_bytes)
            }
            Request::VdiskGet { name } | Request::VdiskDelete { name } => vd(name),
            Request::VdiskClone {
                source,
                snapshot,
                name,
            } => {
                vd(source)?;
                if let Some(s) = snapshot {
                    snap(s)?;
                }
                vd(name)
            }
            Request::VdiskImport { name, file } => {
                vd(name)?;
                validate_path("image", file)
            }
            Request::VdiskExport {
                name,
                snapshot,
                file,
            } => {
                vd(name)?;
                if let Some(s) = snapshot {
                    snap(s)?;
                }
                validate_path("image", file)
            }
            Request::SnapshotCreate { vdisk, name }
            | Request::SnapshotDelete { vdisk, name }
            | Request::SnapshotRollback { vdisk, name } => {
                vd(vdisk)?;
                snap(name)
            }
            Request::SnapshotList { vdisk } => vd(vdisk),
            Request::SnapshotDiff { vdisk, from, to } => {
                vd(vdisk)?;
                snap(from)?;
                if let Some(t) = to {
                    snap(t)?;
                }
                Ok(())
            }
            Request::NbdStart {
                vdisk,
                snapshot,
                listen,
                ..
            } => {
                vd(vdisk)?;
                if let Some(s) = snapshot {
                    snap(s)?;
                }
                if let Some(l) = listen {
                    crate::parse::parse_socket_addr(l).ok_or_else(|| {
                        ControlError::invalid(format!(
                            "listen address {l:?} is not ip:port (examples: 127.0.0.1:10809, [::1]:10809)"
                        ))
                    })?;
                }
                Ok(())
            }
            Request::VmList => Ok(()),
            Request::VmCreate {
                name,
                vcpus,
                memory_mib,
                disks,
                kernel,
                cmdline,
                nics,
            } => crate::vm::validate_create(
                name,
                *vcpus,
                *memory_mib,
                disks,
                kernel,
                cmdline.as_deref(),
                nics,
            ),
            Request::VmGet { name }
            | Request::VmStart { name }
            | Request::VmPause { name }
            | Request::VmResume { name }
            | Request::VmDelete { name } => validate_name("VM", name),
            Request::VmStop {
                name, timeout_ms, ..
            } => crate::vm::validate_stop(name, *timeout_ms),
            Request::VmConsole { name, max_bytes } => crate::vm::validate_console(name, *max_bytes),
            Request::VmUpdate {
                name,
                new_name,
                description,
                vcpus,
                memory_mib,
                cmdline,
                disks,
                nics,
            } => crate::vm::validate_update(
                name,
                new_name.as_deref(),
                description.as_deref(),
                *vcpus,
                *memory_mib,
                cmdline.as_deref(),
                disks.as_deref(),
                nics.as_deref(),
            ),
            Request::VmDiskAttach { name, vdisk } => {
                validate_name("VM", name)?;
                validate_name("virtual disk", vdisk)
            }
            Request::VmDiskDetach {
                name,
                vdisk,
                timeout_ms,
                ..
            } => {
                // Same bound as a graceful stop: both wait for the guest.
                crate::vm::validate_stop(name, *timeout_ms)?;
                validate_name("virtual disk", vdisk)
            }
            Request::ClusterStatus => Ok(()),
            Request::ClusterToken { ttl_secs, .. } => crate::cluster::validate_token_ttl(*ttl_secs),
            Request::ClusterJoin { address, token } => {
                crate::cluster::validate_join(address, token)
            }
            Request::ClusterRemove { node, .. } => crate::cluster::validate_member(node),
            Request::ClusterLocate { node, address } => {
                crate::cluster::validate_member(node)?;
                crate::cluster::validate_address(address)
            }
            Request::VdiskTakeover { name, to, .. } => {
                vd(name)?;
                crate::cluster::validate_member(to)
            }
            Request::VmMove { name, to } => {
                validate_name("VM", name)?;
                crate::cluster::validate_member(to)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_tagged_and_strict() {
        let r = Request::VdiskCreate {
            name: "a".into(),
            size_bytes: 4096,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"action":"vdisk_create","name":"a","size_bytes":4096}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"action":"nope"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"action":"vdisk_get","name":"a","extra":1}"#)
                .is_err()
        );
        // Actions without fields take no others either (the OpenAPI document says so).
        let read = |s: &str| Request::from_json(serde_json::from_str(s).unwrap());
        assert!(read(r#"{"action":"disk_list","x":1}"#).is_err());
        assert!(read(r#"{"action":"disk_list","x":null}"#).is_err());
        assert!(read(r#"{"action":"nbd_stop","id":1,"x":1}"#).is_err());
        assert_eq!(
            read(r#"{"action":"disk_list"}"#).unwrap(),
            Request::DiskList
        );
        assert_eq!(
            read(r#"{"action":"vm_console","name":"a"}"#).unwrap(),
            Request::VmConsole {
                name: "a".into(),
                max_bytes: None
            }
        );
        let clone: Request =
            serde_json::from_str(r#"{"action":"vdisk_clone","source":"a","name":"b"}"#).unwrap();
        assert_eq!(clone.action(), "vdisk_clone");
    }

    #[test]
    fn mutations_and_validation() {
        assert!(!Request::VdiskList.is_mutation());
        assert!(Request::DiskScrub.is_mutation());
        let bad = Request::VdiskCreate {
            name: "a b".into(),
            size_bytes: 4096,
        };
        assert!(bad.validate().is_err());
        let bad = Request::NbdStart {
            vdisk: "a".into(),
            snapshot: None,
            listen: Some("localhost".into()),
            read_only: false,
        };
        assert!(bad.validate().is_err());
        let good = Request::SnapshotDiff {
            vdisk: "a".into(),
            from: "s1".into(),
            to: None,
        };
        good.validate().unwrap();
    }
}
