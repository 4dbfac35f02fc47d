//! The simulated raft network: openraft's `RaftNetworkFactory` over in-memory calls between the
//! raft instances of one run, with seeded delay, loss, one-way link cuts and reordering (every
//! request and every reply gets its own random delay, so concurrent messages overtake each other).
//!
//! Owns the "wire" of a run: which nodes are up, which links are cut, and the generator that
//! decides every message's fate. Must never: read the wall clock or an unseeded generator, or
//! answer `Unreachable` (openraft's back-off on it races a timer against a channel in a `select!`
//! without `biased`, which would make a run depend on tokio's own randomness). A lost message
//! costs virtual time before the error, so a retry loop cannot spin without time passing.
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cluster::{CairnNode, NodeId, Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::SimError;
use crate::trace::Trace;

/// How bad the wire is right now (the nemesis changes it during a run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WireConfig {
    /// Probability that a request, and independently its reply, is lost.
    pub loss: f64,
    /// Each message takes 0..=max_delay_ms (uniform) of virtual time.
    pub max_delay_ms: u64,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            loss: 0.0,
            max_delay_ms: 5,
        }
    }
}

struct NetState {
    rng: StdRng,
    /// Running raft instances; a crashed node is absent.
    nodes: BTreeMap<NodeId, Raft>,
    /// Directed links (from, to) that deliver nothing.
    cut: BTreeSet<(NodeId, NodeId)>,
    wire: WireConfig,
    delivered: u64,
    lost: u64,
}

/// The shared wire of one run.
pub struct Net {
    state: Mutex<NetState>,
    pub trace: Trace,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").finish_non_exhaustive()
    }
}

impl Net {
    pub fn new(seed: u64, trace: Trace) -> Arc<Net> {
        Arc::new(Net {
            state: Mutex::new(NetState {
                rng: StdRng::seed_from_u64(seed),
                nodes: BTreeMap::new(),
                cut: BTreeSet::new(),
                wire: WireConfig::default(),
                delivered: 0,
                lost: 0,
            }),
            trace,
        })
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_up(&self, id: NodeId, raft: Raft) {
        self.lock().nodes.insert(id, raft);
    }

    /// Takes a node off the wire (it crashed); returns its raft handle to shut down.
    pub fn set_down(&self, id: NodeId) -> Option<Raft> {
        self.lock().nodes.remove(&id)
    }

    pub fn raft(&self, id: NodeId) -> Option<Raft> {
        self.lock().nodes.get(&id).cloned()
    }

    pub fn up_nodes(&self) -> Vec<NodeId> {
        self.lock().nodes.keys().copied().collect()
    }

    /// Cuts (or heals) both directions between `a` and `b`.
    pub fn set_link(&self, a: NodeId, b: NodeId, cut: bool) {
        let mut s = self.lock();
        for l in [(a, b), (b, a)] {
            if cut {
                s.cut.insert(l);
            } else {
                s.cut.remove(&l);
            }
        }
    }

    /// Cuts one direction only (a asymmetric partition: `from` is heard by nobody on it).
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    pub fn set_wire(&self, wire: WireConfig) {
        self.lock().wire = wire;
    }

    /// (messages delivered, messages lost) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.delivered, s.lost)
    }

    /// A seeded value for callers that share the wire's generator (the nemesis, clients).
    pub fn rng_below(&self, n: u64) -> u64 {
        self.lock().rng.gen_range(0..n.max(1))
    }

    /// Decides the fate of one message on `from -> to`: its delay, and whether it arrives.
    fn fate(&self, from: NodeId, to: NodeId) -> (Duration, bool) {
        let mut s = self.lock();
        let wire = s.wire;
        let delay = Duration::from_millis(s.rng.gen_range(0..=wire.max_delay_ms));
        let lost = s.cut.contains(&(from, to)) || s.rng.gen_bool(wire.loss.clamp(0.0, 1.0));
        if lost {
            s.lost += 1;
        } else {
            s.delivered += 1;
        }
        (delay, !lost)
    }

    /// A lost message is noticed only after a while (the sender's timeout).
    async fn lost<T, E: std::error::Error>(
        &self,
        what: &str,
    ) -> Result<T, RPCError<NodeId, CairnNode, E>> {
        let wait = Duration::from_millis(20 + self.rng_below(80));
        tokio::time::sleep(wait).await;
        Err(RPCError::Network(NetworkError::new(&SimError::Net(
            format!("{what} lost"),
        ))))
    }

    /// Carries one request from `from` to `to` and its reply back.
    async fn deliver<Req, Resp, E, F, Fut>(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        what: &str,
        req: Req,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, CairnNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        let (delay, arrives) = self.fate(from, to);
        tokio::time::sleep(delay).await;
        let target = if arrives { self.raft(to) } else { None };
        let Some(raft) = target else {
            return self.lost(what).await;
        };
        let reply = call(raft, req).await;
        let (delay, arrives) = self.fate(to, from);
        tokio::time::sleep(delay).await;
        if !arrives {
            return self.lost(what).await;
        }
        match reply {
            Ok(r) => Ok(r),
            // The target stopped while handling it: to the sender that is a lost reply.
            Err(RaftError::Fatal(f)) => Err(RPCError::Network(NetworkError::new(&f))),
            Err(e) => Err(RPCError::RemoteError(RemoteError::new(to, e))),
        }
    }
}

/// openraft's network factory for one node of the simulation.
#[derive(Debug, Clone)]
pub struct SimNetwork {
    pub net: Arc<Net>,
    pub me: NodeId,
}

/// One directed connection as openraft sees it.
#[derive(Debug)]
pub struct SimConn {
    net: Arc<Net>,
    from: NodeId,
    to: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimConn;

    async fn new_client(&mut self, target: NodeId, _node: &CairnNode) -> SimConn {
        SimConn {
            net: self.net.clone(),
            from: self.me,
            to: target,
        }
    }
}

/// Runs `fut` under openraft's hard timeout for this RPC.
async fn with_ttl<T, E: std::error::Error>(
    ttl: Duration,
    fut: impl Future<Output = Result<T, RPCError<NodeId, CairnNode, E>>>,
) -> Result<T, RPCError<NodeId, CairnNode, E>> {
    match tokio::time::timeout(ttl, fut).await {
        Ok(r) => r,
        Err(_) => Err(RPCError::Network(NetworkError::new(&SimError::Net(
            "rpc timed out".into(),
        )))),
    }
}

impl RaftNetwork<TypeConfig> for SimConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, CairnNode, RaftError<NodeId>>> {
        let net = self.net.clone();
        let fut = net.deliver(self.from, self.to, "append", rpc, |r, q| async move {
            r.append_entries(q).await
        });
        with_ttl(option.hard_ttl(), fut).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, CairnNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let net = self.net.clone();
        let fut = net.deliver(self.from, self.to, "snapshot", rpc, |r, q| async move {
            r.install_snapshot(q).await
        });
        with_ttl(option.hard_ttl(), fut).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, CairnNode, RaftError<NodeId>>> {
        let net = self.net.clone();
        let fut = net.deliver(self.from, self.to, "vote", rpc, |r, q| async move {
            r.vote(q).await
        });
        with_ttl(option.hard_ttl(), fut).await
    }
}
