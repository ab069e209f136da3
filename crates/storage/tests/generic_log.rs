//! The log store kept for a Raft group other than a replica's (as the admin's metadata group
//! keeps it): opened on its own with `LogStore::open`, for a type configuration unlike the
//! replicas', it keeps entries and the vote across a reopen. (openraft's conformance suite runs
//! on such a log with the admin's state machine: `crates/admin/tests/meta_raft.rs`.)

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use ravel_storage::{LogStore, WalOptions};
use std::io::Cursor;

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
