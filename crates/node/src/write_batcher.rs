//! The leader's write batcher: concurrent client writes share one Raft entry.
//!
//! openraft 0.9 appends one entry at a time and waits for it to be durable before it takes the
//! next, so a leader that proposed every put as its own entry paid one fsync, one replication
//! round and one apply per put. Here every `Put`/`Delete` is queued; one task takes everything
//! queued (bounded by [`MAX_BATCH_COMMANDS`] and [`MAX_BATCH_BYTES`]) and proposes it as one
//! [`Command::Batch`] entry, whose answer holds one result per command. While
//! [`MAX_BATCHES_IN_FLIGHT`] batches are in Raft, the next one fills up, so the batch size
//! follows the load: one command alone is proposed as itself, with no batching delay.
//!
//! Definite vs unknown (`docs/design.md#definite-and-unknown-outcomes`) is decided exactly as for a
//! single write: a command that never reached `client_write` (queue full, leadership lost while
//! queued) is refused definitely; once the batch is proposed, every failure is OUTCOME_UNKNOWN for
//! each of its commands. The state machine applies a batch's commands in order, each as if alone,
//! so fencing, CAS and versions are unchanged. This module must not speak gRPC.

use std::sync::Arc;
use std::time::Duration;

use ravel_core::NodeId;
use ravel_core::command::{Command, CommandResult};
use ravel_storage::Raft;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::contact::Contact;
use crate::error::NodeError;
use crate::replica::{ProposalGate, WRITE_TIMEOUT_MS, check_leader};

/// Most client commands one batch entry carries.
pub const MAX_BATCH_COMMANDS: usize = 512;

/// Most key and value bytes one batch carries; the first command is always taken whatever its
/// size, so a batch stays under this plus one value.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Batches proposed to Raft and not yet answered. Two let the next batch's leader append
/// overlap the previous one's replication; more would only split the load into smaller batches.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// Writes that may wait for a batch; beyond this a write is refused as overloaded (definite).
pub const WRITE_QUEUE_CAPACITY: usize = 8192;

type Reply = oneshot::Sender<Result<CommandResult, NodeError>>;

/// One queued write.
struct Queued {
    command: Command,
    reply: Reply,
}

/// A handle to a replica's batching task. Cheap to clone.
#[derive(Clone)]
pub struct WriteBatcher {
    tx: mpsc::Sender<Queued>,
}

impl WriteBatcher {
    /// Starts the batching task for `raft` (the replica `node_id`), whose proposals pass
    /// `gate`; must run inside tokio.
    #[must_use]
    pub fn start(
        raft: Raft,
        node_id: NodeId,
        gate: Arc<ProposalGate>,
        contact: Arc<Contact>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        tokio::spawn(run(
            rx,
            Proposer {
                raft,
                node_id,
                gate,
                contact,
            },
        ));
        Self { tx }
    }

    /// Queues `command` and waits for its answer. The caller bounds the wait.
    pub async fn write(&self, command: Command) -> Result<CommandResult, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Queued { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => NodeError::Unavailable(format!(
                    "overloaded: {WRITE_QUEUE_CAPACITY} writes already wait for Raft"
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    NodeError::Unavailable("the replica is shutting down".into())
                }
            })?;
        answer.await.unwrap_or_else(|_| {
            Err(NodeError::OutcomeUnknown(
                "the write batcher stopped before answering".into(),
            ))
        })
    }
}

/// The batching loop: wait for a free slot, take everything queued, propose it.
/// What proposing a batch needs: the Raft handle, who we are, the gate and the quorum check.
#[derive(Clone)]
struct Proposer {
    raft: Raft,
    node_id: NodeId,
    gate: Arc<ProposalGate>,
    contact: Arc<Contact>,
}

async fn run(mut rx: mpsc::Receiver<Queued>, proposer: Proposer) {
    let slots = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = command_bytes(&first.command);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += command_bytes(&next.command);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        tokio::spawn(propose(proposer.clone(), batch, slot));
    }
}

/// Key and value bytes of a data command (what bounds a batch's size).
fn command_bytes(command: &Command) -> usize {
    match command {
        Command::Put { key, value, .. } => key.len() + value.len(),
        Command::Delete { key, .. } => key.len(),
        _ => 0,
    }
}

/// Proposes one batch and hands each command its answer.
async fn propose(proposer: Proposer, batch: Vec<Queued>, _slot: OwnedSemaphorePermit) {
    let Proposer {
        raft,
        node_id,
        gate,
        contact,
    } = proposer;
    // Leadership may have moved (or be being handed over) while the commands waited: then
    // nothing is proposed, and NOT_LEADER is a definite answer.
    let pass = gate.enter().await;
    if let Err(not_leader) = pass
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|_| check_leader(&raft, node_id, &contact))
    {
        for queued in batch {
            let _ = queued.reply.send(Err(not_leader.clone().into()));
        }
        return;
    }
    let (mut commands, replies): (Vec<Command>, Vec<Reply>) =
        batch.into_iter().map(|q| (q.command, q.reply)).unzip();
    #[allow(clippy::cast_precision_loss)] // Prometheus samples are f64.
    metrics::histogram!("ravel_node_write_batch_commands").record(commands.len() as f64);
    let command = if commands.len() == 1 {
        commands.pop().expect("one command")
    } else {
        Command::Batch(commands)
    };
    let deadline = Duration::from_millis(WRITE_TIMEOUT_MS);
    let proposed = tokio::select! {
        answer = tokio::time::timeout(deadline, raft.client_write(command)) => Some(answer),
        () = contact.wait_aside() => None,
    };
    let answers = match proposed {
        None => Err(
            "the command was proposed, then the leader lost its majority before it was committed"
                .to_owned(),
        ),
        Some(Err(_elapsed)) => Err(format!(
            "the command was proposed but not answered within {WRITE_TIMEOUT_MS} ms"
        )),
        Some(Ok(Err(e))) => Err(format!("the command was proposed but Raft answered: {e}")),
        Some(Ok(Ok(response))) => match (response.data, replies.len()) {
            (CommandResult::Batch(answers), n) if n > 1 && answers.len() == n => Ok(answers),
            (answer, 1) => Ok(vec![answer]),
            (other, n) => Err(format!(
                "the state machine answered {other:?} to a batch of {n} commands"
            )),
        },
    };
    match answers {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have given up waiting; nothing to tell it then.
                let _ = reply.send(Ok(answer));
            }
        }
        Err(reason) => {
            for reply in replies {
                let _ = reply.send(Err(NodeError::OutcomeUnknown(reason.clone())));
            }
        }
    }
}
