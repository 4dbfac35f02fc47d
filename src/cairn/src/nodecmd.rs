//! `cairn node`: run a node in the foreground on this host.

use crate::cli::NodeArgs;

pub fn run(a: NodeArgs) -> i32 {
    init_tracing();
    let mut cfg = node::NodeConfig::new(&a.data);
    cfg.disk_count = a.disks;
    cfg.disk_size_bytes = a.disk_size;
    cfg.node_name = a.name;
    cfg.nbd_bind_ip = a.nbd_bind;
    cfg.api_listen = if a.no_api { None } else { Some(a.api_listen) };
    cfg.cluster_listen = a.cluster_listen;
    let result = node::run(cfg, |n| {
        let pool = n.engine().pool();
        println!(
            "cairn node {} (id {:016x}) running: data {}, {} disks, {} usable",
            n.node_name(),
            n.node_id(),
            n.config().data_dir.display(),
            pool.disks,
            control::format_size(pool.usable_bytes),
        );
        println!(
            "CLI: cairn --data {} <command>   (socket {})",
            n.config().data_dir.display(),
            n.socket_path().display()
        );
        println!("Cluster address: {}", n.cluster_addr());
        println!("Ctrl-C stops the node.");
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn node: {e}");
            match e {
                node::NodeError::AlreadyRunning(_) => 4,
                node::NodeError::Config(_) => 2,
                _ => 1,
            }
        }
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
