//! The Raft log's WAL through the public API: power loss (files cut back to what was synced,
//! then torn or garbage tails), recovery across segment rollover, purge and truncation,
//! corruption of a non-tail segment, and the in-place upgrade from the sled log.

mod common;
use common::phase;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use ravel_core::command::Command;
use ravel_storage::{LogStore, Storage, StorageError, StorageOptions, TypeConfig, WalOptions};
use std::path::{Path, PathBuf};

/// Small segments roll over often; a small cache makes most reads go to the segment files.
fn options(segment_bytes: u64, preallocate: bool) -> StorageOptions {
    StorageOptions {
        wal: WalOptions {
            segment_bytes,
            preallocate,
            cached_log_bytes: 4096,
            ..WalOptions::default()
        },
    }
}

fn open(dir: &Path, opts: &StorageOptions) -> Storage {
    Storage::open_with(dir, opts.clone()).unwrap()
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry whose content names its index and term, so a misplaced one is caught.
fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Put {
            partition: 0,
            key: format!("k{index}").into_bytes(),
            value: format!("\"t{term} {}\"", "v".repeat((index % 40) as usize)).into_bytes(),
            cas: None,
        }),
    }
}

async fn append(log: &mut LogStore, term: u64, indexes: std::ops::Range<u64>) {
    log.blocking_append(indexes.map(|i| entry(term, i)))
        .await
        .unwrap();
}

/// The whole log as (first index .. last index) with each entry checked against `entry()`.
async fn read_all(log: &mut LogStore) -> (Option<LogId<u64>>, Vec<Entry<TypeConfig>>) {
    let state = log.get_log_state().await.unwrap();
    let entries = log.try_get_log_entries(..).await.unwrap();
    let first = state.last_purged_log_id.map_or(0, |p| p.index + 1);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.log_id.index,
            first + i as u64,
            "hole or reorder in the log"
        );
        assert_eq!(*e, entry(e.log_id.leader_id.term, e.log_id.index));
    }
    assert_eq!(
        state.last_log_id,
        entries
            .last()
            .map(|e| e.log_id)
            .or(state.last_purged_log_id)
    );
    (state.last_purged_log_id, entries)
}

fn wal_dir(dir: &Path) -> PathBuf {
    dir.join(ravel_storage::WAL_DIR)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(wal_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// What a power failure may leave at the end of the tail after the synced bytes.
#[derive(Clone, Copy, Debug)]
enum Tail {
    Clean,
    /// The next record, cut in the middle.
    Torn,
    /// The next records with one payload byte flipped in the first.
    Flipped,
    /// Pseudo-random bytes.
    Garbage,
}

/// Copies the WAL to `to`, each segment cut to the bytes its last sync covered, then damages
/// the end of the last copied segment as `tail` says.
fn copy_synced(log: &LogStore, to: &Path, tail: Tail) {
    let extents = log.synced_wal_extents();
    std::fs::create_dir_all(wal_dir(to)).unwrap();
    let last = extents.len() - 1;
    for (i, (path, synced)) in extents.into_iter().enumerate() {
        let bytes = std::fs::read(&path).unwrap();
        let synced = synced as usize;
        let mut kept = bytes[..synced].to_vec();
        if i == last {
            let after = &bytes[synced..];
            // The next record if it was written (and not zero preallocation), else a made-up
            // one: length 100, some CRC, type Entry, 30 payload bytes.
            let next = if after.len() > 9 && after[..9].iter().any(|&b| b != 0) {
                let len = u32::from_le_bytes(after[..4].try_into().unwrap()) as usize;
                after[..(9 + len).min(after.len())].to_vec()
            } else {
                let mut made = vec![100, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 2];
                made.extend_from_slice(&[7; 100]);
                made
            };
            match tail {
                Tail::Clean => {}
                Tail::Torn => kept.extend_from_slice(&next[..next.len() / 2]),
                Tail::Flipped => {
                    let mut flipped = after.to_vec();
                    if flipped.len() < next.len() || next[..9] != flipped[..9] {
                        flipped = next.clone();
                    }
                    flipped[12] ^= 0x01;
                    kept.extend_from_slice(&flipped);
                }
                Tail::Garbage => {
                    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                    kept.extend((0..777).map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    }));
                }
            }
        }
        std::fs::write(wal_dir(to).join(path.file_name().unwrap()), kept).unwrap();
    }
}

/// After a power failure (files cut back to their last completed sync, plus a torn record, a
/// damaged record or garbage at the end), every entry whose append was acknowledged and the
/// last vote that `save_vote` returned for are there, and nothing written after the cut.
#[test]
fn power_loss_keeps_every_acknowledged_write() {
    for segment_bytes in [4096, 64 * 1024 * 1024] {
        for preallocate in [false, true] {
            for tail in [Tail::Clean, Tail::Torn, Tail::Flipped, Tail::Garbage] {
                let dir = tempfile::tempdir().unwrap();
                let crashed = tempfile::tempdir().unwrap();
                let opts = options(segment_bytes, preallocate);
                phase(async {
                    let storage = open(dir.path(), &opts);
                    let mut log = storage.log_store();
                    log.save_vote(&Vote::new(1, 1)).await.unwrap();
                    for start in (0..120).step_by(8) {
                        append(&mut log, 1, start..start + 8).await;
                    }
                    log.save_vote(&Vote::new(2, 1)).await.unwrap();
                    log.save_committed(Some(log_id(1, 100))).await.unwrap();
                    copy_synced(&log, crashed.path(), tail);
                    // Written after the copy: must not come back.
                    append(&mut log, 2, 120..130).await;
                    log.save_vote(&Vote::new(3, 1)).await.unwrap();
                });
                phase(async {
                    let storage = open(crashed.path(), &opts);
                    let mut log = storage.log_store();
                    let (purged, entries) = read_all(&mut log).await;
                    let what = format!("{segment_bytes} {preallocate} {tail:?}");
                    assert_eq!(purged, None, "{what}");
                    assert_eq!(entries.len(), 120, "{what}");
                    assert_eq!(
                        log.read_vote().await.unwrap(),
                        Some(Vote::new(2, 1)),
                        "{what}"
                    );
                    // The reopened log takes new writes after the cut.
                    append(&mut log, 3, 120..125).await;
                    assert_eq!(read_all(&mut log).await.1.len(), 125, "{what}");
                });
            }
        }
    }
}

/// Entries, vote, committed marker, truncations and purges survive reopen across many
/// segment rollovers, the purge point is right with no hole after it, and purging deletes
/// the segments it empties.
#[test]
fn recovery_across_rollover_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(2048, false);
    phase(async {
        let storage = open(dir.path(), &opts);
        let mut log = storage.log_store();
        for start in (0..400).step_by(7) {
            append(&mut log, 1, start..start + 7).await;
        }
        log.truncate(log_id(1, 350)).await.unwrap();
        append(&mut log, 2, 350..360).await;
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(2, 355))).await.unwrap();
        let before = segments(dir.path()).len();
        assert!(before > 10, "rollover did not happen ({before} segments)");
        log.purge(log_id(1, 299)).await.unwrap();
        let after = segments(dir.path()).len();
        assert!(
            after <= before / 2,
            "purge kept {after} of {before} segments"
        );
    });
    phase(async {
        let storage = open(dir.path(), &opts);
        let mut log = storage.log_store();
        let (purged, entries) = read_all(&mut log).await;
        assert_eq!(purged, Some(log_id(1, 299)));
        assert_eq!(entries.first().unwrap().log_id, log_id(1, 300));
        assert_eq!(entries.last().unwrap().log_id, log_id(2, 359));
        assert_eq!(entries.len(), 60);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 355)));
        // Purge everything, even past the last entry; the log then continues after it.
        log.purge(log_id(2, 400)).await.unwrap();
        assert_eq!(segments(dir.path()).len(), 1);
    });
    phase(async {
        let storage = open(dir.path(), &opts);
        let mut log = storage.log_store();
        let (purged, entries) = read_all(&mut log).await;
        assert_eq!((purged, entries.len()), (Some(log_id(2, 400)), 0));
        append(&mut log, 2, 401..403).await;
        assert_eq!(read_all(&mut log).await.1.len(), 2);
        // The size metric counts the WAL.
        assert!(storage.size_on_disk_bytes().unwrap() > 0);
    });
}

/// A truncation survives a process crash before any sync; after a power failure that undoes
/// it the old entries reappear (allowed: never acknowledged as ours after it), and the next
/// acknowledged append makes the truncation durable with it.
#[test]
fn truncate_then_crash_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cut1 = tempfile::tempdir().unwrap();
    let cut2 = tempfile::tempdir().unwrap();
    let opts = options(4096, true);
    phase(async {
        let storage = open(dir.path(), &opts);
        let mut log = storage.log_store();
        append(&mut log, 1, 0..100).await;
        log.truncate(log_id(1, 60)).await.unwrap();
        copy_synced(&log, cut1.path(), Tail::Clean);
        // Dropped without a sync: the truncation is only in the page cache.
    });
    phase(async {
        let mut log = open(cut1.path(), &opts).log_store();
        assert_eq!(read_all(&mut log).await.1.len(), 100);
    });
    phase(async {
        let mut log = open(dir.path(), &opts).log_store();
        assert_eq!(read_all(&mut log).await.1.len(), 60);
        append(&mut log, 2, 60..70).await;
        copy_synced(&log, cut2.path(), Tail::Torn);
    });
    for d in [dir.path(), cut2.path()] {
        phase(async {
            let mut log = open(d, &opts).log_store();
            let entries = read_all(&mut log).await.1;
            assert_eq!(entries.len(), 70);
            assert_eq!(entries[65].log_id, log_id(2, 65));
        });
    }
}

/// Damage in a segment that is not the last (a flipped byte, a zeroed stretch, a missing
/// file) is refused as corruption; it is never cut off or skipped like a torn tail.
#[test]
fn damaged_middle_segment_is_an_error() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("flipped byte", |p| {
            let mut b = std::fs::read(p).unwrap();
            let at = b.len() / 2;
            b[at] ^= 0x20;
            std::fs::write(p, b).unwrap();
        }),
        ("zeroed stretch", |p| {
            let mut b = std::fs::read(p).unwrap();
            let at = b.len() / 2;
            b[at..].fill(0);
            std::fs::write(p, b).unwrap();
        }),
        ("missing file", |p| std::fs::remove_file(p).unwrap()),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(2048, false);
        phase(async {
            let mut log = open(dir.path(), &opts).log_store();
            for start in (0..200).step_by(10) {
                append(&mut log, 1, start..start + 10).await;
            }
        });
        let files = segments(dir.path());
        assert!(files.len() >= 4);
        damage(&files[1]);
        let result = phase(async { Storage::open_with(dir.path(), opts.clone()).map(drop) });
        assert!(
            matches!(result, Err(StorageError::Corrupt { .. })),
            "{what}: {result:?}"
        );
    }
}

/// A directory written by the sled log store (entries in `raft_log`, vote, committed and
/// purge point in `raft_meta`, no `raft-wal/`) opens with all of it in a new WAL, the sled
/// trees are emptied, and a leftover half-built WAL from a crashed import is replaced.
#[test]
fn upgrade_from_sled_only_directory() {
    fn tagged<T: serde::Serialize>(value: &T) -> Vec<u8> {
        postcard::to_extend(value, vec![1u8]).unwrap()
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let log = db.open_tree("raft_log").unwrap();
        let meta = db.open_tree("raft_meta").unwrap();
        // Entry 10 was purged, but its removal did not happen before a crash.
        for i in 10..50u64 {
            log.insert(i.to_be_bytes(), tagged(&entry(1, i))).unwrap();
        }
        meta.insert("vote", tagged(&Vote::<u64>::new(4, 2)))
            .unwrap();
        meta.insert("committed", tagged(&Some(log_id(1, 40))))
            .unwrap();
        meta.insert("last_purged", tagged(&Some(log_id(1, 10))))
            .unwrap();
        db.flush().unwrap();
    }
    std::fs::create_dir(dir.path().join("raft-wal.tmp")).unwrap();
    std::fs::write(dir.path().join("raft-wal.tmp/junk"), b"half an import").unwrap();
    let opts = options(1024, false);
    for _ in 0..2 {
        phase(async {
            let mut log = open(dir.path(), &opts).log_store();
            let (purged, entries) = read_all(&mut log).await;
            assert_eq!(purged, Some(log_id(1, 10)));
            assert_eq!(entries.len(), 39);
            assert_eq!(entries[0].log_id, log_id(1, 11));
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 40)));
        });
        assert!(wal_dir(dir.path()).is_dir());
        assert!(!dir.path().join("raft-wal.tmp").exists());
        assert!(segments(dir.path()).len() > 1);
    }
    let db = sled::open(dir.path()).unwrap();
    assert!(db.open_tree("raft_log").unwrap().is_empty());
    assert!(db.open_tree("raft_meta").unwrap().is_empty());
}
