//! Early boot of PID 1: the pseudo filesystems, /dev/console, consoles, signals, the watchdog.
//! Owns the order these come up in. Must never abort boot for a missing optional piece
//! (hugetlbfs, a watchdog): those are logged and skipped.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use crate::power::{self, PowerAction};
use crate::{log, logln, sys};

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Mounts proc, sys, devtmpfs (/dev), /run (tmpfs), cgroup2 and hugetlbfs. A failure of the
/// first four is fatal for the caller; the others are logged.
pub fn mount_filesystems() -> Result<(), String> {
    let table: [(&str, &str, &str, libc::c_ulong, &str, bool); 6] = [
        ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, "", true),
        ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, "", true),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            "mode=0755",
            true,
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755,size=50%",
            true,
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            NOSUID_NODEV_NOEXEC,
            "",
            false,
        ),
        (
            "hugetlbfs",
            "/dev/hugepages",
            "hugetlbfs",
            libc::MS_NODEV,
            "",
            false,
        ),
    ];
    for (src, target, fstype, flags, data, required) in table {
        let _ = std::fs::create_dir_all(target);
        match sys::mount(src, target, fstype, flags, data) {
            Ok(()) => {}
            // devtmpfs may already be mounted by the kernel (CONFIG_DEVTMPFS_MOUNT).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) if required => return Err(format!("mount {fstype} on {target}: {e}")),
            Err(e) => logln!("optional mount {fstype} on {target} skipped: {e}"),
        }
    }
    // /dev/console is 5:1; devtmpfs has it, but make sure (an empty /dev would lose all output).
    if std::fs::metadata("/dev/console").is_err() {
        let _ = sys::mknod_char("/dev/console", 0o600, 5, 1);
    }
    for d in ["/run/cairn", "/dev/pts", "/dev/shm"] {
        let _ = std::fs::create_dir_all(d);
    }
    Ok(())
}

/// The consoles the kernel command line chose (`console=` words), from
/// /sys/class/tty/console/active, opened read-write. Falls back to /dev/console.
pub fn open_consoles() -> Vec<(String, File)> {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut out = Vec::new();
    for name in active.split_whitespace() {
        let path = format!("/dev/{name}");
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => {
                let _ = sys::sane_terminal(f.as_raw_fd());
                out.push((name.to_string(), f));
            }
            Err(e) => eprintln!("cairn: cannot open console {path}: {e}"),
        }
    }
    if out.is_empty() {
        if let Ok(f) = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
        {
            out.push(("console".to_string(), f));
        }
    }
    out
}

/// Installs the consoles as log outputs; returns them for input.
pub fn setup_consoles() -> Vec<(String, File)> {
    let cons = open_consoles();
    let writers = cons
        .iter()
        .filter_map(|(_, f)| f.try_clone().ok())
        .collect();
    log::set_consoles(writers);
    cons
}

/// Sets the kernel hostname.
pub fn set_hostname(name: &str) {
    match sys::sethostname(name) {
        Ok(()) => logln!("hostname {name}"),
        Err(e) => logln!("sethostname {name}: {e}"),
    }
}

/// Starts the signal thread: reaps zombies and turns power signals into an orderly end.
/// SIGINT (ctrl-alt-del) and SIGTERM reboot, SIGUSR1 halts, SIGUSR2 and SIGPWR power off.
/// The handled signals must already be blocked ([`sys::block_handled_signals`]).
pub fn spawn_signal_thread() {
    if let Err(e) = sys::ctrl_alt_del_to_signal() {
        logln!("ctrl-alt-del stays a hard reboot: {e}");
    }
    std::thread::Builder::new()
        .name("pid1-signals".into())
        .spawn(|| loop {
            let Some(sig) = sys::wait_signal(5_000) else {
                // Reap on a timer too: a lost SIGCHLD must not leave zombies forever.
                sys::reap_children();
                continue;
            };
            let action = match sig {
                libc::SIGCHLD => {
                    for (pid, status) in sys::reap_children() {
                        logln!("reaped child {pid} (status {status:#x})");
                    }
                    continue;
                }
                libc::SIGINT | libc::SIGTERM => PowerAction::Reboot,
                libc::SIGUSR1 => PowerAction::Halt,
                _ => PowerAction::PowerOff,
            };
            logln!("signal {sig}: {action:?} requested");
            crate::service::stop_node(Duration::from_secs(20));
            power::finish(action);
        })
        .map(|_| ())
        .unwrap_or_else(|e| logln!("cannot start the signal thread: {e}"));
}

/// The timeout PID 1 asks the watchdog driver for unless the command line names another
/// (`cairn.watchdog_timeout`), and how often it kicks at most: three kicks fit in every timeout.
pub const WATCHDOG_TIMEOUT_S: i32 = 30;
const WATCHDOG_KICK_EVERY: Duration = Duration::from_secs(5);

/// How often to kick a watchdog whose timeout is `timeout_s` (None: the driver's default, not
/// known): every 5 s, or a third of a shorter timeout.
fn kick_every(timeout_s: Option<i32>) -> Duration {
    match timeout_s {
        Some(t) if t > 0 => WATCHDOG_KICK_EVERY.min(Duration::from_secs((t as u64 / 3).max(1))),
        _ => Duration::from_secs(1),
    }
}

/// The open watchdog device, kept so a halt can disarm it (a halted box must stay halted).
static WATCHDOG: Mutex<Option<File>> = Mutex::new(None);

/// Watchdog device nodes (/dev/watchdogN), in order.
pub fn watchdog_devices() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/watchdog")
        .map(|rd| {
            rd.flatten()
                .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

const SOFTWARE_WATCHDOG: &str = "Software Watchdog";

/// Opens the best watchdog: a hardware one, else the kernel's softdog (which only helps when
/// PID 1 hangs, not when the kernel does). Opening arms a watchdog, so a softdog opened while
/// looking is disarmed again (magic close) when a hardware one turns up.
fn open_best_watchdog() -> Option<(String, String, File)> {
    let mut soft: Option<(String, String, File)> = None;
    for path in watchdog_devices() {
        let f = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                logln!("watchdog {path} cannot be opened: {e}");
                continue;
            }
        };
        let identity = sys::watchdog_identity(f.as_raw_fd()).unwrap_or_default();
        if identity != SOFTWARE_WATCHDOG {
            if let Some((_, _, mut s)) = soft.take() {
                use std::io::Write;
                let _ = s.write_all(b"V");
            }
            return Some((path, identity, f));
        }
        if soft.is_none() {
            soft = Some((path, identity, f));
        } else {
            use std::io::Write;
            let mut f = f;
            let _ = f.write_all(b"V");
        }
    }
    soft
}

/// Opens the best watchdog the machine has, sets its timeout (`timeout_s`, else
/// [`WATCHDOG_TIMEOUT_S`]) and
/// kicks it from a thread. The kicks stop when PID 1 hangs badly enough to starve this thread,
/// and the hardware resets the box. `starve_after` (a test hook, `cairn.watchdog_starve_after`)
/// stops the kicks after that many seconds to prove the reset really happens.
pub fn start_watchdog(timeout_s: Option<i32>, starve_after: Option<u64>) {
    let Some((path, identity, dev)) = open_best_watchdog() else {
        logln!("no hardware watchdog");
        return;
    };
    let want = timeout_s.unwrap_or(WATCHDOG_TIMEOUT_S);
    let (timeout, every) = match sys::watchdog_set_timeout(dev.as_raw_fd(), want) {
        Ok(t) => (format!("{t} s"), kick_every(Some(t))),
        Err(e) => (
            format!("driver default (setting {want} s: {e})"),
            kick_every(None),
        ),
    };
    *WATCHDOG.lock().unwrap_or_else(|p| p.into_inner()) = Some(dev);
    logln!(
        "watchdog armed: {identity} ({path}), timeout {timeout}, kicked every {} s",
        every.as_secs()
    );
    let started = std::time::Instant::now();
    let _ = std::thread::Builder::new()
        .name("pid1-watchdog".into())
        .spawn(move || loop {
            if starve_after.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
                logln!("watchdog: kicks stop now (cairn.watchdog_starve_after test hook)");
                return;
            }
            // Through the one shared descriptor: a halt closes it, and only the last close of
            // the device disarms it.
            if let Some(f) = WATCHDOG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                use std::io::Write;
                let _ = f.write_all(b"k");
            }
            std::thread::sleep(every);
        });
}

/// Disarms the watchdog (the magic close 'V'), for a halt: nothing kicks it any more.
pub fn disarm_watchdog() {
    if let Some(mut f) = WATCHDOG.lock().unwrap_or_else(|p| p.into_inner()).take() {
        use std::io::Write;
        let _ = f.write_all(b"V");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_kicks_fit_in_every_timeout() {
        assert_eq!(kick_every(Some(30)), Duration::from_secs(5));
        assert_eq!(kick_every(Some(600)), Duration::from_secs(5));
        assert_eq!(kick_every(Some(12)), Duration::from_secs(4));
        assert_eq!(kick_every(Some(10)), Duration::from_secs(3));
        assert_eq!(kick_every(Some(1)), Duration::from_secs(1));
        // A driver that reports nonsense or keeps its own default: kick often.
        assert_eq!(kick_every(Some(0)), Duration::from_secs(1));
        assert_eq!(kick_every(None), Duration::from_secs(1));
    }
}
