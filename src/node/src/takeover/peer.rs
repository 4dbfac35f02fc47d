//! The node's calls to other members over the cluster's member transport
//! (`ClusterNode::call_app`): a member's real lease state for `cluster status`, and the steps
//! of a planned virtual disk move (`cairn vdisk takeover`, see `super::manual`) — forwarding the
//! request to the disk's holder, telling the target the holder stopped serving, and asking it
//! whether it serves the disk yet — the same for a planned move of a VM with its disks
//! (`cairn vm move`, see `super::vm_move`), which chunks of the caller's disk a member holds
//! (the up-to-date check before a move, `super::copies`), each member's chunks left on a
//! draining member, a draining member's own progress, and each member's unsettled moves
//! involving a member about to be removed. And the requests a member's API takes about
//! another member's virtual disks and VMs, with the pages of each member's own lists
//! (`crate::forward`).
//!
//! Messages are JSON, bounded by `cluster::MAX_APP_BYTES`. Must never: answer a call that
//! changes anything without checking it against the cluster state, or wait unbounded.

use std::sync::{Arc, Weak};
use std::time::Duration;

use cluster::{ClusterNode, NodeId};
use control::{ControlError, ErrorCode, VdiskView, VmView};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::NodeInner;

/// How long `cluster status` waits for a member's lease state.
pub(crate) const LEASE_ASK_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a forwarded move may take on its holder (it waits for the target to serve).
pub(crate) const MOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the short calls of a move (release, serving probe).
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A call from one member's node to another's.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    /// This member's isolation lease, as its own `cluster status` shows it.
    Lease,
    /// Move virtual disk `name` (held by the receiver) to member `to` (`super::manual`).
    MoveOut {
        name: String,
        to: NodeId,
        force: bool,
    },
    /// The caller, the old owner of virtual disk `id` (now assigned to the receiver), stopped
    /// serving it and flushed it: no isolation lease hold is needed before adopting it.
    Released { id: String },
    /// Whether the receiver serves virtual disk `name` (adopted and assigned to it).
    Serving { name: String },
    /// How many of the receiver's chunks are still on member `id`'s disks (a drain).
    DrainLeft { id: NodeId },
    /// Move VM `name` (defined on the receiver) with its disks to member `to`
    /// (`super::vm_move`).
    MoveVm { name: String, to: NodeId },
    /// The receiver's view of VM `name`, if it is defined there and assigned to it.
    VmDefined { name: String },
    /// Which chunks of the caller's virtual disk `vdisk` (its engine id) the receiver holds,
    /// from chunk `from_chunk` on (`super::copies`, before a planned move).
    HeldChunks { vdisk: u64, from_chunk: u64 },
    /// The receiver's own drain: chunks of every node still on its disks, progress, time left
    /// (`cluster status` on any member).
    DrainProgress,
    /// The receiver's planned moves not settled yet that involve member `member`
    /// (`super::settles::Settles::involving`: before that member is removed).
    PendingMoves { member: NodeId },
    /// The receiver's own figures (capacity, disks, memory) for the cluster-wide lists.
    Stats,
    /// Carry out `req` here for `actor`, who asked it through the caller's API: the caller
    /// found the virtual disk or VM it names assigned to the receiver (`crate::forward`).
    Execute {
        actor: control::Actor,
        req: control::Request,
    },
    /// A page of the receiver's own virtual disks (`vms`: its VMs), by name after `after`,
    /// for the caller's API lists (`crate::forward`).
    ListPage {
        actor: control::Actor,
        vms: bool,
        after: Option<String>,
    },
    /// VM `name`'s console output after the reader's places `seen` (log id, bytes seen), at
    /// most `max_bytes` per stream, for the caller's API (`crate::forward::console`).
    ConsoleSince {
        actor: control::Actor,
        name: String,
        seen: Vec<(u64, u64)>,
        max_bytes: u64,
    },
    /// Type `hex` (bytes, hex) on VM `name`'s serial console.
    ConsoleInput {
        actor: control::Actor,
        name: String,
        hex: String,
    },
}

/// The answer to a [`Call`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Lease {
        state: String,
    },
    Vdisk(Option<VdiskView>),
    Vm(Option<Box<VmView>>),
    Done,
    Left(u64),
    Held(super::copies::HeldPage),
    Drain(control::DrainProgressView),
    /// Unsettled planned moves, each described.
    Pending(Vec<String>),
    Stats(Box<control::MemberStatsView>),
    Executed(Box<control::Reply>),
    /// Virtual disks (or VMs) in name order; `more`: the list goes on after the last.
    VdiskPage {
        items: Vec<VdiskView>,
        more: bool,
    },
    VmPage {
        items: Vec<VmView>,
        more: bool,
    },
    Console(Vec<crate::forward::console::Chunk>),
    /// Console bytes accepted.
    Typed(usize),
}

struct Handler {
    inner: Weak<NodeInner>,
}

impl cluster::AppHandler for Handler {
    fn handle(
        &self,
        from: NodeId,
        req: Vec<u8>,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, String>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let inner = inner.upgrade().ok_or("node stopping")?;
            let call: Call =
                serde_json::from_slice(&req).map_err(|e| format!("unreadable call: {e}"))?;
            let out: Result<Answer, ControlError> = answer(&inner, from, call).await;
            serde_json::to_vec(&out).map_err(|e| e.to_string())
        })
    }
}

async fn answer(inner: &Arc<NodeInner>, from: NodeId, call: Call) -> Result<Answer, ControlError> {
    match call {
        Call::Lease => Ok(Answer::Lease {
            state: own_lease_state(inner).to_string(),
        }),
        Call::MoveOut { name, to, force } => {
            tracing::info!(vdisk = %name, to, asked_by = from, "planned move asked by a member");
            super::manual::move_out(inner, &name, to, force)
                .await
                .map(|v| Answer::Vdisk(Some(v)))
        }
        Call::Released { id } => {
            let m = inner.cluster.member()?;
            let me = m.id();
            let ours = m
                .read_fresh(|s| s.vdisks.contains_key(&id) && cluster::vdisk_owner(&id) == Some(me))
                .await
                .map_err(|e| ControlError::new(ErrorCode::Unavailable, e.to_string()))?;
            if !ours {
                return Err(ControlError::new(
                    ErrorCode::Conflict,
                    format!("virtual disk {id} is not assigned to this node"),
                ));
            }
            inner.lease.release(&id);
            Ok(Answer::Done)
        }
        Call::Serving { name } => Ok(Answer::Vdisk(serving(inner, &name))),
        Call::MoveVm { name, to } => {
            tracing::info!(vm = %name, to, asked_by = from, "planned VM move asked by a member");
            super::vm_move::move_vm_out(inner, &name, to)
                .await
                .map(|v| Answer::Vm(Some(Box::new(v))))
        }
        Call::VmDefined { name } => {
            let m = inner.cluster.member()?;
            let me = m.id();
            let ours = m.read(|s| s.vms.values().any(|v| v.name == name && v.node == Some(me)));
            let defined = inner.vms.defined().iter().any(|(n, _)| *n == name);
            Ok(Answer::Vm(if ours && defined {
                inner.vms.get_view(&name).await.ok().map(Box::new)
            } else {
                None
            }))
        }
        Call::HeldChunks { vdisk, from_chunk } => {
            super::copies::held_page(inner, from, vdisk, from_chunk).map(Answer::Held)
        }
        Call::DrainProgress => Ok(Answer::Drain(crate::clusterctl::own_drain_progress(inner))),
        Call::Stats => Ok(Answer::Stats(Box::new(crate::clusterctl::own_stats(inner)))),
        Call::Execute { actor, req } => crate::forward::execute_here(inner, from, actor, req)
            .await
            .map(|r| Answer::Executed(Box::new(r))),
        Call::ConsoleSince {
            actor,
            name,
            seen,
            max_bytes,
        } => crate::forward::console::since_here(inner, from, actor, &name, seen, max_bytes).await,
        Call::ConsoleInput { actor, name, hex } => {
            crate::forward::console::input_here(inner, from, actor, &name, &hex).await
        }
        Call::ListPage { actor, vms, after } => {
            crate::forward::list_page(inner, from, actor, vms, after.as_deref()).await
        }
        Call::PendingMoves { member } => {
            let me = inner.cluster.member()?.id();
            Ok(Answer::Pending(inner.cluster.settles.involving(me, member)))
        }
        Call::DrainLeft { id } => {
            let me = inner.cluster.member()?.id();
            let left = crate::clusterctl::drain_left_here(inner, id, String::new(), me);
            Ok(Answer::Left(left.chunks_left + left.hosted_chunks_left))
        }
    }
}

/// This node's view of virtual disk `name` when it serves it: in the engine and assigned here,
/// and not a copy from before it left that is still to be replaced
/// (`super::gather::not_adopted_yet`).
pub(crate) fn serving(inner: &NodeInner, name: &str) -> Option<VdiskView> {
    let m = inner.cluster.member().ok()?;
    let me = m.id();
    let ours = m.read(|s| {
        s.vdisks
            .values()
            .any(|d| d.name == name && cluster::vdisk_owner(&d.id) == Some(me))
    });
    if !ours || super::gather::not_adopted_yet(inner, name).is_some() {
        return None;
    }
    inner.engine.vdisk(name).ok().map(crate::convert::vdisk)
}

/// This node's lease as `cluster status` names it: `held`, `expired` or `not_needed`.
pub(crate) fn own_lease_state(inner: &NodeInner) -> &'static str {
    let st = inner.lease.state();
    match (st.needed, st.remaining) {
        (false, _) => "not_needed",
        (true, Some(_)) => "held",
        (true, None) => "expired",
    }
}

/// Send `call` to member `id`, waiting at most `timeout`. Err(Unavailable) when it does not
/// answer; the member's own refusal as it gave it.
pub(crate) async fn call(
    m: &ClusterNode,
    id: NodeId,
    call: &Call,
    timeout: Duration,
) -> Result<Answer, ControlError> {
    let req = serde_json::to_vec(call).map_err(|e| ControlError::internal(e.to_string()))?;
    let out = match tokio::time::timeout(timeout, m.call_app(id, req, timeout)).await {
        Ok(Ok(out)) => out,
        Ok(Err(cluster::Error::Rejected(why))) => {
            return Err(ControlError::new(
                ErrorCode::Unavailable,
                format!("member {id} refused the call: {why}"),
            ))
        }
        Ok(Err(e)) => {
            return Err(ControlError::new(
                ErrorCode::Unavailable,
                format!("member {id} did not answer: {e}"),
            ))
        }
        Err(_) => {
            return Err(ControlError::new(
                ErrorCode::Unavailable,
                format!(
                    "member {id} did not answer within {} ms",
                    timeout.as_millis()
                ),
            ))
        }
    };
    serde_json::from_slice::<Result<Answer, ControlError>>(&out).map_err(|e| {
        ControlError::new(
            ErrorCode::Unavailable,
            format!("member {id} answered something unreadable: {e}"),
        )
    })?
}

/// Whether member `id` answers a call within `timeout` at all: with an answer, or with a
/// refusal (a witness takes no node calls and refuses them), as opposed to no answer.
pub(crate) async fn answers(m: &ClusterNode, id: NodeId, timeout: Duration) -> bool {
    let Ok(req) = serde_json::to_vec(&Call::Lease) else {
        return false;
    };
    match tokio::time::timeout(timeout, m.call_app(id, req, timeout)).await {
        Ok(Ok(_)) | Ok(Err(cluster::Error::Rejected(_))) => true,
        Ok(Err(_)) | Err(_) => false,
    }
}

/// Keeps this node's handler registered on its cluster member (a member object appears on
/// create, join or restart).
pub(crate) async fn run(inner: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let mut last: Option<Arc<ClusterNode>> = None;
    loop {
        if let Ok(m) = inner.cluster.member() {
            if !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &m)) {
                m.set_app_handler(Arc::new(Handler {
                    inner: Arc::downgrade(&inner),
                }));
                last = Some(m);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_answers_round_trip_and_errors_keep_their_code() {
        let c = Call::MoveOut {
            name: "t".into(),
            to: 2,
            force: true,
        };
        let j = serde_json::to_vec(&c).unwrap();
        let back: Call = serde_json::from_slice(&j).unwrap();
        assert!(matches!(back, Call::MoveOut { name, to: 2, force: true } if name == "t"));
        let refused: Result<Answer, ControlError> =
            Err(ControlError::new(ErrorCode::Conflict, "in use"));
        let j = serde_json::to_vec(&refused).unwrap();
        let back: Result<Answer, ControlError> = serde_json::from_slice(&j).unwrap();
        assert_eq!(back.unwrap_err().code, ErrorCode::Conflict);
    }
}
