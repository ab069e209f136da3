//! Pushing the partition assignment to clusters, and finding cluster leaders for control calls.
//!
//! The persisted table says which partitions each cluster owns; a cluster only serves what its
//! own Raft log has applied. While the store holds no keys, every table is an *assignment*
//! (`MetaState::assignment_epoch`): a background task sends every cluster whose confirmed
//! assignment epoch is below it an `Assign{epoch, partitions}` on its leader, until the leader
//! answers with an epoch at least that. A cluster that owns nothing is sent the empty set too, so
//! that it knows it owns nothing. Once the store holds keys, ownership changes only by migration
//! steps (the mover), which change no assignment epoch: a cluster that confirmed the assignment
//! epoch ignores any later `Assign` of that epoch (nodes apply only newer epochs), and the mover
//! starts moves only between confirmed clusters, so an `Assign` can never undo a move.
//! The task runs on a wake-up (table change, new leader) and every [`PLACEMENT_INTERVAL_MS`];
//! after an admin restart nothing is confirmed, so every cluster is sent the table again (the
//! node answers an Assign that is not newer with the epoch it already has).
//!
//! It also re-discovers the leader of a cluster whose cached leader was forgotten, since
//! readiness needs one. This module must not change the table: only `meta` does.

use crate::cluster_view::{self, STATUS_DEADLINE_MS};
use crate::{AdminState, SharedState};
use ravel_core::{ClusterId, NodeId, limits};
use ravel_proto::v1::control_client::ControlClient;
use ravel_proto::v1::node_error::Kind;
use ravel_proto::v1::{AssignRequest, NodeError};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Period of the placement pass when nothing wakes it earlier.
pub const PLACEMENT_INTERVAL_MS: u64 = 2_000;

/// What the placement task knows about each cluster's applied assignment.
#[derive(Default)]
pub struct Placement {
    wake: Notify,
    /// Highest assignment epoch each cluster's leader confirmed it applied.
    confirmed: Mutex<BTreeMap<ClusterId, u64>>,
    /// Last failure logged per cluster, so a cluster that stays down is logged once, not every
    /// pass.
    last_failure: Mutex<BTreeMap<ClusterId, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Placement {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the placement task for a pass now (after a table change or a new leader). A wake-up
    /// during a pass is kept and runs the next pass at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether `cluster` confirmed it applied an assignment of table epoch `epoch` or later.
    pub fn confirmed(&self, cluster: ClusterId, epoch: u64) -> bool {
        self.confirmed_epoch(cluster).is_some_and(|e| e >= epoch)
    }

    /// The highest assignment epoch `cluster` confirmed, if any since this admin started.
    pub fn confirmed_epoch(&self, cluster: ClusterId) -> Option<u64> {
        lock(&self.confirmed).get(&cluster).copied()
    }

    pub(crate) fn set_confirmed(&self, cluster: ClusterId, epoch: u64) {
        let mut confirmed = lock(&self.confirmed);
        let entry = confirmed.entry(cluster).or_insert(epoch);
        *entry = (*entry).max(epoch);
    }

    /// Drops what is known about clusters that no longer exist.
    fn retain(&self, clusters: &BTreeSet<ClusterId>) {
        lock(&self.confirmed).retain(|c, _| clusters.contains(c));
        lock(&self.last_failure).retain(|c, _| clusters.contains(c));
    }

    /// Logs a failure for `cluster` at warn level only when it differs from the last one.
    fn note_failure(&self, cluster: ClusterId, epoch: u64, why: &str) {
        let mut last = lock(&self.last_failure);
        if last.get(&cluster).is_some_and(|w| w == why) {
            tracing::debug!(cluster, epoch, why, "assignment still not confirmed");
        } else {
            tracing::warn!(
                cluster,
                epoch,
                why,
                "assignment not confirmed yet; retrying"
            );
            last.insert(cluster, why.to_owned());
        }
    }

    fn clear_failure(&self, cluster: ClusterId) {
        lock(&self.last_failure).remove(&cluster);
    }
}

/// Runs the placement task until `shutdown` is cancelled.
pub async fn run(state: SharedState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(PLACEMENT_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = pass(&state) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = state.placement.wake.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

/// One pass: assign to every unconfirmed cluster and look for the leader of every cluster
/// without a known one, all clusters concurrently.
async fn pass(state: &SharedState) {
    let meta = state.meta.current();
    let clusters: BTreeSet<ClusterId> = meta.clusters.keys().copied().collect();
    state.placement.retain(&clusters);
    let epoch = meta.assignment_epoch;
    let mut tasks = JoinSet::new();
    for &cluster in &clusters {
        let state = SharedState::clone(state);
        if !state.placement.confirmed(cluster, epoch) {
            tasks.spawn(async move { assign(&state, cluster).await });
        } else if state.pool.leader(cluster).is_none() {
            tasks.spawn(async move { discover_leader(&state, cluster).await });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "placement task failed");
        }
    }
}

/// Sends `cluster` its partitions of the current table; records the confirmation.
async fn assign(state: &AdminState, cluster: ClusterId) {
    let meta = state.meta.current();
    let epoch = meta.assignment_epoch;
    let partitions = meta.table.partitions_of(cluster);
    let count = partitions.len();
    let result = call_leader(state, cluster, |mut client| {
        let request = AssignRequest {
            cluster_id: cluster,
            epoch,
            partitions: partitions.clone(),
        };
        async move {
            let reply = client
                .assign(control_request(request, limits::CONTROL_RPC_TIMEOUT_MS))
                .await?
                .into_inner();
            Ok((reply.epoch, reply.error))
        }
    })
    .await;
    match result {
        Ok(applied) if applied >= epoch => {
            state.placement.set_confirmed(cluster, applied);
            state.placement.clear_failure(cluster);
            // Moves to and from this cluster may start now.
            state.mover.wake();
            tracing::info!(
                cluster,
                epoch = applied,
                partitions = count,
                "cluster confirmed its partition assignment"
            );
        }
        Ok(applied) => state.placement.note_failure(
            cluster,
            epoch,
            &format!("leader answered with older assignment epoch {applied}"),
        ),
        Err(e) => state.placement.note_failure(cluster, epoch, &e.to_string()),
    }
}

/// Asks every replica of `cluster` for its status and caches the leader of the newest term.
async fn discover_leader(state: &AdminState, cluster: ClusterId) {
    let replicas: Vec<_> = state
        .meta
        .current()
        .replicas_of(cluster)
        .into_iter()
        .map(|r| (r.node_id, r.grpc_addr.clone()))
        .collect();
    let statuses = cluster_view::replica_statuses(state, replicas, STATUS_DEADLINE_MS).await;
    let leader = statuses
        .iter()
        .filter_map(|(node, s)| s.as_ref().ok().map(|s| (*node, s)))
        .filter(|(node, s)| s.role == "leader" && s.node_id == *node && s.cluster_id == cluster)
        .max_by_key(|(_, s)| s.term);
    if let Some((node, status)) = leader
        && state.pool.report_leader(cluster, node, status.term)
    {
        tracing::info!(
            cluster,
            leader = node,
            term = status.term,
            "found cluster leader"
        );
    }
}

/// Why a call that must reach a cluster's leader failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderCallError {
    /// The leader (or a replica) gave a definite answer other than "not leader".
    #[error("replica {node} refused: {kind:?}: {message}")]
    Refused {
        node: NodeId,
        kind: Kind,
        message: String,
    },
    /// No replica acted as leader (unreachable, electing, or no replica known).
    #[error("no leader reachable: {0}")]
    NoLeader(String),
}

impl LeaderCallError {
    /// Stable snake_case code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused_by_replica",
            Self::NoLeader(_) => "no_leader",
        }
    }
}

/// Builds a control request with a deadline.
pub(crate) fn control_request<T>(message: T, timeout_ms: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_millis(timeout_ms));
    request
}

/// Calls `call` on the leader of `cluster`: the cached leader first, then each replica in id
/// order, following "not leader" hints; each replica is tried at most once, so it is bounded by
/// the cluster's size. `call` answers the reply's value and its `NodeError`, if any.
///
/// On success the replica that answered is cached as the leader; a replica that failed or said
/// "not leader" is forgotten as leader.
pub(crate) async fn call_leader<T, F, Fut>(
    state: &AdminState,
    cluster: ClusterId,
    call: F,
) -> Result<T, LeaderCallError>
where
    F: Fn(ControlClient<Channel>) -> Fut,
    Fut: Future<Output = Result<(T, Option<NodeError>), tonic::Status>>,
{
    let meta = state.meta.current();
    let members: BTreeMap<NodeId, String> = meta
        .replicas_of(cluster)
        .into_iter()
        .map(|r| (r.node_id, r.grpc_addr.clone()))
        .collect();
    if members.is_empty() {
        return Err(LeaderCallError::NoLeader(format!(
            "cluster {cluster} has no replicas"
        )));
    }
    let mut queue: VecDeque<NodeId> = VecDeque::with_capacity(members.len() + 1);
    if let Some(cached) = state.pool.leader(cluster) {
        queue.push_back(cached);
    }
    queue.extend(members.keys().copied());
    let mut tried = BTreeSet::new();
    let mut failures = Vec::new();
    while let Some(node) = queue.pop_front() {
        let Some(addr) = members.get(&node) else {
            continue;
        };
        if !tried.insert(node) {
            continue;
        }
        match call(state.pool.control_client(addr)).await {
            Ok((value, None)) => {
                state.pool.set_leader(cluster, node);
                return Ok(value);
            }
            Ok((_, Some(error))) => {
                let kind = Kind::try_from(error.kind).unwrap_or(Kind::Unspecified);
                match kind {
                    Kind::NotLeader => {
                        state.pool.forget_leader(cluster, node);
                        if error.leader_id != 0 && !tried.contains(&error.leader_id) {
                            queue.push_front(error.leader_id);
                        }
                        failures.push(format!("replica {node}: not leader"));
                    }
                    // Refused before proposal (no quorum yet, shutting down): another may serve.
                    Kind::Unavailable => {
                        failures.push(format!("replica {node}: unavailable: {}", error.message));
                    }
                    _ => {
                        return Err(LeaderCallError::Refused {
                            node,
                            kind,
                            message: error.message,
                        });
                    }
                }
            }
            Err(status) => {
                state.pool.forget_leader(cluster, node);
                failures.push(format!("replica {node}: {}", status.message()));
            }
        }
    }
    Err(LeaderCallError::NoLeader(failures.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{MetaCommand, MetaStore};
    use crate::node_api::NodeApi;
    use ravel_proto::v1::admin_server::Admin;
    use ravel_proto::v1::control_server::{Control, ControlServer};
    use ravel_proto::v1::{
        AssignReply, JoinReply, JoinRequest, LeaveReply, LeaveRequest, MigrateReply,
        MigrateRequest, RemoveReplicaRequest, ScanPartitionReply, ScanPartitionRequest,
        StatusReply, StatusRequest,
    };
    use std::sync::Arc;
    use tonic::{Request, Response, Status};

    /// A replica's Control service that knows who leads and records what it was asked.
    struct FakeReplica {
        node: NodeId,
        cluster: ClusterId,
        leader: NodeId,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl FakeReplica {
        fn not_leader(&self) -> Option<NodeError> {
            (self.node != self.leader).then(|| NodeError {
                kind: Kind::NotLeader as i32,
                message: "not leader".into(),
                leader_id: self.leader,
                ..NodeError::default()
            })
        }

        fn record(&self, call: String) {
            lock(&self.calls).push(call);
        }
    }

    #[tonic::async_trait]
    impl Control for FakeReplica {
        async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
            let role = if self.node == self.leader {
                "leader"
            } else {
                "follower"
            };
            Ok(Response::new(StatusReply {
                node_id: self.node,
                cluster_id: self.cluster,
                role: role.into(),
                term: 7,
                ..StatusReply::default()
            }))
        }

        async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
            Err(Status::unimplemented("not used"))
        }

        async fn migrate(
            &self,
            _: Request<MigrateRequest>,
        ) -> Result<Response<MigrateReply>, Status> {
            Err(Status::unimplemented("not used (see the mover's tests)"))
        }

        async fn scan_partition(
            &self,
            _: Request<ScanPartitionRequest>,
        ) -> Result<Response<ScanPartitionReply>, Status> {
            Err(Status::unimplemented("not used (see the mover's tests)"))
        }

        async fn leave(&self, r: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
            let error = self.not_leader();
            if error.is_none() {
                self.record(format!("leave {} on {}", r.get_ref().node_id, self.node));
            }
            Ok(Response::new(LeaveReply { error }))
        }

        async fn assign(&self, r: Request<AssignRequest>) -> Result<Response<AssignReply>, Status> {
            let req = r.into_inner();
            let error = self.not_leader();
            if error.is_none() {
                self.record(format!(
                    "assign e{} n{} on {}",
                    req.epoch,
                    req.partitions.len(),
                    self.node
                ));
            }
            Ok(Response::new(AssignReply {
                epoch: req.epoch,
                error,
            }))
        }
    }

    /// Binds a fake replica on a loopback port; it serves until `stop` is cancelled.
    async fn spawn_fake(
        node: NodeId,
        leader: NodeId,
        calls: Arc<Mutex<Vec<String>>>,
        stop: CancellationToken,
    ) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let fake = FakeReplica {
            node,
            cluster: 1,
            leader,
            calls,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ControlServer::new(fake))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                ),
        );
        addr
    }

    /// Against live (fake) replicas: a placement pass follows a "not leader" hint to the
    /// leader, which gets the whole table and is cached; a removal takes the replica out through
    /// the leader before dropping it from the records; a forgotten leader is found again.
    #[tokio::test]
    async fn placement_and_removal_reach_the_leader() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(AdminState::new(
            MetaStore::open(dir.path(), Some(8)).await.unwrap(),
        ));
        let stop = CancellationToken::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        // Node 1 founds cluster 1; node 2 joins and is the leader.
        for (token, new_cluster) in [(1, true), (2, false)] {
            let addr = spawn_fake(token, 2, Arc::clone(&calls), stop.clone()).await;
            state
                .meta
                .execute(MetaCommand::RegisterReplica {
                    token,
                    raft_addr: addr.clone(),
                    grpc_addr: addr,
                    new_cluster,
                })
                .await
                .unwrap();
        }
        let epoch = state.meta.current().table.epoch;
        assert!(crate::cluster_view::readiness(&state).is_err());

        pass(&state).await;
        assert!(state.placement.confirmed(1, epoch));
        assert_eq!(state.pool.leader(1), Some(2));
        assert_eq!(*lock(&calls), [format!("assign e{epoch} n8 on 2")]);
        assert_eq!(crate::cluster_view::readiness(&state), Ok(()));
        let view = crate::cluster_view::cluster_view(&state).await;
        assert_eq!(view["clusters"][0]["leader"], 2);
        assert_eq!(view["clusters"][0]["replicas"][1]["role"], "leader");
        assert_eq!(view["clusters"][0]["replicas"][0]["healthy"], true);

        // Start the next lookup at the follower, so removal must follow the hint too.
        state.pool.set_leader(1, 1);
        let api = NodeApi::new(Arc::clone(&state));
        api.remove_replica(Request::new(RemoveReplicaRequest {
            node_id: 1,
            force: false,
        }))
        .await
        .unwrap();
        assert_eq!(lock(&calls).last().unwrap(), "leave 1 on 2");
        assert!(!state.meta.current().replicas.contains_key(&1));

        state.pool.forget_leader(1, 2);
        pass(&state).await;
        assert_eq!(
            state.pool.leader(1),
            Some(2),
            "leader found again by status"
        );
        stop.cancel();
    }

    /// Confirmation is monotonic: a late, older answer never lowers a cluster's confirmed epoch,
    /// and clusters that disappear are forgotten.
    #[test]
    fn confirmations_only_grow() {
        let p = Placement::new();
        assert!(!p.confirmed(1, 0));
        p.set_confirmed(1, 5);
        p.set_confirmed(1, 3);
        assert_eq!(p.confirmed_epoch(1), Some(5));
        assert!(p.confirmed(1, 5) && p.confirmed(1, 4) && !p.confirmed(1, 6));
        p.retain(&BTreeSet::from([2]));
        assert_eq!(p.confirmed_epoch(1), None);
    }
}
