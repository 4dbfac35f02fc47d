//! Many tasks on two worker threads hammering one store: writers/readers on their own blocks,
//! a flusher, a cloner and a scrubber. Every read must be exact, no spurious Corrupt (blocks are
//! reused quickly on this small device, so a read racing an overwrite + flush + reuse is
//! exercised), and refcounts/space are exact afterwards and after reopen.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blockdev::RamDevice;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::Store;

const WRITERS: u64 = 8;
const BLOCKS: u64 = 48;

async fn verify(s: &Store, t: u64, model: &BTreeMap<u64, u64>) {
    let buf = s.read(obj(1, t), 0, BLOCKS as u32, u64::MAX).await.unwrap();
    for b in 0..BLOCKS {
        let got = tag_of(&buf[b as usize * BS..(b as usize + 1) * BS], b).unwrap();
        assert_eq!(
            got,
            model.get(&b).copied().unwrap_or(0),
            "writer {t} block {b}"
        );
    }
}

#[test]
fn concurrent_io_flush_clone_scrub() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dev = Arc::new(RamDevice::new("ram", 16 << 20));
        let s = Arc::new(Store::format(dev.clone(), label()).await.unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for t in 0..WRITERS {
            let s = s.clone();
            writers.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(t);
                let mut model = BTreeMap::new();
                let mut tag = (t + 1) << 32;
                for _ in 0..300 {
                    let b = rng.gen_range(0..BLOCKS);
                    match rng.gen_range(0..10) {
                        0..=5 => {
                            let n = rng.gen_range(1..=(BLOCKS - b).min(4));
                            let tags: Vec<u64> = (0..n).map(|i| tag + i).collect();
                            tag += n;
                            s.write(obj(1, t), b, pattern(&tags, b), 1, 0)
                                .await
                                .unwrap();
                            for (i, tg) in tags.iter().enumerate() {
                                model.insert(b + i as u64, *tg);
                            }
                        }
                        6 => {
                            s.discard(obj(1, t), b, 1, 1, 0).await.unwrap();
                            model.remove(&b);
                        }
                        _ => {
                            let got = tag_of(&s.read(obj(1, t), b, 1, u64::MAX).await.unwrap(), b)
                                .unwrap();
                            assert_eq!(
                                got,
                                model.get(&b).copied().unwrap_or(0),
                                "writer {t} block {b}"
                            );
                        }
                    }
                    if rng.gen_range(0..8) == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                verify(&s, t, &model).await;
                (t, model)
            }));
        }
        let flusher = {
            let (s, done) = (s.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !done.load(Ordering::Acquire) {
                    s.flush().await.unwrap();
                    n += 1;
                    tokio::task::yield_now().await;
                }
                n
            })
        };
        let cloner = {
            let (s, done) = (s.clone(), done.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(99);
                while !done.load(Ordering::Acquire) {
                    let src = obj(1, rng.gen_range(0..WRITERS));
                    let dst = obj(2, rng.gen_range(0..3));
                    s.delete_object(dst).await.unwrap();
                    s.clone_object(src, u64::MAX, dst, 1).await.unwrap();
                    let buf = s.read(dst, 0, BLOCKS as u32, u64::MAX).await.unwrap();
                    for b in 0..BLOCKS {
                        tag_of(&buf[b as usize * BS..(b as usize + 1) * BS], b).unwrap();
                    }
                    let r = s.scrub().await.unwrap();
                    assert!(r.corrupt.is_empty(), "scrub under load: {:?}", r.corrupt);
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut models = Vec::new();
        for w in writers {
            models.push(w.await.unwrap());
        }
        done.store(true, Ordering::Release);
        assert!(flusher.await.unwrap() > 0);
        cloner.await.unwrap();
        s.flush().await.unwrap();
        s.check_invariants().unwrap();
        assert_eq!(s.stats().checksum_errors, 0);
        let space = s.space();
        s.close().await.unwrap();
        drop(s);
        let s = Store::open(dev).await.unwrap();
        s.check_invariants().unwrap();
        assert_eq!(s.space(), space);
        for (t, model) in &models {
            verify(&s, *t, model).await;
        }
    });
}
