//! The Raft log store (openraft `RaftLogStorage` + `RaftLogReader`) on two sled trees.
//!
//! `raft_log` holds entries keyed by big-endian index; `raft_meta` holds the vote, the
//! committed marker and the last purged log id. Durability contract (openraft 0.9):
//! - `append` makes entries readable at once and completes openraft's callback only after the
//!   group-commit flusher has made them durable (openraft then counts this replica toward the
//!   commit quorum);
//! - `save_vote` returns only once the vote is durable (else a restart could vote twice in a
//!   term);
//! - `purge` makes `last_purged` durable before deleting anything, so a crash cannot leave a
//!   hole between the purge marker and the first remaining entry;
//! - `save_committed` is not fsynced: a lost marker only means re-applying from the log.
//!
//! All writes are issued by openraft's single core task in call order, and sled persists them
//! in that order, so a crash leaves a prefix of them. This module must not read or write the
//! state machine, and must not call sled's `flush_async`.

use crate::codec::{self, RAFT_COMMITTED, RAFT_LAST_PURGED, RAFT_VOTE};
use crate::error::{IntoRaft, Op, RaftStorageError, StorageError};
use crate::flusher::Flusher;
use crate::types::TypeConfig;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

/// The Raft log store. Cloning gives another handle to the same log (used as the log reader).
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
}

impl LogStore {
    pub(crate) fn new(log: sled::Tree, meta: sled::Tree, flusher: Flusher) -> Self {
        Self { log, meta, flusher }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static [u8],
    ) -> Result<Option<T>, StorageError> {
        self.meta
            .get(key)?
            .map(|bytes| codec::decode("raft metadata", &bytes))
            .transpose()
    }

    fn last_purged(&self) -> Result<Option<LogId<u64>>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId<u64>>>(RAFT_LAST_PURGED)?
            .flatten())
    }

    fn last_entry_id(&self) -> Result<Option<LogId<u64>>, StorageError> {
        match self.log.last()? {
            Some((_, bytes)) => Ok(Some(decode_entry(&bytes)?.log_id)),
            None => Ok(None),
        }
    }

    fn read_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let Some((lo, hi)) = index_range(start, end) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for item in self.log.range(codec::log_key(lo)..=codec::log_key(hi)) {
            let (key, bytes) = item?;
            let entry = decode_entry(&bytes)?;
            // Defensive: an entry stored under another index means the tree is corrupt.
            if entry.log_id.index != codec::log_index(&key)? {
                return Err(StorageError::corrupt(
                    "log entry",
                    format!("{} stored at {key:?}", entry.log_id),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Writes `entries` to the log tree in one atomic batch.
    fn write_entries<I>(&self, entries: I) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(
                &codec::log_key(entry.log_id.index)[..],
                codec::encode(&entry)?,
            );
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Removes every entry with index in `[lo, hi]`, in one atomic batch.
    fn remove_range(&self, lo: u64, hi: u64) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in self
            .log
            .range(codec::log_key(lo)..=codec::log_key(hi))
            .keys()
        {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError> {
    codec::decode("log entry", bytes)
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

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        self.read_range(range.start_bound().cloned(), range.end_bound().cloned())
            .raft(Op::ReadLogs)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id = self.last_purged().raft(Op::ReadLogs)?;
        let last_log_id = self
            .last_entry_id()
            .raft(Op::ReadLogs)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), RaftStorageError> {
        let bytes = codec::encode(vote).raft(Op::WriteVote)?;
        self.meta.insert(RAFT_VOTE, bytes).raft(Op::WriteVote)?;
        self.flusher.sync().await.raft(Op::WriteVote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, RaftStorageError> {
        self.read_meta(RAFT_VOTE).raft(Op::ReadVote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), RaftStorageError> {
        // No fsync: on restart a lost marker only means openraft re-applies fewer entries now
        // and the rest once they are committed again.
        let bytes = codec::encode(&committed).raft(Op::WriteLogs)?;
        self.meta
            .insert(RAFT_COMMITTED, bytes)
            .raft(Op::WriteLogs)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, RaftStorageError> {
        Ok(self
            .read_meta::<Option<LogId<u64>>>(RAFT_COMMITTED)
            .raft(Op::ReadLogs)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_entries(entries).raft(Op::WriteLogs)?;
        // The callback fires only once the flusher has fsynced this batch.
        self.flusher.submit_log(callback).await.raft(Op::WriteLogs)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), RaftStorageError> {
        // Not fsynced here: if a crash undoes the truncation, the old (never acknowledged as
        // ours after this point) entries reappear, which is the state before the truncation.
        // The next append's flush persists the truncation before that append is acknowledged.
        self.remove_range(log_id.index, u64::MAX)
            .raft(Op::WriteLogs)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), RaftStorageError> {
        let bytes = codec::encode(&Some(log_id)).raft(Op::WriteLogs)?;
        self.meta
            .insert(RAFT_LAST_PURGED, bytes)
            .raft(Op::WriteLogs)?;
        // The marker must be durable before any entry goes, or a crash could leave a hole.
        self.flusher.sync().await.raft(Op::WriteLogs)?;
        self.remove_range(0, log_id.index).raft(Op::WriteLogs)
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
