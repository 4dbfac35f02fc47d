//! Takeover building blocks over real mutual TLS on 127.0.0.x: an owner may acknowledge writes
//! without an away holder only with the cluster's permit; a holder keeps the owner's
//! description, retires the held copy (the owner's writes are refused from then on) and adopts
//! it as its own virtual disk with every acknowledged byte and the snapshot.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mirror::{attach_peer, AlonePermit, EpochBook};
use transport::ClusterCa;

const SIZE: u64 = 8 * MIB;

struct Permit(Arc<AtomicBool>);

impl AlonePermit for Permit {
    fn permit(&self, _holder: u64) -> blockdev::BoxFuture<'static, bool> {
        let ok = self.0.load(Ordering::SeqCst);
        Box::pin(async move { ok })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_without_an_away_holder_needs_the_permit() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let mut n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let allowed = Arc::new(AtomicBool::new(false));
    let epochs = Arc::new(EpochBook::new(1));
    epochs.set_alone_permit(Arc::new(Permit(allowed.clone())));
    let l12 = link(&n1, &n2, epochs);
    attach_peer(&n1.engine, &l12).await.unwrap();
    n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let data = pattern(1, 0, 8192);
    h.write(0, &data).await.unwrap();
    h.flush().await.unwrap();
    n2.stop_server();
    // Refused: the holder would miss it and could take over without it.
    let e = h.write(MIB, &pattern(2, MIB, 4096)).await.unwrap_err();
    assert!(e.to_string().contains("did not confirm"), "{e}");
    let mut b = vec![0u8; 8192];
    h.read(0, &mut b).await.unwrap();
    assert_eq!(b, data, "what was acknowledged still reads back");
    // With the permit the survivor goes on alone.
    allowed.store(true, Ordering::SeqCst);
    let more = pattern(3, MIB, 4096);
    h.write(MIB, &more).await.unwrap();
    h.flush().await.unwrap();
    n2.restart_server().await;
    wait_for("resync", Duration::from_secs(20), || {
        n1.engine.remotes_in_sync()
    })
    .await;
    let mut b = vec![0u8; 4096];
    h.read(MIB, &mut b).await.unwrap();
    assert_eq!(b, more);
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_adopts_the_described_copy_and_fences_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let l12 = link(&n1, &n2, Arc::new(EpochBook::new(5)));
    attach_peer(&n1.engine, &l12).await.unwrap();
    let v = n1.engine.create_vdisk("v", SIZE).await.unwrap();
    let h = n1.engine.open_vdisk("v").unwrap();
    let mut model = vec![0u8; SIZE as usize];
    for c in 0..SIZE / MIB {
        let d = pattern(c, c * MIB, MIB as usize);
        h.write(c * MIB, &d).await.unwrap();
        model[(c * MIB) as usize..((c + 1) * MIB) as usize].copy_from_slice(&d);
    }
    h.flush().await.unwrap();
    n1.engine.create_snapshot("v", "s1").await.unwrap();
    let snap_model = model.clone();
    let d = pattern(99, 3 * MIB + 4096, 8192);
    h.write(3 * MIB + 4096, &d).await.unwrap();
    h.flush().await.unwrap();
    model[(3 * MIB + 4096) as usize..(3 * MIB + 4096 + 8192) as usize].copy_from_slice(&d);
    // The owner describes its disks; the holder keeps the description.
    l12.describe(n1.engine.vdisk_records()).await.unwrap();
    let described = n2.server.described();
    assert_eq!(described.len(), 1);
    assert_eq!(described[0].0, 1);
    let rec = described[0].1[0].clone();
    assert_eq!((rec.name.as_str(), rec.id), ("v", v.id));
    assert_eq!(rec.snapshots.len(), 1);
    // A bad description is refused whole.
    let mut bad = rec.clone();
    bad.snapshots[0].gen = bad.gen + 1;
    assert!(l12.describe(vec![bad]).await.is_err());

    // Takeover on node 2: retire first, then adopt.
    n2.server.retire(1, v.id).await.unwrap();
    let e = h.write(0, &pattern(7, 0, 4096)).await.unwrap_err();
    assert!(
        e.to_string().contains("fenced"),
        "old owner not fenced: {e}"
    );
    let source = mirror::hosted_id(1, v.id);
    assert_eq!(n2.engine.held_chunks(source), SIZE / MIB);
    let adopted = n2.engine.adopt_vdisk(&rec, source).await.unwrap();
    assert_eq!(adopted.size_bytes, SIZE);
    assert_eq!(
        n2.engine.held_chunks(source),
        0,
        "held copy deleted once adopted"
    );
    assert!(
        n2.engine.adopt_vdisk(&rec, source).await.is_err(),
        "adopting twice"
    );
    let h2 = n2.engine.open_vdisk("v").unwrap();
    let mut b = vec![0u8; SIZE as usize];
    h2.read(0, &mut b).await.unwrap();
    assert!(
        b == model,
        "adopted disk differs from what was acknowledged"
    );
    let s = n2.engine.open_snapshot("v", "s1").unwrap();
    s.read(0, &mut b).await.unwrap();
    assert!(b == snap_model, "adopted snapshot differs");
    h2.write(0, &pattern(8, 0, 4096)).await.unwrap();
    h2.flush().await.unwrap();
    n1.engine.shutdown().await.unwrap();
    n2.engine.shutdown().await.unwrap();
}
