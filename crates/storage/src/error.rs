//! The storage crate's one error enum, with a stable `code()` per variant.
//!
//! Every variant means the replica's disk state could not be read or written as required. The
//! node must treat any of them as fatal for its Raft group (openraft stops the group on a storage
//! error) rather than retry: a half-applied write retried blindly could diverge the replica.
//! This module must not decide policy; it only names what went wrong.

use std::io;

/// What went wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled reported an error (I/O underneath, or corruption it detected).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A direct file operation (fsync, open) failed.
    #[error("storage I/O: {0}")]
    Io(#[from] io::Error),
    /// A stored record could not be decoded: unknown format tag or malformed bytes.
    #[error("corrupt stored {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The group-commit flusher task is gone (runtime shutting down) or failed an fsync earlier;
    /// nothing can be made durable any more.
    #[error("the storage flusher is unavailable: {0}")]
    FlusherUnavailable(String),
    /// The Raft log failed a write or a sync earlier (or is closed); nothing more can be made
    /// durable in it until the process restarts and replays it.
    #[error("the raft log is unavailable: {0}")]
    LogUnavailable(String),
    /// `Storage::open` was called outside a tokio runtime.
    #[error("storage must be opened inside a tokio runtime")]
    NoRuntime,
}

impl StorageError {
    /// A stable snake_case code for logs, metrics and wire errors.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Sled(_) => "storage_sled",
            Self::Io(_) => "storage_io",
            Self::Corrupt { .. } => "storage_corrupt",
            Self::FlusherUnavailable(_) => "storage_flusher_unavailable",
            Self::LogUnavailable(_) => "storage_log_unavailable",
            Self::NoRuntime => "storage_no_runtime",
        }
    }

    /// Shorthand for a decoding failure of `what`.
    pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> Self {
        Self::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

/// openraft's storage error for our node id type.
pub(crate) type RaftStorageError = openraft::StorageError<u64>;

/// Which openraft operation failed, so that its error names the right subject.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    ReadLogs,
    WriteLogs,
    WriteVote,
    ReadStateMachine,
    WriteStateMachine,
    ReadSnapshot,
    WriteSnapshot,
}

impl StorageError {
    /// Converts into openraft's error, tagged with the failing operation.
    pub(crate) fn into_raft(self, op: Op) -> RaftStorageError {
        use openraft::StorageIOError as E;
        let io = match op {
            Op::ReadLogs => E::read_logs(&self),
            Op::WriteLogs => E::write_logs(&self),
            Op::WriteVote => E::write_vote(&self),
            Op::ReadStateMachine => E::read_state_machine(&self),
            Op::WriteStateMachine => E::write_state_machine(&self),
            Op::ReadSnapshot => E::read_snapshot(None, &self),
            Op::WriteSnapshot => E::write_snapshot(None, &self),
        };
        io.into()
    }
}

/// Adds `.raft(op)` to our results, for use inside the openraft trait impls.
pub(crate) trait IntoRaft<T> {
    // openraft's trait methods return this error type by value; boxing here would not help.
    #[allow(clippy::result_large_err)]
    fn raft(self, op: Op) -> Result<T, RaftStorageError>;
}

impl<T, E: Into<StorageError>> IntoRaft<T> for Result<T, E> {
    fn raft(self, op: Op) -> Result<T, RaftStorageError> {
        self.map_err(|e| e.into().into_raft(op))
    }
}
