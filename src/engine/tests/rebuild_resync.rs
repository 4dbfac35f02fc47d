//! Resync of a returning peer: only the chunks written while it was away are copied, in
//! batches (one flush of the peer per batch, not one per chunk), and afterwards the peer's copy
//! of every chunk equals the surviving one byte for byte, history included. A peer whose flush
//! fails during the resync gets nothing recorded as resynced: its chunks are resynced again
//! and end up exact.
//!
//! The peer is another engine's local replica behind a wrapper that behaves as the `mirror`
//! crate's remote replica does (away: mutations recorded as dirty objects, reads refused; back:
//! dirty objects wait for the resync) and counts the flushes and imports it receives. The
//! network side is tested in `mirror`.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{AlignedBuf, BoxFuture, WriteBuf};
use common::{pattern, ram_node, MIB};
use engine::{Engine, Reachability, RemoteDisk, Replica, PRUNE_MARK_CHUNK};
use parking_lot::Mutex;
use store::{BlockVersions, ObjectId, ScrubReport, Space, StoreError};

type R<T> = std::result::Result<T, StoreError>;

/// A peer replica that can be taken away and brought back, counting what it receives.
struct Peer {
    inner: Arc<dyn Replica>,
    mode: Mutex<Reachability>,
    dirty: Mutex<BTreeSet<ObjectId>>,
    flushes: AtomicU64,
    imports: AtomicU64,
    /// The next flush fails (and clears this).
    fail_flush: AtomicBool,
}

impl Peer {
    fn new(inner: Arc<dyn Replica>) -> Arc<Peer> {
        Arc::new(Peer {
            inner,
            mode: Mutex::new(Reachability::Up),
            dirty: Mutex::new(BTreeSet::new()),
            flushes: AtomicU64::new(0),
            imports: AtomicU64::new(0),
            fail_flush: AtomicBool::new(false),
        })
    }
    fn away(&self) -> bool {
        *self.mode.lock() == Reachability::Away
    }
    fn go_away(&self) {
        *self.mode.lock() = Reachability::Away;
    }
    fn come_back(&self) {
        *self.mode.lock() = Reachability::Back;
    }
    /// A mutation: recorded as dirty while away, sent otherwise.
    async fn mutate(&self, obj: ObjectId, f: BoxFuture<'_, R<()>>) -> R<()> {
        if self.away() {
            self.dirty.lock().insert(obj);
            return Ok(());
        }
        f.await
    }
}

fn gone() -> StoreError {
    StoreError::Io {
        context: "test peer away".into(),
        source: blockdev::BlockError::new(blockdev::ErrorKind::Gone, "away"),
    }
}

impl Replica for Peer {
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
        if self.away() {
            return Box::pin(async { Err(gone()) });
        }
        self.inner.read(obj, block, n, at_gen)
    }
    fn discard(
        &self,
        obj: ObjectId,
        block: u64,
        n: u32,
        gen: u64,
        pin: u64,
    ) -> BoxFuture<'_, R<()>> {
        Box::pin(self.mutate(obj, self.inner.discard(obj, block, n, gen, pin)))
    }
    fn flush(&self) -> BoxFuture<'_, R<()>> {
        Box::pin(async move {
            if self.away() {
                return Ok(()); // nothing sent, nothing to make durable
            }
            self.flushes.fetch_add(1, Ordering::Relaxed);
            if self.fail_flush.swap(false, Ordering::AcqRel) {
                return Err(StoreError::InvalidArgument("test: flush refused".into()));
            }
            self.inner.flush().await
        })
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
        if self.away() {
            return Box::pin(async { Err(gone()) });
        }
        self.inner.export_object(obj)
    }
    fn import_object(&self, obj: ObjectId, v: Vec<BlockVersions>) -> BoxFuture<'_, R<()>> {
        if !self.away() {
            self.imports.fetch_add(1, Ordering::Relaxed);
        }
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
        *self.mode.lock()
    }
    fn away_since(&self) -> Option<Instant> {
        self.away().then(Instant::now)
    }
    fn dirty_objects(&self) -> Vec<ObjectId> {
        self.dirty.lock().iter().copied().collect()
    }
    fn mark_clean(&self, obj: ObjectId) {
        self.dirty.lock().remove(&obj);
    }
    fn mark_dirty(&self, obj: ObjectId) {
        self.dirty.lock().insert(obj);
        let mut m = self.mode.lock();
        if *m == Reachability::Up {
            *m = Reachability::Back;
        }
    }
    fn resync_done(&self) {
        let mut m = self.mode.lock();
        if *m == Reachability::Back && self.dirty.lock().is_empty() {
            *m = Reachability::Up;
        }
    }
}

/// Node 1 (one disk) with node 2's one disk attached through a [`Peer`]: every chunk has one
/// replica on each node.
async fn two_nodes() -> (Engine, Engine, Arc<Peer>, Arc<dyn Replica>) {
    let e1 = ram_node(1, 1).await;
    let e2 = ram_node(2, 1).await;
    let (info, replica) = e2.local_replicas().into_iter().next().unwrap();
    let peer = Peer::new(replica);
    e1.add_remote_disk(RemoteDisk {
        id: info.id,
        name: "n2:peer".into(),
        node_id: 2,
        size_bytes: info.size_bytes,
        replica: peer.clone(),
    })
    .await
    .unwrap();
    let local = e1
        .local_replicas()
        .into_iter()
        .next()
        .map(|(_, r)| r)
        .unwrap();
    (e1, e2, peer, local)
}

/// Every version of every block of `obj` on `r`: (block, gen, crc, bytes).
async fn history(r: &dyn Replica, obj: ObjectId) -> Vec<(u64, u64, u32, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for b in r.export_object(obj).await.unwrap() {
        for v in b.versions {
            out.push((b.block, v.gen, v.crc, v.data.as_deref().map(<[u8]>::to_vec)));
        }
    }
    out
}

/// Both replicas hold the same chunks with the same history, byte for byte.
async fn assert_replicas_equal(local: &dyn Replica, peer: &Peer) {
    let mut objs = local.objects();
    objs.sort();
    let mut theirs = peer.objects();
    theirs.sort();
    assert_eq!(objs, theirs, "the replicas hold different chunks");
    for obj in objs {
        assert!(
            history(local, obj).await == history(peer, obj).await,
            "chunk {obj} differs between the replicas"
        );
    }
}

async fn wait_in_sync(e: &Engine) {
    let t = Instant::now();
    while !e.remotes_in_sync() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "resync did not finish: {:?}",
            e.remote_disks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 48 MiB written, then 20 chunks rewritten (partly) while the peer is away, with a snapshot
/// between so the copies carry history.
async fn write_while_away(e1: &Engine, peer: &Peer, expect: &mut [u8]) -> usize {
    let h = e1.open_vdisk("v").unwrap();
    peer.go_away();
    let mut touched = 0;
    for (i, c) in (0..48u64).step_by(2).take(20).enumerate() {
        let off = c * MIB + (i as u64 % 7) * 8192;
        let d = pattern(100 + i as u64, 64 * 1024);
        h.write(off, &d).await.unwrap();
        expect[off as usize..off as usize + d.len()].copy_from_slice(&d);
        touched += 1;
        if i == 9 {
            e1.create_snapshot("v", "s1").await.unwrap();
        }
    }
    h.flush().await.unwrap();
    touched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_peer_gets_only_what_changed_in_batches() {
    let (e1, _e2, peer, local) = two_nodes().await;
    e1.create_vdisk("v", 48 * MIB).await.unwrap();
    let h = e1.open_vdisk("v").unwrap();
    let mut expect = pattern(7, (48 * MIB) as usize);
    h.write(0, &expect).await.unwrap();
    h.flush().await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(60)).await);
    assert_eq!(e1.chunks_on_node(2), 48);

    let touched = write_while_away(&e1, &peer, &mut expect).await;
    let dirty = peer.dirty_objects().len();
    assert_eq!(
        dirty, touched,
        "the away peer recorded other chunks than written"
    );
    let (flushes0, imports0) = (
        peer.flushes.load(Ordering::Relaxed),
        peer.imports.load(Ordering::Relaxed),
    );
    peer.come_back();
    wait_in_sync(&e1).await;

    // Only the chunks written while away were copied, with one flush for the whole batch
    // (one per chunk before: 20).
    let st = &e1.remote_disks()[0];
    assert_eq!(st.resynced_chunks, touched as u64);
    assert_eq!(st.resyncs, 1);
    assert_eq!(
        peer.imports.load(Ordering::Relaxed) - imports0,
        touched as u64
    );
    let flushes = peer.flushes.load(Ordering::Relaxed) - flushes0;
    assert!(
        flushes <= 2,
        "{flushes} flushes of the peer for {touched} chunks"
    );
    assert_eq!(peer.reachability(), Reachability::Up);
    assert_replicas_equal(local.as_ref(), &peer).await;
    let mut got = vec![0u8; expect.len()];
    h.read(0, &mut got).await.unwrap();
    assert!(got == expect, "the virtual disk's bytes changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_leaves_nothing_recorded_and_is_resynced_again() {
    let (e1, _e2, peer, local) = two_nodes().await;
    e1.create_vdisk("v", 48 * MIB).await.unwrap();
    let h = e1.open_vdisk("v").unwrap();
    let mut expect = pattern(9, (48 * MIB) as usize);
    h.write(0, &expect).await.unwrap();
    h.flush().await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(60)).await);

    write_while_away(&e1, &peer, &mut expect).await;
    peer.fail_flush.store(true, Ordering::Release);
    peer.come_back();
    wait_in_sync(&e1).await;
    // The refused flush was tried, and whatever it covered was copied again afterwards (or
    // rebuilt by the rebalancer): both replicas exact, no intent left once the pool settles.
    assert!(
        !peer.fail_flush.load(Ordering::Acquire),
        "no flush was tried"
    );
    assert!(e1.wait_rebalanced(Duration::from_secs(60)).await);
    assert_eq!(e1.pool().degraded_chunks, 0);
    assert_eq!(e1.chunks_on_node(2), 48);
    assert_replicas_equal(local.as_ref(), &peer).await;
    let mut got = vec![0u8; expect.len()];
    h.read(0, &mut got).await.unwrap();
    assert!(got == expect, "the virtual disk's bytes changed");
}
