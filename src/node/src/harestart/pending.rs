//! The HA restarts this node still owes — VMs it defined after a takeover that should run and
//! have not started yet, with their failed attempts — kept in `DATA/ha-restarts.json` as well
//! as in memory, so a restart of this node (a crash, an upgrade) does not lose them. Without
//! the file such a VM would stay defined and stopped here for good: a VM already defined is
//! never started by `super::step` (a node restart starts no VM the admin ran here), and the
//! cluster record alone cannot tell the two apart.
//!
//! An entry is written before the VM is defined (a crash in between leaves an entry whose VM
//! the next tick defines again) and dropped once the VM started or is no longer meant to run
//! here. After a restart every loaded entry is due at once (its attempt count, and so the
//! back-off of later attempts, kept): a restart is a natural moment to try again, and one
//! attempt per restart stays bounded.
//!
//! Must never: lose an entry it could write (a failed write is logged and tried again at the
//! next change), or fail the node over an unreadable file (logged; the restarts it held are
//! then not owed any more — said so).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The file, under the node's data directory.
pub(super) const FILE: &str = "ha-restarts.json";
/// Largest file read (an entry is ~100 bytes; one per VM at most).
const MAX_FILE_BYTES: u64 = 8 << 20;

/// One owed restart.
pub(super) struct Pending {
    pub(super) name: String,
    pub(super) attempts: u32,
    pub(super) next: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    name: String,
    attempts: u32,
}

/// What the file holds for `pending` (sorted by VM id, so equal sets write equal bytes).
fn saved(pending: &HashMap<String, Pending>) -> BTreeMap<String, Saved> {
    pending
        .iter()
        .map(|(id, p)| {
            (
                id.clone(),
                Saved {
                    name: p.name.clone(),
                    attempts: p.attempts,
                },
            )
        })
        .collect()
}

/// The owed restarts saved in `file`, each due now. A missing file holds none.
pub(super) fn load(file: &Path) -> HashMap<String, Pending> {
    let read = || -> Result<BTreeMap<String, Saved>, String> {
        match crate::statefile::read_bounded(file, MAX_FILE_BYTES)? {
            None => Ok(BTreeMap::new()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
        }
    };
    match read() {
        Ok(m) => {
            let now = Instant::now();
            m.into_iter()
                .map(|(id, s)| {
                    (
                        id,
                        Pending {
                            name: s.name,
                            attempts: s.attempts,
                            next: now,
                        },
                    )
                })
                .collect()
        }
        Err(e) => {
            tracing::error!(
                file = %file.display(),
                error = %e,
                "HA restart: the owed restarts could not be read; VMs defined here after a \
                 takeover that did not start yet are not started by themselves (start them by \
                 hand)"
            );
            HashMap::new()
        }
    }
}

/// Writes `pending` to `file` (temporary file, sync, rename, sync the directory).
pub(super) fn save(file: &Path, pending: &HashMap<String, Pending>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(&saved(pending)).map_err(std::io::Error::other)?;
    crate::statefile::replace(file, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_restarts_survive_a_reload_due_at_once_with_their_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        assert!(load(&file).is_empty(), "no file: nothing owed");
        let later = Instant::now() + std::time::Duration::from_secs(600);
        let mut m = HashMap::new();
        m.insert(
            "1/web".to_string(),
            Pending {
                name: "web".into(),
                attempts: 3,
                next: later,
            },
        );
        save(&file, &m).unwrap();
        let back = load(&file);
        let p = &back["1/web"];
        assert_eq!((p.name.as_str(), p.attempts), ("web", 3));
        assert!(p.next <= Instant::now(), "due at once after a restart");
        save(&file, &HashMap::new()).unwrap();
        assert!(load(&file).is_empty());
    }

    #[test]
    fn an_unreadable_file_owes_nothing_and_does_not_fail() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        std::fs::write(&file, b"{\"1/web\": {\"name\": 5}}").unwrap();
        assert!(load(&file).is_empty());
        std::fs::write(&file, b"not json").unwrap();
        assert!(load(&file).is_empty());
    }
}
