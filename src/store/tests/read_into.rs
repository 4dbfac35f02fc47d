//! `Store::read_into` (verify and copy block by block into the caller's memory): the same bytes
//! as `Store::read` for every layout, and checksums checked at the granularity actually read —
//! a flipped bit inside the range read fails the read, a flipped bit elsewhere in the same
//! object does not, until that part is read.

mod common;

use std::sync::Arc;

use blockdev::{AlignedBuf, BlockDevice, RamDevice};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::{ErrorKind, ObjectId, Store};

async fn store() -> (Arc<dyn BlockDevice>, Store) {
    let dev: Arc<dyn BlockDevice> = Arc::new(RamDevice::new("ram", 32 << 20));
    let s = Store::format(dev.clone(), label()).await.unwrap();
    (dev, s)
}

/// Flip one bit of the device byte at `off`, behind the store's back.
async fn flip(dev: &dyn BlockDevice, off: u64) {
    let base = off - off % BS as u64;
    let mut b = dev.read_at(base, AlignedBuf::zeroed(BS)).await.unwrap();
    b[(off - base) as usize] ^= 0x10;
    dev.write_at(base, b.into_write()).await.unwrap();
}

/// `read_into` on a buffer that starts dirty and at an odd address.
async fn read_into(s: &Store, o: ObjectId, block: u64, n: u32) -> store::Result<Vec<u8>> {
    let mut backing = vec![0xeeu8; n as usize * BS + 1];
    s.read_into(o, block, n, u64::MAX, &mut backing[1..])
        .await?;
    Ok(backing[1..].to_vec())
}

fn corrupt_block(e: &store::StoreError) -> Option<u64> {
    match e.kind() {
        ErrorKind::Corrupt { block, .. } => Some(block),
        _ => None,
    }
}

#[test]
fn read_into_returns_what_read_returns_for_every_layout() {
    rt().block_on(async {
        let (_dev, s) = store().await;
        let mut rng = StdRng::seed_from_u64(11);
        let o = obj(1, 0);
        // One contiguous run, then scattered overwrites, discards and never-written blocks.
        let tags: Vec<u64> = (1..=96).collect();
        s.write(o, 0, pattern(&tags, 0), 1, 0).await.unwrap();
        for i in 0..60u64 {
            let b = rng.gen_range(0..128);
            s.write(o, b, pattern(&[1000 + i], b), 1, 0).await.unwrap();
        }
        for _ in 0..8 {
            let b = rng.gen_range(0..120);
            s.discard(o, b, rng.gen_range(1..6), 1, 0).await.unwrap();
        }
        s.flush().await.unwrap();
        for _ in 0..300 {
            let block = rng.gen_range(0..160u64);
            let n = rng.gen_range(1..=96u32);
            let want = s.read(o, block, n, u64::MAX).await.unwrap();
            let got = read_into(&s, o, block, n).await.unwrap();
            assert!(got == want[..], "read_into differs at {block}+{n}");
            for (i, b) in got.chunks(BS).enumerate() {
                tag_of(b, block + i as u64).unwrap();
            }
        }
        // A wrong buffer size is refused, not half done.
        let mut short = vec![0u8; BS];
        let e = s
            .read_into(o, 0, 2, u64::MAX, &mut short)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    });
}

#[test]
fn a_flipped_bit_is_detected_when_its_block_is_read_and_only_then() {
    rt().block_on(async {
        let (dev, s) = store().await;
        let o = obj(1, 0);
        let tags: Vec<u64> = (1..=64).collect();
        s.write(o, 0, pattern(&tags, 0), 1, 0).await.unwrap();
        s.flush().await.unwrap();
        // Contiguous layout: flip a bit in block 40.
        flip(&*dev, s.locate(o, 40, 1).unwrap() + 1234).await;
        // Reads that do not cover block 40 succeed with the right data, both ways.
        for (block, n) in [(0, 40), (41, 23), (0, 1), (39, 1), (41, 1)] {
            let got = read_into(&s, o, block, n).await.unwrap();
            for (i, b) in got.chunks(BS).enumerate() {
                assert_eq!(tag_of(b, block + i as u64), Ok(block + i as u64 + 1));
            }
            s.read(o, block, n, u64::MAX).await.unwrap();
        }
        // Every read that covers it fails, naming block 40, both ways.
        for (block, n) in [(0, 64), (40, 1), (32, 16), (40, 24)] {
            let e = read_into(&s, o, block, n).await.unwrap_err();
            assert_eq!(corrupt_block(&e), Some(40), "{block}+{n}: {e}");
            let e = s.read(o, block, n, u64::MAX).await.unwrap_err();
            assert_eq!(corrupt_block(&e), Some(40), "{block}+{n}: {e}");
        }

        // Fragmented layout: block 10 rewritten elsewhere, then corrupted there.
        s.write(o, 10, pattern(&[500], 10), 1, 0).await.unwrap();
        s.flush().await.unwrap();
        flip(&*dev, s.locate(o, 10, 1).unwrap() + 4095).await;
        let got = read_into(&s, o, 0, 10).await.unwrap();
        assert_eq!(tag_of(&got[9 * BS..], 9), Ok(10));
        let got = read_into(&s, o, 11, 29).await.unwrap();
        assert_eq!(tag_of(&got[..BS], 11), Ok(12));
        for (block, n) in [(0, 40), (5, 6), (10, 1)] {
            let e = read_into(&s, o, block, n).await.unwrap_err();
            assert_eq!(corrupt_block(&e), Some(10), "{block}+{n}: {e}");
            let e = s.read(o, block, n, u64::MAX).await.unwrap_err();
            assert_eq!(corrupt_block(&e), Some(10), "{block}+{n}: {e}");
        }
    });
}
