//! The node's system log as the API serves it (`GET /api/v1/system/log`): the lines the process
//! running the node keeps in memory (the appliance's PID 1 and `cairn node` keep the newest
//! 2,000, see `init::log`), read through a [`LogSource`] that process hands in with the
//! [`crate::ApiConfig`]. The API only reads the log; a node started without a source (tests, the
//! API bench) answers 404. Readers follow it forward (`after`) or page back (`before`); the
//! largest page (1,000) is half the ring, so paging back is how the whole ring is read.

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

/// Which lines to read: the newest `max` with `after < seq < before`, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRange {
    pub after: u64,
    pub before: u64,
    pub max: usize,
}

/// What a [`LogSource`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    /// Oldest first.
    pub lines: Vec<LogLine>,
    /// How many lines the source keeps that are older than the first of `lines` (when there are
    /// none: older than the range's `before`), so a reader knows whether to page back.
    pub older: u64,
}

type ReadFn = dyn Fn(LogRange) -> LogRead + Send + Sync;

/// Where the API reads the system log (see [`LogRange`] and [`LogRead`]).
#[derive(Clone)]
pub struct LogSource(Arc<ReadFn>);

impl LogSource {
    pub fn new(read: impl Fn(LogRange) -> LogRead + Send + Sync + 'static) -> LogSource {
        LogSource(Arc::new(read))
    }

    /// A source over `lines` (oldest first, increasing `seq`), read as the node's ring is: for
    /// tests, and for a process that keeps its lines in a slice.
    pub fn read_slice(lines: &[LogLine], r: LogRange) -> LogRead {
        let inside: Vec<&LogLine> = lines
            .iter()
            .filter(|l| l.seq > r.after && l.seq < r.before)
            .collect();
        let page = &inside[inside.len().saturating_sub(r.max)..];
        let bound = page.first().map_or(r.before, |l| l.seq);
        LogRead {
            lines: page.iter().map(|l| (*l).clone()).collect(),
            older: lines.iter().filter(|l| l.seq < bound).count() as u64,
        }
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

/// A sequence number from the query (`name`), `min` or more.
fn seq_param(name: &str, v: &str, min: u64) -> Result<u64, ControlError> {
    v.parse().ok().filter(|n| *n >= min).ok_or_else(|| {
        ControlError::invalid(format!(
            "{name} must be a log line's sequence number ({min} or more), not {v:?}"
        ))
    })
}

/// `GET /system/log?after=N&limit=M` (or `before=N`): `{"lines": [...], "last_seq": S,
/// "skipped": K, "older": O, "boot_id": B}`, lines oldest first.
///
/// Following: poll again with `after=S` (from 0 if `boot_id` changed). When more than `limit`
/// lines are newer than `after`, the newest `limit` are given and `skipped` says how many older
/// ones were left out (also counting lines the ring dropped before anyone read them).
///
/// Paging back: `before=N` gives the newest `limit` lines older than line N, ending just
/// before it. `older` (in both) says how many kept lines are older than the first one given,
/// so `before=<first seq>` while it is above 0 reads the whole ring, a page at a time.
pub(crate) fn page(
    source: Option<&LogSource>,
    q: &[(String, String)],
) -> Result<Value, ControlError> {
    let (limit, _) = crate::http::paging(q)?;
    let (mut after, mut before) = (None, None);
    for (k, v) in q {
        match k.as_str() {
            "after" => after = Some(seq_param("after", v, 0)?),
            "before" => before = Some(seq_param("before", v, 1)?),
            _ => {}
        }
    }
    if after.is_some() && before.is_some() {
        return Err(ControlError::invalid(
            "give after (lines newer than it) or before (lines older than it), not both",
        ));
    }
    let source = source.ok_or_else(|| {
        ControlError::not_found("this node keeps no system log (the appliance and `cairn node` do)")
    })?;
    let after = after.unwrap_or(0);
    let read = (source.0)(LogRange {
        after,
        before: before.unwrap_or(u64::MAX),
        max: limit,
    });
    let lines = read.lines;
    let last_seq = lines.last().map_or(after, |l| l.seq);
    // Paging back, the page ends just before `before`: nothing between is left out.
    let skipped = match before {
        Some(_) => 0,
        None => lines
            .first()
            .map_or(0, |l| l.seq.saturating_sub(after.saturating_add(1))),
    };
    Ok(json!({
        "lines": lines,
        "last_seq": last_seq,
        "skipped": skipped,
        "older": read.older,
        "boot_id": boot_id(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring that keeps lines `first..=last` (the ones before were dropped).
    fn kept(first: u64, last: u64) -> LogSource {
        let lines: Vec<LogLine> = (first..=last)
            .map(|seq| LogLine {
                seq,
                unix_ms: 1000 + seq,
                text: format!("line {seq}"),
            })
            .collect();
        LogSource::new(move |r| LogSource::read_slice(&lines, r))
    }

    fn source(n: u64) -> LogSource {
        kept(1, n)
    }

    fn seqs(page: &Value) -> Vec<u64> {
        page["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect()
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
            json!({"lines": [], "last_seq": 5, "skipped": 0, "older": 5, "boot_id": boot_id()})
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
        assert_eq!(last_two["older"], 3);
    }

    #[test]
    fn paging_back_reads_every_kept_line_once() {
        // The ring dropped lines 1..=500 and keeps 2,000: more than one page of the largest size.
        let s = kept(501, 2500);
        let newest = page(Some(&s), &q(&[("limit", "1000")])).unwrap();
        assert_eq!(seqs(&newest), (1501..=2500).collect::<Vec<_>>());
        assert_eq!(
            (newest["skipped"].clone(), newest["older"].clone()),
            (json!(1500), json!(1000))
        );
        // Back a page at a time from the first line held, until nothing older is kept.
        let mut all = seqs(&newest);
        let mut pages = 1;
        let mut older = newest["older"].as_u64().unwrap();
        while older > 0 {
            let before = all[0].to_string();
            let p = page(Some(&s), &q(&[("before", &before), ("limit", "300")])).unwrap();
            let got = seqs(&p);
            // The newest lines before it, oldest first, ending just before it.
            assert_eq!(got.last().map(|l| l + 1), Some(all[0]), "{p}");
            assert!(got.windows(2).all(|w| w[0] + 1 == w[1]), "{p}");
            assert_eq!(p["skipped"], 0);
            older = p["older"].as_u64().unwrap();
            assert_eq!(older, got[0] - 501, "{p}");
            all.splice(0..0, got);
            pages += 1;
        }
        assert_eq!(all, (501..=2500).collect::<Vec<_>>());
        assert_eq!(pages, 1 + 4, "1,000 lines back in pages of 300");
        // Before the oldest kept line, or before one long gone: nothing, nothing older.
        for before in ["501", "7"] {
            let p = page(Some(&s), &q(&[("before", before)])).unwrap();
            assert_eq!(
                (seqs(&p), p["older"].clone()),
                (vec![], json!(0)),
                "{before}"
            );
        }
        // Before a line not written yet: the newest page.
        let p = page(Some(&s), &q(&[("before", "99999"), ("limit", "2")])).unwrap();
        assert_eq!(seqs(&p), [2499, 2500]);
        assert_eq!(p["older"], 1998);
    }

    #[test]
    fn bad_input_and_no_source_are_explained() {
        let s = source(1);
        for bad in ["-1", "x", "1.5", "99999999999999999999"] {
            let e = page(Some(&s), &q(&[("after", bad)])).unwrap_err();
            assert_eq!(e.code, control::ErrorCode::InvalidArgument, "{bad}");
            assert!(e.message.contains("after must be"), "{e:?}");
        }
        for bad in ["0", "-1", "x", "99999999999999999999"] {
            let e = page(Some(&s), &q(&[("before", bad)])).unwrap_err();
            assert_eq!(e.code, control::ErrorCode::InvalidArgument, "{bad}");
            assert!(e.message.contains("before must be"), "{e:?}");
        }
        let e = page(Some(&s), &q(&[("after", "1"), ("before", "5")])).unwrap_err();
        assert_eq!(e.code, control::ErrorCode::InvalidArgument);
        assert!(e.message.contains("not both"), "{e:?}");
        let e = page(Some(&s), &q(&[("limit", "0")])).unwrap_err();
        assert_eq!(e.code, control::ErrorCode::InvalidArgument);
        let e = page(None, &q(&[])).unwrap_err();
        assert_eq!(e.code, control::ErrorCode::NotFound);
        assert!(e.message.contains("no system log"), "{e:?}");
    }
}
