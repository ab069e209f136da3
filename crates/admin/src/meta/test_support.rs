//! Helpers shared by the metadata's unit tests: commands and outcome unpacking.

use super::{MetaCommand, MetaOutcome, MoveStep};
use ravel_core::{ClusterId, NodeId, PartitionId};

pub(super) fn register(token: u64, new_cluster: bool) -> MetaCommand {
    MetaCommand::RegisterReplica {
        token,
        raft_addr: format!("127.0.0.1:{}", 7000 + token),
        grpc_addr: format!("127.0.0.1:{}", 8000 + token),
        new_cluster,
    }
}

pub(super) fn registered(outcome: MetaOutcome) -> (NodeId, ClusterId, bool, bool) {
    match outcome {
        MetaOutcome::Registered {
            node_id,
            cluster_id,
            bootstrap,
            table_changed,
        } => (node_id, cluster_id, bootstrap, table_changed),
        other => panic!("expected Registered, got {other:?}"),
    }
}

pub(super) fn start(p: PartitionId, source: ClusterId, target: ClusterId) -> MetaCommand {
    MetaCommand::StartMove {
        partition: p,
        source,
        target,
        at_ms: 100,
    }
}

pub(super) fn adv(p: PartitionId, step: MoveStep, at_ms: u64) -> MetaCommand {
    MetaCommand::AdvanceMove {
        partition: p,
        step,
        keys_copied: 0,
        at_ms,
    }
}
