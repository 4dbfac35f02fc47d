//! Engine types and errors -> control types. The only place that knows both vocabularies.

use control::{
    ControlError, DiskProbeView, DiskView, ErrorCode, PoolView, SnapshotView, VdiskView,
};
use engine::{
    DiskInfo, DiskProbe, DiskState, EngineError, ErrorKind, PoolInfo, SnapshotInfo, VdiskInfo,
};

pub(crate) fn error(e: EngineError) -> ControlError {
    let code = match e.kind() {
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
        ErrorKind::InvalidArgument => ErrorCode::InvalidArgument,
        ErrorKind::NoSpace => ErrorCode::NoSpace,
        ErrorKind::ForeignData => ErrorCode::ForeignData,
        ErrorKind::ReadOnly => ErrorCode::Conflict,
        ErrorKind::Io | ErrorKind::Degraded => ErrorCode::Io,
        ErrorKind::Corrupt => ErrorCode::Corrupt,
        ErrorKind::Busy => ErrorCode::Busy,
    };
    ControlError::new(code, e.to_string())
}

/// A pool disk as the API shows it; `local_node` is this node's engine id (a disk with another
/// node id is a member's, used for copies).
pub(crate) fn disk(d: DiskInfo, local_node: u64) -> DiskView {
    let state = match d.state {
        DiskState::Active => "active",
        DiskState::Draining => "draining",
        DiskState::Removed => "removed",
        DiskState::Failed => "failed",
    };
    let state = if d.attached || d.state == DiskState::Removed {
        state.to_string()
    } else {
        format!("{state} (missing)")
    };
    DiskView {
        path: d.name.clone(),
        id: d.id,
        name: d.name,
        node_id: d.node_id,
        size_bytes: d.size_bytes,
        used_bytes: d.used_bytes,
        state,
        errors: d.errors,
        remote: d.node_id != local_node,
    }
}

pub(crate) fn probe(p: DiskProbe) -> DiskProbeView {
    match p {
        DiskProbe::Blank => DiskProbeView::Blank,
        DiskProbe::Cairn { pool_id, disk_id } => DiskProbeView::Cairn { pool_id, disk_id },
        DiskProbe::Foreign { reason } => DiskProbeView::Foreign { reason },
    }
}

pub(crate) fn pool(p: PoolInfo) -> PoolView {
    PoolView {
        raw_bytes: p.raw_bytes,
        used_raw_bytes: p.used_raw_bytes,
        usable_bytes: p.usable_bytes,
        logical_limit_bytes: p.logical_limit_bytes,
        disks: p.disks,
        degraded_chunks: p.degraded_chunks,
        rebalancing: p.rebalancing,
    }
}

pub(crate) fn vdisk(v: VdiskInfo) -> VdiskView {
    VdiskView {
        name: v.name,
        id: v.id,
        size_bytes: v.size_bytes,
        used_bytes: v.used_bytes,
        snapshots: v.snapshots,
        created_unix: v.created_unix,
        node: None,
    }
}

pub(crate) fn snapshot(s: SnapshotInfo) -> SnapshotView {
    SnapshotView {
        vdisk: s.vdisk,
        name: s.name,
        id: s.id,
        created_unix: s.created_unix,
    }
}
