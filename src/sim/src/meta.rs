//! The cluster half of a run: three raft members built with `openraft::Raft::new` over the real
//! `cluster` log store and state machine (on tmpfs), wired by the simulated network; clients
//! commit vdisk / snapshot / clone commands and read the state linearizably while a nemesis
//! partitions, delays and drops messages and crashes and restarts members. Afterwards every
//! member must hold the same state, and the recorded history must be linearizable.
//!
//! (`ClusterNode` owns its TLS transport and wall clock, so the sim builds the raft instances
//! itself, the same way `ClusterNode` does, over the same stores.)
//!
//! Must never: retry a command whose outcome is unknown (only `ForwardToLeader`, which means the
//! entry was never appended or was truncated away, is retried), or record a read taken from a
//! different raft instance than the one that confirmed leadership.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::linearize::{check, Op, Outcome};
use cluster::{
    CairnNode, ClusterState, Command, CommandResult, LogStore, NodeId, Raft, Role,
    StateMachineStore, StateReader,
};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::detlog::DetLog;
use crate::error::SimError;
use crate::meta_model::{snapshot, vdisk, MetaModel, MetaOp, MetaOut, MetaState};
use crate::net::{Net, SimNetwork, WireConfig};
use crate::trace::Trace;

pub const MEMBERS: [NodeId; 3] = [1, 2, 3];
/// How long a client waits for one operation before calling its outcome unknown.
const OP_DEADLINE: Duration = Duration::from_secs(3);
/// Search budget of the linearizability checker per run.
const CHECK_STEPS: u64 = 2_000_000;

/// Size of the metadata workload.
#[derive(Debug, Clone, Copy)]
pub struct MetaConfig {
    pub clients: usize,
    pub ops_per_client: usize,
    /// Names the workload draws from (fewer names, more conflicts).
    pub names: usize,
}

/// What the cluster half of a run saw.
#[derive(Debug, Clone, Default)]
pub struct MetaReport {
    pub ops: usize,
    pub unknown: usize,
    pub crashes: u64,
    pub check: Option<Outcome>,
}

type Handle = (Raft, StateReader);

struct Cluster {
    net: Arc<Net>,
    root: PathBuf,
    live: Mutex<BTreeMap<NodeId, Handle>>,
    trace: Trace,
}

impl Cluster {
    fn handle(&self, id: NodeId) -> Option<Handle> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn live_ids(&self) -> Vec<NodeId> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.keys().copied().collect()
    }

    async fn start(&self, id: NodeId) -> Result<(), SimError> {
        let dir = self.root.join(format!("n{id}"));
        let (log, _) =
            LogStore::open(&dir.join("log")).map_err(|e| SimError::setup("open raft log", e))?;
        let sm = StateMachineStore::open(&dir.join("sm"))
            .map_err(|e| SimError::setup("open state machine", e))?;
        let reader = sm.reader();
        // openraft draws election timeouts from an unseeded generator: give each start a seeded
        // timeout of its own and a range of one value, so nothing is left to that generator.
        let election = 150 + self.net.rng_below(150);
        let cfg = openraft::Config {
            cluster_name: "sim".into(),
            heartbeat_interval: 50,
            election_timeout_min: election,
            election_timeout_max: election + 1,
            // Small, so runs build and install snapshots and purge the log.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(8),
            max_in_snapshot_log_to_keep: 2,
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .map_err(|e| SimError::setup("raft config", e))?;
        let net = SimNetwork {
            net: self.net.clone(),
            me: id,
        };
        let raft = Raft::new(id, Arc::new(cfg), net, DetLog(log), sm)
            .await
            .map_err(|e| SimError::setup("start raft", e))?;
        self.net.set_up(id, raft.clone());
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (raft, reader));
        self.trace
            .event(format!("node {id} up (election {election} ms)"));
        Ok(())
    }

    /// Kills a member: off the wire first, then its raft stops; what its stores wrote stays.
    async fn crash(&self, id: NodeId) {
        self.net.set_down(id);
        let h = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some((raft, _)) = h {
            let _ = raft.shutdown().await;
        }
        self.trace.event(format!("node {id} crashed"));
    }
}

fn members() -> BTreeMap<NodeId, CairnNode> {
    MEMBERS
        .iter()
        .map(|id| {
            (
                *id,
                CairnNode {
                    addr: format!("sim:{id}"),
                    role: Role::Data,
                },
            )
        })
        .collect()
}

fn pick(rng: &mut StdRng, ids: &[NodeId]) -> Option<NodeId> {
    (!ids.is_empty()).then(|| ids[rng.gen_range(0..ids.len())])
}

/// Commits `cmd`; `None` when the outcome is unknown.
async fn submit(cl: &Cluster, cmd: &Command, rng: &mut StdRng) -> Option<CommandResult> {
    let deadline = tokio::time::Instant::now() + OP_DEADLINE;
    let mut target = pick(rng, &cl.live_ids());
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        let Some((raft, _)) = target.and_then(|t| cl.handle(t)) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            target = pick(rng, &cl.live_ids());
            continue;
        };
        match tokio::time::timeout(left, raft.client_write(cmd.clone())).await {
            Ok(Ok(resp)) => return Some(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                // Never appended here (or truncated away as uncommitted): safe to send again.
                tokio::time::sleep(Duration::from_millis(20)).await;
                target = f.leader_id.or_else(|| pick(rng, &cl.live_ids()));
            }
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// A linearizable read of the whole metadata state; `None` if no leader confirmed in time.
async fn read(cl: &Cluster, rng: &mut StdRng) -> Option<(MetaState, ClusterState)> {
    let deadline = tokio::time::Instant::now() + OP_DEADLINE;
    let mut target = pick(rng, &cl.live_ids());
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        let Some((raft, reader)) = target.and_then(|t| cl.handle(t)) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            target = pick(rng, &cl.live_ids());
            continue;
        };
        match tokio::time::timeout(left, raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {
                let a = reader.read();
                return Some((MetaState::from_cluster(&a.state), a.state.clone()));
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                target = f.leader_id.or_else(|| pick(rng, &cl.live_ids()));
            }
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                target = pick(rng, &cl.live_ids());
            }
            Err(_) => return None,
        }
    }
}

fn random_op(rng: &mut StdRng, names: usize) -> MetaOp {
    let v = format!("v{}", rng.gen_range(0..names));
    let s = format!("s{}", rng.gen_range(0..names));
    match rng.gen_range(0..10) {
        0..=2 => MetaOp::Cmd(Command::CreateVdisk(vdisk(&v, None))),
        3 => MetaOp::Cmd(Command::DeleteVdisk { id: v }),
        4 => MetaOp::Cmd(Command::CreateSnapshot(snapshot(&s, &v))),
        5 => MetaOp::Cmd(Command::DeleteSnapshot { id: s }),
        6 => MetaOp::Cmd(Command::CloneVdisk {
            snapshot: s,
            new: vdisk(&v, None),
        }),
        _ => MetaOp::Read,
    }
}

fn short(op: &MetaOp) -> String {
    match op {
        MetaOp::Read => "read".into(),
        MetaOp::Cmd(Command::CreateVdisk(v)) => format!("create {}", v.id),
        MetaOp::Cmd(Command::DeleteVdisk { id }) => format!("delete {id}"),
        MetaOp::Cmd(Command::CreateSnapshot(s)) => format!("snap {} of {}", s.id, s.vdisk),
        MetaOp::Cmd(Command::DeleteSnapshot { id }) => format!("unsnap {id}"),
        MetaOp::Cmd(Command::CloneVdisk { snapshot, new }) => {
            format!("clone {snapshot} to {}", new.id)
        }
        MetaOp::Cmd(c) => format!("{c:?}"),
    }
}

async fn client(
    cl: Arc<Cluster>,
    id: usize,
    seed: u64,
    cfg: MetaConfig,
) -> Vec<Op<MetaOp, MetaOut>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut history = Vec::new();
    for _ in 0..cfg.ops_per_client {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        let input = random_op(&mut rng, cfg.names);
        let call = cl.trace.now_us();
        cl.trace.event(format!("c{id} {}", short(&input)));
        let output = match &input {
            MetaOp::Cmd(cmd) => submit(&cl, cmd, &mut rng)
                .await
                .map(|r| MetaOut::Done(!matches!(r, CommandResult::Rejected(_)))),
            MetaOp::Read => read(&cl, &mut rng).await.map(|(m, _)| MetaOut::Seen(m)),
        };
        let ret = cl.trace.now_us();
        match &output {
            Some(MetaOut::Seen(m)) => cl.trace.event(format!(
                "c{id} read -> vdisks {:?} snaps {:?}",
                m.vdisks.keys().collect::<Vec<_>>(),
                m.snaps.keys().collect::<Vec<_>>()
            )),
            o => cl.trace.event(format!("c{id} {} -> {o:?}", short(&input))),
        }
        // A read that never got an answer constrains nothing: leave it out.
        if output.is_none() && input == MetaOp::Read {
            continue;
        }
        history.push(Op {
            client: id,
            call,
            ret: output.as_ref().map(|_| ret),
            input,
            output,
        });
    }
    history
}

/// Faults on the wire and crashes of members, until `stop` is set.
async fn nemesis(cl: Arc<Cluster>, seed: u64, stop: Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut crashes = 0;
    let mut down: Option<NodeId> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
        let a = MEMBERS[rng.gen_range(0..3)];
        let b = MEMBERS[rng.gen_range(0..3)];
        match rng.gen_range(0..9) {
            0 => {
                for o in MEMBERS.iter().filter(|o| **o != a) {
                    cl.net.set_link(a, *o, true);
                }
                cl.trace.event(format!("nemesis: isolate {a}"));
            }
            1 if a != b => {
                cl.net.cut_one_way(a, b);
                cl.trace.event(format!("nemesis: cut {a}->{b}"));
            }
            2 | 3 => {
                cl.net.heal();
                cl.trace.event("nemesis: heal");
            }
            4 if down.is_none() => {
                cl.crash(a).await;
                down = Some(a);
                crashes += 1;
            }
            5 => {
                if let Some(d) = down.take() {
                    if let Err(e) = cl.start(d).await {
                        cl.trace.event(format!("restart {d} failed: {e}"));
                    }
                }
            }
            6 => {
                let wire = WireConfig {
                    loss: rng.gen_range(0.0..0.3),
                    max_delay_ms: rng.gen_range(0..60),
                };
                cl.net.set_wire(wire);
                cl.trace.event(format!("nemesis: wire {wire:?}"));
            }
            7 => {
                cl.net.set_wire(WireConfig::default());
                cl.trace.event("nemesis: calm wire");
            }
            _ => {}
        }
    }
    cl.net.heal();
    cl.net.set_wire(WireConfig::default());
    if let Some(d) = down {
        if let Err(e) = cl.start(d).await {
            cl.trace.event(format!("restart {d} failed: {e}"));
        }
    }
    cl.trace.event("nemesis: stopped, all healed");
    crashes
}

fn tmp_root() -> Result<tempfile::TempDir, SimError> {
    // tmpfs when there is one: the log store syncs every append.
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("cairn-sim-")
        .tempdir_in(shm);
    b.or_else(|_| tempfile::Builder::new().prefix("cairn-sim-").tempdir())
        .map_err(|e| SimError::setup("temp dir", e))
}

/// Runs the cluster half of seed `seed`.
pub async fn run(seed: u64, cfg: MetaConfig, trace: Trace) -> Result<MetaReport, SimError> {
    let dir = tmp_root()?;
    let net = Net::new(seed, trace.clone());
    let cl = Arc::new(Cluster {
        net,
        root: dir.path().to_path_buf(),
        live: Mutex::new(BTreeMap::new()),
        trace: trace.clone(),
    });
    for id in MEMBERS {
        cl.start(id).await?;
    }
    let (first, _) = cl
        .handle(MEMBERS[0])
        .ok_or_else(|| SimError::Setup("first member missing".into()))?;
    first
        .initialize(members())
        .await
        .map_err(|e| SimError::setup("initialize", e))?;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nem = tokio::spawn(nemesis(
        cl.clone(),
        seed ^ 0x6e65_6d65_7369_7300,
        stop.clone(),
    ));
    let clients: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let s = seed.wrapping_mul(31).wrapping_add(i as u64 + 1);
            tokio::spawn(client(cl.clone(), i, s, cfg))
        })
        .collect();
    let mut history = Vec::new();
    for c in clients {
        history.extend(c.await.map_err(|e| SimError::setup("client task", e))?);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let crashes = nem.await.map_err(|e| SimError::setup("nemesis task", e))?;

    // Healed and all up: a final read must succeed and every member must converge to it.
    let mut rng = StdRng::seed_from_u64(seed ^ 0xf1);
    let call = trace.now_us();
    let Some((seen, full)) = read(&cl, &mut rng).await else {
        return Err(SimError::Check(
            "no linearizable read within 3 s after healing every fault".into(),
        ));
    };
    history.push(Op {
        client: usize::MAX,
        call,
        ret: Some(trace.now_us()),
        input: MetaOp::Read,
        output: Some(MetaOut::Seen(seen)),
    });
    converge(&cl, &full).await?;

    let unknown = history.iter().filter(|o| o.output.is_none()).count();
    let outcome = check(&MetaModel, &history, CHECK_STEPS);
    trace.event(format!(
        "history: {} ops, {unknown} unknown, {outcome:?}",
        history.len()
    ));
    for id in MEMBERS {
        cl.crash(id).await;
    }
    if outcome == Outcome::NotLinearizable {
        return Err(SimError::Check(format!(
            "metadata history of {} ops is not linearizable:\n{}",
            history.len(),
            history
                .iter()
                .map(|o| format!(
                    "  c{} [{}..{:?}] {} -> {:?}",
                    o.client,
                    o.call,
                    o.ret,
                    short(&o.input),
                    o.output
                ))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    Ok(MetaReport {
        ops: history.len(),
        unknown,
        crashes,
        check: Some(outcome),
    })
}

/// Every member must reach the read state (no newer commands exist, so exactly it).
async fn converge(cl: &Cluster, want: &ClusterState) -> Result<(), SimError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut behind = Vec::new();
        for id in MEMBERS {
            match cl.handle(id) {
                Some((_, r)) if r.read().state == *want => {}
                _ => behind.push(id),
            }
        }
        if behind.is_empty() {
            cl.trace.event("all members converged");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let detail: Vec<String> = behind
                .iter()
                .map(|id| match cl.handle(*id) {
                    Some((_, r)) => {
                        let a = r.read();
                        format!(
                            "node {id}: applied {:?}, state {:?}",
                            a.last_applied,
                            MetaState::from_cluster(&a.state)
                        )
                    }
                    None => format!("node {id}: down"),
                })
                .collect();
            return Err(SimError::Check(format!(
                "members did not converge within 10 s of healing; want {:?}; {}",
                MetaState::from_cluster(want),
                detail.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
