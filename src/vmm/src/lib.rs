//! Cairn's virtual machine monitor on KVM and the rust-vmm crates.
//!
//! # Using it
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use vmm::{BootConfig, DiskConfig, RamDisk, Vm, VmConfig};
//! let boot = BootConfig { kernel: "guest.elf".into(), initrd: None, cmdline: "blk".into() };
//! let mut cfg = VmConfig::new("vm1", boot);
//! cfg.disks.push(DiskConfig { id: "disk0".into(), backend: Arc::new(RamDisk::new(64 << 20)), queues: 1, queue_size: 256 });
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
//!   ports 0x80/0xe9/0x501/0x504 for test guests).
//! - [`boot`]: PVH ELF and Linux boot protocol (bzImage / vmlinux, initrd, command line, e820).
//! - [`pci`]: PCI root (0xCF8/0xCFC and ECAM), MSI-X, and virtio-pci (modern) devices in
//!   [`virtio`]: blk on a [`DiskBackend`], rng, net on a tap.
//! - [`vm`]: the lifecycle API; [`stats`]: counters; [`seccomp`]: thread allowlists.
//!
//! Guest-provided values (descriptors, lengths, addresses, config writes) are validated; a bad
//! request fails that request, never the VM or the host.

pub mod acpi;
pub mod backend;
pub mod backend_engine;
pub mod backend_file;
pub mod bench;
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
pub use devices::ExitReason;
pub use error::{Result, VmmError};
pub use stats::{DeviceStats, VmStats};
pub use vm::{Vm, VmState};

/// True if this host can run VMs (/dev/kvm opens).
pub fn kvm_available() -> bool {
    kvm_ioctls::Kvm::new().is_ok()
}
