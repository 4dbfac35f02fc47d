//! The live console of a VM another member runs, through this node's API: a
//! [`control::ConsolePort`] whose reads ([`Call::ConsoleSince`]) and typing
//! ([`Call::ConsoleInput`]) are peer calls to that member, which answers from its own port
//! (checking the role again). Without a wake-up from the other member the API's socket polls
//! (every 100 ms), so each open console costs about ten small calls a second while it is open.
//!
//! Bytes travel as hex (JSON has no bytes): one stream's answer is capped at
//! [`MAX_STREAM_BYTES`] so both streams fit in one reply of the member transport; a guest that
//! writes more than that between two polls loses its oldest bytes on this view only (its own
//! log keeps them).

use std::sync::Arc;
use std::time::Duration;

use cluster::NodeId;
use control::{Actor, ConsoleChunk, ConsolePlace, ControlError, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::takeover::peer::{self, Answer, Call};
use crate::NodeInner;

/// Newest bytes of one output stream in one answer.
pub(crate) const MAX_STREAM_BYTES: usize = 48 << 10;
/// Bound on one read or one keystroke message to the other member.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One stream's new output, as it crosses between members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Chunk {
    hex: String,
    log_id: u64,
    seen: u64,
}

/// A console port on member `to` for VM `name`.
pub(crate) struct RemotePort {
    pub(crate) inner: Arc<NodeInner>,
    pub(crate) to: NodeId,
    pub(crate) member: String,
    pub(crate) actor: Actor,
    pub(crate) name: String,
    pub(crate) can_type: bool,
    pub(crate) rt: tokio::runtime::Handle,
}

impl RemotePort {
    /// `call` to the member, from the blocking thread the API runs port calls on.
    fn ask(&self, call: Call) -> Result<Answer, ControlError> {
        let m = self.inner.cluster.member()?;
        self.rt
            .block_on(peer::call(&m, self.to, &call, CALL_TIMEOUT))
            .map_err(|e| {
                ControlError::new(
                    e.code,
                    format!(
                        "VM {}'s console on member {}: {}",
                        self.name, self.member, e.message
                    ),
                )
            })
    }
}

impl control::ConsolePort for RemotePort {
    fn output(&self) -> Result<Vec<Vec<u8>>, ControlError> {
        let chunks = self
            .output_since(&[], MAX_STREAM_BYTES)
            .unwrap_or_else(|| Err(ControlError::internal("no console reads")))?;
        Ok(chunks.into_iter().map(|c| c.bytes).collect())
    }

    fn input(&self, bytes: &[u8]) -> Result<usize, ControlError> {
        if !self.can_type {
            return Err(ControlError::new(
                ErrorCode::Forbidden,
                "this attachment may not type",
            ));
        }
        match self.ask(Call::ConsoleInput {
            actor: self.actor.clone(),
            name: self.name.clone(),
            hex: to_hex(bytes),
        })? {
            Answer::Typed(n) => Ok(n),
            _ => Err(ControlError::internal(
                "the member answered typing with something else",
            )),
        }
    }

    fn can_type(&self) -> bool {
        self.can_type
    }

    fn output_since(
        &self,
        seen: &[ConsolePlace],
        max_bytes: usize,
    ) -> Option<Result<Vec<ConsoleChunk>, ControlError>> {
        let call = Call::ConsoleSince {
            actor: self.actor.clone(),
            name: self.name.clone(),
            seen: seen.iter().map(|p| (p.log_id, p.seen)).collect(),
            max_bytes: max_bytes.min(MAX_STREAM_BYTES) as u64,
        };
        Some(match self.ask(call) {
            Ok(Answer::Console(chunks)) => chunks
                .into_iter()
                .map(|c| {
                    Ok(ConsoleChunk {
                        bytes: from_hex(&c.hex)?,
                        place: ConsolePlace {
                            log_id: c.log_id,
                            seen: c.seen,
                        },
                    })
                })
                .collect(),
            Ok(_) => Err(ControlError::internal(
                "the member answered a console read with something else",
            )),
            Err(e) => Err(e),
        })
    }
}

/// The receiving side: VM `name`'s port here for `actor` (as a member passed it on), role
/// checked here again.
fn port_here(
    inner: &Arc<NodeInner>,
    from: NodeId,
    actor: Actor,
    name: &str,
) -> Result<Arc<dyn control::ConsolePort>, ControlError> {
    let (ctl, actor) = super::as_peer(inner, from, actor)?;
    control::Controller::console_port(&ctl, actor, name)
}

/// Answers [`Call::ConsoleSince`].
pub(crate) async fn since_here(
    inner: &Arc<NodeInner>,
    from: NodeId,
    actor: Actor,
    name: &str,
    seen: Vec<(u64, u64)>,
    max_bytes: u64,
) -> Result<Answer, ControlError> {
    let port = port_here(inner, from, actor, name)?;
    let max = (max_bytes as usize).min(MAX_STREAM_BYTES);
    let places: Vec<ConsolePlace> = seen
        .into_iter()
        .map(|(log_id, seen)| ConsolePlace { log_id, seen })
        .collect();
    let chunks = tokio::task::spawn_blocking(move || match port.output_since(&places, max) {
        Some(r) => r,
        // A port without places: the whole (capped) logs, read as from the start.
        None => port.output().map(|logs| {
            logs.into_iter()
                .map(|b| {
                    let seen = b.len() as u64;
                    let from = b.len().saturating_sub(max);
                    ConsoleChunk {
                        bytes: b[from..].to_vec(),
                        place: ConsolePlace { log_id: 0, seen },
                    }
                })
                .collect()
        }),
    })
    .await
    .map_err(|e| ControlError::internal(e.to_string()))??;
    Ok(Answer::Console(
        chunks
            .into_iter()
            .map(|c| Chunk {
                hex: to_hex(&c.bytes),
                log_id: c.place.log_id,
                seen: c.place.seen,
            })
            .collect(),
    ))
}

/// Answers [`Call::ConsoleInput`].
pub(crate) async fn input_here(
    inner: &Arc<NodeInner>,
    from: NodeId,
    actor: Actor,
    name: &str,
    hex: &str,
) -> Result<Answer, ControlError> {
    let port = port_here(inner, from, actor, name)?;
    let bytes = from_hex(hex)?;
    let n = tokio::task::spawn_blocking(move || port.input(&bytes))
        .await
        .map_err(|e| ControlError::internal(e.to_string()))??;
    Ok(Answer::Typed(n))
}

fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

fn from_hex(s: &str) -> Result<Vec<u8>, ControlError> {
    let bad = || ControlError::invalid("console bytes from a member are not hex");
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
            Ok((d(p[0])? * 16 + d(p[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_every_byte_and_refuses_junk() {
        let all: Vec<u8> = (0..=255u8).collect();
        let h = to_hex(&all);
        assert_eq!(h.len(), 512);
        assert_eq!(from_hex(&h).unwrap(), all);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        assert_eq!(from_hex("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn two_capped_streams_fit_one_member_reply() {
        let c = Chunk {
            hex: to_hex(&vec![0xff; MAX_STREAM_BYTES]),
            log_id: u64::MAX,
            seen: u64::MAX,
        };
        let answer: Result<Answer, ControlError> = Ok(Answer::Console(vec![c.clone(), c]));
        let len = serde_json::to_vec(&answer).unwrap().len();
        assert!(len < cluster::MAX_APP_BYTES, "{len} bytes");
    }
}
