//! `cairn bench vmm` and `cairn bench cluster`: thin front ends over the benchmarks that live
//! with the code they measure (`vmm::bench`, `cluster::bench`). Each prints the JSON lines of
//! BENCHMARKS.md: ours, anchor and ratio from one invocation.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct VmmBenchArgs {
    /// Requests per IOPS run.
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Scratch directory for the guest and the backing file (on the file system to measure).
    #[arg(long, default_value = "/var/tmp/cairn-bench-vmm")]
    pub dir: PathBuf,
    /// QEMU binary used as the anchor.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
}

#[derive(Debug, clap::Args)]
pub struct ClusterBenchArgs {
    /// Measurement time per figure, in seconds.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Scratch directory for the three members' data.
    #[arg(long, default_value = "/var/tmp/cairn-bench-cluster")]
    pub dir: PathBuf,
}

/// `cairn bench cluster-peer` (hidden): node 2 of the mirrored-I/O benchmark, in a process of
/// its own (see `mirror::bench::serve_peer`).
#[derive(Debug, clap::Args)]
pub struct ClusterPeerArgs {
    /// The cluster CA (JSON with its key) to issue this node's identity from.
    #[arg(long)]
    pub ca: PathBuf,
    /// Data directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Address to serve on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Size of the disk file.
    #[arg(long)]
    pub disk_bytes: u64,
}

pub fn run_vmm(a: VmmBenchArgs) -> i32 {
    if !vmm::kvm_available() {
        println!("skipped: /dev/kvm not available");
        return 0;
    }
    let opts = vmm::bench::BenchOptions {
        work_dir: a.dir,
        guest_elf: test_guests::GUEST_ELF.to_vec(),
        disk_bytes: 256 << 20,
        ops: a.ops,
        runs: a.runs,
        qemu: a.qemu,
    };
    match vmm::bench::run(&opts) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("cairn bench vmm: {e:#}");
            1
        }
    }
}

/// The memory child of `cairn bench vmm` (see `vmm::bench::CHILD_ENV`): reached from `main`
/// before the CLI is parsed. The child takes its guest from the file the parent names, so no
/// option here matters.
pub fn vmm_memory_child() -> i32 {
    let opts = vmm::bench::BenchOptions {
        work_dir: PathBuf::new(),
        guest_elf: Vec::new(),
        disk_bytes: 0,
        ops: 0,
        runs: 0,
        qemu: String::new(),
    };
    match vmm::bench::run(&opts) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("cairn bench vmm (memory child): {e:#}");
            1
        }
    }
}

pub fn run_cluster_peer(a: ClusterPeerArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn bench cluster-peer: cannot start a runtime: {e}");
            return 1;
        }
    };
    let opts = mirror::bench::PeerOpts {
        ca: a.ca,
        dir: a.dir,
        listen: a.listen,
        disk_bytes: a.disk_bytes,
    };
    match rt.block_on(mirror::bench::serve_peer(&opts)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn bench cluster-peer: {e}");
            1
        }
    }
}

pub fn run_cluster(a: ClusterBenchArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn bench cluster: cannot start a runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        let _ = std::fs::remove_dir_all(&a.dir);
        std::fs::create_dir_all(&a.dir)?;
        let opts = cluster::bench::BenchOpts {
            dir: a.dir.clone(),
            duration: Duration::from_secs(a.seconds.max(1)),
            clients: vec![1, 32],
            ips: [
                "127.0.0.51".into(),
                "127.0.0.52".into(),
                "127.0.0.53".into(),
            ],
        };
        let lines = cluster::bench::metadata_commits(&opts).await?;
        for line in lines {
            println!("{}", serde_json::to_string(&line)?);
        }
        // Mirrored I/O between two nodes (latency vs its model, IOPS vs one node).
        let mopts = mirror::bench::BenchOpts {
            dir: a.dir.join("mirror"),
            duration: Duration::from_secs(a.seconds.max(1)),
            ips: ["127.0.0.54".into(), "127.0.0.55".into()],
            disk_bytes: 1 << 30,
            // Node 2 runs in a process of its own: this program, as `cluster-peer`.
            peer: mirror::bench::PeerCommand {
                program: std::env::current_exe()?,
                args: vec!["bench".into(), "cluster-peer".into()],
            },
        };
        for line in mirror::bench::mirrored_io(&mopts).await? {
            println!("{}", serde_json::to_string(&line)?);
        }
        // Rebuild speed after a node loss vs the device's sequential write bandwidth.
        let ropts = engine::bench_rebuild::RebuildOpts {
            dir: a.dir.join("rebuild"),
            data_bytes: 1 << 30,
        };
        for line in engine::bench_rebuild::rebuild_after_node_loss(&ropts).await? {
            println!("{}", serde_json::to_string(&line)?);
        }
        anyhow::Ok(())
    });
    let _ = std::fs::remove_dir_all(&a.dir);
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn bench cluster: {e:#}");
            1
        }
    }
}
