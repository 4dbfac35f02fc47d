//! Runs only the rebuild figure of `cairn bench cluster` (which also runs the metadata and
//! mirrored-I/O benchmarks), several times, with a summary per line:
//! `cargo run --release -p engine --example bench_rebuild [DIR] [DATA_MIB] [RUNS] [LINES]`.
//! DATA_MIB (default 4096) is written before the loss; about half of it is rebuilt, so at
//! device speed the rebuild lasts seconds, not a fraction of one. RUNS (default 3) repeats
//! each line, with the anchor measured in every run. LINES is `ram`, `dev`, `both` (default)
//! or `resync` (a returning peer's resync of DATA_MIB / 8 rewritten while it was away; see
//! `engine::bench_resync`).
//! Prints one JSON line per run (with the load average), then one summary line per metric
//! (median and range of the ratio); see `engine::bench_rebuild`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `cairn` does: the figure must be the product's, with its allocator settings.
    blockdev::tune_allocator();
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "bench-rebuild".into()));
    let mib: u64 = args.next().map_or(Ok(4096), |s| s.parse())?;
    let runs: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let which = args.next().unwrap_or_else(|| "both".into());
    let ram_lines: &[bool] = match which.as_str() {
        "ram" => &[true],
        "dev" => &[false],
        "both" => &[true, false],
        "resync" => &[],
        other => {
            return Err(format!("LINES must be ram, dev, both or resync, not {other:?}").into())
        }
    };
    if runs == 0 || runs > 100 {
        return Err("RUNS must be 1..=100".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if which == "resync" {
        let mut ratios = Vec::new();
        for _ in 0..runs {
            let l = rt.block_on(engine::bench_resync::resync_after_outage(
                &dir,
                mib << 20,
                (mib << 20) / 8,
            ));
            let l = match l {
                Ok(l) => l,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e.into());
                }
            };
            println!("{}", serde_json::to_string(&l)?);
            ratios.push(l.ratio);
        }
        let _ = std::fs::remove_dir_all(&dir);
        ratios.sort_by(f64::total_cmp);
        println!(
            "{{\"bench\":\"cluster\",\"metric\":\"resync_after_outage_mib_s\",\"runs\":{},\"ratio_median\":{},\"ratio_min\":{},\"ratio_max\":{}}}",
            ratios.len(),
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
        return Ok(());
    }
    let opts = engine::bench_rebuild::RebuildOpts {
        dir: dir.clone(),
        data_bytes: mib << 20,
    };
    let mut lines = Vec::new();
    let mut failed = None;
    'runs: for _ in 0..runs {
        for &ram in ram_lines {
            match rt.block_on(engine::bench_rebuild::rebuild_line(&opts, ram)) {
                Ok(l) => {
                    println!("{}", serde_json::to_string(&l)?);
                    lines.push(l);
                }
                Err(e) => {
                    failed = Some(e);
                    break 'runs;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    for s in engine::bench_rebuild::summarize(&lines) {
        println!("{}", serde_json::to_string(&s)?);
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
