//! Mirrored writes in flight together (their requests and replies share TLS writes): a peer
//! that dies in the middle of a burst never lets a write be acknowledged that it does not hold.
//! With the cluster refusing to let the owner write alone, every acknowledged write must be on
//! the peer's copy, and successive writes to a block land there in the order they were made.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mirror::{attach_peer, AlonePermit, EpochBook};
use store::ObjectId;
use transport::ClusterCa;

/// The cluster never confirms that the owner may write without its peer (no quorum).
struct NoQuorum;

impl AlonePermit for NoQuorum {
    fn permit(&self, _holder: u64) -> blockdev::BoxFuture<'static, bool> {
        Box::pin(async { false })
    }
}

const SIZE: u64 = 16 * MIB;
const WRITERS: u64 = 48;
/// Blocks each writer owns (it rewrites them round after round until a write fails).
const BLOCKS_EACH: u64 = 8;

/// What one writer did: per block, the last acknowledged round; and the attempt that failed.
struct Outcome {
    acked: Vec<Option<u64>>,
    failed: Option<(u64, u64)>,
}

fn block_of(writer: u64, i: u64) -> u64 {
    // Spread over all 16 chunks so the burst touches many objects.
    (i * WRITERS + writer) * 5 % (SIZE / 4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_dying_mid_burst_never_loses_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.21", 1, dir.path()).await;
    let mut n2 = Node::start(&ca, 2, "127.0.0.22", 1, dir.path()).await;
    let epochs = Arc::new(EpochBook::new(1));
    epochs.set_alone_permit(Arc::new(NoQuorum));
    let l12 = link(&n1, &n2, epochs);
    attach_peer(&n1.engine, &l12).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();

    let acks = Arc::new(AtomicU64::new(0));
    // Set once the peer is cut: a writer still succeeding this far past it stops (so a broken
    // refusal fails the test below instead of running forever).
    let limit = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (h, acks, limit) = (h.clone(), acks.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome {
                acked: vec![None; BLOCKS_EACH as usize],
                failed: None,
            };
            'rounds: for round in 1.. {
                for i in 0..BLOCKS_EACH {
                    if acks.load(Ordering::SeqCst) >= limit.load(Ordering::SeqCst) {
                        break 'rounds;
                    }
                    let off = block_of(w, i) * 4096;
                    match h.write(off, &pattern(round, off, 4096)).await {
                        Ok(()) => {
                            out.acked[i as usize] = Some(round);
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            out.failed = Some((i, round));
                            break 'rounds;
                        }
                    }
                }
            }
            out
        }));
    }
    wait_for("writes under way", Duration::from_secs(60), || {
        acks.load(Ordering::SeqCst) >= 400
    })
    .await;
    n2.stop_server();
    limit.store(acks.load(Ordering::SeqCst) + 5000, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let failed = outcomes.iter().filter(|o| o.failed.is_some()).count();
    assert_eq!(
        failed, WRITERS as usize,
        "with no quorum every writer must see its writes refused once the peer is gone"
    );

    // The peer's copy (its engine is alive; only its replica server stopped).
    let remote = n2.engine.local_replicas();
    let (_, peer) = &remote[0];
    let mut checked = 0;
    for (w, o) in outcomes.iter().enumerate() {
        for i in 0..BLOCKS_EACH {
            let Some(round) = o.acked[i as usize] else {
                continue;
            };
            let block = block_of(w as u64, i);
            let off = block * 4096;
            let obj = ObjectId {
                vdisk: mirror::wire::hosted_id(1, v.id),
                chunk: off / MIB,
            };
            let got = peer
                .read(obj, (off % MIB) / 4096, 1, u64::MAX)
                .await
                .unwrap();
            let acked = pattern(round, off, 4096);
            // The write that failed may have reached the peer before the cut (its answer was
            // lost): then the peer holds that newer attempt, never anything older.
            let attempted = o
                .failed
                .filter(|(fi, _)| *fi == i)
                .map(|(_, r)| pattern(r, off, 4096));
            assert!(
                got[..4096] == acked[..] || attempted.is_some_and(|a| got[..4096] == a[..]),
                "writer {w} block {block}: the peer lacks acknowledged round {round}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 300,
        "only {checked} acknowledged blocks to check"
    );
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}
