//! A real `cairn node` process on a temporary data directory, and the CLI run against it.
#![allow(dead_code)]

pub mod faults;
pub mod history;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

pub struct TestNode {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub disks: u32,
    pub disk_size: String,
}

impl TestNode {
    /// A fresh node with `disks` sparse disks of `disk_size`.
    pub fn start(disks: u32, disk_size: &str) -> TestNode {
        let tmp = tempfile::Builder::new()
            .prefix("cairn-e2e-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let mut n = TestNode {
            dir: tmp.path().join("data"),
            _tmp: Some(tmp),
            child: None,
            disks,
            disk_size: disk_size.into(),
        };
        n.restart();
        n
    }

    pub fn data(&self) -> &Path {
        &self.dir
    }

    /// Start (again) on the same data directory and wait until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["node", "--no-api", "--data"])
            .arg(&self.dir)
            .args([
                "--disks",
                &self.disks.to_string(),
                "--disk-size",
                &self.disk_size,
            ])
            .env("CAIRN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn cairn node");
        self.child = Some(child);
        let t = Instant::now();
        loop {
            if self.cli(&["pool"]).code == 0 {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node exited early ({status}):\n{}", self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "node did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9: no shutdown, no flush.
    pub fn kill9(&mut self) {
        kill9_child(&mut self.child);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let child = self.child.take();
        stop_child(child, "node", || self.log());
    }

    pub fn cli(&self, args: &[&str]) -> Out {
        cli_at(&self.dir, args)
    }

    /// Run a CLI command that must succeed, with --json, and parse its output.
    pub fn ok(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.cli(&a);
        assert_eq!(
            o.code, 0,
            "cairn {args:?} failed: {}\n{}",
            o.stderr, o.stdout
        );
        o.json()
    }

    /// Run a CLI command that must fail with `code`; returns its stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.cli(args);
        assert_eq!(
            o.code, code,
            "cairn {args:?}: expected exit {code}, got {}: {}{}",
            o.code, o.stdout, o.stderr
        );
        assert!(!o.stderr.trim().is_empty(), "no error message for {args:?}");
        o.stderr
    }

    pub fn vdisk_names(&self) -> Vec<String> {
        let v = self.ok(&["vdisk", "list"]);
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn cli_at(data: &Path, args: &[&str]) -> Out {
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

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---- clusters of real processes (mirror_e2e)

/// A free `ip:port` whose next two ports are free too (join endpoint at +1, mirror at +2).
pub fn free_cluster_addr(ip: &str) -> std::net::SocketAddr {
    use std::net::TcpListener;
    for _ in 0..200 {
        let l = TcpListener::bind((ip, 0)).unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        if a.port() < 65534
            && TcpListener::bind((ip, a.port() + 1)).is_ok()
            && TcpListener::bind((ip, a.port() + 2)).is_ok()
        {
            return a;
        }
    }
    panic!("no three free consecutive ports on {ip}");
}

/// A `cairn node` (data) or `cairn witness` process of a cluster on its own loopback address.
pub struct ClusterProc {
    pub data: PathBuf,
    pub addr: std::net::SocketAddr,
    pub witness: bool,
    pub name: String,
    /// The network namespace it runs in (`None`: the host's, on a 127.0.0.x address).
    pub netns: Option<String>,
    child: Option<Child>,
}

impl ClusterProc {
    pub fn start(root: &Path, name: &str, ip: &str, witness: bool) -> ClusterProc {
        let mut p = ClusterProc {
            data: root.join(name),
            addr: free_cluster_addr(ip),
            witness,
            name: name.into(),
            netns: None,
            child: None,
        };
        p.restart();
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// Start (again) on the same data directory and address; waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))
            .unwrap();
        let addr = self.addr.to_string();
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
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
            let o = cli_at(&self.data, &["cluster", "status"]);
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
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    pub fn signal(&self, sig: &str) {
        let s = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap();
        assert!(s.success(), "kill {sig} {}", self.name);
    }

    /// kill -9: no shutdown, no flush.
    pub fn kill9(&mut self) {
        kill9_child(&mut self.child);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let child = self.child.take();
        stop_child(child, &self.name, || self.log());
    }

    /// `cairn --json ARGS` that must succeed.
    pub fn ok(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = cli_at(&self.data, &a);
        assert_eq!(
            o.code, 0,
            "{}: cairn {args:?}: {}{}",
            self.name, o.stdout, o.stderr
        );
        o.json()
    }

    pub fn status(&self) -> serde_json::Value {
        self.ok(&["cluster", "status"])["value"].clone()
    }

    /// Joins the cluster of `via` with a fresh token from it.
    pub fn join(&self, via: &ClusterProc) {
        let mut args = vec!["cluster", "token"];
        if self.witness {
            args.push("--witness");
        }
        let token = via.ok(&args)["value"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        self.ok(&[
            "cluster",
            "join",
            "--address",
            &via.addr.to_string(),
            "--token",
            &token,
        ]);
    }
}

impl Drop for ClusterProc {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process must be continued to die on SIGKILL.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill9();
    }
}

/// Polls `f` until it holds, failing with `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal NBD client (fixed newstyle handshake, NBD_OPT_EXPORT_NAME, simple replies), so a
/// test can write with a known acknowledgement for every request.
pub struct NbdClient {
    s: std::net::TcpStream,
    pub size: u64,
    next: u64,
}

impl NbdClient {
    pub fn connect(addr: &str, export: &str) -> std::io::Result<NbdClient> {
        use nbd::proto::*;
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello)?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        if u64::from_be_bytes(hello[..8].try_into().unwrap()) != NBDMAGIC
            || u64::from_be_bytes(hello[8..16].try_into().unwrap()) != IHAVEOPT
        {
            return Err(bad("not an NBD newstyle server"));
        }
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())?;
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt)?;
        let mut info = [0u8; 10];
        s.read_exact(&mut info)?;
        let size = u64::from_be_bytes(info[..8].try_into().unwrap());
        Ok(NbdClient { s, size, next: 1 })
    }

    fn request(&mut self, kind: u16, offset: u64, len: u32, data: &[u8]) -> std::io::Result<u64> {
        use nbd::proto::*;
        use std::io::Write;
        let handle = self.next;
        self.next += 1;
        let mut r = Vec::with_capacity(28 + data.len());
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&handle.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(data);
        self.s.write_all(&r)?;
        Ok(handle)
    }

    fn reply(&mut self, handle: u64) -> std::io::Result<()> {
        use nbd::proto::*;
        use std::io::Read;
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        let magic = u32::from_be_bytes(h[..4].try_into().unwrap());
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let got = u64::from_be_bytes(h[8..].try_into().unwrap());
        if magic != SIMPLE_REPLY_MAGIC || got != handle {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad reply magic {magic:#x} handle {got} (want {handle})"),
            ));
        }
        if err != 0 {
            return Err(std::io::Error::other(format!("NBD error {err}")));
        }
        Ok(())
    }

    /// Returns once the server acknowledged the write.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let h = self.request(nbd::proto::CMD_WRITE, offset, data.len() as u32, data)?;
        self.reply(h)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        let h = self.request(nbd::proto::CMD_FLUSH, 0, 0, &[])?;
        self.reply(h)
    }

    pub fn read(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let h = self.request(nbd::proto::CMD_READ, offset, len as u32, &[])?;
        self.reply(h)?;
        let mut buf = vec![0u8; len];
        self.s.read_exact(&mut buf)?;
        Ok(buf)
    }
}

/// kill -9 of a child process (no shutdown, no flush); nothing if it is not running.
fn kill9_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// SIGTERM, then wait up to 60 s for a clean (zero) exit; the log is shown on failure.
fn stop_child(child: Option<Child>, what: &str, log: impl Fn() -> String) {
    let Some(mut c) = child else { return };
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            assert!(s.success(), "{what} exited with {s}:\n{}", log());
            return;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = c.kill();
            panic!("{what} did not stop on SIGTERM:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a stopped node's disk files (DATA/disks) in this process as an engine with the node's
/// own id (from DATA/node.json: its disks are labelled with it).
pub async fn open_node_engine(dir: &Path) -> engine::Engine {
    let me: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("node.json")).unwrap()).unwrap();
    let id = me["node_id"].as_u64().unwrap();
    let e = engine::Engine::open(engine::EngineConfig {
        node_id: id,
        node_name: format!("check{id}"),
    })
    .await
    .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("disks"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        e.add_disk(node::open_device(&f).unwrap()).await.unwrap();
    }
    e
}

/// Compares chunks `0..chunks` of virtual disk `vid` on `owner` with the copy `hosted` that
/// `holder` keeps for it and with `model`: exactly one copy per node, all byte-identical.
/// Returns the chunks compared.
pub async fn compare_copies(
    owner: &engine::Engine,
    vid: u64,
    holder: &engine::Engine,
    hosted: u64,
    model: &[u8],
    chunks: u64,
) -> u64 {
    const MIB: u64 = 1 << 20;
    let mut compared = 0;
    for chunk in 0..chunks {
        let mut copies = Vec::new();
        for (e, vd) in [(owner, vid), (holder, hosted)] {
            for (_, r) in e.local_replicas() {
                let found = r
                    .objects()
                    .into_iter()
                    .find(|o| o.vdisk == vd && o.chunk == chunk);
                if let Some(obj) = found {
                    let buf = r.read(obj, 0, 256, u64::MAX).await.unwrap();
                    copies.push(buf[..MIB as usize].to_vec());
                }
            }
        }
        assert_eq!(copies.len(), 2, "chunk {chunk}: one copy per node expected");
        let want = &model[(chunk * MIB) as usize..((chunk + 1) * MIB) as usize];
        assert!(
            copies[0] == want,
            "chunk {chunk}: the owner's copy is not what was acknowledged"
        );
        assert!(
            copies[1] == want,
            "chunk {chunk}: the holder's copy differs from the owner's"
        );
        compared += 1;
    }
    compared
}

/// A node's remote replicas as `cluster status --json` shows them.
pub fn remotes(s: &serde_json::Value) -> Vec<serde_json::Value> {
    s["data"]["remote_replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `want` remote replicas, every one up with nothing left to resync.
pub fn in_sync(s: &serde_json::Value, want: usize) -> bool {
    let r = remotes(s);
    r.len() == want
        && r.iter()
            .all(|x| x["state"] == "active" && x["reachability"] == "up" && x["dirty_chunks"] == 0)
}

/// Two data nodes (a on 127.0.0.2, b on .3) and a witness (w on .4) under `root`, joined, each
/// data node mirroring onto the other's two disks.
pub fn mirrored_pair(root: &Path) -> (ClusterProc, ClusterProc, ClusterProc) {
    let a = ClusterProc::start(root, "a", "127.0.0.2", false);
    let b = ClusterProc::start(root, "b", "127.0.0.3", false);
    let w = ClusterProc::start(root, "w", "127.0.0.4", true);
    b.join(&a);
    w.join(&b);
    wait_until(30, "both data nodes mirroring onto each other", || {
        in_sync(&a.status(), 2) && in_sync(&b.status(), 2)
    });
    (a, b, w)
}
