//! The `Control` gRPC service (admin or replica → node, on `--grpcaddr`): status, and the
//! leader-only membership and assignment changes.
//!
//! `Join` adds a replica as a learner, waits (bounded) until it has caught up, then promotes it;
//! it is idempotent so a joiner can simply call it again. `Leave` removes a replica but never the
//! last voter. `Assign` proposes the partition set through the Raft log. `Migrate` and
//! `ScanPartition` are handled in `migration`. Answers travel in the
//! reply's `error` field (mapped by `NodeError::to_wire`). This module must not touch storage
//! directly except through the read-only `SmReader`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use ravel_core::NodeId;
use ravel_core::command::{Command, CommandResult};
use ravel_core::limits::{CONTROL_RPC_TIMEOUT_MS, MAX_PARTITIONS};
use ravel_proto::v1::control_server::Control;
use ravel_proto::v1::{
    AssignReply, AssignRequest, JoinReply, JoinRequest, LeaveReply, LeaveRequest, MigrateReply,
    MigrateRequest, ScanPartitionReply, ScanPartitionRequest, StatusReply, StatusRequest,
};
use ravel_storage::{RavelNode, TypeConfig};
use tonic::{Request, Response, Status};

use crate::data_service::refusal;
use crate::error::{NodeError, wire_error};
use crate::migration;
use crate::replica::Replica;

/// How long the leader waits for a new learner to catch up before answering UNAVAILABLE; the
/// joiner calls again and catching up goes on in the background meanwhile.
pub const JOIN_CATCH_UP_TIMEOUT_MS: u64 = 30_000;

/// How long one membership change may take to commit. Below the admin's control deadline so
/// that `Leave` answers before the admin gives up.
pub const MEMBERSHIP_CHANGE_TIMEOUT_MS: u64 = CONTROL_RPC_TIMEOUT_MS - 2_000;

/// The `Control` service of one replica.
pub struct ControlService {
    replica: Arc<Replica>,
}

impl ControlService {
    /// The service answering for `replica`.
    #[must_use]
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }

    async fn join(&self, req: JoinRequest) -> Result<(), NodeError> {
        let r = &self.replica;
        r.check_cluster(req.cluster_id)?;
        if req.node_id == 0 || req.raft_addr.is_empty() || req.grpc_addr.is_empty() {
            return Err(NodeError::Invalid(
                "a join names a node id and both of its addresses".into(),
            ));
        }
        r.ensure_leader()?;
        if r.is_voter(req.node_id) {
            return Ok(());
        }
        let target_index = r.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let node = RavelNode {
            raft_addr: req.raft_addr.clone(),
            grpc_addr: req.grpc_addr.clone(),
        };
        tracing::info!(node = req.node_id, raft_addr = %req.raft_addr, "adding a learner");
        self.change(r.raft.add_learner(req.node_id, node, true))
            .await?;
        self.wait_caught_up(req.node_id, target_index).await?;
        tracing::info!(
            node = req.node_id,
            "learner caught up; promoting it to voter"
        );
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([req.node_id]));
        self.change(r.raft.change_membership(change, false)).await
    }

    /// Waits until the leader has replicated to `node` at least up to `index`.
    async fn wait_caught_up(&self, node: NodeId, index: u64) -> Result<(), NodeError> {
        let timeout = Duration::from_millis(JOIN_CATCH_UP_TIMEOUT_MS);
        self.replica
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|rep| rep.get(&node).cloned().flatten());
                    matched.is_some_and(|log_id| log_id.index >= index)
                },
                "learner caught up",
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                NodeError::Unavailable(format!(
                    "node {node} has not caught up to log index {index} yet ({e}); join again"
                ))
            })
    }

    /// Runs one membership change under a deadline and maps its failure.
    async fn change<F>(&self, change: F) -> Result<(), NodeError>
    where
        F: Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<TypeConfig>,
                RaftError<NodeId, ClientWriteError<NodeId, RavelNode>>,
            >,
        >,
    {
        let deadline = Duration::from_millis(MEMBERSHIP_CHANGE_TIMEOUT_MS);
        match tokio::time::timeout(deadline, change).await {
            Err(_elapsed) => Err(NodeError::Unavailable(format!(
                "the membership change did not commit within {MEMBERSHIP_CHANGE_TIMEOUT_MS} ms"
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(self.replica.not_leader(f.leader_id, f.leader_node.as_ref()))
            }
            Ok(Err(e)) => Err(NodeError::Unavailable(format!(
                "the membership change failed: {e}"
            ))),
        }
    }

    async fn leave(&self, req: LeaveRequest) -> Result<(), NodeError> {
        let r = &self.replica;
        r.check_cluster(req.cluster_id)?;
        r.ensure_leader()?;
        let (is_member, is_voter, voters) = {
            let metrics = r.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let is_member = membership.get_node(&req.node_id).is_some();
            (is_member, voters.contains(&req.node_id), voters.len())
        };
        if !is_member {
            return Ok(());
        }
        let ids = BTreeSet::from([req.node_id]);
        let change = if is_voter {
            if voters <= 1 {
                return Err(NodeError::Invalid("cannot remove the last voter".into()));
            }
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        tracing::info!(node = req.node_id, voter = is_voter, "removing a replica");
        self.change(r.raft.change_membership(change, false)).await
    }

    async fn assign(&self, req: AssignRequest) -> Result<u64, NodeError> {
        let r = &self.replica;
        r.check_cluster(req.cluster_id)?;
        if req.partitions.len() > MAX_PARTITIONS as usize
            || req.partitions.iter().any(|p| *p >= MAX_PARTITIONS)
        {
            return Err(NodeError::Invalid(format!(
                "an assignment holds at most {MAX_PARTITIONS} partitions below {MAX_PARTITIONS}"
            )));
        }
        let command = Command::Assign {
            epoch: req.epoch,
            partitions: req.partitions,
        };
        match r.write(command).await? {
            CommandResult::Assigned { epoch } => Ok(epoch),
            other => Err(refusal(other)),
        }
    }
}

/// What `replica` says of itself in a `Status` call (and on its `/readyz` and `/metrics`).
pub fn status_of(r: &Replica) -> StatusReply {
    let metrics = r.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let membership_changing = !learners.is_empty() || membership.get_joint_config().len() > 1;
    let role = match m.state {
        ServerState::Leader => "leader",
        ServerState::Shutdown => "shutdown",
        _ if !voters.contains(&r.node_id) => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Follower => "follower",
    };
    let (assignment_epoch, serving_partitions) = r.reader.assignment();
    StatusReply {
        node_id: r.node_id,
        cluster_id: r.cluster_id,
        role: role.to_owned(),
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        last_log_index: m.last_log_index.unwrap_or(0),
        last_applied_index: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        purged_index: m.purged.map_or(0, |l| l.index),
        voters,
        learners,
        assignment_epoch,
        serving_partitions,
        key_count: r.reader.key_count(),
        snapshots_installed: r.reader.snapshots_installed(),
        raft_addr: r.raft_addr.clone(),
        grpc_addr: r.grpc_addr.clone(),
        membership_changing,
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(status_of(&self.replica)))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let result = ControlService::join(self, request.into_inner()).await;
        Ok(Response::new(JoinReply {
            error: wire_error(&result),
        }))
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let result = ControlService::leave(self, request.into_inner()).await;
        Ok(Response::new(LeaveReply {
            error: wire_error(&result),
        }))
    }

    async fn assign(
        &self,
        request: Request<AssignRequest>,
    ) -> Result<Response<AssignReply>, Status> {
        let reply = match ControlService::assign(self, request.into_inner()).await {
            Ok(epoch) => AssignReply { epoch, error: None },
            Err(e) => AssignReply {
                epoch: 0,
                error: Some(e.to_wire()),
            },
        };
        Ok(Response::new(reply))
    }

    async fn migrate(
        &self,
        request: Request<MigrateRequest>,
    ) -> Result<Response<MigrateReply>, Status> {
        Ok(Response::new(
            migration::migrate(&self.replica, request.into_inner()).await,
        ))
    }

    async fn scan_partition(
        &self,
        request: Request<ScanPartitionRequest>,
    ) -> Result<Response<ScanPartitionReply>, Status> {
        Ok(Response::new(
            migration::scan_partition(&self.replica, request.into_inner()).await,
        ))
    }
}
