//! Three members as separate processes on 127.0.0.x (two data nodes and a witness): kill -9 of
//! the leader, a hung leader (SIGSTOP / SIGCONT), restart from disk; the cluster keeps
//! committing with a quorum and every member ends with the same state.
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

struct Proc {
    id: u64,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    args: Vec<String>,
}

/// An address on `ip` with a port that is free now, taken below the kernel's ephemeral range
/// (32768 and up), so no port-0 bind or outgoing connection of a test running alongside can
/// take it between this check and the node's own bind (a CI run once lost it that way).
fn free(ip: &str) -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 8_000) as u16;
    for _ in 0..4_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 4_000;
        if let Ok(l) = TcpListener::bind((ip, port)) {
            return l.local_addr().unwrap().to_string();
        }
    }
    panic!("no free port on {ip} in {base}..{}", base + 4_000);
}

fn node_args(dir: &Path, name: &str, ip: &str) -> Vec<String> {
    vec![
        dir.join(name).display().to_string(),
        name.into(),
        free(ip),
        free(ip),
    ]
}

impl Proc {
    fn spawn(mode: &str, args: &[String], extra: &[String]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cluster-node"))
            .arg(mode)
            .args(args)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cluster-node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("node did not start");
        let id = first
            .strip_prefix("ready ")
            .expect("ready line")
            .parse()
            .unwrap();
        Proc {
            id,
            child,
            stdin,
            lines,
            args: args.to_vec(),
        }
    }

    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no reply to {line}"))
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leader_of(procs: &mut [&mut Proc]) -> Option<u64> {
    let views: Vec<String> = procs.iter_mut().map(|p| p.ask("leader")).collect();
    let first = views[0].parse::<u64>().ok()?;
    let ids: Vec<u64> = procs.iter().map(|p| p.id).collect();
    (views.iter().all(|v| v == &views[0]) && ids.contains(&first)).then_some(first)
}

fn wait_leader(procs: &mut [&mut Proc], not: u64) -> u64 {
    let start = Instant::now();
    loop {
        if let Some(l) = leader_of(procs) {
            if l != not {
                return l;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no new leader");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_vdisks(p: &mut Proc, want: &str) {
    let start = Instant::now();
    loop {
        if p.ask("vdisks") == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node {} never reached {want}",
            p.id
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kill9_and_sigstop_of_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let d: PathBuf = dir.path().into();
    let mut n1 = Proc::spawn("create", &node_args(&d, "n1", "127.0.0.61"), &[]);
    let t = n1
        .ask("token data")
        .strip_prefix("token ")
        .unwrap()
        .to_string();
    let n1_join = n1.args[3].clone();
    let mut n2 = Proc::spawn("join", &node_args(&d, "n2", "127.0.0.62"), &[t, n1_join]);
    let t = n1
        .ask("token witness")
        .strip_prefix("token ")
        .unwrap()
        .to_string();
    let n2_join = n2.args[3].clone();
    let mut n3 = Proc::spawn("join", &node_args(&d, "n3", "127.0.0.63"), &[t, n2_join]);
    assert_eq!((n1.id, n2.id, n3.id), (1, 2, 3));
    assert_eq!(n2.ask("create a"), "ok");
    assert_eq!(n3.ask("create b"), "ok");
    assert!(n1.ask("create a").starts_with("rejected"));

    // kill -9 the leader.
    let mut procs = [n1, n2, n3];
    let l1 = {
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        wait_leader(&mut refs, 0)
    };
    let i1 = procs.iter().position(|p| p.id == l1).unwrap();
    procs[i1].kill9();
    let l2 = {
        let mut refs: Vec<&mut Proc> = procs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i != i1)
            .map(|(_, p)| p)
            .collect();
        wait_leader(&mut refs, l1)
    };
    let i2 = procs.iter().position(|p| p.id == l2).unwrap();
    assert_eq!(procs[i2].ask("create c"), "ok");

    // Restart the killed node from its data directory.
    let args = procs[i1].args.clone();
    procs[i1] = Proc::spawn("open", &args, &[]);
    assert_eq!(procs[i1].id, l1);
    wait_vdisks(&mut procs[i1], "a,b,c");

    // Hang the current leader: the other two elect a new one and keep committing.
    procs[i2].signal("-STOP");
    let l3 = {
        let mut refs: Vec<&mut Proc> = procs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i != i2)
            .map(|(_, p)| p)
            .collect();
        wait_leader(&mut refs, l2)
    };
    let i3 = procs.iter().position(|p| p.id == l3).unwrap();
    assert_eq!(procs[i3].ask("create d"), "ok");
    assert_eq!(procs[i3].ask("exists d"), "true");
    // Wake it: it steps down, catches up, and agrees on the new leader.
    procs[i2].signal("-CONT");
    for p in procs.iter_mut() {
        wait_vdisks(p, "a,b,c,d");
    }
    let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
    let final_leader = wait_leader(&mut refs, 0);
    let li = procs.iter().position(|p| p.id == final_leader).unwrap();
    assert_eq!(procs[li].ask("create e"), "ok");
    for p in procs.iter_mut() {
        wait_vdisks(p, "a,b,c,d,e");
    }
}
