//! The lifecycle API the node uses: create, start, pause, resume, stop, delete, stats.
//!
//! A [`Vm`] owns its configuration and, while running, one [`Machine`]. Every transition is
//! checked against the current state and refused with [`VmmError::InvalidState`] rather than
//! half-applied. Stopping tears the machine down; starting again builds a fresh one on the same
//! disk backends (that is a VM restart).

use crate::config::VmConfig;
use crate::devices::ExitReason;
use crate::error::{Result, VmmError};
use crate::machine::Machine;
use crate::pci::hotplug::PciHotplug;
use crate::stats::VmStats;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmState {
    /// Configured and built, never started (or stopped and rebuilt).
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
    /// The guest exited or was stopped; `start` builds a new machine.
    Stopped,
}

impl VmState {
    fn name(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        }
    }
}

/// A disk detach in progress, between [`Vm::begin_detach`] and [`Vm::finish_detach`].
pub struct DetachWait {
    id: String,
    slot: usize,
    /// The hot-plug block the request went to; None when the guest was not asked (a created,
    /// paused or stopped VM), so there is nothing to wait for.
    hp: Option<Arc<PciHotplug>>,
    waited: Duration,
}

impl DetachWait {
    /// Waits up to `timeout` for the guest to release the disk; true once it did, or when there
    /// is nothing to wait for. May be called again (e.g. in slices, checking for a stop between).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        match &self.hp {
            Some(hp) => {
                let t0 = Instant::now();
                let done = hp.ejected_within(self.slot, timeout);
                self.waited = self.waited.saturating_add(t0.elapsed());
                done
            }
            None => true,
        }
    }

    /// The disk's config id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A virtual machine.
pub struct Vm {
    cfg: VmConfig,
    machine: Option<Machine>,
    state: VmState,
    last_exit: Option<ExitReason>,
}

/// How long pausing may take before it is reported as a failure.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Vm {
    /// Validates `cfg` and builds the machine (memory, devices, kernel loaded) without running it.
    pub fn create(cfg: VmConfig) -> Result<Vm> {
        let machine = Machine::build(&cfg)?;
        Ok(Vm {
            cfg,
            machine: Some(machine),
            state: VmState::Created,
            last_exit: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// Current state (a guest that exited on its own reads as `Stopped`).
    pub fn state(&mut self) -> VmState {
        self.refresh();
        self.state
    }

    /// Why the guest last stopped.
    pub fn exit_reason(&mut self) -> Option<ExitReason> {
        self.refresh();
        self.last_exit.clone()
    }

    fn refresh(&mut self) {
        if matches!(self.state, VmState::Running | VmState::Paused) {
            if let Some(r) = self.machine.as_ref().and_then(|m| m.exit.get()) {
                self.last_exit = Some(r);
                self.state = VmState::Stopped;
            }
        }
    }

    fn invalid(&self, action: &'static str) -> VmmError {
        VmmError::InvalidState {
            state: self.state.name(),
            action,
        }
    }

    /// Starts the vCPUs. From `Stopped`, builds a fresh machine first (a restart).
    pub fn start(&mut self) -> Result<()> {
        self.refresh();
        match self.state {
            VmState::Created => {}
            VmState::Stopped => {
                if let Some(mut m) = self.machine.take() {
                    m.shutdown();
                }
                self.machine = Some(Machine::build(&self.cfg)?);
            }
            _ => return Err(self.invalid("start")),
        }
        let m = self.machine.as_mut().ok_or(VmmError::InvalidState {
            state: "deleted",
            action: "start",
        })?;
        m.start(&self.cfg.name, self.cfg.seccomp)?;
        self.state = VmState::Running;
        self.last_exit = None;
        Ok(())
    }

    /// Parks every vCPU.
    pub fn pause(&mut self) -> Result<()> {
        self.refresh();
        if self.state != VmState::Running {
            return Err(self.invalid("pause"));
        }
        self.machine
            .as_ref()
            .ok_or_else(|| self.invalid("pause"))?
            .set_paused(true, PAUSE_TIMEOUT)?;
        self.state = VmState::Paused;
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&mut self) -> Result<()> {
        self.refresh();
        if self.state != VmState::Paused {
            return Err(self.invalid("resume"));
        }
        self.machine
            .as_ref()
            .ok_or_else(|| self.invalid("resume"))?
            .set_paused(false, PAUSE_TIMEOUT)?;
        self.state = VmState::Running;
        Ok(())
    }

    /// Graceful stop: presses the ACPI power button (PWRBTN_STS + SCI), waits up to `timeout`
    /// for the guest to power off (S5 through PM1a_CNT) or exit otherwise, then stops it by
    /// force. Returns the exit reason (`Shutdown` when the guest powered off, `Stopped` when
    /// forced).
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitReason> {
        self.refresh();
        match self.state {
            VmState::Running | VmState::Paused => {}
            VmState::Stopped => return Ok(self.last_exit.clone().unwrap_or(ExitReason::Stopped)),
            VmState::Created => return Err(self.invalid("stop")),
        }
        let m = self.machine.as_mut().ok_or(VmmError::InvalidState {
            state: "deleted",
            action: "stop",
        })?;
        if self.state == VmState::Paused {
            m.set_paused(false, PAUSE_TIMEOUT)?;
        }
        m.pm.press_power_button();
        let reason = m.exit.wait(timeout).unwrap_or(ExitReason::Stopped);
        m.shutdown();
        self.last_exit = Some(reason.clone());
        self.state = VmState::Stopped;
        Ok(reason)
    }

    /// Attaches a disk. A running (or paused, or created) VM gets a new virtio-blk device on the
    /// live PCI bus, visible at the guest's next enumeration, and GPE0 bit 1 + the SCI tell the
    /// guest to rescan; a stopped VM gets it at its next start. The disk stays in the
    /// configuration either way. Refused (nothing changed) if the result is not a valid
    /// configuration (duplicate id, too many disks, bad queue settings) or the bus is full.
    pub fn attach_disk(&mut self, disk: crate::config::DiskConfig) -> Result<()> {
        self.refresh();
        let mut cfg = self.cfg.clone();
        cfg.disks.push(disk.clone());
        cfg.validate()?;
        if self.state != VmState::Stopped {
            let m = self.machine.as_mut().ok_or(VmmError::InvalidState {
                state: "deleted",
                action: "attach a disk",
            })?;
            m.pci.hot_add_disk(&disk)?;
            m.pm.signal_pci_change();
        }
        self.cfg = cfg;
        Ok(())
    }

    /// Detaches the disk with config id `id`, the reverse of [`Vm::attach_disk`].
    ///
    /// A running guest is asked to release it (the slot's eject request, GPE0 bit 1 + the SCI)
    /// and has `timeout` to eject it (`_EJ0`); then in-flight requests drain, the device leaves
    /// the bus and its slot is free for the next attach. A guest that does not answer gets
    /// [`VmmError::EjectTimeout`] and keeps the disk, unless `force`, which removes it anyway
    /// and tells the guest the slot changed. A paused guest cannot answer: only `force` works
    /// there. A created (never started) VM loses it at once, a stopped one from its
    /// configuration. On success the disk is gone from the configuration; on error nothing
    /// changed. The same as [`Vm::begin_detach`], [`DetachWait::wait`], [`Vm::finish_detach`]
    /// in a row, for callers that may hold the VM for the whole wait.
    pub fn detach_disk(&mut self, id: &str, timeout: Duration, force: bool) -> Result<()> {
        let mut w = self.begin_detach(id, force)?;
        w.wait(timeout);
        self.finish_detach(w, force)
    }

    /// First half of a detach: checks it can happen and, when the guest runs, asks it to release
    /// the disk. Wait for the answer with [`DetachWait::wait`] (it does not need the `Vm`, so the
    /// VM can be looked at or stopped meanwhile) and end with [`Vm::finish_detach`]. A wait that
    /// is dropped unfinished leaves the request pending until the next detach of that slot.
    pub fn begin_detach(&mut self, id: &str, force: bool) -> Result<DetachWait> {
        self.refresh();
        if !self.cfg.disks.iter().any(|d| d.id == id) {
            return Err(VmmError::NoSuchDevice(id.to_string()));
        }
        let mut w = DetachWait {
            id: id.to_string(),
            slot: 0,
            hp: None,
            waited: Duration::ZERO,
        };
        match self.state {
            VmState::Paused if !force => Err(VmmError::InvalidState {
                state: "paused",
                action: "detach a disk without force (a paused guest cannot release it)",
            }),
            VmState::Running => {
                let m = self.machine.as_mut().ok_or(VmmError::InvalidState {
                    state: "deleted",
                    action: "detach a disk",
                })?;
                let (slot, hp) = hotplug_slot(m, id)?;
                w.slot = slot;
                hp.request_eject(w.slot);
                m.pm.signal_pci_change();
                w.hp = Some(hp);
                Ok(w)
            }
            _ => Ok(w),
        }
    }

    /// Second half of a detach (see [`Vm::begin_detach`]): takes the disk off the machine if the
    /// guest released it, or by force, and out of the configuration. Without an answer and
    /// without `force` it fails with [`VmmError::EjectTimeout`] and the request is withdrawn.
    /// A VM stopped meanwhile just loses the disk from its configuration; one restarted
    /// meanwhile (a new machine the request never reached) is refused.
    pub fn finish_detach(&mut self, w: DetachWait, force: bool) -> Result<()> {
        self.refresh();
        let id = w.id.as_str();
        let pos = self
            .cfg
            .disks
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(|| VmmError::NoSuchDevice(id.to_string()))?;
        if self.state != VmState::Stopped {
            let state = self.state;
            let m = self.machine.as_mut().ok_or(VmmError::InvalidState {
                state: "deleted",
                action: "detach a disk",
            })?;
            let (slot, hp) = hotplug_slot(m, id)?;
            let unplug = |m: &mut Machine| {
                hp.unplug(slot);
                hp.mark_changed(slot);
                m.pm.signal_pci_change();
            };
            match &w.hp {
                Some(asked) if !Arc::ptr_eq(asked, &hp) || w.slot != slot => {
                    return Err(VmmError::InvalidState {
                        state: "restarted",
                        action: "finish a disk detach begun before the restart",
                    })
                }
                Some(_) => {
                    if !hp.settle_eject(slot) {
                        if !force {
                            return Err(VmmError::EjectTimeout {
                                id: id.to_string(),
                                waited_ms: u64::try_from(w.waited.as_millis()).unwrap_or(u64::MAX),
                            });
                        }
                        unplug(m);
                    }
                }
                None if state == VmState::Created => {}
                None if force => unplug(m),
                None => {
                    return Err(VmmError::InvalidState {
                        state: state.name(),
                        action: "finish a disk detach the guest was never asked about",
                    })
                }
            }
            m.pci.finish_remove(slot);
        }
        self.cfg.disks.remove(pos);
        Ok(())
    }

    /// The PCI slot (bus 0) of the device with config id `id`, while the machine exists.
    pub fn pci_slot(&self, id: &str) -> Option<u8> {
        let slot = self.machine.as_ref()?.pci.slot_of(id)?;
        u8::try_from(slot).ok()
    }

    /// Where the device with config id `id` decodes its BAR 0 now, while the machine exists
    /// (None: not on the bus: decode off, or the guest put it somewhere unusable).
    pub fn pci_bar(&self, id: &str) -> Option<u64> {
        self.machine.as_ref()?.pci.bar_of(id)
    }

    /// Waits up to `timeout` for the guest to exit on its own; returns the reason if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitReason> {
        let r = self.machine.as_ref()?.exit.wait(timeout);
        if r.is_some() {
            if let Some(m) = self.machine.as_mut() {
                m.shutdown();
            }
            self.refresh();
        }
        r
    }

    /// Stops (forcefully, at once) and releases everything.
    pub fn delete(mut self) {
        if let Some(mut m) = self.machine.take() {
            m.shutdown();
        }
    }

    /// Bytes the guest wrote to the debug character port (0xe9).
    pub fn debug_output(&self) -> Vec<u8> {
        self.machine
            .as_ref()
            .map(|m| m.debug.output.snapshot())
            .unwrap_or_default()
    }

    /// Console (COM1) output.
    pub fn console_output(&self) -> Vec<u8> {
        self.machine
            .as_ref()
            .map(|m| m.serial.output.snapshot())
            .unwrap_or_default()
    }

    /// Console (COM1) output a reader has not seen yet, copying only that (see
    /// [`crate::devices::BoundedLog::since`]). None before the machine exists.
    pub fn console_since(
        &self,
        log_id: u64,
        from: u64,
        max: usize,
    ) -> Option<crate::devices::LogChunk> {
        Some(
            self.machine
                .as_ref()?
                .serial
                .output
                .since(log_id, from, max),
        )
    }

    /// Debug character port output a reader has not seen yet (as [`Vm::console_since`]).
    pub fn debug_since(
        &self,
        log_id: u64,
        from: u64,
        max: usize,
    ) -> Option<crate::devices::LogChunk> {
        Some(self.machine.as_ref()?.debug.output.since(log_id, from, max))
    }

    /// Receivers that change whenever the guest writes the console (COM1) or the debug
    /// character port, in that order. They end when the machine is dropped (a delete, or a
    /// start that builds a new one). None before the machine exists.
    pub fn output_watch(&self) -> Option<[tokio::sync::watch::Receiver<u64>; 2]> {
        self.machine
            .as_ref()
            .map(|m| [m.serial.output.watch(), m.debug.output.watch()])
    }

    /// Queues console input; returns the bytes accepted.
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        self.machine
            .as_ref()
            .map(|m| m.serial.input(bytes))
            .unwrap_or(0)
    }

    /// Output the guest wrote to the virtio-console (empty without one).
    pub fn virtio_console_output(&self) -> Vec<u8> {
        self.machine
            .as_ref()
            .and_then(|m| m.pci.console.as_ref())
            .map(|c| c.output.snapshot())
            .unwrap_or_default()
    }

    /// Queues input for the virtio-console; returns the bytes accepted.
    pub fn virtio_console_input(&self, bytes: &[u8]) -> usize {
        self.machine
            .as_ref()
            .and_then(|m| m.pci.console.as_ref())
            .map(|c| c.input(bytes))
            .unwrap_or(0)
    }

    /// Time from `start` to the guest's first debug-port write.
    pub fn time_to_first_debug_write(&self) -> Option<Duration> {
        let m = self.machine.as_ref()?;
        Some(
            m.debug
                .first_write()?
                .saturating_duration_since(m.started_at?),
        )
    }

    /// When the machine was last started.
    pub fn started_at(&self) -> Option<Instant> {
        self.machine.as_ref()?.started_at
    }

    /// Live statistics.
    pub fn stats(&self) -> VmStats {
        match &self.machine {
            Some(m) => crate::stats::collect(&self.cfg, m),
            None => VmStats::default(),
        }
    }
}

/// The PCI slot of device `id` on `m` and the hot-plug controller that can eject it.
fn hotplug_slot(m: &Machine, id: &str) -> Result<(usize, Arc<PciHotplug>)> {
    let slot = m
        .pci
        .slot_of(id)
        .ok_or_else(|| VmmError::NoSuchDevice(id.to_string()))?;
    let hp = m
        .pci
        .hotplug()
        .cloned()
        .ok_or_else(|| VmmError::InvalidConfig("PCI bus not built".into()))?;
    Ok((slot, hp))
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut m) = self.machine.take() {
            m.shutdown();
        }
    }
}
