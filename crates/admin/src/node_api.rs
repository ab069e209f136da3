//! The Admin gRPC service that replicas call: registration, cluster lookup, leader reports and
//! removal (`ravel_node kill`); and that other admins call: a forwarded metadata change
//! (`ProposeMeta`, answered only by the admins' leader) and `AdminStatus`.
//!
//! Every change goes through `meta` (durable before it is answered); this module only validates
//! requests, talks to cluster leaders where a removal needs it, and maps outcomes to `Status`
//! (the one place that mapping lives). It must not touch the partition table itself.

use crate::meta::members::AdminChange;
use crate::meta::raft::AdminNode;
use crate::meta::{MetaCommand, MetaError, MetaOutcome, MetaRefusal, forward};
use crate::placement::{LeaderCallError, call_leader, control_request};
use crate::{SharedState, pool};
use ravel_core::{ClusterId, NodeId, limits};
use ravel_proto::v1::admin_server::{Admin, AdminServer};
use ravel_proto::v1::{
    AdminStatusReply, AdminStatusRequest, ChangeAdminsReply, ChangeAdminsRequest, ClusterInfoReply,
    ClusterInfoRequest, LeaderReport, LeaderReportReply, LeaveRequest, MetaProposal,
    MetaProposalReply, RegisterReply, RegisterRequest, RemoveReplicaReply, RemoveReplicaRequest,
    ReplicaInfo,
};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long a removal keeps looking for the cluster leader to take the replica out of the Raft
/// membership (elections, a leader that is itself being removed) before giving up.
pub const REMOVE_LEAVE_BUDGET_MS: u64 = 30_000;

/// Pause between rounds of looking for the leader during a removal.
const REMOVE_RETRY_PAUSE_MS: u64 = 500;

/// The Admin service. Cheap to construct; all state is in [`SharedState`].
pub struct NodeApi {
    state: SharedState,
    /// Removals run one at a time: the "is it the last replica?" check and the Raft `Leave`
    /// must not interleave with another removal from the same cluster.
    removal: tokio::sync::Mutex<()>,
}

impl NodeApi {
    #[must_use]
    pub fn new(state: SharedState) -> Self {
        Self {
            state,
            removal: tokio::sync::Mutex::new(()),
        }
    }

    /// The tonic service, with the message size limits every Ravel gRPC service uses.
    #[must_use]
    pub fn into_service(self) -> AdminServer<Self> {
        AdminServer::new(self)
            .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
    }

    /// Takes `node_id` of `cluster` out of the cluster's Raft membership through its leader,
    /// retrying (bounded by [`REMOVE_LEAVE_BUDGET_MS`]) while no leader answers.
    async fn leave(&self, cluster: ClusterId, node_id: NodeId) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(REMOVE_LEAVE_BUDGET_MS);
        loop {
            let result = call_leader(&self.state, cluster, |mut client| async move {
                let request = LeaveRequest {
                    cluster_id: cluster,
                    node_id,
                };
                let reply = client
                    .leave(control_request(request, limits::CONTROL_RPC_TIMEOUT_MS))
                    .await?
                    .into_inner();
                Ok(((), reply.error))
            })
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(LeaderCallError::Refused {
                    node,
                    kind,
                    message,
                }) => {
                    return Err(Status::failed_precondition(format!(
                        "replica {node}, leader of cluster {cluster}, refused to remove replica \
                         {node_id} from the membership ({kind:?}): {message}"
                    )));
                }
                Err(LeaderCallError::NoLeader(why)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Status::unavailable(format!(
                            "could not remove replica {node_id} from cluster {cluster}: no leader \
                             answered within {REMOVE_LEAVE_BUDGET_MS} ms ({why}); nothing was \
                             changed in the admin's records, retry later"
                        )));
                    }
                    tracing::debug!(cluster, node_id, why, "no leader for leave yet; retrying");
                    tokio::time::sleep(Duration::from_millis(REMOVE_RETRY_PAUSE_MS)).await;
                }
            }
        }
    }
}

/// Maps a metadata failure to a gRPC status, with a message for a person.
fn meta_status(error: MetaError) -> Status {
    match &error {
        MetaError::Refused(MetaRefusal::NoCluster) => {
            Status::failed_precondition("no cluster exists yet: start a replica with -l first")
        }
        MetaError::Refused(MetaRefusal::UnknownReplica { .. }) => {
            Status::not_found(error.to_string())
        }
        // Certainly not applied: the caller (a replica) retries, possibly at another admin.
        MetaError::NoAdminLeader | MetaError::Refused(MetaRefusal::NotFormed) => {
            Status::unavailable(error.to_string())
        }
        MetaError::Refused(_) => Status::failed_precondition(error.to_string()),
        _ => {
            tracing::error!(error = %error, code = error.code(), "metadata change failed");
            Status::internal(format!(
                "the admin could not persist its metadata ({}): {error}",
                error.code()
            ))
        }
    }
}

#[tonic::async_trait]
impl Admin for NodeApi {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let req = request.into_inner();
        if req.token == 0 {
            return Err(Status::invalid_argument(
                "registration token must be non-zero",
            ));
        }
        for (name, addr) in [("raft_addr", &req.raft_addr), ("grpc_addr", &req.grpc_addr)] {
            pool::validate_addr(addr)
                .map_err(|e| Status::invalid_argument(format!("{name}: {e}")))?;
        }
        let outcome = self
            .state
            .meta
            .execute(MetaCommand::RegisterReplica {
                token: req.token,
                raft_addr: req.raft_addr.clone(),
                grpc_addr: req.grpc_addr.clone(),
                new_cluster: req.new_cluster,
            })
            .await
            .map_err(meta_status)?;
        let MetaOutcome::Registered {
            node_id,
            cluster_id,
            bootstrap,
            table_changed,
        } = outcome
        else {
            return Err(Status::internal(
                "registration produced an unexpected outcome",
            ));
        };
        tracing::info!(
            node_id,
            cluster_id,
            bootstrap,
            table_changed,
            raft_addr = req.raft_addr,
            grpc_addr = req.grpc_addr,
            "replica registered"
        );
        // A new cluster needs its (possibly empty) assignment; a changed table needs pushing; a
        // new cluster with keys stored changes the desired owners, so moves are planned.
        self.state.placement.wake();
        self.state.mover.wake();
        Ok(Response::new(RegisterReply {
            node_id,
            cluster_id,
            bootstrap,
        }))
    }

    async fn cluster_info(
        &self,
        request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoReply>, Status> {
        let cluster_id = request.into_inner().cluster_id;
        let meta = self.state.meta.current();
        if !meta.clusters.contains_key(&cluster_id) {
            return Err(Status::not_found(format!(
                "no cluster with id {cluster_id}"
            )));
        }
        let replicas = meta
            .replicas_of(cluster_id)
            .into_iter()
            .map(|r| ReplicaInfo {
                node_id: r.node_id,
                raft_addr: r.raft_addr.clone(),
                grpc_addr: r.grpc_addr.clone(),
            })
            .collect();
        Ok(Response::new(ClusterInfoReply {
            cluster_id,
            leader_id: self.state.pool.leader(cluster_id).unwrap_or(0),
            replicas,
        }))
    }

    async fn report_leader(
        &self,
        request: Request<LeaderReport>,
    ) -> Result<Response<LeaderReportReply>, Status> {
        let report = request.into_inner();
        let meta = self.state.meta.current();
        let member = meta
            .replicas
            .get(&report.node_id)
            .is_some_and(|r| r.cluster_id == report.cluster_id);
        // An unknown sender is acknowledged but ignored: replicas retry reports until they are
        // acknowledged, and an error would only make a removed replica retry forever.
        if !member {
            tracing::warn!(
                cluster = report.cluster_id,
                node = report.node_id,
                "leader report from a replica the admin does not know in that cluster; ignored"
            );
        } else if self
            .state
            .pool
            .report_leader(report.cluster_id, report.node_id, report.term)
        {
            tracing::info!(
                cluster = report.cluster_id,
                leader = report.node_id,
                term = report.term,
                "cluster leader reported"
            );
            // A new leader may not have applied the assignment yet.
            self.state.placement.wake();
        }
        Ok(Response::new(LeaderReportReply {}))
    }

    async fn remove_replica(
        &self,
        request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaReply>, Status> {
        let RemoveReplicaRequest { node_id, force } = request.into_inner();
        let _one_at_a_time = self.removal.lock().await;
        let meta = self.state.meta.current();
        let Some(record) = meta.replicas.get(&node_id).cloned() else {
            return Err(Status::not_found(format!(
                "no replica with node id {node_id}"
            )));
        };
        let command = MetaCommand::RemoveReplica { node_id, force };
        // Refuse before touching the cluster's membership if the admin would refuse anyway.
        let preview = (*meta)
            .clone()
            .apply(command.clone())
            .map_err(|r| meta_status(r.into()))?;
        let cluster = record.cluster_id;
        if let MetaOutcome::Draining { .. } = preview {
            // The last replica of a cluster holding keys: drain first (idempotent), answer
            // "not done"; the caller repeats the call until the cluster owns nothing.
            let outcome = self
                .state
                .meta
                .execute(command)
                .await
                .map_err(meta_status)?;
            self.state.mover.wake();
            return match outcome {
                MetaOutcome::Draining {
                    partitions_left,
                    moves_in_progress,
                    ..
                } => {
                    tracing::info!(
                        node_id,
                        cluster,
                        partitions_left,
                        moves_in_progress,
                        "cluster draining before its removal"
                    );
                    Ok(Response::new(RemoveReplicaReply {
                        done: false,
                        partitions_left,
                        moves_in_progress,
                    }))
                }
                // Between the preview and now the last partition moved away, so the command
                // removed the replica (the last of its cluster: no Leave was needed).
                _ => {
                    self.state.pool.drop_channel(&record.grpc_addr);
                    self.state.pool.forget_cluster(cluster);
                    self.state.placement.wake();
                    tracing::info!(
                        node_id,
                        cluster,
                        "replica removed after its cluster drained"
                    );
                    Ok(Response::new(RemoveReplicaReply {
                        done: true,
                        ..RemoveReplicaReply::default()
                    }))
                }
            };
        }
        let has_others = meta
            .replicas_of(cluster)
            .iter()
            .any(|r| r.node_id != node_id);
        if has_others {
            self.leave(cluster, node_id).await?;
        }
        let outcome = self
            .state
            .meta
            .execute(command)
            .await
            .map_err(meta_status)?;
        self.state.pool.forget_leader(cluster, node_id);
        self.state.pool.drop_channel(&record.grpc_addr);
        if let MetaOutcome::Removed {
            cluster_removed: true,
            ..
        } = outcome
        {
            self.state.pool.forget_cluster(cluster);
        }
        tracing::info!(
            node_id,
            cluster,
            force,
            table_changed = outcome.table_changed(),
            "replica removed"
        );
        self.state.placement.wake();
        self.state.mover.wake();
        Ok(Response::new(RemoveReplicaReply {
            done: true,
            ..RemoveReplicaReply::default()
        }))
    }

    async fn propose_meta(
        &self,
        request: Request<MetaProposal>,
    ) -> Result<Response<MetaProposalReply>, Status> {
        let command = forward::decode_proposal(request.get_ref())?;
        let answer = forward::answer_of(self.state.meta.execute_here(command).await);
        if matches!(answer, Ok(Ok(_))) {
            // A forwarded registration or removal may change what to place and to move.
            self.state.placement.wake();
            self.state.mover.wake();
        }
        Ok(Response::new(MetaProposalReply {
            answer: forward::encode_answer(&answer)?,
        }))
    }

    async fn change_admins(
        &self,
        request: Request<ChangeAdminsRequest>,
    ) -> Result<Response<ChangeAdminsReply>, Status> {
        let req = request.into_inner();
        pool::validate_addr(&req.grpc_addr)
            .map_err(|e| Status::invalid_argument(format!("grpc_addr: {e}")))?;
        let change = if req.add {
            AdminChange::Add(req.grpc_addr)
        } else {
            AdminChange::Remove(req.grpc_addr)
        };
        let answer = forward::answer_of(self.state.meta.change_admins_here(&change).await);
        Ok(Response::new(ChangeAdminsReply {
            answer: forward::encode_answer(&answer)?,
        }))
    }

    async fn admin_status(
        &self,
        _: Request<AdminStatusRequest>,
    ) -> Result<Response<AdminStatusReply>, Status> {
        let node = AdminNode {
            grpc_addr: self.state.addrs.grpc.clone(),
            http_addr: self.state.addrs.http.clone(),
        };
        Ok(Response::new(self.state.meta.status(&node)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AdminState;
    use crate::meta::MetaStore;
    use std::sync::Arc;

    async fn api() -> (tempfile::TempDir, NodeApi) {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(AdminState::new(
            MetaStore::open(dir.path(), Some(8)).await.unwrap(),
        ));
        (dir, NodeApi::new(state))
    }

    fn reg(token: u64, new_cluster: bool) -> Request<RegisterRequest> {
        Request::new(RegisterRequest {
            token,
            raft_addr: format!("127.0.0.1:{}", 27000 + token),
            grpc_addr: format!("127.0.0.1:{}", 28000 + token),
            new_cluster,
        })
    }

    /// Registration maps refusals and bad input to the right status codes, and a joiner's
    /// cluster is visible through ClusterInfo with the reported leader.
    #[tokio::test]
    async fn register_and_cluster_info() {
        let (_dir, api) = api().await;
        let err = api.register(reg(1, false)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("-l"));
        let mut bad = reg(1, true);
        bad.get_mut().grpc_addr = "nope".into();
        assert_eq!(
            api.register(bad).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );

        let first = api.register(reg(1, true)).await.unwrap().into_inner();
        assert_eq!(
            (first.node_id, first.cluster_id, first.bootstrap),
            (1, 1, true)
        );
        let second = api.register(reg(2, false)).await.unwrap().into_inner();
        assert_eq!(
            (second.node_id, second.cluster_id, second.bootstrap),
            (2, 1, false)
        );

        api.report_leader(Request::new(LeaderReport {
            cluster_id: 1,
            node_id: 1,
            term: 3,
        }))
        .await
        .unwrap();
        let info = api
            .cluster_info(Request::new(ClusterInfoRequest { cluster_id: 1 }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.leader_id, 1);
        assert_eq!(
            info.replicas.iter().map(|r| r.node_id).collect::<Vec<_>>(),
            [1, 2]
        );
        let missing = api
            .cluster_info(Request::new(ClusterInfoRequest { cluster_id: 9 }))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }

    /// Removing the last replica of a cluster holding keys is refused without force and needs no
    /// network call either way; an unknown replica is not_found.
    #[tokio::test]
    async fn remove_last_replica() {
        let (_dir, api) = api().await;
        api.register(reg(1, true)).await.unwrap();
        api.state.meta.ensure_has_data().await.unwrap();
        let remove = |force| Request::new(RemoveReplicaRequest { node_id: 1, force });
        let err = api.remove_replica(remove(false)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("--force"), "{}", err.message());
        assert!(api.state.meta.current().replicas.contains_key(&1));
        api.remove_replica(remove(true)).await.unwrap();
        assert!(api.state.meta.current().clusters.is_empty());
        let err = api.remove_replica(remove(true)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
}
