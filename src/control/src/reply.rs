//! Typed replies. These mirror the engine's info types so that front ends (CLI, API, UI) depend
//! only on this light crate; the node converts.

use serde::{Deserialize, Serialize};

/// A physical disk of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskView {
    pub id: String,
    pub name: String,
    /// Host path of the file or block device (empty if unknown).
    pub path: String,
    pub node_id: u64,
    pub size_bytes: u64,
    pub used_bytes: u64,
    /// `active`, `draining`, `removed` or `failed`.
    pub state: String,
    pub errors: u64,
    /// On another member: this node's pool keeps copies on it, but it is added and removed
    /// on that member. False in answers from nodes that do not say.
    #[serde(default)]
    pub remote: bool,
}

/// What a file or device holds, found without claiming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiskProbeView {
    Blank,
    Cairn { pool_id: String, disk_id: String },
    Foreign { reason: String },
}

/// Capacity of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub raw_bytes: u64,
    pub used_raw_bytes: u64,
    /// Raw / 2: every chunk has two replicas.
    pub usable_bytes: u64,
    /// Sum of virtual disk sizes the pool accepts (thin provisioning).
    pub logical_limit_bytes: u64,
    pub disks: usize,
    pub degraded_chunks: u64,
    pub rebalancing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskView {
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub snapshots: usize,
    pub created_unix: u64,
    /// The cluster member that holds it, when that is not the node answering (the API of any
    /// member lists every member's virtual disks, see `Via::Api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub vdisk: String,
    pub name: String,
    pub id: u64,
    pub created_unix: u64,
}

/// A byte range `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
}

/// A running NBD export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdExportView {
    pub id: u64,
    pub vdisk: String,
    pub snapshot: Option<String>,
    /// `ip:port` it listens on.
    pub listen: String,
    /// The export name clients ask for (`nbd://ip:port/NAME`).
    pub export_name: String,
    pub read_only: bool,
}

/// Result of an import or export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    pub vdisk: String,
    pub file: String,
    /// Size of the disk / image.
    pub size_bytes: u64,
    /// Bytes actually written to the destination (all-zero blocks are skipped).
    pub written_bytes: u64,
    pub elapsed_ms: u64,
}

/// Node statistics. `engine` carries the engine's own counters as-is (scrub progress, repairs,
/// checksum errors, per-disk I/O) so new counters need no change here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub node_name: String,
    pub node_id: u64,
    pub uptime_secs: u64,
    pub pool: PoolView,
    pub disks: Vec<DiskView>,
    pub vdisks: usize,
    pub nbd_exports: usize,
    pub requests: u64,
    pub engine: serde_json::Value,
}

/// The typed answer to a [`crate::Request`]. Serialized as `{"kind":"vdisk","value":{..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reply {
    /// Done; nothing to return (delete, rollback, scrub started, export stopped).
    Done,
    Disks(Vec<DiskView>),
    Disk(DiskView),
    Probe(DiskProbeView),
    Pool(PoolView),
    Vdisks(Vec<VdiskView>),
    Vdisk(VdiskView),
    Snapshots(Vec<SnapshotView>),
    Snapshot(SnapshotView),
    Ranges(Vec<Range>),
    Transfer(TransferView),
    NbdExports(Vec<NbdExportView>),
    NbdExport(NbdExportView),
    Stats(Box<StatsView>),
    Vms(Vec<crate::VmView>),
    Vm(Box<crate::VmView>),
    Console(crate::ConsoleView),
    Cluster(Box<crate::ClusterView>),
    ClusterToken(crate::ClusterTokenView),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        let r = Reply::Ranges(vec![Range {
            offset: 0,
            len: 4096,
        }]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"ranges","value":[{"offset":0,"len":4096}]}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), r);
        let done = serde_json::to_string(&Reply::Done).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&done).unwrap(), Reply::Done);
        let p = Reply::Probe(DiskProbeView::Foreign {
            reason: "ext4".into(),
        });
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), p);
    }
}
