//! `Idempotency-Key` on mutations: the same key from the same user with the same request returns
//! the stored response instead of acting twice; the same key with a different request is refused.
//! Entries live 24 h; at most `MAX_ENTRIES` are kept (oldest evicted).
//!
//! Answers are also appended to `state_dir/idempotency.jsonl` (one line each, synced before the
//! response leaves), so a client that retries after a node restart gets the first answer again
//! rather than a second create. The file is rewritten without expired or evicted entries when
//! it opens and whenever it holds twice the entries kept. Bounded: answers larger than
//! [`MAX_PERSISTED_BODY`] are remembered in memory only. A request that was still running when
//! the node stopped is not remembered (its outcome is unknown; a retry runs it again, and
//! named objects then answer `already_exists`).
//!
//! What it must never do: refuse to start or fail a request because the file cannot be read or
//! written (it is a safety net; problems are logged).

use crate::files::now_unix;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const TTL_SECS: u64 = 24 * 3600;
pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_KEY_LEN: usize = 128;
/// Largest stored answer written to the file (mutation answers are a few KiB).
pub const MAX_PERSISTED_BODY: usize = 64 << 10;
/// Largest line read back (a body escaped in JSON, plus the rest).
const MAX_LINE: usize = 4 * MAX_PERSISTED_BODY;

/// The `Idempotency-Key` of a request: absent, or 1..=[`MAX_KEY_LEN`] printable ASCII
/// characters. A key that is present but not that is refused, never taken as absent: the
/// client meant a retry to be safe, and acting twice would be the one wrong answer.
pub fn key_of(h: &http::HeaderMap) -> Result<Option<String>, control::ControlError> {
    let Some(v) = h.get("idempotency-key") else {
        return Ok(None);
    };
    let b = v.as_bytes();
    if b.is_empty() || b.len() > MAX_KEY_LEN || !b.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(control::ControlError::invalid(format!(
            "Idempotency-Key must be 1-{MAX_KEY_LEN} printable ASCII characters"
        )));
    }
    Ok(Some(String::from_utf8_lossy(b).into_owned()))
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub fingerprint: String,
    pub status: u16,
    pub body: bytes::Bytes,
}

/// One line of the file.
#[derive(Serialize, Deserialize)]
struct Line {
    user: String,
    key: String,
    first_unix: u64,
    fingerprint: String,
    status: u16,
    /// The answer's JSON text (empty for 204).
    body: String,
}

/// (user, key) -> (first seen, unix seconds; stored answer, None while the first request runs).
type Entries = HashMap<(String, String), (u64, Option<Stored>)>;

#[derive(Debug, Default)]
pub struct IdempotencyCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: Entries,
    /// None: memory only (unit tests).
    file: Option<PathBuf>,
    /// Lines in the file now (compacted when it reaches twice `MAX_ENTRIES`).
    lines: usize,
}

pub enum Lookup {
    /// Not seen: the caller runs the request and then calls `finish` (or `abandon`).
    Fresh,
    Replay(Stored),
    /// Same key, different request.
    Mismatch,
    /// Same key, the first request is still running.
    InFlight,
}

fn expired(first_unix: u64, now: u64) -> bool {
    now.saturating_sub(first_unix) >= TTL_SECS
}

/// Drop expired entries, then the oldest until there is room for one more.
fn make_room(m: &mut Entries, now: u64) {
    if m.len() < MAX_ENTRIES {
        return;
    }
    m.retain(|_, (t, _)| !expired(*t, now));
    while m.len() >= MAX_ENTRIES {
        let Some(k) = m
            .iter()
            .min_by_key(|(_, (t, _))| *t)
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        m.remove(&k);
    }
}

impl IdempotencyCache {
    /// Load the answers kept in `state_dir/idempotency.jsonl` (missing: none; unreadable
    /// lines are skipped) and rewrite the file with only the live ones.
    pub fn open(state_dir: &Path) -> IdempotencyCache {
        let file = state_dir.join("idempotency.jsonl");
        let now = now_unix();
        let mut map = Entries::new();
        match crate::files::read_optional(&file) {
            Ok(Some(bytes)) => {
                // Later lines win: a key reused after its entry expired was appended again.
                for l in bytes.split(|b| *b == b'\n') {
                    if l.is_empty() || l.len() > MAX_LINE {
                        continue;
                    }
                    let Ok(l) = serde_json::from_slice::<Line>(l) else {
                        continue;
                    };
                    if expired(l.first_unix, now) || l.key.len() > MAX_KEY_LEN {
                        continue;
                    }
                    map.remove(&(l.user.clone(), l.key.clone()));
                    make_room(&mut map, now);
                    let stored = Stored {
                        fingerprint: l.fingerprint,
                        status: l.status,
                        body: l.body.into_bytes().into(),
                    };
                    map.insert((l.user, l.key), (l.first_unix, Some(stored)));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("api: cannot read idempotency keys: {e}"),
        }
        let mut inner = Inner {
            map,
            file: Some(file),
            lines: 0,
        };
        inner.compact();
        IdempotencyCache {
            inner: Mutex::new(inner),
        }
    }

    pub fn begin(&self, user: &str, key: &str, fingerprint: &str) -> Lookup {
        let mut g = self.inner.lock();
        let now = now_unix();
        make_room(&mut g.map, now);
        let k = (user.to_string(), key.to_string());
        match g.map.get(&k) {
            Some((t, _)) if expired(*t, now) => {}
            Some((_, None)) => return Lookup::InFlight,
            Some((_, Some(s))) if s.fingerprint == fingerprint => return Lookup::Replay(s.clone()),
            Some((_, Some(_))) => return Lookup::Mismatch,
            None => {}
        }
        g.map.insert(k, (now, None));
        Lookup::Fresh
    }

    pub fn finish(&self, user: &str, key: &str, stored: Stored) {
        let mut g = self.inner.lock();
        let Some(e) = g.map.get_mut(&(user.to_string(), key.to_string())) else {
            return;
        };
        let first_unix = e.0;
        e.1 = Some(stored.clone());
        if stored.body.len() > MAX_PERSISTED_BODY {
            return;
        }
        let Ok(body) = String::from_utf8(stored.body.to_vec()) else {
            return;
        };
        let line = Line {
            user: user.to_string(),
            key: key.to_string(),
            first_unix,
            fingerprint: stored.fingerprint,
            status: stored.status,
            body,
        };
        g.append(&line);
    }

    pub fn abandon(&self, user: &str, key: &str) {
        self.inner
            .lock()
            .map
            .remove(&(user.to_string(), key.to_string()));
    }
}

impl Inner {
    /// Append one answer and sync it, so it survives a crash right after the response.
    fn append(&mut self, line: &Line) {
        let Some(file) = &self.file else { return };
        let mut b = serde_json::to_vec(line).unwrap_or_default();
        b.push(b'\n');
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(&b).and_then(|_| f.sync_data()));
        if let Err(e) = res {
            tracing::warn!("api: cannot save idempotency key: {e}");
            return;
        }
        self.lines += 1;
        if self.lines >= 2 * MAX_ENTRIES {
            self.compact();
        }
    }

    /// Rewrite the file with the answers kept now (oldest first).
    fn compact(&mut self) {
        let Some(file) = &self.file else { return };
        let mut live: Vec<_> = self
            .map
            .iter()
            .filter(|(_, (_, s))| {
                s.as_ref()
                    .is_some_and(|s| s.body.len() <= MAX_PERSISTED_BODY)
            })
            .collect();
        live.sort_by_key(|(_, (t, _))| *t);
        let mut out = Vec::new();
        let mut lines = 0;
        for ((user, key), (first_unix, s)) in live {
            let Some(s) = s else { continue };
            let Ok(body) = std::str::from_utf8(&s.body) else {
                continue;
            };
            let line = Line {
                user: user.clone(),
                key: key.clone(),
                first_unix: *first_unix,
                fingerprint: s.fingerprint.clone(),
                status: s.status,
                body: body.to_string(),
            };
            if let Ok(l) = serde_json::to_vec(&line) {
                out.extend_from_slice(&l);
                out.push(b'\n');
                lines += 1;
            }
        }
        match crate::files::write_atomic(file, &out) {
            Ok(()) => self.lines = lines,
            Err(e) => tracing::warn!("api: cannot rewrite idempotency keys: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_absent_or_printable_ascii_never_ignored() {
        let with = |v: &[u8]| {
            let mut h = http::HeaderMap::new();
            h.insert("idempotency-key", http::HeaderValue::from_bytes(v).unwrap());
            key_of(&h)
        };
        assert_eq!(key_of(&http::HeaderMap::new()).unwrap(), None);
        assert_eq!(with(b"retry 1").unwrap().as_deref(), Some("retry 1"));
        // What schemathesis sent: Latin-1 bytes. They used to be read as "no key".
        let e = with(&[0xd7, 0xf8, 0x9b]).unwrap_err();
        assert!(e.message.contains("printable ASCII"), "{}", e.message);
        assert!(with(b"").is_err());
        assert!(with(b"a\tb").is_err());
        assert!(with(&[b'k'; MAX_KEY_LEN + 1]).is_err());
        assert!(with(&[b'k'; MAX_KEY_LEN]).is_ok());
    }

    fn stored(fp: &str, body: &str) -> Stored {
        Stored {
            fingerprint: fp.into(),
            status: 201,
            body: body.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn answers_survive_a_restart_and_in_flight_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let c = IdempotencyCache::open(dir.path());
        assert!(matches!(c.begin("alice", "k1", "fp1"), Lookup::Fresh));
        c.finish("alice", "k1", stored("fp1", r#"{"name":"d1"}"#));
        assert!(matches!(c.begin("alice", "k2", "fp2"), Lookup::Fresh));
        assert!(matches!(c.begin("alice", "k2", "fp2"), Lookup::InFlight));
        drop(c);

        let c = IdempotencyCache::open(dir.path());
        match c.begin("alice", "k1", "fp1") {
            Lookup::Replay(s) => {
                assert_eq!(s.status, 201);
                assert_eq!(&s.body[..], br#"{"name":"d1"}"#);
            }
            _ => panic!("the answer was not kept across the restart"),
        }
        assert!(matches!(c.begin("alice", "k1", "other"), Lookup::Mismatch));
        assert!(matches!(c.begin("bob", "k1", "fp1"), Lookup::Fresh));
        assert!(matches!(c.begin("alice", "k2", "fp2"), Lookup::Fresh));
    }

    #[test]
    fn expired_and_garbled_lines_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("idempotency.jsonl");
        let line = |key: &str, first_unix: u64| {
            serde_json::to_string(&Line {
                user: "a".into(),
                key: key.into(),
                first_unix,
                fingerprint: "x".into(),
                status: 200,
                body: "{}".into(),
            })
            .unwrap()
        };
        let text = format!(
            "{}\nnot json\n{}\n",
            line("new", now_unix()),
            line("old", now_unix() - TTL_SECS - 5)
        );
        std::fs::write(&f, text).unwrap();
        let c = IdempotencyCache::open(dir.path());
        assert!(matches!(c.begin("a", "new", "x"), Lookup::Replay(_)));
        assert!(matches!(c.begin("a", "old", "x"), Lookup::Fresh));
        // The file was rewritten with the live entry only.
        let kept = std::fs::read_to_string(&f).unwrap();
        assert_eq!(kept.lines().count(), 1);
        assert!(kept.contains("\"new\""));
    }

    #[test]
    fn big_answers_stay_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = IdempotencyCache::open(dir.path());
        assert!(matches!(c.begin("a", "big", "fp"), Lookup::Fresh));
        let body = format!("\"{}\"", "x".repeat(MAX_PERSISTED_BODY));
        c.finish("a", "big", stored("fp", &body));
        assert!(matches!(c.begin("a", "big", "fp"), Lookup::Replay(_)));
        drop(c);
        let c = IdempotencyCache::open(dir.path());
        assert!(matches!(c.begin("a", "big", "fp"), Lookup::Fresh));
    }
}
