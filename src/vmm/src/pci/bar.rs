//! Where a device's memory BAR sits on the MMIO bus, kept in step with what the guest programs
//! into config space. A BAR decodes only when memory decode is on, the whole range lies inside
//! the host bridge's BAR window (the `_CRS` window in the DSDT: never RAM, ECAM, IOAPIC or
//! LAPIC) and no other device already claims any part of it; otherwise it is off the bus and
//! the guest reads all-ones there, its writes go nowhere. A move is: off the bus at the old
//! address (the owner drops what hangs on it, e.g. ioeventfds), then on the bus at the new one
//! (the owner re-registers). Never panics on guest values and never takes a range it does not
//! own off the bus.

use crate::bus::{Bus, BusDevice};
use crate::layout;
use std::sync::{Arc, Weak};

/// The 32-bit BAR window `[start, end)`.
pub fn window() -> (u64, u64) {
    (
        layout::MMIO_START,
        layout::MMIO_START + layout::PCI_MMIO_SIZE,
    )
}

/// True when `addr..addr+size` lies inside the BAR window.
pub fn in_window(addr: u64, size: u64) -> bool {
    let (start, end) = window();
    size > 0 && addr >= start && addr.checked_add(size).is_some_and(|e| e <= end)
}

/// One BAR's place on the MMIO bus.
pub struct BarMapping {
    mmio: Weak<Bus>,
    at: Option<(u64, u64)>,
    detached: bool,
}

impl BarMapping {
    /// Off the bus (decode is off after reset).
    pub fn new(mmio: &Arc<Bus>) -> Self {
        Self {
            mmio: Arc::downgrade(mmio),
            at: None,
            detached: false,
        }
    }

    /// Base address while the BAR is on the bus.
    pub fn at(&self) -> Option<u64> {
        self.at.map(|(a, _)| a)
    }

    /// Brings the bus in line with `want` (the BAR's decoded address and size, None when
    /// decode is off). `unmapped(base)` runs after the range left the bus; `mapped(base)` runs
    /// after it joined and may refuse (false), which takes it off again. Returns whether the
    /// bus changed.
    pub fn sync(
        &mut self,
        want: Option<(u64, u64)>,
        dev: &Arc<dyn BusDevice>,
        unmapped: &mut dyn FnMut(u64),
        mapped: &mut dyn FnMut(u64) -> bool,
    ) -> bool {
        let want = want.filter(|&(a, s)| !self.detached && in_window(a, s));
        if want == self.at {
            return false;
        }
        let Some(bus) = self.mmio.upgrade() else {
            return false;
        };
        let mut changed = false;
        if let Some((old, _)) = self.at.take() {
            bus.remove_device(old, dev);
            unmapped(old);
            changed = true;
        }
        if let Some((addr, size)) = want {
            // An overlap with another device leaves this BAR off the bus until either moves.
            if bus.insert(addr, size, dev.clone()).is_ok() {
                if mapped(addr) {
                    self.at = Some((addr, size));
                    changed = true;
                } else {
                    bus.remove_device(addr, dev);
                }
            }
        }
        changed
    }

    /// Takes the BAR off the bus for good (hot-unplug); later syncs keep it off.
    pub fn detach(&mut self, dev: &Arc<dyn BusDevice>, unmapped: &mut dyn FnMut(u64)) {
        self.sync(None, dev, unmapped, &mut |_| false);
        self.detached = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe(u8);
    impl BusDevice for Probe {
        fn read(&self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&self, _base: u64, _offset: u64, _data: &[u8]) {}
    }

    fn read(bus: &Bus, addr: u64) -> u8 {
        let mut b = [0u8];
        bus.read(addr, &mut b);
        b[0]
    }

    #[test]
    fn moves_refuses_overlap_and_leaves_the_window_alone() {
        let bus = Arc::new(Bus::new());
        let a: Arc<dyn BusDevice> = Arc::new(Probe(1));
        let b: Arc<dyn BusDevice> = Arc::new(Probe(2));
        let (start, end) = window();
        let mut ma = BarMapping::new(&bus);
        let mut mb = BarMapping::new(&bus);
        let mut log = Vec::new();
        let mut unmapped = |x: u64| log.push(('u', x));
        assert!(ma.sync(Some((start, 0x8000)), &a, &mut unmapped, &mut |_| true));
        assert_eq!(read(&bus, start + 4), 1);
        // Moving: old range gone, new range answers.
        assert!(ma.sync(
            Some((start + 0x10_0000, 0x8000)),
            &a,
            &mut unmapped,
            &mut |_| true
        ));
        assert_eq!(read(&bus, start + 4), 0xff);
        assert_eq!(read(&bus, start + 0x10_0004), 1);
        // B asks for A's range: refused, B stays off, A keeps answering.
        assert!(!mb.sync(
            Some((start + 0x10_0000, 0x8000)),
            &b,
            &mut unmapped,
            &mut |_| true
        ));
        assert_eq!(mb.at(), None);
        assert_eq!(read(&bus, start + 0x10_0004), 1);
        // A moves away; B's next sync gets the range.
        assert!(ma.sync(Some((start, 0x8000)), &a, &mut unmapped, &mut |_| true));
        assert!(mb.sync(
            Some((start + 0x10_0000, 0x8000)),
            &b,
            &mut unmapped,
            &mut |_| true
        ));
        assert_eq!(read(&bus, start + 0x10_0004), 2);
        // Outside the window (the probe's all-ones, ECAM, above 4 GiB, wrapping): off the bus.
        for bad in [
            0xffff_8000u64,
            end,
            end - 0x4000,
            start - 0x8000,
            0x1_c000_0000,
            u64::MAX - 0x7fff,
        ] {
            ma.sync(Some((bad, 0x8000)), &a, &mut unmapped, &mut |_| true);
            assert_eq!(ma.at(), None, "{bad:#x}");
        }
        assert_eq!(read(&bus, start + 4), 0xff);
        // A refusing `mapped` hook leaves the bus as it was.
        assert!(!ma.sync(Some((start, 0x8000)), &a, &mut unmapped, &mut |_| false));
        assert_eq!(read(&bus, start + 4), 0xff);
        // Detach is final.
        mb.detach(&b, &mut unmapped);
        assert!(!mb.sync(
            Some((start + 0x10_0000, 0x8000)),
            &b,
            &mut unmapped,
            &mut |_| true
        ));
        assert_eq!(read(&bus, start + 0x10_0004), 0xff);
        assert_eq!(
            log,
            vec![
                ('u', start),
                ('u', start + 0x10_0000),
                ('u', start),
                ('u', start + 0x10_0000)
            ]
        );
    }
}
