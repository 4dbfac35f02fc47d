//! The audit log: one JSON line per mutation (who, what, when, result) appended to
//! `state_dir/audit.jsonl`, with the newest entries also kept in memory for listing.
//! Bounded: the file rotates to `audit.jsonl.1` past 8 MiB; memory keeps 10,000 entries.
//! Never records secrets (passwords, token secrets, keys): callers pass a redacted summary.

use crate::files::now_unix;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAX_MEMORY: usize = 10_000;
pub const MAX_FILE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: u64,
    pub time_unix: u64,
    pub user: String,
    /// `session`, `token:<id>`, `cli`, `internal`.
    pub via: String,
    pub source: String,
    pub action: String,
    /// The object acted on (a name, id or path); may be empty.
    pub target: String,
    /// `ok` or the error code.
    pub result: String,
    pub message: String,
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<(u64, VecDeque<AuditEntry>)>,
}

impl AuditLog {
    pub fn open(state_dir: &Path) -> AuditLog {
        let path = state_dir.join("audit.jsonl");
        let mut mem = VecDeque::new();
        let mut next = 1;
        // Reload what the file still has so the list survives a restart. A torn last line (crash
        // mid-append) is skipped.
        for p in [path.with_extension("jsonl.1"), path.clone()] {
            if let Ok(t) = std::fs::read_to_string(&p) {
                for l in t.lines() {
                    if let Ok(e) = serde_json::from_str::<AuditEntry>(l) {
                        next = next.max(e.id + 1);
                        mem.push_back(e);
                        if mem.len() > MAX_MEMORY {
                            mem.pop_front();
                        }
                    }
                }
            }
        }
        AuditLog {
            path,
            inner: Mutex::new((next, mem)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        user: &str,
        via: &str,
        source: &str,
        action: &str,
        target: &str,
        result: &str,
        message: &str,
    ) -> AuditEntry {
        let mut g = self.inner.lock();
        let e = AuditEntry {
            id: g.0,
            time_unix: now_unix(),
            user: user.into(),
            via: via.into(),
            source: source.into(),
            action: action.into(),
            target: target.chars().take(512).collect(),
            result: result.into(),
            message: message.chars().take(1024).collect(),
        };
        g.0 += 1;
        if let Ok(mut line) = serde_json::to_vec(&e) {
            line.push(b'\n');
            if std::fs::metadata(&self.path)
                .map(|m| m.len() > MAX_FILE_BYTES)
                .unwrap_or(false)
            {
                let _ = std::fs::rename(&self.path, self.path.with_extension("jsonl.1"));
            }
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|mut f| f.write_all(&line).and_then(|_| f.sync_data()));
            if let Err(err) = written {
                tracing::error!("audit log {}: {err}", self.path.display());
            }
        }
        g.1.push_back(e.clone());
        if g.1.len() > MAX_MEMORY {
            g.1.pop_front();
        }
        e
    }

    /// Newest first, entries with id < `before` (0 = from the newest).
    pub fn list(&self, before: u64, limit: usize) -> Vec<AuditEntry> {
        let g = self.inner.lock();
        g.1.iter()
            .rev()
            .filter(|e| before == 0 || e.id < before)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_persist_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let a = AuditLog::open(d.path());
        a.record(
            "admin",
            "session",
            "127.0.0.1",
            "vdisk_create",
            "a",
            "ok",
            "",
        );
        a.record(
            "op",
            "token:x",
            "127.0.0.1",
            "vdisk_delete",
            "a",
            "forbidden",
            "no",
        );
        let b = AuditLog::open(d.path());
        let l = b.list(0, 10);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].action, "vdisk_delete");
        assert_eq!(l[0].result, "forbidden");
        let e = b.record("admin", "session", "", "x", "", "ok", "");
        assert_eq!(e.id, 3);
        assert_eq!(b.list(3, 10).len(), 2);
    }
}
