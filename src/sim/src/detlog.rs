//! The real raft log store (`cluster::LogStore`), made deterministic for the simulation.
//!
//! `LogStore` writes through its own writer thread and completes appends from there. In a run on
//! paused virtual time, an `await` on that thread would let tokio see an idle runtime and jump
//! the clock by a wall-clock-dependent amount. So every call that hands work to the writer is
//! driven to completion on the spot (`block_on`), and an append is followed by a synced barrier
//! record: when the call returns, the append is durable and openraft has been told, always at the
//! same point of the run. The barrier is a truncate beyond any index (a no-op on replay).
//!
//! Must never: change what is stored or acknowledged; it only fixes *when* completions happen.
// openraft's trait methods return its (large) StorageError.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;

use cluster::{Entry, LogId, LogStore, StorageError, TypeConfig, Vote};
use futures::executor::block_on;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{CommittedLeaderId, LogState, OptionalSend, RaftLogReader};

/// `cluster::LogStore` with every writer-thread round trip completed before returning.
#[derive(Debug, Clone)]
pub struct DetLog(pub LogStore);

fn barrier_id() -> LogId {
    openraft::LogId::new(CommittedLeaderId::new(0, 0), u64::MAX)
}

impl RaftLogReader<TypeConfig> for DetLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.0.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for DetLog {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.0.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.0.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        block_on(self.0.save_vote(vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.0.read_vote().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        block_on(self.0.save_committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.0.read_committed().await
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
        block_on(self.0.append(entries, callback))?;
        // Jobs run in order: once the barrier is done, the append's callback has been called.
        block_on(self.0.truncate(barrier_id()))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        block_on(self.0.truncate(log_id))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        block_on(self.0.purge(log_id))
    }
}
