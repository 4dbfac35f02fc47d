//! VM configuration: what the node asks for. Validation happens here, before any resource exists.

use crate::backend::DiskBackend;
use crate::boot::BootConfig;
use crate::cpu::MAX_VCPUS;
use crate::error::{Result, VmmError};
use std::sync::Arc;

/// Maximum disks, NICs per VM (bounded PCI slots: 31 minus the host bridge and rng).
pub const MAX_DISKS: usize = 16;
/// Maximum NICs per VM.
pub const MAX_NICS: usize = 8;
/// Maximum queues per virtio device.
pub const MAX_QUEUES: u16 = 16;
/// Maximum virtqueue size.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// A virtio-blk disk.
#[derive(Clone)]
pub struct DiskConfig {
    /// Device identity (also the GET_ID serial, truncated to 20 bytes).
    pub id: String,
    /// Where the bytes live.
    pub backend: Arc<dyn DiskBackend>,
    /// Number of request queues (each gets its own I/O thread).
    pub queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
}

impl std::fmt::Debug for DiskConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskConfig")
            .field("id", &self.id)
            .field("size_bytes", &self.backend.size_bytes())
            .field("read_only", &self.backend.read_only())
            .field("queues", &self.queues)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

/// A virtio-net NIC on a host tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Device identity.
    pub id: String,
    /// Name of an existing tap device (created by the node or a test).
    pub tap: String,
    /// Guest MAC address.
    pub mac: [u8; 6],
}

/// Everything needed to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// VM name (thread names, logs).
    pub name: String,
    /// vCPU count, 1..=32.
    pub vcpus: u8,
    /// Guest RAM in bytes (multiple of 4 KiB, 2 MiB..256 GiB).
    pub memory_bytes: u64,
    /// Kernel, initrd, command line.
    pub boot: BootConfig,
    /// virtio-blk disks.
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs.
    pub nets: Vec<NetConfig>,
    /// Add a virtio-rng device.
    pub rng: bool,
    /// Add a virtio-console device (single port).
    pub virtio_console: bool,
    /// Install seccomp filters on vCPU and device threads.
    pub seccomp: bool,
}

impl VmConfig {
    /// A config with one vCPU, 128 MiB, the given kernel and nothing else.
    pub fn new(name: &str, boot: BootConfig) -> Self {
        Self {
            name: name.to_string(),
            vcpus: 1,
            memory_bytes: 128 << 20,
            boot,
            disks: Vec::new(),
            nets: Vec::new(),
            rng: false,
            virtio_console: false,
            seccomp: true,
        }
    }

    /// Checks bounds and consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VmmError::InvalidConfig(m));
        if self.name.is_empty() || self.name.len() > 64 {
            return bad(format!("name must be 1..64 bytes, got {}", self.name.len()));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("vcpus must be 1..={MAX_VCPUS}, got {}", self.vcpus));
        }
        if self.disks.len() > MAX_DISKS || self.nets.len() > MAX_NICS {
            return bad(format!("at most {MAX_DISKS} disks and {MAX_NICS} NICs"));
        }
        for d in &self.disks {
            if d.queues == 0 || d.queues > MAX_QUEUES {
                return bad(format!("disk {}: queues must be 1..={MAX_QUEUES}", d.id));
            }
            if !d.queue_size.is_power_of_two() || d.queue_size > MAX_QUEUE_SIZE {
                return bad(format!(
                    "disk {}: queue size must be a power of two <= {MAX_QUEUE_SIZE}",
                    d.id
                ));
            }
            if d.backend.size_bytes() % 512 != 0 {
                return bad(format!("disk {}: size must be a multiple of 512", d.id));
            }
        }
        let mut ids: Vec<&str> = self
            .disks
            .iter()
            .map(|d| d.id.as_str())
            .chain(self.nets.iter().map(|n| n.id.as_str()))
            .collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("device ids must be unique".into());
        }
        crate::memory::ram_ranges(self.memory_bytes).map(|_| ())
    }
}
