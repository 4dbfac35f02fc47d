//! The mirrored-I/O benchmark runs end to end (short) with node 2 in a process of its own and
//! prints its JSON lines; node 2 is reaped and its directory removed however the run ends. The
//! figures themselves are for `cairn bench cluster`, not asserted here.
use std::path::Path;
use std::time::Duration;

use mirror::bench::{BenchOpts, PeerCommand};

fn opts(dir: &Path, peer: PeerCommand) -> BenchOpts {
    let ms: u64 = std::env::var("MIRROR_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    BenchOpts {
        dir: dir.to_path_buf(),
        duration: Duration::from_millis(ms),
        ips: ["127.0.0.61".into(), "127.0.0.62".into()],
        // The bench writes its disk files in full: small ones keep the test short.
        disk_bytes: 128 << 20,
        peer,
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_io_bench_runs() {
    let dir = scratch();
    let peer = PeerCommand {
        program: env!("CARGO_BIN_EXE_mirror-peer").into(),
        args: vec!["bench".into()],
    };
    let lines = match mirror::bench::mirrored_io(&opts(dir.path(), peer)).await {
        Ok(l) => l,
        Err(e) if e.to_string().contains("io_uring") || e.to_string().contains("O_DIRECT") => {
            println!("skipped: file disks unavailable here: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(lines.len(), 3);
    for l in &lines {
        println!("{}", serde_json::to_string(l).unwrap());
        assert!(l.ours > 0.0 && l.anchor > 0.0, "{l:?}");
    }
    assert!(
        !dir.path().join("node2").exists(),
        "node 2's directory stays"
    );
    assert!(
        !dir.path().join("bench-ca.json").exists(),
        "the CA file stays"
    );
}

/// Node 2 answers nonsense and then hangs: the run fails at once with what it said, and the
/// process is killed and reaped (no zombie left), its directory and the CA file removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_misbehaves_is_reaped() {
    let dir = scratch();
    let pid_file = dir.path().join("peer.pid");
    let peer = PeerCommand {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            format!(
                "mkdir -p \"$4\"; echo $$ > {}; echo hello; exec sleep 600",
                pid_file.display()
            ),
            "sh".into(),
        ],
    };
    let bench_dir = dir.path().join("bench");
    let err = match mirror::bench::mirrored_io(&opts(&bench_dir, peer)).await {
        Ok(l) => panic!("a peer saying hello made a benchmark: {l:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"hello\""), "{err}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "node 2 (pid {pid}) still exists: {:?}",
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
    );
    assert!(
        !bench_dir.join("node2").exists(),
        "node 2's directory stays"
    );
    assert!(
        !bench_dir.join("bench-ca.json").exists(),
        "the CA file stays"
    );
}

/// Node 2 fails to start: the run says so, nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_start_is_an_error() {
    let dir = scratch();
    let peer = PeerCommand {
        program: env!("CARGO_BIN_EXE_mirror-peer").into(),
        args: vec!["bench".into(), "--listen".into(), "not-an-address".into()],
    };
    let err = match mirror::bench::mirrored_io(&opts(dir.path(), peer)).await {
        Ok(l) => panic!("a peer that cannot start made a benchmark: {l:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("node 2 exited"), "{err}");
    assert!(
        !dir.path().join("node2").exists(),
        "node 2's directory stays"
    );
    assert!(
        !dir.path().join("bench-ca.json").exists(),
        "the CA file stays"
    );
}
