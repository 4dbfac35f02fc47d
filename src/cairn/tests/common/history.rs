//! Metadata clients for cluster tests and the linearizability check of what they saw: each
//! client loops virtual disk create / clone / delete on names shared by all clients (reserved
//! cluster-wide through raft) and snapshot create / delete on its own node's base disk, recording
//! call and return times. Must never: record an outcome it did not see (a call that failed for
//! any reason other than a clear rejection is recorded as unknown).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::linearize::{check_metadata, MetaInput, MetaOutput, Op, Outcome};

use super::{cli_at, ClusterProc, Out};

pub type History = Arc<Mutex<Vec<Op<MetaInput, MetaOutput>>>>;

/// The base disk a client's snapshots and clones come from (never deleted), and the snapshot
/// clones are made of.
pub fn base_disk(node: &str) -> String {
    format!("base-{node}")
}
pub const BASE_SNAPSHOT: &str = "s0";

/// The history key of snapshot `snap` of `node`'s base disk (disk names have no '@').
pub fn snapshot_key(node: &str, snap: &str) -> String {
    format!("{}@{snap}", base_disk(node))
}

/// What a client does besides create/delete of shared names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Clones of the base snapshot onto shared names, and snapshots of the base disk.
    pub snapshots_and_clones: bool,
    /// Pause between operations.
    pub pause: Duration,
}

/// Creates `base-<node>` and its snapshot `s0` on a data node (before any client runs).
pub fn make_base(p: &ClusterProc) {
    p.ok(&["vdisk", "create", &base_disk(&p.name), "16M"]);
    p.ok(&["snapshot", "create", &base_disk(&p.name), BASE_SNAPSHOT]);
}

/// Running clients; `finish` stops them and returns the history.
pub struct Clients {
    pub t0: Instant,
    pub history: History,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients {
            t0: Instant::now(),
            history: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
        }
    }

    /// A client issuing its calls through data node `p`; it idles while `down` is set (the
    /// node is known dead, so every call would only add an unknown outcome).
    pub fn spawn(&mut self, p: &ClusterProc, keys: &[String], mix: Mix, down: Arc<AtomicBool>) {
        let c = ClientState {
            id: self.handles.len(),
            data: p.data.clone(),
            node: p.name.clone(),
            keys: keys.to_vec(),
            t0: self.t0,
            history: self.history.clone(),
            mix,
        };
        let stop = self.stop.clone();
        self.handles
            .push(std::thread::spawn(move || c.run(&stop, &down)));
    }

    pub fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Records an operation made outside the clients (by a test step), with client id `client`.
    pub fn record(&self, client: usize, call: u64, input: MetaInput, o: &Out) {
        let ret = self.now();
        let output = outcome(&input, o);
        self.history.lock().unwrap().push(Op {
            client,
            call,
            ret: output.as_ref().map(|_| ret),
            input,
            output,
        });
    }

    pub fn finish(self) -> Vec<Op<MetaInput, MetaOutput>> {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            h.join().unwrap();
        }
        let h = self.history.lock().unwrap().clone();
        h
    }
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

/// The outcome of one call as the model sees it: applied, clearly rejected, or unknown.
fn outcome(input: &MetaInput, o: &Out) -> Option<MetaOutput> {
    let snapshot = input.key().contains('@');
    match (input, o.code) {
        (_, 0) => Some(MetaOutput::Done(true)),
        // The name is taken: rejected, no change.
        (MetaInput::Create(_), 4) if o.stderr.contains("exists") => Some(MetaOutput::Done(false)),
        // A snapshot lives in this node's engine only, so "not found" there is definite. (A
        // virtual disk's delete is not: the disk may be another member's.)
        (MetaInput::Delete(_), 3) if snapshot => Some(MetaOutput::Done(false)),
        // Anything else (unreachable, no quorum, killed mid-call): the outcome is unknown.
        _ => None,
    }
}

struct ClientState {
    id: usize,
    data: PathBuf,
    node: String,
    keys: Vec<String>,
    t0: Instant,
    history: History,
    mix: Mix,
}

impl ClientState {
    fn run(self, stop: &AtomicBool, down: &AtomicBool) {
        let base = base_disk(&self.node);
        let mut i = self.id;
        // Shared names this client holds, and snapshots (t0..t2) its base disk holds.
        let mut mine: Vec<String> = Vec::new();
        let mut snaps: Vec<String> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            if down.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            i += 1;
            let key = self.keys[i % self.keys.len()].clone();
            let (input, args): (MetaInput, Vec<String>) =
                if self.mix.snapshots_and_clones && i % 4 == 2 {
                    let snap = format!("t{}", (i / 4) % 3);
                    let k = snapshot_key(&self.node, &snap);
                    if snaps.contains(&snap) {
                        let a = ["snapshot", "delete", &base, &snap];
                        (MetaInput::Delete(k), a.map(String::from).to_vec())
                    } else {
                        let a = ["snapshot", "create", &base, &snap];
                        (MetaInput::Create(k), a.map(String::from).to_vec())
                    }
                } else if mine.contains(&key) && i.is_multiple_of(3) {
                    let a = ["vdisk", "delete", &key];
                    (MetaInput::Delete(key.clone()), a.map(String::from).to_vec())
                } else if self.mix.snapshots_and_clones && i % 4 == 1 {
                    let a = ["vdisk", "clone", &base, &key, "--snapshot", BASE_SNAPSHOT];
                    (MetaInput::Create(key.clone()), a.map(String::from).to_vec())
                } else {
                    let a = ["vdisk", "create", &key, "16M"];
                    (MetaInput::Create(key.clone()), a.map(String::from).to_vec())
                };
            let call = self.t0.elapsed().as_nanos() as u64;
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = cli_at(&self.data, &argv);
            let ret = self.t0.elapsed().as_nanos() as u64;
            let output = outcome(&input, &o);
            let k = input.key().to_string();
            if let Some(snap) = k.strip_prefix(&format!("{base}@")) {
                // Applied or rejected, the outcome says whether the snapshot is there now.
                match (&input, &output) {
                    (MetaInput::Create(_), Some(_)) => snaps.push(snap.to_string()),
                    (MetaInput::Delete(_), Some(_)) => snaps.retain(|s| s != snap),
                    _ => {}
                }
            } else if output == Some(MetaOutput::Done(true)) {
                match input {
                    MetaInput::Delete(_) => mine.retain(|x| x != &k),
                    _ => mine.push(k),
                }
            }
            self.history.lock().unwrap().push(Op {
                client: self.id,
                call,
                ret: output.as_ref().map(|_| ret),
                input,
                output,
            });
            std::thread::sleep(self.mix.pause);
        }
    }
}

/// Strips terminal colour codes from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Changes nobody issued, read from a node's log: a node releases its own stale reservation (a
/// create cut short by kill -9) at restart or on its next create of that name (a delete at an
/// unknown time), and names again a disk whose delete was cut short between the release and the
/// engine's delete (a create at an unknown time).
pub fn unissued_ops(p: &ClusterProc, keys: &[String]) -> Vec<Op<MetaInput, MetaOutput>> {
    let mut ops = Vec::new();
    for line in p.log().lines() {
        let clean = strip_ansi(line);
        let released = clean.contains("released a stale cluster record");
        let recorded = clean.contains("recorded a local virtual disk");
        if !released && !recorded {
            continue;
        }
        for k in keys {
            // The name is logged quoted (`vdisk = name`) or bare (`vdisk = %name`).
            let bare = format!("vdisk={k}");
            let named = clean.contains(&format!("vdisk=\"{k}\""))
                || clean
                    .split_whitespace()
                    .any(|w| w == bare || w.strip_prefix(bare.as_str()) == Some(","));
            if named {
                ops.push(Op {
                    client: 8,
                    call: 0,
                    ret: None,
                    input: if released {
                        MetaInput::Delete(k.clone())
                    } else {
                        MetaInput::Create(k.clone())
                    },
                    output: None,
                });
            }
        }
    }
    ops
}

/// The final state as reads after everything: every shared name the cluster holds (`held`), and
/// every snapshot key of the data nodes' base disks.
pub fn final_reads(
    data_nodes: &[&ClusterProc],
    keys: &[String],
    held: &[String],
    at: u64,
) -> Vec<Op<MetaInput, MetaOutput>> {
    let read = |k: String, seen: bool| Op {
        client: 9,
        call: at,
        ret: Some(at + 1),
        input: MetaInput::Exists(k),
        output: Some(MetaOutput::Seen(seen)),
    };
    let mut ops: Vec<_> = keys
        .iter()
        .map(|k| read(k.clone(), held.contains(k)))
        .collect();
    for p in data_nodes {
        let o = cli_at(
            &p.data,
            &["--json", "snapshot", "list", &base_disk(&p.name)],
        );
        if o.code != 0 {
            // No base disk (a test without snapshot clients).
            continue;
        }
        let names: Vec<String> = o.json()["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        for t in ["t0", "t1", "t2"] {
            ops.push(read(snapshot_key(&p.name, t), names.iter().any(|n| n == t)));
        }
        assert!(
            names.iter().any(|n| n == BASE_SNAPSHOT),
            "{}: the base snapshot is gone: {names:?}",
            p.name
        );
    }
    ops
}

/// Checks `ops` and, if they are not linearizable, prints them by key with the nodes' logs.
pub fn assert_linearizable(ops: &[Op<MetaInput, MetaOutput>], procs: &[&ClusterProc]) {
    let done = ops.iter().filter(|o| o.output.is_some()).count();
    let t = Instant::now();
    let outcome = check_metadata(ops, 20_000_000);
    println!(
        "history: {} operations ({} with known outcome), checked in {:?}: {outcome:?}",
        ops.len(),
        done,
        t.elapsed()
    );
    if outcome != Outcome::Linearizable {
        let mut sorted = ops.to_vec();
        sorted.sort_by_key(|o| (o.input.key().to_string(), o.call));
        for o in &sorted {
            println!("{o:?}");
        }
        for p in procs {
            println!("log of {}:\n{}", p.name, p.log());
        }
    }
    assert_eq!(outcome, Outcome::Linearizable);
}

/// Prints the operations on `key` in call order (and the unissued ones the nodes' logs show) and
/// every node's log: what a failed check of that key needs to be understood.
pub fn dump_key(ops: &[Op<MetaInput, MetaOutput>], key: &str, procs: &[&ClusterProc]) {
    let mut on_key: Vec<_> = ops.iter().filter(|o| o.input.key() == key).collect();
    on_key.sort_by_key(|o| o.call);
    for o in on_key {
        println!("{o:?}");
    }
    for p in procs {
        for o in unissued_ops(p, &[key.to_string()]) {
            println!("unissued on {}: {o:?}", p.name);
        }
    }
    for p in procs {
        println!("log of {}:\n{}", p.name, p.log());
    }
}
