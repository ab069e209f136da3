//! [`MetaStore`], the durable home of the state: sled-backed, one command at a time, each
//! persisted and fsynced before it is published.

use super::format::{decode, encode};
use super::{MetaCommand, MetaError, MetaOutcome, MetaState};
use ravel_core::limits;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Name of the sled tree holding the metadata.
const META_TREE: &str = "meta";

/// Key of the one record holding the whole serialized [`MetaState`].
const STATE_KEY: &[u8] = b"state";

/// sled 0.34's data file inside its directory; fsynced by hand because sled's own flush is not a
/// full fsync on Linux: it ends in `sync_file_range`, which flushes neither the drive's write
/// cache nor a grown file size (the storage crate's `flusher` module says more). Tied to sled's
/// file layout, pinned `=0.34.7`.
const SLED_DATA_FILE: &str = "db";

/// The durable home of [`MetaState`]. One per admin process.
pub struct MetaStore {
    db: sled::Db,
    tree: sled::Tree,
    dir: PathBuf,
    current: RwLock<Arc<MetaState>>,
    /// Mirrors `current().has_data` for the per-write fast path of [`Self::ensure_has_data`].
    has_data: AtomicBool,
    /// Serialises commands: one clone-apply-persist-publish at a time.
    write: tokio::sync::Mutex<()>,
    /// The epoch of the published table, for [`Self::table_changed_from`].
    table_epoch: tokio::sync::watch::Sender<u64>,
}

impl MetaStore {
    /// Opens (or creates) the metadata in directory `dir`. Blocking: call it at startup or from
    /// `spawn_blocking`.
    ///
    /// On the first start the partition count is `partitions` or
    /// [`limits::DEFAULT_PARTITIONS`], and is stored at once; later starts must not ask for a
    /// different one.
    pub fn open(dir: &Path, partitions: Option<u32>) -> Result<Self, MetaError> {
        if let Some(given) = partitions
            && !(1..=limits::MAX_PARTITIONS).contains(&given)
        {
            return Err(MetaError::InvalidPartitions { given });
        }
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree(META_TREE)?;
        let stored = tree.get(STATE_KEY)?.map(|b| decode(&b)).transpose()?;
        let state = match stored {
            Some(state) => {
                state.validate()?;
                if let Some(given) = partitions
                    && given != state.partitions
                {
                    return Err(MetaError::PartitionsFixed {
                        stored: state.partitions,
                        given,
                    });
                }
                state
            }
            None => {
                let state = MetaState::new(partitions.unwrap_or(limits::DEFAULT_PARTITIONS));
                persist_blocking(&db, &tree, dir, &encode(&state)?)?;
                // The directory entries sled just created must survive a power loss too.
                std::fs::File::open(dir)?.sync_all()?;
                state
            }
        };
        Ok(Self {
            table_epoch: tokio::sync::watch::Sender::new(state.table.epoch),
            has_data: AtomicBool::new(state.has_data),
            current: RwLock::new(Arc::new(state)),
            db,
            tree,
            dir: dir.to_path_buf(),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// The current state; cheap (an Arc clone), never blocks on I/O.
    pub fn current(&self) -> Arc<MetaState> {
        // A poisoned lock still holds a whole, published Arc: writers only swap the pointer.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Applies `cmd` and returns once the new state is durable and published. A refusal
    /// ([`MetaError::Refused`]) changes nothing. On an I/O error the new state is not published;
    /// whether it reached the disk is unknown (it is complete either way: one record).
    pub async fn execute(&self, cmd: MetaCommand) -> Result<MetaOutcome, MetaError> {
        let _guard = self.write.lock().await;
        let old = self.current();
        let mut next = (*old).clone();
        let outcome = next.apply(cmd)?;
        if next == *old {
            // Nothing to write (e.g. a repeated registration): the old state is already durable.
            return Ok(outcome);
        }
        let bytes = encode(&next)?;
        let (db, tree, dir) = (self.db.clone(), self.tree.clone(), self.dir.clone());
        tokio::task::spawn_blocking(move || persist_blocking(&db, &tree, &dir, &bytes))
            .await
            .map_err(|e| MetaError::Task(e.to_string()))??;
        let has_data = next.has_data;
        let epoch = next.table.epoch;
        let next = Arc::new(next);
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        self.table_epoch.send_if_modified(|published| {
            let changed = *published != epoch;
            *published = epoch;
            changed
        });
        if has_data {
            self.has_data.store(true, Ordering::Release);
        }
        Ok(outcome)
    }

    /// Resolves once the published table's epoch is not `epoch` (at once if it already is not):
    /// a request refused because its partition moved waits here for the switch.
    pub async fn table_changed_from(&self, epoch: u64) {
        let mut published = self.table_epoch.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail while we are borrowed.
        let _ = published.wait_for(|e| *e != epoch).await;
    }

    /// Makes sure `has_data` is true and durable before the first write is routed (fast path: an
    /// atomic check; slow path: persist under the meta lock, which also serialises it with table
    /// changes). Returns an error only if persisting failed.
    pub async fn ensure_has_data(&self) -> Result<(), MetaError> {
        if self.has_data.load(Ordering::Acquire) {
            return Ok(());
        }
        self.execute(MetaCommand::MarkHasData).await.map(|_| ())
    }
}

/// Writes the state record and forces it to stable storage: sled's flush, then an fsync of
/// sled's data file (sled's flush is `sync_file_range`, which survives a crash but not a power
/// loss). Blocking.
fn persist_blocking(
    db: &sled::Db,
    tree: &sled::Tree,
    dir: &Path,
    bytes: &[u8],
) -> Result<(), MetaError> {
    tree.insert(STATE_KEY, bytes)?;
    db.flush()?;
    std::fs::File::open(dir.join(SLED_DATA_FILE))?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::format::STATE_FORMAT_V1;
    use crate::meta::test_support::{adv, register, start};
    use crate::meta::{ClusterRecord, MoveStep, ReplicaRecord, plan_moves};
    use ravel_core::{ClusterId, NodeId, PartitionTable};
    use serde::Serialize;
    use std::collections::BTreeMap;

    /// What `execute` acknowledged is what a reopened store loads, and P is fixed at first start.
    #[tokio::test]
    async fn persistence_round_trip_and_fixed_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let store = MetaStore::open(dir.path(), Some(16)).unwrap();
            store.execute(register(1, true)).await.unwrap();
            store.execute(register(2, false)).await.unwrap();
            store.ensure_has_data().await.unwrap();
            store.execute(register(3, true)).await.unwrap();
            let err = store
                .execute(MetaCommand::RemoveReplica {
                    node_id: 1,
                    force: false,
                })
                .await;
            assert!(err.is_ok(), "cluster 1 has another replica: {err:?}");
            (*store.current()).clone()
        };
        assert!(expected.has_data);

        let reopened = MetaStore::open(dir.path(), None).unwrap();
        assert_eq!(*reopened.current(), expected);
        // The fast path is primed from the loaded state.
        assert!(reopened.has_data.load(Ordering::Acquire));
        drop(reopened);

        let same = MetaStore::open(dir.path(), Some(16)).unwrap();
        assert_eq!(same.current().partitions, 16);
        drop(same);
        match MetaStore::open(dir.path(), Some(32)) {
            Err(MetaError::PartitionsFixed {
                stored: 16,
                given: 32,
            }) => {}
            Err(other) => panic!("expected PartitionsFixed, got {other}"),
            Ok(_) => panic!("a different P must be refused"),
        }
    }

    /// A fresh store takes the default P, and out-of-range P is refused before anything is written.
    #[test]
    fn default_and_invalid_partitions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            MetaStore::open(&dir.path().join("a"), Some(0)),
            Err(MetaError::InvalidPartitions { given: 0 })
        ));
        assert!(matches!(
            MetaStore::open(&dir.path().join("a"), Some(limits::MAX_PARTITIONS + 1)),
            Err(MetaError::InvalidPartitions { .. })
        ));
        let store = MetaStore::open(&dir.path().join("b"), None).unwrap();
        assert_eq!(store.current().partitions, limits::DEFAULT_PARTITIONS);
        assert_eq!(
            store.current().table.owners.len(),
            limits::DEFAULT_PARTITIONS as usize
        );
    }

    /// A state with moves in progress and a draining cluster survives a reopen exactly, and a
    /// format-1 record (before migration) is upgraded on load.
    #[tokio::test]
    async fn persistence_round_trip_with_moves() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let store = MetaStore::open(dir.path(), Some(32)).unwrap();
            store.execute(register(1, true)).await.unwrap();
            store.ensure_has_data().await.unwrap();
            store.execute(register(2, true)).await.unwrap();
            store.execute(register(3, true)).await.unwrap();
            // A move to cluster 3 keeps it from leaving at once: it drains instead.
            let plan = plan_moves(&store.current());
            let m = plan.iter().find(|m| m.target == 3).copied().unwrap();
            store
                .execute(start(m.partition, m.source, m.target))
                .await
                .unwrap();
            for step in [
                MoveStep::Exporting,
                MoveStep::Precopying,
                MoveStep::Freezing,
            ] {
                store.execute(adv(m.partition, step, 5)).await.unwrap();
            }
            let out = store
                .execute(MetaCommand::RemoveReplica {
                    node_id: 3,
                    force: false,
                })
                .await;
            assert!(matches!(out, Ok(MetaOutcome::Draining { .. })), "{out:?}");
            (*store.current()).clone()
        };
        assert_eq!(expected.moves.len(), 1);
        let reopened = MetaStore::open(dir.path(), None).unwrap();
        assert_eq!(*reopened.current(), expected);

        // Format 1 upgrade: the old layout is the new one's prefix of fields.
        #[derive(Serialize)]
        struct V1<'a> {
            partitions: u32,
            table: &'a PartitionTable,
            clusters: &'a BTreeMap<ClusterId, ClusterRecord>,
            replicas: &'a BTreeMap<NodeId, ReplicaRecord>,
            has_data: bool,
            next_node_id: NodeId,
            next_cluster_id: ClusterId,
            tokens: &'a BTreeMap<u64, NodeId>,
            founders: &'a BTreeMap<ClusterId, NodeId>,
        }
        let mut old = MetaState::new(16);
        old.apply(register(1, true)).unwrap();
        old.apply(MetaCommand::MarkHasData).unwrap();
        let mut bytes = vec![STATE_FORMAT_V1];
        bytes.extend(
            postcard::to_stdvec(&V1 {
                partitions: old.partitions,
                table: &old.table,
                clusters: &old.clusters,
                replicas: &old.replicas,
                has_data: old.has_data,
                next_node_id: old.next_node_id,
                next_cluster_id: old.next_cluster_id,
                tokens: &old.tokens,
                founders: &old.founders,
            })
            .unwrap(),
        );
        let upgraded = decode(&bytes).unwrap();
        assert_eq!(upgraded, old);
    }
}
