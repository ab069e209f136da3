//! The WAL's in-memory view of the log: where every live entry is, the recent entries
//! themselves, and the vote, committed marker and purge point.
//!
//! The same model is fed by replay at open and by live writes, so both follow one rule set:
//! - entries are contiguous: an entry must follow the last one, and only an empty log accepts
//!   any index above the purge point (openraft may start a log at 0 or 1);
//! - `Truncate { from }` drops `[from, ∞)`, `Purge(id)` drops `[.., id.index]` and moves the
//!   purge point;
//! - the decoded entries of a suffix of the log are cached, up to a byte budget
//!   ([`DEFAULT_CACHED_LOG_BYTES`] by default); the rest are read back from their segment
//!   (leaders replicate from the recent suffix).
//!
//! During replay the first remaining segment may start after entries that lived in segments
//! already deleted; those are tracked as `missing` and must all be purged by the end of replay,
//! or a segment that still held live entries is gone (corruption).
//! This module does no I/O.

use crate::error::StorageError;
use crate::types::LogTypes;
use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// Record bytes of decoded entries kept in memory by default. With openraft's defaults here (a
/// snapshot every 5000 entries, 1000 kept after it) and ~150-byte entries the whole live log
/// (~1 MiB) is cached; this bound only matters for very large entries or an unpurged log.
pub const DEFAULT_CACHED_LOG_BYTES: usize = 64 * 1024 * 1024;

/// Where one live entry is.
#[derive(Clone, Debug)]
pub(crate) struct Slot<C: LogTypes> {
    pub(crate) log_id: LogId<u64>,
    /// Sequence number of the segment holding the record.
    pub(crate) seq: u64,
    /// Offset of the record (its header) in that segment.
    pub(crate) offset: u64,
    /// Length of the whole record, header included.
    pub(crate) len: u32,
    /// The decoded entry, while it is in the cached suffix.
    pub(crate) entry: Option<Arc<Entry<C>>>,
}

/// The log state at a segment's creation: everything needed to replay from that segment on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentHeader {
    pub(crate) seq: u64,
    /// Index of the last entry in the log when the segment was created.
    pub(crate) last_index: Option<u64>,
    pub(crate) last_purged: Option<LogId<u64>>,
    pub(crate) vote: Option<Vote<u64>>,
    pub(crate) committed: Option<LogId<u64>>,
}

/// An entry to read: cached, or its location.
pub(crate) enum Found<C: LogTypes> {
    Cached(Arc<Entry<C>>),
    At(Slot<C>),
}

#[derive(Default)]
pub(crate) struct MemLog<C: LogTypes> {
    slots: VecDeque<Slot<C>>,
    /// Index of `slots[0]`.
    first: u64,
    /// Slots from this index on carry their decoded entry.
    cache_from: u64,
    cached_bytes: usize,
    cache_limit: usize,
    /// Replay only: highest index of entries that lived in segments already deleted.
    missing_hi: Option<u64>,
    pub(crate) last_purged: Option<LogId<u64>>,
    pub(crate) vote: Option<Vote<u64>>,
    pub(crate) committed: Option<LogId<u64>>,
}

impl<C: LogTypes> MemLog<C> {
    /// An empty log caching up to `cache_limit` record bytes of entries.
    pub(crate) fn new(cache_limit: usize) -> Self {
        Self {
            cache_limit,
            ..Self::default()
        }
    }

    /// The state replay starts from: the first remaining segment's header.
    pub(crate) fn from_header(header: &SegmentHeader, cache_limit: usize) -> Self {
        Self {
            cache_limit,
            missing_hi: header
                .last_index
                .filter(|&i| Some(i) > header.last_purged.map(|p| p.index)),
            last_purged: header.last_purged,
            vote: header.vote,
            committed: header.committed,
            ..Self::default()
        }
    }

    /// The header a segment created now must carry.
    pub(crate) fn header(&self, seq: u64) -> SegmentHeader {
        SegmentHeader {
            seq,
            last_index: self.last_index(),
            last_purged: self.last_purged,
            vote: self.vote,
            committed: self.committed,
        }
    }

    /// Checks that a later segment's header matches the state replayed so far, i.e. that no
    /// record of the previous segment was lost.
    pub(crate) fn check_header(&self, header: &SegmentHeader) -> Result<(), StorageError> {
        let expected = self.header(header.seq);
        if *header != expected {
            return Err(StorageError::corrupt(
                "raft log segment",
                format!(
                    "segment {} starts from {header:?}, but the segments before it end at {expected:?}",
                    header.seq
                ),
            ));
        }
        Ok(())
    }

    /// Ends replay: refuses a log whose live entries lived in a deleted segment.
    pub(crate) fn finish_replay(&mut self) -> Result<(), StorageError> {
        if let Some(hi) = self.missing_hi {
            return Err(StorageError::corrupt(
                "raft log",
                format!(
                    "entries up to {hi} are not purged (purged: {:?}) but their segment is gone",
                    self.last_purged
                ),
            ));
        }
        Ok(())
    }

    fn end(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    fn last_index(&self) -> Option<u64> {
        self.slots
            .back()
            .map(|s| s.log_id.index)
            .or(self.missing_hi)
    }

    /// The last entry's log id, or the purge point if no entry is left.
    pub(crate) fn last_log_id(&self) -> Option<LogId<u64>> {
        self.slots.back().map(|s| s.log_id).or(self.last_purged)
    }

    /// Segment of the first live entry, if any: every older segment holds nothing live.
    pub(crate) fn first_live_seq(&self) -> Option<u64> {
        self.slots.front().map(|s| s.seq)
    }

    /// Refuses an entry at `index` that would not follow the log contiguously.
    pub(crate) fn check_next(&self, index: u64) -> Result<(), StorageError> {
        let ok = match self.last_index() {
            Some(last) => Some(index) == last.checked_add(1),
            None => self.last_purged.is_none_or(|p| index > p.index),
        };
        if ok {
            Ok(())
        } else {
            Err(StorageError::corrupt(
                "raft log append",
                format!(
                    "entry {index} does not follow {:?} (purged {:?})",
                    self.last_index(),
                    self.last_purged
                ),
            ))
        }
    }

    /// Adds the next entry (checked with [`Self::check_next`] first).
    pub(crate) fn push(&mut self, slot: Slot<C>) -> Result<(), StorageError> {
        self.check_next(slot.log_id.index)?;
        if self.slots.is_empty() {
            self.first = slot.log_id.index;
            self.cache_from = self.first;
        }
        if slot.entry.is_some() {
            self.cached_bytes += slot.len as usize;
        }
        self.slots.push_back(slot);
        self.evict();
        Ok(())
    }

    fn evict(&mut self) {
        while self.cached_bytes > self.cache_limit && self.cache_from < self.end() {
            let slot = &mut self.slots[(self.cache_from - self.first) as usize];
            if slot.entry.take().is_some() {
                self.cached_bytes -= slot.len as usize;
            }
            self.cache_from += 1;
        }
    }

    fn forget(&mut self, slot: &Slot<C>) {
        if slot.entry.is_some() {
            self.cached_bytes -= slot.len as usize;
        }
    }

    /// Deletes every entry with index `from` or above.
    pub(crate) fn truncate(&mut self, from: u64) {
        while self.slots.back().is_some_and(|s| s.log_id.index >= from) {
            if let Some(slot) = self.slots.pop_back() {
                self.forget(&slot);
            }
        }
        if self.missing_hi.is_some_and(|hi| hi >= from) {
            self.missing_hi = from.checked_sub(1).filter(|&i| i >= self.first_unpurged());
        }
    }

    /// Moves the purge point to `upto` and deletes every entry up to it.
    pub(crate) fn purge(&mut self, upto: LogId<u64>) {
        if self.last_purged.is_some_and(|p| p.index >= upto.index) {
            return;
        }
        self.last_purged = Some(upto);
        while self
            .slots
            .front()
            .is_some_and(|s| s.log_id.index <= upto.index)
        {
            if let Some(slot) = self.slots.pop_front() {
                self.forget(&slot);
                self.first += 1;
            }
        }
        self.cache_from = self.cache_from.max(self.first);
        if self.missing_hi.is_some_and(|hi| hi <= upto.index) {
            self.missing_hi = None;
        }
    }

    fn first_unpurged(&self) -> u64 {
        self.last_purged.map_or(0, |p| p.index + 1)
    }

    /// The live entries with index in `[lo, hi]`, cached or located.
    pub(crate) fn find(&self, lo: u64, hi: u64) -> Vec<Found<C>> {
        let lo = lo.max(self.first);
        let hi = hi.min(self.end().saturating_sub(1));
        if self.slots.is_empty() || lo > hi {
            return Vec::new();
        }
        self.slots
            .range((lo - self.first) as usize..=(hi - self.first) as usize)
            .map(|slot| match &slot.entry {
                Some(entry) => Found::Cached(entry.clone()),
                None => Found::At(slot.clone()),
            })
            .collect()
    }

    /// Entries held, and record bytes of the cached ones (for tests and metrics).
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.slots.len(), self.cached_bytes)
    }
}
