//! Runs only the rebuild figure of `cairn bench cluster` (which also runs the metadata and
//! mirrored-I/O benchmarks): `cargo run --release -p engine --example bench_rebuild [DIR]
//! [DATA_MIB]`. Prints its JSON lines (see `engine::bench_rebuild`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `cairn` does: the figure must be the product's, with its allocator settings.
    blockdev::tune_allocator();
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "bench-rebuild".into()));
    let mib: u64 = args.next().map_or(Ok(1024), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let opts = engine::bench_rebuild::RebuildOpts {
        dir: dir.clone(),
        data_bytes: mib << 20,
    };
    let lines = rt.block_on(engine::bench_rebuild::rebuild_after_node_loss(&opts));
    let _ = std::fs::remove_dir_all(&dir);
    for l in lines? {
        println!("{}", serde_json::to_string(&l)?);
    }
    Ok(())
}
