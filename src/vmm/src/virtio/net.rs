//! virtio-net on a host tap device. Not available yet: configuring a NIC is refused with a clear
//! error instead of presenting a device that cannot move frames.

use super::{ActivateContext, VirtioDevice};
use crate::config::NetConfig;
use crate::error::{Result, VmmError};
use crate::stats::DeviceCounters;
use std::sync::Arc;

/// Placeholder type; [`Net::new`] always fails until the tap backend lands.
pub struct Net {
    counters: Arc<DeviceCounters>,
}

impl Net {
    /// Refuses: virtio-net is not implemented in this build.
    pub fn new(cfg: &NetConfig) -> Result<Self> {
        Err(VmmError::InvalidConfig(format!(
            "nic {}: virtio-net is not available in this build",
            cfg.id
        )))
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        super::TYPE_NET
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        Vec::new()
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _ctx: ActivateContext) -> Result<()> {
        Ok(())
    }
    fn reset(&mut self) {}
    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}
