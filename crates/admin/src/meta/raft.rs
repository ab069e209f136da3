//! The admin's metadata as the state machine of the admins' Raft group: the group's openraft
//! types, the log entry ([`MetaEntry`]) and [`MetaStateMachine`], which applies each command
//! with [`MetaState::apply`] and publishes every applied state to the rest of the admin
//! ([`Published`]). The log is the replicas' WAL code (`ravel_storage::LogStore<AdminTypes>`).
//!
//! The group's first entry after its membership is a [`MetaEntry::Base`]: the whole starting
//! state (a new store's, or the one a single admin kept before it ran on Raft). Every member
//! applies it over whatever it started from, so all members hold the same state whatever their
//! own flags; later bases are ignored.
//!
//! Durability: the state lives in memory and is rebuilt at start from the last snapshot plus
//! the log after it (openraft re-applies the committed entries). A snapshot is written to
//! `meta-snapshot` beside the log and fsynced before `build_snapshot` or `install_snapshot`
//! returns, so no entry is purged from the log before a durable snapshot covers it. The state
//! is small, so a snapshot is built in memory.

use super::format::{decode, encode};
use super::{MetaCommand, MetaError, MetaOutcome, MetaRefusal, MetaState};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

openraft::declare_raft_types!(
    /// The openraft types of the admins' metadata group.
    pub AdminTypes:
        D = MetaEntry,
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

/// One normal entry of the admins' log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaEntry {
    /// The group's starting state, encoded as the metadata format stores it (format tag first).
    /// Applied once, as the first entry after the group's membership; later ones change nothing.
    Base(Vec<u8>),
    /// A change of the metadata.
    Command(MetaCommand),
}

/// What applying one entry gave: for a command, its outcome or the deterministic refusal
/// (nothing changed, on every admin alike); `None` for an entry without one (the base, a
/// leader's blank entry, a membership change).
pub type AppliedCommand = Option<Result<MetaOutcome, MetaRefusal>>;

type SmError = StorageError<u64>;

/// File in the log's directory holding the last snapshot (a [`SnapshotImage`]).
const SNAPSHOT_FILE: &str = "meta-snapshot";

/// Everything the state machine holds; a snapshot is this, encoded.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Applied {
    pub(super) last_applied: Option<LogId<u64>>,
    pub(super) membership: StoredMembership<u64, AdminNode>,
    /// Whether the group's [`MetaEntry::Base`] has been applied; before it, `state` is only
    /// this admin's own starting guess.
    pub(super) based: bool,
    pub(super) state: MetaState,
}

/// A snapshot's layout: the Raft position, then the state as the metadata format encodes it.
#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, AdminNode>,
    based: bool,
    state: Vec<u8>,
}

impl Applied {
    /// The state before the group's first entry: `base`, not yet agreed by the group.
    pub(super) fn unbased(base: MetaState) -> Self {
        Self {
            last_applied: None,
            membership: StoredMembership::default(),
            based: false,
            state: base,
        }
    }

    fn encode(&self) -> Result<Vec<u8>, MetaError> {
        let image = SnapshotImage {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            based: self.based,
            state: encode(&self.state)?,
        };
        Ok(postcard::to_stdvec(&image)?)
    }

    fn decode(bytes: &[u8]) -> Result<Self, MetaError> {
        let image: SnapshotImage = postcard::from_bytes(bytes)?;
        let state = decode(&image.state)?;
        state.validate()?;
        Ok(Self {
            last_applied: image.last_applied,
            membership: image.membership,
            based: image.based,
            state,
        })
    }
}

/// Loads the snapshot kept in `dir` (the log's directory), if there is one. Blocking.
pub(super) fn load_snapshot(dir: &Path) -> Result<Option<Applied>, MetaError> {
    match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => Applied::decode(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn sm_error(verb: ErrorVerb, e: impl std::fmt::Display) -> SmError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(e.to_string()),
    )
}

/// The applied metadata as the rest of the admin reads it: the latest state (an `Arc`, swapped
/// whole after each applied batch), a flag for the per-write `has_data` check, and watches of
/// the table's epoch and of whether the group's base has been applied.
pub(crate) struct Published {
    current: RwLock<Arc<MetaState>>,
    has_data: AtomicBool,
    table_epoch: tokio::sync::watch::Sender<u64>,
    based: tokio::sync::watch::Sender<bool>,
}

impl Published {
    fn new(applied: &Applied) -> Self {
        Self {
            current: RwLock::new(Arc::new(applied.state.clone())),
            has_data: AtomicBool::new(applied.state.has_data),
            table_epoch: tokio::sync::watch::Sender::new(applied.state.table.epoch),
            based: tokio::sync::watch::Sender::new(applied.based),
        }
    }

    /// The current state; cheap (an Arc clone), never blocks on I/O.
    pub(crate) fn current(&self) -> Arc<MetaState> {
        // A poisoned lock still holds a whole, published Arc: writers only swap the pointer.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub(crate) fn has_data(&self) -> bool {
        self.has_data.load(Ordering::Acquire)
    }

    /// Resolves once the published table's epoch is not `epoch`.
    pub(crate) async fn table_changed_from(&self, epoch: u64) {
        let mut published = self.table_epoch.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail while we are borrowed.
        let _ = published.wait_for(|e| *e != epoch).await;
    }

    /// Whether the group's base state has been applied here (before that, nothing can route).
    pub(crate) fn based(&self) -> bool {
        *self.based.borrow()
    }

    /// Resolves once the group's base state has been applied here.
    pub(crate) async fn wait_based(&self) {
        let mut based = self.based.subscribe();
        let _ = based.wait_for(|b| *b).await;
    }

    /// A watch of [`Self::based`].
    pub(crate) fn based_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.based.subscribe()
    }

    fn publish(&self, applied: &Applied) {
        let state = &applied.state;
        let next = Arc::new(state.clone());
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        self.has_data.store(state.has_data, Ordering::Release);
        let epoch = state.table.epoch;
        self.table_epoch.send_if_modified(|published| {
            let changed = *published != epoch;
            *published = epoch;
            changed
        });
        self.based.send_if_modified(|based| {
            let changed = *based != applied.based;
            *based = applied.based;
            changed
        });
    }
}

/// A snapshot as kept: its metadata and data.
type StoredSnapshot = (SnapshotMeta<u64, AdminNode>, Vec<u8>);

/// The metadata state machine of the admins' group. Cheap to clone (handles share the state).
#[derive(Clone)]
pub struct MetaStateMachine {
    applied: Arc<Mutex<Applied>>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    published: Arc<Published>,
    /// Where snapshots are kept; `None` keeps them in memory only (openraft's conformance
    /// suite, which builds many state machines).
    dir: Option<PathBuf>,
    snapshots_built: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MetaStateMachine {
    /// A state machine that starts from `base` before the group's first entry and keeps its
    /// snapshots in memory only.
    #[must_use]
    pub fn new(base: MetaState) -> Self {
        Self::starting_from(Applied::unbased(base), None)
    }

    /// A state machine that starts from `applied` (a loaded snapshot, or an unbased start) and
    /// keeps its snapshots durably in `dir`, the log's directory.
    pub(super) fn durable(applied: Applied, dir: &Path) -> Self {
        Self::starting_from(applied, Some(dir.to_path_buf()))
    }

    fn starting_from(applied: Applied, dir: Option<PathBuf>) -> Self {
        Self {
            published: Arc::new(Published::new(&applied)),
            applied: Arc::new(Mutex::new(applied)),
            current: Arc::new(Mutex::new(None)),
            dir,
            snapshots_built: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The metadata as applied so far.
    #[must_use]
    pub fn state(&self) -> MetaState {
        lock(&self.applied).state.clone()
    }

    pub(crate) fn published(&self) -> Arc<Published> {
        Arc::clone(&self.published)
    }

    /// Makes `data` the kept snapshot: on disk first (when durable), then in memory.
    async fn keep(&self, meta: SnapshotMeta<u64, AdminNode>, data: Vec<u8>) -> Result<(), SmError> {
        if let Some(dir) = self.dir.clone() {
            let bytes = data.clone();
            tokio::task::spawn_blocking(move || {
                ravel_storage::write_file_atomically(&dir, SNAPSHOT_FILE, &bytes)
            })
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        }
        *lock(&self.current) = Some((meta, data));
        Ok(())
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
        self.keep(meta.clone(), data.clone()).await?;
        tracing::debug!(index, bytes = data.len(), "admin metadata snapshot kept");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Applies one normal entry to `applied`.
fn apply_entry(applied: &mut Applied, entry: MetaEntry) -> Result<AppliedCommand, MetaError> {
    match entry {
        // Before the base, the state is only this admin's guess, which the base replaces.
        MetaEntry::Command(_) if !applied.based => Ok(Some(Err(MetaRefusal::NotFormed))),
        MetaEntry::Command(command) => Ok(Some(applied.state.apply(command))),
        MetaEntry::Base(_) if applied.based => Ok(None),
        MetaEntry::Base(bytes) => {
            let base = decode(&bytes)?;
            base.validate()?;
            applied.state = base;
            applied.based = true;
            Ok(None)
        }
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
                EntryPayload::Normal(normal) => {
                    apply_entry(&mut applied, normal).map_err(|e| sm_error(ErrorVerb::Write, e))?
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
                EntryPayload::Blank => None,
            };
            results.push(result);
        }
        self.published.publish(&applied);
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
        // Durable before the state changes: the log below it may be purged next.
        self.keep(meta.clone(), data).await?;
        let mut applied = lock(&self.applied);
        *applied = installed;
        self.published.publish(&applied);
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

    fn entry(index: u64, entry: MetaEntry) -> Entry<AdminTypes> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(entry),
        }
    }

    fn register(token: u64, new_cluster: bool) -> MetaEntry {
        MetaEntry::Command(MetaCommand::RegisterReplica {
            token,
            raft_addr: format!("127.0.0.1:{}", 7000 + token),
            grpc_addr: format!("127.0.0.1:{}", 8000 + token),
            new_cluster,
        })
    }

    /// The base entry replaces the starting guess once; commands apply as `MetaState::apply`
    /// applies them (refusals included, which change nothing); each batch is published; and a
    /// snapshot installed elsewhere reproduces the state exactly.
    #[tokio::test]
    async fn applies_the_base_then_commands_and_snapshots_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        // This admin guessed P = 4; the group's base says 16.
        let mut sm = MetaStateMachine::durable(Applied::unbased(MetaState::new(4)), dir.path());
        let published = sm.published();
        assert!(!published.based());
        let base = MetaEntry::Base(encode(&MetaState::new(16)).unwrap());
        let commands = [
            register(9, true), // refused: before the base, nothing applies
            base.clone(),
            register(1, false), // refused: no cluster yet
            register(1, true),
            register(2, false),
            base, // a second base changes nothing
            MetaEntry::Command(MetaCommand::RemoveReplica {
                node_id: 99,
                force: false,
            }), // refused: unknown replica
        ];
        let mut expected = MetaState::new(16);
        let want: Vec<AppliedCommand> = commands
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                MetaEntry::Command(_) if i == 0 => Some(Err(MetaRefusal::NotFormed)),
                MetaEntry::Command(c) => Some(expected.apply(c.clone())),
                MetaEntry::Base(_) => None,
            })
            .collect();
        let entries = commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c));
        let got = sm.apply(entries).await.unwrap();
        assert_eq!(got, want);
        assert!(matches!(got[0], Some(Err(MetaRefusal::NotFormed))));
        assert!(matches!(got[2], Some(Err(MetaRefusal::NoCluster))));
        assert!(matches!(
            got[6],
            Some(Err(MetaRefusal::UnknownReplica { .. }))
        ));
        assert_eq!(sm.state(), expected);
        assert!(published.based());
        assert_eq!(*published.current(), expected);

        let snapshot = sm.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(7));
        let loaded = load_snapshot(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.state, expected);
        assert_eq!(loaded.last_applied, snapshot.meta.last_log_id);
        assert!(loaded.based);

        let mut other = MetaStateMachine::new(MetaState::new(16));
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(other.state(), expected);
        assert_eq!(*other.published().current(), expected);
        assert_eq!(
            other.applied_state().await.unwrap().0,
            sm.applied_state().await.unwrap().0
        );
    }

    /// A directory without a snapshot loads none; a damaged snapshot fails loudly.
    #[test]
    fn a_missing_snapshot_is_none_and_a_damaged_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_snapshot(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"\x00\x01garbage").unwrap();
        assert!(load_snapshot(dir.path()).is_err());
    }
}
