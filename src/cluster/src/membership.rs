//! Membership: join tokens, admitting a joiner (token check, node id, certificate), promoting
//! it to a voter, removing a member, and the joiner's side of all that.
//!
//! A join token is `cairn1.<CA fingerprint>.<secret hex>`. Only the secret's SHA-256 is stored
//! in the replicated state; consuming it is a raft command, so a token works once, cluster-wide,
//! and only until it expires. The fingerprint lets the joiner refuse an impostor member.
//! Must never: admit without consuming a token through raft, or hand out a certificate before
//! the consume is committed.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use sha2::{Digest, Sha256};
use transport::{Client, ClientConfig, CLUSTER_SERVER_NAME};

use crate::network::{AdmitRequest, AdmitResponse, PeerRequest, PeerResponse, ProposeError};
use crate::node::{now_ms, random_hex, save_joined, ClusterNode, NodeConfig};
use crate::state::{Command, CommandResult, MemberState};
use crate::types::{CairnNode, NodeId, Role};
use crate::Error;

const TOKEN_PREFIX: &str = "cairn1";
/// Longest a token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the leader waits for a new learner to catch up before giving up on a promote.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a leader that removed itself keeps offering the record of it to the remaining
/// voters: their election (leader lease plus election timeout) and one commit, with room for
/// a loaded machine.
const REMOVED_LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// One offer to one remaining voter.
const REMOVED_LEADER_ATTEMPT: Duration = Duration::from_secs(2);

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub secret_hex: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken, Error> {
        let mut parts = s.trim().split('.');
        let (Some(prefix), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::BadToken(
                "expected cairn1.<fingerprint>.<secret>".into(),
            ));
        };
        if prefix != TOKEN_PREFIX || !is_hex(fp, 64) || !is_hex(secret, 64) {
            return Err(Error::BadToken("malformed token".into()));
        }
        Ok(JoinToken {
            ca_fingerprint: fp.to_ascii_lowercase(),
            secret_hex: secret.to_ascii_lowercase(),
        })
    }

    pub fn encode(&self) -> String {
        format!("{TOKEN_PREFIX}.{}.{}", self.ca_fingerprint, self.secret_hex)
    }
}

fn secret_hash(secret_hex: &str) -> Result<String, String> {
    if !is_hex(secret_hex, 64) {
        return Err("malformed token secret".into());
    }
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&secret_hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok(Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl ClusterNode {
    /// Issues a one-time join token for a node of `role`, valid for `ttl`.
    pub async fn issue_join_token(&self, role: Role, ttl: Duration) -> Result<String, Error> {
        if ttl > MAX_TOKEN_TTL || ttl.is_zero() {
            return Err(Error::Config(format!(
                "token lifetime must be in (0, {MAX_TOKEN_TTL:?}]"
            )));
        }
        let secret_hex = random_hex(32);
        let token_hash = secret_hash(&secret_hex).map_err(Error::BadToken)?;
        let expires_ms = now_ms().saturating_add(ttl.as_millis() as u64);
        match self
            .propose(Command::IssueJoinToken {
                token_hash,
                expires_ms,
                role,
            })
            .await?
        {
            CommandResult::Ok => {}
            other => return Err(Error::Rejected(format!("{other:?}"))),
        }
        Ok(JoinToken {
            ca_fingerprint: self.identity.ca_fingerprint(),
            secret_hex,
        }
        .encode())
    }

    /// Joins the cluster that issued `token`, through the join endpoint of any member at
    /// `member_join_addr`. Returns once this node is a voter.
    pub async fn join(
        cfg: NodeConfig,
        token: &str,
        member_join_addr: SocketAddr,
    ) -> Result<Arc<ClusterNode>, Error> {
        if cfg.has_member()? {
            return Err(Error::Config(
                "data directory already belongs to a cluster".into(),
            ));
        }
        let token = JoinToken::parse(token)?;
        let client = Client::<AdmitRequest, AdmitResponse>::new(
            member_join_addr,
            CLUSTER_SERVER_NAME
                .try_into()
                .map_err(|_| Error::Config("server name".into()))?,
            transport::join_client_tls_config(&token.ca_fingerprint)?,
            ClientConfig {
                call_timeout: Duration::from_secs(30),
                ..ClientConfig::default()
            },
        );
        let admitted = client
            .call(&AdmitRequest {
                token_secret_hex: token.secret_hex.clone(),
                name: cfg.name.clone(),
                addr: cfg.rpc_addr.to_string(),
                join_addr: cfg.join_addr.to_string(),
            })
            .await?;
        if admitted.identity.ca_fingerprint() != token.ca_fingerprint
            || admitted.identity.node_id != admitted.node_id
        {
            return Err(Error::BadToken(
                "cluster handed back a certificate from another CA".into(),
            ));
        }
        save_joined(
            &cfg,
            &admitted.cluster_id,
            admitted.role,
            admitted.identity.clone(),
        )?;
        let node = ClusterNode::open(cfg).await?;
        let mut last = Error::NoLeader;
        for _ in 0..3 {
            for (mid, addr) in &admitted.members {
                match node
                    .forward(
                        *mid,
                        addr,
                        PeerRequest::Promote { id: node.id },
                        crate::node::FORWARD_WAIT,
                    )
                    .await
                {
                    Ok(PeerResponse::Done(Ok(()))) => return Ok(node),
                    Ok(PeerResponse::Done(Err(e))) => last = Error::Rejected(e),
                    Ok(other) => last = Error::Raft(format!("unexpected reply {other:?}")),
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(last)
    }

    /// Removes member `id` from raft and from the cluster state. (Draining its data first is
    /// the engine's part: it watches for `MemberState::Draining`.)
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Error> {
        match self.to_leader(|| PeerRequest::Remove { id }).await? {
            PeerResponse::Done(r) => r.map_err(Error::Rejected),
            other => Err(Error::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// Admits a joiner (leader only; others forward).
    pub(crate) async fn admit(&self, req: AdmitRequest) -> Result<AdmitResponse, String> {
        if !self.is_leader() {
            return match self.to_leader(|| PeerRequest::Admit(req.clone())).await {
                Ok(PeerResponse::Admitted(r)) => r,
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e.to_string()),
            };
        }
        let token_hash = secret_hash(&req.token_secret_hex)?;
        let cmd = Command::ConsumeJoinToken {
            token_hash,
            now_ms: now_ms(),
            name: req.name.clone(),
            addr: req.addr.clone(),
            join_addr: req.join_addr.clone(),
        };
        let id = match self
            .propose_local(cmd)
            .await
            .map_err(|e| format!("{e:?}"))?
        {
            CommandResult::NodeId(id) => id,
            CommandResult::Rejected(m) => return Err(m),
            other => return Err(format!("unexpected result {other:?}")),
        };
        let (ca, role, cluster_id, members) = self.read(|s| {
            (
                s.ca.clone(),
                s.members.get(&id).map(|m| m.role),
                s.cluster_id.clone(),
                s.members
                    .values()
                    .filter(|m| m.state == MemberState::Active)
                    .map(|m| (m.id, m.addr.clone()))
                    .collect::<Vec<_>>(),
            )
        });
        let ca = ca.ok_or("cluster has no CA")?;
        let role = role.ok_or("admitted member vanished")?;
        let identity = ca.issue(id).map_err(|e| e.to_string())?;
        Ok(AdmitResponse {
            node_id: id,
            role,
            cluster_id,
            identity,
            members,
        })
    }

    /// Makes an admitted node a voter once it has caught up (leader only; others forward).
    pub(crate) async fn promote(&self, id: NodeId) -> Result<(), String> {
        if !self.is_leader() {
            return self.forward_done(|| PeerRequest::Promote { id }).await;
        }
        let m = self
            .read(|s| s.members.get(&id).cloned())
            .ok_or_else(|| format!("node {id} was not admitted"))?;
        let node = CairnNode {
            addr: m.addr.clone(),
            role: m.role,
        };
        tokio::time::timeout(CATCH_UP_TIMEOUT, self.raft.add_learner(id, node, true))
            .await
            .map_err(|_| format!("node {id} did not catch up in {CATCH_UP_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| e.to_string())?;
        match self
            .propose_local(Command::SetMemberState {
                id,
                state: MemberState::Active,
            })
            .await
            .map_err(|e| format!("{e:?}"))?
        {
            CommandResult::Ok => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Removes a member (leader only; others forward).
    pub(crate) async fn remove(&self, id: NodeId) -> Result<(), String> {
        if !self.is_leader() {
            return self.forward_done(|| PeerRequest::Remove { id }).await;
        }
        let voters: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&id) {
            if voters.len() <= 1 {
                return Err("cannot remove the last voter".into());
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        // A leader that removed itself steps down as soon as that is committed (openraft makes
        // it a learner nobody tells who leads next): a local write would be refused or left
        // hanging, so the record goes to the remaining voters until one of them leads.
        let r = if id == self.id {
            self.propose_via_others(Command::RemoveMember { id })
                .await
                .map_err(|e| e.to_string())?
        } else if self.is_leader() {
            self.propose_local(Command::RemoveMember { id })
                .await
                .map_err(|e| format!("{e:?}"))?
        } else {
            self.propose(Command::RemoveMember { id })
                .await
                .map_err(|e| e.to_string())?
        };
        match r {
            CommandResult::Ok | CommandResult::Rejected(_) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Commits `cmd` through whichever other voter leads, retried while they elect one (for a
    /// leader that has just removed itself). Applies at most once (request id).
    async fn propose_via_others(&self, cmd: Command) -> Result<CommandResult, Error> {
        let cmd = Command::Once {
            request: random_hex(16),
            cmd: Box::new(cmd),
        };
        let deadline = tokio::time::Instant::now() + REMOVED_LEADER_DEADLINE;
        let mut maybe_sent: Option<String> = None;
        loop {
            let others: Vec<(NodeId, String)> = {
                let m = self.raft.metrics().borrow().membership_config.clone();
                m.membership()
                    .voter_ids()
                    .filter(|v| *v != self.id)
                    .filter_map(|v| m.membership().get_node(&v).map(|n| (v, n.addr.clone())))
                    .collect()
            };
            for (v, addr) in others {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let req = PeerRequest::Propose(cmd.clone());
                match self
                    .forward(v, &addr, req, left.min(REMOVED_LEADER_ATTEMPT))
                    .await
                {
                    Ok(PeerResponse::Proposed(Ok(r))) => return Ok(r),
                    Ok(PeerResponse::Proposed(Err(ProposeError::NotLeader))) => {}
                    Ok(PeerResponse::Proposed(Err(ProposeError::Indeterminate(e)))) => {
                        maybe_sent = Some(e)
                    }
                    Ok(other) => {
                        return Err(Error::Indeterminate(format!("unexpected reply {other:?}")))
                    }
                    Err(e) => maybe_sent = Some(e.to_string()),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(match maybe_sent {
            Some(e) => Error::Indeterminate(e),
            None => Error::NoLeader,
        })
    }

    async fn forward_done(&self, req: impl Fn() -> PeerRequest) -> Result<(), String> {
        match self.to_leader(req).await {
            Ok(PeerResponse::Done(r)) => r,
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_and_rejects() {
        let t = JoinToken {
            ca_fingerprint: "ab".repeat(32),
            secret_hex: "cd".repeat(32),
        };
        assert_eq!(JoinToken::parse(&t.encode()).unwrap(), t);
        for bad in [
            "",
            "cairn1",
            "cairn1.xx.yy",
            &format!("cairn2.{}.{}", "a".repeat(64), "b".repeat(64)),
            &format!("cairn1.{}.{}.extra", "a".repeat(64), "b".repeat(64)),
            &format!("cairn1.{}.{}", "g".repeat(64), "b".repeat(64)),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(secret_hash(&"00".repeat(32)).unwrap().len(), 64);
        assert!(secret_hash("zz").is_err());
    }
}
