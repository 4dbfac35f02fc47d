//! Raw devices behind one async `BlockDevice` trait.
//!
//! This crate owns the last step before the hardware: io_uring on files and block devices
//! (O_DIRECT), a RAM device, and a fault-injecting wrapper for tests. It never interprets the
//! bytes it moves. All I/O is in whole `BLOCK_SIZE` units at `BLOCK_SIZE`-aligned offsets, with
//! buffers the device owns for the duration of the I/O (so a dropped future can never let the
//! kernel write into freed memory).
//!
//! After a failed flush a device is poisoned: every later call fails with `ErrorKind::Poisoned`.

mod arena;
mod buf;
mod crc;
mod error;
pub mod fault;
mod malloc;
mod ram;
mod uring;

pub use buf::{AlignedBuf, WriteBuf};
pub use crc::crc32c;
pub use error::{BlockError, ErrorKind, Result};
pub use fault::{FaultDevice, FaultOp, FaultStats, PowerCutPolicy, PowerCutReport, Trigger};
pub use malloc::tune_allocator;
pub use ram::RamDevice;
pub use uring::{create_sparse_file, open_device, Plug, UringDevice, UringOptions};

use std::future::Future;
use std::pin::Pin;

/// The unit of every I/O: offsets, lengths and buffer addresses are multiples of this.
pub const BLOCK_SIZE: usize = 4096;

/// A boxed future, so `BlockDevice` is object safe (`Arc<dyn BlockDevice>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Usable size in bytes (a multiple of `BLOCK_SIZE`).
    pub size_bytes: u64,
    /// Human-readable name (path for files and block devices).
    pub name: String,
    /// Whether `discard` frees space on the backing medium.
    pub supports_discard: bool,
}

/// One raw device. Every method checks alignment and range and fails with a clear error
/// instead of touching the device.
pub trait BlockDevice: Send + Sync + 'static {
    fn info(&self) -> &DeviceInfo;

    /// Read `buf.len()` bytes at `offset` into `buf` and give it back.
    fn read_at(&self, offset: u64, buf: AlignedBuf) -> BoxFuture<'_, Result<AlignedBuf>>;

    /// Write `data` at `offset`. Not durable until a later `flush` completes.
    fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, Result<()>>;

    /// Make every write that completed before this call durable. A failure poisons the device.
    fn flush(&self) -> BoxFuture<'_, Result<()>>;

    /// Tell the device a range is unused (may free space; later reads return zeros or old data).
    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;

    /// The io_uring device itself, when this is one: a caller on the hot path (the store's data
    /// reads and writes) then awaits [`UringDevice::read`] / [`UringDevice::write`] directly,
    /// without a boxed future per request. Same semantics as `read_at` / `write_at`.
    fn as_uring(&self) -> Option<&UringDevice> {
        None
    }

    /// Hold back submissions to the hardware while the returned [`Plug`] lives: requests
    /// started meanwhile (by anyone) only queue, and when the device's last plug goes they are
    /// submitted together — one system call and one doorbell for the lot instead of one each.
    /// For a caller about to start a burst of requests: take it, start them all (poll each
    /// once), drop it. Never hold it while waiting for a request to finish (a plugged request
    /// does not even start). `None` (the default) for devices with nothing to batch.
    fn plug(&self) -> Option<Plug> {
        None
    }
}

/// Check an I/O request against a device's geometry; every backend calls this first.
pub fn check_io(info: &DeviceInfo, offset: u64, len: u64) -> Result<()> {
    let bs = BLOCK_SIZE as u64;
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(BlockError::new(
            ErrorKind::Misaligned,
            format!(
                "{}: offset {offset} / length {len} not aligned to {bs}",
                info.name
            ),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= info.size_bytes => Ok(()),
        _ => Err(BlockError::new(
            ErrorKind::OutOfRange,
            format!(
                "{}: range {offset}+{len} beyond device size {}",
                info.name, info.size_bytes
            ),
        )),
    }
}
