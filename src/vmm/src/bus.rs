//! Port-I/O and MMIO dispatch from vCPU exits to device models.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices. Lookups are a binary search under a
//! read lock; devices take `&self` and do their own locking so several vCPUs can reach different
//! devices at once. The bus never interprets the data; unclaimed reads return all-ones.

use crate::error::{Result, VmmError};
use parking_lot::RwLock;
use std::sync::Arc;

/// A device reachable through port I/O or MMIO.
pub trait BusDevice: Send + Sync {
    /// Guest read of `data.len()` bytes at `offset` from the range start (`base`).
    fn read(&self, base: u64, offset: u64, data: &mut [u8]);
    /// Guest write at `offset` from the range start (`base`).
    fn write(&self, base: u64, offset: u64, data: &[u8]);
}

#[derive(Clone)]
struct Entry {
    start: u64,
    len: u64,
    dev: Arc<dyn BusDevice>,
}

/// An address space (one for port I/O, one for MMIO).
#[derive(Default)]
pub struct Bus {
    entries: RwLock<Vec<Entry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `start..start+len` for `dev`; overlapping claims are refused.
    pub fn insert(&self, start: u64, len: u64, dev: Arc<dyn BusDevice>) -> Result<()> {
        let end = start
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| VmmError::InvalidConfig(format!("bad bus range {start:#x}+{len:#x}")))?;
        let mut entries = self.entries.write();
        if entries
            .iter()
            .any(|e| start < e.start + e.len && e.start < end)
        {
            return Err(VmmError::InvalidConfig(format!(
                "bus range {start:#x}..{end:#x} overlaps an existing device"
            )));
        }
        let pos = entries.partition_point(|e| e.start < start);
        entries.insert(pos, Entry { start, len, dev });
        Ok(())
    }

    /// Releases the range starting at `start` (hot-unplug); returns whether one was there.
    pub fn remove(&self, start: u64) -> bool {
        let mut entries = self.entries.write();
        let before = entries.len();
        entries.retain(|e| e.start != start);
        entries.len() != before
    }

    /// True when no device claims any byte of `start..start+len`.
    pub fn is_free(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        !self
            .entries
            .read()
            .iter()
            .any(|e| start < e.start + e.len && e.start < end)
    }

    /// Releases the range starting at `start` only if `dev` owns it (a device moving its BAR
    /// must never take another device's range off the bus); returns whether it did.
    pub fn remove_device(&self, start: u64, dev: &Arc<dyn BusDevice>) -> bool {
        let mut entries = self.entries.write();
        let before = entries.len();
        entries.retain(|e| {
            e.start != start || !std::ptr::addr_eq(Arc::as_ptr(&e.dev), Arc::as_ptr(dev))
        });
        entries.len() != before
    }

    fn find(&self, addr: u64) -> Option<(u64, Arc<dyn BusDevice>)> {
        let entries = self.entries.read();
        let idx = entries.partition_point(|e| e.start <= addr);
        let e = entries.get(idx.checked_sub(1)?)?;
        (addr - e.start < e.len).then(|| (e.start, e.dev.clone()))
    }

    /// Dispatches a read; returns false (and fills all-ones) when nothing claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                dev.read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when nothing claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((base, dev)) => {
                dev.write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Probe(AtomicU64);
    impl BusDevice for Probe {
        fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, _base: u64, offset: u64, _data: &[u8]) {
            self.0.store(offset, Ordering::SeqCst);
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let bus = Bus::new();
        let p = Arc::new(Probe(AtomicU64::new(0)));
        bus.insert(0x100, 0x10, p.clone()).unwrap();
        assert!(bus.insert(0x10f, 1, p.clone()).is_err());
        assert!(bus.insert(0xf0, 0x11, p.clone()).is_err());
        bus.insert(0x110, 1, p.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b[0], 5);
        assert!(!bus.read(0x200, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(bus.write(0x10a, &[1]));
        assert_eq!(p.0.load(Ordering::SeqCst), 0xa);
        assert!(!bus.write(0xff, &[1]));
        assert!(bus.remove(0x100));
        assert!(!bus.remove(0x100));
        assert!(!bus.read(0x105, &mut b));
        bus.insert(0x100, 0x10, p.clone()).unwrap();
        // Only the owner can take a range off by device.
        let other: Arc<dyn BusDevice> = Arc::new(Probe(AtomicU64::new(0)));
        assert!(!bus.remove_device(0x100, &other));
        assert!(bus.read(0x105, &mut b));
        let mine: Arc<dyn BusDevice> = p;
        assert!(bus.remove_device(0x100, &mine));
        assert!(!bus.read(0x105, &mut b));
    }
}
