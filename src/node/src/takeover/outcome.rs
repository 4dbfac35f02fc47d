//! The outcome of a planned move's commit (`Command::MoveVdisk`, `Command::MoveVm`), which the
//! mover must know before it acts on it: committed, it no longer owns the disks (or the VM)
//! and hands them over; not committed, it keeps them.
//!
//! A proposal can end without an answer (a leader change, a forward that timed out, no quorum
//! in time) after which its entry may still commit: a copy on its way to a leader, an entry a
//! leader appended before it heard from a quorum. A fresh read right after proves nothing
//! (the entry can commit after it). So the move is proposed under a request id of its own
//! (`Command::Once`) and an unknown outcome is settled by the cluster (`ClusterNode::settle`):
//! a no-op under the same id commits, and the state machine applies whichever of the two comes
//! first and never the other. The fence's answer is the truth: the move's placement version
//! (or rejection) if the move applied, the no-op's `Ok` if it never will.
//!
//! The cluster remembers the answers of the last `cluster::dedup::MAX_REMEMBERED` tagged
//! commands only. A node down (or unable to reach a quorum) while more than that many commit
//! gets the no-op's `Ok` from the fence even if its move applied long ago: the fence still
//! settles (no copy of the move can apply after it), but its `Ok` no longer says "not moved".
//! So an `Ok` is checked against where the cluster assigns what moved, read after the fence
//! ([`Moved::still_on`]): still on the mover, it was not moved (or was moved back since: the
//! mover keeps it either way); assigned elsewhere (or gone), the mover keeps nothing and hands
//! it over as moved — whatever moved it, this node no longer owns it. Keeping the answers of
//! claimed ids in the cluster instead would need the claim replicated before the move (a new
//! command, so a format change) and a release after, and the claim could outlive its node.
//!
//! While even the fence gets no answer (no quorum), the outcome stays unknown: the mover keeps
//! what it froze (the VM claimed, the disk not exportable here) and [`settle_later`] asks again
//! in the background until the cluster answers, then finishes the move or gives it up. The
//! unsettled move is kept in the node's data folder meanwhile (`super::settles`), so a restart
//! of the node keeps the claim and settles it again.
//!
//! Test hook (debug builds only: a release build never reads it): `CAIRN_TEST_MOVE_FAULTS`, a
//! comma-separated list consumed one entry per move commit of this process: `late` (the
//! proposal is held back and reported as unanswered; the held copy is proposed only once the
//! mover settled the outcome — a copy delayed in the network past the mover's decision),
//! `lost-reply` (the proposal commits, its answer is dropped), `unknown` (the proposal is
//! dropped and its outcome reported unknown at once, unsettled: the mover keeps the move
//! pending), `none`. And `CAIRN_TEST_SETTLE_HOLD`, a file path: while that file exists, no
//! settle attempt asks the cluster (each stays unknown), so a test can restart the mover while
//! a move is pending.
//!
//! Must never: act on a guess — hand over what did not move, or keep what did.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{ClusterNode, Command, CommandResult};

use super::settles::Moved;
use super::PROPOSE_TIMEOUT;

/// How long a mover settles an unknown outcome before it answers its caller (and goes on in
/// the background): one full proposal deadline and a little.
const SETTLE_WAIT: Duration = Duration::from_secs(20);
/// How long a mover waits for its own view to show a move the leader answered as applied.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Pause between two attempts to settle.
const SETTLE_AGAIN: Duration = Duration::from_secs(1);
/// Pause between two background attempts.
const SETTLE_LATER_AGAIN: Duration = Duration::from_secs(3);

/// What became of a move's proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Committed and applied: the placement version of the move.
    Moved(u64),
    /// Applied and refused by the state machine: nothing changed.
    Refused(String),
    /// Never applies (it failed before any copy could reach a leader, or was fenced): why the
    /// proposal failed.
    NotMoved(String),
    /// Not known yet: `request` settles it ([`settle`], [`settle_later`]).
    Unknown { request: String, why: String },
}

/// Commits move `cmd` of `moved` away from this node (`from`) and finds out what became of it
/// (see the module docs). Waits at most about `PROPOSE_TIMEOUT + SETTLE_WAIT`.
pub(crate) async fn commit(
    m: &Arc<ClusterNode>,
    cmd: Command,
    from: u64,
    moved: &Moved,
) -> Outcome {
    let request = ClusterNode::request_id();
    let tagged = Command::Once {
        request: request.clone(),
        cmd: Box::new(cmd),
    };
    let fault = next_fault();
    let mut held = None;
    let answered = match fault {
        Fault::Late => {
            tracing::warn!("fault injection: holding the move's proposal back");
            held = Some(tagged);
            Err("no answer (fault injection: the proposal was held back)".to_string())
        }
        Fault::Unknown => {
            tracing::warn!("fault injection: the move's proposal is dropped, its outcome unknown");
            return Outcome::Unknown {
                request,
                why: "no answer (fault injection: the proposal was dropped)".to_string(),
            };
        }
        Fault::LostReply => {
            let r = tokio::time::timeout(PROPOSE_TIMEOUT, m.propose(tagged)).await;
            tracing::warn!(answer = ?r, "fault injection: the move's answer is dropped");
            Err("the answer was lost (fault injection)".to_string())
        }
        Fault::None => match tokio::time::timeout(PROPOSE_TIMEOUT, m.propose(tagged)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no commit in time".to_string()),
        },
    };
    let outcome = match answered {
        Ok(CommandResult::PlacementVersion(epoch)) => {
            seen_here(m, &request).await;
            Outcome::Moved(epoch)
        }
        Ok(CommandResult::Rejected(why)) => Outcome::Refused(why),
        // Not an answer a move gives: let the cluster say what it recorded.
        Ok(other) => {
            let why = format!("unexpected answer {other:?}");
            settle(m, &request, why, from, moved).await
        }
        Err(why) => settle(m, &request, why, from, moved).await,
    };
    if let Some(cmd) = held {
        let m = m.clone();
        tokio::spawn(async move {
            let r = m.propose(cmd).await;
            tracing::warn!(answer = ?r, "fault injection: the held-back move proposal was answered");
        });
    }
    outcome
}

/// A move the leader answered as applied: waits (bounded) until this member applied it too.
/// The answer comes from the leader; a mover that follows may not have applied the move yet,
/// and what it does next reads its own view (an export of the disk it handed over must be
/// refused as "served by" the target, its stale copy dropped).
async fn seen_here(m: &ClusterNode, request: &str) {
    if !m.applied_here(request, APPLY_WAIT).await {
        tracing::warn!(
            request,
            wait_s = APPLY_WAIT.as_secs(),
            "a committed move is not applied on this member yet: it hands over regardless"
        );
    }
}

/// One attempt to settle `request`, a move of `moved` from member `from` (see the module
/// docs); `why` the proposal's failure.
async fn settle_once(
    m: &ClusterNode,
    request: &str,
    why: &str,
    from: u64,
    moved: &Moved,
) -> Outcome {
    if settle_held() {
        return Outcome::Unknown {
            request: request.to_string(),
            why: format!("{why}; not settled yet (fault injection: settling is held)"),
        };
    }
    match m.settle(request).await {
        Ok(CommandResult::PlacementVersion(epoch)) => {
            seen_here(m, request).await;
            Outcome::Moved(epoch)
        }
        Ok(CommandResult::Rejected(r)) => Outcome::Refused(r),
        // The fence applied first, or the move's own answer was forgotten (see the module
        // docs): where the cluster assigns it now tells, read after the fence.
        Ok(CommandResult::Ok) => match m
            .read_fresh(|s| (moved.still_on(s, from), s.placement.version))
            .await
        {
            Ok((true, _)) => Outcome::NotMoved(why.to_string()),
            Ok((false, epoch)) => {
                tracing::warn!(
                    request,
                    moved = ?moved,
                    epoch,
                    "a move's outcome is settled, but the cluster no longer assigns what it \
                     moves to this node (its answer to the move is forgotten, or it was taken \
                     over meanwhile): handed over"
                );
                Outcome::Moved(epoch)
            }
            Err(e) => Outcome::Unknown {
                request: request.to_string(),
                why: format!("{why}; settled, but where the cluster assigns it now: {e}"),
            },
        },
        Ok(other) => Outcome::Unknown {
            request: request.to_string(),
            why: format!("{why}; the cluster recorded an unexpected answer {other:?}"),
        },
        Err(e) => Outcome::Unknown {
            request: request.to_string(),
            why: format!("{why}; settling it: {e}"),
        },
    }
}

/// Settles `request` (a move of `moved` from `from`) within [`SETTLE_WAIT`]; still `Unknown`
/// if the cluster did not answer.
pub(crate) async fn settle(
    m: &ClusterNode,
    request: &str,
    why: String,
    from: u64,
    moved: &Moved,
) -> Outcome {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let o = settle_once(m, request, &why, from, moved).await;
        if !matches!(o, Outcome::Unknown { .. }) || Instant::now() >= deadline {
            if let Outcome::Unknown { why, .. } = &o {
                tracing::warn!(request, why = %why, "a move's outcome is still unknown");
            }
            return o;
        }
        tokio::time::sleep(SETTLE_AGAIN).await;
    }
}

/// Settles `request` (a move of `moved` from `from`) in the background, however long the
/// cluster takes, then runs `then` with the outcome (never `Unknown`). Gives up only when this
/// member's raft stops (the node shuts down).
pub(crate) fn settle_later<F, Fut>(
    m: Arc<ClusterNode>,
    request: String,
    why: String,
    (from, moved): (u64, Moved),
    then: F,
) where
    F: FnOnce(Outcome) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            if m.is_stopped() {
                tracing::warn!(request = %request, "node stopping: a move's outcome stays unsettled");
                return;
            }
            let o = settle_once(&m, &request, &why, from, &moved).await;
            if !matches!(o, Outcome::Unknown { .. }) {
                tracing::warn!(request = %request, outcome = ?o, "a move's unknown outcome is settled");
                then(o).await;
                return;
            }
            tokio::time::sleep(SETTLE_LATER_AGAIN).await;
        }
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Late,
    LostReply,
    Unknown,
}

/// The faults left to inject (`CAIRN_TEST_MOVE_FAULTS`), read on first use.
static FAULTS: Mutex<Option<VecDeque<Fault>>> = Mutex::new(None);

fn parse_faults(v: &str) -> VecDeque<Fault> {
    v.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| match x {
            "late" => Fault::Late,
            "lost-reply" => Fault::LostReply,
            "unknown" => Fault::Unknown,
            "none" => Fault::None,
            other => {
                tracing::warn!(fault = %other, "CAIRN_TEST_MOVE_FAULTS: unknown fault ignored");
                Fault::None
            }
        })
        .collect()
}

/// The faults a build injects: `CAIRN_TEST_MOVE_FAULTS` in a debug build (the tests run one);
/// none in a release build, whatever the environment says.
fn configured_faults() -> VecDeque<Fault> {
    if cfg!(debug_assertions) {
        std::env::var("CAIRN_TEST_MOVE_FAULTS")
            .map(|v| parse_faults(&v))
            .unwrap_or_default()
    } else {
        VecDeque::new()
    }
}

/// Whether settling is held (`CAIRN_TEST_SETTLE_HOLD`, debug builds only; see the module docs).
fn settle_held() -> bool {
    cfg!(debug_assertions)
        && std::env::var_os("CAIRN_TEST_SETTLE_HOLD")
            .is_some_and(|p| std::path::Path::new(&p).exists())
}

fn next_fault() -> Fault {
    let mut f = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    f.get_or_insert_with(configured_faults)
        .pop_front()
        .unwrap_or(Fault::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_in_order_and_unknown_ones_are_none() {
        assert_eq!(
            parse_faults(" late,lost-reply,,bogus,none,unknown"),
            VecDeque::from([
                Fault::Late,
                Fault::LostReply,
                Fault::None,
                Fault::None,
                Fault::Unknown
            ])
        );
        assert!(parse_faults("").is_empty());
    }
}
