//! [`DiskBackend`] on an engine virtual disk: the VM's disk calls the engine directly, no file,
//! loop device or protocol in between. The engine is async (tokio): virtio-blk uses the
//! [`AsyncDisk`] side, its requests run by driver tasks on the engine's runtime; the blocking
//! [`DiskBackend`] calls (other users, tests) wait on the same futures through a runtime handle.
//! Never blocks a runtime worker: the blocking calls are only for threads outside the runtime.

use crate::backend::{check_range, AsyncDisk, BackendError, DiskBackend, IoFuture, OwnedRead};
use blockdev::AlignedBuf;
use engine::{ErrorKind, VdiskHandle};
use std::sync::Arc;

/// An engine virtual disk as a VM disk. Cheap to clone (a handle and a runtime handle).
#[derive(Clone)]
pub struct EngineDisk {
    handle: VdiskHandle,
    rt: tokio::runtime::Handle,
}

impl EngineDisk {
    /// Wraps `handle`; `rt` is the engine's runtime (requests run there; the blocking
    /// calls block the calling thread, which must not be a runtime worker).
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
    fn as_async(&self) -> Option<Arc<dyn AsyncDisk>> {
        Some(Arc::new(self.clone()))
    }
}

impl AsyncDisk for EngineDisk {
    fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }
    fn read(
        &self,
        offset: u64,
        mut buf: AlignedBuf,
        len: usize,
    ) -> IoFuture<(AlignedBuf, Result<(), BackendError>)> {
        let h = self.handle.clone();
        Box::pin(async move {
            let r = match buf.get_mut(..len) {
                Some(b) => h.read(offset, b).await.map_err(map),
                None => Err(BackendError::OutOfRange {
                    offset,
                    len: len as u64,
                    size: buf.len() as u64,
                }),
            };
            (buf, r)
        })
    }
    fn read_owned(&self, offset: u64, len: usize) -> Option<IoFuture<OwnedRead>> {
        let h = self.handle.clone();
        Some(Box::pin(async move {
            h.read_owned(offset, len as u64).await.map_err(map)
        }))
    }
    fn engine_handle(&self) -> Option<&VdiskHandle> {
        Some(&self.handle)
    }
    fn write(
        &self,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
    ) -> IoFuture<(Option<AlignedBuf>, Result<(), BackendError>)> {
        let h = self.handle.clone();
        Box::pin(async move {
            let (back, r) = h.write_owned(offset, buf, len).await;
            (back, r.map_err(map))
        })
    }
    fn flush(&self) -> IoFuture<Result<(), BackendError>> {
        let h = self.handle.clone();
        Box::pin(async move { h.flush().await.map_err(map) })
    }
    fn discard(&self, offset: u64, len: u64) -> IoFuture<Result<(), BackendError>> {
        let h = self.handle.clone();
        Box::pin(async move { h.discard(offset, len).await.map_err(map) })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<Result<(), BackendError>> {
        let h = self.handle.clone();
        Box::pin(async move { h.write_zeroes(offset, len).await.map_err(map) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::{BlockDevice, RamDevice};

    /// The async side on a real engine (two RAM pool disks): owned-buffer writes, aligned and
    /// not, read back through both sides; a length beyond the buffer is refused.
    #[test]
    fn async_side_writes_owned_buffers_and_reads_back() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let engine = rt
            .block_on(async {
                let e = engine::Engine::open(engine::EngineConfig {
                    node_id: 1,
                    node_name: "vmm-unit".into(),
                })
                .await?;
                for i in 0..2 {
                    let dev: Arc<dyn BlockDevice> =
                        Arc::new(RamDevice::new(format!("pool{i}"), 64 << 20));
                    e.add_disk(dev).await?;
                }
                e.create_vdisk("d", 8 << 20).await?;
                engine::Result::Ok(e)
            })
            .unwrap();
        let disk = EngineDisk::new(engine.open_vdisk("d").unwrap(), rt.handle().clone());
        let a: Arc<dyn AsyncDisk> = disk.as_async().unwrap();
        let fill = |len: usize, seed: u8| {
            let mut b = AlignedBuf::for_overwrite(len);
            for (i, x) in b.iter_mut().enumerate() {
                *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
            }
            b
        };
        // Whole blocks: the buffer goes to the engine as it is.
        let w = fill(8192, 1);
        let expect = w[..8192].to_vec();
        let (back, r) = rt.block_on(a.write(1 << 20, w, 8192));
        r.unwrap();
        assert_eq!(back.map(|b| b.len()), Some(8192), "the buffer comes back");
        // One sector inside a block: the read-modify-write path.
        let s = fill(512, 9);
        let sector = s[..512].to_vec();
        rt.block_on(a.write((1 << 20) + 512, s, 512)).1.unwrap();
        let (back, r) = rt.block_on(a.read(1 << 20, AlignedBuf::for_overwrite(8192), 8192));
        r.unwrap();
        let mut want = expect.clone();
        want[512..1024].copy_from_slice(&sector);
        assert_eq!(&back[..8192], &want[..]);
        let mut sync_back = vec![0u8; 8192];
        DiskBackend::read(&disk, 1 << 20, &mut sync_back).unwrap();
        assert_eq!(sync_back, want);
        let (back, err) = rt.block_on(a.write(0, AlignedBuf::for_overwrite(4096), 8192));
        assert!(matches!(err, Err(BackendError::Io(_))), "{err:?}");
        assert!(back.is_some(), "a refused write gives its buffer back");
        let (_, r) = rt.block_on(a.read(0, AlignedBuf::for_overwrite(4096), 8192));
        assert!(matches!(r, Err(BackendError::OutOfRange { .. })), "{r:?}");
        rt.block_on(a.flush()).unwrap();
        // The one-copy read: the engine's own pieces, one per chunk the range covers.
        let across = engine::CHUNK_BYTES - 4096;
        let w = fill(8192, 3);
        let want = w[..8192].to_vec();
        rt.block_on(a.write(across, w, 8192)).1.unwrap();
        let owned = rt
            .block_on(a.read_owned(across, 8192).expect("the engine reads owned"))
            .unwrap();
        assert_eq!(owned.parts().count(), 2, "one piece per chunk");
        assert_eq!(owned.to_vec(), want);
        let beyond = rt.block_on(a.read_owned(8 << 20, 4096).unwrap());
        assert!(beyond.is_err(), "a range beyond the disk is refused");
        drop(a);
        drop(disk);
        rt.block_on(engine.shutdown()).unwrap();
    }
}
