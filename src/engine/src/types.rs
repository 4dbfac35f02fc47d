//! Plain data types of the engine's public surface: configuration, the info records the CLI and
//! API print, and statistics. No behaviour lives here.

use serde::{Deserialize, Serialize};

/// Who this engine is. Placement treats the node as the first failure domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineConfig {
    pub node_id: u64,
    pub node_name: String,
}

/// Life cycle of a pool disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskState {
    /// Holds replicas and takes new ones.
    Active,
    /// Being emptied by the rebalancer; still serves the replicas it holds.
    Draining,
    /// Empty and out of the pool.
    Removed,
    /// Returned EIO on a write or flush, or vanished; its replicas are re-mirrored elsewhere.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The disk's UUID (from its label).
    pub id: String,
    /// The device's name (path) as given when it was added.
    pub name: String,
    pub node_id: u64,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub state: DiskState,
    /// I/O errors seen on this disk since the engine started.
    pub errors: u64,
    /// Whether the device is attached to this engine right now (a pool member listed in the
    /// pool metadata may not have been added yet after a restart).
    pub attached: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Empty until the first disk joins.
    pub pool_id: String,
    pub raw_bytes: u64,
    pub used_raw_bytes: u64,
    /// raw_bytes / 2 (two replicas).
    pub usable_bytes: u64,
    /// Largest virtual disk size accepted: usable_bytes x `OVERCOMMIT`.
    pub logical_limit_bytes: u64,
    pub disks: usize,
    /// Chunks with fewer live replicas than wanted.
    pub degraded_chunks: u64,
    /// Chunks not (yet) on the disks placement wants them on.
    pub misplaced_chunks: u64,
    pub rebalancing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VdiskInfo {
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
    /// Bytes written and not freed, as counted on one replica (shared clone blocks counted in
    /// every clone).
    pub used_bytes: u64,
    pub snapshots: usize,
    pub created_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub vdisk: String,
    pub name: String,
    pub id: u64,
    pub created_unix: u64,
}

/// What a device holds, without claiming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskProbe {
    Blank,
    Cairn { pool_id: String, disk_id: String },
    Foreign { reason: String },
}

/// Progress of the last (or running) scrub.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubStats {
    pub running: bool,
    pub passes: u64,
    pub disks_total: u64,
    pub disks_done: u64,
    pub checked_blocks: u64,
    pub corrupt_found: u64,
    pub repaired: u64,
    pub unrepairable: u64,
    /// Chunks whose replicas were compared with each other (by their version records; see
    /// `background::compare_replicas`).
    #[serde(default)]
    pub chunks_compared: u64,
    /// Replicas found holding other versions than the chunk's chosen source.
    #[serde(default)]
    pub replicas_differed: u64,
    /// Of those, replicas rewritten from the source (the rest stay counted as differing until
    /// a later scrub or resync makes them equal).
    #[serde(default)]
    pub replicas_rewritten: u64,
    /// Replicas left out of the comparison: another node's (the mirror protocol cannot list a
    /// chunk's versions without its data) or unreachable now.
    #[serde(default)]
    pub replicas_not_compared: u64,
}

/// Progress of rebalance / re-mirroring.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RebalanceStats {
    pub running: bool,
    pub passes: u64,
    /// Chunk replicas copied to a new disk since start.
    pub chunks_copied: u64,
    /// Chunk replicas removed from a disk that should no longer hold them.
    pub chunks_dropped: u64,
    /// Chunks still to move in the current view (degraded + misplaced).
    pub chunks_pending: u64,
    pub bytes_copied: u64,
    /// Objects of deleted virtual disks that were removed.
    pub orphans_deleted: u64,
    /// After an unclean shutdown: chunks whose replicas were compared, and those found
    /// different (rewritten from the replica reads were served from).
    pub resync_checked: u64,
    pub resync_fixed: u64,
    pub resync_running: bool,
    /// The current (or last) rebuild pass: progress, rate, time left, pacing.
    #[serde(default)]
    pub rebuild: RebuildProgress,
}

/// Progress of one rebuild / rebalance pass (re-mirroring degraded chunks, draining, spreading
/// onto new disks) and how it is paced against guest I/O.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildProgress {
    pub running: bool,
    /// Chunks this pass moves (each missing or misplaced replica set counts once).
    pub chunks_total: u64,
    /// Chunks of this pass moved so far (never above `chunks_total`).
    pub chunks_done: u64,
    /// Upper bound of the bytes to copy (`chunks_total` whole chunks; thin chunks copy less).
    pub bytes_estimate: u64,
    pub bytes_done: u64,
    /// Bytes copied per second over this pass so far.
    pub rate_bytes_per_sec: u64,
    /// Seconds left at the pass's rate so far; None while idle or before the first chunk.
    pub eta_secs: Option<u64>,
    /// Rebuild ceiling in force at the last chunk, bytes/s (0: none).
    pub ceiling_bytes_per_sec: u64,
    /// Whether guest I/O was active at the last chunk (the busy ceiling applies).
    pub guest_busy: bool,
    /// Time spent waiting for the ceiling or for queued guest I/O, since the engine started.
    pub throttled_ms: u64,
    /// Chunk copies that first waited for queued guest I/O on their disks.
    pub guest_yields: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskStats {
    pub id: String,
    pub name: String,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub errors: u64,
    pub checksum_errors: u64,
    pub repairs: u64,
}

/// Counters of one kind of request on one virtual disk since the engine started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    /// Requests completed (including failed ones).
    pub ops: u64,
    /// Bytes moved by the successful ones (for discards: bytes discarded or zeroed).
    pub bytes: u64,
    pub errors: u64,
    /// Sum of request latencies: mean = latency_us_sum / ops.
    pub latency_us_sum: u64,
    /// Requests per latency bucket: `latency_hist[i]` counts latencies <= `latency_buckets_us[i]`
    /// (and above the previous bound); the last entry counts everything slower.
    pub latency_hist: Vec<u64>,
}

/// Per-virtual-disk I/O figures (`Engine::vdisk_stats`). IOPS and throughput are the change of
/// `ops`/`bytes` between two samples divided by the time between them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskStats {
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
    /// As in `VdiskInfo::used_bytes`.
    pub used_bytes: u64,
    pub read: OpStats,
    pub write: OpStats,
    pub flush: OpStats,
    /// Discards and write-zeroes.
    pub discard: OpStats,
    /// Upper bounds of the latency histogram buckets, microseconds.
    pub latency_buckets_us: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineStats {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
    /// Checksum mismatches seen by reads (each one is repaired or reported).
    pub checksum_errors: u64,
    /// Read errors (EIO) on one replica answered from the other.
    pub read_io_errors: u64,
    /// Bad replica copies repaired from the good one (reads and scrub).
    pub repairs: u64,
    /// Reads that failed on every replica (an error was returned, never data).
    pub unrecoverable_reads: u64,
    pub degraded_chunks: u64,
    pub scrub: ScrubStats,
    pub rebalance: RebalanceStats,
    pub disks: Vec<DiskStats>,
}
