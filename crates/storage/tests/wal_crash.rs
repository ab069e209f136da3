//! `kill -9` of a process in the middle of appends, purges and votes loses nothing it was
//! told was durable, and leaves a contiguous log that reopens cleanly.
//!
//! The test binary re-executes itself: with `RAVEL_WAL_CRASH_DIR` set, `crash_child` appends
//! and purges in a loop, printing every acknowledged index and purge point, until killed.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use ravel_core::command::Command;
use ravel_storage::{Storage, StorageOptions, TypeConfig, WalOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

const DIR_ENV: &str = "RAVEL_WAL_CRASH_DIR";

/// Rounds of spawn, run, kill -9, check.
const ROUNDS: usize = 4;

/// Acknowledged appends to wait for before each kill (varied per round).
const ACKS_BEFORE_KILL: usize = 150;

fn options() -> StorageOptions {
    StorageOptions {
        wal: WalOptions {
            segment_bytes: 8192,
            preallocate: true,
            cached_log_bytes: 16 * 1024,
            ..WalOptions::default()
        },
    }
}

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put {
            partition: 0,
            key: format!("k{index}").into_bytes(),
            value: b"\"crash\"".to_vec(),
            cas: None,
        }),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The child: runs only when re-executed by the parent test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    runtime().block_on(async move {
        let storage = Storage::open_with(Path::new(&dir), options()).unwrap();
        let mut log = storage.log_store();
        let state = log.get_log_state().await.unwrap();
        let mut next = state.last_log_id.map_or(0, |l| l.index + 1);
        let mut term = log
            .read_vote()
            .await
            .unwrap()
            .map_or(1, |v| v.leader_id.term);
        let mut round = 0u64;
        loop {
            round += 1;
            let batch = 1 + round % 13;
            log.blocking_append((next..next + batch).map(entry))
                .await
                .unwrap();
            next += batch;
            println!("ack {}", next - 1);
            if round.is_multiple_of(9) && next > 40 {
                let upto = next - 40;
                log.purge(LogId::new(CommittedLeaderId::new(1, 1), upto))
                    .await
                    .unwrap();
                println!("purged {upto}");
            }
            if round.is_multiple_of(17) {
                term += 1;
                log.save_vote(&Vote::new(term, 1)).await.unwrap();
                println!("vote {term}");
            }
        }
    });
}

/// What the child reported before it was killed.
#[derive(Default)]
struct Acked {
    last_index: Option<u64>,
    purged: Option<u64>,
    term: Option<u64>,
}

fn run_child_and_kill(dir: &Path, acks_before_kill: usize) -> Acked {
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Acked::default();
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = BufReader::new(stdout).lines();
    while acks < acks_before_kill && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else {
            break;
        };
        let mut words = line.split_whitespace();
        let (Some(what), Some(n)) = (words.next(), words.next().and_then(|n| n.parse().ok()))
        else {
            continue;
        };
        match what {
            "ack" => {
                acked.last_index = Some(n);
                acks += 1;
            }
            "purged" => acked.purged = Some(n),
            "vote" => acked.term = Some(n),
            _ => {}
        }
    }
    // SIGKILL: no destructor, no flush, mid-write as likely as not.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        acks >= acks_before_kill,
        "the child acknowledged only {acks} appends"
    );
    acked
}

/// Every index the child printed as acknowledged is present after kill -9, the log is
/// contiguous from just after the purge point, the purge point is at least the last one
/// reported, and the vote is at least the last one reported; over several kill rounds.
#[test]
fn kill_9_during_appends_and_purges_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let acked = run_child_and_kill(dir.path(), ACKS_BEFORE_KILL + round * 37);
        runtime().block_on(async {
            let storage = Storage::open_with(dir.path(), options()).unwrap();
            let mut log = storage.log_store();
            let state = log.get_log_state().await.unwrap();
            let purged = state.last_purged_log_id.map(|l| l.index);
            assert!(
                purged >= acked.purged,
                "round {round}: purge point went back"
            );
            let entries = log.try_get_log_entries(..).await.unwrap();
            let first = purged.map_or(0, |p| p + 1);
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(*e, entry(first + i as u64), "round {round}: hole or damage");
            }
            let last = entries.last().map(|e| e.log_id.index).or(purged);
            assert!(
                last >= acked.last_index,
                "round {round}: acknowledged {:?} but the log ends at {last:?}",
                acked.last_index
            );
            let term = log.read_vote().await.unwrap().map(|v| v.leader_id.term);
            assert!(term >= acked.term, "round {round}: vote went back");
        });
    }
}
