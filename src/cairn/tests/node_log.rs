//! `cairn node` whose stdout and stderr are pipes nobody reads (a terminal that stopped
//! reading, a supervisor that never drains the pipe). Its log goes through bounded queues with
//! writer threads (src/cairn/src/nodecmd.rs over `init::log::ConsoleOut`): once the pipe is full
//! the writer thread blocks in write(2), and the node must keep answering requests, drop
//! (and count) what does not fit, say the count once the output is read again, and exit
//! cleanly on SIGTERM within a bound even if nobody ever reads.
//!
//! "The pipe is full" is observed, not assumed: the node's stderr writer thread is seen
//! blocked in write(2) on fd 2 (/proc/PID/task/TID/syscall). Where that cannot be read the
//! test says `skipped:`.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::BIN;

/// Bound on any one wait below; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(120);
/// Virtual disks created while the output is stuck. At trace level one create logs tens of
/// KiB (raft proposal and apply), so these alone overflow the 256 KiB queue
/// (`init::log::MAX_PENDING_BYTES`) several times: drops are certain, not a matter of timing.
const CREATES: usize = 16;

/// x86_64 write(2).
const SYS_WRITE: &str = "1";

fn spawn_node(data: &Path) -> (Child, ChildStdout, ChildStderr) {
    let mut child = Command::new(BIN)
        .args(["node", "--no-api", "--data"])
        .arg(data)
        .args(["--disks", "2", "--disk-size", "256M"])
        .env("CAIRN_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn node");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    (child, out, err)
}

/// Runs the CLI against `data`; a CLI that does not finish within `WAIT` means the node
/// stalled (the failure this test is about), so it is killed and reported as such.
fn cli(data: &Path, args: &[&str]) -> (i32, String) {
    let mut c = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cairn");
    let mut out = c.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > WAIT {
            let _ = c.kill();
            let _ = c.wait();
            panic!("cairn {args:?} got no answer in {WAIT:?}: the node stalled");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = c.stderr.take().unwrap().read_to_string(&mut err);
    let out = reader.join().unwrap();
    (status.code().unwrap_or(-1), format!("{out}{err}"))
}

fn wait_answering(data: &Path, child: &mut Child) {
    let t = Instant::now();
    while cli(data, &["pool"]).0 != 0 {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("cairn node exited early ({s})");
        }
        assert!(t.elapsed() < WAIT, "cairn node did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether one of the node's threads is inside write(2) on fd 2, i.e. its stderr writer is
/// blocked on the full pipe. None: this machine does not show it (not x86_64, or no readable
/// /proc/PID/task/TID/syscall).
fn stderr_writer_blocked(pid: u32) -> Option<bool> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut readable = false;
    for t in tasks.flatten() {
        let Ok(sc) = std::fs::read_to_string(t.path().join("syscall")) else {
            continue;
        };
        readable = true;
        let mut w = sc.split_whitespace();
        if w.next() == Some(SYS_WRITE) && w.next() == Some("0x2") {
            return Some(true);
        }
    }
    readable.then_some(false)
}

/// Waits until the stderr writer is blocked (making requests meanwhile, which log). None:
/// cannot be observed here.
fn wait_blocked(data: &Path, child: &mut Child) -> Option<()> {
    let t = Instant::now();
    loop {
        if stderr_writer_blocked(child.id())? {
            return Some(());
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("cairn node exited ({s}) before its output filled up");
        }
        assert!(
            t.elapsed() < WAIT,
            "the node's stderr writer never blocked on the unread pipe"
        );
        assert_eq!(cli(data, &["pool"]).0, 0);
    }
}

/// SIGTERM, then the exit status within `WAIT`.
fn sigterm_and_wait(child: &mut Child) -> std::process::ExitStatus {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -TERM failed");
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > WAIT {
            let _ = child.kill();
            panic!("cairn node did not exit within {WAIT:?} of SIGTERM with its output unread");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn create_vdisks(data: &Path, from: usize) {
    for i in from..from + CREATES {
        let name = format!("v{i}");
        let (code, out) = cli(data, &["vdisk", "create", &name, "16M"]);
        assert_eq!(code, 0, "vdisk create {name} while the log is stuck: {out}");
    }
}

fn vdisk_count(data: &Path) -> usize {
    let (code, out) = cli(data, &["--json", "vdisk", "list"]);
    assert_eq!(code, 0, "vdisk list: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("vdisk list JSON");
    v["value"].as_array().map_or(0, Vec::len)
}

fn collect(
    mut r: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let h = std::thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, h)
}

/// The numbers in "[cairn: N console writes dropped" notes.
fn dropped_notes(text: &str) -> u64 {
    text.split("[cairn: ")
        .skip(1)
        .filter(|s| s.contains(" console writes dropped"))
        .map(|s| {
            s.split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("a drop note says how many")
        })
        .sum()
}

#[test]
fn node_keeps_answering_and_exits_while_nobody_reads_its_log() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-nodelog-")
        .tempdir()
        .unwrap();
    let data = tmp.path().join("data");

    // 1. Nobody ever reads: requests are answered, SIGTERM ends the node (the drain at exit
    //    gives up on the stuck pipe after its bound).
    let (mut node, mut out, err) = spawn_node(&data);
    wait_answering(&data, &mut node);
    if wait_blocked(&data, &mut node).is_none() {
        let _ = node.kill();
        let _ = node.wait();
        println!("skipped: this machine does not show a thread's current syscall (/proc/PID/task/TID/syscall on x86_64)");
        return;
    }
    create_vdisks(&data, 0);
    assert_eq!(vdisk_count(&data), CREATES);
    assert_eq!(
        stderr_writer_blocked(node.id()),
        Some(true),
        "the stderr writer must still be stuck: the requests above ran while nobody read"
    );
    let status = sigterm_and_wait(&mut node);
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let mut stdout = String::new();
    out.read_to_string(&mut stdout).unwrap();
    assert!(
        stdout.contains(" running: data "),
        "the start-up text reached stdout: {stdout:?}"
    );
    drop(err);

    // 2. Same data directory (the exit above was clean: everything created is there). The
    //    output is stuck again, then read: the queued text arrives, with notes counting what
    //    was dropped, and at exit the total.
    let (mut node, out, err) = spawn_node(&data);
    wait_answering(&data, &mut node);
    assert_eq!(
        vdisk_count(&data),
        CREATES,
        "virtual disks after a clean exit"
    );
    wait_blocked(&data, &mut node).expect("observable above");
    create_vdisks(&data, CREATES);
    let (out_buf, out_h) = collect(out);
    let (err_buf, err_h) = collect(err);
    // Exit only once the backlog is out, so the final count has room in the queue.
    let t = Instant::now();
    while !String::from_utf8_lossy(&err_buf.lock().unwrap()).contains("console writes dropped") {
        assert!(
            t.elapsed() < WAIT,
            "no drop note after {CREATES} creates logged at trace level into a stuck pipe"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = sigterm_and_wait(&mut node);
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    out_h.join().unwrap();
    err_h.join().unwrap();
    let stdout = String::from_utf8_lossy(&out_buf.lock().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_buf.lock().unwrap()).into_owned();
    let marker = " log writes were dropped while the output was not read";
    let at = stderr.find(marker).unwrap_or_else(|| {
        panic!(
            "no total of dropped writes at exit; stderr ends {:?}",
            tail(&stderr)
        )
    });
    let line_start = stderr[..at].rfind('\n').map_or(0, |i| i + 1);
    let total: u64 = stderr[line_start..at]
        .strip_prefix("cairn node: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "malformed total line: {:?}",
                &stderr[line_start..at + marker.len()]
            )
        });
    let noted = dropped_notes(&stderr[..line_start]) + dropped_notes(&stdout);
    assert!(total > 0, "writes were dropped, the total says {total}");
    assert_eq!(
        noted, total,
        "the notes where writes were lost add up to the total at exit"
    );
    assert!(stdout.contains(" running: data "), "stdout: {stdout:?}");
    println!("node_log: {total} log writes dropped while stuck, all counted");
}

fn tail(s: &str) -> &str {
    let mut i = s.len().saturating_sub(600);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
