//! Free space of the data area: a bitmap with a next-fit cursor, so consecutive allocations
//! (and multi-block writes) land in contiguous runs and cost one device I/O each.
//!
//! Owns only "which data blocks may be handed out". It never decides when a block is free:
//! the maps (refcounts) and the deferred-free rule in the store do.

#[derive(Debug, Clone)]
pub(crate) struct Allocator {
    words: Vec<u64>,
    nbits: u64,
    free: u64,
    cursor: u64,
}

impl Allocator {
    /// All `nbits` blocks free.
    pub fn new(nbits: u64) -> Self {
        let nwords = nbits.div_ceil(64) as usize;
        let mut words = vec![0u64; nwords];
        // Bits past the end are permanently "used" so scans never return them.
        let tail = nbits % 64;
        if tail != 0 {
            if let Some(last) = words.last_mut() {
                *last = !0u64 << tail;
            }
        }
        Self {
            words,
            nbits,
            free: nbits,
            cursor: 0,
        }
    }

    pub fn free_blocks(&self) -> u64 {
        self.free
    }

    pub fn total_blocks(&self) -> u64 {
        self.nbits
    }

    pub fn is_used(&self, b: u64) -> bool {
        self.words[(b / 64) as usize] & (1u64 << (b % 64)) != 0
    }

    /// Mark one block used (loading maps at open).
    pub fn mark_used(&mut self, b: u64) {
        let w = &mut self.words[(b / 64) as usize];
        let bit = 1u64 << (b % 64);
        if *w & bit == 0 {
            *w |= bit;
            self.free -= 1;
        }
    }

    /// Return one block to the free pool.
    pub fn release(&mut self, b: u64) {
        let w = &mut self.words[(b / 64) as usize];
        let bit = 1u64 << (b % 64);
        assert!(*w & bit != 0, "double free of data block {b}");
        *w &= !bit;
        self.free += 1;
    }

    /// First free block at or after `from`, wrapping once. Requires `free > 0`.
    fn find_free(&self, from: u64) -> u64 {
        let nwords = self.words.len();
        let start_word = (from / 64) as usize % nwords;
        let first_mask = !0u64 << (from % 64);
        for i in 0..=nwords {
            let wi = (start_word + i) % nwords;
            let mut w = self.words[wi];
            if i == 0 {
                w |= !first_mask;
            }
            if w != u64::MAX {
                return wi as u64 * 64 + u64::from((!w).trailing_zeros());
            }
        }
        // The first word's low bits were masked in the first pass; the wrap-around pass
        // (i == nwords) rescans it whole, so a free block is always found when free > 0.
        unreachable!("allocator: free count {} but no free bit", self.free)
    }

    /// Length of the free run starting at `start`, looking at most `max` blocks (word at a
    /// time: a defragment searches whole free extents, so bit by bit would be too slow).
    fn free_run_len(&self, start: u64, max: u64) -> u64 {
        let mut len = 0;
        while len < max && start + len < self.nbits {
            let b = start + len;
            let avail = 64 - b % 64;
            let w = self.words[(b / 64) as usize] >> (b % 64);
            let z = if w == 0 {
                avail
            } else {
                u64::from(w.trailing_zeros()).min(avail)
            };
            len += z;
            if z < avail {
                break;
            }
        }
        len.min(max).min(self.nbits - start)
    }

    /// Allocate `n` blocks as ONE contiguous run (next fit from the cursor, wrapping once), or
    /// nothing when no free extent is that long.
    pub fn alloc_contig(&mut self, n: u64) -> Option<u64> {
        if n == 0 || self.free < n {
            return None;
        }
        let mut pos = if self.cursor >= self.nbits {
            0
        } else {
            self.cursor
        };
        // Blocks looked at so far; one full lap (plus a run crossing the start) ends the search.
        let mut scanned = 0u64;
        while scanned <= self.nbits + n {
            let start = self.find_free(pos);
            scanned += if start >= pos {
                start - pos
            } else {
                self.nbits - pos + start
            };
            let len = self.free_run_len(start, n);
            if len == n {
                for b in start..start + n {
                    self.words[(b / 64) as usize] |= 1u64 << (b % 64);
                }
                self.free -= n;
                self.cursor = start + n;
                return Some(start);
            }
            // The run ends at a used block (or the end of the area): skip past it.
            scanned += len + 1;
            pos = start + len + 1;
            if pos >= self.nbits {
                pos = 0;
            }
        }
        None
    }

    /// Allocate exactly `n` blocks as a list of (start, len) runs appended to `out`,
    /// or nothing at all when fewer than `n` are free.
    pub fn alloc(&mut self, n: u64, out: &mut Vec<(u64, u64)>) -> bool {
        if n == 0 || self.free < n {
            return n == 0;
        }
        let mut need = n;
        let mut pos = if self.cursor >= self.nbits {
            0
        } else {
            self.cursor
        };
        while need > 0 {
            let start = self.find_free(pos);
            let mut len = 0;
            while len < need && start + len < self.nbits && !self.is_used(start + len) {
                let b = start + len;
                self.words[(b / 64) as usize] |= 1u64 << (b % 64);
                len += 1;
            }
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => out.push((start, len)),
            }
            need -= len;
            pos = start + len;
            if pos >= self.nbits {
                pos = 0;
            }
        }
        self.free -= n;
        self.cursor = pos;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_run_or_nothing() {
        let mut a = Allocator::new(300);
        let mut runs = Vec::new();
        assert!(a.alloc(300, &mut runs));
        // Free holes of 3, 70 and 10 blocks.
        for b in (5..8).chain(100..170).chain(250..260) {
            a.release(b);
        }
        assert_eq!(a.alloc_contig(64), Some(100));
        assert_eq!(a.free_blocks(), 3 + 6 + 10);
        assert_eq!(a.alloc_contig(11), None, "no run of 11 left");
        assert_eq!(a.alloc_contig(10), Some(250));
        assert_eq!(a.alloc_contig(6), Some(164));
        assert_eq!(a.alloc_contig(3), Some(5));
        assert_eq!(a.free_blocks(), 0);
        assert_eq!(a.alloc_contig(1), None);
        for b in 0..300 {
            assert!(a.is_used(b));
        }
    }

    #[test]
    fn contiguous_then_fragmented_then_full() {
        let mut a = Allocator::new(130);
        let mut runs = Vec::new();
        assert!(a.alloc(100, &mut runs));
        assert_eq!(runs, vec![(0, 100)]);
        for b in (10..20).step_by(2) {
            a.release(b);
        }
        runs.clear();
        assert!(a.alloc(30, &mut runs));
        assert_eq!(runs, vec![(100, 30)]);
        runs.clear();
        assert!(!a.alloc(6, &mut runs), "only 5 free");
        assert!(runs.is_empty());
        assert!(a.alloc(5, &mut runs));
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 5);
        assert_eq!(a.free_blocks(), 0);
        assert!(!a.alloc(1, &mut runs));
    }
}
