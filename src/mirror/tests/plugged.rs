//! Bursts of mirrored writes to a peer whose disk is an io_uring file: the replica server starts
//! the requests that arrive together under one plug of that device (`Handler::batch`), so a
//! burst reaches the peer's device in fewer submissions than writes — and every write is still
//! acknowledged only once on both replicas, lands where it was meant to, and leaves the two
//! copies identical.
mod common;

use std::sync::Arc;

use blockdev::{create_sparse_file, BlockDevice, UringDevice, UringOptions};
use common::*;
use mirror::attach_peer;
use transport::ClusterCa;

const SIZE: u64 = 16 * MIB;
const WRITERS: u64 = 64;
const ROUNDS: u64 = 8;

fn file_disk(dir: &std::path::Path, name: &str) -> Arc<UringDevice> {
    let p = dir.join(name);
    create_sparse_file(&p, 96 * MIB).unwrap();
    Arc::new(UringDevice::open(&p, UringOptions::default()).unwrap())
}

/// Writer `w`'s block in round `round`: spread over every chunk, a new block each round.
fn offset(w: u64, round: u64) -> u64 {
    ((w * ROUNDS + round) * 7919 % (SIZE / 4096)) * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_replica_writes_reach_the_peer_disk_in_batches_and_all_land() {
    // On the target dir's file system (a real disk; a tmpfs would refuse O_DIRECT).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let d1 = file_disk(dir.path(), "n1.img");
    let d2 = file_disk(dir.path(), "n2.img");
    let n1 = Node::start_on(
        &ca,
        1,
        "127.0.0.31",
        vec![d1 as Arc<dyn BlockDevice>],
        dir.path(),
    )
    .await;
    let n2 = Node::start_on(
        &ca,
        2,
        "127.0.0.32",
        vec![d2.clone() as Arc<dyn BlockDevice>],
        dir.path(),
    )
    .await;
    let l12 = link(&n1, &n2, Arc::new(mirror::EpochBook::new(1)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();

    let submits0 = d2.submit_calls();
    for round in 0..ROUNDS {
        // All writers' requests are queued for the link at once, so they travel together.
        let writes = (0..WRITERS).map(|w| {
            let h = h.clone();
            async move {
                let off = offset(w, round);
                h.write(off, &pattern(round, off, 4096)).await
            }
        });
        for (w, r) in futures::future::join_all(writes)
            .await
            .into_iter()
            .enumerate()
        {
            r.unwrap_or_else(|e| panic!("round {round} writer {w}: {e}"));
        }
    }
    let submits = d2.submit_calls() - submits0;
    let writes = WRITERS * ROUNDS;
    eprintln!("{writes} mirrored writes: {submits} submissions on the peer's device");
    assert!(
        submits < writes,
        "{writes} replica writes (and the store's own journal writes) took {submits} \
         submissions on the peer's device: the server did not batch them"
    );

    // Every block reads back as written, and the peer's copy is the same as the owner's.
    for round in 0..ROUNDS {
        for w in 0..WRITERS {
            let off = offset(w, round);
            let mut got = vec![0u8; 4096];
            h.read(off, &mut got).await.unwrap();
            assert!(
                got == pattern(round, off, 4096),
                "round {round} writer {w}: wrong data at {off}"
            );
        }
    }
    let chunks = assert_replicas_identical(&n1, &n2, v.id, SIZE).await;
    assert_eq!(chunks, (SIZE / MIB) as usize, "every chunk was written");
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}
