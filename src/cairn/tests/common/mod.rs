//! A real `cairn node` process on a temporary data directory, and the CLI run against it.
#![allow(dead_code)]

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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t = Instant::now();
            loop {
                if let Some(s) = c.try_wait().unwrap() {
                    assert!(s.success(), "node exited with {s}:\n{}", self.log());
                    return;
                }
                if t.elapsed() > Duration::from_secs(60) {
                    let _ = c.kill();
                    panic!("node did not stop on SIGTERM:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
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
