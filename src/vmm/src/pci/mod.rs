//! PCI: the bus-0 root reached through 0xCF8/0xCFC and ECAM, and the VM's set of PCI devices.
//! Config space lives in [`config`]. The VMM pre-assigns every BAR (no firmware) with decode
//! off; the guest turns decode on and may size and move BARs like on real hardware: the device
//! then follows on the MMIO bus, with its ioeventfds (see [`bar`]). After any device's ranges
//! change, every other device re-checks its own, so one that was blocked by an overlap gets its
//! range once it is free. A disk can be added to a running VM ([`PciSetup::hot_add_disk`]): it
//! takes the lowest free slot and a free BAR address and is
//! visible at the guest's next enumeration; the caller then signals the guest (ACPI GPE). A disk
//! leaves through [`hotplug`] (the guest's eject, or by force) and [`PciSetup::finish_remove`],
//! which frees the slot, its BAR window, eventfds and interrupt routes for reuse.

pub mod bar;
pub mod config;
pub mod hotplug;
pub mod msix;

pub use config::{BarKind, ConfigSpace};

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
    /// Brings the device's ranges on the bus in line with its BARs and command register;
    /// true when a range left or joined the bus. Devices without BARs keep the default.
    fn sync_bars(&self) -> bool {
        false
    }
    /// Takes the device's ranges off the bus for good (hot-unplug).
    fn detach_bars(&self) {}
    /// The memory ranges its BARs are programmed to, decoding or not (placing a new device).
    fn bar_ranges(&self) -> Vec<(u64, u64)> {
        Vec::new()
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
        let Some(d) = self.slot(dev) else {
            return;
        };
        d.config_write(reg, offset, data);
        if d.sync_bars() {
            // A range was freed or taken: a device whose BAR overlapped may now fit.
            let others: Vec<_> = self.slots.read().iter().flatten().cloned().collect();
            for o in others {
                if !Arc::ptr_eq(&o, &d) {
                    o.sync_bars();
                }
            }
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
        let bar = self.free_bar(hotplug::bar_of(slot))?;
        let d = VirtioPciDevice::new(
            id,
            dev,
            bar,
            self.vm.clone(),
            &self.mmio,
            self.mem.clone(),
            self.router.clone(),
            self.threads.clone(),
        )?;
        self.root.slots.write()[slot] = Some(d.clone());
        Ok(Attached { slot, dev: d })
    }
}

impl Wiring {
    /// `preferred` if no device claims or was assigned any of it, else the first such
    /// BAR-sized, aligned address in the window (a guest may have moved a BAR onto the slot's
    /// default place).
    fn free_bar(&self, preferred: u64) -> Result<u64> {
        let size = crate::virtio::pci::BAR_SIZE;
        let taken: Vec<(u64, u64)> = self
            .root
            .slots
            .read()
            .iter()
            .flatten()
            .flat_map(|d| d.bar_ranges())
            .collect();
        let free = |a: u64| {
            bar::in_window(a, size)
                && self.mmio.is_free(a, size)
                && taken.iter().all(|&(s, l)| a + size <= s || s + l <= a)
        };
        let (start, end) = bar::window();
        std::iter::once(preferred)
            .chain((start..end).step_by(size as usize))
            .find(|&a| free(a))
            .ok_or_else(|| crate::error::VmmError::InvalidConfig("no free BAR space".into()))
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
            hotplug: Arc::new(hotplug::PciHotplug::new(root.clone())),
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

    /// Where the device with config id `id` decodes its BAR 0 now (None: not on the bus,
    /// e.g. decode off, moved out of the window or onto another device).
    pub fn bar_of(&self, id: &str) -> Option<u64> {
        self.devices
            .iter()
            .find(|d| d.dev.id() == id)
            .and_then(|d| d.dev.bar_address())
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
            d.dev.release();
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
mod tests;
