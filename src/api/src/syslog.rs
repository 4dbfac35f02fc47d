//! The node's system log as the API serves it (`GET /api/v1/system/log`): the lines the process
//! running the node keeps in memory (the appliance's PID 1 and `cairn node` keep the newest
//! 2,000, see `init::log`), read through a [`LogSource`] that process hands in with the
//! [`crate::ApiConfig`]. The API only reads the log; a node started without a source (tests, the
//! API bench) answers 404.

use std::sync::Arc;

use control::ControlError;
use serde_json::{json, Value};

/// One line of the system log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// Increasing from 1 since the process started; readers ask for "everything after N".
    pub seq: u64,
    pub unix_ms: u64,
    pub text: String,
}

type ReadFn = dyn Fn(u64, usize) -> Vec<LogLine> + Send + Sync;

/// Where the API reads the system log: `read(after, max)` gives the newest `max` lines with a
/// sequence number above `after`, oldest first.
#[derive(Clone)]
pub struct LogSource(Arc<ReadFn>);

impl LogSource {
    pub fn new(read: impl Fn(u64, usize) -> Vec<LogLine> + Send + Sync + 'static) -> LogSource {
        LogSource(Arc::new(read))
    }
}

impl std::fmt::Debug for LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSource")
    }
}

/// Names this process's log: sequence numbers start again at 1 when the process running the
/// node starts again, so a reader that sees another `boot_id` starts over from `after=0`.
/// (The time this process first served its log, in ms, and its pid; unique across restarts.)
fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{ms:x}-{}", std::process::id())
    })
}

/// `GET /system/log?after=N&limit=M`: `{"lines": [...], "last_seq": S, "skipped": K,
/// "boot_id": B}`, lines oldest first; poll again with `after=S` (from 0 if `boot_id` changed). When more than `limit` lines are newer than `after`, the newest
/// `limit` are given and `skipped` says how many older ones were left out (also counting lines
/// the ring dropped before anyone read them).
pub(crate) fn page(
    source: Option<&LogSource>,
    q: &[(String, String)],
) -> Result<Value, ControlError> {
    let (limit, _) = crate::http::paging(q)?;
    let mut after = 0u64;
    for (k, v) in q {
        if k == "after" {
            after = v.parse().map_err(|_| {
                ControlError::invalid(format!(
                    "after must be a log line's sequence number (0 or more), not {v:?}"
                ))
            })?;
        }
    }
    let source = source.ok_or_else(|| {
        ControlError::not_found("this node keeps no system log (the appliance and `cairn node` do)")
    })?;
    let lines = (source.0)(after, limit);
    let last_seq = lines.last().map_or(after, |l| l.seq);
    let skipped = lines
        .first()
        .map_or(0, |l| l.seq.saturating_sub(after.saturating_add(1)));
    Ok(json!({"lines": lines, "last_seq": last_seq, "skipped": skipped, "boot_id": boot_id()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(n: u64) -> LogSource {
        LogSource::new(move |after, max| {
            let newer: Vec<LogLine> = (1..=n)
                .filter(|s| *s > after)
                .map(|seq| LogLine {
                    seq,
                    unix_ms: 1000 + seq,
                    text: format!("line {seq}"),
                })
                .collect();
            let skip = newer.len().saturating_sub(max);
            newer.into_iter().skip(skip).collect()
        })
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pages_follow_the_sequence() {
        let s = source(5);
        let all = page(Some(&s), &q(&[])).unwrap();
        assert_eq!(all["lines"].as_array().unwrap().len(), 5);
        assert_eq!(
            all["lines"][0],
            json!({"seq": 1, "unix_ms": 1001, "text": "line 1"})
        );
        assert_eq!(
            (all["last_seq"].clone(), all["skipped"].clone()),
            (json!(5), json!(0))
        );
        let newer = page(Some(&s), &q(&[("after", "3")])).unwrap();
        assert_eq!(newer["lines"][0]["seq"], 4);
        assert_eq!(newer["last_seq"], 5);
        // Nothing new: the cursor stays where it was.
        let none = page(Some(&s), &q(&[("after", "5")])).unwrap();
        assert_eq!(
            none,
            json!({"lines": [], "last_seq": 5, "skipped": 0, "boot_id": boot_id()})
        );
        // One process, one boot id; it names the process.
        assert_eq!(all["boot_id"], newer["boot_id"]);
        assert!(boot_id().ends_with(&format!("-{}", std::process::id())));
        // More than the limit: the newest, and how many were left out.
        let last_two = page(Some(&s), &q(&[("after", "0"), ("limit", "2")])).unwrap();
        assert_eq!(last_two["lines"][0]["seq"], 4);
        assert_eq!(
            (last_two["last_seq"].clone(), last_two["skipped"].clone()),
            (json!(5), json!(3))
        );
    }

    #[test]
    fn bad_input_and_no_source_are_explained() {
        let s = source(1);
        for bad in ["-1", "x", "1.5", "99999999999999999999"] {
            let e = page(Some(&s), &q(&[("after", bad)])).unwrap_err();
            assert_eq!(e.code, control::ErrorCode::InvalidArgument, "{bad}");
            assert!(e.message.contains("after must be"), "{e:?}");
        }
        let e = page(Some(&s), &q(&[("limit", "0")])).unwrap_err();
        assert_eq!(e.code, control::ErrorCode::InvalidArgument);
        let e = page(None, &q(&[])).unwrap_err();
        assert_eq!(e.code, control::ErrorCode::NotFound);
        assert!(e.message.contains("no system log"), "{e:?}");
    }
}
