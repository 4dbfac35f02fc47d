//! A cluster member as its own process, driven over stdin/stdout: the multi-process tests
//! (kill -9, SIGSTOP/SIGCONT) run three of these. One request per line in, one reply per line
//! out. Not the product entry point (that is `cairn node`); a test driver around the library.
//!
//! Usage: `cluster-node create|open|join DIR NAME RPC_ADDR JOIN_ADDR [TOKEN VIA_JOIN_ADDR]`,
//! then lines: `token data|witness`, `create NAME`, `delete NAME`, `exists NAME`, `leader`,
//! `vdisks`, `status`, `remove ID`.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use cluster::{ClusterNode, Command, CommandResult, NodeConfig, RaftTimings, Role, VdiskDef};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        bail!("usage: cluster-node create|open|join DIR NAME RPC_ADDR JOIN_ADDR [TOKEN VIA]");
    }
    let cfg = NodeConfig {
        data_dir: args[2].clone().into(),
        name: args[3].clone(),
        rpc_addr: args[4].parse().context("rpc addr")?,
        join_addr: args[5].parse().context("join addr")?,
        timings: RaftTimings::default(),
        media: None,
    };
    let node = match args[1].as_str() {
        "create" => ClusterNode::create(cfg).await?,
        "open" => ClusterNode::open(cfg).await?,
        "join" => {
            let token = args.get(6).context("token")?;
            let via: SocketAddr = args.get(7).context("via")?.parse()?;
            ClusterNode::join(cfg, token, via).await?
        }
        other => bail!("unknown mode {other}"),
    };
    let mut out = std::io::stdout();
    writeln!(out, "ready {}", node.id())?;
    out.flush()?;

    // stdin is read on its own thread; requests are served one at a time.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let reply = serve(&node, line.trim()).await;
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    node.shutdown().await;
    Ok(())
}

fn result(r: Result<CommandResult, cluster::Error>) -> String {
    match r {
        Ok(CommandResult::Ok) => "ok".into(),
        Ok(CommandResult::Rejected(m)) => format!("rejected {m}"),
        Ok(other) => format!("ok {other:?}"),
        Err(e) => format!("error {e}"),
    }
}

async fn serve(node: &ClusterNode, line: &str) -> String {
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("").to_string();
    match cmd {
        "token" => {
            let role = if arg == "witness" {
                Role::Witness
            } else {
                Role::Data
            };
            match node.issue_join_token(role, Duration::from_secs(300)).await {
                Ok(t) => format!("token {t}"),
                Err(e) => format!("error {e}"),
            }
        }
        "create" => {
            let v = VdiskDef {
                id: arg.clone(),
                name: arg,
                size_bytes: 1 << 30,
                parent_snapshot: None,
            };
            result(node.propose(Command::CreateVdisk(v)).await)
        }
        "delete" => result(node.propose(Command::DeleteVdisk { id: arg }).await),
        "exists" => match node
            .read_linearizable(|s| s.vdisks.contains_key(&arg))
            .await
        {
            Ok(b) => b.to_string(),
            Err(e) => format!("error {e}"),
        },
        "leader" => node.leader().map_or("none".into(), |l| l.to_string()),
        "vdisks" => node.read(|s| s.vdisks.keys().cloned().collect::<Vec<_>>().join(",")),
        "status" => serde_json::to_string(&node.status()).unwrap_or_else(|e| format!("error {e}")),
        "remove" => match arg.parse::<u64>() {
            Ok(id) => match node.remove_member(id).await {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            },
            Err(e) => format!("error {e}"),
        },
        _ => "error unknown command".into(),
    }
}
