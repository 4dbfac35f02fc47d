//! Node-private virtual disks (`create_local_vdisk`, `make_vdisk_local`): in a pool spanning
//! nodes, every replica of such a disk stays on this node's own disks, the background rebalance
//! moves an existing disk's replicas home when it is made node-private, and holders are never
//! told about it (nothing there for another node to adopt). Nodes are engines in one process
//! whose disks are attached as remote replicas.

mod common;

use std::time::Duration;

use common::{attach_as_remote, pattern, ram_node, MIB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_private_disks_keep_every_replica_local() {
    let e1 = ram_node(1, 2).await;
    let e2 = ram_node(2, 2).await;
    attach_as_remote(&e1, &e2, 2).await;

    // A node-private disk: both replicas on node 1's two disks, nothing on node 2.
    e1.create_local_vdisk("cairn-node-raft", 16 * MIB)
        .await
        .unwrap();
    let h = e1.open_vdisk("cairn-node-raft").unwrap();
    let data = pattern(3, (16 * MIB) as usize);
    h.write(0, &data).await.unwrap();
    h.flush().await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(30)).await);
    assert_eq!(
        e1.chunks_on_node(2),
        0,
        "a node-private chunk went to a peer"
    );
    assert_eq!(e1.pool().degraded_chunks, 0, "two local replicas expected");
    assert!(
        e1.vdisk_records()
            .iter()
            .all(|r| r.name != "cairn-node-raft"),
        "holders must not be told about a node-private disk"
    );

    // An ordinary disk spreads over both nodes...
    e1.create_vdisk("v", 16 * MIB).await.unwrap();
    let v = e1.open_vdisk("v").unwrap();
    let vdata = pattern(9, (16 * MIB) as usize);
    v.write(0, &vdata).await.unwrap();
    v.flush().await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(30)).await);
    assert!(e1.chunks_on_node(2) > 0, "placement put nothing on node 2");
    assert!(e1.vdisk_records().iter().any(|r| r.name == "v"));

    // ...until it is made node-private: its replicas move home, data intact. Idempotent.
    e1.make_vdisk_local("v").await.unwrap();
    e1.make_vdisk_local("v").await.unwrap();
    assert!(e1.wait_rebalanced(Duration::from_secs(30)).await);
    assert_eq!(e1.chunks_on_node(2), 0, "replicas left on the peer");
    assert_eq!(e1.pool().degraded_chunks, 0);
    let mut back = vec![0u8; vdata.len()];
    v.read(0, &mut back).await.unwrap();
    assert!(back == vdata, "data changed by the move");
    h.read(0, &mut back).await.unwrap();
    assert!(back == data, "node-private data changed");

    // Unknown names are a clear error.
    let e = e1.make_vdisk_local("nope").await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}
