//! A real one-node openraft group on this storage: writes, a snapshot with log purge, and a
//! restart from disk that must keep every acknowledged write.

mod common;

use common::{NoNetwork, phase};
use openraft::{Config, ServerState, SnapshotPolicy};
use ravel_core::command::{Command, CommandResult};
use ravel_storage::{Raft, RavelNode, Storage};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

async fn start(storage: &Storage) -> Raft {
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 0,
        ..Config::default()
    };
    let config = Arc::new(config.validate().unwrap());
    Raft::new(
        1,
        config,
        NoNetwork,
        storage.log_store(),
        storage.state_machine(),
    )
    .await
    .unwrap()
}

async fn wait_leader(raft: &Raft) {
    raft.wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "leader")
        .await
        .unwrap();
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        partition: 0,
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cas: None,
    }
}

/// Every acknowledged write survives a snapshot (which purges the log below it) and a
/// restart: openraft does not reload snapshots, so the state machine itself must be durable.
#[test]
fn single_node_writes_survive_snapshot_purge_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (last_version, last_applied) = phase(async {
        let storage = Storage::open(dir.path()).unwrap();
        let raft = start(&storage).await;
        raft.initialize(BTreeMap::from([(1, RavelNode::default())]))
            .await
            .unwrap();
        wait_leader(&raft).await;
        let assigned = raft
            .client_write(Command::Assign {
                epoch: 1,
                partitions: vec![0],
            })
            .await
            .unwrap();
        assert_eq!(assigned.data, CommandResult::Assigned { epoch: 1 });
        let mut last_version = 0;
        for i in 0..30 {
            let reply = raft.client_write(put(&format!("k{i}"), "1")).await.unwrap();
            let CommandResult::Written { version } = reply.data else {
                panic!("unexpected {:?}", reply.data);
            };
            assert!(version > last_version);
            last_version = version;
        }
        raft.trigger().snapshot().await.unwrap();
        let metrics = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some() && m.purged == m.snapshot, "purged")
            .await
            .unwrap();
        // More writes after the snapshot, only in the log.
        let reply = raft.client_write(put("after", "2")).await.unwrap();
        let CommandResult::Written { version } = reply.data else {
            panic!("unexpected {:?}", reply.data);
        };
        assert!(metrics.purged.is_some());
        raft.shutdown().await.unwrap();
        (version, reply.log_id)
    });
    phase(async {
        let storage = Storage::open(dir.path()).unwrap();
        let raft = start(&storage).await;
        wait_leader(&raft).await;
        raft.wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last_applied.index), "re-applied")
            .await
            .unwrap();
        let reader = storage.reader();
        for i in 0..30 {
            let record = reader.get(0, format!("k{i}").as_bytes()).unwrap();
            assert!(record.is_some(), "k{i} survived");
        }
        assert_eq!(
            reader.get(0, b"after").unwrap().unwrap().version,
            last_version
        );
        let reply = raft.client_write(put("k0", "3")).await.unwrap();
        let CommandResult::Written { version } = reply.data else {
            panic!("unexpected {:?}", reply.data);
        };
        assert!(
            version > last_version,
            "versions keep increasing after restart"
        );
        raft.shutdown().await.unwrap();
    });
}
