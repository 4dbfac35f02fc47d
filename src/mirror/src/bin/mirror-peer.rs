//! A minimal replica-serving node for tests that kill a real peer process: an engine on one
//! io_uring file disk in `--dir` (reopened and recovered on restart) and its replica server.
//! Prints `listening <addr>` once serving, then runs until killed.
//!
//! Usage: mirror-peer --ca CA.json --node ID --addr IP:PORT --dir DIR
//!
//! `mirror-peer bench --ca CA.json --dir DIR --listen IP:PORT --disk-bytes N` is instead node 2
//! of the mirrored-I/O benchmark (`mirror::bench::serve_peer`), for the benchmark's test.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn arg(args: &[String], name: &str) -> Res<String> {
    let i = args
        .iter()
        .position(|a| a == name)
        .ok_or_else(|| format!("missing {name}"))?;
    args.get(i + 1)
        .cloned()
        .ok_or_else(|| format!("{name} needs a value").into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("mirror-peer: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("bench") {
        let opts = mirror::bench::PeerOpts {
            ca: arg(&args, "--ca")?.into(),
            dir: arg(&args, "--dir")?.into(),
            listen: arg(&args, "--listen")?.parse()?,
            disk_bytes: arg(&args, "--disk-bytes")?.parse()?,
        };
        mirror::bench::serve_peer(&opts).await?;
        return Ok(());
    }
    let ca: transport::ClusterCa = serde_json::from_slice(&std::fs::read(arg(&args, "--ca")?)?)?;
    let node: u64 = arg(&args, "--node")?.parse()?;
    let addr: std::net::SocketAddr = arg(&args, "--addr")?.parse()?;
    let dir = PathBuf::from(arg(&args, "--dir")?);
    std::fs::create_dir_all(&dir)?;
    let engine = engine::Engine::open(engine::EngineConfig {
        node_id: node,
        node_name: format!("peer{node}"),
    })
    .await?;
    let disk = dir.join("disk0.img");
    if !disk.exists() {
        blockdev::create_sparse_file(&disk, 256 << 20)?;
    }
    engine.add_disk(blockdev::open_device(&disk)?).await?;
    let identity = ca.issue(node)?;
    let server = mirror::ReplicaServer::new(node, &dir.join("state"))?;
    server.serve_engine(&engine);
    let handle = server.start(addr, &identity).await?;
    println!("listening {}", handle.local_addr());
    let _keep: Arc<mirror::ReplicaServer> = server;
    std::future::pending::<()>().await;
    Ok(())
}
