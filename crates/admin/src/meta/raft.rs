//! The admin's metadata as the state machine of a Raft group (issue 8, in progress): the
//! group's openraft types and [`MetaStateMachine`], which applies each normal entry — one
//! [`MetaCommand`] — with [`MetaState::apply`], exactly as [`super::MetaStore`] applies a
//! command today. Its log is the replicas' WAL code (`ravel_storage::LogStore<AdminTypes>`).
//!
//! Not wired into the admin yet: the admin still persists its metadata with `MetaStore` alone.
//!
//! Snapshots carry the last applied log id, the group's membership and the encoded state (the
//! same encoding `MetaStore` stores, format tag first); the state is small, so a snapshot is
//! built in memory. Not durable yet: the state and the current snapshot live in memory only,
//! while openraft purges the log below a snapshot and does not reload a snapshot at start, so
//! before this is wired in, each snapshot must be stored (next to the log, fsynced before the
//! purge) and loaded back as the base state at start.

use super::format::{decode, encode};
use super::{MetaCommand, MetaOutcome, MetaRefusal, MetaState};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

openraft::declare_raft_types!(
    /// The openraft types of the admins' metadata group.
    pub AdminTypes:
        D = MetaCommand,
        R = AppliedCommand,
        NodeId = u64,
        Node = AdminNode,
        Entry = openraft::Entry<AdminTypes>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// An admin's addresses, as its group's membership carries them: replicas and other admins
/// call `grpc`, clients `http`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminNode {
    pub grpc_addr: String,
    pub http_addr: String,
}

/// What applying one entry gave: for a command, its outcome or the deterministic refusal
/// (nothing changed, on every admin alike); `None` for an entry without one (a leader's blank
/// entry, a membership change).
pub type AppliedCommand = Option<Result<MetaOutcome, MetaRefusal>>;

type SmError = StorageError<u64>;

/// Everything the state machine holds; a snapshot is this, encoded.
#[derive(Clone, Debug, PartialEq)]
struct Applied {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, AdminNode>,
    state: MetaState,
}

/// A snapshot's layout: the Raft position, then the state as `MetaStore` encodes it.
#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, AdminNode>,
    state: Vec<u8>,
}

impl Applied {
    fn encode(&self) -> Result<Vec<u8>, String> {
        let image = SnapshotImage {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: encode(&self.state).map_err(|e| e.to_string())?,
        };
        postcard::to_stdvec(&image).map_err(|e| e.to_string())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let image: SnapshotImage = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        Ok(Self {
            last_applied: image.last_applied,
            membership: image.membership,
            state: decode(&image.state).map_err(|e| e.to_string())?,
        })
    }
}

fn sm_error(verb: ErrorVerb, e: impl std::fmt::Display) -> SmError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(e.to_string()),
    )
}

/// A snapshot as kept: its metadata and data.
type StoredSnapshot = (SnapshotMeta<u64, AdminNode>, Vec<u8>);

/// The metadata state machine of the admins' group. Cheap to clone (handles share the state).
#[derive(Clone)]
pub struct MetaStateMachine {
    applied: Arc<Mutex<Applied>>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    snapshots_built: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MetaStateMachine {
    /// A state machine that starts from `base` before the group's first entry: a new store's
    /// empty state, or the state a single admin persisted before it ran on Raft.
    #[must_use]
    pub fn new(base: MetaState) -> Self {
        Self {
            applied: Arc::new(Mutex::new(Applied {
                last_applied: None,
                membership: StoredMembership::default(),
                state: base,
            })),
            current: Arc::new(Mutex::new(None)),
            snapshots_built: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The metadata as applied so far.
    #[must_use]
    pub fn state(&self) -> MetaState {
        lock(&self.applied).state.clone()
    }
}

impl RaftSnapshotBuilder<AdminTypes> for MetaStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<AdminTypes>, SmError> {
        let applied = lock(&self.applied).clone();
        let data = applied
            .encode()
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let n = self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let index = applied.last_applied.map_or(0, |l| l.index);
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id: format!("{index}-{n}"),
        };
        *lock(&self.current) = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<AdminTypes> for MetaStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, AdminNode>), SmError> {
        let applied = lock(&self.applied);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<AppliedCommand>, SmError>
    where
        I: IntoIterator<Item = Entry<AdminTypes>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = lock(&self.applied);
        let mut results = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Normal(command) => Some(applied.state.apply(command)),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
                EntryPayload::Blank => None,
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SmError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, AdminNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SmError> {
        let data = snapshot.into_inner();
        let installed = Applied::decode(&data).map_err(|e| sm_error(ErrorVerb::Read, e))?;
        if installed.last_applied != meta.last_log_id {
            return Err(sm_error(
                ErrorVerb::Read,
                format!(
                    "snapshot {} holds the state at {:?}, its metadata says {:?}",
                    meta.snapshot_id, installed.last_applied, meta.last_log_id
                ),
            ));
        }
        *lock(&self.applied) = installed;
        *lock(&self.current) = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<AdminTypes>>, SmError> {
        Ok(lock(&self.current).clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn entry(index: u64, command: MetaCommand) -> Entry<AdminTypes> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn register(token: u64, new_cluster: bool) -> MetaCommand {
        MetaCommand::RegisterReplica {
            token,
            raft_addr: format!("127.0.0.1:{}", 7000 + token),
            grpc_addr: format!("127.0.0.1:{}", 8000 + token),
            new_cluster,
        }
    }

    /// Entries apply as `MetaState::apply` applies the same commands (refusals included, which
    /// change nothing), and a snapshot installed elsewhere reproduces the state exactly.
    #[tokio::test]
    async fn applies_commands_like_the_state_and_snapshots_round_trip() {
        let mut sm = MetaStateMachine::new(MetaState::new(16));
        let commands = [
            register(1, false), // refused: no cluster yet
            register(1, true),
            register(2, false),
            MetaCommand::RemoveReplica {
                node_id: 99,
                force: false,
            }, // refused: unknown replica
        ];
        let mut expected = MetaState::new(16);
        let want: Vec<AppliedCommand> = commands
            .iter()
            .map(|c| Some(expected.apply(c.clone())))
            .collect();
        let entries = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c));
        let got = sm.apply(entries).await.unwrap();
        assert_eq!(got, want);
        assert!(matches!(got[0], Some(Err(MetaRefusal::NoCluster))));
        assert!(matches!(
            got[3],
            Some(Err(MetaRefusal::UnknownReplica { .. }))
        ));
        assert_eq!(sm.state(), expected);

        let snapshot = sm.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(4));
        let mut other = MetaStateMachine::new(MetaState::new(16));
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(other.state(), expected);
        assert_eq!(
            other.applied_state().await.unwrap().0,
            sm.applied_state().await.unwrap().0
        );
    }
}
