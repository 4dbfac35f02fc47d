//! Changes of the same blocks in flight at once reach both replicas in one order (else each
//! copy is valid by its checksums but they differ, and a read returns one or the other
//! depending on the replica serving it), and `Engine::shutdown` refuses new writes and waits
//! for those in flight (bounded) before it closes. Each replica's device is a RAM device whose
//! writes of chosen contents wait at a gate: for other contents to have landed on it, or until
//! the test opens it. Deterministic: the tests run on one thread and only count yields.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use blockdev::{AlignedBuf, BlockDevice, BoxFuture, DeviceInfo, RamDevice, WriteBuf};
use common::{cfg, pattern, MIB};
use engine::{Engine, ErrorKind, VdiskHandle, BLOCK_BYTES};
use parking_lot::Mutex;

const BS: usize = BLOCK_BYTES as usize;

/// A write whose data holds `held` waits until `after` has been written to this device (if
/// given) or the gate opens.
struct Rule {
    held: Vec<u8>,
    after: Option<Vec<u8>>,
}

struct Gate {
    ram: RamDevice,
    rules: Mutex<Vec<Rule>>,
    landed: Mutex<Vec<Vec<u8>>>,
    open: AtomicBool,
    waiting: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Gate {
    fn new(name: &str) -> Arc<Gate> {
        Arc::new(Gate {
            ram: RamDevice::new(name, 64 * MIB),
            rules: Mutex::new(Vec::new()),
            landed: Mutex::new(Vec::new()),
            open: AtomicBool::new(true),
            waiting: AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Writes holding `held` wait from now on (until `after` landed here, or `open`).
    fn hold(&self, held: &[u8], after: Option<&[u8]>) {
        self.rules.lock().push(Rule {
            held: held.to_vec(),
            after: after.map(<[u8]>::to_vec),
        });
        self.open.store(false, Ordering::Release);
    }

    /// Lets every held write go, and every later one.
    fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.rules.lock().clear();
        self.changed.notify_waiters();
    }

    /// Writes waiting at the gate now.
    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn has(data: &[u8], block: &[u8]) -> bool {
        data.chunks(BS).any(|c| c == block)
    }

    /// Whether a write of `data` must wait now.
    fn must_wait(&self, data: &[u8]) -> bool {
        if self.open.load(Ordering::Acquire) {
            return false;
        }
        let landed = self.landed.lock();
        self.rules.lock().iter().any(|r| {
            Self::has(data, &r.held)
                && !r
                    .after
                    .as_ref()
                    .is_some_and(|a| landed.iter().any(|l| l == a))
        })
    }
}

impl BlockDevice for Gate {
    fn info(&self) -> &DeviceInfo {
        self.ram.info()
    }

    fn read_at(&self, offset: u64, buf: AlignedBuf) -> BoxFuture<'_, blockdev::Result<AlignedBuf>> {
        self.ram.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, blockdev::Result<()>> {
        Box::pin(async move {
            if self.must_wait(data.as_slice()) {
                self.waiting.fetch_add(1, Ordering::AcqRel);
                loop {
                    let n = self.changed.notified();
                    tokio::pin!(n);
                    n.as_mut().enable();
                    if !self.must_wait(data.as_slice()) {
                        break;
                    }
                    n.await;
                }
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            let blocks: Vec<Vec<u8>> = data.as_slice().chunks(BS).map(<[u8]>::to_vec).collect();
            let r = self.ram.write_at(offset, data).await;
            self.landed.lock().extend(blocks);
            self.changed.notify_waiters();
            r
        })
    }

    fn flush(&self) -> BoxFuture<'_, blockdev::Result<()>> {
        self.ram.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, blockdev::Result<()>> {
        self.ram.discard(offset, len)
    }
}

/// An engine on two gated RAM devices (every chunk has one replica on each).
async fn engine_on(gates: &[Arc<Gate>]) -> Engine {
    let e = Engine::open(cfg()).await.unwrap();
    for g in gates {
        e.add_disk(g.clone() as Arc<dyn BlockDevice>).await.unwrap();
    }
    e
}

async fn setup() -> (Engine, [Arc<Gate>; 2], VdiskHandle, u64) {
    let gates = [Gate::new("g0"), Gate::new("g1")];
    let engine = engine_on(&gates).await;
    let id = engine.create_vdisk("d", 16 * MIB).await.unwrap().id;
    let h = engine.open_vdisk("d").unwrap();
    // The chunk's first write places it on both devices.
    h.write(0, &pattern(1, 8 * BS)).await.unwrap();
    (engine, gates, h, id)
}

/// Block `block` of chunk 0 of disk `id` as each replica holds it.
async fn copies(engine: &Engine, id: u64, block: u64) -> Vec<Vec<u8>> {
    let obj = store::ObjectId {
        vdisk: id,
        chunk: 0,
    };
    let mut out = Vec::new();
    for (_, r) in engine.local_replicas() {
        out.push(r.read(obj, block, 1, u64::MAX).await.unwrap().to_vec());
    }
    out
}

/// Yields until `done` (at most `rounds` times): everything that can run on this thread ran.
async fn settle(rounds: usize, done: impl Fn() -> bool) {
    for _ in 0..rounds {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

fn spawn_write(
    h: &VdiskHandle,
    off: u64,
    data: &[u8],
) -> tokio::task::JoinHandle<engine::Result<()>> {
    let (h, data) = (h.clone(), data.to_vec());
    tokio::spawn(async move { h.write(off, &data).await })
}

#[tokio::test]
async fn overlapping_writes_reach_both_replicas_in_one_order() {
    let (engine, gates, h, id) = setup().await;
    let a = pattern(2, BS);
    let b = pattern(3, BS);
    // Replica 0 would take b then a, replica 1 a then b: each gate lets its write go once the
    // other write landed on its device.
    gates[0].hold(&a, Some(&b));
    gates[1].hold(&b, Some(&a));
    let wa = spawn_write(&h, 0, &a);
    let wb = spawn_write(&h, 0, &b);
    // In one order, the second write waits for the first, which a gate holds: open them.
    settle(1000, || wa.is_finished() && wb.is_finished()).await;
    gates.iter().for_each(|g| g.open());
    wa.await.unwrap().unwrap();
    wb.await.unwrap().unwrap();
    let c = copies(&engine, id, 0).await;
    assert_eq!(c.len(), 2);
    assert!(c[0] == a || c[0] == b, "replica 0 holds one of the writes");
    assert!(c[0] == c[1], "both replicas hold the same last write");
    // A write of other blocks of the chunk is not held up by one in flight.
    gates[0].hold(&a, None);
    let wa = spawn_write(&h, 0, &a);
    settle(1000, || gates[0].waiting() == 1).await;
    h.write(BLOCK_BYTES, &b).await.unwrap();
    gates[0].open();
    wa.await.unwrap().unwrap();
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_discard_waits_for_a_write_in_flight_of_its_blocks() {
    let (engine, gates, h, id) = setup().await;
    // The write lands on replica 1 at once and on replica 0 only once the gate opens.
    let w = pattern(8, BS);
    gates[0].hold(&w, None);
    let ww = spawn_write(&h, 0, &w);
    settle(1000, || gates[0].waiting() == 1).await;
    let dd = {
        let h = h.clone();
        tokio::spawn(async move { h.discard(0, BLOCK_BYTES).await })
    };
    settle(1000, || dd.is_finished()).await;
    gates[0].open();
    ww.await.unwrap().unwrap();
    dd.await.unwrap().unwrap();
    let c = copies(&engine, id, 0).await;
    assert!(c[0] == c[1], "both replicas agree after the discard");
    assert!(c[0] == vec![0u8; BS], "discarded after the write");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rollback_waits_for_a_write_in_flight_on_its_chunk() {
    let (engine, gates, h, id) = setup().await;
    let before = pattern(1, BS);
    engine.create_snapshot("d", "s").await.unwrap();
    // The write lands on replica 1 at once and on replica 0 only once the gate opens.
    let w = pattern(4, BS);
    gates[0].hold(&w, None);
    let ww = spawn_write(&h, 0, &w);
    settle(1000, || gates[0].waiting() == 1).await;
    let rb = {
        let e = engine.clone();
        tokio::spawn(async move { e.rollback("d", "s").await })
    };
    settle(1000, || rb.is_finished()).await;
    gates[0].open();
    ww.await.unwrap().unwrap();
    rb.await.unwrap().unwrap();
    let c = copies(&engine, id, 0).await;
    assert!(c[0] == c[1], "both replicas agree after the rollback");
    assert!(c[0] == before, "rolled back after the write");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_refuses_new_writes_and_waits_for_those_in_flight() {
    let (engine, gates, h, id) = setup().await;
    let w = pattern(5, BS);
    gates[0].hold(&w, None);
    let ww = spawn_write(&h, 0, &w);
    settle(1000, || gates[0].waiting() == 1).await;
    assert_eq!(gates[0].waiting(), 1, "the write waits at replica 0's gate");
    let sd = {
        let e = engine.clone();
        tokio::spawn(async move { e.shutdown().await })
    };
    settle(1000, || sd.is_finished()).await;
    assert!(!sd.is_finished(), "shutdown waits for the write in flight");
    let e = h.write(BLOCK_BYTES, &pattern(7, BS)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "a new write is refused: {e}");
    gates[0].open();
    ww.await.unwrap().unwrap();
    sd.await.unwrap().unwrap();
    // Reopened: both replicas hold the acknowledged write.
    let engine = engine_on(&gates).await;
    let c = copies(&engine, id, 0).await;
    assert!(
        c.len() == 2 && c.iter().all(|x| *x == w),
        "both replicas hold it"
    );
    let mut back = vec![0u8; BS];
    engine
        .open_vdisk("d")
        .unwrap()
        .read(0, &mut back)
        .await
        .unwrap();
    assert!(back == w, "the write reads back");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_on_a_device_that_does_not_answer() {
    let (engine, gates, h, _) = setup().await;
    let w = pattern(6, BS);
    gates[0].hold(&w, None);
    let ww = spawn_write(&h, 0, &w);
    settle(1000, || gates[0].waiting() == 1).await;
    engine.set_shutdown_drain(std::time::Duration::from_millis(50));
    let e = engine.shutdown().await.unwrap_err();
    assert!(e.to_string().contains("still in flight"), "{e}");
    gates[0].open();
    let _ = ww.await.unwrap();
    // Not marked clean: the next open reconciles the replicas.
    let engine = engine_on(&gates).await;
    let mut back = vec![0u8; BS];
    let h = engine.open_vdisk("d").unwrap();
    h.read(0, &mut back).await.unwrap();
    assert!(back == w || back == pattern(1, BS), "old or new");
    engine.shutdown().await.unwrap();
}
