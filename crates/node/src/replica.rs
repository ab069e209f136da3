//! What the gRPC services of one replica share: its identity, its Raft handle and its reader, with
//! the three questions every handler asks (is this my cluster, am I the leader, where is the
//! leader). It also holds the two ways into Raft that the handlers use — a write (client data
//! commands through the [`WriteBatcher`], others alone) and a linearizable read barrier (through
//! the [`ReadIndex`] batcher) — so that the split between definite and unknown outcomes
//! (`docs/design.md#definite-and-unknown-outcomes`) lives in one place. This module must not
//! speak gRPC.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use ravel_core::command::{Command, CommandResult};
use ravel_core::limits::DATA_RPC_TIMEOUT_MS;
use ravel_core::{ClusterId, NodeId};
use ravel_storage::{Raft, RavelNode, SmReader};

use crate::contact::Contact;
use crate::error::NodeError;
use crate::read_index::ReadIndex;
use crate::write_batcher::WriteBatcher;

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
    /// Closed while a stopping leader hands its leadership over (see [`ProposalGate`]).
    pub gate: Arc<ProposalGate>,
    /// Who this replica hears and who hears it (pre-vote and check-quorum).
    pub contact: Arc<Contact>,
    writes: WriteBatcher,
    reads: ReadIndex,
}

/// Every proposal to Raft passes this gate, and holds it open while it is in Raft. A leader
/// about to stop closes it ([`ProposalGate::close`]): that waits for every proposal in flight
/// to be answered and makes every later one a definite NOT_LEADER pointing at the successor,
/// so the leader's log stops growing and the successor can match it before it campaigns.
#[derive(Debug, Default)]
pub struct ProposalGate {
    closed_for: tokio::sync::RwLock<Option<NotLeader>>,
}

/// Held by a proposal while it is in Raft; the gate cannot close until it is dropped.
pub type ProposalPass<'a> = tokio::sync::RwLockReadGuard<'a, Option<NotLeader>>;

impl ProposalGate {
    /// A pass to propose, or NOT_LEADER (nothing proposed) when the gate is closed.
    pub async fn enter(&self) -> Result<ProposalPass<'_>, NotLeader> {
        let pass = self.closed_for.read().await;
        match &*pass {
            None => Ok(pass),
            Some(successor) => Err(successor.clone()),
        }
    }

    /// Closes the gate once every proposal in flight has been answered; later proposals are
    /// refused with `successor` as the leader hint.
    pub async fn close(&self, successor: NotLeader) {
        *self.closed_for.write().await = Some(successor);
    }
}

/// "Not the leader", with the best hint known of who is. Nothing was proposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLeader {
    pub leader_id: Option<NodeId>,
    pub leader_grpc_addr: Option<String>,
}

impl From<NotLeader> for NodeError {
    fn from(n: NotLeader) -> Self {
        NodeError::NotLeader {
            leader_id: n.leader_id,
            leader_grpc_addr: n.leader_grpc_addr,
        }
    }
}

/// `Ok` when replica `node_id` leads `raft` now and a majority has heard from it recently
/// (check-quorum, see [`Contact::leader_has_quorum`]); otherwise NOT_LEADER with the best hint
/// known (none from a leader that lost its majority: the majority may have a new one).
pub fn check_leader(raft: &Raft, node_id: NodeId, contact: &Contact) -> Result<(), NotLeader> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    if m.state == ServerState::Leader && m.current_leader == Some(node_id) {
        if contact.leader_has_quorum(node_id, m.membership_config.voter_ids()) {
            return Ok(());
        }
        return Err(NotLeader {
            leader_id: None,
            leader_grpc_addr: None,
        });
    }
    // Pointing a caller at ourselves would only send it back here.
    let leader_id = m.current_leader.filter(|id| *id != node_id);
    let leader_grpc_addr = leader_id.and_then(|id| {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.grpc_addr.clone())
    });
    Err(NotLeader {
        leader_id,
        leader_grpc_addr,
    })
}

/// The NOT_LEADER answer of replica `node_id` for a hint openraft gave.
pub fn not_leader_hint(
    raft: &Raft,
    node_id: NodeId,
    leader_id: Option<NodeId>,
    node: Option<&RavelNode>,
) -> NotLeader {
    let leader_id = leader_id.filter(|id| *id != node_id);
    let leader_grpc_addr = node.map(|n| n.grpc_addr.clone()).or_else(|| {
        let id = leader_id?;
        let metrics = raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.grpc_addr.clone())
    });
    NotLeader {
        leader_id,
        leader_grpc_addr,
    }
}

impl Replica {
    /// The replica `node_id` of `cluster_id`, with its write batcher and read-index tasks
    /// started (so this must run inside tokio).
    #[must_use]
    pub fn new(
        node_id: NodeId,
        cluster_id: ClusterId,
        raft: Raft,
        reader: SmReader,
        contact: Arc<Contact>,
        addrs: (String, String),
    ) -> Self {
        let (raft_addr, grpc_addr) = addrs;
        let gate = Arc::new(ProposalGate::default());
        Self {
            writes: WriteBatcher::start(raft.clone(), node_id, gate.clone(), contact.clone()),
            gate,
            reads: ReadIndex::start(raft.clone(), node_id, contact.clone()),
            contact,
            node_id,
            cluster_id,
            raft,
            reader,
            raft_addr,
            grpc_addr,
        }
    }

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
        Ok(check_leader(&self.raft, self.node_id, &self.contact)?)
    }

    /// The NOT_LEADER answer for a hint openraft gave.
    pub fn not_leader(&self, leader_id: Option<NodeId>, node: Option<&RavelNode>) -> NodeError {
        not_leader_hint(&self.raft, self.node_id, leader_id, node).into()
    }

    /// Proposes `command` if this replica leads, and waits (bounded) for its answer.
    ///
    /// The leader check makes NOT_LEADER definite: nothing is proposed without it. Client data
    /// commands (put, delete) go through the write batcher, which shares one entry between
    /// concurrent writes; other commands are proposed alone. Once `client_write` has been
    /// called, every failure — including `ForwardToLeader`, which openraft may answer for an
    /// entry it already appended — is OUTCOME_UNKNOWN.
    pub async fn write(&self, command: Command) -> Result<CommandResult, NodeError> {
        self.ensure_leader()?;
        let deadline = Duration::from_millis(WRITE_TIMEOUT_MS);
        let answer = match command {
            Command::Put { .. } | Command::Delete { .. } => {
                tokio::time::timeout(deadline, self.writes.write(command)).await
            }
            _ => {
                tokio::time::timeout(deadline, async {
                    let _pass = self.gate.enter().await?;
                    self.ensure_leader()?;
                    self.raft
                        .client_write(command)
                        .await
                        .map(|response| response.data)
                        .map_err(|e| {
                            NodeError::OutcomeUnknown(format!(
                                "the command was proposed but Raft answered: {e}"
                            ))
                        })
                })
                .await
            }
        };
        answer.unwrap_or_else(|_elapsed| {
            Err(NodeError::OutcomeUnknown(format!(
                "the command was proposed but not answered within {WRITE_TIMEOUT_MS} ms"
            )))
        })
    }

    /// Waits until a read of the local state machine is linearizable (openraft's read index,
    /// one round shared by every read queued behind it).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let deadline = Duration::from_millis(READ_INDEX_TIMEOUT_MS);
        tokio::time::timeout(deadline, self.reads.barrier())
            .await
            .unwrap_or_else(|_elapsed| {
                Err(NodeError::Unavailable(format!(
                    "leadership could not be confirmed within {READ_INDEX_TIMEOUT_MS} ms"
                )))
            })
    }

    /// Whether `node` is a voter in this replica's current membership.
    pub fn is_voter(&self, node: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.voter_ids().any(|id| id == node)
    }
}
