//! Why the metadata said no: deterministic refusals of `apply` and the errors of the store.

use ravel_core::{ClusterId, NodeId, PartitionId, limits};

/// A deterministic "no" from [`MetaState::apply`](super::MetaState::apply): nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MetaRefusal {
    #[error("no cluster exists yet: start a replica with -l first")]
    NoCluster,
    #[error(
        "replica is the last one of cluster {cluster}, which owns partitions holding keys, and \
         no other cluster is left to drain them to; removing it would lose them. Add a cluster \
         first, or pass --force to remove it and drop its partitions"
    )]
    LastReplicaHoldsKeys { cluster: ClusterId },
    #[error("move of partition {partition} refused: {why}")]
    MoveRefused { partition: PartitionId, why: String },
    #[error("no replica with node id {node_id}")]
    UnknownReplica { node_id: NodeId },
    #[error(
        "replica {node_id} was removed from the store; its token cannot register again \
         (start it with a fresh storage directory)"
    )]
    ReplicaRemoved { node_id: NodeId },
    #[error(
        "the admins' group has no state yet: it is still forming (a majority of the admins must be up)"
    )]
    NotFormed,
}

impl MetaRefusal {
    /// Stable snake_case code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoCluster => "no_cluster",
            Self::LastReplicaHoldsKeys { .. } => "last_replica_holds_keys",
            Self::UnknownReplica { .. } => "unknown_replica",
            Self::ReplicaRemoved { .. } => "replica_removed",
            Self::MoveRefused { .. } => "move_refused",
            Self::NotFormed => "admins_not_formed",
        }
    }
}

/// Why the metadata could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(transparent)]
    Refused(#[from] MetaRefusal),
    #[error("metadata storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("metadata I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("metadata encoding error: {0}")]
    Codec(#[from] postcard::Error),
    #[error("stored metadata has unknown format tag {0} (written by a newer ravel_admin?)")]
    UnknownFormat(u8),
    #[error("stored metadata is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the partition count is fixed at the admin's first start: the stored count is {stored}, \
         --partitions asked for {given} (omit --partitions or pass {stored})"
    )]
    PartitionsFixed { stored: u32, given: u32 },
    #[error("--partitions must be in 1..={max}, got {given}", max = limits::MAX_PARTITIONS)]
    InvalidPartitions { given: u32 },
    #[error("metadata background task failed: {0}")]
    Task(String),
    #[error("metadata log error: {0}")]
    Log(String),
    #[error("the admins' Raft group failed: {0}")]
    Raft(String),
    #[error("--peers: {0}")]
    Peers(String),
    #[error(
        "the admins' group has no leader to take a metadata change; a majority of admins must be up"
    )]
    NoAdminLeader,
    #[error("forwarding a metadata change to the admins' leader failed, its outcome unknown: {0}")]
    Forward(String),
    #[error("this admin does not lead the admins' group (leader: {leader_id:?})")]
    NotLeader {
        leader_id: Option<u64>,
        leader: Option<super::raft::AdminNode>,
    },
}

impl MetaError {
    /// Stable snake_case code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.code(),
            Self::Storage(_) => "meta_storage",
            Self::Io(_) => "meta_io",
            Self::Codec(_) => "meta_codec",
            Self::UnknownFormat(_) => "meta_unknown_format",
            Self::Corrupt(_) => "meta_corrupt",
            Self::PartitionsFixed { .. } => "partitions_fixed",
            Self::InvalidPartitions { .. } => "invalid_partitions",
            Self::Task(_) => "meta_task",
            Self::Log(_) => "meta_log",
            Self::Raft(_) => "meta_raft",
            Self::NotLeader { .. } => "not_admin_leader",
            Self::Peers(_) => "invalid_peers",
            Self::NoAdminLeader => "no_admin_leader",
            Self::Forward(_) => "forward_failed",
        }
    }
}
