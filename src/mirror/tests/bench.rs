//! The mirrored-I/O benchmark runs end to end (short) and prints its JSON lines. The figures
//! themselves are for `cairn bench cluster`, not asserted here.
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_io_bench_runs() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let ms: u64 = std::env::var("MIRROR_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let opts = mirror::bench::BenchOpts {
        dir: dir.path().to_path_buf(),
        duration: Duration::from_millis(ms),
        ips: ["127.0.0.61".into(), "127.0.0.62".into()],
        disk_bytes: 256 << 20,
    };
    let lines = match mirror::bench::mirrored_io(&opts).await {
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
}
