//! Resync of a returning peer: only the chunks written while it was away are copied, in
//! batches (one flush of the peer per batch, not one per chunk), and afterwards the peer's copy
//! of every chunk equals the surviving one byte for byte, history included. A peer whose flush
//! fails during the resync gets nothing recorded as resynced: its chunks are resynced again
//! and end up exact. A power cut of every device in the middle of a batched resync or a batched
//! rebuild (triggered by the Nth import, not by time) loses no acknowledged write, and after the
//! restart's reconcile both replicas are equal again.
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

use blockdev::{AlignedBuf, BlockDevice, BoxFuture, FaultDevice, WriteBuf};
use common::{fault_disks, pattern, ram_disks, ram_node, MIB};
use engine::{Engine, EngineConfig, Reachability, RemoteDisk, Replica, PRUNE_MARK_CHUNK};
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
    /// Power cut: when the import counter reaches this (0 = never), every device in `cut`
    /// loses power at once, before that import reaches the peer.
    cut_at: AtomicU64,
    cut: Mutex<Vec<Arc<FaultDevice>>>,
    tripped: AtomicBool,
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
            cut_at: AtomicU64::new(0),
            cut: Mutex::new(Vec::new()),
            tripped: AtomicBool::new(false),
        })
    }
    /// Cut the power of `devs` when this peer is about to receive its `n`th import from now.
    fn arm_cut(&self, n: u64, devs: Vec<Arc<FaultDevice>>) {
        *self.cut.lock() = devs;
        self.cut_at
            .store(self.imports.load(Ordering::Acquire) + n, Ordering::Release);
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
        let mut trip = false;
        if !self.away() {
            let n = self.imports.fetch_add(1, Ordering::AcqRel) + 1;
            trip = n == self.cut_at.load(Ordering::Acquire);
        }
        Box::pin(async move {
            if trip {
                // Every device at one instant (one poll on a one-thread runtime).
                let devs = self.cut.lock().clone();
                for r in futures::future::join_all(devs.iter().map(|d| d.power_cut())).await {
                    r.expect("power cut");
                }
                self.tripped.store(true, Ordering::Release);
            }
            self.mutate(obj, self.inner.import_object(obj, v)).await
        })
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

// ---- Power cuts in the middle of a batched resync and a batched rebuild ----
//
// Each node's disk is a fault device; a peer's import counter cuts the power of every device
// of the surviving nodes at once when it reaches a chosen count (deterministic: the trigger is
// the Nth import, not a time). Then every node restarts from what its devices kept, the
// returning node's disk is attached again, and the restart's reconcile must leave: every
// acknowledged (flushed) write readable, nothing degraded, and both replicas of every chunk
// equal, history included. Chunks hold a few blocks each (the batch logic does not depend on
// their size), so there are more chunks than one batch (128) without much memory.

/// Logical size of the test disks: one chunk per MiB.
const CHUNKS: u64 = 256;

async fn fault_node(id: u64, dev: &Arc<FaultDevice>) -> Engine {
    let e = Engine::open(EngineConfig {
        node_id: id,
        node_name: format!("n{id}"),
    })
    .await
    .unwrap();
    e.add_disk(dev.clone() as Arc<dyn BlockDevice>)
        .await
        .unwrap();
    e
}

async fn attach(host: &Engine, peer_engine: &Engine, id: u64) -> Arc<Peer> {
    let (info, replica) = peer_engine.local_replicas().into_iter().next().unwrap();
    let peer = Peer::new(replica);
    host.add_remote_disk(RemoteDisk {
        id: info.id,
        name: format!("n{id}:peer"),
        node_id: id,
        size_bytes: info.size_bytes,
        replica: peer.clone(),
    })
    .await
    .unwrap();
    peer
}

fn local_of(e: &Engine) -> Arc<dyn Replica> {
    e.local_replicas().into_iter().next().unwrap().1
}

/// What each chunk's first two blocks must hold: the acknowledged writes.
struct Model(Vec<Vec<u8>>);

impl Model {
    /// 8 KiB at the start of each chunk, flushed.
    async fn fill(e: &Engine, seed: u64) -> Model {
        let h = e.open_vdisk("v").unwrap();
        let mut m = Vec::new();
        for c in 0..CHUNKS {
            let d = pattern(seed * 1000 + c, 8192);
            h.write(c * MIB, &d).await.unwrap();
            m.push(d);
        }
        h.flush().await.unwrap();
        Model(m)
    }
    /// Rewrite the second block of chunks `from..to` (a snapshot half-way, so the copies
    /// carry history), flushed: acknowledged.
    async fn rewrite(&mut self, e: &Engine, seed: u64, from: u64, to: u64) {
        let h = e.open_vdisk("v").unwrap();
        for c in from..to {
            let d = pattern(seed * 7919 + c, 4096);
            h.write(c * MIB + 4096, &d).await.unwrap();
            self.0[c as usize][4096..].copy_from_slice(&d);
            if c == (from + to) / 2 {
                e.create_snapshot("v", &format!("s{seed}")).await.unwrap();
            }
        }
        h.flush().await.unwrap();
    }
    /// Every acknowledged write reads back (each read reconciles its chunk first).
    async fn check(&self, e: &Engine, when: &str) {
        let h = e.open_vdisk("v").unwrap();
        let mut got = vec![0u8; 8192];
        for (c, want) in self.0.iter().enumerate() {
            h.read(c as u64 * MIB, &mut got).await.unwrap();
            assert!(got == *want, "{when}: chunk {c} lost acknowledged data");
        }
    }
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(120), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// After a restart: the pool settles, the crash resync ends, nothing is degraded.
async fn settle(e: &Engine, when: &str) {
    assert!(
        e.wait_rebalanced(Duration::from_secs(120)).await,
        "{when}: the pool did not settle"
    );
    wait_for("the crash resync did not end", || {
        !e.stats().rebalance.resync_running
    })
    .await;
    assert!(e.wait_rebalanced(Duration::from_secs(120)).await);
    assert_eq!(e.pool().degraded_chunks, 0, "{when}: degraded chunks left");
}

fn one_thread() -> tokio::runtime::Runtime {
    // One thread: the cut reaches every device in the same instant (one poll).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Node 1 resyncs 160 dirty chunks (two batches) onto node 2; the power of both nodes goes
/// at node 2's `cut_at`th import.
async fn resync_cut(seed: u64, cut_at: u64) {
    let ram = ram_disks(2, 96 * MIB);
    let fd = fault_disks(&ram, seed);
    let e2 = fault_node(2, &fd[1]).await;
    let e1 = fault_node(1, &fd[0]).await;
    let peer = attach(&e1, &e2, 2).await;
    e1.create_vdisk("v", CHUNKS * MIB).await.unwrap();
    let mut model = Model::fill(&e1, seed).await;
    assert!(e1.wait_rebalanced(Duration::from_secs(60)).await);
    assert_eq!(e1.chunks_on_node(2), CHUNKS);

    peer.go_away();
    model.rewrite(&e1, seed, 0, 160).await;
    assert_eq!(peer.dirty_objects().len(), 160);
    peer.arm_cut(cut_at, fd.clone());
    peer.come_back();
    wait_for("the resync never reached the cut", || {
        peer.tripped.load(Ordering::Acquire)
    })
    .await;
    drop(peer);
    drop(e1);
    drop(e2);

    // Restart both nodes from what their devices kept.
    let fd: Vec<Arc<FaultDevice>> = fd.iter().map(|d| Arc::new(d.reopen())).collect();
    let e2 = fault_node(2, &fd[1]).await;
    let e1 = fault_node(1, &fd[0]).await;
    let peer = attach(&e1, &e2, 2).await;
    let when = format!("resync cut at import {cut_at}");
    model.check(&e1, &when).await;
    settle(&e1, &when).await;
    eprintln!("{when}: {:?}", e1.stats().rebalance);
    assert!(e1.remotes_in_sync());
    assert_eq!(e1.chunks_on_node(2), CHUNKS, "{when}");
    assert_replicas_equal(local_of(&e1).as_ref(), &peer).await;
    model.check(&e1, &when).await;
    e1.shutdown().await.unwrap();
    e2.shutdown().await.unwrap();
}

/// Three nodes; node 3 is lost and its share is rebuilt (more chunks than one batch), the
/// power of nodes 1 and 2 going at node 2's `cut_at`th import (as a fraction of the copies
/// it gets, in per mille).
async fn rebuild_cut(seed: u64, cut_permille: u64) {
    let ram = ram_disks(3, 96 * MIB);
    let fd = fault_disks(&ram, seed);
    let e2 = fault_node(2, &fd[1]).await;
    let e3 = fault_node(3, &fd[2]).await;
    let e1 = fault_node(1, &fd[0]).await;
    let p2 = attach(&e1, &e2, 2).await;
    let p3 = attach(&e1, &e3, 3).await;
    e1.create_vdisk("v", CHUNKS * MIB).await.unwrap();
    let mut model = Model::fill(&e1, seed).await;
    model.rewrite(&e1, seed, 0, CHUNKS / 2).await;
    assert!(e1.wait_rebalanced(Duration::from_secs(60)).await);
    // Each chunk has two replicas on two of the three nodes: the rebuild copies the chunks
    // nodes 1 and 3 shared onto node 2 (and those 2 and 3 shared onto node 1).
    let (n1, n3) = (e1.chunks_on_node(1), e1.chunks_on_node(3));
    let onto_2 = n1 + n3 - CHUNKS;
    assert!(onto_2 >= 8, "too few copies onto node 2: {onto_2}");
    let cut_at = (onto_2 * cut_permille / 1000).clamp(1, onto_2);
    let when = format!(
        "rebuild cut at import {cut_at} of {onto_2} ({} to move)",
        n3
    );

    p2.arm_cut(cut_at, vec![fd[0].clone(), fd[1].clone()]);
    e1.set_remote_grace(Duration::ZERO);
    p3.go_away();
    e1.remote_tick().await; // node 3 is given up: its share is rebuilt
    wait_for("the rebuild never reached the cut", || {
        p2.tripped.load(Ordering::Acquire)
    })
    .await;
    drop((p2, p3));
    drop((e1, e2, e3));

    // Nodes 1 and 2 restart; node 3 stays lost.
    let fd: Vec<Arc<FaultDevice>> = fd[..2].iter().map(|d| Arc::new(d.reopen())).collect();
    let e2 = fault_node(2, &fd[1]).await;
    let e1 = fault_node(1, &fd[0]).await;
    let p2 = attach(&e1, &e2, 2).await;
    model.check(&e1, &when).await;
    settle(&e1, &when).await;
    eprintln!("{when}: {:?}", e1.stats().rebalance);
    assert_eq!(e1.chunks_on_node(1), CHUNKS, "{when}");
    assert_eq!(e1.chunks_on_node(2), CHUNKS, "{when}");
    assert_replicas_equal(local_of(&e1).as_ref(), &p2).await;
    model.check(&e1, &when).await;
    e1.shutdown().await.unwrap();
    e2.shutdown().await.unwrap();
}

#[test]
fn power_cut_mid_batched_resync_loses_no_acknowledged_write() {
    let rt = one_thread();
    // In the first batch's copies, at the last copy of the first batch, and in the second
    // batch (the first batch's flush and record overlapping it).
    for (i, cut_at) in [3u64, 128, 150].into_iter().enumerate() {
        rt.block_on(resync_cut(0x5e5 + i as u64, cut_at));
    }
}

#[test]
fn power_cut_mid_batched_rebuild_loses_no_acknowledged_write() {
    let rt = one_thread();
    for (i, permille) in [20u64, 500, 950].into_iter().enumerate() {
        rt.block_on(rebuild_cut(0xb17d + i as u64, permille));
    }
}
