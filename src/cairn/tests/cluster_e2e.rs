//! Three real `cairn` processes on 127.0.0.x (two data nodes and a witness): create a cluster,
//! issue tokens, join, check `cairn cluster status`, then faults: kill -9 of a data node
//! (the other keeps committing; the dead one shows as down; on restart it catches up) and
//! SIGSTOP/SIGCONT of the leader (a new leader; nothing committed lost). Virtual disk
//! create/delete calls made by two clients during the faults are checked for linearizability.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::linearize::{check_metadata, MetaInput, MetaOutput, Op, Outcome};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cli(data: &Path, args: &[&str]) -> Out {
    let o = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run cairn");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok_json(data: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = cli(data, &a);
    assert_eq!(o.code, 0, "cairn {args:?}: {}{}", o.stdout, o.stderr);
    serde_json::from_str(&o.stdout).unwrap()
}

/// A free `ip:port` whose next port is free too (the join endpoint).
fn free_addr(ip: &str) -> SocketAddr {
    for _ in 0..100 {
        let l = TcpListener::bind((ip, 0)).unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        if a.port() < 65535 && TcpListener::bind((ip, a.port() + 1)).is_ok() {
            return a;
        }
    }
    panic!("no free port pair on {ip}");
}

struct Proc {
    data: PathBuf,
    addr: SocketAddr,
    witness: bool,
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn start(root: &Path, name: &str, ip: &str, witness: bool) -> Proc {
        let mut p = Proc {
            data: root.join(name),
            addr: free_addr(ip),
            witness,
            name: name.into(),
            child: None,
        };
        p.restart();
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))
            .unwrap();
        let addr = self.addr.to_string();
        let mut c = Command::new(BIN);
        if self.witness {
            c.args(["witness", "--data"])
                .arg(&self.data)
                .args(["--listen", &addr, "--name", &self.name]);
        } else {
            c.args(["node", "--no-api", "--data"])
                .arg(&self.data)
                .args([
                    "--disks",
                    "2",
                    "--disk-size",
                    "256M",
                    "--name",
                    &self.name,
                    "--cluster-listen",
                    &addr,
                ]);
        }
        let child = c
            .env("CAIRN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn cairn");
        self.child = Some(child);
        let t = Instant::now();
        loop {
            let o = cli(&self.data, &["cluster", "status"]);
            // A witness that has not joined answers "not a member" (exit 7 with that text).
            if o.code == 0 || o.stderr.contains("not a member") {
                return;
            }
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited early ({s}):\n{}", self.name, self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{} did not come up:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    fn signal(&self, sig: &str) {
        let s = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap();
        assert!(s.success());
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self) -> serde_json::Value {
        ok_json(&self.data, &["cluster", "status"])["value"].clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process must be continued to die cleanly on SIGKILL's reaping.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill9();
    }
}

/// Waits until `f` holds (polling), failing with `what` after `secs`.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn member_health(status: &serde_json::Value, name: &str) -> String {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["health"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn vdisks(status: &serde_json::Value) -> Vec<String> {
    status["vdisks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn strip_ansi(s: &str) -> String {
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

type History = Arc<Mutex<Vec<Op<MetaInput, MetaOutput>>>>;

/// A client looping create/delete of a few names through one node, recording every call.
fn client(
    id: usize,
    data: PathBuf,
    keys: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: History,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = id;
        let mut mine: Vec<String> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let key = keys[i % keys.len()].clone();
            let delete = mine.contains(&key) && i.is_multiple_of(3);
            let call = start.elapsed().as_nanos() as u64;
            let o = if delete {
                cli(&data, &["vdisk", "delete", &key])
            } else {
                cli(&data, &["vdisk", "create", &key, "16M"])
            };
            let ret = start.elapsed().as_nanos() as u64;
            let (output, ret) = match o.code {
                0 => (Some(MetaOutput::Done(true)), Some(ret)),
                // The name is taken (create) / unknown here (delete): rejected, no change.
                4 if !delete && o.stderr.contains("exists") => {
                    (Some(MetaOutput::Done(false)), Some(ret))
                }
                // Anything else (unreachable, no quorum, ...): the outcome is unknown.
                _ => (None, None),
            };
            if output == Some(MetaOutput::Done(true)) {
                if delete {
                    mine.retain(|k| k != &key);
                } else {
                    mine.push(key.clone());
                }
            }
            let input = if delete {
                MetaInput::Delete(key)
            } else {
                MetaInput::Create(key)
            };
            history.lock().unwrap().push(Op {
                client: id,
                call,
                ret,
                input,
                output,
            });
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

#[test]
fn two_data_nodes_and_a_witness_survive_kill9_and_sigstop() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-cluster-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let mut a = Proc::start(root, "a", "127.0.0.2", false);
    let mut b = Proc::start(root, "b", "127.0.0.3", false);
    let w = Proc::start(root, "w", "127.0.0.4", true);

    // A node on its own is a cluster of one with itself as leader.
    let s = a.status();
    assert_eq!(s["members"].as_array().unwrap().len(), 1);
    assert_eq!(s["leader"], s["me"]);
    ok_json(&a.data, &["vdisk", "create", "before", "16M"]);

    // Bad input: garbage token, unreachable member, witness without a cluster.
    let o = cli(
        &b.data,
        &[
            "cluster",
            "join",
            "--address",
            &a.addr.to_string(),
            "--token",
            "nope",
        ],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("token"), "{}", o.stderr);
    let dead = free_addr("127.0.0.9");
    let token = ok_json(&a.data, &["cluster", "token"])["value"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let o = cli(
        &b.data,
        &[
            "cluster",
            "join",
            "--address",
            &dead.to_string(),
            "--token",
            &token,
        ],
    );
    assert_eq!(o.code, 7, "{}", o.stderr);
    assert!(o.stderr.contains("cannot reach"), "{}", o.stderr);
    let o = cli(&w.data, &["cluster", "token"]);
    assert_eq!(o.code, 7, "{}", o.stderr);
    // A node holding objects is not fresh: it may not join.
    let o = cli(
        &a.data,
        &[
            "cluster",
            "join",
            "--address",
            &b.addr.to_string(),
            "--token",
            &token,
        ],
    );
    assert_eq!(o.code, 4, "{}", o.stderr);

    // b joins with the token (still unused: the failed attempts never reached a member).
    ok_json(
        &b.data,
        &[
            "cluster",
            "join",
            "--address",
            &a.addr.to_string(),
            "--token",
            &token,
        ],
    );
    // Joining again is refused with a clear error (already a member), as is a reused token.
    let o = cli(
        &b.data,
        &[
            "cluster",
            "join",
            "--address",
            &a.addr.to_string(),
            "--token",
            &token,
        ],
    );
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(o.stderr.contains("already member"), "{}", o.stderr);
    let wtoken = ok_json(&b.data, &["cluster", "token", "--witness"])["value"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    ok_json(
        &w.data,
        &[
            "cluster",
            "join",
            "--address",
            &b.addr.to_string(),
            "--token",
            &wtoken,
        ],
    );
    let o = cli(&a.data, &["--json", "cluster", "status"]);
    assert_eq!(o.code, 0);
    wait_for(20, "3 active voters, all up, a leader", || {
        let s = a.status();
        let m = s["members"].as_array().unwrap();
        m.len() == 3
            && m.iter()
                .all(|x| x["voter"] == true && x["state"] == "active" && x["health"] == "up")
            && !s["leader"].is_null()
    });
    let text = cli(&a.data, &["cluster", "status"]).stdout;
    assert!(
        text.contains("witness") && text.contains("leader"),
        "{text}"
    );
    // Definitions are cluster-wide: b sees a's disk, and may not reuse its name.
    wait_for(10, "b sees a's vdisk", || {
        vdisks(&b.status()).contains(&"before".to_string())
    });
    let o = cli(&b.data, &["vdisk", "create", "before", "16M"]);
    assert_eq!(o.code, 4, "{}", o.stderr);
    println!("cluster formed in {:?}", started.elapsed());

    // Two clients, one per data node, race on the same names through both faults.
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let keys: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
    let t0 = Instant::now();
    let clients = vec![
        client(
            0,
            a.data.clone(),
            keys.clone(),
            t0,
            stop.clone(),
            history.clone(),
        ),
        client(
            1,
            b.data.clone(),
            keys.clone(),
            t0,
            stop.clone(),
            history.clone(),
        ),
    ];
    std::thread::sleep(Duration::from_secs(2));

    // Fault 1: kill -9 of the data node that leads (else of b).
    let s = a.status();
    let leader = s["leader"].as_u64().unwrap();
    let name_of = |s: &serde_json::Value, id: u64| {
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["name"].as_str().unwrap().to_string())
            .unwrap()
    };
    let (victim, survivor) = if name_of(&s, leader) == "a" {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    victim.kill9();
    let t = Instant::now();
    ok_json(&survivor.data, &["vdisk", "create", "after-kill", "16M"]);
    println!("commit with {} dead took {:?}", victim.name, t.elapsed());
    wait_for(15, "the dead node shown as down", || {
        member_health(&survivor.status(), &victim.name) == "down"
    });
    victim.restart();
    let survivor_data = survivor.data.clone();
    let victim_data = victim.data.clone();
    wait_for(30, "the restarted node catching up", || {
        let v = ok_json(&victim_data, &["cluster", "status"])["value"].clone();
        vdisks(&v).contains(&"after-kill".to_string())
    });
    std::thread::sleep(Duration::from_secs(1));

    // Fault 2: SIGSTOP of the leader (whichever process it is), then SIGCONT.
    let s = ok_json(&survivor_data, &["cluster", "status"])["value"].clone();
    let old_leader = s["leader"].as_u64().unwrap();
    let lname = name_of(&s, old_leader);
    let procs: [&Proc; 3] = [&a, &b, &w];
    let stopped = procs.iter().find(|p| p.name == lname).unwrap();
    let other = procs
        .iter()
        .find(|p| p.name != lname && !p.witness)
        .unwrap();
    stopped.signal("-STOP");
    let t = Instant::now();
    wait_for(20, "a new leader", || {
        let s = other.status();
        s["leader"].as_u64().is_some_and(|l| l != old_leader)
    });
    println!("new leader after SIGSTOP in {:?}", t.elapsed());
    ok_json(&other.data, &["vdisk", "create", "during-stop", "16M"]);
    std::thread::sleep(Duration::from_secs(2));
    stopped.signal("-CONT");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }

    // Nothing committed is lost, and every member converges on the same state.
    let mut states = Vec::new();
    wait_for(30, "all members agreeing", || {
        states = procs.iter().map(|p| p.status()).collect();
        let c: Vec<_> = states.iter().map(|s| s["commit_index"].clone()).collect();
        let v: Vec<_> = states.iter().map(vdisks).collect();
        c.iter().all(|x| *x == c[0]) && v.iter().all(|x| *x == v[0])
    });
    let fin = vdisks(&states[0]);
    for must in ["before", "after-kill", "during-stop"] {
        assert!(fin.contains(&must.to_string()), "{must} lost: {fin:?}");
    }
    // Every name the cluster holds was created by one node only, and it exists there.
    for k in &keys {
        let held: Vec<bool> = [&a, &b]
            .iter()
            .map(|p| cli(&p.data, &["vdisk", "show", k]).code == 0)
            .collect();
        assert!(
            held.iter().filter(|h| **h).count() <= 1,
            "{k} exists on both nodes"
        );
        assert_eq!(
            fin.contains(k),
            held.contains(&true),
            "cluster and engines disagree on {k}"
        );
    }
    // The final state is one more (read) operation after everything.
    let mut ops = history.lock().unwrap().clone();
    let end = t0.elapsed().as_nanos() as u64;
    for k in &keys {
        ops.push(Op {
            client: 9,
            call: end,
            ret: Some(end + 1),
            input: MetaInput::Exists(k.clone()),
            output: Some(MetaOutput::Seen(fin.contains(k))),
        });
    }
    // A node releases its own stale reservations (a create cut short by kill -9) at restart or
    // on its next create of that name: a delete the clients did not issue, at an unknown time.
    for p in [&a, &b] {
        for line in p.log().lines() {
            let clean = strip_ansi(line);
            let released = clean.contains("released a stale cluster record");
            // A disk whose delete was cut short between its release and the engine's delete is
            // named again at restart: a create nobody issued.
            let recorded = clean.contains("recorded a local virtual disk");
            if !released && !recorded {
                continue;
            }
            for k in &keys {
                if clean.contains(&format!("vdisk={k}")) {
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
    }
    let done = ops.iter().filter(|o| o.output.is_some()).count();
    println!(
        "history: {} operations ({} with known outcome), checked in {:?} total",
        ops.len(),
        done,
        started.elapsed()
    );
    assert!(done >= 10, "too few operations completed: {ops:?}");
    let outcome = check_metadata(&ops, 5_000_000);
    if outcome != Outcome::Linearizable {
        let mut sorted = ops.clone();
        sorted.sort_by_key(|o| (o.input.key().to_string(), o.call));
        for o in &sorted {
            println!("{o:?}");
        }
        println!("logs of a:\n{}\nlogs of b:\n{}", a.log(), b.log());
    }
    assert_eq!(outcome, Outcome::Linearizable);

    // Remove: an unknown member is not found; removing the witness leaves two voters.
    let o = cli(&a.data, &["cluster", "remove", "nosuch"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    ok_json(&a.data, &["cluster", "remove", "w"]);
    wait_for(20, "the witness gone from the member list", || {
        let s = a.status();
        let m = s["members"].as_array().unwrap();
        m.len() == 2 && m.iter().all(|x| x["name"] != "w")
    });
    drop(w);
}
