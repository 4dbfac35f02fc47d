//! ACPI PCI hot-plug registers: the I/O block the DSDT's slot methods use (see
//! [`crate::acpi::aml`]) so a guest learns which slots changed and releases the ones the host
//! wants back. Four 32-bit registers, one bit per slot of bus 0:
//!
//! ```text
//! +0  PCIU  read: slots whose presence changed (host added or removed a device); read clears
//! +4  PCID  read: slots the host asks the guest to release (eject requests)
//! +8  B0EJ  write: the guest has released these slots; only requested ones are removed
//! +12 PRES  read: slots that hold a device (the slots' _STA)
//! ```
//!
//! The GPE handler (`\_GPE._E01`) reads PCIU and PCID and notifies each slot (device check /
//! eject request); a slot's `_EJ0` writes its bit to B0EJ. A B0EJ write takes the device off
//! config space and the MMIO bus at once (the guest then reads all-ones there); the host thread
//! that asked waits for it ([`PciHotplug::wait_ejected`]) and releases the device's threads,
//! eventfds and interrupt routes. Never blocks a vCPU beyond one short lock and never removes a
//! slot the host did not ask for.

use super::PciRoot;
use crate::bus::BusDevice;
use crate::layout;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// I/O port of the register block (QEMU's PIIX4 hot-plug block sits at the same address).
pub const PCIHP_PORT: u16 = 0xae00;
/// Length of the register block in bytes.
pub const PCIHP_LEN: u16 = 16;
/// Register offsets (byte offsets in the block).
pub const REG_PCIU: u64 = 0;
/// Eject requests.
pub const REG_PCID: u64 = 4;
/// Eject acknowledgement.
pub const REG_B0EJ: u64 = 8;
/// Presence.
pub const REG_PRES: u64 = 12;

/// First slot hot-plug may use (slot 0 is the host bridge).
pub const FIRST_SLOT: usize = 1;
/// Slots on bus 0.
pub const SLOTS: usize = 32;

/// Where slot `slot`'s BAR 0 lives: fixed per slot so a re-attached device gets its old window.
pub fn bar_of(slot: usize) -> u64 {
    layout::MMIO_START + (slot.saturating_sub(FIRST_SLOT) as u64) * crate::virtio::pci::BAR_SIZE
}

#[derive(Default)]
struct State {
    changed: u32,
    eject_req: u32,
    ejected: u32,
}

/// The hot-plug register block of one VM.
pub struct PciHotplug {
    root: Arc<PciRoot>,
    state: Mutex<State>,
    cond: Condvar,
}

impl PciHotplug {
    /// Registers for the devices on `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self {
            root,
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        }
    }

    fn bit(slot: usize) -> u32 {
        if slot < SLOTS {
            1 << slot
        } else {
            0
        }
    }

    /// Marks `slot` for a device check (a device arrived or was taken away by force).
    pub fn mark_changed(&self, slot: usize) {
        self.state.lock().changed |= Self::bit(slot);
    }

    /// Asks the guest to release `slot` (the caller raises the GPE).
    pub fn request_eject(&self, slot: usize) {
        let mut s = self.state.lock();
        s.eject_req |= Self::bit(slot);
        s.ejected &= !Self::bit(slot);
    }

    /// Waits up to `timeout` for the guest to release `slot`. True when it did (the device is
    /// already off the bus); false when it did not, in which case the request is withdrawn so a
    /// late answer changes nothing.
    pub fn wait_ejected(&self, slot: usize, timeout: Duration) -> bool {
        let bit = Self::bit(slot);
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        while s.ejected & bit == 0 {
            if self.cond.wait_until(&mut s, deadline).timed_out() && s.ejected & bit == 0 {
                s.eject_req &= !bit;
                return false;
            }
        }
        s.ejected &= !bit;
        true
    }

    /// Waits up to `timeout` for the guest to release `slot`, leaving the request in place either
    /// way: the caller ends it with [`PciHotplug::settle_eject`]. True once the guest released it.
    pub fn ejected_within(&self, slot: usize, timeout: Duration) -> bool {
        let bit = Self::bit(slot);
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        while s.ejected & bit == 0 {
            if self.cond.wait_until(&mut s, deadline).timed_out() {
                return s.ejected & bit != 0;
            }
        }
        true
    }

    /// Ends an eject request: true (answer consumed) when the guest released `slot`, false with
    /// the request withdrawn otherwise, so a late answer changes nothing. Decided under one lock,
    /// so an answer racing the decision is never half-taken.
    pub fn settle_eject(&self, slot: usize) -> bool {
        let bit = Self::bit(slot);
        let mut s = self.state.lock();
        if s.ejected & bit != 0 {
            s.ejected &= !bit;
            true
        } else {
            s.eject_req &= !bit;
            false
        }
    }

    /// Takes `slot` off config space and its BAR off the MMIO bus (forced removal, or the
    /// guest's eject). Idempotent.
    pub fn unplug(&self, slot: usize) {
        let mut s = self.state.lock();
        self.unplug_locked(&mut s, slot);
    }

    fn unplug_locked(&self, s: &mut State, slot: usize) {
        let bit = Self::bit(slot);
        s.eject_req &= !bit;
        let taken = self
            .root
            .slots
            .write()
            .get_mut(slot)
            .and_then(|entry| entry.take());
        // Wherever the guest moved its BARs: off the bus, for good.
        if let Some(dev) = taken {
            dev.detach_bars();
        }
    }

    fn present(&self) -> u32 {
        self.root
            .slots
            .read()
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .fold(0, |acc, (i, _)| acc | Self::bit(i))
    }
}

impl BusDevice for PciHotplug {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        let reg = offset & !3;
        let shift = (offset % 4) * 8;
        if (offset % 4) as usize + data.len() > 4 {
            data.fill(0);
            return;
        }
        let v = match reg {
            REG_PCIU => {
                let mut s = self.state.lock();
                let v = s.changed;
                // Clear only the bytes this access returned.
                let mask = (u64::MAX >> (64 - 8 * data.len() as u64)) << shift;
                s.changed &= !(mask as u32);
                v
            }
            REG_PCID => self.state.lock().eject_req,
            REG_PRES => self.present(),
            _ => 0,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = (v >> (shift + 8 * i as u64)) as u8;
        }
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        if offset & !3 != REG_B0EJ || (offset % 4) as usize + data.len() > 4 {
            return;
        }
        let mut v = 0u32;
        for (i, b) in data.iter().enumerate() {
            v |= u32::from(*b) << ((offset % 4) as usize * 8 + 8 * i);
        }
        let mut s = self.state.lock();
        let released = v & s.eject_req;
        for slot in FIRST_SLOT..SLOTS {
            if released & Self::bit(slot) != 0 {
                self.unplug_locked(&mut s, slot);
            }
        }
        s.ejected |= released;
        drop(s);
        if released != 0 {
            self.cond.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::pci::PciDevice;

    /// A function whose BAR sits at `at` on `mmio` until it is detached.
    struct Dummy {
        mmio: Arc<Bus>,
        at: u64,
    }
    impl PciDevice for Dummy {
        fn config_read(&self, _reg: usize) -> u32 {
            0x1234_1af4
        }
        fn config_write(&self, _reg: usize, _offset: usize, _data: &[u8]) {}
        fn detach_bars(&self) {
            self.mmio.remove(self.at);
        }
    }
    impl BusDevice for Dummy {
        fn read(&self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(7);
        }
        fn write(&self, _base: u64, _offset: u64, _data: &[u8]) {}
    }

    fn r32(hp: &PciHotplug, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        hp.read(0, reg, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn eject_only_what_was_requested_and_wake_the_waiter() {
        let root = Arc::new(PciRoot::new());
        let mmio = Arc::new(Bus::new());
        for slot in [2usize, 3] {
            let d = Arc::new(Dummy {
                mmio: mmio.clone(),
                at: bar_of(slot),
            });
            root.slots.write()[slot] = Some(d.clone());
            mmio.insert(bar_of(slot), crate::virtio::pci::BAR_SIZE, d)
                .unwrap();
        }
        let hp = Arc::new(PciHotplug::new(root.clone()));
        assert_eq!(r32(&hp, REG_PRES), 1 | 1 << 2 | 1 << 3);
        hp.mark_changed(3);
        assert_eq!(r32(&hp, REG_PCIU), 1 << 3);
        assert_eq!(r32(&hp, REG_PCIU), 0, "read clears");

        // An eject nobody asked for is ignored.
        hp.write(0, REG_B0EJ, &(1u32 << 2).to_le_bytes());
        assert_eq!(r32(&hp, REG_PRES) & 1 << 2, 1 << 2);

        hp.request_eject(2);
        assert_eq!(r32(&hp, REG_PCID), 1 << 2);
        let hp2 = hp.clone();
        let waiter = std::thread::spawn(move || hp2.wait_ejected(2, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        // A byte write to the low byte carries bit 2; bit 3 was not requested.
        hp.write(0, REG_B0EJ, &[(1u8 << 2) | (1 << 3)]);
        assert!(waiter.join().unwrap());
        assert_eq!(r32(&hp, REG_PRES), 1 | 1 << 3);
        assert_eq!(r32(&hp, REG_PCID), 0);
        let mut b = [0u8; 4];
        assert!(!mmio.read(bar_of(2), &mut b), "BAR gone from the bus");
        assert!(mmio.read(bar_of(3), &mut b));

        // No answer: the request is withdrawn and a late eject changes nothing.
        hp.request_eject(3);
        assert!(!hp.wait_ejected(3, Duration::from_millis(20)));
        assert_eq!(r32(&hp, REG_PCID), 0);
        hp.write(0, REG_B0EJ, &(1u32 << 3).to_le_bytes());
        assert_eq!(r32(&hp, REG_PRES), 1 | 1 << 3);
        // Forced removal.
        hp.unplug(3);
        assert_eq!(r32(&hp, REG_PRES), 1);
        // Odd accesses are harmless.
        hp.write(0, 6, &[0xff; 4]);
        hp.read(0, 14, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
