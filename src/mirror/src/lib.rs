//! Mirrored I/O across nodes: the replica server that serves this node's pool disks to peers,
//! and `RemoteReplica`, the engine's `Replica` for a disk on another node, over mutual TLS
//! (`transport`), with fencing epochs, degraded I/O while a peer is away and incremental
//! resync when it returns.
//!
//! Owns: the replica protocol (`wire`), the durable epoch table and the writer's epoch book
//! (`fence`), both ends of the protocol (`server`, `client`), handing a retired held copy to
//! the node taking it over (`held`), and the mirrored-I/O benchmark.
//! Must never: write a peer store's metadata slot or close it, accept a mutation with an older
//! epoch than the newest it has recorded, trust bytes from a peer without validating them, or
//! decide who owns a virtual disk (the cluster layer sets epochs).
//!
//! # Using it from a node
//! ```text
//! // every node: serve its pool disks to peers
//! let srv = ReplicaServer::new(node_id, &data_dir.join("mirror"))?;
//! srv.serve_engine(&engine);                        // again after `add_disk`
//! let handle = srv.start(addr, &identity).await?;   // keep the handle; drop = stop
//! // every node: mirror onto a peer
//! let epochs = Arc::new(EpochBook::new(1));         // one per node, shared by its links
//! let link = PeerLink::new(peer_id, peer_addr, &identity, epochs.clone(), MirrorConfig::default())?;
//! attach_peer(&engine, &link).await?;               // adds the peer's disks to the pool
//! // owners describe their virtual disks to holders (each change):
//! link.describe(engine.vdisk_records()).await?;
//! // writing while a peer is away needs the cluster's word (see `AlonePermit`):
//! epochs.set_alone_permit(permit);
//! // taking over a virtual disk after its owner died: fence the held copy forever, adopt it
//! srv.retire(old_owner_id, vdisk_id).await?;                 // and raise_for on other peers
//! let rec = /* from srv.described() */;
//! engine.adopt_vdisk(&rec, hosted_id(old_owner_id, vdisk_id)).await?;
//! // with three or more data nodes, the chunks other holders keep come too (`held`):
//! link.raise_for(old_owner_id, vdisk_id, u64::MAX).await?;  // every holder, before reading
//! let listed = link.held_objects(old_owner_id, vdisk_id).await?;      // (disk, chunk)
//! engine.adopt_vdisk_gathered(&rec, source, &chunks, |chunk| /* link.export_held(..) */).await?;
//! ```
#![forbid(unsafe_code)]

pub mod bench;
mod client;
mod described;
mod error;
mod fence;
mod held;
mod replica;
mod server;
pub mod wire;

pub use client::{MirrorConfig, PeerLink, RemoteReplica};
pub use error::{MirrorError, Result};
pub use fence::{AlonePermit, EpochBook, EpochTable};
pub use server::{hosted_objects, ReplicaServer};
pub use wire::{hosted_id, DiskDesc};

use std::sync::Arc;

/// Attach every disk `link`'s peer serves to `engine`'s pool. Returns the engine's view of
/// them. A disk already attached is skipped.
pub async fn attach_peer(
    engine: &engine::Engine,
    link: &Arc<PeerLink>,
) -> Result<Vec<engine::DiskInfo>> {
    let mut out = Vec::new();
    for desc in link.disks().await? {
        if desc.node_id != link.node_id() {
            return Err(MirrorError::Protocol(format!(
                "peer {} serves disk {} of node {}",
                link.node_id(),
                desc.id,
                desc.node_id
            )));
        }
        let attached = engine
            .disks()
            .iter()
            .any(|d| d.id == desc.id && d.attached && d.state == engine::DiskState::Active);
        if attached {
            continue;
        }
        let replica = link.open_disk(&desc).await?;
        let info = engine
            .add_remote_disk(engine::RemoteDisk {
                id: desc.id.clone(),
                name: format!("node{}:{}", desc.node_id, desc.name),
                node_id: desc.node_id,
                size_bytes: desc.size_bytes,
                replica,
            })
            .await?;
        out.push(info);
    }
    Ok(out)
}
