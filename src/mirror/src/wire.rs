//! The replica protocol's messages and their validation. Everything a peer sends is checked
//! here (sizes, block counts, object ids) before it reaches a store; a bad message becomes a
//! `WireError::BadRequest`, never a panic.
//!
//! Object ids travel as the owner's engine sees them; the server stores them under
//! [`hosted_id`]: `engine::FOREIGN_VDISK_BIT`, the *home* node (the authenticated peer that
//! writes them) and the owner's virtual disk id, so the copies of two owners never mix (engine
//! virtual disk ids are per node, sequential) and a peer can only ever reach its own.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use store::{ObjectId, Space};

/// Largest message either side accepts (a chunk's full history on export/import).
pub const MAX_MSG_BYTES: u32 = 64 * 1024 * 1024;
/// Largest single read or write, in blocks (one chunk).
pub const MAX_IO_BLOCKS: u32 = 256;
const BLOCK: usize = 4096;
/// Largest virtual disk id on the wire (the low bits of a hosted id).
pub const MAX_WIRE_VDISK: u64 = (1 << 40) - 1;
/// Largest node id that may write to a replica server (the middle bits of a hosted id).
pub const MAX_HOME_NODE: u64 = (1 << 23) - 1;

/// The id a replica server stores virtual disk `vdisk` of node `home` under. Both must be in
/// range (`validate` and the server check before calling this).
pub fn hosted_id(home: u64, vdisk: u64) -> u64 {
    engine::FOREIGN_VDISK_BIT | ((home & MAX_HOME_NODE) << 40) | (vdisk & MAX_WIRE_VDISK)
}

/// The home node of a hosted id (None for an id that is not a hosted one).
pub fn hosted_home(local_vdisk: u64) -> Option<u64> {
    (local_vdisk & engine::FOREIGN_VDISK_BIT != 0).then_some((local_vdisk >> 40) & MAX_HOME_NODE)
}

/// A mirrored write's data, decoded straight into block-aligned memory: the store writes that
/// buffer as it is (decoding into a `Vec` first cost an allocation and a copy per write).
/// Encodes as a plain byte string (like [`Bytes`]); keeps the length that was sent, so a length
/// that is not whole blocks is still seen (and refused) by `validate`.
pub struct BlockData {
    buf: blockdev::AlignedBuf,
    len: usize,
}

impl BlockData {
    pub fn copy_of(data: &[u8]) -> BlockData {
        BlockData {
            buf: blockdev::AlignedBuf::from_slice(data),
            len: data.len(),
        }
    }

    /// The bytes as sent.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The aligned buffer (zero-padded to whole blocks when the length was not whole blocks).
    pub fn into_buf(self) -> blockdev::AlignedBuf {
        self.buf
    }
}

impl std::fmt::Debug for BlockData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockData({})", self.len)
    }
}

impl Serialize for BlockData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for BlockData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BlockData;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            // The decoder's input is bounded by the frame limit, so is this copy.
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<BlockData, E> {
                Ok(BlockData::copy_of(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A write's block checksums, decoded straight into the shared slice the store write takes
/// (decoding into a `Vec` and converting cost two allocations per write). On the wire exactly a
/// `Vec<u32>` (a sequence of u32), so old and new peers read each other's writes.
#[derive(Clone, PartialEq, Eq)]
pub struct Crcs(pub std::sync::Arc<[u32]>);

impl std::ops::Deref for Crcs {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.0
    }
}

impl From<Vec<u32>> for Crcs {
    fn from(v: Vec<u32>) -> Crcs {
        Crcs(v.into())
    }
}

impl std::fmt::Debug for Crcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crcs({})", self.0.len())
    }
}

impl Serialize for Crcs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for Crcs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Crcs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of u32")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Crcs, A::Error> {
                // Up to one chunk's checksums on the stack, then one allocation of the right
                // size. More than that (refused by `validate`) still decodes, through a Vec
                // bounded by the decoder's size limit, so the refusal is the usual typed one.
                let mut head = [0u32; MAX_IO_BLOCKS as usize];
                let mut n = 0;
                while n < head.len() {
                    match seq.next_element::<u32>()? {
                        Some(c) => head[n] = c,
                        None => return Ok(Crcs(std::sync::Arc::from(&head[..n]))),
                    }
                    n += 1;
                }
                let mut all = head.to_vec();
                while let Some(c) = seq.next_element::<u32>()? {
                    all.push(c);
                }
                Ok(Crcs(all.into()))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Raw bytes, (de)serialized as one byte string instead of element by element.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({})", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Carried by every mutating request: who may write this virtual disk now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fence {
    pub vdisk: u64,
    pub epoch: u64,
    /// The sender's connection session; requests of an older session (sent before the sender
    /// saw this server go away and come back) are refused, so a delayed write can never land
    /// after the resync that replaced it.
    pub session: u64,
}

/// One version of one block on the wire (`data` None = discarded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireVersion {
    pub gen: u64,
    pub data: Option<Bytes>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireBlock {
    pub block: u64,
    pub versions: Vec<WireVersion>,
}

/// A disk this server serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskDesc {
    pub id: String,
    pub name: String,
    pub node_id: u64,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Req {
    /// First request of a session; raises the sender's session floor.
    Hello {
        session: u64,
    },
    Ping {
        disk: String,
    },
    Objects {
        disk: String,
    },
    Write {
        disk: String,
        fence: Fence,
        obj: ObjectId,
        block: u64,
        data: BlockData,
        crcs: Crcs,
        gen: u64,
        pin: u64,
    },
    Read {
        disk: String,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
    },
    Discard {
        disk: String,
        fence: Fence,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        gen: u64,
        pin: u64,
    },
    Flush {
        disk: String,
    },
    Clone {
        disk: String,
        fence: Fence,
        src: ObjectId,
        at_gen: u64,
        dst: ObjectId,
        dst_gen: u64,
    },
    Rollback {
        disk: String,
        fence: Fence,
        obj: ObjectId,
        snap_gen: u64,
        gen: u64,
        pin: u64,
    },
    Delete {
        disk: String,
        fence: Fence,
        obj: ObjectId,
    },
    Prune {
        disk: String,
        fence: Fence,
        snap_gens: Vec<u64>,
    },
    Export {
        disk: String,
        obj: ObjectId,
    },
    Import {
        disk: String,
        fence: Fence,
        obj: ObjectId,
        versions: Vec<WireBlock>,
    },
    Repair {
        disk: String,
        fence: Fence,
        obj: ObjectId,
        block: u64,
        gen: u64,
        data: Bytes,
    },
    Scrub {
        disk: String,
    },
    Changed {
        disk: String,
        obj: ObjectId,
        from_gen: u64,
        to_gen: u64,
    },
    /// Raise the epoch of virtual disk `vdisk` of node `home` (a new owner taking over);
    /// refused if lower.
    Raise {
        home: u64,
        vdisk: u64,
        epoch: u64,
    },
    /// The sender's virtual disks as they are now (replaces what it described before), so a
    /// node holding their copies can take them over if the sender is lost.
    Describe {
        vdisks: Vec<engine::VdiskRecord>,
    },
    /// The chunks of node `home`'s virtual disk `vdisk` held on this server's disks, from chunk
    /// `from_chunk` on (at most [`MAX_HELD_LIST`] per answer). Answered only once that copy is
    /// retired (see [`Req::HeldExport`]).
    HeldObjects {
        home: u64,
        vdisk: u64,
        from_chunk: u64,
    },
    /// Every version of the blocks of the held copy of `home`'s `vdisk`, chunk `chunk`, on
    /// `disk`, from block `from_block` on, at most [`MAX_HELD_PART_BYTES`] of data per answer
    /// (at least one block): a node taking that virtual disk over gathers the chunks other
    /// holders keep. Answered only for a copy whose epoch is the maximum (retired: its owner
    /// can never write it again), so nothing is copied that could still change.
    HeldExport {
        disk: String,
        home: u64,
        vdisk: u64,
        chunk: u64,
        from_block: u64,
    },
    /// The version records of object `obj` on `disk` (block, generation, crc of every version;
    /// no data): scrub compares a chunk's replicas by them before it reads any data. A server
    /// older than this request answers it with an error (it cannot decode it), which the
    /// client takes as "not compared".
    VersionRecords {
        disk: String,
        obj: ObjectId,
    },
}

/// A [`Req::Write`] borrowing its data: encodes to exactly the bytes of the owned request
/// (the wire format is `Req`'s), without copying the block data into a request first.
pub(crate) struct WriteRef<'a> {
    pub disk: &'a str,
    pub fence: Fence,
    pub obj: ObjectId,
    pub block: u64,
    pub data: &'a [u8],
    pub crcs: &'a [u32],
    pub gen: u64,
    pub pin: u64,
}

/// `Req::Write`'s variant index (its place in `Req`: Hello, Ping, Objects, Write).
const WRITE_VARIANT: u32 = 3;

impl Serialize for WriteRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        struct Raw<'a>(&'a [u8]);
        impl Serialize for Raw<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        let mut v = s.serialize_struct_variant("Req", WRITE_VARIANT, "Write", 8)?;
        v.serialize_field("disk", self.disk)?;
        v.serialize_field("fence", &self.fence)?;
        v.serialize_field("obj", &self.obj)?;
        v.serialize_field("block", &self.block)?;
        v.serialize_field("data", &Raw(self.data))?;
        v.serialize_field("crcs", self.crcs)?;
        v.serialize_field("gen", &self.gen)?;
        v.serialize_field("pin", &self.pin)?;
        v.end()
    }
}

/// Bound on the chunks one [`Req::HeldObjects`] answer lists.
pub const MAX_HELD_LIST: usize = 16384;
/// Bound on the block data one [`Req::HeldExport`] answer carries (one block's versions may
/// exceed it: a page always carries at least one block).
pub const MAX_HELD_PART_BYTES: usize = 8 << 20;

/// One version of one block of a held copy, with its CRC32C (checked by the receiver).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldVersion {
    pub gen: u64,
    pub crc: u32,
    pub data: Option<Bytes>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldBlock {
    pub block: u64,
    pub versions: Vec<HeldVersion>,
}

/// Bound on the virtual disks one `Describe` may carry.
pub const MAX_DESCRIBED: usize = 4096;

impl Req {
    /// The fence of a mutating request.
    pub fn fence(&self) -> Option<Fence> {
        match self {
            Req::Write { fence, .. }
            | Req::Discard { fence, .. }
            | Req::Clone { fence, .. }
            | Req::Rollback { fence, .. }
            | Req::Delete { fence, .. }
            | Req::Prune { fence, .. }
            | Req::Import { fence, .. }
            | Req::Repair { fence, .. } => Some(*fence),
            _ => None,
        }
    }

    /// Structural checks that need no state. The store checks block ranges again.
    pub fn validate(&self) -> Result<(), WireError> {
        let bad = |m: String| Err(WireError::BadRequest(m));
        let obj_ok = |o: &ObjectId| o.vdisk <= MAX_WIRE_VDISK;
        match self {
            Req::Write {
                obj,
                block,
                data,
                crcs,
                ..
            } => {
                let n = data.as_slice().len();
                if !obj_ok(obj) {
                    return bad(format!("object {obj}: reserved virtual disk id"));
                }
                if n == 0 || n % BLOCK != 0 || n / BLOCK > MAX_IO_BLOCKS as usize {
                    return bad(format!(
                        "write of {n} bytes: must be 1..={MAX_IO_BLOCKS} whole blocks"
                    ));
                }
                if crcs.len() != n / BLOCK {
                    return bad(format!("{} checksums for {} blocks", crcs.len(), n / BLOCK));
                }
                if *block >= engine::CHUNK_BLOCKS {
                    return bad(format!("block {block} outside the chunk"));
                }
            }
            Req::Read { obj, nblocks, .. } | Req::Discard { obj, nblocks, .. } => {
                if !obj_ok(obj) {
                    return bad(format!("object {obj}: reserved virtual disk id"));
                }
                if *nblocks == 0 || *nblocks > MAX_IO_BLOCKS {
                    return bad(format!("{nblocks} blocks: must be 1..={MAX_IO_BLOCKS}"));
                }
            }
            Req::Clone { src, dst, .. } => {
                if !obj_ok(src) || !obj_ok(dst) {
                    return bad("clone: reserved virtual disk id".into());
                }
            }
            Req::Rollback { obj, .. }
            | Req::Delete { obj, .. }
            | Req::Export { obj, .. }
            | Req::Changed { obj, .. }
            | Req::VersionRecords { obj, .. } => {
                if !obj_ok(obj) {
                    return bad(format!("object {obj}: reserved virtual disk id"));
                }
            }
            Req::Import { obj, versions, .. } => {
                if !obj_ok(obj) {
                    return bad(format!("object {obj}: reserved virtual disk id"));
                }
                for b in versions {
                    if b.block >= engine::CHUNK_BLOCKS {
                        return bad(format!("import: block {} outside the chunk", b.block));
                    }
                    for v in &b.versions {
                        if v.data.as_ref().is_some_and(|d| d.0.len() != BLOCK) {
                            return bad("import: a version is not one block".into());
                        }
                    }
                }
            }
            Req::Repair { obj, data, .. } => {
                if !obj_ok(obj) || data.0.len() != BLOCK {
                    return bad("repair: one block of a valid object expected".into());
                }
            }
            Req::Prune {
                fence, snap_gens, ..
            } => {
                if fence.vdisk > MAX_WIRE_VDISK {
                    return bad("prune: reserved virtual disk id".into());
                }
                if snap_gens.len() > 1 << 20 {
                    return bad("prune: too many snapshot generations".into());
                }
            }
            Req::Raise { home, vdisk, .. } => {
                if *vdisk > MAX_WIRE_VDISK || *home > MAX_HOME_NODE {
                    return bad("raise: virtual disk or node id out of range".into());
                }
            }
            Req::Describe { vdisks } => {
                if vdisks.len() > MAX_DESCRIBED {
                    return bad(format!("describe: more than {MAX_DESCRIBED} virtual disks"));
                }
                let mut names = std::collections::HashSet::new();
                for v in vdisks {
                    if v.id == 0 || v.id > MAX_WIRE_VDISK || !names.insert(v.name.as_str()) {
                        return bad(format!(
                            "describe: bad or duplicate virtual disk {:?}",
                            v.name
                        ));
                    }
                    v.validate()
                        .map_err(|e| WireError::BadRequest(format!("describe: {e}")))?;
                }
            }
            Req::HeldObjects { home, vdisk, .. } | Req::HeldExport { home, vdisk, .. } => {
                if *vdisk > MAX_WIRE_VDISK || *home > MAX_HOME_NODE {
                    return bad("held copy: virtual disk or node id out of range".into());
                }
                if let Req::HeldExport {
                    chunk, from_block, ..
                } = self
                {
                    if *chunk == engine::PRUNE_MARK_CHUNK || *from_block >= engine::CHUNK_BLOCKS {
                        return bad("held copy: bad chunk or block".into());
                    }
                }
            }
            Req::Hello { .. }
            | Req::Ping { .. }
            | Req::Objects { .. }
            | Req::Flush { .. }
            | Req::Scrub { .. } => {}
        }
        if let Some(f) = self.fence() {
            let vd = match self {
                Req::Write { obj, .. }
                | Req::Discard { obj, .. }
                | Req::Rollback { obj, .. }
                | Req::Delete { obj, .. }
                | Req::Import { obj, .. }
                | Req::Repair { obj, .. } => obj.vdisk,
                Req::Clone { dst, .. } => dst.vdisk,
                _ => f.vdisk,
            };
            if vd != f.vdisk {
                return bad(format!(
                    "fence names virtual disk {} but the request touches {vd}",
                    f.vdisk
                ));
            }
        }
        Ok(())
    }
}

/// What went wrong on the serving side, typed so the caller can react.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The virtual disk has a newer owner: this writer must stop.
    #[error("fenced: virtual disk {vdisk} is at epoch {current}, this writer has {sent} (another node took it over)")]
    Fenced { vdisk: u64, sent: u64, current: u64 },
    #[error("stale session {sent} (current {current}): request sent before a reconnect")]
    StaleSession { sent: u64, current: u64 },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no such disk on this node: {0}")]
    NoDisk(String),
    /// The store's error, with its kind.
    #[error("{msg}")]
    Store { kind: StoreKind, msg: String },
    #[error("replica server: {0}")]
    Server(String),
    /// A held copy was asked for before it was retired (its owner might still change it).
    #[error("the copy of node {home}'s virtual disk {vdisk} held here is not retired")]
    NotRetired { home: u64, vdisk: u64 },
}

/// `store::ErrorKind` on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum StoreKind {
    Io,
    Poisoned,
    Corrupt { obj: ObjectId, block: u64, gen: u64 },
    NoSpace,
    NotBlank,
    NotOurs,
    InvalidArgument,
    BadMetadata,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Body {
    Unit,
    Hello {
        disks: Vec<DiskDesc>,
    },
    Space(Space),
    Objects(Vec<ObjectId>),
    Data(Bytes),
    Versions(Vec<WireBlock>),
    Scrub {
        checked_blocks: u64,
        corrupt: Vec<(ObjectId, u64, u64)>,
    },
    Blocks(Vec<u64>),
    /// (disk id, chunk) of a held copy, sorted by chunk; `more`: ask again past the last.
    Held {
        chunks: Vec<(String, u64)>,
        more: bool,
    },
    /// Blocks of a held chunk in ascending order; `next_block`: ask again from there.
    HeldPart {
        blocks: Vec<HeldBlock>,
        next_block: Option<u64>,
    },
    /// An object's version records in the store's order: (block, generation, crc; None for a
    /// tombstone).
    Records(Vec<(u64, u64, Option<u32>)>),
}

/// Every reply names the server's instance (random per process start), so a client notices a
/// restart even when no request failed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Resp {
    pub instance: u64,
    pub result: Result<Body, WireError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(vdisk: u64) -> Fence {
        Fence {
            vdisk,
            epoch: 1,
            session: 1,
        }
    }

    fn write(obj: ObjectId, len: usize, ncrc: usize, fence: Fence) -> Req {
        Req::Write {
            disk: "d".into(),
            fence,
            obj,
            block: 0,
            data: BlockData::copy_of(&vec![0; len]),
            crcs: vec![0; ncrc].into(),
            gen: 1,
            pin: 0,
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let o = ObjectId { vdisk: 3, chunk: 0 };
        assert!(write(o, 4096, 1, f(3)).validate().is_ok());
        assert!(write(o, 4095, 1, f(3)).validate().is_err());
        assert!(write(o, 0, 0, f(3)).validate().is_err());
        assert!(write(o, 8192, 1, f(3)).validate().is_err());
        assert!(write(o, 4096 * 257, 257, f(3)).validate().is_err());
        assert!(
            write(o, 4096, 1, f(4)).validate().is_err(),
            "fence for another disk"
        );
        let reserved = ObjectId {
            vdisk: engine::FOREIGN_VDISK_BIT | 3,
            chunk: 0,
        };
        assert!(write(reserved, 4096, 1, f(reserved.vdisk))
            .validate()
            .is_err());
        let read = |n| Req::Read {
            disk: "d".into(),
            obj: o,
            block: 0,
            nblocks: n,
            at_gen: 1,
        };
        assert!(read(1).validate().is_ok());
        assert!(read(0).validate().is_err());
        assert!(read(10_000).validate().is_err());
        let import = Req::Import {
            disk: "d".into(),
            fence: f(3),
            obj: o,
            versions: vec![WireBlock {
                block: 0,
                versions: vec![WireVersion {
                    gen: 1,
                    data: Some(Bytes(vec![0; 100])),
                }],
            }],
        };
        assert!(import.validate().is_err());
        let raise = |home, vdisk| Req::Raise {
            home,
            vdisk,
            epoch: 2,
        };
        assert!(raise(1, 3).validate().is_ok());
        assert!(raise(MAX_HOME_NODE + 1, 3).validate().is_err());
        assert!(raise(1, MAX_WIRE_VDISK + 1).validate().is_err());
        let list = |home, vdisk| Req::HeldObjects {
            home,
            vdisk,
            from_chunk: 0,
        };
        assert!(list(1, 3).validate().is_ok());
        assert!(list(MAX_HOME_NODE + 1, 3).validate().is_err());
        assert!(list(1, MAX_WIRE_VDISK + 1).validate().is_err());
        let export = |chunk, from_block| Req::HeldExport {
            disk: "d".into(),
            home: 1,
            vdisk: 3,
            chunk,
            from_block,
        };
        assert!(export(5, 255).validate().is_ok());
        assert!(export(5, 256).validate().is_err(), "block past the chunk");
        assert!(export(engine::PRUNE_MARK_CHUNK, 0).validate().is_err());
    }

    #[test]
    fn a_borrowed_write_encodes_as_the_owned_one() {
        let o = ObjectId { vdisk: 3, chunk: 9 };
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let crcs = store::block_crcs(&data);
        let owned = Req::Write {
            disk: "disk-1".into(),
            fence: f(3),
            obj: o,
            block: 17,
            data: BlockData::copy_of(&data),
            crcs: crcs.clone().into(),
            gen: 1 << 40,
            pin: 5,
        };
        let borrowed = WriteRef {
            disk: "disk-1",
            fence: f(3),
            obj: o,
            block: 17,
            data: &data,
            crcs: &crcs,
            gen: 1 << 40,
            pin: 5,
        };
        let limit = u64::from(MAX_MSG_BYTES);
        let bytes = transport::encode(&borrowed, limit).unwrap();
        assert_eq!(bytes, transport::encode(&owned, limit).unwrap());
        match transport::decode::<Req>(&bytes, limit).unwrap() {
            Req::Write { data: d, block, .. } => {
                assert_eq!((d.as_slice(), block), (&data[..], 17))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn checksums_travel_as_a_plain_u32_sequence() {
        // `Crcs` replaced a `Vec<u32>`: a peer of either version must read the other's bytes.
        let limit = u64::from(MAX_MSG_BYTES);
        for n in [
            0usize,
            1,
            2,
            MAX_IO_BLOCKS as usize,
            MAX_IO_BLOCKS as usize + 3,
        ] {
            let v: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
            let old = transport::encode(&v, limit).unwrap();
            let new = transport::encode(&Crcs::from(v.clone()), limit).unwrap();
            assert_eq!(new, old, "{n} checksums");
            let back: Crcs = transport::decode(&old, limit).unwrap();
            assert_eq!(&back[..], &v[..], "{n} checksums");
            assert_eq!(transport::decode::<Vec<u32>>(&new, limit).unwrap(), v);
        }
        // Too many for the data still decodes, and is refused as a bad request.
        let o = ObjectId { vdisk: 3, chunk: 0 };
        let bytes = transport::encode(&write(o, 4096, 300, f(3)), limit).unwrap();
        let req: Req = transport::decode(&bytes, limit).unwrap();
        assert_eq!(
            req.validate(),
            Err(WireError::BadRequest("300 checksums for 1 blocks".into()))
        );
    }

    #[test]
    fn hosted_ids_keep_owners_apart() {
        let a = hosted_id(1, 5);
        let b = hosted_id(3, 5);
        assert_ne!(a, b);
        assert_eq!(hosted_home(a), Some(1));
        assert_eq!(hosted_home(b), Some(3));
        assert_eq!(a & MAX_WIRE_VDISK, 5);
        assert_eq!(hosted_home(5), None);
    }

    #[test]
    fn garbage_never_decodes_into_a_panic() {
        let limit = u64::from(MAX_MSG_BYTES);
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..400usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Ok(r) = transport::decode::<Req>(&bytes, limit) {
                let _ = r.validate();
            }
            let _ = transport::decode::<Resp>(&bytes, limit);
        }
    }
}
