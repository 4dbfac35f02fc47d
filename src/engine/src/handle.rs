//! `VdiskHandle`: byte-addressed I/O on a virtual disk (or a read-only snapshot of one). Splits
//! requests per chunk, does read-modify-write for unaligned edges (with the chunk's stripe lock
//! held exclusively, so two partial writes to one block cannot lose each other), and takes the
//! fast path for 4 KiB-aligned requests: one buffer copy, both replicas written at once.
//!
//! It never changes metadata and never blocks on a pool-wide lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use store::ObjectId;

use crate::core::{GenGuard, Inner, SnapRt, VdiskRt};
use crate::error::{EngineError, Result};
use crate::io::zero_buf;
use crate::readbuf::ReadData;
use crate::{BLOCK_BYTES, CHUNK_BYTES};

/// Largest single request (bounds memory per call; NBD and virtio requests are far smaller).
pub const MAX_IO_BYTES: u64 = 64 << 20;

/// Handle on a virtual disk (read-write) or one of its snapshots (read-only). Cheap to clone;
/// every clone shares the same disk.
#[derive(Clone)]
pub struct VdiskHandle {
    pub(crate) inner: Arc<Inner>,
    pub(crate) rt: Arc<VdiskRt>,
    pub(crate) snap: Option<Arc<SnapRt>>,
    pub(crate) name: String,
}

impl std::fmt::Debug for VdiskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VdiskHandle({}, id {}, read_only {})",
            self.name,
            self.rt.id,
            self.read_only()
        )
    }
}

/// One chunk-sized piece of a request.
#[derive(Debug, Clone, Copy)]
struct Piece {
    chunk: u64,
    /// Byte offset inside the chunk.
    off: u64,
    len: u64,
    /// Byte offset inside the caller's buffer.
    buf_off: usize,
}

fn pieces(offset: u64, len: u64) -> impl Iterator<Item = Piece> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let chunk = pos / CHUNK_BYTES;
        let off = pos % CHUNK_BYTES;
        let n = (CHUNK_BYTES - off).min(end - pos);
        let p = Piece {
            chunk,
            off,
            len: n,
            buf_off: (pos - offset) as usize,
        };
        pos += n;
        Some(p)
    })
}

/// What a write takes its data from.
enum Data<'a> {
    /// The caller's bytes (copied into an aligned buffer).
    Slice(&'a [u8]),
    /// A buffer handed over whole: block-aligned length, written without a copy.
    Owned(blockdev::WriteBuf),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::Slice(d) => d.len(),
            Data::Owned(b) => b.len(),
        }
    }
}

fn aligned(x: u64) -> bool {
    x.is_multiple_of(BLOCK_BYTES)
}

impl VdiskHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size_bytes(&self) -> u64 {
        self.rt.size_bytes.load(Ordering::Acquire)
    }

    pub fn read_only(&self) -> bool {
        self.snap.is_some()
    }

    fn check(&self, offset: u64, len: u64, write: bool) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::Busy("the engine is shutting down".into()));
        }
        if self.snap.is_none() && self.rt.rolling_back.load(Ordering::Acquire) {
            return Err(EngineError::Busy(format!(
                "{:?} is being rolled back",
                self.name
            )));
        }
        self.not_deleted_meanwhile()?;
        if self.rt.deleting.load(Ordering::Acquire) {
            return Err(EngineError::Busy(format!(
                "{:?} is being deleted",
                self.name
            )));
        }
        if self.snap.is_some() && write {
            return Err(EngineError::ReadOnly(format!(
                "snapshot of {:?} is read-only",
                self.name
            )));
        }
        if len > MAX_IO_BYTES {
            return Err(EngineError::invalid(format!(
                "request of {len} bytes exceeds {MAX_IO_BYTES}"
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes() => Ok(()),
            _ => Err(EngineError::invalid(format!(
                "range {offset}+{len} beyond the end of {:?} ({} bytes)",
                self.name,
                self.size_bytes()
            ))),
        }
    }

    /// The write's generation guard, which also counts it in flight: a shutdown, a rollback
    /// or a delete waits for it, and one that began since `check` refuses it here (they set
    /// their flag, then count the writes in flight; this counts, then reads the flags).
    fn enter_write(&self) -> Result<GenGuard<'_>> {
        let g = self.rt.enter();
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(EngineError::Busy("the engine is shutting down".into()));
        }
        if self.rt.rolling_back.load(Ordering::SeqCst) {
            return Err(EngineError::Busy(format!(
                "{:?} is being rolled back",
                self.name
            )));
        }
        if self.rt.deleting.load(Ordering::SeqCst) {
            return Err(EngineError::Busy(format!(
                "{:?} is being deleted",
                self.name
            )));
        }
        Ok(g)
    }

    /// After a read: a delete of the disk (or of the snapshot read) that began after the
    /// read's checks removes chunks the read may not have reached yet (each waits only for a
    /// read holding its chunk), which then read as zeros, never written; or, for a snapshot,
    /// its versions may be pruned. Such a read fails as if it had begun after the delete
    /// rather than return data the disk never held.
    fn not_deleted_meanwhile(&self) -> Result<()> {
        if self.rt.deleted.load(Ordering::Acquire) {
            return Err(EngineError::not_found(format!(
                "virtual disk {:?} was deleted",
                self.name
            )));
        }
        if self
            .snap
            .as_ref()
            .is_some_and(|s| s.deleted.load(Ordering::Acquire))
        {
            return Err(EngineError::not_found(format!(
                "snapshot of {:?} was deleted",
                self.name
            )));
        }
        Ok(())
    }

    fn obj(&self, chunk: u64) -> ObjectId {
        ObjectId {
            vdisk: self.rt.id,
            chunk,
        }
    }

    fn at_gen(&self) -> u64 {
        self.snap.as_ref().map_or(u64::MAX, |s| s.gen)
    }

    /// Read `buf.len()` bytes at `offset`. Unwritten ranges read as zeros.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let t = Instant::now();
        let len = buf.len() as u64;
        let r = self
            .read_counted(offset, buf)
            .await
            .and_then(|()| self.not_deleted_meanwhile());
        self.rt.io.read.record(len, t, r.is_ok());
        r
    }

    async fn read_counted(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        self.check(offset, len, false)?;
        if len == 0 {
            return Ok(());
        }
        self.inner.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner
            .counters
            .read_bytes
            .fetch_add(len, Ordering::Relaxed);
        if aligned(offset) && aligned(len) {
            return self.read_aligned(offset, buf).await;
        }
        let start = offset - offset % BLOCK_BYTES;
        let end = (offset + len).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_aligned(start, &mut tmp).await?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    async fn read_aligned(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at_gen = self.at_gen();
        let len = buf.len() as u64;
        if offset / CHUNK_BYTES == (offset + len - 1) / CHUNK_BYTES {
            let obj = self.obj(offset / CHUNK_BYTES);
            return self
                .inner
                .read_blocks(obj, (offset % CHUNK_BYTES) / BLOCK_BYTES, at_gen, buf)
                .await;
        }
        let mut futs = Vec::new();
        let mut rest = buf;
        for p in pieces(offset, len) {
            let (head, tail) = rest.split_at_mut(p.len as usize);
            rest = tail;
            futs.push(
                self.inner
                    .read_blocks(self.obj(p.chunk), p.off / BLOCK_BYTES, at_gen, head),
            );
        }
        every_piece(futs).await.map(|_| ())
    }

    /// Read `len` bytes at `offset` into the engine's own buffers, handed over without a copy
    /// (the verified device buffers themselves when the data lies in one run per chunk on the
    /// device). For callers that pass the bytes on (the NBD server sending them on a socket);
    /// same errors and zeros-for-unwritten rule as `read`.
    pub async fn read_owned(&self, offset: u64, len: u64) -> Result<ReadData> {
        let t = Instant::now();
        let r = self
            .read_owned_counted(offset, len)
            .await
            .and_then(|d| self.not_deleted_meanwhile().map(|()| d));
        self.rt.io.read.record(len, t, r.is_ok());
        r
    }

    async fn read_owned_counted(&self, offset: u64, len: u64) -> Result<ReadData> {
        self.check(offset, len, false)?;
        let mut out = ReadData::default();
        if len == 0 {
            return Ok(out);
        }
        self.inner.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.inner
            .counters
            .read_bytes
            .fetch_add(len, Ordering::Relaxed);
        let at_gen = self.at_gen();
        // Whole blocks covering the request; each chunk's piece is one engine buffer.
        let start = offset - offset % BLOCK_BYTES;
        let end = (offset + len).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        if start / CHUNK_BYTES == (end - 1) / CHUNK_BYTES {
            // Inside one chunk (every 4 KiB read): one buffer, nothing to gather.
            let buf = self
                .inner
                .read_blocks_owned(
                    self.obj(start / CHUNK_BYTES),
                    (start % CHUNK_BYTES) / BLOCK_BYTES,
                    ((end - start) / BLOCK_BYTES) as u32,
                    at_gen,
                )
                .await?;
            let from = (offset - start) as usize;
            out.push(buf, from..from + len as usize);
            return Ok(out);
        }
        let ps: Vec<Piece> = pieces(start, end - start).collect();
        let futs = ps.iter().map(|p| {
            self.inner.read_blocks_owned(
                self.obj(p.chunk),
                p.off / BLOCK_BYTES,
                (p.len / BLOCK_BYTES) as u32,
                at_gen,
            )
        });
        let bufs = every_piece(futs).await?;
        for (p, buf) in ps.iter().zip(bufs) {
            // The part of this piece inside [offset, offset + len).
            let abs = start + p.buf_off as u64;
            let from = offset.max(abs) - abs;
            let to = (offset + len).min(abs + p.len) - abs;
            out.push(buf, from as usize..to as usize);
        }
        Ok(out)
    }

    /// Write `data` at `offset`; returns when every live replica holds it.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let t = Instant::now();
        let r = self.write_counted(offset, Data::Slice(data)).await;
        self.rt.io.write.record(data.len() as u64, t, r.is_ok());
        r
    }

    /// Write the first `len` bytes of `buf` at `offset`, taking the buffer: a caller that fills
    /// an aligned buffer itself (virtio-blk gathering guest memory) saves the copy `write` makes.
    /// Block-aligned requests go to the replicas straight from `buf`; others fall back to
    /// `write`'s path. `len` beyond the buffer is an invalid-argument error. The buffer comes
    /// back for reuse unless something still holds it (a replica write that outlived the call).
    pub async fn write_owned(
        &self,
        offset: u64,
        buf: blockdev::AlignedBuf,
        len: usize,
    ) -> (Option<blockdev::AlignedBuf>, Result<()>) {
        let t = Instant::now();
        let (back, r) = if len > buf.len() {
            let e = EngineError::invalid(format!(
                "write of {len} bytes from a {}-byte buffer",
                buf.len()
            ));
            (Some(buf), Err(e))
        } else if aligned(offset) && aligned(len as u64) && len == buf.len() {
            let shared = Arc::new(buf);
            let wb = blockdev::WriteBuf::new(shared.clone());
            let r = self.write_counted(offset, Data::Owned(wb)).await;
            (Arc::try_unwrap(shared).ok(), r)
        } else {
            let r = self.write_counted(offset, Data::Slice(&buf[..len])).await;
            (Some(buf), r)
        };
        self.rt.io.write.record(len as u64, t, r.is_ok());
        (back, r)
    }

    async fn write_counted(&self, offset: u64, data: Data<'_>) -> Result<()> {
        let len = data.len() as u64;
        self.check(offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        self.inner.mark_unclean().await?;
        self.inner.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .counters
            .write_bytes
            .fetch_add(len, Ordering::Relaxed);
        let g = self.enter_write()?;
        let wb = match data {
            // `write_owned` passes its buffer only for whole, aligned blocks.
            Data::Owned(b) => b,
            Data::Slice(d) if aligned(offset) && aligned(len) => {
                blockdev::AlignedBuf::from_slice(d).into_write()
            }
            Data::Slice(d) => {
                for p in pieces(offset, len) {
                    self.write_piece(&g, p, Some(&d[p.buf_off..p.buf_off + p.len as usize]))
                        .await?;
                }
                return Ok(());
            }
        };
        self.write_aligned(&g, offset, wb).await
    }

    /// The fast path: whole blocks, every piece written from (a slice of) one shared buffer.
    async fn write_aligned(
        &self,
        g: &GenGuard<'_>,
        offset: u64,
        wb: blockdev::WriteBuf,
    ) -> Result<()> {
        let len = wb.len() as u64;
        if offset / CHUNK_BYTES == (offset + len - 1) / CHUNK_BYTES {
            return self
                .inner
                .write_blocks(
                    self.obj(offset / CHUNK_BYTES),
                    self.rt.seed,
                    (offset % CHUNK_BYTES) / BLOCK_BYTES,
                    wb,
                    g.gen,
                    g.pin,
                )
                .await;
        }
        let futs = pieces(offset, len).map(|p| {
            let part = wb.slice(p.buf_off..p.buf_off + p.len as usize);
            self.inner.write_blocks(
                self.obj(p.chunk),
                self.rt.seed,
                p.off / BLOCK_BYTES,
                part,
                g.gen,
                g.pin,
            )
        });
        every_piece(futs).await.map(|_| ())
    }

    /// Write one piece of a chunk: whole blocks directly, partial edge blocks by
    /// read-modify-write under the exclusive stripe lock. `data: None` writes zeros.
    async fn write_piece(&self, g: &GenGuard<'_>, p: Piece, data: Option<&[u8]>) -> Result<()> {
        let obj = self.obj(p.chunk);
        let start = p.off - p.off % BLOCK_BYTES;
        let end = (p.off + p.len).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let mut buf = zero_buf((end - start) as usize);
        if aligned(p.off) && aligned(p.len) {
            if let Some(d) = data {
                buf.copy_from_slice(d);
            }
            return self
                .inner
                .write_blocks(
                    obj,
                    self.rt.seed,
                    start / BLOCK_BYTES,
                    buf.into_write(),
                    g.gen,
                    g.pin,
                )
                .await;
        }
        self.inner.ensure_reconciled(obj).await?;
        let mut repairs = Vec::new();
        let result = {
            let _l = self.inner.stripe(obj).write().await;
            let bs = BLOCK_BYTES as usize;
            let n = buf.len();
            let head_partial = !aligned(p.off);
            let tail_partial = !aligned(p.off + p.len);
            let mut r = Ok(());
            if head_partial {
                r = self
                    .inner
                    .read_locked(
                        obj,
                        start / BLOCK_BYTES,
                        u64::MAX,
                        &mut buf[..bs],
                        &mut repairs,
                    )
                    .await;
            }
            if r.is_ok() && tail_partial && (n > bs || !head_partial) {
                r = self
                    .inner
                    .read_locked(
                        obj,
                        (end / BLOCK_BYTES) - 1,
                        u64::MAX,
                        &mut buf[n - bs..],
                        &mut repairs,
                    )
                    .await;
            }
            match r {
                Ok(()) => {
                    let at = (p.off - start) as usize;
                    match data {
                        Some(d) => buf[at..at + d.len()].copy_from_slice(d),
                        None => buf[at..at + p.len as usize].fill(0),
                    }
                    match self.inner.holders_or_place(obj, self.rt.seed) {
                        Ok(h) => {
                            let crcs = crate::io::block_crcs(&buf);
                            let op = crate::io::Op::Write {
                                block: start / BLOCK_BYTES,
                                data: buf.into_write(),
                                crcs,
                            };
                            self.inner.replicate(obj, h, &op, g.gen, g.pin).await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        };
        self.inner.run_repairs(obj, repairs).await;
        result
    }

    /// Make every write acknowledged before this call durable on every live replica.
    pub async fn flush(&self) -> Result<()> {
        let t = Instant::now();
        let r = match self.check(0, 0, false) {
            Ok(()) => {
                self.inner.counters.flushes.fetch_add(1, Ordering::Relaxed);
                self.inner.flush_all().await
            }
            Err(e) => Err(e),
        };
        self.rt.io.flush.record(0, t, r.is_ok());
        r
    }

    /// Free the whole 4 KiB blocks inside the range (they read as zeros afterwards); partial
    /// blocks at the edges are left as they are.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let t = Instant::now();
        let r = match self.check(offset, len, true) {
            Ok(()) => self.zero_range(offset, len, false).await,
            Err(e) => Err(e),
        };
        self.rt.io.discard.record(len, t, r.is_ok());
        r
    }

    /// Make the range read as zeros, freeing whole blocks.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let t = Instant::now();
        let r = match self.check(offset, len, true) {
            Ok(()) => self.zero_range(offset, len, true).await,
            Err(e) => Err(e),
        };
        self.rt.io.discard.record(len, t, r.is_ok());
        r
    }

    async fn zero_range(&self, offset: u64, len: u64, edges: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.inner.mark_unclean().await?;
        self.inner.counters.discards.fetch_add(1, Ordering::Relaxed);
        let g = self.enter_write()?;
        for p in pieces(offset, len) {
            let a = p.off.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
            let b = (p.off + p.len) / BLOCK_BYTES * BLOCK_BYTES;
            if a < b {
                let nblocks = ((b - a) / BLOCK_BYTES) as u32;
                self.inner
                    .discard_blocks(self.obj(p.chunk), a / BLOCK_BYTES, nblocks, g.gen, g.pin)
                    .await?;
            }
            if edges {
                if a >= b {
                    self.write_piece(&g, p, None).await?;
                } else {
                    if p.off < a {
                        self.write_piece(
                            &g,
                            Piece {
                                off: p.off,
                                len: a - p.off,
                                ..p
                            },
                            None,
                        )
                        .await?;
                    }
                    if b < p.off + p.len {
                        self.write_piece(
                            &g,
                            Piece {
                                off: b,
                                len: p.off + p.len - b,
                                ..p
                            },
                            None,
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_on_chunk_boundaries() {
        let v: Vec<_> = pieces(CHUNK_BYTES - 4096, 8192 + 10).collect();
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].chunk, v[0].off, v[0].len, v[0].buf_off),
            (0, CHUNK_BYTES - 4096, 4096, 0)
        );
        assert_eq!(
            (v[1].chunk, v[1].off, v[1].len, v[1].buf_off),
            (1, 0, 4106, 4096)
        );
        assert_eq!(pieces(0, 0).count(), 0);
    }
}

/// The pieces of one request across chunks, each run to its end even when another fails; their
/// results in order, or the first error. A write's piece dropped in flight may be recorded on
/// one replica and never on the other (its chunk must then be reconciled before it serves
/// again; a peer may still apply what was sent) and leaves the chunk's changes in flight
/// before its replicas are done with it; a read's leaves its replica's in-flight count raised
/// for good (read balancing then shuns that disk) and skips the repair of a bad block it found.
async fn every_piece<T>(
    pieces: impl IntoIterator<Item = impl std::future::Future<Output = Result<T>>>,
) -> Result<Vec<T>> {
    futures::future::join_all(pieces)
        .await
        .into_iter()
        .collect()
}

/// A write across chunks whose piece of one chunk fails while the other's is in flight: the
/// other piece runs to its end on every replica (it is never dropped half applied).
#[cfg(test)]
mod piece_tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use blockdev::{AlignedBuf, BlockDevice, BoxFuture, DeviceInfo, RamDevice, WriteBuf};
    use store::ObjectId;

    use crate::core::LiveDisks;
    use crate::{Engine, EngineConfig, CHUNK_BYTES};

    const BS: usize = super::BLOCK_BYTES as usize;

    /// A RAM device whose writes holding block `held` wait until the gate opens.
    struct Gate {
        ram: RamDevice,
        held: parking_lot::Mutex<Option<Vec<u8>>>,
        open: AtomicBool,
        /// Writes holding block `held` fail on the device at once.
        fail: AtomicBool,
        /// Every read waits too until the gate opens.
        hold_reads: AtomicBool,
        waiting: AtomicUsize,
        changed: tokio::sync::Notify,
    }

    impl Gate {
        fn must_wait(&self, data: &[u8]) -> bool {
            !self.open.load(Ordering::Acquire)
                && self
                    .held
                    .lock()
                    .as_ref()
                    .is_some_and(|h| data.chunks(BS).any(|c| c == &h[..]))
        }
        fn open(&self) {
            self.open.store(true, Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    impl BlockDevice for Gate {
        fn info(&self) -> &DeviceInfo {
            self.ram.info()
        }
        fn read_at(
            &self,
            offset: u64,
            buf: AlignedBuf,
        ) -> BoxFuture<'_, blockdev::Result<AlignedBuf>> {
            Box::pin(async move {
                let wait = || {
                    self.hold_reads.load(Ordering::Acquire) && !self.open.load(Ordering::Acquire)
                };
                if wait() {
                    self.waiting.fetch_add(1, Ordering::AcqRel);
                    loop {
                        let n = self.changed.notified();
                        tokio::pin!(n);
                        n.as_mut().enable();
                        if !wait() {
                            break;
                        }
                        n.await;
                    }
                }
                self.ram.read_at(offset, buf).await
            })
        }
        fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, blockdev::Result<()>> {
            Box::pin(async move {
                let held = |h: &Option<Vec<u8>>| {
                    h.as_ref()
                        .is_some_and(|h| data.as_slice().chunks(BS).any(|c| c == &h[..]))
                };
                if self.fail.load(Ordering::Acquire) && held(&self.held.lock()) {
                    return Err(blockdev::BlockError::new(
                        blockdev::ErrorKind::Io,
                        "the gate fails this write",
                    ));
                }
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
                }
                self.ram.write_at(offset, data).await
            })
        }
        fn flush(&self) -> BoxFuture<'_, blockdev::Result<()>> {
            self.ram.flush()
        }
        fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, blockdev::Result<()>> {
            self.ram.discard(offset, len)
        }
    }

    async fn settle(done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// An engine on two gated RAM devices (one replica of every chunk on each), gates open.
    async fn gated_engine() -> (Engine, Vec<Arc<Gate>>) {
        let e = Engine::open(EngineConfig {
            node_id: 1,
            node_name: "t".into(),
        })
        .await
        .unwrap();
        let gates: Vec<Arc<Gate>> = (0..2)
            .map(|i| {
                Arc::new(Gate {
                    ram: RamDevice::new(format!("g{i}"), 64 << 20),
                    held: parking_lot::Mutex::new(None),
                    open: AtomicBool::new(true),
                    fail: AtomicBool::new(false),
                    hold_reads: AtomicBool::new(false),
                    waiting: AtomicUsize::new(0),
                    changed: tokio::sync::Notify::new(),
                })
            })
            .collect();
        for g in &gates {
            e.add_disk(g.clone() as Arc<dyn BlockDevice>).await.unwrap();
        }
        (e, gates)
    }

    /// Before, the pieces of a write across chunks were joined with `try_join_all`: the first
    /// piece to fail dropped the others mid-flight, so a piece already recorded on one
    /// replica was never recorded on the other (the replicas then differ, each valid by its
    /// checksums), and the store's in-flight accounting of the dropped write leaked.
    /// One thread: every step is ordered by yields only.
    #[tokio::test]
    async fn a_failed_piece_does_not_drop_another_half_applied() {
        let (e, gates) = gated_engine().await;
        e.create_vdisk("v", 8 * CHUNK_BYTES).await.unwrap();
        let h = e.open_vdisk("v").unwrap();
        let obj = |chunk| ObjectId {
            vdisk: h.rt.id,
            chunk,
        };
        // Two neighbouring chunks on different stripes.
        let k = (0..7u64)
            .find(|&k| !std::ptr::eq(e.inner.stripe(obj(k)), e.inner.stripe(obj(k + 1))))
            .expect("neighbouring chunks on different stripes");
        let at = (k + 1) * CHUNK_BYTES - BS as u64;
        h.write(at, &[1u8; 2 * BS]).await.unwrap();
        let (first, second) = (obj(k), obj(k + 1));
        let first_holders = e.inner.index.get(first).unwrap();
        // The second chunk's piece is held on the second replica's device.
        *gates[1].held.lock() = Some(vec![0xbb; BS]);
        gates[1].open.store(false, Ordering::Release);
        let lock = e.inner.stripe(first).write().await;
        let mut data = vec![0xaau8; BS];
        data.extend_from_slice(&[0xbb; BS]);
        let w = {
            let h = h.clone();
            tokio::spawn(async move { h.write(at, &data).await })
        };
        settle(|| gates[1].waiting.load(Ordering::Acquire) == 1).await;
        assert_eq!(gates[1].waiting.load(Ordering::Acquire), 1);
        // The first chunk's piece, waiting for its stripe, then fails: no live holder.
        e.inner.index.remove(first);
        e.inner.index.add(first, 999);
        drop(lock);
        settle(|| w.is_finished()).await;
        e.inner.index.remove(first);
        for s in first_holders.as_slice() {
            e.inner.index.add(first, *s);
        }
        gates[1].open();
        assert!(w.await.unwrap().is_err(), "the first chunk's piece failed");
        let live = e.inner.live_disks(e.inner.index.get(second).unwrap());
        assert_eq!(live.len(), 2);
        for d in &live {
            let got = d.replica.read(second, 0, 1, u64::MAX).await.unwrap();
            assert!(
                got.iter().all(|&b| b == 0xbb),
                "the second piece is not on {} (it holds {:#x}...), only on the other replica",
                d.name,
                got[0]
            );
        }
        e.shutdown().await.unwrap();
    }

    /// Disk "v" on a gated engine with 0x11 written at its start: the handle, its chunk 0 and
    /// that chunk's two replica disks.
    async fn one_chunk_written(e: &Engine) -> (super::VdiskHandle, ObjectId, LiveDisks) {
        e.create_vdisk("v", 8 * CHUNK_BYTES).await.unwrap();
        let h = e.open_vdisk("v").unwrap();
        h.write(0, &[0x11u8; BS]).await.unwrap();
        let obj = ObjectId {
            vdisk: h.rt.id,
            chunk: 0,
        };
        let live = e.inner.live_disks(e.inner.index.get(obj).unwrap());
        assert_eq!(live.len(), 2);
        (h, obj, live)
    }

    /// A write whose caller drops it (a client gone, a timeout) after one replica recorded it
    /// and while the other's device write is in flight (held at its gate): the engine, the
    /// handle, the chunk and its two replica disks.
    async fn drop_write_mid_flight() -> (Engine, super::VdiskHandle, ObjectId, LiveDisks) {
        let (e, gates) = gated_engine().await;
        let (h, obj, live) = one_chunk_written(&e).await;
        *gates[1].held.lock() = Some(vec![0xbb; BS]);
        gates[1].open.store(false, Ordering::Release);
        let w = {
            let h = h.clone();
            tokio::spawn(async move { h.write(0, &[0xbb; BS]).await })
        };
        // One replica holds the new data; the other's device write waits at the gate.
        let mut recorded = 0;
        for _ in 0..1000 {
            recorded = 0;
            for d in &live {
                let got = d.replica.read(obj, 0, 1, u64::MAX).await.unwrap();
                recorded += usize::from(got[0] == 0xbb);
            }
            if recorded == 1 && gates[1].waiting.load(Ordering::Acquire) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(recorded, 1, "one replica recorded the write");
        assert_eq!(gates[1].waiting.load(Ordering::Acquire), 1);
        w.abort();
        assert!(w.await.unwrap_err().is_cancelled());
        gates[1].open();
        for d in &live {
            assert_eq!(
                d.inflight.load(Ordering::Relaxed),
                0,
                "{}: in-flight count given back",
                d.name
            );
        }
        (e, h, obj, live)
    }

    /// Before, after a write dropped mid-flight the replicas held different data, each valid
    /// by its checksums, until scrub (a read returned one or the other depending on the
    /// replica serving it), and both disks' in-flight counts stayed raised. Now the chunk is
    /// reconciled before it serves I/O again.
    #[tokio::test]
    async fn a_write_dropped_mid_flight_leaves_the_replicas_agreeing() {
        let (e, h, obj, live) = drop_write_mid_flight().await;
        let mut seen = vec![0u8; BS];
        h.read(0, &mut seen).await.unwrap();
        for d in &live {
            let got = d.replica.read(obj, 0, 1, u64::MAX).await.unwrap();
            assert_eq!(
                got[..],
                seen[..],
                "{} differs from what the disk read returned",
                d.name
            );
        }
        e.shutdown().await.unwrap();
    }

    /// A chunk left suspect by a dropped write that no request touches again is reconciled by
    /// the maintenance pass (else it stayed marked, and every request of the pool looked
    /// itself up among the suspects, for good).
    #[tokio::test]
    async fn a_chunk_left_suspect_is_reconciled_without_a_request() {
        let (e, _h, obj, live) = drop_write_mid_flight().await;
        // The background task runs its pass within half a second; 20 s is a safety net.
        for _ in 0..2000 {
            if e.inner.reconciled(obj) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(e.inner.reconciled(obj), "still suspect");
        let a = live[0].replica.read(obj, 0, 1, u64::MAX).await.unwrap();
        let b = live[1].replica.read(obj, 0, 1, u64::MAX).await.unwrap();
        assert_eq!(a[..], b[..], "the replicas agree");
        e.shutdown().await.unwrap();
    }

    /// A write whose replicas both fail on the device, while the failed disks cannot be
    /// recorded (the metadata refuses changes). Before, the first disk's record failing
    /// returned at once: the second disk's in-flight count stayed raised for good (read
    /// balancing then shunned it).
    #[tokio::test]
    async fn a_failed_disk_not_recorded_gives_back_every_in_flight_count() {
        let (e, gates) = gated_engine().await;
        let (h, _obj, live) = one_chunk_written(&e).await;
        assert_eq!(live.len(), 2);
        for g in &gates {
            *g.held.lock() = Some(vec![0xcc; BS]);
            g.fail.store(true, Ordering::Release);
        }
        e.inner.closed.store(true, Ordering::Release);
        assert!(h.write(0, &[0xcc; BS]).await.is_err());
        e.inner.closed.store(false, Ordering::Release);
        for d in &live {
            assert_eq!(
                d.inflight.load(Ordering::Relaxed),
                0,
                "{}: in-flight count given back",
                d.name
            );
        }
        let _ = e.shutdown().await;
    }

    /// A read whose caller drops it (a client gone, a timeout) while its replica's device
    /// read is in flight gives back that disk's in-flight count. Before, it stayed raised for
    /// good: read balancing then sent the pool's reads to the other replica.
    #[tokio::test]
    async fn a_read_dropped_mid_flight_gives_back_its_in_flight_count() {
        let (e, gates) = gated_engine().await;
        let (h, _obj, live) = one_chunk_written(&e).await;
        for g in &gates {
            g.hold_reads.store(true, Ordering::Release);
            g.open.store(false, Ordering::Release);
        }
        let r = {
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; BS];
                h.read(0, &mut buf).await
            })
        };
        let waiting = || {
            gates
                .iter()
                .map(|g| g.waiting.load(Ordering::Acquire))
                .sum::<usize>()
        };
        settle(|| waiting() == 1).await;
        assert_eq!(waiting(), 1, "the read waits at its device");
        r.abort();
        assert!(r.await.unwrap_err().is_cancelled());
        for g in &gates {
            g.open();
        }
        for d in &live {
            assert_eq!(
                d.inflight.load(Ordering::Relaxed),
                0,
                "{}: in-flight count given back",
                d.name
            );
        }
        e.shutdown().await.unwrap();
    }
}
