//! What a replica knows, from its own Raft traffic, about whom it can hear: when it last
//! accepted a message from a leader (inbound append-entries or snapshot), and when each peer
//! last answered its own append-entries while it leads (outbound). openraft 0.9 has neither
//! pre-vote nor check-quorum; [`crate::prevote`] and the leader's quorum check build them on
//! these two facts.
//!
//! Only a message Raft accepted counts: an append-entries refused because its sender's term is
//! behind ours (a deposed leader) is not "hearing a leader", and a peer's answer that carries a
//! higher term is not an acknowledgement.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ravel_core::NodeId;

/// How long a leader goes on serving without a majority acknowledging it: the longest election
/// timeout, after which the majority may have elected someone else.
pub const QUORUM_SILENCE: Duration = Duration::from_millis(crate::ELECTION_TIMEOUT_MAX_MS);

/// Timestamps of the traffic that shows who hears whom. Shared by the Raft service (inbound),
/// the Raft network (outbound) and the tasks that read them.
#[derive(Debug)]
pub struct Contact {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last accepted message from a leader (0: none yet; the
    /// replica then counts from its start).
    from_leader_ms: AtomicU64,
    /// Per peer, the last time it acknowledged our append-entries.
    acked_by: Mutex<HashMap<NodeId, Instant>>,
    /// Milliseconds after `epoch` at which this replica last became leader.
    leader_since_ms: AtomicU64,
    /// Set while a leader that lost its majority stands aside (see [`Contact::stand_aside`]).
    aside: AtomicBool,
    /// Wakes [`Contact::wait_aside`] when the leader starts standing aside.
    aside_set: tokio::sync::Notify,
}

impl Default for Contact {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            from_leader_ms: AtomicU64::new(0),
            acked_by: Mutex::new(HashMap::new()),
            leader_since_ms: AtomicU64::new(0),
            aside: AtomicBool::new(false),
            aside_set: tokio::sync::Notify::new(),
        }
    }
}

impl Contact {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A leader's append-entries or snapshot was accepted just now.
    pub fn heard_from_leader(&self) {
        self.from_leader_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Time since a leader was last heard (since the replica started, if never).
    pub fn since_leader(&self) -> Duration {
        let last = self.from_leader_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// `peer` acknowledged our append-entries just now.
    pub fn acked_by(&self, peer: NodeId) {
        self.acks().insert(peer, Instant::now());
    }

    /// This replica has just become leader (it won a majority's votes now).
    pub fn became_leader(&self) {
        self.leader_since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Check-quorum's step aside: while `aside`, this (leader) replica sends no append-entries
    /// or snapshots (openraft 0.9 cannot make a leader step down), so the followers it still
    /// reaches fall silent and elect a leader a majority hears. Cleared when the leadership ends.
    pub fn stand_aside(&self, aside: bool) {
        self.aside.store(aside, Ordering::Relaxed);
        if aside {
            self.aside_set.notify_waiters();
        }
    }

    /// Resolves once this replica stands aside: a proposal still waiting then will not be
    /// committed by this leader, and its writer is better told now than at its deadline.
    pub async fn wait_aside(&self) {
        loop {
            let notified = self.aside_set.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_aside() {
                return;
            }
            notified.await;
        }
    }

    /// Whether this replica stands aside (see [`Contact::stand_aside`]).
    pub fn is_aside(&self) -> bool {
        self.aside.load(Ordering::Relaxed)
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.acked_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a majority of `voters` (this replica `me` included) has heard from us, as leader,
    /// within [`QUORUM_SILENCE`]. A leader elected less than that long ago has: its votes.
    pub fn leader_has_quorum<I>(&self, me: NodeId, voters: I) -> bool
    where
        I: IntoIterator<Item = NodeId>,
    {
        let since_elected = self
            .now_ms()
            .saturating_sub(self.leader_since_ms.load(Ordering::Relaxed));
        if Duration::from_millis(since_elected) < QUORUM_SILENCE {
            return true;
        }
        let acks = self.acks();
        let (mut voters_seen, mut heard) = (0_usize, 0_usize);
        for v in voters {
            voters_seen += 1;
            if v == me || acks.get(&v).is_some_and(|at| at.elapsed() < QUORUM_SILENCE) {
                heard += 1;
            }
        }
        heard > voters_seen / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader past its first lease needs recent acks from a majority, itself included.
    #[test]
    fn quorum_counts_recent_acks_and_self() {
        let contact = Contact {
            leader_since_ms: AtomicU64::new(0),
            epoch: Instant::now() - QUORUM_SILENCE * 2,
            ..Contact::default()
        };
        assert!(
            contact.leader_has_quorum(1, [1]),
            "a single voter is its own majority"
        );
        assert!(!contact.leader_has_quorum(1, [1, 2, 3]), "no ack at all");
        contact.acked_by(2);
        assert!(contact.leader_has_quorum(1, [1, 2, 3]), "self and 2 of 3");
        assert!(!contact.leader_has_quorum(1, [1, 2, 3, 4, 5]), "2 of 5");
        contact.became_leader();
        assert!(
            contact.leader_has_quorum(1, [1, 2, 3, 4, 5]),
            "just elected: its voters heard it"
        );
    }

    /// A proposal waiting on `wait_aside` is released when the leader stands aside, and a
    /// waiter that comes after returns at once.
    #[tokio::test]
    async fn standing_aside_releases_waiting_proposals() {
        let contact = std::sync::Arc::new(Contact::default());
        let waiter = tokio::spawn({
            let contact = contact.clone();
            async move { contact.wait_aside().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "released before the leader stood aside"
        );
        contact.stand_aside(true);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), contact.wait_aside())
            .await
            .expect("an aside leader releases a new waiter at once");
    }

    #[test]
    fn silence_counts_from_the_last_leader_message() {
        let contact = Contact {
            epoch: Instant::now() - Duration::from_secs(5),
            ..Contact::default()
        };
        assert!(contact.since_leader() >= Duration::from_secs(5));
        contact.heard_from_leader();
        assert!(contact.since_leader() < Duration::from_secs(1));
    }
}
