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
