//! The resync figure: how fast a peer that was away briefly is brought back in sync, against
//! the device's sequential write bandwidth measured in the same run (the same anchor as the
//! rebuild figure: a plain copy of those bytes onto that device cannot beat it).
//!
//! Set-up: two engines, one per node. Node 1's disk is in RAM (standing for the surviving
//! node's own device, pre-touched as in `bench_rebuild`), node 2's is an io_uring file
//! pre-written like a block device; node 1 owns a virtual disk and attaches node 2's disk
//! through [`AwayPeer`], a replica wrapper that goes away and comes back as the `mirror`
//! crate's remote replica does (away: mutations recorded as dirty chunks, not sent), minus the
//! network. The virtual disk is filled (every chunk on both nodes), node 2 goes away, N chunks
//! are rewritten whole and flushed, node 2 comes back, and the resync copies exactly those N
//! chunks. Ours = bytes resynced / time from "back" to "in sync". Anchor = sequential 1 MiB
//! writes at queue depth 4 over as many bytes on a fresh pre-written file in the same
//! directory, once before and once after (the higher of the two).
//!
//! The resync moves about half a gigabyte in a few tenths of a second, so the figure swings
//! with the device's speed in that window: under load some runs take three times as long with
//! the same CPU time and the same bytes on the device (`device_written_mib`: nothing else
//! wrote to it meanwhile), their time spent waiting for the peer's writes (`import_ms`). The
//! device itself was slower then; the anchor, taken before and after, cannot see that.
//!
//! It only measures; correctness lives in the tests (`tests/rebuild_resync.rs`). Must never
//! run against a pool in use.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{AlignedBuf, BoxFuture, WriteBuf};
use parking_lot::Mutex;
use store::{BlockVersions, ObjectId, ScrubReport, Space, StoreError};

use crate::bench_rebuild::{
    cpu_ms, engine_with_disk, load_1m, prewrite_file, seq_write_mibs, DeviceIo,
};
use crate::error::{EngineError, Result};
use crate::replica::{Reachability, Replica, PRUNE_MARK_CHUNK};
use crate::RemoteDisk;

type R<T> = std::result::Result<T, StoreError>;

/// One JSON line, as the other benchmarks print them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResyncLine {
    pub bench: &'static str,
    pub metric: &'static str,
    pub ours: f64,
    pub anchor: f64,
    pub anchor_name: &'static str,
    pub ratio: f64,
    pub higher_is_better: bool,
    /// Chunks and bytes the resync copied, and how long it took (back to in sync).
    pub chunks: u64,
    pub bytes: u64,
    pub secs: f64,
    pub anchor_runs_mib_s: [f64; 2],
    /// Where the copies' time went (summed over copies in flight, ms) and peer flushes.
    pub export_ms: f64,
    pub import_ms: f64,
    pub flush_ms: f64,
    pub meta_ms: f64,
    pub flushes: u64,
    pub cpu_ms: f64,
    pub load_1m: f64,
    /// What the block device holding the files read and wrote during the resync, MiB (see
    /// `RebuildLine`): the resync's own traffic is about `bytes` written; more means other
    /// processes wrote to the device meanwhile (a slow run under load is such a run).
    pub device_read_mib: f64,
    pub device_written_mib: f64,
}

/// A peer replica that can go away and come back (see the module docs).
struct AwayPeer {
    inner: Arc<dyn Replica>,
    away: AtomicBool,
    back: AtomicBool,
    dirty: Mutex<BTreeSet<ObjectId>>,
}

impl AwayPeer {
    fn gone() -> StoreError {
        StoreError::Io {
            context: "bench peer away".into(),
            source: blockdev::BlockError::new(blockdev::ErrorKind::Gone, "away"),
        }
    }
    async fn mutate(&self, obj: ObjectId, f: BoxFuture<'_, R<()>>) -> R<()> {
        if self.away.load(Ordering::Acquire) {
            self.dirty.lock().insert(obj);
            return Ok(());
        }
        f.await
    }
}

impl Replica for AwayPeer {
    fn write_with_crcs(
        &self,
        obj: ObjectId,
        block: u64,
        data: WriteBuf,
        crcs: Arc<[u32]>,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(self.mutate(
            obj,
            self.inner.write_with_crcs(obj, block, data, crcs, gen, pin),
        ))
    }
    fn read(&self, obj: ObjectId, block: u64, n: u32, at_gen: u64) -> BoxFuture<'_, R<AlignedBuf>> {
        if self.away.load(Ordering::Acquire) {
            return Box::pin(async { Err(Self::gone()) });
        }
        self.inner.read(obj, block, n, at_gen)
    }
    fn discard(&self, obj: ObjectId, b: u64, n: u32, gen: u64, pin: u64) -> BoxFuture<'_, R<()>> {
        Box::pin(self.mutate(obj, self.inner.discard(obj, b, n, gen, pin)))
    }
    fn flush(&self) -> BoxFuture<'_, R<()>> {
        if self.away.load(Ordering::Acquire) {
            return Box::pin(async { Ok(()) });
        }
        self.inner.flush()
    }
    fn clone_object(&self, s: ObjectId, g: u64, d: ObjectId, dg: u64) -> BoxFuture<'_, R<()>> {
        Box::pin(self.mutate(d, self.inner.clone_object(s, g, d, dg)))
    }
    fn rollback_object(&self, o: ObjectId, sg: u64, g: u64, p: u64) -> BoxFuture<'_, R<()>> {
        Box::pin(self.mutate(o, self.inner.rollback_object(o, sg, g, p)))
    }
    fn delete_object(&self, obj: ObjectId) -> BoxFuture<'_, R<()>> {
        Box::pin(self.mutate(obj, self.inner.delete_object(obj)))
    }
    fn prune(&self, vdisk: u64, gens: Vec<u64>) -> BoxFuture<'_, R<()>> {
        let mark = ObjectId {
            vdisk,
            chunk: PRUNE_MARK_CHUNK,
        };
        Box::pin(self.mutate(mark, self.inner.prune(vdisk, gens)))
    }
    fn export_object(&self, obj: ObjectId) -> BoxFuture<'_, R<Vec<BlockVersions>>> {
        if self.away.load(Ordering::Acquire) {
            return Box::pin(async { Err(Self::gone()) });
        }
        self.inner.export_object(obj)
    }
    fn import_object(&self, obj: ObjectId, v: Vec<BlockVersions>) -> BoxFuture<'_, R<()>> {
        Box::pin(self.mutate(obj, self.inner.import_object(obj, v)))
    }
    fn repair(&self, obj: ObjectId, b: u64, g: u64, good: WriteBuf) -> BoxFuture<'_, R<()>> {
        Box::pin(self.mutate(obj, self.inner.repair(obj, b, g, good)))
    }
    fn scrub(&self) -> BoxFuture<'_, R<ScrubReport>> {
        self.inner.scrub()
    }
    fn put_meta(&self, blob: Vec<u8>) -> BoxFuture<'_, R<()>> {
        self.inner.put_meta(blob)
    }
    fn close(&self) -> BoxFuture<'_, R<()>> {
        self.inner.close()
    }
    fn objects(&self) -> Vec<ObjectId> {
        self.inner.objects()
    }
    fn changed_blocks(&self, obj: ObjectId, from: u64, to: u64) -> Vec<u64> {
        self.inner.changed_blocks(obj, from, to)
    }
    fn space(&self) -> Space {
        self.inner.space()
    }
    fn reachability(&self) -> Reachability {
        if self.away.load(Ordering::Acquire) {
            Reachability::Away
        } else if self.back.load(Ordering::Acquire) {
            Reachability::Back
        } else {
            Reachability::Up
        }
    }
    fn dirty_objects(&self) -> Vec<ObjectId> {
        self.dirty.lock().iter().copied().collect()
    }
    fn mark_clean(&self, obj: ObjectId) {
        self.dirty.lock().remove(&obj);
    }
    fn mark_dirty(&self, obj: ObjectId) {
        self.dirty.lock().insert(obj);
        self.back.store(true, Ordering::Release);
    }
    fn resync_done(&self) {
        if self.dirty.lock().is_empty() {
            self.back.store(false, Ordering::Release);
        }
    }
}

/// One resync run: `data_bytes` written to the virtual disk, `changed_bytes` of it rewritten
/// (whole chunks) while node 2 is away. Files go in `dir` and are removed afterwards.
pub async fn resync_after_outage(
    dir: &std::path::Path,
    data_bytes: u64,
    changed_bytes: u64,
) -> Result<ResyncLine> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(format!("{}: {e}", dir.display())))?;
    let r = one_resync(dir, data_bytes, changed_bytes).await;
    for n in 1..=2 {
        let _ = std::fs::remove_file(dir.join(format!("rebuild-node{n}.img")));
    }
    r
}

async fn one_resync(dir: &std::path::Path, data_bytes: u64, changed: u64) -> Result<ResyncLine> {
    const CHUNK: u64 = crate::CHUNK_BYTES;
    let data = data_bytes.clamp(64 << 20, 8 << 30) / CHUNK * CHUNK;
    let changed = changed.clamp(CHUNK, data) / CHUNK * CHUNK;
    // Each node holds every chunk, and the rewritten ones twice until the old copies go.
    let size = data + changed + data / 4 + (256 << 20);
    let (e1, _) = engine_with_disk(dir, 1, size, true).await?;
    let (e2, _) = engine_with_disk(dir, 2, size, false).await?;
    let (info, replica) = e2
        .local_replicas()
        .into_iter()
        .next()
        .ok_or_else(|| EngineError::io("the bench peer has no disk"))?;
    let peer = Arc::new(AwayPeer {
        inner: replica,
        away: AtomicBool::new(false),
        back: AtomicBool::new(false),
        dirty: Mutex::new(BTreeSet::new()),
    });
    e1.add_remote_disk(RemoteDisk {
        id: info.id,
        name: format!("node2:{}", info.name),
        node_id: 2,
        size_bytes: info.size_bytes,
        replica: peer.clone(),
    })
    .await?;
    let pa = dir.join("rebuild-anchor.img");
    prewrite_file(&pa, changed).await?;
    let anchor_before = seq_write_mibs(&pa, changed).await;
    let _ = std::fs::remove_file(&pa);
    let anchor_before = anchor_before?;
    e1.create_vdisk("resync", data).await?;
    let h = e1.open_vdisk("resync")?;
    crate::bench::prefill(&h, data).await?;
    if !e1.wait_rebalanced(Duration::from_secs(600)).await {
        return Err(EngineError::Busy(
            "the pool did not settle before the outage".into(),
        ));
    }
    // The outage: whole chunks rewritten, spread over the disk (every other chunk first).
    peer.away.store(true, Ordering::Release);
    let n = changed / CHUNK;
    let stride = (data / CHUNK / n).max(1);
    let buf: Vec<u8> = (0..CHUNK).map(|i| (i as u8).wrapping_mul(7) | 1).collect();
    for i in 0..n {
        h.write(i * stride * CHUNK, &buf).await?;
    }
    h.flush().await?;
    let dirty = peer.dirty.lock().len() as u64;
    let before = e1.remote_disks().first().map_or(0, |s| s.resynced_bytes);
    let prof0 = e1.rebuild_profile();
    let cpu0 = cpu_ms();
    let io0 = DeviceIo::of(dir);
    // Back: the resync runs inside the round (the watcher would start it within a tick).
    let start = Instant::now();
    peer.back.store(true, Ordering::Release);
    peer.away.store(false, Ordering::Release);
    while !e1.remotes_in_sync() {
        e1.remote_tick().await;
        if start.elapsed() > Duration::from_secs(600) {
            return Err(EngineError::Busy("the resync did not finish".into()));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_ms() - cpu0;
    let (device_read_mib, device_written_mib) = DeviceIo::since(DeviceIo::of(dir), io0);
    let prof = e1.rebuild_profile();
    let bytes = e1.remote_disks().first().map_or(0, |s| s.resynced_bytes) - before;
    drop(h);
    e1.shutdown().await?;
    e2.shutdown().await?;
    let anchor_after = {
        prewrite_file(&pa, changed).await?;
        let r = seq_write_mibs(&pa, changed).await;
        let _ = std::fs::remove_file(&pa);
        r?
    };
    let anchor = anchor_before.max(anchor_after);
    let ours = bytes as f64 / secs.max(1e-9) / f64::from(1u32 << 20);
    let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
    Ok(ResyncLine {
        bench: "cluster",
        metric: "resync_after_outage_mib_s",
        ours,
        anchor,
        anchor_name: "device_seq_write_1m_qd4_mib_s",
        ratio: if anchor > 0.0 { ours / anchor } else { 0.0 },
        higher_is_better: true,
        chunks: dirty,
        bytes,
        secs,
        anchor_runs_mib_s: [anchor_before, anchor_after],
        export_ms: ms(prof.export_ns, prof0.export_ns),
        import_ms: ms(prof.import_ns, prof0.import_ns),
        flush_ms: ms(prof.flush_ns, prof0.flush_ns),
        meta_ms: ms(prof.meta_ns, prof0.meta_ns),
        flushes: prof.flushes - prof0.flushes,
        cpu_ms: cpu,
        load_1m: load_1m(),
        device_read_mib,
        device_written_mib,
    })
}
