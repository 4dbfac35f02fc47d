//! Request handlers: the member server (raft RPCs and cluster calls from other members, over
//! mutual TLS) and the join endpoint (anonymous TLS; only admission with a token).
//!
//! Must never: serve anything but admission to a caller without a member certificate.
use std::sync::Weak;

use transport::{Handler, RemoteError, StreamRx};

use crate::network::{AdmitRequest, AdmitResponse, PeerRequest, PeerResponse};
use crate::node::ClusterNode;
use crate::types::NodeId;

pub(crate) struct PeerHandler {
    pub(crate) node: Weak<ClusterNode>,
}

impl Handler for PeerHandler {
    type Request = PeerRequest;
    type Response = PeerResponse;

    async fn handle(
        &self,
        peer: Option<NodeId>,
        req: PeerRequest,
        _body: Option<StreamRx>,
    ) -> Result<PeerResponse, RemoteError> {
        if peer.is_none() {
            return Err(RemoteError("members only".into()));
        }
        let node = self
            .node
            .upgrade()
            .ok_or_else(|| RemoteError("node stopped".into()))?;
        while node.is_silent() && !node.is_stopped() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if node.is_isolated() {
            return Err(RemoteError("isolated (fault injection)".into()));
        }
        Ok(match req {
            PeerRequest::AppendEntries(r) => {
                PeerResponse::AppendEntries(node.raft.append_entries(r).await)
            }
            PeerRequest::Vote(r) => PeerResponse::Vote(node.raft.vote(r).await),
            PeerRequest::InstallSnapshot(r) => {
                PeerResponse::InstallSnapshot(node.raft.install_snapshot(r).await)
            }
            PeerRequest::Propose(cmd) => PeerResponse::Proposed(node.propose_local(cmd).await),
            PeerRequest::Admit(r) => PeerResponse::Admitted(node.admit(r).await),
            PeerRequest::Promote { id } => PeerResponse::Done(node.promote(id).await),
            PeerRequest::Remove { id } => PeerResponse::Done(node.remove(id).await),
            PeerRequest::SetAddr {
                id,
                addr,
                join_addr,
            } => PeerResponse::Done(node.set_addr(peer, id, addr, join_addr).await),
            PeerRequest::App(r) => PeerResponse::App(match peer {
                Some(from) => node.handle_app(from, r).await,
                None => Err("members only".into()),
            }),
            PeerRequest::Located { id, addr } => {
                PeerResponse::Done(node.located_by_member(peer, id, addr).await)
            }
            PeerRequest::Ping => {
                let m = node.raft.metrics().borrow().clone();
                PeerResponse::Pong {
                    leader: m.current_leader,
                    term: m.current_term,
                }
            }
        })
    }
}

pub(crate) struct JoinHandler {
    pub(crate) node: Weak<ClusterNode>,
}

impl Handler for JoinHandler {
    type Request = AdmitRequest;
    type Response = AdmitResponse;

    async fn handle(
        &self,
        _peer: Option<NodeId>,
        req: AdmitRequest,
        _body: Option<StreamRx>,
    ) -> Result<AdmitResponse, RemoteError> {
        let node = self
            .node
            .upgrade()
            .ok_or_else(|| RemoteError("node stopped".into()))?;
        node.admit(req).await.map_err(RemoteError)
    }
}
