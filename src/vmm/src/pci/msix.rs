//! MSI-X: the per-device vector table and PBA, and the VM-wide GSI routing table that turns
//! each vector into a KVM MSI route fed by an irqfd. Masked vectors latch in the PBA and fire on
//! unmask. Guest writes are bounded to the table; out-of-range accesses read zero.

use crate::error::{io_err, kvm_err, Result, VmmError};
use crate::layout::{MAX_GSI, MSI_GSI_BASE};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// GSI -> (MSI address, data).
type MsiRoutes = BTreeMap<u32, (u64, u32)>;

/// The VM's GSI routing table (KVM replaces the whole table on every update).
pub struct GsiRouter {
    vm: Arc<VmFd>,
    msi: Mutex<(u32, MsiRoutes)>,
    /// GSIs given back by removed devices, reused before fresh ones (hot-plug cycles).
    free: Mutex<Vec<u32>>,
}

impl GsiRouter {
    /// A router with only the default irqchip routes.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            msi: Mutex::new((MSI_GSI_BASE, BTreeMap::new())),
            free: Mutex::new(Vec::new()),
        }
    }

    /// Hands out a fresh GSI for an MSI vector.
    pub fn alloc(&self) -> Result<u32> {
        if let Some(gsi) = self.free.lock().pop() {
            return Ok(gsi);
        }
        let mut g = self.msi.lock();
        if g.0 > MAX_GSI {
            return Err(VmmError::InvalidConfig("out of GSIs".into()));
        }
        g.0 += 1;
        Ok(g.0 - 1)
    }

    /// Points `gsi` at MSI address/data (None removes the route) and commits the table.
    pub fn set(&self, gsi: u32, msi: Option<(u64, u32)>) -> Result<()> {
        let mut g = self.msi.lock();
        match msi {
            Some(m) => g.1.insert(gsi, m),
            None => g.1.remove(&gsi),
        };
        let mut table = KvmIrqRouting::new(0)
            .map_err(|e| VmmError::InvalidConfig(format!("routing: {e:?}")))?;
        let push = |t: &mut KvmIrqRouting, e: kvm_irq_routing_entry| {
            t.push(e)
                .map_err(|e| VmmError::InvalidConfig(format!("routing: {e:?}")))
        };
        for pin in 0..24u32 {
            let mut e = kvm_irq_routing_entry {
                gsi: pin,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
            e.u.irqchip.pin = pin;
            push(&mut table, e)?;
            if pin < 16 && pin != 2 {
                let mut e = kvm_irq_routing_entry {
                    gsi: pin,
                    type_: KVM_IRQ_ROUTING_IRQCHIP,
                    ..Default::default()
                };
                e.u.irqchip.irqchip = if pin < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                e.u.irqchip.pin = pin % 8;
                push(&mut table, e)?;
            }
        }
        for (&gsi, &(addr, data)) in &g.1 {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = addr as u32;
            e.u.msi.address_hi = (addr >> 32) as u32;
            e.u.msi.data = data;
            push(&mut table, e)?;
        }
        self.vm
            .set_gsi_routing(&table)
            .map_err(kvm_err("set_gsi_routing"))
    }
}

#[derive(Clone, Copy, Default)]
struct Entry {
    addr: u64,
    data: u32,
    masked: bool,
}

struct State {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    func_masked: bool,
}

/// One device's MSI-X vectors.
pub struct Msix {
    state: Mutex<State>,
    irqfds: Vec<EventFd>,
    gsis: Vec<u32>,
    router: Arc<GsiRouter>,
}

/// Value meaning "no vector" in virtio's msix_vector fields.
pub const NO_VECTOR: u16 = 0xffff;

impl Msix {
    /// `n` vectors, each with an irqfd registered on its own GSI.
    pub fn new(n: u16, vm: &VmFd, router: Arc<GsiRouter>) -> Result<Self> {
        let mut irqfds = Vec::new();
        let mut gsis = Vec::new();
        for _ in 0..n {
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("msi eventfd"))?;
            let gsi = router.alloc()?;
            vm.register_irqfd(&fd, gsi)
                .map_err(kvm_err("register_irqfd"))?;
            irqfds.push(fd);
            gsis.push(gsi);
        }
        let entries = vec![
            Entry {
                masked: true,
                ..Default::default()
            };
            usize::from(n)
        ];
        let pending = vec![false; usize::from(n)];
        Ok(Self {
            state: Mutex::new(State {
                entries,
                pending,
                enabled: false,
                func_masked: false,
            }),
            irqfds,
            gsis,
            router,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.gsis.len()
    }

    /// True when the device has no vectors.
    pub fn is_empty(&self) -> bool {
        self.gsis.is_empty()
    }

    /// Signals `vector`; returns true if an interrupt was sent (false: latched or invalid).
    pub fn trigger(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        let mut s = self.state.lock();
        if v >= s.entries.len() || !s.enabled {
            return false;
        }
        if s.func_masked || s.entries[v].masked {
            s.pending[v] = true;
            return false;
        }
        self.irqfds[v].write(1).is_ok()
    }

    /// Message Control write from config space (enable bit 15, function mask bit 14).
    pub fn set_control(&self, control: u16) {
        let mut s = self.state.lock();
        s.enabled = control & 0x8000 != 0;
        s.func_masked = control & 0x4000 != 0;
        self.deliver_pending(&mut s);
    }

    fn deliver_pending(&self, s: &mut State) {
        if !s.enabled || s.func_masked {
            return;
        }
        for v in 0..s.entries.len() {
            if s.pending[v] && !s.entries[v].masked {
                s.pending[v] = false;
                let _ = self.irqfds[v].write(1);
            }
        }
    }

    /// Gives the vectors back when the device leaves the bus: unregisters the irqfds, drops
    /// the routes and returns the GSIs for reuse. The device must no longer be signalled.
    pub fn release(&self) {
        for (fd, &gsi) in self.irqfds.iter().zip(&self.gsis) {
            let _ = self.router.vm.unregister_irqfd(fd, gsi);
            let _ = self.router.set(gsi, None);
        }
        self.state.lock().enabled = false;
        self.router.free.lock().extend_from_slice(&self.gsis);
    }

    /// Table MMIO read.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let s = self.state.lock();
        let (idx, field) = ((offset / 16) as usize, offset % 16);
        let v = match s.entries.get(idx) {
            Some(e) => match field / 4 {
                0 => e.addr as u32,
                1 => (e.addr >> 32) as u32,
                2 => e.data,
                _ => u32::from(e.masked),
            },
            None => 0,
        };
        fill(v, offset, data);
    }

    /// Table MMIO write (32-bit fields; 64-bit writes are split by the caller's data length).
    pub fn table_write(&self, offset: u64, data: &[u8]) {
        if data.len() == 8 {
            self.table_write(offset, &data[..4]);
            self.table_write(offset + 4, &data[4..]);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let mut s = self.state.lock();
        let idx = (offset / 16) as usize;
        let Some(e) = s.entries.get_mut(idx) else {
            return;
        };
        match (offset % 16) / 4 {
            0 => e.addr = (e.addr & !0xffff_ffff) | u64::from(v),
            1 => e.addr = (e.addr & 0xffff_ffff) | (u64::from(v) << 32),
            2 => e.data = v,
            _ => e.masked = v & 1 != 0,
        }
        let e = *e;
        if (offset % 16) / 4 == 3 && !e.masked {
            // Route before delivering anything latched.
            let _ = self.router.set(self.gsis[idx], Some((e.addr, e.data)));
            self.deliver_pending(&mut s);
        } else if (offset % 16) / 4 != 3 {
            let _ = self.router.set(self.gsis[idx], Some((e.addr, e.data)));
        }
    }

    /// PBA MMIO read.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        let s = self.state.lock();
        let word = (offset / 8) as usize;
        let mut bits = 0u64;
        for (i, p) in s.pending.iter().enumerate() {
            if *p && i / 64 == word {
                bits |= 1 << (i % 64);
            }
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = (bits >> ((offset % 8 + i as u64).min(7) * 8)) as u8;
        }
    }
}

fn fill(v: u32, offset: u64, data: &mut [u8]) {
    let shift = offset % 4;
    for (i, b) in data.iter_mut().enumerate() {
        *b = (v >> ((shift + i as u64).min(3) * 8)) as u8;
    }
}
