//! The seam between the engine and one replica holder: a local `store::Store`
//! ([`LocalReplica`]) or another node's store over the network (the `mirror` crate's
//! `RemoteReplica`), so the engine's I/O, repair and rebalance code never knows which it talks to.
//!
//! A remote holder can be *away* (its node unreachable): it then takes mutations by recording
//! the objects they touch as dirty instead of sending them, and the engine resyncs exactly those
//! objects when it is back (see `remote`). Local holders are never away.
//!
//! This module owns only the trait and the local adapter. It never decides placement.

use std::sync::Arc;

use blockdev::{AlignedBuf, BoxFuture, WriteBuf};
use store::{BlockVersions, ObjectId, ScrubReport, Space, Store, StoreError, VersionRecord};

type R<T> = std::result::Result<T, StoreError>;

/// Object ids of mirrored replicas a node holds *for other nodes* carry this bit in `vdisk`
/// inside its stores, so they never mix with the node's own virtual disks.
pub const FOREIGN_VDISK_BIT: u64 = 1 << 63;

/// A dirty "object" with this chunk index stands for "a prune of this virtual disk was missed
/// while the holder was away" (redone with the current snapshot list at resync).
pub const PRUNE_MARK_CHUNK: u64 = u64::MAX;

/// Whether a replica holder can be reached now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reachability {
    /// Every request goes to the holder.
    Up,
    /// Unreachable: mutations are recorded as dirty objects, not sent; reads fail fast.
    Away,
    /// Reachable again; dirty objects still need a resync.
    Back,
}

/// Chunk-replica operations, with the store's semantics (see store-api.md).
pub trait Replica: Send + Sync + 'static {
    /// The store's `write`, with `crcs` = `store::block_crcs(data)` computed once by the
    /// caller for every replica.
    fn write_with_crcs(
        &self,
        obj: ObjectId,
        block: u64,
        data: WriteBuf,
        crcs: Arc<[u32]>,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>>;
    fn read(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
    ) -> BoxFuture<'_, R<AlignedBuf>>;
    /// `read` into the caller's memory (`out` is exactly `nblocks` blocks). A holder that can
    /// verify and copy in one pass (a local store) overrides this; the default copies the
    /// verified buffer `read` returns. On error `out` holds unspecified bytes.
    fn read_into<'a>(
        &'a self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
        out: &'a mut [u8],
    ) -> BoxFuture<'a, R<()>> {
        Box::pin(async move {
            let buf = self.read(obj, block, nblocks, at_gen).await?;
            if buf.len() < out.len() {
                return Err(StoreError::InvalidArgument(format!(
                    "replica returned {} bytes for a read of {}",
                    buf.len(),
                    out.len()
                )));
            }
            out.copy_from_slice(&buf[..out.len()]);
            Ok(())
        })
    }
    fn discard(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>>;
    fn flush(&self) -> BoxFuture<'_, R<()>>;
    fn clone_object(
        &self,
        src: ObjectId,
        at_gen: u64,
        dst: ObjectId,
        dst_gen: u64,
    ) -> BoxFuture<'_, R<()>>;
    fn rollback_object(
        &self,
        obj: ObjectId,
        snap_gen: u64,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>>;
    fn delete_object(&self, obj: ObjectId) -> BoxFuture<'_, R<()>>;
    fn prune(&self, vdisk: u64, snap_gens: Vec<u64>) -> BoxFuture<'_, R<()>>;
    fn export_object(&self, obj: ObjectId) -> BoxFuture<'_, R<Vec<BlockVersions>>>;
    fn import_object(&self, obj: ObjectId, versions: Vec<BlockVersions>) -> BoxFuture<'_, R<()>>;
    fn repair(&self, obj: ObjectId, block: u64, gen: u64, good: WriteBuf) -> BoxFuture<'_, R<()>>;
    fn scrub(&self) -> BoxFuture<'_, R<ScrubReport>>;
    /// Every version record of `obj` without its data (`Store::version_records`): scrub
    /// compares the replicas of a chunk by these before it reads any data. None: this holder
    /// cannot list them now (a peer away, or one too old to know the mirror protocol's
    /// request), so scrub leaves it out of the comparison and counts it as not compared.
    fn version_records(&self, _obj: ObjectId) -> BoxFuture<'_, R<Option<Vec<VersionRecord>>>> {
        Box::pin(async { Ok(None) })
    }
    fn put_meta(&self, blob: Vec<u8>) -> BoxFuture<'_, R<()>>;
    fn close(&self) -> BoxFuture<'_, R<()>>;
    fn objects(&self) -> Vec<ObjectId>;
    fn changed_blocks(&self, obj: ObjectId, from_gen: u64, to_gen: u64) -> Vec<u64>;
    fn space(&self) -> Space;

    /// Remote holders only: whether the holder is reachable now.
    fn reachability(&self) -> Reachability {
        Reachability::Up
    }
    /// Remote holders only: when it went away (None while up).
    fn away_since(&self) -> Option<std::time::Instant> {
        None
    }
    /// Objects changed while the holder was away (or written and not yet flushed when it went
    /// away): they must be copied from a live replica before this one is trusted again.
    fn dirty_objects(&self) -> Vec<ObjectId> {
        Vec::new()
    }
    /// `obj` is about to be (or was) rewritten from a good replica; later mutations of it go to
    /// the holder again. The caller holds the chunk's stripe lock exclusively.
    fn mark_clean(&self, _obj: ObjectId) {}
    /// `obj` must be resynced (a copy to this holder failed, or its contents are unknown).
    fn mark_dirty(&self, _obj: ObjectId) {}
    /// Deferred work done and nothing dirty: let the holder count as fully in sync again.
    fn resync_done(&self) {}
    /// The store itself when the holder is a disk of this node: the engine's hot paths then
    /// call it directly (no boxed future per request). Same semantics as the methods above.
    fn local_store(&self) -> Option<&Arc<Store>> {
        None
    }
}

/// A replica on a disk of this node.
pub struct LocalReplica(pub Arc<Store>);

impl Replica for LocalReplica {
    fn write_with_crcs(
        &self,
        obj: ObjectId,
        block: u64,
        data: WriteBuf,
        crcs: Arc<[u32]>,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            self.0
                .write_with_crcs(obj, block, data, &crcs, gen, pin)
                .await
        })
    }
    fn read(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
    ) -> BoxFuture<'_, R<AlignedBuf>> {
        Box::pin(self.0.read(obj, block, nblocks, at_gen))
    }
    fn read_into<'a>(
        &'a self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
        out: &'a mut [u8],
    ) -> BoxFuture<'a, R<()>> {
        Box::pin(self.0.read_into(obj, block, nblocks, at_gen, out))
    }
    fn discard(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(self.0.discard(obj, block, nblocks, gen, pin))
    }
    fn flush(&self) -> BoxFuture<'_, R<()>> {
        Box::pin(self.0.flush())
    }
    fn clone_object(
        &self,
        src: ObjectId,
        at_gen: u64,
        dst: ObjectId,
        dst_gen: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(self.0.clone_object(src, at_gen, dst, dst_gen))
    }
    fn rollback_object(
        &self,
        obj: ObjectId,
        snap_gen: u64,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(self.0.rollback_object(obj, snap_gen, gen, pin))
    }
    fn delete_object(&self, obj: ObjectId) -> BoxFuture<'_, R<()>> {
        Box::pin(self.0.delete_object(obj))
    }
    fn prune(&self, vdisk: u64, snap_gens: Vec<u64>) -> BoxFuture<'_, R<()>> {
        Box::pin(async move { self.0.prune(vdisk, &snap_gens).await })
    }
    fn export_object(&self, obj: ObjectId) -> BoxFuture<'_, R<Vec<BlockVersions>>> {
        Box::pin(self.0.export_object(obj))
    }
    fn import_object(&self, obj: ObjectId, versions: Vec<BlockVersions>) -> BoxFuture<'_, R<()>> {
        Box::pin(self.0.import_object(obj, versions))
    }
    fn repair(&self, obj: ObjectId, block: u64, gen: u64, good: WriteBuf) -> BoxFuture<'_, R<()>> {
        Box::pin(self.0.repair(obj, block, gen, good))
    }
    fn scrub(&self) -> BoxFuture<'_, R<ScrubReport>> {
        Box::pin(self.0.scrub())
    }
    fn version_records(&self, obj: ObjectId) -> BoxFuture<'_, R<Option<Vec<VersionRecord>>>> {
        let records = self.0.version_records(obj);
        Box::pin(async move { Ok(Some(records)) })
    }
    fn put_meta(&self, blob: Vec<u8>) -> BoxFuture<'_, R<()>> {
        Box::pin(async move { self.0.put_meta(&blob).await })
    }
    fn close(&self) -> BoxFuture<'_, R<()>> {
        Box::pin(self.0.close())
    }
    fn objects(&self) -> Vec<ObjectId> {
        self.0.objects()
    }
    fn changed_blocks(&self, obj: ObjectId, from_gen: u64, to_gen: u64) -> Vec<u64> {
        self.0.changed_blocks(obj, from_gen, to_gen)
    }
    fn space(&self) -> Space {
        self.0.space()
    }
    fn local_store(&self) -> Option<&Arc<Store>> {
        Some(&self.0)
    }
}

/// Whether a replica error means the disk itself is bad (fail it) rather than the request.
pub fn is_device_failure(e: &StoreError) -> bool {
    matches!(e.kind(), store::ErrorKind::Io | store::ErrorKind::Poisoned)
}
