//! The rebuild throttle itself: while guests keep doing I/O, a rebuild's copies stay at or
//! below the "guests busy" ceiling, and they still make progress. Counted with the throttle's
//! own byte counter (`RebuildProfile::charged_bytes`, bumped as each copy lands).
//!
//! Deterministic: the runtime runs on tokio's paused clock (one thread, RAM devices, time
//! advances only when every task waits), so the window below is virtual time and the byte
//! counters are exact, however loaded the machine is. The devices are RAM that takes virtual
//! time in proportion to the bytes moved (as a real disk takes real time), so guest requests
//! arrive while copies run.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockdev::{AlignedBuf, BlockDevice, BoxFuture, DeviceInfo, RamDevice, WriteBuf};
use common::{attach_as_remote, pattern, MIB};
use engine::{Engine, EngineConfig, RebuildLimits};
use tokio::time::Instant;

/// Virtual bandwidth of the test devices (bytes/s).
const DEVICE_BYTES_PER_SEC: u64 = 256 * MIB;

/// A RAM device whose reads and writes take (virtual) time for their size.
struct TimedRam(RamDevice);

async fn take_time(bytes: usize) {
    let ns = bytes as u64 * 1_000_000_000 / DEVICE_BYTES_PER_SEC;
    tokio::time::sleep(Duration::from_nanos(ns)).await;
}

impl BlockDevice for TimedRam {
    fn info(&self) -> &DeviceInfo {
        self.0.info()
    }
    fn read_at(&self, offset: u64, buf: AlignedBuf) -> BoxFuture<'_, blockdev::Result<AlignedBuf>> {
        Box::pin(async move {
            take_time(buf.len()).await;
            self.0.read_at(offset, buf).await
        })
    }
    fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, blockdev::Result<()>> {
        Box::pin(async move {
            take_time(data.len()).await;
            self.0.write_at(offset, data).await
        })
    }
    fn flush(&self) -> BoxFuture<'_, blockdev::Result<()>> {
        self.0.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, blockdev::Result<()>> {
        self.0.discard(offset, len)
    }
}

/// An engine for node `id` with `disks` timed RAM disks of 96 MiB.
async fn node(id: u64, disks: usize) -> Engine {
    let e = Engine::open(EngineConfig {
        node_id: id,
        node_name: format!("n{id}"),
    })
    .await
    .unwrap();
    for i in 0..disks {
        let d: Arc<dyn BlockDevice> =
            Arc::new(TimedRam(RamDevice::new(format!("n{id}d{i}"), 96 * MIB)));
        e.add_disk(d).await.unwrap();
    }
    e
}

/// Node 1 (two disks) with node 2's (two) and node 3's (one) disks attached as remote replicas.
async fn three_nodes() -> (Engine, Engine, Engine) {
    let e1 = node(1, 2).await;
    let e2 = node(2, 2).await;
    let e3 = node(3, 1).await;
    attach_as_remote(&e1, &e2, 2).await;
    attach_as_remote(&e1, &e3, 3).await;
    (e1, e2, e3)
}

#[tokio::test(start_paused = true)]
async fn busy_guests_hold_a_drain_to_its_ceiling() {
    let (e1, _e2, _e3) = three_nodes().await;
    let size = 64 * MIB;
    e1.create_vdisk("v", size).await.unwrap();
    let h = Arc::new(e1.open_vdisk("v").unwrap());
    let data = pattern(11, size as usize);
    h.write(0, &data).await.unwrap();
    h.flush().await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(60)).await);
    let on3 = e1.chunks_on_node(3);
    let ceiling = MIB; // bytes/s while guests are busy
    e1.set_rebuild_limits(RebuildLimits {
        max_bytes_per_sec: 0,
        busy_bytes_per_sec: ceiling,
    });

    // A guest that writes one block about every millisecond (of virtual time; the timer ticks
    // in whole milliseconds), the same data again.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (h, stop) = (h.clone(), stop.clone());
        let data = data.clone();
        tokio::spawn(async move {
            let mut writes = 0u64;
            let blocks = data.len() / 4096;
            while !stop.load(Ordering::Acquire) {
                let b = (writes as usize * 97) % blocks;
                h.write((b * 4096) as u64, &data[b * 4096..(b + 1) * 4096])
                    .await
                    .unwrap();
                writes += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            writes
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;

    let n3 = e1
        .disks()
        .into_iter()
        .find(|d| d.node_id == 3)
        .expect("node 3's disk attached");
    let to_move = on3 * MIB;
    let t0 = Instant::now();
    let b0 = e1.rebuild_profile().charged_bytes;
    e1.remove_disk(&n3.id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let b1 = e1.rebuild_profile().charged_bytes;
    let secs = t0.elapsed().as_secs_f64();
    let p = e1.rebuild_progress();
    stop.store(true, Ordering::Release);
    let writes = writer.await.unwrap();

    let moved = b1 - b0;
    // The bucket's bound: ceiling x time, plus one burst (4 chunks) and one chunk of
    // overdraft, however many copies are in flight (each reserves its chunk when admitted).
    let allowed = (ceiling as f64 * secs) as u64 + 5 * MIB;
    assert!(
        to_move > allowed + MIB,
        "too little to move ({to_move} bytes) for the test to tell"
    );
    assert!(writes >= 1000, "the guest wrote only {writes} times");
    assert!(
        moved <= allowed,
        "moved {moved} bytes in {secs} s under a {ceiling} B/s busy ceiling"
    );
    // Still progressing, at about the ceiling (not starved by the guest).
    assert!(moved >= ceiling * 2, "moved only {moved} bytes in {secs} s");
    assert!(p.running, "the drain ended early: {p:?}");
    assert!(p.guest_busy, "guest I/O not noticed: {p:?}");
    assert_eq!(p.ceiling_bytes_per_sec, ceiling);

    // Guests stop: the drain goes on without a ceiling and finishes; data intact.
    assert!(e1.wait_rebalanced(Duration::from_secs(120)).await);
    assert_eq!(e1.chunks_on_node(3), 0);
    assert_eq!(e1.pool().degraded_chunks, 0);
    let mut back = vec![0u8; data.len()];
    h.read(0, &mut back).await.unwrap();
    assert!(back == data, "data changed by the drain");
}
