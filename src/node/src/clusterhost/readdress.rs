//! Moving a running node's cluster member to a new address (the host's address changed: a new
//! DHCP lease, a new static address). The member is stopped and reopened on the new address,
//! the way a join replaces it; the reopened member announces the address to the cluster
//! (`cluster::ClusterNode::announce_address`), which updates raft's membership and the member
//! entry. `DATA/cluster.json` follows, so a restart uses the new address too.
//!
//! Must never: leave the node without a member when the new address cannot be used (the old
//! one is reopened), or move onto an address other members could not reach
//! ([`crate::config::check_cluster_readdress`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cluster::ClusterNode;
use control::{ControlError, ErrorCode};

use super::{ports_free, save_address, ClusterHost, PORT_FREE_WAIT};
use crate::config::check_cluster_readdress;
use crate::error::{NodeError, Result};

impl ClusterHost {
    /// After a start that moved the address (the flag differs from `cluster.json`): refuses
    /// what is only known with the member open (a loopback address while other members are
    /// on other hosts). The member stops and `cluster.json` goes back to `old`.
    pub(super) async fn check_moved(
        &self,
        m: &Arc<ClusterNode>,
        old: SocketAddr,
        new: SocketAddr,
    ) -> Result<()> {
        let Err(why) = check_cluster_readdress(old, new, m.has_remote_members()) else {
            tracing::info!(%old, %new, "cluster address changed since the last start; announcing it");
            return Ok(());
        };
        m.shutdown().await;
        let data = self.dir.parent().unwrap_or(&self.dir);
        save_address(data, old)?;
        *self.address.lock() = old;
        Err(NodeError::Config(why))
    }

    /// Moves the running member to `new` (see the module docs). On a failure to open the
    /// member there, the old address comes back and the error says so.
    pub(crate) async fn readdress(&self, new: SocketAddr) -> std::result::Result<(), ControlError> {
        let _g = self.join_lock.lock().await;
        let old = self.address();
        if new == old {
            return Ok(());
        }
        let current = self.member.lock().clone();
        let remote = current.as_ref().is_some_and(|m| m.has_remote_members());
        check_cluster_readdress(old, new, remote).map_err(ControlError::invalid)?;
        if !ports_free(new) {
            return Err(ControlError::new(
                ErrorCode::Unavailable,
                format!(
                    "cannot listen on {new} and the port after it (is the address on this host, \
                     are the ports free?); the cluster address stays {old}"
                ),
            ));
        }
        let data = self.dir.parent().unwrap_or(&self.dir).to_path_buf();
        save_address(&data, new).map_err(|e| ControlError::internal(e.to_string()))?;
        *self.address.lock() = new;
        let Some(m) = current else {
            // A witness that has not joined: the address is used when it does.
            tracing::info!(%old, %new, "cluster address changed (no member yet)");
            return Ok(());
        };
        *self.member.lock() = None;
        m.shutdown().await;
        drop(m);
        match self.reopen(new).await {
            Ok(()) => {
                tracing::info!(%old, %new, "cluster member moved to its new address");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%new, error = %e, "cannot reopen the member there; back to {old}");
                let _ = save_address(&data, old);
                *self.address.lock() = old;
                let back = self.reopen(old).await;
                Err(ControlError::new(
                    ErrorCode::Unavailable,
                    match back {
                        Ok(()) => format!("cannot move the cluster member to {new}: {e}; it stays at {old}"),
                        Err(e2) => format!(
                            "cannot move the cluster member to {new}: {e}; reopening it at {old} failed too: {e2}"
                        ),
                    },
                ))
            }
        }
    }

    /// Opens the member on `addr` once the stopped one's listeners let go of its ports.
    async fn reopen(&self, addr: SocketAddr) -> std::result::Result<(), String> {
        let t = std::time::Instant::now();
        while !ports_free(addr) && t.elapsed() < PORT_FREE_WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cfg = self.node_cfg().map_err(|e| e.to_string())?;
        let m = ClusterNode::open(cfg).await.map_err(|e| e.to_string())?;
        *self.member.lock() = Some(m);
        Ok(())
    }
}
