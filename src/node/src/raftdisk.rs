//! The node's raft state (member identity, raft log, state-machine snapshot) on an internal
//! virtual disk in its own pool ([`RAFT_VDISK`]): on the pool disks, mirrored like any vdisk,
//! hidden from listings like the other `cairn-node-*` disks. This is [`cluster::RaftMedia`] for
//! the engine; the cluster crate knows nothing about it.
//!
//! # On-disk format (all integers little-endian, every structure 4 KiB aligned)
//! - Block 0: superblock `CAIRNRFT | u32 version | u64 area length x3 | u32 crc32c`.
//! - Three areas (identity, snapshot, log), each: header slot 0, header slot 1 (one 4 KiB block
//!   each), then two halves of equal size. A header slot is `CAIRNRAH | u32 version | u32 part |
//!   u64 generation | u32 half | u32 crc32c`; the valid slot with the highest generation names
//!   the half that holds the content. Content is a run of frames from the half's start:
//!   `u32 frame magic | u64 generation | u64 logical offset | u32 length | u32 crc32c(header
//!   fields + payload) | payload`, padded to whole blocks. The content is the payloads of the
//!   leading frames that carry the current generation, continue the offset and pass their
//!   checksum; the first frame that does not ends it (a torn tail is cut there).
//! - Append = one frame after the last, then an engine flush on sync. Replace = frames into the
//!   other half under generation + 1, flush, then the header slot `generation % 2`, flush: the
//!   header write is the commit point, so a crash leaves the old or the new content.
//! - At open, an area with a frame of the current generation past its end (a torn append, or
//!   one that outlived a lost earlier one) is rewritten into a fresh generation, so such a
//!   frame can never become content when later appends fill the gap.
//! - A half that cannot take an append is repacked (content rewritten densely into the other
//!   half); content larger than a half is refused with a clear error.
//!
//! Must never: acknowledge a sync or replace before the engine's flush returned; keep writing
//! after a failed write or flush (the area is poisoned, fail-stop); return bytes that did not
//! pass their checksum.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cluster::{Medium, Part, RaftMedia};
use engine::{Engine, VdiskHandle};

use crate::config::RaftPlace;
use crate::error::{NodeError, Result};

/// The internal virtual disk that holds the raft state.
pub const RAFT_VDISK: &str = "cairn-node-raft";
const BLOCK: u64 = 4096;
const SUPER_MAGIC: &[u8; 8] = b"CAIRNRFT";
const AREA_MAGIC: &[u8; 8] = b"CAIRNRAH";
const FRAME_MAGIC: u32 = 0x4652_4d31;
const VERSION: u32 = 1;
const FRAME_HEADER: usize = 28;
const SLOT_BYTES: usize = 32;

/// Sizes of the three areas. The defaults give the log and the snapshot about 16 MiB each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub identity_bytes: u64,
    pub snapshot_bytes: u64,
    pub log_bytes: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            identity_bytes: 1 << 20,
            snapshot_bytes: 31 << 20,
            log_bytes: 32 << 20,
        }
    }
}

impl Layout {
    /// Bytes of the virtual disk: superblock padding to 1 MiB, then the areas.
    pub fn total(&self) -> u64 {
        (1 << 20) + self.identity_bytes + self.snapshot_bytes + self.log_bytes
    }

    fn area(&self, part: Part) -> (u64, u64) {
        let base = 1 << 20;
        match part {
            Part::Identity => (base, self.identity_bytes),
            Part::Snapshot => (base + self.identity_bytes, self.snapshot_bytes),
            Part::Log => (
                base + self.identity_bytes + self.snapshot_bytes,
                self.log_bytes,
            ),
        }
    }

    fn validate(&self) -> io::Result<()> {
        for len in [self.identity_bytes, self.snapshot_bytes, self.log_bytes] {
            if len % BLOCK != 0 || !(8 * BLOCK..=1 << 32).contains(&len) {
                return Err(bad(format!(
                    "area of {len} bytes (must be whole 4 KiB blocks, 32 KiB to 4 GiB)"
                )));
            }
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = SUPER_MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_le_bytes());
        for v in [self.identity_bytes, self.snapshot_bytes, self.log_bytes] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(BLOCK as usize, 0);
        b
    }

    /// `Ok(None)`: the block is blank (never formatted).
    fn decode(b: &[u8]) -> io::Result<Option<Layout>> {
        if b.iter().all(|x| *x == 0) {
            return Ok(None);
        }
        if b.len() < 40 || &b[..8] != SUPER_MAGIC {
            return Err(bad("not a cairn raft disk (superblock magic)".into()));
        }
        let crc = u32::from_le_bytes([b[36], b[37], b[38], b[39]]);
        if crc32c::crc32c(&b[..36]) != crc {
            return Err(bad("superblock checksum mismatch".into()));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != VERSION {
            return Err(bad(format!("unknown raft disk version {version}")));
        }
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let l = Layout {
            identity_bytes: word(12),
            snapshot_bytes: word(20),
            log_bytes: word(28),
        };
        l.validate()?;
        Ok(Some(l))
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn eng(e: engine::EngineError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Runs an engine future to completion from synchronous code: directly on a plain thread;
/// from inside a multi-thread runtime through `block_in_place`, so the worker's duties (the
/// I/O driver the engine's completions need) move to another thread instead of starving;
/// elsewhere (a current-thread runtime) on a short-lived helper thread.
fn block<T: Send>(
    rt: &tokio::runtime::Handle,
    f: impl Future<Output = io::Result<T>> + Send,
) -> io::Result<T> {
    let Ok(cur) = tokio::runtime::Handle::try_current() else {
        return rt.block_on(f);
    };
    if cur.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(|| rt.block_on(f));
    }
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(f))
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("raft disk I/O thread panicked")))
    })
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

fn part_code(p: Part) -> u32 {
    match p {
        Part::Identity => 1,
        Part::Log => 2,
        Part::Snapshot => 3,
    }
}

fn encode_slot(part: Part, generation: u64, half: u32) -> Vec<u8> {
    let mut b = AREA_MAGIC.to_vec();
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&part_code(part).to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&half.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.resize(BLOCK as usize, 0);
    b
}

/// `(generation, half)` of a valid slot for `part`.
fn decode_slot(part: Part, b: &[u8]) -> Option<(u64, u32)> {
    if b.len() < SLOT_BYTES || &b[..8] != AREA_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[28..32].try_into().ok()?);
    if crc32c::crc32c(&b[..28]) != crc {
        return None;
    }
    let version = u32::from_le_bytes(b[8..12].try_into().ok()?);
    let code = u32::from_le_bytes(b[12..16].try_into().ok()?);
    let generation = u64::from_le_bytes(b[16..24].try_into().ok()?);
    let half = u32::from_le_bytes(b[24..28].try_into().ok()?);
    (version == VERSION && code == part_code(part) && half < 2).then_some((generation, half))
}

fn frame_crc(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[..24]), payload)
}

/// One frame, padded to whole blocks.
fn encode_frame(generation: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(round_up((FRAME_HEADER + payload.len()) as u64) as usize);
    b.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = frame_crc(&b, payload);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(payload);
    b.resize(round_up(b.len() as u64) as usize, 0);
    b
}

/// Scans a half: `(content, bytes used)`.
fn scan_half(half: &[u8], generation: u64) -> (Vec<u8>, u64) {
    let mut content = Vec::new();
    let mut pos = 0usize;
    while let Some(h) = half.get(pos..pos + FRAME_HEADER) {
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let g = u64::from_le_bytes(h[4..12].try_into().unwrap_or([0; 8]));
        let off = u64::from_le_bytes(h[12..20].try_into().unwrap_or([0; 8]));
        let len = u32::from_le_bytes([h[20], h[21], h[22], h[23]]) as usize;
        let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
        if magic != FRAME_MAGIC || g != generation || off != content.len() as u64 {
            break;
        }
        let start = pos + FRAME_HEADER;
        let Some(payload) = half.get(start..start + len) else {
            break;
        };
        if frame_crc(h, payload) != crc {
            break;
        }
        content.extend_from_slice(payload);
        pos += round_up((FRAME_HEADER + len) as u64) as usize;
    }
    (content, pos as u64)
}

/// One area's state, shared by every medium opened on it.
struct Area {
    part: Part,
    /// Offset of the area in the vdisk and its two halves' size.
    base: u64,
    half_bytes: u64,
    generation: u64,
    half: u32,
    /// Bytes of the current half taken by frames.
    used: u64,
    content: Vec<u8>,
    poisoned: Option<String>,
}

impl Area {
    fn half_off(&self, half: u32) -> u64 {
        self.base + 2 * BLOCK + u64::from(half) * self.half_bytes
    }

    fn check(&self) -> io::Result<()> {
        match &self.poisoned {
            Some(e) => Err(io::Error::other(format!(
                "raft disk {:?} area failed earlier ({e}); restart the node",
                self.part
            ))),
            None => Ok(()),
        }
    }

    fn full(&self, need: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "raft disk {:?} area is full: {need} bytes needed, {} per half (vdisk {RAFT_VDISK})",
                self.part, self.half_bytes
            ),
        )
    }

    async fn replace(&mut self, h: &VdiskHandle, content: &[u8]) -> io::Result<()> {
        let frame = encode_frame(self.generation + 1, 0, content);
        if frame.len() as u64 > self.half_bytes {
            return Err(self.full(frame.len() as u64));
        }
        let generation = self.generation + 1;
        let half = if self.generation == 0 {
            0
        } else {
            1 - self.half
        };
        h.write(self.half_off(half), &frame).await.map_err(eng)?;
        h.flush().await.map_err(eng)?;
        let slot = encode_slot(self.part, generation, half);
        h.write(self.base + (generation % 2) * BLOCK, &slot)
            .await
            .map_err(eng)?;
        h.flush().await.map_err(eng)?;
        self.generation = generation;
        self.half = half;
        self.used = frame.len() as u64;
        self.content = content.to_vec();
        Ok(())
    }

    async fn append(&mut self, h: &VdiskHandle, buf: &[u8]) -> io::Result<()> {
        if self.generation == 0 {
            // Never written: the first content goes in through a replace (header included).
            return self.replace(h, buf).await;
        }
        let frame = encode_frame(self.generation, self.content.len() as u64, buf);
        if self.used + frame.len() as u64 > self.half_bytes {
            // Repack densely into the other half (one frame), durable.
            let mut all = self.content.clone();
            all.extend_from_slice(buf);
            return self.replace(h, &all).await;
        }
        h.write(self.half_off(self.half) + self.used, &frame)
            .await
            .map_err(eng)?;
        self.used += frame.len() as u64;
        self.content.extend_from_slice(buf);
        Ok(())
    }

    /// Loads the area from the disk; rewrites it into a fresh generation if it was appended to.
    async fn load(&mut self, h: &VdiskHandle) -> io::Result<()> {
        let mut slots = vec![0u8; 2 * BLOCK as usize];
        h.read(self.base, &mut slots).await.map_err(eng)?;
        let best = [0usize, 1]
            .iter()
            .filter_map(|i| decode_slot(self.part, &slots[i * BLOCK as usize..]))
            .max_by_key(|(g, _)| *g);
        let Some((generation, half)) = best else {
            return Ok(());
        };
        let mut bytes = vec![0u8; self.half_bytes as usize];
        h.read(self.half_off(half), &mut bytes).await.map_err(eng)?;
        let (content, used) = scan_half(&bytes, generation);
        self.generation = generation;
        self.half = half;
        self.used = used;
        self.content = content;
        // A frame of this generation past the end (torn, or written after one that was lost)
        // must never become content when later appends fill the gap: start a new generation.
        let stale = (used..self.half_bytes).step_by(BLOCK as usize).any(|p| {
            let h = &bytes[p as usize..p as usize + 12];
            h[..4] == FRAME_MAGIC.to_le_bytes() && h[4..12] == generation.to_le_bytes()
        });
        if stale {
            let content = std::mem::take(&mut self.content);
            self.replace(h, &content).await?;
        }
        Ok(())
    }
}

struct Shared {
    rt: tokio::runtime::Handle,
    handle: VdiskHandle,
    areas: BTreeMap<Part, Mutex<Area>>,
    /// Bumped when the state is set aside or restored: media opened before then are stale
    /// and refuse every call.
    epoch: AtomicU64,
    aside: Mutex<Option<BTreeMap<Part, Vec<u8>>>>,
}

impl Shared {
    fn area(&self, part: Part) -> io::Result<MutexGuard<'_, Area>> {
        self.areas
            .get(&part)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
            .ok_or_else(|| io::Error::other("no such area"))
    }
}

/// The raft state of one node on its pool's [`RAFT_VDISK`].
#[derive(Clone)]
pub struct VdiskMedia {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VdiskMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VdiskMedia({RAFT_VDISK})")
    }
}

impl VdiskMedia {
    /// Opens the raft vdisk of `engine` (creating and formatting it with `layout` if the pool
    /// has none), loading every area. Call after every pool disk was added.
    pub async fn open(engine: &Engine, layout: Layout) -> Result<VdiskMedia> {
        Self::open_named(engine, RAFT_VDISK, layout).await
    }

    /// [`VdiskMedia::open`] on a vdisk of another name (tests).
    pub async fn open_named(engine: &Engine, name: &str, layout: Layout) -> Result<VdiskMedia> {
        let err = |e: io::Error| NodeError::io("raft disk", name, e);
        layout.validate().map_err(err)?;
        // Node-private: both replicas on this node's disks. A raft log mirrored to peers would
        // be fenced through raft itself and refused exactly when a peer is lost.
        if engine.vdisk(name).is_err() {
            engine.create_local_vdisk(name, layout.total()).await?;
        } else {
            engine.make_vdisk_local(name).await?;
        }
        let handle = engine.open_vdisk(name)?;
        let mut sb = vec![0u8; BLOCK as usize];
        handle.read(0, &mut sb).await?;
        let layout = match Layout::decode(&sb).map_err(err)? {
            Some(l) => l,
            None => {
                handle.write(0, &layout.encode()).await?;
                handle.flush().await?;
                layout
            }
        };
        if layout.total() > handle.size_bytes() {
            return Err(err(bad(format!(
                "superblock describes {} bytes but the vdisk has {}",
                layout.total(),
                handle.size_bytes()
            ))));
        }
        let mut areas = BTreeMap::new();
        for part in Part::ALL {
            let (base, len) = layout.area(part);
            let mut a = Area {
                part,
                base,
                half_bytes: (len - 2 * BLOCK) / 2 / BLOCK * BLOCK,
                generation: 0,
                half: 0,
                used: 0,
                content: Vec::new(),
                poisoned: None,
            };
            a.load(&handle).await.map_err(err)?;
            areas.insert(part, Mutex::new(a));
        }
        Ok(VdiskMedia {
            shared: Arc::new(Shared {
                rt: tokio::runtime::Handle::current(),
                handle,
                areas,
                epoch: AtomicU64::new(0),
                aside: Mutex::new(None),
            }),
        })
    }

    /// Whether nothing was ever stored (no identity, no log, no snapshot).
    pub fn is_blank(&self) -> bool {
        Part::ALL.iter().all(|p| {
            self.shared
                .area(*p)
                .map(|a| a.content.is_empty())
                .unwrap_or(false)
        })
    }

    /// Bytes used by frames in each area's current half (for tests and status).
    pub fn used_bytes(&self, part: Part) -> u64 {
        self.shared.area(part).map(|a| a.used).unwrap_or(0)
    }

    fn replace_part(&self, part: Part, content: &[u8]) -> io::Result<()> {
        let sh = &self.shared;
        let mut a = sh.area(part)?;
        a.check()?;
        let r = block(&sh.rt, a.replace(&sh.handle, content));
        if let Err(e) = &r {
            a.poisoned = Some(e.to_string());
        }
        r
    }
}

/// A handle on one area.
struct AreaMedium {
    shared: Arc<Shared>,
    part: Part,
    epoch: u64,
}

impl AreaMedium {
    /// Runs `op` on the area, poisoning it if the op fails with an I/O error.
    fn with<T>(&self, op: impl FnOnce(&Shared, &mut Area) -> io::Result<T>) -> io::Result<T> {
        if self.shared.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(io::Error::other(
                "raft disk state was set aside or restored since this medium was opened",
            ));
        }
        let mut a = self.shared.area(self.part)?;
        a.check()?;
        let r = op(&self.shared, &mut a);
        if let Err(e) = &r {
            if e.kind() != io::ErrorKind::StorageFull && e.kind() != io::ErrorKind::InvalidInput {
                a.poisoned = Some(e.to_string());
            }
        }
        r
    }
}

impl Medium for AreaMedium {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        self.with(|_, a| Ok(a.content.clone()))
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.with(|sh, a| {
            if offset != a.content.len() as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "append at {offset} but the content ends at {}",
                        a.content.len()
                    ),
                ));
            }
            block(&sh.rt, a.append(&sh.handle, buf))
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.with(|sh, _| block(&sh.rt, async { sh.handle.flush().await.map_err(eng) }))
    }

    fn replace(&mut self, content: &[u8]) -> io::Result<()> {
        self.with(|sh, a| block(&sh.rt, a.replace(&sh.handle, content)))
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|sh, a| {
            let keep = a
                .content
                .get(..len as usize)
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "set_len beyond the end")
                })?
                .to_vec();
            block(&sh.rt, a.replace(&sh.handle, &keep))
        })
    }

    fn describe(&self) -> String {
        format!("{RAFT_VDISK} ({:?} area)", self.part)
    }
}

fn media_err(e: io::Error) -> cluster::Error {
    cluster::Error::Corrupt(format!("{RAFT_VDISK}: {e}"))
}

impl RaftMedia for VdiskMedia {
    fn open(&self, part: Part) -> std::result::Result<Box<dyn Medium>, cluster::Error> {
        Ok(Box::new(AreaMedium {
            shared: self.shared.clone(),
            part,
            epoch: self.shared.epoch.load(Ordering::SeqCst),
        }))
    }

    fn set_aside(&self) -> std::result::Result<(), cluster::Error> {
        let mut saved = BTreeMap::new();
        for p in Part::ALL {
            saved.insert(p, self.shared.area(p).map_err(media_err)?.content.clone());
        }
        *self.shared.aside.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for p in Part::ALL {
            self.replace_part(p, &[]).map_err(media_err)?;
        }
        Ok(())
    }

    fn restore_aside(&self) -> std::result::Result<(), cluster::Error> {
        let saved = self
            .shared
            .aside
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for p in Part::ALL {
            let content = saved
                .as_ref()
                .and_then(|s| s.get(&p).cloned())
                .unwrap_or_default();
            self.replace_part(p, &content).map_err(media_err)?;
        }
        Ok(())
    }

    fn drop_aside(&self) {
        self.shared
            .aside
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    fn describe(&self) -> String {
        format!("internal virtual disk {RAFT_VDISK}")
    }
}

/// Moves a member state kept as files (`dir`, the layout of earlier versions) onto `media`
/// once: only when `media` is blank and `dir` holds an identity. The files are kept, renamed
/// to `dir.migrated` as a backup. Returns whether it migrated.
pub fn migrate_files(dir: &std::path::Path, media: &VdiskMedia) -> Result<bool> {
    let files = cluster::FileMedia::new(dir);
    let has = cluster::has_identity(&files).map_err(|e| NodeError::Config(e.to_string()))?;
    if !has || !media.is_blank() {
        return Ok(false);
    }
    // Identity last: a crash part-way leaves the media without an identity, so the next
    // start migrates again from the untouched files.
    for part in [Part::Snapshot, Part::Log, Part::Identity] {
        let content = files
            .open(part)
            .and_then(|mut m| {
                m.read_all()
                    .map_err(|e| cluster::Error::Corrupt(e.to_string()))
            })
            .map_err(|e| NodeError::Config(format!("read {}: {e}", dir.display())))?;
        media
            .replace_part(part, &content)
            .map_err(|e| NodeError::io("migrate raft state to", RAFT_VDISK, e))?;
    }
    let backup = dir.with_extension("migrated");
    std::fs::rename(dir, &backup).map_err(|e| NodeError::io("keep raft files as", &backup, e))?;
    Ok(true)
}

/// Marker file in the data directory: this node's raft state is on the pool; it never falls
/// back to files (which would start a new cluster) when the pool is missing.
pub const POOL_MARKER: &str = "cluster.on-pool";

/// The media a data node's member uses, per `place` (see [`RaftPlace`]). Call once every pool
/// disk was added. Moves an existing `DATA/cluster` onto the pool once (kept as
/// `DATA/cluster.migrated`).
pub async fn host_media(
    engine: &Engine,
    data: &std::path::Path,
    place: RaftPlace,
) -> Result<Option<Arc<dyn RaftMedia>>> {
    let marker = data.join(POOL_MARKER);
    let disks = engine.pool().disks;
    let pool = match place {
        RaftPlace::Files => false,
        RaftPlace::Pool => true,
        RaftPlace::Auto => marker.exists() || disks > 0,
    };
    if !pool {
        return Ok(None);
    }
    if disks == 0 {
        return Err(NodeError::Config(format!(
            "this node's raft state is on its pool ({RAFT_VDISK}) but the pool has no disks: \
             bring its disks back (a new cluster is never started in its place)"
        )));
    }
    let media = VdiskMedia::open(engine, Layout::default()).await?;
    if migrate_files(&data.join("cluster"), &media)? {
        tracing::info!(
            vdisk = RAFT_VDISK,
            backup = %data.join("cluster.migrated").display(),
            "moved the raft state from files onto the pool"
        );
    }
    if !marker.exists() {
        std::fs::write(&marker, format!("{RAFT_VDISK}\n"))
            .map_err(|e| NodeError::io("write", &marker, e))?;
    }
    Ok(Some(Arc::new(media)))
}

#[cfg(test)]
#[path = "raftdisk/tests.rs"]
mod tests;
