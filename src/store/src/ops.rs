//! Object-level operations: clone, rollback, delete, prune, changed blocks, export/import,
//! repair, scrub, and the invariant check used by tests.
//!
//! Every map change here goes through `Inner::log` (one record, applied and journaled under the
//! state lock). Must never hold the state lock across device I/O.

use std::collections::BTreeSet;

use blockdev::WriteBuf;

use crate::codec::{Record, MAX_PRUNE_SNAPS};
use crate::error::{Result, StoreError};
use crate::layout::BS;
use crate::maps::{visible_data, TOMB};
use crate::store::{check_gen, Store};
use crate::{BlockData, BlockVersions, ObjectId, ScrubReport, VersionData, VersionRecord};

/// Blocks an export reads at once (1 MiB).
const EXPORT_READ_BLOCKS: u64 = 256;

impl Store {
    /// Share every block of `src` visible at `at_gen` into the empty object `dst` at `dst_gen`.
    pub async fn clone_object(
        &self,
        src: ObjectId,
        at_gen: u64,
        dst: ObjectId,
        dst_gen: u64,
    ) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        check_gen(dst_gen)?;
        if src == dst {
            return Err(StoreError::invalid(format!("clone of {src} onto itself")));
        }
        {
            let mut st = inner.state.write();
            if st.maps.objs.contains_key(&dst) {
                return Err(StoreError::invalid(format!(
                    "clone target {dst} is not empty"
                )));
            }
            let rec = Record::Clone {
                src,
                at_gen,
                dst,
                dst_gen,
            };
            let add = st.maps.max_added_versions(&rec);
            if st.maps.nversions + st.inflight + add > inner.layout().version_cap {
                return Err(StoreError::NoSpace("metadata full".into()));
            }
            inner.log(&mut st, rec);
        }
        self.inner.maybe_flush().await
    }

    /// Make the live view of `obj` equal its view at `snap_gen`, as new versions at `gen`.
    pub async fn rollback_object(
        &self,
        obj: ObjectId,
        snap_gen: u64,
        gen: u64,
        pin_gen: u64,
    ) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        check_gen(gen)?;
        {
            let mut st = inner.state.write();
            if let Some(m) = st.maps.objs.get(&obj) {
                if let Some((b, g)) = m
                    .iter()
                    .filter_map(|(b, vs)| vs.last().map(|v| (*b, v.gen)))
                    .find(|&(_, g)| g > gen)
                {
                    return Err(StoreError::invalid(format!(
                        "rollback of {obj} at generation {gen} below block {b}'s newest {g}"
                    )));
                }
            }
            let rec = Record::Rollback {
                obj,
                snap_gen,
                gen,
                pin_gen,
            };
            let add = st.maps.max_added_versions(&rec);
            if st.maps.nversions + st.inflight + add > inner.layout().version_cap {
                return Err(StoreError::NoSpace("metadata full".into()));
            }
            inner.log(&mut st, rec);
        }
        self.inner.maybe_flush().await
    }

    /// Drop every version of `obj` (space returns after the next flush).
    pub async fn delete_object(&self, obj: ObjectId) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        {
            let mut st = inner.state.write();
            if !st.maps.objs.contains_key(&obj) {
                return Ok(());
            }
            inner.log(&mut st, Record::Delete { obj });
        }
        self.inner.maybe_flush().await
    }

    /// Drop versions of every object of `vdisk` that neither a snapshot in `snap_gens` nor the
    /// live view needs.
    pub async fn prune(&self, vdisk: u64, snap_gens: &[u64]) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        if snap_gens.len() > MAX_PRUNE_SNAPS {
            return Err(StoreError::invalid(format!(
                "{} snapshots exceed {MAX_PRUNE_SNAPS}",
                snap_gens.len()
            )));
        }
        let mut snaps = snap_gens.to_vec();
        snaps.sort_unstable();
        snaps.dedup();
        {
            let mut st = inner.state.write();
            inner.log(&mut st, Record::Prune { vdisk, snaps });
        }
        self.inner.maybe_flush().await
    }

    pub fn objects(&self) -> Vec<ObjectId> {
        let mut v: Vec<ObjectId> = self.inner.state.read().maps.objs.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Blocks whose visible content differs between `from_gen` and `to_gen` (metadata only).
    pub fn changed_blocks(&self, obj: ObjectId, from_gen: u64, to_gen: u64) -> Vec<u64> {
        let st = self.inner.state.read();
        let Some(m) = st.maps.objs.get(&obj) else {
            return Vec::new();
        };
        m.iter()
            .filter(|(_, vs)| {
                visible_data(vs, from_gen).map(|v| v.phys)
                    != visible_data(vs, to_gen).map(|v| v.phys)
            })
            .map(|(b, _)| *b)
            .collect()
    }

    /// Every version of every block of `obj` as recorded (ascending block, oldest version
    /// first), from metadata only: a cheap comparison of two replicas before any data is read.
    pub fn version_records(&self, obj: ObjectId) -> Vec<VersionRecord> {
        let st = self.inner.state.read();
        let Some(m) = st.maps.objs.get(&obj) else {
            return Vec::new();
        };
        m.iter()
            .flat_map(|(b, vs)| {
                vs.iter().map(move |v| VersionRecord {
                    block: *b,
                    gen: v.gen,
                    crc: (v.phys != TOMB).then_some(v.crc),
                })
            })
            .collect()
    }

    /// Every version of every block of `obj`, with data (oldest first).
    pub async fn export_object(&self, obj: ObjectId) -> Result<Vec<BlockVersions>> {
        let inner = &*self.inner;
        let mut attempt = 0;
        loop {
            inner.check_ok()?;
            // Under the lock, one flat copy of the history: each block with its version count,
            // and every version (oldest first per block). No allocation per block.
            let (blocks, versions): (Vec<(u64, usize)>, Vec<crate::maps::Version>) = {
                let st = inner.state.read();
                let Some(m) = st.maps.objs.get(&obj) else {
                    return Ok(Vec::new());
                };
                let mut blocks = Vec::with_capacity(m.len());
                let mut versions = Vec::with_capacity(m.len());
                for (b, vs) in m.iter() {
                    blocks.push((*b, vs.len()));
                    versions.extend_from_slice(vs);
                }
                (blocks, versions)
            };
            let with_data = || versions.iter().filter(|v| v.phys != TOMB);
            // Physically contiguous versions are read as one request, and at most
            // EXPORT_READ_BLOCKS blocks are in flight at once (memory stays bounded however
            // long the history). Per-block 4 KiB reads made the device's IOPS the limit of a
            // rebuild. `runs` are (first physical block, blocks); `groups` split them into
            // rounds of reads.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
            let mut in_group = EXPORT_READ_BLOCKS;
            for v in with_data() {
                if in_group == EXPORT_READ_BLOCKS {
                    groups.push(runs.len()..runs.len());
                    in_group = 0;
                } else if let Some((_, n)) = runs.last_mut().filter(|(s, n)| *s + *n == v.phys) {
                    *n += 1;
                    in_group += 1;
                    continue;
                }
                runs.push((v.phys, 1));
                groups.last_mut().expect("pushed above").end = runs.len();
                in_group += 1;
            }
            // Each read's buffer is shared by the blocks it holds (windows, no copy per block).
            let nwanted = with_data().count();
            let mut data: Vec<BlockData> = Vec::with_capacity(nwanted);
            for group in groups {
                let reads = runs[group]
                    .iter()
                    .map(|&(s, n)| inner.dev_read(inner.layout().data_offset(s), n, "data"));
                for buf in futures::future::try_join_all(reads).await? {
                    let n = buf.len() / BS as usize;
                    let seg = buf.into_write();
                    data.extend(
                        (0..n)
                            .map(|i| BlockData::window(seg.clone(), i * BS as usize, BS as usize)),
                    );
                }
            }
            // The one checksum pass of a copy: the import takes these crcs as they are.
            let bad = versions
                .iter()
                .enumerate()
                .filter(|(_, v)| v.phys != TOMB)
                .zip(&data)
                .find(|((_, v), buf)| blockdev::crc32c(buf) != v.crc)
                .map(|((i, v), _)| (i, *v));
            if let Some((i, v)) = bad {
                let block = block_of(&blocks, i);
                // The version may have been replaced (and its block reused) while we read.
                attempt += 1;
                if self.version_phys(obj, block, v.gen) == Some(v.phys) || attempt >= 3 {
                    inner
                        .counters
                        .checksum_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(StoreError::Corrupt {
                        obj,
                        block,
                        gen: v.gen,
                    });
                }
                continue;
            }
            let mut data = data.into_iter();
            let mut out = Vec::with_capacity(blocks.len());
            let mut vs = versions.iter();
            for (block, count) in blocks {
                let versions = vs
                    .by_ref()
                    .take(count)
                    .map(|v| {
                        if v.phys == TOMB {
                            VersionData {
                                gen: v.gen,
                                crc: 0,
                                data: None,
                            }
                        } else {
                            VersionData {
                                gen: v.gen,
                                crc: v.crc,
                                data: data.next(),
                            }
                        }
                    })
                    .collect();
                out.push(BlockVersions { block, versions });
            }
            return Ok(out);
        }
    }

    /// Physical block of version `gen` of a block, if it still exists with data.
    fn version_phys(&self, obj: ObjectId, block: u64, gen: u64) -> Option<u64> {
        let st = self.inner.state.read();
        let v = st
            .maps
            .objs
            .get(&obj)?
            .get(&block)?
            .iter()
            .find(|v| v.gen == gen)?;
        (v.phys != TOMB).then_some(v.phys)
    }

    /// Recreate `obj` from an export (replacing whatever was here). Not atomic across a crash:
    /// callers record completion themselves (and delete + re-import after a crash). Each
    /// version's `crc` is taken as the checksum of its data, unchecked (the export checked it);
    /// adjacent windows of one export buffer that land on one allocated run are written with
    /// one request, straight from that buffer.
    pub async fn import_object(&self, obj: ObjectId, versions: Vec<BlockVersions>) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        let mut ndata = 0u64;
        let mut nvers = 0u64;
        // An export lists blocks in ascending order: then the check for duplicates is a
        // comparison with the previous block, with no set to build. Any other order is
        // checked by sorting a copy.
        let mut ascending = true;
        let mut prev: Option<u64> = None;
        for bv in &versions {
            if bv.block >= 1 << 40 || prev == Some(bv.block) {
                return Err(StoreError::invalid(format!(
                    "import of {obj}: block {} duplicated or out of range",
                    bv.block
                )));
            }
            ascending &= prev.is_none_or(|p| p < bv.block);
            prev = Some(bv.block);
            if bv.versions.is_empty() || !bv.versions.windows(2).all(|w| w[0].gen < w[1].gen) {
                return Err(StoreError::invalid(format!(
                    "import of {obj} block {}: versions not strictly ordered",
                    bv.block
                )));
            }
            for v in &bv.versions {
                check_gen(v.gen)?;
                match &v.data {
                    Some(d) if d.len() != BS as usize => {
                        return Err(StoreError::invalid(format!(
                            "import of {obj} block {}: data is not one block",
                            bv.block
                        )))
                    }
                    Some(_) => ndata += 1,
                    None => {}
                }
                nvers += 1;
            }
        }
        if !ascending {
            let mut blocks: Vec<u64> = versions.iter().map(|bv| bv.block).collect();
            blocks.sort_unstable();
            if let Some(w) = blocks.windows(2).find(|w| w[0] == w[1]) {
                return Err(StoreError::invalid(format!(
                    "import of {obj}: block {} duplicated or out of range",
                    w[0]
                )));
            }
        }
        if ndata == 0 && nvers == 0 {
            return self.delete_object(obj).await;
        }
        // The crcs came with the data (an export checked them where it read the data).
        debug_assert!(versions
            .iter()
            .flat_map(|bv| bv.versions.iter())
            .all(|v| v.data.as_deref().is_none_or(|d| crc32c::crc32c(d) == v.crc)));
        let runs = if ndata > 0 {
            inner.alloc_or_flush(ndata, None).await?
        } else {
            Default::default()
        };
        let blocks: Vec<&BlockData> = versions
            .iter()
            .flat_map(|bv| bv.versions.iter())
            .filter_map(|v| v.data.as_ref())
            .collect();
        if let Err(e) = write_windows(inner, &runs, &blocks).await {
            inner.unalloc(&runs, ndata);
            return Err(e);
        }
        {
            let mut st = inner.state.write();
            st.inflight -= ndata;
            if st.maps.objs.contains_key(&obj) {
                inner.log(&mut st, Record::Delete { obj });
            }
            let mut phys_iter = runs.iter().flat_map(|&(s, l)| s..s + l);
            for bv in &versions {
                for v in &bv.versions {
                    let (phys, crc) = match &v.data {
                        Some(_) => {
                            let p = phys_iter
                                .next()
                                .expect("one allocated block per data version");
                            (p, v.crc)
                        }
                        None => (TOMB, 0),
                    };
                    inner.log(
                        &mut st,
                        Record::Import {
                            obj,
                            block: bv.block,
                            gen: v.gen,
                            phys,
                            crc,
                        },
                    );
                }
            }
        }
        self.inner.maybe_flush().await
    }

    /// Replace the data of version `gen` of `block` with `good` (from the peer replica). The
    /// data must match the checksum recorded for that version.
    pub async fn repair(&self, obj: ObjectId, block: u64, gen: u64, good: WriteBuf) -> Result<()> {
        let inner = &*self.inner;
        inner.check_ok()?;
        if good.len() != BS as usize {
            return Err(StoreError::invalid("repair data must be exactly one block"));
        }
        let crc = blockdev::crc32c(good.as_slice());
        let old_phys = {
            let st = inner.state.read();
            let v = st
                .maps
                .objs
                .get(&obj)
                .and_then(|m| m.get(&block))
                .and_then(|vs| vs.iter().find(|v| v.gen == gen && v.phys != TOMB))
                .copied();
            match v {
                None => return Err(StoreError::invalid(format!("{obj} block {block} has no data version {gen}"))),
                Some(v) if v.crc != crc => {
                    return Err(StoreError::invalid(format!(
                        "repair data for {obj} block {block} gen {gen} does not match its recorded checksum"
                    )))
                }
                Some(v) => v.phys,
            }
        };
        let runs = inner.alloc_or_flush(1, None).await?;
        if let Err(e) = inner.write_runs(&runs, &good).await {
            inner.unalloc(&runs, 1);
            return Err(e);
        }
        {
            let mut st = inner.state.write();
            st.inflight -= 1;
            let still = st
                .maps
                .objs
                .get(&obj)
                .and_then(|m| m.get(&block))
                .and_then(|vs| vs.iter().find(|v| v.gen == gen))
                .is_some_and(|v| v.phys == old_phys);
            if still {
                inner.log(
                    &mut st,
                    Record::Repair {
                        obj,
                        block,
                        gen,
                        phys: runs[0].0,
                        crc,
                    },
                );
                inner
                    .counters
                    .repairs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                // The version changed meanwhile; the new block was never referenced.
                st.alloc.release(runs[0].0);
            }
        }
        self.inner.maybe_flush().await
    }

    /// Read and verify every referenced block; report every corrupt (obj, block, gen).
    pub async fn scrub(&self) -> Result<ScrubReport> {
        let inner = &*self.inner;
        inner.check_ok()?;
        let mut report = ScrubReport::default();
        for obj in self.objects() {
            let entries: Vec<(u64, u64, u64, u32)> = {
                let st = inner.state.read();
                let Some(m) = st.maps.objs.get(&obj) else {
                    continue;
                };
                let mut e: Vec<_> = m
                    .iter()
                    .flat_map(|(b, vs)| {
                        vs.iter()
                            .filter(|v| v.phys != TOMB)
                            .map(move |v| (v.phys, *b, v.gen, v.crc))
                    })
                    .collect();
                e.sort_unstable();
                e
            };
            let mut i = 0;
            while i < entries.len() {
                // One read per run of consecutive physical blocks (bounded).
                let mut j = i + 1;
                while j < entries.len() && j - i < 256 && entries[j].0 <= entries[j - 1].0 + 1 {
                    j += 1;
                }
                let start = entries[i].0;
                let len = entries[j - 1].0 - start + 1;
                let buf = inner
                    .dev_read(inner.layout().data_offset(start), len, "data")
                    .await?;
                for &(phys, block, gen, crc) in &entries[i..j] {
                    let o = ((phys - start) * BS) as usize;
                    report.checked_blocks += 1;
                    if blockdev::crc32c(&buf[o..o + BS as usize]) != crc {
                        // Same race as in read: only report it if the version is still there.
                        let st = inner.state.read();
                        let still = st
                            .maps
                            .objs
                            .get(&obj)
                            .and_then(|m| m.get(&block))
                            .and_then(|vs| vs.iter().find(|v| v.gen == gen))
                            .is_some_and(|v| v.phys == phys);
                        if still {
                            inner
                                .counters
                                .checksum_errors
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            report.corrupt.push((obj, block, gen));
                        }
                    }
                }
                i = j;
            }
        }
        Ok(report)
    }

    /// Recompute refcounts, version count and space from the maps and compare them with what
    /// the store tracks. Exact when no write is in flight.
    pub fn check_invariants(&self) -> Result<()> {
        let inner = &*self.inner;
        let st = inner.state.read();
        let (refs, n) = st.maps.recount();
        if n != st.maps.nversions {
            return Err(StoreError::bad_meta(format!(
                "version count {} but maps hold {n}",
                st.maps.nversions
            )));
        }
        if let Some(b) = (0..refs.len()).find(|&b| refs[b] != st.maps.refs[b]) {
            return Err(StoreError::bad_meta(format!(
                "data block {b}: refcount {} but {} references",
                st.maps.refs[b], refs[b]
            )));
        }
        let pending: BTreeSet<u64> = inner.jbuf.lock().frees.iter().copied().collect();
        let mut unreferenced_used = 0u64;
        for (b, &r) in refs.iter().enumerate() {
            let used = st.alloc.is_used(b as u64);
            if r > 0 && !used {
                return Err(StoreError::bad_meta(format!(
                    "data block {b} is referenced but free"
                )));
            }
            if r == 0 && used {
                unreferenced_used += 1;
                if st.inflight == 0 && !pending.contains(&(b as u64)) {
                    return Err(StoreError::bad_meta(format!(
                        "data block {b} leaked (used, unreferenced, not pending)"
                    )));
                }
            }
        }
        let referenced = refs.iter().filter(|&&r| r > 0).count() as u64;
        let free = st.alloc.free_blocks();
        if referenced + unreferenced_used + free != st.alloc.total_blocks() {
            return Err(StoreError::bad_meta(
                "space accounting does not add up".to_string(),
            ));
        }
        Ok(())
    }
}

/// The block that the `i`th version of a flat export history belongs to (`blocks` holds each
/// block with its version count, in the history's order).
fn block_of(blocks: &[(u64, usize)], i: usize) -> u64 {
    let mut first = 0;
    for &(block, count) in blocks {
        if i < first + count {
            return block;
        }
        first += count;
    }
    unreachable!("version {i} is beyond the history")
}

/// Write `blocks` (one per allocated block, in order) to `runs`: one request per stretch that
/// is both one allocated run and adjacent windows of one buffer, all in flight at once.
async fn write_windows(
    inner: &crate::store::Inner,
    runs: &[(u64, u64)],
    blocks: &[&BlockData],
) -> Result<()> {
    let mut ios = Vec::new();
    let mut next = blocks.iter();
    for &(start, len) in runs {
        let mut i = 0u64;
        while i < len {
            let Some(first) = next.next() else {
                return Err(StoreError::invalid(
                    "import: fewer data blocks than allocated",
                ));
            };
            let (seg, off) = first.segment();
            let mut n = 1u64;
            let mut last = *first;
            while i + n < len {
                match next.clone().next() {
                    Some(b) if last.followed_by(b) => {
                        last = b;
                        next.next();
                        n += 1;
                    }
                    _ => break,
                }
            }
            let buf = seg.slice(off..off + (n * BS) as usize);
            ios.push(
                inner
                    .dev
                    .write_at(inner.layout().data_offset(start + i), buf),
            );
            i += n;
        }
    }
    let res = if ios.len() == 1 {
        ios.pop().expect("one").await
    } else {
        futures::future::try_join_all(ios).await.map(|_| ())
    };
    res.map_err(|e| StoreError::dev(format!("writing data on {}", inner.dev.info().name), e))
}

/// Byte offsets of the on-disk areas, for fault-injection tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaOffsets {
    pub meta: [u64; 2],
    pub ckpt: [u64; 2],
    pub journal: u64,
    pub journal_bytes: u64,
    pub data: u64,
    pub data_bytes: u64,
}

impl Store {
    /// Where each metadata area lives on the device.
    pub fn area_offsets(&self) -> AreaOffsets {
        let l = self.inner.layout();
        AreaOffsets {
            meta: [l.meta[0] * BS, l.meta[1] * BS],
            ckpt: [l.ckpt[0] * BS, l.ckpt[1] * BS],
            journal: l.journal_start * BS,
            journal_bytes: l.journal_blocks * BS,
            data: l.data_start * BS,
            data_bytes: l.data_blocks * BS,
        }
    }

    /// Device byte offset holding version `gen` of `block` of `obj` (None: no data there).
    pub fn locate(&self, obj: ObjectId, block: u64, gen: u64) -> Option<u64> {
        let st = self.inner.state.read();
        let v = st
            .maps
            .objs
            .get(&obj)?
            .get(&block)?
            .iter()
            .find(|v| v.gen == gen && v.phys != TOMB)?;
        Some(self.inner.layout().data_offset(v.phys))
    }
}
