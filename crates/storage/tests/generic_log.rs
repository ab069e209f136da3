//! The log store kept for a Raft group other than a replica's (as the admin's metadata group
//! keeps it): opened on its own with `LogStore::open`, for a type configuration unlike the
//! replicas', it passes openraft's conformance suite and keeps entries and vote across a reopen.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId,
    OptionalSend, RaftLogReader, Snapshot, SnapshotMeta, StorageError, StoredMembership, Vote,
};
use ravel_storage::{LogStore, WalOptions};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

openraft::declare_raft_types!(
    /// Types unlike the replicas': string commands answered with a count, `BasicNode` members.
    pub Other:
        D = String,
        R = u64,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<Other>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

fn io_error(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageError::from_io_error(
        ErrorSubject::Store,
        ErrorVerb::Write,
        std::io::Error::other(e.to_string()),
    )
}

/// The whole state of [`MemStateMachine`], as its snapshots carry it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Image {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    commands: Vec<String>,
}

/// A stored snapshot: its metadata and data.
type StoredSnapshot = (SnapshotMeta<u64, BasicNode>, Vec<u8>);

/// The smallest state machine that drives the suite: the commands applied, in order.
#[derive(Clone, Default)]
struct MemStateMachine {
    image: Arc<Mutex<Image>>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    snapshots_built: Arc<AtomicU64>,
}

impl MemStateMachine {
    fn image(&self) -> std::sync::MutexGuard<'_, Image> {
        self.image.lock().unwrap()
    }
}

impl RaftSnapshotBuilder<Other> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Other>, StorageError<u64>> {
        let image = self.image().clone();
        let data = postcard::to_stdvec(&image).map_err(io_error)?;
        let n = self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let meta = SnapshotMeta {
            last_log_id: image.last_applied,
            last_membership: image.membership.clone(),
            snapshot_id: format!("{:?}-{n}", image.last_applied.map(|l| l.index)),
        };
        *self.current.lock().unwrap() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<Other> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let image = self.image();
        Ok((image.last_applied, image.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<u64>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Other>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut image = self.image();
        let mut answers = Vec::new();
        for entry in entries {
            image.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => image.commands.push(command),
                EntryPayload::Membership(m) => {
                    image.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            answers.push(image.commands.len() as u64);
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let image: Image = postcard::from_bytes(&data).map_err(io_error)?;
        *self.image() = image;
        *self.current.lock().unwrap() = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Other>>, StorageError<u64>> {
        Ok(self
            .current
            .lock()
            .unwrap()
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}

/// A fresh log in its own temporary directory for each suite case.
struct OtherBuilder;

impl StoreBuilder<Other, LogStore<Other>, MemStateMachine, TempDir> for OtherBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<Other>, MemStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(io_error)?;
        let log = LogStore::<Other>::open(dir.path(), WalOptions::default()).map_err(io_error)?;
        Ok((dir, log, MemStateMachine::default()))
    }
}

/// The log store for another type configuration satisfies every property of openraft's storage
/// contract that its conformance suite checks.
#[test]
fn openraft_conformance_suite_for_another_type_configuration() {
    if let Err(e) = Suite::test_all(OtherBuilder) {
        panic!("storage conformance failed: {e}");
    }
}

fn entry(index: u64, command: &str) -> Entry<Other> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command.to_owned()),
    }
}

/// Entries and the vote written through one `LogStore::open` are read back after the log is
/// dropped and opened again from the same directory (which `open` created).
#[tokio::test]
async fn entries_and_vote_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin-log");
    {
        let mut log = LogStore::<Other>::open(&path, WalOptions::default()).unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.blocking_append((1..=3).map(|i| entry(i, &format!("c{i}"))))
            .await
            .unwrap();
        log.sync().await.unwrap();
    }
    let mut log = LogStore::<Other>::open(&path, WalOptions::default()).unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    let entries = log.try_get_log_entries(1..=3).await.unwrap();
    let commands: Vec<_> = entries
        .into_iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(c) => c,
            other => panic!("unexpected payload {other:?}"),
        })
        .collect();
    assert_eq!(commands, ["c1", "c2", "c3"]);
}
