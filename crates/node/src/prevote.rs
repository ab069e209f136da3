//! Pre-vote on openraft 0.9, so that a replica cut off from its cluster does not inflate its
//! term and depose a healthy leader when it comes back (openraft has pre-vote only in its 0.10
//! alpha series, which is not ready to build a store on).
//!
//! Every replica runs with openraft's election timer switched off. This task watches how long
//! the replica has not heard a leader ([`Contact::since_leader`]); past the shortest election
//! timeout it asks every other voter `PreVote`: "would you vote for me?" A peer says yes only
//! when it has not heard a leader for that long either, does not lead itself, and our log is at
//! least as up to date as its own — exactly the conditions under which a real election could
//! succeed. With a majority of yeses (ours included) the timer is switched on and openraft
//! elects as usual; as soon as a leader is heard again it is switched off. A replica that cannot
//! reach a majority never gets the yeses, so its term stays where it was, and on rejoining it
//! simply follows the leader it hears.
//!
//! This only ever delays elections, never allows one Raft would refuse, so safety is openraft's
//! as before. The task also tells the [`Contact`] when this replica becomes leader (the start of
//! its check-quorum grace).

use std::sync::Arc;
use std::time::Duration;

use openraft::{LogId, ServerState};
use ravel_core::NodeId;
use ravel_core::limits::MAX_GRPC_MESSAGE_BYTES;
use ravel_proto::v1::RaftEnvelope;
use ravel_proto::v1::raft_transport_client::RaftTransportClient;
use ravel_storage::{LogStore, Raft};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ELECTION_TIMEOUT_MIN_MS;
use crate::contact::Contact;
use crate::raft_net::{decode, encode, lazy_channel};

/// How often a replica that hears no leader asks for pre-votes.
pub const PREVOTE_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of one `PreVote` call.
pub const PREVOTE_DEADLINE: Duration = Duration::from_millis(300);
/// Silence from any leader after which a replica (or a peer it asks) considers electing.
pub const LEADER_SILENCE: Duration = Duration::from_millis(ELECTION_TIMEOUT_MIN_MS);

/// The `PreVote` question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId<NodeId>>,
}

/// What both sides of a pre-vote read: Raft's state, the log's last id and the contact times.
#[derive(Clone)]
pub struct PreVoter {
    pub raft: Raft,
    pub log: LogStore,
    pub contact: Arc<Contact>,
}

impl PreVoter {
    /// A peer's side: would it vote for `request.candidate` in a real election now? Only when
    /// it does not lead, has not heard a leader for [`LEADER_SILENCE`], and the candidate's log
    /// is at least as up to date as its own (Raft's own vote rule).
    pub fn answer(&self, request: &PreVoteRequest) -> bool {
        let leads = self.raft.metrics().borrow().state == ServerState::Leader;
        let hears_leader = self.contact.since_leader() < LEADER_SILENCE;
        !leads && !hears_leader && request.last_log_id >= self.log.last_log_id()
    }
}

/// Whether `node` is a voter of its cluster now, and the other voters' Raft addresses.
fn voter_peers(raft: &Raft, node: NodeId) -> Option<Vec<(NodeId, String)>> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    if !membership.voter_ids().any(|id| id == node) {
        return None;
    }
    Some(
        membership
            .voter_ids()
            .filter(|id| *id != node)
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.raft_addr.clone())))
            .collect(),
    )
}

/// Runs the pre-vote gate of replica `node` of `cluster` until `stop`.
pub async fn run(
    voter: PreVoter,
    cluster: ravel_core::ClusterId,
    node: NodeId,
    stop: CancellationToken,
) {
    let PreVoter { raft, log, contact } = voter;
    raft.runtime_config().elect(false);
    let mut elections_on = false;
    let mut metrics = raft.metrics();
    let mut was_leader = false;
    let mut tick = tokio::time::interval(PREVOTE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let leads = metrics.borrow_and_update().state == ServerState::Leader;
                if leads && !was_leader {
                    contact.became_leader();
                }
                was_leader = leads;
                continue;
            }
            _ = tick.tick() => {}
        }
        if was_leader || contact.since_leader() < LEADER_SILENCE {
            if elections_on {
                raft.runtime_config().elect(false);
                elections_on = false;
            }
            continue;
        }
        let Some(peers) = voter_peers(&raft, node) else {
            continue;
        };
        let request = PreVoteRequest {
            candidate: node,
            last_log_id: log.last_log_id(),
        };
        let voters = peers.len() + 1;
        let yeses = 1 + ask_peers(cluster, &peers, &request).await;
        let majority = yeses > voters / 2;
        if majority != elections_on {
            raft.runtime_config().elect(majority);
            elections_on = majority;
            if majority {
                tracing::info!(
                    votes = yeses,
                    voters,
                    "no leader heard: pre-vote won, elections on"
                );
            } else {
                tracing::info!(votes = yeses, voters, "pre-vote lost: elections off");
            }
        }
    }
}

/// Asks every peer concurrently; returns how many said yes.
async fn ask_peers(
    cluster: ravel_core::ClusterId,
    peers: &[(NodeId, String)],
    request: &PreVoteRequest,
) -> usize {
    let Ok(payload) = encode(request) else {
        return 0;
    };
    let mut calls = JoinSet::new();
    for (peer, addr) in peers.iter().cloned() {
        let payload = payload.clone();
        calls.spawn(async move {
            let channel = lazy_channel(&addr).ok()?;
            let mut client =
                RaftTransportClient::new(channel).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);
            let mut call = tonic::Request::new(RaftEnvelope {
                cluster_id: cluster,
                target_node_id: peer,
                payload,
            });
            call.set_timeout(PREVOTE_DEADLINE);
            let reply = client.pre_vote(call).await.ok()?;
            decode::<bool>(&reply.into_inner().payload).ok()
        });
    }
    let mut yeses = 0;
    while let Some(joined) = calls.join_next().await {
        if let Ok(Some(true)) = joined {
            yeses += 1;
        }
    }
    yeses
}
