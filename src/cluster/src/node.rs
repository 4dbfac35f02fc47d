//! A running cluster member: raft over our stores, the mutual-TLS peer server, the join
//! endpoint, and the operations the rest of Cairn calls (propose, read state, status).
//!
//! Kept on the config's [`RaftMedia`] (by default files under `data_dir`: `identity` (this
//! node's certificate, key and CA), `raft/log`, `raft/sm`). Must never: start raft without a certificate from the cluster CA, or run two
//! nodes on one data directory.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use transport::{ClientConfig, NodeIdentity, ServerConfig, ServerHandle};

use crate::handler::{JoinHandler, PeerHandler};
use crate::health::Health;
use crate::log_store::LogStore;
use crate::medium::{FileMedia, Part, RaftMedia};
use crate::network::{Network, PeerClients, PeerRequest, PeerResponse, ProposeError};
use crate::sm_store::{StateMachineStore, StateReader};
use crate::state::{ClusterState, Command, CommandResult};
use crate::types::{CairnNode, NodeId, Raft, Role};
use crate::Error;

/// Raft timing. Defaults suit a LAN; tests use the same defaults.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many applied entries.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot (lagging followers within this catch up from the
    /// log; further behind, they get the snapshot).
    pub keep_log_entries: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 800,
            snapshot_every_entries: 1000,
            keep_log_entries: 100,
        }
    }
}

/// How to run one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub name: String,
    /// Mutual-TLS cluster RPC listener (raft and member-to-member calls).
    pub rpc_addr: SocketAddr,
    /// Token-authenticated join listener (server-only TLS).
    pub join_addr: SocketAddr,
    pub timings: RaftTimings,
    /// Where the identity, raft log and snapshot live; None: files under `data_dir`.
    pub media: Option<Arc<dyn RaftMedia>>,
}

impl NodeConfig {
    /// The media this member's state lives on.
    pub fn media(&self) -> Arc<dyn RaftMedia> {
        match &self.media {
            Some(m) => m.clone(),
            None => Arc::new(FileMedia::new(self.data_dir.clone())),
        }
    }

    /// Whether this config's media already hold a member (the node belongs to a cluster).
    pub fn has_member(&self) -> Result<bool, Error> {
        crate::medium::has_identity(&*self.media())
    }
}

/// What a node keeps about itself besides raft.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    cluster_id: String,
    role: Role,
    identity: NodeIdentity,
}

/// Hops a request may be forwarded / retried while leadership settles.
const PROPOSE_ATTEMPTS: u32 = 20;
const PROPOSE_RETRY_MS: u64 = 100;
/// How long [`ClusterNode::propose`] keeps retrying (against whoever leads by then) before it
/// reports the outcome. Covers an election (~1.5 s) plus a full quorum wait.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(15);
/// One forwarded proposal's wait: a healthy leader commits in milliseconds; a leader that
/// went silent (cut off) must not hold the caller, since the retry is safe (request id).
const FORWARD_ATTEMPT: Duration = Duration::from_secs(2);
/// Calls other than proposals (admission, membership changes).
pub(crate) const FORWARD_WAIT: Duration = Duration::from_secs(30);
/// How long one commit or linearizable read may wait for a quorum. An isolated leader never
/// gets one, and a caller must not hang with it: past this the outcome is reported as unknown
/// (a write may still commit later) rather than waited for forever.
const QUORUM_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running member.
pub struct ClusterNode {
    pub(crate) id: NodeId,
    pub(crate) role: Role,
    pub(crate) cluster_id: String,
    pub(crate) raft: Raft,
    pub(crate) state: StateReader,
    pub(crate) clients: PeerClients,
    pub(crate) identity: NodeIdentity,
    pub(crate) cfg: NodeConfig,
    pub(crate) health: Health,
    pub(crate) started: std::time::Instant,
    stopped: std::sync::atomic::AtomicBool,
    /// Fault injection: inbound member calls get no answer (see [`ClusterNode::set_silent`]).
    silent: std::sync::atomic::AtomicBool,
    /// Whether raft may start elections here (see `health`'s election gate).
    pub(crate) may_elect: std::sync::atomic::AtomicBool,
    /// Members this one was told the address of (`cluster locate`) and passes on to the
    /// leader until raft names it (see `readdress`).
    pub(crate) telling: std::sync::Mutex<std::collections::HashMap<NodeId, String>>,
    /// The application's handler for member calls (`crate::app`).
    pub(crate) app: std::sync::Mutex<Option<Arc<dyn crate::app::AppHandler>>>,
    servers: std::sync::Mutex<Vec<ServerHandle>>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish()
    }
}

fn save_persisted(cfg: &NodeConfig, p: &Persisted) -> Result<(), Error> {
    let bytes = serde_json::to_vec(p).map_err(|e| Error::Config(e.to_string()))?;
    let mut m = cfg.media().open(Part::Identity)?;
    m.replace(&bytes)
        .map_err(|e| Error::io("write identity", e))
}

fn load_persisted(cfg: &NodeConfig) -> Result<Persisted, Error> {
    let mut m = cfg.media().open(Part::Identity)?;
    let bytes = m.read_all().map_err(|e| Error::io("read identity", e))?;
    if bytes.is_empty() {
        return Err(Error::Config(format!(
            "{}: no member identity (this node has not created or joined a cluster)",
            m.describe()
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("identity: {e}")))
}

impl ClusterNode {
    /// Creates a new cluster with this node as its first (data) member: makes the cluster CA,
    /// issues this node's certificate, initialises raft and records the cluster in its state.
    pub async fn create(cfg: NodeConfig) -> Result<Arc<ClusterNode>, Error> {
        ClusterNode::create_with_lease(cfg, 0).await
    }

    /// [`ClusterNode::create`], recording the cluster-wide isolation lease length
    /// (`ClusterState::lease_ms`; 0: not set).
    pub async fn create_with_lease(
        cfg: NodeConfig,
        lease_ms: u64,
    ) -> Result<Arc<ClusterNode>, Error> {
        if cfg.has_member()? {
            return Err(Error::Config(
                "data directory already belongs to a cluster".into(),
            ));
        }
        let cluster_id = random_hex(16);
        let ca = transport::ClusterCa::generate(&cluster_id)?;
        let identity = ca.issue(1)?;
        save_persisted(
            &cfg,
            &Persisted {
                cluster_id: cluster_id.clone(),
                role: Role::Data,
                identity,
            },
        )?;
        let node = ClusterNode::open(cfg).await?;
        let me = CairnNode {
            addr: node.cfg.rpc_addr.to_string(),
            role: Role::Data,
        };
        node.raft
            .initialize(BTreeMap::from([(1, me)]))
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let first = crate::state::Member {
            id: 1,
            name: node.cfg.name.clone(),
            addr: node.cfg.rpc_addr.to_string(),
            join_addr: node.cfg.join_addr.to_string(),
            role: Role::Data,
            state: crate::state::MemberState::Active,
        };
        match node
            .propose(Command::InitCluster {
                cluster_id,
                ca,
                first,
                lease_ms,
            })
            .await?
        {
            CommandResult::Ok => Ok(node),
            other => Err(Error::Rejected(format!("{other:?}"))),
        }
    }

    /// Starts a node that already belongs to a cluster (after a restart).
    pub async fn open(cfg: NodeConfig) -> Result<Arc<ClusterNode>, Error> {
        let p = load_persisted(&cfg)?;
        let id = p.identity.node_id;
        let media = cfg.media();
        let (log, report) = LogStore::open_on(media.open(Part::Log)?)?;
        if report.torn_bytes > 0 {
            tracing::warn!(
                node = id,
                torn = report.torn_bytes,
                "raft log had a torn tail"
            );
        }
        let sm = StateMachineStore::open_on(media.open(Part::Snapshot)?)?;
        let state = sm.reader();
        let clients = PeerClients::new(
            p.identity.clone(),
            ClientConfig {
                call_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(1),
                ..ClientConfig::default()
            },
        )?;
        let t = &cfg.timings;
        let raft_cfg = openraft::Config {
            cluster_name: p.cluster_id.clone(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
            max_in_snapshot_log_to_keep: t.keep_log_entries,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config(e.to_string()))?;
        let network = Network {
            clients: clients.clone(),
        };
        let raft = Raft::new(id, Arc::new(raft_cfg), network, log, sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let node = Arc::new(ClusterNode {
            id,
            role: p.role,
            cluster_id: p.cluster_id,
            raft,
            state,
            clients,
            identity: p.identity,
            cfg,
            health: Health::default(),
            started: std::time::Instant::now(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            silent: std::sync::atomic::AtomicBool::new(false),
            may_elect: std::sync::atomic::AtomicBool::new(true),
            telling: std::sync::Mutex::new(std::collections::HashMap::new()),
            app: std::sync::Mutex::new(None),
            servers: std::sync::Mutex::new(Vec::new()),
        });
        node.start_servers().await?;
        crate::health::spawn_detector(Arc::downgrade(&node));
        // Reopened on another address (the host's changed): tell the cluster.
        node.spawn_announce();
        Ok(node)
    }

    async fn start_servers(self: &Arc<Self>) -> Result<(), Error> {
        let peer = transport::Server::bind(
            self.cfg.rpc_addr,
            transport::server_tls_config(&self.identity)?,
            ServerConfig::default(),
            Arc::new(PeerHandler {
                node: Arc::downgrade(self),
            }),
        )
        .await?;
        let join = transport::Server::bind(
            self.cfg.join_addr,
            transport::join_server_tls_config(&self.identity)?,
            ServerConfig {
                max_in_flight_per_conn: 4,
                max_connections: 32,
                ..ServerConfig::default()
            },
            Arc::new(JoinHandler {
                node: Arc::downgrade(self),
            }),
        )
        .await?;
        let mut s = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        s.push(peer);
        s.push(join);
        Ok(())
    }

    /// Whether this member was shut down ([`ClusterNode::shutdown`]): nothing it proposes
    /// commits any more.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn cfg(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Where joiners can reach this member.
    pub fn cfg_join_addr(&self) -> SocketAddr {
        self.cfg.join_addr
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Reads the applied cluster state (possibly slightly behind the leader; use
    /// [`ClusterNode::read_linearizable`] when that matters).
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self.state.read().state)
    }

    /// Reads the state after confirming leadership and applying everything committed up to
    /// now: the result reflects every write acknowledged before the call. Leader only.
    pub async fn read_linearizable<T>(
        &self,
        f: impl FnOnce(&ClusterState) -> T,
    ) -> Result<T, Error> {
        match tokio::time::timeout(QUORUM_WAIT, self.raft.ensure_linearizable()).await {
            Ok(r) => r.map_err(|e| Error::Raft(e.to_string()))?,
            Err(_) => return Err(Error::Raft("no quorum confirmed leadership in time".into())),
        };
        Ok(self.read(f))
    }

    /// Reads the state after applying, on this node, everything committed before the call —
    /// on any member, not only the leader: a follower commits a no-op through the leader and
    /// waits until it has applied it itself. For decisions a stale view would get wrong (which
    /// virtual disks a member owns before removing it).
    pub async fn read_fresh<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> Result<T, Error> {
        if self.is_leader() {
            return self.read_linearizable(f).await;
        }
        let request = random_hex(16);
        self.propose(Command::Once {
            request: request.clone(),
            cmd: Box::new(Command::Noop),
        })
        .await?;
        if !self.applied_here(&request, QUORUM_WAIT).await {
            return Err(Error::Raft(
                "this member did not apply the cluster's latest changes in time".into(),
            ));
        }
        Ok(self.read(f))
    }

    /// Waits (at most `within`) until this member has applied tagged command `request`
    /// ([`Command::Once`]) itself; whether it has. A proposal's answer comes from the leader
    /// once the leader applied it: a follower that proposed may not have yet, and a caller
    /// that acts on its own view next (a mover that must no longer serve what it handed over)
    /// waits for it here first.
    pub async fn applied_here(&self, request: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.state.read().requests.get(request).is_none() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Commits a command, forwarding to the leader when this node is not it. Returns the
    /// command's result once a quorum has it durably and it has been applied on the leader.
    ///
    /// The command is tagged with a fresh request id ([`Command::Once`]) that the state machine
    /// applies at most once, so an attempt whose outcome is unknown (a forward to a leader that
    /// went silent, a leader that lost its quorum) is retried against whoever leads now,
    /// within [`PROPOSE_DEADLINE`]: a metadata call completes soon after a new leader exists
    /// instead of waiting on a cut-off one. Past the deadline, a command that may have been
    /// appended somewhere is `Error::Indeterminate`.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, Error> {
        let cmd = match cmd {
            c @ Command::Once { .. } => c,
            c => Command::Once {
                request: random_hex(16),
                cmd: Box::new(c),
            },
        };
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        let mut last_err = Error::NoLeader;
        // Set once an attempt may have been appended: the final answer is then "unknown".
        let mut maybe_sent: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let written =
                tokio::time::timeout(left.min(QUORUM_WAIT), self.raft.client_write(cmd.clone()))
                    .await;
            match written {
                Err(_) => maybe_sent = Some("no commit within the quorum wait".into()),
                Ok(Ok(resp)) => return Ok(resp.data),
                // openraft answers ForwardToLeader only for entries it did not append, or
                // appended and then truncated: never committed.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    match (f.leader_id, f.leader_node) {
                        (Some(lid), Some(lnode)) if lid != self.id => {
                            let left =
                                deadline.saturating_duration_since(tokio::time::Instant::now());
                            match self
                                .forward(
                                    lid,
                                    &lnode.addr,
                                    PeerRequest::Propose(cmd.clone()),
                                    left.min(FORWARD_ATTEMPT),
                                )
                                .await
                            {
                                Ok(PeerResponse::Proposed(Ok(r))) => return Ok(r),
                                Ok(PeerResponse::Proposed(Err(ProposeError::NotLeader))) => {
                                    last_err = Error::NoLeader
                                }
                                Ok(PeerResponse::Proposed(Err(ProposeError::Indeterminate(e)))) => {
                                    maybe_sent = Some(e)
                                }
                                Ok(other) => {
                                    return Err(Error::Indeterminate(format!(
                                        "unexpected reply {other:?}"
                                    )))
                                }
                                Err(Error::Transport(e @ transport::Error::Connect { .. })) => {
                                    last_err = Error::Transport(e)
                                }
                                // Timed out or broke after sending: may have been appended.
                                Err(e) => maybe_sent = Some(e.to_string()),
                            }
                        }
                        _ => last_err = Error::NoLeader,
                    }
                }
                // Raft stopped under a pending write (this node shut down): it may have been
                // appended and replicated already, and nothing here can retry it.
                Ok(Err(e @ RaftError::Fatal(_))) => {
                    return Err(Error::Indeterminate(e.to_string()))
                }
                Ok(Err(e)) => maybe_sent = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(PROPOSE_RETRY_MS)).await;
        }
        Err(match maybe_sent {
            Some(e) => Error::Indeterminate(e),
            None => last_err,
        })
    }

    /// A fresh request id for [`Command::Once`], for a caller that proposes a tagged command
    /// itself so that it can settle an unknown outcome ([`ClusterNode::settle`]).
    pub fn request_id() -> String {
        random_hex(16)
    }

    /// Settles the outcome of tagged command `request` ([`Command::Once`]) after its proposal
    /// ended without a definite answer (`Error::Indeterminate`, or the caller gave up waiting):
    /// commits `Once { request, Noop }`. The state machine applies at most one command per id,
    /// so once this commits the tagged command can never apply any more, even if a copy of it
    /// is still on its way to a leader. Returns the result recorded for the id: the tagged
    /// command's own if it applied first, else the no-op's `CommandResult::Ok` (a caller whose
    /// command can itself answer `Ok` cannot tell the two apart: use it for commands that
    /// answer something else). Err: this fence's own outcome is unknown (no quorum in time);
    /// calling again with the same id settles the same way.
    pub async fn settle(&self, request: &str) -> Result<CommandResult, Error> {
        self.propose(Command::Once {
            request: request.to_string(),
            cmd: Box::new(Command::Noop),
        })
        .await
    }

    /// Commits on this node only if it is the leader (used by the peer handler so forwarded
    /// proposals never bounce around).
    pub(crate) async fn propose_local(&self, cmd: Command) -> Result<CommandResult, ProposeError> {
        let Ok(written) = tokio::time::timeout(QUORUM_WAIT, self.raft.client_write(cmd)).await
        else {
            return Err(ProposeError::Indeterminate(
                "no commit within the quorum wait".into(),
            ));
        };
        match written {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ProposeError::NotLeader)
            }
            Err(e) => Err(ProposeError::Indeterminate(e.to_string())),
        }
    }

    /// Fault injection for tests: while set, this node sends no member traffic and refuses
    /// all it receives (a network partition around it; the join endpoint is not affected).
    pub fn set_isolated(&self, on: bool) {
        self.clients.set_isolated(on);
    }

    pub fn is_isolated(&self) -> bool {
        self.clients.is_isolated()
    }

    /// Fault injection for tests: a partition that drops packets. Like [`Self::set_isolated`],
    /// but member calls reaching this node get no answer at all while it lasts (callers see
    /// silence until their own timeout, as with a cut link), and are refused after.
    pub fn set_silent(&self, on: bool) {
        self.silent.store(on, std::sync::atomic::Ordering::SeqCst);
        self.clients.set_isolated(on);
    }

    pub(crate) fn is_silent(&self) -> bool {
        self.silent.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) async fn forward(
        &self,
        id: NodeId,
        addr: &str,
        req: PeerRequest,
        wait: Duration,
    ) -> Result<PeerResponse, Error> {
        if self.is_isolated() {
            // Never sent: callers may treat it like an unreachable peer.
            return Err(Error::Transport(transport::Error::Connect {
                addr: addr.to_string(),
                reason: "isolated (fault injection)".into(),
            }));
        }
        let c = self.clients.get(id, addr)?;
        Ok(c.call_timeout(&req, wait).await?)
    }

    /// Sends a request to the leader (or handles it here if we are the leader's peer handler
    /// path), retrying while leadership settles.
    pub(crate) async fn to_leader(
        &self,
        req: impl Fn() -> PeerRequest,
    ) -> Result<PeerResponse, Error> {
        let mut last = Error::NoLeader;
        for _ in 0..PROPOSE_ATTEMPTS {
            if let Some(lid) = self.leader() {
                let addr = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&lid)
                    .map(|n| n.addr.clone());
                if let Some(addr) = addr {
                    match self.forward(lid, &addr, req(), FORWARD_WAIT).await {
                        Ok(r) => return Ok(r),
                        Err(e) => last = e,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(PROPOSE_RETRY_MS)).await;
        }
        Err(last)
    }

    /// Stops raft and both servers (what a crash looks like to the others, minus the disk
    /// state, which stays as it is).
    pub async fn shutdown(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            s.shutdown();
        }
        let _ = self.raft.shutdown().await;
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn save_joined(
    cfg: &NodeConfig,
    cluster_id: &str,
    role: Role,
    identity: NodeIdentity,
) -> Result<(), Error> {
    save_persisted(
        cfg,
        &Persisted {
            cluster_id: cluster_id.to_string(),
            role,
            identity,
        },
    )
}
