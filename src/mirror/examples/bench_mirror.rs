//! Runs only the mirrored-I/O figures of `cairn bench cluster` (which also runs the metadata and
//! rebuild benchmarks): `cargo run --release -p mirror --example bench_mirror [DIR] [SECONDS]`.
//! Prints its JSON lines (see `mirror::bench`). Uses 127.0.0.54/55 like `cairn bench cluster`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "bench-mirror".into()));
    let secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let opts = mirror::bench::BenchOpts {
        dir: dir.clone(),
        duration: std::time::Duration::from_secs(secs.max(1)),
        ips: ["127.0.0.54".into(), "127.0.0.55".into()],
        disk_bytes: 1 << 30,
    };
    let lines = rt.block_on(mirror::bench::mirrored_io(&opts));
    let _ = std::fs::remove_dir_all(&dir);
    for l in lines? {
        println!("{}", serde_json::to_string(&l)?);
    }
    Ok(())
}
