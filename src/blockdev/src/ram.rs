//! A RAM device: fast, volatile, for tests and for benchmarking the layers above without disks.

use parking_lot::RwLock;

use crate::{check_io, AlignedBuf, BlockDevice, BoxFuture, DeviceInfo, Result, WriteBuf};

pub struct RamDevice {
    info: DeviceInfo,
    data: RwLock<Vec<u8>>,
}

impl RamDevice {
    /// A zero-filled device; `size_bytes` is rounded down to a whole block.
    pub fn new(name: impl Into<String>, size_bytes: u64) -> Self {
        let size = size_bytes - size_bytes % crate::BLOCK_SIZE as u64;
        let len = usize::try_from(size).expect("RAM device fits in memory");
        Self {
            info: DeviceInfo {
                size_bytes: size,
                name: name.into(),
                supports_discard: true,
            },
            data: RwLock::new(vec![0; len]),
        }
    }

    /// A copy of the whole contents (tests compare devices byte for byte).
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

impl BlockDevice for RamDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read_at(&self, offset: u64, mut buf: AlignedBuf) -> BoxFuture<'_, Result<AlignedBuf>> {
        Box::pin(async move {
            check_io(&self.info, offset, buf.len() as u64)?;
            let start = offset as usize;
            let len = buf.len();
            buf.copy_from_slice(&self.data.read()[start..start + len]);
            Ok(buf)
        })
    }

    fn write_at(&self, offset: u64, data: WriteBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            check_io(&self.info, offset, data.len() as u64)?;
            let start = offset as usize;
            self.data.write()[start..start + data.len()].copy_from_slice(data.as_slice());
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            check_io(&self.info, offset, len)?;
            let start = offset as usize;
            self.data.write()[start..start + len as usize].fill(0);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, BLOCK_SIZE};

    #[tokio::test]
    async fn round_trip_and_bounds() {
        let d = RamDevice::new("ram0", 16 * BLOCK_SIZE as u64);
        let w = AlignedBuf::from_slice(&[0xab; BLOCK_SIZE]).into_write();
        d.write_at(BLOCK_SIZE as u64, w).await.unwrap();
        let r = d
            .read_at(BLOCK_SIZE as u64, AlignedBuf::zeroed(BLOCK_SIZE))
            .await
            .unwrap();
        assert!(r.iter().all(|&b| b == 0xab));
        let e = d
            .read_at(16 * BLOCK_SIZE as u64, AlignedBuf::zeroed(BLOCK_SIZE))
            .await;
        assert_eq!(e.unwrap_err().kind, ErrorKind::OutOfRange);
        let e = d.read_at(100, AlignedBuf::zeroed(BLOCK_SIZE)).await;
        assert_eq!(e.unwrap_err().kind, ErrorKind::Misaligned);
    }
}
