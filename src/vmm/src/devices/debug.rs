//! Debug ports for test guests: a progress byte (0x80), a character stream (0xe9, QEMU
//! `debugcon` compatible) and an exit code (0x501, QEMU `isa-debug-exit` address). Writing the
//! exit port stops the VM with [`ExitReason::DebugExit`]. (Graceful shutdown requests go through
//! the ACPI power button, [`super::acpi_pm`].) Never blocks a vCPU.

use super::{BoundedLog, ExitLatch, ExitReason};
use crate::bus::BusDevice;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Maximum bytes of debug output kept.
pub const DEBUG_LOG_BYTES: usize = 1 << 20;

/// State behind the three debug ports.
pub struct DebugPorts {
    /// Everything written to the character port.
    pub output: BoundedLog,
    progress: AtomicU8,
    first_write: Mutex<Option<Instant>>,
    exit: Arc<ExitLatch>,
}

impl DebugPorts {
    /// Debug ports that report exits to `exit`.
    pub fn new(exit: Arc<ExitLatch>) -> Self {
        Self {
            output: BoundedLog::new(DEBUG_LOG_BYTES),
            progress: AtomicU8::new(0),
            first_write: Mutex::new(None),
            exit,
        }
    }

    /// Last progress byte written to port 0x80.
    pub fn progress(&self) -> u8 {
        self.progress.load(Ordering::Relaxed)
    }

    /// When the guest first wrote any debug port (boot-time measurements).
    pub fn first_write(&self) -> Option<Instant> {
        *self.first_write.lock()
    }

    /// Resets state for a VM restart.
    pub fn reset(&self) {
        self.output.clear();
        self.progress.store(0, Ordering::Relaxed);
        *self.first_write.lock() = None;
    }

    fn note_write(&self) {
        let mut fw = self.first_write.lock();
        if fw.is_none() {
            *fw = Some(Instant::now());
        }
    }
}

/// One port of the debug device; `kind` selects the behaviour.
pub struct DebugPort {
    /// Shared state.
    pub ports: Arc<DebugPorts>,
    /// Which port this bus entry is.
    pub kind: DebugPortKind,
}

/// The three debug ports.
#[derive(Clone, Copy, Debug)]
pub enum DebugPortKind {
    /// 0x80.
    Progress,
    /// 0xe9.
    Char,
    /// 0x501.
    Exit,
}

impl BusDevice for DebugPort {
    fn read(&self, _base: u64, _offset: u64, data: &mut [u8]) {
        // 0xe9 reads back 0xe9 so guests can detect debugcon (QEMU's behaviour).
        let v = match self.kind {
            DebugPortKind::Char => 0xe9,
            DebugPortKind::Progress => self.ports.progress(),
            DebugPortKind::Exit => 0xff,
        };
        data.fill(v);
    }

    fn write(&self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&first) = data.first() else { return };
        self.ports.note_write();
        match self.kind {
            DebugPortKind::Progress => self.ports.progress.store(first, Ordering::Relaxed),
            DebugPortKind::Char => self.ports.output.push(&data[..1]),
            DebugPortKind::Exit if offset == 0 => {
                self.ports.exit.set(ExitReason::DebugExit(first));
            }
            DebugPortKind::Exit => {}
        }
    }
}
