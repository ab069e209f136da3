//! A replica's durable storage: the openraft 0.9 log store on a segmented write-ahead log of
//! its own, and the state machine and snapshots on sled 0.34.
//!
//! One [`Storage`] per process owns a storage directory:
//! - `<dir>/raft-wal/`: the Raft log ([`LogStore`], generic over the group's openraft types
//!   ([`LogTypes`]), so another group, the admin's, keeps its log the same way with
//!   [`LogStore::open`]): entries, vote, committed marker and purge
//!   point as CRC-framed records in append-only segment files (see `wal`). An append is one
//!   `pwrite` by openraft's core task; a sync thread completes every append queued meanwhile
//!   with one `fdatasync` (group commit) before openraft hears the entries are durable;
//! - `<dir>` itself: one `sled::Db` with the trees `sm` (data records under a per-partition
//!   prefix plus the state machine's metadata: [`StateMachine`], read outside openraft through
//!   [`SmReader`]) and `snapshot` (the current snapshot's metadata and data). The trees
//!   `raft_log`/`raft_meta` held the log before the WAL; they are imported into a new WAL once
//!   (atomically, see `wal::import`) and then left empty.
//!
//! Durability: a log write is acknowledged to openraft only once the WAL has synced it. The
//! state machine is not fsynced per apply (the log is the write-ahead log); the group-commit
//! flusher (see `flusher`) makes sled durable whenever a snapshot is built or installed, before
//! openraft may purge the logs below it, and on [`Storage::sync`].
//!
//! This crate must not know about gRPC, HTTP or the admin; it stores and applies, nothing more.

mod codec;
mod durable_file;
mod error;
mod flusher;
mod log_store;
mod metrics;
mod snapshot;
mod state_machine;
mod types;
mod wal;

pub use durable_file::write_file_atomically;
pub use error::StorageError;
pub use log_store::LogStore;
pub use metrics::describe_metrics;
pub use snapshot::SnapshotBuilder;
pub use state_machine::{SmReader, StateMachine};
pub use types::{
    ChangeScan, LogTypes, PartitionScan, PartitionState, Raft, RavelNode, ReadRefused, TypeConfig,
};
pub use wal::{
    DEFAULT_CACHED_LOG_BYTES, DEFAULT_SEGMENT_BYTES, MAX_PENDING_SYNCS, WAL_DIR, WalOptions,
    WalSync,
};

use flusher::Flusher;
use state_machine::SmShared;
use std::path::Path;
use std::sync::Arc;
use wal::Wal;

/// sled's page cache size. The state machine's hot set plus recent log entries fit comfortably;
/// sled's own default (1 GiB) is too much for several replicas on one small machine.
pub const SLED_CACHE_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

/// The sled trees that held the Raft log before the WAL (read only by the upgrade).
const TREE_LOG: &str = "raft_log";
const TREE_META: &str = "raft_meta";
const TREE_SM: &str = "sm";
const TREE_SNAPSHOT: &str = "snapshot";

/// How [`Storage::open_with`] lays out the Raft log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageOptions {
    /// The WAL's segment size, preallocation and sync call.
    pub wal: WalOptions,
}

/// A replica's storage: the Raft log's WAL, one sled database and its flusher task. Cheap to
/// clone.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    flusher: Flusher,
    log: LogStore,
    sm: Arc<SmShared>,
}

impl Storage {
    /// Opens (or creates) the storage in `dir` with the default options; see [`Self::open_with`].
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        Self::open_with(dir, StorageOptions::default())
    }

    /// Opens (or creates) the sled database in `dir` (one `sled::Db` per process), starts the
    /// group-commit flusher task (so it must be called inside a tokio runtime), and opens the
    /// WAL in `dir/raft-wal`, importing a log left in sled by an older version first.
    pub fn open_with(dir: &Path, options: StorageOptions) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(SLED_CACHE_CAPACITY_BYTES)
            .open()?;
        let flusher = Flusher::start(db.clone(), dir)?;
        wal::import_sled_log(
            dir,
            &db.open_tree(TREE_LOG)?,
            &db.open_tree(TREE_META)?,
            &options.wal,
        )?;
        let log = LogStore::new(Wal::open(&dir.join(WAL_DIR), options.wal)?);
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

    /// Makes everything written so far durable, the log and sled alike (used at shutdown).
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.log.wal().sync().await?;
        self.sm.write_behind()?;
        self.flusher.sync().await
    }

    /// Bytes on disk: sled's files plus the WAL's segments (for metrics; sled amplifies space).
    pub fn size_on_disk_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()? + self.log.wal().size_on_disk_bytes()?)
    }
}
