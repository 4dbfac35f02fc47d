//! Taking over another node's virtual disk from the copy this node holds for it.
//!
//! A node that mirrors its virtual disks onto this one leaves here, in this node's own stores,
//! one replica of each chunk under a *hosted* object id (`FOREIGN_VDISK_BIT` set; see the
//! `mirror` crate), with every block version the owner wrote (so its snapshots too), plus a
//! description of each virtual disk ([`VdiskRecord`]: name, size, generation, placement seed,
//! snapshots) that the owner sends whenever it changes. When the owner is lost and the cluster
//! hands its virtual disks to this node, [`Engine::adopt_vdisk`] turns such a held copy into a
//! local virtual disk: every held object is copied (all versions) to a fresh id on the same
//! disk, the disk is recorded in the pool metadata, and the held copies are deleted. From then
//! on it is an ordinary virtual disk of this node: the maintenance pass re-mirrors its chunks
//! onto the other node's disks like any under-replicated chunk.
//!
//! With three or more data nodes a chunk's replicas may both sit on other nodes than this
//! one: [`Engine::adopt_vdisk_gathered`] takes, besides the copy held here, the chunks other
//! holders keep (fetched through the caller, over the mirror transport, after the caller
//! fenced every holder's copy); each is written to one of this node's disks (its placement's
//! disk on this node if there is one, else the one with most room). Copies held on other
//! nodes are theirs to delete, once the adopted disk is recorded (the holder sees it
//! described by its new owner; see the node's takeover).
//!
//! Owns: [`VdiskRecord`] (what an owner tells its holders) and the adoption itself.
//! Must never: adopt over an existing name, record the disk before its data is durable, or
//! delete the held copy before the adopted disk is recorded.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use store::{BlockVersions, ObjectId};

use crate::core::now_unix;
use crate::error::{EngineError, Result};
use crate::meta::{validate_name, SnapMeta, VdiskMeta, MAX_SNAPSHOTS_PER_VDISK};
use crate::pool::Engine;
use crate::replica::FOREIGN_VDISK_BIT;
use crate::types::VdiskInfo;
use crate::{BLOCK_BYTES, MAX_VDISK_BYTES};

/// Chunks fetched from other holders at once during an adoption.
const FETCH_AHEAD: usize = 4;

/// A snapshot as its owner describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRecord {
    pub name: String,
    pub gen: u64,
    pub created_unix: u64,
}

/// A virtual disk as its owner describes it to the nodes holding its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskRecord {
    pub name: String,
    /// The owner's engine id (its holders file the copies under it).
    pub id: u64,
    pub size_bytes: u64,
    /// Generation live writes carry.
    pub gen: u64,
    pub seed: u64,
    pub created_unix: u64,
    /// Visible snapshots, oldest first (hidden ones back clones in progress and are dropped).
    pub snapshots: Vec<SnapRecord>,
}

impl VdiskRecord {
    /// Checks of a record received from a peer (bounds, names, ordering).
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let bad = |m: &str| Err(EngineError::invalid(format!("vdisk {:?}: {m}", self.name)));
        if self.size_bytes == 0
            || !self.size_bytes.is_multiple_of(BLOCK_BYTES)
            || self.size_bytes > MAX_VDISK_BYTES
        {
            return bad("bad size");
        }
        if self.gen == 0 || self.gen >= u64::MAX / 2 {
            return bad("bad generation");
        }
        if self.snapshots.len() > MAX_SNAPSHOTS_PER_VDISK {
            return bad("too many snapshots");
        }
        let mut last = 0;
        for s in &self.snapshots {
            validate_name(&s.name)?;
            if s.gen <= last || s.gen >= self.gen {
                return bad("snapshot generations out of order");
            }
            last = s.gen;
        }
        Ok(())
    }
}

impl Engine {
    /// Every virtual disk as [`VdiskRecord`]s (what holders are told).
    pub fn vdisk_records(&self) -> Vec<VdiskRecord> {
        let Some(m) = self.inner.meta_arc() else {
            return Vec::new();
        };
        m.vdisks
            .iter()
            // Node-private disks have no copies on peers: nothing another node could adopt.
            .filter(|v| !v.local_only)
            .map(|v| VdiskRecord {
                name: v.name.clone(),
                id: v.id,
                size_bytes: v.size_bytes,
                gen: v.gen,
                seed: v.seed,
                created_unix: v.created_unix,
                snapshots: v
                    .snapshots
                    .iter()
                    .filter(|s| !s.hidden)
                    .map(|s| SnapRecord {
                        name: s.name.clone(),
                        gen: s.gen,
                        created_unix: s.created_unix,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Chunk objects held in this node's own stores under `source` (a hosted id, see the
    /// module docs).
    pub fn held_chunks(&self, source: u64) -> u64 {
        self.held(source).len() as u64
    }

    fn held(&self, source: u64) -> Vec<(std::sync::Arc<crate::core::Disk>, ObjectId)> {
        let me = self.inner.cfg.node_id;
        let disks: Vec<_> = self
            .inner
            .disks
            .read()
            .iter()
            .filter(|d| d.node_id == me && d.live())
            .cloned()
            .collect();
        let mut out = Vec::new();
        for d in disks {
            for o in d.replica.objects() {
                if o.vdisk == source && o.chunk != crate::PRUNE_MARK_CHUNK {
                    out.push((d.clone(), o));
                }
            }
        }
        out
    }

    /// Delete every object held in this node's own stores under `source` (a hosted id): a
    /// copy another node adopted. Returns the objects deleted. The caller makes sure the copy
    /// is retired and its new owner recorded the adopted disk.
    pub async fn drop_held(&self, source: u64) -> Result<u64> {
        if source & FOREIGN_VDISK_BIT == 0 {
            return Err(EngineError::invalid(format!(
                "object id {source:#x} is not a held copy"
            )));
        }
        let mut n = 0;
        for (d, obj) in self.held(source) {
            d.replica
                .delete_object(obj)
                .await
                .map_err(|e| EngineError::store(format!("deleting held chunk {obj}"), e))?;
            d.write_seq.fetch_add(1, Ordering::Release);
            n += 1;
        }
        Ok(n)
    }

    /// Turn the copy held under hosted id `source` into the local virtual disk `rec.name`
    /// (see the module docs). The held objects are deleted once the disk is recorded. Blocks
    /// written after `rec` was sent are kept (the generation is raised past every version
    /// found); a snapshot taken after it was sent is not listed (its versions are pruned).
    pub async fn adopt_vdisk(&self, rec: &VdiskRecord, source: u64) -> Result<VdiskInfo> {
        let none = |_: u64| async { Err::<Vec<BlockVersions>, String>("no other holder".into()) };
        self.adopt_vdisk_gathered(rec, source, &[], none).await
    }

    /// [`Engine::adopt_vdisk`] gathering from other holders too: `remote` lists the chunks
    /// other nodes hold (the caller fenced those copies first); each one not held here is
    /// fetched with `fetch(chunk)` (every version of every block, checked by the fetcher) and
    /// written to a disk of this node. A failed fetch fails the adoption before anything is
    /// recorded (nothing partial is ever adopted; what was copied is removed again).
    pub async fn adopt_vdisk_gathered<F, Fut>(
        &self,
        rec: &VdiskRecord,
        source: u64,
        remote: &[u64],
        fetch: F,
    ) -> Result<VdiskInfo>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<BlockVersions>, String>>,
    {
        rec.validate()?;
        if source & FOREIGN_VDISK_BIT == 0 {
            return Err(EngineError::invalid(format!(
                "object id {source:#x} is not a held copy"
            )));
        }
        let inner = &self.inner;
        let _op = inner.op.lock().await;
        inner.mark_unclean().await?;
        let new_id = inner
            .update_meta(|m| {
                if m.vdisks.iter().any(|v| v.name == rec.name) {
                    return Err(EngineError::AlreadyExists(format!(
                        "virtual disk {:?}",
                        rec.name
                    )));
                }
                m.take_vdisk_id()
            })
            .await?;
        // Until recorded, the new id's objects must not look like orphans.
        inner.building.lock().insert(new_id);
        let mut copied = Vec::new();
        let r = self
            .adopt_reserved(rec, source, new_id, remote, fetch, &mut copied)
            .await;
        if r.is_err() {
            // Nothing was recorded: the copies made so far go again (an interrupted run's
            // leftovers are orphans the next open removes).
            for (d, dst) in copied {
                inner.index.remove_slot(dst, d.slot);
                if d.replica.delete_object(dst).await.is_ok() {
                    d.write_seq.fetch_add(1, Ordering::Release);
                }
            }
        }
        inner.building.lock().remove(&new_id);
        r
    }

    async fn adopt_reserved<F, Fut>(
        &self,
        rec: &VdiskRecord,
        source: u64,
        new_id: u64,
        remote: &[u64],
        fetch: F,
        copied: &mut Vec<(Arc<crate::core::Disk>, ObjectId)>,
    ) -> Result<VdiskInfo>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<BlockVersions>, String>>,
    {
        let inner = &self.inner;
        let held = self.held(source);
        let mut max_gen = 0u64;
        let mut here = BTreeSet::new();
        for (d, obj) in &held {
            if !here.insert(obj.chunk) {
                continue; // a second copy here (a move in progress on the old owner's side)
            }
            let versions = d
                .replica
                .export_object(*obj)
                .await
                .map_err(|e| EngineError::store(format!("reading held chunk {obj}"), e))?;
            max_gen = max_gen.max(newest_gen(&versions));
            self.import_adopted(d, new_id, obj.chunk, versions, copied)
                .await?;
        }
        let elsewhere: BTreeSet<u64> = remote
            .iter()
            .copied()
            .filter(|c| !here.contains(c))
            .collect();
        let chunks = rec.size_bytes.div_ceil(crate::CHUNK_BYTES);
        if let Some(past) = elsewhere.iter().find(|c| **c >= chunks) {
            return Err(EngineError::Corrupt(format!(
                "a holder lists chunk {past} of {:?}, past its size",
                rec.name
            )));
        }
        // A few fetches in flight while earlier chunks are written (bounded memory: at most
        // FETCH_AHEAD chunks' histories at once).
        let fetch = &fetch;
        let mut fetched = futures::stream::iter(elsewhere)
            .map(|chunk| async move { (chunk, fetch(chunk).await) })
            .buffered(FETCH_AHEAD);
        while let Some((chunk, r)) = fetched.next().await {
            let versions = r.map_err(|e| {
                EngineError::Degraded(format!(
                    "fetching chunk {chunk} of {:?} from another holder: {e}",
                    rec.name
                ))
            })?;
            max_gen = max_gen.max(newest_gen(&versions));
            let d = self.adopt_target(rec.seed, chunk)?;
            self.import_adopted(&d, new_id, chunk, versions, copied)
                .await?;
        }
        if max_gen >= u64::MAX / 2 {
            return Err(EngineError::Corrupt(format!(
                "held copy of {:?} has generation {max_gen}",
                rec.name
            )));
        }
        // The copies must be durable before the disk is recorded.
        inner.flush_all().await?;
        let gen = rec.gen.max(max_gen + 1);
        let nv = inner
            .update_meta(|m| {
                if m.vdisks.iter().any(|x| x.name == rec.name) {
                    return Err(EngineError::AlreadyExists(format!(
                        "virtual disk {:?}",
                        rec.name
                    )));
                }
                let mut snapshots = Vec::new();
                for s in &rec.snapshots {
                    snapshots.push(SnapMeta {
                        name: s.name.clone(),
                        id: m.next_snap_id,
                        gen: s.gen,
                        created_unix: s.created_unix,
                        hidden: false,
                    });
                    m.next_snap_id += 1;
                }
                let nv = VdiskMeta {
                    name: rec.name.clone(),
                    id: new_id,
                    size_bytes: rec.size_bytes,
                    gen,
                    seed: rec.seed,
                    created_unix: if rec.created_unix > 0 {
                        rec.created_unix
                    } else {
                        now_unix()
                    },
                    snapshots,
                    local_only: false,
                };
                m.vdisks.push(nv.clone());
                // Versions of snapshots the record did not list are dropped.
                m.prune_pending.push(new_id);
                Ok(nv)
            })
            .await?;
        for (d, obj) in held {
            if let Err(e) = d.replica.delete_object(obj).await {
                tracing::warn!(%obj, disk = %d.name, error = %e, "deleting an adopted held chunk failed");
            } else {
                d.write_seq.fetch_add(1, Ordering::Release);
            }
        }
        inner.in_use.store(true, Ordering::Release);
        inner.kick_bg();
        self.vdisk(&nv.name)
    }

    /// Write one adopted chunk as object (`new_id`, `chunk`) on `d`.
    async fn import_adopted(
        &self,
        d: &Arc<crate::core::Disk>,
        new_id: u64,
        chunk: u64,
        versions: Vec<BlockVersions>,
        copied: &mut Vec<(Arc<crate::core::Disk>, ObjectId)>,
    ) -> Result<()> {
        let inner = &self.inner;
        let dst = ObjectId {
            vdisk: new_id,
            chunk,
        };
        let _l = inner.stripe(dst).write().await;
        d.replica
            .import_object(dst, versions)
            .await
            .map_err(|e| EngineError::store(format!("copying held chunk {chunk}"), e))?;
        d.write_seq.fetch_add(1, Ordering::Release);
        inner.index.add(dst, d.slot);
        copied.push((d.clone(), dst));
        Ok(())
    }

    /// The disk of this node a chunk fetched from another holder goes to: the one placement
    /// picks on this node, else the live local disk with the most free blocks.
    fn adopt_target(&self, seed: u64, chunk: u64) -> Result<Arc<crate::core::Disk>> {
        let inner = &self.inner;
        let me = inner.cfg.node_id;
        let view = inner.view.read().clone();
        let placed = view.place_in(seed, chunk, None);
        let local: Vec<Arc<crate::core::Disk>> = inner
            .disks
            .read()
            .iter()
            .filter(|d| d.node_id == me && d.live())
            .cloned()
            .collect();
        if let Some(d) = local.iter().find(|d| placed.contains(d.slot)) {
            return Ok(d.clone());
        }
        local
            .into_iter()
            .max_by_key(|d| d.replica.space().free_blocks)
            .ok_or_else(|| EngineError::Degraded("this node has no live disk to adopt onto".into()))
    }
}

/// The newest generation among `versions`.
fn newest_gen(versions: &[BlockVersions]) -> u64 {
    versions
        .iter()
        .flat_map(|b| b.versions.iter().map(|v| v.gen))
        .max()
        .unwrap_or(0)
}
