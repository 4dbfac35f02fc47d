//! Runs the metadata part of `cairn bench cluster` and prints JSON lines.
//! Usage: `cargo run --release -p cluster --example bench_cluster [seconds]`.
use std::time::Duration;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let opts = cluster::bench::BenchOpts {
        dir: dir.path().to_path_buf(),
        duration: Duration::from_secs(secs),
        clients: vec![1, 32],
        ips: [
            "127.0.0.51".into(),
            "127.0.0.52".into(),
            "127.0.0.53".into(),
        ],
    };
    for line in cluster::bench::metadata_commits(&opts).await? {
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}
