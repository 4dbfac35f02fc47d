//! Export and import of an object with its history: the export hands out windows of its read
//! buffers with the crc of each version, the import writes adjacent windows that land on one
//! allocated run with one request. Checked byte for byte whichever way the data is laid out
//! on either side: contiguous source into scattered free space, scattered source into a
//! contiguous run, and versions built one buffer each (as a peer's data arrives).

mod common;

use std::sync::Arc;

use blockdev::{AlignedBuf, RamDevice};
use common::*;
use store::{BlockVersions, Store, VersionData};

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
