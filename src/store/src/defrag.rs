//! Read-triggered defragmentation. Redirect-on-write scatters the blocks of an object that is
//! overwritten at random: each rewritten block lands wherever the allocator is, so a later
//! sequential read of that range costs one device I/O per block. When a large read finds its
//! range split into many physical runs, the data it just read and verified is written once more
//! into one contiguous extent and the versions are moved there; the next read of the range is a
//! single device I/O.
//!
//! A move is a `Repair` record (same version, same crc, new block): the data is written before the
//! record is logged, the old block goes through the deferred-free rule, and a version that
//! changed meanwhile, or whose block is shared (clones), is left where it is — so every
//! crash-safety and refcount rule of the store holds unchanged. It runs inside the read call
//! (never as a task outliving it), and only while free space is plentiful. It must never move a
//! block whose version changed after the read, nor take space a writer may need.

use std::sync::atomic::Ordering;

use blockdev::AlignedBuf;

use crate::codec::Record;
use crate::layout::BS;
use crate::maps::TOMB;
use crate::store::Inner;
use crate::ObjectId;

/// Reads smaller than this (blocks) are never worth a rewrite.
pub(crate) const DEFRAG_MIN_BLOCKS: usize = 64;
/// A range is fragmented when its average physical run is shorter than this (blocks).
const DEFRAG_MIN_AVG_RUN: usize = 32;

/// After a failed search for a free extent, this many candidate reads skip the search (it
/// scans the free-space bitmap under the state lock; free space rarely changes that fast).
const BACKOFF_READS: u64 = 256;

/// What a read found: (index in the read, phys, crc, gen) of every block, all with data.
pub(crate) type Plan = [(usize, u64, u32, u64)];

/// Whether a read of `n` blocks that found `plan` in `nruns` physical runs should be rewritten.
pub(crate) fn worth_it(n: usize, plan: &Plan, nruns: usize) -> bool {
    n >= DEFRAG_MIN_BLOCKS && plan.len() == n && nruns * DEFRAG_MIN_AVG_RUN > n
}

impl Inner {
    /// Rewrite the range `first..first + plan.len()` of `obj` (whose verified contents are
    /// `data`) into one contiguous extent. Best effort: any obstacle leaves things as they are.
    /// Returns the number of blocks moved.
    pub(crate) async fn defrag(&self, obj: ObjectId, first: u64, plan: &Plan, data: &[u8]) -> u64 {
        if !self.defrag_enabled.load(Ordering::Relaxed) || self.check_ok().is_err() {
            return 0;
        }
        if self
            .defrag_backoff
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_ok()
        {
            return 0;
        }
        let n = plan.len() as u64;
        let start = {
            let mut st = self.state.write();
            // Leave plenty for writers: a defragment must never cause a NoSpace.
            let total = st.alloc.total_blocks();
            let cap = self.layout().version_cap;
            if st.alloc.free_blocks() < total / 8 + n
                || st.maps.nversions + st.inflight + n > cap - cap / 8
            {
                return 0;
            }
            let Some(start) = st.alloc.alloc_contig(n) else {
                // Free space is fragmented: no extent that long anywhere.
                self.defrag_backoff.store(BACKOFF_READS, Ordering::Relaxed);
                return 0;
            };
            st.inflight += n;
            start
        };
        let runs = [(start, n)];
        let buf = AlignedBuf::from_slice(&data[..(n * BS) as usize]).into_write();
        if self.write_runs(&runs, &buf).await.is_err() {
            // A real device error shows up again on the I/O that matters; nothing changed here.
            self.unalloc(&runs, n);
            return 0;
        }
        let mut moved = 0;
        {
            let mut st = self.state.write();
            st.inflight -= n;
            for (i, &(idx, phys, crc, gen)) in plan.iter().enumerate() {
                let b = first + idx as u64;
                let new = start + i as u64;
                let same = st.maps.refs[phys as usize] == 1
                    && st
                        .maps
                        .objs
                        .get(&obj)
                        .and_then(|m| m.get(&b))
                        .and_then(|vs| vs.iter().find(|v| v.gen == gen && v.phys != TOMB))
                        .is_some_and(|v| v.phys == phys && v.crc == crc);
                if same {
                    let rec = Record::Repair {
                        obj,
                        block: b,
                        gen,
                        phys: new,
                        crc,
                    };
                    self.log(&mut st, rec);
                    moved += 1;
                } else {
                    // Never referenced: free again at once.
                    st.alloc.release(new);
                }
            }
        }
        self.counters.defrag_runs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .defrag_blocks
            .fetch_add(moved, Ordering::Relaxed);
        moved
    }
}
