//! The read path: find the visible version of every block, read the device in as few I/Os as
//! the physical layout allows, verify every block's crc32c, and deliver the data either in a
//! buffer of our own (`Store::read`) or into the caller's memory (`Store::read_into`).
//!
//! Verification granularity is the 4 KiB block, the unit every checksum covers, so a read
//! checks exactly the blocks it returns. `read_into` verifies and copies one block at a time
//! while the block is still in the CPU cache, instead of a checksum pass over the whole device
//! buffer followed by a second (cache-cold) pass to copy it: one trip through memory, not two.
//!
//! It must never hand out a block whose checksum did not match: a mismatch fails the call with
//! `Corrupt` naming the first bad version (whatever was already copied into the caller's buffer
//! is then unspecified, as after any failed read).

use std::sync::atomic::Ordering;

use blockdev::AlignedBuf;

use crate::error::{Result, StoreError};
use crate::layout::BS;
use crate::maps::visible_data;
use crate::store::{check_obj_range, Inner};
use crate::{ObjectId, Store};

/// One block with data: (index in the read, phys, crc, gen).
type Entry = (usize, u64, u32, u64);

/// Where verified data goes.
enum Dest<'a> {
    /// A buffer of the store's own, returned to the caller.
    Owned(Option<AlignedBuf>),
    /// The caller's memory (`nblocks` whole blocks).
    Slice(&'a mut [u8]),
}

/// Verify `src` (the device data of `run`, consecutive entries) block by block and copy each
/// good block to its place in `dst`. Returns the first entry whose checksum does not match.
fn verify_copy(src: &[u8], run: &[Entry], dst: &mut [u8]) -> Option<Entry> {
    let bs = BS as usize;
    for (j, e) in run.iter().enumerate() {
        let block = &src[j * bs..(j + 1) * bs];
        if blockdev::crc32c(block) != e.2 {
            return Some(*e);
        }
        dst[e.0 * bs..(e.0 + 1) * bs].copy_from_slice(block);
    }
    None
}

/// Physical runs of `plan`: (first entry, entries) of each stretch that is consecutive both in
/// the read and on the device.
fn runs(plan: &[Entry]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < plan.len() {
        let mut j = i + 1;
        while j < plan.len() && plan[j].0 == plan[j - 1].0 + 1 && plan[j].1 == plan[j - 1].1 + 1 {
            j += 1;
        }
        out.push((i, j - i));
        i = j;
    }
    out
}

/// Zero the blocks of `dst` that `plan` has no data for (unwritten or discarded).
fn zero_holes(plan: &[Entry], n: usize, dst: &mut [u8]) {
    let bs = BS as usize;
    let mut next = 0;
    for e in plan {
        dst[next * bs..e.0 * bs].fill(0);
        next = e.0 + 1;
    }
    dst[next * bs..n * bs].fill(0);
}

impl Inner {
    /// The visible version of every block of the range that has data, into `out` (cleared
    /// first; a single-block read fills `one` instead and allocates nothing). Returns the plan.
    fn plan<'p>(
        &self,
        obj: ObjectId,
        block: u64,
        n: usize,
        at_gen: u64,
        one: &'p mut Option<Entry>,
        out: &'p mut Vec<Entry>,
    ) -> &'p [Entry] {
        let st = self.state.read();
        out.clear();
        let Some(m) = st.maps.objs.get(&obj) else {
            return out;
        };
        if n == 1 {
            // Point lookup for single-block reads (cheaper than a range walk).
            *one = m
                .get(&block)
                .and_then(|vs| visible_data(vs, at_gen))
                .map(|v| (0, v.phys, v.crc, v.gen));
            return one.as_slice();
        }
        // At most `n` entries: one allocation, not a doubling series (256 entries for 1 MiB).
        out.reserve(n);
        out.extend(m.range(block..block + n as u64).filter_map(|(b, vs)| {
            visible_data(vs, at_gen).map(|v| ((b - block) as usize, v.phys, v.crc, v.gen))
        }));
        out
    }

    /// Whether `obj`'s block still shows the version `e` (a concurrent write may have replaced
    /// it, and after a flush its block been reused, while we read).
    fn still_visible(&self, obj: ObjectId, b: u64, at_gen: u64, e: Entry) -> bool {
        let st = self.state.read();
        st.maps
            .objs
            .get(&obj)
            .and_then(|m| m.get(&b))
            .and_then(|vs| visible_data(vs, at_gen))
            .is_some_and(|v| v.phys == e.1 && v.gen == e.3)
    }

    /// One attempt: read and verify every block of `plan` into `dest`. Returns the number of
    /// physical runs and the first bad entry, if any.
    async fn read_plan(
        &self,
        plan: &[Entry],
        n: usize,
        dest: &mut Dest<'_>,
    ) -> Result<(usize, Option<Entry>)> {
        let bs = BS as usize;
        let whole = matches!(plan.first(), Some(&(0, _, _, _)))
            && plan.len() == n
            && plan.windows(2).all(|w| w[1].1 == w[0].1 + 1);
        if whole {
            // One contiguous run covering the whole read (the common case): one device I/O.
            let off = self.layout().data_offset(plan[0].1);
            let buf = self.dev_read(off, n as u64, "data").await?;
            return Ok((
                1,
                match dest {
                    Dest::Owned(o) => {
                        // Verified in place: the device buffer is what we return.
                        let bad = plan
                            .iter()
                            .find(|e| blockdev::crc32c(&buf[e.0 * bs..(e.0 + 1) * bs]) != e.2)
                            .copied();
                        *o = Some(buf);
                        bad
                    }
                    Dest::Slice(s) => verify_copy(&buf, plan, s),
                },
            ));
        }
        let dst: &mut [u8] = match dest {
            // Every block is either a hole (zeroed here) or copied below: no zeroing pass over
            // the whole buffer first.
            Dest::Owned(o) => o.insert(AlignedBuf::for_overwrite(n * bs)),
            Dest::Slice(s) => s,
        };
        zero_holes(plan, n, dst);
        let runs = runs(plan);
        // Every run in flight at once.
        let reads = runs.iter().map(|&(i, len)| {
            self.dev_read(self.layout().data_offset(plan[i].1), len as u64, "data")
        });
        let bufs = futures::future::try_join_all(reads).await?;
        for (&(i, len), buf) in runs.iter().zip(bufs) {
            if let Some(bad) = verify_copy(&buf, &plan[i..i + len], dst) {
                return Ok((runs.len(), Some(bad)));
            }
        }
        Ok((runs.len(), None))
    }

    async fn read_to(
        self: &std::sync::Arc<Self>,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
        dest: &mut Dest<'_>,
    ) -> Result<()> {
        self.check_ok()?;
        check_obj_range(block, u64::from(nblocks))?;
        let n = nblocks as usize;
        if let Dest::Slice(s) = dest {
            if s.len() != n * BS as usize {
                return Err(StoreError::invalid(format!(
                    "a buffer of {} bytes for {n} blocks",
                    s.len()
                )));
            }
        }
        let mut attempt = 0;
        let (mut one, mut many) = (None, Vec::new());
        loop {
            let plan = self.plan(obj, block, n, at_gen, &mut one, &mut many);
            let (nruns, bad) = self.read_plan(plan, n, dest).await?;
            let Some(e) = bad else {
                let data: &[u8] = match dest {
                    Dest::Owned(o) => o.as_deref().unwrap_or_default(),
                    Dest::Slice(s) => s,
                };
                if crate::defrag::worth_it(n, plan, nruns)
                    && self.defrag(obj, block, plan, data).await > 0
                {
                    // The moves are journal records like any other: keep the buffer bounded.
                    self.maybe_flush().await?;
                }
                return Ok(());
            };
            let b = block + e.0 as u64;
            let still = self.still_visible(obj, b, at_gen, e);
            attempt += 1;
            if still || attempt >= 3 {
                self.counters
                    .checksum_errors
                    .fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Corrupt {
                    obj,
                    block: b,
                    gen: e.3,
                });
            }
        }
    }
}

impl Store {
    /// Read `nblocks` blocks as of `at_gen`; unwritten/discarded blocks read as zeros. A
    /// checksum mismatch returns `Corrupt` naming the bad version, never wrong data.
    pub async fn read(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
    ) -> Result<AlignedBuf> {
        let mut dest = Dest::Owned(None);
        self.inner
            .read_to(obj, block, nblocks, at_gen, &mut dest)
            .await?;
        match dest {
            Dest::Owned(Some(b)) => Ok(b),
            _ => Ok(AlignedBuf::zeroed(nblocks as usize * BS as usize)),
        }
    }

    /// `read` into the caller's memory (`out` must be exactly `nblocks` blocks; any alignment):
    /// each block is verified and copied in one pass. On error `out` holds unspecified bytes.
    pub async fn read_into(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let mut dest = Dest::Slice(out);
        self.inner
            .read_to(obj, block, nblocks, at_gen, &mut dest)
            .await
    }
}

/// Where a read's data lies when a caller reads the device itself ([`Store::direct_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectRun {
    /// The device's descriptor (open as long as the store is).
    pub fd: std::os::fd::RawFd,
    /// Byte offset of the first block on the device.
    pub offset: u64,
    /// The descriptor is O_DIRECT: buffers must be 512-byte aligned.
    pub direct: bool,
}

impl Store {
    /// For a reader with an io_uring of its own (a VM's queue thread): where the visible
    /// versions of blocks `block..block + nblocks` lie, if they are one run on an io_uring
    /// device and every block has data (no hole: holes read as zeros on the ordinary path),
    /// with each block's checksum pushed to `crcs` in order. None otherwise (`crcs` then holds
    /// unspecified entries). Reads nothing and changes nothing.
    ///
    /// The plan is only a snapshot of the map: a concurrent write, discard or copy may move a
    /// block and its old place be reused before the caller reads it. The caller must therefore
    /// check every block it read against `crcs` and, on any mismatch, read again through
    /// [`Store::read`] (which re-plans) rather than report corruption: `read` treats a
    /// checksum that still matches as the version's data in the same way.
    pub fn direct_plan(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        at_gen: u64,
        crcs: &mut impl Extend<u32>,
    ) -> Option<DirectRun> {
        let inner = &self.inner;
        let dev = inner.dev.as_uring()?;
        if nblocks == 0 || inner.check_ok().is_err() || dev.is_poisoned() {
            return None;
        }
        check_obj_range(block, u64::from(nblocks)).ok()?;
        let st = inner.state.read();
        let m = st.maps.objs.get(&obj)?;
        let mut first = None;
        for i in 0..u64::from(nblocks) {
            let v = visible_data(m.get(&(block + i))?, at_gen)?;
            match first {
                None => first = Some(v.phys),
                Some(p) if v.phys == p + i => {}
                Some(_) => return None,
            }
            crcs.extend(std::iter::once(v.crc));
        }
        Some(DirectRun {
            fd: dev.raw_fd(),
            offset: inner.layout().data_offset(first?),
            direct: dev.is_direct(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_holes() {
        let plan: Vec<Entry> = vec![(0, 10, 0, 1), (1, 11, 0, 1), (3, 12, 0, 1), (4, 40, 0, 1)];
        assert_eq!(runs(&plan), vec![(0, 2), (2, 1), (3, 1)]);
        let bs = BS as usize;
        let mut dst = vec![7u8; 6 * bs];
        zero_holes(&plan, 6, &mut dst);
        for (i, b) in dst.chunks(bs).enumerate() {
            let zero = b.iter().all(|&x| x == 0);
            assert_eq!(zero, i == 2 || i == 5, "block {i}");
        }
    }

    #[test]
    fn verify_copy_stops_at_the_first_bad_block() {
        let bs = BS as usize;
        let mut src = vec![0u8; 3 * bs];
        for (i, b) in src.chunks_mut(bs).enumerate() {
            b.fill(i as u8 + 1);
        }
        let crc = |i: usize| crc32c::crc32c(&src[i * bs..(i + 1) * bs]);
        let run: Vec<Entry> = vec![(0, 5, crc(0), 1), (1, 6, crc(1) ^ 1, 1), (2, 7, crc(2), 1)];
        let mut dst = vec![0u8; 3 * bs];
        assert_eq!(verify_copy(&src, &run, &mut dst), Some(run[1]));
        assert!(dst[..bs].iter().all(|&x| x == 1), "good block copied");
        assert!(
            dst[bs..].iter().all(|&x| x == 0),
            "nothing past the bad one"
        );
    }
}
