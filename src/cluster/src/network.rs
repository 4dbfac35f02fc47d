//! Raft's network over the `transport` crate: the peer protocol (raft RPCs plus the few
//! cluster RPCs that must reach the leader) and openraft's `RaftNetworkFactory` on top of
//! mutual-TLS clients, one connection per peer, reused.
//!
//! Must never: talk to a peer except through `transport` (mutual TLS under the cluster CA).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use transport::{node_server_name, Client, ClientConfig, NodeIdentity};

use crate::state::{Command, CommandResult};
use crate::types::{CairnNode, NodeId, Role, TypeConfig};
use crate::Error;

/// A joiner admitted through a member's join endpoint, forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmitRequest {
    pub token_secret_hex: String,
    pub name: String,
    pub addr: String,
    pub join_addr: String,
}

/// What the leader hands an admitted joiner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmitResponse {
    pub node_id: NodeId,
    pub role: Role,
    pub cluster_id: String,
    pub identity: NodeIdentity,
    /// Active members' (id, cluster RPC address), so the joiner can reach the leader.
    pub members: Vec<(NodeId, String)>,
}

/// Why a forwarded proposal failed, in the two classes the proposer must tell apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeError {
    /// The receiver is not the leader and did not append the command: safe to retry.
    NotLeader,
    /// The command may or may not have been committed.
    Indeterminate(String),
}

/// Member-to-member requests.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commit a command (sent to the leader by a follower).
    Propose(Command),
    /// Admit a joiner (sent to the leader by the member whose join endpoint it reached).
    Admit(AdmitRequest),
    /// Make an admitted node a voter (sent by the joiner itself once it is serving).
    Promote {
        id: NodeId,
    },
    /// Remove a member from raft and the cluster state.
    Remove {
        id: NodeId,
    },
    /// Liveness probe for the failure detector.
    Ping,
    /// Member `id` (the caller itself) is at these addresses now (sent to the leader). Last,
    /// so the older requests' encoding stays.
    SetAddr {
        id: NodeId,
        addr: String,
        join_addr: String,
    },
    /// An application call (`crate::app`), opaque here. Last, so the older requests' encoding
    /// stays.
    App(Vec<u8>),
    /// The admin told the caller that member `id` answers at `addr` now (`cairn cluster
    /// locate`), sent to the leader so it reaches `id` there too. Last, so the older requests'
    /// encoding stays (an older leader cannot read it, and the hint is lost).
    Located {
        id: NodeId,
        addr: String,
    },
}

/// Replies, one variant per request kind. Errors cross the wire as text.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Proposed(Result<CommandResult, ProposeError>),
    Admitted(Result<AdmitResponse, String>),
    Done(Result<(), String>),
    Pong {
        leader: Option<NodeId>,
        term: u64,
    },
    /// The answer to [`PeerRequest::App`]. Last, so the older replies' encoding stays.
    App(Result<Vec<u8>, String>),
}

pub type PeerClient = Client<PeerRequest, PeerResponse>;

/// Builds (and caches) mutual-TLS clients to peers.
#[derive(Clone)]
pub struct PeerClients {
    identity: NodeIdentity,
    tls: Arc<rustls::ClientConfig>,
    cfg: ClientConfig,
    cache: Arc<Mutex<HashMap<(NodeId, String), PeerClient>>>,
    /// Members that told this member themselves (over mutual TLS, see
    /// [`PeerClients::note_moved`]) that they moved: id -> (address raft knows, address they
    /// are at now). Used while raft still names the old address.
    moved: Arc<Mutex<HashMap<NodeId, (String, String)>>>,
    /// Fault injection: when set, this node neither sends nor accepts member traffic.
    isolated: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for PeerClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClients")
            .field("me", &self.identity.node_id)
            .finish()
    }
}

impl PeerClients {
    pub fn new(identity: NodeIdentity, cfg: ClientConfig) -> Result<PeerClients, Error> {
        let tls = transport::client_tls_config(&identity)?;
        Ok(PeerClients {
            identity,
            tls,
            cfg,
            cache: Arc::new(Mutex::new(HashMap::new())),
            moved: Arc::default(),
            isolated: Arc::default(),
        })
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn set_isolated(&self, on: bool) {
        self.isolated.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Member `id` said (itself: the caller checked its certificate) that it is at `new`
    /// now, while raft still names `old`: until raft does, a call meant for `id` at `old`
    /// goes to `new`. Without a leader nobody can commit the new address, and the member
    /// that moved may be unable to win an election (its log behind): the others must reach
    /// it at its new address to lead. Safe: a peer is always checked to present node `id`'s
    /// certificate, wherever it is reached.
    pub(crate) fn note_moved(&self, id: NodeId, old: String, new: String) {
        let mut moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        if old == new {
            moved.remove(&id);
        } else {
            moved.insert(id, (old, new));
        }
    }

    /// The client for node `id` at `addr` (the peer must present node `id`'s certificate).
    pub fn get(&self, id: NodeId, addr: &str) -> Result<PeerClient, Error> {
        let addr = {
            let moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
            match moved.get(&id) {
                Some((old, new)) if old == addr => new.clone(),
                _ => addr.to_string(),
            }
        };
        let addr = addr.as_str();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&(id, addr.to_string())) {
            return Ok(c.clone());
        }
        let sock: SocketAddr = addr
            .parse()
            .map_err(|e| Error::Config(format!("bad peer address {addr:?}: {e}")))?;
        let c = PeerClient::new(
            sock,
            node_server_name(id),
            self.tls.clone(),
            self.cfg.clone(),
        );
        cache.insert((id, addr.to_string()), c.clone());
        Ok(c)
    }
}

/// openraft's network factory.
#[derive(Debug, Clone)]
pub struct Network {
    pub clients: PeerClients,
}

/// One peer as openraft sees it. The client is looked up at every call, not once: a
/// replication stream lives as long as the leadership, and a member that moved
/// ([`PeerClients::note_moved`]) must be reached at its new address by the stream already
/// running (a leader's lease checks, which open new streams, did reach it there and kept it a
/// follower that heard from its leader, while the old stream never replicated to it).
#[derive(Debug)]
pub struct PeerConn {
    target: NodeId,
    addr: String,
    clients: PeerClients,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &CairnNode) -> PeerConn {
        PeerConn {
            target,
            addr: node.addr.clone(),
            clients: self.clients.clone(),
        }
    }
}

fn unreachable<E: std::error::Error + 'static>(e: &E) -> Unreachable {
    Unreachable::new(e)
}

impl PeerConn {
    async fn call<E: std::error::Error>(
        &self,
        req: PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, RPCError<NodeId, CairnNode, E>> {
        if self.clients.is_isolated() {
            let e = Error::Config("isolated (fault injection)".into());
            return Err(RPCError::Unreachable(unreachable(&e)));
        }
        let client = self
            .clients
            .get(self.target, &self.addr)
            .map_err(|e| RPCError::Unreachable(unreachable(&e)))?;
        client.call_timeout(&req, ttl).await.map_err(|e| match e {
            transport::Error::Connect { .. } | transport::Error::Closed => {
                RPCError::Unreachable(unreachable(&e))
            }
            other => RPCError::Network(NetworkError::new(&other)),
        })
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<NodeId, CairnNode, E> {
    RPCError::Network(NetworkError::new(&Error::Raft(format!(
        "unexpected reply to {what}"
    ))))
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, CairnNode, RaftError<NodeId>>> {
        match self
            .call(PeerRequest::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            PeerResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("append_entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, CairnNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(PeerRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await?
        {
            PeerResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("install_snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, CairnNode, RaftError<NodeId>>> {
        match self.call(PeerRequest::Vote(rpc), option.hard_ttl()).await? {
            PeerResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected("vote")),
        }
    }
}
