//! One object's block map: block index -> versions, ordered by block.
//!
//! The engine's objects are 256-block chunks read at random, and a `BTreeMap` lookup there costs
//! a dependent cache miss per tree level (the largest user-space item of a 4 KiB random read in
//! the profile). Once an object holds `PROMOTE` or more blocks below `FLAT`, those blocks move
//! into a directly indexed table: one slot per block, a lookup is one index. Sparse objects and
//! blocks at or above `FLAT` stay in the tree, so memory stays proportional to what is stored
//! (a table is at most ~`FLAT / DEMOTE` times the tree it replaces; it goes back to the tree
//! when the object thins out).
//!
//! Owns only the container. It must behave exactly like the `BTreeMap<u64, Versions>` it
//! replaces (ascending iteration, insert-empty-on-entry, remove): the version rules live in
//! `maps`, and the checkpoint encodes whatever this yields, so the on-disk format is unchanged.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::maps::Versions;

/// Blocks `[0, FLAT)` can live in the table.
pub(crate) const FLAT: usize = 256;
/// Table once this many blocks below `FLAT` are present.
const PROMOTE: usize = 16;
/// Back to the tree when the table holds fewer than this.
const DEMOTE: usize = 4;

/// `&KEYS[i] == &(i as u64)`: lets the table hand out `&u64` keys like a map does.
static KEYS: [u64; FLAT] = {
    let mut k = [0u64; FLAT];
    let mut i = 0;
    while i < FLAT {
        k[i] = i as u64;
        i += 1;
    }
    k
};

#[derive(Clone, Default)]
pub(crate) struct ObjMap {
    /// Empty, or `FLAT` slots; when in use, `tree` holds no key below `FLAT`.
    flat: Vec<Option<Versions>>,
    /// Occupied slots of `flat`.
    nflat: usize,
    tree: BTreeMap<u64, Versions>,
}

/// A slot about to be filled (`map.entry(b).or_default()`, as with `BTreeMap`).
pub(crate) struct Entry<'a> {
    map: &'a mut ObjMap,
    block: u64,
}

impl<'a> Entry<'a> {
    pub fn or_default(self) -> &'a mut Versions {
        self.map.get_or_insert(self.block)
    }
}

/// Index into the table for `b`, if `b` lives there.
fn flat_idx(flat: &[Option<Versions>], b: u64) -> Option<usize> {
    (b < flat.len() as u64).then_some(b as usize)
}

impl ObjMap {
    pub fn len(&self) -> usize {
        self.nflat + self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, b: &u64) -> Option<&Versions> {
        match flat_idx(&self.flat, *b) {
            Some(i) => self.flat[i].as_ref(),
            None => self.tree.get(b),
        }
    }

    pub fn get_mut(&mut self, b: &u64) -> Option<&mut Versions> {
        match flat_idx(&self.flat, *b) {
            Some(i) => self.flat[i].as_mut(),
            None => self.tree.get_mut(b),
        }
    }

    pub fn entry(&mut self, block: u64) -> Entry<'_> {
        Entry { map: self, block }
    }

    fn get_or_insert(&mut self, b: u64) -> &mut Versions {
        if self.flat.is_empty() && b < FLAT as u64 && !self.tree.contains_key(&b) {
            let low = self.tree.range(..FLAT as u64).count();
            if low + 1 >= PROMOTE {
                self.promote();
            }
        }
        match flat_idx(&self.flat, b) {
            Some(i) => {
                let slot = &mut self.flat[i];
                if slot.is_none() {
                    self.nflat += 1;
                }
                slot.get_or_insert_with(Versions::default)
            }
            None => self.tree.entry(b).or_default(),
        }
    }

    /// Move the tree's blocks below `FLAT` into a new table.
    fn promote(&mut self) {
        let mut flat: Vec<Option<Versions>> = vec![None; FLAT];
        let high = self.tree.split_off(&(FLAT as u64));
        for (b, vs) in std::mem::replace(&mut self.tree, high) {
            flat[b as usize] = Some(vs);
            self.nflat += 1;
        }
        self.flat = flat;
    }

    /// Back to the tree alone (the table would cost more than it saves).
    fn demote(&mut self) {
        for (i, slot) in std::mem::take(&mut self.flat).into_iter().enumerate() {
            if let Some(vs) = slot {
                self.tree.insert(i as u64, vs);
            }
        }
        self.nflat = 0;
    }

    pub fn remove(&mut self, b: &u64) -> Option<Versions> {
        let Some(i) = flat_idx(&self.flat, *b) else {
            return self.tree.remove(b);
        };
        let out = self.flat[i].take();
        if out.is_some() {
            self.nflat -= 1;
            if self.nflat < DEMOTE {
                self.demote();
            }
        }
        out
    }

    /// Entries with keys in `r`, ascending.
    pub fn range(&self, r: Range<u64>) -> impl Iterator<Item = (&u64, &Versions)> + '_ {
        let end = r.end.max(r.start);
        let lo = r.start.min(FLAT as u64) as usize;
        let hi = end.min(FLAT as u64) as usize;
        let flat = self.flat.get(lo..hi).unwrap_or_default();
        // A table-held object's tree is usually empty; even then a range search walks its
        // root (a cache miss per object on a random write's generation check).
        let tree = (!self.tree.is_empty()).then(|| self.tree.range(r.start..end));
        flat.iter()
            .enumerate()
            .filter_map(move |(i, s)| s.as_ref().map(|vs| (&KEYS[lo + i], vs)))
            .chain(tree.into_iter().flatten())
    }

    /// Every entry, ascending by block.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Versions)> + '_ {
        self.range(0..u64::MAX)
    }

    pub fn values(&self) -> impl Iterator<Item = &Versions> + '_ {
        self.iter().map(|(_, vs)| vs)
    }

    /// Keep the entries for which `keep` is true (it may change their versions).
    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &mut Versions) -> bool) {
        let mut removed = 0;
        for (i, slot) in self.flat.iter_mut().enumerate() {
            if let Some(vs) = slot {
                if !keep(&KEYS[i], vs) {
                    *slot = None;
                    removed += 1;
                }
            }
        }
        self.nflat -= removed;
        if !self.flat.is_empty() && self.nflat < DEMOTE {
            self.demote();
        }
        self.tree.retain(|b, vs| keep(b, vs));
    }

    #[cfg(test)]
    pub(crate) fn is_flat(&self) -> bool {
        !self.flat.is_empty()
    }
}

impl<'a> IntoIterator for &'a ObjMap {
    type Item = (&'a u64, &'a Versions);
    type IntoIter = Box<dyn Iterator<Item = (&'a u64, &'a Versions)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl PartialEq for ObjMap {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for ObjMap {}

impl std::fmt::Debug for ObjMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::Version;

    fn v(gen: u64) -> Versions {
        Versions::One(Version {
            gen,
            phys: gen * 10,
            crc: gen as u32,
        })
    }

    /// Random inserts, removes and retains against a `BTreeMap`: same contents, same order,
    /// through promotion and demotion.
    #[test]
    fn behaves_like_a_btreemap() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut ours = ObjMap::default();
        let mut model: BTreeMap<u64, Versions> = BTreeMap::new();
        let (mut was_flat, mut was_tree_again) = (false, false);
        for step in 0..20_000u64 {
            // Mostly below FLAT, some above (they always stay in the tree).
            let b = if rnd(8) == 0 {
                200 + rnd(200)
            } else {
                rnd(FLAT as u64)
            };
            // Phases: filling (promotes), then thinning (demotes).
            let fill = (step / 2_000) % 2 == 0;
            match rnd(10) {
                0..=5 if fill => {
                    *ours.entry(b).or_default() = v(step + 1);
                    *model.entry(b).or_default() = v(step + 1);
                }
                0..=5 => assert_eq!(ours.remove(&b), model.remove(&b)),
                6 => {
                    let (lo, n) = (rnd(300), rnd(40));
                    let a: Vec<_> = ours.range(lo..lo + n).collect();
                    let e: Vec<_> = model.range(lo..lo + n).collect();
                    assert_eq!(a, e, "range {lo}+{n}");
                }
                7 if !fill => {
                    let cut = rnd(7);
                    ours.retain(|b, _| b % 7 != cut);
                    model.retain(|b, _| b % 7 != cut);
                }
                _ => {
                    if let Some(vs) = ours.get_mut(&b) {
                        vs[0].crc ^= 1;
                    }
                    if let Some(vs) = model.get_mut(&b) {
                        vs[0].crc ^= 1;
                    }
                    assert_eq!(ours.get(&b), model.get(&b));
                }
            }
            assert_eq!(ours.len(), model.len());
            was_flat |= ours.is_flat();
            was_tree_again |= was_flat && !ours.is_flat() && !ours.is_empty();
        }
        assert!(ours.iter().eq(model.iter()));
        assert!(was_flat && was_tree_again, "both representations exercised");
    }

    #[test]
    fn empty_and_reversed_ranges_are_empty() {
        let mut m = ObjMap::default();
        for b in 0..40 {
            *m.entry(b).or_default() = v(b + 1);
        }
        assert!(m.is_flat());
        assert_eq!(m.range(10..10).count(), 0);
        // A reversed range is empty (a BTreeMap would panic; callers never pass one).
        let (hi, lo) = (20, 10);
        assert_eq!(m.range(hi..lo).count(), 0);
        assert_eq!(m.range(30..u64::MAX).count(), 10);
        assert_eq!(m.values().count(), 40);
    }
}
