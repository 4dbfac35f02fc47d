//! The block engine: virtual disks, chunking and placement across disks and nodes, replica I/O,
//! snapshots, thin clones, snapshot diffs, rebuild and resync (single node today; replicas sit
//! behind the internal `Replica` trait so remote ones can be added for the cluster).
//!
//! It owns the pool metadata and the mapping from virtual disk bytes to chunk replicas; it never
//! touches a device directly (every byte goes through a `store::Store`).
//!
//! # Design choices
//! - **Chunk = 1 MiB (256 blocks of 4 KiB).** Small enough that rebalancing and re-mirroring
//!   move data in short steps (a chunk is locked only while it is copied) and that load spreads
//!   evenly over many disks; large enough that a 1 MiB sequential request touches one chunk per
//!   replica and that per-chunk metadata (one index entry per allocated chunk) stays small.
//! - **Placement:** weighted rendezvous hashing on (placement seed, chunk index) over the active
//!   disks, node first as failure domain (see `placement`). Clones inherit their source's seed.
//!   Where chunks *are* is learned from the stores (`objects()`), so a crash in the middle of a
//!   move can only leave an extra copy, which the rebalancer trims.
//! - **Logical limit:** a virtual disk may be at most usable capacity (raw / 2) x `OVERCOMMIT`
//!   (4), and never more than `MAX_VDISK_BYTES` (1 PiB). Sizes are rounded up to 4 KiB.
//! - **Reads** go to the less busy replica. After an unclean shutdown the replicas may differ
//!   in blocks written but never flushed (power lost between the two replicas' writes or
//!   flushes), and a chunk may be left with one replica. Every chunk is then *pending*: the
//!   first request on it makes its replicas equal (the first readable replica is the truth)
//!   and re-creates a missing one before it is served, and the first request after such an
//!   open re-mirrors every under-replicated chunk (`reconcile`). A background resync does the
//!   chunks nobody touched (`needs_resync` in the pool metadata, progress in
//!   `stats().rebalance.resync_*`), then reads alternate again. So no read can fail over to an
//!   older value than one already returned, and a clean restart does none of this work.
//! - **Multi-step operations are recorded before they start** in the pool metadata: chunk
//!   copies (`importing`: an interrupted import is deleted when its disk is opened), rollbacks
//!   (redone before the disk serves I/O again; live I/O gets `Busy` meanwhile), snapshot
//!   prunes, and clone ids (reserved first; objects of an id that never got recorded are
//!   orphans the maintenance task deletes).
//! - **Writes** go to every live replica at once; an EIO (or a vanished device) on a write or
//!   flush marks that disk Failed durably before the write is acknowledged, and its chunks are
//!   re-mirrored in the background. Read errors are answered from the other replica and the
//!   bad copy is repaired (one version via `Store::repair`, or the whole chunk re-copied).
//! - **After a restart, add every pool disk before opening virtual disks**: a pool member that
//!   shows up after I/O started is refused (`Busy`), since its replicas may be stale.
//! - **`used_bytes` of a virtual disk** counts allocated chunks (an upper bound, metadata only).
//!
//! # Public API (the contract with the node/CLI side; additions allowed)
//! ```text
//! pub struct EngineConfig { pub node_id: u64, pub node_name: String }
//! #[derive(Clone)] pub struct Engine { /* Arc inside */ }
//!
//! impl Engine {
//!     /// Start an engine with no disks; disks are added with add_disk (on restart: add them all,
//!     /// the engine recovers its metadata from the pool disks themselves).
//!     pub async fn open(cfg: EngineConfig) -> Result<Engine>;
//!     /// Blank disk -> formatted and joins the pool (rebalance starts in background);
//!     /// our disk -> opened/recovered; foreign data -> Err(kind ForeignData), never written.
//!     pub async fn add_disk(&self, dev: Arc<dyn blockdev::BlockDevice>) -> Result<DiskInfo>;
//!     /// Start draining a disk; it leaves the pool once drained (state Draining -> Removed).
//!     pub async fn remove_disk(&self, disk: &str /* disk id or name */) -> Result<DiskInfo>;
//!     pub fn disks(&self) -> Vec<DiskInfo>;
//!     pub fn pool(&self) -> PoolInfo;
//!     /// Probe without claiming: Blank / Cairn / Foreign(reason).
//!     pub async fn probe(dev: &dyn blockdev::BlockDevice) -> Result<DiskProbe>;
//!
//!     pub async fn create_vdisk(&self, name: &str, size_bytes: u64) -> Result<VdiskInfo>;
//!     pub fn vdisks(&self) -> Vec<VdiskInfo>;
//!     pub fn vdisk(&self, name: &str) -> Result<VdiskInfo>;
//!     pub async fn resize_vdisk(&self, name: &str, new_size_bytes: u64) -> Result<VdiskInfo>; // grow only
//!     pub async fn delete_vdisk(&self, name: &str) -> Result<()>;
//!     pub fn open_vdisk(&self, name: &str) -> Result<VdiskHandle>;              // read-write
//!     pub fn open_snapshot(&self, vdisk: &str, snap: &str) -> Result<VdiskHandle>; // read-only
//!
//!     pub async fn create_snapshot(&self, vdisk: &str, snap: &str) -> Result<SnapshotInfo>;
//!     pub fn snapshots(&self, vdisk: &str) -> Result<Vec<SnapshotInfo>>;
//!     pub async fn delete_snapshot(&self, vdisk: &str, snap: &str) -> Result<()>;
//!     pub async fn rollback(&self, vdisk: &str, snap: &str) -> Result<()>;
//!     /// Thin clone of a disk (snap None = its current contents) or of one of its snapshots.
//!     pub async fn clone_vdisk(&self, src: &str, snap: Option<&str>, new_name: &str) -> Result<VdiskInfo>;
//!     /// Byte ranges (offset, len) that differ between snapshot `from` and snapshot `to`
//!     /// (None = the live disk), from metadata only.
//!     pub async fn changed_ranges(&self, vdisk: &str, from: &str, to: Option<&str>) -> Result<Vec<(u64, u64)>>;
//!
//!     pub fn start_scrub(&self) -> Result<()>;          // background
//!     pub fn stats(&self) -> EngineStats;               // counters incl. scrub progress, repairs, checksum errors, per-disk I/O
//!     pub async fn shutdown(&self) -> Result<()>;       // refuse writes, drain those in flight (bounded), flush + checkpoint
//!     // additions: wait_rebalanced(timeout), wait_scrub(timeout); module `bench` (load generator)
//! }
//!
//! #[derive(Clone)] pub struct VdiskHandle { .. }
//! impl VdiskHandle {
//!     pub fn size_bytes(&self) -> u64;
//!     pub fn read_only(&self) -> bool;
//!     /// Any byte offset/length inside the disk (fast path when 4 KiB aligned).
//!     pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
//!     /// The engine's verified buffers handed over (no copy): for callers that pass bytes on.
//!     pub async fn read_owned(&self, offset: u64, len: u64) -> Result<ReadData>;
//!     pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()>;   // ack = all live replicas hold it
//!     pub async fn flush(&self) -> Result<()>;                             // durable on all live replicas
//!     pub async fn discard(&self, offset: u64, len: u64) -> Result<()>;   // frees space
//!     pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;
//! }
//!
//! // Info types: serde Serialize/Deserialize + Clone + Debug.
//! pub struct DiskInfo { pub id: String, pub name: String, pub node_id: u64, pub size_bytes: u64,
//!     pub used_bytes: u64, pub state: DiskState /* Active|Draining|Removed|Failed */, pub errors: u64,
//!     pub attached: bool /* addition */ }
//! pub struct PoolInfo { pub raw_bytes: u64, pub used_raw_bytes: u64, pub usable_bytes: u64 /* raw/2 */,
//!     pub logical_limit_bytes: u64, pub disks: usize, pub degraded_chunks: u64, pub rebalancing: bool,
//!     /* additions: */ pub pool_id: String, pub misplaced_chunks: u64 }
//! pub struct VdiskInfo { pub name: String, pub id: u64, pub size_bytes: u64, pub used_bytes: u64,
//!     pub snapshots: usize, pub created_unix: u64 }
//! pub struct SnapshotInfo { pub vdisk: String, pub name: String, pub id: u64, pub created_unix: u64 }
//! pub enum DiskProbe { Blank, Cairn { pool_id: String, disk_id: String }, Foreign { reason: String } }
//!
//! // Errors: one thiserror enum `EngineError` with a `kind()` -> ErrorKind
//! // { NotFound, AlreadyExists, InvalidArgument, NoSpace, ForeignData, ReadOnly, Io, Corrupt, Busy, Degraded }
//! // so callers map them to exit codes / HTTP statuses.
//! ```
#![forbid(unsafe_code)]

mod adopt;
mod background;
pub mod bench;
pub mod bench_rebuild;
pub mod bench_resync;
mod core;
mod direct;
mod error;
mod handle;
mod ids;
mod io;
mod meta;
mod order;
mod placement;
mod pool;
mod readbuf;
mod rebuild;
mod rebuild_copy;
mod reconcile;
pub mod remote;
mod replica;
mod types;
mod vdisks;

pub use crate::core::DEFAULT_SHUTDOWN_DRAIN;
pub use adopt::{SnapRecord, VdiskRecord};
pub use direct::{DirectDeviceError, DirectRead, DirectWrite};
pub use error::{EngineError, ErrorKind, Result};
pub use handle::{VdiskHandle, MAX_IO_BYTES};
pub use ids::seed_ids_for_this_thread;
pub use meta::validate_name;
pub use pool::Engine;
pub use readbuf::{ReadData, ReadPart};
pub use rebuild::{
    RebuildLimits, RebuildProfile, BUSY_WINDOW, DEFAULT_BUSY_BYTES_PER_SEC, MAX_YIELD,
};
pub use remote::{RemoteDisk, RemoteStatus};
pub use replica::{
    is_device_failure, LocalReplica, Reachability, Replica, FOREIGN_VDISK_BIT, PRUNE_MARK_CHUNK,
};
pub use types::{
    DiskInfo, DiskProbe, DiskState, DiskStats, EngineConfig, EngineStats, OpStats, PoolInfo,
    RebalanceStats, RebuildProgress, ScrubStats, SnapshotInfo, VdiskInfo, VdiskStats,
};

/// The I/O unit of every store: 4 KiB.
pub const BLOCK_BYTES: u64 = blockdev::BLOCK_SIZE as u64;
/// Blocks per chunk (see "Design choices").
pub const CHUNK_BLOCKS: u64 = 256;
/// Bytes per chunk: 1 MiB.
pub const CHUNK_BYTES: u64 = CHUNK_BLOCKS * BLOCK_BYTES;
/// Thin overcommit: a virtual disk may be up to usable capacity x this.
pub const OVERCOMMIT: u64 = 4;
/// Absolute bound on a virtual disk's size (1 PiB).
pub const MAX_VDISK_BYTES: u64 = 1 << 50;
/// Smallest device accepted into the pool (16 MiB).
pub const MIN_DISK_BYTES: u64 = 16 << 20;
