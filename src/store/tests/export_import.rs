//! Export and import of an object with its history: the export hands out windows of its read
//! buffers with the crc of each version, the import writes adjacent windows that land on one
//! allocated run with one request. Checked byte for byte whichever way the data is laid out
//! on either side: contiguous source into scattered free space, scattered source into a
//! contiguous run, and versions built one buffer each (as a peer's data arrives).

mod common;

use std::sync::Arc;

use blockdev::{AlignedBuf, RamDevice};
use common::*;
use store::{BlockVersions, ErrorKind, Store, VersionData};

const BS: usize = 4096;

async fn fresh(mb: u64) -> Store {
    let dev = Arc::new(RamDevice::new("ram", mb << 20));
    Store::format(dev, label()).await.unwrap()
}

async fn read_all(s: &Store, o: store::ObjectId, n: u32, gen: u64) -> Vec<u8> {
    s.read(o, 0, n, gen).await.unwrap().to_vec()
}

#[test]
fn contiguous_export_into_scattered_free_space() {
    rt().block_on(async {
        let s = fresh(16).await;
        let src = obj(1, 0);
        // 256 blocks written at once (one physical run), then a snapshot's worth of history.
        s.write(src, 0, pattern(&[7; 256], 0), 1, 0).await.unwrap();
        s.write(src, 10, pattern(&[8; 4], 10), 2, 1).await.unwrap();
        // Fill the rest of the device one block at a time, interleaving two objects, then
        // free one of them: the free space is single blocks scattered everywhere.
        let (a, b) = (obj(2, 0), obj(3, 0));
        let mut i = 0u64;
        loop {
            let ra = s.write(a, i, pattern(&[1], i), 1, 0).await;
            let rb = s.write(b, i, pattern(&[2], i), 1, 0).await;
            if ra.is_err() || rb.is_err() || i >= 1 << 20 {
                break;
            }
            i += 1;
        }
        s.delete_object(a).await.unwrap();
        s.flush().await.unwrap();
        let ex = s.export_object(src).await.unwrap();
        assert!(ex
            .iter()
            .flat_map(|bv| &bv.versions)
            .all(|v| v.data.as_deref().is_none_or(|d| crc32c::crc32c(d) == v.crc)));
        let dst = obj(4, 0);
        s.import_object(dst, ex).await.unwrap();
        // The copy really landed in scattered free space (several allocated runs).
        let gaps = (1..256u64)
            .filter(|&b| {
                s.locate(dst, b, 1)
                    .zip(s.locate(dst, b - 1, 1))
                    .is_some_and(|(p, q)| p != q + 4096)
            })
            .count();
        assert!(
            gaps > 0,
            "the import found contiguous space; the test needs scattered"
        );
        for gen in [1, u64::MAX] {
            assert_eq!(
                read_all(&s, dst, 256, gen).await,
                read_all(&s, src, 256, gen).await,
                "gen {gen}"
            );
        }
        s.flush().await.unwrap();
        s.check_invariants().unwrap();
    });
}

#[test]
fn scattered_export_and_single_buffers_import_exactly() {
    rt().block_on(async {
        let s = fresh(32).await;
        let (x, y) = (obj(1, 0), obj(1, 1));
        // Interleaved single-block writes: x's blocks are physically every other block.
        for i in 0..200u64 {
            s.write(x, i, pattern(&[100 + i], i), 1, 0).await.unwrap();
            s.write(y, i, pattern(&[900 + i], i), 1, 0).await.unwrap();
        }
        s.discard(x, 5, 3, 1, 0).await.unwrap();
        let ex = s.export_object(x).await.unwrap();
        let want = read_all(&s, x, 200, u64::MAX).await;
        s.import_object(obj(2, 0), ex.clone()).await.unwrap();
        assert_eq!(read_all(&s, obj(2, 0), 200, u64::MAX).await, want);
        // The same history rebuilt one buffer per block (a peer's data), crc computed there.
        let copied: Vec<BlockVersions> = ex
            .iter()
            .map(|bv| BlockVersions {
                block: bv.block,
                versions: bv
                    .versions
                    .iter()
                    .map(|v| VersionData::new(v.gen, v.data.as_deref().map(AlignedBuf::from_slice)))
                    .collect(),
            })
            .collect();
        for (a, b) in ex
            .iter()
            .flat_map(|bv| &bv.versions)
            .zip(copied.iter().flat_map(|bv| &bv.versions))
        {
            assert_eq!(a.crc, b.crc, "VersionData::new computes the same crc");
        }
        s.import_object(obj(3, 0), copied).await.unwrap();
        assert_eq!(read_all(&s, obj(3, 0), 200, u64::MAX).await, want);
        assert!(
            want[5 * BS..8 * BS].iter().all(|&z| z == 0),
            "discarded blocks read as zeros"
        );
        s.flush().await.unwrap();
        s.check_invariants().unwrap();
    });
}

/// Counts data writes of the device under a store.
struct CountingDev {
    inner: RamDevice,
    writes: std::sync::atomic::AtomicU64,
}

impl blockdev::BlockDevice for CountingDev {
    fn info(&self) -> &blockdev::DeviceInfo {
        self.inner.info()
    }
    fn read_at(
        &self,
        offset: u64,
        buf: AlignedBuf,
    ) -> blockdev::BoxFuture<'_, blockdev::Result<AlignedBuf>> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(
        &self,
        offset: u64,
        data: blockdev::WriteBuf,
    ) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.write_at(offset, data)
    }
    fn flush(&self) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> blockdev::BoxFuture<'_, blockdev::Result<()>> {
        self.inner.discard(offset, len)
    }
}

/// Blocks that arrive one by one (from a peer) gathered into one buffer with
/// `BlockData::blocks_of` import exactly, with the crcs `VersionData::new` gives, and with one
/// write per allocated run instead of one per block.
#[test]
fn gathered_blocks_import_with_one_write_per_run() {
    rt().block_on(async {
        let dev = Arc::new(CountingDev {
            inner: RamDevice::new("ram", 32 << 20),
            writes: Default::default(),
        });
        let s = Store::format(dev.clone(), label()).await.unwrap();
        let x = obj(1, 0);
        s.write(x, 0, pattern(&[5; 128], 0), 1, 0).await.unwrap();
        s.write(x, 3, pattern(&[6; 2], 3), 2, 1).await.unwrap();
        s.discard(x, 100, 4, 3, 2).await.unwrap();
        let ex = s.export_object(x).await.unwrap();
        let want = read_all(&s, x, 128, u64::MAX).await;
        let old = read_all(&s, x, 128, 1).await;
        let data: Vec<&[u8]> = ex
            .iter()
            .flat_map(|bv| &bv.versions)
            .filter_map(|v| v.data.as_deref())
            .collect();
        let mut buf = AlignedBuf::for_overwrite(data.len() * BS);
        for (i, d) in data.iter().enumerate() {
            buf[i * BS..(i + 1) * BS].copy_from_slice(d);
        }
        let mut blocks = store::BlockData::blocks_of(buf).into_iter();
        let gathered: Vec<BlockVersions> = ex
            .iter()
            .map(|bv| BlockVersions {
                block: bv.block,
                versions: bv
                    .versions
                    .iter()
                    .map(|v| match v.data {
                        Some(_) => VersionData::of_block(v.gen, blocks.next().unwrap()),
                        None => VersionData::new(v.gen, None),
                    })
                    .collect(),
            })
            .collect();
        assert!(blocks.next().is_none());
        for (a, b) in ex
            .iter()
            .flat_map(|bv| &bv.versions)
            .zip(gathered.iter().flat_map(|bv| &bv.versions))
        {
            assert_eq!((a.gen, a.crc), (b.gen, b.crc));
        }
        s.flush().await.unwrap();
        let before = dev.writes.load(std::sync::atomic::Ordering::Relaxed);
        s.import_object(obj(2, 0), gathered).await.unwrap();
        let writes = dev.writes.load(std::sync::atomic::Ordering::Relaxed) - before;
        // 130 data versions into a fresh store's contiguous free space: a run or two (plus at
        // most a journal write), never one per block.
        assert!(writes <= 3, "{writes} writes for 130 blocks");
        assert_eq!(read_all(&s, obj(2, 0), 128, u64::MAX).await, want);
        assert_eq!(read_all(&s, obj(2, 0), 128, 1).await, old);
        s.flush().await.unwrap();
        s.check_invariants().unwrap();
    });
}

/// An export of a history with several versions per block and a discarded block lists every
/// version in order; a bad version is reported by its own block and generation (not a
/// neighbour's), and an import refuses a block listed twice in any order.
#[test]
fn export_names_the_bad_version_and_import_refuses_duplicates() {
    rt().block_on(async {
        let dev = Arc::new(RamDevice::new("ram", 16 << 20));
        let s = Store::format(dev.clone(), label()).await.unwrap();
        let o = obj(1, 0);
        s.write(o, 0, pattern(&[1; 8], 0), 1, 0).await.unwrap();
        s.write(o, 2, pattern(&[2; 3], 2), 2, 1).await.unwrap();
        s.discard(o, 6, 1, 3, 2).await.unwrap();
        s.write(o, 7, pattern(&[4], 7), 4, 3).await.unwrap();
        let ex = s.export_object(o).await.unwrap();
        let listed: Vec<(u64, Vec<(u64, bool)>)> = ex
            .iter()
            .map(|bv| {
                let vs = bv.versions.iter();
                (bv.block, vs.map(|v| (v.gen, v.data.is_some())).collect())
            })
            .collect();
        let old = (1, true);
        let expect: Vec<(u64, Vec<(u64, bool)>)> = vec![
            (0, vec![old]),
            (1, vec![old]),
            (2, vec![old, (2, true)]),
            (3, vec![old, (2, true)]),
            (4, vec![old, (2, true)]),
            (5, vec![old]),
            (6, vec![old, (3, false)]),
            (7, vec![old, (4, true)]),
        ];
        assert_eq!(listed, expect);
        for bv in &ex {
            for v in bv.versions.iter().filter(|v| v.data.is_some()) {
                let d = v.data.as_deref().unwrap();
                assert_eq!(crc32c::crc32c(d), v.crc);
                assert_eq!(&d[8..16], &bv.block.to_le_bytes(), "block {}", bv.block);
            }
        }

        // Blocks out of order import fine; a block listed twice does not, and nothing lands.
        let mut shuffled = ex.clone();
        shuffled.reverse();
        let copy = obj(2, 0);
        s.import_object(copy, shuffled.clone()).await.unwrap();
        assert_eq!(read_all(&s, copy, 8, 2).await, read_all(&s, o, 8, 2).await);
        let mut dup = shuffled;
        dup.push(ex[3].clone());
        let e = s.import_object(obj(3, 0), dup).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("block 3 duplicated"), "{e}");
        assert!(!s.objects().contains(&obj(3, 0)));

        // Corrupt version 2 of block 4 on the device: the export names exactly that one.
        let at = s.locate(o, 4, 2).unwrap();
        let junk = AlignedBuf::from_slice(&[0xee; BS]).into_write();
        blockdev::BlockDevice::write_at(&*dev, at, junk)
            .await
            .unwrap();
        let e = s.export_object(o).await.unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::Corrupt {
                obj: o,
                block: 4,
                gen: 2
            }
        );
        s.check_invariants().unwrap();
    });
}
