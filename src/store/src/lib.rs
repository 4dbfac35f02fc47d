//! The node-local store on ONE disk: allocation, per-object block maps with version history,
//! exact reference counts, per-block crc32c checksums, journal + checkpoints, and the small
//! atomic metadata slot the engine keeps its pool metadata in.
//!
//! It owns everything on its device and knows nothing about virtual disks, nodes or placement.
//! It must never: overwrite a block that a durable map entry points to, reuse a freed block
//! before a completed flush made the free durable, return data whose checksum does not match,
//! or write a single byte to a device that `probe` does not call Blank or Ours.
//!
//! # Contract (the documented API; kept stable, additions only)
//!
//! ## Model
//! - [`ObjectId`] `{ vdisk, chunk }` names an object (a chunk replica): a sparse array of 4 KiB
//!   blocks. Block indexes are relative to the object; objects exist once written.
//! - Generations make snapshots O(1): the engine keeps per virtual disk a current generation
//!   `gen` (starts at 1) and its snapshot generations. Taking a snapshot = the engine records
//!   `snap_gen = gen` and bumps `gen` (no store call). Every write carries `gen` and
//!   `pin_gen` = the newest snapshot generation of that disk (0 = none).
//! - Each block keeps versions `(gen, phys | tombstone, crc32c)`. A read "as of `g`" sees the
//!   newest version with `version.gen <= g` (live reads use `u64::MAX`). A write at `gen`
//!   replaces the newest version if its gen equals `gen`, otherwise appends; the superseded
//!   version is freed unless a snapshot still needs it (its gen <= `pin_gen`). `prune` drops
//!   versions no snapshot needs any more. Writes below a block's newest gen are refused.
//! - Redirect-on-write: every write goes to a freshly allocated block; a freed block is reused
//!   only after the next completed flush. Blocks are reference counted (clones share them);
//!   refcounts are exact at all times, including after recovery.
//! - Every data block's crc32c is in the map and verified on every read.
//!
//! ## API (all methods take `&self`; `Store` is `Send + Sync` and cheap to clone)
//! ```text
//! probe(dev) -> Probe                     Blank | Ours(Label) | Foreign(reason)
//! format(dev, label) -> Store             blank devices only; refuses anything else unwritten
//! open(dev) -> Store                      recovers after any crash (checkpoint + journal)
//! label() -> &Label   space() -> Space    stats() -> StoreStats
//! write(obj, block, data, gen, pin_gen)   data = whole blocks (<= 4 MiB); ack = in the maps
//! read(obj, block, nblocks, at_gen)       zeros for holes; Corrupt{obj, block, gen} on bad crc
//! discard(obj, block, nblocks, gen, pin_gen)
//! flush()                                 everything acked before the call is durable after it;
//!                                         a failed device flush poisons the store
//! clone_object(src, at_gen, dst, dst_gen) metadata only; dst must be empty
//! rollback_object(obj, snap_gen, gen, pin_gen)
//! delete_object(obj)   prune(vdisk, snap_gens)   objects()   changed_blocks(obj, from, to)
//! export_object(obj) / import_object(obj, versions)   (rebuild/rebalance with history)
//! version_records(obj)                  (block, gen, crc) of every version, metadata only
//! repair(obj, block, gen, good)           good must match the recorded crc of that version
//! scrub() -> ScrubReport                  every referenced block read and verified
//! put_meta(blob <= 1 MiB) / get_meta()    atomic: newest complete put survives any crash
//! close()                                 flush + checkpoint (recovery never needs it)
//! check_invariants()                      recount refcounts/space from the maps (tests)
//! stats(), is_poisoned(), area_offsets(), locate(obj, block, gen)   (diagnostics, tests)
//! ```
//! Errors: [`StoreError`] with [`StoreError::kind`]: Io, Poisoned, Corrupt{obj, block, gen},
//! NoSpace, NotBlank, NotOurs, InvalidArgument, BadMetadata.
//!
//! ## Things the caller should know
//! - Space freed by discard/delete/prune/overwrite shows as `pending_free_blocks` until the
//!   next `flush()` completes, then as free. A write that finds no free block but some pending
//!   ones flushes (releasing them) and retries before it reports NoSpace.
//! - One call moves at most `MAX_IO_BLOCKS` (1024 blocks = 4 MiB); devices must be at least
//!   `MIN_DEVICE_BYTES` (8 MiB). Metadata overhead is about 3% of the device (checkpoint slots
//!   sized for 1.5 versions per block, journal 1/64 of the device, 256 KiB..256 MiB).
//! - A read or write touching several physical runs issues them all at once; a single
//!   contiguous run (the common case) is one device I/O into the buffer that is returned.
//! - Writes, discards and rollbacks below a block's newest generation are refused
//!   (InvalidArgument); `repair` refuses data whose crc differs from the recorded one.
//! - `flush()` costs two device flushes (data, then journal) when there is anything to commit,
//!   and nothing when there is not; concurrent flushes are grouped.
//! - Writes never wait for the journal: past ~1 MiB of pending records (about 20k block
//!   writes) a background task writes them out; only if that falls 4x behind does a writer
//!   wait for a flush itself.
//! - `import_object` is not atomic across a crash: record completion yourself. It takes each
//!   `VersionData::crc` as the checksum of that version's data without checking it (the
//!   export checked it where it read the data; `VersionData::new` computes it for data from
//!   elsewhere), and writes an export's adjacent blocks straight from the export's buffers.
//! - A read of >= 64 blocks that finds its range in many short physical runs (random overwrites
//!   scattered it) writes the data it read once more, contiguously, and moves the versions there
//!   before it returns (`StoreStats::defrag_*`); `set_defrag(false)` (or the environment
//!   variable `CAIRN_STORE_DEFRAG=0` at open) turns this off. Blocks
//!   shared with clones are never moved. It needs one free extent as long as the range; the
//!   allocator keeps free space in whole 1 MiB segments for that (small writes fill the holes
//!   of partly used segments first, larger writes take empty ones), so random overwrites of a
//!   device do not leave free space scattered.
//!
//! ## On-disk layout
//! Superblock (two copies) | meta slots A/B | checkpoint slots A/B | journal ring | data.
//! Recovery = newest valid checkpoint + every valid journal batch after it (each batch carries a
//! sequence number, the crc of the batch before it and its own crc; replay stops at the first
//! batch that does not fit). Journal records become durable only after their data is durable.
#![forbid(unsafe_code)]

mod alloc;
mod codec;
mod defrag;
mod direct;
mod disk;
mod error;
mod layout;
mod maps;
mod objmap;
mod ops;
mod read;
pub use direct::DirectAlloc;
pub use read::DirectRun;
mod recover;
mod store;
mod types;
mod versions;

pub use error::{ErrorKind, Result, StoreError};
pub use layout::{MAX_META_BYTES, MIN_DEVICE_BYTES};
pub use ops::AreaOffsets;
pub use store::{block_crcs, Store, MAX_IO_BLOCKS};
pub use types::{
    BlockData, BlockVersions, Label, ObjectId, Probe, ScrubReport, Space, StoreStats, VersionData,
    VersionRecord,
};
