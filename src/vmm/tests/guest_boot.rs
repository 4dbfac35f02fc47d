//! The test guest on real KVM: PVH boot, long mode, ring 3, debug-port output, lifecycle.

mod common;

use common::*;
use std::time::Duration;
use vmm::{ExitReason, Vm, VmState};

#[test]
fn hello_over_debug_port() {
    if !kvm_or_skip() {
        return;
    }
    let (reason, out) = run_guest(guest_config("hello", "hello"), Duration::from_secs(30));
    assert!(out.contains("hello from ring 3"), "{out}");
    assert!(out.contains("cmdline hello"), "{out}");
    assert_pass(&reason, &out, &["pvh-magic"]);
}

#[test]
fn multiple_vcpus_and_memory_map() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = guest_config("smp", "hello");
    cfg.vcpus = 4;
    cfg.memory_bytes = 96 << 20;
    let (reason, out) = run_guest(cfg, Duration::from_secs(30));
    assert_pass(&reason, &out, &["pvh-magic"]);
    // RAM reported = low 640K - 1K + (96 MiB - 1 MiB).
    let expect = 0x9fc00u64 + (96 << 20) - 0x100000;
    assert!(out.contains(&format!("ram-bytes {expect}\n")), "{out}");
}

#[test]
fn lifecycle_pause_resume_graceful_and_forced_stop() {
    if !kvm_or_skip() {
        return;
    }
    // "wait-shutdown": the guest enables the ACPI power button, routes the SCI to its LAPIC,
    // polls PM1_STS, then powers off through SLP_TYP=S5 | SLP_EN.
    let mut vm = Vm::create(guest_config("life", "wait-shutdown")).unwrap();
    assert_eq!(vm.state(), VmState::Created);
    assert!(vm.pause().is_err(), "pause before start must be refused");
    vm.start().unwrap();
    assert!(vm.start().is_err(), "double start must be refused");
    std::thread::sleep(Duration::from_millis(200));
    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    let reason = vm.stop(Duration::from_secs(20)).unwrap();
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    assert_eq!(reason, ExitReason::Shutdown, "{out}");
    for ok in [
        "acpi-fixed-power-button",
        "acpi-s5",
        "acpi-sci-en",
        "acpi-sci",
        "acpi-pwrbtn-cleared",
    ] {
        assert!(
            out.contains(&format!("ok {ok}\n")),
            "missing ok {ok}:\n{out}"
        );
    }
    assert!(out.contains("shutdown requested"), "{out}");
    assert!(!out.contains("\nfail "), "{out}");
    assert_eq!(vm.state(), VmState::Stopped);
    let stats = vm.stats();
    assert_eq!(stats.memory_bytes, 64 << 20);

    // Restart on the same config, then a guest that ignores the request is stopped by force.
    let mut vm = Vm::create(guest_config("life2", "spin")).unwrap();
    vm.start().unwrap();
    let t = std::time::Instant::now();
    let reason = vm.stop(Duration::from_millis(300)).unwrap();
    assert_eq!(reason, ExitReason::Stopped);
    assert!(t.elapsed() < Duration::from_secs(10));
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    vm.delete();
}

#[test]
fn bad_config_is_refused() {
    let mut cfg = guest_config("bad", "");
    cfg.vcpus = 0;
    assert!(Vm::create(cfg).is_err());
    let mut cfg = guest_config("bad", "");
    cfg.memory_bytes = 12345;
    assert!(Vm::create(cfg).is_err());
    let mut cfg = guest_config("bad", "");
    cfg.boot.kernel = "/nonexistent".into();
    if vmm::kvm_available() {
        assert!(matches!(Vm::create(cfg), Err(vmm::VmmError::Boot(_))));
    }
}

#[test]
fn ring3_port_io_reaches_high_ports() {
    // PVM checks the guest TSS I/O bitmap even with IOPL=3; the guest's TSS must allow all ports.
    if !kvm_or_skip() {
        return;
    }
    let (reason, out) = run_guest(guest_config("ports", "porttest"), Duration::from_secs(30));
    assert_pass(&reason, &out, &[]);
    assert!(out.contains("in ok 0x0000000000000cfc"), "{out}");
}

#[test]
fn acpi_tables_describe_cpus_and_ecam() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = guest_config("acpi", "acpi");
    cfg.vcpus = 3;
    let (reason, out) = run_guest(cfg, Duration::from_secs(30));
    assert_pass(&reason, &out, &["acpi-rsdp", "acpi-mcfg"]);
    assert!(out.contains("acpi-cpus 3\n"), "{out}");
}
