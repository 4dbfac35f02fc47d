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
//! Owns: [`VdiskRecord`] (what an owner tells its holders) and the adoption itself.
//! Must never: adopt over an existing name, record the disk before its data is durable, or
//! delete the held copy before the adopted disk is recorded.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use store::ObjectId;

use crate::core::now_unix;
use crate::error::{EngineError, Result};
use crate::meta::{validate_name, SnapMeta, VdiskMeta, MAX_SNAPSHOTS_PER_VDISK};
use crate::pool::Engine;
use crate::replica::FOREIGN_VDISK_BIT;
use crate::types::VdiskInfo;
use crate::{BLOCK_BYTES, MAX_VDISK_BYTES};

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

    /// Turn the copy held under hosted id `source` into the local virtual disk `rec.name`
    /// (see the module docs). The held objects are deleted once the disk is recorded. Blocks
    /// written after `rec` was sent are kept (the generation is raised past every version
    /// found); a snapshot taken after it was sent is not listed (its versions are pruned).
    pub async fn adopt_vdisk(&self, rec: &VdiskRecord, source: u64) -> Result<VdiskInfo> {
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
        let r = self.adopt_reserved(rec, source, new_id).await;
        inner.building.lock().remove(&new_id);
        r
    }

    async fn adopt_reserved(
        &self,
        rec: &VdiskRecord,
        source: u64,
        new_id: u64,
    ) -> Result<VdiskInfo> {
        let inner = &self.inner;
        let held = self.held(source);
        let mut max_gen = 0u64;
        for (d, obj) in &held {
            let versions = d
                .replica
                .export_object(*obj)
                .await
                .map_err(|e| EngineError::store(format!("reading held chunk {obj}"), e))?;
            for b in &versions {
                for v in &b.versions {
                    max_gen = max_gen.max(v.gen);
                }
            }
            let dst = ObjectId {
                vdisk: new_id,
                chunk: obj.chunk,
            };
            let _l = inner.stripe(dst).write().await;
            d.replica
                .import_object(dst, versions)
                .await
                .map_err(|e| EngineError::store(format!("copying held chunk {obj}"), e))?;
            d.write_seq.fetch_add(1, Ordering::Release);
            inner.index.add(dst, d.slot);
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
}
