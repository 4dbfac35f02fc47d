//! What each peer told this replica server about its virtual disks (`Req::Describe`), kept
//! durably (`described.json` next to the epoch table, replaced atomically), so the copies this
//! node holds for a peer describe themselves: after the peer is lost, this node knows which
//! held objects form which virtual disk, its size, generation and snapshots (see
//! `engine::adopt`).
//!
//! Must never: keep more than [`MAX_HOMES`] peers' lists, or let one peer's description touch
//! another's (the server files them under the authenticated peer id).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use engine::VdiskRecord;
use parking_lot::RwLock;

use crate::error::{MirrorError, Result};

/// Bound on peers described (far above any cluster's size).
const MAX_HOMES: usize = 1024;

pub(crate) struct Described {
    path: PathBuf,
    map: RwLock<BTreeMap<u64, Vec<VdiskRecord>>>,
    persist: tokio::sync::Mutex<()>,
}

impl Described {
    pub(crate) fn open(dir: &Path) -> Result<Described> {
        std::fs::create_dir_all(dir)
            .map_err(|e| MirrorError::State(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("described.json");
        let map = match std::fs::read(&path) {
            Ok(bytes) => {
                let v: Vec<(u64, Vec<VdiskRecord>)> =
                    serde_json::from_slice(&bytes).map_err(|e| {
                        MirrorError::State(format!("{} is damaged: {e}", path.display()))
                    })?;
                v.into_iter().collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(MirrorError::State(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Described {
            path,
            map: RwLock::new(map),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn all(&self) -> Vec<(u64, Vec<VdiskRecord>)> {
        self.map
            .read()
            .iter()
            .map(|(h, v)| (*h, v.clone()))
            .collect()
    }

    /// Replace `home`'s list (no write when unchanged).
    pub(crate) async fn set(&self, home: u64, list: Vec<VdiskRecord>) -> Result<()> {
        let _p = self.persist.lock().await;
        let mut next = self.map.read().clone();
        if next.get(&home) == Some(&list) {
            return Ok(());
        }
        if !next.contains_key(&home) && next.len() >= MAX_HOMES {
            return Err(MirrorError::State("too many described peers".into()));
        }
        next.insert(home, list);
        self.save(next).await
    }

    /// Drop `home`'s description of `vdisk` (it was taken over).
    pub(crate) async fn forget(&self, home: u64, vdisk: u64) -> Result<()> {
        let _p = self.persist.lock().await;
        let mut next = self.map.read().clone();
        let Some(list) = next.get_mut(&home) else {
            return Ok(());
        };
        let before = list.len();
        list.retain(|v| v.id != vdisk);
        if list.len() == before {
            return Ok(());
        }
        self.save(next).await
    }

    async fn save(&self, next: BTreeMap<u64, Vec<VdiskRecord>>) -> Result<()> {
        let entries: Vec<(u64, Vec<VdiskRecord>)> =
            next.iter().map(|(h, v)| (*h, v.clone())).collect();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &entries))
            .await
            .map_err(|e| MirrorError::State(format!("persisting descriptions: {e}")))?
            .map_err(|e| MirrorError::State(format!("persisting descriptions: {e}")))?;
        *self.map.write() = next;
        Ok(())
    }
}

fn write_atomic(path: &Path, entries: &[(u64, Vec<VdiskRecord>)]) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, id: u64) -> VdiskRecord {
        VdiskRecord {
            name: name.into(),
            id,
            size_bytes: 1 << 20,
            gen: 3,
            seed: 7,
            created_unix: 1,
            snapshots: vec![],
        }
    }

    #[tokio::test]
    async fn descriptions_survive_a_reopen_and_stay_per_peer() {
        let dir = tempfile::tempdir().unwrap();
        let d = Described::open(dir.path()).unwrap();
        d.set(2, vec![rec("a", 1), rec("b", 2)]).await.unwrap();
        d.set(3, vec![rec("a", 1)]).await.unwrap();
        d.forget(2, 1).await.unwrap();
        drop(d);
        let d = Described::open(dir.path()).unwrap();
        assert_eq!(
            d.all(),
            vec![(2, vec![rec("b", 2)]), (3, vec![rec("a", 1)])]
        );
        std::fs::write(dir.path().join("described.json"), b"{bad").unwrap();
        assert!(Described::open(dir.path()).is_err(), "damage is an error");
    }
}
