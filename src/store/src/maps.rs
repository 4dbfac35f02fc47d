//! The in-memory maps: per object, per block, the list of versions (oldest first), plus exact
//! reference counts of data blocks. Every mutation is `apply(record)`, a deterministic function
//! of (maps, record), so journal replay rebuilds exactly what the live store had.
//!
//! Owns the version rules of the contract (replace at equal gen, keep what the newest snapshot
//! needs, tombstones, prune). Must never do I/O and never free a block itself: blocks whose
//! refcount drops to zero are handed out through `freed` for the store's deferred-free rule.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::codec::Record;
use crate::ObjectId;

/// `phys` of a tombstone (reads as zeros).
pub(crate) const TOMB: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    pub gen: u64,
    pub phys: u64,
    pub crc: u32,
}

pub(crate) use crate::objmap::ObjMap;
pub(crate) use crate::versions::Versions;

/// A cheap hasher for `ObjectId` keys (two u64s chosen by us, not by an attacker), so the
/// per-I/O map lookup costs a few multiplies instead of SipHash.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type ObjTable = HashMap<ObjectId, ObjMap, BuildHasherDefault<IdHasher>>;

pub(crate) struct Maps {
    pub objs: ObjTable,
    /// References per data block.
    pub refs: Vec<u32>,
    /// Versions held (data and tombstones), bounded by `version_cap` so a checkpoint always fits.
    pub nversions: u64,
    /// Blocks whose refcount reached zero since the caller last drained this.
    pub freed: Vec<u64>,
}

/// The newest version visible at `at_gen`.
pub(crate) fn visible(vs: &[Version], at_gen: u64) -> Option<&Version> {
    vs.iter().rev().find(|v| v.gen <= at_gen)
}

/// Data block visible at `at_gen` (None = zeros).
pub(crate) fn visible_data(vs: &[Version], at_gen: u64) -> Option<&Version> {
    visible(vs, at_gen).filter(|v| v.phys != TOMB)
}

impl Maps {
    pub fn new(data_blocks: u64) -> Self {
        Self {
            objs: ObjTable::default(),
            refs: vec![0; data_blocks as usize],
            nversions: 0,
            freed: Vec::new(),
        }
    }

    fn add_ref(&mut self, phys: u64) {
        if phys != TOMB {
            let r = &mut self.refs[phys as usize];
            *r = r
                .checked_add(1)
                .expect("refcount overflow is prevented by the version cap");
        }
    }

    fn drop_ref(refs: &mut [u32], freed: &mut Vec<u64>, phys: u64) {
        if phys != TOMB {
            let r = &mut refs[phys as usize];
            // Every version holds exactly one reference, so this cannot underflow; if it ever
            // did, leaking the block is safer than freeing live data.
            assert!(*r > 0, "refcount underflow on data block {phys}");
            *r -= 1;
            if *r == 0 {
                freed.push(phys);
            }
        }
    }

    /// Newest generation of a block (for the "no write below the newest gen" check).
    pub fn newest_gen(&self, obj: ObjectId, block: u64) -> Option<u64> {
        self.objs.get(&obj)?.get(&block)?.last().map(|v| v.gen)
    }

    pub fn apply(&mut self, rec: &Record) {
        match rec {
            Record::Put {
                obj,
                block,
                gen,
                pin_gen,
                phys,
                crc,
            } => {
                self.add_ref(*phys);
                self.put(
                    *obj,
                    *block,
                    Version {
                        gen: *gen,
                        phys: *phys,
                        crc: *crc,
                    },
                    *pin_gen,
                );
            }
            Record::Clone {
                src,
                at_gen,
                dst,
                dst_gen,
            } => {
                if src == dst {
                    return;
                }
                let shared: Vec<(u64, Version)> = match self.objs.get(src) {
                    Some(m) => m
                        .iter()
                        .filter_map(|(b, vs)| visible_data(vs, *at_gen).map(|v| (*b, *v)))
                        .collect(),
                    None => return,
                };
                for (b, v) in shared {
                    self.add_ref(v.phys);
                    let nv = Version { gen: *dst_gen, ..v };
                    self.put(*dst, b, nv, 0);
                }
            }
            Record::Rollback {
                obj,
                snap_gen,
                gen,
                pin_gen,
            } => {
                let changes: Vec<(u64, Version)> = match self.objs.get(obj) {
                    Some(m) => m
                        .iter()
                        .filter_map(|(b, vs)| {
                            let s = visible_data(vs, *snap_gen);
                            let l = visible_data(vs, u64::MAX);
                            if s.map(|v| v.phys) == l.map(|v| v.phys) {
                                return None;
                            }
                            let nv = match s {
                                Some(v) => Version { gen: *gen, ..*v },
                                None => Version {
                                    gen: *gen,
                                    phys: TOMB,
                                    crc: 0,
                                },
                            };
                            Some((*b, nv))
                        })
                        .collect(),
                    None => return,
                };
                for (b, v) in changes {
                    self.add_ref(v.phys);
                    self.put(*obj, b, v, *pin_gen);
                }
            }
            Record::Delete { obj } => {
                if let Some(m) = self.objs.remove(obj) {
                    for vs in m.values() {
                        self.nversions -= vs.len() as u64;
                        for v in vs {
                            Self::drop_ref(&mut self.refs, &mut self.freed, v.phys);
                        }
                    }
                }
            }
            Record::Prune { vdisk, snaps } => self.prune(*vdisk, snaps),
            Record::Repair {
                obj,
                block,
                gen,
                phys,
                crc,
            } => {
                let Some(v) = self
                    .objs
                    .get_mut(obj)
                    .and_then(|m| m.get_mut(block))
                    .and_then(|vs| vs.iter_mut().find(|v| v.gen == *gen && v.phys != TOMB))
                else {
                    return;
                };
                let old = v.phys;
                v.phys = *phys;
                v.crc = *crc;
                self.add_ref(*phys);
                Self::drop_ref(&mut self.refs, &mut self.freed, old);
            }
            Record::Import {
                obj,
                block,
                gen,
                phys,
                crc,
            } => {
                self.add_ref(*phys);
                let vs = self
                    .objs
                    .entry(*obj)
                    .or_default()
                    .entry(*block)
                    .or_default();
                vs.push(Version {
                    gen: *gen,
                    phys: *phys,
                    crc: *crc,
                });
                self.nversions += 1;
            }
        }
    }

    /// The write rule: replace the newest version at equal gen, otherwise append and drop the
    /// superseded version unless the newest snapshot (`pin_gen`) needs it. The caller has
    /// already taken the reference for `nv.phys`.
    fn put(&mut self, obj: ObjectId, block: u64, nv: Version, pin_gen: u64) {
        let m = self.objs.entry(obj).or_default();
        let vs = m.entry(block).or_default();
        let refs = &mut self.refs;
        let freed = &mut self.freed;
        match vs.last().copied() {
            Some(last) if nv.phys == TOMB && last.phys == TOMB && last.gen <= nv.gen => {
                // Already a hole at this point of history; a second tombstone adds nothing.
            }
            Some(last) if last.gen >= nv.gen => {
                // Equal gen (or, defensively, an older one): replace in place.
                let n = vs.len();
                vs[n - 1] = nv;
                Self::drop_ref(refs, freed, last.phys);
            }
            Some(last) => {
                if last.gen > pin_gen {
                    // No snapshot (all are <= pin_gen) can see the superseded version.
                    vs.pop();
                    self.nversions -= 1;
                    Self::drop_ref(refs, freed, last.phys);
                }
                vs.push(nv);
                self.nversions += 1;
            }
            None => {
                vs.push(nv);
                self.nversions += 1;
            }
        }
        // A tombstone at the bottom of history reads like "never written": drop it.
        while vs.first().is_some_and(|v| v.phys == TOMB) {
            vs.remove(0);
            self.nversions -= 1;
        }
        if vs.is_empty() {
            m.remove(&block);
            if m.is_empty() {
                self.objs.remove(&obj);
            }
        }
    }

    fn prune(&mut self, vdisk: u64, snaps: &[u64]) {
        let refs = &mut self.refs;
        let freed = &mut self.freed;
        let mut removed = 0u64;
        self.objs.retain(|obj, m| {
            if obj.vdisk != vdisk {
                return true;
            }
            m.retain(|_, vs| {
                let n = vs.len();
                let mut keep = Vec::with_capacity(n);
                for i in 0..n {
                    let needed = i + 1 == n || {
                        // Some snapshot s with vs[i].gen <= s < vs[i+1].gen sees version i.
                        let lo = vs[i].gen;
                        let hi = vs[i + 1].gen;
                        let idx = snaps.partition_point(|&s| s < lo);
                        idx < snaps.len() && snaps[idx] < hi
                    };
                    keep.push(needed);
                }
                let mut i = 0;
                vs.retain(|v| {
                    let k = keep[i];
                    i += 1;
                    if !k {
                        removed += 1;
                        Self::drop_ref(refs, freed, v.phys);
                    }
                    k
                });
                while vs.first().is_some_and(|v| v.phys == TOMB) {
                    vs.remove(0);
                    removed += 1;
                }
                !vs.is_empty()
            });
            !m.is_empty()
        });
        self.nversions -= removed;
    }

    /// Most versions a record may add (for the version-cap check before logging it).
    pub fn max_added_versions(&self, rec: &Record) -> u64 {
        match rec {
            Record::Put { .. } | Record::Import { .. } => 1,
            Record::Clone { src, .. } | Record::Rollback { obj: src, .. } => {
                self.objs.get(src).map_or(0, |m| m.len() as u64)
            }
            Record::Delete { .. } | Record::Prune { .. } | Record::Repair { .. } => 0,
        }
    }

    /// Recompute every refcount and the version count from the maps.
    pub fn recount(&self) -> (Vec<u32>, u64) {
        let mut refs = vec![0u32; self.refs.len()];
        let mut n = 0;
        for m in self.objs.values() {
            for vs in m.values() {
                n += vs.len() as u64;
                for v in vs {
                    if v.phys != TOMB {
                        refs[v.phys as usize] += 1;
                    }
                }
            }
        }
        (refs, n)
    }
}
