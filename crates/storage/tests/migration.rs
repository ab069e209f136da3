//! The state machine's side of partition migration (`docs/design.md#partition-states`), through the
//! public API: every step's transitions, idempotence and refusals, Assign leaving moves alone, data
//! wiping, the version floor, the frozen-partition scan, and snapshots and restarts of the new
//! states.

mod common;
use common::phase;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use ravel_core::command::{
    ChangedRecord, Command, CommandResult, MigratedRecord, MigrationStep, PartitionState, Record,
};
use ravel_storage::{ReadRefused, Storage, TypeConfig};

use PartitionState::{Exporting, Frozen, Incoming, Released, Serving};

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// A store plus the next log index to apply at.
struct Sm {
    storage: Storage,
    next: u64,
}

impl Sm {
    fn open(dir: &std::path::Path) -> Self {
        let storage = Storage::open(dir).unwrap();
        let next = storage.reader().last_applied().map_or(1, |l| l.index + 1);
        Sm { storage, next }
    }

    /// Applies `commands` in one `apply()` call and returns their answers.
    async fn apply_all(&mut self, commands: Vec<Command>) -> Vec<CommandResult> {
        let entries: Vec<_> = commands
            .into_iter()
            .map(|c| {
                self.next += 1;
                entry(self.next - 1, c)
            })
            .collect();
        self.storage.state_machine().apply(entries).await.unwrap()
    }

    async fn apply(&mut self, command: Command) -> CommandResult {
        self.apply_all(vec![command]).await.remove(0)
    }

    async fn step(&mut self, partition: u32, step: MigrationStep) -> CommandResult {
        self.apply(Command::Migrate { partition, step }).await
    }

    fn state(&self, partition: u32) -> Option<PartitionState> {
        self.storage.reader().partition_state(partition)
    }

    fn keys(&self, partition: u32) -> u64 {
        self.storage.reader().partition_keys(partition)
    }
}

fn put(partition: u32, key: &str, value: &str) -> Command {
    Command::Put {
        partition,
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cas: None,
    }
}

fn assign(epoch: u64, partitions: &[u32]) -> Command {
    Command::Assign {
        epoch,
        partitions: partitions.to_vec(),
    }
}

fn rec(key: &str, version: u64, value: &str) -> MigratedRecord {
    MigratedRecord {
        key: key.as_bytes().to_vec(),
        version,
        value: value.as_bytes().to_vec(),
    }
}

fn ingest(records: Vec<MigratedRecord>, version_floor: u64) -> MigrationStep {
    MigrationStep::Ingest {
        records,
        version_floor,
    }
}

fn migrated(state: Option<PartitionState>, records_applied: u64, keys: u64) -> CommandResult {
    CommandResult::Migrated {
        state,
        records_applied,
        partition_keys: keys,
    }
}

fn refused_in(result: &CommandResult) -> Option<Option<PartitionState>> {
    match result {
        CommandResult::MigrationRefused { state, reason } => {
            assert!(!reason.is_empty());
            Some(*state)
        }
        _ => None,
    }
}

/// Every step of a move leads to the state the design gives, answers the partition's key count,
/// and repeated in the state it leads to succeeds again without changing anything.
#[test]
fn each_step_transitions_and_is_idempotent() {
    let (s_dir, t_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    phase(async {
        let mut s = Sm::open(s_dir.path());
        let mut t = Sm::open(t_dir.path());
        s.apply_all(vec![assign(1, &[0]), put(0, "a", "1"), put(0, "b", "2")])
            .await;

        for _ in 0..2 {
            assert_eq!(
                s.step(0, MigrationStep::Freeze).await,
                migrated(Some(Frozen), 0, 2)
            );
        }
        // Frozen: writes refused in log order, reads still served.
        assert_eq!(
            s.apply(put(0, "c", "3")).await,
            CommandResult::WrongOwner { epoch: 1 }
        );
        assert_eq!(
            s.storage.reader().get(0, b"a"),
            Ok(Some(Record {
                version: 1,
                value: b"1".to_vec()
            }))
        );

        for _ in 0..2 {
            assert_eq!(
                t.step(0, MigrationStep::PrepareIncoming).await,
                migrated(Some(Incoming), 0, 0)
            );
        }
        let scan = s
            .storage
            .reader()
            .scan_partition(0, None, 512, 1 << 20)
            .unwrap();
        assert!(scan.done);
        assert_eq!(scan.version_floor, 2);
        assert_eq!(
            t.step(0, ingest(scan.records.clone(), scan.version_floor))
                .await,
            migrated(Some(Incoming), 2, 2)
        );
        // A repeated batch overwrites the same keys: still two keys.
        assert_eq!(
            t.step(0, ingest(scan.records, scan.version_floor)).await,
            migrated(Some(Incoming), 2, 2)
        );
        assert!(matches!(
            t.storage.reader().get(0, b"a"),
            Err(ReadRefused::WrongOwner { .. })
        ));

        for _ in 0..2 {
            assert_eq!(
                s.step(0, MigrationStep::Release).await,
                migrated(Some(Released), 0, 2)
            );
        }
        assert!(matches!(
            s.storage.reader().get(0, b"a"),
            Err(ReadRefused::WrongOwner { .. })
        ));
        for _ in 0..2 {
            assert_eq!(
                t.step(0, MigrationStep::Activate).await,
                migrated(Some(Serving), 0, 2)
            );
        }
        assert_eq!(
            t.storage.reader().get(0, b"b"),
            Ok(Some(Record {
                version: 2,
                value: b"2".to_vec()
            }))
        );
        for _ in 0..2 {
            assert_eq!(
                s.step(0, MigrationStep::Purge).await,
                migrated(Some(Released), 0, 0)
            );
        }
        assert_eq!(s.storage.reader().key_count(), 0);
        assert_eq!(t.storage.reader().key_count(), 2);

        // The abort path: restore at a (new) source, abandon at a target.
        s.apply_all(vec![assign(2, &[1]), put(1, "x", "1")]).await;
        s.step(1, MigrationStep::Freeze).await;
        for _ in 0..2 {
            assert_eq!(
                s.step(1, MigrationStep::Restore).await,
                migrated(Some(Serving), 0, 1)
            );
        }
        assert!(matches!(
            s.apply(put(1, "x", "2")).await,
            CommandResult::Written { version: 2 }
        ));
        s.step(1, MigrationStep::Freeze).await;
        s.step(1, MigrationStep::Release).await;
        assert_eq!(
            s.step(1, MigrationStep::Restore).await,
            migrated(Some(Serving), 0, 1)
        );
        t.step(1, MigrationStep::PrepareIncoming).await;
        t.step(1, ingest(vec![rec("x", 2, "2")], 2)).await;
        for _ in 0..2 {
            assert_eq!(
                t.step(1, MigrationStep::Abandon).await,
                migrated(None, 0, 0)
            );
        }
        assert_eq!(t.storage.reader().key_count(), 2);
    });
}

/// A step asked in a state it does not apply to is refused with the current state, and
/// nothing changes: neither the state nor the data.
#[test]
fn steps_refused_in_wrong_states() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let mut sm = Sm::open(dir.path());
        // p1 serving, p2 frozen, p3 incoming, p4 released, p5 absent; each holds one key.
        sm.apply_all(vec![
            assign(1, &[1, 2, 4]),
            put(1, "k", "1"),
            put(2, "k", "1"),
            put(4, "k", "1"),
            Command::Migrate {
                partition: 2,
                step: MigrationStep::Freeze,
            },
            Command::Migrate {
                partition: 3,
                step: MigrationStep::PrepareIncoming,
            },
            Command::Migrate {
                partition: 3,
                step: ingest(vec![rec("k", 1, "1")], 1),
            },
            Command::Migrate {
                partition: 4,
                step: MigrationStep::Freeze,
            },
            Command::Migrate {
                partition: 4,
                step: MigrationStep::Release,
            },
        ])
        .await;
        let states = [
            (1, Some(Serving)),
            (2, Some(Frozen)),
            (3, Some(Incoming)),
            (4, Some(Released)),
            (5, None),
        ];
        for (p, s) in states {
            assert_eq!(sm.state(p), s, "partition {p}");
        }
        let refusals: Vec<(MigrationStep, Vec<u32>)> = vec![
            (MigrationStep::Freeze, vec![3, 4, 5]),
            (MigrationStep::PrepareIncoming, vec![1, 2]),
            (ingest(vec![rec("z", 9, "9")], 9), vec![1, 2, 4, 5]),
            (MigrationStep::Release, vec![1, 3, 5]),
            (MigrationStep::Activate, vec![2, 4, 5]),
            (MigrationStep::Purge, vec![1, 2, 3, 5]),
            (MigrationStep::Restore, vec![3, 5]),
            (MigrationStep::Abandon, vec![1, 2, 4]),
        ];
        for (step, partitions) in refusals {
            for p in partitions {
                let before = (sm.state(p), sm.keys(p), sm.storage.reader().key_count());
                let answer = sm.step(p, step.clone()).await;
                assert_eq!(
                    refused_in(&answer),
                    Some(before.0),
                    "{} on partition {p}: {answer:?}",
                    step.name()
                );
                let after = (sm.state(p), sm.keys(p), sm.storage.reader().key_count());
                assert_eq!(before, after, "{} on partition {p}", step.name());
            }
        }
        // An ingest of a record without a version is refused whole, even when incoming.
        let answer = sm
            .step(3, ingest(vec![rec("ok", 4, "1"), rec("bad", 0, "1")], 4))
            .await;
        assert_eq!(refused_in(&answer), Some(Some(Incoming)));
        assert_eq!(sm.keys(3), 1);
    });
}

/// Assign moves partitions only between absent and serving: it never revives a released
/// partition and never touches a frozen or incoming one, listed or not.
#[test]
fn assign_leaves_moves_alone() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let mut sm = Sm::open(dir.path());
        sm.apply_all(vec![
            assign(1, &[1, 2, 4]),
            put(4, "k", "1"),
            Command::Migrate {
                partition: 2,
                step: MigrationStep::Freeze,
            },
            Command::Migrate {
                partition: 3,
                step: MigrationStep::PrepareIncoming,
            },
            Command::Migrate {
                partition: 4,
                step: MigrationStep::Freeze,
            },
            Command::Migrate {
                partition: 4,
                step: MigrationStep::Release,
            },
        ])
        .await;
        // Lists the moved partitions and a new one, drops the serving one.
        assert_eq!(
            sm.apply(assign(2, &[2, 3, 4, 5])).await,
            CommandResult::Assigned { epoch: 2 }
        );
        let expect = [
            (1, None),
            (2, Some(Frozen)),
            (3, Some(Incoming)),
            (4, Some(Released)),
            (5, Some(Serving)),
        ];
        for (p, s) in expect {
            assert_eq!(sm.state(p), s, "partition {p}");
        }
        assert!(matches!(
            sm.storage.reader().get(4, b"k"),
            Err(ReadRefused::WrongOwner { epoch: 2 })
        ));
        // Lists nothing: only the serving partition goes.
        sm.apply(assign(3, &[])).await;
        let expect = [
            (2, Some(Frozen)),
            (3, Some(Incoming)),
            (4, Some(Released)),
            (5, None),
        ];
        for (p, s) in expect {
            assert_eq!(sm.state(p), s, "partition {p}");
        }
        assert_eq!(sm.storage.reader().assignment(), (3, 0));
    });
}

/// PREPARE_INCOMING deletes whatever a cluster still holds under the partition (left from an
/// earlier ownership or an aborted copy), so only the copied records are served afterwards.
#[test]
fn prepare_wipes_stale_data() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let mut sm = Sm::open(dir.path());
        sm.apply_all(vec![
            assign(1, &[0, 1]),
            put(0, "stale", "1"),
            put(0, "kept", "1"),
            put(1, "other", "1"),
            // Dropped by a later assignment: the data stays on disk.
            assign(2, &[1]),
        ])
        .await;
        assert_eq!(sm.keys(0), 2);
        assert_eq!(
            sm.step(0, MigrationStep::PrepareIncoming).await,
            migrated(Some(Incoming), 0, 0)
        );
        sm.step(0, ingest(vec![rec("kept", 7, "\"new\"")], 9)).await;
        // A retried prepare after a partial copy starts over from nothing.
        sm.step(0, MigrationStep::PrepareIncoming).await;
        assert_eq!(sm.keys(0), 0);
        sm.step(0, ingest(vec![rec("kept", 7, "\"new\"")], 9)).await;
        assert_eq!(
            sm.step(0, MigrationStep::Activate).await,
            migrated(Some(Serving), 0, 1)
        );
        let reader = sm.storage.reader();
        assert_eq!(reader.get(0, b"stale"), Ok(None));
        assert_eq!(
            reader.get(0, b"kept"),
            Ok(Some(Record {
                version: 7,
                value: b"\"new\"".to_vec()
            }))
        );
        assert_eq!(reader.key_count(), 2, "kept + other");
        assert_eq!(sm.keys(1), 1);

        // Within one apply call: records ingested then abandoned leave nothing.
        let answers = sm
            .apply_all(vec![
                Command::Migrate {
                    partition: 9,
                    step: MigrationStep::PrepareIncoming,
                },
                Command::Migrate {
                    partition: 9,
                    step: ingest(vec![rec("a", 1, "1"), rec("b", 2, "1")], 2),
                },
                Command::Migrate {
                    partition: 9,
                    step: MigrationStep::Abandon,
                },
            ])
            .await;
        assert_eq!(answers[1], migrated(Some(Incoming), 2, 2));
        assert_eq!(answers[2], migrated(None, 0, 0));
        assert_eq!(sm.storage.reader().key_count(), 2);
    });
}

/// INGEST raises the target's version counter to the source's: a put after activation gets a
/// version above every copied one, even above versions consumed by deletes at the source.
#[test]
fn ingest_raises_the_version_counter() {
    let (s_dir, t_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    phase(async {
        let mut s = Sm::open(s_dir.path());
        let mut t = Sm::open(t_dir.path());
        s.apply_all(vec![
            assign(1, &[3]),
            put(3, "a", "1"),
            put(3, "b", "1"),
            put(3, "a", "2"),
            Command::Delete {
                partition: 3,
                key: b"b".to_vec(),
                cas: None,
            },
            Command::Migrate {
                partition: 3,
                step: MigrationStep::Freeze,
            },
        ])
        .await;
        let scan = s
            .storage
            .reader()
            .scan_partition(3, None, 512, 1 << 20)
            .unwrap();
        assert_eq!(scan.records, vec![rec("a", 3, "2")]);
        assert_eq!(scan.version_floor, 4, "the delete consumed version 4");
        // The target once issued low versions in this partition itself.
        t.apply_all(vec![assign(1, &[3]), put(3, "a", "x"), assign(2, &[])])
            .await;
        t.step(3, MigrationStep::PrepareIncoming).await;
        t.step(3, ingest(scan.records, scan.version_floor)).await;
        t.step(3, MigrationStep::Activate).await;
        assert_eq!(
            t.apply(put(3, "b", "new")).await,
            CommandResult::Written { version: 5 }
        );
        assert_eq!(
            t.apply(put(3, "a", "new")).await,
            CommandResult::Written { version: 6 }
        );
        // A floor below a record's version still leaves the counter above the record.
        t.step(4, MigrationStep::PrepareIncoming).await;
        t.step(4, ingest(vec![rec("z", 40, "1")], 10)).await;
        t.step(4, MigrationStep::Activate).await;
        assert_eq!(
            t.apply(put(4, "y", "1")).await,
            CommandResult::Written { version: 41 }
        );
    });
}

/// PURGE deletes exactly the released partition's data: neighbouring partitions keep every key.
#[test]
fn purge_deletes_exactly_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let mut sm = Sm::open(dir.path());
        let mut commands = vec![assign(1, &[0, 1, 2, 256])];
        for p in [0, 1, 2, 256] {
            for i in 0..20 {
                commands.push(put(p, &format!("key{i}"), "1"));
            }
        }
        sm.apply_all(commands).await;
        sm.step(1, MigrationStep::Freeze).await;
        sm.step(1, MigrationStep::Release).await;
        assert_eq!(
            sm.step(1, MigrationStep::Purge).await,
            migrated(Some(Released), 0, 0)
        );
        let reader = sm.storage.reader();
        assert_eq!(reader.key_count(), 60);
        for p in [0, 2, 256] {
            assert_eq!(sm.keys(p), 20);
            for i in 0..20 {
                assert!(
                    reader
                        .get(p, format!("key{i}").as_bytes())
                        .unwrap()
                        .is_some()
                );
            }
        }
        // Serving the purged partition again (an abort never does this after a purge) shows
        // that its records are really gone from disk.
        sm.step(1, MigrationStep::Restore).await;
        for i in 0..20 {
            assert_eq!(reader.get(1, format!("key{i}").as_bytes()), Ok(None));
        }
    });
}

/// PURGE_SOME deletes a released partition in bounded entries: each deletes at most its
/// `max_keys` live keys, counting keys on disk and keys changed since (new and deleted ones)
/// alike, until none is left; neighbouring partitions keep every key.
#[test]
fn purge_some_deletes_in_bounded_entries() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let mut sm = Sm::open(dir.path());
        let mut commands = vec![assign(1, &[0, 1, 2])];
        for p in [0, 1, 2] {
            for i in 0..30 {
                commands.push(put(p, &format!("key{i:02}"), "1"));
            }
        }
        sm.apply_all(commands).await;
    });
    // Reopened, the first 30 keys are on disk; the changes below are applied over them.
    phase(async {
        let mut sm = Sm::open(dir.path());
        let mut changes: Vec<Command> = (30..50)
            .map(|i| put(1, &format!("key{i:02}"), "2"))
            .collect();
        changes.extend((0..10).map(|i| delete(1, &format!("key{i:02}"))));
        sm.apply_all(changes).await;
        assert_eq!(sm.keys(1), 40);
        sm.step(1, MigrationStep::Freeze).await;
        sm.step(1, MigrationStep::Release).await;
        for left in [25, 10, 0, 0] {
            assert_eq!(
                sm.step(1, MigrationStep::PurgeSome { max_keys: 15 }).await,
                migrated(Some(Released), 0, left)
            );
        }
        let reader = sm.storage.reader();
        assert_eq!(reader.key_count(), 60);
        for p in [0, 2] {
            assert_eq!(sm.keys(p), 30);
        }
        sm.step(1, MigrationStep::Restore).await;
        for i in 0..50 {
            assert_eq!(reader.get(1, format!("key{i:02}").as_bytes()), Ok(None));
        }
        // A partition still served is never purged.
        let refused = sm.step(0, MigrationStep::PurgeSome { max_keys: 1 }).await;
        assert_eq!(refused_in(&refused), Some(Some(Serving)));
        assert_eq!(sm.keys(0), 30);
    });
}

/// The scan returns a frozen partition's records in key order, in batches bounded by records
/// and bytes that resume after the last key, says when it is done, and refuses any partition
/// that is not frozen.
#[test]
fn scan_partition_batches_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    phase(async {
        let mut sm = Sm::open(dir.path());
        let mut commands = vec![assign(1, &[5, 6])];
        for i in 0..10 {
            commands.push(put(5, &format!("k{i:02}"), "\"0123456789\""));
            commands.push(put(6, &format!("k{i:02}"), "1"));
        }
        sm.apply_all(commands).await;
        let reader = sm.storage.reader();
        assert_eq!(
            reader.scan_partition(5, None, 3, 1 << 20),
            Err(ReadRefused::NotCopyable {
                state: Some(Serving)
            })
        );
        sm.step(5, MigrationStep::Freeze).await;

        let mut keys = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut batches = 0;
        loop {
            let scan = reader
                .scan_partition(5, after.as_deref(), 3, 1 << 20)
                .unwrap();
            batches += 1;
            assert!(scan.records.len() <= 3);
            keys.extend(scan.records.iter().map(|r| r.key.clone()));
            after = scan.records.last().map(|r| r.key.clone());
            if scan.done {
                break;
            }
        }
        assert_eq!(batches, 4);
        let expect: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i:02}").into_bytes()).collect();
        assert_eq!(
            keys, expect,
            "every key once, in order, none of partition 6"
        );

        // A byte limit below one record still returns one record per batch.
        let scan = reader.scan_partition(5, None, 512, 1).unwrap();
        assert_eq!((scan.records.len(), scan.done), (1, false));
        // Exactly the last record: done, and a scan past the end is empty and done.
        let scan = reader
            .scan_partition(5, Some(b"k08"), 512, 1 << 20)
            .unwrap();
        assert_eq!((scan.records.len(), scan.done), (1, true));
        let scan = reader
            .scan_partition(5, Some(b"k09"), 512, 1 << 20)
            .unwrap();
        assert!(scan.records.is_empty() && scan.done);

        sm.step(5, MigrationStep::Release).await;
        assert_eq!(
            reader.scan_partition(5, None, 3, 1 << 20),
            Err(ReadRefused::NotCopyable {
                state: Some(Released)
            })
        );
        assert_eq!(
            reader.scan_partition(7, None, 3, 1 << 20),
            Err(ReadRefused::NotCopyable { state: None })
        );
    });
}

/// Every migration state, the per-partition key counts and the version floors survive a
/// snapshot built at one store and installed into another, and a restart of the process.
#[test]
fn snapshot_and_restart_carry_migration_states() {
    let (s_dir, t_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let states = [
        (1, Some(Serving), 2),
        (2, Some(Frozen), 1),
        (3, Some(Incoming), 1),
        (4, Some(Released), 1),
        (5, None, 0),
    ];
    phase(async {
        let mut s = Sm::open(s_dir.path());
        s.apply_all(vec![
            assign(1, &[1, 2, 4]),
            put(1, "a", "1"),
            put(1, "b", "1"),
            put(2, "a", "1"),
            put(4, "a", "1"),
            Command::Migrate {
                partition: 2,
                step: MigrationStep::Freeze,
            },
            Command::Migrate {
                partition: 3,
                step: MigrationStep::PrepareIncoming,
            },
            Command::Migrate {
                partition: 3,
                step: ingest(vec![rec("a", 30, "1")], 33),
            },
            Command::Migrate {
                partition: 4,
                step: MigrationStep::Freeze,
            },
            Command::Migrate {
                partition: 4,
                step: MigrationStep::Release,
            },
        ])
        .await;
        let snapshot = s
            .storage
            .state_machine()
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let t = Sm::open(t_dir.path());
        t.storage
            .state_machine()
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        for (p, state, keys) in states {
            assert_eq!((t.state(p), t.keys(p)), (state, keys), "partition {p}");
        }
        assert_eq!(t.storage.reader().key_count(), 5);
    });
    // Restart both: states, counts and counters come back from disk.
    phase(async {
        for dir in [s_dir.path(), t_dir.path()] {
            let mut sm = Sm::open(dir);
            for (p, state, keys) in states {
                assert_eq!((sm.state(p), sm.keys(p)), (state, keys), "partition {p}");
            }
            sm.step(3, MigrationStep::Activate).await;
            assert_eq!(
                sm.apply(put(3, "b", "1")).await,
                CommandResult::Written { version: 34 }
            );
        }
    });
}

fn delete(partition: u32, key: &str) -> Command {
    Command::Delete {
        partition,
        key: key.as_bytes().to_vec(),
        cas: None,
    }
}

fn migrate(partition: u32, step: MigrationStep) -> Command {
    Command::Migrate { partition, step }
}

/// A partition's records as (key, version, value), read by a full scan (the partition must be
/// exporting or frozen).
fn all_records(sm: &Sm, partition: u32) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
    let reader = sm.storage.reader();
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let scan = reader
            .scan_partition(partition, after.as_deref(), 7, 1 << 20)
            .unwrap();
        after = scan.records.last().map(|r| r.key.clone());
        out.extend(
            scan.records
                .into_iter()
                .map(|r| (r.key, r.version, r.value)),
        );
        if scan.done {
            return out;
        }
    }
}

/// Copies every change after `after` from `source` into `target` (INGEST_CHANGES in batches
/// of `batch`) and returns the last version copied.
async fn copy_changes(source: &Sm, target: &mut Sm, p: u32, after: u64, batch: usize) -> u64 {
    let mut after = after;
    loop {
        let scan = source
            .storage
            .reader()
            .scan_changes(p, after, batch, 1 << 20)
            .unwrap();
        after = scan.last_version;
        let answer = target
            .step(
                p,
                MigrationStep::IngestChanges {
                    records: scan.records,
                    version_floor: scan.version_floor,
                },
            )
            .await;
        assert!(
            matches!(answer, CommandResult::Migrated { .. }),
            "{answer:?}"
        );
        if scan.done {
            return after;
        }
    }
}

/// Pre-copy at the state machine: EXPORT keeps the partition served and logs every put and
/// delete by version; a full scan taken while writes go on, then the change log read in rounds
/// (again while writes go on), then FREEZE and the last changes, leave the target with exactly
/// the source's records — same keys, versions and values, deleted keys gone, a key deleted and
/// written again present with its newest version — and a version counter as high as the
/// source's. RELEASE drops the log; a put after ACTIVATE gets a version above every copied one.
#[test]
fn pre_copy_catches_up_through_the_change_log() {
    let (s_dir, t_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    phase(async {
        let mut source = Sm::open(s_dir.path());
        let mut target = Sm::open(t_dir.path());
        let mut load = vec![assign(1, &[3, 4])];
        for i in 0..40 {
            load.push(put(3, &format!("k{i:02}"), &i.to_string()));
            load.push(put(4, &format!("k{i:02}"), "0"));
        }
        source.apply_all(load).await;
        assert_eq!(
            source.storage.reader().scan_changes(3, 0, 10, 1 << 20),
            Err(ReadRefused::NotCopyable {
                state: Some(Serving)
            })
        );
        assert_eq!(
            source.step(3, MigrationStep::Export).await,
            migrated(Some(Exporting), 0, 40)
        );
        assert_eq!(
            source.step(3, MigrationStep::Export).await,
            migrated(Some(Exporting), 0, 40),
            "EXPORT is idempotent"
        );
        target.step(3, MigrationStep::PrepareIncoming).await;

        // Writes, reads and deletes are served while exporting; partition 4 is not logged.
        let mut x = 7u64;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut churn = |sm_ops: &mut Vec<Command>, rounds: usize| {
            for _ in 0..rounds {
                let key = format!("k{:02}", next(50));
                if next(4) == 0 {
                    sm_ops.push(delete(3, &key));
                } else {
                    sm_ops.push(put(3, &key, &next(1000).to_string()));
                }
                sm_ops.push(put(4, "k00", "1"));
            }
        };
        // The full scan, batch by batch, with writes between the batches.
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut ops = Vec::new();
            churn(&mut ops, 5);
            for answer in source.apply_all(ops).await {
                assert!(
                    matches!(
                        answer,
                        CommandResult::Written { .. } | CommandResult::Deleted { .. }
                    ),
                    "{answer:?}"
                );
            }
            let scan = source
                .storage
                .reader()
                .scan_partition(3, after.as_deref(), 6, 1 << 20)
                .unwrap();
            after = scan.records.last().map(|r| r.key.clone());
            target
                .step(3, ingest(scan.records, scan.version_floor))
                .await;
            if scan.done {
                break;
            }
        }
        // Rounds of changes, still with writes between them.
        let mut copied = 0;
        for _ in 0..3 {
            let mut ops = Vec::new();
            churn(&mut ops, 20);
            source.apply_all(ops).await;
            copied = copy_changes(&source, &mut target, 3, copied, 4).await;
        }
        let mut ops = Vec::new();
        churn(&mut ops, 20);
        source.apply_all(ops).await;
        // Freeze: writes are refused from here; the last changes complete the copy.
        assert_eq!(
            source.step(3, MigrationStep::Freeze).await,
            migrated(Some(Frozen), 0, source.keys(3))
        );
        assert!(matches!(
            source.apply(put(3, "k01", "1")).await,
            CommandResult::WrongOwner { .. }
        ));
        copy_changes(&source, &mut target, 3, copied, 4).await;
        let expected = all_records(&source, 3);
        assert_eq!(target.keys(3), expected.len() as u64);
        target.step(3, MigrationStep::Activate).await;
        target.step(3, MigrationStep::Freeze).await;
        assert_eq!(
            all_records(&target, 3),
            expected,
            "the copy equals the source"
        );
        target.step(3, MigrationStep::Restore).await;
        let floor = source
            .storage
            .reader()
            .scan_changes(3, 0, 1, 1 << 20)
            .unwrap()
            .version_floor;
        assert_eq!(
            target.apply(put(3, "new", "1")).await,
            CommandResult::Written { version: floor + 1 }
        );

        // RELEASE drops the change log (a later move starts a new one).
        source.step(3, MigrationStep::Release).await;
        source.step(3, MigrationStep::Restore).await;
        source.step(3, MigrationStep::Export).await;
        let scan = source
            .storage
            .reader()
            .scan_changes(3, 0, 100, 1 << 20)
            .unwrap();
        assert!(scan.records.is_empty() && scan.done, "{scan:?}");
    });
}

/// A change scan names each key once with its current record, a deleted key as deleted with
/// the version of its deletion, and an INGEST_CHANGES applies only what is newer than the
/// target's copy: an older put or deletion changes nothing.
#[test]
fn change_scans_and_newer_wins_ingest() {
    let (s_dir, t_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    phase(async {
        let mut source = Sm::open(s_dir.path());
        source
            .apply_all(vec![
                assign(1, &[1]),
                put(1, "a", "1"),
                migrate(1, MigrationStep::Export),
                put(1, "a", "2"), // v2
                put(1, "b", "1"), // v3
                delete(1, "b"),   // v4
                put(1, "a", "3"), // v5
                put(1, "c", "1"), // v6
                delete(1, "c"),   // v7
                put(1, "c", "2"), // v8
            ])
            .await;
        let scan = source
            .storage
            .reader()
            .scan_changes(1, 0, 100, 1 << 20)
            .unwrap();
        let seen: Vec<_> = scan
            .records
            .iter()
            .map(|r| (r.key.as_slice(), r.version, r.value.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (&b"a"[..], 5, Some(&b"3"[..])),
                (&b"b"[..], 4, None),
                (&b"c"[..], 8, Some(&b"2"[..])),
            ]
        );
        assert_eq!(
            (scan.last_version, scan.done, scan.version_floor),
            (8, true, 8)
        );
        // A limit cuts a batch before a new key (later changes of a key in it are merged into
        // it); resuming after a version skips what it covered.
        let reader = source.storage.reader();
        let scan = reader.scan_changes(1, 0, 1, 1 << 20).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!((scan.last_version, scan.done), (2, false));
        let scan = reader.scan_changes(1, 5, 1, 1 << 20).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!((scan.last_version, scan.done), (8, true));

        let mut target = Sm::open(t_dir.path());
        target.step(1, MigrationStep::PrepareIncoming).await;
        target
            .step(1, ingest(vec![rec("a", 5, "3"), rec("d", 9, "9")], 9))
            .await;
        let changed = |key: &str, version: u64, value: Option<&str>| ChangedRecord {
            key: key.as_bytes().to_vec(),
            version,
            value: value.map(|v| v.as_bytes().to_vec()),
        };
        let answer = target
            .step(
                1,
                MigrationStep::IngestChanges {
                    records: vec![
                        changed("a", 2, Some("2")), // older than the copy: ignored
                        changed("d", 4, None),      // an older deletion: ignored
                        changed("e", 3, None),      // deletion of a key not here: nothing
                        changed("c", 8, Some("2")), // new key
                        changed("d", 10, None),     // a newer deletion: removes d
                    ],
                    version_floor: 10,
                },
            )
            .await;
        assert_eq!(answer, migrated(Some(Incoming), 2, 2));
        target.step(1, MigrationStep::Activate).await;
        let reader = target.storage.reader();
        assert_eq!(
            reader.get(1, b"a").unwrap(),
            Some(Record {
                version: 5,
                value: b"3".to_vec()
            })
        );
        assert_eq!(reader.get(1, b"d").unwrap(), None);
        assert_eq!(reader.get(1, b"c").unwrap().map(|r| r.version), Some(8));
        assert!(matches!(
            target
                .step(
                    2,
                    MigrationStep::IngestChanges {
                        records: vec![],
                        version_floor: 1
                    }
                )
                .await,
            CommandResult::MigrationRefused { state: None, .. }
        ));
    });
}

/// The change log of an exporting partition survives a snapshot built at one store and
/// installed into another (a follower that catches up by snapshot and then leads), and a
/// restart; a snapshot without change logs still decodes as before.
#[test]
fn snapshot_and_restart_carry_the_change_log() {
    let (s_dir, t_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let expected = vec![(b"a".to_vec(), 3, true), (b"b".to_vec(), 4, false)];
    let changes_of = |sm: &Sm| -> Vec<(Vec<u8>, u64, bool)> {
        sm.storage
            .reader()
            .scan_changes(1, 0, 100, 1 << 20)
            .unwrap()
            .records
            .into_iter()
            .map(|r| (r.key, r.version, r.value.is_some()))
            .collect()
    };
    phase(async {
        let mut s = Sm::open(s_dir.path());
        s.apply_all(vec![
            assign(1, &[1, 2]),
            put(1, "a", "1"),
            put(1, "b", "1"),
            migrate(1, MigrationStep::Export),
            put(1, "a", "2"),
            delete(1, "b"),
        ])
        .await;
        assert_eq!(changes_of(&s), expected);
        let snapshot = s
            .storage
            .state_machine()
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let t = Sm::open(t_dir.path());
        t.storage
            .state_machine()
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(t.state(1), Some(Exporting));
        assert_eq!(changes_of(&t), expected);
    });
    phase(async {
        for dir in [s_dir.path(), t_dir.path()] {
            let mut sm = Sm::open(dir);
            assert_eq!(changes_of(&sm), expected);
            sm.apply(put(1, "c", "1")).await;
            assert_eq!(changes_of(&sm).len(), 3);
            // RESTORE drops the log, in memory and on disk.
            sm.step(1, MigrationStep::Restore).await;
            assert_eq!(sm.state(1), Some(Serving));
        }
    });
    phase(async {
        for dir in [s_dir.path(), t_dir.path()] {
            let mut sm = Sm::open(dir);
            sm.step(1, MigrationStep::Export).await;
            assert!(changes_of(&sm).is_empty(), "the log was dropped for good");
        }
    });
}
