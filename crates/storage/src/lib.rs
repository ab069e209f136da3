//! A replica's durable storage: the openraft 0.9 log store and state machine on sled 0.34,
//! made durable by one group-commit fsync flusher.
//!
//! One [`Storage`] per process opens one `sled::Db` with four trees:
//! - `raft_log`: Raft entries keyed by big-endian index ([`LogStore`]);
//! - `raft_meta`: vote, committed marker, last purged log id ([`LogStore`]);
//! - `sm`: data records under a per-partition prefix plus the state machine's metadata
//!   ([`StateMachine`], read outside openraft through [`SmReader`]);
//! - `snapshot`: the current snapshot's metadata and data.
//!
//! Durability: a write is acknowledged to openraft only once the flusher has run sled's flush
//! *and* a real fsync (see `flusher`). The state machine is not fsynced per apply (the log is
//! the write-ahead log); it is made durable whenever a snapshot is built or installed, before
//! openraft may purge the logs below it.
//!
//! This crate must not know about gRPC, HTTP or the admin; it stores and applies, nothing more.

mod codec;
mod error;
mod flusher;
mod log_store;
mod snapshot;
mod state_machine;
mod types;

pub use error::StorageError;
pub use log_store::LogStore;
pub use snapshot::SnapshotBuilder;
pub use state_machine::{SmReader, StateMachine};
pub use types::{PartitionScan, PartitionState, Raft, RavelNode, ReadRefused, TypeConfig};

use flusher::Flusher;
use state_machine::SmShared;
use std::path::Path;
use std::sync::Arc;

/// sled's page cache size. The state machine's hot set plus recent log entries fit comfortably;
/// sled's own default (1 GiB) is too much for several replicas on one small machine.
pub const SLED_CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

const TREE_LOG: &str = "raft_log";
const TREE_META: &str = "raft_meta";
const TREE_SM: &str = "sm";
const TREE_SNAPSHOT: &str = "snapshot";

/// A replica's storage: one sled database and its flusher task. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    flusher: Flusher,
    log: LogStore,
    sm: Arc<SmShared>,
}

impl Storage {
    /// Opens (or creates) the sled database in `dir` (one `sled::Db` per process) and starts
    /// the group-commit flusher task, so it must be called inside a tokio runtime.
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(SLED_CACHE_CAPACITY_BYTES)
            .open()?;
        let flusher = Flusher::start(db.clone(), dir)?;
        let log = LogStore::new(
            db.open_tree(TREE_LOG)?,
            db.open_tree(TREE_META)?,
            flusher.clone(),
        );
        let sm = SmShared::open(
            db.open_tree(TREE_SM)?,
            db.open_tree(TREE_SNAPSHOT)?,
            flusher.clone(),
        )?;
        Ok(Storage {
            db,
            flusher,
            log,
            sm: Arc::new(sm),
        })
    }

    /// The Raft log store (implements `RaftLogStorage` and `RaftLogReader`).
    pub fn log_store(&self) -> LogStore {
        self.log.clone()
    }

    /// The state machine (implements `RaftStateMachine`).
    pub fn state_machine(&self) -> StateMachine {
        StateMachine::new(self.sm.clone())
    }

    /// A cheap handle for reads outside openraft.
    pub fn reader(&self) -> SmReader {
        SmReader::new(self.sm.clone())
    }

    /// Flushes and fsyncs everything written so far (used at shutdown).
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.flusher.sync().await
    }

    /// Bytes sled uses on disk (for metrics: sled amplifies space on log-like workloads).
    pub fn size_on_disk_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()?)
    }
}
