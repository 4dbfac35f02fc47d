//! virtio-pci (modern) transport: the PCI function with virtio vendor capabilities, the common
//! configuration registers, ISR, device config, notify area (backed by ioeventfds) and the MSI-X
//! table, all in BAR 0 (64-bit, memory). BAR 0 is on the MMIO bus only while the guest has
//! memory decode on and the BAR at a usable address; the notify ioeventfds are registered exactly
//! while it is, at its current address, so a moved BAR takes them along and an unreachable one
//! drops them. Drives the device through reset and DRIVER_OK. A driver that programs an invalid
//! queue gets DEVICE_NEEDS_RESET, never a host failure.

use super::{ActivateContext, ActiveQueue, QueueIrq, VirtioDevice};
use crate::bus::{Bus, BusDevice};
use crate::error::{io_err, Result};
use crate::memory::GuestMemoryMmap;
use crate::pci::bar::BarMapping;
use crate::pci::msix::{GsiRouter, Msix, NO_VECTOR};
use crate::pci::{BarKind, ConfigSpace, PciDevice};
use crate::stats::DeviceCounters;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
pub(crate) const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_NEEDS_RESET: u8 = 0x40;
const STATUS_FAILED: u8 = 0x80;

#[derive(Clone, Copy)]
struct QueueRegs {
    size: u16,
    max: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

struct Common {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: u16,
    status: u8,
    generation: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    active: bool,
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    id: String,
    device_type: u32,
    config: Mutex<ConfigSpace>,
    common: Mutex<Common>,
    device: Mutex<Box<dyn VirtioDevice>>,
    features: u64,
    msix: Arc<Msix>,
    msix_cap: usize,
    notify: Vec<EventFd>,
    bar: Mutex<BarMapping>,
    vm: Arc<VmFd>,
    /// This device as the bus sees it (to put BAR 0 on the bus from `&self`).
    self_ref: Weak<VirtioPciDevice>,
    mem: Arc<GuestMemoryMmap>,
    counters: Arc<DeviceCounters>,
    threads: super::ThreadEnv,
}

impl VirtioPciDevice {
    /// Wraps `device` with BAR 0 assigned at `bar` (off the bus until the guest turns memory
    /// decode on), registering irqfds with `vm`; BAR 0 joins `mmio` when it decodes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        device: Box<dyn VirtioDevice>,
        bar: u64,
        vm: Arc<VmFd>,
        mmio: &Arc<Bus>,
        mem: Arc<GuestMemoryMmap>,
        router: Arc<GsiRouter>,
        threads: super::ThreadEnv,
    ) -> Result<Arc<Self>> {
        let device_type = device.device_type();
        let maxes = device.queue_max_sizes();
        let nq = u16::try_from(maxes.len()).unwrap_or(u16::MAX);
        let vectors = nq + 1;
        let msix = Arc::new(Msix::new(vectors, &vm, router)?);
        let pci_id = 0x1040 + device_type as u16;
        let class = match device_type {
            super::TYPE_BLOCK => 0x01_8000,
            super::TYPE_NET => 0x02_0000,
            _ => 0xff_0000,
        };
        let mut cs = ConfigSpace::new(0x1af4, pci_id, class, 0x1af4, 0x40);
        cs.add_bar(0, BarKind::Mem64, bar, BAR_SIZE);
        // MSI-X: control (table size - 1), table at BAR0+MSIX_TABLE, PBA at BAR0+MSIX_PBA.
        let mut body = Vec::new();
        body.extend_from_slice(&(vectors - 1).to_le_bytes());
        body.extend_from_slice(&(MSIX_TABLE as u32).to_le_bytes());
        body.extend_from_slice(&(MSIX_PBA as u32).to_le_bytes());
        let msix_cap = cs.add_capability(0x11, &body);
        cs.set_writable(msix_cap + 3, 1);
        for (cfg_type, off, len) in [
            (1u8, COMMON, 0x38u32),
            (3, ISR, 1),
            (4, DEVICE, 0x1000),
            (2, NOTIFY, 0x1000),
        ] {
            let mut b = vec![if cfg_type == 2 { 20 } else { 16 }, cfg_type, 0, 0, 0, 0];
            b.extend_from_slice(&(off as u32).to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            if cfg_type == 2 {
                b.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
            }
            cs.add_capability(0x09, &b);
        }
        let mut notify = Vec::new();
        for _ in 0..nq {
            notify.push(EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("notify eventfd"))?);
        }
        let queues = maxes
            .iter()
            .map(|&m| QueueRegs {
                size: m,
                max: m,
                vector: NO_VECTOR,
                enabled: false,
                desc: 0,
                avail: 0,
                used: 0,
            })
            .collect();
        let counters = device.counters();
        let features = device.features();
        let bar = Mutex::new(BarMapping::new(mmio));
        Ok(Arc::new_cyclic(|self_ref| Self {
            id,
            device_type,
            config: Mutex::new(cs),
            common: Mutex::new(Common {
                device_feature_select: 0,
                driver_feature_select: 0,
                driver_features: 0,
                config_vector: NO_VECTOR,
                status: 0,
                generation: 0,
                queue_select: 0,
                queues,
                active: false,
            }),
            device: Mutex::new(device),
            features,
            msix,
            msix_cap,
            notify,
            bar,
            vm,
            self_ref: self_ref.clone(),
            mem,
            counters,
            threads,
        }))
    }

    /// Config id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Counters.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    /// Hot-unplug: takes BAR 0 off the bus with its notify ioeventfds and releases the MSI-X
    /// irqfds and routes so the BAR space and the GSIs can be reused. Call after
    /// [`Self::reset_device`].
    pub fn release(&self) {
        self.detach_bars();
        self.msix.release();
    }

    /// Where BAR 0 decodes now (None when it is off the bus).
    pub fn bar_address(&self) -> Option<u64> {
        self.bar.lock().at()
    }

    fn notify_addr(base: u64, q: usize) -> IoEventAddress {
        IoEventAddress::Mmio(base + NOTIFY + q as u64 * u64::from(NOTIFY_MULTIPLIER))
    }

    fn unregister_notify(&self, base: u64, count: usize) {
        for (q, fd) in self.notify.iter().enumerate().take(count) {
            let _ = self
                .vm
                .unregister_ioevent(fd, &Self::notify_addr(base, q), NoDatamatch);
        }
    }

    /// Registers every queue's notify ioeventfd under BAR 0 at `base`; all or none.
    fn register_notify(&self, base: u64) -> bool {
        for (q, fd) in self.notify.iter().enumerate() {
            if self
                .vm
                .register_ioevent(fd, &Self::notify_addr(base, q), NoDatamatch)
                .is_err()
            {
                self.unregister_notify(base, q);
                return false;
            }
        }
        true
    }

    fn as_bus_device(&self) -> Option<Arc<dyn BusDevice>> {
        self.self_ref.upgrade().map(|d| -> Arc<dyn BusDevice> { d })
    }

    /// Device reset: stops threads, forgets queue state.
    pub fn reset_device(&self) {
        let mut c = self.common.lock();
        self.reset_locked(&mut c);
    }

    fn reset_locked(&self, c: &mut Common) {
        if c.active {
            self.device.lock().reset();
        }
        c.active = false;
        c.status = 0;
        c.driver_features = 0;
        c.config_vector = NO_VECTOR;
        c.queue_select = 0;
        for q in &mut c.queues {
            *q = QueueRegs {
                size: q.max,
                max: q.max,
                vector: NO_VECTOR,
                enabled: false,
                desc: 0,
                avail: 0,
                used: 0,
            };
        }
    }

    fn activate(&self, c: &mut Common) -> bool {
        let mut queues = Vec::new();
        for (i, r) in c.queues.iter().enumerate() {
            if !r.enabled {
                continue;
            }
            let Ok(mut q) = Queue::new(r.max) else {
                return false;
            };
            q.set_size(r.size);
            q.set_desc_table_address(Some(r.desc as u32), Some((r.desc >> 32) as u32));
            q.set_avail_ring_address(Some(r.avail as u32), Some((r.avail >> 32) as u32));
            q.set_used_ring_address(Some(r.used as u32), Some((r.used >> 32) as u32));
            q.set_event_idx(c.driver_features & super::F_EVENT_IDX != 0);
            q.set_ready(true);
            if !q.is_valid(&*self.mem) {
                return false;
            }
            let Ok(notify) = self.notify[i].try_clone() else {
                return false;
            };
            let irq = QueueIrq {
                msix: self.msix.clone(),
                vector: r.vector,
                counters: self.counters.clone(),
            };
            queues.push(ActiveQueue {
                index: i as u16,
                queue: q,
                notify,
                irq,
            });
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            features: c.driver_features,
            queues,
            seccomp: self.threads.seccomp,
            cpu: self.threads.cpu.clone(),
            name: self.id.clone(),
        };
        self.device.lock().activate(ctx).is_ok()
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let c = self.common.lock();
        let q = c.queues.get(usize::from(c.queue_select));
        let v: u64 = match offset {
            0x00 => u64::from(c.device_feature_select),
            0x04 => match c.device_feature_select {
                0 => self.features & 0xffff_ffff,
                1 => self.features >> 32,
                _ => 0,
            },
            0x08 => u64::from(c.driver_feature_select),
            0x0c => match c.driver_feature_select {
                0 => c.driver_features & 0xffff_ffff,
                1 => c.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(c.config_vector),
            0x12 => c.queues.len() as u64,
            0x14 => u64::from(c.status),
            0x15 => u64::from(c.generation),
            0x16 => u64::from(c.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.size)),
            0x1a => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            0x1c => q.map_or(0, |q| u64::from(q.enabled)),
            0x1e => u64::from(c.queue_select),
            0x20 | 0x24 => q.map_or(0, |q| q.desc) >> ((offset - 0x20) * 8),
            0x28 | 0x2c => q.map_or(0, |q| q.avail) >> ((offset - 0x28) * 8),
            0x30 | 0x34 => q.map_or(0, |q| q.used) >> ((offset - 0x30) * 8),
            _ => 0,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = (v >> (8 * i)) as u8;
        }
    }

    fn common_write(&self, offset: u64, data: &[u8]) {
        let mut v = 0u64;
        for (i, b) in data.iter().enumerate().take(8) {
            v |= u64::from(*b) << (8 * i);
        }
        let mut c = self.common.lock();
        let qs = usize::from(c.queue_select);
        // Queue registers are frozen once the driver is running (spec 4.1.4.3.2).
        let live = c.status & STATUS_DRIVER_OK != 0;
        match offset {
            0x00 => c.device_feature_select = v as u32,
            0x08 => c.driver_feature_select = v as u32,
            0x0c if c.status & STATUS_FEATURES_OK == 0 => match c.driver_feature_select {
                0 => c.driver_features = (c.driver_features & !0xffff_ffff) | (v & 0xffff_ffff),
                1 => {
                    c.driver_features =
                        (c.driver_features & 0xffff_ffff) | ((v & 0xffff_ffff) << 32)
                }
                _ => {}
            },
            0x10 => c.config_vector = v as u16,
            0x14 => self.status_write(&mut c, v as u8),
            0x16 => c.queue_select = v as u16,
            _ if live => {}
            _ => {
                let Some(q) = c.queues.get_mut(qs) else {
                    return;
                };
                match offset {
                    0x18 => q.size = v as u16,
                    0x1a => {
                        q.vector = if (v as usize) < self.msix.len() {
                            v as u16
                        } else {
                            NO_VECTOR
                        }
                    }
                    0x1c => q.enabled = v & 1 != 0,
                    0x20 => q.desc = set_low(q.desc, v, data.len()),
                    0x24 => q.desc = (q.desc & 0xffff_ffff) | (v << 32),
                    0x28 => q.avail = set_low(q.avail, v, data.len()),
                    0x2c => q.avail = (q.avail & 0xffff_ffff) | (v << 32),
                    0x30 => q.used = set_low(q.used, v, data.len()),
                    0x34 => q.used = (q.used & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
        }
    }

    fn status_write(&self, c: &mut Common, status: u8) {
        if status == 0 {
            self.reset_locked(c);
            return;
        }
        let mut status = status;
        if status & STATUS_FEATURES_OK != 0 && c.status & STATUS_FEATURES_OK == 0 {
            // Refuse features we did not offer, and require VERSION_1 (modern only).
            let bad = c.driver_features & !self.features != 0
                || c.driver_features & super::F_VERSION_1 == 0;
            if bad {
                status &= !STATUS_FEATURES_OK;
            }
        }
        if status & STATUS_DRIVER_OK != 0 && !c.active {
            if c.status & STATUS_FEATURES_OK == 0 && status & STATUS_FEATURES_OK == 0 {
                status |= STATUS_FAILED;
            } else if self.activate(c) {
                c.active = true;
            } else {
                status |= STATUS_NEEDS_RESET;
            }
        }
        c.status = status | (c.status & STATUS_ACKNOWLEDGE);
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&self, reg: usize) -> u32 {
        self.config.lock().read(reg)
    }

    fn sync_bars(&self) -> bool {
        let Some(me) = self.as_bus_device() else {
            return false;
        };
        let n = self.notify.len();
        // The mapping lock serialises moves; config is read under it so two vCPUs writing
        // config at once cannot leave the bus behind the registers.
        let mut bar = self.bar.lock();
        let want = self.config.lock().bar_decode(0);
        bar.sync(
            want,
            &me,
            &mut |old| self.unregister_notify(old, n),
            &mut |new| self.register_notify(new),
        )
    }

    fn detach_bars(&self) {
        let Some(me) = self.as_bus_device() else {
            return;
        };
        let n = self.notify.len();
        self.bar
            .lock()
            .detach(&me, &mut |old| self.unregister_notify(old, n));
    }

    fn bar_ranges(&self) -> Vec<(u64, u64)> {
        self.config
            .lock()
            .bar(0)
            .map(|(_, a, s)| (a, s))
            .into_iter()
            .collect()
    }

    fn config_write(&self, reg: usize, offset: usize, data: &[u8]) {
        let mut cs = self.config.lock();
        cs.write(reg, offset, data);
        if reg == self.msix_cap / 4 {
            let control = (cs.read(reg) >> 16) as u16;
            drop(cs);
            self.msix.set_control(control);
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < ISR => self.common_read(o - COMMON, data),
            o if o < DEVICE => {
                // ISR: MSI-X only, so nothing is ever pending here; reading clears it anyway.
                data.fill(0);
                let _ = o;
            }
            o if o < NOTIFY => self.device.lock().read_config(o - DEVICE, data),
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => self.msix.table_read(o - MSIX_TABLE, data),
            o if (MSIX_PBA..MSIX_PBA + 0x1000).contains(&o) => {
                self.msix.pba_read(o - MSIX_PBA, data)
            }
            _ => data.fill(0),
        }
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            o if o < ISR => self.common_write(o - COMMON, data),
            o if o < DEVICE => {}
            o if o < NOTIFY => self.device.lock().write_config(o - DEVICE, data),
            o if o < MSIX_TABLE => {
                // A notify that missed the ioeventfd (e.g. odd access size): forward it.
                let q = ((o - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(fd) = self.notify.get(q) {
                    let _ = fd.write(1);
                }
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => self.msix.table_write(o - MSIX_TABLE, data),
            _ => {}
        }
    }
}

/// Writes the low half of a 64-bit register, or all of it for an 8-byte access.
fn set_low(old: u64, v: u64, len: usize) -> u64 {
    if len == 8 {
        v
    } else {
        (old & !0xffff_ffff) | (v & 0xffff_ffff)
    }
}
