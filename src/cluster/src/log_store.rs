//! The durable raft log: one append-only byte string of checksummed records (vote, entries,
//! truncate, purge, committed index) on a [`Medium`] (a file, or an area of the node's internal
//! raft vdisk), replayed into memory at open.
//!
//! Record: `u32 payload len | u32 crc32c(kind + payload) | u8 kind | payload` (little endian).
//! Entries are written as kind 6, `u16 format version | JSON(entry)` ([`crate::format`]: an
//! entry written by an older binary stays readable after a field is added). Kind 1 (bincode,
//! format v1, written before) is still read and migrated. Vote, committed, truncate and purge
//! records hold openraft's own small fixed types (and a u64) in bincode; an openraft upgrade
//! that changed them would need new kinds. A kind or entry version this binary does not know
//! (written by a newer one) is an error naming the record's offset, never skipped.
//! Durability: an append is acknowledged to openraft (`LogFlushed`) only after the medium's
//! sync returned; a vote is durable before `save_vote` returns. All writes go through one
//! writer thread (`log_writer`) in order, with group commit. A torn tail (short or
//! checksum-failing last records, from a crash mid-write) is cut at open. After any failed write
//! or sync the store is poisoned and every later call fails (fail-stop, never retried).
//! When purged records dominate the log it is rewritten with the medium's atomic replace.
//!
//! Must never: acknowledge an append before it is durable, or return entries it cannot vouch
//! for (a record that passes its checksum but does not decode is an error, not a torn tail).
// openraft's trait methods return its (large) StorageError; our helpers return it too.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader};

use tokio::sync::{mpsc, oneshot};

use crate::log_writer::{Done, Job, Shared, Writer, QUEUE_JOBS};
use crate::medium::{FileMedium, Medium};
use crate::types::{log_write_err, sto_err, Entry, LogId, StorageError, TypeConfig, Vote};

const MAGIC: &[u8; 8] = b"CAIRNLG1";
const RECORD_HEADER_BYTES: usize = 9;
/// Upper bound for one record; bigger means corruption (entries are small metadata commands).
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// Rewrite the file when it is at least this big and more than half of it is dead.
const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Format v1 (bincode); read only.
    EntryV1 = 1,
    Vote = 2,
    Committed = 3,
    Truncate = 4,
    Purge = 5,
    /// Versioned ([`crate::format`]); what this binary writes.
    Entry = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::EntryV1,
            2 => Kind::Vote,
            3 => Kind::Committed,
            4 => Kind::Truncate,
            5 => Kind::Purge,
            6 => Kind::Entry,
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

fn encode_entry(e: &Entry) -> Result<Vec<u8>, StorageError> {
    crate::format::encode_entry(e).map_err(log_write_err)
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

struct LogInner {
    mem: Mutex<LogMem>,
    tx: Option<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for LogInner {
    fn drop(&mut self) {
        // Let the writer finish what was queued, so a reopen in the same process never races
        // with a late write from the old instance.
        self.tx.take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl LogInner {
    fn check(&self) -> Result<(), StorageError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(log_write_err(
                "raft log poisoned by an earlier write failure",
            ));
        }
        Ok(())
    }

    fn mem(&self) -> MutexGuard<'_, LogMem> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn submit(&self, job: Job) -> Result<(), StorageError> {
        self.check()?;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| log_write_err("raft log closed"))?;
        tx.send(job)
            .await
            .map_err(|_| log_write_err("raft log writer stopped"))
    }

    /// Queues a write and waits until it is done (and durable if `sync`).
    async fn write_wait(&self, buf: Vec<u8>, sync: bool) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Write {
            buf,
            sync,
            done: Done::Notify(tx),
        })
        .await?;
        rx.await
            .map_err(|_| log_write_err("raft log writer stopped"))?
            .map_err(log_write_err)
    }

    /// The live content as a fresh log file image, when dead records dominate the file.
    fn compaction_image(&self, mem: &LogMem) -> Result<Option<Vec<u8>>, StorageError> {
        let end = self.shared.end.load(Ordering::SeqCst);
        let live = mem.entry_bytes.values().sum::<u64>() + 1024;
        if end < COMPACT_MIN_BYTES || end < 2 * live {
            return Ok(None);
        }
        let mut buf = MAGIC.to_vec();
        if let Some(v) = &mem.vote {
            push_record(&mut buf, Kind::Vote, &encode(v)?)?;
        }
        if let Some(c) = &mem.committed {
            push_record(&mut buf, Kind::Committed, &encode(c)?)?;
        }
        if let Some(p) = &mem.last_purged {
            push_record(&mut buf, Kind::Purge, &encode(p)?)?;
        }
        for e in mem.entries.values() {
            push_record(&mut buf, Kind::Entry, &encode_entry(e)?)?;
        }
        Ok(Some(buf))
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
    inner: Arc<LogInner>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir` (file `dir/log`), replaying it and cutting a torn
    /// tail.
    pub fn open(dir: &Path) -> Result<(LogStore, RecoveryReport), crate::Error> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io("create log dir", e))?;
        LogStore::open_on(Box::new(FileMedium::new(dir.join("log"))))
    }

    /// Opens (or creates) the log on `medium`, replaying it and cutting a torn tail.
    pub fn open_on(
        mut medium: Box<dyn Medium>,
    ) -> Result<(LogStore, RecoveryReport), crate::Error> {
        let bytes = medium
            .read_all()
            .map_err(|e| crate::Error::io("read raft log", e))?;
        let mut report = RecoveryReport::default();
        let mut mem = LogMem::default();
        let end = if bytes.is_empty() {
            medium
                .replace(MAGIC)
                .map_err(|e| crate::Error::io("initialise raft log", e))?;
            MAGIC.len() as u64
        } else {
            if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
                return Err(crate::Error::Corrupt(format!(
                    "{} is not a cairn raft log",
                    medium.describe()
                )));
            }
            let good = replay(&bytes, &mut mem, &mut report)?;
            if good < bytes.len() {
                report.torn_bytes = (bytes.len() - good) as u64;
                tracing::warn!(cut = report.torn_bytes, "raft log: cutting torn tail");
                medium
                    .set_len(good as u64)
                    .map_err(|e| crate::Error::io("cut torn raft log tail", e))?;
            }
            good as u64
        };
        let shared = Arc::new(Shared::default());
        shared.end.store(end, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(QUEUE_JOBS);
        let writer = Writer {
            medium,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| crate::Error::io("start raft log writer", e))?;
        let store = LogStore {
            inner: Arc::new(LogInner {
                mem: Mutex::new(mem),
                tx: Some(tx),
                shared,
                writer: Mutex::new(Some(handle)),
            }),
        };
        Ok((store, report))
    }

    /// Size of the log content in bytes (for tests and status).
    pub fn file_bytes(&self) -> u64 {
        self.inner.shared.end.load(Ordering::SeqCst)
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
        let kind = Kind::from_u8(hdr[8]).ok_or_else(|| {
            corrupt(format!(
                "record kind {} unknown to this binary (written by a newer cairn?)",
                hdr[8]
            ))
        })?;
        match kind {
            Kind::Entry | Kind::EntryV1 => {
                let e = if kind == Kind::Entry {
                    crate::format::decode_entry(payload)
                } else {
                    crate::format::decode_entry_v1(payload, u64::from(MAX_RECORD_BYTES))
                }
                .map_err(corrupt)?;
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
        self.inner.check()?;
        Ok(range_entries(&self.inner.mem().entries, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.inner.check()?;
        let m = self.inner.mem();
        Ok(LogState {
            last_purged_log_id: m.last_purged,
            last_log_id: m.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        push_record(&mut buf, Kind::Vote, &encode(vote)?)?;
        self.inner
            .write_wait(buf, true)
            .await
            .map_err(|e| sto_err(openraft::ErrorSubject::Vote, openraft::ErrorVerb::Write, e))?;
        self.inner.mem().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.inner.check()?;
        Ok(self.inner.mem().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        push_record(&mut buf, Kind::Committed, &encode(&committed)?)?;
        // Not synced: openraft allows the committed index to lag; it only shortens the replay
        // at the next start. It becomes durable with the next synced record.
        self.inner
            .submit(Job::Write {
                buf,
                sync: false,
                done: Done::Nothing,
            })
            .await?;
        self.inner.mem().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.inner.check()?;
        Ok(self.inner.mem().committed)
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
            let n = push_record(&mut buf, Kind::Entry, &encode_entry(&e)?)?;
            staged.push((e, n as u64));
        }
        // Visible to readers at once (openraft may replicate entries before they are flushed
        // locally); counted by openraft only when the writer calls `callback` after the sync.
        {
            let mut m = self.inner.mem();
            for (e, n) in staged {
                let idx = e.get_log_id().index;
                m.entries.insert(idx, e);
                m.entry_bytes.insert(idx, n);
            }
        }
        self.inner
            .submit(Job::Write {
                buf,
                sync: true,
                done: Done::Flushed(callback),
            })
            .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        push_record(&mut buf, Kind::Truncate, &encode(&log_id.index)?)?;
        self.inner.mem().truncate(log_id.index);
        self.inner.write_wait(buf, true).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        push_record(&mut buf, Kind::Purge, &encode(&log_id)?)?;
        // Not synced: a lost purge only brings back entries the snapshot already covers.
        self.inner
            .submit(Job::Write {
                buf,
                sync: false,
                done: Done::Nothing,
            })
            .await?;
        let image = {
            let mut m = self.inner.mem();
            m.purge(log_id);
            self.inner.compaction_image(&m)?
        };
        if let Some(buf) = image {
            let (tx, rx) = oneshot::channel();
            self.inner
                .submit(Job::Rewrite {
                    buf,
                    done: Done::Notify(tx),
                })
                .await?;
            rx.await
                .map_err(|_| log_write_err("raft log writer stopped"))?
                .map_err(log_write_err)?;
        }
        Ok(())
    }
}
