//! Leadership hand-over when a leader stops gracefully (SIGTERM, Ctrl-C), so that its cluster
//! has a new leader within a round trip instead of after an election timeout.
//!
//! openraft 0.9 has no leadership transfer, so this builds Raft's own recipe on it:
//! 1. pick the voter whose log matches the most of ours (a successor);
//! 2. close the [`ProposalGate`](crate::replica::ProposalGate): proposals in flight finish,
//!    later ones get a definite NOT_LEADER naming the successor (the admin follows the hint);
//! 3. wait until the successor holds every entry we have;
//! 4. send it `TimeoutNow`: it campaigns at once, and we grant our vote (its log is as long as
//!    ours, and our own leader lease, measured from when we were elected, has run out), which
//!    with ours makes a majority of three; we step down when we see its higher term.
//!
//! Each step is bounded; when one fails (no other voter, successor lagging or unreachable, a
//! leader elected less than a lease ago), the stop goes on and the cluster elects a leader the
//! usual way. In clusters of five or more the successor also needs a follower's vote, which the
//! follower gives once it has not heard from us for a lease. Safety never depends on this
//! module: it only asks for an election, which Raft runs as always.

use std::time::Duration;

use openraft::ServerState;
use ravel_core::NodeId;
use ravel_proto::v1::RaftEnvelope;
use serde::{Deserialize, Serialize};

use crate::raft_net::{NetworkFactory, decode, encode};
use crate::replica::{NotLeader, Replica};

/// Longest wait for the proposals in flight to be answered once the gate closes.
pub const GATE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the successor to hold every entry of the leader's log.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of the `TimeoutNow` call.
pub const TIMEOUT_NOW_DEADLINE: Duration = Duration::from_secs(1);
/// Longest wait for the successor's election to depose this leader.
pub const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// The `TimeoutNow` request: "start an election now", from the stopping leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNow {
    /// The leader that asks.
    pub leader: NodeId,
    /// The leader's last log index; the successor refuses when its log is shorter (it could
    /// not win, and its higher term would only disrupt the cluster).
    pub leader_last_log_index: u64,
}

/// How a hand-over ended, for the log and the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// This replica was not the leader: nothing to hand over.
    NotLeader,
    /// `successor` leads now.
    Done { successor: NodeId },
    /// The stop goes on without a hand-over, for this reason.
    Skipped(String),
}

/// Hands this replica's leadership to a caught-up voter (see the module doc). Never fails: the
/// outcome is logged and returned.
pub async fn hand_over(replica: &Replica, network: &NetworkFactory) -> HandOver {
    let outcome = try_hand_over(replica, network).await;
    match &outcome {
        HandOver::NotLeader => {}
        HandOver::Done { successor } => {
            tracing::info!(successor, "handed leadership over before stopping");
        }
        HandOver::Skipped(reason) => {
            tracing::warn!(%reason, "stopping without handing leadership over");
        }
    }
    outcome
}

async fn try_hand_over(replica: &Replica, network: &NetworkFactory) -> HandOver {
    if replica.ensure_leader().is_err() {
        return HandOver::NotLeader;
    }
    let Some((successor, raft_addr, grpc_addr)) = pick_successor(replica) else {
        return HandOver::Skipped("no other voter to hand leadership to".into());
    };
    let hint = NotLeader {
        leader_id: Some(successor),
        leader_grpc_addr: Some(grpc_addr),
    };
    if tokio::time::timeout(GATE_CLOSE_TIMEOUT, replica.gate.close(hint))
        .await
        .is_err()
    {
        return HandOver::Skipped(format!(
            "proposals in flight were not answered within {GATE_CLOSE_TIMEOUT:?}"
        ));
    }
    let last_index = replica.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let caught_up = replica
        .raft
        .wait(Some(CATCH_UP_TIMEOUT))
        .metrics(
            |m| matched_index(m, successor) >= last_index,
            "successor caught up",
        )
        .await;
    if caught_up.is_err() {
        return HandOver::Skipped(format!(
            "successor {successor} did not reach log index {last_index} within {CATCH_UP_TIMEOUT:?}"
        ));
    }
    let request = TimeoutNow {
        leader: replica.node_id,
        leader_last_log_index: last_index,
    };
    if let Err(reason) = send_timeout_now(replica, network, successor, &raft_addr, &request).await {
        return HandOver::Skipped(format!(
            "successor {successor} refused TimeoutNow: {reason}"
        ));
    }
    let deposed = replica
        .raft
        .wait(Some(STEP_DOWN_TIMEOUT))
        .metrics(
            |m| m.state != ServerState::Leader && m.current_leader == Some(successor),
            "successor elected",
        )
        .await;
    match deposed {
        Ok(_) => HandOver::Done { successor },
        Err(_) => HandOver::Skipped(format!(
            "successor {successor} was not elected within {STEP_DOWN_TIMEOUT:?}"
        )),
    }
}

/// The index up to which the leader knows `node` holds its log (0 when unknown).
fn matched_index(m: &openraft::RaftMetrics<NodeId, ravel_storage::RavelNode>, node: NodeId) -> u64 {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&node).copied().flatten())
        .map_or(0, |log_id| log_id.index)
}

/// The voter other than us whose log matches the most of ours, with its addresses.
fn pick_successor(replica: &Replica) -> Option<(NodeId, String, String)> {
    let metrics = replica.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    membership
        .voter_ids()
        .filter(|id| *id != replica.node_id)
        .max_by_key(|id| (matched_index(&m, *id), std::cmp::Reverse(*id)))
        .and_then(|id| {
            membership
                .get_node(&id)
                .map(|n| (id, n.raft_addr.clone(), n.grpc_addr.clone()))
        })
}

async fn send_timeout_now(
    replica: &Replica,
    network: &NetworkFactory,
    successor: NodeId,
    raft_addr: &str,
    request: &TimeoutNow,
) -> Result<(), String> {
    let mut client = network.client(raft_addr).map_err(|e| e.to_string())?;
    let payload = encode(request).map_err(|e| e.to_string())?;
    let mut call = tonic::Request::new(RaftEnvelope {
        cluster_id: replica.cluster_id,
        target_node_id: successor,
        payload,
    });
    call.set_timeout(TIMEOUT_NOW_DEADLINE);
    let reply = client
        .timeout_now(call)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    let answer: Result<(), String> =
        decode(&reply.into_inner().payload).map_err(|e| e.to_string())?;
    answer
}
