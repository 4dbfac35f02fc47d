//! The pool metadata: what virtual disks, snapshots and disks exist. It is the engine's only
//! persistent state of its own (replica contents live in the stores). It is written whole, with a
//! rising sequence number, to the metadata slot of every active disk (`Store::put_meta`); at open
//! the newest valid copy wins. Every change is persisted before it is acknowledged.
//!
//! This module owns the format, validation of bytes read back, and the bounds. It never performs
//! I/O.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::types::DiskState;

/// Format tag so a future layout change is detected instead of misread.
pub(crate) const META_FORMAT: u32 = 1;
/// The store's metadata slot holds at most 1 MiB; stay well below it.
pub(crate) const MAX_META_BYTES: usize = 900 * 1024;
/// A count bound; the metadata size binds first: a virtual disk's record is about 145 bytes
/// plus its name, so the 900 KiB slot holds ~5,800 disks with 11-byte names and ~4,400 with
/// 64-byte names (then `encode` refuses the change with the sizes; the node answers 409).
/// Beyond that needs the metadata split over more than one slot (a format change).
pub(crate) const MAX_VDISKS: usize = 8192;
pub(crate) const MAX_SNAPSHOTS_PER_VDISK: usize = 256;
pub(crate) const MAX_SNAPSHOTS_TOTAL: usize = 4096;
pub(crate) const MAX_DISKS: usize = 256;
pub(crate) const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PoolMeta {
    pub format: u32,
    pub pool_id: String,
    /// Rises by one with every persisted change; the newest copy on any disk wins.
    pub seq: u64,
    /// Set by a clean shutdown, cleared before the first change after open. While the pool was
    /// not shut down cleanly, the two replicas of a chunk may differ in blocks that were written
    /// but never flushed, so reads stick to one replica per chunk.
    pub clean: bool,
    /// Ids are never reused, so objects of a deleted disk can never be mistaken for a new one's.
    pub next_vdisk_id: u64,
    pub next_snap_id: u64,
    /// Bumped whenever the set of disks placement may use changes.
    pub map_version: u64,
    pub disks: Vec<DiskMeta>,
    pub vdisks: Vec<VdiskMeta>,
    /// Virtual disks whose snapshot set shrank and whose old versions still need pruning.
    #[serde(default)]
    pub prune_pending: Vec<u64>,
    /// (disk id, object) copies in progress: an import is not atomic across a crash, so a copy
    /// listed here is incomplete and is deleted when its disk is opened.
    #[serde(default)]
    pub importing: Vec<(String, store::ObjectId)>,
    /// (vdisk id, snapshot generation) rollbacks started and not known complete: redone before
    /// the disk serves I/O again (a rollback touches every chunk and is not atomic by itself).
    #[serde(default)]
    pub rollbacks: Vec<(u64, u64)>,
    /// The pool was not shut down cleanly at some point and the replicas have not been
    /// compared since: they may differ in blocks written but never flushed. Until a resync pass
    /// clears it, every read of a chunk goes to the same replica.
    #[serde(default)]
    pub needs_resync: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct DiskMeta {
    pub id: String,
    pub name: String,
    pub node_id: u64,
    pub size_bytes: u64,
    pub state: DiskState,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct VdiskMeta {
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
    /// Current generation: every write carries it. Starts at 1.
    pub gen: u64,
    /// Placement input; clones inherit it so their chunks sit with their source's.
    pub seed: u64,
    pub created_unix: u64,
    /// Oldest first; generations strictly rising.
    pub snapshots: Vec<SnapMeta>,
    /// Node-private: every replica on this node's own disks, never on a peer's (the node's raft
    /// log and configuration record). Absent in older metadata: false.
    #[serde(default)]
    pub local_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct SnapMeta {
    pub name: String,
    pub id: u64,
    pub gen: u64,
    pub created_unix: u64,
    /// Internal snapshots (taken to clone a live disk consistently) are not listed.
    #[serde(default)]
    pub hidden: bool,
}

impl PoolMeta {
    /// Hands out the next virtual disk id (never reused), or NoSpace when the pool already has
    /// [`MAX_VDISKS`] virtual disks.
    pub(crate) fn take_vdisk_id(&mut self) -> Result<u64> {
        if self.vdisks.len() >= MAX_VDISKS {
            return Err(EngineError::NoSpace(format!(
                "at most {MAX_VDISKS} virtual disks"
            )));
        }
        let id = self.next_vdisk_id;
        self.next_vdisk_id += 1;
        Ok(id)
    }

    pub(crate) fn new(pool_id: String) -> Self {
        PoolMeta {
            format: META_FORMAT,
            pool_id,
            seq: 0,
            clean: false,
            next_vdisk_id: 1,
            next_snap_id: 1,
            map_version: 1,
            disks: Vec::new(),
            vdisks: Vec::new(),
            prune_pending: Vec::new(),
            importing: Vec::new(),
            rollbacks: Vec::new(),
            needs_resync: false,
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| EngineError::io(format!("encoding pool metadata: {e}")))?;
        if bytes.len() > MAX_META_BYTES {
            return Err(EngineError::NoSpace(format!(
                "pool metadata would be {} bytes (limit {MAX_META_BYTES}); delete snapshots or disks",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Parse and check bytes read back from a disk; anything inconsistent is rejected whole.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_META_BYTES {
            return Err(EngineError::Corrupt("pool metadata too large".into()));
        }
        let m: PoolMeta = serde_json::from_slice(bytes)
            .map_err(|e| EngineError::Corrupt(format!("pool metadata unreadable: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Corrupt(format!("pool metadata: {m}")));
        if self.format != META_FORMAT {
            return bad(format!("unknown format {}", self.format));
        }
        if self.disks.len() > MAX_DISKS || self.vdisks.len() > MAX_VDISKS {
            return bad("too many disks or virtual disks".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut total_snaps = 0usize;
        for v in &self.vdisks {
            if validate_name(&v.name).is_err() || !names.insert(v.name.as_str()) {
                return bad(format!("bad or duplicate vdisk name {:?}", v.name));
            }
            if v.id == 0 || v.id >= self.next_vdisk_id || v.gen == 0 {
                return bad(format!("vdisk {} has bad id or generation", v.name));
            }
            if v.size_bytes == 0 || v.size_bytes % crate::BLOCK_BYTES != 0 {
                return bad(format!("vdisk {} has bad size", v.name));
            }
            let mut last = 0u64;
            for s in &v.snapshots {
                if s.gen <= last || s.gen >= v.gen {
                    return bad(format!(
                        "vdisk {} snapshot generations out of order",
                        v.name
                    ));
                }
                last = s.gen;
            }
            total_snaps += v.snapshots.len();
        }
        if total_snaps > MAX_SNAPSHOTS_TOTAL {
            return bad("too many snapshots".into());
        }
        Ok(())
    }

    pub(crate) fn vdisk(&self, name: &str) -> Result<&VdiskMeta> {
        self.vdisks
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| EngineError::not_found(format!("virtual disk {name:?}")))
    }

    pub(crate) fn vdisk_mut(&mut self, name: &str) -> Result<&mut VdiskMeta> {
        self.vdisks
            .iter_mut()
            .find(|v| v.name == name)
            .ok_or_else(|| EngineError::not_found(format!("virtual disk {name:?}")))
    }

    pub(crate) fn vdisk_by_id(&self, id: u64) -> Option<&VdiskMeta> {
        self.vdisks.iter().find(|v| v.id == id)
    }

    pub(crate) fn total_snapshots(&self) -> usize {
        self.vdisks.iter().map(|v| v.snapshots.len()).sum()
    }
}

impl VdiskMeta {
    pub(crate) fn snapshot(&self, name: &str) -> Result<&SnapMeta> {
        self.snapshots
            .iter()
            .find(|s| s.name == name && !s.hidden)
            .ok_or_else(|| {
                EngineError::not_found(format!("snapshot {name:?} of virtual disk {:?}", self.name))
            })
    }

    /// The generation writes must protect: the newest snapshot's (0 = none).
    pub(crate) fn pin_gen(&self) -> u64 {
        self.snapshots.last().map_or(0, |s| s.gen)
    }

    pub(crate) fn snap_gens(&self) -> Vec<u64> {
        self.snapshots.iter().map(|s| s.gen).collect()
    }
}

/// Names of virtual disks and snapshots: 1-64 characters of [A-Za-z0-9._-], not starting with
/// '.' or '-' (so they are safe as file names and CLI arguments).
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars {
        return Err(EngineError::invalid(format!(
            "name {name:?}: use 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
        )));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(EngineError::invalid(format!(
            "name {name:?} must not start with '.' or '-'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("vm-01.disk_a").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn round_trip_and_rejects_garbage() {
        let mut m = PoolMeta::new("p".into());
        m.next_vdisk_id = 3;
        m.vdisks.push(VdiskMeta {
            name: "a".into(),
            id: 2,
            size_bytes: 1 << 20,
            gen: 3,
            seed: 9,
            created_unix: 1,
            local_only: false,
            snapshots: vec![SnapMeta {
                name: "s".into(),
                id: 1,
                gen: 2,
                created_unix: 1,
                hidden: false,
            }],
        });
        let b = m.encode().unwrap();
        assert_eq!(PoolMeta::decode(&b).unwrap(), m);
        assert!(PoolMeta::decode(b"{not json").is_err());
        let mut bad = m.clone();
        bad.vdisks[0].snapshots[0].gen = 5; // snapshot newer than the live generation
        assert!(PoolMeta::decode(&serde_json::to_vec(&bad).unwrap()).is_err());
    }
}
