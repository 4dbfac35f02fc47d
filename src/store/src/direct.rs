//! Direct writes: a writer with an io_uring of its own (a VM's queue thread) writes a block
//! range's new data to the device itself. [`Store::write_with_crcs`] in three steps, split so
//! the device write can happen outside the store:
//! 1. [`Store::direct_write_alloc`] checks the write as `write_with_crcs` does and allocates
//!    fresh blocks for it, in one run on an io_uring device (else None: the caller takes the
//!    ordinary path);
//! 2. the caller writes the data to [`DirectAlloc::run`] (the fresh blocks: no durable map
//!    entry points at them, so a torn or lost write there harms nothing);
//! 3. once the device write completed in full, [`Store::direct_write_commit`] logs the blocks'
//!    new versions with their checksums exactly as `write_with_crcs` does after its own device
//!    write; if it did not, [`Store::direct_write_abort`] gives the blocks back.
//!
//! Crash safety is the ordinary path's: the records reach the journal only in a flush, which
//! first flushes the device (so the data is durable before any record pointing at it), and a
//! crash before that leaves the blocks' old versions. Must never: commit a write whose device
//! write did not complete, or be called with checksums other than those of the bytes written.

use crate::codec::Record;
use crate::read::DirectRun;
use crate::store::{check_gen, check_obj_range};
use crate::{ObjectId, Store};

/// Fresh blocks allocated for a direct write ([`Store::direct_write_alloc`]): commit or abort
/// it, exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAlloc {
    /// First physical block of the run.
    phys: u64,
    /// Blocks in the run.
    nblocks: u64,
    /// Where to write the data.
    pub run: DirectRun,
}

impl Store {
    /// Step 1 of a direct write of `nblocks` blocks at `block` of `obj` (see the module
    /// documentation): None when the ordinary path must take it (not an io_uring device,
    /// poisoned, bad range or generation, no space without a flush, fragmented free space, or
    /// a journal buffer big enough to want a flush, which only the ordinary path starts).
    pub fn direct_write_alloc(
        &self,
        obj: ObjectId,
        block: u64,
        nblocks: u32,
        gen: u64,
    ) -> Option<DirectAlloc> {
        let inner = &*self.inner;
        let dev = inner.dev.as_uring()?;
        let n = u64::from(nblocks);
        if n == 0
            || inner.check_ok().is_err()
            || dev.is_poisoned()
            || check_obj_range(block, n).is_err()
            || check_gen(gen).is_err()
            || inner.jbuf.lock().w.buf.len() > inner.jbuf_limit()
        {
            return None;
        }
        let runs = inner.alloc_for_write(obj, block, n, gen).ok()?;
        let &[(phys, len)] = runs.as_slice() else {
            inner.unalloc(&runs, n);
            return None;
        };
        debug_assert_eq!(len, n);
        Some(DirectAlloc {
            phys,
            nblocks: n,
            run: DirectRun {
                fd: dev.raw_fd(),
                offset: inner.layout().data_offset(phys),
                direct: dev.is_direct(),
            },
        })
    }

    /// Step 3, after the device write of `a` completed in full: records the new versions of
    /// blocks `block..` of `obj` (`crcs`: one per block, of the bytes written) at `gen`, as
    /// [`Store::write_with_crcs`] does. Durable with the next flush. False (and the blocks
    /// given back) if `crcs` does not have one checksum per block.
    pub fn direct_write_commit(
        &self,
        a: DirectAlloc,
        obj: ObjectId,
        block: u64,
        crcs: &[u32],
        gen: u64,
        pin_gen: u64,
    ) -> bool {
        let inner = &*self.inner;
        if crcs.len() as u64 != a.nblocks {
            self.direct_write_abort(a);
            return false;
        }
        let mut st = inner.state.write();
        st.inflight -= a.nblocks;
        for (i, &crc) in crcs.iter().enumerate() {
            let i = i as u64;
            inner.log(
                &mut st,
                Record::Put {
                    obj,
                    block: block + i,
                    gen,
                    pin_gen,
                    phys: a.phys + i,
                    crc,
                },
            );
        }
        true
    }

    /// Step 3 when the device write failed or was not wanted: the blocks go back at once
    /// (nothing ever referenced them).
    pub fn direct_write_abort(&self, a: DirectAlloc) {
        self.inner.unalloc(&[(a.phys, a.nblocks)], a.nblocks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::BS;
    use blockdev::AlignedBuf;
    use std::os::unix::fs::FileExt;

    fn obj() -> ObjectId {
        ObjectId { vdisk: 7, chunk: 3 }
    }

    fn label() -> crate::Label {
        crate::Label {
            pool_id: uuid::Uuid::from_u128(7),
            disk_id: uuid::Uuid::from_u128(8),
            node_id: 1,
            created_unix: 1_700_000_000,
        }
    }

    /// A direct write done by hand (pwrite on the run) and committed reads back through the
    /// store and survives a reopen once flushed; an aborted one leaves the old data; one below
    /// the block's newest generation is refused as the ordinary write is.
    #[tokio::test]
    async fn direct_write_commits_and_aborts() {
        let dir = std::env::temp_dir().join(format!("store-direct-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.img");
        blockdev::create_sparse_file(&path, 64 << 20).unwrap();
        let dev = match blockdev::open_device(&path) {
            Ok(d) => d,
            Err(e) => {
                println!("skipped: io_uring device unavailable here: {e}");
                let _ = std::fs::remove_dir_all(&dir);
                return;
            }
        };
        let s = Store::format(dev, label()).await.unwrap();
        let one = vec![1u8; BS as usize];
        s.write(obj(), 1, AlignedBuf::from_slice(&one).into_write(), 1, 0)
            .await
            .unwrap();

        let a = s.direct_write_alloc(obj(), 1, 2, 1).expect("planned");
        let data = [vec![2u8; BS as usize], vec![3u8; BS as usize]].concat();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let write = |at: u64, bytes: &[u8]| {
            f.write_all_at(bytes, at).unwrap();
            f.sync_data().unwrap();
        };
        write(a.run.offset, &data);
        assert!(s.direct_write_commit(a, obj(), 1, &crate::block_crcs(&data), 1, 0));
        assert_eq!(&s.read(obj(), 1, 2, u64::MAX).await.unwrap()[..], &data[..]);

        let b = s.direct_write_alloc(obj(), 1, 1, 1).expect("planned");
        write(b.run.offset, &[9u8; BS as usize]);
        s.direct_write_abort(b);
        assert_eq!(&s.read(obj(), 1, 2, u64::MAX).await.unwrap()[..], &data[..]);
        s.check_invariants().unwrap();

        assert_eq!(
            s.direct_write_alloc(obj(), 1, 1, 0),
            None,
            "older generation"
        );
        s.flush().await.unwrap();
        drop(s);
        let s = Store::open(blockdev::open_device(&path).unwrap())
            .await
            .unwrap();
        assert_eq!(&s.read(obj(), 1, 2, u64::MAX).await.unwrap()[..], &data[..]);
        s.check_invariants().unwrap();
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
