//! Takeover with three nodes over real mutual TLS on 127.0.0.x: node 1 mirrors a virtual disk
//! onto nodes 2 and 3 (each chunk's second replica on either), then is lost. Node 2 fences
//! both held copies, lists the chunks node 3 keeps, fetches those over the wire and adopts the
//! whole disk: every acknowledged byte and the snapshot; node 3 answers nothing before its
//! copy is retired, and node 1's writes are refused on both holders afterwards.
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use mirror::{attach_peer, wire::WireError, EpochBook, MirrorError};
use transport::ClusterCa;

/// 40 chunks: each lands on two of the three nodes, so some sit on node 3 only (besides the
/// owner's) with near certainty ((2/3)^40 that none does; checked below all the same).
const SIZE: u64 = 40 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_gathers_the_chunks_another_holder_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let n1 = Node::start(&ca, 1, "127.0.0.2", 1, dir.path()).await;
    let n2 = Node::start(&ca, 2, "127.0.0.3", 1, dir.path()).await;
    let n3 = Node::start(&ca, 3, "127.0.0.4", 1, dir.path()).await;
    let epochs = Arc::new(EpochBook::new(5));
    let l12 = link(&n1, &n2, epochs.clone());
    let l13 = link(&n1, &n3, epochs);
    attach_peer(&n1.engine, &l12).await.unwrap();
    attach_peer(&n1.engine, &l13).await.unwrap();

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
    for c in [1u64, 17, 33] {
        let off = c * MIB + 8192;
        let d = pattern(100 + c, off, 12288);
        h.write(off, &d).await.unwrap();
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    h.flush().await.unwrap();
    for l in [&l12, &l13] {
        l.describe(n1.engine.vdisk_records()).await.unwrap();
    }
    let rec = n2.server.described()[0].1[0].clone();
    assert_eq!(rec.name, "v");
    let source = mirror::hosted_id(1, v.id);
    let here = n2.engine.held_chunks(source);
    let there = n3.engine.held_chunks(source);
    assert!(
        here < SIZE / MIB && there > 0,
        "placement put {here} chunks on node 2, {there} on node 3"
    );

    // Node 1 is lost; node 2 takes over. Before node 3's copy is retired it hands out nothing.
    let l23 = link(&n2, &n3, Arc::new(EpochBook::new(9)));
    let early = l23.held_objects(1, v.id).await.unwrap_err();
    let not_retired = matches!(early, MirrorError::Peer(WireError::NotRetired { .. }));
    assert!(not_retired, "{early}");
    n2.server.retire(1, v.id).await.unwrap();
    l23.raise_for(1, v.id, u64::MAX).await.unwrap();
    // The old owner can write neither copy any more.
    let e = h.write(0, &pattern(7, 0, 4096)).await.unwrap_err();
    assert!(
        e.to_string().contains("fenced"),
        "old owner not fenced: {e}"
    );

    let listed = l23.held_objects(1, v.id).await.unwrap();
    assert_eq!(listed.len() as u64, there);
    let mut elsewhere: BTreeMap<u64, String> = BTreeMap::new();
    for (disk, chunk) in &listed {
        elsewhere.insert(*chunk, disk.clone());
    }
    let remote: Vec<u64> = elsewhere.keys().copied().collect();
    let fetched = std::sync::atomic::AtomicU64::new(0);
    let fetch = |chunk: u64| {
        let disk = elsewhere.get(&chunk).cloned();
        let l23 = l23.clone();
        let fetched = &fetched;
        async move {
            fetched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let disk = disk.ok_or("not listed")?;
            l23.export_held(&disk, 1, v.id, chunk)
                .await
                .map_err(|e| e.to_string())
        }
    };
    // A holder that lists a chunk past the disk's end makes the adoption fail whole.
    let bad = n2
        .engine
        .adopt_vdisk_gathered(&rec, source, &[SIZE / MIB + 3], &fetch)
        .await;
    assert!(bad.is_err(), "a chunk past the end was adopted");
    assert!(
        n2.engine.vdisk("v").is_err(),
        "a failed adoption left a disk"
    );
    assert_eq!(n2.engine.held_chunks(source), here, "the held copy stays");
    // So does a holder that cannot deliver one of its chunks: nothing partial is adopted.
    let held_here: std::collections::BTreeSet<u64> = n2
        .engine
        .local_replicas()
        .iter()
        .flat_map(|(_, r)| r.objects())
        .filter(|o| o.vdisk == source)
        .map(|o| o.chunk)
        .collect();
    let last = *remote.iter().rfind(|c| !held_here.contains(c)).unwrap();
    let flaky = |chunk: u64| {
        let f = fetch(chunk);
        async move {
            if chunk == last {
                return Err("holder went away".to_string());
            }
            f.await
        }
    };
    let e = n2
        .engine
        .adopt_vdisk_gathered(&rec, source, &remote, flaky)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("holder went away"), "{e}");
    assert!(n2.engine.vdisk("v").is_err(), "a partial disk was adopted");
    assert_eq!(n2.engine.held_chunks(source), here, "the held copy stays");
    fetched.store(0, std::sync::atomic::Ordering::SeqCst);

    let adopted = n2
        .engine
        .adopt_vdisk_gathered(&rec, source, &remote, &fetch)
        .await
        .unwrap();
    assert_eq!(adopted.size_bytes, SIZE);
    // Each chunk is on two of the three nodes: what node 2 lacks comes from node 3.
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        SIZE / MIB - here,
        "exactly the chunks node 2 lacked are fetched"
    );
    assert_eq!(n2.engine.held_chunks(source), 0, "own held copy deleted");
    assert_eq!(
        n3.engine.held_chunks(source),
        there,
        "another holder's copy is its own to drop"
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

    // Node 3 drops its retired copy (the node does so once the new owner describes the disk).
    assert_eq!(n3.engine.drop_held(source).await.unwrap(), there);
    assert_eq!(n3.engine.held_chunks(source), 0);
    assert!(n3.engine.drop_held(7).await.is_err(), "only held copies");
    for n in [&n1, &n2, &n3] {
        n.engine.shutdown().await.unwrap();
    }
}
