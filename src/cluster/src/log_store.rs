//! The durable raft log: one append-only file of checksummed records (vote, entries, truncate,
//! purge, committed index), replayed into memory at open.
//!
//! Record: `u32 payload len | u32 crc32c(kind + payload) | u8 kind | payload` (little endian).
//! Durability: an append is acknowledged to openraft (`LogFlushed`) only after `fdatasync`
//! returned; a vote is durable before `save_vote` returns. A torn tail (short or
//! checksum-failing last records, from a crash mid-write) is cut at open. After any failed write
//! or sync the store is poisoned and every later call fails (fail-stop, never retried).
//! When purged records dominate the file it is rewritten (temp file, fsync, rename, fsync dir).
//!
//! Must never: acknowledge an append before it is durable, or return entries it cannot vouch
//! for (a record that passes its checksum but does not decode is an error, not a torn tail).
// openraft's trait methods return its (large) StorageError; our helpers return it too.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader};

use crate::types::{log_write_err, sto_err, Entry, LogId, StorageError, TypeConfig, Vote};

const MAGIC: &[u8; 8] = b"CAIRNLG1";
const RECORD_HEADER_BYTES: usize = 9;
/// Upper bound for one record; bigger means corruption (entries are small metadata commands).
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// Rewrite the file when it is at least this big and more than half of it is dead.
const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Entry = 1,
    Vote = 2,
    Committed = 3,
    Truncate = 4,
    Purge = 5,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Entry,
            2 => Kind::Vote,
            3 => Kind::Committed,
            4 => Kind::Truncate,
            5 => Kind::Purge,
            _ => return None,
        })
    }
}

fn bincode_opts() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(u64::from(MAX_RECORD_BYTES))
        .reject_trailing_bytes()
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    use bincode::Options;
    bincode_opts().serialize(v).map_err(log_write_err)
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    use bincode::Options;
    bincode_opts().deserialize(b).map_err(|e| e.to_string())
}

fn push_record(buf: &mut Vec<u8>, kind: Kind, payload: &[u8]) -> Result<usize, StorageError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD_BYTES)
        .ok_or_else(|| log_write_err("log record too large"))?;
    let mut crc = crc32c::crc32c(&[kind as u8]);
    crc = crc32c::crc32c_append(crc, payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(payload);
    Ok(RECORD_HEADER_BYTES + payload.len())
}

/// The replayed content of the log file.
#[derive(Debug, Default)]
struct LogMem {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    /// On-file size of each live entry record, to know when compaction pays.
    entry_bytes: BTreeMap<u64, u64>,
}

impl LogMem {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(self.last_purged)
    }

    fn truncate(&mut self, index: u64) {
        self.entries.split_off(&index);
        self.entry_bytes.split_off(&index);
    }

    fn purge(&mut self, log_id: LogId) {
        if self.last_purged.is_some_and(|p| p.index >= log_id.index) {
            return;
        }
        self.last_purged = Some(log_id);
        let keep = self.entries.split_off(&(log_id.index + 1));
        self.entries = keep;
        let keep = self.entry_bytes.split_off(&(log_id.index + 1));
        self.entry_bytes = keep;
    }
}

struct LogFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Where the next record goes.
    end: u64,
    poisoned: bool,
    mem: LogMem,
}

impl LogFile {
    fn check(&self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(log_write_err(
                "raft log poisoned by an earlier write failure",
            ));
        }
        Ok(())
    }

    /// Writes records at the end; syncs if asked. Any failure poisons the store.
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), StorageError> {
        self.check()?;
        let r = self.file.write_all_at(buf, self.end).and_then(|_| {
            if sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            self.poisoned = true;
            return Err(log_write_err(e));
        }
        self.end += buf.len() as u64;
        Ok(())
    }

    fn live_bytes(&self) -> u64 {
        self.mem.entry_bytes.values().sum::<u64>() + 1024
    }

    /// Rewrites the file with only live content when dead records dominate.
    fn maybe_compact(&mut self) -> Result<(), StorageError> {
        if self.end < COMPACT_MIN_BYTES || self.end < 2 * self.live_bytes() {
            return Ok(());
        }
        self.check()?;
        let tmp = self.dir.join("log.tmp");
        let mut buf = MAGIC.to_vec();
        if let Some(v) = &self.mem.vote {
            push_record(&mut buf, Kind::Vote, &encode(v)?)?;
        }
        if let Some(c) = &self.mem.committed {
            push_record(&mut buf, Kind::Committed, &encode(c)?)?;
        }
        if let Some(p) = &self.mem.last_purged {
            push_record(&mut buf, Kind::Purge, &encode(p)?)?;
        }
        for e in self.mem.entries.values() {
            push_record(&mut buf, Kind::Entry, &encode(e)?)?;
        }
        let io = |e: std::io::Error| log_write_err(e);
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&tmp)
            .map_err(io)?;
        f.write_all_at(&buf, 0).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            // The rename may or may not survive a crash; both files are complete logs, but we
            // can no longer say which one is on disk: fail-stop.
            self.poisoned = true;
            return Err(io(e));
        }
        self.file = f;
        self.end = buf.len() as u64;
        tracing::debug!(bytes = self.end, "raft log compacted");
        Ok(())
    }
}

/// What recovery found at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub records: u64,
    /// Bytes cut from a torn tail.
    pub torn_bytes: u64,
}

/// The durable raft log store.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogFile>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<LogFile>) -> MutexGuard<'_, LogFile> {
    // A panic while holding the lock leaves a half-updated view; poison the store instead of
    // serving it.
    match m.lock() {
        Ok(g) => g,
        Err(e) => {
            let mut g = e.into_inner();
            g.poisoned = true;
            g
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying it and cutting a torn tail.
    pub fn open(dir: &Path) -> Result<(LogStore, RecoveryReport), crate::Error> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io("create log dir", e))?;
        let path = dir.join("log");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| crate::Error::io("open raft log", e))?;
        let mut bytes = Vec::new();
        (&file)
            .read_to_end(&mut bytes)
            .map_err(|e| crate::Error::io("read raft log", e))?;
        let mut report = RecoveryReport::default();
        let mut mem = LogMem::default();
        let end = if bytes.is_empty() {
            file.write_all_at(MAGIC, 0)
                .and_then(|_| file.sync_all())
                .and_then(|_| File::open(dir)?.sync_all())
                .map_err(|e| crate::Error::io("initialise raft log", e))?;
            MAGIC.len() as u64
        } else {
            if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
                return Err(crate::Error::Corrupt(format!(
                    "{} is not a cairn raft log",
                    path.display()
                )));
            }
            let good = replay(&bytes, &mut mem, &mut report)?;
            if good < bytes.len() {
                report.torn_bytes = (bytes.len() - good) as u64;
                tracing::warn!(cut = report.torn_bytes, "raft log: cutting torn tail");
                file.set_len(good as u64)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| crate::Error::io("cut torn raft log tail", e))?;
            }
            good as u64
        };
        let store = LogStore {
            inner: Arc::new(Mutex::new(LogFile {
                dir: dir.to_path_buf(),
                path,
                file,
                end,
                poisoned: false,
                mem,
            })),
        };
        Ok((store, report))
    }

    /// Size of the log file in bytes (for tests and status).
    pub fn file_bytes(&self) -> u64 {
        lock(&self.inner).end
    }
}

/// Replays records into `mem`; returns the length of the valid prefix.
fn replay(
    bytes: &[u8],
    mem: &mut LogMem,
    report: &mut RecoveryReport,
) -> Result<usize, crate::Error> {
    let mut off = MAGIC.len();
    loop {
        let Some(hdr) = bytes.get(off..off + RECORD_HEADER_BYTES) else {
            return Ok(off);
        };
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        if len > MAX_RECORD_BYTES {
            return Ok(off);
        }
        let start = off + RECORD_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            return Ok(off);
        };
        let mut want = crc32c::crc32c(&hdr[8..9]);
        want = crc32c::crc32c_append(want, payload);
        if want != crc {
            return Ok(off);
        }
        let corrupt = |e: String| crate::Error::Corrupt(format!("raft log record at {off}: {e}"));
        match Kind::from_u8(hdr[8]).ok_or_else(|| corrupt("unknown kind".into()))? {
            Kind::Entry => {
                let e: Entry = decode(payload).map_err(corrupt)?;
                let idx = e.get_log_id().index;
                mem.entries.insert(idx, e);
                mem.entry_bytes
                    .insert(idx, (RECORD_HEADER_BYTES + payload.len()) as u64);
            }
            Kind::Vote => mem.vote = Some(decode(payload).map_err(corrupt)?),
            Kind::Committed => mem.committed = decode(payload).map_err(corrupt)?,
            Kind::Truncate => mem.truncate(decode(payload).map_err(corrupt)?),
            Kind::Purge => mem.purge(decode(payload).map_err(corrupt)?),
        }
        report.records += 1;
        off = start + len as usize;
    }
}

pub(crate) fn range_entries<RB: RangeBounds<u64>>(
    entries: &BTreeMap<u64, Entry>,
    range: RB,
) -> Vec<Entry> {
    let start = match range.start_bound() {
        Bound::Included(s) => Bound::Included(*s),
        Bound::Excluded(s) => Bound::Excluded(*s),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(s) => Bound::Included(*s),
        Bound::Excluded(s) => Bound::Excluded(*s),
        Bound::Unbounded => Bound::Unbounded,
    };
    // An empty or inverted range would make BTreeMap::range panic.
    let empty = match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s >= e
        }
        (Bound::Excluded(s), Bound::Excluded(e)) => s >= e || s + 1 == e,
        _ => false,
    };
    if empty {
        return Vec::new();
    }
    entries
        .range((start, end))
        .map(|(_, e)| e.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let g = lock(&self.inner);
        g.check()?;
        Ok(range_entries(&g.mem.entries, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let g = lock(&self.inner);
        g.check()?;
        Ok(LogState {
            last_purged_log_id: g.mem.last_purged,
            last_log_id: g.mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        push_record(&mut buf, Kind::Vote, &encode(vote)?)?;
        let mut g = lock(&self.inner);
        g.write(&buf, true).map_err(|_| {
            sto_err(
                openraft::ErrorSubject::Vote,
                openraft::ErrorVerb::Write,
                "vote write failed",
            )
        })?;
        g.mem.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let g = lock(&self.inner);
        g.check()?;
        Ok(g.mem.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        push_record(&mut buf, Kind::Committed, &encode(&committed)?)?;
        let mut g = lock(&self.inner);
        // Not synced: openraft allows the committed index to lag; it only shortens the replay
        // at the next start. It becomes durable with the next synced record.
        g.write(&buf, false)?;
        g.mem.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let g = lock(&self.inner);
        g.check()?;
        Ok(g.mem.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut buf = Vec::new();
        let mut staged = Vec::new();
        for e in entries {
            let n = push_record(&mut buf, Kind::Entry, &encode(&e)?)?;
            staged.push((e, n as u64));
        }
        let mut g = lock(&self.inner);
        if let Err(e) = g.write(&buf, true) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(e);
        }
        for (e, n) in staged {
            let idx = e.get_log_id().index;
            g.mem.entries.insert(idx, e);
            g.mem.entry_bytes.insert(idx, n);
        }
        drop(g);
        // Durable: only now may openraft count these entries.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        push_record(&mut buf, Kind::Truncate, &encode(&log_id.index)?)?;
        let mut g = lock(&self.inner);
        g.write(&buf, true)?;
        g.mem.truncate(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        push_record(&mut buf, Kind::Purge, &encode(&log_id)?)?;
        let mut g = lock(&self.inner);
        // Not synced: a lost purge only brings back entries the snapshot already covers.
        g.write(&buf, false)?;
        g.mem.purge(log_id);
        g.maybe_compact()
    }
}
