//! The io_uring backend for regular files and block devices, O_DIRECT by default.
//!
//! Owns the open file and its ring. Reads and writes go straight from and to the caller's
//! aligned buffers; flush is `fdatasync` through the ring; discard punches a hole (files) or
//! discards/zeroes (block devices) through `IORING_OP_FALLOCATE`. A failed flush poisons the
//! device: every later call fails with `ErrorKind::Poisoned`, because after a failed fsync the
//! kernel may have dropped dirty data and retrying would report success falsely.
//!
//! It must be opened inside a tokio runtime (its completion reaper runs there); it can be driven
//! from any thread or runtime. If that runtime shuts down first, later requests fail with
//! `ErrorKind::Gone` instead of hanging.
//! It never retries a failed write or flush, and never opens a block device that is in use
//! (O_EXCL).

#[cfg(test)]
mod fixed_tests;
#[cfg(test)]
mod reap_tests;
mod ring;
#[cfg(test)]
mod ring_tests;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::{opcode, types};

use crate::{
    check_io, AlignedBuf, BlockDevice, BlockError, BoxFuture, DeviceInfo, ErrorKind, Result,
    WriteBuf, BLOCK_SIZE,
};
use ring::{Hold, Ring};

/// How to open a device.
#[derive(Debug, Clone)]
pub struct UringOptions {
    /// Use O_DIRECT (bypass the page cache). If the file system refuses it, the device falls back
    /// to buffered I/O and `UringDevice::is_direct()` says so.
    pub direct: bool,
    /// Maximum requests in flight (rounded up to a power of two, 1..=4096).
    pub queue_depth: u32,
}

impl Default for UringOptions {
    fn default() -> Self {
        Self {
            direct: true,
            queue_depth: 256,
        }
    }
}

/// One request never exceeds this; larger buffers are split (the SQE length is 32 bits).
const MAX_OP_BYTES: usize = 1 << 30;

// _IOR(0x12, 114, size_t): the size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Submissions of a [`UringDevice`] held back (see [`BlockDevice::plug`]); dropping the
/// device's last one submits everything queued meanwhile with one `io_uring_enter`.
pub struct Plug {
    _held: ring::OwnedPlug,
}

impl std::fmt::Debug for Plug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plug")
    }
}

pub struct UringDevice {
    info: DeviceInfo,
    ring: Arc<Ring>,
    /// The file's descriptor (the ring owns the file, so it stays open as long as we live).
    fd: std::os::fd::RawFd,
    direct: bool,
    block_device: bool,
    poisoned: AtomicBool,
}

/// Open `path` with the default options (O_DIRECT, 256 in flight) as a shareable device.
pub fn open_device(path: impl AsRef<Path>) -> Result<Arc<dyn BlockDevice>> {
    Ok(Arc::new(UringDevice::open(path, UringOptions::default())?))
}

/// Create (or extend) a sparse regular file of `size_bytes`, for file-backed devices.
pub fn create_sparse_file(path: impl AsRef<Path>, size_bytes: u64) -> Result<()> {
    let path = path.as_ref();
    let ctx = || format!("{}: create sparse file", path.display());
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| BlockError::io(ErrorKind::Open, ctx(), e))?;
    let len = f
        .metadata()
        .map_err(|e| BlockError::io(ErrorKind::Open, ctx(), e))?
        .len();
    if len < size_bytes {
        f.set_len(size_bytes)
            .map_err(|e| BlockError::io(ErrorKind::Open, ctx(), e))?;
    }
    Ok(())
}

fn open_file(path: &Path, direct: bool, block_device: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if block_device {
        // Refuse a block device that is mounted or claimed by someone else.
        flags |= libc::O_EXCL;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
}

fn device_size(file: &File, block_device: bool) -> io::Result<u64> {
    if !block_device {
        return Ok(file.metadata()?.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live u64.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Whether an O_DIRECT descriptor really accepts aligned direct reads (some file systems open
/// fine and fail the I/O).
fn direct_read_works(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut buf = AlignedBuf::zeroed(BLOCK_SIZE);
    !matches!(file.read_at(&mut buf, 0), Err(e) if e.raw_os_error() == Some(libc::EINVAL))
}

impl UringDevice {
    /// Open a regular file or block device. Must be called inside a tokio runtime.
    pub fn open(path: impl AsRef<Path>, opts: UringOptions) -> Result<UringDevice> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let err = |what: &str, e: io::Error| {
            BlockError::io(ErrorKind::Open, format!("{name}: {what}"), e)
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BlockError::new(
                ErrorKind::Open,
                format!("{name}: io_uring devices must be opened inside a tokio runtime"),
            ));
        }
        let meta = std::fs::metadata(path).map_err(|e| err("stat", e))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.file_type().is_file() {
            return Err(BlockError::new(
                ErrorKind::Open,
                format!("{name}: not a regular file or block device"),
            ));
        }
        let mut direct = opts.direct;
        let mut file = match open_file(path, direct, block_device) {
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                direct = false;
                open_file(path, false, block_device)
            }
            other => other,
        }
        .map_err(|e| err("open", e))?;
        if direct && !direct_read_works(&file) {
            direct = false;
            file = open_file(path, false, block_device).map_err(|e| err("open", e))?;
        }
        let raw_size = device_size(&file, block_device).map_err(|e| err("size", e))?;
        let size_bytes = raw_size - raw_size % BLOCK_SIZE as u64;
        if size_bytes == 0 {
            return Err(BlockError::new(
                ErrorKind::Open,
                format!("{name}: {raw_size} bytes is smaller than one {BLOCK_SIZE}-byte block"),
            ));
        }
        let depth = opts.queue_depth.clamp(1, 4096).next_power_of_two();
        let fd = file.as_raw_fd();
        let ring = Ring::start(file, depth).map_err(|e| err("io_uring setup", e))?;
        let name = if direct {
            name
        } else {
            format!("{name} (buffered)")
        };
        Ok(UringDevice {
            info: DeviceInfo {
                size_bytes,
                name,
                supports_discard: true,
            },
            ring,
            fd,
            direct,
            block_device,
            poisoned: AtomicBool::new(false),
        })
    }

    /// Whether the ring has the registered-buffer arena (large buffers then skip per-request
    /// page pinning); false if the kernel refused the registration.
    pub fn has_fixed_buffers(&self) -> bool {
        self.ring.fixed_buffers().is_some()
    }

    /// Hold back submissions while the plug lives (see [`BlockDevice::plug`]).
    pub fn plug(&self) -> Plug {
        Plug {
            _held: self.ring.plug_owned(),
        }
    }

    /// `io_uring_enter` calls this device's ring made to submit so far (a diagnostic: fewer
    /// calls than requests means requests went to the kernel in batches).
    pub fn submit_calls(&self) -> u64 {
        self.ring.submit_calls()
    }

    /// The open file's descriptor, for a reader with an io_uring of its own (a VM's queue
    /// thread reading verified data straight into guest memory). Valid while this device
    /// lives; whoever uses it must keep the device alive until its requests completed, and
    /// must not write through it (the device owns every write and flush).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd
    }

    /// False if the file system refused O_DIRECT and the device uses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if self.is_poisoned() {
            return Err(BlockError::new(
                ErrorKind::Poisoned,
                format!(
                    "{}: a flush failed earlier; device is poisoned",
                    self.info.name
                ),
            ));
        }
        check_io(&self.info, offset, len)
    }

    fn errno(&self, what: String, res: i32) -> BlockError {
        let kind = if res == -libc::ESHUTDOWN {
            ErrorKind::Gone
        } else {
            ErrorKind::Io
        };
        BlockError::io(
            kind,
            format!("{}: {what}", self.info.name),
            io::Error::from_raw_os_error(-res),
        )
    }

    /// `read_at` as a plain future (no box): read `buf.len()` bytes at `offset` into `buf`.
    pub async fn read(&self, offset: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        self.check(offset, buf.len() as u64)?;
        let len = buf.len();
        let mut hold = Hold::Read(buf);
        let mut done = 0usize;
        while done < len {
            let Hold::Read(b) = &mut hold else {
                unreachable!("read holds its buffer")
            };
            let n = (len - done).min(MAX_OP_BYTES);
            // SAFETY: done + n <= len, so the pointer range lies inside the held buffer.
            let ptr = unsafe { b.as_mut_ptr().add(done) };
            let pos = offset + done as u64;
            let entry = match self.ring.fixed_buffers() {
                // Pinned at registration: the kernel skips pinning the pages per request.
                Some(a) if a.contains(ptr, n) => {
                    opcode::ReadFixed::new(types::Fixed(0), ptr, n as u32, 0)
                        .offset(pos)
                        .build()
                }
                _ => opcode::Read::new(types::Fixed(0), ptr, n as u32)
                    .offset(pos)
                    .build(),
            };
            // SAFETY: `entry` points into the buffer moved into `hold` (for READ_FIXED, inside
            // the arena the ring registered as buffer 0); fd is fixed file 0.
            let (res, h) = unsafe { self.ring.run(entry, hold) }.await;
            hold = h;
            match res {
                r if r < 0 => return Err(self.errno(format!("read {n} bytes at {pos}"), r)),
                0 => return Err(self.errno(format!("read at {pos}: unexpected end"), -libc::EIO)),
                r => done += r as usize,
            }
        }
        let Hold::Read(b) = hold else {
            unreachable!("read holds its buffer")
        };
        Ok(b)
    }

    /// `write_at` as a plain future (no box): write `data` at `offset`.
    pub async fn write(&self, offset: u64, data: WriteBuf) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        let len = data.len();
        let mut hold = Hold::Write(data);
        let mut done = 0usize;
        while done < len {
            let Hold::Write(d) = &hold else {
                unreachable!("write holds its buffer")
            };
            let n = (len - done).min(MAX_OP_BYTES);
            // SAFETY: done + n <= len, so the pointer range lies inside the held window.
            let ptr = unsafe { d.as_ptr().add(done) };
            let pos = offset + done as u64;
            let entry = match self.ring.fixed_buffers() {
                Some(a) if a.contains(ptr, n) => {
                    opcode::WriteFixed::new(types::Fixed(0), ptr, n as u32, 0)
                        .offset(pos)
                        .build()
                }
                _ => opcode::Write::new(types::Fixed(0), ptr, n as u32)
                    .offset(pos)
                    .build(),
            };
            // SAFETY: `entry` points into the buffer moved into `hold` (for WRITE_FIXED, inside
            // the arena the ring registered as buffer 0); fd is fixed file 0.
            let (res, h) = unsafe { self.ring.run(entry, hold) }.await;
            hold = h;
            match res {
                r if r < 0 => return Err(self.errno(format!("write {n} bytes at {pos}"), r)),
                0 => return Err(self.errno(format!("write at {pos}: no progress"), -libc::EIO)),
                r => done += r as usize,
            }
        }
        Ok(())
    }

    async fn sync(&self) -> Result<()> {
        self.check(0, 0)?;
        let entry = opcode::Fsync::new(types::Fixed(0))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: fsync carries no buffer; fd is fixed file 0.
        let (res, _) = unsafe { self.ring.run(entry, Hold::None) }.await;
        if res < 0 {
            self.poisoned.store(true, Ordering::Release);
            return Err(self.errno("fdatasync failed; device poisoned".into(), res));
        }
        Ok(())
    }

    async fn punch(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let entry = opcode::Fallocate::new(types::Fixed(0), len)
            .offset(offset)
            .mode(mode)
            .build();
        // SAFETY: fallocate carries no buffer; fd is fixed file 0.
        let (res, _) = unsafe { self.ring.run(entry, Hold::None) }.await;
        match res {
            // Discard is advisory: a medium that cannot free space keeps the old data.
            r if r == -libc::EOPNOTSUPP => Ok(()),
            r if r < 0 => Err(self.errno(format!("discard {len} bytes at {offset}"), r)),
            _ => Ok(()),
        }
    }
}

impl Drop for UringDevice {
    fn drop(&mut self) {
        self.ring.close();
    }
}

impl BlockDevice for UringDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read_at(&self, offset: u64, buf: AlignedBuf) -> BoxFuture<'_, Result<AlignedBuf>> {
        Box::pin(self.read(offset, buf))
    }

    fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write(offset, data))
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.sync())
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.punch(offset, len))
    }

    fn as_uring(&self) -> Option<&UringDevice> {
        Some(self)
    }

    fn plug(&self) -> Option<Plug> {
        Some(UringDevice::plug(self))
    }
}
