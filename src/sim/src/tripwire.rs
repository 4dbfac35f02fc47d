//! Power cuts in the middle of an engine operation: a pass-through `BlockDevice` in front of each
//! fault device counts writes and flushes over all disks; when the armed count runs out, every
//! device loses power at once, before that call reaches its device (which then refuses it).
//!
//! Must never: let a call through after the cut, or cut without a seeded, armed count.
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blockdev::{AlignedBuf, BlockDevice, BoxFuture, DeviceInfo, FaultDevice, Result, WriteBuf};

/// Shared by the tripwires of one engine instance.
#[derive(Default)]
pub struct Wire {
    devs: Mutex<Vec<Arc<FaultDevice>>>,
    /// Writes and flushes left before the cut; armed when positive.
    left: AtomicI64,
    fired: AtomicBool,
    /// Unflushed writes the cut dropped or tore.
    lost: AtomicU64,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("fired", &self.fired())
            .finish()
    }
}

impl Wire {
    pub fn new(devs: &[Arc<FaultDevice>]) -> Arc<Wire> {
        Arc::new(Wire {
            devs: Mutex::new(devs.to_vec()),
            left: AtomicI64::new(0),
            fired: AtomicBool::new(false),
            lost: AtomicU64::new(0),
        })
    }

    /// Cut the power at the `n`th write or flush from now (over all disks).
    pub fn arm(&self, n: i64) {
        self.left.store(n, Ordering::SeqCst);
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::SeqCst)
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    async fn tick(&self) -> Result<()> {
        if self.left.load(Ordering::SeqCst) <= 0 || self.left.fetch_sub(1, Ordering::SeqCst) != 1 {
            return Ok(());
        }
        self.fired.store(true, Ordering::SeqCst);
        let devs = self.devs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for r in futures::future::join_all(devs.iter().map(|d| d.power_cut())).await {
            let r = r?;
            self.lost.fetch_add(r.dropped + r.torn, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// One disk behind the wire.
pub struct Tripwire {
    pub dev: Arc<FaultDevice>,
    pub wire: Arc<Wire>,
}

impl BlockDevice for Tripwire {
    fn info(&self) -> &DeviceInfo {
        self.dev.info()
    }

    fn read_at(&self, offset: u64, buf: AlignedBuf) -> BoxFuture<'_, Result<AlignedBuf>> {
        self.dev.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.wire.tick().await?;
            self.dev.write_at(offset, data).await
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.wire.tick().await?;
            self.dev.flush().await
        })
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        self.dev.discard(offset, len)
    }
}
