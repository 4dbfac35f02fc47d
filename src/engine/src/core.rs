//! The engine's shared state: attached disks, the chunk index (which disks actually hold each
//! chunk object), per-chunk stripe locks, per-virtual-disk generation state, and the one path by
//! which pool metadata changes (`update_meta`: apply, persist to every active disk, install).
//!
//! Lock order (never taken the other way round): op lock -> stripe lock -> persist lock.
//! The I/O path takes only a stripe lock (shared) and short parking_lot locks, never the op lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use store::{ObjectId, StoreError};

use crate::error::{EngineError, Result};
use crate::meta::PoolMeta;
use crate::placement::{hash_str, mix64, Candidate, PlacementView, Slots};
use crate::replica::Replica;
use crate::types::{DiskState, EngineConfig, RebalanceStats, ScrubStats};

/// The live replica disks of one chunk (`Inner::live_disks`).
pub(crate) type LiveDisks = smallvec::SmallVec<[Arc<Disk>; 4]>;

const INDEX_SHARDS: usize = 64;
const STRIPES: usize = 1024;

/// How long `Engine::shutdown` waits for the writes in flight by default (a device that does
/// not answer must not hold a shutdown forever).
pub const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn state_code(s: DiskState) -> u8 {
    match s {
        DiskState::Active => 0,
        DiskState::Draining => 1,
        DiskState::Removed => 2,
        DiskState::Failed => 3,
    }
}

fn code_state(c: u8) -> DiskState {
    match c {
        0 => DiskState::Active,
        1 => DiskState::Draining,
        2 => DiskState::Removed,
        _ => DiskState::Failed,
    }
}

/// One attached disk.
pub(crate) struct Disk {
    pub slot: u16,
    pub id: String,
    pub id_hash: u64,
    pub name: String,
    pub node_id: u64,
    pub size_bytes: u64,
    pub replica: Arc<dyn Replica>,
    /// `replica.local_store()`, kept at hand for the read and write paths.
    pub local: Option<Arc<store::Store>>,
    state: AtomicU8,
    /// Bumped by every acknowledged change; a flush makes everything up to the value it read
    /// durable, so a flush with nothing new to cover is skipped.
    pub write_seq: AtomicU64,
    pub flushed_seq: AtomicU64,
    pub inflight: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub errors: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub repairs: AtomicU64,
}

impl Disk {
    pub(crate) fn new(
        slot: u16,
        id: String,
        name: String,
        node_id: u64,
        size_bytes: u64,
        replica: Arc<dyn Replica>,
        state: DiskState,
    ) -> Self {
        Disk {
            slot,
            id_hash: hash_str(&id),
            id,
            name,
            node_id,
            size_bytes,
            local: replica.local_store().cloned(),
            replica,
            state: AtomicU8::new(state_code(state)),
            write_seq: AtomicU64::new(0),
            flushed_seq: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            checksum_errors: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
        }
    }
    pub(crate) fn state(&self) -> DiskState {
        code_state(self.state.load(Ordering::Acquire))
    }
    pub(crate) fn set_state(&self, s: DiskState) {
        self.state.store(state_code(s), Ordering::Release)
    }
    /// Serves reads and takes writes for the replicas it holds.
    pub(crate) fn live(&self) -> bool {
        matches!(self.state(), DiskState::Active | DiskState::Draining)
    }
}

/// Which attached disks hold each chunk object. Derived from the stores at attach time and kept
/// current by writes, clones, deletes and the rebalancer; never persisted by the engine.
pub(crate) struct ChunkIndex {
    shards: Box<[RwLock<HashMap<ObjectId, Slots>>]>,
    /// Objects per virtual disk, kept with the shards (changed only while the object's shard is
    /// write-locked), so "space used" of one disk is a lookup, not a scan of every chunk.
    counts: Mutex<HashMap<u64, u64>>,
}

impl ChunkIndex {
    fn new() -> Self {
        ChunkIndex {
            shards: (0..INDEX_SHARDS)
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
            counts: Mutex::new(HashMap::new()),
        }
    }
    fn count(&self, vdisk: u64, added: bool) {
        let mut c = self.counts.lock();
        let n = c.entry(vdisk).or_insert(0);
        if added {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&vdisk);
            }
        }
    }
    /// Number of chunk objects of `vdisk` (on any disk).
    pub(crate) fn count_of(&self, vdisk: u64) -> u64 {
        self.counts.lock().get(&vdisk).copied().unwrap_or(0)
    }
    fn shard(&self, obj: ObjectId) -> &RwLock<HashMap<ObjectId, Slots>> {
        &self.shards[(mix64(obj.vdisk ^ mix64(obj.chunk)) % INDEX_SHARDS as u64) as usize]
    }
    pub(crate) fn get(&self, obj: ObjectId) -> Option<Slots> {
        self.shard(obj).read().get(&obj).copied()
    }
    pub(crate) fn get_or_insert(&self, obj: ObjectId, f: impl FnOnce() -> Slots) -> Slots {
        if let Some(s) = self.get(obj) {
            return s;
        }
        let mut sh = self.shard(obj).write();
        *sh.entry(obj).or_insert_with(|| {
            self.count(obj.vdisk, true);
            f()
        })
    }
    pub(crate) fn add(&self, obj: ObjectId, slot: u16) {
        let mut sh = self.shard(obj).write();
        sh.entry(obj)
            .or_insert_with(|| {
                self.count(obj.vdisk, true);
                Slots::default()
            })
            .insert(slot);
    }
    pub(crate) fn remove_slot(&self, obj: ObjectId, slot: u16) {
        let mut sh = self.shard(obj).write();
        if let Some(s) = sh.get_mut(&obj) {
            s.remove(slot);
            if s.is_empty() {
                sh.remove(&obj);
                self.count(obj.vdisk, false);
            }
        }
    }
    pub(crate) fn remove(&self, obj: ObjectId) {
        if self.shard(obj).write().remove(&obj).is_some() {
            self.count(obj.vdisk, false);
        }
    }
    /// Every object of `vdisk`, by chunk.
    pub(crate) fn of_vdisk(&self, vdisk: u64) -> Vec<(ObjectId, Slots)> {
        let mut v: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .filter(|(o, _)| o.vdisk == vdisk)
                    .map(|(o, s)| (*o, *s))
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_by_key(|(o, _)| *o);
        v
    }
    pub(crate) fn all(&self) -> Vec<(ObjectId, Slots)> {
        let mut v: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| s.read().iter().map(|(o, s)| (*o, *s)).collect::<Vec<_>>())
            .collect();
        v.sort_by_key(|(o, _)| *o);
        v
    }
}

/// Upper bounds (microseconds) of the per-virtual-disk latency histogram buckets; one more
/// bucket counts everything slower than the last bound.
pub const LATENCY_BUCKETS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000,
];

/// Counters of one kind of request on one virtual disk (relaxed atomics: a few adds per I/O).
#[derive(Default)]
pub(crate) struct OpCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    lat_ns: AtomicU64,
    hist: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

impl OpCounters {
    pub(crate) fn record(&self, bytes: u64, started: std::time::Instant, ok: bool) {
        let ns = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.ops.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.lat_ns.fetch_add(ns, Ordering::Relaxed);
        let us = ns / 1000;
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        self.hist[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> crate::types::OpStats {
        crate::types::OpStats {
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_us_sum: self.lat_ns.load(Ordering::Relaxed) / 1000,
            latency_hist: self
                .hist
                .iter()
                .map(|h| h.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Request counters of one virtual disk since the engine started (snapshot handles count
/// toward their disk).
#[derive(Default)]
pub(crate) struct IoCounters {
    pub read: OpCounters,
    pub write: OpCounters,
    pub flush: OpCounters,
    /// Discards and write-zeroes.
    pub discard: OpCounters,
}

/// Generation state of one virtual disk, read by every write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenState {
    pub gen: u64,
    pub pin: u64,
    /// Bumped by every change, so a change can wait for writes that saw the old state.
    pub epoch: u64,
}

pub(crate) struct SnapRt {
    pub gen: u64,
    pub deleted: AtomicBool,
}

/// Runtime state of one virtual disk, shared by its handles.
pub(crate) struct VdiskRt {
    pub id: u64,
    pub seed: u64,
    pub size_bytes: AtomicU64,
    pub deleted: AtomicBool,
    /// A rollback is running or must be redone: live I/O is refused (Busy) meanwhile.
    pub rolling_back: AtomicBool,
    /// A delete is waiting for the writes in flight: I/O is refused (Busy) meanwhile.
    pub deleting: AtomicBool,
    gens: RwLock<GenState>,
    inflight: [AtomicU64; 2],
    pub snaps: RwLock<HashMap<u64, Arc<SnapRt>>>,
    pub io: IoCounters,
}

/// Held by a write for its whole duration: the generation it writes at cannot be snapshotted
/// out from under it.
pub(crate) struct GenGuard<'a> {
    rt: &'a VdiskRt,
    parity: usize,
    pub gen: u64,
    pub pin: u64,
}

impl Drop for GenGuard<'_> {
    fn drop(&mut self) {
        self.rt.inflight[self.parity].fetch_sub(1, Ordering::AcqRel);
    }
}

/// [`GenGuard`] holding its disk's runtime state: kept by a direct write from its plan until
/// it is recorded (or given up).
pub(crate) struct OwnedGenGuard {
    rt: Arc<VdiskRt>,
    parity: usize,
    pub gen: u64,
    pub pin: u64,
}

impl Drop for OwnedGenGuard {
    fn drop(&mut self) {
        self.rt.inflight[self.parity].fetch_sub(1, Ordering::AcqRel);
    }
}

impl VdiskRt {
    /// [`VdiskRt::enter`] for a guard that outlives the borrow.
    pub(crate) fn enter_owned(self: &Arc<Self>) -> OwnedGenGuard {
        let g = self.gens.read();
        let parity = (g.epoch & 1) as usize;
        // SeqCst: a writer then checks `shutting_down`, which shutdown sets before it counts
        // the writes in flight (`writes_in_flight`): one of the two sees the other.
        self.inflight[parity].fetch_add(1, Ordering::SeqCst);
        OwnedGenGuard {
            rt: self.clone(),
            parity,
            gen: g.gen,
            pin: g.pin,
        }
    }

    pub(crate) fn new(id: u64, seed: u64, size_bytes: u64, gen: u64, pin: u64) -> Self {
        VdiskRt {
            id,
            seed,
            size_bytes: AtomicU64::new(size_bytes),
            deleted: AtomicBool::new(false),
            rolling_back: AtomicBool::new(false),
            deleting: AtomicBool::new(false),
            gens: RwLock::new(GenState { gen, pin, epoch: 0 }),
            inflight: [AtomicU64::new(0), AtomicU64::new(0)],
            snaps: RwLock::new(HashMap::new()),
            io: IoCounters::default(),
        }
    }
    pub(crate) fn enter(&self) -> GenGuard<'_> {
        let g = self.gens.read();
        let parity = (g.epoch & 1) as usize;
        // SeqCst: a writer then checks `shutting_down`, which shutdown sets before it counts
        // the writes in flight (`writes_in_flight`): one of the two sees the other.
        self.inflight[parity].fetch_add(1, Ordering::SeqCst);
        GenGuard {
            rt: self,
            parity,
            gen: g.gen,
            pin: g.pin,
        }
    }
    /// Writes (and direct write plans, rollbacks) of this disk in flight now.
    pub(crate) fn writes_in_flight(&self) -> u64 {
        self.inflight[0].load(Ordering::SeqCst) + self.inflight[1].load(Ordering::SeqCst)
    }

    /// Waits until no write of this disk is in flight, up to `limit`; after it, how many
    /// still are. The caller has fenced new writes first (a flag `enter_write` reads after it
    /// counts itself in flight: SeqCst on both sides, so one of the two sees the other).
    pub(crate) async fn drain_writes(&self, limit: Duration) -> std::result::Result<(), u64> {
        let start = std::time::Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            let n = self.writes_in_flight();
            if n == 0 {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= limit {
                return Err(n);
            }
            tokio::time::sleep(pause.min(limit - waited)).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Install new generation state, then wait until every write that saw the old one is done.
    /// Callers hold the op lock, so at most one change is in flight per disk.
    pub(crate) async fn change_gens(&self, gen: u64, pin: u64) {
        let old = {
            let mut g = self.gens.write();
            g.gen = gen;
            g.pin = pin;
            g.epoch += 1;
            g.epoch - 1
        };
        let counter = &self.inflight[(old & 1) as usize];
        while counter.load(Ordering::Acquire) != 0 {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub read_io_errors: AtomicU64,
    pub repairs: AtomicU64,
    pub unrecoverable_reads: AtomicU64,
}

pub(crate) struct Inner {
    pub cfg: EngineConfig,
    /// Serialises multi-step operations (create, snapshot, clone, rollback, disk add/remove).
    pub op: tokio::sync::Mutex<()>,
    /// Serialises persisting the metadata; see `update_meta`.
    persist: tokio::sync::Mutex<()>,
    pub meta: RwLock<Option<PoolMeta>>,
    /// A shared copy of `meta`, made once per metadata change (see `meta_arc`).
    meta_cache: RwLock<Option<Arc<PoolMeta>>>,
    pub disks: RwLock<Vec<Arc<Disk>>>,
    pub view: RwLock<Arc<PlacementView>>,
    pub index: ChunkIndex,
    stripes: Box<[Arc<tokio::sync::RwLock<()>>]>,
    /// Overlapping changes of a chunk in flight: every replica sees them in one order.
    pub order: crate::order::WriteOrder,
    pub vdisks: RwLock<HashMap<u64, Arc<VdiskRt>>>,
    /// Set once the engine has served anything; from then on the metadata in memory is the
    /// truth and background work (rebalance, orphan cleanup) may act on it.
    pub in_use: AtomicBool,
    /// Reads may alternate between replicas (the pool was shut down cleanly last time).
    pub balanced_reads: AtomicBool,
    /// The persisted metadata says "not clean" (set before the first write after open).
    pub unclean_marked: AtomicBool,
    pub counters: Counters,
    pub scrub: Mutex<ScrubStats>,
    pub rebalance: Mutex<RebalanceStats>,
    pub kick: tokio::sync::Notify,
    /// Something may need background work (a disk changed, a snapshot went, a clone appeared).
    pub bg_dirty: AtomicBool,
    /// Held by background work (maintenance pass, scrub) while it runs; shutdown takes it.
    /// Lock order: bg -> op.
    pub bg: tokio::sync::Mutex<()>,
    /// Shut down: no metadata is written any more.
    pub closed: AtomicBool,
    pub shutting_down: AtomicBool,
    /// How long `Engine::shutdown` waits for the writes in flight.
    pub shutdown_drain: Mutex<Duration>,
    /// How long a rollback or delete of a disk waits for the writes already admitted to it.
    pub io_drain: Mutex<Duration>,
    /// Chunk copies (rebalance, resync) running now; see `PoolMeta::importing`.
    pub copies_in_progress: AtomicU64,
    /// Virtual disk ids whose objects are being created (a clone before it is recorded): not
    /// orphans, whatever the metadata says yet.
    pub building: Mutex<std::collections::HashSet<u64>>,
    /// Chunks whose replicas must be made equal before they serve I/O (see `reconcile`).
    pub reconcile: crate::reconcile::ReconcileState,
    /// Rebuild pacing and progress (see `rebuild`).
    pub rebuild: crate::rebuild::RebuildCtl,
}

impl Inner {
    pub(crate) fn new(cfg: EngineConfig) -> Self {
        Inner {
            cfg,
            op: tokio::sync::Mutex::new(()),
            persist: tokio::sync::Mutex::new(()),
            meta: RwLock::new(None),
            meta_cache: RwLock::new(None),
            disks: RwLock::new(Vec::new()),
            view: RwLock::new(Arc::new(PlacementView::default())),
            index: ChunkIndex::new(),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::RwLock::new(())))
                .collect(),
            order: crate::order::WriteOrder::new(),
            vdisks: RwLock::new(HashMap::new()),
            in_use: AtomicBool::new(false),
            balanced_reads: AtomicBool::new(false),
            unclean_marked: AtomicBool::new(false),
            counters: Counters::default(),
            scrub: Mutex::new(ScrubStats::default()),
            rebalance: Mutex::new(RebalanceStats::default()),
            kick: tokio::sync::Notify::new(),
            bg_dirty: AtomicBool::new(true),
            bg: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            shutdown_drain: Mutex::new(DEFAULT_SHUTDOWN_DRAIN),
            io_drain: Mutex::new(DEFAULT_SHUTDOWN_DRAIN),
            copies_in_progress: AtomicU64::new(0),
            building: Mutex::new(std::collections::HashSet::new()),
            reconcile: Default::default(),
            rebuild: Default::default(),
        }
    }

    /// Ask the maintenance task for a pass soon.
    pub(crate) fn kick_bg(&self) {
        self.bg_dirty.store(true, Ordering::Release);
        self.kick.notify_one();
    }

    pub(crate) fn stripe(&self, obj: ObjectId) -> &tokio::sync::RwLock<()> {
        self.stripe_arc(obj)
    }

    /// [`Inner::stripe`], shared: a guard that outlives a borrow (a direct write's, held on
    /// the VMM's queue thread while its device writes run) is taken from this.
    pub(crate) fn stripe_arc(&self, obj: ObjectId) -> &Arc<tokio::sync::RwLock<()>> {
        &self.stripes[(mix64(obj.vdisk.rotate_left(32) ^ obj.chunk) % STRIPES as u64) as usize]
    }

    pub(crate) fn disk(&self, slot: u16) -> Option<Arc<Disk>> {
        self.disks.read().get(slot as usize).cloned()
    }

    /// Live disks among `slots`, in slot order given (inline: a chunk has at most 4 holders,
    /// so this allocates nothing per I/O).
    pub(crate) fn live_disks(&self, slots: Slots) -> LiveDisks {
        let disks = self.disks.read();
        slots
            .as_slice()
            .iter()
            .filter_map(|&s| disks.get(s as usize))
            .filter(|d| d.live())
            .cloned()
            .collect()
    }

    pub(crate) fn meta_snapshot(&self) -> Option<PoolMeta> {
        self.meta.read().clone()
    }

    /// The current metadata, shared: read-only callers (lists, lookups, opening a handle) get
    /// it without a copy. Metadata only changes through `update_meta` (every change raises
    /// `seq`) or by adopting a newer copy at disk attach (higher `seq`), so a cached copy with
    /// the same pool and `seq` is the same metadata. Lock order: `meta` -> `meta_cache`.
    pub(crate) fn meta_arc(&self) -> Option<Arc<PoolMeta>> {
        let m = self.meta.read();
        let m = m.as_ref()?;
        if let Some(c) = self.meta_cache.read().as_ref() {
            if c.seq == m.seq && c.pool_id == m.pool_id {
                return Some(c.clone());
            }
        }
        let a = Arc::new(m.clone());
        *self.meta_cache.write() = Some(a.clone());
        Some(a)
    }

    /// Rebuild the placement view from the attached disks that are Active.
    pub(crate) fn refresh_view(&self) {
        let disks = self.disks.read();
        let candidates: Vec<Candidate> = disks
            .iter()
            .filter(|d| d.state() == DiskState::Active)
            .map(|d| Candidate {
                slot: d.slot,
                id_hash: d.id_hash,
                node_id: d.node_id,
                weight: (d.size_bytes as f64 / (1u64 << 30) as f64).max(1.0),
            })
            .collect();
        let first = candidates.first().map(|c| c.node_id);
        let multi_node = candidates.iter().any(|c| Some(c.node_id) != first);
        *self.view.write() = Arc::new(PlacementView {
            candidates,
            multi_node,
        });
    }

    /// Apply `f` to the current metadata, persist the result to every live disk, install it.
    /// The only way metadata changes. On success the change is durable on at least one disk and
    /// on every disk that did not fail while writing it (those are marked Failed in the same
    /// change).
    pub(crate) async fn update_meta<T>(
        &self,
        f: impl FnOnce(&mut PoolMeta) -> Result<T>,
    ) -> Result<T> {
        let _p = self.persist.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Busy("the engine is shut down".into()));
        }
        let mut m = self
            .meta_snapshot()
            .ok_or_else(|| EngineError::Degraded("the pool has no disks yet".into()))?;
        let out = f(&mut m)?;
        self.persist_locked(m).await?;
        Ok(out)
    }

    /// Install a new metadata (already holding the persist lock via `update_meta`, or at pool
    /// creation) and write it out.
    async fn persist_locked(&self, mut m: PoolMeta) -> Result<()> {
        let old_seq = self.meta.read().as_ref().map_or(0, |o| o.seq).max(m.seq);
        m.seq = old_seq + 1;
        if !self.shutting_down.load(Ordering::Acquire) {
            m.clean = false;
        }
        for _round in 0..4 {
            let bytes = m.encode()?;
            let targets: Vec<Arc<Disk>> = {
                let disks = self.disks.read();
                disks
                    .iter()
                    .filter(|d| d.live())
                    .filter(|d| {
                        m.disks.iter().any(|dm| {
                            dm.id == d.id
                                && matches!(dm.state, DiskState::Active | DiskState::Draining)
                        })
                    })
                    .cloned()
                    .collect()
            };
            if targets.is_empty() {
                return Err(EngineError::Degraded(
                    "no live disk can hold the pool metadata".into(),
                ));
            }
            let results = futures::future::join_all(
                targets.iter().map(|d| d.replica.put_meta(bytes.clone())),
            )
            .await;
            let mut failed = Vec::new();
            let mut other: Option<StoreError> = None;
            for (d, r) in targets.iter().zip(results) {
                match r {
                    Ok(()) => {}
                    Err(e) if crate::replica::is_device_failure(&e) => failed.push((d.clone(), e)),
                    Err(e) => other = Some(e),
                }
            }
            if let Some(e) = other {
                return Err(EngineError::store("writing pool metadata", e));
            }
            if failed.is_empty() {
                if !m.clean {
                    self.unclean_marked.store(true, Ordering::Release);
                }
                *self.meta.write() = Some(m);
                return Ok(());
            }
            for (d, e) in failed {
                tracing::error!(disk = %d.name, error = %e, "metadata write failed; disk marked failed");
                d.set_state(DiskState::Failed);
                d.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(dm) = m.disks.iter_mut().find(|dm| dm.id == d.id) {
                    dm.state = DiskState::Failed;
                }
            }
            m.map_version += 1;
            m.seq += 1;
            self.refresh_view();
            self.kick_bg();
        }
        Err(EngineError::io(
            "pool metadata could not be written to any disk",
        ))
    }

    /// First metadata of a new pool (no previous copy anywhere).
    pub(crate) async fn install_new_meta(&self, m: PoolMeta) -> Result<()> {
        let _p = self.persist.lock().await;
        self.persist_locked(m).await
    }

    /// A disk returned EIO on a write or flush (or vanished): stop using it at once, record it
    /// as Failed durably, and let the rebalancer re-mirror its chunks.
    pub(crate) async fn fail_disk(&self, disk: &Disk, e: &StoreError) -> Result<()> {
        disk.errors.fetch_add(1, Ordering::Relaxed);
        let was_live = disk.live();
        disk.set_state(DiskState::Failed);
        if was_live {
            tracing::error!(disk = %disk.name, error = %e, "disk failed; re-mirroring its chunks");
        }
        self.refresh_view();
        let id = disk.id.clone();
        let r = self
            .update_meta(|m| {
                if let Some(dm) = m.disks.iter_mut().find(|dm| dm.id == id) {
                    if dm.state != DiskState::Failed {
                        dm.state = DiskState::Failed;
                        m.map_version += 1;
                    }
                }
                Ok(())
            })
            .await;
        self.kick_bg();
        r
    }

    pub(crate) fn vdisk_rt(&self, id: u64) -> Option<Arc<VdiskRt>> {
        self.vdisks.read().get(&id).cloned()
    }
}

impl Inner {
    /// Before the first change after open, record durably that the pool is in use (not
    /// clean), so a crash from here on is recognised at the next open.
    pub(crate) async fn mark_unclean(&self) -> Result<()> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::Busy("the engine is shutting down".into()));
        }
        if self.unclean_marked.load(Ordering::Acquire) {
            return Ok(());
        }
        self.in_use.store(true, Ordering::Release);
        self.update_meta(|_| Ok(())).await
    }

    /// Flush every live disk that took changes since its last flush, all at once. A disk whose
    /// flush fails is marked Failed (fail-stop, never retried); the call fails only if no disk
    /// holding changes survived.
    pub(crate) async fn flush_all(&self) -> Result<()> {
        let disks: Vec<Arc<Disk>> = self
            .disks
            .read()
            .iter()
            .filter(|d| d.live())
            .cloned()
            .collect();
        let futs = disks.iter().map(|d| async move {
            let target = d.write_seq.load(Ordering::Acquire);
            if d.flushed_seq.load(Ordering::Acquire) >= target {
                return (d.clone(), None, false);
            }
            d.flushes.fetch_add(1, Ordering::Relaxed);
            match d.replica.flush().await {
                Ok(()) => {
                    d.flushed_seq.fetch_max(target, Ordering::AcqRel);
                    (d.clone(), None, true)
                }
                Err(e) => (d.clone(), Some(e), true),
            }
        });
        let results = futures::future::join_all(futs).await;
        let mut flushed_ok = 0;
        let mut needed = 0;
        let mut other = None;
        for (d, err, did) in results {
            if did {
                needed += 1;
            }
            match err {
                None => {
                    // An unreachable node's replica "flushes" without holding anything.
                    if did && d.replica.reachability() == crate::replica::Reachability::Up {
                        flushed_ok += 1;
                    }
                }
                Some(e) if crate::replica::is_device_failure(&e) => self.fail_disk(&d, &e).await?,
                Some(e) => other = Some(e),
            }
        }
        if let Some(e) = other {
            return Err(EngineError::store("flush", e));
        }
        if needed > 0 && flushed_ok == 0 {
            return Err(EngineError::io("flush failed on every disk"));
        }
        Ok(())
    }
}
