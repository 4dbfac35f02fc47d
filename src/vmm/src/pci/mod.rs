//! PCI: configuration space model, the bus-0 root reached through 0xCF8/0xCFC and ECAM, and the
//! VM's set of PCI devices. BARs are assigned once by the VMM (no firmware); a guest writing a
//! BAR can size it but cannot move it (moves are ignored). A disk can be added to a running VM
//! ([`PciSetup::hot_add_disk`]): it takes the lowest free slot and that slot's BAR window and is
//! visible at the guest's next enumeration; the caller then signals the guest (ACPI GPE). A disk
//! leaves through [`hotplug`] (the guest's eject, or by force) and [`PciSetup::finish_remove`],
//! which frees the slot, its BAR window, eventfds and interrupt routes for reuse.

pub mod hotplug;
pub mod msix;

use crate::bus::{Bus, BusDevice};
use crate::config::VmConfig;
use crate::error::Result;
use crate::layout::{self, ports};
use crate::memory::GuestMemoryMmap;
use crate::stats::DeviceStats;
use crate::virtio::pci::VirtioPciDevice;
use kvm_ioctls::VmFd;
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;

/// A function on bus 0.
pub trait PciDevice: Send + Sync {
    /// Reads 32-bit config register `reg` (0..64 for 256-byte space, 0..1024 for ECAM).
    fn config_read(&self, reg: usize) -> u32;
    /// Writes `data` at byte `offset` (0..4) of register `reg`.
    fn config_write(&self, reg: usize, offset: usize, data: &[u8]);
}

/// 256 bytes of config space with per-bit write masks.
pub struct ConfigSpace {
    regs: [u32; 64],
    wmask: [u32; 64],
    bars: [(u64, u64); 6],
    next_cap: usize,
    last_cap: usize,
}

impl ConfigSpace {
    /// A type-0 header.
    pub fn new(vendor: u16, device: u16, class: u32, subsys_vendor: u16, subsys: u16) -> Self {
        let mut c = ConfigSpace {
            regs: [0; 64],
            wmask: [0; 64],
            bars: [(0, 0); 6],
            next_cap: 0x40,
            last_cap: 0,
        };
        c.regs[0] = u32::from(vendor) | (u32::from(device) << 16);
        c.regs[1] = 1 << 20; // status: capabilities list
        c.wmask[1] = 0x0000_0547; // command: io, mem, bus master, parity, serr, intx disable
        c.regs[2] = (class << 8) | 1; // revision 1
        c.regs[11] = u32::from(subsys_vendor) | (u32::from(subsys) << 16);
        c.regs[15] = 0x0100; // interrupt pin A, line 0
        c.wmask[15] = 0xff;
        c
    }

    /// Declares 32-bit memory BAR `idx` at `addr` of `size` (a power of two).
    pub fn set_bar(&mut self, idx: usize, addr: u64, size: u64) {
        self.bars[idx] = (addr, size);
        self.regs[4 + idx] = addr as u32;
        self.wmask[4 + idx] = !(size as u32 - 1) & !0xf;
    }

    /// Appends a capability with body `body` (after the id/next bytes); returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> usize {
        let off = self.next_cap;
        let len = (2 + body.len()).div_ceil(4) * 4;
        let mut bytes = vec![id, 0];
        bytes.extend_from_slice(body);
        bytes.resize(len, 0);
        for (i, b) in bytes.iter().enumerate() {
            self.set_byte(off + i, *b);
        }
        if off == 0x40 {
            self.set_byte(0x34, 0x40);
        } else {
            let prev = self.last_cap;
            self.set_byte(prev + 1, off as u8);
        }
        self.last_cap = off;
        self.next_cap = off + len;
        off
    }

    fn set_byte(&mut self, off: usize, v: u8) {
        let shift = (off % 4) * 8;
        self.regs[off / 4] = (self.regs[off / 4] & !(0xff << shift)) | (u32::from(v) << shift);
    }

    /// Marks bytes `off..off+len` guest-writable.
    pub fn set_writable(&mut self, off: usize, len: usize) {
        for o in off..off + len {
            self.wmask[o / 4] |= 0xff << ((o % 4) * 8);
        }
    }

    /// Register read.
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// Byte-granular write through the write mask; BAR moves are undone.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if reg >= 64 || offset + data.len() > 4 {
            return;
        }
        let mut v = 0u32;
        let mut m = 0u32;
        for (i, b) in data.iter().enumerate() {
            v |= u32::from(*b) << ((offset + i) * 8);
            m |= 0xff << ((offset + i) * 8);
        }
        let m = m & self.wmask[reg];
        self.regs[reg] = (self.regs[reg] & !m) | (v & m);
        if (4..10).contains(&reg) {
            let (addr, size) = self.bars[reg - 4];
            let probe = !(size as u32).wrapping_sub(1) & !0xf;
            if size != 0 && self.regs[reg] != probe {
                self.regs[reg] = addr as u32;
            }
        }
    }

    /// Byte at `off` (capability parsing in tests).
    pub fn byte(&self, off: usize) -> u8 {
        (self.read(off / 4) >> ((off % 4) * 8)) as u8
    }
}

struct HostBridge(Mutex<ConfigSpace>);

impl PciDevice for HostBridge {
    fn config_read(&self, reg: usize) -> u32 {
        self.0.lock().read(reg)
    }
    fn config_write(&self, reg: usize, offset: usize, data: &[u8]) {
        self.0.lock().write(reg, offset, data)
    }
}

/// Bus 0: up to 32 single-function devices (slots fill while the VM runs on hot-add).
pub struct PciRoot {
    slots: RwLock<Vec<Option<Arc<dyn PciDevice>>>>,
    address: Mutex<u32>,
}

impl PciRoot {
    fn new() -> Self {
        let mut slots: Vec<Option<Arc<dyn PciDevice>>> = (0..32).map(|_| None).collect();
        // Host bridge at 00:00.0 (class 06/00).
        slots[0] = Some(Arc::new(HostBridge(Mutex::new(ConfigSpace::new(
            0x8086, 0x0d57, 0x06_0000, 0, 0,
        )))));
        Self {
            slots: RwLock::new(slots),
            address: Mutex::new(0),
        }
    }

    fn slot(&self, dev: u32) -> Option<Arc<dyn PciDevice>> {
        self.slots.read().get(dev as usize).and_then(|s| s.clone())
    }

    fn read(&self, bus: u32, dev: u32, func: u32, reg: usize) -> u32 {
        if bus != 0 || func != 0 {
            return 0xffff_ffff;
        }
        match self.slot(dev) {
            Some(d) => d.config_read(reg),
            None => 0xffff_ffff,
        }
    }

    fn write(&self, bus: u32, dev: u32, func: u32, reg: usize, offset: usize, data: &[u8]) {
        if bus != 0 || func != 0 {
            return;
        }
        if let Some(d) = self.slot(dev) {
            d.config_write(reg, offset, data);
        }
    }
}

/// 0xCF8 (address) / 0xCFC (data) access.
pub struct PciConfigIo(pub Arc<PciRoot>);

impl BusDevice for PciConfigIo {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        let addr = *self.0.address.lock();
        let v = if offset < 4 {
            addr
        } else if addr & 0x8000_0000 != 0 {
            let (bus, dev, func, reg) = (
                (addr >> 16) & 0xff,
                (addr >> 11) & 0x1f,
                (addr >> 8) & 7,
                ((addr >> 2) & 0x3f) as usize,
            );
            self.0.read(bus, dev, func, reg)
        } else {
            0xffff_ffff
        };
        let shift = (offset % 4) * 8;
        for (i, b) in data.iter_mut().enumerate() {
            *b = (v >> (shift + 8 * i as u64).min(31)) as u8;
        }
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            *self.0.address.lock() = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            return;
        }
        if offset < 4 {
            return;
        }
        let addr = *self.0.address.lock();
        if addr & 0x8000_0000 == 0 || (offset % 4) as usize + data.len() > 4 {
            return;
        }
        let (bus, dev, func, reg) = (
            (addr >> 16) & 0xff,
            (addr >> 11) & 0x1f,
            (addr >> 8) & 7,
            ((addr >> 2) & 0x3f) as usize,
        );
        self.0
            .write(bus, dev, func, reg, (offset % 4) as usize, data);
    }
}

/// ECAM MMIO access for bus 0.
pub struct PciConfigMmio(pub Arc<PciRoot>);

impl BusDevice for PciConfigMmio {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        let (dev, func, reg) = (
            ((offset >> 15) & 0x1f) as u32,
            ((offset >> 12) & 7) as u32,
            ((offset & 0xfff) >> 2) as usize,
        );
        let v = if reg < 64 {
            self.0.read(0, dev, func, reg)
        } else {
            0
        };
        let shift = (offset % 4) * 8;
        for (i, b) in data.iter_mut().enumerate() {
            *b = (v >> (shift + 8 * i as u64).min(31)) as u8;
        }
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        let (dev, func, reg) = (
            ((offset >> 15) & 0x1f) as u32,
            ((offset >> 12) & 7) as u32,
            ((offset & 0xfff) >> 2) as usize,
        );
        if (offset % 4) as usize + data.len() <= 4 {
            self.0.write(0, dev, func, reg, (offset % 4) as usize, data);
        }
    }
}

/// What adding a PCI device needs, kept for hot-add.
struct Wiring {
    root: Arc<PciRoot>,
    router: Arc<msix::GsiRouter>,
    vm: Arc<VmFd>,
    mem: Arc<GuestMemoryMmap>,
    mmio: Arc<Bus>,
    threads: crate::virtio::ThreadEnv,
    hotplug: Arc<hotplug::PciHotplug>,
}

impl Wiring {
    /// Wraps `dev` in virtio-pci at the lowest free slot and that slot's BAR window.
    fn add(&mut self, dev: Box<dyn crate::virtio::VirtioDevice>, id: String) -> Result<Attached> {
        let slot = (hotplug::FIRST_SLOT..hotplug::SLOTS)
            .find(|&s| self.root.slots.read()[s].is_none())
            .ok_or_else(|| {
                crate::error::VmmError::InvalidConfig(
                    "no free PCI slot (bus 0 holds 31 devices)".into(),
                )
            })?;
        let bar = hotplug::bar_of(slot);
        debug_assert!(
            bar + crate::virtio::pci::BAR_SIZE <= layout::MMIO_START + layout::PCI_MMIO_SIZE
        );
        let d = Arc::new(VirtioPciDevice::new(
            id,
            dev,
            bar,
            self.vm.clone(),
            self.mem.clone(),
            self.router.clone(),
            self.threads.clone(),
        )?);
        if let Err(e) = self
            .mmio
            .insert(bar, crate::virtio::pci::BAR_SIZE, d.clone())
        {
            d.release(&self.vm);
            return Err(e);
        }
        self.root.slots.write()[slot] = Some(d.clone());
        Ok(Attached { slot, dev: d })
    }
}

/// A device on the bus and the slot it occupies.
struct Attached {
    slot: usize,
    dev: Arc<VirtioPciDevice>,
}

/// The VM's PCI root and devices.
#[derive(Default)]
pub struct PciSetup {
    devices: Vec<Attached>,
    /// Host end of the virtio-console, if configured.
    pub console: Option<Arc<crate::virtio::console::ConsolePort>>,
    wiring: Option<Wiring>,
}

impl PciSetup {
    /// Builds the root and one virtio-pci device per configured disk/NIC (+ rng).
    pub fn build(
        cfg: &VmConfig,
        vm: &Arc<VmFd>,
        mem: &Arc<GuestMemoryMmap>,
        pio: &Arc<Bus>,
        mmio: &Arc<Bus>,
        cpu: &Arc<crate::stats::ThreadCpu>,
    ) -> Result<Self> {
        let root = Arc::new(PciRoot::new());
        let mut w = Wiring {
            root: root.clone(),
            router: Arc::new(msix::GsiRouter::new(vm.clone())),
            vm: vm.clone(),
            mem: mem.clone(),
            mmio: mmio.clone(),
            threads: crate::virtio::ThreadEnv {
                seccomp: cfg.seccomp,
                cpu: cpu.clone(),
            },
            hotplug: Arc::new(hotplug::PciHotplug::new(root.clone(), mmio.clone())),
        };
        let mut devices = Vec::new();
        let mut add = |dev: Box<dyn crate::virtio::VirtioDevice>, id: String| -> Result<()> {
            devices.push(w.add(dev, id)?);
            Ok(())
        };
        for disk in &cfg.disks {
            add(
                Box::new(crate::virtio::blk::Blk::new(disk)),
                disk.id.clone(),
            )?;
        }
        if cfg.rng {
            add(Box::<crate::virtio::rng::Rng>::default(), "rng".into())?;
        }
        let mut console = None;
        if cfg.virtio_console {
            let (dev, port) = crate::virtio::console::Console::new()?;
            add(Box::new(dev), "console".into())?;
            console = Some(port);
        }
        for nic in &cfg.nets {
            // One queue pair per vCPU, so each vCPU can have its own rx/tx path.
            let net = crate::virtio::net::Net::new(nic, u16::from(cfg.vcpus))?;
            add(Box::new(net), nic.id.clone())?;
        }
        pio.insert(
            u64::from(hotplug::PCIHP_PORT),
            u64::from(hotplug::PCIHP_LEN),
            w.hotplug.clone(),
        )?;
        pio.insert(
            u64::from(ports::PCI_CONFIG_ADDRESS),
            8,
            Arc::new(PciConfigIo(root.clone())),
        )?;
        mmio.insert(
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
            Arc::new(PciConfigMmio(root)),
        )?;
        Ok(Self {
            devices,
            console,
            wiring: Some(w),
        })
    }

    /// Adds a virtio-blk device for `disk` to the live bus (next free slot). The guest sees it
    /// at its next enumeration; the caller signals the change.
    pub fn hot_add_disk(&mut self, disk: &crate::config::DiskConfig) -> Result<()> {
        if self.devices.iter().any(|d| d.dev.id() == disk.id) {
            return Err(crate::error::VmmError::InvalidConfig(format!(
                "a device with id {:?} is already attached",
                disk.id
            )));
        }
        let w = self
            .wiring
            .as_mut()
            .ok_or_else(|| crate::error::VmmError::InvalidConfig("PCI bus not built".into()))?;
        let d = w.add(
            Box::new(crate::virtio::blk::Blk::new(disk)),
            disk.id.clone(),
        )?;
        w.hotplug.mark_changed(d.slot);
        self.devices.push(d);
        Ok(())
    }

    /// The slot holding the device with config id `id`.
    pub fn slot_of(&self, id: &str) -> Option<usize> {
        self.devices
            .iter()
            .find(|d| d.dev.id() == id)
            .map(|d| d.slot)
    }

    /// The hot-plug registers (None before the bus is built).
    pub fn hotplug(&self) -> Option<&Arc<hotplug::PciHotplug>> {
        self.wiring.as_ref().map(|w| &w.hotplug)
    }

    /// Releases the device in `slot` after it left the bus (guest eject or forced unplug):
    /// takes it off the bus if still there, stops its threads once in-flight requests are
    /// done, and frees its eventfds, interrupt routes and slot for reuse.
    pub fn finish_remove(&mut self, slot: usize) {
        let Some(pos) = self.devices.iter().position(|d| d.slot == slot) else {
            return;
        };
        let d = self.devices.remove(pos);
        if let Some(w) = &self.wiring {
            w.hotplug.unplug(slot);
            d.dev.reset_device();
            d.dev.release(&w.vm);
        }
    }

    /// Stops every device's threads.
    pub fn shutdown(&mut self) {
        for d in &self.devices {
            d.dev.reset_device();
        }
    }

    /// Disk counters.
    pub fn disk_stats(&self) -> Vec<DeviceStats> {
        self.stats_of(crate::virtio::TYPE_BLOCK)
    }

    /// NIC counters.
    pub fn nic_stats(&self) -> Vec<DeviceStats> {
        self.stats_of(crate::virtio::TYPE_NET)
    }

    fn stats_of(&self, ty: u32) -> Vec<DeviceStats> {
        self.devices
            .iter()
            .filter(|d| d.dev.device_type() == ty)
            .map(|d| d.dev.counters().snapshot(d.dev.id()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_sizing_and_moves() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 0x01_0000, 0x1af4, 2);
        c.set_bar(0, 0xc000_0000, 0x8000);
        c.write(4, 0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.read(4), 0xffff_8000);
        c.write(4, 0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(c.read(4), 0xc000_0000, "BAR moves are refused");
        c.write(0, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(c.read(0), 0x1042_1af4, "ids are read-only");
        let off = c.add_capability(0x11, &[1, 2]);
        let off2 = c.add_capability(0x09, &[3]);
        assert_eq!(c.byte(0x34) as usize, off);
        assert_eq!(c.byte(off + 1) as usize, off2);
        c.write(70, 0, &[1]); // out of range: ignored, no panic
        assert_eq!(c.read(70), 0);
    }
}
