//! Disk hot-detach on real KVM with the test guest: the guest answers the eject request the way
//! the DSDT's methods do (PCID, driver release, B0EJ), the device leaves the bus, and a disk
//! attached afterwards gets the freed slot. A guest that does not answer keeps the disk unless
//! the detach is forced.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::{DiskBackend, DiskConfig, RamDisk, VmmError};

fn disk(backend: Arc<dyn DiskBackend>, id: &str) -> DiskConfig {
    DiskConfig {
        id: id.into(),
        backend,
        queues: 1,
        queue_size: 256,
    }
}

fn wait_for(vm: &vmm::Vm, marker: &str) {
    let t = Instant::now();
    while !String::from_utf8_lossy(&vm.debug_output()).contains(marker) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "guest never printed {marker}: {}",
            String::from_utf8_lossy(&vm.debug_output())
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Attach, full I/O, detach (the guest releases and ejects; it sees the slot empty), attach
/// again: same slot, and the data written before the detach reads back.
#[test]
fn virtio_blk_detach_then_reattach_to_the_same_slot() {
    if !kvm_or_skip() {
        return;
    }
    const ID: &str = "cairn-test-disk-hot";
    let mut vm =
        vmm::Vm::create(guest_config("unplug", "hotplug hotunplug blk-write seed=9")).unwrap();
    vm.start().unwrap();
    wait_for(&vm, "hotplug-waiting");
    let backend: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(64 << 20));
    vm.attach_disk(disk(backend.clone(), ID)).unwrap();
    let slot = vm.pci_slot(ID).expect("attached disk has a slot");

    wait_for(&vm, "hotunplug-waiting");
    let t = Instant::now();
    vm.detach_disk(ID, Duration::from_secs(20), false).unwrap();
    println!("detach-ms {}", t.elapsed().as_millis());
    // The eject write returned the call; the guest's own checks follow right after.
    wait_for(&vm, "hotunplug-done");
    assert!(vm.stats().disks.is_empty(), "{:?}", vm.stats().disks);
    assert!(vm.config().disks.is_empty());
    assert_eq!(vm.pci_slot(ID), None);
    assert!(matches!(
        vm.detach_disk(ID, Duration::from_millis(10), false),
        Err(VmmError::NoSuchDevice(_))
    ));

    vm.attach_disk(disk(backend, ID)).unwrap();
    assert_eq!(vm.pci_slot(ID), Some(slot), "the freed slot is reused");
    let reason = vm.wait_exit(Duration::from_secs(60));
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    vm.delete();
    assert_pass(
        &reason,
        &out,
        &[
            "acpi-pcihp-region",
            "hotplug-found",
            "hotplug-pciu-slot",
            "hotplug-pciu-cleared",
            "hotplug-sta-present",
            "hotplug-slot-ej0",
            "blk-qd32-read",
            "blk-write-for-restart",
            "hotunplug-request",
            "hotunplug-driver-released",
            "hotunplug-still-there",
            "hotunplug-gone",
            "hotunplug-sta-absent",
            "hotunplug-no-blk",
            "hotplug-again-pciu",
            "hotplug-same-slot",
            "blk-verify-after-reattach",
        ],
    );
}

/// A guest that ignores the eject request: a clear timeout error and the disk stays; a forced
/// detach removes it; the slot is reused. Before start and after stop no guest is asked.
#[test]
fn detach_from_a_guest_that_does_not_answer() {
    if !kvm_or_skip() {
        return;
    }
    let backend: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(8 << 20));
    let mut cfg = guest_config("deaf", "spin");
    cfg.disks.push(disk(backend.clone(), "d0"));
    cfg.disks.push(disk(backend.clone(), "d1"));
    let mut vm = vmm::Vm::create(cfg).unwrap();
    // Created, never started: removed at once.
    vm.detach_disk("d1", Duration::ZERO, false).unwrap();
    assert_eq!(vm.config().disks.len(), 1);
    assert_eq!(vm.pci_slot("d0"), Some(1));
    vm.start().unwrap();

    let t = Instant::now();
    let e = vm
        .detach_disk("d0", Duration::from_millis(300), false)
        .unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(matches!(e, VmmError::EjectTimeout { .. }), "{e}");
    assert!(e.to_string().contains("force"), "{e}");
    assert_eq!(vm.stats().disks.len(), 1, "the disk stays");
    assert_eq!(vm.config().disks.len(), 1);
    assert_eq!(vm.pci_slot("d0"), Some(1));

    vm.pause().unwrap();
    assert!(matches!(
        vm.detach_disk("d0", Duration::from_millis(10), false),
        Err(VmmError::InvalidState { .. })
    ));
    vm.resume().unwrap();

    vm.detach_disk("d0", Duration::from_millis(100), true)
        .unwrap();
    assert!(vm.stats().disks.is_empty());
    assert_eq!(vm.pci_slot("d0"), None);
    // Attach and force-detach a few times: eventfds, GSIs and the BAR window are reused.
    for _ in 0..3 {
        vm.attach_disk(disk(backend.clone(), "d2")).unwrap();
        assert_eq!(vm.pci_slot("d2"), Some(1));
        vm.detach_disk("d2", Duration::from_millis(20), true)
            .unwrap();
    }
    vm.attach_disk(disk(backend.clone(), "d2")).unwrap();
    let _ = vm.stop(Duration::from_millis(200)).unwrap();
    // Stopped: only the configuration changes.
    vm.detach_disk("d2", Duration::ZERO, false).unwrap();
    assert!(vm.config().disks.is_empty());
    vm.delete();
}
