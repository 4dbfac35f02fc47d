//! Where a chunk's replicas should live: weighted rendezvous hashing over the pool's active
//! disks, keyed by (placement seed, chunk index). Every node computes the same answer from the
//! same disk set, load spreads over all disks in proportion to their size, and adding or removing
//! one disk moves only the chunks whose winner changes (about 1/n of them).
//!
//! Node is the first failure domain: the second replica goes to the best disk on another node
//! when the pool has more than one node; on one node, to the best other disk.
//!
//! A node-private virtual disk (the node's own raft log and configuration record) is placed
//! only on the disks of one node (`place_in` with `only_node`): both replicas stay local, so
//! its writes never depend on a peer or on the cluster's permission to write without one.
//!
//! This module is pure computation; it never looks at where chunks actually are.

/// One disk placement may use.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// The engine's slot number for the attached disk.
    pub slot: u16,
    /// Stable hash of the disk's UUID, so the answer does not depend on attach order.
    pub id_hash: u64,
    pub node_id: u64,
    /// Relative weight (disk size in GiB, at least 1).
    pub weight: f64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PlacementView {
    pub candidates: Vec<Candidate>,
    pub multi_node: bool,
}

/// Replicas per chunk.
pub(crate) const REPLICAS: usize = 2;

/// A small fixed set of disk slots (no heap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Slots {
    len: u8,
    slots: [u16; 4],
}

impl Slots {
    pub(crate) fn as_slice(&self) -> &[u16] {
        &self.slots[..self.len as usize]
    }
    pub(crate) fn contains(&self, s: u16) -> bool {
        self.as_slice().contains(&s)
    }
    /// Adds `s` if absent; returns false when full.
    pub(crate) fn insert(&mut self, s: u16) -> bool {
        if self.contains(s) {
            return true;
        }
        if self.len as usize == self.slots.len() {
            return false;
        }
        self.slots[self.len as usize] = s;
        self.len += 1;
        true
    }
    pub(crate) fn remove(&mut self, s: u16) {
        if let Some(i) = self.as_slice().iter().position(|&x| x == s) {
            self.slots.copy_within(i + 1..self.len as usize, i);
            self.len -= 1;
        }
    }
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a then mixed: a stable hash of a disk id string.
pub(crate) fn hash_str(s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

fn score(seed: u64, chunk: u64, c: &Candidate) -> f64 {
    let h = mix64(seed ^ mix64(chunk ^ mix64(c.id_hash)));
    // u in (0, 1]; weighted rendezvous: larger weight -> proportionally more wins.
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    c.weight / -u.ln().min(-f64::MIN_POSITIVE)
}

impl PlacementView {
    /// The disks chunk `chunk` of a disk with placement seed `seed` should live on, best first.
    /// Fewer than `REPLICAS` when the pool has fewer disks.
    #[cfg(test)]
    pub(crate) fn place(&self, seed: u64, chunk: u64) -> Slots {
        self.place_in(seed, chunk, None)
    }

    /// Like `place`, but with `only_node` set only that node's disks are candidates (both
    /// replicas on two of its disks, or one replica when it has a single disk).
    pub(crate) fn place_in(&self, seed: u64, chunk: u64, only_node: Option<u64>) -> Slots {
        let mut best: [Option<(f64, usize)>; 2] = [None, None];
        let allowed = |c: &Candidate| only_node.is_none_or(|n| c.node_id == n);
        let spread = self.multi_node && only_node.is_none();
        // First replica: the best disk overall.
        for (i, c) in self.candidates.iter().enumerate() {
            if !allowed(c) {
                continue;
            }
            let s = score(seed, chunk, c);
            if best[0].is_none_or(|(b, _)| s > b) {
                best[0] = Some((s, i));
            }
        }
        let mut out = Slots::default();
        let Some((_, first)) = best[0] else {
            return out;
        };
        out.insert(self.candidates[first].slot);
        let first_node = self.candidates[first].node_id;
        // Second replica: the best disk on another node if there is one, else any other disk.
        for (i, c) in self.candidates.iter().enumerate() {
            if i == first || !allowed(c) || (spread && c.node_id == first_node) {
                continue;
            }
            let s = score(seed, chunk, c);
            if best[1].is_none_or(|(b, _)| s > b) {
                best[1] = Some((s, i));
            }
        }
        if let Some((_, second)) = best[1] {
            out.insert(self.candidates[second].slot);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: u16, nodes: u64) -> PlacementView {
        let candidates = (0..n)
            .map(|i| Candidate {
                slot: i,
                id_hash: hash_str(&format!("disk-{i}")),
                node_id: u64::from(i) % nodes,
                weight: 8.0,
            })
            .collect();
        PlacementView {
            candidates,
            multi_node: nodes > 1,
        }
    }

    #[test]
    fn two_distinct_disks_and_even_spread() {
        let v = view(4, 1);
        let mut load = [0u32; 4];
        for chunk in 0..4000 {
            let p = v.place(7, chunk);
            assert_eq!(p.len(), 2);
            assert_ne!(p.as_slice()[0], p.as_slice()[1]);
            for &s in p.as_slice() {
                load[s as usize] += 1;
            }
        }
        // 8000 replicas over 4 disks: each within 10% of 2000.
        for l in load {
            assert!((1800..=2200).contains(&l), "uneven load {load:?}");
        }
    }

    #[test]
    fn node_is_first_failure_domain() {
        let v = view(6, 3);
        for chunk in 0..1000 {
            let p = v.place(1, chunk);
            let nodes: Vec<u64> = p.as_slice().iter().map(|&s| u64::from(s) % 3).collect();
            assert_ne!(nodes[0], nodes[1], "both replicas on one node");
        }
    }

    #[test]
    fn adding_a_disk_moves_about_one_nth() {
        let before = view(4, 1);
        let after = view(5, 1);
        let mut moved = 0;
        let n = 5000;
        for chunk in 0..n {
            let a = before.place(3, chunk);
            let b = after.place(3, chunk);
            moved += a.as_slice().iter().filter(|s| !b.contains(**s)).count();
        }
        // Ideal: 2 * n / 5 replicas move; allow slack but far below a reshuffle.
        assert!(
            moved < n as usize * 2 * 3 / 10 && moved > n as usize / 5,
            "moved {moved}"
        );
    }

    #[test]
    fn weights_matter_and_small_pools() {
        let mut v = view(2, 1);
        v.candidates[1].weight = 24.0;
        let mut first = [0u32; 2];
        for chunk in 0..2000 {
            first[v.place(0, chunk).as_slice()[0] as usize] += 1;
        }
        assert!(first[1] > first[0] * 2, "{first:?}");
        let one = view(1, 1);
        assert_eq!(one.place(0, 0).len(), 1);
        assert!(PlacementView::default().place(0, 0).is_empty());
    }
}
