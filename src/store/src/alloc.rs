//! Free space of the data area: a bitmap plus per-segment counts, with an allocation policy that
//! keeps free space in long runs.
//!
//! The area is cut into segments of [`SEG_BLOCKS`] (1 MiB, one engine chunk). Two kinds of
//! request get two kinds of space:
//! - small writes (at most [`SMALL_MAX`] blocks: random 4 KiB overwrites) stream into empty
//!   segments while those hold most of the free space, and past that fill the holes of
//!   segments that are already partly used (see below);
//! - larger writes (and the defragmenter) take whole empty segments, continuing where the last
//!   extent ended, so a sequentially written range is one physical run.
//!
//! Redirect-on-write frees old versions at random places; with plain next-fit those holes and
//! the new blocks would spread live data evenly over the whole device and no free extent would
//! survive a few sweeps of random overwrites. Filling holes keeps live data packed and the rest
//! empty, which is what lets a defragment (or a sequential rewrite) find room.
//!
//! But holes left by random overwrites of packed data are single blocks, so small writes that
//! fill them land one apart: the writes a busy writer submits together (a VM queue's batch at
//! queue depth 32) each become a device request of their own, where adjacent blocks would be
//! merged by the block layer into one. So while free space is plentiful in whole segments
//! ([`Allocator::streaming`]: more than half of the free blocks lie in empty segments, and more
//! than one segment in [`STREAM_RESERVE_DIV`] is empty), small writes stream instead: they
//! continue right after the last small allocation, else open the next empty segment, and leave
//! the holes alone. Past that reserve they fill holes again, which by then are as dense as the
//! live data is sparse (spread over the segments not kept empty), so they come in runs whose
//! length grows with the free space. The reserve of empty segments stays for large writes and
//! the defragmenter, which need whole free extents.
//!
//! Owns only "which data blocks may be handed out". It never decides when a block is free:
//! the maps (refcounts) and the deferred-free rule in the store do.

/// Allocated (first block, blocks) runs: a small write's one or two runs stay inline (no heap
/// allocation per write).
pub type Runs = smallvec::SmallVec<[(u64, u64); 2]>;

/// Blocks per segment (1 MiB).
pub(crate) const SEG_BLOCKS: u64 = 256;
/// Allocations of at most this many blocks stream or fill holes; larger ones take empty segments.
pub(crate) const SMALL_MAX: u64 = 8;
/// Small writes stop opening empty segments once at most one segment in `STREAM_RESERVE_DIV`
/// is empty (see the module documentation).
pub(crate) const STREAM_RESERVE_DIV: u64 = 8;

#[derive(Debug, Clone)]
pub(crate) struct Allocator {
    words: Vec<u64>,
    nbits: u64,
    free: u64,
    /// Used blocks per segment.
    seg_used: Vec<u16>,
    /// One bit per segment: some but not all of its blocks are used.
    partial: Vec<u64>,
    /// One bit per segment: none of its blocks is used.
    empty: Vec<u64>,
    /// Segments whose `empty` bit is set.
    nempty: u64,
    /// Block where the next small allocation continues (streaming or filling holes).
    hole_cursor: u64,
    /// Block right after the last extent handed out (a sequential stream continues there).
    ext_cursor: u64,
}

fn get_bit(v: &[u64], i: u64) -> bool {
    v[(i / 64) as usize] & (1u64 << (i % 64)) != 0
}

fn put_bit(v: &mut [u64], i: u64, on: bool) {
    let w = &mut v[(i / 64) as usize];
    if on {
        *w |= 1u64 << (i % 64);
    } else {
        *w &= !(1u64 << (i % 64));
    }
}

/// First set bit at or after `from` among the first `n` bits of `v`, wrapping once.
fn next_set(v: &[u64], n: u64, from: u64) -> Option<u64> {
    if n == 0 {
        return None;
    }
    let from = if from >= n { 0 } else { from };
    let nwords = v.len();
    let start = (from / 64) as usize;
    for i in 0..=nwords {
        let wi = (start + i) % nwords;
        let mut w = v[wi];
        if i == 0 {
            w &= !0u64 << (from % 64);
        }
        if w != 0 {
            let bit = wi as u64 * 64 + u64::from(w.trailing_zeros());
            if bit < n {
                return Some(bit);
            }
        }
    }
    None
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
        let nsegs = nbits.div_ceil(SEG_BLOCKS);
        let swords = nsegs.div_ceil(64) as usize;
        let mut empty = vec![0u64; swords];
        for s in 0..nsegs {
            put_bit(&mut empty, s, true);
        }
        Self {
            words,
            nbits,
            free: nbits,
            seg_used: vec![0; nsegs as usize],
            partial: vec![0u64; swords],
            empty,
            nempty: nsegs,
            hole_cursor: 0,
            ext_cursor: 0,
        }
    }

    pub fn free_blocks(&self) -> u64 {
        self.free
    }

    pub fn total_blocks(&self) -> u64 {
        self.nbits
    }

    fn nsegs(&self) -> u64 {
        self.seg_used.len() as u64
    }

    /// Blocks in segment `s` (the last one may be short).
    fn seg_len(&self, s: u64) -> u64 {
        SEG_BLOCKS.min(self.nbits - s * SEG_BLOCKS)
    }

    pub fn is_used(&self, b: u64) -> bool {
        get_bit(&self.words, b)
    }

    /// Keep the per-segment count and the partial/empty bits in step with one block's change.
    fn seg_note(&mut self, b: u64, used: bool) {
        let s = b / SEG_BLOCKS;
        let len = self.seg_len(s);
        let c = &mut self.seg_used[s as usize];
        if used {
            *c += 1;
        } else {
            *c -= 1;
        }
        let c = u64::from(*c);
        let was_empty = get_bit(&self.empty, s);
        if was_empty != (c == 0) {
            if was_empty {
                self.nempty -= 1;
            } else {
                self.nempty += 1;
            }
        }
        put_bit(&mut self.empty, s, c == 0);
        put_bit(&mut self.partial, s, c > 0 && c < len);
    }

    fn take(&mut self, b: u64) {
        debug_assert!(!self.is_used(b));
        put_bit(&mut self.words, b, true);
        self.free -= 1;
        self.seg_note(b, true);
    }

    /// Mark one block used (loading maps at open).
    pub fn mark_used(&mut self, b: u64) {
        if !self.is_used(b) {
            self.take(b);
        }
    }

    /// Return one block to the free pool.
    pub fn release(&mut self, b: u64) {
        assert!(self.is_used(b), "double free of data block {b}");
        put_bit(&mut self.words, b, false);
        self.free += 1;
        self.seg_note(b, false);
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

    /// First free block in `from..end` (word at a time).
    fn find_free_in(&self, from: u64, end: u64) -> Option<u64> {
        let mut b = from;
        while b < end {
            let w = !self.words[(b / 64) as usize] >> (b % 64);
            if w != 0 {
                let f = b + u64::from(w.trailing_zeros());
                return (f < end).then_some(f);
            }
            b += 64 - b % 64;
        }
        None
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
        len.min(max).min(self.nbits.saturating_sub(start))
    }

    /// Mark `start..start + len` used (all free) and append it to `out`, merging with the run
    /// before it when adjacent.
    fn take_run(&mut self, start: u64, len: u64, out: &mut Runs) {
        for b in start..start + len {
            self.take(b);
        }
        match out.last_mut() {
            Some((s, l)) if *s + *l == start => *l += len,
            _ => out.push((start, len)),
        }
    }

    /// Start of `k` consecutive empty segments at or after segment `from` (wrapping once).
    fn find_empty_segs(&self, from: u64, k: u64) -> Option<u64> {
        let n = self.nsegs();
        let mut pos = if from >= n { 0 } else { from };
        // Segments looked at; one lap ends the search.
        let mut scanned = 0u64;
        while scanned <= n {
            let s = next_set(&self.empty, n, pos)?;
            scanned += if s >= pos { s - pos } else { n - pos + s };
            let mut len = 1;
            while len < k && s + len < n && get_bit(&self.empty, s + len) {
                len += 1;
            }
            if len == k {
                return Some(s);
            }
            scanned += len + 1;
            pos = s + len + 1;
            if pos >= n {
                pos = 0;
            }
        }
        None
    }

    /// Allocate `n` blocks as ONE contiguous run, or nothing when no free extent is that long.
    /// Tries, in order: right after the last extent, empty segments, then any free run.
    pub fn alloc_contig(&mut self, n: u64) -> Option<u64> {
        if n == 0 || self.free < n {
            return None;
        }
        let mut out = Runs::new();
        if self.ext_cursor < self.nbits && self.free_run_len(self.ext_cursor, n) == n {
            let start = self.ext_cursor;
            self.take_run(start, n, &mut out);
            self.ext_cursor = start + n;
            return Some(start);
        }
        let k = n.div_ceil(SEG_BLOCKS);
        if let Some(s) = self.find_empty_segs(self.ext_cursor / SEG_BLOCKS, k) {
            let start = s * SEG_BLOCKS;
            if self.free_run_len(start, n) == n {
                self.take_run(start, n, &mut out);
                self.ext_cursor = start + n;
                return Some(start);
            }
        }
        let start = self.scan_contig(n)?;
        self.take_run(start, n, &mut out);
        self.ext_cursor = start + n;
        Some(start)
    }

    /// Any free run of `n` blocks (next fit from the extent cursor, one lap of the bitmap).
    fn scan_contig(&self, n: u64) -> Option<u64> {
        let mut pos = if self.ext_cursor >= self.nbits {
            0
        } else {
            self.ext_cursor
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
    pub fn alloc(&mut self, n: u64, out: &mut Runs) -> bool {
        if n == 0 || self.free < n {
            return n == 0;
        }
        let need = if n > SMALL_MAX {
            self.alloc_extents(n, out)
        } else {
            n
        };
        self.fill_holes(need, out);
        true
    }

    /// Take empty segments (or the free run after the last extent) for up to `n` blocks;
    /// returns how many are still needed (no empty segment left).
    fn alloc_extents(&mut self, n: u64, out: &mut Runs) -> u64 {
        let mut need = n;
        while need > 0 {
            if self.ext_cursor < self.nbits {
                let len = self.free_run_len(self.ext_cursor, need);
                // Continue a sequential stream, or finish the segment it is in.
                if len == need || (len > 0 && (self.ext_cursor + len).is_multiple_of(SEG_BLOCKS)) {
                    let start = self.ext_cursor;
                    self.take_run(start, len, out);
                    self.ext_cursor = start + len;
                    need -= len;
                    continue;
                }
            }
            let Some(s) = next_set(&self.empty, self.nsegs(), self.ext_cursor / SEG_BLOCKS) else {
                break;
            };
            let start = s * SEG_BLOCKS;
            let len = need.min(self.seg_len(s));
            self.take_run(start, len, out);
            self.ext_cursor = start + len;
            need -= len;
        }
        need
    }

    /// Whether small writes stream into empty segments rather than fill holes: more than half
    /// of the free blocks lie in empty segments, and more than one segment in
    /// [`STREAM_RESERVE_DIV`] is empty. So at most half of the free space ends up in holes
    /// among live data, and the rest stays in whole segments.
    fn streaming(&self) -> bool {
        self.nempty > self.nsegs() / STREAM_RESERVE_DIV && self.nempty * SEG_BLOCKS * 2 > self.free
    }

    /// Take `need` blocks for a small write: right after the last small allocation when free,
    /// else from the next empty segment while [`Allocator::streaming`], else from holes in
    /// partly used segments (opening an empty segment only when no hole is left). Requires
    /// `free >= need`.
    fn fill_holes(&mut self, mut need: u64, out: &mut Runs) {
        while need > 0 {
            let pos = if self.hole_cursor >= self.nbits {
                0
            } else {
                self.hole_cursor
            };
            let seg = pos / SEG_BLOCKS;
            let seg_end = seg * SEG_BLOCKS + self.seg_len(seg);
            let streaming = self.streaming();
            // Streaming: continue right at the cursor if that block is free (else the next
            // empty segment: the holes are left alone). Filling holes: stay in the current
            // segment while it has free blocks after the cursor (a partial one: the cursor may
            // also have just crossed into an empty segment).
            let here = if streaming {
                (!self.is_used(pos)).then_some(pos)
            } else if get_bit(&self.partial, seg) {
                self.find_free_in(pos, seg_end)
            } else {
                None
            };
            let b = match here {
                Some(b) => b,
                None => {
                    let n = self.nsegs();
                    let s = if streaming {
                        next_set(&self.empty, n, seg + 1)
                            .or_else(|| next_set(&self.partial, n, seg + 1))
                    } else {
                        next_set(&self.partial, n, seg + 1)
                            .or_else(|| next_set(&self.empty, n, seg + 1))
                    }
                    .expect("free blocks exist, so some segment has room");
                    let first = s * SEG_BLOCKS;
                    self.find_free_in(first, first + self.seg_len(s))
                        .expect("a partial or empty segment has a free block")
                }
            };
            let seg_end = (b / SEG_BLOCKS) * SEG_BLOCKS + self.seg_len(b / SEG_BLOCKS);
            let len = self.free_run_len(b, need).min(seg_end - b);
            self.take_run(b, len, out);
            need -= len;
            self.hole_cursor = b + len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_counts(a: &Allocator) {
        let mut free = 0;
        for s in 0..a.nsegs() {
            let len = a.seg_len(s);
            let used = (s * SEG_BLOCKS..s * SEG_BLOCKS + len)
                .filter(|&b| a.is_used(b))
                .count() as u64;
            free += len - used;
            assert_eq!(u64::from(a.seg_used[s as usize]), used, "segment {s}");
            assert_eq!(get_bit(&a.empty, s), used == 0, "empty bit of {s}");
            assert_eq!(
                get_bit(&a.partial, s),
                used > 0 && used < len,
                "partial {s}"
            );
        }
        assert_eq!(free, a.free_blocks());
        let empty = (0..a.nsegs()).filter(|&s| get_bit(&a.empty, s)).count() as u64;
        assert_eq!(a.nempty, empty, "count of empty segments");
    }

    /// One block at a time, `n` times: where each went.
    fn singles(a: &mut Allocator, n: u64) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let mut runs = Runs::new();
                assert!(a.alloc(1, &mut runs));
                assert_eq!(runs.len(), 1);
                runs[0].0
            })
            .collect()
    }

    fn release_all(a: &mut Allocator, blocks: impl IntoIterator<Item = u64>) {
        for b in blocks {
            a.release(b);
        }
    }

    #[test]
    fn contiguous_run_or_nothing() {
        let mut a = Allocator::new(300);
        let mut runs = Runs::new();
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
        check_counts(&a);
    }

    #[test]
    fn contiguous_then_fragmented_then_full() {
        let mut a = Allocator::new(130);
        let mut runs = Runs::new();
        assert!(a.alloc(100, &mut runs));
        assert_eq!(runs.to_vec(), vec![(0, 100)]);
        for b in (10..20).step_by(2) {
            a.release(b);
        }
        runs.clear();
        assert!(a.alloc(30, &mut runs));
        assert_eq!(runs.to_vec(), vec![(100, 30)]);
        runs.clear();
        assert!(!a.alloc(6, &mut runs), "only 5 free");
        assert!(runs.is_empty());
        assert!(a.alloc(5, &mut runs));
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 5);
        assert_eq!(a.free_blocks(), 0);
        assert!(!a.alloc(1, &mut runs));
        check_counts(&a);
    }

    /// Random single-block overwrites of a packed data set stream into empty segments only
    /// until half of the free space is in holes, then fill the holes they leave: the reserve
    /// of empty segments survives any number of sweeps, and with it whole free extents for a
    /// defragment.
    #[test]
    fn random_overwrites_keep_the_reserve_of_empty_segments() {
        let nsegs = 64u64;
        let mut a = Allocator::new(nsegs * SEG_BLOCKS);
        // 16 objects of one segment each, written whole.
        let mut where_: Vec<u64> = Vec::new();
        for _ in 0..16 {
            let mut runs = Runs::new();
            assert!(a.alloc(SEG_BLOCKS, &mut runs));
            assert_eq!(runs.len(), 1, "a whole-segment write is one run");
            where_.extend(runs[0].0..runs[0].0 + SEG_BLOCKS);
        }
        // Many sweeps of random overwrites; frees are released in batches (as at a flush).
        let mut x = 12345u64;
        let mut pending = Vec::new();
        let mut min_empty = nsegs;
        for i in 0..(20 * nsegs * SEG_BLOCKS) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % where_.len() as u64) as usize;
            let mut runs = Runs::new();
            assert!(a.alloc(1, &mut runs));
            pending.push(std::mem::replace(&mut where_[k], runs[0].0));
            if i % 500 == 0 {
                for b in pending.drain(..) {
                    a.release(b);
                }
            }
            min_empty = min_empty.min(a.nempty);
        }
        check_counts(&a);
        // Free: 48 segments, less at most two that pending frees hold.
        assert!(
            (22..40).contains(&min_empty),
            "small writes streamed, but kept half of the free space in empty segments: \
             at least {min_empty} empty"
        );
        // So a defragment of a whole segment finds room, in one extent.
        let start = a.alloc_contig(SEG_BLOCKS).expect("an empty segment");
        assert_eq!(start % SEG_BLOCKS, 0);
        check_counts(&a);
    }

    /// The placement property streaming exists for: with empty segments to spare, consecutive
    /// small allocations are adjacent, across segment boundaries too, and leave the holes of
    /// packed data alone.
    #[test]
    fn consecutive_small_writes_are_adjacent_while_space_is_plentiful() {
        let mut a = Allocator::new(16 * SEG_BLOCKS);
        let mut runs = Runs::new();
        assert!(a.alloc(2 * SEG_BLOCKS, &mut runs), "packed data");
        // Single-block holes in it, as random overwrites leave them.
        let holes: Vec<u64> = (3..2 * SEG_BLOCKS).step_by(7).collect();
        release_all(&mut a, holes.iter().copied());
        let got = singles(&mut a, 3 * SEG_BLOCKS);
        let want: Vec<u64> = (2 * SEG_BLOCKS..5 * SEG_BLOCKS).collect();
        assert_eq!(got, want, "one after another from the first empty segment");
        for &h in &holes {
            assert!(!a.is_used(h), "hole {h} left alone");
        }
        // Mixed sizes up to SMALL_MAX continue the same run.
        runs.clear();
        for n in 1..=SMALL_MAX {
            assert!(a.alloc(n, &mut runs));
        }
        let n: u64 = (1..=SMALL_MAX).sum();
        assert_eq!(runs.to_vec(), vec![(5 * SEG_BLOCKS, n)]);
        // A block taken under the cursor (by anything else) only moves the stream on to the
        // next empty segment.
        a.mark_used(5 * SEG_BLOCKS + n);
        assert_eq!(singles(&mut a, 2), vec![6 * SEG_BLOCKS, 6 * SEG_BLOCKS + 1]);
        check_counts(&a);
    }

    /// The stream wraps from the end of the area to the first empty segment after the start,
    /// and every block stays usable: at the reserve small writes fill the holes, down to the
    /// last free block.
    #[test]
    fn streaming_wraps_around_and_all_space_stays_usable() {
        // Four whole segments and a short fifth one; a reserve of none.
        let total = 4 * SEG_BLOCKS + 10;
        let mut a = Allocator::new(total);
        assert_eq!(a.nsegs() / STREAM_RESERVE_DIV, 0);
        let mut runs = Runs::new();
        assert!(a.alloc(2 * SEG_BLOCKS, &mut runs));
        release_all(&mut a, [5, 6, 300]);
        // Segments 2, 3 and the short 4 are streamed through to the end of the area.
        let tail = 2 * SEG_BLOCKS + 10;
        assert_eq!(
            singles(&mut a, tail),
            (2 * SEG_BLOCKS..total).collect::<Vec<_>>()
        );
        // Segment 0 emptied meanwhile: the stream wraps to it and runs on through it.
        release_all(&mut a, (0..SEG_BLOCKS).filter(|b| ![5, 6].contains(b)));
        check_counts(&a);
        assert_eq!(singles(&mut a, 4), vec![0, 1, 2, 3]);
        // With no empty segment left, the holes are filled: everything is handed out.
        assert_eq!(
            singles(&mut a, SEG_BLOCKS - 4),
            (4..SEG_BLOCKS).collect::<Vec<_>>()
        );
        assert_eq!(a.nempty, 0);
        assert_eq!(singles(&mut a, 1), vec![300]);
        assert_eq!(a.free_blocks(), 0);
        runs.clear();
        assert!(!a.alloc(1, &mut runs), "full");
        for b in 0..total {
            assert!(a.is_used(b));
        }
        check_counts(&a);
    }

    /// At the reserve, small writes fill holes rather than open one more empty segment; once
    /// frees empty a segment above the reserve, they stream again.
    #[test]
    fn small_writes_fill_holes_at_the_reserve() {
        let nsegs = 16u64;
        let reserve = nsegs / STREAM_RESERVE_DIV;
        let mut a = Allocator::new(nsegs * SEG_BLOCKS);
        let mut runs = Runs::new();
        assert!(a.alloc((nsegs - reserve - 1) * SEG_BLOCKS, &mut runs));
        release_all(&mut a, [10, 11, 700]);
        // One empty segment above the reserve: streamed into, then the holes.
        let first = (nsegs - reserve - 1) * SEG_BLOCKS;
        let got = singles(&mut a, SEG_BLOCKS + 3);
        assert_eq!(
            got[..SEG_BLOCKS as usize].to_vec(),
            (first..first + SEG_BLOCKS).collect::<Vec<_>>()
        );
        assert_eq!(a.nempty, reserve);
        let mut rest = got[SEG_BLOCKS as usize..].to_vec();
        rest.sort_unstable();
        assert_eq!(rest, vec![10, 11, 700], "the holes, not the reserve");
        assert_eq!(a.nempty, reserve);
        // A segment freed whole puts the count above the reserve again: the stream goes on in
        // the next empty segment after the cursor.
        release_all(&mut a, SEG_BLOCKS..2 * SEG_BLOCKS);
        let next = (nsegs - reserve) * SEG_BLOCKS;
        assert_eq!(singles(&mut a, 2), vec![next, next + 1]);
        check_counts(&a);
    }

    #[test]
    fn large_writes_are_contiguous_and_small_ones_stream() {
        let mut a = Allocator::new(10 * SEG_BLOCKS + 17);
        let mut runs = Runs::new();
        assert!(a.alloc(3 * SEG_BLOCKS + 5, &mut runs));
        assert_eq!(runs.to_vec(), vec![(0, 3 * SEG_BLOCKS + 5)]);
        // Holes in the first segment.
        for b in [3, 4, 5, 90] {
            a.release(b);
        }
        runs.clear();
        assert!(a.alloc(4, &mut runs));
        assert_eq!(
            runs.to_vec(),
            vec![(4 * SEG_BLOCKS, 4)],
            "small writes stream into the next empty segment while empty ones are plentiful"
        );
        assert!([3, 4, 5, 90].iter().all(|&b| !a.is_used(b)), "holes left");
        runs.clear();
        assert!(a.alloc(16, &mut runs));
        assert_eq!(
            runs.to_vec(),
            vec![(3 * SEG_BLOCKS + 5, 16)],
            "a larger write continues after the last extent"
        );
        check_counts(&a);
        // Fill everything, including the short last segment, then free it all.
        runs.clear();
        let rest = a.free_blocks();
        assert!(a.alloc(rest, &mut runs));
        assert_eq!(a.free_blocks(), 0);
        check_counts(&a);
        for &(s, l) in &runs.clone() {
            for b in s..s + l {
                a.release(b);
            }
        }
        check_counts(&a);
        assert_eq!(a.free_blocks(), rest);
    }

    /// Random mixes of small, large and contiguous allocations, blocks marked used and frees,
    /// on pools of one short segment up to many (streaming and hole filling both run, and the
    /// switch between them): no block is handed out twice or past the end, an allocation fails
    /// exactly when fewer blocks are free, and the counts stay exact.
    #[test]
    fn random_operations_never_hand_out_a_block_twice() {
        for nbits in [
            1,
            7,
            SEG_BLOCKS,
            SEG_BLOCKS + 1,
            600,
            5 * SEG_BLOCKS + 3,
            40 * SEG_BLOCKS + 1,
        ] {
            for seed in 1..=6u64 {
                let mut a = Allocator::new(nbits);
                let mut taken = vec![false; nbits as usize];
                let mut used: Vec<u64> = Vec::new();
                let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nbits;
                let mut rnd = |m: u64| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % m
                };
                let hand_out = |b: u64, taken: &mut Vec<bool>, used: &mut Vec<u64>| {
                    assert!(b < nbits, "block {b} past the end ({nbits})");
                    assert!(!taken[b as usize], "block {b} handed out twice");
                    taken[b as usize] = true;
                    used.push(b);
                };
                for _ in 0..2000 {
                    match rnd(10) {
                        0..=5 => {
                            let n = if rnd(5) == 0 {
                                1 + rnd(600)
                            } else {
                                1 + rnd(SMALL_MAX)
                            };
                            let free = a.free_blocks();
                            let mut runs = Runs::new();
                            assert_eq!(a.alloc(n, &mut runs), free >= n, "{n} of {free} free");
                            let got: u64 = runs.iter().map(|r| r.1).sum();
                            assert_eq!(got, if free >= n { n } else { 0 });
                            for &(s, l) in &runs {
                                for b in s..s + l {
                                    hand_out(b, &mut taken, &mut used);
                                }
                            }
                        }
                        6 => {
                            let n = 1 + rnd(300);
                            if let Some(s) = a.alloc_contig(n) {
                                for b in s..s + n {
                                    hand_out(b, &mut taken, &mut used);
                                }
                            }
                        }
                        7 => {
                            let b = rnd(nbits);
                            if !taken[b as usize] {
                                a.mark_used(b);
                                hand_out(b, &mut taken, &mut used);
                            }
                        }
                        _ => {
                            for _ in 0..1 + rnd(20) {
                                if used.is_empty() {
                                    break;
                                }
                                let b = used.swap_remove(rnd(used.len() as u64) as usize);
                                taken[b as usize] = false;
                                a.release(b);
                            }
                        }
                    }
                }
                for b in 0..nbits {
                    assert_eq!(a.is_used(b), taken[b as usize], "block {b}");
                }
                check_counts(&a);
            }
        }
    }
}
