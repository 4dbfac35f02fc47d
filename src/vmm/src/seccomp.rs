//! Seccomp allowlists for guest-facing threads (vCPUs and device I/O threads), built with
//! seccompiler. A thread installs its filter before touching guest-controlled data; a syscall
//! outside the list kills the process (so an exploited device cannot widen its reach).

use crate::error::{Result, VmmError};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};
use std::collections::BTreeMap;

/// Which allowlist to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN, bus dispatch, eventfd writes.
    Vcpu,
    /// A device I/O thread: epoll, eventfds, tap reads/writes, backend I/O.
    Device,
}

fn common() -> Vec<libc::c_long> {
    vec![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_futex,
        libc::SYS_ioctl,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_mprotect,
        libc::SYS_brk,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_tgkill,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_getrandom,
        libc::SYS_io_uring_enter,
        // A thread asleep in poll(2) that io_uring wakes to finish a completion on it (task
        // work) returns to user space and the kernel restarts its poll through this call.
        libc::SYS_restart_syscall,
        libc::SYS_statx,
        libc::SYS_rseq,
        libc::SYS_set_robust_list,
        // Device activation runs on the vCPU that wrote DRIVER_OK: it creates eventfds and
        // spawns the device's I/O threads, which then install their own (narrower) filter.
        libc::SYS_eventfd2,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_prctl,
        libc::SYS_seccomp,
        libc::SYS_dup,
        // glibc opens /sys files lazily (e.g. get_nprocs on a thread's first malloc). These are
        // let through the allowlist only to be answered EACCES by the second filter below.
        libc::SYS_openat,
        libc::SYS_open,
    ]
}

/// Builds the BPF program for `kind` (exposed for tests).
pub fn program(kind: ThreadKind) -> Result<BpfProgram> {
    let mut calls = common();
    if kind == ThreadKind::Device {
        calls.extend([
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_epoll_create1,
        ]);
    }
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls.into_iter().map(|c| (c, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        std::env::consts::ARCH
            .try_into()
            .map_err(|e| VmmError::Seccomp(format!("arch: {e:?}")))?,
    )
    .map_err(|e| VmmError::Seccomp(format!("filter: {e}")))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| VmmError::Seccomp(format!("compile: {e}")))
}

/// A filter that fails every open with EACCES (guest-facing threads never open files).
fn deny_open() -> Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [libc::SYS_openat, libc::SYS_open]
        .into_iter()
        .map(|c| (c, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        std::env::consts::ARCH
            .try_into()
            .map_err(|e| VmmError::Seccomp(format!("arch: {e:?}")))?,
    )
    .map_err(|e| VmmError::Seccomp(format!("filter: {e}")))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| VmmError::Seccomp(format!("compile: {e}")))
}

/// Installs the allowlist for `kind` on the calling thread. Two filters stack: the allowlist
/// (anything else kills the process) and one that turns opens into EACCES; the kernel applies
/// the most restrictive verdict.
pub fn apply(kind: ThreadKind) -> Result<()> {
    let prog = program(kind)?;
    let deny = deny_open()?;
    seccompiler::apply_filter(&prog).map_err(|e| VmmError::Seccomp(format!("apply: {e}")))?;
    seccompiler::apply_filter(&deny).map_err(|e| VmmError::Seccomp(format!("apply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(!program(ThreadKind::Vcpu).unwrap().is_empty());
        assert!(
            program(ThreadKind::Device).unwrap().len() > program(ThreadKind::Vcpu).unwrap().len()
        );
    }

    #[test]
    fn filter_allows_listed_calls_in_a_thread() {
        // Installing is per-thread; do it on a scratch thread so the test process is unaffected.
        let ok = std::thread::spawn(|| {
            apply(ThreadKind::Device).unwrap();
            assert!(
                std::fs::File::open("/etc/hostname").is_err(),
                "opens are refused"
            );
            // SAFETY: gettid has no preconditions and is on the allowlist.
            unsafe { libc::gettid() > 0 }
        })
        .join()
        .unwrap();
        assert!(ok);
    }
}
