//! Plain data types of the store's public surface.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One object (a chunk replica): a sparse array of 4 KiB blocks with a version history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId {
    pub vdisk: u64,
    pub chunk: u64,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vdisk, self.chunk)
    }
}

/// Who a disk belongs to; written once by `format`, read back by `probe`/`open`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub pool_id: Uuid,
    pub disk_id: Uuid,
    pub node_id: u64,
    pub created_unix: u64,
}

/// What `probe` found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// All zeros where any label or signature would be: safe to format.
    Blank,
    /// A Cairn store.
    Ours(Label),
    /// Someone else's data (the reason names what was recognised); never written.
    Foreign(String),
}

/// Space of the data area, in 4 KiB blocks. `used + free + pending_free == total` exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Space {
    pub total_blocks: u64,
    /// Blocks referenced by some version (or being written right now).
    pub used_blocks: u64,
    /// Blocks a write may take now.
    pub free_blocks: u64,
    /// Blocks no longer referenced that become free at the next completed flush.
    pub pending_free_blocks: u64,
}

/// One version of one block, with its data (None = tombstone: reads as zeros) and the crc32c
/// of that data (0 for a tombstone). An export fills `crc` from its map and checks the data
/// against it; an import takes it as is (like `Store::write_with_crcs`), so a copy is
/// checksummed once, where its data was read.
#[derive(Debug, Clone)]
pub struct VersionData {
    pub gen: u64,
    pub crc: u32,
    pub data: Option<BlockData>,
}

impl VersionData {
    /// A version holding `data` (one block), its crc computed here.
    pub fn new(gen: u64, data: Option<blockdev::AlignedBuf>) -> Self {
        let data = data.map(BlockData::new);
        VersionData {
            gen,
            crc: data.as_deref().map_or(0, blockdev::crc32c),
            data,
        }
    }

    /// A version holding `data` (one block, e.g. from `BlockData::blocks_of`), its crc
    /// computed here.
    pub fn of_block(gen: u64, data: BlockData) -> Self {
        VersionData {
            gen,
            crc: blockdev::crc32c(&data),
            data: Some(data),
        }
    }
}

/// One block of an export's data: a window of a larger shared buffer (an export reads runs of
/// blocks with one request each and hands out windows of them, and an import writes adjacent
/// windows of one buffer with one request: no copy per block on either side).
#[derive(Debug, Clone)]
pub struct BlockData {
    seg: blockdev::WriteBuf,
    off: usize,
    len: usize,
}

impl BlockData {
    /// A block in a buffer of its own.
    pub fn new(buf: blockdev::AlignedBuf) -> Self {
        let len = buf.len();
        BlockData {
            seg: buf.into_write(),
            off: 0,
            len,
        }
    }

    /// Each block of `buf` in turn, as windows of it (no copy): blocks received one by one
    /// (from a peer) and gathered into one buffer are written by an import with one request
    /// per run instead of one per block. A partial last block is left out.
    pub fn blocks_of(buf: blockdev::AlignedBuf) -> Vec<BlockData> {
        let bs = crate::layout::BS as usize;
        let n = buf.len() / bs;
        let seg = buf.into_write();
        (0..n)
            .map(|i| BlockData::window(seg.clone(), i * bs, bs))
            .collect()
    }

    /// Bytes `off..off + len` of `seg`.
    pub(crate) fn window(seg: blockdev::WriteBuf, off: usize, len: usize) -> Self {
        debug_assert!(off + len <= seg.len());
        BlockData { seg, off, len }
    }

    /// Whether `next` is the window right after this one in the same buffer.
    pub(crate) fn followed_by(&self, next: &BlockData) -> bool {
        self.seg.as_ptr() == next.seg.as_ptr()
            && self.seg.len() == next.seg.len()
            && self.off + self.len == next.off
    }

    /// The shared buffer and this block's offset in it.
    pub(crate) fn segment(&self) -> (&blockdev::WriteBuf, usize) {
        (&self.seg, self.off)
    }
}

impl std::ops::Deref for BlockData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.seg.as_slice()[self.off..self.off + self.len]
    }
}

/// Every version of one block (oldest first), for rebuild/rebalance.
#[derive(Debug, Clone)]
pub struct BlockVersions {
    pub block: u64,
    pub versions: Vec<VersionData>,
}

/// One version of one block as the store records it, without its data: what the replicas of
/// a chunk must agree on (`Store::version_records`). Two replicas whose records are equal hold
/// the same bytes wherever their data passes its checksum (which `scrub` verifies), short of a
/// crc32c collision between two different writes of the same block and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRecord {
    pub block: u64,
    pub gen: u64,
    /// The crc32c of the version's data; None for a tombstone (reads as zeros).
    pub crc: Option<u32>,
}

/// Result of `scrub`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Distinct physical blocks read and verified.
    pub checked_blocks: u64,
    /// (object, block, generation) of every version whose data failed its checksum.
    pub corrupt: Vec<(ObjectId, u64, u64)>,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub checksum_errors: u64,
    pub repairs: u64,
    pub flushes: u64,
    pub checkpoints: u64,
    pub journal_batches: u64,
    /// Fragmented ranges rewritten contiguously after a read, and the blocks moved.
    #[serde(default)]
    pub defrag_runs: u64,
    #[serde(default)]
    pub defrag_blocks: u64,
}
