//! What the server exports: the `NbdExport` trait (byte offsets, any alignment; the backend
//! handles alignment), how backend errors become NBD error numbers, and a RAM export for tests.

use std::io;

pub use bytes::Bytes;
pub use futures::future::BoxFuture;

use crate::proto;

/// One exported disk or snapshot. Offsets and lengths are bytes, already checked by the server to
/// lie within `size_bytes()`; the server never calls a mutating method on a read-only export.
pub trait NbdExport: Send + Sync + 'static {
    fn size_bytes(&self) -> u64;

    fn read_only(&self) -> bool;

    /// Fill `buf` with the bytes at `offset`.
    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<()>>;

    /// The `len` bytes at `offset` as buffers the reply is sent from, in order. The default
    /// reads into a new buffer with `read`; an export that has verified buffers of its own (the
    /// engine's) overrides it so the data reaches the socket without a copy. `len` is at most
    /// `MAX_REQUEST_BYTES` (checked by the server).
    fn read_owned(&self, offset: u64, len: u32) -> BoxFuture<'_, io::Result<Vec<Bytes>>> {
        Box::pin(async move {
            let mut buf = vec![0u8; len as usize];
            self.read(offset, &mut buf).await?;
            Ok(vec![Bytes::from(buf)])
        })
    }

    /// Store `data` at `offset` (durable only after a later `flush`).
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>>;

    /// Make every completed write durable.
    fn flush(&self) -> BoxFuture<'_, io::Result<()>>;

    /// The range is unused; later reads may return zeros or old data.
    fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, io::Result<()>>;

    /// Later reads of the range return zeros. `may_trim`: space may be freed to do so (the
    /// client did not set NBD_CMD_FLAG_NO_HOLE).
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> BoxFuture<'_, io::Result<()>>;
}

/// The NBD error number for a backend error: the OS errno if it is one NBD knows, else by kind.
pub fn nbd_errno(e: &io::Error) -> u32 {
    if let Some(code) = e.raw_os_error() {
        let code = code as u32;
        let known = [
            proto::EPERM,
            proto::EIO,
            proto::ENOMEM,
            proto::EINVAL,
            proto::ENOSPC,
            proto::EOVERFLOW,
            proto::ENOTSUP,
            proto::ESHUTDOWN,
        ];
        return if known.contains(&code) {
            code
        } else {
            proto::EIO
        };
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => proto::EPERM,
        io::ErrorKind::InvalidInput => proto::EINVAL,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => proto::ENOSPC,
        io::ErrorKind::OutOfMemory => proto::ENOMEM,
        io::ErrorKind::Unsupported => proto::ENOTSUP,
        _ => proto::EIO,
    }
}

#[cfg(any(test, feature = "test-util"))]
pub use ram::RamExport;

#[cfg(any(test, feature = "test-util"))]
mod ram {
    use std::io;
    use std::sync::atomic::{AtomicU64, Ordering};

    use parking_lot::RwLock;

    use super::{BoxFuture, NbdExport};

    /// A RAM-backed export for tests, counting flushes so FUA handling can be checked.
    pub struct RamExport {
        data: RwLock<Vec<u8>>,
        read_only: bool,
        flushes: AtomicU64,
    }

    impl RamExport {
        pub fn new(size_bytes: usize, read_only: bool) -> Self {
            Self {
                data: RwLock::new(vec![0; size_bytes]),
                read_only,
                flushes: AtomicU64::new(0),
            }
        }

        pub fn contents(&self) -> Vec<u8> {
            self.data.read().clone()
        }

        pub fn set_contents(&self, offset: usize, bytes: &[u8]) {
            self.data.write()[offset..offset + bytes.len()].copy_from_slice(bytes);
        }

        pub fn flushes(&self) -> u64 {
            self.flushes.load(Ordering::Relaxed)
        }

        fn range(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
            let size = self.data.read().len() as u64;
            match offset.checked_add(len) {
                Some(end) if end <= size => Ok(offset as usize..end as usize),
                _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
            }
        }
    }

    impl NbdExport for RamExport {
        fn size_bytes(&self) -> u64 {
            self.data.read().len() as u64
        }

        fn read_only(&self) -> bool {
            self.read_only
        }

        fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<()>> {
            Box::pin(async move {
                let r = self.range(offset, buf.len() as u64)?;
                buf.copy_from_slice(&self.data.read()[r]);
                Ok(())
            })
        }

        fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
            Box::pin(async move {
                let r = self.range(offset, data.len() as u64)?;
                self.data.write()[r].copy_from_slice(data);
                Ok(())
            })
        }

        fn flush(&self) -> BoxFuture<'_, io::Result<()>> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        }

        fn trim(&self, offset: u64, len: u64) -> BoxFuture<'_, io::Result<()>> {
            self.write_zeroes(offset, len, true)
        }

        fn write_zeroes(
            &self,
            offset: u64,
            len: u64,
            _may_trim: bool,
        ) -> BoxFuture<'_, io::Result<()>> {
            Box::pin(async move {
                let r = self.range(offset, len)?;
                self.data.write()[r].fill(0);
                Ok(())
            })
        }
    }
}
