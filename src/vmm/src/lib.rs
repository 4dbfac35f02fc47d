//! Cairn's virtual machine monitor on KVM and the rust-vmm crates.
//!
//! # Using it
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use vmm::{BootConfig, DiskConfig, RamDisk, Vm, VmConfig};
//! let boot = BootConfig { kernel: "guest.elf".into(), initrd: None, cmdline: "blk".into() };
//! let mut cfg = VmConfig::new("vm1", boot);
//! cfg.disks.push(DiskConfig {
//!     id: "disk0".into(),
//!     backend: Arc::new(RamDisk::new(64 << 20)),
//!     queues: 1,
//!     queue_size: 256,
//! });
//! let mut vm = Vm::create(cfg)?;      // builds memory, devices, loads the kernel
//! vm.start()?;                         // one thread per vCPU
//! vm.pause()?; vm.resume()?;
//! let reason = vm.stop(Duration::from_secs(5))?; // graceful request, then forced
//! println!("{reason:?} {:?}", vm.stats());
//! vm.delete();
//! # Ok::<(), vmm::VmmError>(())
//! ```
//!
//! # What is inside
//! - [`machine`]: KVM VM with in-kernel irqchip + PIT, guest memory ([`memory`]), vCPU threads
//!   ([`cpu`]), port/MMIO buses ([`bus`]), legacy devices ([`devices`]: COM1, i8042 reset, debug
//!   ports 0x80 progress / 0xe9 bytes / 0x501 exit code, ACPI PM1 registers at 0x600/0x604:
//!   power button + SCI on IRQ 9, soft-off through SLP_TYP/SLP_EN).
//! - [`boot`]: PVH ELF and Linux boot protocol (bzImage / vmlinux, initrd, command line, e820),
//!   plus [`acpi`] tables (MADT, MCFG, FADT, XSDT/RSDP, and a DSDT with the PCI root, one
//!   hot-plug slot device per slot and the GPE handler, written by our own small AML encoder).
//! - [`pci`]: PCI root (0xCF8/0xCFC and ECAM; BARs decode where the guest programs them, with
//!   memory decode on, inside the window and not on another device), MSI-X through KVM GSI
//!   routes + irqfds, and
//!   virtio-pci (modern) devices in [`virtio`]: blk (multi-queue, flush, discard, write-zeroes,
//!   read-only, serial, event index; inline, with I/O lanes for files, or as tasks on the
//!   engine's runtime for engine disks), net on a tap (one queue pair
//!   per vCPU on a multi-queue tap, control queue for the pair count), rng, console.
//!   Notifications arrive on ioeventfds; each queue has its own thread (virtio-blk's polls
//!   its ring for an adaptive window of up to 32 us after a request, like QEMU's iothread, so
//!   a busy guest needs neither a kick nor a wake-up per request).
//! - Disk backends behind [`DiskBackend`]: [`RamDisk`], [`FileDisk`], and [`EngineDisk`] (an
//!   engine virtual disk called directly).
//! - [`vm`]: the lifecycle API (graceful stop = ACPI power button, then force; hot-attach of
//!   a disk = new PCI device + ACPI GPE0 bit 1; hot-detach = ACPI eject request, the guest's
//!   `_EJ0`, drain, slot freed for reuse, or forced after a timeout, see [`pci::hotplug`]);
//!   [`stats`]: CPU time of vCPU and device
//!   threads, per-disk/per-NIC counters (IOPS, bytes, latency, per-queue requests);
//!   [`seccomp`]: allowlists installed on every vCPU and device thread before it touches guest
//!   data.
//! - [`bench`]: `cairn bench vmm` (ours vs QEMU, JSON lines; virtio-net 1 vs N queue pairs in
//!   [`bench_net`]). The binary that calls
//!   [`bench::run`] is re-executed once (env [`bench::CHILD_ENV`]) to measure memory.
//!
//! # Test guests
//! `tests/guests` builds a freestanding C/asm PVH ELF with gcc; it enters long mode, drops to
//! ring 3 with IOPL=3 and a full TSS I/O bitmap (PVM checks it), and drives the devices named on
//! its command line, reporting `ok`/`fail` lines on port 0xe9. The same ELF boots under
//! `qemu-system-x86_64 -accel kvm -cpu qemu64 -kernel guest.elf`.
//!
//! Guest-provided values (descriptors, lengths, addresses, config writes) are validated; a bad
//! request fails that request, never the VM or the host.

pub mod acpi;
pub mod backend;
pub mod backend_engine;
pub mod backend_file;
pub mod bench;
pub mod bench_cpu;
pub mod bench_net;
pub mod boot;
pub mod bus;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod error;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod pci;
pub mod seccomp;
pub mod stats;
pub mod virtio;
pub mod vm;

pub use backend::{BackendError, DiskBackend, RamDisk};
pub use backend_engine::EngineDisk;
pub use backend_file::FileDisk;
pub use boot::BootConfig;
pub use config::{DiskConfig, NetConfig, VmConfig};
pub use devices::{ExitReason, LogChunk};
pub use error::{Result, VmmError};
pub use stats::{DeviceStats, VmStats};
pub use vm::{DetachWait, Vm, VmState};

/// True if this host can run VMs (/dev/kvm opens).
pub fn kvm_available() -> bool {
    kvm_ioctls::Kvm::new().is_ok()
}
