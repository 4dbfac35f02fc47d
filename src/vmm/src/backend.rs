//! The storage interface virtio-blk serves, and a RAM-backed implementation.
//!
//! [`DiskBackend`] is synchronous and called from a device's I/O threads (one per queue), so a
//! backend must be `Send + Sync` and handle concurrent calls on disjoint or overlapping ranges.
//! Offsets and lengths are validated by the device before they reach the backend, but backends
//! still check bounds: they are the last line of defence for data. A backend that is async by
//! nature also offers [`AsyncDisk`], which virtio-blk prefers (no thread blocks per request).

use blockdev::AlignedBuf;
use parking_lot::RwLock;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Errors a backend reports; the device turns every one into `VIRTIO_BLK_S_IOERR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Offset/length outside the disk.
    #[error("range {offset}+{len} outside disk of {size} bytes")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Disk size.
        size: u64,
    },
    /// Write to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// The operation is not supported by this backend.
    #[error("operation not supported")]
    Unsupported,
    /// Any other I/O failure.
    #[error("{0}")]
    Io(String),
}

/// Block storage behind a virtio-blk device (the engine's virtual disks, RAM, files).
pub trait DiskBackend: Send + Sync {
    /// Size in bytes (a multiple of 512).
    fn size_bytes(&self) -> u64;
    /// True if writes, discards and write-zeroes must fail.
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError>;
    /// Writes `data` at `offset`; acknowledged writes survive a later `flush`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Makes every acknowledged write durable (the backend's durability meaning).
    fn flush(&self) -> Result<(), BackendError>;
    /// Frees `len` bytes at `offset`; later reads return zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError>;
    /// Writes zeros over `len` bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError>;
    /// Lends the disk's own bytes of `offset..offset+len` to `f`, piece by piece and in order,
    /// as (position in the request, bytes), so the caller copies them once, straight to where
    /// they go (guest memory) instead of through a buffer of its own. `f` returns false when its
    /// destination failed; the read then stops with an error. `None`: the disk keeps no bytes
    /// it can lend (files, the engine); use [`DiskBackend::read`].
    fn read_direct(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, &[u8]) -> bool,
    ) -> Option<Result<(), BackendError>> {
        let _ = (offset, len, f);
        None
    }
    /// The write side of [`DiskBackend::read_direct`]: lends the disk's bytes of
    /// `offset..offset+len` piece by piece for `f` to fill (position in the request, bytes). If
    /// `f` returns false the write fails and, like a failed write on any disk, the range may be
    /// partly written. `None`: use [`DiskBackend::write`].
    fn write_direct(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, &mut [u8]) -> bool,
    ) -> Option<Result<(), BackendError>> {
        let _ = (offset, len, f);
        None
    }
    /// How many requests per queue are worth running at once. 1 (the default) serves requests
    /// inline on the queue thread (best for memory-speed backends); more spreads them over that
    /// many I/O lanes (for backends that block on devices or the network).
    fn concurrency(&self) -> usize {
        1
    }
    /// The host file this disk is, byte for byte (offset 0 of the disk is offset 0 of the file,
    /// over [`DiskBackend::size_bytes`]), if it is one: virtio-blk then reads and writes it
    /// through an io_uring of each queue thread's own, straight from and to guest memory.
    /// Writes through it must mean what [`DiskBackend::write`] means.
    fn host_file(&self) -> Option<Arc<std::fs::File>> {
        None
    }
    /// The same disk as an [`AsyncDisk`] if it has one: virtio-blk then runs its requests as
    /// futures on the backend's runtime instead of blocking a thread on each.
    fn as_async(&self) -> Option<Arc<dyn AsyncDisk>> {
        None
    }
}

/// A boxed future of a backend operation (`'static`: it owns what it needs).
pub type IoFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What [`AsyncDisk::read_owned`] returns: the data as consecutive verified pieces.
pub type OwnedRead = Result<engine::ReadData, BackendError>;

/// The async side of a backend whose I/O is async by nature (the engine). Offsets and lengths
/// come already checked against the disk; buffers are owned by the operation while it runs.
pub trait AsyncDisk: Send + Sync {
    /// The runtime the operations run on.
    fn runtime(&self) -> &tokio::runtime::Handle;
    /// Reads `len` bytes at `offset` into the start of `buf` and gives the buffer back.
    fn read(
        &self,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
    ) -> IoFuture<(AlignedBuf, Result<(), BackendError>)>;
    /// Reads `len` bytes at `offset` into buffers of the disk's own, handed over whole (the
    /// engine's verified device buffers), so the caller copies them once, straight to where they
    /// go. `None`: the disk has no such read; use [`AsyncDisk::read`].
    fn read_owned(&self, offset: u64, len: usize) -> Option<IoFuture<OwnedRead>> {
        let _ = (offset, len);
        None
    }
    /// The engine virtual disk behind this disk, if it is one: virtio-blk then reads the
    /// plain cases straight from a local replica's device on the queue thread's own io_uring
    /// ([`engine::VdiskHandle::plan_direct_read`]; [`crate::virtio::blk_direct`]), everything
    /// else through the methods here.
    fn engine_handle(&self) -> Option<&engine::VdiskHandle> {
        None
    }
    /// Writes the first `len` bytes of `buf` at `offset`; gives the buffer back for reuse
    /// when nothing else holds it any more.
    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
    ) -> IoFuture<(Option<AlignedBuf>, Result<(), BackendError>)>;
    /// Makes every write completed before the call durable.
    fn flush(&self) -> IoFuture<Result<(), BackendError>>;
    /// Frees `len` bytes at `offset` (reads return zeros).
    fn discard(&self, offset: u64, len: u64) -> IoFuture<Result<(), BackendError>>;
    /// Writes zeros over `len` bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<Result<(), BackendError>>;
}

/// Checks `offset+len` lies inside `size`.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BackendError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackendError::OutOfRange { offset, len, size }),
    }
}

/// A disk held in host RAM, split in 2 MiB chunks so unwritten space costs nothing.
pub struct RamDisk {
    size: u64,
    read_only: bool,
    chunks: Vec<RwLock<Option<Chunk>>>,
}

/// Bytes per [`Chunk`]: one x86-64 huge page.
pub(crate) const CHUNK_BYTES: u64 = 2 << 20;

/// One zero-filled chunk of a [`RamDisk`], aligned to its size and marked for transparent huge
/// pages: random 4 KiB requests across a big RAM disk then miss no TLB entry per page (with 4
/// KiB pages each request's copy starts with a page walk through cold page tables).
struct Chunk(std::ptr::NonNull<u8>);

// SAFETY: a Chunk owns its allocation alone (like a Box<[u8]>); shared access goes through
// `&self` (reads) and `&mut self` (writes) only.
unsafe impl Send for Chunk {}
// SAFETY: as above: `&Chunk` only ever reads.
unsafe impl Sync for Chunk {}

impl Chunk {
    const LAYOUT: std::alloc::Layout =
        match std::alloc::Layout::from_size_align(CHUNK_BYTES as usize, CHUNK_BYTES as usize) {
            Ok(l) => l,
            Err(_) => panic!("chunk layout"),
        };

    fn new() -> Chunk {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(Self::LAYOUT) };
        let Some(p) = std::ptr::NonNull::new(p) else {
            std::alloc::handle_alloc_error(Self::LAYOUT)
        };
        // SAFETY: `p` points to CHUNK_BYTES bytes we own, aligned to 2 MiB (a multiple of the
        // page size). The advice only changes how the kernel backs untouched pages; it is asked
        // before the zero fill touches them, and a failure (no THP support) is harmless.
        unsafe {
            libc::madvise(p.as_ptr().cast(), CHUNK_BYTES as usize, libc::MADV_HUGEPAGE);
        }
        // SAFETY: `p` is valid for writes of CHUNK_BYTES bytes (the allocation above).
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0, CHUNK_BYTES as usize) };
        Chunk(p)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the allocation holds CHUNK_BYTES initialized bytes for the Chunk's life, and
        // `&self` excludes writers.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), CHUNK_BYTES as usize) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), CHUNK_BYTES as usize) }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `Chunk::new` with this layout, freed once (here).
        unsafe { std::alloc::dealloc(self.0.as_ptr(), Self::LAYOUT) }
    }
}

/// What [`RamDisk::lend`] lends for chunks never written.
static ZEROS: [u8; 4096] = [0; 4096];

impl RamDisk {
    /// A zero-filled disk of `size_bytes` (rounded up to 512).
    pub fn new(size_bytes: u64) -> Self {
        let size = size_bytes.div_ceil(512) * 512;
        let n = usize::try_from(size.div_ceil(CHUNK_BYTES)).unwrap_or(0);
        Self {
            size,
            read_only: false,
            chunks: (0..n).map(|_| RwLock::new(None)).collect(),
        }
    }

    /// The same disk contents, presented read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Visits each chunk piece of `offset..offset+len` as (chunk index, offset in chunk, length, position in request).
    fn pieces(offset: u64, len: u64, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let idx = (pos / CHUNK_BYTES) as usize;
            let within = pos % CHUNK_BYTES;
            let n = (CHUNK_BYTES - within).min(len - done);
            f(idx, within as usize, n as usize, done as usize);
            done += n;
        }
    }

    /// [`DiskBackend::read_direct`]: chunks never written are lent as zeros.
    fn lend(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        check_range(offset, len as u64, self.size)?;
        let mut ok = true;
        Self::pieces(offset, len as u64, |idx, within, n, at| {
            if !ok {
                return;
            }
            match self.chunks[idx].read().as_ref() {
                Some(c) => ok = f(at, &c.bytes()[within..within + n]),
                None => {
                    let mut done = 0;
                    while ok && done < n {
                        let k = (n - done).min(ZEROS.len());
                        ok = f(at + done, &ZEROS[..k]);
                        done += k;
                    }
                }
            }
        });
        if ok {
            Ok(())
        } else {
            Err(BackendError::Io(
                "destination of a direct read failed".into(),
            ))
        }
    }

    /// [`DiskBackend::write_direct`].
    fn lend_mut(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, &mut [u8]) -> bool,
    ) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        check_range(offset, len as u64, self.size)?;
        let mut ok = true;
        Self::pieces(offset, len as u64, |idx, within, n, at| {
            if !ok {
                return;
            }
            let mut chunk = self.chunks[idx].write();
            let c = chunk.get_or_insert_with(Chunk::new).bytes_mut();
            ok = f(at, &mut c[within..within + n]);
        });
        if ok {
            Ok(())
        } else {
            Err(BackendError::Io("source of a direct write failed".into()))
        }
    }

    fn fill(&self, offset: u64, len: u64, data: Option<&[u8]>, zero_drops: bool) {
        Self::pieces(offset, len, |idx, within, n, at| {
            let mut chunk = self.chunks[idx].write();
            match data {
                Some(d) => {
                    let c = chunk.get_or_insert_with(Chunk::new).bytes_mut();
                    c[within..within + n].copy_from_slice(&d[at..at + n]);
                }
                None if zero_drops && n == CHUNK_BYTES as usize => *chunk = None,
                None => {
                    if let Some(c) = chunk.as_mut() {
                        c.bytes_mut()[within..within + n].fill(0);
                    }
                }
            }
        });
    }
}

impl DiskBackend for RamDisk {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size)?;
        Self::pieces(offset, buf.len() as u64, |idx, within, n, at| {
            match self.chunks[idx].read().as_ref() {
                Some(c) => buf[at..at + n].copy_from_slice(&c.bytes()[within..within + n]),
                None => buf[at..at + n].fill(0),
            }
        });
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        check_range(offset, data.len() as u64, self.size)?;
        self.fill(offset, data.len() as u64, Some(data), false);
        Ok(())
    }

    fn read_direct(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, &[u8]) -> bool,
    ) -> Option<Result<(), BackendError>> {
        Some(self.lend(offset, len, f))
    }

    fn write_direct(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(usize, &mut [u8]) -> bool,
    ) -> Option<Result<(), BackendError>> {
        Some(self.lend_mut(offset, len, f))
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        self.fill(offset, len, None, true);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.discard(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_disk_roundtrip_across_chunks() {
        let d = RamDisk::new(3 << 20);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let off = CHUNK_BYTES - 4096;
        d.write(off, &data).unwrap();
        let mut back = vec![0u8; 8192];
        d.read(off, &mut back).unwrap();
        assert_eq!(back, data);
        d.write_zeroes(off + 100, 200).unwrap();
        d.read(off, &mut back).unwrap();
        assert!(back[100..300].iter().all(|b| *b == 0));
        assert_eq!(back[99], data[99]);
        d.discard(0, 3 << 20).unwrap();
        d.read(off, &mut back).unwrap();
        assert!(back.iter().all(|b| *b == 0));
        assert!(matches!(
            d.read(3 << 20, &mut back),
            Err(BackendError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write(u64::MAX - 10, &back),
            Err(BackendError::OutOfRange { .. })
        ));
        let ro = RamDisk::new(4096).read_only();
        assert_eq!(ro.write(0, &[1]), Err(BackendError::ReadOnly));
    }

    #[test]
    fn ram_disk_lends_its_bytes_piece_by_piece() {
        let d = RamDisk::new(3 << 20);
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let off = CHUNK_BYTES - 4096;
        let mut pieces = Vec::new();
        let r = d.write_direct(off, data.len(), &mut |at, piece| {
            pieces.push((at, piece.len()));
            piece.copy_from_slice(&data[at..at + piece.len()]);
            true
        });
        assert_eq!(r, Some(Ok(())));
        assert_eq!(
            pieces,
            [(0, 4096), (4096, 4096)],
            "cut at the chunk boundary"
        );
        let mut back = vec![0u8; 8192];
        let r = d.read_direct(off, back.len(), &mut |at, piece| {
            back[at..at + piece.len()].copy_from_slice(piece);
            true
        });
        assert_eq!(r, Some(Ok(())));
        assert_eq!(back, data);
        // A destination that fails stops the read at that piece, as an error.
        let mut calls = 0;
        let r = d.read_direct(off, 8192, &mut |_, _| {
            calls += 1;
            false
        });
        assert!(matches!(r, Some(Err(BackendError::Io(_)))));
        assert_eq!(calls, 1);
        let r = d.write_direct(off, 8192, &mut |_, _| false);
        assert!(matches!(r, Some(Err(BackendError::Io(_)))));
        // Bounds and read-only are checked before anything is lent.
        let r = d.read_direct(3 << 20, 512, &mut |_, _| panic!("lent out of range"));
        assert!(matches!(r, Some(Err(BackendError::OutOfRange { .. }))));
        let r = d.write_direct(u64::MAX - 10, 512, &mut |_, _| panic!("lent out of range"));
        assert!(matches!(r, Some(Err(BackendError::OutOfRange { .. }))));
        let ro = RamDisk::new(4096).read_only();
        let r = ro.write_direct(0, 512, &mut |_, _| panic!("lent a read-only disk"));
        assert_eq!(r, Some(Err(BackendError::ReadOnly)));
    }
}
