//! The one error type of the replica crate, and its one mapping to the wire.
//!
//! Variants are named for what the caller can do. The variants from `NotLeader` down are the
//! answers a `Data` or `Control` call can give; [`NodeError::to_wire`] is the only place that turns
//! any of them into a `ravel_proto::v1::NodeError`. This module must not log or retry.

use ravel_core::command::PartitionState;
use ravel_core::{ClusterId, NodeId};
use ravel_proto::v1;

/// Everything that can go wrong in a replica, from a bad flag to a lost leadership.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration (YAML file or flags) is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file in the storage directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The durable storage failed.
    #[error("storage failed: {0}")]
    Storage(#[from] ravel_storage::StorageError),
    /// The admin could not be reached (or did not answer in time).
    #[error("the admin at {addr} could not be reached: {message}")]
    AdminUnreachable { addr: String, message: String },
    /// The admin answered with a refusal.
    #[error("the admin refused: {0}")]
    AdminRefused(String),
    /// The Raft group could not be started or stopped.
    #[error("raft failed: {0}")]
    Raft(String),
    /// A gRPC server could not be started.
    #[error("could not serve gRPC on {addr}: {message}")]
    Serve { addr: String, message: String },
    /// This replica is not the leader; nothing was proposed.
    #[error("this replica is not the leader (leader hint: {leader_id:?} at {leader_grpc_addr:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_grpc_addr: Option<String>,
    },
    /// The cluster does not serve the partition as of assignment `epoch`; nothing was applied.
    #[error("this cluster does not serve the partition (assignment epoch {epoch})")]
    WrongOwner { epoch: u64 },
    /// A migration step (or a partition scan) is not allowed in the partition's current
    /// `state` here; nothing changed. Travels as WRONG_OWNER with `reason` in the message.
    #[error("migration refused, partition {}: {reason}", PartitionState::name(*state))]
    MigrationRefused {
        state: Option<PartitionState>,
        reason: String,
    },
    /// A compare-and-set condition failed; the key is at version `current` (0 = absent).
    #[error("the key is at version {current}, not the one the request expected")]
    CasMismatch { current: u64 },
    /// Refused before anything was proposed (no quorum, shutting down, busy).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Proposed, but whether it took effect is not known.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The request names another cluster than this replica's.
    #[error("this replica belongs to cluster {ours}, not cluster {requested}")]
    WrongCluster {
        ours: ClusterId,
        requested: ClusterId,
    },
    /// The request is malformed; nothing was proposed.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl NodeError {
    /// A stable snake_case code for logs, metrics and tests.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Io { .. } => "io",
            Self::Storage(_) => "storage",
            Self::AdminUnreachable { .. } => "admin_unreachable",
            Self::AdminRefused(_) => "admin_refused",
            Self::Raft(_) => "raft",
            Self::Serve { .. } => "serve",
            Self::NotLeader { .. } => "not_leader",
            Self::WrongOwner { .. } => "wrong_owner",
            Self::MigrationRefused { .. } => "migration_refused",
            Self::CasMismatch { .. } => "cas_mismatch",
            Self::Unavailable(_) => "unavailable",
            Self::OutcomeUnknown(_) => "outcome_unknown",
            Self::WrongCluster { .. } => "wrong_cluster",
            Self::Invalid(_) => "invalid",
        }
    }

    /// An I/O error with a sentence saying what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The wire form of this error, carried in a reply's `error` field. This is the only mapping
    /// from the crate's errors to the protocol: process-level failures become UNAVAILABLE
    /// because they are only ever raised before a proposal.
    #[must_use]
    pub fn to_wire(&self) -> v1::NodeError {
        use v1::node_error::Kind;
        let mut wire = v1::NodeError {
            message: self.to_string(),
            ..v1::NodeError::default()
        };
        let kind = match self {
            Self::NotLeader {
                leader_id,
                leader_grpc_addr,
            } => {
                wire.leader_id = leader_id.unwrap_or(0);
                wire.leader_grpc_addr = leader_grpc_addr.clone().unwrap_or_default();
                Kind::NotLeader
            }
            Self::WrongOwner { epoch } => {
                wire.epoch = *epoch;
                Kind::WrongOwner
            }
            Self::MigrationRefused { .. } => Kind::WrongOwner,
            Self::CasMismatch { current } => {
                wire.current_version = *current;
                Kind::CasMismatch
            }
            Self::OutcomeUnknown(_) => Kind::OutcomeUnknown,
            Self::WrongCluster { .. } => Kind::WrongCluster,
            Self::Invalid(_) => Kind::Invalid,
            Self::Unavailable(_)
            | Self::Config(_)
            | Self::Io { .. }
            | Self::Storage(_)
            | Self::AdminUnreachable { .. }
            | Self::AdminRefused(_)
            | Self::Raft(_)
            | Self::Serve { .. } => Kind::Unavailable,
        };
        wire.set_kind(kind);
        wire
    }
}

/// The wire form of an optional error, for a reply's `error` field.
pub(crate) fn wire_error(result: &Result<(), NodeError>) -> Option<v1::NodeError> {
    result.as_ref().err().map(NodeError::to_wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::node_error::Kind;

    /// A not-leader answer carries the leader hint, and an unknown hint becomes 0 / empty.
    #[test]
    fn not_leader_carries_hint() {
        let e = NodeError::NotLeader {
            leader_id: Some(3),
            leader_grpc_addr: Some("h:1".into()),
        };
        let w = e.to_wire();
        assert_eq!(w.kind(), Kind::NotLeader);
        assert_eq!((w.leader_id, w.leader_grpc_addr.as_str()), (3, "h:1"));
        let w = NodeError::NotLeader {
            leader_id: None,
            leader_grpc_addr: None,
        }
        .to_wire();
        assert_eq!((w.leader_id, w.leader_grpc_addr.as_str()), (0, ""));
    }

    /// Each answer maps to its own kind with its detail field set.
    #[test]
    fn answers_map_to_kinds() {
        let w = NodeError::CasMismatch { current: 7 }.to_wire();
        assert_eq!((w.kind(), w.current_version), (Kind::CasMismatch, 7));
        let w = NodeError::WrongOwner { epoch: 9 }.to_wire();
        assert_eq!((w.kind(), w.epoch), (Kind::WrongOwner, 9));
        let w = NodeError::MigrationRefused {
            state: Some(PartitionState::Serving),
            reason: "release is not allowed while the partition is serving".into(),
        }
        .to_wire();
        assert_eq!(w.kind(), Kind::WrongOwner);
        assert!(
            w.message.contains("release is not allowed"),
            "{}",
            w.message
        );
        let w = NodeError::OutcomeUnknown("t".into()).to_wire();
        assert_eq!(w.kind(), Kind::OutcomeUnknown);
        let w = NodeError::Raft("x".into()).to_wire();
        assert_eq!(w.kind(), Kind::Unavailable);
        assert_eq!(
            wire_error(&Err(NodeError::Invalid("k".into()))).map(|w| w.kind()),
            Some(Kind::Invalid)
        );
        assert!(wire_error(&Ok(())).is_none());
    }
}
