//! Helpers for multi-node tests on 127.0.0.x.
#![allow(dead_code)]
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{ClusterNode, NodeConfig, RaftTimings};

/// A free port on `ip` (bound and released; tests use distinct 127.0.0.x addresses so a
/// collision with another test is unlikely).
pub fn free_addr(ip: &str) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).expect("bind");
    l.local_addr().expect("addr")
}

pub fn config(dir: &Path, ip: &str, name: &str) -> NodeConfig {
    NodeConfig {
        data_dir: dir.join(name),
        name: name.to_string(),
        rpc_addr: free_addr(ip),
        join_addr: free_addr(ip),
        timings: RaftTimings::default(),
        media: None,
    }
}

/// Waits until `f` holds, or panics after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until all `nodes` agree on one leader among them and returns it.
pub async fn wait_leader(nodes: &[&Arc<ClusterNode>], timeout: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let leaders: Vec<Option<u64>> = nodes.iter().map(|n| n.leader()).collect();
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) && nodes.iter().any(|n| n.id() == *l) {
                return *l;
            }
        }
        assert!(start.elapsed() < timeout, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
