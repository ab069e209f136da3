//! A lazily flushed state machine recovers from the log after a power-loss cut.
//!
//! sled (the state machine) is not fsynced per apply; only the WAL is synced before an append
//! is acknowledged. This test builds the disk image a power failure may leave: sled as of the
//! last `Storage::sync` (after K writes), the WAL cut back to what its last sync covered (after
//! K+M acknowledged writes) plus a torn record. It checks that image's sled really is behind,
//! then restarts a real single-node openraft Raft on it and requires every acknowledged write
//! (puts, overwrites, deletes, CAS) back with the version and value its `client_write`
//! answered: openraft must re-apply the missing entries from the log.

mod common;

use common::{NoNetwork, phase};
use openraft::{Config, LogId, ServerState, SnapshotPolicy};
use ravel_core::command::{Command, CommandResult, Record};
use ravel_storage::{Raft, RavelNode, Storage, StorageOptions, WAL_DIR, WalOptions};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Small preallocated segments, so the log spans several segment files.
fn options() -> StorageOptions {
    StorageOptions {
        wal: WalOptions {
            segment_bytes: 2048,
            ..WalOptions::default()
        },
    }
}

/// A one-node Raft that never snapshots here (so nothing is purged or flushed by a snapshot).
async fn start(storage: &Storage) -> Raft {
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(100_000),
        ..Config::default()
    };
    Raft::new(
        1,
        Arc::new(config.validate().unwrap()),
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

/// Partition written to.
const P: u32 = 0;

/// The writes made so far and what each acknowledged answer says must now be stored.
#[derive(Default)]
struct Model {
    expected: BTreeMap<String, Record>,
    last: Option<LogId<u64>>,
}

impl Model {
    async fn write(&mut self, raft: &Raft, command: Command) -> CommandResult {
        let reply = raft.client_write(command.clone()).await.unwrap();
        self.last = Some(reply.log_id);
        match (&command, &reply.data) {
            (Command::Put { key, value, .. }, CommandResult::Written { version }) => {
                let record = Record {
                    version: *version,
                    value: value.clone(),
                };
                self.expected
                    .insert(String::from_utf8(key.clone()).unwrap(), record);
            }
            (Command::Delete { key, .. }, CommandResult::Deleted { deleted: true }) => {
                let gone = self.expected.remove(std::str::from_utf8(key).unwrap());
                assert!(gone.is_some(), "deleted a key the model lacks");
            }
            (_, CommandResult::CasMismatch { .. }) => {}
            other => panic!("unexpected answer {other:?}"),
        }
        reply.data
    }

    async fn put(&mut self, raft: &Raft, key: &str, value: &str, cas: Option<u64>) -> u64 {
        let command = Command::Put {
            partition: P,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            cas,
        };
        match self.write(raft, command).await {
            CommandResult::Written { version } => version,
            other => panic!("put {key} answered {other:?}"),
        }
    }

    async fn delete(&mut self, raft: &Raft, key: &str) {
        let command = Command::Delete {
            partition: P,
            key: key.as_bytes().to_vec(),
            cas: None,
        };
        let answer = self.write(raft, command).await;
        assert_eq!(answer, CommandResult::Deleted { deleted: true });
    }
}

/// Copies sled's files (everything in `from` but the WAL) to `to`.
fn copy_sled(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == WAL_DIR {
            continue;
        }
        copy_tree(&entry.path(), &to.join(entry.file_name()));
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// Copies the WAL's segments to `to`, each cut to the bytes its last completed sync covered,
/// with a torn record (a few garbage bytes) after the end of the last one.
fn copy_synced_wal(storage: &Storage, to: &Path) {
    let extents = storage.log_store().synced_wal_extents();
    assert!(extents.len() > 1, "the log should span several segments");
    let wal = to.join(WAL_DIR);
    std::fs::create_dir_all(&wal).unwrap();
    let last = extents.len() - 1;
    for (i, (path, synced)) in extents.into_iter().enumerate() {
        let mut kept = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .take(synced)
            .read_to_end(&mut kept)
            .unwrap();
        assert_eq!(kept.len() as u64, synced);
        if i == last {
            kept.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 2, 9, 9, 9]);
        }
        std::fs::write(wal.join(path.file_name().unwrap()), kept).unwrap();
    }
}

#[test]
fn lazily_flushed_state_machine_recovers_from_log_after_power_loss() {
    const K: usize = 40;
    const M: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let image_copy = tempfile::tempdir().unwrap();

    let (model, k_index) = phase(async {
        let storage = Storage::open_with(dir.path(), options()).unwrap();
        let raft = start(&storage).await;
        raft.initialize(BTreeMap::from([(1, RavelNode::default())]))
            .await
            .unwrap();
        wait_leader(&raft).await;
        let mut model = Model::default();
        let assigned = raft
            .client_write(Command::Assign {
                epoch: 1,
                partitions: vec![P],
            })
            .await
            .unwrap();
        assert_eq!(assigned.data, CommandResult::Assigned { epoch: 1 });

        // K writes, then sled made durable and copied while nothing is in flight.
        for i in 0..K {
            model
                .put(&raft, &format!("k{i}"), &format!("{{\"k\":{i}}}"), None)
                .await;
        }
        let k_index = model.last.unwrap().index;
        storage.sync().await.unwrap();
        copy_sled(dir.path(), image.path());

        // M more acknowledged writes, sled not synced: only the WAL has them durably.
        for i in 0..M {
            model
                .put(&raft, &format!("m{i}"), &format!("{{\"m\":{i}}}"), None)
                .await;
        }
        model.put(&raft, "k3", "\"overwritten\"", None).await;
        model.delete(&raft, "k5").await; // in the sled image: replay must delete it
        model.delete(&raft, "m7").await; // written after the image
        let v = model.expected["k9"].version;
        model.put(&raft, "k9", "\"cas ok\"", Some(v)).await;
        let refused = model
            .write(
                &raft,
                Command::Put {
                    partition: P,
                    key: b"m1".to_vec(),
                    value: b"\"cas refused\"".to_vec(),
                    cas: Some(v + 1_000_000),
                },
            )
            .await;
        let current = model.expected["m1"].version;
        assert_eq!(refused, CommandResult::CasMismatch { current });
        model.put(&raft, "fresh", "0", Some(0)).await;
        assert_eq!(model.expected.len(), K + M - 2 + 1);

        copy_synced_wal(&storage, image.path());
        raft.shutdown().await.unwrap();
        (model, k_index)
    });
    copy_tree(image.path(), image_copy.path());

    // The image's sled alone is behind: without replay the later writes are missing.
    phase(async {
        let storage = Storage::open_with(image_copy.path(), options()).unwrap();
        let reader = storage.reader();
        let applied = reader.last_applied().expect("applied something");
        assert!(
            applied.index <= k_index,
            "image's sled applied {applied:?}, past the K-th write at {k_index}"
        );
        assert_eq!(reader.get(P, b"m0").unwrap(), None);
        assert_eq!(reader.get(P, b"fresh").unwrap(), None);
        assert!(reader.get(P, b"k5").unwrap().is_some());
    });

    // Restart on the image: every acknowledged write is back, exactly as answered.
    phase(async {
        let storage = Storage::open_with(image.path(), options()).unwrap();
        let raft = start(&storage).await;
        wait_leader(&raft).await;
        raft.ensure_linearizable().await.unwrap();
        // openraft's metrics may publish the applied index a moment after the read index
        // returned (seen in CI): wait for them rather than read them once.
        let last = model.last.map_or(0, |l| l.index);
        raft.wait(Some(std::time::Duration::from_secs(10)))
            .applied_index_at_least(Some(last), "every acknowledged write replayed")
            .await
            .expect("the restarted replica applies every acknowledged write");

        let reader = storage.reader();
        for (key, record) in &model.expected {
            assert_eq!(
                reader.get(P, key.as_bytes()).unwrap().as_ref(),
                Some(record),
                "key {key}"
            );
        }
        for gone in ["k5", "m7"] {
            assert_eq!(reader.get(P, gone.as_bytes()).unwrap(), None, "{gone}");
        }
        let keys = model.expected.len() as u64;
        assert_eq!(reader.key_count(), keys);
        assert_eq!(reader.partition_keys(P), keys);
        raft.shutdown().await.unwrap();
    });
}
