//! Model-based test: random sequences of store operations, as the engine would issue them,
//! checked byte for byte against a plain in-memory reference (live view + frozen copies per
//! snapshot), with refcount/space exactness checked after every reopen.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use blockdev::RamDevice;
use common::*;
use proptest::prelude::*;
use store::{ObjectId, Store};

const VDISKS: u64 = 2; // vdisks 1..=2 take snapshots; vdisk 3 holds clones
const CHUNKS: u64 = 3;
const BLOCKS: u64 = 12;

type View = BTreeMap<ObjectId, BTreeMap<u64, u64>>;

#[derive(Debug, Clone)]
enum Op {
    Write {
        v: u64,
        c: u64,
        b: u64,
        n: u64,
    },
    Read {
        v: u64,
        c: u64,
        b: u64,
        n: u32,
    },
    Discard {
        v: u64,
        c: u64,
        b: u64,
        n: u32,
    },
    Flush,
    Snapshot {
        v: u64,
    },
    ReadSnap {
        v: u64,
        s: usize,
    },
    DeleteSnap {
        v: u64,
        s: usize,
    },
    Rollback {
        v: u64,
        s: usize,
    },
    Clone {
        v: u64,
        c: u64,
        s: Option<usize>,
        dst: u64,
    },
    DeleteClone {
        dst: u64,
    },
    Reopen {
        close: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let v = 1..=VDISKS;
    prop_oneof![
        8 => (v.clone(), 0..CHUNKS, 0..BLOCKS, 1..4u64).prop_map(|(v, c, b, n)| Op::Write { v, c, b, n }),
        3 => (v.clone(), 0..CHUNKS, 0..BLOCKS, 1..5u32).prop_map(|(v, c, b, n)| Op::Read { v, c, b, n }),
        2 => (v.clone(), 0..CHUNKS, 0..BLOCKS, 1..4u32).prop_map(|(v, c, b, n)| Op::Discard { v, c, b, n }),
        2 => Just(Op::Flush),
        2 => v.clone().prop_map(|v| Op::Snapshot { v }),
        2 => (v.clone(), 0..4usize).prop_map(|(v, s)| Op::ReadSnap { v, s }),
        1 => (v.clone(), 0..4usize).prop_map(|(v, s)| Op::DeleteSnap { v, s }),
        1 => (v.clone(), 0..4usize).prop_map(|(v, s)| Op::Rollback { v, s }),
        1 => (v.clone(), 0..CHUNKS, proptest::option::of(0..4usize), 0..2u64)
            .prop_map(|(v, c, s, dst)| Op::Clone { v, c, s, dst }),
        1 => (0..2u64).prop_map(|dst| Op::DeleteClone { dst }),
        1 => any::<bool>().prop_map(|close| Op::Reopen { close }),
    ]
}

struct Disk {
    gen: u64,
    snaps: Vec<(u64, View)>,
}

struct Model {
    live: View,
    disks: HashMap<u64, Disk>,
    next_tag: u64,
}

impl Model {
    fn view_of(&self, v: u64) -> View {
        self.live
            .iter()
            .filter(|(o, _)| o.vdisk == v)
            .map(|(o, m)| (*o, m.clone()))
            .collect()
    }
    fn pin(&self, v: u64) -> u64 {
        self.disks[&v].snaps.last().map_or(0, |s| s.0)
    }
}

async fn check_range(
    s: &Store,
    view: &View,
    o: ObjectId,
    b: u64,
    n: u32,
    at: u64,
) -> Result<(), String> {
    let buf = s
        .read(o, b, n, at)
        .await
        .map_err(|e| format!("read {o} {b}+{n}@{at}: {e}"))?;
    for i in 0..u64::from(n) {
        let got = tag_of(&buf[(i as usize) * BS..(i as usize + 1) * BS], b + i)?;
        let want = view
            .get(&o)
            .and_then(|m| m.get(&(b + i)))
            .copied()
            .unwrap_or(0);
        if got != want {
            return Err(format!(
                "{o} block {} at gen {at}: got tag {got}, want {want}",
                b + i
            ));
        }
    }
    Ok(())
}

async fn check_all(s: &Store, m: &Model) -> Result<(), String> {
    let mut objs: Vec<ObjectId> = Vec::new();
    for v in 1..=VDISKS {
        for c in 0..CHUNKS {
            objs.push(obj(v, c));
        }
    }
    objs.push(obj(3, 0));
    objs.push(obj(3, 1));
    for o in &objs {
        check_range(s, &m.live, *o, 0, BLOCKS as u32, u64::MAX).await?;
        if let Some(d) = m.disks.get(&o.vdisk) {
            for (g, view) in &d.snaps {
                check_range(s, view, *o, 0, BLOCKS as u32, *g).await?;
            }
        }
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), String> {
    let dev = Arc::new(RamDevice::new("ram", 16 << 20));
    let mut s = Store::format(dev.clone(), label())
        .await
        .map_err(|e| e.to_string())?;
    let mut m = Model {
        live: View::new(),
        disks: HashMap::new(),
        next_tag: 1,
    };
    for v in 1..=3 {
        m.disks.insert(
            v,
            Disk {
                gen: 1,
                snaps: Vec::new(),
            },
        );
    }
    for op in ops {
        match op {
            Op::Write { v, c, b, n } => {
                let tags: Vec<u64> = (0..n).map(|i| m.next_tag + i).collect();
                m.next_tag += n;
                let o = obj(v, c);
                s.write(o, b, pattern(&tags, b), m.disks[&v].gen, m.pin(v))
                    .await
                    .map_err(|e| e.to_string())?;
                let e = m.live.entry(o).or_default();
                for (i, t) in tags.iter().enumerate() {
                    e.insert(b + i as u64, *t);
                }
            }
            Op::Read { v, c, b, n } => check_range(&s, &m.live, obj(v, c), b, n, u64::MAX).await?,
            Op::Discard { v, c, b, n } => {
                let o = obj(v, c);
                s.discard(o, b, n, m.disks[&v].gen, m.pin(v))
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(e) = m.live.get_mut(&o) {
                    for i in 0..u64::from(n) {
                        e.remove(&(b + i));
                    }
                }
            }
            Op::Flush => s.flush().await.map_err(|e| e.to_string())?,
            Op::Snapshot { v } => {
                let view = m.view_of(v);
                let d = m.disks.get_mut(&v).unwrap();
                d.snaps.push((d.gen, view));
                d.gen += 1;
            }
            Op::ReadSnap { v, s: i } => {
                if let Some((g, view)) = m.disks[&v].snaps.get(i) {
                    for c in 0..CHUNKS {
                        check_range(&s, view, obj(v, c), 0, BLOCKS as u32, *g).await?;
                    }
                }
            }
            Op::DeleteSnap { v, s: i } => {
                let d = m.disks.get_mut(&v).unwrap();
                if i < d.snaps.len() {
                    d.snaps.remove(i);
                    let gens: Vec<u64> = d.snaps.iter().map(|s| s.0).collect();
                    s.prune(v, &gens).await.map_err(|e| e.to_string())?;
                }
            }
            Op::Rollback { v, s: i } => {
                let Some((g, view)) = m.disks[&v].snaps.get(i).cloned() else {
                    continue;
                };
                let (gen, pin) = (m.disks[&v].gen, m.pin(v));
                for o in s.objects().into_iter().filter(|o| o.vdisk == v) {
                    s.rollback_object(o, g, gen, pin)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                m.live.retain(|o, _| o.vdisk != v);
                m.live.extend(view);
            }
            Op::Clone { v, c, s: si, dst } => {
                let src = obj(v, c);
                let (at, view) = match si {
                    None => (u64::MAX, m.live.get(&src).cloned().unwrap_or_default()),
                    Some(i) => match m.disks[&v].snaps.get(i) {
                        Some((g, vw)) => (*g, vw.get(&src).cloned().unwrap_or_default()),
                        None => continue,
                    },
                };
                let d = obj(3, dst);
                s.delete_object(d).await.map_err(|e| e.to_string())?;
                s.clone_object(src, at, d, m.disks[&3].gen)
                    .await
                    .map_err(|e| e.to_string())?;
                m.live.insert(d, view);
            }
            Op::DeleteClone { dst } => {
                s.delete_object(obj(3, dst))
                    .await
                    .map_err(|e| e.to_string())?;
                m.live.remove(&obj(3, dst));
            }
            Op::Reopen { close } => {
                if close {
                    s.close().await.map_err(|e| e.to_string())?;
                } else {
                    s.flush().await.map_err(|e| e.to_string())?;
                }
                let before = s.space();
                drop(s);
                s = Store::open(dev.clone()).await.map_err(|e| e.to_string())?;
                s.check_invariants().map_err(|e| e.to_string())?;
                if s.space() != before {
                    return Err(format!(
                        "space changed across reopen: {before:?} -> {:?}",
                        s.space()
                    ));
                }
                check_all(&s, &m).await?;
            }
        }
        s.check_invariants()
            .map_err(|e| format!("after {op_name}: {e}", op_name = "op"))?;
    }
    check_all(&s, &m).await?;
    s.flush().await.map_err(|e| e.to_string())?;
    // Nothing pending after a flush, and every used block is referenced (no leak).
    let sp = s.space();
    if sp.pending_free_blocks != 0 || sp.used_blocks + sp.free_blocks != sp.total_blocks {
        return Err(format!("space after flush: {sp:?}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let r = rt().block_on(run(ops));
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
