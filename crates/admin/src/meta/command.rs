//! The commands [`MetaState::apply`](super::MetaState::apply) takes and the outcomes it answers.

use super::{MoveRecord, MoveStep};
use ravel_core::{ClusterId, NodeId, PartitionId};
use serde::{Deserialize, Serialize};

/// A change to the metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A replica registers (first start, or again after a crash before it stored its identity).
    RegisterReplica {
        token: u64,
        raft_addr: String,
        grpc_addr: String,
        new_cluster: bool,
    },
    /// A replica leaves the store (`ravel_node kill`).
    RemoveReplica { node_id: NodeId, force: bool },
    /// A write is about to be routed: from now on the table only changes through migration.
    MarkHasData,
    /// Record a move of `partition` from `source` to `target` (step Planned), before any step.
    StartMove {
        partition: PartitionId,
        source: ClusterId,
        target: ClusterId,
        at_ms: u64,
    },
    /// Persist that the move of `partition` now takes `step` (forward only, or Aborting before
    /// Activating), with the records copied so far.
    AdvanceMove {
        partition: PartitionId,
        step: MoveStep,
        keys_copied: u64,
        at_ms: u64,
    },
    /// The target serves the partition: table owner := target, epoch + 1, step Purging.
    SwitchOwner { partition: PartitionId, at_ms: u64 },
    /// The source's copy is purged: drop the record (after Purging).
    FinishMove { partition: PartitionId },
    /// The abort is done (source restored): drop the record (after Aborting).
    AbortMove { partition: PartitionId },
}

/// What an applied command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOutcome {
    Registered {
        node_id: NodeId,
        cluster_id: ClusterId,
        /// The replica must initialize a new Raft group with itself as the only voter.
        bootstrap: bool,
        /// The partition table's epoch changed.
        table_changed: bool,
    },
    Removed {
        cluster_id: ClusterId,
        /// The replica was its cluster's last, so the cluster is gone too.
        cluster_removed: bool,
        table_changed: bool,
    },
    HasDataMarked,
    /// The last replica of a cluster that holds keys asked to leave: the cluster is draining
    /// instead (its partitions move away first). Repeat the removal until it is `Removed`.
    Draining {
        cluster_id: ClusterId,
        partitions_left: u32,
        moves_in_progress: u32,
    },
    /// A move command took effect (or was already in effect: commands are idempotent).
    /// `record` is the move after it, `None` once finished or aborted.
    Moved {
        partition: PartitionId,
        record: Option<MoveRecord>,
        /// The table's epoch changed (a switch).
        table_changed: bool,
    },
}

impl MetaOutcome {
    /// Whether the partition table changed (clusters must then be sent their new assignment).
    #[must_use]
    pub fn table_changed(&self) -> bool {
        match self {
            Self::Registered { table_changed, .. }
            | Self::Removed { table_changed, .. }
            | Self::Moved { table_changed, .. } => *table_changed,
            Self::HasDataMarked | Self::Draining { .. } => false,
        }
    }
}
