//! Failure detection by heartbeats, and the `cluster status` view.
//!
//! Every member pings every other member every [`PING_INTERVAL`] over the member transport,
//! each ping bounded by [`PING_TIMEOUT`]. A member is `Up` if a ping succeeded within the last
//! [`DOWN_AFTER`], `Down` once that long has passed without one, and `Unknown` before the first
//! answer. (Raft's own leader liveness uses its election timeout, see `RaftTimings`.)
//!
//! The same pings gate elections, a stand-in for raft's pre-vote (openraft 0.9 has none): a
//! voter that reaches too few voters to win does not campaign (reached: answered within
//! [`DOWN_AFTER`] and its latest ping did not fail). Without it a member cut off (unplugged,
//! or every member renumbered and it not yet told where the others are) raised its term at
//! every election timeout, and once a leader reached it again, its higher term deposed that
//! leader, again and again while it kept campaigning with a log too old to win. With it, a
//! member cut off while running campaigns at most until its next ping times out (about one
//! [`PING_TIMEOUT`]; its first campaign comes after the leader lease and an election timeout,
//! so once or twice at most): reached again, it costs the cluster one election, not a series.
//! One that starts cut off (a restart, a renumbered site) never campaigns.
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
    seen: Arc<Mutex<HashMap<NodeId, Seen>>>,
}

/// What the pings told of one member.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// When it last answered.
    last_ok: Option<Instant>,
    /// Its latest ping failed (or was not sent: isolated, bad address).
    failed: bool,
}

impl Health {
    fn record(&self, id: NodeId, ok: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let s = seen.entry(id).or_default();
        if ok {
            s.last_ok = Some(Instant::now());
        }
        s.failed = !ok;
    }

    fn seen(&self, id: NodeId) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
            .unwrap_or_default()
    }

    /// For the election gate: member `id` answered a ping within [`DOWN_AFTER`] and its
    /// latest ping did not fail. Stricter than `Up`, so a member cut off stops campaigning
    /// within about one ping timeout instead of [`DOWN_AFTER`].
    fn reachable(&self, id: NodeId) -> bool {
        let s = self.seen(id);
        !s.failed && s.last_ok.is_some_and(|t| t.elapsed() < DOWN_AFTER)
    }

    fn get(&self, id: NodeId, started: Instant) -> (NodeHealth, Option<u64>) {
        match self.seen(id).last_ok {
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
    /// Whether this member may start an election (the election gate: it reaches a majority
    /// of the voters).
    pub may_campaign: bool,
}

/// Whom the detector pings: every member raft knows, at the address raft calls it (what the
/// election gate must judge: the state's address can lag raft's while a move commits, and a
/// ping there would miss a member raft reaches), and members only the state knows yet (a
/// joiner before raft adds it) at the state's address.
fn ping_targets(n: &ClusterNode) -> Vec<(NodeId, String)> {
    let mut targets: std::collections::BTreeMap<NodeId, String> = n
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect();
    n.read(|s| {
        for m in s.members.values() {
            targets.entry(m.id).or_insert_with(|| m.addr.clone());
        }
    });
    targets.remove(&n.id);
    targets.into_iter().collect()
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
            n.gate_elections();
            let targets = ping_targets(&n);
            let pings = targets.into_iter().map(|(id, addr)| {
                let n = n.clone();
                async move {
                    if n.is_isolated() {
                        n.health.record(id, false);
                        return;
                    }
                    let Ok(c) = n.clients.get(id, &addr) else {
                        n.health.record(id, false);
                        return;
                    };
                    let ok = c
                        .call_timeout(&PeerRequest::Ping, PING_TIMEOUT)
                        .await
                        .is_ok();
                    n.health.record(id, ok);
                    n.gate_elections();
                }
            });
            futures::future::join_all(pings).await;
        }
    });
}

/// Whether `me` with the voters it reaches (`up`) makes a majority of every voter set of
/// `configs` (two while membership changes jointly).
fn majority_reached(
    configs: &[std::collections::BTreeSet<NodeId>],
    me: NodeId,
    up: impl Fn(NodeId) -> bool,
) -> bool {
    configs.iter().all(|voters| {
        let reached = voters.iter().filter(|&&v| v == me || up(v)).count();
        reached * 2 > voters.len()
    })
}

impl ClusterNode {
    /// Lets raft campaign here only while this member reaches a majority of the voters
    /// (itself included): see the module's note. A leader is not affected (it does not
    /// campaign), nor is a member that reaches enough voters but whose log is behind (raft
    /// refuses its vote requests without adopting its term).
    pub(crate) fn gate_elections(&self) {
        let configs = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .clone();
        let may = majority_reached(&configs, self.id, |v| self.health.reachable(v));
        let was = self
            .may_elect
            .swap(may, std::sync::atomic::Ordering::SeqCst);
        if was != may {
            self.raft.runtime_config().elect(may);
            if may {
                tracing::info!("reaching a majority of the voters again: may campaign");
            } else {
                tracing::info!(
                    "reaching too few voters to win an election: not campaigning until more answer"
                );
            }
        }
    }

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
            may_campaign: self.may_elect.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{majority_reached, Health};
    use std::collections::BTreeSet;

    #[test]
    fn a_member_whose_latest_ping_failed_does_not_count_for_the_election_gate() {
        let h = Health::default();
        assert!(!h.reachable(2), "never answered");
        h.record(2, true);
        assert!(h.reachable(2));
        // Still Up for the status view (answered within DOWN_AFTER), not for the gate.
        h.record(2, false);
        assert!(!h.reachable(2));
        assert_eq!(h.get(2, std::time::Instant::now()).0, super::NodeHealth::Up);
        h.record(2, true);
        assert!(h.reachable(2));
        assert!(!h.reachable(3));
    }

    #[test]
    fn a_member_campaigns_only_while_it_reaches_a_majority_of_every_voter_set() {
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        // Alone in a one-voter cluster: always.
        assert!(majority_reached(&[set(&[1])], 1, |_| false));
        // Three voters: itself and one more.
        assert!(!majority_reached(&[set(&[1, 2, 3])], 1, |_| false));
        assert!(majority_reached(&[set(&[1, 2, 3])], 1, |v| v == 3));
        // Two voters: both.
        assert!(!majority_reached(&[set(&[1, 2])], 1, |_| false));
        assert!(majority_reached(&[set(&[1, 2])], 1, |v| v == 2));
        // A learner (not in the set) cannot make up the majority.
        assert!(!majority_reached(&[set(&[1, 2, 3])], 1, |v| v == 4));
        // Joint membership: a majority of each set.
        let joint = [set(&[1, 2, 3]), set(&[1, 4, 5])];
        assert!(!majority_reached(&joint, 1, |v| v == 2));
        assert!(majority_reached(&joint, 1, |v| v == 2 || v == 5));
        // Not a voter at all: never counted as reached itself.
        assert!(!majority_reached(&[set(&[2, 3, 4])], 1, |v| v == 2));
    }
}
