//! A [`DiskBackend`] on a host file or block device (positional I/O, optional O_DIRECT). Used
//! for benchmarks against QEMU on the same file and by nodes that keep a disk in a file.

use crate::backend::{check_range, BackendError, DiskBackend};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// Requests in flight per queue on a file (positional I/O blocks, so lanes give queue depth).
pub const FILE_LANES: usize = 16;

/// A file-backed disk.
pub struct FileDisk {
    file: Arc<File>,
    size: u64,
    read_only: bool,
}

impl FileDisk {
    /// Opens `path`; `direct` bypasses the page cache (buffers are then required to be aligned,
    /// which the virtio-blk bounce buffers are not guaranteed to be, so it is off by default).
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, BackendError> {
        let mut o = OpenOptions::new();
        o.read(true).write(!read_only);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o
            .open(path)
            .map_err(|e| BackendError::Io(format!("open {}: {e}", path.display())))?;
        let size = file
            .metadata()
            .map_err(|e| BackendError::Io(format!("stat: {e}")))?
            .len()
            & !511;
        Ok(Self {
            file: Arc::new(file),
            size,
            read_only,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> Result<(), BackendError> {
        let (o, l) = (
            libc::off_t::try_from(offset).map_err(|_| BackendError::Unsupported)?,
            libc::off_t::try_from(len).map_err(|_| BackendError::Unsupported)?,
        );
        // SAFETY: plain syscall on an fd we own; no memory is passed.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, o, l) };
        if r == 0 {
            Ok(())
        } else {
            Err(BackendError::Io(format!(
                "fallocate: {}",
                std::io::Error::last_os_error()
            )))
        }
    }
}

impl DiskBackend for FileDisk {
    fn size_bytes(&self) -> u64 {
        self.size
    }
    fn concurrency(&self) -> usize {
        FILE_LANES
    }
    fn host_file(&self) -> Option<Arc<File>> {
        Some(self.file.clone())
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| BackendError::Io(format!("read: {e}")))
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        check_range(offset, data.len() as u64, self.size)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| BackendError::Io(format!("write: {e}")))
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.file
            .sync_data()
            .map_err(|e| BackendError::Io(format!("fdatasync: {e}")))
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .or_else(|_| {
            self.write(
                offset,
                &vec![0u8; usize::try_from(len).map_err(|_| BackendError::Unsupported)?],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_disk_roundtrip_discard_and_bounds() {
        let path = std::env::temp_dir().join(format!("vmm-filedisk-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let d = FileDisk::open(&path, false, false).unwrap();
        assert_eq!(d.size_bytes(), 1 << 20);
        d.write(4096, &[7u8; 8192]).unwrap();
        d.flush().unwrap();
        let mut b = vec![0u8; 8192];
        d.read(4096, &mut b).unwrap();
        assert!(b.iter().all(|x| *x == 7));
        d.discard(4096, 4096).unwrap();
        d.write_zeroes(8192, 4096).unwrap();
        d.read(4096, &mut b).unwrap();
        assert!(b.iter().all(|x| *x == 0));
        assert!(matches!(
            d.read(1 << 20, &mut b),
            Err(BackendError::OutOfRange { .. })
        ));
        let ro = FileDisk::open(&path, true, false).unwrap();
        assert_eq!(ro.write(0, &[1]), Err(BackendError::ReadOnly));
        std::fs::remove_file(&path).unwrap();
    }
}
