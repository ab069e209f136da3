//! What the gRPC services of one replica share: its identity, its Raft handle and its reader,
//! with the three questions every handler asks (is this my cluster, am I the leader, where is
//! the leader). It also holds the two ways into Raft that the handlers use — a write and a
//! linearizable read barrier — so that the definite/unknown split of DESIGN §2.3 lives in one
//! place. This module must not speak gRPC.

use std::time::Duration;

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};
use ravel_core::command::{Command, CommandResult};
use ravel_core::limits::DATA_RPC_TIMEOUT_MS;
use ravel_core::{ClusterId, NodeId};
use ravel_storage::{Raft, RavelNode, SmReader};

use crate::error::NodeError;

/// How long a write may wait for Raft: the admin's deadline less a margin for the reply to travel.
pub const WRITE_TIMEOUT_MS: u64 = DATA_RPC_TIMEOUT_MS - 1_000;

/// How long a linearizable read may wait to confirm leadership with a quorum.
pub const READ_INDEX_TIMEOUT_MS: u64 = DATA_RPC_TIMEOUT_MS - 1_000;

/// One running replica, as its services see it.
pub struct Replica {
    pub node_id: NodeId,
    pub cluster_id: ClusterId,
    pub raft: Raft,
    pub reader: SmReader,
    pub raft_addr: String,
    pub grpc_addr: String,
}

impl Replica {
    /// Refuses a request for another cluster.
    pub fn check_cluster(&self, requested: ClusterId) -> Result<(), NodeError> {
        if requested == self.cluster_id {
            Ok(())
        } else {
            Err(NodeError::WrongCluster {
                ours: self.cluster_id,
                requested,
            })
        }
    }

    /// `Ok` when this replica is the leader now; otherwise NOT_LEADER with the best hint known.
    pub fn ensure_leader(&self) -> Result<(), NodeError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state == ServerState::Leader && m.current_leader == Some(self.node_id) {
            return Ok(());
        }
        // Pointing a caller at ourselves would only send it back here.
        let leader = m.current_leader.filter(|id| *id != self.node_id);
        let addr = leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.grpc_addr.clone())
        });
        Err(NodeError::NotLeader {
            leader_id: leader,
            leader_grpc_addr: addr,
        })
    }

    /// The NOT_LEADER answer for a hint openraft gave.
    pub fn not_leader(&self, leader_id: Option<NodeId>, node: Option<&RavelNode>) -> NodeError {
        let leader_id = leader_id.filter(|id| *id != self.node_id);
        let addr = node.map(|n| n.grpc_addr.clone()).or_else(|| {
            let id = leader_id?;
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.grpc_addr.clone())
        });
        NodeError::NotLeader {
            leader_id,
            leader_grpc_addr: addr,
        }
    }

    /// Proposes `command` if this replica leads, and waits (bounded) for its answer.
    ///
    /// The leader check makes NOT_LEADER definite: nothing is proposed without it. Once
    /// `client_write` has been called, every failure — including `ForwardToLeader`, which
    /// openraft may answer for an entry it already appended — is OUTCOME_UNKNOWN.
    pub async fn write(&self, command: Command) -> Result<CommandResult, NodeError> {
        self.ensure_leader()?;
        let deadline = Duration::from_millis(WRITE_TIMEOUT_MS);
        match tokio::time::timeout(deadline, self.raft.client_write(command)).await {
            Err(_elapsed) => Err(NodeError::OutcomeUnknown(format!(
                "the command was proposed but not answered within {WRITE_TIMEOUT_MS} ms"
            ))),
            Ok(Err(e)) => Err(NodeError::OutcomeUnknown(format!(
                "the command was proposed but Raft answered: {e}"
            ))),
            Ok(Ok(response)) => Ok(response.data),
        }
    }

    /// Waits until a read of the local state machine is linearizable (openraft's read index).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let deadline = Duration::from_millis(READ_INDEX_TIMEOUT_MS);
        match tokio::time::timeout(deadline, self.raft.ensure_linearizable()).await {
            Err(_elapsed) => Err(NodeError::Unavailable(format!(
                "leadership could not be confirmed within {READ_INDEX_TIMEOUT_MS} ms"
            ))),
            Ok(Ok(_read_log_id)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(self.not_leader(f.leader_id, f.leader_node.as_ref()))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => Err(
                NodeError::Unavailable(format!("no quorum confirmed leadership: {q}")),
            ),
            Ok(Err(RaftError::Fatal(f))) => Err(NodeError::Unavailable(format!(
                "the Raft group is not running: {f}"
            ))),
        }
    }

    /// Whether `node` is a voter in this replica's current membership.
    pub fn is_voter(&self, node: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.voter_ids().any(|id| id == node)
    }
}
