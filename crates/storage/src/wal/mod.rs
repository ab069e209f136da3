//! The Raft log's own write-ahead log: segmented, append-only, one `fdatasync` per group of
//! appends. It replaces the sled trees `raft_log`/`raft_meta` (see `import` for the upgrade).
//!
//! # Layout
//! `<storage dir>/raft-wal/` holds segment files `<seq>-<first index>.wal` (see `segment`).
//! Each is a sequence of CRC-framed records (see `record`): first a `SegmentHeader` record with
//! the log state at the segment's creation (last index, purge point, vote, committed), then
//! `Entry`, `Vote`, `Committed`, `Truncate { from }` and `Purge(log id)` records in the order the
//! log store issued them. Replaying the segments in order rebuilds the state (`memlog`); the
//! header makes the oldest remaining segment readable alone, so deleting older segments never
//! loses the vote or the purge point.
//!
//! # Durability
//! - An append is one `pwrite` of all its records into the tail segment, by the caller
//!   (openraft's core task); the entries are readable at once. openraft's callback then waits in
//!   `pending` for the sync thread, which takes every waiter queued so far, `fdatasync`s the tail
//!   once and completes them all (group commit). Waiters are queued under the same lock as the
//!   write, after it, and the sync thread notes the written length under that lock before
//!   syncing, so a completed sync covers every byte of the waiters it completes.
//! - `save_vote` and `purge` wait for the same sync; `save_committed` and `truncate` do not
//!   (a lost committed marker only means re-applying less; a lost truncation resurrects entries
//!   that were never acknowledged as ours after it, and the next append's sync persists it).
//! - A segment rolls over at [`WalOptions::segment_bytes`]: the old tail is trimmed and fsynced
//!   by the writer before the new segment (header fsynced, renamed into place, directory
//!   fsynced) takes writes, so unsynced bytes only ever exist in the tail.
//! - `purge` makes its record durable, then deletes the segments that hold no live entry.
//! - A failed write or sync poisons the log: after an fsync error the kernel may have dropped
//!   dirty pages, so a later "successful" sync proves nothing. Every later call fails.
//!
//! # Recovery
//! Open replays every segment, verifying CRCs and that each header matches the state the
//! segments before it end in. A torn or damaged tail of the *last* segment (a crash mid-write:
//! those bytes were never acknowledged) is cut off with a warning; damage anywhere else is
//! `StorageError::Corrupt`, never skipped. The tail is fsynced once at open, so what replay
//! returned is durable before anything new is acknowledged.
//!
//! # Why our own WAL and not TiKV's `raft-engine`
//! raft-engine (0.4) is a proven multi-raft log with group commit, but it wants entries as
//! rust-protobuf `Message`s with its own `MessageExt` glue (ours are serde/postcard openraft
//! entries), drags in protobuf, prometheus, lz4/zstd and more on a two-core build, stores
//! the vote as a raw key-value beside the log, and its purge is a cooperative rewrite/GC of
//! shared files. A replica here hosts one Raft group, so a per-group segmented log is
//! enough: about a thousand lines we can read whole, whose record format, sync points and
//! recovery rules are exactly openraft's storage contract and are tested against it.
//!
//! This module must not touch sled (except `import`) or the state machine.

mod import;
mod memlog;
mod record;
mod segment;

pub(crate) use import::import_sled_log;
pub use memlog::DEFAULT_CACHED_LOG_BYTES;
pub use segment::WalSync;

use crate::codec;
use crate::error::StorageError;
use crate::types::LogTypes;
use memlog::{Found, MemLog, SegmentHeader, Slot};
use openraft::storage::LogFlushed;
use openraft::{Entry, LogId, Vote};
use record::{Read, RecordKind};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// The WAL's directory inside the storage directory.
pub const WAL_DIR: &str = "raft-wal";

/// Where the upgrade from sled builds the WAL before renaming it into place.
pub(crate) const WAL_TMP_DIR: &str = "raft-wal.tmp";

/// Segment size at which the tail rolls over (a single larger batch still goes in one piece).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Callers waiting for a sync at once; the next one waits for a slot (back-pressure). openraft
/// 0.9 waits for each append before the next, so this is only reached by many direct callers.
pub const MAX_PENDING_SYNCS: usize = 1024;

/// How the WAL stores and syncs its segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Roll over to a new segment once the tail would grow past this many bytes.
    pub segment_bytes: u64,
    /// Reserve each segment's full size with `fallocate` when it is created (default; skipped
    /// on file systems without `fallocate`).
    pub preallocate: bool,
    /// `fdatasync` or `fsync` for group commits.
    pub sync: WalSync,
    /// Record bytes of recent entries kept decoded in memory; older ones are read from disk.
    pub cached_log_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            // Measured here (examples/log_bench.rs): one-entry appends 135-165 us with
            // preallocation against 180-250 us without, as fdatasync then need not
            // journal a grown file size.
            preallocate: true,
            sync: WalSync::Data,
            cached_log_bytes: DEFAULT_CACHED_LOG_BYTES,
        }
    }
}

impl WalOptions {
    fn preallocate_bytes(&self) -> u64 {
        if self.preallocate {
            self.segment_bytes
        } else {
            0
        }
    }
}

/// One segment file.
struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes from the start known durable (the test-only power-loss seam reads this).
    synced: u64,
    /// Where the records after the header start.
    data_start: u64,
}

/// Something waiting for the next sync.
enum Waiter<C: LogTypes> {
    /// openraft's append callback.
    Log(LogFlushed<C>, OwnedSemaphorePermit),
    /// A caller awaiting durability of everything written before it asked.
    Notify(oneshot::Sender<Result<(), String>>, OwnedSemaphorePermit),
}

impl<C: LogTypes> Waiter<C> {
    fn complete(self, outcome: &Result<(), String>) {
        match self {
            Self::Log(callback, _permit) => {
                callback.log_io_completed(outcome.clone().map_err(io::Error::other));
            }
            Self::Notify(done, _permit) => {
                // The waiter may have been cancelled; nothing to tell it then.
                let _ = done.send(outcome.clone());
            }
        }
    }
}

/// Files and log state; guarded by one mutex, held only for in-memory work and `pwrite`.
struct State<C: LogTypes> {
    log: MemLog<C>,
    segments: BTreeMap<u64, Segment>,
    /// Write position in the tail segment.
    tail_len: u64,
    pending: Vec<Waiter<C>>,
    poisoned: Option<String>,
    stopping: bool,
}

struct Shared<C: LogTypes> {
    dir: PathBuf,
    options: WalOptions,
    state: Mutex<State<C>>,
    /// Wakes the sync thread.
    wake: Condvar,
    permits: Arc<Semaphore>,
}

/// Stops the sync thread once the last `Wal` handle is gone.
struct Owner<C: LogTypes>(Arc<Shared<C>>);

impl<C: LogTypes> Drop for Owner<C> {
    fn drop(&mut self) {
        self.0.lock().stopping = true;
        self.0.wake.notify_all();
    }
}

/// A handle to the WAL. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Wal<C: LogTypes> {
    shared: Arc<Shared<C>>,
    _owner: Arc<Owner<C>>,
}

impl<C: LogTypes> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // A panic while holding the lock leaves the state unknown; poison the log instead.
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state
                .poisoned
                .get_or_insert_with(|| "a thread panicked while writing the log".into());
            state
        })
    }
}

fn unavailable(reason: &str) -> StorageError {
    StorageError::LogUnavailable(reason.to_string())
}

impl<C: LogTypes> State<C> {
    /// Creates a WAL holding only one segment with `log`'s state as its header.
    fn create(dir: &Path, options: &WalOptions, log: MemLog<C>) -> Result<Self, StorageError> {
        let mut state = Self {
            log,
            segments: BTreeMap::new(),
            tail_len: 0,
            pending: Vec::new(),
            poisoned: None,
            stopping: false,
        };
        state.add_segment(dir, options, 0)?;
        Ok(state)
    }

    /// Replays every segment in `dir`.
    fn open(dir: &Path, options: &WalOptions) -> Result<Self, StorageError> {
        let listed = segment::list(dir)?;
        let Some(tail_seq) = listed.last().map(|(seq, _)| *seq) else {
            return Err(StorageError::corrupt(
                "raft log directory",
                format!("{} holds no segment", dir.display()),
            ));
        };
        let mut log: Option<MemLog<C>> = None;
        let mut segments = BTreeMap::new();
        let mut tail_len = 0;
        for (seq, path) in listed {
            let bytes = std::fs::read(&path)?;
            let (header, data_start) = read_header(&bytes, &path)?;
            if header.seq != seq {
                return Err(StorageError::corrupt(
                    "raft log segment",
                    format!("{} carries sequence {}", path.display(), header.seq),
                ));
            }
            let log = match &mut log {
                Some(log) => {
                    log.check_header(&header)?;
                    log
                }
                None => log.insert(MemLog::from_header(&header, options.cached_log_bytes)),
            };
            let end = replay(&bytes, data_start, seq, log, &path, seq == tail_seq)?;
            let file = segment::open_rw(&path, false)?;
            if seq == tail_seq {
                repair_tail(&file, &path, &bytes, end, options)?;
                tail_len = end as u64;
            }
            let segment = Segment {
                path,
                file: Arc::new(file),
                synced: end as u64,
                data_start: data_start as u64,
            };
            segments.insert(seq, segment);
        }
        let Some(mut log) = log else {
            return Err(StorageError::corrupt("raft log", "no segment replayed"));
        };
        log.finish_replay()?;
        Ok(Self {
            log,
            segments,
            tail_len,
            pending: Vec::new(),
            poisoned: None,
            stopping: false,
        })
    }

    fn ensure_ok(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(reason) => Err(unavailable(reason)),
            None => Ok(()),
        }
    }

    fn tail(&self) -> Result<(u64, &Segment), StorageError> {
        self.segments
            .last_key_value()
            .map(|(seq, segment)| (*seq, segment))
            .ok_or_else(|| unavailable("the log has no tail segment"))
    }

    /// Creates segment `seq` with the current state as its header and makes it the tail.
    fn add_segment(
        &mut self,
        dir: &Path,
        options: &WalOptions,
        seq: u64,
    ) -> Result<(), StorageError> {
        let header = self.log.header(seq);
        let mut bytes = Vec::new();
        record::push(
            &mut bytes,
            RecordKind::SegmentHeader,
            &codec::encode(&header)?,
        );
        let first_index = header
            .last_index
            .or(header.last_purged.map(|p| p.index))
            .map_or(0, |i| i + 1);
        let (file, path) =
            segment::create(dir, seq, first_index, &bytes, options.preallocate_bytes())?;
        let len = bytes.len() as u64;
        self.segments.insert(
            seq,
            Segment {
                path,
                file: Arc::new(file),
                synced: len,
                data_start: len,
            },
        );
        self.tail_len = len;
        Ok(())
    }

    /// Makes the tail durable, trims its unused preallocation and starts the next segment.
    fn roll_over(&mut self, dir: &Path, options: &WalOptions) -> Result<(), StorageError> {
        let (seq, tail) = self.tail()?;
        tail.file.set_len(self.tail_len)?;
        tail.file.sync_all()?;
        let tail_len = self.tail_len;
        if let Some(tail) = self.segments.get_mut(&seq) {
            tail.synced = tail_len;
        }
        self.add_segment(dir, options, seq + 1)
    }

    /// Writes `bytes` (whole records) at the end of the log in one `pwrite`, rolling over
    /// first if the tail is full; returns the segment and offset they went to. Any failure
    /// poisons the log: a partly written record must never be followed by acknowledged ones.
    fn write(
        &mut self,
        dir: &Path,
        options: &WalOptions,
        bytes: &[u8],
    ) -> Result<(u64, u64), StorageError> {
        self.ensure_ok()?;
        let result = self.write_inner(dir, options, bytes);
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log write failed; the log is poisoned");
            self.poisoned = Some(format!("a log write failed: {e}"));
        }
        result
    }

    fn write_inner(
        &mut self,
        dir: &Path,
        options: &WalOptions,
        bytes: &[u8],
    ) -> Result<(u64, u64), StorageError> {
        let (_, tail) = self.tail()?;
        let holds_records = self.tail_len > tail.data_start;
        if holds_records && self.tail_len + bytes.len() as u64 > options.segment_bytes {
            self.roll_over(dir, options)?;
        }
        let (seq, tail) = self.tail()?;
        let at = self.tail_len;
        tail.file.write_all_at(bytes, at)?;
        self.tail_len += bytes.len() as u64;
        Ok((seq, at))
    }

    /// Writes one non-entry record.
    fn write_record(
        &mut self,
        dir: &Path,
        options: &WalOptions,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<(), StorageError> {
        let mut bytes = Vec::with_capacity(record::RECORD_HEADER_BYTES + payload.len());
        record::push(&mut bytes, kind, payload);
        self.write(dir, options, &bytes).map(drop)
    }
}

/// Reads and decodes a segment's first record, which must be its header.
fn read_header(bytes: &[u8], path: &Path) -> Result<(SegmentHeader, usize), StorageError> {
    match record::read(bytes, 0) {
        Read::Record {
            kind: RecordKind::SegmentHeader,
            payload,
            next,
        } => Ok((codec::decode("raft log segment header", payload)?, next)),
        other => Err(StorageError::corrupt(
            "raft log segment",
            format!("{} does not start with a header: {other:?}", path.display()),
        )),
    }
}

/// Applies the records of one segment from `at` to `log`; returns where the valid records end.
/// Damage ends the tail segment there; in any other segment it is an error.
fn replay<C: LogTypes>(
    bytes: &[u8],
    mut at: usize,
    seq: u64,
    log: &mut MemLog<C>,
    path: &Path,
    is_tail: bool,
) -> Result<usize, StorageError> {
    let damaged = |at: usize, detail: String| {
        StorageError::corrupt(
            "raft log segment",
            format!("{} at offset {at}: {detail}", path.display()),
        )
    };
    loop {
        match record::read(bytes, at) {
            Read::Record {
                kind,
                payload,
                next,
            } => {
                apply(log, kind, payload, seq, at, next).map_err(|e| damaged(at, e.to_string()))?;
                at = next;
            }
            Read::End => {
                if !is_tail && bytes[at..].iter().any(|&b| b != 0) {
                    return Err(damaged(at, "data after the end marker".into()));
                }
                return Ok(at);
            }
            Read::Invalid(reason) if is_tail => {
                tracing::debug!(path = %path.display(), at, %reason, "end of the raft log");
                return Ok(at);
            }
            Read::Invalid(reason) => return Err(damaged(at, reason)),
            Read::UnknownKind(kind) => {
                return Err(damaged(at, format!("unknown record type {kind}")));
            }
        }
    }
}

/// Applies one replayed record to the in-memory log.
fn apply<C: LogTypes>(
    log: &mut MemLog<C>,
    kind: RecordKind,
    payload: &[u8],
    seq: u64,
    at: usize,
    next: usize,
) -> Result<(), StorageError> {
    match kind {
        RecordKind::SegmentHeader => {
            return Err(StorageError::corrupt(
                "raft log segment",
                "a header in the middle of a segment",
            ));
        }
        RecordKind::Entry => {
            let entry: Entry<C> = codec::decode("log entry", payload)?;
            log.push(Slot {
                log_id: entry.log_id,
                seq,
                offset: at as u64,
                len: (next - at) as u32,
                entry: Some(Arc::new(entry)),
            })?;
        }
        RecordKind::Vote => log.vote = Some(codec::decode("vote", payload)?),
        RecordKind::Committed => log.committed = codec::decode("committed marker", payload)?,
        RecordKind::Truncate => log.truncate(codec::decode("truncation", payload)?),
        RecordKind::Purge => log.purge(codec::decode("purge marker", payload)?),
    }
    Ok(())
}

/// Cuts a torn or damaged end off the tail segment and makes the tail durable once.
fn repair_tail(
    file: &File,
    path: &Path,
    bytes: &[u8],
    end: usize,
    options: &WalOptions,
) -> Result<(), StorageError> {
    let rest = &bytes[end..];
    if rest.iter().any(|&b| b != 0) {
        tracing::warn!(
            path = %path.display(),
            offset = end,
            cut_bytes = rest.len(),
            "cutting a torn or damaged tail off the raft log (never acknowledged)"
        );
        file.set_len(end as u64)?;
        segment::preallocate(file, options.preallocate_bytes())?;
    }
    // What replay returned may still be only in the page cache (after a process crash).
    file.sync_all()?;
    Ok(())
}

/// Builds a new WAL with `build` in `<parent>/raft-wal.tmp` (removing one an earlier crash
/// left), which must leave it durable, then renames it to `<parent>/raft-wal` and fsyncs
/// `parent`: a crash at any point leaves either no WAL or a complete one.
pub(crate) fn create_atomically<T>(
    parent: &Path,
    build: impl FnOnce(&Path) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let tmp = parent.join(WAL_TMP_DIR);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp)?;
    let built = build(&tmp)?;
    segment::sync_dir(&tmp)?;
    std::fs::rename(&tmp, parent.join(WAL_DIR))?;
    segment::sync_dir(parent)?;
    Ok(built)
}

impl<C: LogTypes> Wal<C> {
    /// Opens the WAL in `dir` (which must exist) and starts its sync thread.
    pub(crate) fn open(dir: &Path, options: WalOptions) -> Result<Self, StorageError> {
        let state = State::open(dir, &options)?;
        Self::start(dir, options, state)
    }

    /// Opens the WAL in `<parent>/raft-wal`, creating `parent` and an empty WAL first if there
    /// is none.
    pub(crate) fn open_or_create(parent: &Path, options: WalOptions) -> Result<Self, StorageError> {
        std::fs::create_dir_all(parent)?;
        let dir = parent.join(WAL_DIR);
        if !dir.exists() {
            create_atomically(parent, |tmp| {
                let state =
                    State::<C>::create(tmp, &options, MemLog::new(options.cached_log_bytes))?;
                state.tail()?.1.file.sync_all()?;
                Ok(())
            })?;
        }
        Self::open(&dir, options)
    }

    fn start(dir: &Path, options: WalOptions, state: State<C>) -> Result<Self, StorageError> {
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            state: Mutex::new(state),
            wake: Condvar::new(),
            permits: Arc::new(Semaphore::new(MAX_PENDING_SYNCS)),
        });
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("ravel-wal-sync".into())
            .spawn(move || sync_loop(&for_thread))?;
        Ok(Self {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, StorageError> {
        self.shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable("the log is closed"))
    }

    /// Writes `entries`; `callback` fires once they are durable.
    pub(crate) async fn append<I>(
        &self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<C>>,
    {
        // Entries at or below the purge point are already covered by a snapshot: openraft
        // itself never appends them, but its conformance suite does, after the start-up purge
        // that closes a gap below `last_applied`. Writing them would break contiguity.
        // (Only the caller, openraft's core task, moves the purge point.)
        let purged = self.shared.lock().log.last_purged.map(|p| p.index);
        let mut bytes = Vec::new();
        let mut staged = Vec::new();
        for entry in entries {
            if purged.is_some_and(|p| entry.log_id.index <= p) {
                continue;
            }
            let payload = codec::encode(&entry)?;
            if !record::check_len(payload.len()) {
                return Err(StorageError::corrupt(
                    "log entry",
                    format!("{} bytes, over the record limit", payload.len()),
                ));
            }
            let start = bytes.len();
            record::push(&mut bytes, RecordKind::Entry, &payload);
            staged.push((start, bytes.len() - start, Arc::new(entry)));
        }
        let permit = self.permit().await?;
        let shared = &self.shared;
        let mut state = shared.lock();
        state.ensure_ok()?;
        // Refuse a non-contiguous batch before writing any of it.
        for (i, (_, _, entry)) in staged.iter().enumerate() {
            let index = entry.log_id.index;
            if i == 0 {
                state.log.check_next(index)?;
            } else if Some(index) != staged[i - 1].2.log_id.index.checked_add(1) {
                return Err(StorageError::corrupt(
                    "raft log append",
                    format!("batch is not contiguous at {index}"),
                ));
            }
        }
        if !bytes.is_empty() {
            let (seq, at) = state.write(&shared.dir, &shared.options, &bytes)?;
            for (start, len, entry) in staged {
                state.log.push(Slot {
                    log_id: entry.log_id,
                    seq,
                    offset: at + start as u64,
                    len: len as u32,
                    entry: Some(entry),
                })?;
            }
        }
        state.pending.push(Waiter::Log(callback, permit));
        drop(state);
        shared.wake.notify_one();
        Ok(())
    }

    /// Writes one non-entry record and updates the in-memory state with `update`.
    fn write_meta(
        &self,
        kind: RecordKind,
        payload: &[u8],
        update: impl FnOnce(&mut MemLog<C>),
    ) -> Result<(), StorageError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        state.write_record(&shared.dir, &shared.options, kind, payload)?;
        update(&mut state.log);
        Ok(())
    }

    /// Returns once everything written before the call is durable.
    pub(crate) async fn sync(&self) -> Result<(), StorageError> {
        let permit = self.permit().await?;
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            state.ensure_ok()?;
            state.pending.push(Waiter::Notify(tx, permit));
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(unavailable(&reason)),
            Err(_) => Err(unavailable("the sync thread dropped a request")),
        }
    }

    /// Writes the vote and returns once it is durable.
    pub(crate) async fn save_vote(&self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let vote = *vote;
        self.write_meta(RecordKind::Vote, &codec::encode(&vote)?, |log| {
            log.vote = Some(vote);
        })?;
        self.sync().await
    }

    /// Writes the committed marker; it becomes durable with the next sync.
    pub(crate) fn save_committed(&self, committed: Option<LogId<u64>>) -> Result<(), StorageError> {
        self.write_meta(RecordKind::Committed, &codec::encode(&committed)?, |log| {
            log.committed = committed;
        })
    }

    /// Deletes every entry from index `from` on (durable with the next sync).
    pub(crate) fn truncate(&self, from: u64) -> Result<(), StorageError> {
        self.write_meta(RecordKind::Truncate, &codec::encode(&from)?, |log| {
            log.truncate(from);
        })
    }

    /// Purges every entry up to `upto`: the record is made durable first, then the segments
    /// that no longer hold a live entry are deleted.
    pub(crate) async fn purge(&self, upto: LogId<u64>) -> Result<(), StorageError> {
        self.write_meta(RecordKind::Purge, &codec::encode(&upto)?, |log| {
            log.purge(upto);
        })?;
        self.sync().await?;
        let doomed: Vec<PathBuf> = {
            let mut state = self.shared.lock();
            let (tail_seq, _) = state.tail()?;
            let keep_from = state.log.first_live_seq().unwrap_or(tail_seq).min(tail_seq);
            let kept = state.segments.split_off(&keep_from);
            let doomed = std::mem::replace(&mut state.segments, kept);
            doomed.into_values().map(|s| s.path).collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        let dir = self.shared.dir.clone();
        let removed = tokio::task::spawn_blocking(move || -> io::Result<()> {
            for path in &doomed {
                std::fs::remove_file(path)?;
            }
            segment::sync_dir(&dir)
        })
        .await
        .map_err(|e| unavailable(&format!("segment deletion failed: {e}")))?;
        if let Err(e) = removed {
            // Replay would still be right with the files present, but a half-done deletion
            // may have left a gap in the sequence; stop rather than guess.
            self.shared.lock().poisoned = Some(format!("deleting purged segments failed: {e}"));
            return Err(e.into());
        }
        Ok(())
    }

    /// The live entries with index in `[lo, hi]`.
    pub(crate) fn read(&self, lo: u64, hi: u64) -> Result<Vec<Entry<C>>, StorageError> {
        let found: Vec<(Found<C>, Option<Arc<File>>)> = {
            let state = self.shared.lock();
            state
                .log
                .find(lo, hi)
                .into_iter()
                .map(|found| {
                    let file = match &found {
                        Found::At(slot) => state.segments.get(&slot.seq).map(|s| s.file.clone()),
                        Found::Cached(_) => None,
                    };
                    (found, file)
                })
                .collect()
        };
        // Older entries are read back outside the lock: records are never rewritten, and an
        // open descriptor outlives the deletion of a purged segment.
        found
            .into_iter()
            .map(|(found, file)| match (found, file) {
                (Found::Cached(entry), _) => Ok(Entry::clone(&entry)),
                (Found::At(slot), Some(file)) => read_entry(&file, &slot),
                (Found::At(slot), None) => Err(StorageError::corrupt(
                    "log entry",
                    format!("segment {} of entry {} is gone", slot.seq, slot.log_id),
                )),
            })
            .collect()
    }

    /// `(last purged, last log id)` as openraft's `LogState` wants them.
    pub(crate) fn log_state(&self) -> (Option<LogId<u64>>, Option<LogId<u64>>) {
        let state = self.shared.lock();
        (state.log.last_purged, state.log.last_log_id())
    }

    pub(crate) fn vote(&self) -> Option<Vote<u64>> {
        self.shared.lock().log.vote
    }

    pub(crate) fn committed(&self) -> Option<LogId<u64>> {
        self.shared.lock().log.committed
    }

    /// Bytes of the segment files.
    pub(crate) fn size_on_disk_bytes(&self) -> Result<u64, StorageError> {
        let paths: Vec<PathBuf> = {
            let state = self.shared.lock();
            state.segments.values().map(|s| s.path.clone()).collect()
        };
        let mut total = 0;
        for path in paths {
            match std::fs::metadata(&path) {
                Ok(meta) => total += meta.len(),
                // Purged meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }

    /// Test seam: each segment file with the byte length its last completed sync covered.
    pub(crate) fn synced_extents(&self) -> Vec<(PathBuf, u64)> {
        let state = self.shared.lock();
        state
            .segments
            .values()
            .map(|s| (s.path.clone(), s.synced))
            .collect()
    }

    /// Live entries and bytes of cached entries.
    pub(crate) fn memory(&self) -> (usize, usize) {
        self.shared.lock().log.sizes()
    }
}

/// Reads one entry back from its segment, verifying the record's CRC and its log id.
fn read_entry<C: LogTypes>(file: &File, slot: &Slot<C>) -> Result<Entry<C>, StorageError> {
    let mut buf = vec![0; slot.len as usize];
    file.read_exact_at(&mut buf, slot.offset)?;
    let payload = record::verify(&buf, RecordKind::Entry)
        .map_err(|detail| StorageError::corrupt("log entry", detail))?;
    let entry: Entry<C> = codec::decode("log entry", payload)?;
    if entry.log_id != slot.log_id {
        return Err(StorageError::corrupt(
            "log entry",
            format!("found {} where {} was written", entry.log_id, slot.log_id),
        ));
    }
    Ok(entry)
}

/// The sync thread: one `fdatasync` per group of waiters, until the WAL is dropped.
fn sync_loop<C: LogTypes>(shared: &Shared<C>) {
    loop {
        let (waiters, target) = {
            let mut state = shared.lock();
            while state.pending.is_empty() && !state.stopping {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.pending.is_empty() {
                return;
            }
            let waiters = std::mem::take(&mut state.pending);
            let target = match (&state.poisoned, state.tail()) {
                (Some(reason), _) => Err(reason.clone()),
                (None, Ok((seq, tail))) => Ok((seq, tail.file.clone(), state.tail_len)),
                (None, Err(e)) => Err(e.to_string()),
            };
            (waiters, target)
        };
        let outcome = target.and_then(|(seq, file, upto)| {
            let started = std::time::Instant::now();
            let result = shared.options.sync.sync(&file);
            crate::metrics::record_log_sync(started.elapsed(), waiters.len());
            let mut state = shared.lock();
            match result {
                Ok(()) => {
                    if let Some(segment) = state.segments.get_mut(&seq) {
                        segment.synced = segment.synced.max(upto);
                    }
                    Ok(())
                }
                Err(e) => {
                    let reason = format!("log sync failed: {e}");
                    tracing::error!(%reason, "raft log sync failed; the log is poisoned");
                    Err(state.poisoned.get_or_insert(reason).clone())
                }
            }
        });
        for waiter in waiters {
            waiter.complete(&outcome);
        }
    }
}
