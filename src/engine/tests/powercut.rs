//! Power cuts under the engine: random writes, discards and flushes on a mirrored disk over
//! fault devices, then every device loses power at once (unflushed writes kept, dropped or torn
//! at random). After each restart every block must hold what the last completed flush covered
//! or one of the values written after it, must read the same twice, and the pool must keep
//! working. CAIRN_POWERCUT_CYCLES raises the count for soak runs.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use blockdev::{BlockDevice, FaultDevice};
use common::*;
use engine::Engine;
use rand::{Rng, SeedableRng};

const BLOCKS: u64 = 384; // 1.5 MiB: two chunks
const BS: usize = 4096;

fn content(tag: u64) -> Vec<u8> {
    if tag == 0 {
        vec![0; BS]
    } else {
        pattern(tag, BS)
    }
}

async fn start(devs: &[Arc<FaultDevice>]) -> anyhow::Result<Engine> {
    let e = Engine::open(cfg()).await?;
    for d in devs {
        e.add_disk(d.clone() as Arc<dyn BlockDevice>).await?;
    }
    Ok(e)
}

async fn cycles(n: u64, seed: u64) -> anyhow::Result<()> {
    let ram = ram_disks(3, 16 * MIB);
    let mut devs = fault_disks(&ram, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let e = start(&devs).await?;
    e.create_vdisk("v", BLOCKS * BS as u64).await?;
    e.open_vdisk("v")?.flush().await?;
    drop(e);
    let mut durable = vec![0u64; BLOCKS as usize];
    let mut pending: Vec<HashSet<u64>> = vec![HashSet::new(); BLOCKS as usize];
    let mut next_tag = 1u64;
    let mut kept_unflushed = 0u64;
    for cycle in 0..n {
        let e = start(&devs)
            .await
            .map_err(|err| err.context(format!("restart after cut {cycle}")))?;
        let h = e.open_vdisk("v")?;
        // Verify: each block holds its durable value or one written since.
        let mut img = vec![0u8; BLOCKS as usize * BS];
        h.read(0, &mut img).await?;
        let mut again = vec![0u8; img.len()];
        h.read(0, &mut again).await?;
        anyhow::ensure!(img == again, "cycle {cycle}: two reads differ");
        for b in 0..BLOCKS as usize {
            let got = &img[b * BS..(b + 1) * BS];
            let tag = std::iter::once(durable[b])
                .chain(pending[b].iter().copied())
                .find(|t| content(*t) == got)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "cycle {cycle}: block {b} holds neither its flushed nor a newer value"
                    )
                })?;
            if tag != durable[b] {
                kept_unflushed += 1;
            }
            durable[b] = tag; // what is on the media now is what a later cut falls back to
            pending[b].clear();
        }
        // Work until the next cut.
        for _ in 0..rng.gen_range(1..12) {
            match rng.gen_range(0..10) {
                0..=5 => {
                    let n = rng.gen_range(1..=8u64);
                    let b = rng.gen_range(0..BLOCKS - n + 1);
                    let mut data = Vec::with_capacity(n as usize * BS);
                    for i in 0..n {
                        let tag = next_tag;
                        next_tag += 1;
                        data.extend_from_slice(&content(tag));
                        pending[(b + i) as usize].insert(tag);
                    }
                    h.write(b * BS as u64, &data).await?;
                }
                6 => {
                    let n = rng.gen_range(1..=16u64);
                    let b = rng.gen_range(0..BLOCKS - n + 1);
                    h.discard(b * BS as u64, n * BS as u64).await?;
                    for i in b..b + n {
                        pending[i as usize].insert(0);
                    }
                }
                _ => {
                    h.flush().await?;
                    // Everything written so far is durable; its newest value is now the floor.
                    let mut cur = vec![0u8; BLOCKS as usize * BS];
                    h.read(0, &mut cur).await?;
                    for b in 0..BLOCKS as usize {
                        let got = &cur[b * BS..(b + 1) * BS];
                        if let Some(t) = std::iter::once(durable[b])
                            .chain(pending[b].iter().copied())
                            .find(|t| content(*t) == got)
                        {
                            durable[b] = t;
                            pending[b].clear();
                        } else {
                            anyhow::bail!("cycle {cycle}: block {b} reads a value never written");
                        }
                    }
                }
            }
        }
        // Every device loses power in the same instant (one poll on a single-thread runtime).
        let cuts = futures::future::join_all(devs.iter().map(|d| d.power_cut())).await;
        for c in cuts {
            c?;
        }
        drop(h);
        drop(e);
        devs = devs.iter().map(|d| Arc::new(d.reopen())).collect();
    }
    anyhow::ensure!(next_tag > n, "the test wrote too little");
    eprintln!("power cuts: {n}, unflushed writes that survived a cut: {kept_unflushed}");
    Ok(())
}

#[test]
fn flushed_data_survives_power_cuts() -> anyhow::Result<()> {
    let n: u64 = std::env::var("CAIRN_POWERCUT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(cycles(n, 0x5eed))
}
