//! Rebuild across nodes: draining a node's disks re-mirrors its chunks onto the other nodes'
//! disks (spread over all of them), the progress reaches its total and shows no estimate when
//! idle, a ceiling is in force, and nothing depends on the node afterwards. Nodes are engines in
//! one process whose disks are attached to node 1 as remote replicas (the network side is the
//! `mirror` crate's, tested there).

mod common;

use std::time::Duration;

use common::{attach_as_remote, pattern, ram_node, MIB};
use engine::{DiskState, Engine, RebuildLimits};

/// Node 1 (two disks) with node 2's (two) and node 3's (one) disks attached as remote replicas.
async fn three_nodes() -> (Engine, Engine, Engine) {
    let e1 = ram_node(1, 2).await;
    let e2 = ram_node(2, 2).await;
    let e3 = ram_node(3, 1).await;
    attach_as_remote(&e1, &e2, 2).await;
    attach_as_remote(&e1, &e3, 3).await;
    (e1, e2, e3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_rebuilds_elsewhere_with_progress() {
    let (e1, _e2, _e3) = three_nodes().await;
    // Idle before anything moved: no estimate.
    assert_eq!(e1.rebuild_progress().eta_secs, None);
    e1.create_vdisk("v", 48 * MIB).await.unwrap();
    let h = e1.open_vdisk("v").unwrap();
    let data = pattern(7, (48 * MIB) as usize);
    h.write(0, &data).await.unwrap();
    h.flush().await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(30)).await);
    let on3 = e1.chunks_on_node(3);
    assert!(on3 > 0, "placement put nothing on node 3");
    let used_before: Vec<(String, u64)> = e1
        .disks()
        .iter()
        .map(|d| (d.id.clone(), d.used_bytes))
        .collect();

    // A ceiling that the drain must wait for (it moves more than one burst).
    let ceiling = 4 * MIB;
    e1.set_rebuild_limits(RebuildLimits {
        max_bytes_per_sec: ceiling,
        busy_bytes_per_sec: 0,
    });
    assert_eq!(e1.rebuild_limits().max_bytes_per_sec, ceiling);
    let n3 = e1
        .disks()
        .into_iter()
        .find(|d| d.node_id == 3)
        .expect("node 3's disk attached");
    let copied_before = e1.stats().rebalance.bytes_copied;
    let t = std::time::Instant::now();
    e1.remove_disk(&n3.id).await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(30)).await);
    let took = t.elapsed();

    // Nothing depends on node 3 any more; every chunk has two replicas on two nodes.
    assert_eq!(e1.chunks_on_node(3), 0);
    assert_eq!(e1.pool().degraded_chunks, 0);
    let n3_now = e1.disks().into_iter().find(|d| d.id == n3.id).unwrap();
    assert_eq!(n3_now.state, DiskState::Removed);
    // Spread: more than one remaining disk took rebuilt data.
    let grew = e1
        .disks()
        .iter()
        .filter(|d| d.node_id != 3)
        .filter(|d| {
            let before = used_before
                .iter()
                .find(|(id, _)| *id == d.id)
                .map_or(0, |x| x.1);
            d.used_bytes > before
        })
        .count();
    assert!(grew >= 2, "rebuilt chunks went to {grew} disk(s) only");

    // Progress: the last pass that moved something reached its total; idle now.
    let p = e1.stats().rebalance.rebuild;
    assert!(!p.running);
    assert_eq!(p.eta_secs, None, "an idle engine shows no time left");
    let copied = e1.stats().rebalance.bytes_copied;
    assert!(copied >= on3 * MIB / 2, "copied {copied} for {on3} chunks");
    assert_eq!(p.ceiling_bytes_per_sec, ceiling);
    // The ceiling held: never more than ceiling x time + one burst (4 chunks) + one chunk of
    // overdraft, however many moves are in flight (each reserves its chunk when admitted). A
    // slow machine only makes this easier, never flaky.
    let moved = copied - copied_before;
    let allowed = (ceiling as f64 * took.as_secs_f64()) as u64 + 5 * MIB;
    assert!(
        moved <= allowed,
        "moved {moved} bytes in {took:?} under a {ceiling} B/s ceiling"
    );

    // Data intact, read from whichever replica remains.
    let mut back = vec![0u8; data.len()];
    h.read(0, &mut back).await.unwrap();
    assert!(back == data, "data changed by the rebuild");
}

/// A pass's totals: chunks done equal chunks to do once the pass ends (one drain, no ceiling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_done_reaches_total() {
    let (e1, _e2, _e3) = three_nodes().await;
    e1.create_vdisk("v", 32 * MIB).await.unwrap();
    let h = e1.open_vdisk("v").unwrap();
    h.write(0, &pattern(3, (32 * MIB) as usize)).await.unwrap();
    h.flush().await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(30)).await);
    let on3 = e1.chunks_on_node(3);
    let n3 = e1
        .disks()
        .into_iter()
        .find(|d| d.node_id == 3)
        .expect("node 3's disk attached");
    e1.remove_disk(&n3.id).await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(30)).await);
    // The last pass that moved something (idle passes keep its figures) finished all of it.
    let p = e1.rebuild_progress();
    assert!(!p.running);
    assert!(
        p.chunks_total >= 1 && p.chunks_total <= on3,
        "{p:?} for {on3} chunks"
    );
    assert_eq!(p.chunks_done, p.chunks_total, "{p:?}");
    assert!(p.bytes_done > 0);
    assert!(p.bytes_done <= p.bytes_estimate);
    assert_eq!(p.eta_secs, None);
    assert_eq!(e1.chunks_on_node(3), 0);
}
