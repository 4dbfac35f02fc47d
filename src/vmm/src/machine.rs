//! One running instance of a VM: the KVM VM fd, guest memory, buses, legacy devices, PCI devices
//! and vCPU threads. Built fresh for every start (a restart is a new machine on the same disk
//! backends), torn down completely on stop. Never outlives its threads.

use crate::boot;
use crate::bus::Bus;
use crate::config::VmConfig;
use crate::cpu::{self, VcpuShared};
use crate::devices::acpi_pm::{self, AcpiPm, AcpiPmPort};
use crate::devices::debug::{DebugPort, DebugPortKind, DebugPorts};
use crate::devices::serial::{SerialConsole, I8042};
use crate::devices::{ExitLatch, ExitReason};
use crate::error::{io_err, kvm_err, Result, VmmError};
use crate::layout::{self, ports};
use crate::memory::{self, GuestMemoryMmap};
use crate::pci::PciSetup;
use crate::stats::ThreadCpu;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

/// A built (and possibly running) machine.
pub struct Machine {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// The KVM VM.
    pub vm: Arc<VmFd>,
    /// State shared with the vCPU threads.
    pub shared: Arc<VcpuShared>,
    /// Debug ports.
    pub debug: Arc<DebugPorts>,
    /// COM1.
    pub serial: Arc<SerialConsole>,
    /// First exit reason.
    pub exit: Arc<ExitLatch>,
    /// ACPI PM1 registers (power button, soft-off).
    pub pm: Arc<AcpiPm>,
    /// PCI devices (virtio).
    pub pci: PciSetup,
    /// CPU time of the device threads (queue workers, I/O lanes).
    pub device_cpu: Arc<ThreadCpu>,
    vcpus: Vec<VcpuFd>,
    threads: Vec<JoinHandle<()>>,
    /// When `start` ran.
    pub started_at: Option<Instant>,
}

/// `KVM_CREATE_VM`, again when interrupted: the kernel may give up with EINTR (a signal
/// arrived, or PVM was busy setting the VM up; seen once in a CI run here) and nothing was
/// created then. Bounded: a kernel that keeps refusing gets its error through.
pub(crate) fn create_vm(kvm: &Kvm) -> std::result::Result<VmFd, kvm_ioctls::Error> {
    let mut tries = 0;
    loop {
        match kvm.create_vm() {
            Err(e) if e.errno() == libc::EINTR && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            r => return r,
        }
    }
}

impl Machine {
    /// Builds the machine for `cfg`: memory, irqchip, devices, kernel loaded, vCPUs created.
    pub fn build(cfg: &VmConfig) -> Result<Machine> {
        cfg.validate()?;
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = Arc::new(create_vm(&kvm).map_err(kvm_err("create_vm"))?);
        // TSS and identity map are only required on Intel VMX; PVM may refuse them harmlessly.
        let _ = vm.set_tss_address(layout::KVM_TSS_ADDRESS);
        let _ = vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS);
        vm.create_irq_chip().map_err(kvm_err("create_irq_chip"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("create_pit2"))?;

        let mem = Arc::new(memory::create_memory(&memory::ram_ranges(
            cfg.memory_bytes,
        )?)?);
        memory::register_with_kvm(&vm, &mem)?;

        let exit = Arc::new(ExitLatch::default());
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let debug = Arc::new(DebugPorts::new(exit.clone()));
        for (port, kind) in [
            (ports::DEBUG_PROGRESS, DebugPortKind::Progress),
            (ports::DEBUG_CHAR, DebugPortKind::Char),
            (ports::DEBUG_EXIT, DebugPortKind::Exit),
        ] {
            let len = if matches!(kind, DebugPortKind::Exit) {
                2
            } else {
                1
            };
            pio.insert(
                u64::from(port),
                len,
                Arc::new(DebugPort {
                    ports: debug.clone(),
                    kind,
                }),
            )?;
        }
        let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("serial eventfd"))?;
        vm.register_irqfd(&serial_evt, layout::SERIAL_IRQ)
            .map_err(kvm_err("serial irqfd"))?;
        let serial = Arc::new(SerialConsole::new(serial_evt));
        pio.insert(u64::from(ports::SERIAL_COM1), 8, serial.clone())?;
        pio.insert(
            u64::from(ports::I8042_DATA),
            5,
            Arc::new(I8042::new(exit.clone())),
        )?;

        let pm = Arc::new(AcpiPm::new(vm.clone(), exit.clone()));
        for (port, len, base_offset) in [
            (acpi_pm::PM1A_EVT_PORT, acpi_pm::PM1_EVT_LEN, 0),
            (acpi_pm::PM1A_CNT_PORT, acpi_pm::PM1_CNT_LEN, 4),
            (acpi_pm::GPE0_PORT, acpi_pm::GPE0_LEN, 6),
        ] {
            pio.insert(
                u64::from(port),
                u64::from(len),
                Arc::new(AcpiPmPort {
                    pm: pm.clone(),
                    base_offset,
                }),
            )?;
        }

        let device_cpu = Arc::new(ThreadCpu::default());
        let pci = PciSetup::build(cfg, &vm, &mem, &pio, &mmio, &device_cpu)?;

        let entry = boot::load(&mem, &cfg.boot, cfg.vcpus)?;
        let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
        for id in 0..cfg.vcpus {
            vcpus.push(cpu::create_vcpu(&kvm, &vm, id, cfg.vcpus)?);
        }
        cpu::setup_boot_vcpu(&vcpus[0], &mem, entry)?;
        let shared = Arc::new(VcpuShared::new(pio, mmio, exit.clone()));
        Ok(Machine {
            mem,
            vm,
            shared,
            debug,
            serial,
            exit,
            pm,
            pci,
            device_cpu,
            vcpus,
            threads: Vec::new(),
            started_at: None,
        })
    }

    /// Spawns one thread per vCPU.
    pub fn start(&mut self, name: &str, seccomp: bool) -> Result<()> {
        cpu::install_kick_handler()?;
        self.started_at = Some(Instant::now());
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            let shared = self.shared.clone();
            let id =
                u8::try_from(id).map_err(|_| VmmError::InvalidConfig("too many vcpus".into()))?;
            let handle = std::thread::Builder::new()
                .name(format!("{name}-vcpu{id}"))
                .spawn(move || {
                    if seccomp {
                        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                            shared
                                .exit
                                .set(ExitReason::Error(format!("vcpu {id}: {e}")));
                            return;
                        }
                    }
                    cpu::run_loop(vcpu, id, shared)
                })
                .map_err(io_err("spawn vcpu thread"))?;
            self.threads.push(handle);
        }
        Ok(())
    }

    /// Interrupts every vCPU's KVM_RUN.
    fn kick_all(&self) {
        for t in &self.threads {
            if !t.is_finished() {
                let _ = t.kill(cpu::kick_signal());
            }
        }
    }

    /// Pauses (true) or resumes (false) all vCPUs; pausing waits until all are parked.
    pub fn set_paused(&self, paused: bool, timeout: Duration) -> Result<()> {
        self.shared.request_pause(paused);
        if !paused {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let running = self.threads.iter().filter(|t| !t.is_finished()).count();
        while self.shared.parked() < running {
            if Instant::now() > deadline {
                self.shared.request_pause(false);
                return Err(VmmError::Timeout("pausing vcpus"));
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Stops all vCPUs and device threads and joins them. Idempotent.
    pub fn shutdown(&mut self) {
        self.exit.set(ExitReason::Stopped);
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_all();
        while self.threads.iter().any(|t| !t.is_finished()) {
            self.kick_all();
            std::thread::sleep(Duration::from_millis(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.pci.shutdown();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
