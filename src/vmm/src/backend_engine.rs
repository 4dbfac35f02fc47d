//! [`DiskBackend`] on an engine virtual disk: the VM's disk calls the engine directly, no file,
//! loop device or protocol in between. The engine is async (tokio); device I/O lanes block on
//! its futures through a runtime handle, and several lanes per queue give the engine queue depth.

use crate::backend::{check_range, BackendError, DiskBackend};
use engine::{ErrorKind, VdiskHandle};

/// Lanes per queue for engine disks (writes wait for two replicas, so depth matters). 32 so a
/// guest at queue depth 32 (Linux's usual per-queue depth and the bench's) keeps all of its
/// requests in the engine at once; with 16, half of them waited for a free lane. A lane is an
/// idle thread when unused and its bounce buffer's pages are only touched by requests that size.
pub const ENGINE_LANES: usize = 32;

/// An engine virtual disk as a VM disk.
pub struct EngineDisk {
    handle: VdiskHandle,
    rt: tokio::runtime::Handle,
}

impl EngineDisk {
    /// Wraps `handle`; `rt` is the engine's runtime (the calls block a device thread, never a
    /// runtime worker).
    pub fn new(handle: VdiskHandle, rt: tokio::runtime::Handle) -> Self {
        Self { handle, rt }
    }
}

fn map(e: engine::EngineError) -> BackendError {
    match e.kind() {
        ErrorKind::ReadOnly => BackendError::ReadOnly,
        _ => BackendError::Io(e.to_string()),
    }
}

impl DiskBackend for EngineDisk {
    fn size_bytes(&self) -> u64 {
        self.handle.size_bytes() & !511
    }
    fn read_only(&self) -> bool {
        self.handle.read_only()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size_bytes())?;
        self.rt.block_on(self.handle.read(offset, buf)).map_err(map)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        check_range(offset, data.len() as u64, self.size_bytes())?;
        self.rt
            .block_on(self.handle.write(offset, data))
            .map_err(map)
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.rt.block_on(self.handle.flush()).map_err(map)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(offset, len, self.size_bytes())?;
        self.rt
            .block_on(self.handle.discard(offset, len))
            .map_err(map)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(offset, len, self.size_bytes())?;
        self.rt
            .block_on(self.handle.write_zeroes(offset, len))
            .map_err(map)
    }
    fn concurrency(&self) -> usize {
        ENGINE_LANES
    }
}
