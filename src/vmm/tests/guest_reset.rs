//! A guest resets its virtio-blk device while writes are in flight on an async disk (the path
//! engine disks take). The disk holds every write until all of the guest's writes arrived, then
//! a while longer, and answers reads at once, so the guest knows its writes are in flight when
//! it resets. The reset must wait for them: they are all answered OK when it returns, nothing
//! reaches the old used ring afterwards, the device starts again and the data reads back.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vmm::backend::{AsyncDisk, IoFuture};
use vmm::{BackendError, DiskBackend, DiskConfig, RamDisk};

/// Writes the guest keeps in flight (its batch of 32 minus the read that follows them).
const WRITES: usize = 31;
/// How long the disk holds the writes once all arrived: far longer than the guest needs from
/// seeing its read answered to writing the reset.
const HOLD: Duration = Duration::from_secs(2);

struct Held {
    rt: tokio::runtime::Handle,
    ram: RamDisk,
    /// Writes started / finished.
    started: AtomicUsize,
    finished: AtomicUsize,
    /// Writes running at once, at most.
    peak: AtomicUsize,
    all_in: tokio::sync::Notify,
}

#[derive(Clone)]
struct HeldDisk(Arc<Held>);

impl DiskBackend for HeldDisk {
    fn size_bytes(&self) -> u64 {
        self.0.ram.size_bytes()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        self.0.ram.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.0.ram.write(offset, data)
    }
    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.0.ram.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.0.ram.write_zeroes(offset, len)
    }
    fn as_async(&self) -> Option<Arc<dyn AsyncDisk>> {
        Some(Arc::new(self.clone()))
    }
}

impl AsyncDisk for HeldDisk {
    fn runtime(&self) -> &tokio::runtime::Handle {
        &self.0.rt
    }
    fn read(
        &self,
        offset: u64,
        mut buf: blockdev::AlignedBuf,
        len: usize,
    ) -> IoFuture<(blockdev::AlignedBuf, Result<(), BackendError>)> {
        let d = self.0.clone();
        Box::pin(async move {
            let r = d.ram.read(offset, &mut buf[..len]);
            (buf, r)
        })
    }
    fn write(
        &self,
        offset: u64,
        buf: blockdev::AlignedBuf,
        len: usize,
    ) -> IoFuture<(Option<blockdev::AlignedBuf>, Result<(), BackendError>)> {
        let d = self.0.clone();
        Box::pin(async move {
            let n = d.started.fetch_add(1, Ordering::SeqCst) + 1;
            d.peak
                .fetch_max(n - d.finished.load(Ordering::SeqCst), Ordering::SeqCst);
            if n >= WRITES {
                d.all_in.notify_waiters();
            } else {
                let all_in = d.all_in.notified();
                tokio::pin!(all_in);
                all_in.as_mut().enable();
                if d.started.load(Ordering::SeqCst) < WRITES {
                    // Bounded, so a guest that never sends them all cannot hang the test.
                    let _ = tokio::time::timeout(Duration::from_secs(60), all_in).await;
                }
            }
            tokio::time::sleep(HOLD).await;
            let r = d.ram.write(offset, &buf[..len]);
            d.finished.fetch_add(1, Ordering::SeqCst);
            (Some(buf), r)
        })
    }
    fn flush(&self) -> IoFuture<Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
    fn discard(&self, offset: u64, len: u64) -> IoFuture<Result<(), BackendError>> {
        let d = self.0.clone();
        Box::pin(async move { d.ram.discard(offset, len) })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<Result<(), BackendError>> {
        let d = self.0.clone();
        Box::pin(async move { d.ram.write_zeroes(offset, len) })
    }
}

#[test]
fn reset_with_writes_in_flight_waits_for_them() {
    if !kvm_or_skip() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let held = Arc::new(Held {
        rt: rt.handle().clone(),
        ram: RamDisk::new(8 << 20),
        started: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        all_in: tokio::sync::Notify::new(),
    });
    let mut cfg = guest_config("reset1", "blk-reset seed=5");
    cfg.disks.push(DiskConfig {
        id: "cairn-test-disk-reset".into(),
        backend: Arc::new(HeldDisk(held.clone())),
        queues: 1,
        queue_size: 256,
    });
    let (reason, out) = run_guest(cfg, Duration::from_secs(120));
    assert_pass(
        &reason,
        &out,
        &[
            "blk-reset-read-first",
            "blk-reset-status-zero",
            "blk-reset-drained",
            "blk-reset-quiet",
            "blk-reset-reinit",
            "blk-reset-data",
        ],
    );
    // Every write was still unanswered when the guest wrote the reset: the reset really had
    // requests in flight to wait for.
    assert!(
        out.contains(&format!("reset-pending {WRITES}\n")),
        "writes answered before the reset was written: {out}"
    );
    assert_eq!(held.started.load(Ordering::SeqCst), WRITES);
    assert_eq!(held.finished.load(Ordering::SeqCst), WRITES);
    assert_eq!(
        held.peak.load(Ordering::SeqCst),
        WRITES,
        "all writes in flight at once"
    );
}
