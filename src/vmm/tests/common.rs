//! Helpers for the test-guest tests: boot the guest ELF with a command line, collect its output.
#![allow(dead_code)]

use std::time::Duration;
use vmm::{BootConfig, ExitReason, Vm, VmConfig};

/// Returns false (after printing the skip line) when /dev/kvm cannot be used.
pub fn kvm_or_skip() -> bool {
    if vmm::kvm_available() {
        true
    } else {
        println!("skipped: /dev/kvm not available");
        false
    }
}

/// A config for the test guest with `cmdline`.
pub fn guest_config(name: &str, cmdline: &str) -> VmConfig {
    let boot = BootConfig {
        kernel: test_guests::guest_elf_path().into(),
        initrd: None,
        cmdline: cmdline.into(),
    };
    let mut cfg = VmConfig::new(name, boot);
    cfg.memory_bytes = 64 << 20;
    cfg
}

/// Boots, waits for the guest to exit (up to `timeout`), returns (exit reason, debug output).
pub fn run_guest(cfg: VmConfig, timeout: Duration) -> (Option<ExitReason>, String) {
    let mut vm = Vm::create(cfg).expect("create VM");
    vm.start().expect("start VM");
    let reason = vm.wait_exit(timeout);
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    vm.delete();
    (reason, out)
}

/// Asserts the guest passed: exit code 0, "result pass", and each `expect`ed ok line.
pub fn assert_pass(reason: &Option<ExitReason>, out: &str, expect: &[&str]) {
    assert_eq!(
        reason,
        &Some(ExitReason::DebugExit(0)),
        "guest output:\n{out}"
    );
    assert!(out.contains("result pass"), "guest output:\n{out}");
    assert!(!out.contains("\nfail "), "guest output:\n{out}");
    for e in expect {
        assert!(
            out.contains(&format!("ok {e}\n")),
            "missing 'ok {e}' in guest output:\n{out}"
        );
    }
}

/// Runs `f` on a thread of its own inside a new network namespace: the threads it spawns (a
/// VM's included) and the `ip` children inherit it, and the namespace goes when they end, so
/// nothing a test makes there reaches the host. `None`, after printing the skip line, when no
/// namespace can be made; a panic in `f` is the test's own.
pub fn in_private_netns<T: Send + 'static>(
    f: impl FnOnce() -> Option<T> + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) with a plain flag; it only changes this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            println!(
                "skipped: cannot create a network namespace: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs `ip args...` in the calling thread's network namespace (children inherit it).
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
