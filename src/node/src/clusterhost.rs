//! The node's cluster member: a `cluster::ClusterNode` created on first start (a cluster of
//! one), reopened on every later start, and replaced by membership in another cluster on
//! `cluster join`. Also the bridge from control requests (status, token, join, remove) and
//! (in `records`) from object definitions (virtual disks, snapshots, VMs) to raft.
//!
//! On disk: `DATA/cluster.json` (this node's cluster address, fixed once chosen); the member's
//! identity, raft log and snapshot on its [`cluster::RaftMedia`]: the pool's raft vdisk
//! (`raftdisk`) on a data node with disks, else files under `DATA/cluster/`.
//! Must never: join another cluster while this node holds objects or other members, or leave
//! the node without a working member when a join fails.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterNode, JoinToken, MemberState, NodeHealth, RaftTimings, Role};
use control::{
    ClusterDataView, ClusterMemberView, ClusterTokenView, ClusterView, ControlError, ErrorCode,
};
use serde::{Deserialize, Serialize};

use crate::error::{NodeError, Result};

mod readdress;
mod records;
pub(crate) use records::{CREATING_DIR, DELETING_DIR};

/// How long `cluster join` waits for the cluster address to be reachable before giving up
/// (and changing nothing).
const REACH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stopped member's listeners may take to let go of their ports.
const PORT_FREE_WAIT: Duration = Duration::from_secs(5);

/// `DATA/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Addrs {
    /// Member RPC (mutual TLS); the join endpoint listens on the next port.
    address: SocketAddr,
}

/// A node's join endpoint: the port after its cluster address.
pub fn join_addr_of(address: SocketAddr) -> Option<SocketAddr> {
    let port = address.port().checked_add(1)?;
    Some(SocketAddr::new(address.ip(), port))
}

fn ports_free(a: SocketAddr) -> bool {
    let Some(j) = join_addr_of(a) else {
        return false;
    };
    TcpListener::bind(a).is_ok() && TcpListener::bind(j).is_ok()
}

/// A free address pair on loopback, for a node started without `--cluster-listen`.
fn pick_loopback() -> Result<SocketAddr> {
    for _ in 0..64 {
        let l = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| NodeError::io("pick a cluster port", "127.0.0.1:0", e))?;
        let a = l
            .local_addr()
            .map_err(|e| NodeError::io("pick a cluster port", "127.0.0.1:0", e))?;
        drop(l);
        if ports_free(a) {
            return Ok(a);
        }
    }
    Err(NodeError::Config(
        "no two consecutive free ports on 127.0.0.1; pass --cluster-listen".into(),
    ))
}

/// The cluster address: the one recorded at an earlier start, else `flag`, else a free
/// loopback pair; with the one it moved from when `flag` differs from the recorded one (the
/// member then reopens on `flag` and announces it: `readdress`).
fn addresses(data: &Path, flag: Option<SocketAddr>) -> Result<(SocketAddr, Option<SocketAddr>)> {
    let path = data.join("cluster.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let a: Addrs = serde_json::from_slice(&bytes)
                .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?;
            match flag {
                Some(f) if f != a.address => {
                    // Whether the cluster is elsewhere is known once the member is open.
                    crate::config::check_cluster_readdress(a.address, f, false)
                        .map_err(NodeError::Config)?;
                    save_address(data, f)?;
                    Ok((f, Some(a.address)))
                }
                _ => Ok((a.address, None)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let address = match flag {
                Some(f) => f,
                None => pick_loopback()?,
            };
            if join_addr_of(address).is_none() {
                return Err(NodeError::Config(format!(
                    "cluster address {address}: the join endpoint needs the next port free"
                )));
            }
            save_address(data, address)?;
            Ok((address, None))
        }
        Err(e) => Err(NodeError::io("read", &path, e)),
    }
}

/// Writes `DATA/cluster.json` (whole, through a rename).
fn save_address(data: &Path, address: SocketAddr) -> Result<()> {
    let path = data.join("cluster.json");
    let bytes =
        serde_json::to_vec(&Addrs { address }).map_err(|e| NodeError::Config(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| NodeError::io("write", &path, e))
}

/// Map a cluster error to what a front end shows.
pub(crate) fn cluster_error(e: cluster::Error) -> ControlError {
    use cluster::Error as E;
    match e {
        E::Rejected(m) => ControlError::conflict(m),
        E::BadToken(m) => ControlError::invalid(format!("invalid join token: {m}")),
        E::Config(m) => ControlError::invalid(m),
        e @ (E::NoLeader | E::Indeterminate(_) | E::Transport(_) | E::Raft(_)) => {
            ControlError::new(
                ErrorCode::Unavailable,
                format!("the cluster did not confirm this (is a majority of members up?): {e}"),
            )
        }
        e => ControlError::internal(e.to_string()),
    }
}

/// The id of member `node` (its id or name) in `m`'s view.
fn member_named(m: &cluster::ClusterNode, node: &str) -> std::result::Result<u64, ControlError> {
    m.read(|s| {
        s.members
            .values()
            .find(|x| x.name == node || x.id.to_string() == node)
            .map(|x| x.id)
    })
    .ok_or_else(|| {
        ControlError::not_found(format!(
            "no member {node:?} in this cluster (see `cairn cluster status`)"
        ))
    })
}

fn not_in_cluster() -> ControlError {
    ControlError::new(
        ErrorCode::Unavailable,
        "this node is not a member of a cluster yet (a witness waits for `cairn cluster join`)",
    )
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Data => "data",
        Role::Witness => "witness",
    }
}

/// The node's seat in the cluster.
pub(crate) struct ClusterHost {
    dir: PathBuf,
    /// Changes only under `join_lock` (`readdress`).
    address: parking_lot::Mutex<SocketAddr>,
    /// The address the last start moved this node from (checked once the member is open).
    moved_from: parking_lot::Mutex<Option<SocketAddr>>,
    name: String,
    role: Role,
    member: parking_lot::Mutex<Option<Arc<ClusterNode>>>,
    /// Where the member's state lives (None: files under `dir`); set before the member opens.
    media: parking_lot::Mutex<Option<Arc<dyn cluster::RaftMedia>>>,
    /// Held across a join, so no two joins (or a join and a shutdown) interleave.
    join_lock: tokio::sync::Mutex<()>,
    /// Held from a virtual disk's reservation to the engine's create (and across a delete), so
    /// a reservation this node is still acting on is never mistaken for a stale one.
    pub(crate) vdisk_lock: tokio::sync::Mutex<()>,
    /// This node's own drain, as it last counted it (`clusterctl::drainprogress`).
    pub(crate) drain: crate::clusterctl::DrainTrack,
    /// Planned moves whose outcome is not known yet (`crate::takeover::settles`).
    pub(crate) settles: crate::takeover::settles::Settles,
}

impl ClusterHost {
    /// Opens (or, for a data node's first start, creates) this node's cluster member. A
    /// witness starts without one until it joins.
    pub(crate) async fn start(
        data: &Path,
        name: &str,
        flag: Option<SocketAddr>,
        role: Role,
        create: bool,
    ) -> Result<ClusterHost> {
        let host = ClusterHost::new(data, name, flag, role)?;
        host.open_member(create, None).await?;
        Ok(host)
    }

    /// The host without a member yet ([`ClusterHost::open_member`] opens it).
    pub(crate) fn new(
        data: &Path,
        name: &str,
        flag: Option<SocketAddr>,
        role: Role,
    ) -> Result<ClusterHost> {
        let (address, moved_from) = addresses(data, flag)?;
        Ok(ClusterHost {
            dir: data.join("cluster"),
            address: parking_lot::Mutex::new(address),
            moved_from: parking_lot::Mutex::new(moved_from),
            name: name.to_string(),
            role,
            member: parking_lot::Mutex::new(None),
            media: parking_lot::Mutex::new(None),
            join_lock: tokio::sync::Mutex::new(()),
            vdisk_lock: tokio::sync::Mutex::new(()),
            drain: crate::clusterctl::DrainTrack::persisted(
                data.join("drain-progress.json"),
                std::time::Instant::now(),
            ),
            settles: crate::takeover::settles::Settles::open(data),
        })
    }

    /// Opens this node's member on `media` (None: files under `DATA/cluster`), creating a
    /// one-member cluster if it has none and `create` is set.
    pub(crate) async fn open_member(
        &self,
        create: bool,
        media: Option<Arc<dyn cluster::RaftMedia>>,
    ) -> Result<()> {
        let address = self.address();
        *self.media.lock() = media;
        let cfg = self.node_cfg()?;
        let has = cfg
            .has_member()
            .map_err(|e| NodeError::Config(format!("cluster member state: {e}")))?;
        let member = if has {
            Some(ClusterNode::open(cfg).await)
        } else if self.role == Role::Data && create {
            Some(ClusterNode::create_with_lease(cfg, crate::lease::creation_length_ms()).await)
        } else {
            None
        };
        if let Some(m) = member {
            let m = m.map_err(|e| NodeError::Config(format!("cluster member: {e}")))?;
            tracing::info!(id = m.id(), %address, cluster = m.cluster_id(), "cluster member running");
            let moved_from = self.moved_from.lock().take();
            if let Some(old) = moved_from {
                self.check_moved(&m, old, address).await?;
            }
            *self.member.lock() = Some(m);
        }
        Ok(())
    }

    fn node_cfg(&self) -> Result<cluster::NodeConfig> {
        Ok(cluster::NodeConfig {
            data_dir: self.dir.clone(),
            name: self.name.clone(),
            rpc_addr: self.address(),
            join_addr: join_addr_of(self.address())
                .ok_or_else(|| NodeError::Config("cluster port out of range".into()))?,
            timings: RaftTimings::default(),
            media: self.media.lock().clone(),
        })
    }

    pub(crate) fn address(&self) -> SocketAddr {
        *self.address.lock()
    }

    pub(crate) fn member(&self) -> std::result::Result<Arc<ClusterNode>, ControlError> {
        self.member.lock().clone().ok_or_else(not_in_cluster)
    }

    /// This node's member id (None for a witness that has not joined).
    pub(crate) fn member_id(&self) -> Option<u64> {
        self.member.lock().as_ref().map(|m| m.id())
    }

    pub(crate) fn status(
        &self,
        data: ClusterDataView,
    ) -> std::result::Result<ClusterView, ControlError> {
        let m = self.member()?;
        let st = m.status();
        let metrics = m.raft().metrics().borrow().clone();
        let (vdisks, snapshots, vms) = m.read(|s| {
            (
                s.vdisks.values().map(|v| v.name.clone()).collect(),
                s.snapshots.len(),
                s.vms.values().map(|v| v.name.clone()).collect(),
            )
        });
        let voters = st.members.iter().filter(|x| x.voter).count();
        let data_members = st.members.iter().filter(|x| x.role == Role::Data).count();
        // What the lease rule says of each member (`crate::lease::needs_lease`).
        let lease_rule = |x: &cluster::MemberStatus| {
            let needs = crate::lease::needs_lease(
                x.role == Role::Data,
                data_members.saturating_sub(1),
                voters,
                voters - usize::from(x.voter),
            );
            if needs { "needed" } else { "not_needed" }.to_string()
        };
        Ok(ClusterView {
            cluster_id: st.cluster_id,
            me: st.me,
            leader: st.leader,
            term: st.term,
            commit_index: metrics.last_applied.map(|l| l.index),
            last_log_index: metrics.last_log_index,
            campaigns: Some(st.may_campaign),
            placement_version: st.placement_version,
            members: st
                .members
                .into_iter()
                .map(|x| ClusterMemberView {
                    lease: Some(lease_rule(&x)),
                    stats: None,
                    id: x.id,
                    name: x.name,
                    address: x.addr,
                    role: role_name(x.role).into(),
                    state: match x.state {
                        MemberState::Joining => "joining",
                        MemberState::Active => "active",
                        MemberState::Draining => "draining",
                    }
                    .into(),
                    voter: x.voter,
                    leader: st.leader == Some(x.id),
                    health: match x.health {
                        NodeHealth::Up => "up",
                        NodeHealth::Down => "down",
                        NodeHealth::Unknown => "unknown",
                    }
                    .into(),
                    last_seen_ms_ago: x.last_seen_ms_ago,
                })
                .collect(),
            vdisks,
            snapshots,
            vms,
            data,
            lease: None,
        })
    }

    pub(crate) async fn token(
        &self,
        witness: bool,
        ttl_secs: Option<u64>,
    ) -> std::result::Result<ClusterTokenView, ControlError> {
        let m = self.member()?;
        let ttl = ttl_secs.unwrap_or(control::DEFAULT_TOKEN_TTL_SECS);
        let role = if witness { Role::Witness } else { Role::Data };
        let token = m
            .issue_join_token(role, Duration::from_secs(ttl))
            .await
            .map_err(cluster_error)?;
        Ok(ClusterTokenView {
            token,
            role: role_name(role).into(),
            expires_in_secs: ttl,
            address: self.address().to_string(),
        })
    }

    /// Removes a member named by id or name. Refused while the member still owns virtual
    /// disks or VMs (they would stay behind, owned by nobody), or while a planned move from or
    /// to a data member is not settled on some member (`crate::takeover::settles`), unless
    /// `force` (a dead node being replaced: its definitions are kept in the cluster state).
    pub(crate) async fn remove(
        &self,
        node: &str,
        force: bool,
    ) -> std::result::Result<(), ControlError> {
        let m = self.member()?;
        let id = member_named(&m, node)?;
        if !force {
            // Unsettled (and in-flight) planned moves are asked before the last look at what
            // the member owns, not after: a move to it that commits after this ask was
            // registered after it, so it saw the member draining and was refused
            // (`crate::takeover::settles::InFlight`); one that committed before is seen below.
            // Fresh: the drain was committed through the leader a moment ago.
            let (name, role, state) = m
                .read_fresh(|s| {
                    s.members
                        .get(&id)
                        .map(|x| (x.name.clone(), x.role, x.state))
                })
                .await
                .map_err(cluster_error)?
                .ok_or_else(|| {
                    ControlError::not_found(format!(
                        "member {node:?} is no longer in this cluster (see `cairn cluster status`)"
                    ))
                })?;
            if role == cluster::Role::Data && state != cluster::MemberState::Draining {
                // Only a data node drains (a witness has no engine): its chunks' copies on the
                // member would go with it.
                return Err(ControlError::conflict(format!(
                    "member {name} is a data member and is not drained: ask a data node to remove \
                     it (it moves the member's data away first), or pass --force if the node is \
                     dead and being replaced"
                )));
            }
            if role == cluster::Role::Data {
                crate::takeover::settles::refuse_removal_while_unsettled(
                    &self.settles,
                    &m,
                    id,
                    &name,
                    crate::takeover::settles::RemovalStep::Leaving,
                )
                .await?;
            }
            let (name, vdisks, vms) = m
                .read_fresh(|s| owned_by(s, id))
                .await
                .map_err(cluster_error)?;
            if !vdisks.is_empty() || !vms.is_empty() {
                return Err(ControlError::conflict(format!(
                    "member {name} still owns virtual disks [{}] and VMs [{}]: delete them (or \
                     move them to another node) first, or pass --force if the node is dead and \
                     being replaced",
                    vdisks.join(", "),
                    vms.join(", ")
                )));
            }
        }
        m.remove_member(id).await.map_err(cluster_error)
    }

    /// `cluster locate NODE ADDRESS`: member `node` (id or name) is at cluster address
    /// `address` now (see `cluster::ClusterNode::locate_member`).
    pub(crate) async fn locate(
        &self,
        node: &str,
        address: &str,
    ) -> std::result::Result<(), ControlError> {
        let m = self.member()?;
        let id = member_named(&m, node)?;
        m.locate_member(id, address).await.map_err(|e| match e {
            cluster::Error::Config(m) => ControlError::invalid(m),
            cluster::Error::Rejected(m) => ControlError::new(ErrorCode::Unavailable, m),
            e => ControlError::new(ErrorCode::Unavailable, e.to_string()),
        })
    }

    /// Joins the cluster of the member at `address` with `token`. `local_objects` is how many
    /// virtual disks and VMs this node holds outside the cluster state; only a fresh node
    /// (nothing defined, no other members) may join. On failure the node keeps its own
    /// cluster as before.
    pub(crate) async fn join(
        &self,
        address: SocketAddr,
        token: &str,
        local_objects: usize,
    ) -> std::result::Result<(), ControlError> {
        let _g = self.join_lock.lock().await;
        JoinToken::parse(token).map_err(|e| {
            ControlError::invalid(format!("{e} (get one with `cairn cluster token`)"))
        })?;
        let join_addr = join_addr_of(address)
            .ok_or_else(|| ControlError::invalid("cluster address port out of range"))?;
        if address == self.address() {
            return Err(ControlError::invalid(
                "that is this node's own cluster address; give the address of a member of the cluster to join",
            ));
        }
        let current = self.member.lock().clone();
        if let Some(m) = &current {
            let (members, objects) = m.read(|s| {
                (
                    s.members.len(),
                    s.vdisks.len() + s.snapshots.len() + s.vms.len(),
                )
            });
            if members > 1 {
                return Err(ControlError::conflict(format!(
                    "this node is already member {} of cluster {} ({members} members); remove it there first: cairn cluster remove {}",
                    m.id(),
                    m.cluster_id(),
                    m.id()
                )));
            }
            if objects > 0 || local_objects > 0 {
                return Err(ControlError::conflict(
                    "only a fresh node can join a cluster: this one already holds virtual disks, snapshots or VMs",
                ));
            }
        }
        // Reachability first: an unreachable address must leave this node as it was.
        match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(join_addr)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(ControlError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "cannot reach a cluster member at {address} (join port {join_addr}): {e}"
                    ),
                ))
            }
            Err(_) => {
                return Err(ControlError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "no answer from a cluster member at {address} within {REACH_TIMEOUT:?}"
                    ),
                ))
            }
        }
        let media = self
            .node_cfg()
            .map_err(|e| ControlError::internal(e.to_string()))?
            .media();
        let had_member = current.is_some();
        if let Some(m) = current {
            *self.member.lock() = None;
            m.shutdown().await;
            drop(m);
            media
                .set_aside()
                .map_err(|e| ControlError::internal(format!("set the solo cluster aside: {e}")))?;
        }
        let t = std::time::Instant::now();
        while !ports_free(self.address()) && t.elapsed() < PORT_FREE_WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cfg = self
            .node_cfg()
            .map_err(|e| ControlError::internal(e.to_string()))?;
        let joined = match ClusterNode::join(cfg, token, join_addr).await {
            Ok(n) if n.role() != self.role => {
                let wrong = n.role();
                let _ = n.remove_member(n.id()).await;
                n.shutdown().await;
                Err(ControlError::invalid(format!(
                    "the token is for a {} node but this is a {} node (use `cairn cluster token{}`)",
                    role_name(wrong),
                    role_name(self.role),
                    if self.role == Role::Witness { " --witness" } else { "" }
                )))
            }
            Ok(n) => Ok(n),
            Err(e) => Err(join_error(e)),
        };
        match joined {
            Ok(n) => {
                tracing::info!(id = n.id(), cluster = n.cluster_id(), "joined the cluster");
                *self.member.lock() = Some(n);
                media.drop_aside();
                Ok(())
            }
            Err(err) => {
                tracing::warn!(error = %err.message, "join failed; keeping this node's own cluster");
                // Clears what the failed join left and brings back the solo cluster, if any.
                if let Err(e) = media.restore_aside() {
                    tracing::error!(error = %e, "could not restore the solo cluster");
                    return Err(err);
                }
                if had_member {
                    let t = std::time::Instant::now();
                    while !ports_free(self.address()) && t.elapsed() < PORT_FREE_WAIT {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    match self.node_cfg() {
                        Ok(cfg) => match ClusterNode::open(cfg).await {
                            Ok(m) => *self.member.lock() = Some(m),
                            Err(e) => {
                                tracing::error!(error = %e, "could not reopen the solo cluster")
                            }
                        },
                        Err(e) => tracing::error!(error = %e, "cluster config"),
                    }
                }
                Err(err)
            }
        }
    }

    pub(crate) async fn shutdown(&self) {
        let _g = self.join_lock.lock().await;
        let m = self.member.lock().take();
        if let Some(m) = m {
            m.shutdown().await;
        }
    }
}

/// What a failed join shows: a bad or used token is the user's input, an unreachable cluster is
/// unavailability.
fn join_error(e: cluster::Error) -> ControlError {
    let msg = e.to_string();
    match e {
        cluster::Error::BadToken(_) => ControlError::invalid(msg),
        _ if msg.contains("token") => ControlError::invalid(format!(
            "the cluster refused the join: {msg} (tokens work once and expire; get a new one with `cairn cluster token`)"
        )),
        cluster::Error::Transport(_) => ControlError::new(
            ErrorCode::Unavailable,
            format!("join failed talking to the cluster: {msg} (is the token from that cluster?)"),
        ),
        other => cluster_error(other),
    }
}

/// The member's name and the names of the virtual disks (ids `<node>/<name>`) and VMs (placed on
/// it) it owns, sorted.
pub(crate) fn owned_by(s: &cluster::ClusterState, id: u64) -> (String, Vec<String>, Vec<String>) {
    let name = s
        .members
        .get(&id)
        .map(|x| x.name.clone())
        .unwrap_or_else(|| id.to_string());
    let prefix = format!("{id}/");
    let vdisks: Vec<String> = s
        .vdisks
        .values()
        .filter(|v| v.id.starts_with(&prefix))
        .map(|v| v.name.clone())
        .collect();
    let mut vms: Vec<String> = s
        .vms
        .values()
        .filter(|v| v.node == Some(id))
        .map(|v| v.name.clone())
        .collect();
    vms.sort();
    (name, vdisks, vms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::VdiskDef;

    #[test]
    fn cluster_address_is_kept_and_moves_only_when_asked() {
        let d = tempfile::tempdir().unwrap();
        let (a, moved) = addresses(d.path(), None).unwrap();
        assert!(a.ip().is_loopback());
        assert_eq!(moved, None);
        assert_eq!(addresses(d.path(), None).unwrap(), (a, None));
        assert_eq!(addresses(d.path(), Some(a)).unwrap(), (a, None));
        // Another address: adopted (and saved), saying where from.
        let other = SocketAddr::new(a.ip(), a.port().wrapping_add(7));
        assert_eq!(addresses(d.path(), Some(other)).unwrap(), (other, Some(a)));
        assert_eq!(addresses(d.path(), None).unwrap(), (other, None));
        // One no peer can use: refused, the saved one unchanged.
        let unusable: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let err = addresses(d.path(), Some(unusable)).unwrap_err().to_string();
        assert!(err.contains("not an address other members"), "{err}");
        assert_eq!(addresses(d.path(), None).unwrap(), (other, None));
        assert!(join_addr_of("127.0.0.1:65535".parse().unwrap()).is_none());
    }

    #[test]
    fn owned_by_lists_the_members_vdisks_and_vms() {
        let mut s = cluster::ClusterState::default();
        for (id, name) in [("2/b", "b"), ("2/a", "a"), ("3/c", "c")] {
            s.vdisks.insert(
                id.into(),
                VdiskDef {
                    id: id.into(),
                    name: name.into(),
                    size_bytes: 1,
                    parent_snapshot: None,
                },
            );
        }
        s.vms.insert(
            "vm".into(),
            cluster::VmDef {
                id: "vm".into(),
                name: "web".into(),
                vcpus: 1,
                memory_mib: 64,
                vdisks: vec![],
                node: Some(2),
                power: cluster::VmPower::Stopped,
            },
        );
        let (name, vdisks, vms) = owned_by(&s, 2);
        assert_eq!(name, "2");
        assert_eq!(vdisks, vec!["a", "b"]);
        assert_eq!(vms, vec!["web"]);
        let (_, vdisks, vms) = owned_by(&s, 4);
        assert!(vdisks.is_empty() && vms.is_empty());
    }
}
