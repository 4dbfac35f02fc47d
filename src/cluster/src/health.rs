//! Failure detection by heartbeats, and the `cluster status` view.
//!
//! Every member pings every other member every [`PING_INTERVAL`] over the member transport,
//! each ping bounded by [`PING_TIMEOUT`]. A member is `Up` if a ping succeeded within the last
//! [`DOWN_AFTER`], `Down` once that long has passed without one, and `Unknown` before the first
//! answer. (Raft's own leader liveness uses its election timeout, see `RaftTimings`.)
//! Must never: block raft or hold a lock across a ping.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::network::PeerRequest;
use crate::node::ClusterNode;
use crate::state::MemberState;
use crate::types::{NodeId, Role};

pub const PING_INTERVAL: Duration = Duration::from_millis(500);
pub const PING_TIMEOUT: Duration = Duration::from_millis(1000);
pub const DOWN_AFTER: Duration = Duration::from_millis(3000);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeHealth {
    Up,
    Down,
    Unknown,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Health {
    last_ok: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Health {
    fn record_ok(&self, id: NodeId) {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Instant::now());
    }

    fn get(&self, id: NodeId, started: Instant) -> (NodeHealth, Option<u64>) {
        let last = self
            .last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied();
        match last {
            Some(t) if t.elapsed() < DOWN_AFTER => {
                (NodeHealth::Up, Some(t.elapsed().as_millis() as u64))
            }
            Some(t) => (NodeHealth::Down, Some(t.elapsed().as_millis() as u64)),
            None if started.elapsed() >= DOWN_AFTER => (NodeHealth::Down, None),
            None => (NodeHealth::Unknown, None),
        }
    }
}

/// One member as `cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    pub role: Role,
    pub state: MemberState,
    pub voter: bool,
    pub health: NodeHealth,
    pub last_seen_ms_ago: Option<u64>,
}

/// The data behind `cairn cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub me: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub placement_version: u64,
    pub members: Vec<MemberStatus>,
}

pub(crate) fn spawn_detector(node: Weak<ClusterNode>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(n) = node.upgrade() else { return };
            if n.is_stopped() {
                return;
            }
            let targets: Vec<(NodeId, String)> = n.read(|s| {
                s.members
                    .values()
                    .filter(|m| m.id != n.id)
                    .map(|m| (m.id, m.addr.clone()))
                    .collect()
            });
            let pings = targets.into_iter().map(|(id, addr)| {
                let n = n.clone();
                async move {
                    if n.is_isolated() {
                        return;
                    }
                    let Ok(c) = n.clients.get(id, &addr) else {
                        return;
                    };
                    if c.call_timeout(&PeerRequest::Ping, PING_TIMEOUT)
                        .await
                        .is_ok()
                    {
                        n.health.record_ok(id);
                    }
                }
            });
            futures::future::join_all(pings).await;
        }
    });
}

impl ClusterNode {
    /// Members, leader and each member's health as this node sees them.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let members = self.read(|s| {
            s.members
                .values()
                .map(|mem| {
                    let (health, ago) = if mem.id == self.id {
                        (NodeHealth::Up, Some(0))
                    } else {
                        self.health.get(mem.id, self.started)
                    };
                    MemberStatus {
                        id: mem.id,
                        name: mem.name.clone(),
                        addr: mem.addr.clone(),
                        role: mem.role,
                        state: mem.state,
                        voter: voters.contains(&mem.id),
                        health,
                        last_seen_ms_ago: ago,
                    }
                })
                .collect()
        });
        ClusterStatus {
            cluster_id: self.cluster_id.clone(),
            me: self.id,
            leader: m.current_leader,
            term: m.current_term,
            placement_version: self.read(|s| s.placement.version),
            members,
        }
    }
}
