//! The node's physical disks as files: creating the sparse disk files on first start, opening a
//! path as a block device, and finding new files in `DATA/disks/`.
//!
//! Never writes to a disk file's contents (the engine formats blank disks; foreign ones are
//! refused by the engine's probe before anything is written). Creating a disk file only sets its
//! length, so it stays sparse.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockdev::BlockDevice;
use control::{ControlError, ErrorCode};

use crate::config::{NodeConfig, MAX_DISK_COUNT, MIN_DISK_SIZE_BYTES};
use crate::error::{NodeError, Result};

/// Create `DATA/disks/disk0.img..` as sparse files. Called on first start only.
pub(crate) fn create_initial_disks(cfg: &NodeConfig) -> Result<Vec<PathBuf>> {
    if cfg.disk_count > MAX_DISK_COUNT {
        return Err(NodeError::Config(format!(
            "disk count {} is above the maximum of {MAX_DISK_COUNT}",
            cfg.disk_count
        )));
    }
    if cfg.disk_count > 0 && cfg.disk_size_bytes < MIN_DISK_SIZE_BYTES {
        return Err(NodeError::Config(format!(
            "disk size {} is below the minimum of {}",
            control::format_size(cfg.disk_size_bytes),
            control::format_size(MIN_DISK_SIZE_BYTES)
        )));
    }
    let dir = cfg.disks_dir();
    let mut made = Vec::new();
    for i in 0..cfg.disk_count {
        let path = dir.join(format!("disk{i}.img"));
        // create_new: never truncate or reuse a file someone else put there.
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| NodeError::io("create disk file", &path, e))?;
        f.set_len(cfg.disk_size_bytes - cfg.disk_size_bytes % 4096)
            .map_err(|e| NodeError::io("size disk file", &path, e))?;
        made.push(path);
    }
    Ok(made)
}

/// Candidate disk files in the disk directory, sorted. Hidden names (`.x`) and names ending in
/// `.part` or `.tmp` are skipped so a file can be copied in and renamed when complete.
pub(crate) fn scan(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !(name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp"))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// What the node remembers about a path it has seen, so the watcher neither re-adds a pool
/// disk nor retries a refused file every few seconds (it retries once the file changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    InPool,
    Refused { len: u64, mtime_ns: i128 },
}

#[derive(Debug, Default)]
pub(crate) struct DiskRegistry {
    pub(crate) seen: HashMap<PathBuf, Seen>,
}

pub(crate) fn fingerprint(path: &Path) -> Option<(u64, i128)> {
    let m = fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    Some((m.len(), mtime))
}

/// Resolve and check a path given as a disk: it must exist and be a regular file or a block
/// device. Returns the canonical path.
pub(crate) fn check_disk_path(path: &Path) -> std::result::Result<PathBuf, ControlError> {
    let canon = fs::canonicalize(path).map_err(|e| {
        ControlError::new(
            if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::NotFound
            } else {
                ErrorCode::Io
            },
            format!("disk {}: {e}", path.display()),
        )
    })?;
    let meta = fs::metadata(&canon)
        .map_err(|e| ControlError::new(ErrorCode::Io, format!("disk {}: {e}", path.display())))?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        // A well-formed path whose object is of the wrong kind: the host's state refuses it.
        return Err(ControlError::conflict(format!(
            "{} is not a regular file or a block device",
            path.display()
        )));
    }
    Ok(canon)
}

/// Open a disk path for the engine: blockdev's io_uring device (O_DIRECT), or, where io_uring
/// is unavailable (old kernels, seccomp), the positional-I/O `FileDevice`.
pub fn open_device(path: &Path) -> std::result::Result<Arc<dyn BlockDevice>, ControlError> {
    let dev: Arc<dyn BlockDevice> = match blockdev::open_device(path) {
        Ok(d) => d,
        Err(uring_err) => match crate::filedev::FileDevice::open(path) {
            Ok(d) => {
                tracing::warn!(path = %path.display(), error = %uring_err, "io_uring unavailable; using positional I/O");
                Arc::new(d)
            }
            Err(_) => {
                return Err(ControlError::new(
                    ErrorCode::Io,
                    format!("open {}: {uring_err}", path.display()),
                ))
            }
        },
    };
    let size = dev.info().size_bytes;
    if size < MIN_DISK_SIZE_BYTES {
        return Err(ControlError::invalid(format!(
            "{} is {}; a disk must be at least {}",
            path.display(),
            control::format_size(size),
            control::format_size(MIN_DISK_SIZE_BYTES)
        )));
    }
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_disks_are_sparse_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::new(dir.path());
        cfg.disk_count = 2;
        cfg.disk_size_bytes = 1 << 30;
        fs::create_dir_all(cfg.disks_dir()).unwrap();
        let made = create_initial_disks(&cfg).unwrap();
        assert_eq!(made.len(), 2);
        for p in &made {
            let m = fs::metadata(p).unwrap();
            assert_eq!(m.len(), 1 << 30);
            use std::os::unix::fs::MetadataExt;
            assert!(m.blocks() * 512 < 1 << 20, "disk file is not sparse");
        }
        assert!(
            create_initial_disks(&cfg).is_err(),
            "existing files must not be reused"
        );
        fs::write(cfg.disks_dir().join(".hidden"), b"x").unwrap();
        fs::write(cfg.disks_dir().join("new.img.part"), b"x").unwrap();
        assert_eq!(scan(&cfg.disks_dir()), made);
    }

    #[tokio::test]
    async fn disk_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_disk_path(&dir.path().join("nope")).unwrap_err().code,
            ErrorCode::NotFound
        );
        // A directory: a well-formed path whose object is of the wrong kind (a conflict).
        assert_eq!(
            check_disk_path(dir.path()).unwrap_err().code,
            ErrorCode::Conflict
        );
        let small = dir.path().join("small.img");
        fs::write(&small, vec![0u8; 8192]).unwrap();
        assert_eq!(
            open_device(&small).err().unwrap().code,
            ErrorCode::InvalidArgument
        );
    }
}
