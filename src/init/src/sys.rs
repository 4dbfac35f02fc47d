//! Thin, checked wrappers around the Linux system calls PID 1 needs (mount, reboot, hostname,
//! device nodes, signals, termios). Every `unsafe` block of the crate that is not about sockets
//! lives here. Must never hide an error: each wrapper returns the errno as `io::Error`.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2). `data` is the filesystem-specific option string.
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all four pointers come from live CStrings that outlive the call; mount(2) only
    // reads them.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) })
}

/// umount2(2).
pub fn umount(target: &str, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a valid NUL-terminated string alive for the call.
    check(unsafe { libc::umount2(t.as_ptr(), flags) })
}

/// mknod(2) for a character device.
pub fn mknod_char(path: &str, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string; makedev is a pure computation.
    check(unsafe {
        libc::mknod(
            p.as_ptr(),
            libc::S_IFCHR | mode,
            libc::makedev(major, minor),
        )
    })
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer/length pair describes `name`'s bytes, which stay alive for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// sync(2): flushes every filesystem and block device buffer.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// reboot(2) with one of the `libc::RB_*` / `LINUX_REBOOT_CMD_*` commands. For the power
/// commands it only returns on failure.
pub fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: reboot(2) with a plain command takes no pointers.
    let rc = unsafe { libc::reboot(cmd) };
    if rc < 0 {
        io::Error::last_os_error()
    } else {
        io::Error::other("reboot(2) returned")
    }
}

/// Makes ctrl-alt-del send SIGINT to PID 1 instead of rebooting at once.
pub fn ctrl_alt_del_to_signal() -> io::Result<()> {
    // SAFETY: as above; CAD_OFF takes no argument.
    check(unsafe { libc::reboot(libc::RB_DISABLE_CAD) })
}

/// The signals PID 1 handles itself (power requests and child exits).
pub const HANDLED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
];

extern "C" fn noop_handler(_: libc::c_int) {}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in HANDLED_SIGNALS {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks the handled signals in the calling thread (and every thread it spawns later), and
/// installs a no-op handler for each: the kernel discards default-action signals sent to PID 1,
/// and a handler makes sure they stay pending until [`wait_signal`] takes them.
pub fn block_handled_signals() -> io::Result<()> {
    let set = handled_set();
    for s in HANDLED_SIGNALS {
        // SAFETY: sigaction is plain data; zeroed is a valid "no flags, empty mask" value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = noop_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa` is fully initialised and the handler is async-signal-safe (does nothing).
        check(unsafe { libc::sigaction(s, &sa, std::ptr::null_mut()) })?;
    }
    // SAFETY: `set` is initialised; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits up to `timeout_ms` for one of the handled signals; `None` on timeout.
pub fn wait_signal(timeout_ms: u64) -> Option<libc::c_int> {
    let set = handled_set();
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `set` and `ts` are valid for the call; the siginfo out-pointer may be null.
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (rc > 0).then_some(rc)
}

/// Reaps every exited child without blocking; returns (pid, raw status) pairs.
pub fn reap_children() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        out.push((pid, status));
    }
    out
}

/// Turns terminal echo on or off (for password prompts). Errors are returned, not ignored,
/// but callers may proceed with echo on when the fd is not a terminal.
pub fn set_echo(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: termios is plain data filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor owned by the caller; `t` is a valid out-pointer.
    check(unsafe { libc::tcgetattr(fd, &mut t) })?;
    if on {
        t.c_lflag |= libc::ECHO;
    } else {
        t.c_lflag &= !libc::ECHO;
    }
    // SAFETY: as above, `t` was initialised by tcgetattr.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) })
}

/// Makes the terminal on `fd` a sane line-based console: canonical mode, echo, CR -> NL on
/// input, NL -> CR NL on output, and the serial speed left as the kernel set it.
pub fn sane_terminal(fd: RawFd) -> io::Result<()> {
    // SAFETY: see `set_echo`.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: see `set_echo`.
    check(unsafe { libc::tcgetattr(fd, &mut t) })?;
    t.c_iflag |= libc::ICRNL;
    t.c_iflag &= !(libc::IXON | libc::INLCR | libc::IGNCR);
    t.c_oflag |= libc::OPOST | libc::ONLCR;
    t.c_lflag |= libc::ICANON | libc::ECHO | libc::ECHOE | libc::ISIG;
    t.c_cflag |= libc::CREAD | libc::CLOCAL;
    // SAFETY: see `set_echo`.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) })
}

/// _IOR(0x12, 114, u64): not exported by the libc crate.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Block device size in bytes (BLKGETSIZE64).
pub fn block_size_bytes(fd: RawFd) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid and aligned.
    check(unsafe { libc::ioctl(fd, BLKGETSIZE64 as _, &mut size) })?;
    Ok(size)
}

/// Sets a watchdog device's timeout (WDIOC_SETTIMEOUT) and returns the timeout the driver
/// actually chose (drivers round or clamp it).
pub fn watchdog_set_timeout(fd: RawFd, secs: i32) -> io::Result<i32> {
    // _IOWR('W', 6, int) from <linux/watchdog.h>.
    const WDIOC_SETTIMEOUT: u64 = 0xC004_5706;
    let mut t: libc::c_int = secs;
    // SAFETY: the ioctl reads and writes one c_int, which `t` is, valid for the call.
    check(unsafe { libc::ioctl(fd, WDIOC_SETTIMEOUT as _, &mut t) })?;
    Ok(t)
}

/// A watchdog driver's identity string (WDIOC_GETSUPPORT), e.g. "i6300ESB timer".
pub fn watchdog_identity(fd: RawFd) -> io::Result<String> {
    // _IOR('W', 0, struct watchdog_info): u32 options, u32 firmware_version, u8 identity[32].
    const WDIOC_GETSUPPORT: u64 = 0x8028_5700;
    let mut info = [0u8; 40];
    // SAFETY: the ioctl writes one 40-byte struct watchdog_info into `info`, valid for the call.
    check(unsafe { libc::ioctl(fd, WDIOC_GETSUPPORT as _, info.as_mut_ptr()) })?;
    let id = &info[8..];
    let end = id.iter().position(|&b| b == 0).unwrap_or(id.len());
    Ok(String::from_utf8_lossy(&id[..end]).into_owned())
}

/// Points this process's stdout and stderr at a new pipe and returns its read end: output a
/// library prints directly (not through the log) then reaches the log instead of a console
/// write that can block (see log.rs).
pub fn stdio_to_pipe() -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass; nothing else is touched.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    let (r, w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    use std::os::fd::AsRawFd;
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 on descriptors we own; the old stdout/stderr are closed atomically.
        if unsafe { libc::dup2(w.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    drop(w);
    Ok(r)
}
