//! Fencing epochs. The owner of a virtual disk writes with an epoch; every replica server keeps
//! the highest epoch it has seen per virtual disk *durably* (a small file, replaced atomically)
//! and refuses mutations carrying a lower one. A new owner raises the epoch on every replica
//! holder before its first write, so the old owner can never write there again, even after a
//! restart of the server.
//!
//! Raising an epoch takes the virtual disk's shard lock exclusively, and every mutation holds
//! it shared while it runs: once a raise returns, no mutation with an older epoch is still in
//! flight or can start.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{MirrorError, Result};
use crate::wire::WireError;

const SHARDS: usize = 64;
/// Bound on the table (virtual disks a server has ever seen epochs for).
const MAX_ENTRIES: usize = 1 << 20;

/// The server's durable epoch table.
pub struct EpochTable {
    path: PathBuf,
    map: RwLock<HashMap<u64, u64>>,
    shards: Box<[tokio::sync::RwLock<()>]>,
    persist: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for EpochTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochTable({})", self.path.display())
    }
}

impl EpochTable {
    /// Opens (or creates) the table in `dir` (`epochs.json`).
    pub fn open(dir: &Path) -> Result<EpochTable> {
        std::fs::create_dir_all(dir)
            .map_err(|e| MirrorError::State(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("epochs.json");
        let map: HashMap<u64, u64> = match std::fs::read(&path) {
            Ok(bytes) => {
                let v: Vec<(u64, u64)> = serde_json::from_slice(&bytes).map_err(|e| {
                    MirrorError::State(format!("{} is damaged: {e}", path.display()))
                })?;
                v.into_iter().collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                return Err(MirrorError::State(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(EpochTable {
            path,
            map: RwLock::new(map),
            shards: (0..SHARDS).map(|_| tokio::sync::RwLock::new(())).collect(),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    pub fn current(&self, vdisk: u64) -> u64 {
        self.map.read().get(&vdisk).copied().unwrap_or(0)
    }

    fn shard(&self, vdisk: u64) -> &tokio::sync::RwLock<()> {
        &self.shards[(vdisk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS]
    }

    /// Raise `vdisk` to `epoch` durably (no-op if already there); refused if lower.
    pub async fn raise(&self, vdisk: u64, epoch: u64) -> std::result::Result<(), WireError> {
        let _x = self.shard(vdisk).write().await;
        self.raise_locked(vdisk, epoch).await
    }

    async fn raise_locked(&self, vdisk: u64, epoch: u64) -> std::result::Result<(), WireError> {
        let current = self.current(vdisk);
        if epoch < current {
            return Err(WireError::Fenced {
                vdisk,
                sent: epoch,
                current,
            });
        }
        if epoch == current {
            return Ok(());
        }
        let _p = self.persist.lock().await;
        let mut next = self.map.read().clone();
        if next.len() >= MAX_ENTRIES && !next.contains_key(&vdisk) {
            return Err(WireError::Server("epoch table full".into()));
        }
        next.insert(vdisk, epoch);
        let path = self.path.clone();
        let snapshot: Vec<(u64, u64)> = next.iter().map(|(k, v)| (*k, *v)).collect();
        tokio::task::spawn_blocking(move || write_atomic(&path, &snapshot))
            .await
            .map_err(|e| WireError::Server(format!("persisting epochs: {e}")))?
            .map_err(|e| WireError::Server(format!("persisting epochs: {e}")))?;
        *self.map.write() = next;
        Ok(())
    }

    /// Admit a mutation with `epoch` for `vdisk`: returns a guard to hold while it runs. A
    /// higher epoch is recorded durably first.
    pub async fn admit(
        &self,
        vdisk: u64,
        epoch: u64,
    ) -> std::result::Result<tokio::sync::RwLockReadGuard<'_, ()>, WireError> {
        if epoch > self.current(vdisk) {
            self.raise(vdisk, epoch).await?;
        }
        let g = self.shard(vdisk).read().await;
        let current = self.current(vdisk);
        if epoch < current {
            return Err(WireError::Fenced {
                vdisk,
                sent: epoch,
                current,
            });
        }
        Ok(g)
    }
}

fn write_atomic(path: &Path, entries: &[(u64, u64)]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(entries).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The writer's side: the epoch this node writes each virtual disk with. The cluster layer
/// sets it when this node becomes a virtual disk's owner (the raft-assigned epoch), and calls
/// `RemoteReplica::raise` (or `MirrorPeers::raise`) so the holders learn it before any write.
pub struct EpochBook {
    base: std::sync::atomic::AtomicU64,
    per: RwLock<HashMap<u64, u64>>,
    alone: RwLock<Option<std::sync::Arc<dyn AlonePermit>>>,
}

impl std::fmt::Debug for EpochBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EpochBook(base {})",
            self.base.load(std::sync::atomic::Ordering::Relaxed)
        )
    }
}

/// Asked before this node acknowledges a write that its replica on node `holder` did not get
/// (the holder is away): `true` once the cluster has recorded that the holder's copies are
/// outdated, so the holder can never take the virtual disk over without these writes. `false`
/// (no quorum, or this node's disks were taken over): the write fails instead.
pub trait AlonePermit: Send + Sync + 'static {
    fn permit(&self, holder: u64) -> blockdev::BoxFuture<'static, bool>;
}

impl EpochBook {
    /// Every virtual disk starts at `base` (use 1 when no cluster assigns epochs).
    pub fn new(base: u64) -> EpochBook {
        EpochBook {
            base: std::sync::atomic::AtomicU64::new(base),
            per: RwLock::new(HashMap::new()),
            alone: RwLock::new(None),
        }
    }

    /// Install the permit asked before writing without an away holder (none: always allowed,
    /// for a node that is not in a cluster).
    pub fn set_alone_permit(&self, p: std::sync::Arc<dyn AlonePermit>) {
        *self.alone.write() = Some(p);
    }

    /// Whether a write may be acknowledged without the replicas on node `holder`.
    pub async fn may_write_without(&self, holder: u64) -> bool {
        let p = self.alone.read().clone();
        match p {
            Some(p) => p.permit(holder).await,
            None => true,
        }
    }
    pub fn get(&self, vdisk: u64) -> u64 {
        let base = self.base.load(std::sync::atomic::Ordering::Acquire);
        self.per.read().get(&vdisk).map_or(base, |e| (*e).max(base))
    }
    /// Set this node's epoch for `vdisk` (never lowered).
    pub fn set(&self, vdisk: u64, epoch: u64) {
        let mut m = self.per.write();
        let e = m.entry(vdisk).or_insert(0);
        *e = (*e).max(epoch);
    }
    /// Raise the default for every virtual disk (never lowered).
    pub fn set_base(&self, epoch: u64) {
        self.base
            .fetch_max(epoch, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn epochs_survive_reopen_and_never_go_down() {
        let dir = tempfile::tempdir().unwrap();
        let t = EpochTable::open(dir.path()).unwrap();
        assert_eq!(t.current(7), 0);
        drop(t.admit(7, 1).await.unwrap());
        t.raise(7, 3).await.unwrap();
        assert!(matches!(
            t.admit(7, 2).await,
            Err(WireError::Fenced {
                vdisk: 7,
                sent: 2,
                current: 3
            })
        ));
        assert!(t.raise(7, 2).await.is_err());
        drop(t);
        let t = EpochTable::open(dir.path()).unwrap();
        assert_eq!(t.current(7), 3);
        assert!(t.admit(7, 2).await.is_err());
        drop(t.admit(7, 3).await.unwrap());
        std::fs::write(dir.path().join("epochs.json"), b"{not json").unwrap();
        let e = EpochTable::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    #[tokio::test]
    async fn a_raise_waits_for_admitted_writers() {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(EpochTable::open(dir.path()).unwrap());
        let g = t.admit(1, 1).await.unwrap();
        let t2 = t.clone();
        let raise = tokio::spawn(async move { t2.raise(1, 2).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !raise.is_finished(),
            "raise must wait for the writer in flight"
        );
        drop(g);
        raise.await.unwrap().unwrap();
        assert!(t.admit(1, 1).await.is_err());
    }

    #[test]
    fn epoch_book_never_lowers() {
        let b = EpochBook::new(1);
        assert_eq!(b.get(5), 1);
        b.set(5, 4);
        b.set(5, 2);
        assert_eq!(b.get(5), 4);
        b.set_base(6);
        assert_eq!(b.get(5), 6);
    }
}
