//! BAR relocation from a real guest on KVM: the test guest moves a live virtio-blk device's
//! 64-bit BAR 0 through 0xCF8/0xCFC (size probe, new address, decode back on) and keeps doing
//! block I/O there; memory decode off makes the device unreachable (all-ones, writes and
//! notifies ignored); addresses outside the window or on another device are refused safely.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use vmm::{DiskBackend, DiskConfig, RamDisk};

const MOVED: u64 = 0xD000_0000;

fn run(cmdline: &str, rng: bool) -> (Option<vmm::ExitReason>, String, Option<u64>, Arc<RamDisk>) {
    let backend = Arc::new(RamDisk::new(16 << 20));
    let mut cfg = guest_config("bar", cmdline);
    cfg.disks.push(DiskConfig {
        id: "cairn-test-disk0".into(),
        backend: backend.clone() as Arc<dyn DiskBackend>,
        queues: 1,
        queue_size: 256,
    });
    cfg.rng = rng;
    let mut vm = vmm::Vm::create(cfg).expect("create VM");
    assert_eq!(
        vm.pci_bar("cairn-test-disk0"),
        None,
        "decode is off before the guest runs"
    );
    vm.start().expect("start VM");
    let reason = vm.wait_exit(Duration::from_secs(60));
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    let bar = vm.pci_bar("cairn-test-disk0");
    vm.delete();
    (reason, out, bar, backend)
}

#[test]
fn guest_moves_a_live_virtio_blk_bar_and_keeps_doing_io() {
    if !kvm_or_skip() {
        return;
    }
    let (reason, out, bar, backend) = run("bar-move seed=9", false);
    assert_pass(
        &reason,
        &out,
        &[
            "bar-64bit",
            "bar-write-at-home",
            "bar-size-probe",
            "bar-programmed",
            "bar-old-reads-ones",
            "bar-state-kept",
            "bar-old-notify-ignored",
            "bar-new-notify",
            "bar-moved-io",
        ],
    );
    assert_eq!(
        bar,
        Some(MOVED),
        "the VMM decodes the BAR where the guest put it"
    );
    // What the guest wrote after the move is on the disk.
    let mut buf = vec![0u8; 4096];
    backend.read((2048 + 8 * 32) * 512, &mut buf).unwrap();
    assert!(
        buf.iter().any(|b| *b != 0),
        "post-move writes reached the disk"
    );
}

#[test]
fn decode_off_and_bad_addresses_make_the_bar_unreachable_not_the_vm() {
    if !kvm_or_skip() {
        return;
    }
    let (reason, out, bar, _) = run("bar-move bar-decode-off bar-bad seed=4", true);
    assert_pass(
        &reason,
        &out,
        &[
            "bar-moved-io",
            "decode-off-reads-ones",
            "decode-off-notify-ignored",
            "decode-off-writes-ignored",
            "decode-on-again",
            "bar-outside-window-off",
            "bar-high-half-counts",
            "bar-overlap-refused",
            "bar-back-after-bad",
        ],
    );
    assert_eq!(bar, Some(MOVED));
}
