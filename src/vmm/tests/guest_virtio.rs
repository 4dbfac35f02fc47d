//! The test guest drives our PCI + virtio devices on real KVM from ring 3.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use vmm::{DiskBackend, DiskConfig, RamDisk};

fn disk(backend: Arc<dyn DiskBackend>, queues: u16) -> DiskConfig {
    DiskConfig {
        id: "cairn-test-disk0".into(),
        backend,
        queues,
        queue_size: 256,
    }
}

#[test]
fn virtio_blk_qd1_qd32_flush_discard_and_restart() {
    if !kvm_or_skip() {
        return;
    }
    let backend: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(64 << 20));
    let mut cfg = guest_config("blk", "blk-write seed=7");
    cfg.disks.push(disk(backend.clone(), 1));
    let mut vm = vmm::Vm::create(cfg).unwrap();
    vm.start().unwrap();
    let reason = vm.wait_exit(Duration::from_secs(60));
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    let stats = vm.stats();
    vm.delete();
    assert_pass(
        &reason,
        &out,
        &[
            "pci-find-blk",
            "virtio-caps",
            "virtio-features",
            "virtio-driver-ok",
            "blk-qd1",
            "msix-delivered",
            "blk-qd32-write",
            "blk-qd32-read",
            "blk-flush",
            "blk-get-id",
            "blk-discard",
            "blk-write-zeroes",
            "blk-discarded-reads-zero",
            "blk-out-of-range-ioerr",
            "blk-unknown-unsupp",
            "blk-write-for-restart",
        ],
    );
    assert!(
        out.contains(&format!("capacity-sectors {}\n", (64u64 << 20) / 512)),
        "{out}"
    );
    let d = &stats.disks[0];
    assert!(
        d.write_ops >= 72 && d.read_ops >= 40 && d.flush_ops >= 2 && d.discard_ops == 2,
        "{d:?}"
    );
    assert!(
        d.errors >= 2,
        "the two rejected requests are counted: {d:?}"
    );

    // The host sees the guest's pattern too: block 0 of the batch is not zero.
    let mut buf = vec![0u8; 4096];
    backend.read(2048 * 512, &mut buf).unwrap();
    assert!(buf.iter().any(|b| *b != 0));

    // A new VM on the same backend reads back what the first one wrote (a VM restart).
    let mut cfg = guest_config("blk2", "blk-verify seed=7");
    cfg.disks.push(disk(backend, 1));
    let (reason, out) = run_guest(cfg, Duration::from_secs(60));
    assert_pass(&reason, &out, &["blk-verify-after-restart"]);
}

#[test]
fn virtio_blk_multiqueue_device_still_serves_queue0() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = guest_config("blkmq", "blk seed=3");
    cfg.disks.push(disk(Arc::new(RamDisk::new(16 << 20)), 4));
    let (reason, out) = run_guest(cfg, Duration::from_secs(60));
    assert_pass(&reason, &out, &["blk-qd32-read", "blk-flush"]);
}

#[test]
fn virtio_rng_gives_entropy() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = guest_config("rng", "rng");
    cfg.rng = true;
    let (reason, out) = run_guest(cfg, Duration::from_secs(60));
    assert_pass(
        &reason,
        &out,
        &["pci-find-rng", "rng-driver-ok", "rng-entropy"],
    );
}

#[test]
fn virtio_blk_on_a_file_with_io_lanes() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let backend: Arc<dyn DiskBackend> = Arc::new(vmm::FileDisk::open(&path, false, false).unwrap());
    assert!(backend.concurrency() > 1, "file disks use the lane pool");
    let mut cfg = guest_config("blkfile", "blk-write seed=11");
    cfg.disks.push(disk(backend, 2));
    let (reason, out) = run_guest(cfg, Duration::from_secs(60));
    assert_pass(
        &reason,
        &out,
        &[
            "blk-qd1",
            "msix-delivered",
            "blk-qd32-read",
            "blk-discarded-reads-zero",
            "blk-flush-for-restart",
        ],
    );
    // Restart on the same file, through a fresh backend handle.
    let backend: Arc<dyn DiskBackend> = Arc::new(vmm::FileDisk::open(&path, false, false).unwrap());
    let mut cfg = guest_config("blkfile2", "blk-verify seed=11");
    cfg.disks.push(disk(backend, 1));
    let (reason, out) = run_guest(cfg, Duration::from_secs(60));
    assert_pass(&reason, &out, &["blk-verify-after-restart"]);
}

#[test]
fn virtio_console_output_and_input() {
    if !kvm_or_skip() {
        return;
    }
    let mut cfg = guest_config("con", "console");
    cfg.virtio_console = true;
    let mut vm = vmm::Vm::create(cfg).unwrap();
    assert_eq!(vm.virtio_console_input(b"ping"), 4);
    vm.start().unwrap();
    let reason = vm.wait_exit(Duration::from_secs(60));
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    let console = String::from_utf8_lossy(&vm.virtio_console_output()).into_owned();
    vm.delete();
    assert_pass(
        &reason,
        &out,
        &["pci-find-console", "con-driver-ok", "con-tx", "con-rx"],
    );
    assert_eq!(console, "hello virtio-console\n");
}

/// Two virtio-blk queues, each with its own MSI-X vector, with requests in flight on both at
/// once; once on the inline path (RAM disk) and once through the I/O lanes (a file).
#[test]
fn virtio_blk_two_queues_each_served() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mq.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let file: Arc<dyn DiskBackend> = Arc::new(vmm::FileDisk::open(&path, false, false).unwrap());
    let ram: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(64 << 20));
    for (name, backend) in [("ram", ram), ("file", file)] {
        let mut cfg = guest_config("blk-mq", "blk-mq seed=3");
        cfg.vcpus = 2;
        cfg.disks.push(disk(backend, 2));
        let mut vm = vmm::Vm::create(cfg).unwrap();
        vm.start().unwrap();
        let reason = vm.wait_exit(Duration::from_secs(60));
        let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
        let stats = vm.stats();
        vm.delete();
        assert_pass(
            &reason,
            &out,
            &[
                "blk-mq-offered",
                "blk-mq-queue1",
                "blk-mq-both-queues",
                "blk-mq-vectors",
            ],
        );
        // 16 writes + 16 reads on each queue, counted per queue by the device.
        let q = &stats.disks[0].queue_requests;
        assert!(
            q.len() == 2 && q[0] >= 32 && q[1] >= 32,
            "{name}: per-queue requests {q:?}"
        );
        assert!(stats.device_time_ns > 0, "{name}: {stats:?}");
        assert_eq!(
            stats.cpu_time_ns,
            stats.vcpu_time_ns + stats.device_time_ns,
            "{name}"
        );
    }
}

/// Hot-attach: the guest boots without a disk, waits for ACPI GPE0 bit 1 (with the SCI), then
/// rescans the bus, finds the new virtio-blk and runs the full block test on it.
#[test]
fn virtio_blk_hot_attach_to_a_running_vm() {
    if !kvm_or_skip() {
        return;
    }
    let mut vm = vmm::Vm::create(guest_config("hot", "hotplug blk seed=5")).unwrap();
    vm.start().unwrap();
    let t = std::time::Instant::now();
    while !String::from_utf8_lossy(&vm.debug_output()).contains("hotplug-waiting") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "guest never got ready: {}",
            String::from_utf8_lossy(&vm.debug_output())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let backend: Arc<dyn DiskBackend> = Arc::new(RamDisk::new(64 << 20));
    let mut hot = disk(backend.clone(), 1);
    hot.id = "cairn-test-disk-hot".into();
    vm.attach_disk(hot.clone()).unwrap();
    // The same id again is refused and changes nothing.
    assert!(vm.attach_disk(hot).is_err());
    let reason = vm.wait_exit(Duration::from_secs(60));
    let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
    let stats = vm.stats();
    assert_pass(
        &reason,
        &out,
        &[
            "acpi-gpe0",
            "hotplug-none-before",
            "hotplug-sci",
            "hotplug-gpe-cleared",
            "hotplug-found",
            "blk-qd32-read",
            "blk-get-id",
        ],
    );
    assert_eq!(stats.disks.len(), 1);
    assert_eq!(stats.disks[0].id, "cairn-test-disk-hot");
    assert!(stats.disks[0].write_ops > 0, "{:?}", stats.disks[0]);
    // The attached disk stays in the configuration: a restart has it from the start.
    assert_eq!(vm.config().disks.len(), 1);
    vm.delete();
}
