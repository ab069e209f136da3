//! Pre-vote on openraft 0.9, so that a replica cut off from its cluster does not inflate its
//! term and depose a healthy leader when it comes back (openraft has pre-vote only in its 0.10
//! alpha series, which is not ready to build a store on).
//!
//! Every replica runs with openraft's election timer switched off; this task decides when to
//! campaign. It watches how long the replica has not heard a leader ([`Contact::since_leader`]);
//! past openraft's leader lease (plus a random jitter, so that two followers of a dead leader
//! rarely campaign at once) it asks every other voter `PreVote`: "would you vote for me?" A peer
//! says yes only when it has not heard a leader for a lease either (granting a real vote counts
//! as hearing one: that candidate is about to lead), does not lead itself, is in no later term
//! than ours, and our log is at least as up to date as its own — the conditions under which it
//! would grant the real vote. With a majority of yeses (ours included) the replica campaigns at
//! once (`trigger().elect()`) unless it heard a leader or moved to a later term while it asked,
//! and not again before an election timeout has passed. A replica that
//! cannot reach a majority never gets the yeses, so its term stays where it was, and on
//! rejoining it simply follows the leader it hears.
//!
//! This also makes failover faster than openraft's own timer, which waits a lease *plus* an
//! election timeout after the last heartbeat: a new leader is elected about one lease (plus the
//! jitter) after the old one fell silent.
//!
//! This only ever delays elections, never allows one Raft would refuse, so safety is openraft's
//! as before. The task also tells the [`Contact`] when this replica becomes leader (the start of
//! its check-quorum grace).

use std::sync::Arc;
use std::time::Duration;

use openraft::{LogId, ServerState};
use ravel_core::NodeId;
use ravel_proto::v1::RaftEnvelope;
use ravel_storage::{LogStore, Raft};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::contact::Contact;
use crate::raft_net::{NetworkFactory, decode, encode};
use crate::{ELECTION_TIMEOUT_MAX_MS, ELECTION_TIMEOUT_MIN_MS};

/// How often a replica that hears no leader asks for pre-votes.
pub const PREVOTE_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of one `PreVote` call.
pub const PREVOTE_DEADLINE: Duration = Duration::from_millis(300);
/// Silence from any leader after which a peer grants a pre-vote: openraft's leader lease (the
/// longest election timeout), after which it would also grant the real vote.
pub const LEADER_SILENCE: Duration = Duration::from_millis(ELECTION_TIMEOUT_MAX_MS);
/// A replica asks for pre-votes after [`LEADER_SILENCE`] plus a random share of this, drawn
/// anew each time, so that two followers of a dead leader rarely campaign at the same instant
/// and split the vote.
pub const PREVOTE_JITTER_MS: u64 = 300;

/// How long a leader that lost its majority stands aside before it leads again if nobody else
/// was elected (see [`leader_tick`]): twice a lease, well past the silence after which every
/// follower that hears nothing from it asks for pre-votes ([`LEADER_SILENCE`] plus at most
/// [`PREVOTE_JITTER_MS`]).
pub const ASIDE_BEFORE_LEADING_AGAIN: Duration = Duration::from_millis(2 * ELECTION_TIMEOUT_MAX_MS);

/// The `PreVote` question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The candidate's current term; it would campaign in the next one.
    pub term: u64,
    pub last_log_id: Option<LogId<NodeId>>,
}

/// What both sides of a pre-vote read: Raft's state, the log's last id and the contact times.
#[derive(Clone)]
pub struct PreVoter {
    pub raft: Raft,
    pub log: LogStore,
    pub contact: Arc<Contact>,
    /// The Raft network's channels, reused to ask peers.
    pub network: NetworkFactory,
}

impl PreVoter {
    /// A peer's side: would it vote for `request.candidate` in a real election now? Only when
    /// it does not lead, has not heard a leader (nor granted a vote) for [`LEADER_SILENCE`], is
    /// in no later term than the candidate's (in a later one it has already voted for the term
    /// the candidate would campaign in, or follows a leader of it), and the candidate's log is
    /// at least as up to date as its own (Raft's own vote rule).
    pub fn answer(&self, request: &PreVoteRequest) -> bool {
        let (leads, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            // A leader standing aside has given up serving: it answers like a follower.
            let leads = m.state == ServerState::Leader && !self.contact.is_aside();
            (leads, m.current_term)
        };
        let peer = PeerView {
            leads,
            hears_leader: self.contact.since_leader() < LEADER_SILENCE,
            term,
            last_log_id: self.log.last_log_id(),
        };
        peer.grants(request)
    }
}

/// What a peer knows when it is asked for a pre-vote.
#[derive(Clone, Copy, Debug)]
struct PeerView {
    leads: bool,
    /// It heard a leader, or granted a real vote, within [`LEADER_SILENCE`].
    hears_leader: bool,
    term: u64,
    last_log_id: Option<LogId<NodeId>>,
}

impl PeerView {
    /// The rule of [`PreVoter::answer`].
    fn grants(&self, request: &PreVoteRequest) -> bool {
        !self.leads
            && !self.hears_leader
            && self.term <= request.term
            && request.last_log_id >= self.last_log_id
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
    let PreVoter {
        raft,
        log,
        contact,
        network,
    } = voter;
    raft.runtime_config().elect(false);
    // The server metrics change with the role only, not with every append.
    let mut metrics = raft.server_metrics();
    let mut was_leader = false;
    // No campaign before this instant: the previous one gets an election timeout to finish.
    let mut next_campaign = tokio::time::Instant::now();
    // When this leader last stood aside.
    let mut aside_since = tokio::time::Instant::now();
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
                if leads != was_leader && contact.is_aside() {
                    tracing::info!("leadership changed: no longer standing aside");
                    contact.stand_aside(false);
                }
                was_leader = leads;
                continue;
            }
            _ = tick.tick() => {}
        }
        let Some(peers) = voter_peers(&raft, node) else {
            continue;
        };
        if was_leader {
            match leader_tick(contact.is_aside(), aside_since.elapsed()) {
                LeaderTick::Lead => {
                    // Check-quorum: a leader no majority acknowledges stands aside — it sends
                    // nothing more, so that the followers it still reaches fall silent and
                    // elect a leader the majority hears (it refuses every request meanwhile,
                    // see `replica::check_leader`).
                    let voters = peers.iter().map(|(id, _)| *id).chain(std::iter::once(node));
                    if !contact.leader_has_quorum(node, voters) {
                        tracing::warn!(
                            "no majority acknowledged this leader for an election timeout: \
                             refusing requests and standing aside so that the others can elect"
                        );
                        contact.stand_aside(true);
                        aside_since = tokio::time::Instant::now();
                    }
                }
                LeaderTick::StayAside => {}
                LeaderTick::Resume => {
                    tracing::warn!(
                        aside_ms =
                            u64::try_from(aside_since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "stood aside and no other leader was elected: leading again"
                    );
                    // A fresh grace for the quorum check, as after an election.
                    contact.became_leader();
                    contact.stand_aside(false);
                }
            }
            continue;
        }
        let silence = contact.since_leader();
        let jitter = Duration::from_millis(rand::random_range(0..PREVOTE_JITTER_MS));
        // A single voter has nobody to wait for; others wait out their peers' leases.
        let waiting = !peers.is_empty() && silence < LEADER_SILENCE + jitter;
        if waiting || tokio::time::Instant::now() < next_campaign {
            continue;
        }
        let request = PreVoteRequest {
            candidate: node,
            term: raft.metrics().borrow().current_term,
            last_log_id: log.last_log_id(),
        };
        let voters = peers.len() + 1;
        let yeses = 1 + ask_peers(&network, cluster, &peers, &request).await;
        if yeses <= voters / 2 {
            tracing::debug!(votes = yeses, voters, "pre-vote lost: no election");
            continue;
        }
        // While the peers answered, another candidate may have won this replica's vote, or a
        // leader may have been heard: campaigning now would depose it.
        let term_now = raft.metrics().borrow().current_term;
        if term_now != request.term || contact.since_leader() < LEADER_SILENCE {
            tracing::debug!(
                term = request.term,
                term_now,
                "pre-vote won but a leader or a candidate appeared meanwhile: no election"
            );
            continue;
        }
        tracing::info!(
            votes = yeses,
            voters,
            silence_ms = u64::try_from(silence.as_millis()).unwrap_or(u64::MAX),
            "no leader heard and pre-vote won: campaigning"
        );
        if raft.trigger().elect().await.is_err() {
            return;
        }
        let timeout = rand::random_range(ELECTION_TIMEOUT_MIN_MS..ELECTION_TIMEOUT_MAX_MS);
        next_campaign = tokio::time::Instant::now() + Duration::from_millis(timeout);
    }
}

/// What a leader does at a tick of the pre-vote task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaderTick {
    /// Lead, checking that a majority still acknowledges it.
    Lead,
    /// Go on standing aside: the followers may be electing someone.
    StayAside,
    /// Stop standing aside and lead again.
    Resume,
}

/// A leader standing aside (`aside`, for `aside_for`) leads again once that lasted
/// [`ASIDE_BEFORE_LEADING_AGAIN`] and it is still leader, i.e. no other leader was elected
/// meanwhile. Without that a cluster can stay leaderless for good: when each follower's
/// campaign is refused by the other (one campaigned in a later term with a shorter log while
/// the other still heard this leader, so neither grants the other's pre-vote), nobody but this
/// leader, whose log is the longest, can win; openraft 0.9 does not let a leader campaign, and
/// an aside leader sends nothing, so it never hears the later term either (measured: snapshot
/// builds on every replica at once starved the followers, the leader stood aside, and the
/// cluster stayed without a leader for minutes). Leading again is safe: a leader the majority
/// no longer follows cannot commit, and hears of a later term from its first append-entries.
fn leader_tick(aside: bool, aside_for: Duration) -> LeaderTick {
    if !aside {
        LeaderTick::Lead
    } else if aside_for >= ASIDE_BEFORE_LEADING_AGAIN {
        LeaderTick::Resume
    } else {
        LeaderTick::StayAside
    }
}

/// Asks every peer concurrently; returns how many said yes.
async fn ask_peers(
    network: &NetworkFactory,
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
        let client = network.client(&addr);
        calls.spawn(async move {
            let mut client = client.ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    /// A peer grants only when it does not lead, hears no leader (nor voted lately), is in no
    /// later term than the candidate, and the candidate's log is at least as up to date.
    #[test]
    fn pre_vote_rule() {
        let peer = PeerView {
            leads: false,
            hears_leader: false,
            term: 2,
            last_log_id: log_id(2, 10),
        };
        let request = PreVoteRequest {
            candidate: 3,
            term: 2,
            last_log_id: log_id(2, 10),
        };
        assert!(peer.grants(&request));
        assert!(
            !PeerView {
                leads: true,
                ..peer
            }
            .grants(&request)
        );
        assert!(
            !PeerView {
                hears_leader: true,
                ..peer
            }
            .grants(&request)
        );
        // The peer already moved to the term the candidate would campaign in.
        assert!(!PeerView { term: 3, ..peer }.grants(&request));
        let behind = PreVoteRequest {
            last_log_id: log_id(2, 9),
            ..request.clone()
        };
        assert!(!peer.grants(&behind));
        let later_term = PreVoteRequest { term: 5, ..request };
        assert!(peer.grants(&later_term));
    }

    /// A leader stands aside for `ASIDE_BEFORE_LEADING_AGAIN`, then leads again if it still is
    /// the leader: without that a cluster whose followers refuse each other stays leaderless.
    #[test]
    fn a_leader_standing_aside_leads_again_if_nobody_else_was_elected() {
        assert_eq!(
            leader_tick(false, Duration::from_secs(60)),
            LeaderTick::Lead
        );
        assert_eq!(
            leader_tick(
                true,
                LEADER_SILENCE + Duration::from_millis(PREVOTE_JITTER_MS)
            ),
            LeaderTick::StayAside,
            "every silent follower asks for pre-votes first"
        );
        assert_eq!(
            leader_tick(true, ASIDE_BEFORE_LEADING_AGAIN),
            LeaderTick::Resume
        );
    }
}
