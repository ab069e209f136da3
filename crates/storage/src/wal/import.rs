//! Upgrade in place: moves a log kept in sled's `raft_log`/`raft_meta` trees (the layout
//! before the WAL) into a new WAL.
//!
//! The WAL is built completely in `raft-wal.tmp`, fsynced, and renamed to `raft-wal` (then the
//! storage directory is fsynced), so a crash at any point leaves either no WAL (the import
//! simply runs again, from the untouched sled trees) or a complete one. Only then are the sled
//! trees cleared; stale trees next to an existing WAL are ignored and cleared on a later open.
//! This is the only WAL code that reads sled.

use super::memlog::{MemLog, Slot};
use super::record::{self, RecordKind};
use super::{State, WAL_DIR, WalOptions, create_atomically};
use crate::codec::{self, RAFT_COMMITTED, RAFT_LAST_PURGED, RAFT_VOTE};
use crate::error::StorageError;
use crate::types::TypeConfig;
use openraft::{Entry, LogId};
use std::path::Path;

/// Most bytes of records buffered per write while importing (less with small segments, so the
/// import rolls over like live appends do).
const IMPORT_WRITE_BYTES: usize = 1024 * 1024;

/// Creates `<storage dir>/raft-wal` if it does not exist, importing the log from the sled
/// trees (or starting empty), then clears those trees. Returns the number of entries imported.
pub(crate) fn import_sled_log(
    storage_dir: &Path,
    log_tree: &sled::Tree,
    meta_tree: &sled::Tree,
    options: &WalOptions,
) -> Result<u64, StorageError> {
    let wal_dir = storage_dir.join(WAL_DIR);
    let mut imported = 0;
    if !wal_dir.exists() {
        // A temporary directory an earlier import left is removed: the sled trees are intact.
        imported = create_atomically(storage_dir, |tmp| build(tmp, log_tree, meta_tree, options))?;
        if imported > 0 || !meta_tree.is_empty() {
            tracing::info!(
                entries = imported,
                dir = %wal_dir.display(),
                "imported the raft log from sled into the WAL"
            );
        }
    }
    if !log_tree.is_empty() || !meta_tree.is_empty() {
        // The WAL is durable and authoritative now; the old copy only costs space.
        log_tree.clear()?;
        meta_tree.clear()?;
        log_tree.flush()?;
    }
    Ok(imported)
}

fn read_meta<T: serde::de::DeserializeOwned + Default>(
    meta: &sled::Tree,
    key: &[u8],
) -> Result<T, StorageError> {
    Ok(match meta.get(key)? {
        Some(bytes) => codec::decode("raft metadata", &bytes)?,
        None => T::default(),
    })
}

/// Writes the sled log into a new WAL in `dir` and makes it durable.
fn build(
    dir: &Path,
    log_tree: &sled::Tree,
    meta_tree: &sled::Tree,
    options: &WalOptions,
) -> Result<u64, StorageError> {
    let mut log = MemLog::<TypeConfig>::new(options.cached_log_bytes);
    log.vote = meta_tree
        .get(RAFT_VOTE)?
        .map(|bytes| codec::decode("vote", &bytes))
        .transpose()?;
    log.committed = read_meta::<Option<LogId<u64>>>(meta_tree, RAFT_COMMITTED)?;
    log.last_purged = read_meta::<Option<LogId<u64>>>(meta_tree, RAFT_LAST_PURGED)?;
    let mut state = State::create(dir, options, log)?;
    let write_bytes = IMPORT_WRITE_BYTES.min((options.segment_bytes / 4).max(1) as usize);
    let mut batch = Vec::new();
    let mut staged: Vec<(usize, usize, LogId<u64>)> = Vec::new();
    let mut count = 0;
    for item in log_tree.iter() {
        let (key, bytes) = item?;
        let entry: Entry<TypeConfig> = codec::decode("log entry", &bytes)?;
        if entry.log_id.index != codec::log_index(&key)? {
            return Err(StorageError::corrupt(
                "log entry",
                format!("{} stored at {key:?}", entry.log_id),
            ));
        }
        if state
            .log
            .last_purged
            .is_some_and(|p| entry.log_id.index <= p.index)
        {
            // Left behind by a crash between the purge marker and the removal.
            continue;
        }
        let start = batch.len();
        // The sled value is already the codec's tagged encoding of the entry.
        record::push(&mut batch, RecordKind::Entry, &bytes);
        staged.push((start, batch.len() - start, entry.log_id));
        count += 1;
        if batch.len() >= write_bytes {
            flush(dir, options, &mut state, &mut batch, &mut staged)?;
        }
    }
    flush(dir, options, &mut state, &mut batch, &mut staged)?;
    let (_, tail) = state.tail()?;
    tail.file.sync_all()?;
    Ok(count)
}

/// Writes the buffered records and indexes them (uncached: the import only needs locations).
fn flush(
    dir: &Path,
    options: &WalOptions,
    state: &mut State<TypeConfig>,
    batch: &mut Vec<u8>,
    staged: &mut Vec<(usize, usize, LogId<u64>)>,
) -> Result<(), StorageError> {
    if batch.is_empty() {
        return Ok(());
    }
    let (seq, at) = state.write(dir, options, batch)?;
    for (start, len, log_id) in staged.drain(..) {
        state.log.push(Slot {
            log_id,
            seq,
            offset: at + start as u64,
            len: len as u32,
            entry: None,
        })?;
    }
    batch.clear();
    Ok(())
}
