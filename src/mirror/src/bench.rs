//! `cairn bench cluster`, mirrored I/O part (issue 6 "Performance"): two nodes as two
//! processes, each an engine on its own io_uring file disk under `dir`. Node 1 is this
//! process; node 2 is a child process of the caller's choosing ([`PeerCommand`], running
//! [`serve_peer`]: `cairn bench cluster-peer`) with its own runtime, serving its disk on its own
//! loopback address with real mutual TLS. A virtual disk of node 1 is mirrored onto node 2.
//!
//! - Mirrored 4 KiB random write latency at queue depth 1 versus the model "local write + one
//!   round trip + remote write", each part measured in the same run on the same files (a store
//!   write on node 1's disk, a 4 KiB-payload-free RPC round trip, a store write on node 2's
//!   disk). Target <= 1.2 x the model.
//! - Mirrored 4 KiB random write IOPS at queue depth 32 versus a single-node engine with two
//!   file disks in the same directory. Target >= 0.8 x.
//!
//! With `CAIRN_BENCH_DIAG` set, the queue-depth-32 runs also print (stderr) each process's CPU
//! time and context switches per write, in total and by thread name. With
//! `CAIRN_BENCH_NO_BATCH` set, node 2's replica server sends each request to its disk on its
//! own instead of plugging the disk for a burst (`ReplicaServer::set_batching`), for an A/B
//! with one binary.
//!
//! It never touches anything outside `dir` and 127.0.0.0/8. The child is killed and reaped and
//! its directory removed however the run ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::AlignedBuf;
use engine::bench::{Pattern, Workload};
use engine::{Engine, EngineConfig, Replica};
use store::ObjectId;

use crate::error::{MirrorError, Result};
use crate::{attach_peer, EpochBook, MirrorConfig, PeerLink, ReplicaServer};

/// One JSON line, as the other benchmarks print them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchLine {
    pub bench: &'static str,
    pub metric: String,
    pub ours: f64,
    pub anchor: f64,
    pub anchor_name: &'static str,
    pub ratio: f64,
    pub higher_is_better: bool,
}

#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Scratch directory for the disk files (on the file system to measure).
    pub dir: PathBuf,
    /// Measurement time per figure.
    pub duration: Duration,
    /// Loopback addresses of node 1 and node 2.
    pub ips: [String; 2],
    /// Size of each disk file.
    pub disk_bytes: u64,
    /// How to start node 2's process.
    pub peer: PeerCommand,
}

/// The program (and its first arguments) that runs [`serve_peer`]; the benchmark appends
/// `--ca FILE --dir DIR --listen IP:0 --disk-bytes N`.
#[derive(Debug, Clone)]
pub struct PeerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// What node 2's process is given.
#[derive(Debug, Clone)]
pub struct PeerOpts {
    /// The cluster CA (JSON, with its key): the node issues its own identity from it.
    pub ca: PathBuf,
    /// Its data directory (disk file and replica server state).
    pub dir: PathBuf,
    /// Where to serve (port 0: any).
    pub listen: std::net::SocketAddr,
    pub disk_bytes: u64,
}

const VDISK_BYTES: u64 = 256 << 20;
const REGION: u64 = 64 << 20;

async fn engine_on_files(
    dir: &std::path::Path,
    node: u64,
    disks: usize,
    size: u64,
) -> Result<Engine> {
    let e = Engine::open(EngineConfig {
        node_id: node,
        node_name: format!("bench{node}"),
    })
    .await?;
    for i in 0..disks {
        let p = dir.join(format!("node{node}-disk{i}.img"));
        let _ = std::fs::remove_file(&p);
        let io = |e: blockdev::BlockError| MirrorError::State(format!("{}: {e}", p.display()));
        // Written in full, as `cairn bench engine` and the engine's bench tool do: a write into
        // a hole of a sparse file makes the file system allocate, and io_uring hands such
        // writes to its worker threads (a wake-up and a context switch each), which the
        // figures should not include.
        write_zero_file(&p, size)
            .map_err(|e| MirrorError::State(format!("{}: {e}", p.display())))?;
        let dev = blockdev::open_device(&p).map_err(io)?;
        e.add_disk(dev).await?;
    }
    Ok(e)
}

/// A file of `size` zero bytes written in full (no holes) and synced.
fn write_zero_file(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// If `CAIRN_PERF_CTL` names a `perf record --control=fifo:...` control FIFO, send it `cmd`
/// ("enable" / "disable"), so a profile (`perf record -D -1 --control ...`) covers only the
/// mirrored queue-depth-32 run. Best effort: a profile is a diagnostic.
fn perf_ctl(cmd: &str) {
    if let Some(p) = std::env::var_os("CAIRN_PERF_CTL") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(p) {
            let _ = writeln!(f, "{cmd}");
        }
    }
}

/// User + system CPU time of this process so far, ms (from /proc/self/stat; 0 without it).
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    stat_cpu_ms(&stat)
}

/// User + system CPU time, ms, from the text of a `/proc/PID/stat`.
fn stat_cpu_ms(stat: &str) -> f64 {
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the name), in
    // USER_HZ ticks (100 per second on Linux).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) * 10.0
}

/// Runs `w` on `h`, returning the result and the process's CPU time per I/O (µs).
async fn run_timed(
    h: &engine::VdiskHandle,
    w: &Workload,
) -> Result<(engine::bench::BenchResult, f64)> {
    let c0 = cpu_ms();
    let r = engine::bench::run(h, w).await?;
    let cpu_us = (cpu_ms() - c0) * 1000.0 / (r.ops.max(1) as f64);
    Ok((r, cpu_us))
}

/// Mean latency (µs) of QD1 4 KiB store writes on `r`, over `dur`, on a scratch object.
async fn store_write_lat(r: &Arc<dyn Replica>, dur: Duration) -> Result<f64> {
    let obj = ObjectId {
        vdisk: 1 << 62,
        chunk: 0,
    };
    let buf = AlignedBuf::from_slice(&[0x5au8; 4096]).into_write();
    let crcs: Arc<[u32]> = store::block_crcs(buf.as_slice()).into();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        r.write_with_crcs(obj, n % 256, buf.clone(), crcs.clone(), 1, 0)
            .await
            .map_err(|e| MirrorError::State(format!("store write: {e}")))?;
        n += 1;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    let _ = r.delete_object(obj).await;
    Ok(us)
}

fn line(
    metric: &str,
    ours: f64,
    anchor: f64,
    anchor_name: &'static str,
    higher: bool,
) -> BenchLine {
    BenchLine {
        bench: "cluster",
        metric: metric.to_string(),
        ours,
        anchor,
        anchor_name,
        ratio: if anchor > 0.0 { ours / anchor } else { 0.0 },
        higher_is_better: higher,
    }
}

fn workload(qd: u32, dur: Duration) -> Workload {
    Workload {
        pattern: Pattern::RandWrite,
        request_bytes: 4096,
        queue_depth: qd,
        duration: dur,
        region_bytes: REGION,
        flush_every: 0,
    }
}

/// CPU time (user + system) of process `pid` so far, ms (0 without /proc).
fn cpu_ms_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    stat_cpu_ms(&stat)
}

/// One thread's counters so far (diagnostics, `CAIRN_BENCH_DIAG`).
#[derive(Debug, Clone, Default)]
struct ThreadCost {
    /// Its name without a trailing number (`tokio-rt-worker`, `iou-wrk-`).
    name: String,
    /// Time on CPU, ms (schedstat: finer than stat's ticks).
    run_ms: f64,
    voluntary: u64,
    involuntary: u64,
}

/// Every thread of process `pid` by thread id (empty without /proc).
fn threads_of(pid: u32) -> std::collections::HashMap<String, ThreadCost> {
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let mut c = ThreadCost {
            run_ms: std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |ns| ns / 1e6),
            ..ThreadCost::default()
        };
        for l in status.lines() {
            let n = |x: &str| x.trim().parse::<u64>().unwrap_or(0);
            if let Some(x) = l.strip_prefix("Name:") {
                c.name = x
                    .trim()
                    .trim_end_matches(|ch: char| ch.is_ascii_digit())
                    .into();
            } else if let Some(x) = l.strip_prefix("voluntary_ctxt_switches:") {
                c.voluntary = n(x);
            } else if let Some(x) = l.strip_prefix("nonvoluntary_ctxt_switches:") {
                c.involuntary = n(x);
            }
        }
        out.insert(t.file_name().to_string_lossy().into_owned(), c);
    }
    out
}

/// With `CAIRN_BENCH_DIAG` set, prints to stderr what process `pid`'s threads spent per I/O
/// between `before` (a `threads_of`) and now: CPU µs and context switches (voluntary,
/// involuntary), in total and by thread name. Threads that ended meanwhile (idle io_uring
/// workers do) are missing, so the figures are lower bounds.
fn diag_costs(
    what: &str,
    pid: u32,
    before: &std::collections::HashMap<String, ThreadCost>,
    ops: u64,
) {
    if std::env::var_os("CAIRN_BENCH_DIAG").is_none() {
        return;
    }
    let mut by: std::collections::BTreeMap<String, ThreadCost> = Default::default();
    for (tid, now) in threads_of(pid) {
        let was = before.get(&tid).cloned().unwrap_or_default();
        for key in ["total".to_string(), now.name.clone()] {
            let e = by.entry(key).or_default();
            e.run_ms += (now.run_ms - was.run_ms).max(0.0);
            e.voluntary += now.voluntary.saturating_sub(was.voluntary);
            e.involuntary += now.involuntary.saturating_sub(was.involuntary);
        }
    }
    let n = ops.max(1) as f64;
    for (name, c) in by {
        eprintln!(
            "diag {what} {name:16} cpu_us {:6.2} vcs {:.3} ics {:.3}",
            c.run_ms * 1000.0 / n,
            c.voluntary as f64 / n,
            c.involuntary as f64 / n
        );
    }
}

/// Node 2's process: killed and reaped when dropped, whatever happened before.
struct Peer {
    child: std::process::Child,
    /// Its stdout, line by line (moved into a blocking task for each read).
    out: Option<std::io::BufReader<std::process::ChildStdout>>,
    dir: PathBuf,
}

impl Peer {
    fn spawn(
        cmd: &PeerCommand,
        ca: &std::path::Path,
        dir: PathBuf,
        ip: &str,
        disk_bytes: u64,
    ) -> Result<Peer> {
        use std::process::Stdio;
        let mut child = std::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .arg("--ca")
            .arg(ca)
            .arg("--dir")
            .arg(&dir)
            .args(["--listen", &format!("{ip}:0")])
            .args(["--disk-bytes", &disk_bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                MirrorError::State(format!("starting node 2 ({}): {e}", cmd.program.display()))
            })?;
        let out = child.stdout.take().map(std::io::BufReader::new);
        Ok(Peer { child, out, dir })
    }

    /// The child's next line of stdout, within `limit`.
    async fn line(&mut self, limit: Duration) -> Result<String> {
        use std::io::BufRead;
        let mut out = self
            .out
            .take()
            .ok_or_else(|| MirrorError::State("node 2's output is gone".into()))?;
        let read = tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            let r = out.read_line(&mut l);
            (out, r.map(|n| (n, l)))
        });
        let (out, r) = tokio::time::timeout(limit, read)
            .await
            .map_err(|_| MirrorError::State(format!("node 2 said nothing for {limit:?}")))?
            .map_err(|e| MirrorError::State(format!("reading node 2: {e}")))?;
        self.out = Some(out);
        match r {
            Ok((0, _)) => {
                // Its output closed: it is exiting (or has); a moment for its status.
                let mut status = None;
                for _ in 0..40 {
                    status = self.child.try_wait().ok().flatten();
                    if status.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(MirrorError::State(match status {
                    Some(s) => format!("node 2 exited ({s}); its error is above"),
                    None => "node 2 closed its output".to_string(),
                }))
            }
            Ok((_, l)) => Ok(l.trim().to_string()),
            Err(e) => Err(MirrorError::State(format!("reading node 2: {e}"))),
        }
    }

    /// Sends node 2 one command line and returns its answer's value after `key `.
    async fn ask(&mut self, cmd: &str, key: &str, limit: Duration) -> Result<String> {
        use std::io::Write;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| MirrorError::State("node 2's input is gone".into()))?;
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .map_err(|e| MirrorError::State(format!("writing to node 2: {e}")))?;
        let l = self.line(limit).await?;
        expect_word(&l, key)
    }

    fn cpu_ms(&self) -> f64 {
        cpu_ms_of(self.child.id())
    }

    /// Asks node 2 to stop (its input closes) and waits for it a while; `Drop` kills it if it
    /// has not gone by then.
    async fn stop(&mut self) {
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value after `key ` in a line of node 2's, or an error naming the line.
fn expect_word(line: &str, key: &str) -> Result<String> {
    line.strip_prefix(key)
        .and_then(|r| r.strip_prefix(' '))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| MirrorError::State(format!("node 2 said {line:?}, expected {key} ...")))
}

/// Node 2 of the benchmark, in its own process: an engine on one file disk in `opts.dir`, its
/// replica server on `opts.listen` with an identity issued from the CA in `opts.ca`. Prints
/// `listening ADDR` once serving, then answers commands read from stdin, one a line:
/// `store-lat MS` (prints `store_lat_us US`: mean QD1 4 KiB store write latency on its disk
/// over MS milliseconds). Shuts down when stdin closes.
pub async fn serve_peer(opts: &PeerOpts) -> Result<()> {
    use std::io::Write;
    let state = |e: std::io::Error| MirrorError::State(format!("{}: {e}", opts.ca.display()));
    let ca: transport::ClusterCa = serde_json::from_slice(&std::fs::read(&opts.ca).map_err(state)?)
        .map_err(|e| MirrorError::State(format!("{}: {e}", opts.ca.display())))?;
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| MirrorError::State(format!("{}: {e}", opts.dir.display())))?;
    let identity = ca.issue(2)?;
    let engine = engine_on_files(&opts.dir, 2, 1, opts.disk_bytes).await?;
    let srv = ReplicaServer::new(2, &opts.dir.join("node2-state"))?;
    if std::env::var_os("CAIRN_BENCH_NO_BATCH").is_some() {
        srv.set_batching(false);
    }
    srv.serve_engine(&engine);
    let handle = srv.start(opts.listen, &identity).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for l in std::io::stdin().lines() {
            let Ok(l) = l else { break };
            if tx.blocking_send(l).is_err() {
                break;
            }
        }
    });
    let say = |l: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{l}")
            .and_then(|()| out.flush())
            .map_err(|e| MirrorError::State(format!("stdout: {e}")))
    };
    say(format!("listening {}", handle.local_addr()))?;
    let local = engine
        .local_replicas()
        .into_iter()
        .next()
        .ok_or_else(|| MirrorError::Protocol("node 2 has no disk".into()))?
        .1;
    while let Some(cmd) = rx.recv().await {
        match cmd.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["store-lat", ms] => {
                let ms: u64 = ms
                    .parse()
                    .map_err(|e| MirrorError::State(format!("store-lat {ms}: {e}")))?;
                let us = store_write_lat(&local, Duration::from_millis(ms)).await?;
                say(format!("store_lat_us {us}"))?;
            }
            _ => return Err(MirrorError::State(format!("unknown command {cmd:?}"))),
        }
    }
    drop(handle);
    engine.shutdown().await?;
    Ok(())
}

/// Runs the mirrored-I/O benchmark and returns its JSON lines.
pub async fn mirrored_io(opts: &BenchOpts) -> Result<Vec<BenchLine>> {
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| MirrorError::State(format!("{}: {e}", opts.dir.display())))?;
    let ca = transport::ClusterCa::generate("bench")?;
    let id1 = ca.issue(1)?;
    // The CA (with its key) goes to node 2 in a file only its owner may read, removed as soon
    // as node 2 has read it.
    let ca_file = opts.dir.join("bench-ca.json");
    write_private(
        &ca_file,
        &serde_json::to_vec(&ca).map_err(|e| MirrorError::State(e.to_string()))?,
    )?;
    let peer = Peer::spawn(
        &opts.peer,
        &ca_file,
        opts.dir.join("node2"),
        &opts.ips[1],
        opts.disk_bytes,
    );
    let mut peer = match peer {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&ca_file);
            return Err(e);
        }
    };
    let ready = peer.line(Duration::from_secs(60)).await;
    let _ = std::fs::remove_file(&ca_file);
    let addr = expect_word(&ready?, "listening")?;
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| MirrorError::State(format!("node 2's address {addr:?}: {e}")))?;
    let r = with_peer(opts, &id1, addr, &mut peer).await;
    peer.stop().await;
    drop(peer);
    let m = r?;
    // Node 2 is gone: the anchor has the machine to itself, as the mirrored run had.
    let (single_iops, single_cpu) = single_node(opts).await?;
    Ok(lines(&m, single_iops, single_cpu))
}

/// Writes `bytes` to a new file at `p` readable by its owner only.
fn write_private(p: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(p);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| MirrorError::State(format!("{}: {e}", p.display())))
}

/// The figures, with node 2 serving at `addr`.
async fn with_peer(
    opts: &BenchOpts,
    id1: &transport::NodeIdentity,
    addr: std::net::SocketAddr,
    peer: &mut Peer,
) -> Result<Mirrored> {
    let e1 = engine_on_files(&opts.dir, 1, 1, opts.disk_bytes).await?;
    let link = PeerLink::new(
        2,
        addr,
        id1,
        Arc::new(EpochBook::new(1)),
        MirrorConfig::default(),
    )?;
    attach_peer(&e1, &link).await?;
    e1.create_vdisk("m", VDISK_BYTES).await?;
    let hm = e1.open_vdisk("m")?;
    engine::bench::prefill(&hm, REGION).await?;

    let dur = opts.duration;
    let qd1 = engine::bench::run(&hm, &workload(1, dur)).await?;
    let ours_lat = 1e6 / qd1.iops.max(1e-9);
    // The model's parts, on the same files in the same run: node 2's store write is timed in
    // node 2's process.
    let local = e1
        .local_replicas()
        .into_iter()
        .next()
        .ok_or_else(|| MirrorError::Protocol("node 1 has no disk".into()))?
        .1;
    let part = dur.mul_f64(0.5).max(Duration::from_millis(300));
    let local_us = store_write_lat(&local, part).await?;
    let remote_us: f64 = {
        let v = peer
            .ask(
                &format!("store-lat {}", part.as_millis()),
                "store_lat_us",
                part + Duration::from_secs(30),
            )
            .await?;
        v.parse()
            .map_err(|e| MirrorError::State(format!("node 2's latency {v:?}: {e}")))?
    };
    let disk_id = link
        .disks()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| MirrorError::Protocol("node 2 serves no disk".into()))?
        .id;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < part {
        link.ping(&disk_id).await?;
        n += 1;
    }
    let rtt_us = start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    let model = local_us + rtt_us + remote_us;
    tracing::info!(local_us, rtt_us, remote_us, "mirrored write model parts");

    perf_ctl("enable");
    let peer_cpu0 = peer.cpu_ms();
    let (own0, peer0) = (threads_of(std::process::id()), threads_of(peer.child.id()));
    let (qd32, own_cpu) = run_timed(&hm, &workload(32, dur)).await?;
    let peer_cpu = (peer.cpu_ms() - peer_cpu0) * 1000.0 / (qd32.ops.max(1) as f64);
    perf_ctl("disable");
    diag_costs("mirrored node1", std::process::id(), &own0, qd32.ops);
    diag_costs("mirrored node2", peer.child.id(), &peer0, qd32.ops);
    tracing::info!(
        own_cpu,
        peer_cpu,
        "mirrored write CPU per I/O (node 1, node 2)"
    );
    e1.shutdown().await?;
    Ok(Mirrored {
        qd1_lat_us: ours_lat,
        model_us: model,
        qd32_iops: qd32.iops,
        qd32_cpu_us: own_cpu + peer_cpu,
    })
}

/// What the mirrored runs measured.
struct Mirrored {
    qd1_lat_us: f64,
    model_us: f64,
    qd32_iops: f64,
    /// Both processes' CPU time per write.
    qd32_cpu_us: f64,
}

/// The single-node anchor: an engine with two file disks in this process, nothing else running.
async fn single_node(opts: &BenchOpts) -> Result<(f64, f64)> {
    let es = engine_on_files(&opts.dir, 3, 2, opts.disk_bytes).await?;
    es.create_vdisk("s", VDISK_BYTES).await?;
    let hs = es.open_vdisk("s")?;
    engine::bench::prefill(&hs, REGION).await?;
    let before = threads_of(std::process::id());
    let (single, single_cpu) = run_timed(&hs, &workload(32, opts.duration)).await?;
    diag_costs("single", std::process::id(), &before, single.ops);
    es.shutdown().await?;
    Ok((single.iops, single_cpu))
}

fn lines(m: &Mirrored, single_iops: f64, single_cpu: f64) -> Vec<BenchLine> {
    vec![
        line(
            "mirrored_write_4k_qd1_lat_us",
            m.qd1_lat_us,
            m.model_us,
            "local write + round trip + remote write",
            false,
        ),
        line(
            "mirrored_write_4k_qd32_iops",
            m.qd32_iops,
            single_iops,
            "single-node engine, two disks",
            true,
        ),
        // Where the difference goes: CPU of both node processes per write.
        line(
            "mirrored_write_4k_qd32_cpu_us_per_io",
            m.qd32_cpu_us,
            single_cpu,
            "single-node engine, two disks",
            false,
        ),
    ]
}
