//! The openraft type configuration of a Ravel cluster and the small shared types of this crate.
//!
//! This module only declares types; it must not do I/O.

use ravel_core::command::{ChangedRecord, Command, CommandResult, MigratedRecord};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The openraft types of one Ravel cluster's Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = RavelNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft type configurations whose Raft log this crate keeps ([`crate::LogStore`]):
/// node ids are `u64` and entries are openraft's own (encoded with the crate's codec; openraft's
/// `serde` feature makes every application type serializable), whose commands can be cloned (a
/// cached entry is handed out as a copy). The replicas' [`TypeConfig`] is one; the admin's
/// metadata group is another.
pub trait LogTypes:
    openraft::RaftTypeConfig<NodeId = u64, Entry = openraft::Entry<Self>, D: Clone>
{
}

impl<C> LogTypes for C where
    C: openraft::RaftTypeConfig<NodeId = u64, Entry = openraft::Entry<C>, D: Clone>
{
}

/// A replica's two addresses, as carried in Raft membership. `ForwardToLeader` hands this to a
/// caller, which is how the admin learns where the leader's gRPC service is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RavelNode {
    /// Address of the node-to-node Raft transport.
    pub raft_addr: String,
    /// Address of the data/control gRPC service.
    pub grpc_addr: String,
}

/// A cluster's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// What a cluster does with one partition; defined in core so the command layer can name it.
pub use ravel_core::command::PartitionState;

/// One batch of a frozen partition's records, read by [`crate::SmReader::scan_partition`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionScan {
    /// Records in key order, each with its version.
    pub records: Vec<MigratedRecord>,
    /// No records follow this batch.
    pub done: bool,
    /// The partition's version counter: the largest version ever issued in it.
    pub version_floor: u64,
}

/// One batch of a partition's change log, read by [`crate::SmReader::scan_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeScan {
    /// Each changed key once, in the order of its first change in the batch.
    pub records: Vec<ChangedRecord>,
    /// The last change-log version this batch covers.
    pub last_version: u64,
    /// Nothing in the log follows `last_version`.
    pub done: bool,
    /// The partition's version counter: the largest version ever issued in it.
    pub version_floor: u64,
}

/// Why a read outside openraft was not answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadRefused {
    /// This cluster does not serve the partition, as of assignment `epoch`.
    #[error("partition not served here (assignment epoch {epoch})")]
    WrongOwner { epoch: u64 },
    /// A partition scan was asked of a partition that is neither `Exporting` nor `Frozen` here
    /// (only those may be copied to a new owner).
    #[error(
        "partition is {} here, neither exporting nor frozen",
        PartitionState::name(*state)
    )]
    NotCopyable { state: Option<PartitionState> },
    /// The state machine could not be read (I/O error or corrupt record). Never reported as
    /// "absent": that would hide data.
    #[error("state machine unavailable: {reason}")]
    Unavailable { reason: String },
}

impl ReadRefused {
    /// A stable snake_case code, matching `CommandResult::WrongOwner`'s meaning.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::WrongOwner { .. } => "wrong_owner",
            Self::NotCopyable { .. } => "not_copyable",
            Self::Unavailable { .. } => "storage_unavailable",
        }
    }
}
