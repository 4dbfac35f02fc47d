//! Ending the system: orderly reboot, power-off and halt, and the fatal-error path. Owns the
//! shutdown sequence (stop the node service, sync, unmount, reboot(2)). Must never return and
//! never let PID 1 exit (that would panic the kernel).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{logln, sys};

/// How the machine should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
    Halt,
}

/// Mount points PID 1 made, unmounted in reverse on the way down.
const UNMOUNT_ORDER: [&str; 5] = ["/sys/fs/cgroup", "/run", "/dev/hugepages", "/sys", "/proc"];

/// Set by the first caller of [`finish`]: a second, racing request (a signal during a menu
/// power-off) must not change what the machine does.
static GOING_DOWN: AtomicBool = AtomicBool::new(false);

fn park() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Sync, unmount, and reboot/power off/halt. Never returns: if reboot(2) fails PID 1 parks
/// forever rather than exit.
pub fn finish(action: PowerAction) -> ! {
    if GOING_DOWN.swap(true, Ordering::SeqCst) {
        park();
    }
    logln!("system going down: {action:?}");
    // Console output is queued (log.rs): let it reach the screen and serial line first,
    // but never let a console nobody reads hold up the reboot.
    crate::log::flush_consoles(std::time::Duration::from_secs(2));
    if action == PowerAction::Halt {
        // A halted machine must stay halted, not be reset by the watchdog a minute later.
        crate::boot::disarm_watchdog();
    }
    sys::sync();
    for m in UNMOUNT_ORDER {
        // MNT_DETACH: a busy mount must not stop the reboot; the sync above made data durable.
        let _ = sys::umount(m, libc::MNT_DETACH);
    }
    sys::sync();
    let cmd = match action {
        PowerAction::Reboot => libc::RB_AUTOBOOT,
        PowerAction::PowerOff => libc::RB_POWER_OFF,
        PowerAction::Halt => libc::RB_HALT_SYSTEM,
    };
    let err = sys::reboot(cmd);
    logln!("reboot(2) failed: {err}; halting here");
    crate::log::flush_consoles(std::time::Duration::from_secs(2));
    park()
}

/// The fatal-error path: log, then reboot or halt as the kernel command line says.
pub fn fatal(what: &str, on_fatal: crate::cmdline::OnFatal) -> ! {
    logln!("FATAL: {what}");
    let action = match on_fatal {
        crate::cmdline::OnFatal::Reboot => PowerAction::Reboot,
        crate::cmdline::OnFatal::Halt => PowerAction::Halt,
    };
    logln!(
        "PID 1 recovers by {}",
        if action == PowerAction::Reboot {
            "rebooting"
        } else {
            "halting"
        }
    );
    finish(action)
}
