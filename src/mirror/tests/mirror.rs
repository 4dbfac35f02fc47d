//! Mirrored I/O between two engines over real mutual TLS on 127.0.0.x: both replicas hold the
//! same bytes, writes continue while the peer is gone, only the chunks written meanwhile are
//! resynced, a peer away past the grace period is rebuilt elsewhere, and fencing stops an old
//! owner.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use engine::{DiskState, Reachability};
use mirror::{attach_peer, EpochBook};
use transport::ClusterCa;

const SIZE: u64 = 16 * MIB;

async fn write_and_model(
    h: &engine::VdiskHandle,
    model: &mut [u8],
    round: u64,
    chunks: impl Iterator<Item = u64>,
) {
    for c in chunks {
        // Two 4 KiB blocks and one 64 KiB run per chunk.
        for (off, len) in [
            (c * MIB, 4096usize),
            (c * MIB + 300 * 1024, 65536),
            (c * MIB + MIB - 4096, 4096),
        ] {
            let data = pattern(round, off, len);
            h.write(off, &data).await.unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
        }
    }
}

async fn verify_model(h: &engine::VdiskHandle, model: &[u8]) {
    for (i, want) in model.chunks(MIB as usize).enumerate() {
        let mut buf = vec![0u8; want.len()];
        h.read(i as u64 * MIB, &mut buf).await.unwrap();
        assert!(buf == want, "chunk {i}: acknowledged data lost or wrong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_writes_land_identically_on_both_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    let added = attach_peer(&n1.engine, &l12).await.unwrap();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].node_id, 2);
    // Attaching again is a no-op.
    assert!(attach_peer(&n1.engine, &l12).await.unwrap().is_empty());

    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    write_and_model(&h, &mut model, 1, 0..16).await;
    h.flush().await.unwrap();
    verify_model(&h, &model).await;
    let compared = assert_replicas_identical(&n1, &n2, v.id, SIZE).await;
    assert_eq!(compared, 16, "every chunk must have a replica on each node");
    // Node 2's own engine does not see the mirrored objects as its own.
    assert_eq!(n2.engine.pool().degraded_chunks, 0);
    assert!(n1.engine.remotes_in_sync());
    // Discard and snapshot + overwrite go to both replicas too.
    h.discard(2 * MIB, MIB).await.unwrap();
    model[2 * MIB as usize..3 * MIB as usize].fill(0);
    n1.engine.create_snapshot("v", "s1").await.unwrap();
    write_and_model(&h, &mut model, 2, 0..2).await;
    h.flush().await.unwrap();
    assert_replicas_identical(&n1, &n2, v.id, SIZE).await;
    verify_model(&h, &model).await;
    let snap = n1.engine.open_snapshot("v", "s1").unwrap();
    let mut b = vec![0u8; 4096];
    snap.read(0, &mut b).await.unwrap();
    assert_eq!(b, pattern(1, 0, 4096), "snapshot keeps the old contents");
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_away_then_back_resyncs_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let mut n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    write_and_model(&h, &mut model, 1, 0..16).await;
    h.flush().await.unwrap();

    // Phase 1: the peer dies while idle; exactly 3 chunks are written while it is away.
    n2.stop_server();
    let t = Instant::now();
    write_and_model(&h, &mut model, 2, [1u64, 5, 9].into_iter()).await;
    h.flush().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "writes stalled {:?}",
        t.elapsed()
    );
    let st = n1.engine.remote_disks();
    assert_eq!(st[0].reachability, Reachability::Away);
    assert_eq!(st[0].state, DiskState::Active, "away is not failed");
    assert_eq!(st[0].dirty_chunks, 3);
    verify_model(&h, &model).await;
    n2.restart_server().await;
    wait_for("resync", Duration::from_secs(20), || {
        n1.engine.remotes_in_sync()
    })
    .await;
    let st = n1.engine.remote_disks();
    assert_eq!(
        st[0].resynced_chunks, 3,
        "only the chunks written while away are copied"
    );
    assert_eq!(st[0].resyncs, 1);
    assert_eq!(assert_replicas_identical(&n1, &n2, v.id, SIZE).await, 16);

    // Phase 2: the peer dies in the middle of a stream of writes; none of them fails.
    let writer = {
        let h = h.clone();
        tokio::spawn(async move {
            let mut m = Vec::new();
            let mut worst = Duration::ZERO;
            for i in 0..400u64 {
                let off = (i * 37 % 1536) * 4096; // chunks 0..6 only
                let data = pattern(100 + i, off, 4096);
                let t = Instant::now();
                h.write(off, &data).await.unwrap();
                worst = worst.max(t.elapsed());
                m.push((off, data));
                if i % 50 == 0 {
                    h.flush().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            h.flush().await.unwrap();
            (m, worst)
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    n2.stop_server();
    let (m2, worst) = writer.await.unwrap();
    assert!(
        worst < Duration::from_secs(4),
        "a write stalled for {worst:?}"
    );
    for (off, data) in m2 {
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    verify_model(&h, &model).await;
    let dirty = n1.engine.remote_disks()[0].dirty_chunks;
    assert!(
        (1..=6).contains(&dirty),
        "{dirty} chunks dirty; the writer touched 6"
    );
    n2.restart_server().await;
    wait_for("second resync", Duration::from_secs(20), || {
        n1.engine.remotes_in_sync()
    })
    .await;
    let st = n1.engine.remote_disks();
    assert_eq!(st[0].resynced_chunks, 3 + dirty);
    assert_eq!(assert_replicas_identical(&n1, &n2, v.id, SIZE).await, 16);
    verify_model(&h, &model).await;
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}

/// A RAM disk that holds back writes of blocks filled with given byte values until released.
struct Gated {
    inner: blockdev::RamDevice,
    hold: parking_lot::Mutex<Vec<u8>>,
    held: std::sync::atomic::AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gated {
    fn new(name: &str) -> Gated {
        Gated {
            inner: blockdev::RamDevice::new(name, 96 * MIB),
            hold: parking_lot::Mutex::new(Vec::new()),
            held: std::sync::atomic::AtomicUsize::new(0),
            open: tokio::sync::watch::channel(true).0,
        }
    }
    fn hold(&self, fill: u8) {
        self.hold.lock().push(fill);
        self.open.send_replace(false);
    }
    fn release(&self) {
        self.hold.lock().clear();
        self.open.send_replace(true);
    }
    fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl blockdev::BlockDevice for Gated {
    fn info(&self) -> &blockdev::DeviceInfo {
        self.inner.info()
    }
    fn read_at(
        &self,
        offset: u64,
        buf: blockdev::AlignedBuf,
    ) -> blockdev::BoxFuture<'_, blockdev::Result<blockdev::AlignedBuf>> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(
        &self,
        offset: u64,
        data: blockdev::WriteBuf,
    ) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        Box::pin(async move {
            let first = data.as_slice().first().copied();
            let held = first.is_some_and(|f| {
                self.hold.lock().contains(&f) && data.as_slice().iter().all(|b| *b == f)
            });
            if held {
                self.held.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let mut open = self.open.subscribe();
                let _ = open.wait_for(|o| *o).await;
            }
            self.inner.write_at(offset, data).await
        })
    }
    fn flush(&self) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        self.inner.discard(offset, len)
    }
}

/// A write the owner gave up while the peer was still applying it (its guest request
/// cancelled). Before, the peer's copy took that write *after* the owner had moved on: the
/// chunk was reconciled and written again, then the abandoned write landed on the peer, so
/// the replicas differed (each valid by its checksums) and a fail-over would read the
/// abandoned write instead of the acknowledged one. Now the replica is left behind at once
/// and comes back under a new session, which the peer opens only once the old session's
/// mutations have ended; the resync then copies the chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_mid_flight_never_lands_on_the_peer_afterwards() {
    late_write_on_the_peer(true).await;
}

/// The same with a peer slower than the call timeout: the write is acknowledged on the
/// owner alone (the peer left behind) while the peer still applies it. Before, the heartbeat
/// opened a new session at once, the resync copied the chunk, and the slow write landed
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_timed_out_never_lands_on_the_peer_after_the_resync() {
    late_write_on_the_peer(false).await;
}

/// Block 0 is written 0xbb while the peer's device holds that write; the caller gives it up
/// (`abort`) or it times out; then 0xcc is written and acknowledged. Whatever the peer does
/// with 0xbb meanwhile, both replicas end up 0xcc.
async fn late_write_on_the_peer(abort: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let gate = Arc::new(Gated::new("n2d0"));
    let n2 = Node::start_on(&ca, 2, "127.0.0.3", vec![gate.clone()], dir.path()).await;
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    h.write(0, &[0xaa; 4096]).await.unwrap();
    h.flush().await.unwrap();

    gate.hold(0xbb);
    let w = {
        let h = h.clone();
        tokio::spawn(async move { h.write(0, &[0xbb; 4096]).await })
    };
    wait_for(
        "the peer to start the write",
        Duration::from_secs(10),
        || gate.held() == 1,
    )
    .await;
    if abort {
        w.abort();
        assert!(w.await.unwrap_err().is_cancelled());
    } else {
        // Acknowledged once the peer is left behind (call timeout 1.5 s).
        w.await.unwrap().unwrap();
    }
    assert_eq!(
        n1.engine.remote_disks()[0].reachability,
        Reachability::Away,
        "the replica is left behind at once"
    );
    h.write(0, &[0xcc; 4096]).await.unwrap();
    h.flush().await.unwrap();
    // While the late write still runs on the peer, its replica cannot come back.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) && !n1.engine.remotes_in_sync() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let early = n1.engine.remotes_in_sync();
    gate.release();
    assert!(
        !early,
        "resynced while a write of the old session was still running on the peer"
    );
    resynced_and_identical(&n1, &n2, &h, v.id, &[(0, 0xcc)], 1).await;
}

/// The peer has two disks, a and b. A write on a (session S) hangs on a's device; b's
/// replica goes away (a write given up) and reopens under S+1, which the peer answers only
/// once a's S write has ended; meanwhile a write of S+1 on a hangs too, and then a's S write is
/// given up. Checks: (1) b reopening never holds a's new writes back (before: the reopen waited
/// for a's write with an exclusive lock that queued every later write of this node behind it,
/// so they timed out and a went away too); (2) a reopens only once its S+1 write has an
/// outcome, so that write cannot land after a's resync either (before: a reopened under S+1
/// at once and the peer, at S+1 already, waited for nothing). The link's call timeout is 5 s
/// here, so no write times out on its own while the test looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_holds_back_neither_the_other_disks_nor_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let (ga, gb) = (Arc::new(Gated::new("n2a")), Arc::new(Gated::new("n2b")));
    let devs: Vec<Arc<dyn blockdev::BlockDevice>> = vec![ga.clone(), gb.clone()];
    let n2 = Node::start_on(&ca, 2, "127.0.0.3", devs, dir.path()).await;
    let cfg = mirror::MirrorConfig {
        call_timeout: Duration::from_secs(5),
        ..fast_cfg()
    };
    let l12 = mirror::PeerLink::new(
        n2.id,
        n2.addr,
        &n1.identity,
        Arc::new(EpochBook::new(1)),
        cfg,
    )
    .unwrap();
    attach_peer(&n1.engine, &l12).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    write_and_model(&h, &mut model, 1, 0..16).await;
    h.flush().await.unwrap();
    // Which of node 2's disks holds each chunk.
    let hosted = mirror::wire::hosted_id(1, v.id);
    let on = |disk: &str| -> Vec<u64> {
        let (_, r) = n2
            .engine
            .local_replicas()
            .into_iter()
            .find(|(d, _)| d.name == disk)
            .unwrap();
        let mut c: Vec<u64> = r
            .objects()
            .into_iter()
            .filter(|o| o.vdisk == hosted)
            .map(|o| o.chunk)
            .collect();
        c.sort();
        c
    };
    let (on_a, on_b) = (on("n2a"), on("n2b"));
    assert!(on_a.len() >= 3 && !on_b.is_empty(), "a {on_a:?} b {on_b:?}");
    let (x, y, w, z) = (on_a[0] * MIB, on_a[1] * MIB, on_a[2] * MIB, on_b[0] * MIB);
    let reach = |name: &str| {
        n1.engine
            .remote_disks()
            .into_iter()
            .find(|d| d.name.ends_with(name))
            .unwrap()
            .reachability
    };
    let spawn_write = |at: u64, fill: u8| {
        let h = h.clone();
        tokio::spawn(async move { h.write(at, &[fill; 4096]).await })
    };

    ga.hold(0xbb);
    let w1 = spawn_write(x, 0xbb);
    wait_for("a to hold the first write", Duration::from_secs(10), || {
        ga.held() == 1
    })
    .await;
    gb.hold(0xdd);
    let wb = spawn_write(z, 0xdd);
    wait_for("b to hold its write", Duration::from_secs(10), || {
        gb.held() == 1
    })
    .await;
    wb.abort();
    assert!(wb.await.unwrap_err().is_cancelled());
    assert_eq!(reach("n2b"), Reachability::Away);
    // b's heartbeats (every 100 ms) now ask for the new session, which waits for a's write.
    tokio::time::sleep(Duration::from_millis(400)).await;
    ga.hold(0xee);
    let w2 = spawn_write(y, 0xee);
    wait_for(
        "a to hold the second write",
        Duration::from_secs(10),
        || ga.held() == 2,
    )
    .await;
    // (1) a's other writes go on while b waits to come back.
    for i in 0..4u64 {
        let t = Instant::now();
        h.write(w + i * 4096, &[0x11; 4096]).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "a write to disk a took {:?} while b reopened",
            t.elapsed()
        );
    }
    assert_eq!(reach("n2a"), Reachability::Up, "a is not held back by b");
    gb.release();
    // (2) a's first write given up: a reopens once its second one has an outcome.
    w1.abort();
    assert!(w1.await.unwrap_err().is_cancelled());
    assert_eq!(reach("n2a"), Reachability::Away);
    h.write(x, &[0xcc; 4096]).await.unwrap();
    h.flush().await.unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) && reach("n2a") == Reachability::Away {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let early = reach("n2a");
    ga.release();
    assert_eq!(
        early,
        Reachability::Away,
        "a came back while its writes were still running on the peer"
    );
    w2.await.unwrap().unwrap();
    resynced_and_identical(&n1, &n2, &h, v.id, &[(x, 0xcc), (y, 0xee)], 16).await;
}

/// Waits for the peer's replicas to be back in sync (each resynced once: no replica kept
/// knocking the others away), checks that each `(offset, fill)` block reads as acknowledged
/// and that both nodes hold the same `chunks` chunks, then shuts down.
async fn resynced_and_identical(
    n1: &Node,
    n2: &Node,
    h: &engine::VdiskHandle,
    vid: u64,
    blocks: &[(u64, u8)],
    chunks: usize,
) {
    wait_for("resync", Duration::from_secs(20), || {
        n1.engine.remotes_in_sync()
    })
    .await;
    for d in n1.engine.remote_disks() {
        assert_eq!(d.resyncs, 1, "{} left behind and resynced once", d.name);
    }
    let mut got = vec![0u8; 4096];
    for &(at, fill) in blocks {
        h.read(at, &mut got).await.unwrap();
        assert!(
            got.iter().all(|b| *b == fill),
            "the acknowledged write reads at {at}"
        );
    }
    // Let any straggler land before comparing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(assert_replicas_identical(n1, n2, vid, SIZE).await, chunks);
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}

/// A node's sessions start at its clock. After the clock went back (a clock ahead of time
/// set right, then a restart), they start below the floor its predecessor left on the peer.
/// Before, every change sent there was refused as from an old session, for good: the replica
/// stayed away (and was rebuilt elsewhere after the grace period). Now the node moves its
/// sessions past the peer's floor and the replica comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_behind_the_peers_floor_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let behind = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The predecessor: its later session is the peer's floor for node 1.
    let ahead = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    ahead.disks().await.unwrap();
    drop(ahead);
    attach_peer(&n1.engine, &behind).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    write_and_model(&h, &mut model, 1, 0..16).await;
    h.flush().await.unwrap();
    wait_for("the replica in sync", Duration::from_secs(15), || {
        n1.engine.remotes_in_sync()
    })
    .await;
    assert_eq!(assert_replicas_identical(&n1, &n2, v.id, SIZE).await, 16);
    verify_model(&h, &model).await;
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}

/// The peer's member moved (a new address): its replicas are called there and come back,
/// resyncing only what was written meanwhile. Before, the link kept calling the old address:
/// the replicas stayed away until the grace period gave their disks up and rebuilt their data
/// elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_moved_is_called_at_its_new_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let mut n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    write_and_model(&h, &mut model, 1, 0..16).await;
    h.flush().await.unwrap();
    n2.move_server("127.0.0.4").await;
    write_and_model(&h, &mut model, 2, [2u64, 7].into_iter()).await;
    h.flush().await.unwrap();
    assert_eq!(n1.engine.remote_disks()[0].reachability, Reachability::Away);
    l12.retarget(n2.addr).await;
    assert_eq!(l12.addr(), n2.addr);
    wait_for("the replica back in sync", Duration::from_secs(15), || {
        n1.engine.remotes_in_sync()
    })
    .await;
    let st = &n1.engine.remote_disks()[0];
    assert_eq!(st.state, DiskState::Active);
    assert_eq!(st.resynced_chunks, 2, "only the chunks written meanwhile");
    assert_eq!(assert_replicas_identical(&n1, &n2, v.id, SIZE).await, 16);
    verify_model(&h, &model).await;
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_away_past_grace_is_rebuilt_on_other_disks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 2, dir.path()).await;
    let mut n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    n1.engine.set_remote_grace(Duration::from_secs(1));
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    write_and_model(&h, &mut model, 1, 0..8).await;
    h.flush().await.unwrap();
    n2.stop_server();
    write_and_model(&h, &mut model, 2, 0..2).await;
    wait_for("remote disk failed", Duration::from_secs(15), || {
        n1.engine.remote_disks()[0].state == DiskState::Failed
    })
    .await;
    assert!(n1.engine.wait_rebalanced(Duration::from_secs(30)).await);
    assert_eq!(
        n1.engine.pool().degraded_chunks,
        0,
        "redundancy rebuilt on node 1's disks"
    );
    verify_model(&h, &model).await;
    n1.engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_fences_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let mut n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let n3 = Node::start(&ca, 3, "127.0.0.4", 1, dir.path()).await;
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    h.write(0, &pattern(1, 0, 8192)).await.unwrap();
    h.flush().await.unwrap();

    // Node 3 takes the disk over at epoch 2 on node 2's replica server.
    let l32 = link(&n3, &n2, Arc::new(EpochBook::new(1)));
    l32.raise_for(1, v.id, 2).await.unwrap();
    assert_eq!(
        n2.server.epochs().current(mirror::wire::hosted_id(1, v.id)),
        2
    );
    let err = h.write(0, &pattern(2, 0, 4096)).await.unwrap_err();
    assert!(err.to_string().contains("fenced"), "{err}");
    assert_eq!(
        n1.engine.remote_disks()[0].reachability,
        Reachability::Up,
        "fencing must not look like an absent peer (that would let the old owner go on alone)"
    );
    // Lowering is refused; the epoch survives a restart of the server.
    assert!(l32.raise_for(1, v.id, 1).await.is_err());
    n2.restart_server().await;
    assert_eq!(
        n2.server.epochs().current(mirror::wire::hosted_id(1, v.id)),
        2
    );
    // Let node 1 notice the restart and reconnect (a write on the cut connection would only
    // find the peer away and be recorded for resync, which the fence then refuses).
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for("peer up again", Duration::from_secs(10), || {
        let st = &n1.engine.remote_disks()[0];
        st.reachability == Reachability::Up && st.dirty_chunks == 0
    })
    .await;
    let err = h.write(4096, &pattern(3, 4096, 4096)).await.unwrap_err();
    assert!(err.to_string().contains("fenced"), "after restart: {err}");
    // The new owner writes fine with its epoch.
    let disks = l32.disks().await.unwrap();
    let r = l32.open_disk(&disks[0]).await.unwrap();
    let obj = store::ObjectId {
        vdisk: v.id,
        chunk: 0,
    };
    let buf = blockdev::AlignedBuf::from_slice(&pattern(4, 0, 4096)).into_write();
    let crcs: Arc<[u32]> = store::block_crcs(buf.as_slice()).into();
    use engine::Replica;
    r.write_with_crcs(obj, 0, buf, crcs, 1, 0).await.unwrap();
    assert_eq!(r.reachability(), Reachability::Up);
    let back = r.read(obj, 0, 1, u64::MAX).await.unwrap();
    assert_eq!(&back[..4096], &pattern(4, 0, 4096)[..]);
    n1.engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unauthorised_requests_get_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    // Bytes that are not a request.
    let junk = transport::Client::<u64, mirror::wire::Resp>::new(
        n2.addr,
        transport::node_server_name(2),
        transport::client_tls_config(&n1.identity).unwrap(),
        transport::ClientConfig::default(),
    );
    let e = junk.call(&u64::MAX).await.unwrap_err();
    assert!(e.to_string().contains("bad request"), "{e}");
    // A well-formed request the server must refuse (bad size), on the same connection.
    let typed = transport::Client::<mirror::wire::Req, mirror::wire::Resp>::new(
        n2.addr,
        transport::node_server_name(2),
        transport::client_tls_config(&n1.identity).unwrap(),
        transport::ClientConfig::default(),
    );
    let disk = n2.server.disks()[0].id.clone();
    let r = typed
        .call(&mirror::wire::Req::Read {
            disk: disk.clone(),
            obj: store::ObjectId { vdisk: 1, chunk: 0 },
            block: 0,
            nblocks: 100_000,
            at_gen: 1,
        })
        .await
        .unwrap();
    assert!(
        matches!(r.result, Err(mirror::wire::WireError::BadRequest(_))),
        "{r:?}"
    );
    let r = typed
        .call(&mirror::wire::Req::Ping {
            disk: "nope".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(r.result, Err(mirror::wire::WireError::NoDisk(_))),
        "{r:?}"
    );
    // A client with a certificate from another cluster gets nothing.
    let other = ClusterCa::generate("other").unwrap().issue(1).unwrap();
    let l =
        mirror::PeerLink::new(2, n2.addr, &other, Arc::new(EpochBook::new(1)), fast_cfg()).unwrap();
    assert!(l.disks().await.is_err());
    // The server still serves.
    let r = typed.call(&mirror::wire::Req::Ping { disk }).await.unwrap();
    assert!(r.result.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_with_the_same_vdisk_id_never_mix_on_a_holder() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let n3 = Node::start(&ca, 3, "127.0.0.4", 1, dir.path()).await;
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    let l32 = link(&n3, &n2, Arc::new(EpochBook::new(1)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    attach_peer(&n3.engine, &l32).await.unwrap();
    // Engine virtual disk ids are per node: both owners call theirs 1.
    let v1 = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let v3 = n3.engine.create_vdisk("v", SIZE).await.unwrap();
    assert_eq!(v1.id, v3.id);
    let h1 = n1.engine.open_vdisk("v").unwrap();
    let h3 = n3.engine.open_vdisk("v").unwrap();
    let (mut m1, mut m3) = (vec![0u8; SIZE as usize], vec![0u8; SIZE as usize]);
    write_and_model(&h1, &mut m1, 1, 0..4).await;
    write_and_model(&h3, &mut m3, 3, 0..4).await;
    h1.flush().await.unwrap();
    h3.flush().await.unwrap();
    assert_eq!(assert_replicas_identical(&n1, &n2, v1.id, SIZE).await, 4);
    assert_eq!(assert_replicas_identical(&n3, &n2, v3.id, SIZE).await, 4);
    verify_model(&h1, &m1).await;
    verify_model(&h3, &m3).await;
    // Each owner is told about its own copies only.
    let d = l12.disks().await.unwrap();
    let r = l12.open_disk(&d[0]).await.unwrap();
    assert_eq!(
        engine::Replica::objects(r.as_ref()).len(),
        4,
        "node 3's copies are not node 1's"
    );
    // Fencing is per owner: node 1 raising its disk's epoch does not stop node 3's writes.
    l12.raise(v1.id, 5).await.unwrap();
    h3.write(0, &pattern(9, 0, 4096)).await.unwrap();
    h1.write(0, &pattern(9, 0, 4096)).await.unwrap();
    assert_eq!(
        n2.server
            .epochs()
            .current(mirror::wire::hosted_id(1, v1.id)),
        5
    );
    assert_eq!(
        n2.server
            .epochs()
            .current(mirror::wire::hosted_id(3, v3.id)),
        1
    );
    n1.engine.shutdown().await.unwrap();
    n3.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}

/// Scrub compares a chunk's replica here with its copy on the peer by their version records
/// (metadata over the wire, no data): equal chunks are counted as compared and left alone; a
/// peer copy that differs (each copy valid by its own checksums: what two overlapping writes
/// recorded in different orders leave) is found and made equal to the owner's replica again.
/// Before, scrub compared only replicas on the same node, which in a two-node layout (one
/// replica here, one there) is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_compares_a_chunk_with_its_copy_on_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(1)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    let size = 4 * MIB;
    let v = n1.engine.create_vdisk("v", size).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; size as usize];
    write_and_model(&h, &mut model, 1, 0..4).await;
    h.flush().await.unwrap();

    let scrub = || async {
        n1.engine.start_scrub().unwrap();
        assert!(
            n1.engine.wait_scrub(Duration::from_secs(60)).await,
            "scrub never ended"
        );
        n1.engine.stats().scrub
    };
    let s = scrub().await;
    assert_eq!(
        (
            s.chunks_compared,
            s.replicas_differed,
            s.replicas_not_compared
        ),
        (4, 0, 0),
        "{s:?}"
    );

    // The peer's copy of chunk 1, block 0, rewritten in place (same generation, other bytes).
    let pobj = store::ObjectId {
        vdisk: mirror::wire::hosted_id(n1.id, v.id),
        chunk: 1,
    };
    let (_, r) = n2
        .engine
        .local_replicas()
        .into_iter()
        .find(|(_, r)| r.objects().contains(&pobj))
        .unwrap();
    let records = r.version_records(pobj).await.unwrap().unwrap();
    let gen = records.iter().find(|x| x.block == 0).unwrap().gen;
    let buf = blockdev::AlignedBuf::from_slice(&[7u8; 4096]).into_write();
    let crcs = store::block_crcs(buf.as_slice()).into();
    r.write_with_crcs(pobj, 0, buf, crcs, gen, 0).await.unwrap();
    assert_eq!(r.read(pobj, 0, 1, u64::MAX).await.unwrap()[..], [7u8; 4096]);

    let s = scrub().await;
    assert_eq!(
        (
            s.chunks_compared,
            s.replicas_differed,
            s.replicas_rewritten,
            s.replicas_not_compared
        ),
        (4, 1, 1, 0),
        "{s:?}"
    );
    assert_replicas_identical(&n1, &n2, v.id, size).await;
    // Equal generations: the source is the chunk's first live holder, here or on the peer
    // (placement decides), so block 0 of chunk 1 reads one value or the other, both replicas
    // alike; everything else as written.
    let mut b0 = vec![0u8; 4096];
    h.read(MIB, &mut b0).await.unwrap();
    assert!(
        b0 == [7u8; 4096] || b0[..] == model[MIB as usize..MIB as usize + 4096],
        "chunk 1, block 0 reads neither version"
    );
    model[MIB as usize..MIB as usize + 4096].copy_from_slice(&b0);
    verify_model(&h, &model).await;
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}
