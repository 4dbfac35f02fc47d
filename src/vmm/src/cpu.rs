//! vCPUs: CPUID, initial register state for PVH and 64-bit Linux entry, and the run loop that
//! dispatches exits to the buses. Each vCPU runs on its own thread; the loop never panics on guest
//! behaviour — unexpected exits stop the VM with [`ExitReason::Error`].

use crate::boot::BootEntry;
use crate::bus::Bus;
use crate::devices::{ExitLatch, ExitReason};
use crate::error::{kvm_err, Result, VmmError};
use crate::layout::BOOT_GDT_START;
use crate::memory::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

/// Upper bound on vCPUs per VM.
pub const MAX_VCPUS: u8 = 32;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// State shared by the vCPU threads of one VM and its owner.
pub struct VcpuShared {
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Where exits are reported.
    pub exit: Arc<ExitLatch>,
    /// Set when the VM must stop; vCPUs leave their loop at the next exit.
    pub stop: AtomicBool,
    pause: Mutex<PauseState>,
    pause_cv: Condvar,
    /// CPU time of the vCPU threads.
    pub cpu: Arc<crate::stats::ThreadCpu>,
    /// Exits handled in userspace.
    pub exits: AtomicU64,
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    parked: usize,
}

impl VcpuShared {
    /// Shared state over the given buses.
    pub fn new(pio: Arc<Bus>, mmio: Arc<Bus>, exit: Arc<ExitLatch>) -> Self {
        Self {
            pio,
            mmio,
            exit,
            stop: AtomicBool::new(false),
            pause: Mutex::new(PauseState::default()),
            pause_cv: Condvar::new(),
            cpu: Arc::default(),
            exits: AtomicU64::new(0),
        }
    }

    /// Asks vCPUs to park; returns once the caller should kick them.
    pub fn request_pause(&self, pause: bool) {
        let mut p = self.pause.lock();
        p.requested = pause;
        self.pause_cv.notify_all();
    }

    /// Number of vCPUs currently parked.
    pub fn parked(&self) -> usize {
        self.pause.lock().parked
    }

    fn park_if_requested(&self) {
        let mut p = self.pause.lock();
        if !p.requested {
            return;
        }
        p.parked += 1;
        self.pause_cv.notify_all();
        while p.requested && !self.stop.load(Ordering::Acquire) {
            self.pause_cv.wait(&mut p);
        }
        p.parked -= 1;
    }

    /// Wakes parked vCPUs (used on stop).
    pub fn wake_all(&self) {
        let _g = self.pause.lock();
        self.pause_cv.notify_all();
    }
}

/// CPUID for vCPU `id` of `count`: the host's supported set with topology and hypervisor bits.
pub fn cpuid_for(kvm: &Kvm, id: u8, count: u8) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get_supported_cpuid"))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the logical count field is valid
                }
            }
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
    Ok(cpuid)
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Sets the boot vCPU's registers for `entry` and writes the boot GDT.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: BootEntry) -> Result<()> {
    let long = matches!(entry, BootEntry::Linux64 { .. });
    let code: u64 = if long {
        0x00af_9b00_0000_ffff
    } else {
        0x00cf_9b00_0000_ffff
    };
    let gdt: [u64; 4] = [0, code, 0x00cf_9300_0000_ffff, 0x008f_8b00_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|e| VmmError::Boot(format!("write GDT: {e}")))?;
    }
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("get_sregs"))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment(0x08, 0xb, long);
    let data = segment(0x10, 0x3, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        selector: 0x18,
        type_: 0xb,
        s: 0,
        limit: 0x67,
        db: 0,
        g: 0,
        ..data
    };
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Pvh { entry, start_info } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        BootEntry::Linux64 { entry, zero_page } => {
            sregs.cr3 = crate::layout::PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsi = zero_page;
            regs.rsp = 0x8ff0;
            regs.rbp = 0x8ff0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm_err("set_sregs"))?;
    vcpu.set_regs(&regs).map_err(kvm_err("set_regs"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("set_fpu"))?;
    Ok(())
}

/// Creates vCPU `id` with its CPUID.
pub fn create_vcpu(kvm: &Kvm, vm: &VmFd, id: u8, count: u8) -> Result<VcpuFd> {
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(kvm_err("create_vcpu"))?;
    vcpu.set_cpuid2(&cpuid_for(kvm, id, count)?)
        .map_err(kvm_err("set_cpuid2"))?;
    Ok(vcpu)
}

/// The vCPU thread body: run until stopped, dispatching exits.
pub fn run_loop(mut vcpu: VcpuFd, id: u8, shared: Arc<VcpuShared>) {
    let _cpu = shared.cpu.enter();
    loop {
        if shared.stop.load(Ordering::Acquire) || shared.exit.is_set() {
            break;
        }
        shared.park_if_requested();
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let reason = match vcpu.run() {
            Ok(exit) => {
                shared.exits.fetch_add(1, Ordering::Relaxed);
                match exit {
                    VcpuExit::IoOut(port, data) => {
                        shared.pio.write(u64::from(port), data);
                        None
                    }
                    VcpuExit::IoIn(port, data) => {
                        shared.pio.read(u64::from(port), data);
                        None
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        shared.mmio.read(addr, data);
                        None
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        shared.mmio.write(addr, data);
                        None
                    }
                    VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
                    VcpuExit::Shutdown => Some(ExitReason::Reset("triple fault")),
                    VcpuExit::SystemEvent(kind, _) => Some(match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::Shutdown,
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset("system event"),
                        other => ExitReason::Error(format!("vcpu {id}: system event {other}")),
                    }),
                    VcpuExit::FailEntry(reason, cpu) => Some(ExitReason::Error(format!(
                        "vcpu {id}: entry failed, reason {reason:#x} on cpu {cpu}"
                    ))),
                    VcpuExit::InternalError => {
                        Some(ExitReason::Error(format!("vcpu {id}: KVM internal error")))
                    }
                    other => Some(ExitReason::Error(format!(
                        "vcpu {id}: unexpected exit {other:?}"
                    ))),
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(ExitReason::Error(format!("vcpu {id}: KVM_RUN: {e}"))),
        };
        if let Some(mut r) = reason {
            if r == ExitReason::Reset("triple fault") {
                if let Ok(regs) = vcpu.get_regs() {
                    r = ExitReason::Error(format!(
                        "vcpu {id}: triple fault at rip {:#x} rsp {:#x}",
                        regs.rip, regs.rsp
                    ));
                }
            }
            shared.exit.set(r);
            break;
        }
    }
}

/// Installs the (empty) handler for the signal used to kick vCPUs out of KVM_RUN.
pub fn install_kick_handler() -> Result<()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        res = vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick).map_err(
            |e| VmmError::Io {
                what: "register vcpu kick signal",
                source: e.into(),
            },
        );
    });
    res
}

/// The signal that interrupts KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}
