//! `cairn bench cluster`, metadata part: raft commits per second of small metadata commands
//! on a three-member cluster, ours (durable log with fdatasync, mutual TLS over loopback)
//! against an anchor run in the same invocation: the same openraft version and state machine
//! with an in-memory log store and an in-process network (what openraft's own benchmark
//! measures: no disk, no network).
//!
//! Output: one JSON line per figure, as in BENCHMARKS.md. Must never: run as part of the
//! default tests (performance lives in benchmarks).
// openraft's network and storage traits dictate large error types.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader};
use serde::Serialize;

use crate::node::{ClusterNode, NodeConfig, RaftTimings};
use crate::sm_store::StateMachineStore;
use crate::state::{Command, UserDef};
use crate::types::{CairnNode, Entry, LogId, NodeId, Raft, Role, StorageError, TypeConfig, Vote};
use crate::Error;

/// One benchmark figure.
#[derive(Debug, Clone, Serialize)]
pub struct BenchLine {
    pub bench: &'static str,
    pub metric: String,
    pub ours: f64,
    pub anchor: f64,
    pub anchor_name: &'static str,
    pub ratio: f64,
    pub higher_is_better: bool,
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Scratch directory for the three members' data.
    pub dir: PathBuf,
    /// Measurement time per figure.
    pub duration: Duration,
    /// Concurrent clients for each figure (e.g. `[1, 32]`).
    pub clients: Vec<usize>,
    /// Loopback addresses for the three members.
    pub ips: [String; 3],
}

const ANCHOR_NAME: &str = "openraft 0.9 in-memory log + in-process network";

fn cmd(client: usize, i: u64) -> Command {
    Command::PutUser(UserDef {
        name: format!("bench-{client}-{}", i % 64),
        password_hash: format!("$bench${i}"),
        role: "viewer".into(),
    })
}

async fn drive(
    leader: Arc<dyn Proposer>,
    clients: usize,
    duration: Duration,
) -> Result<f64, Error> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < duration {
                leader.commit(cmd(c, n)).await?;
                n += 1;
            }
            Ok::<u64, Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| Error::Raft(e.to_string()))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

trait Proposer: Send + Sync {
    fn commit(
        &self,
        c: Command,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + '_>>;
}

struct RaftProposer(Raft);

impl Proposer for RaftProposer {
    fn commit(
        &self,
        c: Command,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send + '_>> {
        Box::pin(async move {
            self.0
                .client_write(c)
                .await
                .map(|_| ())
                .map_err(|e| Error::Raft(e.to_string()))
        })
    }
}

/// Runs ours and the anchor for each client count and returns the figures.
pub async fn metadata_commits(opts: &BenchOpts) -> Result<Vec<BenchLine>, Error> {
    let fsync_ms = fdatasync_latency_ms(&opts.dir)?;
    let ours = OurCluster::start(opts).await?;
    let anchor = MemCluster::start(&opts.dir.join("anchor")).await?;
    let mut lines = Vec::new();
    for &clients in &opts.clients {
        let o = drive(ours.leader.clone(), clients, opts.duration).await?;
        let a = drive(anchor.leader.clone(), clients, opts.duration).await?;
        lines.push(BenchLine {
            bench: "cluster",
            metric: format!("metadata_commits_per_s_{clients}_clients"),
            ours: o.round(),
            anchor: a.round(),
            anchor_name: ANCHOR_NAME,
            ratio: if a > 0.0 {
                (o / a * 1000.0).round() / 1000.0
            } else {
                0.0
            },
            higher_is_better: true,
        });
        if clients == 1 && o > 0.0 {
            // The floor for a durable commit: one fdatasync (leader and follower sync in
            // parallel) plus a round trip. Measured on the same disk in the same run.
            let ms = 1000.0 / o;
            lines.push(BenchLine {
                bench: "cluster",
                metric: "metadata_commit_latency_ms_1_client".into(),
                ours: (ms * 1000.0).round() / 1000.0,
                anchor: (fsync_ms * 1000.0).round() / 1000.0,
                anchor_name: "one 200 B append + fdatasync on the same disk",
                ratio: ((ms / fsync_ms) * 1000.0).round() / 1000.0,
                higher_is_better: false,
            });
        }
    }
    ours.stop().await;
    anchor.stop().await;
    Ok(lines)
}

/// Mean latency of a small append + fdatasync in `dir` (what every durable commit pays).
fn fdatasync_latency_ms(dir: &std::path::Path) -> Result<f64, Error> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("bench dir", e))?;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io("fsync probe", e))?;
    let n = 200;
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&[7u8; 200])
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io("fsync probe", e))?;
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    let _ = std::fs::remove_file(&path);
    Ok(ms)
}

struct OurCluster {
    nodes: Vec<Arc<ClusterNode>>,
    leader: Arc<dyn Proposer>,
}

impl OurCluster {
    async fn start(opts: &BenchOpts) -> Result<OurCluster, Error> {
        let cfg = |i: usize| -> Result<NodeConfig, Error> {
            let free = |ip: &str| -> Result<std::net::SocketAddr, Error> {
                let l = std::net::TcpListener::bind(format!("{ip}:0"))
                    .map_err(|e| Error::io("bind", e))?;
                l.local_addr().map_err(|e| Error::io("bind", e))
            };
            Ok(NodeConfig {
                data_dir: opts.dir.join(format!("ours-{i}")),
                name: format!("bench{i}"),
                rpc_addr: free(&opts.ips[i])?,
                join_addr: free(&opts.ips[i])?,
                timings: RaftTimings::default(),
                media: None,
            })
        };
        let n1 = ClusterNode::create(cfg(0)?).await?;
        let mut nodes = vec![n1.clone()];
        for (i, role) in [(1, Role::Data), (2, Role::Witness)] {
            let t = n1.issue_join_token(role, Duration::from_secs(60)).await?;
            nodes.push(ClusterNode::join(cfg(i)?, &t, n1.cfg_join_addr()).await?);
        }
        let leader = n1.raft().clone();
        Ok(OurCluster {
            nodes,
            leader: Arc::new(RaftProposer(leader)),
        })
    }

    async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

// ---- the anchor: in-memory log store and in-process network ----

#[derive(Debug, Default)]
struct MemLogInner {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    log: BTreeMap<u64, Entry>,
}

/// An in-memory log store in the shape of openraft's examples: a map under a lock, appends
/// acknowledged at once.
#[derive(Debug, Clone, Default)]
pub struct MemLogStore(Arc<Mutex<MemLogInner>>);

impl MemLogStore {
    fn g(&self) -> std::sync::MutexGuard<'_, MemLogInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(crate::log_store::range_entries(&self.g().log, range))
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = MemLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let g = self.g();
        let last = g
            .log
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(g.last_purged);
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.g().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.g().vote)
    }

    async fn save_committed(&mut self, c: Option<LogId>) -> Result<(), StorageError> {
        self.g().committed = c;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.g().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut g = self.g();
            for e in entries {
                g.log.insert(e.get_log_id().index, e);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.g().log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut g = self.g();
        g.last_purged = Some(log_id);
        let keep = g.log.split_off(&(log_id.index + 1));
        g.log = keep;
        Ok(())
    }
}

type Router = Arc<RwLock<BTreeMap<NodeId, Raft>>>;

#[derive(Clone)]
struct MemNetwork(Router);

struct MemConn {
    target: NodeId,
    router: Router,
}

impl RaftNetworkFactory<TypeConfig> for MemNetwork {
    type Network = MemConn;
    async fn new_client(&mut self, target: NodeId, _node: &CairnNode) -> MemConn {
        MemConn {
            target,
            router: self.0.clone(),
        }
    }
}

impl MemConn {
    fn raft<E: std::error::Error>(&self) -> Result<Raft, RPCError<NodeId, CairnNode, E>> {
        self.router
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.target)
            .cloned()
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&Error::NoLeader)))
    }
}

impl RaftNetwork<TypeConfig> for MemConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, CairnNode, RaftError<NodeId>>> {
        self.raft()?
            .append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, CairnNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.raft()?
            .install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _o: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, CairnNode, RaftError<NodeId>>> {
        self.raft()?
            .vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

struct MemCluster {
    router: Router,
    leader: Arc<dyn Proposer>,
}

impl MemCluster {
    async fn start(dir: &std::path::Path) -> Result<MemCluster, Error> {
        let router: Router = Arc::default();
        let t = RaftTimings::default();
        let cfg = Arc::new(
            openraft::Config {
                heartbeat_interval: t.heartbeat_ms,
                election_timeout_min: t.election_min_ms,
                election_timeout_max: t.election_max_ms,
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
                max_in_snapshot_log_to_keep: 100,
                ..Default::default()
            }
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?,
        );
        for id in 1..=3u64 {
            let sm = StateMachineStore::open(&dir.join(format!("sm-{id}")))?;
            let raft = Raft::new(
                id,
                cfg.clone(),
                MemNetwork(router.clone()),
                MemLogStore::default(),
                sm,
            )
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
            router
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, raft);
        }
        let r1 = router.read().unwrap_or_else(|e| e.into_inner())[&1].clone();
        let members: BTreeMap<NodeId, CairnNode> = (1..=3)
            .map(|i| {
                (
                    i,
                    CairnNode {
                        addr: format!("mem-{i}"),
                        role: Role::Data,
                    },
                )
            })
            .collect();
        r1.initialize(members)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let start = Instant::now();
        while r1.metrics().borrow().current_leader != Some(1) {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(Error::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(MemCluster {
            router,
            leader: Arc::new(RaftProposer(r1)),
        })
    }

    async fn stop(self) {
        let rafts: Vec<Raft> = self
            .router
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for r in rafts {
            let _ = r.shutdown().await;
        }
    }
}
