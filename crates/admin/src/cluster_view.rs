//! What `GET /v1/cluster` shows and what `GET /readyz` decides.
//!
//! The view shows the owner of every partition (`partition_owners`); per cluster its partitions,
//! its key count (the leader's `Status`) and whether it is draining; and at the top the moves in
//! progress, the largest write pause of any finished move (`max_write_pause_ms`), the recent
//! migration rate (`migration_rate`) and the recent
//! leader changes the admin observed (`leader_changes`, oldest first; see [`crate::pool`]).
//!
//! The view joins the persisted metadata with a live `Control.Status` from every replica (asked
//! concurrently, each with a short deadline, so one dead replica costs the page
//! [`STATUS_DEADLINE_MS`] and no more). Readiness makes no network call: it reads the table, the
//! placement task's confirmations and the leader cache. This module must not change anything.

use crate::AdminState;
use crate::placement::control_request;
use ravel_core::{ClusterId, NodeId};
use ravel_proto::v1::{StatusReply, StatusRequest};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tokio::task::JoinSet;

/// Deadline of one `Control.Status` call made for the cluster view or leader discovery.
pub const STATUS_DEADLINE_MS: u64 = 500;

/// Roles a replica reports that count as healthy (it is part of a cluster with a leader).
const HEALTHY_ROLES: [&str; 3] = ["leader", "follower", "learner"];

/// Asks each `(node, grpc_addr)` for its status concurrently, each call with `deadline_ms`.
/// Returns each node's reply or why it could not be had.
pub(crate) async fn replica_statuses(
    state: &AdminState,
    replicas: Vec<(NodeId, String)>,
    deadline_ms: u64,
) -> BTreeMap<NodeId, Result<StatusReply, String>> {
    let mut calls = JoinSet::new();
    for (node, addr) in replicas {
        let mut client = state.pool.control_client(&addr);
        calls.spawn(async move {
            let reply = client
                .status(control_request(StatusRequest {}, deadline_ms))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
            (node, reply)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((node, reply)) => {
                out.insert(node, reply);
            }
            Err(e) => tracing::error!(error = %e, "status call task failed"),
        }
    }
    out
}

/// The JSON body of GET /v1/cluster (queries each replica's Control.Status with a short deadline).
pub async fn cluster_view(state: &AdminState) -> Value {
    let meta = state.meta.current();
    let all: Vec<(NodeId, String)> = meta
        .replicas
        .values()
        .map(|r| (r.node_id, r.grpc_addr.clone()))
        .collect();
    let statuses = replica_statuses(state, all, STATUS_DEADLINE_MS).await;
    let epoch = meta.table.epoch;
    let assignment_epoch = meta.assignment_epoch;

    let clusters: Vec<Value> = meta
        .clusters
        .keys()
        .map(|&cluster| {
            let owned = meta.table.count_of(cluster);
            let mut leader: Option<(NodeId, u64)> = None;
            let mut leader_keys: Option<u64> = None;
            let replicas: Vec<Value> = meta
                .replicas_of(cluster)
                .into_iter()
                .map(|r| {
                    let status = statuses
                        .get(&r.node_id)
                        .cloned()
                        .unwrap_or_else(|| Err("no answer".into()));
                    let (role, healthy, error) = match &status {
                        Err(e) => ("unreachable".to_owned(), false, Some(e.clone())),
                        Ok(s) if s.node_id != r.node_id || s.cluster_id != cluster => (
                            "unreachable".to_owned(),
                            false,
                            Some(format!(
                                "address answers as node {} of cluster {}",
                                s.node_id, s.cluster_id
                            )),
                        ),
                        Ok(s) => {
                            if s.role == "leader" && leader.is_none_or(|(_, t)| s.term > t) {
                                leader = Some((r.node_id, s.term));
                                leader_keys = Some(s.key_count);
                            }
                            let healthy = HEALTHY_ROLES.contains(&s.role.as_str());
                            (s.role.clone(), healthy, None)
                        }
                    };
                    let mut replica = json!({
                        "id": r.node_id,
                        "raft_addr": r.raft_addr,
                        "grpc_addr": r.grpc_addr,
                        "role": role,
                        "healthy": healthy,
                    });
                    if let Ok(s) = &status {
                        replica["last_applied"] = json!(s.last_applied_index);
                        replica["term"] = json!(s.term);
                        replica["assignment_epoch"] = json!(s.assignment_epoch);
                        replica["serving_partitions"] = json!(s.serving_partitions);
                        replica["keys"] = json!(s.key_count);
                    }
                    if let Some(e) = error {
                        replica["error"] = json!(e);
                    }
                    replica
                })
                .collect();
            // The live answer wins over the cache, which may lag an election.
            let leader = leader
                .map(|(n, _)| n)
                .or_else(|| state.pool.leader(cluster));
            let target = meta.target.iter().filter(|t| **t == Some(cluster)).count();
            json!({
                "id": cluster,
                "leader": leader,
                "partitions": owned,
                // The partitions the ring wants here; moves close the gap to `partitions`.
                "target_partitions": target,
                // The leader's count; null while no leader answered.
                "keys": leader_keys,
                "draining": meta.draining.contains(&cluster),
                "assignment_confirmed": state.placement.confirmed(cluster, assignment_epoch),
                "replicas": replicas,
            })
        })
        .collect();

    let migrations: Vec<Value> = meta
        .moves
        .iter()
        .map(|(&p, m)| {
            let live = state.mover.keys_copied(p).unwrap_or(0);
            json!({
                "partition": p,
                "source": m.source,
                "target": m.target,
                "step": m.step.name(),
                "keys_copied": m.keys_copied.max(live),
            })
        })
        .collect();
    let rate = state.mover.rate();
    let admins = admin_views(state).await;
    json!({
        "admins": admins,
        "partitions": meta.partitions,
        "epoch": epoch,
        "assignment_epoch": assignment_epoch,
        "has_data": meta.has_data,
        "clusters": clusters,
        // The owning cluster of each partition, in partition order (null: no owner).
        "partition_owners": meta.table.owners,
        "migrations": migrations,
        // Partitions whose owner differs from the ring's choice and that no move handles yet.
        "moves_pending": crate::meta::plan_moves(&meta).len(),
        "max_write_pause_ms": meta.max_write_pause_ms,
        // Records and MB (10^6 bytes of keys and values) copied per second by the moves, over
        // the last `RATE_WINDOW_MS`.
        "migration_rate": {
            "keys_per_sec": (rate.keys_per_sec * 10.0).round() / 10.0,
            "mb_per_sec": (rate.bytes_per_sec / 1e4).round() / 100.0,
        },
        "leader_changes": state.pool.leader_changes(),
    })
}

/// Every admin of the group as `/v1/cluster` lists it: this one from its own Raft, the others
/// from their `AdminStatus` (asked concurrently, each with [`STATUS_DEADLINE_MS`]); an admin
/// that does not answer is listed unhealthy with why.
async fn admin_views(state: &AdminState) -> Vec<Value> {
    let own = state.meta.status(&crate::meta::raft::AdminNode {
        grpc_addr: state.addrs.grpc.clone(),
        http_addr: state.addrs.http.clone(),
    });
    let mut calls = JoinSet::new();
    for (id, node, voter) in state.meta.members() {
        if id == own.admin_id {
            continue;
        }
        let channel = state.pool.channel(&node.grpc_addr);
        calls.spawn(async move {
            let mut client = ravel_proto::v1::admin_client::AdminClient::new(channel);
            let mut request = tonic::Request::new(ravel_proto::v1::AdminStatusRequest {});
            request.set_timeout(std::time::Duration::from_millis(STATUS_DEADLINE_MS));
            let reply = client
                .admin_status(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
            (id, node, voter, reply)
        });
    }
    let mut views = vec![admin_view(&own, true, None)];
    while let Some(joined) = calls.join_next().await {
        let Ok((id, node, voter, reply)) = joined else {
            continue;
        };
        views.push(match reply {
            Ok(status) if status.admin_id == id => admin_view(&status, voter, None),
            Ok(status) => admin_view(
                &unknown_admin(id, &node),
                voter,
                Some(format!("address answers as admin {}", status.admin_id)),
            ),
            Err(e) => admin_view(&unknown_admin(id, &node), voter, Some(e)),
        });
    }
    views.sort_by_key(|v| v["grpc_addr"].as_str().map(str::to_owned));
    views
}

fn unknown_admin(
    id: u64,
    node: &crate::meta::raft::AdminNode,
) -> ravel_proto::v1::AdminStatusReply {
    ravel_proto::v1::AdminStatusReply {
        admin_id: id,
        grpc_addr: node.grpc_addr.clone(),
        http_addr: node.http_addr.clone(),
        role: "unreachable".into(),
        ..Default::default()
    }
}

fn admin_view(s: &ravel_proto::v1::AdminStatusReply, voter: bool, error: Option<String>) -> Value {
    let healthy = error.is_none() && s.based && HEALTHY_ROLES.contains(&s.role.as_str());
    let mut view = json!({
        "id": s.admin_id,
        "grpc_addr": s.grpc_addr,
        "http_addr": s.http_addr,
        "role": s.role,
        "healthy": healthy,
        "voter": voter,
    });
    if error.is_none() {
        view["term"] = json!(s.term);
        view["leader_id"] = json!(s.leader_id);
        view["last_applied"] = json!(s.last_applied_index);
    }
    if let Some(e) = error {
        view["error"] = json!(e);
    }
    view
}

/// Ok when the admin can serve: the admins' group's state is here, every partition has an owner, every owning cluster has confirmed the
/// current assignment epoch, and has a known leader. Err(reason) otherwise.
///
/// The assignment epoch, not the table epoch: table epochs that come from moves need no
/// confirmation, because the mover switches the table only after the target answered ACTIVATE.
pub fn readiness(state: &AdminState) -> Result<(), String> {
    if !state.meta.based() {
        return Err(
            "the admins' group has not formed yet: a majority of the admins in --peers must be up"
                .to_owned(),
        );
    }
    let meta = state.meta.current();
    let epoch = meta.assignment_epoch;
    let mut owners = BTreeSet::<ClusterId>::new();
    for (p, owner) in meta.table.owners.iter().enumerate() {
        match owner {
            Some(c) => {
                owners.insert(*c);
            }
            None if meta.clusters.is_empty() => {
                return Err(
                    "no cluster exists yet: start a replica with -l to create one".to_owned(),
                );
            }
            None => {
                return Err(format!(
                    "partition {p} has no owning cluster (its cluster was removed with --force)"
                ));
            }
        }
    }
    for cluster in owners {
        if !state.placement.confirmed(cluster, epoch) {
            return Err(format!(
                "cluster {cluster} has not yet confirmed partition assignment epoch {epoch}"
            ));
        }
        if state.pool.leader(cluster).is_none() {
            return Err(format!("cluster {cluster} has no known leader"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{MetaCommand, MetaStore};

    fn register(token: u64, new_cluster: bool) -> MetaCommand {
        MetaCommand::RegisterReplica {
            token,
            raft_addr: format!("127.0.0.1:{}", 17000 + token),
            grpc_addr: format!("127.0.0.1:{}", 18000 + token),
            new_cluster,
        }
    }

    /// Readiness needs owners for every partition, then each owning cluster's confirmation of the
    /// current epoch and a known leader, and says which is missing.
    #[tokio::test]
    async fn readiness_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let state = AdminState::new(MetaStore::open(dir.path(), Some(8)).await.unwrap());
        assert!(readiness(&state).unwrap_err().contains("no cluster"));

        state.meta.execute(register(1, true)).await.unwrap();
        let epoch = state.meta.current().table.epoch;
        assert!(readiness(&state).unwrap_err().contains("not yet confirmed"));
        state.placement.wake(); // harmless without a task
        state.pool.set_leader(1, 1);
        assert!(readiness(&state).unwrap_err().contains("not yet confirmed"));
        state.placement.set_confirmed(1, epoch);
        assert_eq!(readiness(&state), Ok(()));
        state.pool.forget_leader(1, 1);
        assert!(readiness(&state).unwrap_err().contains("no known leader"));
    }

    /// The view lists every cluster and replica; an unreachable replica shows as such; a cluster
    /// added after keys existed owns nothing yet but has target partitions.
    #[tokio::test]
    async fn view_marks_unreachable_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let state = AdminState::new(MetaStore::open(dir.path(), Some(8)).await.unwrap());
        // Addresses of listeners we bind and drop, so nothing answers there.
        for token in [1, 2] {
            let free = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            state
                .meta
                .execute(MetaCommand::RegisterReplica {
                    token,
                    raft_addr: free.to_string(),
                    grpc_addr: free.to_string(),
                    new_cluster: true,
                })
                .await
                .unwrap();
            if token == 1 {
                state.meta.ensure_has_data().await.unwrap();
            }
        }
        let view = cluster_view(&state).await;
        assert_eq!(view["partitions"], 8);
        assert_eq!(view["has_data"], true);
        let clusters = view["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(clusters[0]["partitions"], 8);
        assert_eq!(clusters[1]["partitions"], 0);
        assert_eq!(view["partition_owners"], json!(vec![1; 8]));
        // Keys existed when cluster 2 came: it gets partitions only through moves.
        assert_eq!(
            clusters[1]["target_partitions"].as_u64().unwrap() as usize,
            state
                .meta
                .current()
                .target
                .iter()
                .filter(|t| **t == Some(2))
                .count()
        );
        assert!(clusters[1]["target_partitions"].as_u64().unwrap() > 0);
        assert_eq!(clusters[0]["draining"], false);
        assert_eq!(clusters[0]["keys"], Value::Null);
        assert_eq!(view["max_write_pause_ms"], 0);
        let replica = &clusters[0]["replicas"][0];
        assert_eq!(replica["role"], "unreachable");
        assert_eq!(replica["healthy"], false);
        assert_eq!(clusters[0]["leader"], Value::Null);
        assert_eq!(view["migrations"], json!([]));
        assert_eq!(view["leader_changes"], json!([]));

        state.pool.report_leader(1, 1, 4);
        let view = cluster_view(&state).await;
        let changes = view["leader_changes"].as_array().unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0]["cluster"], 1);
        assert_eq!(changes[0]["old_leader"], Value::Null);
        assert_eq!(changes[0]["new_leader"], 1);
        assert_eq!(changes[0]["term"], 4);
        assert!(changes[0]["at_unix_ms"].as_u64().is_some_and(|t| t > 0));
    }
}
