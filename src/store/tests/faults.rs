//! Corruption, EIO and damaged metadata: detected every time, never wrong data, never a panic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use blockdev::{AlignedBuf, BlockDevice, FaultDevice, FaultOp, RamDevice, Trigger};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::{ErrorKind, ObjectId, Store};

struct Rig {
    fault: Arc<FaultDevice>,
    s: Store,
}

async fn rig(seed: u64) -> Rig {
    let ram: Arc<dyn BlockDevice> = Arc::new(RamDevice::new("ram", 16 << 20));
    let fault = Arc::new(FaultDevice::new(ram, seed));
    let s = Store::format(fault.clone() as Arc<dyn BlockDevice>, label())
        .await
        .unwrap();
    Rig { fault, s }
}

/// Tags of every data version: (obj, block, gen) -> tag.
type Truth = BTreeMap<(ObjectId, u64, u64), u64>;

/// Objects with history and sharing: gen-1 data, a snapshot, gen-2 overwrites, and a clone.
async fn populate(s: &Store) -> Truth {
    let mut t = Truth::new();
    let mut tag = 1;
    for c in 0..4 {
        let tags: Vec<u64> = (0..32).map(|i| tag + i).collect();
        s.write(obj(1, c), 0, pattern(&tags, 0), 1, 0)
            .await
            .unwrap();
        for (b, tg) in tags.iter().enumerate() {
            t.insert((obj(1, c), b as u64, 1), *tg);
        }
        tag += 32;
    }
    for c in 0..4 {
        for b in (0..32).step_by(3) {
            s.write(obj(1, c), b, pattern(&[tag], b), 2, 1)
                .await
                .unwrap();
            t.insert((obj(1, c), b, 2), tag);
            tag += 1;
        }
    }
    s.clone_object(obj(1, 0), 1, obj(2, 0), 1).await.unwrap();
    for b in 0..32 {
        let tg = t[&(obj(1, 0), b, 1)];
        t.insert((obj(2, 0), b, 1), tg);
    }
    s.flush().await.unwrap();
    t
}

#[tokio::test]
async fn bit_flips_are_detected_scrubbed_and_repaired() {
    for seed in 0..4 {
        let Rig { fault, s } = rig(seed).await;
        let truth = populate(&s).await;
        let mut rng = StdRng::seed_from_u64(seed);
        // Corrupt ~30 random versions' blocks at rest.
        let keys: Vec<_> = truth.keys().copied().collect();
        let mut bad_offsets = BTreeSet::new();
        for _ in 0..30 {
            let (o, b, g) = keys[rng.gen_range(0..keys.len())];
            let off = s.locate(o, b, g).unwrap();
            if bad_offsets.insert(off) {
                fault.corrupt(off, BS as u64).await.unwrap();
            }
        }
        // Ground truth: every version whose block was hit (clones share blocks).
        let expect: BTreeSet<(ObjectId, u64, u64)> = keys
            .iter()
            .copied()
            .filter(|&(o, b, g)| bad_offsets.contains(&s.locate(o, b, g).unwrap()))
            .collect();
        let report = s.scrub().await.unwrap();
        let found: BTreeSet<_> = report.corrupt.iter().copied().collect();
        assert_eq!(
            found, expect,
            "scrub finds exactly the injected corruptions"
        );
        assert_eq!(report.checked_blocks as usize, truth.len());
        // Every read either returns the right data or Corrupt naming the right version.
        for (&(o, b, g), &tag) in &truth {
            match s.read(o, b, 1, g).await {
                Ok(buf) => {
                    assert!(
                        !expect.contains(&(o, b, g)),
                        "{o} {b} {g}: corrupt data returned"
                    );
                    assert_eq!(tag_of(&buf, b).unwrap(), tag);
                }
                Err(e) => {
                    assert_eq!(
                        e.kind(),
                        ErrorKind::Corrupt {
                            obj: o,
                            block: b,
                            gen: g
                        }
                    );
                    assert!(expect.contains(&(o, b, g)));
                }
            }
        }
        assert!(s.stats().checksum_errors >= expect.len() as u64);
        // Wrong repair data is refused; right data repairs.
        let &(o, b, g) = expect.iter().next().unwrap();
        let e = s.repair(o, b, g, pattern(&[999_999], b)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        for &(o, b, g) in &expect {
            s.repair(o, b, g, pattern(&[truth[&(o, b, g)]], b))
                .await
                .unwrap();
        }
        assert!(s.scrub().await.unwrap().corrupt.is_empty());
        s.flush().await.unwrap();
        s.check_invariants().unwrap();
        drop(s);
        let s = Store::open(fault.clone() as Arc<dyn BlockDevice>)
            .await
            .unwrap();
        s.check_invariants().unwrap();
        for (&(o, b, g), &tag) in &truth {
            let buf = s.read(o, b, 1, g).await.unwrap();
            assert_eq!(tag_of(&buf, b).unwrap(), tag);
        }
        // Every bad block is free again (used = live versions' distinct blocks).
        assert!(s.scrub().await.unwrap().corrupt.is_empty());
    }
}

#[tokio::test]
async fn flips_on_the_wire_never_return_wrong_data() {
    let Rig { fault, s } = rig(9).await;
    let truth = populate(&s).await;
    fault.flip_reads(Trigger::Probability(0.3));
    let mut corrupt = 0;
    for (&(o, b, g), &tag) in &truth {
        match s.read(o, b, 1, g).await {
            Ok(buf) => assert_eq!(tag_of(&buf, b).unwrap(), tag),
            Err(e) => {
                assert!(matches!(e.kind(), ErrorKind::Corrupt { .. }), "{e}");
                corrupt += 1;
            }
        }
    }
    assert!(corrupt > 0, "the fault device flipped something");
    // Multi-block reads too.
    for c in 0..4 {
        if let Ok(buf) = s.read(obj(1, c), 0, 32, u64::MAX).await {
            for b in 0..32u64 {
                let want = truth
                    .get(&(obj(1, c), b, 2))
                    .or(truth.get(&(obj(1, c), b, 1)))
                    .copied()
                    .unwrap();
                assert_eq!(
                    tag_of(&buf[b as usize * BS..(b as usize + 1) * BS], b).unwrap(),
                    want
                );
            }
        }
    }
}

#[tokio::test]
async fn eio_surfaces_and_failed_flush_poisons() {
    let Rig { fault, s } = rig(3).await;
    s.write(obj(1, 0), 0, pattern(&[1], 0), 1, 0).await.unwrap();
    s.flush().await.unwrap();
    let before = s.space();
    fault.fail(FaultOp::Write, Trigger::Next(1));
    let e = s
        .write(obj(1, 0), 1, pattern(&[2, 3], 1), 1, 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(s.space(), before, "a failed write takes no space");
    s.check_invariants().unwrap();
    fault.fail(FaultOp::Read, Trigger::Next(1));
    assert_eq!(
        s.read(obj(1, 0), 0, 1, u64::MAX).await.unwrap_err().kind(),
        ErrorKind::Io
    );
    assert_eq!(
        tag_of(&s.read(obj(1, 0), 0, 1, u64::MAX).await.unwrap(), 0).unwrap(),
        1
    );
    // A failed device flush poisons the store: every later call fails.
    s.write(obj(1, 0), 2, pattern(&[4], 2), 1, 0).await.unwrap();
    fault.fail(FaultOp::Flush, Trigger::Next(1));
    assert_eq!(s.flush().await.unwrap_err().kind(), ErrorKind::Poisoned);
    assert!(s.is_poisoned());
    assert_eq!(
        s.write(obj(1, 0), 3, pattern(&[5], 3), 1, 0)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Poisoned
    );
    assert_eq!(
        s.read(obj(1, 0), 0, 1, u64::MAX).await.unwrap_err().kind(),
        ErrorKind::Poisoned
    );
    assert_eq!(s.flush().await.unwrap_err().kind(), ErrorKind::Poisoned);
    drop(s);
    // Reopening (a fresh handle, as after a restart) recovers what was flushed.
    let dev = Arc::new(fault.reopen());
    let s = Store::open(dev.clone() as Arc<dyn BlockDevice>)
        .await
        .unwrap();
    assert_eq!(
        tag_of(&s.read(obj(1, 0), 0, 1, u64::MAX).await.unwrap(), 0).unwrap(),
        1
    );
    s.check_invariants().unwrap();
    // A failed journal write poisons too.
    s.write(obj(1, 0), 5, pattern(&[6], 5), 1, 0).await.unwrap();
    let a = s.area_offsets();
    dev.fail(
        FaultOp::Write,
        Trigger::Range {
            offset: a.journal,
            len: a.journal_bytes,
        },
    );
    assert_eq!(s.flush().await.unwrap_err().kind(), ErrorKind::Poisoned);
    assert!(s.is_poisoned());
}

async fn write_byte(dev: &dyn BlockDevice, off: u64, xor: u8) {
    let mut b = dev
        .read_at(off - off % BS as u64, AlignedBuf::zeroed(BS))
        .await
        .unwrap();
    b[(off % BS as u64) as usize] ^= xor;
    dev.write_at(off - off % BS as u64, b.into_write())
        .await
        .unwrap();
}

#[tokio::test]
async fn damaged_metadata_uses_the_other_copy_or_fails_clearly() {
    let ram = Arc::new(RamDevice::new("ram", 16 << 20));
    let dev: Arc<dyn BlockDevice> = ram.clone();
    let s = Store::format(dev.clone(), label()).await.unwrap();
    let a = s.area_offsets();
    let mut tag = 1;
    for round in 0..3 {
        for c in 0..4 {
            s.write(obj(1, c), 0, pattern(&[tag], 0), 1, 0)
                .await
                .unwrap();
            tag += 1;
        }
        s.put_meta(format!("meta {round}").as_bytes())
            .await
            .unwrap();
        s.close().await.unwrap(); // a checkpoint per round: both slots hold one
    }
    s.write(obj(1, 0), 1, pattern(&[tag], 1), 1, 0)
        .await
        .unwrap();
    s.flush().await.unwrap();
    drop(s);
    let check = |s: &Store| {
        let s = s.clone();
        async move {
            s.check_invariants().unwrap();
            assert_eq!(
                tag_of(&s.read(obj(1, 0), 1, 1, u64::MAX).await.unwrap(), 1).unwrap(),
                13
            );
            assert_eq!(
                tag_of(&s.read(obj(1, 3), 0, 1, u64::MAX).await.unwrap(), 0).unwrap(),
                12
            );
        }
    };
    // Superblock copy 0 damaged: copy 1 is used.
    write_byte(&*dev, 20, 0xff).await;
    let s = Store::open(dev.clone()).await.unwrap();
    check(&s).await;
    drop(s);
    // Both damaged: a clear error, and probe/format refuse the device.
    write_byte(&*dev, BS as u64 + 20, 0xff).await;
    let e = Store::open(dev.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadMetadata, "{e}");
    assert!(matches!(
        Store::probe(&*dev).await.unwrap(),
        store::Probe::Foreign(_)
    ));
    assert_eq!(
        Store::format(dev.clone(), label())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotBlank
    );
    write_byte(&*dev, 20, 0xff).await;
    write_byte(&*dev, BS as u64 + 20, 0xff).await;
    // Newest checkpoint damaged (header or payload): the older one + the journal recover all.
    for (slot_off, delta) in [(0u64, 30u64), (0, BS as u64 + 5)] {
        for slot in 0..2 {
            let off = a.ckpt[slot] + slot_off + delta;
            write_byte(&*dev, off, 0x10).await;
            let s = Store::open(dev.clone()).await.unwrap();
            check(&s).await;
            drop(s);
            write_byte(&*dev, off, 0x10).await;
        }
    }
    // Both checkpoints damaged: a clear error.
    write_byte(&*dev, a.ckpt[0] + 30, 1).await;
    write_byte(&*dev, a.ckpt[1] + 30, 1).await;
    let e = Store::open(dev.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadMetadata, "{e}");
    write_byte(&*dev, a.ckpt[0] + 30, 1).await;
    write_byte(&*dev, a.ckpt[1] + 30, 1).await;
    // Meta slot: damage the newest copy, the previous one is returned.
    let s = Store::open(dev.clone()).await.unwrap();
    assert_eq!(s.get_meta().unwrap(), b"meta 2");
    drop(s);
    for slot in 0..2 {
        write_byte(&*dev, a.meta[slot] + BS as u64 + 2, 0x40).await;
        let s = Store::open(dev.clone()).await.unwrap();
        let m = s.get_meta().unwrap();
        assert!(m == b"meta 1" || m == b"meta 2", "{m:?}");
        drop(s);
        write_byte(&*dev, a.meta[slot] + BS as u64 + 2, 0x40).await;
    }
    // A rotted journal batch followed by a valid one: detected, not silently truncated.
    let s = Store::open(dev.clone()).await.unwrap();
    for i in 0..3 {
        s.write(obj(1, 2), 5, pattern(&[100 + i], 5), 1, 0)
            .await
            .unwrap();
        s.flush().await.unwrap();
    }
    drop(s);
    let img = ram.snapshot();
    let j = &img[a.journal as usize..(a.journal + a.journal_bytes) as usize];
    let batches: Vec<usize> = (0..j.len() / BS)
        .filter(|i| &j[i * BS..i * BS + 8] == b"CRNJRNL1")
        .collect();
    assert!(batches.len() >= 3, "{batches:?}");
    // Batches written after the last checkpoint; damage the first of them.
    let first = batches[batches.len() - 3];
    write_byte(&*dev, a.journal + (first * BS) as u64 + 70, 0x01).await;
    let e = Store::open(dev.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadMetadata, "{e}");
    assert!(e.to_string().contains("journal"), "{e}");
}

#[tokio::test]
async fn random_damage_to_metadata_never_panics() {
    let ram = Arc::new(RamDevice::new("ram", 8 << 20));
    let dev: Arc<dyn BlockDevice> = ram.clone();
    let s = Store::format(dev.clone(), label()).await.unwrap();
    let a = s.area_offsets();
    for i in 0..40u64 {
        s.write(obj(1, i % 4), i, pattern(&[i + 1], i), 1, 0)
            .await
            .unwrap();
        if i % 7 == 0 {
            s.flush().await.unwrap();
        }
        if i % 13 == 0 {
            s.close().await.unwrap();
        }
    }
    s.put_meta(b"m").await.unwrap();
    s.flush().await.unwrap();
    drop(s);
    let image = ram.snapshot();
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..60 {
        // Restore the good image, then damage 1..8 random bytes of the metadata areas.
        dev.write_at(0, AlignedBuf::from_slice(&image).into_write())
            .await
            .unwrap();
        for _ in 0..rng.gen_range(1..8) {
            let off = rng.gen_range(0..a.data);
            write_byte(&*dev, off, rng.gen_range(1..=255)).await;
        }
        match Store::open(dev.clone()).await {
            Ok(s) => s
                .check_invariants()
                .unwrap_or_else(|e| panic!("round {round}: {e}")),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::BadMetadata | ErrorKind::NotOurs),
                "round {round}: {e}"
            ),
        }
    }
}
