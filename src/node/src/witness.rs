//! `cairn witness`: the same binary with no disks and no VMs, only a cluster vote, so a
//! two-data-node cluster has a third voter. It serves the control socket (`DATA/cairn.sock`)
//! for the cluster requests only; it joins with a witness token through `cairn cluster join`.
//!
//! Must never: hold disks, virtual disks or VMs, or answer a storage request as if it could.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use control::{
    allowed, Actor, BoxFuture, ClusterDataView, ControlError, ControlResult, Controller, DrainView,
    ErrorCode, Reply, Request,
};
use tokio::sync::watch;

use crate::clusterhost::ClusterHost;
use crate::error::{NodeError, Result};

/// How to run a witness.
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    /// Holds `cluster.json`, `cluster/` (raft) and `cairn.sock`.
    pub data_dir: PathBuf,
    /// Cluster address (fixed at the first start; the join endpoint is the next port).
    pub listen: Option<SocketAddr>,
    pub name: Option<String>,
}

struct WitnessController {
    host: Arc<ClusterHost>,
}

impl Controller for WitnessController {
    fn execute(&self, actor: Actor, req: Request) -> BoxFuture<'_, ControlResult> {
        Box::pin(async move {
            if !allowed(actor.role, &req) {
                return Err(ControlError::new(
                    ErrorCode::Forbidden,
                    format!("role {:?} may not {}", actor.role, req.action()),
                ));
            }
            req.validate()?;
            let result = match &req {
                Request::ClusterStatus => {
                    let mut v = self.host.status(ClusterDataView::default())?;
                    // Each member's reachability as this witness sees it now (a data member
                    // cut off from the other data node may still reach the witness), and each
                    // draining member's progress as it reports it (no chunks here).
                    if let Ok(m) = self.host.member() {
                        v.data.draining = crate::clusterctl::draining_members(&m)
                            .into_iter()
                            .map(|(node, name)| DrainView {
                                node,
                                name,
                                ..DrainView::default()
                            })
                            .collect();
                        crate::clusterctl::ask_members(&m, &mut v).await;
                    }
                    Ok(Reply::Cluster(Box::new(v)))
                }
                Request::ClusterToken { witness, ttl_secs } => self
                    .host
                    .token(*witness, *ttl_secs)
                    .await
                    .map(Reply::ClusterToken),
                Request::ClusterJoin { address, token } => {
                    let a: SocketAddr = address
                        .parse()
                        .map_err(|_| ControlError::invalid("cluster address is not ip:port"))?;
                    self.host.join(a, token, 0).await?;
                    Ok(Reply::Cluster(Box::new(
                        self.host.status(ClusterDataView::default())?,
                    )))
                }
                Request::ClusterRemove { node, force } => {
                    self.host.remove(node, *force).await.map(|_| Reply::Done)
                }
                Request::ClusterLocate { node, address } => {
                    self.host.locate(node, address).await.map(|_| Reply::Done)
                }
                other => Err(ControlError::invalid(format!(
                    "this is a witness (a cluster vote only): it has no disks, virtual disks or VMs, so {} does not apply; ask a data node",
                    other.action()
                ))),
            };
            let ok = result.is_ok();
            tracing::info!(user = %actor.user, action = req.action(), ok, "audit");
            result
        })
    }
}

/// Runs a witness in the foreground until SIGINT or SIGTERM. `on_started` gets the cluster
/// address once it serves.
pub fn run_witness(cfg: WitnessConfig, on_started: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cairn-witness")
        .build()
        .map_err(|e| NodeError::Runtime(e.to_string()))?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| NodeError::Runtime(format!("SIGTERM handler: {e}")))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| NodeError::Runtime(format!("SIGINT handler: {e}")))?;
        let data = cfg.data_dir.clone();
        std::fs::create_dir_all(&data)
            .map_err(|e| NodeError::io("create data directory", &data, e))?;
        let _lock = crate::identity::lock(&data)?;
        let name = cfg.name.clone().unwrap_or_else(|| "witness".into());
        let started = Instant::now();
        let host = Arc::new(
            ClusterHost::start(&data, &name, cfg.listen, cluster::Role::Witness, false).await?,
        );
        let sock = data.join("cairn.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock)
            .map_err(|e| NodeError::io("bind control socket", &sock, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| NodeError::io("protect control socket", &sock, e))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let served = tokio::spawn(crate::socket::serve(
            listener,
            Arc::new(WitnessController { host: host.clone() }),
            stop_rx,
        ));
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "witness serving"
        );
        on_started(host.address());
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = stop_tx.send(true);
        let _ = served.await;
        host.shutdown().await;
        let _ = std::fs::remove_file(&sock);
        Ok(())
    })
}
