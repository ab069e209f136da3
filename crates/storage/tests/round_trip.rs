//! Behaviour of the storage crate through its public API: durability across reopen, the state
//! machine's answers (versions, CAS, ownership fencing, assignments) and snapshots.

mod common;
use common::phase;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    Vote,
};
use ravel_core::command::{Command, CommandResult, Record};
use ravel_storage::{ReadRefused, Storage, TypeConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(command),
    }
}

fn blank(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Blank,
    }
}

fn put(partition: u32, key: &str, value: &str, cas: Option<u64>) -> Command {
    Command::Put {
        partition,
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cas,
    }
}

fn delete(partition: u32, key: &str, cas: Option<u64>) -> Command {
    Command::Delete {
        partition,
        key: key.as_bytes().to_vec(),
        cas,
    }
}

fn assign(epoch: u64, partitions: &[u32]) -> Command {
    Command::Assign {
        epoch,
        partitions: partitions.to_vec(),
    }
}

/// Applies `commands` one entry each, in one `apply()` call, from log index `first`.
async fn apply(storage: &Storage, first: u64, commands: Vec<Command>) -> Vec<CommandResult> {
    let entries: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| entry(first + i as u64, c))
        .collect();
    storage.state_machine().apply(entries).await.unwrap()
}

fn record(version: u64, value: &str) -> Record {
    Record {
        version,
        value: value.as_bytes().to_vec(),
    }
}

fn open(dir: &Path) -> Storage {
    Storage::open(dir).unwrap()
}

/// Appended entries, the vote, the committed marker, a purge and a truncation all survive a
/// close and reopen of the database exactly.
#[test]
fn log_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let mut log = open(dir.path()).log_store();
        let entries: Vec<_> = (1..=10)
            .map(|i| entry(i, put(0, &format!("k{i}"), "1", None)))
            .collect();
        log.blocking_append(entries).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.save_committed(Some(log_id(1, 6))).await.unwrap();
        log.purge(log_id(1, 3)).await.unwrap();
        log.truncate(log_id(1, 9)).await.unwrap();
    });
    phase(async {
        let mut log = open(dir.path()).log_store();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(1, 8)));
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(1, 1))
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 6)));
        let indexes: Vec<u64> = log
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, (4..=8).collect::<Vec<_>>());
    });
}

/// Purging every entry leaves the log state at the purge point, and that survives reopen.
#[test]
fn fully_purged_log_reports_purge_point() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let mut log = open(dir.path()).log_store();
        log.blocking_append((1..=4).map(blank)).await.unwrap();
        log.purge(log_id(1, 4)).await.unwrap();
    });
    phase(async {
        let mut log = open(dir.path()).log_store();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 4)));
        assert!(log.try_get_log_entries(0..10).await.unwrap().is_empty());
    });
}

/// Entries larger than sled's blob threshold (stored as separate files) are readable at once,
/// go through the fsync path without error, and survive reopen.
#[test]
fn large_entries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(700 * 1024);
    phase(async {
        let storage = open(dir.path());
        let mut log = storage.log_store();
        log.blocking_append(vec![entry(1, put(0, "big", &big, None))])
            .await
            .unwrap();
        assert_eq!(log.try_get_log_entries(1..2).await.unwrap().len(), 1);
        storage.sync().await.unwrap();
    });
    phase(async {
        let mut log = open(dir.path()).log_store();
        let entries = log.try_get_log_entries(1..2).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].payload,
            EntryPayload::Normal(put(0, "big", &big, None))
        );
    });
}

/// Appends racing with many concurrent sync callers (log and sled flushes alike) are all
/// completed by group commit (no deadlock, no lost callback). The appends come from one task:
/// the log refuses non-contiguous entries, as openraft never writes them.
#[test]
fn concurrent_appends_and_syncs_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let storage = open(dir.path());
        let mut tasks = Vec::new();
        let appender = storage.clone();
        tasks.push(tokio::spawn(async move {
            let mut log = appender.log_store();
            for i in 0..32u64 {
                log.blocking_append((i * 5 + 1..=i * 5 + 5).map(blank))
                    .await
                    .unwrap();
            }
        }));
        for _ in 0..32u64 {
            let storage = storage.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    storage.sync().await.unwrap();
                }
            }));
        }
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("group commit completed every request");
        let mut log = storage.log_store();
        assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 32 * 5);
    });
}

/// Put, CAS and delete give the documented answers and the reader sees their effect.
#[test]
fn put_delete_cas_read_back() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let storage = open(dir.path());
        let reader = storage.reader();
        apply(&storage, 1, vec![assign(1, &[0, 1])]).await;
        let answers = apply(
            &storage,
            2,
            vec![
                put(0, "k", "\"a\"", None),
                put(0, "k", "\"b\"", Some(5)),
                put(0, "k", "\"b\"", Some(1)),
                put(0, "k", "\"c\"", Some(0)),
            ],
        )
        .await;
        assert_eq!(
            answers,
            vec![
                CommandResult::Written { version: 1 },
                CommandResult::CasMismatch { current: 1 },
                CommandResult::Written { version: 2 },
                CommandResult::CasMismatch { current: 2 },
            ]
        );
        assert_eq!(reader.get(0, b"k"), Ok(Some(record(2, "\"b\""))));
        assert_eq!(reader.get(1, b"k"), Ok(None), "keys are per partition");
        let answers = apply(
            &storage,
            6,
            vec![
                delete(0, "k", Some(0)),
                delete(0, "k", Some(9)),
                delete(0, "k", Some(2)),
                delete(0, "k", None),
                delete(0, "k", Some(0)),
                put(0, "k", "{\"x\":1}", Some(0)),
            ],
        )
        .await;
        assert_eq!(
            answers,
            vec![
                CommandResult::CasMismatch { current: 2 },
                CommandResult::CasMismatch { current: 2 },
                CommandResult::Deleted { deleted: true },
                CommandResult::Deleted { deleted: false },
                CommandResult::Deleted { deleted: false },
                CommandResult::Written { version: 4 },
            ]
        );
        assert_eq!(reader.get(0, b"k"), Ok(Some(record(4, "{\"x\":1}"))));
        assert_eq!(reader.key_count(), 1);
    });
}

/// A key's version strictly increases across delete and re-create, whether the writes come
/// in one `apply()` call or several, and also after a restart.
#[test]
fn versions_increase_across_delete_and_recreate() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    phase(async {
        let storage = open(dir.path());
        apply(&storage, 1, vec![assign(1, &[3])]).await;
        let mut index = 2;
        for round in 0..3 {
            let batch = vec![
                put(3, "k", "1", None),
                delete(3, "k", None),
                put(3, "k", "2", None),
            ];
            for answer in apply(&storage, index, batch).await {
                if let CommandResult::Written { version } = answer {
                    seen.push(version);
                }
            }
            index += 3;
            let one = apply(&storage, index, vec![delete(3, "k", None)]).await;
            assert_eq!(
                one,
                vec![CommandResult::Deleted { deleted: true }],
                "round {round}"
            );
            index += 1;
        }
        storage.sync().await.unwrap();
    });
    phase(async {
        let storage = open(dir.path());
        let answers = apply(&storage, 100, vec![put(3, "k", "3", None)]).await;
        let CommandResult::Written { version } = answers[0] else {
            panic!("unexpected {answers:?}");
        };
        seen.push(version);
    });
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "versions {seen:?}");
}

/// A partition this cluster does not serve is refused by the state machine (writes) and by
/// the reader (reads), with the assignment epoch, and nothing changes.
#[test]
fn unserved_partition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let storage = open(dir.path());
        let reader = storage.reader();
        let before = apply(&storage, 1, vec![put(5, "k", "1", None)]).await;
        assert_eq!(before, vec![CommandResult::WrongOwner { epoch: 0 }]);
        assert_eq!(
            reader.get(5, b"k"),
            Err(ReadRefused::WrongOwner { epoch: 0 })
        );
        apply(&storage, 2, vec![assign(7, &[1])]).await;
        let answers = apply(
            &storage,
            3,
            vec![put(5, "k", "1", None), delete(5, "k", Some(0))],
        )
        .await;
        assert_eq!(
            answers,
            vec![
                CommandResult::WrongOwner { epoch: 7 },
                CommandResult::WrongOwner { epoch: 7 }
            ]
        );
        assert_eq!(
            reader.get(5, b"k"),
            Err(ReadRefused::WrongOwner { epoch: 7 })
        );
        assert_eq!(reader.key_count(), 0);
    });
}

/// A batch entry answers each of its commands exactly as separate entries would, in order
/// (versions, CAS against an earlier command of the same batch, deletes, fencing), and leaves
/// the same state behind.
#[test]
fn batch_answers_like_separate_entries() {
    let commands = || {
        vec![
            put(1, "k", "\"a\"", None),
            put(1, "k", "\"b\"", Some(1)),
            put(1, "k", "\"c\"", Some(1)),
            delete(1, "k", None),
            put(1, "k", "\"d\"", Some(0)),
            put(1, "other", "1", None),
            put(9, "k", "1", None),
            delete(1, "missing", None),
        ]
    };
    let separate_dir = tempfile::tempdir().unwrap();
    let batched_dir = tempfile::tempdir().unwrap();
    phase(async {
        let separate = open(separate_dir.path());
        apply(&separate, 1, vec![assign(1, &[1])]).await;
        let one_by_one = apply(&separate, 2, commands()).await;

        let batched = open(batched_dir.path());
        apply(&batched, 1, vec![assign(1, &[1])]).await;
        let answers = apply(&batched, 2, vec![Command::Batch(commands())]).await;
        assert_eq!(answers, vec![CommandResult::Batch(one_by_one.clone())]);
        assert_eq!(
            one_by_one[..5],
            [
                CommandResult::Written { version: 1 },
                CommandResult::Written { version: 2 },
                CommandResult::CasMismatch { current: 2 },
                CommandResult::Deleted { deleted: true },
                CommandResult::Written { version: 4 },
            ]
        );
        assert_eq!(one_by_one[6], CommandResult::WrongOwner { epoch: 1 });
        for key in [&b"k"[..], b"other", b"missing"] {
            assert_eq!(separate.reader().get(1, key), batched.reader().get(1, key));
        }
        assert_eq!(batched.reader().get(1, b"k"), Ok(Some(record(4, "\"d\""))));
        assert_eq!(batched.reader().key_count(), 2);
    });
}

/// An assignment with an epoch not newer than the applied one changes nothing; a newer one
/// replaces the serving set exactly, keeping the data of partitions it drops.
#[test]
fn assignment_epochs_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let storage = open(dir.path());
        let reader = storage.reader();
        let answers = apply(
            &storage,
            1,
            vec![assign(2, &[0, 1]), put(0, "k", "1", None)],
        )
        .await;
        assert_eq!(answers[0], CommandResult::Assigned { epoch: 2 });
        let answers = apply(&storage, 3, vec![assign(1, &[0, 1, 2]), assign(2, &[9])]).await;
        assert_eq!(
            answers,
            vec![
                CommandResult::Assigned { epoch: 2 },
                CommandResult::Assigned { epoch: 2 }
            ]
        );
        assert_eq!(reader.assignment(), (2, 2));
        assert_eq!(
            reader.get(2, b"k"),
            Err(ReadRefused::WrongOwner { epoch: 2 })
        );
        apply(&storage, 5, vec![assign(3, &[1])]).await;
        assert_eq!(reader.assignment(), (3, 1));
        assert_eq!(
            reader.get(0, b"k"),
            Err(ReadRefused::WrongOwner { epoch: 3 })
        );
        apply(&storage, 6, vec![assign(4, &[0, 1])]).await;
        assert_eq!(
            reader.get(0, b"k"),
            Ok(Some(record(1, "1"))),
            "data of a dropped partition is kept"
        );
    });
}

/// Blank and membership entries answer Empty and advance last_applied; membership is stored.
#[test]
fn blank_and_membership_entries() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let storage = open(dir.path());
        let mut sm = storage.state_machine();
        let membership = Membership::new(vec![BTreeSet::from([1, 2])], None);
        let entries = vec![
            blank(1),
            Entry {
                log_id: log_id(1, 2),
                payload: EntryPayload::Membership(membership.clone()),
            },
        ];
        let answers = sm.apply(entries).await.unwrap();
        assert_eq!(answers, vec![CommandResult::Empty, CommandResult::Empty]);
        let (applied, stored) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 2)));
        assert_eq!(stored.log_id(), &Some(log_id(1, 2)));
        assert_eq!(stored.membership(), &membership);
        assert_eq!(storage.reader().last_applied(), Some(log_id(1, 2)));
    });
}

/// Fills a store with a small but varied state: assignments, writes, deletes, CAS refusals.
async fn fill(storage: &Storage) -> u64 {
    let mut commands = vec![assign(1, &[0, 1, 2])];
    for i in 0..50 {
        commands.push(put(
            i % 3,
            &format!("key{i}"),
            &format!("{{\"n\":{i}}}"),
            None,
        ));
    }
    for i in (0..50).step_by(7) {
        commands.push(delete(i % 3, &format!("key{i}"), None));
    }
    commands.push(put(0, "key0", "\"again\"", Some(0)));
    let n = commands.len() as u64;
    apply(storage, 1, commands).await;
    n
}

/// Reads every key `fill` may have written, from partitions 0..3.
fn read_all(storage: &Storage) -> BTreeMap<String, Option<Record>> {
    let reader = storage.reader();
    (0..50u32)
        .map(|i| {
            let key = format!("key{i}");
            (key.clone(), reader.get(i % 3, key.as_bytes()).unwrap())
        })
        .collect()
}

/// A snapshot built from one store and installed into a fresh one gives the same reads, the
/// same applied state and assignment, and keeps issuing strictly larger versions.
#[test]
fn snapshot_install_reproduces_state() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    phase(async {
        let source = open(source_dir.path());
        let last = fill(&source).await;
        let snapshot = source
            .state_machine()
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, last)));
        // Writes after the builder was taken are not in the snapshot.
        apply(&source, last + 1, vec![put(0, "late", "1", None)]).await;

        let target = open(target_dir.path());
        let mut target_sm = target.state_machine();
        target_sm
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(target.reader().snapshots_installed(), 1);
        assert_eq!(read_all(&target), read_all(&source));
        assert_eq!(target.reader().get(0, b"late"), Ok(None));
        assert_eq!(target.reader().assignment(), source.reader().assignment());
        assert_eq!(target.reader().key_count(), source.reader().key_count() - 1);
        let (applied, _) = target_sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, last)));
        let current = target_sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);

        // Both stores now issue the same next version in partition 0: counters were copied.
        let a = apply(&source, last + 2, vec![put(0, "key3", "1", None)]).await;
        let b = apply(&target, last + 1, vec![put(0, "key3", "1", None)]).await;
        let (CommandResult::Written { version: va }, CommandResult::Written { version: vb }) =
            (&a[0], &b[0])
        else {
            panic!("unexpected {a:?} {b:?}");
        };
        assert_eq!(
            *vb + 1,
            *va,
            "source issued one more version (the late put)"
        );
    });
}

/// Installing a snapshot replaces the whole state: keys absent from the snapshot disappear.
#[test]
fn snapshot_install_replaces_everything() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    phase(async {
        let source = open(source_dir.path());
        apply(&source, 1, vec![assign(1, &[0]), put(0, "a", "1", None)]).await;
        let snapshot = source
            .state_machine()
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let target = open(target_dir.path());
        apply(
            &target,
            1,
            vec![
                assign(5, &[0, 4]),
                put(4, "stale", "1", None),
                put(0, "b", "1", None),
            ],
        )
        .await;
        target
            .state_machine()
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        let reader = target.reader();
        assert_eq!(reader.assignment(), (1, 1));
        assert_eq!(reader.get(0, b"b"), Ok(None));
        assert_eq!(reader.get(0, b"a"), Ok(Some(record(1, "1"))));
        assert_eq!(
            reader.get(4, b"stale"),
            Err(ReadRefused::WrongOwner { epoch: 1 })
        );
        assert_eq!(reader.key_count(), 1);
    });
}

/// After a snapshot is built and the process restarts, the data, applied state and the stored
/// snapshot are all still there (openraft does not reload snapshots itself).
#[test]
fn restart_after_snapshot_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let (before, meta) = phase(async {
        let storage = open(dir.path());
        fill(&storage).await;
        let snapshot = storage
            .state_machine()
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        (read_all(&storage), snapshot.meta)
    });
    phase(async {
        let storage = open(dir.path());
        assert_eq!(read_all(&storage), before);
        let mut sm = storage.state_machine();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, meta.last_log_id);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert_eq!(storage.reader().snapshots_installed(), 0);
    });
}

/// Applying the same entries to two fresh stores gives identical answers and byte-identical
/// snapshot images: apply is deterministic.
#[test]
fn apply_is_deterministic() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    phase(async {
        let a = open(a_dir.path());
        let b = open(b_dir.path());
        fill(&a).await;
        fill(&b).await;
        let sa = a
            .state_machine()
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let sb = b
            .state_machine()
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(sa.snapshot.into_inner(), sb.snapshot.into_inner());
    });
}

/// Opening storage outside a tokio runtime is a clear error, not a panic, and leaves the
/// directory usable by a later open inside a runtime.
#[test]
fn open_outside_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Storage::open(dir.path())
        .err()
        .expect("no runtime, no storage");
    assert_eq!(err.code(), "storage_no_runtime");
    phase(async {
        open(dir.path());
    });
}
