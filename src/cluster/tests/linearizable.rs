//! Metadata operations (create / delete / linearizable read of virtual disks) from concurrent
//! clients against a three-member cluster while the leader is repeatedly stopped and restarted
//! from disk, or cut off from the others (a partition, by the network layer's fault switch) and
//! healed; the recorded history must be linearizable and all members must end with the same
//! state.
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::linearize::{check_metadata, MetaInput, MetaOutput, Op, Outcome};
use cluster::{ClusterNode, Command, CommandResult, Error, NodeConfig, Role, VdiskDef};
use common::{config, wait_for, wait_leader};
use rand::{Rng, SeedableRng};

type Slots = Arc<Mutex<Vec<Option<Arc<ClusterNode>>>>>;

const KEYS: usize = 3;
const CLIENTS: usize = 3;
const RUN: Duration = Duration::from_secs(15);
const FAULT_CYCLES: usize = 4;

fn pick(slots: &Slots, rng: &mut impl Rng) -> Option<Arc<ClusterNode>> {
    let s = slots.lock().unwrap();
    let alive: Vec<&Arc<ClusterNode>> = s.iter().flatten().collect();
    if alive.is_empty() {
        return None;
    }
    // Half the time aim at the leader (reads only succeed there).
    if rng.gen_bool(0.5) {
        if let Some(l) = alive[0].leader() {
            if let Some(n) = alive.iter().find(|n| n.id() == l) {
                return Some((*n).clone());
            }
        }
    }
    Some(alive[rng.gen_range(0..alive.len())].clone())
}

async fn reopen(cfg: NodeConfig) -> Arc<ClusterNode> {
    let start = Instant::now();
    loop {
        match ClusterNode::open(cfg.clone()).await {
            Ok(n) => return n,
            // The old listener may take a moment to close.
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                eprintln!("reopen retry: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_history_is_linearizable_under_leader_crashes_and_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = ClusterNode::create(config(dir.path(), "127.0.0.41", "n1"))
        .await
        .unwrap();
    let mut nodes = vec![n1.clone()];
    for (ip, name, role) in [
        ("127.0.0.42", "n2", Role::Data),
        ("127.0.0.43", "n3", Role::Witness),
    ] {
        let t = n1
            .issue_join_token(role, Duration::from_secs(60))
            .await
            .unwrap();
        nodes.push(
            ClusterNode::join(config(dir.path(), ip, name), &t, n1.cfg_join_addr())
                .await
                .unwrap(),
        );
    }
    let cfgs: Vec<NodeConfig> = nodes.iter().map(|n| n.cfg().clone()).collect();
    let slots: Slots = Arc::new(Mutex::new(nodes.into_iter().map(Some).collect()));
    let history: Arc<Mutex<Vec<Op<MetaInput, MetaOutput>>>> = Arc::default();
    let t0 = Instant::now();
    let ns = move || t0.elapsed().as_nanos() as u64;

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (slots, history) = (slots.clone(), history.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            let mut counts = (0usize, 0usize);
            while t0.elapsed() < RUN {
                let Some(node) = pick(&slots, &mut rng) else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let key = format!("vd{}", rng.gen_range(0..KEYS));
                let kind = rng.gen_range(0..3);
                let call = ns();
                let (input, output) = match kind {
                    0 | 1 => {
                        let (input, cmd) = if kind == 0 {
                            let v = VdiskDef {
                                id: key.clone(),
                                name: key.clone(),
                                size_bytes: 1 << 20,
                                parent_snapshot: None,
                            };
                            (MetaInput::Create(key.clone()), Command::CreateVdisk(v))
                        } else {
                            (
                                MetaInput::Delete(key.clone()),
                                Command::DeleteVdisk { id: key.clone() },
                            )
                        };
                        match node.propose(cmd).await {
                            Ok(CommandResult::Ok) => (input, Some(MetaOutput::Done(true))),
                            Ok(CommandResult::Rejected(_)) => {
                                (input, Some(MetaOutput::Done(false)))
                            }
                            Ok(other) => panic!("unexpected result {other:?}"),
                            Err(Error::Indeterminate(_)) => (input, None),
                            // Certainly not applied: not part of the history.
                            Err(_) => continue,
                        }
                    }
                    _ => match node
                        .read_linearizable(|s| s.vdisks.contains_key(&key))
                        .await
                    {
                        Ok(b) => (MetaInput::Exists(key.clone()), Some(MetaOutput::Seen(b))),
                        Err(_) => continue,
                    },
                };
                let ret = output.as_ref().map(|_| ns());
                if output.is_some() {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                }
                history.lock().unwrap().push(Op {
                    client: c,
                    call,
                    ret,
                    input,
                    output,
                });
            }
            counts
        }));
    }

    // Faults, alternating: stop the leader and restart it from disk; cut the leader off from
    // the others (both directions) and heal.
    let mut leaders_hit = Vec::new();
    for cycle in 0..FAULT_CYCLES {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let victim = {
            let s = slots.lock().unwrap();
            let any = s.iter().flatten().next().unwrap().clone();
            any.leader()
                .and_then(|l| s.iter().flatten().find(|n| n.id() == l).cloned())
        };
        let Some(victim) = victim else { continue };
        let idx = (victim.id() - 1) as usize;
        leaders_hit.push(victim.id());
        let partition = cycle % 2 == 1;
        if partition {
            victim.set_isolated(true);
        } else {
            slots.lock().unwrap()[idx] = None;
            victim.shutdown().await;
        }
        // Followers wait out the leader lease plus an election timeout (1.2-1.6 s with the
        // default timings) before electing: keep the fault longer than that.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        {
            let s = slots.lock().unwrap();
            let view: Vec<(u64, Option<u64>, u64)> = s
                .iter()
                .flatten()
                .map(|n| (n.id(), n.leader(), n.raft().metrics().borrow().current_term))
                .collect();
            eprintln!(
                "fault on {} (partition: {partition}): (id, leader, term) = {view:?}",
                idx + 1
            );
        }
        if partition {
            victim.set_isolated(false);
        } else {
            drop(victim);
            let back = reopen(cfgs[idx].clone()).await;
            slots.lock().unwrap()[idx] = Some(back);
        }
    }
    let mut done = 0;
    let mut unknown = 0;
    for c in clients {
        let (d, u) = c.await.unwrap();
        done += d;
        unknown += u;
    }
    assert!(
        leaders_hit.len() >= 2,
        "faults did not happen: {leaders_hit:?}"
    );
    let distinct: std::collections::BTreeSet<u64> = leaders_hit.iter().copied().collect();
    assert!(
        distinct.len() >= 2,
        "leadership never moved: {leaders_hit:?}"
    );
    let h = history.lock().unwrap().clone();
    eprintln!(
        "history: {} ops ({done} completed, {unknown} unknown), leaders hit: {leaders_hit:?}",
        h.len()
    );
    assert!(
        done >= 50,
        "too few completed operations ({done}) to mean anything"
    );
    assert_eq!(check_metadata(&h, 5_000_000), Outcome::Linearizable);

    // All members converge to the same state.
    let all: Vec<Arc<ClusterNode>> = slots.lock().unwrap().iter().flatten().cloned().collect();
    assert_eq!(all.len(), 3);
    let refs: Vec<&Arc<ClusterNode>> = all.iter().collect();
    wait_leader(&refs, Duration::from_secs(15)).await;
    all[0].propose(Command::Noop).await.unwrap();
    let want = all[0].read_linearizable(|s| s.vdisks.clone()).await;
    let want = match want {
        Ok(w) => w,
        Err(_) => {
            let l = all[0].leader().unwrap();
            all.iter()
                .find(|n| n.id() == l)
                .unwrap()
                .read(|s| s.vdisks.clone())
        }
    };
    for n in &all {
        wait_for("replicas converge", Duration::from_secs(10), || {
            n.read(|s| s.vdisks == want)
        })
        .await;
    }
    for n in all {
        n.shutdown().await;
    }
}
