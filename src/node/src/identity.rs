//! Who this node is (`DATA/node.json`: id and name, made once) and the data directory lock that
//! keeps two node processes from ever opening the same disks.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::error::{NodeError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) node_id: u64,
    pub(crate) node_name: String,
    pub(crate) created_unix: u64,
}

/// Take the exclusive lock on `DATA/node.lock`; the kernel drops it when the process dies, so
/// a kill -9 never leaves it stale.
#[allow(clippy::incompatible_msrv)]
pub(crate) fn lock(data: &Path) -> Result<File> {
    let path = data.join("node.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NodeError::io("open lock file", &path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(NodeError::AlreadyRunning(data.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(NodeError::io("lock", &path, e)),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cairn".into())
}

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| NodeError::io("read", "/dev/urandom", e))?;
    // Zero is reserved for "no node".
    Ok(u64::from_le_bytes(b).max(1))
}

/// The node's identity, and whether this is its first start (no `node.json` and no disk files
/// yet: only then are disk files created).
pub(crate) fn load_or_create(cfg: &NodeConfig) -> Result<(Identity, bool)> {
    let path = cfg.data_dir.join("node.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| NodeError::Config(format!("{} is damaged: {e}", path.display())))?;
            Ok((id, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity {
                node_id: random_u64()?,
                node_name: cfg.node_name.clone().unwrap_or_else(hostname),
                created_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            let has_disks = !crate::disks::scan(&cfg.disks_dir()).is_empty();
            if has_disks {
                // Disks were put there by hand: keep them, create none, remember who we are.
                save(&cfg.data_dir, &id)?;
            }
            Ok((id, !has_disks))
        }
        Err(e) => Err(NodeError::io("read", &path, e)),
    }
}

/// Write `node.json` atomically (temp file + rename).
pub(crate) fn save(data: &Path, id: &Identity) -> Result<()> {
    let path = data.join("node.json");
    let tmp = data.join(".node.json.tmp");
    let bytes = serde_json::to_vec_pretty(id).map_err(|e| NodeError::Config(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(|e| NodeError::io("write", &tmp, e))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| NodeError::io("sync", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| NodeError::io("rename", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig::new(dir.path());
        std::fs::create_dir_all(cfg.disks_dir()).unwrap();
        let (id, first) = load_or_create(&cfg).unwrap();
        assert!(first);
        save(dir.path(), &id).unwrap();
        let (again, first) = load_or_create(&cfg).unwrap();
        assert!(!first);
        assert_eq!(again.node_id, id.node_id);
        let l = lock(dir.path()).unwrap();
        assert!(matches!(
            lock(dir.path()),
            Err(NodeError::AlreadyRunning(_))
        ));
        drop(l);
        lock(dir.path()).unwrap();
    }
}
