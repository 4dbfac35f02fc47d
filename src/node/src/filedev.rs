//! A plain positional-I/O device on a file or block device, used until blockdev's io_uring
//! device is available (and wherever io_uring is not). O_DIRECT when the file system allows it.
//!
//! It owns nothing but the open file; it never interprets bytes. Blocking calls run on tokio's
//! blocking pool so they never stall the async workers. A failed flush poisons the device.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blockdev::{
    check_io, AlignedBuf, BlockDevice, BlockError, BoxFuture, DeviceInfo, ErrorKind, WriteBuf,
    BLOCK_SIZE,
};

pub struct FileDevice {
    info: DeviceInfo,
    file: Arc<File>,
    poisoned: Arc<AtomicBool>,
}

impl FileDevice {
    /// Open read-write; the usable size is the file size rounded down to a whole block.
    pub fn open(path: &Path) -> blockdev::Result<FileDevice> {
        let name = path.display().to_string();
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        // Some file systems (tmpfs) refuse O_DIRECT with EINVAL; fall back to buffered I/O,
        // where flush (fdatasync) still gives durability.
        let mut file = match open(true) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(false)
                .map_err(|e| BlockError::io(ErrorKind::Open, format!("open {name}"), e))?,
            Err(e) => return Err(BlockError::io(ErrorKind::Open, format!("open {name}"), e)),
        };
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| BlockError::io(ErrorKind::Open, format!("size of {name}"), e))?;
        let size_bytes = len - len % BLOCK_SIZE as u64;
        Ok(FileDevice {
            info: DeviceInfo {
                size_bytes,
                name,
                supports_discard: false,
            },
            file: Arc::new(file),
            poisoned: Arc::new(AtomicBool::new(false)),
        })
    }

    fn check(&self, offset: u64, len: u64) -> blockdev::Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(BlockError::new(
                ErrorKind::Poisoned,
                format!("{}: an earlier flush failed", self.info.name),
            ));
        }
        check_io(&self.info, offset, len)
    }
}

fn joined<T>(r: Result<blockdev::Result<T>, tokio::task::JoinError>) -> blockdev::Result<T> {
    r.unwrap_or_else(|e| {
        Err(BlockError::new(
            ErrorKind::Io,
            format!("I/O task failed: {e}"),
        ))
    })
}

impl BlockDevice for FileDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read_at(
        &self,
        offset: u64,
        mut buf: AlignedBuf,
    ) -> BoxFuture<'_, blockdev::Result<AlignedBuf>> {
        Box::pin(async move {
            self.check(offset, buf.len() as u64)?;
            let file = self.file.clone();
            let name = self.info.name.clone();
            joined(
                tokio::task::spawn_blocking(move || {
                    file.read_exact_at(&mut buf, offset).map_err(|e| {
                        BlockError::io(ErrorKind::Io, format!("read {name}@{offset}"), e)
                    })?;
                    Ok(buf)
                })
                .await,
            )
        })
    }

    fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, blockdev::Result<()>> {
        Box::pin(async move {
            self.check(offset, data.len() as u64)?;
            let file = self.file.clone();
            let name = self.info.name.clone();
            joined(
                tokio::task::spawn_blocking(move || {
                    file.write_all_at(data.as_slice(), offset).map_err(|e| {
                        BlockError::io(ErrorKind::Io, format!("write {name}@{offset}"), e)
                    })
                })
                .await,
            )
        })
    }

    fn flush(&self) -> BoxFuture<'_, blockdev::Result<()>> {
        Box::pin(async move {
            self.check(0, 0)?;
            let file = self.file.clone();
            let name = self.info.name.clone();
            let poisoned = self.poisoned.clone();
            joined(
                tokio::task::spawn_blocking(move || {
                    file.sync_data().map_err(|e| {
                        poisoned.store(true, Ordering::Release);
                        BlockError::io(ErrorKind::Io, format!("flush {name}"), e)
                    })
                })
                .await,
            )
        })
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, blockdev::Result<()>> {
        // Discard is advisory: without hole punching the blocks simply stay allocated.
        Box::pin(async move { self.check(offset, len) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_back_what_it_wrote_and_checks_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let dev = FileDevice::open(&path).unwrap();
        assert_eq!(dev.info().size_bytes, 1 << 20);
        let data = AlignedBuf::from_slice(&[0x5a; 8192]).into_write();
        dev.write_at(4096, data).await.unwrap();
        dev.flush().await.unwrap();
        let buf = dev.read_at(4096, AlignedBuf::zeroed(8192)).await.unwrap();
        assert!(buf.iter().all(|&b| b == 0x5a));
        let err = dev
            .read_at(1 << 20, AlignedBuf::zeroed(4096))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::OutOfRange);
        let err = dev
            .read_at(100, AlignedBuf::zeroed(4096))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Misaligned);
    }
}
