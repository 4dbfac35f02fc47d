//! A member's new address: when the host's address changes (a new DHCP lease), the member is
//! reopened on the new address and announces it; the leader updates raft's membership node
//! (how peers reach it) and the member's entry in the cluster state ([`Command::SetMemberAddr`]).
//!
//! A running member moves the same way: the node host stops it and reopens it on the new
//! address (see the node crate's cluster host), and the reopened member announces.
//!
//! Owns the announce and its leader side. Must never: let a member change another member's
//! address (only the member itself, identified by its certificate, may announce its own),
//! record an address that does not parse, or move a member onto loopback while other members
//! are on other hosts (they could never reach it again).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use openraft::ChangeMembers;

use crate::network::{PeerRequest, PeerResponse};
use crate::node::ClusterNode;
use crate::state::{Command, CommandResult};
use crate::types::{CairnNode, NodeId};
use crate::Error;

/// How often a reopened member retries its announce while no leader takes it.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);
/// How long [`ClusterNode::locate_member`] waits for the member to answer at its new address.
const LOCATE_WAIT: Duration = Duration::from_secs(5);
/// How long a member told where another is keeps trying to pass it on to a leader.
const TELL_LEADER_FOR: Duration = Duration::from_secs(120);
/// How often the same leader is told again while raft does not name the address yet.
const RETELL_AFTER: Duration = Duration::from_secs(10);

impl ClusterNode {
    /// Whether the cluster knows this member at other addresses than the ones it listens on.
    pub fn address_is_stale(&self) -> bool {
        let (addr, join_addr) = (
            self.cfg().rpc_addr.to_string(),
            self.cfg().join_addr.to_string(),
        );
        let me = self.id();
        let in_state = self.read(|s| {
            s.members
                .get(&me)
                .map(|m| m.addr != addr || m.join_addr != join_addr)
        });
        let in_raft = self
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&me)
            .map(|n| n.addr != addr);
        in_state.unwrap_or(false) || in_raft.unwrap_or(false)
    }

    /// Whether another member of the cluster is at a non-loopback address (on another host):
    /// such a cluster can never reach this member on a loopback address.
    pub fn has_remote_members(&self) -> bool {
        self.others_remote(self.id())
    }

    /// Whether a member other than `id` is at a non-loopback address.
    fn others_remote(&self, id: u64) -> bool {
        self.read(|s| {
            s.members
                .values()
                .any(|m| m.id != id && !addr_is_loopback(&m.addr))
        })
    }

    /// Tells the cluster this member is at its configured addresses now (through the leader;
    /// once committed, peers use them).
    pub async fn announce_address(&self) -> Result<(), Error> {
        let (id, addr, join_addr) = (
            self.id(),
            self.cfg().rpc_addr.to_string(),
            self.cfg().join_addr.to_string(),
        );
        if self.is_leader() {
            // The leader itself moved: raft's record of it names the old address, so asking
            // "the leader" over the network would go there.
            return self
                .set_addr(Some(id), id, addr, join_addr)
                .await
                .map_err(Error::Rejected);
        }
        match self
            .to_leader(|| PeerRequest::SetAddr {
                id,
                addr: addr.clone(),
                join_addr: join_addr.clone(),
            })
            .await?
        {
            PeerResponse::Done(r) => r.map_err(Error::Rejected),
            other => Err(Error::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Announces in the background until the cluster has this member's addresses (a reopened
    /// member whose address changed: it may take an election before a leader answers).
    pub(crate) fn spawn_announce(self: &std::sync::Arc<Self>) {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(node) = weak.upgrade() else { return };
                if node.is_stopped() {
                    return;
                }
                // Until a leader is known the applied state may still be catching up.
                if !node.address_is_stale() {
                    if node.leader().is_some() {
                        return;
                    }
                    drop(node);
                    tokio::time::sleep(ANNOUNCE_RETRY).await;
                    continue;
                }
                if node.cfg().rpc_addr.ip().is_loopback() && node.has_remote_members() {
                    // The leader refuses it too; saying so once is enough.
                    tracing::error!(
                        addr = %node.cfg().rpc_addr,
                        "not announcing a loopback cluster address to members on other hosts"
                    );
                    return;
                }
                match node.announce_address().await {
                    Ok(()) => {
                        tracing::info!(addr = %node.cfg().rpc_addr, "announced this member's new address");
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "announcing the new address; retrying");
                        // No leader took it: maybe none can be elected while the others
                        // look for this member at its old address. Tell each of them.
                        node.announce_to_every_member().await;
                    }
                }
                drop(node);
                tokio::time::sleep(ANNOUNCE_RETRY).await;
            }
        });
    }

    /// The address raft's membership names for member `id` (how peers reach it).
    fn raft_addr(&self, id: NodeId) -> Option<String> {
        self.raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// The admin says member `id` is at `addr` now (`cairn cluster locate`): for when every
    /// member's address changed at once (a site renumbered, new DHCP leases after a power
    /// cut), so no member can reach another to announce its own. Checked first: `id` must
    /// answer a ping there, and the mutual-TLS handshake makes sure whoever answers holds
    /// member `id`'s certificate, so a wrong address is refused and never used. Then this
    /// member calls `id` there until raft names an address for it again (as for a member that
    /// announced itself, [`crate::network::PeerClients::note_moved`]), and, if its own address
    /// changed too, announces it to every member it can reach. Once enough members reach each
    /// other to elect a leader, every moved member's announce commits and the others follow.
    /// In memory only: a restart forgets it (the committed address is kept by then).
    /// Errors: `Config` for bad input, `Rejected` when the member does not answer there.
    pub async fn locate_member(
        self: &std::sync::Arc<Self>,
        id: NodeId,
        addr: &str,
    ) -> Result<(), Error> {
        if id == self.id() {
            return Err(Error::Config(
                "that is this member: its address is the one it listens on (cairn node \
                 --cluster-listen)"
                    .into(),
            ));
        }
        let sock: SocketAddr = addr
            .parse()
            .map_err(|_| Error::Config(format!("address {addr:?} is not ip:port")))?;
        if sock.ip().is_unspecified() || sock.port() == 0 {
            return Err(Error::Config(format!(
                "address {addr} is not one a member listens on (a host address and a port)"
            )));
        }
        let addr = sock.to_string();
        self.reach_at(id, &addr).await?;
        if self.address_is_stale() {
            self.announce_to_every_member().await;
        }
        // The leader must reach it too (its appends bring the member the others' new
        // addresses, and take its announce): tell it, in the background until raft names
        // the address.
        if !self.is_leader() {
            self.spawn_tell_leader(id, addr);
        }
        Ok(())
    }

    /// Checks that member `id` answers at `addr` (mutual TLS: whoever answers holds `id`'s
    /// certificate) and calls it there until raft names an address for it again.
    async fn reach_at(&self, id: NodeId, addr: &str) -> Result<(), Error> {
        let known = self
            .raft_addr(id)
            .ok_or_else(|| Error::Config(format!("member {id} is not in this member's view")))?;
        match self.forward(id, addr, PeerRequest::Ping, LOCATE_WAIT).await {
            Ok(PeerResponse::Pong { .. }) => {}
            Ok(other) => {
                return Err(Error::Raft(format!(
                    "member {id} at {addr} answered a ping with {other:?}"
                )))
            }
            Err(e) => {
                return Err(Error::Rejected(format!(
                    "member {id} did not answer at {addr} (it must run there and hold member \
                     {id}'s certificate of this cluster): {e}"
                )))
            }
        }
        tracing::info!(member = id, old = %known, new = %addr, "told where a member is now; calling it there");
        self.clients.note_moved(id, known, addr.to_string());
        Ok(())
    }

    /// Passes a located member's address on to the leader ([`PeerRequest::Located`]) until
    /// raft names that address for it (the leader keeps the hint in memory only, so a new
    /// leader is told again, and the same one every [`RETELL_AFTER`]), for at most
    /// [`TELL_LEADER_FOR`]; done early once this member leads. One task per located member:
    /// locating it again only changes the address the running task passes on.
    fn spawn_tell_leader(self: &std::sync::Arc<Self>, id: NodeId, addr: String) {
        {
            let mut telling = self.telling.lock().unwrap_or_else(|e| e.into_inner());
            let running = telling.contains_key(&id);
            telling.insert(id, addr);
            if running {
                return;
            }
        }
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let until = std::time::Instant::now() + TELL_LEADER_FOR;
            // (leader, address, when): told again on a new leader, a new address, or after
            // RETELL_AFTER (the leader may have restarted and forgotten).
            let mut told: Option<(NodeId, String, std::time::Instant)> = None;
            loop {
                let Some(me) = weak.upgrade() else { return };
                let addr = {
                    let mut telling = me.telling.lock().unwrap_or_else(|e| e.into_inner());
                    let addr = telling.get(&id).cloned().filter(|a| {
                        !me.is_stopped()
                            && std::time::Instant::now() < until
                            && !me.is_leader()
                            && me.raft_addr(id).as_deref() != Some(a.as_str())
                    });
                    if addr.is_none() {
                        telling.remove(&id);
                    }
                    addr
                };
                let Some(addr) = addr else { return };
                let leader = me.leader().and_then(|l| me.raft_addr(l).map(|a| (l, a)));
                if let Some((lid, at)) = leader {
                    let fresh = told.as_ref().is_some_and(|(l, a, at)| {
                        *l == lid && *a == addr && at.elapsed() < RETELL_AFTER
                    });
                    if !fresh {
                        let req = PeerRequest::Located {
                            id,
                            addr: addr.clone(),
                        };
                        match me.forward(lid, &at, req, LOCATE_WAIT).await {
                            Ok(PeerResponse::Done(Ok(()))) => {
                                tracing::info!(
                                    member = id,
                                    leader = lid,
                                    "told the leader where the member is"
                                );
                                told = Some((lid, addr, std::time::Instant::now()));
                            }
                            Ok(other) => {
                                tracing::debug!(member = id, leader = lid, reply = ?other, "leader did not take the hint yet")
                            }
                            Err(e) => {
                                tracing::debug!(member = id, leader = lid, error = %e, "leader did not take the hint yet")
                            }
                        }
                    }
                }
                drop(me);
                tokio::time::sleep(ANNOUNCE_RETRY).await;
            }
        });
    }

    /// Leader side of [`PeerRequest::Located`] from member `peer`: reaches member `id` at
    /// `addr` as the member that was told does (checked the same way, so a wrong hint is never
    /// used).
    pub(crate) async fn located_by_member(
        &self,
        peer: Option<NodeId>,
        id: NodeId,
        addr: String,
    ) -> Result<(), String> {
        if peer.is_none() {
            return Err("members only".into());
        }
        if !self.is_leader() {
            return Err("not the leader; send it to the leader".into());
        }
        if id == self.id() {
            return Ok(());
        }
        let sock: SocketAddr = addr
            .parse()
            .map_err(|_| format!("address {addr:?} is not ip:port"))?;
        self.reach_at(id, &sock.to_string())
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends this member's addresses to every other member (not only a leader): one that
    /// is not the leader answers no, but calls this member at its new address from then on
    /// (`PeerClients::note_moved`), so it can win an election and commit the announce.
    async fn announce_to_every_member(&self) {
        let me = self.id();
        let (addr, join_addr) = (
            self.cfg().rpc_addr.to_string(),
            self.cfg().join_addr.to_string(),
        );
        let others: Vec<(NodeId, String)> = self
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let calls = others.into_iter().map(|(id, at)| {
            let req = PeerRequest::SetAddr {
                id: me,
                addr: addr.clone(),
                join_addr: join_addr.clone(),
            };
            async move { self.forward(id, &at, req, ANNOUNCE_RETRY).await }
        });
        // Answers do not matter: a leader among them commits it, the others only note it.
        let _ = futures::future::join_all(calls).await;
    }

    /// Leader side of an announce from member `peer` (others forward to the leader).
    pub(crate) async fn set_addr(
        &self,
        peer: Option<NodeId>,
        id: NodeId,
        addr: String,
        join_addr: String,
    ) -> Result<(), String> {
        if peer != Some(id) {
            return Err(format!(
                "only member {id} itself may announce its address (asked by {peer:?})"
            ));
        }
        for a in [&addr, &join_addr] {
            a.parse::<SocketAddr>()
                .map_err(|_| format!("address {a:?} is not ip:port"))?;
        }
        if addr_is_loopback(&addr) && self.others_remote(id) {
            return Err(format!(
                "member {id} cannot move to the loopback address {addr}: members on other hosts \
                 could never reach it"
            ));
        }
        let known = self.raft_addr(id);
        if !self.is_leader() {
            // Reach it there until a leader commits the address (see `note_moved`).
            if let Some(old) = known {
                self.clients.note_moved(id, old, addr);
            }
            return Err("not the leader; send it to the leader".into());
        }
        let role = self
            .read(|s| s.members.get(&id).map(|m| m.role))
            .ok_or_else(|| format!("no member {id}"))?;
        if known.is_some() {
            // Only the node entry changes (same voters): raft reaches it at the new address.
            self.raft()
                .change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(
                        id,
                        CairnNode {
                            addr: addr.clone(),
                            role,
                        },
                    )])),
                    false,
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        match self
            .propose_local(Command::SetMemberAddr {
                id,
                addr,
                join_addr,
            })
            .await
            .map_err(|e| format!("{e:?}"))?
        {
            CommandResult::Ok => Ok(()),
            CommandResult::Rejected(m) => Err(m),
            other => Err(format!("{other:?}")),
        }
    }
}

/// Whether `addr` (ip:port as the state keeps it) is on loopback; an unparsable one is not.
fn addr_is_loopback(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false)
}
