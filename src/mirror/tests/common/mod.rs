//! Two (or three) engines in one process, each with its own RAM disks and a replica server on
//! its own loopback address, talking real mutual TLS under one cluster CA.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, RamDevice};
use engine::{Engine, EngineConfig};
use mirror::{EpochBook, MirrorConfig, PeerLink, ReplicaServer};
use store::ObjectId;
use transport::{ClusterCa, NodeIdentity, ServerHandle};

pub const MIB: u64 = 1 << 20;

pub struct Node {
    pub id: u64,
    pub engine: Engine,
    pub identity: NodeIdentity,
    pub server: Arc<ReplicaServer>,
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
}

impl Node {
    pub async fn start(
        ca: &ClusterCa,
        id: u64,
        ip: &str,
        disks: usize,
        dir: &std::path::Path,
    ) -> Node {
        let devs = (0..disks)
            .map(|i| {
                Arc::new(RamDevice::new(format!("n{id}d{i}"), 96 * MIB)) as Arc<dyn BlockDevice>
            })
            .collect();
        Node::start_on(ca, id, ip, devs, dir).await
    }

    /// A node whose pool is `devs`.
    pub async fn start_on(
        ca: &ClusterCa,
        id: u64,
        ip: &str,
        devs: Vec<Arc<dyn BlockDevice>>,
        dir: &std::path::Path,
    ) -> Node {
        let engine = Engine::open(EngineConfig {
            node_id: id,
            node_name: format!("n{id}"),
        })
        .await
        .unwrap();
        for d in devs {
            engine.add_disk(d).await.unwrap();
        }
        let identity = ca.issue(id).unwrap();
        let state_dir = dir.join(format!("n{id}"));
        let server = ReplicaServer::new(id, &state_dir).unwrap();
        server.serve_engine(&engine);
        let handle = server
            .start(format!("{ip}:0").parse().unwrap(), &identity)
            .await
            .unwrap();
        let addr = handle.local_addr();
        Node {
            id,
            engine,
            identity,
            server,
            handle: Some(handle),
            addr,
            state_dir,
        }
    }

    /// Stop serving peers (as if the node died: connections cut, nothing answers).
    pub fn stop_server(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }

    /// A fresh server process on the same address and state directory.
    pub async fn restart_server(&mut self) {
        self.stop_server();
        let server = ReplicaServer::new(self.id, &self.state_dir).unwrap();
        server.serve_engine(&self.engine);
        let mut tries = 0;
        let handle = loop {
            match server.start(self.addr, &self.identity).await {
                Ok(h) => break h,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.server = server;
        self.handle = Some(handle);
    }
}

impl Node {
    /// A fresh server on another address (`ip`, any port), same state directory: the member
    /// moved.
    pub async fn move_server(&mut self, ip: &str) {
        self.stop_server();
        let server = ReplicaServer::new(self.id, &self.state_dir).unwrap();
        server.serve_engine(&self.engine);
        let handle = server
            .start(format!("{ip}:0").parse().unwrap(), &self.identity)
            .await
            .unwrap();
        self.addr = handle.local_addr();
        self.server = server;
        self.handle = Some(handle);
    }
}

pub fn fast_cfg() -> MirrorConfig {
    MirrorConfig {
        call_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(500),
        heartbeat: Duration::from_millis(100),
        ..MirrorConfig::default()
    }
}

pub fn link(from: &Node, to: &Node, epochs: Arc<EpochBook>) -> Arc<PeerLink> {
    PeerLink::new(to.id, to.addr, &from.identity, epochs, fast_cfg()).unwrap()
}

/// Every chunk of `vdisk` (engine id `vid`) must read the same, whole history at the live
/// generation, on the owner's local replica and on the peer's copy. Returns chunks compared.
pub async fn assert_replicas_identical(owner: &Node, peer: &Node, vid: u64, size: u64) -> usize {
    let local = owner.engine.local_replicas();
    let remote = peer.engine.local_replicas();
    let mut compared = 0;
    for chunk in 0..size.div_ceil(MIB) {
        let obj = ObjectId { vdisk: vid, chunk };
        let pobj = ObjectId {
            vdisk: mirror::wire::hosted_id(owner.id, vid),
            chunk,
        };
        let mut a = None;
        for (_, r) in &local {
            if r.objects().contains(&obj) {
                a = Some(r.read(obj, 0, 256, u64::MAX).await.unwrap());
            }
        }
        let mut b = None;
        for (_, r) in &remote {
            if r.objects().contains(&pobj) {
                b = Some(r.read(pobj, 0, 256, u64::MAX).await.unwrap());
            }
        }
        match (a, b) {
            (Some(a), Some(b)) => {
                assert!(a[..] == b[..], "chunk {chunk}: replicas differ");
                compared += 1;
            }
            (None, None) => {}
            (a, b) => panic!(
                "chunk {chunk}: on owner {} / on peer {}",
                a.is_some(),
                b.is_some()
            ),
        }
    }
    compared
}

/// Deterministic contents for (round, offset).
pub fn pattern(round: u64, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ off;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
