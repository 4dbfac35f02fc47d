//! Admission answers: a request that asks for more than the pool or the node's bounds allow (a
//! virtual disk past the pool's logical limit, one virtual disk, snapshot, disk or VM past its
//! cap, pool metadata that would outgrow its slot) is the caller's to change, so it is refused
//! as a conflict (HTTP 409, CLI exit 4) that names the limit and what is free. "No space" (HTTP
//! 507, exit 5) reads as the server failing; it stays only for data that could not be written
//! (an import copying an image into the pool).
//!
//! Also owns the virtual disk names the API's routes reserve (`import`: `/vdisks/import` is the
//! import endpoint, so a disk of that name could not be read at `/vdisks/{name}`).
//!
//! Never changes state: these are checks before the engine and a mapping of its answers.

use control::{format_size, ControlError, ErrorCode, Request};
use engine::{Engine, BLOCK_BYTES, OVERCOMMIT};

/// Virtual disk names the API's routes take (`POST /vdisks/import`).
pub(crate) const RESERVED_VDISK_NAMES: &[&str] = &["import"];

/// Refuse a new virtual disk named like a route (409, as for a name that is taken).
pub(crate) fn refuse_reserved_vdisk_name(name: &str) -> Result<(), ControlError> {
    if RESERVED_VDISK_NAMES.contains(&name) {
        return Err(ControlError::new(
            ErrorCode::AlreadyExists,
            format!("the name {name:?} is reserved (it is the API's /vdisks/{name} endpoint); choose another name"),
        ));
    }
    Ok(())
}

/// Refuse a virtual disk size past the pool's logical limit before the engine is asked, with
/// the limit and the free space in the message.
pub(crate) fn check_vdisk_size(
    engine: &Engine,
    name: &str,
    size_bytes: u64,
) -> Result<(), ControlError> {
    let pool = engine.pool();
    let rounded = size_bytes.div_ceil(BLOCK_BYTES).saturating_mul(BLOCK_BYTES);
    if rounded <= pool.logical_limit_bytes {
        return Ok(());
    }
    Err(ControlError::conflict(format!(
        "{name}: {} is more than this pool allows for one virtual disk: the logical limit is {} \
         ({} usable x {OVERCOMMIT}); {} of the pool is free now. Ask for at most {}, or add disks",
        format_size(size_bytes),
        format_size(pool.logical_limit_bytes),
        format_size(pool.usable_bytes),
        format_size(free_bytes(&pool)),
        format_size(pool.logical_limit_bytes),
    )))
}

/// The order of a diff's two snapshots is the disk's state, not the request's form: the same
/// snapshot twice has no changes (an empty answer), and a newer `from` than `to` is a conflict
/// that says which way round to ask. `None`: let the engine compute the ranges.
pub(crate) fn diff_order(
    engine: &Engine,
    vdisk: &str,
    from: &str,
    to: Option<&str>,
) -> Result<Option<Vec<control::Range>>, ControlError> {
    let snaps = engine.snapshots(vdisk).map_err(crate::convert::error)?;
    let at = |name: &str| {
        snaps
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ControlError::not_found(format!("{vdisk} has no snapshot {name:?}")))
    };
    let f = at(from)?;
    let Some(to) = to else {
        return Ok(None);
    };
    let t = at(to)?;
    if f == t {
        return Ok(Some(Vec::new()));
    }
    if f > t {
        return Err(ControlError::conflict(format!(
            "snapshot {from:?} of {vdisk} is newer than {to:?}; ask for the changes from the older one: from={to}, to={from}"
        )));
    }
    Ok(None)
}

/// Usable bytes not yet holding data (two replicas per byte).
fn free_bytes(pool: &engine::PoolInfo) -> u64 {
    pool.usable_bytes.saturating_sub(pool.used_raw_bytes / 2)
}

/// A bound reached by a definition (create, resize, clone, snapshot, attach, add) is a
/// conflict with the pool's state, not the server out of room.
/// A scrub asked for while one runs is refused by the pool's state (409), not a node too busy
/// to answer (503, a server error that says "retry": a retry gets the same answer until the
/// running scrub ends).
pub(crate) fn map_error(req: &Request, err: ControlError) -> ControlError {
    // A "no space" is real only where data was being written and the pool ran out.
    let writes_data = matches!(
        req,
        Request::VdiskImport { .. } | Request::VdiskExport { .. }
    );
    let bound = err.code == ErrorCode::NoSpace && !writes_data;
    let scrubbing = err.code == ErrorCode::Busy && matches!(req, Request::DiskScrub);
    // The id was checked before dispatch: what the engine refuses then is the disk's state
    // (already removed or draining), found by the fuzz run as a 400.
    let disk_state =
        err.code == ErrorCode::InvalidArgument && matches!(req, Request::DiskRemove { .. });
    if bound || scrubbing || disk_state {
        ControlError::conflict(err.message)
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_past_a_bound_are_conflicts_and_imports_stay_no_space() {
        let bound = ControlError::new(ErrorCode::NoSpace, "at most 8192 virtual disks");
        let create = Request::VdiskCreate {
            name: "a".into(),
            size_bytes: 4096,
        };
        let mapped = map_error(&create, bound.clone());
        assert_eq!(mapped.code, ErrorCode::Conflict);
        assert_eq!(mapped.message, bound.message);
        let import = Request::VdiskImport {
            name: "a".into(),
            file: "/x".into(),
        };
        assert_eq!(map_error(&import, bound).code, ErrorCode::NoSpace);
        let other = ControlError::not_found("no such disk");
        assert_eq!(map_error(&create, other.clone()), other);
        // The soak run's finding: a second scrub answered 503.
        let running = ControlError::new(ErrorCode::Busy, "busy: a scrub is already running");
        assert_eq!(
            map_error(&Request::DiskScrub, running.clone()).code,
            ErrorCode::Conflict
        );
        assert_eq!(map_error(&create, running).code, ErrorCode::Busy);
        let removed = ControlError::invalid("disk d0 is Removed");
        let remove = Request::DiskRemove { disk: "d0".into() };
        assert_eq!(
            map_error(&remove, removed.clone()).code,
            ErrorCode::Conflict
        );
        assert_eq!(map_error(&create, removed).code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn import_is_a_reserved_vdisk_name() {
        let err = refuse_reserved_vdisk_name("import").unwrap_err();
        assert_eq!(err.code, ErrorCode::AlreadyExists);
        assert!(err.message.contains("reserved"), "{}", err.message);
        refuse_reserved_vdisk_name("import2").unwrap();
        refuse_reserved_vdisk_name("data").unwrap();
    }
}
