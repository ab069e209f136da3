//! The replica's own HTTP endpoint (`ravel_node start --http ADDR`), for probes and scrapers:
//! `/livez` (the process answers), `/readyz` (a voter of its cluster that knows its leader) and
//! `/metrics` (Prometheus text: the request, batching, fsync and apply series recorded where
//! they happen, plus the Raft gauges below, read from openraft's metrics at scrape time).
//! Client data never comes here: it goes through the admin.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use openraft::ServerState;
use ravel_proto::v1::StatusReply;
use ravel_storage::Storage;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control_service::status_of;
use crate::error::NodeError;
use crate::replica::Replica;

/// What the handlers read: the replica (Raft metrics, its status) and its storage (size).
#[derive(Clone)]
pub struct HttpState {
    pub replica: Arc<Replica>,
    pub storage: Storage,
}

/// Serves the endpoint on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    stop: CancellationToken,
) -> Result<(), NodeError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    // The recorder first: descriptions given before it exists would be lost.
    let _ = ravel_telemetry::prometheus();
    describe_metrics();
    let upkeep = ravel_telemetry::spawn_upkeep(stop.clone());
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(|e| NodeError::Serve {
            addr,
            message: e.to_string(),
        });
    upkeep.abort();
    served
}

/// The routes, on a replica's state.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(state)
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json(status, &serde_json::json!({"error": message, "code": code}))
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route on a replica: it serves /livez, /readyz and /metrics",
    )
}

async fn livez() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Why a replica cannot serve its share yet, or `None` when it can.
pub fn not_ready_reason(status: &StatusReply) -> Option<String> {
    if status.role == "shutdown" {
        return Some("Raft has shut down".into());
    }
    if !status.voters.contains(&status.node_id) {
        return Some(format!(
            "not a voter of cluster {} yet (role {})",
            status.cluster_id, status.role
        ));
    }
    if status.leader_id == 0 {
        return Some(format!(
            "cluster {} has no known leader (term {})",
            status.cluster_id, status.term
        ));
    }
    None
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let status = status_of(&state.replica);
    let summary = serde_json::json!({
        "node_id": status.node_id,
        "cluster_id": status.cluster_id,
        "role": status.role,
        "leader_id": status.leader_id,
        "term": status.term,
    });
    match not_ready_reason(&status) {
        None => json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "replica": summary}),
        ),
        Some(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": reason, "code": "not_ready", "replica": summary}),
        ),
    }
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    record_raft_gauges(&state);
    ravel_telemetry::metrics_response()
        .unwrap_or_else(|reason| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason))
}

/// HELP lines (with units) of every series a replica exports.
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("ravel_node_raft_term", "Current Raft term of this replica");
    describe_gauge!(
        "ravel_node_raft_is_leader",
        "1 while this replica leads its cluster, else 0"
    );
    describe_gauge!(
        "ravel_node_raft_leader_id",
        "Node id of the leader this replica knows (0: none)"
    );
    describe_gauge!(
        "ravel_node_raft_last_log_index",
        "Index of the last entry in this replica's Raft log"
    );
    describe_gauge!(
        "ravel_node_raft_commit_index",
        "Highest log index known committed: on the leader the index a majority of voters holds, \
         on a follower its applied index (a lower bound)"
    );
    describe_gauge!(
        "ravel_node_raft_applied_index",
        "Index of the last entry applied to the state machine"
    );
    describe_gauge!(
        "ravel_node_raft_snapshot_index",
        "Log index of the latest snapshot (0: none)"
    );
    describe_gauge!(
        "ravel_node_raft_log_entries",
        "Entries kept in the Raft log (last index less purged index)"
    );
    describe_gauge!(
        "ravel_node_raft_voters",
        "Voters in this cluster's membership"
    );
    describe_gauge!(
        "ravel_node_raft_learners",
        "Learners in this cluster's membership"
    );
    describe_gauge!("ravel_node_keys", "Keys stored by this replica");
    describe_gauge!(
        "ravel_node_serving_partitions",
        "Partitions this replica's cluster owns and serves"
    );
    describe_gauge!(
        "ravel_node_storage_size_bytes",
        Unit::Bytes,
        "Size of the replica's storage on disk"
    );
    describe_counter!(
        "ravel_node_raft_leader_changes_total",
        "Times the leader this replica knows changed (including to none)"
    );
    describe_counter!(
        "ravel_node_requests_total",
        "Data requests served, by method and code"
    );
    describe_histogram!(
        "ravel_node_request_duration_seconds",
        Unit::Seconds,
        "Time to serve a data request, by method"
    );
    describe_histogram!(
        "ravel_node_write_batch_commands",
        "Client writes carried by one Raft entry"
    );
    describe_histogram!(
        "ravel_node_read_index_round_reads",
        "Linearizable reads confirmed by one leadership round"
    );
    ravel_storage::describe_metrics();
}

/// Sets the Raft gauges from openraft's current metrics (cheap: one watch-channel borrow).
fn record_raft_gauges(state: &HttpState) {
    use metrics::gauge;
    let replica = &state.replica;
    let status = status_of(replica);
    #[allow(clippy::cast_precision_loss)] // Prometheus samples are f64.
    let set = |name: &'static str, v: u64| gauge!(name).set(v as f64);
    set("ravel_node_raft_term", status.term);
    set(
        "ravel_node_raft_is_leader",
        u64::from(status.role == "leader"),
    );
    set("ravel_node_raft_leader_id", status.leader_id);
    set("ravel_node_raft_last_log_index", status.last_log_index);
    set("ravel_node_raft_applied_index", status.last_applied_index);
    set("ravel_node_raft_snapshot_index", status.snapshot_index);
    set(
        "ravel_node_raft_log_entries",
        status.last_log_index.saturating_sub(status.purged_index),
    );
    set("ravel_node_raft_voters", status.voters.len() as u64);
    set("ravel_node_raft_learners", status.learners.len() as u64);
    set("ravel_node_keys", status.key_count);
    set(
        "ravel_node_serving_partitions",
        u64::from(status.serving_partitions),
    );
    set(
        "ravel_node_raft_commit_index",
        commit_index(replica, &status),
    );
    if let Ok(bytes) = state.storage.size_on_disk_bytes() {
        set("ravel_node_storage_size_bytes", bytes);
    }
}

/// On the leader, the highest index a majority of voters holds; elsewhere the applied index.
fn commit_index(replica: &Replica, status: &StatusReply) -> u64 {
    let metrics = replica.raft.metrics();
    let m = metrics.borrow();
    let (ServerState::Leader, Some(replication)) = (m.state, m.replication.as_ref()) else {
        return status.last_applied_index;
    };
    let mut held: Vec<u64> = status
        .voters
        .iter()
        .map(|id| {
            if *id == status.node_id {
                status.last_log_index
            } else {
                replication
                    .get(id)
                    .and_then(|matched| matched.map(|l| l.index))
                    .unwrap_or(0)
            }
        })
        .collect();
    held.sort_unstable_by(|a, b| b.cmp(a));
    // Sorted high to low, the majority-th value is held by a majority.
    held.get(held.len() / 2).copied().unwrap_or(0)
}

/// Counts the changes of the leader this replica knows, until `stop`. It watches openraft's
/// server metrics, which change with the role, vote and membership only (not with every log
/// append, as the full metrics do), so it costs nothing per request.
pub async fn count_leader_changes(replica: Arc<Replica>, stop: CancellationToken) {
    let mut rx = replica.raft.server_metrics();
    let mut leader = rx.borrow().current_leader;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let m = rx.borrow_and_update();
        if m.current_leader != leader {
            leader = m.current_leader;
            metrics::counter!("ravel_node_raft_leader_changes_total").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: &str, voters: Vec<u64>, leader_id: u64) -> StatusReply {
        StatusReply {
            node_id: 1,
            cluster_id: 7,
            role: role.into(),
            leader_id,
            voters,
            ..StatusReply::default()
        }
    }

    /// Ready means: a voter of its cluster that knows a leader; each other case says why not.
    #[test]
    fn readiness_needs_a_voter_with_a_leader() {
        assert_eq!(
            not_ready_reason(&status("follower", vec![1, 2, 3], 2)),
            None
        );
        assert_eq!(not_ready_reason(&status("leader", vec![1], 1)), None);
        let learner = not_ready_reason(&status("learner", vec![2, 3], 2)).unwrap();
        assert!(learner.contains("not a voter"), "{learner}");
        let leaderless = not_ready_reason(&status("candidate", vec![1, 2, 3], 0)).unwrap();
        assert!(leaderless.contains("no known leader"), "{leaderless}");
        let down = not_ready_reason(&status("shutdown", vec![1, 2, 3], 2)).unwrap();
        assert!(down.contains("shut down"), "{down}");
    }
}
