//! The raft log's writer thread: every write to the log's medium happens here, in submission
//! order, so a sync never blocks an async worker and queued writes share one sync (group
//! commit; consecutive appends of a batch go to the medium as one write). Completions (openraft's `LogFlushed` callbacks, or a waiting caller) are signalled
//! only after the data is durable. After any failed write or sync the log is poisoned: that
//! write and every later one fail.
//!
//! Must never: complete a synced job before its sync returned, or reorder jobs.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::LogFlushed;
use tokio::sync::{mpsc, oneshot};

use crate::medium::Medium;
use crate::types::TypeConfig;

/// Jobs queued before submitters wait.
pub(crate) const QUEUE_JOBS: usize = 256;
/// Most jobs written under one sync.
const MAX_BATCH_JOBS: usize = 256;

pub(crate) enum Done {
    Flushed(LogFlushed<TypeConfig>),
    Notify(oneshot::Sender<Result<(), String>>),
    Nothing,
}

impl Done {
    fn complete(self, r: Result<(), String>) {
        match self {
            Done::Flushed(cb) => cb.log_io_completed(r.map_err(std::io::Error::other)),
            Done::Notify(tx) => {
                let _ = tx.send(r);
            }
            Done::Nothing => {}
        }
    }
}

pub(crate) enum Job {
    /// Append records at the end of the file.
    Write {
        buf: Vec<u8>,
        sync: bool,
        done: Done,
    },
    /// Replace the whole content with `buf` (compaction), atomically and durably.
    Rewrite { buf: Vec<u8>, done: Done },
}

/// State shared between the store and its writer.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) poisoned: AtomicBool,
    /// Bytes in the file after every completed job.
    pub(crate) end: AtomicU64,
}

pub(crate) struct Writer {
    pub(crate) medium: Box<dyn Medium>,
    pub(crate) shared: Arc<Shared>,
}

impl Writer {
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_JOBS {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let result = self.process(&mut batch);
            for job in batch {
                let done = match job {
                    Job::Write { done, .. } | Job::Rewrite { done, .. } => done,
                };
                done.complete(result.clone());
            }
        }
    }

    fn process(&mut self, batch: &mut [Job]) -> Result<(), String> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err("raft log poisoned by an earlier write failure".into());
        }
        let r = self.write_batch(batch);
        if r.is_err() {
            self.shared.poisoned.store(true, Ordering::SeqCst);
        }
        r
    }

    fn write_batch(&mut self, batch: &mut [Job]) -> Result<(), String> {
        let mut need_sync = false;
        let mut end = self.shared.end.load(Ordering::SeqCst);
        // Appends waiting to go out as one write (one medium write per run of appends).
        let mut pending: Vec<u8> = Vec::new();
        for job in batch.iter() {
            match job {
                Job::Write { buf, sync, .. } => {
                    pending.extend_from_slice(buf);
                    need_sync |= *sync;
                }
                Job::Rewrite { buf, .. } => {
                    // Earlier writes in this batch are part of `buf` already.
                    pending.clear();
                    self.medium
                        .replace(buf)
                        .map_err(|e| format!("raft log compaction: {e}"))?;
                    end = buf.len() as u64;
                    need_sync = false;
                }
            }
        }
        if !pending.is_empty() {
            self.medium
                .write_at(end, &pending)
                .map_err(|e| format!("raft log write: {e}"))?;
            end += pending.len() as u64;
        }
        if need_sync {
            self.medium
                .sync()
                .map_err(|e| format!("raft log sync: {e}"))?;
        }
        self.shared.end.store(end, Ordering::SeqCst);
        Ok(())
    }
}
