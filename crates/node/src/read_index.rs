//! Read-index batching: one leadership confirmation serves every read queued behind it.
//!
//! A linearizable read needs a read index taken *after* the read began: openraft's
//! `ensure_linearizable` confirms leadership with a quorum round and waits until the state
//! machine has applied everything committed before it started. Every read asking its own round
//! made the leader and followers pay a heartbeat per get. Here reads queue; one task takes
//! everything queued and runs one `ensure_linearizable` for all of them. A read that arrives
//! while a round runs waits for the next round, never joins a round that started before it —
//! that is what keeps each read linearizable. At most one round runs at a time, so under load
//! the rounds run back to back and each costs every queued read a share of one round trip.
//! This module must not speak gRPC.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use ravel_core::NodeId;
use ravel_storage::Raft;
use tokio::sync::{mpsc, oneshot};

use crate::contact::Contact;
use crate::error::NodeError;
use crate::replica::{NotLeader, READ_INDEX_TIMEOUT_MS, check_leader, not_leader_hint};

/// Reads that may wait for a round; beyond this a read is refused as overloaded (definite).
pub const READ_QUEUE_CAPACITY: usize = 8192;

/// Most reads one round answers; the rest wait for the next one (a bound on one round's work).
pub const MAX_READS_PER_ROUND: usize = 4096;

/// Why a round could not confirm a read; cloned to every read of the round.
#[derive(Clone, Debug)]
enum Refused {
    NotLeader(NotLeader),
    Unavailable(String),
}

impl From<Refused> for NodeError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::NotLeader(not_leader) => not_leader.into(),
            Refused::Unavailable(reason) => NodeError::Unavailable(reason),
        }
    }
}

type Waiter = oneshot::Sender<Result<(), Refused>>;

/// A handle to a replica's read-index task. Cheap to clone.
#[derive(Clone)]
pub struct ReadIndex {
    tx: mpsc::Sender<Waiter>,
}

impl ReadIndex {
    /// Starts the read-index task for `raft` (the replica `node_id`); must run inside tokio.
    #[must_use]
    pub fn start(raft: Raft, node_id: NodeId, contact: Arc<Contact>) -> Self {
        let (tx, rx) = mpsc::channel(READ_QUEUE_CAPACITY);
        tokio::spawn(run(rx, raft, node_id, contact));
        Self { tx }
    }

    /// Returns once a read of the local state machine that starts now is linearizable.
    pub async fn barrier(&self) -> Result<(), NodeError> {
        let (waiter, done) = oneshot::channel();
        self.tx.try_send(waiter).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NodeError::Unavailable(format!(
                "overloaded: {READ_QUEUE_CAPACITY} reads already wait for a read index"
            )),
            mpsc::error::TrySendError::Closed(_) => {
                NodeError::Unavailable("the replica is shutting down".into())
            }
        })?;
        match done.await {
            Ok(outcome) => outcome.map_err(NodeError::from),
            Err(_) => Err(NodeError::Unavailable(
                "the read-index task stopped before answering".into(),
            )),
        }
    }
}

/// The round loop: take every queued read, confirm once, answer them all.
async fn run(mut rx: mpsc::Receiver<Waiter>, raft: Raft, node_id: NodeId, contact: Arc<Contact>) {
    while let Some(first) = rx.recv().await {
        // Everything taken here was queued before the round below starts.
        let mut round = vec![first];
        while round.len() < MAX_READS_PER_ROUND {
            match rx.try_recv() {
                Ok(next) => round.push(next),
                Err(_) => break,
            }
        }
        #[allow(clippy::cast_precision_loss)] // Prometheus samples are f64.
        metrics::histogram!("ravel_node_read_index_round_reads").record(round.len() as f64);
        // A leader that lost its majority refuses at once rather than waiting out a round.
        let outcome = match check_leader(&raft, node_id, &contact) {
            Ok(()) => confirm(&raft, node_id).await,
            Err(not_leader) => Err(Refused::NotLeader(not_leader)),
        };
        for waiter in round {
            // The reader may have given up waiting; nothing to tell it then.
            let _ = waiter.send(outcome.clone());
        }
    }
}

/// One bounded `ensure_linearizable` round.
async fn confirm(raft: &Raft, node_id: NodeId) -> Result<(), Refused> {
    let deadline = Duration::from_millis(READ_INDEX_TIMEOUT_MS);
    match tokio::time::timeout(deadline, raft.ensure_linearizable()).await {
        Err(_elapsed) => Err(Refused::Unavailable(format!(
            "leadership could not be confirmed within {READ_INDEX_TIMEOUT_MS} ms"
        ))),
        Ok(Ok(_read_log_id)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(Refused::NotLeader(not_leader_hint(
                raft,
                node_id,
                f.leader_id,
                f.leader_node.as_ref(),
            )))
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => Err(
            Refused::Unavailable(format!("no quorum confirmed leadership: {q}")),
        ),
        Ok(Err(RaftError::Fatal(f))) => Err(Refused::Unavailable(format!(
            "the Raft group is not running: {f}"
        ))),
    }
}
