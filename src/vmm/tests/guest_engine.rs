//! A VM disk served directly by the block engine (two RAM pool disks, two replicas): the test
//! guest writes, flushes, discards and reads back, then a second VM verifies the data.

mod common;

use blockdev::{BlockDevice, RamDevice};
use common::*;
use std::sync::Arc;
use std::time::Duration;
use vmm::{DiskBackend, DiskConfig, EngineDisk};

#[test]
fn virtio_blk_on_an_engine_vdisk_survives_vm_restart() {
    if !kvm_or_skip() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = rt
        .block_on(async {
            let e = engine::Engine::open(engine::EngineConfig {
                node_id: 1,
                node_name: "vmm-test".into(),
            })
            .await?;
            for i in 0..2 {
                let dev: Arc<dyn BlockDevice> =
                    Arc::new(RamDevice::new(format!("pool{i}"), 256 << 20));
                e.add_disk(dev).await?;
            }
            e.create_vdisk("vm-disk", 32 << 20).await?;
            anyhow::Ok(e)
        })
        .unwrap();
    let disk = |name: &str| -> DiskConfig {
        let backend: Arc<dyn DiskBackend> = Arc::new(EngineDisk::new(
            engine.open_vdisk("vm-disk").unwrap(),
            rt.handle().clone(),
        ));
        DiskConfig {
            id: format!("cairn-test-disk-{name}"),
            backend,
            queues: 1,
            queue_size: 256,
        }
    };
    let mut cfg = guest_config("eng1", "blk-write seed=21");
    cfg.disks.push(disk("a"));
    let (reason, out) = run_guest(cfg, Duration::from_secs(120));
    assert_pass(
        &reason,
        &out,
        &[
            "blk-qd1",
            "blk-qd32-read",
            "blk-flush",
            "blk-discarded-reads-zero",
            "blk-flush-for-restart",
        ],
    );
    let mut cfg = guest_config("eng2", "blk-verify seed=21");
    cfg.disks.push(disk("b"));
    let (reason, out) = run_guest(cfg, Duration::from_secs(120));
    assert_pass(&reason, &out, &["blk-verify-after-restart"]);
    rt.block_on(engine.shutdown()).unwrap();
}

/// The same guest on an engine whose pool disks are io_uring files, as a node's are: the queue
/// thread reads written blocks straight from a replica's device and writes overwrites to both
/// replicas' devices itself (the disk's `direct_reads` and `direct_writes` count them), and
/// everything the guest checks still holds, after a restart too.
#[test]
fn virtio_blk_reads_an_engine_vdisk_on_io_uring_devices_from_the_queue_thread() {
    if !kvm_or_skip() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(async {
        let e = engine::Engine::open(engine::EngineConfig {
            node_id: 1,
            node_name: "vmm-test".into(),
        })
        .await
        .unwrap();
        for i in 0..2 {
            let path = dir.path().join(format!("pool{i}.img"));
            blockdev::create_sparse_file(&path, 256 << 20).unwrap();
            match blockdev::open_device(&path) {
                Ok(d) => {
                    e.add_disk(d).await.unwrap();
                }
                Err(err) => {
                    println!("skipped: io_uring device unavailable here: {err}");
                    return None;
                }
            }
        }
        e.create_vdisk("vm-disk", 32 << 20).await.unwrap();
        Some(e)
    });
    let Some(engine) = engine else { return };
    let run = |name: &str, args: &str, expect: &[&str]| -> vmm::DeviceStats {
        let backend: Arc<dyn DiskBackend> = Arc::new(EngineDisk::new(
            engine.open_vdisk("vm-disk").unwrap(),
            rt.handle().clone(),
        ));
        let mut cfg = guest_config(name, args);
        cfg.disks.push(DiskConfig {
            id: format!("cairn-test-disk-{name}"),
            backend,
            queues: 1,
            queue_size: 256,
        });
        let mut vm = vmm::Vm::create(cfg).expect("create VM");
        vm.start().expect("start VM");
        let reason = vm.wait_exit(Duration::from_secs(120));
        let out = String::from_utf8_lossy(&vm.debug_output()).into_owned();
        let stats = vm.stats().disks.remove(0);
        vm.delete();
        assert_pass(&reason, &out, expect);
        stats
    };
    let first = run(
        "engd1",
        "blk-write seed=23",
        &[
            "blk-qd1",
            "blk-qd32-read",
            "blk-flush",
            "blk-discarded-reads-zero",
        ],
    );
    assert!(first.direct_reads > 0, "no direct read: {first:?}");
    // Every write after a chunk's first one is an overwrite of a stored chunk: the queue
    // thread writes it to both replicas itself.
    assert!(first.direct_writes > 0, "no direct write: {first:?}");
    let second = run("engd2", "blk-verify seed=23", &["blk-verify-after-restart"]);
    assert!(second.direct_reads > 0, "no direct read: {second:?}");
    rt.block_on(engine.shutdown()).unwrap();
}
