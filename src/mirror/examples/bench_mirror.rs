//! Runs only the mirrored-I/O figures of `cairn bench cluster` (which also runs the metadata and
//! rebuild benchmarks): `cargo run --release -p mirror --example bench_mirror [DIR] [SECONDS]`.
//! Prints its JSON lines (see `mirror::bench`). Uses 127.0.0.54/55 like `cairn bench cluster`.
//! Node 2 is this program again, started as `bench_mirror peer --ca ... --dir ... --listen ...
//! --disk-bytes ...`.

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn flag(args: &[String], name: &str) -> Res<String> {
    let i = args
        .iter()
        .position(|a| a == name)
        .ok_or_else(|| format!("missing {name}"))?;
    Ok(args
        .get(i + 1)
        .cloned()
        .ok_or_else(|| format!("{name} needs a value"))?)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("peer") {
        let opts = mirror::bench::PeerOpts {
            ca: flag(&args, "--ca")?.into(),
            dir: flag(&args, "--dir")?.into(),
            listen: flag(&args, "--listen")?.parse()?,
            disk_bytes: flag(&args, "--disk-bytes")?.parse()?,
        };
        rt.block_on(mirror::bench::serve_peer(&opts))?;
        return Ok(());
    }
    let mut args = args.into_iter();
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "bench-mirror".into()));
    let secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let opts = mirror::bench::BenchOpts {
        dir: dir.clone(),
        duration: std::time::Duration::from_secs(secs.max(1)),
        ips: ["127.0.0.54".into(), "127.0.0.55".into()],
        disk_bytes: 1 << 30,
        peer: mirror::bench::PeerCommand {
            program: std::env::current_exe()?,
            args: vec!["peer".into()],
        },
    };
    let lines = rt.block_on(mirror::bench::mirrored_io(&opts));
    let _ = std::fs::remove_dir_all(&dir);
    for l in lines? {
        println!("{}", serde_json::to_string(&l)?);
    }
    Ok(())
}
