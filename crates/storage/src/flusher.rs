//! The group-commit flusher: the one task that makes the sled database durable.
//!
//! sled holds the state machine and the snapshots; the Raft log is not here (it has its own
//! WAL, `crate::wal`, with its own sync thread). Writes that must survive power loss here are
//! the state machine at snapshot points (snapshot build and install) and everything on
//! `Storage::sync`. They are first applied to sled (visible at once) and then a caller asks
//! here for durability. The flusher drains every pending request, makes the whole database
//! durable once, and completes all of them: one fsync is shared by every request that arrived
//! while the previous one ran.
//!
//! Why more than `sled::Db::flush()`: on Linux sled's flush ends in `sync_file_range`, which
//! neither flushes the drive's volatile write cache nor persists file metadata (a grown file
//! size), so a flushed write can still be lost on power failure. After the flush we therefore
//! call `sync_all()` (fsync) on our own handle to sled's data file `<dir>/db` (fsync on any
//! descriptor of an inode flushes that inode). sled also writes values larger than about a
//! quarter of a segment (~128 KiB) to separate files under `<dir>/blobs/`, which it never
//! fsyncs, so each round also fsyncs every blob file not synced before, and the blobs directory.
//! This depends on sled 0.34's file layout, which is pinned (`=0.34.7`).
//!
//! Why a single task: sled's `flush_async` deadlocks when called from several tasks at once
//! (sled #1308), so nothing in this crate calls it; the blocking `flush()` runs here in
//! `spawn_blocking`, and only here.
//!
//! After a failed round the flusher is poisoned and fails every later request: after an fsync
//! error the kernel may have dropped dirty pages, so a later "successful" fsync proves nothing.
//! This module must not know about Raft.

use crate::error::StorageError;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// Pending requests the flusher queue holds before senders wait (back-pressure).
pub(crate) const FLUSH_QUEUE_CAPACITY: usize = 1024;

/// Most requests completed by one flush round; the rest wait for the next round.
const MAX_REQUESTS_PER_ROUND: usize = 4096;

/// One thing waiting to be durable.
enum FlushRequest {
    /// A caller awaiting durability of everything it wrote before asking.
    Wait(oneshot::Sender<Result<(), String>>),
}

/// A cheap handle to the flusher task.
#[derive(Clone)]
pub(crate) struct Flusher {
    tx: mpsc::Sender<FlushRequest>,
}

impl Flusher {
    /// Starts the flusher task for `db`, opened at `dir`. Must run inside a tokio runtime.
    pub(crate) fn start(db: sled::Db, dir: &Path) -> Result<Self, StorageError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StorageError::NoRuntime)?;
        let syncer = Syncer::open(db, dir)?;
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE_CAPACITY);
        runtime.spawn(run(rx, syncer));
        Ok(Self { tx })
    }

    /// Returns once everything written to the database before this call is durable.
    pub(crate) async fn sync(&self) -> Result<(), StorageError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(FlushRequest::Wait(done_tx))
            .await
            .map_err(|_| StorageError::FlusherUnavailable("flusher task stopped".into()))?;
        match done_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StorageError::FlusherUnavailable(reason)),
            Err(_) => Err(StorageError::FlusherUnavailable(
                "flusher dropped a request".into(),
            )),
        }
    }
}

/// The flusher loop: one durable round per batch of pending requests.
async fn run(mut rx: mpsc::Receiver<FlushRequest>, syncer: Syncer) {
    let mut syncer = Some(syncer);
    let mut poisoned: Option<String> = None;
    while let Some(first) = rx.recv().await {
        // Every request in this round was sent after its write reached sled, and the flush
        // below starts after all of them were received, so it covers all their writes.
        let mut round = vec![first];
        while round.len() < MAX_REQUESTS_PER_ROUND {
            match rx.try_recv() {
                Ok(request) => round.push(request),
                Err(_) => break,
            }
        }
        let outcome = if let Some(reason) = &poisoned {
            Err(reason.clone())
        } else if let Some(s) = syncer.take() {
            let (s, result) = sync_blocking(s).await;
            syncer = s;
            result
        } else {
            Err("the flusher lost its file handles".to_string())
        };
        if let (Err(reason), None) = (&outcome, &poisoned) {
            tracing::error!(reason = %reason, "storage flush failed; the flusher is poisoned");
            poisoned = Some(reason.clone());
        }
        complete(round, &outcome);
    }
}

/// Runs one durable round on a blocking thread; gives the syncer back unless the thread died.
async fn sync_blocking(mut syncer: Syncer) -> (Option<Syncer>, Result<(), String>) {
    let joined = tokio::task::spawn_blocking(move || {
        let result = syncer.sync_round().map_err(|e| e.to_string());
        (syncer, result)
    })
    .await;
    match joined {
        Ok((syncer, result)) => (Some(syncer), result),
        Err(e) => (None, Err(format!("flush thread failed: {e}"))),
    }
}

/// Completes every request of a round with its outcome.
fn complete(round: Vec<FlushRequest>, outcome: &Result<(), String>) {
    for request in round {
        match request {
            FlushRequest::Wait(done) => {
                // The waiter may have gone away (its task was cancelled); nothing to tell it.
                let _ = done.send(outcome.clone());
            }
        }
    }
}

/// The file handles one durable round needs. Used only on the blocking thread.
struct Syncer {
    db: sled::Db,
    /// sled's data file, `<dir>/db`, opened by us only to fsync it.
    data_file: File,
    blobs_dir: PathBuf,
    /// Blob files already fsynced (sled never rewrites a blob file; names are log positions).
    synced_blobs: BTreeSet<OsString>,
}

impl Syncer {
    fn open(db: sled::Db, dir: &Path) -> Result<Self, StorageError> {
        // A read-only descriptor is enough: Linux fsync(2) flushes the inode whatever the mode.
        let data_file = File::open(dir.join("db"))?;
        // sled created `db`, `conf` and `blobs/` when the database was new: make those
        // directory entries and the config durable once, so a power loss cannot orphan them.
        File::open(dir.join("conf"))?.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Self {
            db,
            data_file,
            blobs_dir: dir.join("blobs"),
            synced_blobs: BTreeSet::new(),
        })
    }

    /// Flushes sled, fsyncs new blob files, then fsyncs the data file.
    fn sync_round(&mut self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.sync_new_blobs()?;
        self.data_file.sync_all()?;
        Ok(())
    }

    fn sync_new_blobs(&mut self) -> Result<(), StorageError> {
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut present = BTreeSet::new();
        let mut any_new = false;
        for entry in entries {
            let name = entry?.file_name();
            if !self.synced_blobs.contains(&name) && !sync_file(&self.blobs_dir.join(&name))? {
                // sled's GC removed it meanwhile: nothing to make durable.
                continue;
            }
            any_new |= !self.synced_blobs.contains(&name);
            present.insert(name);
        }
        if any_new {
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

/// fsyncs the file at `path`; `Ok(false)` if it no longer exists.
fn sync_file(path: &Path) -> Result<bool, StorageError> {
    match File::open(path) {
        Ok(file) => {
            file.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}
