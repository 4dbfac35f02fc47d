//! The seam between the engine and one replica holder. Today every replica is a local
//! `store::Store`; a remote replica (another node, over `transport`) will implement the same
//! trait, so the engine's I/O, repair and rebalance code never knows which it talks to.
//!
//! This module owns only the trait and the local adapter. It never decides placement.

use std::sync::Arc;

use blockdev::{AlignedBuf, BoxFuture, WriteBuf};
use store::{BlockVersions, ObjectId, ScrubReport, Space, Store, StoreError};

type R<T> = std::result::Result<T, StoreError>;

/// Chunk-replica operations, with the store's semantics (see store-api.md).
pub(crate) trait Replica: Send + Sync + 'static {
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
    fn put_meta(&self, blob: Vec<u8>) -> BoxFuture<'_, R<()>>;
    fn close(&self) -> BoxFuture<'_, R<()>>;
    fn objects(&self) -> Vec<ObjectId>;
    fn changed_blocks(&self, obj: ObjectId, from_gen: u64, to_gen: u64) -> Vec<u64>;
    fn space(&self) -> Space;
}

/// A replica on a disk of this node.
pub(crate) struct LocalReplica(pub Arc<Store>);

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
}

/// Whether a replica error means the disk itself is bad (fail it) rather than the request.
pub(crate) fn is_device_failure(e: &StoreError) -> bool {
    matches!(e.kind(), store::ErrorKind::Io | store::ErrorKind::Poisoned)
}
