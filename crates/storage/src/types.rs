//! The openraft type configuration of a Ravel cluster and the small shared types of this crate.
//!
//! This module only declares types; it must not do I/O.

use ravel_core::command::{Command, CommandResult};
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

/// What a cluster does with one partition (DESIGN §4). A partition with no state is not served.
///
/// The discriminants are the bytes stored on disk: never renumber them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionState {
    /// Reads and writes are served.
    Serving = 1,
    /// Readable, writes refused (the partition is being moved away).
    Frozen = 2,
    /// Receiving a copy; neither reads nor client writes are served.
    Incoming = 3,
}

impl PartitionState {
    /// The byte stored on disk for this state.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The state a stored byte names, if any.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Serving),
            2 => Some(Self::Frozen),
            3 => Some(Self::Incoming),
            _ => None,
        }
    }

    /// Whether client reads of the partition are answered in this state.
    #[must_use]
    pub fn readable(self) -> bool {
        matches!(self, Self::Serving | Self::Frozen)
    }

    /// Whether client writes of the partition are applied in this state.
    #[must_use]
    pub fn writable(self) -> bool {
        self == Self::Serving
    }
}

/// Why a read outside openraft was not answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadRefused {
    /// This cluster does not serve the partition, as of assignment `epoch`.
    #[error("partition not served here (assignment epoch {epoch})")]
    WrongOwner { epoch: u64 },
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
            Self::Unavailable { .. } => "storage_unavailable",
        }
    }
}
