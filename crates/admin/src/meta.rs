//! The admin's metadata (clusters, replicas, the partition table) as ONE deterministic state
//! machine, with a durable store behind it.
//!
//! Every change is a [`MetaCommand`] applied by [`MetaState::apply`]: pure, no I/O, no clock, no
//! randomness, no hash-map iteration. That is the seam a replicated admin would put on Raft later:
//! the commands would become log entries and `apply` the state machine, unchanged.
//!
//! [`MetaStore`] runs commands one at a time under a lock: it clones the current state, applies
//! the command, writes the whole serialized state to sled, forces it to disk (sled's `flush()` is
//! only `sync_file_range` on Linux, so a real `fsync` of sled's data file follows), and only then
//! publishes the new state. Nothing is acknowledged, and no reader sees a state, before it is
//! durable. A restart therefore reloads exactly the last published state.
//!
//! This module must not talk to the network, and `apply` must stay free of side effects.

use ravel_core::{ClusterId, NodeId, PartitionTable, limits, table::ring_owners};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Name of the sled tree holding the metadata.
const META_TREE: &str = "meta";

/// Key of the one record holding the whole serialized [`MetaState`].
const STATE_KEY: &[u8] = b"state";

/// First byte of the stored record: the encoding of what follows (1 = postcard of `MetaState`).
/// A future layout gets a new tag, so an old binary refuses a newer file instead of misreading it.
const STATE_FORMAT_V1: u8 = 1;

/// sled 0.34's data file inside its directory; fsynced by hand because sled's own flush is not a
/// full fsync on Linux (see `notes/libraries.md` §3.2). Tied to sled's file layout, pinned `=0.34.7`.
const SLED_DATA_FILE: &str = "db";

/// A replica known to the admin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub node_id: NodeId,
    pub cluster_id: ClusterId,
    pub raft_addr: String,
    pub grpc_addr: String,
    /// The random token the replica registered with; registering again with it is idempotent.
    pub token: u64,
}

/// A cluster (one Raft group) known to the admin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: ClusterId,
    pub replicas: BTreeSet<NodeId>,
}

/// The whole metadata. Cloned on every change (it is small: P owners plus a few records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// P, fixed at the admin's first start.
    pub partitions: u32,
    /// The persisted partition table; routing reads it and never re-derives it.
    pub table: PartitionTable,
    pub clusters: BTreeMap<ClusterId, ClusterRecord>,
    pub replicas: BTreeMap<NodeId, ReplicaRecord>,
    /// True once a write may have been routed: from then on adding or removing clusters may not
    /// remap partitions (that needs migration), only the empty store may be re-balanced freely.
    pub has_data: bool,
    /// Next node id to hand out (ids start at 1 and are never reused).
    pub next_node_id: NodeId,
    /// Next cluster id to hand out (ids start at 1 and are never reused).
    pub next_cluster_id: ClusterId,
    /// Every registration token ever seen, with the node id it got. Kept after removal, so that a
    /// removed replica cannot come back under its old identity.
    pub tokens: BTreeMap<u64, NodeId>,
    /// The first replica of each cluster: the one that initializes its Raft group. Registering it
    /// again answers `bootstrap = true` again (its first reply may have been lost).
    pub founders: BTreeMap<ClusterId, NodeId>,
}

/// A change to the metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A replica registers (first start, or again after a crash before it stored its identity).
    RegisterReplica {
        token: u64,
        raft_addr: String,
        grpc_addr: String,
        new_cluster: bool,
    },
    /// A replica leaves the store (`ravel_node kill`).
    RemoveReplica { node_id: NodeId, force: bool },
    /// A write is about to be routed: from now on the table only changes through migration.
    MarkHasData,
}

/// What an applied command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaOutcome {
    Registered {
        node_id: NodeId,
        cluster_id: ClusterId,
        /// The replica must initialize a new Raft group with itself as the only voter.
        bootstrap: bool,
        /// The partition table's epoch changed.
        table_changed: bool,
    },
    Removed {
        cluster_id: ClusterId,
        /// The replica was its cluster's last, so the cluster is gone too.
        cluster_removed: bool,
        table_changed: bool,
    },
    HasDataMarked,
}

impl MetaOutcome {
    /// Whether the partition table changed (clusters must then be sent their new assignment).
    #[must_use]
    pub fn table_changed(&self) -> bool {
        match self {
            Self::Registered { table_changed, .. } | Self::Removed { table_changed, .. } => {
                *table_changed
            }
            Self::HasDataMarked => false,
        }
    }
}

/// A deterministic "no" from [`MetaState::apply`]: nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaRefusal {
    #[error("no cluster exists yet: start a replica with -l first")]
    NoCluster,
    #[error(
        "replica is the last one of cluster {cluster}, which owns partitions holding keys; \
         removing it would lose them. Draining a cluster's partitions to other clusters arrives \
         with partition migration; until then pass --force to remove it and drop its partitions"
    )]
    LastReplicaHoldsKeys { cluster: ClusterId },
    #[error("no replica with node id {node_id}")]
    UnknownReplica { node_id: NodeId },
    #[error(
        "replica {node_id} was removed from the store; its token cannot register again \
         (start it with a fresh storage directory)"
    )]
    ReplicaRemoved { node_id: NodeId },
}

impl MetaRefusal {
    /// Stable snake_case code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoCluster => "no_cluster",
            Self::LastReplicaHoldsKeys { .. } => "last_replica_holds_keys",
            Self::UnknownReplica { .. } => "unknown_replica",
            Self::ReplicaRemoved { .. } => "replica_removed",
        }
    }
}

/// Why the metadata could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(transparent)]
    Refused(#[from] MetaRefusal),
    #[error("metadata storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("metadata I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("metadata encoding error: {0}")]
    Codec(#[from] postcard::Error),
    #[error("stored metadata has unknown format tag {0} (written by a newer ravel_admin?)")]
    UnknownFormat(u8),
    #[error("stored metadata is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the partition count is fixed at the admin's first start: the stored count is {stored}, \
         --partitions asked for {given} (omit --partitions or pass {stored})"
    )]
    PartitionsFixed { stored: u32, given: u32 },
    #[error("--partitions must be in 1..={max}, got {given}", max = limits::MAX_PARTITIONS)]
    InvalidPartitions { given: u32 },
    #[error("metadata background task failed: {0}")]
    Task(String),
}

impl MetaError {
    /// Stable snake_case code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.code(),
            Self::Storage(_) => "meta_storage",
            Self::Io(_) => "meta_io",
            Self::Codec(_) => "meta_codec",
            Self::UnknownFormat(_) => "meta_unknown_format",
            Self::Corrupt(_) => "meta_corrupt",
            Self::PartitionsFixed { .. } => "partitions_fixed",
            Self::InvalidPartitions { .. } => "invalid_partitions",
            Self::Task(_) => "meta_task",
        }
    }
}

impl MetaState {
    /// The state of a brand-new store of `partitions` partitions: no cluster, empty table.
    #[must_use]
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions,
            table: PartitionTable::unassigned(partitions),
            clusters: BTreeMap::new(),
            replicas: BTreeMap::new(),
            has_data: false,
            next_node_id: 1,
            next_cluster_id: 1,
            tokens: BTreeMap::new(),
            founders: BTreeMap::new(),
        }
    }

    /// Replicas of `cluster`, in node-id order.
    #[must_use]
    pub fn replicas_of(&self, cluster: ClusterId) -> Vec<&ReplicaRecord> {
        self.clusters
            .get(&cluster)
            .map(|c| {
                c.replicas
                    .iter()
                    .filter_map(|n| self.replicas.get(n))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies `cmd`. Deterministic: the same state and command always give the same result.
    /// On a refusal `self` is left unchanged.
    pub fn apply(&mut self, cmd: MetaCommand) -> Result<MetaOutcome, MetaRefusal> {
        match cmd {
            MetaCommand::RegisterReplica {
                token,
                raft_addr,
                grpc_addr,
                new_cluster,
            } => self.register(token, raft_addr, grpc_addr, new_cluster),
            MetaCommand::RemoveReplica { node_id, force } => self.remove(node_id, force),
            MetaCommand::MarkHasData => {
                self.has_data = true;
                Ok(MetaOutcome::HasDataMarked)
            }
        }
    }

    fn register(
        &mut self,
        token: u64,
        raft_addr: String,
        grpc_addr: String,
        new_cluster: bool,
    ) -> Result<MetaOutcome, MetaRefusal> {
        if let Some(&node_id) = self.tokens.get(&token) {
            // Same token, same identity, whatever `new_cluster` says now. The addresses are
            // refreshed: a replica restarted on other ports is still the same replica.
            let Some(record) = self.replicas.get_mut(&node_id) else {
                return Err(MetaRefusal::ReplicaRemoved { node_id });
            };
            record.raft_addr = raft_addr;
            record.grpc_addr = grpc_addr;
            let cluster_id = record.cluster_id;
            return Ok(MetaOutcome::Registered {
                node_id,
                cluster_id,
                bootstrap: self.founders.get(&cluster_id) == Some(&node_id),
                table_changed: false,
            });
        }

        let (cluster_id, bootstrap) = if new_cluster {
            (self.next_cluster_id, true)
        } else {
            // The cluster with the fewest replicas; ties go to the lowest id (BTreeMap order and
            // `min_by_key` keeping the first minimum).
            let Some(cluster) = self.clusters.values().min_by_key(|c| c.replicas.len()) else {
                return Err(MetaRefusal::NoCluster);
            };
            (cluster.id, false)
        };

        let node_id = self.next_node_id;
        self.next_node_id += 1;
        self.tokens.insert(token, node_id);
        self.replicas.insert(
            node_id,
            ReplicaRecord {
                node_id,
                cluster_id,
                raft_addr,
                grpc_addr,
                token,
            },
        );
        let mut table_changed = false;
        if new_cluster {
            self.next_cluster_id += 1;
            self.clusters.insert(
                cluster_id,
                ClusterRecord {
                    id: cluster_id,
                    replicas: BTreeSet::from([node_id]),
                },
            );
            self.founders.insert(cluster_id, node_id);
            // With keys stored, partitions may only move by migration: the new cluster starts
            // empty. Without keys, re-balancing over all clusters moves nothing real.
            if !self.has_data {
                table_changed = self.recompute_table();
            }
        } else if let Some(cluster) = self.clusters.get_mut(&cluster_id) {
            cluster.replicas.insert(node_id);
        }
        Ok(MetaOutcome::Registered {
            node_id,
            cluster_id,
            bootstrap,
            table_changed,
        })
    }

    fn remove(&mut self, node_id: NodeId, force: bool) -> Result<MetaOutcome, MetaRefusal> {
        let Some(record) = self.replicas.get(&node_id) else {
            return Err(MetaRefusal::UnknownReplica { node_id });
        };
        let cluster_id = record.cluster_id;
        let others = self
            .clusters
            .get(&cluster_id)
            .map_or(0, |c| c.replicas.iter().filter(|&&n| n != node_id).count());
        let last = others == 0;
        let owns = self.table.count_of(cluster_id) > 0;
        if last && owns && self.has_data && !force {
            return Err(MetaRefusal::LastReplicaHoldsKeys {
                cluster: cluster_id,
            });
        }

        self.replicas.remove(&node_id);
        let mut table_changed = false;
        if last {
            self.clusters.remove(&cluster_id);
            self.founders.remove(&cluster_id);
            if self.has_data {
                // Forced: the cluster's partitions become unowned (their keys are gone with it).
                table_changed = self.unown(cluster_id);
            } else {
                table_changed = self.recompute_table();
            }
        } else if let Some(cluster) = self.clusters.get_mut(&cluster_id) {
            cluster.replicas.remove(&node_id);
        }
        Ok(MetaOutcome::Removed {
            cluster_id,
            cluster_removed: last,
            table_changed,
        })
    }

    /// Sets the table to the ring's proposal over the current clusters; bumps the epoch if any
    /// owner changed. Returns whether it did.
    fn recompute_table(&mut self) -> bool {
        let clusters: Vec<ClusterId> = self.clusters.keys().copied().collect();
        let owners = ring_owners(&clusters, self.partitions);
        if owners == self.table.owners {
            return false;
        }
        self.table.owners = owners;
        self.table.epoch += 1;
        true
    }

    /// Makes every partition of `cluster` unowned; bumps the epoch if there was any.
    fn unown(&mut self, cluster: ClusterId) -> bool {
        let mut changed = false;
        for owner in &mut self.table.owners {
            if *owner == Some(cluster) {
                *owner = None;
                changed = true;
            }
        }
        if changed {
            self.table.epoch += 1;
        }
        changed
    }

    /// Checks invariants a loaded state must satisfy, so a damaged file fails loudly at start.
    fn validate(&self) -> Result<(), MetaError> {
        let corrupt = |what: String| Err(MetaError::Corrupt(what));
        if self.table.partitions() != self.partitions {
            return corrupt(format!(
                "table has {} partitions, header says {}",
                self.table.partitions(),
                self.partitions
            ));
        }
        for (id, cluster) in &self.clusters {
            if *id != cluster.id || *id >= self.next_cluster_id {
                return corrupt(format!("cluster record {id} is inconsistent"));
            }
            for n in &cluster.replicas {
                if self.replicas.get(n).map(|r| r.cluster_id) != Some(*id) {
                    return corrupt(format!("cluster {id} lists replica {n} it does not hold"));
                }
            }
        }
        for (id, r) in &self.replicas {
            if *id != r.node_id || *id >= self.next_node_id {
                return corrupt(format!("replica record {id} is inconsistent"));
            }
            if !self
                .clusters
                .get(&r.cluster_id)
                .is_some_and(|c| c.replicas.contains(id))
            {
                return corrupt(format!(
                    "replica {id} names missing cluster {}",
                    r.cluster_id
                ));
            }
        }
        Ok(())
    }
}

/// Encodes a state as stored: format tag, then postcard.
fn encode(state: &MetaState) -> Result<Vec<u8>, MetaError> {
    let mut bytes = vec![STATE_FORMAT_V1];
    bytes.extend(postcard::to_stdvec(state)?);
    Ok(bytes)
}

/// Decodes a stored state, refusing unknown format tags.
fn decode(bytes: &[u8]) -> Result<MetaState, MetaError> {
    match bytes.split_first() {
        Some((&STATE_FORMAT_V1, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&tag, _)) => Err(MetaError::UnknownFormat(tag)),
        None => Err(MetaError::Corrupt("empty state record".into())),
    }
}

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
        let next = Arc::new(next);
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        if has_data {
            self.has_data.store(true, Ordering::Release);
        }
        Ok(outcome)
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

    fn register(token: u64, new_cluster: bool) -> MetaCommand {
        MetaCommand::RegisterReplica {
            token,
            raft_addr: format!("127.0.0.1:{}", 7000 + token),
            grpc_addr: format!("127.0.0.1:{}", 8000 + token),
            new_cluster,
        }
    }

    fn registered(outcome: MetaOutcome) -> (NodeId, ClusterId, bool, bool) {
        match outcome {
            MetaOutcome::Registered {
                node_id,
                cluster_id,
                bootstrap,
                table_changed,
            } => (node_id, cluster_id, bootstrap, table_changed),
            other => panic!("expected Registered, got {other:?}"),
        }
    }

    /// Registering again with the same token returns the same identity and changes no ids,
    /// even if the second call asks for a new cluster.
    #[test]
    fn registration_is_idempotent_by_token() {
        let mut s = MetaState::new(64);
        let first = registered(s.apply(register(10, true)).unwrap());
        assert_eq!(first, (1, 1, true, true));
        let snapshot = s.clone();
        let again = registered(s.apply(register(10, true)).unwrap());
        assert_eq!(again, (1, 1, true, false));
        assert_eq!(
            s, snapshot,
            "a repeated registration must not change the state"
        );
        // A joiner repeated keeps its identity and never becomes a founder.
        let joiner = registered(s.apply(register(11, false)).unwrap());
        assert_eq!(joiner, (2, 1, false, false));
        assert_eq!(registered(s.apply(register(11, false)).unwrap()), joiner);
        assert_eq!(s.next_node_id, 3);
        assert_eq!(s.next_cluster_id, 2);
    }

    /// A repeated registration from new addresses keeps the identity and records the addresses.
    #[test]
    fn reregistration_refreshes_addresses() {
        let mut s = MetaState::new(8);
        s.apply(register(1, true)).unwrap();
        let outcome = s
            .apply(MetaCommand::RegisterReplica {
                token: 1,
                raft_addr: "10.0.0.1:1".into(),
                grpc_addr: "10.0.0.1:2".into(),
                new_cluster: true,
            })
            .unwrap();
        assert_eq!(registered(outcome).0, 1);
        assert_eq!(s.replicas[&1].grpc_addr, "10.0.0.1:2");
        assert_eq!(s.replicas[&1].raft_addr, "10.0.0.1:1");
    }

    /// Without `new_cluster` a replica joins the cluster with the fewest replicas, lowest id on
    /// ties; with no cluster at all it is refused and nothing is allocated.
    #[test]
    fn joiners_go_to_the_smallest_cluster() {
        let mut s = MetaState::new(64);
        assert_eq!(s.apply(register(1, false)), Err(MetaRefusal::NoCluster));
        assert_eq!(s, MetaState::new(64), "a refusal must not change the state");

        s.apply(register(1, true)).unwrap(); // node 1, cluster 1
        s.apply(register(2, true)).unwrap(); // node 2, cluster 2
        // Tie 1-1: lowest id.
        assert_eq!(registered(s.apply(register(3, false)).unwrap()).1, 1);
        // Cluster 2 now has fewer.
        assert_eq!(registered(s.apply(register(4, false)).unwrap()).1, 2);
        // Tie 2-2 again: cluster 1.
        assert_eq!(registered(s.apply(register(5, false)).unwrap()).1, 1);
        assert_eq!(
            s.replicas_of(1)
                .iter()
                .map(|r| r.node_id)
                .collect::<Vec<_>>(),
            [1, 3, 5]
        );
        assert_eq!(
            s.replicas_of(2)
                .iter()
                .map(|r| r.node_id)
                .collect::<Vec<_>>(),
            [2, 4]
        );
    }

    /// Before any key exists, each new cluster re-balances the table over all clusters (the
    /// ring's proposal) and bumps the epoch.
    #[test]
    fn table_is_recomputed_while_empty() {
        let mut s = MetaState::new(256);
        s.apply(register(1, true)).unwrap();
        assert_eq!(s.table.epoch, 1);
        assert!(s.table.owners.iter().all(|o| *o == Some(1)));
        let (_, c2, _, changed) = registered(s.apply(register(2, true)).unwrap());
        assert!(changed);
        assert_eq!(s.table.epoch, 2);
        assert_eq!(s.table.owners, ring_owners(&[1, c2], 256));
        assert!(s.table.count_of(c2) > 0);
        // A joiner of an existing cluster moves nothing.
        let (_, _, _, changed) = registered(s.apply(register(3, false)).unwrap());
        assert!(!changed);
        assert_eq!(s.table.epoch, 2);
    }

    /// Once keys exist, a new cluster gets no partitions and the table does not change.
    #[test]
    fn new_cluster_gets_nothing_once_keys_exist() {
        let mut s = MetaState::new(128);
        s.apply(register(1, true)).unwrap();
        s.apply(MetaCommand::MarkHasData).unwrap();
        let before = s.table.clone();
        let (_, c2, bootstrap, changed) = registered(s.apply(register(2, true)).unwrap());
        assert!(bootstrap);
        assert!(!changed);
        assert_eq!(s.table, before);
        assert_eq!(s.table.count_of(c2), 0);
        assert!(s.clusters.contains_key(&c2));
    }

    /// The last replica of a cluster that owns partitions holding keys is refused without
    /// `force`; with `force` the cluster goes and its partitions become unowned.
    #[test]
    fn last_replica_with_keys_needs_force() {
        let mut s = MetaState::new(32);
        s.apply(register(1, true)).unwrap();
        s.apply(MetaCommand::MarkHasData).unwrap();
        let before = s.clone();
        let refusal = s.apply(MetaCommand::RemoveReplica {
            node_id: 1,
            force: false,
        });
        assert_eq!(
            refusal,
            Err(MetaRefusal::LastReplicaHoldsKeys { cluster: 1 })
        );
        assert!(refusal.unwrap_err().to_string().contains("--force"));
        assert_eq!(s, before);

        let outcome = s
            .apply(MetaCommand::RemoveReplica {
                node_id: 1,
                force: true,
            })
            .unwrap();
        assert_eq!(
            outcome,
            MetaOutcome::Removed {
                cluster_id: 1,
                cluster_removed: true,
                table_changed: true
            }
        );
        assert!(s.clusters.is_empty() && s.replicas.is_empty());
        assert!(s.table.owners.iter().all(Option::is_none));
        assert_eq!(s.table.epoch, before.table.epoch + 1);
        // Its token is retired and the id is never reused.
        assert_eq!(
            s.apply(register(1, true)),
            Err(MetaRefusal::ReplicaRemoved { node_id: 1 })
        );
        assert_eq!(registered(s.apply(register(2, true)).unwrap()).0, 2);
    }

    /// Removing a non-last replica, or the last replica of a cluster without partitions or of
    /// an empty store, needs no force; an empty store re-balances over the remaining clusters.
    #[test]
    fn removals_that_need_no_force() {
        let mut s = MetaState::new(64);
        s.apply(register(1, true)).unwrap(); // n1 c1
        s.apply(register(2, true)).unwrap(); // n2 c2
        s.apply(register(3, false)).unwrap(); // n3 c1
        let epoch = s.table.epoch;
        let out = s
            .apply(MetaCommand::RemoveReplica {
                node_id: 3,
                force: false,
            })
            .unwrap();
        assert!(!out.table_changed());
        assert_eq!(s.clusters[&1].replicas, BTreeSet::from([1]));

        // Empty store: removing cluster 2 gives everything back to cluster 1.
        let out = s
            .apply(MetaCommand::RemoveReplica {
                node_id: 2,
                force: false,
            })
            .unwrap();
        assert!(out.table_changed());
        assert_eq!(s.table.epoch, epoch + 1);
        assert!(s.table.owners.iter().all(|o| *o == Some(1)));

        // With keys, a cluster that owns nothing may still go without force.
        s.apply(MetaCommand::MarkHasData).unwrap();
        s.apply(register(4, true)).unwrap(); // n4 c3, no partitions
        let out = s
            .apply(MetaCommand::RemoveReplica {
                node_id: 4,
                force: false,
            })
            .unwrap();
        assert!(!out.table_changed());
        assert!(!s.clusters.contains_key(&3));
        assert_eq!(
            s.apply(MetaCommand::RemoveReplica {
                node_id: 99,
                force: true
            }),
            Err(MetaRefusal::UnknownReplica { node_id: 99 })
        );
    }

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

    /// A stored record with an unknown format tag is refused rather than misread.
    #[test]
    fn unknown_format_is_refused() {
        assert!(matches!(
            decode(&[9, 1, 2]),
            Err(MetaError::UnknownFormat(9))
        ));
        let s = MetaState::new(4);
        assert_eq!(decode(&encode(&s).unwrap()).unwrap(), s);
    }
}
