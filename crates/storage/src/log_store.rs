//! The Raft log store (openraft `RaftLogStorage` + `RaftLogReader`) on the WAL (`crate::wal`).
//!
//! Durability contract (openraft 0.9), all kept by the WAL:
//! - `append` makes entries readable at once and completes openraft's callback only after a
//!   sync covering them (openraft then counts this replica toward the commit quorum);
//! - `save_vote` returns only once the vote is durable (else a restart could vote twice in a
//!   term);
//! - `purge` makes its marker durable before deleting anything, so a crash cannot leave a
//!   hole between the purge point and the first remaining entry;
//! - `save_committed` and `truncate` are not synced (see the comments on each).
//!
//! All writes are issued by openraft's single core task in call order and land in one
//! append-only file in that order, so a crash leaves a prefix of them. This module must not
//! read or write the state machine.

use crate::error::{IntoRaft, Op, RaftStorageError, StorageError};
use crate::types::{LogTypes, TypeConfig};
use crate::wal::{Wal, WalOptions};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

/// The Raft log store of a group whose types are `C` (the replicas' by default). Cloning gives
/// another handle to the same log (used as the log reader).
#[derive(Clone)]
pub struct LogStore<C: LogTypes = TypeConfig> {
    wal: Wal<C>,
}

impl<C: LogTypes> LogStore<C> {
    pub(crate) fn new(wal: Wal<C>) -> Self {
        Self { wal }
    }

    /// Opens the log kept in `<dir>/raft-wal` on its own (no state machine next to it), creating
    /// it empty first if there is none; `dir` is created if missing. Starts the WAL's sync
    /// thread. This is how a group other than a replica's (the admin's) keeps its log.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Self, StorageError> {
        Ok(Self::new(Wal::open_or_create(dir, options)?))
    }

    /// Returns once everything written so far is durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.wal.sync().await
    }

    pub(crate) fn wal(&self) -> &Wal<C> {
        &self.wal
    }

    /// **Test-only I/O seam** (power-loss tests): every WAL segment file with the number of
    /// bytes from its start that the last completed sync covered. Copying each file cut to that
    /// length models what a power failure at this instant would keep at least.
    #[doc(hidden)]
    pub fn synced_wal_extents(&self) -> Vec<(PathBuf, u64)> {
        self.wal.synced_extents()
    }

    /// Entries held in the log, and record bytes of those whose decoded form is kept in memory.
    pub fn memory_use(&self) -> (usize, usize) {
        self.wal.memory()
    }
}

/// Converts index bounds into an inclusive `[lo, hi]`, or `None` if the range is empty.
fn index_range(start: Bound<u64>, end: Bound<u64>) -> Option<(u64, u64)> {
    let lo = match start {
        Bound::Included(i) => i,
        Bound::Excluded(i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let hi = match end {
        Bound::Included(i) => i,
        Bound::Excluded(i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (lo <= hi).then_some((lo, hi))
}

impl<C: LogTypes> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, RaftStorageError> {
        let Some((lo, hi)) = index_range(range.start_bound().cloned(), range.end_bound().cloned())
        else {
            return Ok(Vec::new());
        };
        self.wal.read(lo, hi).raft(Op::ReadLogs)
    }
}

impl LogStore {
    /// The id of the last entry in the log (what a Raft vote compares), read without I/O.
    pub fn last_log_id(&self) -> Option<openraft::LogId<u64>> {
        self.wal.log_state().1
    }
}

impl<C: LogTypes> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, RaftStorageError> {
        let (last_purged_log_id, last_log_id) = self.wal.log_state();
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), RaftStorageError> {
        self.wal.save_vote(vote).await.raft(Op::WriteVote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, RaftStorageError> {
        Ok(self.wal.vote())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), RaftStorageError> {
        // Not synced: on restart a lost marker only means openraft re-applies fewer entries
        // now and the rest once they are committed again. The next sync carries it.
        self.wal.save_committed(committed).raft(Op::WriteLogs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, RaftStorageError> {
        Ok(self.wal.committed())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The callback fires from the WAL's sync thread once a sync covers these entries.
        self.wal.append(entries, callback).await.raft(Op::WriteLogs)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), RaftStorageError> {
        // Not synced here: if a crash undoes the truncation, the old (never acknowledged as
        // ours after this point) entries reappear, which is the state before the truncation.
        // The next append's sync persists the truncation before that append is acknowledged.
        self.wal.truncate(log_id.index).raft(Op::WriteLogs)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), RaftStorageError> {
        // The marker is made durable before any segment is deleted (see `Wal::purge`).
        self.wal.purge(log_id).await.raft(Op::WriteLogs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index bounds become the right inclusive range, and empty ranges are recognised.
    #[test]
    fn index_ranges() {
        use Bound::*;
        assert_eq!(index_range(Included(3), Excluded(5)), Some((3, 4)));
        assert_eq!(index_range(Excluded(3), Included(5)), Some((4, 5)));
        assert_eq!(index_range(Unbounded, Unbounded), Some((0, u64::MAX)));
        assert_eq!(index_range(Included(5), Excluded(5)), None);
        assert_eq!(index_range(Included(0), Excluded(0)), None);
        assert_eq!(index_range(Excluded(u64::MAX), Unbounded), None);
        assert_eq!(index_range(Included(6), Included(5)), None);
    }
}
