//! Wake-ups for a web console: the VM's console logs notify on every guest write
//! (`vmm::Vm::output_watch`), and this follows the VM across restarts (each start builds a new
//! machine with new logs). Never holds the VM's slot while waiting: a graceful stop holds it for
//! up to its timeout, so the slot is only tried, never waited for.

use std::time::Duration;

use tokio::sync::watch::Receiver;

use super::SlotRef;

/// Longest wait without a wake-up; also how long a missed one (a machine replaced while this
/// was not looking) can delay output.
const AT_MOST: Duration = Duration::from_secs(2);
/// Retry period while the VM has no machine (never started, or being started).
const NO_MACHINE: Duration = Duration::from_millis(250);

pub(crate) struct OutputWatch {
    slot: SlotRef,
    rx: Option<[Receiver<u64>; 2]>,
}

impl OutputWatch {
    pub(crate) fn new(slot: SlotRef) -> OutputWatch {
        let mut w = OutputWatch { slot, rx: None };
        w.subscribe();
        w
    }

    fn subscribe(&mut self) -> bool {
        self.rx = self
            .slot
            .try_lock()
            .and_then(|s| s.vm.as_ref().and_then(|vm| vm.output_watch()));
        self.rx.is_some()
    }
}

impl control::ConsoleWatch for OutputWatch {
    fn changed(&mut self) -> control::BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some([serial, debug]) = self.rx.as_mut() else {
                // Subscribed now: output may have come meanwhile, so the caller looks at once.
                if !self.subscribe() {
                    tokio::time::sleep(NO_MACHINE).await;
                }
                return;
            };
            let alive = tokio::select! {
                r = serial.changed() => r.is_ok(),
                r = debug.changed() => r.is_ok(),
                _ = tokio::time::sleep(AT_MOST) => false,
            };
            if !alive {
                // The machine went away (or this waited long): follow whatever runs now.
                self.subscribe();
            }
        })
    }
}
