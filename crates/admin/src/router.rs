//! The router: the life of one client request, from key to partition to cluster leader and back.
//!
//! # The life of a PUT
//!
//! 1. The HTTP layer ([`crate::http`]) has parsed the body and checked the key and value against
//!    the limits; it calls [`Router::put`] with the key, the value's exact JSON text and the
//!    optional CAS version.
//! 2. Before anything is routed, [`crate::meta::MetaStore::ensure_has_data`] makes "this store
//!    holds data" durable (so `kill` of the last cluster refuses without `--force`).
//! 3. `p = partition_of(key, P)`; the persisted partition table (never re-derived here) gives the
//!    owning cluster C, or 503 `no_cluster` when nobody owns p.
//! 4. The leader cache ([`crate::pool::NodePool::leader`]) gives C's leader L; without one, C's
//!    replicas are tried in node-id order. The call goes over a pooled gRPC channel with a
//!    deadline of [`limits::DATA_RPC_TIMEOUT_MS`] (cut to what is left of the request budget).
//! 5. The node answers with a version, or with a `NodeError` whose kind decides what happens:
//!    - `NOT_LEADER`: nothing was proposed. Cache the hinted leader (or forget L) and retry there.
//!    - `UNAVAILABLE`, `WRONG_CLUSTER`: refused before proposal; try the next replica.
//!    - `WRONG_OWNER`: the partition is moving or the table is stale. Hold the request until the
//!      table changes (the move's switch) or the backoff ends, re-read the table and retry, for
//!      at most [`WRONG_OWNER_WAIT_MS`], then 503 `partition_moving`.
//!    - `CAS_MISMATCH`: a deterministic answer, 412 with the current version.
//!    - `OUTCOME_UNKNOWN`: the write was proposed; 504 `outcome_unknown`. Never retried, because a
//!      retry of a non-idempotent write could apply it twice.
//!    - `INVALID`: the node thinks the request is malformed; 500 `internal` (the HTTP layer should
//!      have refused it).
//! 6. A transport error on a write is retried elsewhere only when the request certainly never
//!    left the admin (the TCP connection could not be opened). Anything else — a reset, a broken
//!    stream, the deadline — may come after the node proposed it: 504 `outcome_unknown`.
//! 7. Rounds over the replicas are separated by a short backoff ([`BACKOFF_MIN_MS`] doubling to
//!    [`BACKOFF_MAX_MS`], cut short when a replica reports a new leader) while the cluster
//!    elects, within a whole budget of [`ROUTE_BUDGET_MS`] (below the HTTP request timeout).
//!    When it runs out and nothing was proposed: 503 `no_leader`.
//!
//! A GET follows the same path; reads change nothing, so any transport error or timeout is
//! retried on another replica, and running out of budget after timeouts is 503 `unavailable`.
//! One attempt at a read waits at most [`READ_ATTEMPT_TIMEOUT_MS`], so a replica that does not
//! answer costs a read that much and not the whole budget. A stale GET (`consistency=stale`)
//! may be answered by any replica, leader first.
//!
//! # When the leader cannot be reached
//!
//! A replica whose call failed in transport or timed out is marked unreachable
//! ([`crate::reachability`]) until a probe hears it again. Marked replicas are tried last, and
//! while any replica of the cluster is marked, a request sent to a replica other than the cached
//! leader carries `forward`: a follower passes it on to its leader over the cluster's own links,
//! with the same definite/unknown outcome rules, and answers with the leader's reply. So a
//! cluster whose leader only this admin cannot reach keeps serving through a follower. A reply
//! that came through a follower does not make that follower the cached leader.
//!
//! This module must not parse HTTP or decide status codes (that is [`crate::error`]), and must
//! never re-derive the partition table from the ring.

use crate::error::RouteError;
use crate::reachability::suspect;
use crate::{AdminState, SharedState};
use bytes::Bytes;
use ravel_core::command::Record;
use ravel_core::{ClusterId, NodeId, limits, partition_of};
use ravel_proto::transport::never_sent;
use ravel_proto::v1::{DeleteRequest, GetRequest, NodeError, PutRequest, node_error::Kind};
use std::time::{Duration, Instant};

/// Whole budget of one routed request, all retries included. Below the HTTP request timeout so
/// the router's own answer (503/504) wins over a bare 408.
pub const ROUTE_BUDGET_MS: u64 = 8_000;

/// How long a request refused with "wrong owner" (its partition is moving) is held and retried
/// before answering 503 `partition_moving`.
pub const WRONG_OWNER_WAIT_MS: u64 = 3_000;

/// First pause between two rounds over a cluster's replicas.
pub const BACKOFF_MIN_MS: u64 = 50;

/// Longest pause between two rounds.
pub const BACKOFF_MAX_MS: u64 = 400;

/// Longest wait for one replica's answer to a read before the read is tried on another one
/// (a linearizable read normally takes one heartbeat round; a write keeps the full
/// [`limits::DATA_RPC_TIMEOUT_MS`], because timing out a write makes its outcome unknown).
pub const READ_ATTEMPT_TIMEOUT_MS: u64 = 1_000;

/// Routes client requests to the leader of the cluster that owns the key.
#[derive(Clone)]
pub struct Router {
    state: SharedState,
}

/// One data operation, as sent to a node.
#[derive(Clone, Debug)]
enum Op {
    Put {
        key: Vec<u8>,
        value: Bytes,
        cas: Option<u64>,
    },
    Get {
        key: Vec<u8>,
        stale: bool,
    },
    Delete {
        key: Vec<u8>,
        cas: Option<u64>,
    },
}

impl Op {
    fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Get { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }

    fn is_stale_read(&self) -> bool {
        matches!(self, Op::Get { stale: true, .. })
    }

    fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Get { .. } => "get",
            Op::Delete { .. } => "delete",
        }
    }
}

/// A node's successful answer.
#[derive(Debug)]
enum Reply {
    Put(u64),
    Get(Option<Record>),
    Delete(bool),
}

/// How one attempt at one replica ended.
#[derive(Debug)]
enum Attempt {
    Done(Reply),
    /// Definitely not proposed; `hint` is the leader the node knows of.
    NotLeader {
        hint: Option<NodeId>,
    },
    /// The cluster does not serve the partition now.
    WrongOwner,
    CasMismatch {
        current: u64,
    },
    /// Definitely not applied (refused before proposal, or never reached the node).
    Retry {
        reason: &'static str,
        detail: String,
    },
    /// A read that failed in transport or timed out: safe to retry, but worth reporting.
    ReadFailed(String),
    OutcomeUnknown,
    Invalid(String),
}

impl Router {
    /// A router over the admin's shared state.
    #[must_use]
    pub fn new(state: SharedState) -> Self {
        Self { state }
    }

    /// Writes `value_json` (the value's exact JSON text) under `key`; with `cas = Some(v)` only
    /// if the key's version is `v` (0 = only if absent). Returns the key's new version.
    pub async fn put(
        &self,
        key: &[u8],
        value_json: Bytes,
        cas: Option<u64>,
    ) -> Result<u64, RouteError> {
        let op = Op::Put {
            key: key.to_vec(),
            value: value_json,
            cas,
        };
        match self.route(op).await? {
            Reply::Put(version) => Ok(version),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads `key`: linearizable through the leader, or any replica's local state when `stale`.
    pub async fn get(&self, key: &[u8], stale: bool) -> Result<Option<Record>, RouteError> {
        let op = Op::Get {
            key: key.to_vec(),
            stale: stale || fault::follower_reads(),
        };
        match self.route(op).await? {
            Reply::Get(record) => Ok(record),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes `key` (with `cas`, only if its version matches). Returns whether it existed.
    pub async fn delete(&self, key: &[u8], cas: Option<u64>) -> Result<bool, RouteError> {
        let op = Op::Delete {
            key: key.to_vec(),
            cas,
        };
        match self.route(op).await? {
            Reply::Delete(deleted) => Ok(deleted),
            other => Err(unexpected(&other)),
        }
    }

    /// Drives one request to an answer within [`ROUTE_BUDGET_MS`].
    async fn route(&self, op: Op) -> Result<Reply, RouteError> {
        let state: &AdminState = &self.state;
        if op.is_write() {
            // A write that no cluster could take must not mark the store as holding data.
            let meta = state.meta.current();
            if meta
                .table
                .owner(partition_of(op.key(), meta.partitions))
                .is_none()
            {
                return Err(RouteError::NoCluster);
            }
            drop(meta);
            // Nothing has been routed yet, so a failure here is definite.
            state.meta.ensure_has_data().await.map_err(|e| {
                RouteError::Unavailable(format!("could not persist the admin's metadata: {e}"))
            })?;
        }
        let deadline = Instant::now() + Duration::from_millis(ROUTE_BUDGET_MS);
        let mut backoff = Duration::from_millis(BACKOFF_MIN_MS);
        let mut wrong_owner_since: Option<Instant> = None;
        let mut last_read_failure: Option<String> = None;

        loop {
            // Re-read the table every round: a migration may have moved the partition.
            let meta = state.meta.current();
            let routed_epoch = meta.table.epoch;
            let partition = partition_of(op.key(), meta.partitions);
            let cluster = meta.table.owner(partition).ok_or(RouteError::NoCluster)?;
            let replicas: Vec<(NodeId, String)> = meta
                .replicas_of(cluster)
                .into_iter()
                .map(|r| (r.node_id, r.grpc_addr.clone()))
                .collect();
            drop(meta);

            let cached_leader = state.pool.leader(cluster);
            let mut queue = initial_order(&replicas, cached_leader);
            // Replicas this admin cannot reach now go last (stable: the leader first otherwise).
            if state
                .reach
                .any_of(replicas.iter().map(|(_, addr)| addr.as_str()))
            {
                queue.sort_by_key(|node| self.is_unreachable(&replicas, *node));
            }
            if fault::follower_reads() && op.is_stale_read() {
                // The injected fault: followers first, so reads really come from lagging state.
                queue.rotate_left(1);
            }
            let mut tried: Vec<NodeId> = Vec::with_capacity(replicas.len());
            let mut moving = false;
            while let Some(node) = queue.first().copied() {
                queue.remove(0);
                if tried.contains(&node) {
                    continue;
                }
                tried.push(node);
                let Some(addr) = replicas.iter().find(|(id, _)| *id == node).map(|r| &r.1) else {
                    continue;
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let per_attempt = if op.is_write() {
                    limits::DATA_RPC_TIMEOUT_MS
                } else {
                    READ_ATTEMPT_TIMEOUT_MS
                };
                let timeout = remaining.min(Duration::from_millis(per_attempt));
                // Through a follower while some replica is out of reach (see the module doc); a
                // mark set by this round's earlier attempt counts already.
                let forward = !op.is_stale_read()
                    && cached_leader != Some(node)
                    && state
                        .reach
                        .any_of(replicas.iter().map(|(_, addr)| addr.as_str()));
                let target = Target {
                    node,
                    addr,
                    forward,
                };
                match self
                    .attempt(&op, cluster, partition, &target, timeout)
                    .await
                {
                    Attempt::Done(reply) => {
                        if !op.is_stale_read() && !forward {
                            // Only the leader answers linearizable reads and writes.
                            state.pool.set_leader(cluster, node);
                        }
                        return Ok(reply);
                    }
                    Attempt::NotLeader { hint } => {
                        count_retry("not_leader");
                        state.pool.forget_leader(cluster, node);
                        if let Some(leader) = hint.filter(|l| *l != node) {
                            state.pool.set_leader(cluster, leader);
                            if !tried.contains(&leader) {
                                // An unreachable leader only after the others (they forward).
                                if self.is_unreachable(&replicas, leader) {
                                    queue.push(leader);
                                } else {
                                    queue.insert(0, leader);
                                }
                            }
                        }
                    }
                    Attempt::WrongOwner => {
                        count_retry("wrong_owner");
                        moving = true;
                        // Every replica of this cluster would say the same: re-read the table.
                        break;
                    }
                    Attempt::CasMismatch { current } => {
                        return Err(RouteError::CasMismatch { current });
                    }
                    Attempt::Retry { reason, detail } => {
                        count_retry(reason);
                        tracing::debug!(node, cluster, reason, %detail, "retrying on another replica");
                        state.pool.forget_leader(cluster, node);
                    }
                    Attempt::ReadFailed(detail) => {
                        count_retry("read_failed");
                        tracing::debug!(node, cluster, %detail, "read failed; trying another replica");
                        state.pool.forget_leader(cluster, node);
                        last_read_failure = Some(detail);
                    }
                    Attempt::OutcomeUnknown => return Err(RouteError::OutcomeUnknown),
                    Attempt::Invalid(msg) => {
                        return Err(RouteError::Internal(format!(
                            "node refused the request as invalid: {msg}"
                        )));
                    }
                }
            }

            let now = Instant::now();
            if moving {
                let since = *wrong_owner_since.get_or_insert(now);
                if now.duration_since(since) >= Duration::from_millis(WRONG_OWNER_WAIT_MS) {
                    return Err(RouteError::PartitionMoving);
                }
            }
            if now + backoff >= deadline {
                return Err(if moving {
                    RouteError::PartitionMoving
                } else if let Some(detail) = last_read_failure {
                    RouteError::Unavailable(detail)
                } else {
                    RouteError::NoLeader
                });
            }
            if moving {
                // Held until the table changes (the move switched the partition: go to the new
                // owner at once) or the backoff ends (a stale table: look again).
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = state.meta.table_changed_from(routed_epoch) => {}
                }
            } else {
                // A leader report ends the wait early: the cluster has just elected.
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = state.pool.leader_news() => {}
                }
            }
            backoff = (backoff * 2).min(Duration::from_millis(BACKOFF_MAX_MS));
        }
    }

    /// Whether `node` (one of `replicas`) is marked unreachable.
    fn is_unreachable(&self, replicas: &[(NodeId, String)], node: NodeId) -> bool {
        replicas
            .iter()
            .find(|(id, _)| *id == node)
            .is_some_and(|(_, addr)| self.state.reach.is_unreachable(addr))
    }

    /// One call to one replica, classified. A transport failure or a timeout marks the replica
    /// unreachable (see [`crate::reachability`]).
    async fn attempt(
        &self,
        op: &Op,
        cluster: ClusterId,
        partition: u32,
        target: &Target<'_>,
        timeout: Duration,
    ) -> Attempt {
        let Target {
            node,
            addr,
            forward,
        } = *target;
        let mut client = self.state.pool.data_client(addr);
        let call = async {
            match op {
                Op::Put { key, value, cas } => {
                    let mut req = tonic::Request::new(PutRequest {
                        cluster_id: cluster,
                        partition,
                        key: key.clone(),
                        value: value.clone(),
                        cas: *cas,
                        forward,
                    });
                    req.set_timeout(timeout);
                    client.put(req).await.map(|r| {
                        let r = r.into_inner();
                        (r.error, Reply::Put(r.version))
                    })
                }
                Op::Get { key, stale } => {
                    let mut req = tonic::Request::new(GetRequest {
                        cluster_id: cluster,
                        partition,
                        key: key.clone(),
                        stale: *stale,
                        forward,
                    });
                    req.set_timeout(timeout);
                    client.get(req).await.map(|r| {
                        let r = r.into_inner();
                        let record = r.found.then(|| Record {
                            version: r.version,
                            value: r.value.to_vec(),
                        });
                        (r.error, Reply::Get(record))
                    })
                }
                Op::Delete { key, cas } => {
                    let mut req = tonic::Request::new(DeleteRequest {
                        cluster_id: cluster,
                        partition,
                        key: key.clone(),
                        cas: *cas,
                        forward,
                    });
                    req.set_timeout(timeout);
                    client.delete(req).await.map(|r| {
                        let r = r.into_inner();
                        (r.error, Reply::Delete(r.deleted))
                    })
                }
            }
        };
        // The outer timeout also bounds a call stuck before the gRPC deadline applies.
        let outcome = tokio::time::timeout(timeout, call).await;
        let result = match outcome {
            Err(_elapsed) => {
                suspect(&self.state, node, addr, "timed out");
                return if op.is_write() {
                    Attempt::OutcomeUnknown
                } else {
                    Attempt::ReadFailed(format!("{} timed out at {addr}", op.name()))
                };
            }
            Ok(result) => result,
        };
        match result {
            Ok((None, reply)) => Attempt::Done(reply),
            Ok((Some(err), _)) => match classify_node_error(&err) {
                // A read changes nothing, so "unknown outcome" only means "ask again".
                Attempt::OutcomeUnknown if !op.is_write() => {
                    Attempt::ReadFailed(format!("{addr}: {}", err.message))
                }
                other => other,
            },
            Err(status) => {
                suspect(&self.state, node, addr, status.message());
                classify_transport(op.is_write(), &status, addr)
            }
        }
    }
}

/// The replica one attempt goes to, and whether it is asked to forward to its leader.
#[derive(Clone, Copy)]
struct Target<'a> {
    node: NodeId,
    addr: &'a str,
    forward: bool,
}

/// The replicas in the order to try them: the cached leader first, then the rest by node id.
fn initial_order(replicas: &[(NodeId, String)], leader: Option<NodeId>) -> Vec<NodeId> {
    let mut order: Vec<NodeId> = Vec::with_capacity(replicas.len());
    if let Some(l) = leader.filter(|l| replicas.iter().any(|(id, _)| id == l)) {
        order.push(l);
    }
    let mut rest: Vec<NodeId> = replicas
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| Some(*id) != leader)
        .collect();
    rest.sort_unstable();
    order.extend(rest);
    order
}

/// What a node's `NodeError` means for this request.
fn classify_node_error(err: &NodeError) -> Attempt {
    match Kind::try_from(err.kind).unwrap_or(Kind::Unspecified) {
        Kind::NotLeader => Attempt::NotLeader {
            hint: (err.leader_id != 0).then_some(err.leader_id),
        },
        Kind::WrongOwner => Attempt::WrongOwner,
        Kind::CasMismatch => Attempt::CasMismatch {
            current: err.current_version,
        },
        Kind::Unavailable => Attempt::Retry {
            reason: "unavailable",
            detail: err.message.clone(),
        },
        Kind::WrongCluster => Attempt::Retry {
            reason: "wrong_cluster",
            detail: err.message.clone(),
        },
        Kind::OutcomeUnknown => Attempt::OutcomeUnknown,
        Kind::Invalid => Attempt::Invalid(err.message.clone()),
        // A node that answers with an error it does not name is not trusted to have done nothing.
        Kind::Unspecified => Attempt::Invalid(format!("unspecified node error: {}", err.message)),
    }
}

/// What a gRPC transport failure means. Reads are always retryable; writes only when the
/// request certainly never reached the node.
fn classify_transport(is_write: bool, status: &tonic::Status, addr: &str) -> Attempt {
    let detail = format!("{addr}: {} ({:?})", status.message(), status.code());
    if !is_write {
        return Attempt::ReadFailed(detail);
    }
    if never_sent(status) {
        Attempt::Retry {
            reason: "connect_failed",
            detail,
        }
    } else {
        Attempt::OutcomeUnknown
    }
}

fn count_retry(reason: &'static str) {
    metrics::counter!("ravel_admin_route_retries_total", "reason" => reason).increment(1);
}

fn unexpected(reply: &Reply) -> RouteError {
    RouteError::Internal(format!("unexpected reply kind: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ravel_proto::v1::data_client::DataClient;

    fn node_error(kind: Kind) -> NodeError {
        NodeError {
            kind: kind as i32,
            message: "m".into(),
            leader_id: 3,
            leader_grpc_addr: "x".into(),
            current_version: 9,
            epoch: 1,
        }
    }

    /// Each node error kind leads to the action the contract gives it.
    #[test]
    fn node_errors_are_classified() {
        assert!(matches!(
            classify_node_error(&node_error(Kind::NotLeader)),
            Attempt::NotLeader { hint: Some(3) }
        ));
        let mut no_hint = node_error(Kind::NotLeader);
        no_hint.leader_id = 0;
        assert!(matches!(
            classify_node_error(&no_hint),
            Attempt::NotLeader { hint: None }
        ));
        assert!(matches!(
            classify_node_error(&node_error(Kind::WrongOwner)),
            Attempt::WrongOwner
        ));
        assert!(matches!(
            classify_node_error(&node_error(Kind::CasMismatch)),
            Attempt::CasMismatch { current: 9 }
        ));
        assert!(matches!(
            classify_node_error(&node_error(Kind::Unavailable)),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify_node_error(&node_error(Kind::WrongCluster)),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify_node_error(&node_error(Kind::OutcomeUnknown)),
            Attempt::OutcomeUnknown
        ));
        assert!(matches!(
            classify_node_error(&node_error(Kind::Invalid)),
            Attempt::Invalid(_)
        ));
    }

    /// The cached leader is tried first, then the other replicas in node-id order; a cached
    /// leader that is no longer a replica is ignored.
    #[test]
    fn replica_order_prefers_the_leader() {
        let replicas = vec![(5, "a".to_string()), (2, "b".into()), (9, "c".into())];
        assert_eq!(initial_order(&replicas, Some(9)), vec![9, 2, 5]);
        assert_eq!(initial_order(&replicas, None), vec![2, 5, 9]);
        assert_eq!(initial_order(&replicas, Some(7)), vec![2, 5, 9]);
    }

    /// A write to a port nobody listens on is recognised as never sent (safe to retry), while
    /// a deadline or an unrelated status is not.
    #[tokio::test]
    async fn refused_connection_is_never_sent() {
        // Bind then drop a listener to get a port that refuses connections.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let mut client = DataClient::new(channel);
        let status = client
            .put(PutRequest {
                cluster_id: 1,
                partition: 0,
                key: b"k".to_vec(),
                value: Bytes::from_static(b"1"),
                cas: None,
                forward: false,
            })
            .await
            .unwrap_err();
        assert!(never_sent(&status), "status: {status:?}");
        assert!(matches!(
            classify_transport(true, &status, "a"),
            Attempt::Retry { .. }
        ));

        let deadline = tonic::Status::deadline_exceeded("Timeout expired");
        assert!(!never_sent(&deadline));
        assert!(matches!(
            classify_transport(true, &deadline, "a"),
            Attempt::OutcomeUnknown
        ));
        assert!(matches!(
            classify_transport(false, &deadline, "a"),
            Attempt::ReadFailed(_)
        ));
        let reset = tonic::Status::unavailable("connection reset by peer");
        assert!(!never_sent(&reset));
    }
}

/// Test-only fault injection, compiled in only with the `fault-injection` cargo feature (which
/// the workspace enables for its own test builds, never for `cargo build` or `cargo install`).
///
/// With `RAVEL_FAULT_FOLLOWER_READS=1` in the admin's environment, linearizable reads are sent as
/// stale reads, followers first: they are answered from a replica's local state without the
/// read-index barrier. This deliberately breaks the linearizability promise, so that the fault
/// suite can prove it notices.
pub mod fault {
    /// The environment variable that turns the fault on.
    pub const FOLLOWER_READS_ENV: &str = "RAVEL_FAULT_FOLLOWER_READS";

    /// Whether linearizable reads are being served from followers' local state.
    #[cfg(feature = "fault-injection")]
    pub fn follower_reads() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            let on = std::env::var(FOLLOWER_READS_ENV).is_ok_and(|v| v == "1");
            if on {
                tracing::warn!(
                    "FAULT INJECTION: {FOLLOWER_READS_ENV}=1, linearizable reads are served from \
                     followers' local state; this admin is deliberately NOT linearizable"
                );
            }
            on
        })
    }

    /// Whether linearizable reads are being served from followers' local state: never in this
    /// build.
    #[cfg(not(feature = "fault-injection"))]
    pub fn follower_reads() -> bool {
        false
    }
}
