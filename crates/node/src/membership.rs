//! How a replica finds its place: registration with the admin, the join loop that makes a new
//! replica a voter of its cluster, and the leader reporter that tells the admin who leads.
//!
//! All three retry with backoff until they succeed, a newer event supersedes them, or the
//! replica shuts down; none of them holds a lock or blocks a request path. This module must not
//! change the Raft membership itself: only the leader's `Control.Join` does that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use ravel_core::limits::CONTROL_RPC_TIMEOUT_MS;
use ravel_proto::v1::control_client::ControlClient;
use ravel_proto::v1::node_error::Kind;
use ravel_proto::v1::{ClusterInfoRequest, JoinRequest, LeaderReport, RegisterRequest};
use tokio_util::sync::CancellationToken;

use crate::admins::Admins;
use crate::config::NodeConfig;
use crate::control_service::{JOIN_CATCH_UP_TIMEOUT_MS, MEMBERSHIP_CHANGE_TIMEOUT_MS};
use crate::error::NodeError;
use crate::identity::{self, Identity};
use crate::raft_net::lazy_channel;
use crate::replica::Replica;

/// First pause after a failed attempt to reach the admin.
const ADMIN_BACKOFF_MIN_MS: u64 = 200;
/// Longest pause between attempts to reach the admin.
const ADMIN_BACKOFF_MAX_MS: u64 = 2_000;
/// How often a still-failing retry loop writes a log line.
const RETRY_LOG_INTERVAL_MS: u64 = 5_000;
/// Pause between two rounds of the join loop.
const JOIN_ROUND_PAUSE_MS: u64 = 500;
/// Deadline of one Join call: the leader may wait for catch-up and two membership commits.
const JOIN_CALL_TIMEOUT_MS: u64 =
    JOIN_CATCH_UP_TIMEOUT_MS + 2 * MEMBERSHIP_CHANGE_TIMEOUT_MS + 2_000;
/// Most replicas one join round asks (following NOT_LEADER hints counts too).
const MAX_JOIN_HOPS: usize = 16;

/// A request with the control deadline.
pub(crate) fn with_deadline<T>(message: T, deadline_ms: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_millis(deadline_ms));
    request
}

/// Sleeps for `pause`, or returns `false` at once when `shutdown` fires.
async fn pause_or_stop(pause: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(pause) => true,
    }
}

/// Doubling backoff between bounds, and a rate limit for the log line of a retry loop.
struct Backoff {
    next: Duration,
    max: Duration,
    last_log: Option<Instant>,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Self {
        Self {
            next: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
            last_log: None,
        }
    }

    fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// True at most once per [`RETRY_LOG_INTERVAL_MS`].
    fn should_log(&mut self) -> bool {
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(RETRY_LOG_INTERVAL_MS));
        if due {
            self.last_log = Some(Instant::now());
        }
        due
    }
}

/// Whether an admin answer means "try again later" rather than "no".
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::OutOfRange
    )
}

/// Registers this (new) storage directory with the admin and persists the identity it gets.
/// The Raft address registered is the advertised one (`--raft-advertise`): it is what the
/// cluster membership records and what peers dial.
///
/// The token is made durable first, so that a crash between the admin's answer and the write of
/// `node.json` re-registers as the same replica instead of leaking one.
pub(crate) async fn register(
    config: &NodeConfig,
    shutdown: &CancellationToken,
) -> Result<Identity, NodeError> {
    let dir = &config.storagedir;
    let token = identity::load_or_create_token(dir)?;
    let admins = Admins::new(&config.adminrpcaddr)?;
    let mut backoff = Backoff::new(ADMIN_BACKOFF_MIN_MS, ADMIN_BACKOFF_MAX_MS);
    loop {
        let (admin_addr, mut admin) = admins.client();
        let request = RegisterRequest {
            token,
            raft_addr: config.raft_advertise.clone(),
            grpc_addr: config.grpc_advertise.clone(),
            new_cluster: config.leader,
        };
        match admin
            .register(with_deadline(request, CONTROL_RPC_TIMEOUT_MS))
            .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                let identity = Identity {
                    node_id: reply.node_id,
                    cluster_id: reply.cluster_id,
                    bootstrap: reply.bootstrap,
                    raft_addr: config.raft_advertise.clone(),
                    grpc_addr: config.grpc_advertise.clone(),
                    admin_addr: config.adminrpcaddr.clone(),
                };
                identity::store(dir, &identity)?;
                tracing::info!(
                    node = identity.node_id,
                    cluster = identity.cluster_id,
                    bootstrap = identity.bootstrap,
                    "registered with the admin"
                );
                return Ok(identity);
            }
            Err(status) if retryable(&status) => {
                admins.failed(&admin_addr);
                if backoff.should_log() {
                    tracing::warn!(
                        admin = %admin_addr,
                        "waiting for the admin to register this replica: {:?}: {}",
                        status.code(),
                        status.message()
                    );
                }
            }
            Err(status) => {
                return Err(NodeError::AdminRefused(status.message().to_owned()));
            }
        }
        if !pause_or_stop(backoff.next_pause(), shutdown).await {
            return Err(NodeError::Unavailable(
                "shut down before the admin registered this replica".into(),
            ));
        }
    }
}

/// Tells the admin each time this replica becomes leader in a new term, retrying until the
/// admin acknowledges or a newer term (or lost leadership) supersedes the report.
pub(crate) async fn leader_reporter(
    replica: Arc<Replica>,
    admin: Admins,
    shutdown: CancellationToken,
) {
    let mut metrics = replica.raft.server_metrics();
    let mut reported_term = 0u64;
    loop {
        let leading_term = {
            let m = metrics.borrow_and_update();
            let leading =
                m.state == ServerState::Leader && m.current_leader == Some(replica.node_id);
            leading.then_some(m.vote.leader_id.term)
        };
        if let Some(term) = leading_term.filter(|t| *t > reported_term)
            && report_leader(&replica, &admin, term, &shutdown).await
        {
            reported_term = term;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// One leadership report, retried; `true` once acknowledged, `false` when superseded or stopped.
async fn report_leader(
    replica: &Replica,
    admins: &Admins,
    term: u64,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(ADMIN_BACKOFF_MIN_MS, ADMIN_BACKOFF_MAX_MS);
    let mut server_metrics = replica.raft.server_metrics();
    loop {
        let report = LeaderReport {
            cluster_id: replica.cluster_id,
            node_id: replica.node_id,
            term,
        };
        let (admin_addr, mut admin) = admins.client();
        match admin
            .report_leader(with_deadline(report, CONTROL_RPC_TIMEOUT_MS))
            .await
        {
            Ok(_) => {
                tracing::info!(term, admin = %admin_addr, "reported leadership to the admin");
                return true;
            }
            Err(status) => {
                admins.failed(&admin_addr);
                if backoff.should_log() {
                    tracing::warn!(term, "could not report leadership to the admin: {status}");
                }
            }
        }
        if !pause_or_stop(backoff.next_pause(), shutdown).await {
            return false;
        }
        let m = server_metrics.borrow_and_update();
        if m.state != ServerState::Leader || m.vote.leader_id.term != term {
            return false;
        }
    }
}

/// Until this replica is a voter of its cluster: ask the admin who is in the cluster, then ask
/// the leader (or each replica in turn, following NOT_LEADER hints) to let it join.
pub(crate) async fn join_loop(replica: Arc<Replica>, admin: Admins, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(JOIN_ROUND_PAUSE_MS, JOIN_ROUND_PAUSE_MS);
    loop {
        if replica.is_voter(replica.node_id) {
            tracing::info!("this replica is a voter of cluster {}", replica.cluster_id);
            return;
        }
        let round = tokio::select! {
            () = shutdown.cancelled() => return,
            r = join_once(&replica, &admin) => r,
        };
        match round {
            Ok(()) => tracing::info!("the leader accepted this replica as a voter"),
            Err(e) if backoff.should_log() => {
                tracing::warn!("still joining cluster {}: {e}", replica.cluster_id);
            }
            Err(_) => {}
        }
        if !pause_or_stop(backoff.next_pause(), &shutdown).await {
            return;
        }
    }
}

/// One join round: `Ok` when some replica (the leader) accepted the join.
async fn join_once(replica: &Replica, admin: &Admins) -> Result<(), NodeError> {
    let mut queue: VecDeque<String> = VecDeque::new();
    if let Some(addr) = known_leader_addr(replica) {
        queue.push_back(addr);
    }
    queue.extend(cluster_addrs(replica, admin).await?);
    let mut asked: Vec<String> = Vec::new();
    let mut last = NodeError::Unavailable("no replica of the cluster is known".into());
    while let Some(addr) = queue.pop_front() {
        if asked.contains(&addr) || addr == replica.grpc_addr {
            continue;
        }
        if asked.len() >= MAX_JOIN_HOPS {
            break;
        }
        asked.push(addr.clone());
        match ask_to_join(replica, &addr).await {
            Ok(()) => return Ok(()),
            Err(NodeError::NotLeader {
                leader_grpc_addr: Some(hint),
                ..
            }) if !hint.is_empty() => queue.push_front(hint),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The leader's client address if this replica's Raft already knows it.
fn known_leader_addr(replica: &Replica) -> Option<String> {
    let metrics = replica.raft.metrics();
    let m = metrics.borrow();
    let leader = m.current_leader.filter(|id| *id != replica.node_id)?;
    m.membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.grpc_addr.clone())
}

/// The admin's view of the cluster: the leader's address first, then the other replicas.
async fn cluster_addrs(replica: &Replica, admins: &Admins) -> Result<Vec<String>, NodeError> {
    let request = ClusterInfoRequest {
        cluster_id: replica.cluster_id,
    };
    let (admin_addr, mut admin) = admins.client();
    let info = admin
        .cluster_info(with_deadline(request, CONTROL_RPC_TIMEOUT_MS))
        .await
        .map_err(|s| {
            admins.failed(&admin_addr);
            NodeError::Unavailable(format!(
                "asking the admin {admin_addr} for the cluster: {s}"
            ))
        })?
        .into_inner();
    let mut addrs: Vec<String> = Vec::new();
    let others = info
        .replicas
        .iter()
        .filter(|r| r.node_id != replica.node_id && !r.grpc_addr.is_empty());
    for r in others.clone().filter(|r| r.node_id == info.leader_id) {
        addrs.push(r.grpc_addr.clone());
    }
    for r in others.filter(|r| r.node_id != info.leader_id) {
        addrs.push(r.grpc_addr.clone());
    }
    Ok(addrs)
}

/// Calls `Control.Join` at `addr`, returning the reply's error as a `NodeError`.
async fn ask_to_join(replica: &Replica, addr: &str) -> Result<(), NodeError> {
    let channel = lazy_channel(addr).map_err(|e| NodeError::Unavailable(e.to_string()))?;
    let request = JoinRequest {
        cluster_id: replica.cluster_id,
        node_id: replica.node_id,
        raft_addr: replica.raft_addr.clone(),
        grpc_addr: replica.grpc_addr.clone(),
    };
    let reply = ControlClient::new(channel)
        .join(with_deadline(request, JOIN_CALL_TIMEOUT_MS))
        .await
        .map_err(|s| NodeError::Unavailable(format!("Join at {addr}: {s}")))?
        .into_inner();
    match reply.error {
        None => Ok(()),
        Some(e) if e.kind() == Kind::NotLeader => Err(NodeError::NotLeader {
            leader_id: (e.leader_id != 0).then_some(e.leader_id),
            leader_grpc_addr: (!e.leader_grpc_addr.is_empty()).then_some(e.leader_grpc_addr),
        }),
        Some(e) => Err(NodeError::Unavailable(format!(
            "Join at {addr} refused: {}",
            e.message
        ))),
    }
}

/// Keeps `identity`'s cluster and node but records the addresses and admin this run uses, so
/// that `kill` finds the current admin.
pub(crate) fn refresh_identity(
    identity: Identity,
    config: &NodeConfig,
) -> Result<Identity, NodeError> {
    if identity.raft_addr != config.raft_advertise || identity.grpc_addr != config.grpc_advertise {
        tracing::warn!(
            "this replica was registered with raft {} / grpc {} but now advertises {} / {}; the \
             cluster membership keeps the registered addresses",
            identity.raft_addr,
            identity.grpc_addr,
            config.raft_advertise,
            config.grpc_advertise
        );
    }
    if identity.admin_addr == config.adminrpcaddr {
        return Ok(identity);
    }
    let updated = Identity {
        admin_addr: config.adminrpcaddr.clone(),
        ..identity
    };
    identity::store(&config.storagedir, &updated)?;
    Ok(updated)
}
