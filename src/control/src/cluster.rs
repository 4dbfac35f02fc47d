//! Cluster requests' views and checks: what `cairn cluster status` and `/api/v1/cluster` show,
//! and the validation of token, join and remove input.
//!
//! Plain data like the rest of this crate: the node fills these from its raft member and engine.
//! Must never: carry a join token anywhere but the one reply that issues it.

use serde::{Deserialize, Serialize};

use crate::error::ControlError;

/// Longest a join token may live (the cluster enforces the same bound).
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
/// Default join token lifetime.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
/// Longest join token we accept as input (real ones are ~140 characters).
pub const MAX_TOKEN_LEN: usize = 512;

/// One member of the cluster as the answering node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMemberView {
    pub id: u64,
    pub name: String,
    /// Cluster address (`ip:port`); its join endpoint is the next port.
    pub address: String,
    /// `data` or `witness`.
    pub role: String,
    /// `joining`, `active` or `draining`.
    pub state: String,
    pub voter: bool,
    pub leader: bool,
    /// `up`, `down` or `unknown` (heartbeats; see the cluster crate's health module).
    pub health: String,
    pub last_seen_ms_ago: Option<u64>,
    /// The member's isolation lease: `held`, `expired` or `not_needed` as each data member
    /// reports it (the answering node's details in [`ClusterView::lease`]); `not_needed` for a
    /// witness that answers (it has no lease); `unreachable` for any other member that does not
    /// answer in time. Every member is asked when the status is made, by a data node or a
    /// witness alike, so this also says who is reachable now (a witness lists itself
    /// `not_needed`). None from a node that does not report leases.
    #[serde(default)]
    pub lease: Option<String>,
    /// The member's own figures (capacity, disks, memory), as it reports them when the status
    /// is made; None for a member that does not answer in time, a witness, or a node that does
    /// not report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<MemberStatsView>,
}

/// A data member's own figures, for the cluster-wide node and disk lists and totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatsView {
    pub uptime_secs: u64,
    pub version: String,
    pub cpu_count: u64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    /// The member's own disks (not the other members' disks its pool also uses), and their
    /// sizes and used bytes summed: every node's chunks stored on them count.
    pub disks: Vec<crate::DiskView>,
    pub raw_bytes: u64,
    pub used_raw_bytes: u64,
    /// Virtual disks this member serves (its own, not the node's internal ones).
    pub vdisks: u64,
    /// Its virtual disks' I/O since it started, for cluster-wide rates (the asker divides the
    /// change between two answers by the time between them). Zero from older nodes.
    #[serde(default)]
    pub io: MemberIoView,
}

/// Counters of a member's virtual disk I/O since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIoView {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// The answering node's isolation lease (a data node cut off from the majority stops serving
/// when it runs out), and the virtual disks a takeover moved here that wait for the old
/// owner's lease to run out before they are served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// `held`, `expired` (or never obtained since the start) or `not_needed`.
    pub state: String,
    /// Time left on a held lease.
    pub remaining_ms: Option<u64>,
    /// The lease length L, one value for the whole cluster.
    pub length_ms: u64,
    /// Why the lease is not held (empty when it is, or none is needed).
    #[serde(default)]
    pub problem: String,
    #[serde(default)]
    pub awaiting_adoption: Vec<AdoptionView>,
}

/// A virtual disk assigned to this node by a takeover, not served before `held_until_unix_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptionView {
    pub vdisk: String,
    /// Its cluster id (`<owner>/<name>`: after a takeover, the new owner's).
    pub id: String,
    /// Time left of the hold (0: passed; adoption runs or waits for something else).
    pub held_for_ms: u64,
    /// When the hold ends (wall clock, milliseconds since the Unix epoch).
    pub held_until_unix_ms: u64,
}

/// Data redundancy as this node's engine reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDataView {
    /// Chunks with fewer replicas than they should have.
    pub degraded_chunks: u64,
    /// Whether a rebuild / rebalance is running.
    pub rebuilding: bool,
    /// This node's replicas on other nodes' disks (mirrored I/O; empty on a single node).
    #[serde(default)]
    pub remote_replicas: Vec<RemoteReplicaView>,
    /// Chunks whose replica on another node is stale (written while that node was away) and
    /// waits for a resync.
    #[serde(default)]
    pub stale_chunks: u64,
    /// Chunks of other nodes' virtual disks that this node's disks hold.
    #[serde(default)]
    pub hosted_chunks: u64,
    /// The fencing epoch this node writes its virtual disks with (0: not mirroring).
    #[serde(default)]
    pub write_epoch: u64,
    /// Where this node serves its disks to peers (None: not mirroring).
    #[serde(default)]
    pub mirror_listen: Option<String>,
    /// The current (or last) rebuild of this node's engine: progress, rate, time left.
    #[serde(default)]
    pub rebuild: RebuildView,
    /// Members being drained before their removal, with what still depends on them here.
    #[serde(default)]
    pub draining: Vec<DrainView>,
}

/// Rebuild / rebalance progress (re-mirroring degraded chunks, draining, spreading data onto
/// new disks) as this node's engine reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildView {
    pub running: bool,
    /// Chunks the current (or last) pass moves, and those moved so far.
    pub chunks_total: u64,
    pub chunks_done: u64,
    /// chunks_done / chunks_total in percent (100 when there was nothing to do).
    pub percent: u32,
    pub bytes_done: u64,
    /// Bytes copied per second in this pass so far.
    pub rate_bytes_per_sec: u64,
    /// Seconds left at that rate; None while idle or before the first chunk is done.
    pub eta_secs: Option<u64>,
    /// The rebuild speed ceiling in force (bytes/s; 0 = none: an idle node rebuilds at device
    /// speed) and whether guest I/O is active (the lower, busy ceiling applies).
    pub ceiling_bytes_per_sec: u64,
    pub guest_busy: bool,
}

impl RebuildView {
    /// `done` of `total` in percent, rounded down (100 for an empty total).
    pub fn percent_of(done: u64, total: u64) -> u32 {
        (done.min(total) * 100)
            .checked_div(total)
            .map_or(100, |p| p as u32)
    }
}

/// A member being drained before removal (`cairn cluster remove`), as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainView {
    pub node: u64,
    pub name: String,
    /// Chunks of this node's virtual disks that still have a replica on the member's disks.
    pub chunks_left: u64,
    /// When the answering node is the member itself: copies of other nodes' chunks it still
    /// holds.
    pub hosted_chunks_left: u64,
    /// The whole drain as the member itself reports it (asked when the status is made, so
    /// every member's answer shows every draining member's progress); None when it does not
    /// answer in time (or does not report it).
    #[serde(default)]
    pub progress: Option<DrainProgressView>,
}

/// A draining member's own account of its drain: the chunk copies of every node still on its
/// disks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainProgressView {
    pub chunks_left: u64,
    /// The most chunks it held since it first looked at its drain (the drain's size, as far
    /// as it saw it).
    pub chunks_at_start: u64,
    /// Moved of `chunks_at_start`, in percent.
    pub percent: u32,
    /// Seconds left at the rate seen since then; None before the first chunk moved.
    pub eta_secs: Option<u64>,
}

/// One disk of another node that holds replicas of this node's virtual disks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteReplicaView {
    pub disk: String,
    /// The member id of the node the disk is on.
    pub node: u64,
    /// `active`, `draining` or `failed` (given up after the grace period).
    pub state: String,
    /// `up`, `away` (unreachable: writes continue on this node, changes are tracked) or
    /// `resyncing` (back; the chunks written meanwhile are being copied).
    pub reachability: String,
    pub away_secs: u64,
    /// Chunks waiting for a resync.
    pub dirty_chunks: u64,
    /// Chunks copied by resyncs since this node started.
    pub resynced_chunks: u64,
    /// Times the node came back and was resynced.
    pub resyncs: u64,
    /// Not reached since this node started (its member was down then): listed from the pool's
    /// record, not attached, so no give-up clock runs for it; when its member answers, every
    /// copy on it is checked and caught up.
    #[serde(default)]
    pub since_start: bool,
}

/// The answer to `cluster_status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster_id: String,
    /// The answering node's member id.
    pub me: u64,
    pub leader: Option<u64>,
    pub term: u64,
    /// Highest log index this node knows committed (and has applied).
    pub commit_index: Option<u64>,
    /// Highest log index this node holds (may be ahead of `commit_index`).
    pub last_log_index: Option<u64>,
    pub placement_version: u64,
    pub members: Vec<ClusterMemberView>,
    /// Objects recorded in the replicated state (every member sees the same).
    pub vdisks: Vec<String>,
    pub snapshots: usize,
    pub vms: Vec<String>,
    pub data: ClusterDataView,
    /// The answering node's isolation lease (None: a witness, or a node that does not report
    /// it).
    #[serde(default)]
    pub lease: Option<LeaseView>,
    /// Whether the answering node may start a raft election: false while it reaches too few
    /// voters to win one (it then waits for more to answer instead of raising its term). None
    /// from a node that does not report it.
    #[serde(default)]
    pub campaigns: Option<bool>,
}

/// Something a node did by itself, without a request (a takeover, an HA restart of a VM), for
/// the API's event list and audit log ([`crate::Controller::take_node_events`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// Increasing per node start.
    pub id: u64,
    pub time_unix: u64,
    /// `info`, `warning` or `error`.
    pub severity: String,
    /// `vdisk_takeover`, `vdisk_adopt`, `vm_takeover`, `vm_ha_restart`, `vm_moved_away`, ...
    pub action: String,
    /// The virtual disk, VM or member acted on.
    pub target: String,
    pub message: String,
}

/// The answer to `cluster_token`: a one-time secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTokenView {
    pub token: String,
    /// `data` or `witness`: what the joining node becomes.
    pub role: String,
    pub expires_in_secs: u64,
    /// This node's cluster address, for `cairn cluster join --address`.
    pub address: String,
}

pub(crate) fn validate_token_ttl(ttl_secs: Option<u64>) -> Result<(), ControlError> {
    match ttl_secs {
        Some(t) if t == 0 || t > MAX_TOKEN_TTL_SECS => Err(ControlError::invalid(format!(
            "token lifetime must be 1..={MAX_TOKEN_TTL_SECS} seconds"
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn validate_address(address: &str) -> Result<(), ControlError> {
    crate::parse::parse_socket_addr(address).ok_or_else(|| {
        ControlError::invalid(format!(
            "cluster address {address:?} is not ip:port (examples: 127.0.0.2:7440, [fd00::2]:7440)"
        ))
    })?;
    Ok(())
}

pub(crate) fn validate_join(address: &str, token: &str) -> Result<(), ControlError> {
    validate_address(address)?;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !token.is_ascii() {
        return Err(ControlError::invalid(
            "join token is empty, too long or not ASCII (get one with `cairn cluster token`)",
        ));
    }
    Ok(())
}

pub(crate) fn validate_member(node: &str) -> Result<(), ControlError> {
    if node.is_empty() || node.chars().count() > 256 {
        return Err(ControlError::invalid(
            "member must be a node id or name (see `cairn cluster status`)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_input_checks() {
        assert!(validate_token_ttl(None).is_ok());
        assert!(validate_token_ttl(Some(60)).is_ok());
        assert!(validate_token_ttl(Some(0)).is_err());
        assert!(validate_token_ttl(Some(MAX_TOKEN_TTL_SECS + 1)).is_err());
        assert!(validate_join("127.0.0.1:7440", "cairn1.aa.bb").is_ok());
        assert!(validate_join("localhost", "cairn1.aa.bb").is_err());
        assert!(validate_join("127.0.0.1:7440", "").is_err());
        assert!(validate_join("127.0.0.1:7440", &"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert!(validate_member("").is_err());
        assert!(validate_member("2").is_ok());
    }

    /// Views from nodes without the rebuild fields still parse (the UI and older nodes).
    #[test]
    fn data_view_without_rebuild_fields_parses() {
        let v: ClusterDataView =
            serde_json::from_str(r#"{"degraded_chunks":3,"rebuilding":true}"#).unwrap();
        assert_eq!(v.degraded_chunks, 3);
        assert_eq!(v.rebuild, RebuildView::default());
        assert!(v.draining.is_empty());
        assert_eq!(RebuildView::percent_of(1, 3), 33);
        assert_eq!(RebuildView::percent_of(5, 3), 100);
        assert_eq!(RebuildView::percent_of(0, 0), 100);
    }

    #[test]
    fn cluster_requests_on_the_wire() {
        use crate::Request;
        let r: Request = serde_json::from_str(r#"{"action":"cluster_status"}"#).unwrap();
        assert_eq!(r, Request::ClusterStatus);
        assert!(!r.is_mutation());
        let t: Request =
            serde_json::from_str(r#"{"action":"cluster_token","witness":true}"#).unwrap();
        assert_eq!(t.action(), "cluster_token");
        assert!(t.is_mutation());
        assert!(!crate::allowed(crate::Role::Operator, &t));
        assert!(crate::allowed(crate::Role::ReadOnly, &r));
        let bad = Request::ClusterJoin {
            address: "nowhere".into(),
            token: "x".into(),
        };
        assert!(bad.validate().is_err());
    }
}
