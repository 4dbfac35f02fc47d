//! The node's internal virtual disks: those whose names start with [`INTERNAL_VDISK_PREFIX`]
//! (the appliance keeps its configuration record in `cairn-node-config`). They live in the pool
//! like any other disk but are not the user's: lists and counts leave them out, and requests
//! naming one are answered as if it did not exist. Owns only that rule; the appliance's PID 1
//! reaches its record through the engine directly, never through the controller.

use control::{ControlError, ErrorCode, Request};

/// Names with this prefix are reserved for the node itself.
pub const INTERNAL_VDISK_PREFIX: &str = "cairn-node-";

/// Whether `name` is one of the node's internal virtual disks.
pub fn is_internal_vdisk(name: &str) -> bool {
    name.starts_with(INTERNAL_VDISK_PREFIX)
}

/// The virtual disk names a request refers to.
fn vdisk_names(req: &Request) -> Vec<&str> {
    match req {
        Request::VdiskCreate { name, .. }
        | Request::VdiskGet { name }
        | Request::VdiskResize { name, .. }
        | Request::VdiskDelete { name }
        | Request::VdiskImport { name, .. }
        | Request::VdiskExport { name, .. } => vec![name],
        Request::VdiskClone { source, name, .. } => vec![source, name],
        Request::SnapshotCreate { vdisk, .. }
        | Request::SnapshotList { vdisk }
        | Request::SnapshotDelete { vdisk, .. }
        | Request::SnapshotRollback { vdisk, .. }
        | Request::SnapshotDiff { vdisk, .. }
        | Request::NbdStart { vdisk, .. } => vec![vdisk],
        Request::VmCreate { disks, .. } => disks.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Refuses a request that names an internal virtual disk: not found for an existing one,
/// invalid for a new name with the reserved prefix.
pub fn refuse_internal(req: &Request) -> Result<(), ControlError> {
    let creating = match req {
        Request::VdiskCreate { name, .. }
        | Request::VdiskImport { name, .. }
        | Request::VdiskClone { name, .. } => Some(name.as_str()),
        _ => None,
    };
    for n in vdisk_names(req) {
        if !is_internal_vdisk(n) {
            continue;
        }
        if creating == Some(n) {
            return Err(ControlError::invalid(format!(
                "virtual disk names starting with {INTERNAL_VDISK_PREFIX:?} are reserved for the node"
            )));
        }
        return Err(ControlError::new(
            ErrorCode::NotFound,
            format!("no virtual disk named {n:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_disks_are_invisible_and_reserved() {
        assert!(is_internal_vdisk("cairn-node-config"));
        assert!(!is_internal_vdisk("cairn-nodes"));
        assert!(!is_internal_vdisk("vol1"));
        let get = Request::VdiskGet {
            name: "cairn-node-config".into(),
        };
        assert_eq!(refuse_internal(&get).unwrap_err().code, ErrorCode::NotFound);
        let del = Request::VdiskDelete {
            name: "cairn-node-config".into(),
        };
        assert_eq!(refuse_internal(&del).unwrap_err().code, ErrorCode::NotFound);
        let create = Request::VdiskCreate {
            name: "cairn-node-x".into(),
            size_bytes: 1 << 20,
        };
        assert!(refuse_internal(&create)
            .unwrap_err()
            .message
            .contains("reserved"));
        let clone = Request::VdiskClone {
            source: "cairn-node-config".into(),
            snapshot: None,
            name: "copy".into(),
        };
        assert_eq!(
            refuse_internal(&clone).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert!(refuse_internal(&Request::VdiskGet {
            name: "vol1".into()
        })
        .is_ok());
        assert!(refuse_internal(&Request::VdiskList).is_ok());
    }
}
