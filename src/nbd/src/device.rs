//! An `NbdExport` over a raw `BlockDevice`: byte-granular requests mapped onto whole blocks.
//!
//! Owns the alignment work only: unaligned edges are read-modify-written under a per-block
//! stripe lock so two unaligned writes to different bytes of one block never lose each other.
//! It never discards where zeros were promised (discard may leave old data).

use std::io;
use std::sync::Arc;

use blockdev::{AlignedBuf, BlockDevice, BlockError, ErrorKind, BLOCK_SIZE};
use futures::future::BoxFuture;
use tokio::sync::{Mutex, MutexGuard};

use crate::NbdExport;

const BS: u64 = BLOCK_SIZE as u64;
const STRIPES: usize = 64;
/// Zeroes are written in pieces of this size.
const ZERO_CHUNK: usize = 1 << 20;

pub struct DeviceExport {
    dev: Arc<dyn BlockDevice>,
    read_only: bool,
    stripes: Vec<Mutex<()>>,
    zeros: blockdev::WriteBuf,
}

fn to_io(e: BlockError) -> io::Error {
    let kind = match e.kind {
        ErrorKind::Misaligned | ErrorKind::OutOfRange => io::ErrorKind::InvalidInput,
        _ => match e.source.as_ref().and_then(|s| s.raw_os_error()) {
            Some(code) => return io::Error::from_raw_os_error(code),
            None => io::ErrorKind::Other,
        },
    };
    io::Error::new(kind, e.to_string())
}

impl DeviceExport {
    pub fn new(dev: Arc<dyn BlockDevice>, read_only: bool) -> Self {
        Self {
            dev,
            read_only,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            zeros: AlignedBuf::zeroed(ZERO_CHUNK).into_write(),
        }
    }

    /// Lock the stripes of the partial edge blocks of `[offset, end)`, in a fixed order.
    async fn lock_edges(&self, offset: u64, end: u64) -> Vec<MutexGuard<'_, ()>> {
        let mut blocks = Vec::with_capacity(2);
        if !offset.is_multiple_of(BS) {
            blocks.push(offset / BS);
        }
        if !end.is_multiple_of(BS) {
            blocks.push(end / BS);
        }
        let mut idx: Vec<usize> = blocks
            .iter()
            .map(|b| (*b % STRIPES as u64) as usize)
            .collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    /// Write `fill(buf)` over `[offset, offset+len)`, keeping the other bytes of edge blocks.
    async fn patch(&self, offset: u64, len: u64, data: Option<&[u8]>) -> io::Result<()> {
        let end = offset + len;
        let start = offset / BS * BS;
        let stop = end.div_ceil(BS) * BS;
        let _edges = self.lock_edges(offset, end).await;
        let mut buf = AlignedBuf::zeroed((stop - start) as usize);
        if !offset.is_multiple_of(BS) {
            let b = self
                .dev
                .read_at(start, AlignedBuf::zeroed(BLOCK_SIZE))
                .await
                .map_err(to_io)?;
            buf[..BLOCK_SIZE].copy_from_slice(&b);
        }
        if !end.is_multiple_of(BS) && (stop - BS > start || offset.is_multiple_of(BS)) {
            let b = self
                .dev
                .read_at(stop - BS, AlignedBuf::zeroed(BLOCK_SIZE))
                .await
                .map_err(to_io)?;
            let n = buf.len();
            buf[n - BLOCK_SIZE..].copy_from_slice(&b);
        }
        let rel = (offset - start) as usize;
        match data {
            Some(d) => buf[rel..rel + d.len()].copy_from_slice(d),
            None => buf[rel..rel + len as usize].fill(0),
        }
        self.dev
            .write_at(start, buf.into_write())
            .await
            .map_err(to_io)
    }
}

impl NbdExport for DeviceExport {
    fn size_bytes(&self) -> u64 {
        self.dev.info().size_bytes
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            if buf.is_empty() {
                return Ok(());
            }
            let end = offset + buf.len() as u64;
            let start = offset / BS * BS;
            let stop = end.div_ceil(BS) * BS;
            let a = AlignedBuf::zeroed((stop - start) as usize);
            let a = self.dev.read_at(start, a).await.map_err(to_io)?;
            let rel = (offset - start) as usize;
            buf.copy_from_slice(&a[rel..rel + buf.len()]);
            Ok(())
        })
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            if data.is_empty() {
                return Ok(());
            }
            if offset.is_multiple_of(BS) && data.len().is_multiple_of(BLOCK_SIZE) {
                let w = AlignedBuf::from_slice(data).into_write();
                return self.dev.write_at(offset, w).await.map_err(to_io);
            }
            self.patch(offset, data.len() as u64, Some(data)).await
        })
    }

    fn flush(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.dev.flush().await.map_err(to_io) })
    }

    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            // Advisory: only whole blocks inside the range are discarded.
            let start = offset.div_ceil(BS) * BS;
            let stop = (offset + len) / BS * BS;
            if stop > start {
                self.dev.discard(start, stop - start).await.map_err(to_io)?;
            }
            Ok(())
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _may_trim: bool,
    ) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let end = offset + len;
            let inner_start = offset.div_ceil(BS) * BS;
            let inner_stop = end / BS * BS;
            if inner_stop <= inner_start {
                // Within one or two blocks: a single patch.
                return if len == 0 {
                    Ok(())
                } else {
                    self.patch(offset, len, None).await
                };
            }
            if offset < inner_start {
                self.patch(offset, inner_start - offset, None).await?;
            }
            let mut pos = inner_start;
            while pos < inner_stop {
                let n = (inner_stop - pos).min(ZERO_CHUNK as u64);
                self.dev
                    .write_at(pos, self.zeros.slice(0..n as usize))
                    .await
                    .map_err(to_io)?;
                pos += n;
            }
            if end > inner_stop {
                self.patch(inner_stop, end - inner_stop, None).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::RamDevice;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unaligned_ops_match_model() {
        let size = 64 * BLOCK_SIZE;
        let ram = Arc::new(RamDevice::new("ram", size as u64));
        let exp = Arc::new(DeviceExport::new(ram.clone(), false));
        let mut model = vec![0u8; size];
        let mut x = 99u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..400u64 {
            let off = next(size as u64 - 1);
            let len = 1 + next((size as u64 - off).min(3 * BS));
            let (o, l) = (off as usize, len as usize);
            match next(4) {
                0 | 1 => {
                    let d: Vec<u8> = (0..l).map(|i| (step as usize + i) as u8 | 1).collect();
                    exp.write(off, &d).await.unwrap();
                    model[o..o + l].copy_from_slice(&d);
                }
                2 => {
                    exp.write_zeroes(off, len, next(2) == 0).await.unwrap();
                    model[o..o + l].fill(0);
                }
                _ => {
                    let mut b = vec![0u8; l];
                    exp.read(off, &mut b).await.unwrap();
                    assert!(b == model[o..o + l], "step {step}: read {off}+{len}");
                }
            }
        }
        assert!(ram.snapshot() == model);
        // Concurrent unaligned writes to different bytes of the same blocks all land.
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let exp = exp.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..32u64 {
                    let off = (i % 4) * BS + t * 256 + 7;
                    exp.write(off, &[t as u8 + 1; 200]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let snap = ram.snapshot();
        for t in 0..16u64 {
            for blk in 0..4u64 {
                let o = (blk * BS + t * 256 + 7) as usize;
                assert!(
                    snap[o..o + 200].iter().all(|&b| b == t as u8 + 1),
                    "lost update"
                );
            }
        }
        exp.trim(1, 3 * BS).await.unwrap();
        let snap = ram.snapshot();
        assert!(
            snap[BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&b| b == 0),
            "whole blocks trimmed"
        );
        assert!(snap[7..200].iter().any(|&b| b != 0), "partial edge kept");
    }
}
