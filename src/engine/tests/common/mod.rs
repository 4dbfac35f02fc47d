//! Shared helpers for the engine's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use blockdev::{BlockDevice, RamDevice};
use engine::{Engine, EngineConfig};

pub const MIB: u64 = 1 << 20;

pub fn cfg() -> EngineConfig {
    EngineConfig {
        node_id: 1,
        node_name: "test".into(),
    }
}

pub fn ram_disks(n: usize, size: u64) -> Vec<Arc<RamDevice>> {
    (0..n)
        .map(|i| Arc::new(RamDevice::new(format!("ram{i}"), size)))
        .collect()
}

/// An engine over the given devices (formats blank ones, opens ours).
pub async fn engine_on(devs: &[Arc<dyn BlockDevice>]) -> anyhow::Result<Engine> {
    let e = Engine::open(cfg()).await?;
    for d in devs {
        e.add_disk(d.clone()).await?;
    }
    Ok(e)
}

pub fn as_dyn(devs: &[Arc<RamDevice>]) -> Vec<Arc<dyn BlockDevice>> {
    devs.iter()
        .map(|d| d.clone() as Arc<dyn BlockDevice>)
        .collect()
}

/// Deterministic test pattern: every byte depends on the seed and its position.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Byte offsets of every 4 KiB block of `dev` whose contents equal one of the 4 KiB blocks of
/// `data` (where the store put our data).
pub fn find_blocks(dev: &RamDevice, data: &[u8]) -> Vec<u64> {
    let wanted: std::collections::HashSet<&[u8]> = data.chunks(4096).collect();
    let img = dev.snapshot();
    img.chunks(4096)
        .enumerate()
        .filter(|(_, b)| wanted.contains(b))
        .map(|(i, _)| i as u64 * 4096)
        .collect()
}

pub fn fault_disks(devs: &[Arc<RamDevice>], seed: u64) -> Vec<Arc<blockdev::FaultDevice>> {
    devs.iter()
        .enumerate()
        .map(|(i, d)| {
            Arc::new(blockdev::FaultDevice::new(
                d.clone() as Arc<dyn BlockDevice>,
                seed + i as u64,
            ))
        })
        .collect()
}

pub fn fault_dyn(devs: &[Arc<blockdev::FaultDevice>]) -> Vec<Arc<dyn BlockDevice>> {
    devs.iter()
        .map(|d| d.clone() as Arc<dyn BlockDevice>)
        .collect()
}

/// An engine for node `id` with `disks` RAM disks of 96 MiB.
pub async fn ram_node(id: u64, disks: usize) -> Engine {
    let e = Engine::open(EngineConfig {
        node_id: id,
        node_name: format!("n{id}"),
    })
    .await
    .unwrap();
    for i in 0..disks {
        let d: Arc<dyn BlockDevice> = Arc::new(RamDevice::new(format!("n{id}d{i}"), 96 * MIB));
        e.add_disk(d).await.unwrap();
    }
    e
}

/// Attach every local disk of `peer` (node `id`) to `host` as a remote replica, as the mirror
/// does between nodes (in one process, without the network).
pub async fn attach_as_remote(host: &Engine, peer: &Engine, id: u64) {
    for (info, replica) in peer.local_replicas() {
        host.add_remote_disk(engine::RemoteDisk {
            id: info.id,
            name: format!("n{id}:{}", info.name),
            node_id: id,
            size_bytes: info.size_bytes,
            replica,
        })
        .await
        .unwrap();
    }
}
