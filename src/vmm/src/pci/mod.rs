//! PCI (placeholder until the PCI root lands).
use crate::bus::Bus;
use crate::config::VmConfig;
use crate::error::Result;
use crate::memory::GuestMemoryMmap;
use kvm_ioctls::VmFd;
use std::sync::Arc;

/// The VM's PCI devices.
#[derive(Default)]
pub struct PciSetup {}

impl PciSetup {
    /// Builds the PCI root and devices.
    pub fn build(
        _cfg: &VmConfig,
        _vm: &Arc<VmFd>,
        _mem: &Arc<GuestMemoryMmap>,
        _pio: &Arc<Bus>,
        _mmio: &Arc<Bus>,
    ) -> Result<Self> {
        Ok(Self {})
    }
    /// Stops device threads.
    pub fn shutdown(&mut self) {}
}
impl PciSetup {
    /// Disk counters.
    pub fn disk_stats(&self) -> Vec<crate::stats::DeviceStats> {
        Vec::new()
    }
    /// NIC counters.
    pub fn nic_stats(&self) -> Vec<crate::stats::DeviceStats> {
        Vec::new()
    }
}
