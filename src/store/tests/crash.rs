//! Simulated power cuts (FaultDevice): random operation sequences, sometimes with failing
//! flushes/writes, then a power cut that keeps, drops or tears each unflushed write, then
//! `Store::open`. The recovered store must equal the reference state after some prefix of the
//! operations that includes every operation acknowledged before the last completed flush (so:
//! zero acked-and-flushed writes lost, every other block old-or-new, never garbage), and its
//! refcounts and space must be exact. Then the recovered store keeps working and is cut again.
//!
//! Default: 1,100 cycles x 2 cuts. `CAIRN_SOAK_CYCLES=N` runs N cycles instead.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use blockdev::{BlockDevice, FaultDevice, FaultOp, RamDevice, Trigger};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::{ObjectId, Store};

type View = BTreeMap<ObjectId, BTreeMap<u64, u64>>;

#[derive(Clone)]
struct St {
    live: View,
    snaps: Vec<(u64, View)>,
}

const CHUNKS: u64 = 2;
const BLOCKS: u64 = 8;

fn universe() -> Vec<ObjectId> {
    let mut v: Vec<ObjectId> = (0..CHUNKS).map(|c| obj(1, c)).collect();
    v.push(obj(3, 0));
    v
}

async fn store_view(s: &Store, at: u64) -> Result<View, String> {
    let mut view = View::new();
    for o in universe() {
        let buf = s
            .read(o, 0, BLOCKS as u32, at)
            .await
            .map_err(|e| format!("read {o}@{at}: {e}"))?;
        let mut m = BTreeMap::new();
        for b in 0..BLOCKS {
            let t = tag_of(&buf[b as usize * BS..(b as usize + 1) * BS], b)
                .map_err(|e| format!("{o}@{at}: {e}"))?;
            if t != 0 {
                m.insert(b, t);
            }
        }
        if !m.is_empty() {
            view.insert(o, m);
        }
    }
    Ok(view)
}

fn norm(v: &View) -> View {
    v.iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(o, m)| (*o, m.clone()))
        .collect()
}

struct Run {
    rng: StdRng,
    next_tag: u64,
    gen: u64,
}

/// One phase of operations; returns the history of states and the index of the last durable one.
async fn phase(r: &mut Run, s: &Store, start: St, long: bool) -> (Vec<St>, usize) {
    let mut hist = vec![start];
    let mut durable = 0;
    let nops = if long { 1500 } else { r.rng.gen_range(3..40) };
    for _ in 0..nops {
        let mut cur = hist.last().unwrap().clone();
        let pin = cur.snaps.last().map_or(0, |x| x.0);
        let roll = if long {
            r.rng.gen_range(0..64)
        } else {
            r.rng.gen_range(0..100)
        };
        let res: store::Result<()> = match roll {
            0..=39 => {
                let o = obj(1, r.rng.gen_range(0..CHUNKS));
                let n = r.rng.gen_range(1..4u64);
                let b = r.rng.gen_range(0..=BLOCKS - n);
                let tags: Vec<u64> = (0..n).map(|i| r.next_tag + i).collect();
                r.next_tag += n;
                let res = s.write(o, b, pattern(&tags, b), r.gen, pin).await;
                if res.is_ok() {
                    let e = cur.live.entry(o).or_default();
                    for (i, t) in tags.iter().enumerate() {
                        e.insert(b + i as u64, *t);
                    }
                }
                res
            }
            40..=47 => {
                let o = obj(1, r.rng.gen_range(0..CHUNKS));
                let b = r.rng.gen_range(0..BLOCKS);
                let n = r.rng.gen_range(1..=(BLOCKS - b).min(3)) as u32;
                let res = s.discard(o, b, n, r.gen, pin).await;
                if res.is_ok() {
                    if let Some(e) = cur.live.get_mut(&o) {
                        for i in 0..u64::from(n) {
                            e.remove(&(b + i));
                        }
                    }
                }
                res
            }
            48..=63 => {
                let res = s.flush().await;
                if res.is_ok() {
                    durable = hist.len(); // this state (unchanged by the flush) is durable
                }
                res
            }
            64..=71 => {
                let view: View = cur
                    .live
                    .iter()
                    .filter(|(o, _)| o.vdisk == 1)
                    .map(|(o, m)| (*o, m.clone()))
                    .collect();
                cur.snaps.push((r.gen, view));
                r.gen += 1;
                Ok(())
            }
            72..=79 => {
                let src = obj(1, r.rng.gen_range(0..CHUNKS));
                let (at, view) = if !cur.snaps.is_empty() && r.rng.gen_bool(0.5) {
                    let (g, v) = &cur.snaps[r.rng.gen_range(0..cur.snaps.len())];
                    (*g, v.get(&src).cloned().unwrap_or_default())
                } else {
                    (u64::MAX, cur.live.get(&src).cloned().unwrap_or_default())
                };
                let d = obj(3, 0);
                match s.delete_object(d).await {
                    Err(e) => Err(e),
                    Ok(()) => {
                        cur.live.remove(&d);
                        hist.push(cur.clone());
                        let res = s.clone_object(src, at, d, r.gen).await;
                        if res.is_ok() {
                            cur.live.insert(d, view);
                        }
                        res
                    }
                }
            }
            80..=84 => {
                if cur.snaps.is_empty() {
                    Ok(())
                } else {
                    let i = r.rng.gen_range(0..cur.snaps.len());
                    cur.snaps.remove(i);
                    let gens: Vec<u64> = cur.snaps.iter().map(|x| x.0).collect();
                    s.prune(1, &gens).await
                }
            }
            85..=89 => {
                if cur.snaps.is_empty() {
                    Ok(())
                } else {
                    let (g, view) = cur.snaps[r.rng.gen_range(0..cur.snaps.len())].clone();
                    let mut res = Ok(());
                    for o in s.objects().into_iter().filter(|o| o.vdisk == 1) {
                        res = s.rollback_object(o, g, r.gen, pin).await;
                        if res.is_err() {
                            break;
                        }
                        match view.get(&o) {
                            Some(m) => cur.live.insert(o, m.clone()),
                            None => cur.live.remove(&o),
                        };
                        hist.push(cur.clone());
                    }
                    res
                }
            }
            90..=92 => {
                let res = s.close().await;
                if res.is_ok() {
                    durable = hist.len();
                }
                res
            }
            _ => {
                let d = obj(3, 0);
                let res = s.delete_object(d).await;
                if res.is_ok() {
                    cur.live.remove(&d);
                }
                res
            }
        };
        hist.push(cur);
        if res.is_err() {
            break; // an injected fault: the "process" stops here and power is cut
        }
    }
    (hist, durable)
}

/// Power cut, reopen, and find the prefix the recovered store equals.
async fn cut_and_recover(
    fault: &FaultDevice,
    hist: &[St],
    durable: usize,
) -> Result<(FaultDevice, Store, St), String> {
    fault.power_cut().await.map_err(|e| e.to_string())?;
    fault.clear_faults();
    let dev2 = fault.reopen();
    let dev2_arc: Arc<FaultDevice> = Arc::new(dev2.reopen());
    let s = Store::open(dev2_arc.clone() as Arc<dyn BlockDevice>)
        .await
        .map_err(|e| format!("open after cut: {e}"))?;
    s.check_invariants()
        .map_err(|e| format!("invariants after recovery: {e}"))?;
    let sp = s.space();
    if sp.pending_free_blocks != 0 || sp.used_blocks + sp.free_blocks != sp.total_blocks {
        return Err(format!("space after recovery: {sp:?}"));
    }
    let live = store_view(&s, u64::MAX).await?;
    let mut at_cache: BTreeMap<u64, View> = BTreeMap::new();
    let mut found = None;
    for k in (durable..hist.len()).rev() {
        let st = &hist[k];
        if norm(&st.live) != live {
            continue;
        }
        let mut ok = true;
        for (g, view) in &st.snaps {
            if !at_cache.contains_key(g) {
                at_cache.insert(*g, store_view(&s, *g).await?);
            }
            let got: View = at_cache[g]
                .iter()
                .filter(|(o, _)| o.vdisk == 1)
                .map(|(o, m)| (*o, m.clone()))
                .collect();
            if norm(view) != got {
                ok = false;
                break;
            }
        }
        if ok {
            found = Some(k);
            break;
        }
    }
    let Some(k) = found else {
        return Err(format!(
            "recovered state matches no prefix in {durable}..{} (live {live:?}; durable {:?}; last {:?})",
            hist.len(),
            norm(&hist[durable].live),
            norm(&hist.last().unwrap().live)
        ));
    };
    drop(dev2);
    let st = hist[k].clone();
    let dev = dev2_arc.reopen();
    Ok((dev, s, st))
}

async fn cycle(seed: u64) -> Result<u32, String> {
    let mut r = Run {
        rng: StdRng::seed_from_u64(seed),
        next_tag: 1,
        gen: 1,
    };
    let ram: Arc<dyn BlockDevice> = Arc::new(RamDevice::new("ram", 8 << 20));
    let fault = FaultDevice::new(ram, seed);
    let fault_arc = Arc::new(fault.reopen());
    let s = Store::format(fault_arc.clone() as Arc<dyn BlockDevice>, label())
        .await
        .map_err(|e| e.to_string())?;
    let mut st = St {
        live: View::new(),
        snaps: Vec::new(),
    };
    let mut s = s;
    let mut dev = fault_arc.reopen();
    drop(fault);
    let mut cuts = 0;
    for round in 0..2 {
        // Some rounds inject failing flushes or writes (a "crash mid-flush" once power is cut).
        let long = seed.is_multiple_of(40) && round == 0;
        match if long { 9 } else { r.rng.gen_range(0..10) } {
            0 => dev.fail(FaultOp::Flush, Trigger::Probability(0.15)),
            1 => dev.fail(FaultOp::Write, Trigger::Probability(0.05)),
            2 => dev.tear_writes(Trigger::Probability(0.05)),
            _ => {}
        }
        let (hist, durable) = phase(&mut r, &s, st, long).await;
        if long && !s.is_poisoned() && s.stats().checkpoints == 0 {
            return Err(format!(
                "seed {seed}: a long phase never checkpointed ({:?})",
                s.stats()
            ));
        }
        // Track the newest generation used so later writes are never below a block's newest.
        r.gen += 1;
        let (d2, s2, st2) = cut_and_recover(&dev, &hist, durable)
            .await
            .map_err(|e| format!("seed {seed} round {round}: {e}"))?;
        cuts += 1;
        drop(s);
        s = s2;
        st = st2;
        dev = d2;
    }
    Ok(cuts)
}

#[test]
fn power_cuts_lose_nothing_flushed() {
    let cycles: u64 = std::env::var("CAIRN_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1100);
    let base: u64 = std::env::var("CAIRN_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let threads = 2;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let rt = rt();
                let mut cuts = 0u32;
                let mut seed = base + t;
                while seed < base + cycles {
                    cuts += rt.block_on(cycle(seed)).unwrap_or_else(|e| panic!("{e}"));
                    seed += threads;
                }
                cuts
            })
        })
        .collect();
    let cuts: u32 = handles
        .into_iter()
        .map(|h| h.join().expect("crash thread"))
        .sum();
    println!("power cuts survived: {cuts}");
    assert_eq!(u64::from(cuts), cycles * 2);
}

#[test]
fn meta_slot_is_atomic_across_power_cuts() {
    let rt = rt();
    rt.block_on(async {
        for seed in 0..50u64 {
            let ram: Arc<dyn BlockDevice> = Arc::new(RamDevice::new("ram", 8 << 20));
            let fault = FaultDevice::new(ram, seed);
            let dev = Arc::new(fault.reopen());
            let s = Store::format(dev.clone() as Arc<dyn BlockDevice>, label())
                .await
                .unwrap();
            let a = vec![1u8; 100 + seed as usize * 37];
            let b = vec![2u8; 5000 + seed as usize * 911];
            s.put_meta(&a).await.unwrap();
            // The device flush of the second put fails: its bytes may land whole, torn or not.
            fault.fail(FaultOp::Flush, Trigger::Next(1));
            assert!(s.put_meta(&b).await.is_err());
            drop(s);
            fault.power_cut().await.unwrap();
            fault.clear_faults();
            let dev2 = Arc::new(fault.reopen());
            let s = Store::open(dev2.clone() as Arc<dyn BlockDevice>)
                .await
                .unwrap();
            let got = s.get_meta().unwrap();
            assert!(
                got == a || got == b,
                "seed {seed}: meta is neither old nor new"
            );
            let c = vec![3u8; 777];
            s.put_meta(&c).await.unwrap();
            drop(s);
            fault.power_cut().await.unwrap();
            let s = Store::open(Arc::new(fault.reopen()) as Arc<dyn BlockDevice>)
                .await
                .unwrap();
            assert_eq!(
                s.get_meta().unwrap(),
                c,
                "seed {seed}: a completed put_meta was lost"
            );
        }
    });
}
