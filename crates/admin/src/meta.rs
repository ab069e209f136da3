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
//! # Two regimes, and migration
//!
//! While the store holds no keys (`has_data == false`) every change of the cluster set recomputes
//! the table directly from the ring: nothing real moves, and each such table is an *assignment*
//! that clusters apply with `Assign` (`assignment_epoch`). Once it holds keys, a change of the
//! cluster set only recomputes `target`, the desired owners (the ring over the clusters that are
//! not draining); [`plan_moves`] lists the partitions whose owner differs from their target, and
//! each is moved by the mover through the steps of a [`MoveRecord`]. Every step is persisted here
//! *before* the mover takes it, so a restarted admin repeats the persisted step (each is
//! idempotent at the nodes) and carries on. The table itself then only changes through
//! [`MetaCommand::SwitchOwner`] (after the target serves the partition) or a forced removal.
//!
//! This module must not talk to the network, and `apply` must stay free of side effects: times
//! a move records (for its duration and write pause) arrive inside the commands.

use ravel_core::{ClusterId, NodeId, PartitionId, PartitionTable, limits, table::ring_owners};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Name of the sled tree holding the metadata.
const META_TREE: &str = "meta";

/// Key of the one record holding the whole serialized [`MetaState`].
const STATE_KEY: &[u8] = b"state";

/// First byte of the stored record: the encoding of what follows (1 = postcard of the layout
/// before migration, [`MetaStateV1`]; 2 = postcard of `MetaState`). A new layout gets a new tag,
/// so an old binary refuses a newer file instead of misreading it, and a new binary upgrades an
/// old one on load.
const STATE_FORMAT_V1: u8 = 1;
const STATE_FORMAT_V2: u8 = 2;

/// sled 0.34's data file inside its directory; fsynced by hand because sled's own flush is not a
/// full fsync on Linux: it ends in `sync_file_range`, which flushes neither the drive's write
/// cache nor a grown file size (the storage crate's `flusher` module says more). Tied to sled's
/// file layout, pinned `=0.34.7`.
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
    /// Epoch of the last table pushed to clusters with `Assign` (every table of the no-data
    /// regime). Later epochs come from moves, which make their targets serve by migration steps,
    /// so a cluster that applied this epoch serves exactly what the table gives it.
    pub assignment_epoch: u64,
    /// The desired owners: the ring over the clusters that are not draining, recomputed whenever
    /// the cluster set changes. Equal to `table.owners` while the store holds no keys.
    pub target: Vec<Option<ClusterId>>,
    /// Clusters being emptied before their removal; they are never a move's target.
    pub draining: BTreeSet<ClusterId>,
    /// Moves in progress, each with the step persisted before it is taken.
    pub moves: BTreeMap<PartitionId, MoveRecord>,
    /// Largest write pause (freeze to table switch) of any finished move, in milliseconds.
    pub max_write_pause_ms: u64,
}

/// The step a move has reached. Persisted *before* the step's action is taken, so that a
/// restarted admin repeats it (every action is idempotent). A move only goes forward (in the
/// order of [`MoveStep::next`], not the declaration order, which is the on-disk encoding:
/// append, never reorder), except to [`MoveStep::Aborting`] before [`MoveStep::Activating`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveStep {
    /// Recorded; nothing sent yet.
    Planned,
    /// FREEZE at the source (writes refused from now on), then the copy while frozen: the
    /// change log's last entries after the pre-copy or, for a move this admin run did not
    /// pre-copy, PREPARE_INCOMING and the whole partition.
    Freezing,
    /// The copy while frozen as a step of its own, as earlier versions took it (a record one
    /// persisted at this step still resumes here).
    Copying,
    /// RELEASE at the source as a step of its own, as earlier versions took it.
    Releasing,
    /// RELEASE at the source (it stops serving reads), ACTIVATE at the target, then the table
    /// switch. From here the move only goes forward.
    Activating,
    /// The table names the target; PURGE the source's copy, then finish.
    Purging,
    /// Giving up before ACTIVATE: RESTORE at the source, best-effort ABANDON at the target.
    Aborting,
    /// EXPORT at the source: it goes on serving the partition and logs every write by version.
    Exporting,
    /// The pre-copy while the source serves: PREPARE_INCOMING at the target, the whole
    /// partition (ScanPartition → INGEST), then rounds over the change log (INGEST_CHANGES).
    Precopying,
}

impl MoveStep {
    /// Snake-case name used in `/v1/cluster` and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Freezing => "freezing",
            Self::Copying => "copying",
            Self::Releasing => "releasing",
            Self::Activating => "activating",
            Self::Purging => "purging",
            Self::Aborting => "aborting",
            Self::Exporting => "exporting",
            Self::Precopying => "precopying",
        }
    }

    /// The step after this one on the way forward (Purging comes by the switch).
    #[must_use]
    pub fn next(self) -> Option<Self> {
        match self {
            Self::Planned => Some(Self::Exporting),
            Self::Exporting => Some(Self::Precopying),
            Self::Precopying => Some(Self::Freezing),
            Self::Freezing | Self::Releasing => Some(Self::Activating),
            Self::Copying => Some(Self::Releasing),
            Self::Activating | Self::Purging | Self::Aborting => None,
        }
    }

    /// Whether a move may go forward from `self` to `step`: the next step, or the separate
    /// copying step earlier versions took after the freeze (so that their commands still
    /// apply, e.g. while admins of two versions share the metadata).
    #[must_use]
    pub fn may_advance_to(self, step: Self) -> bool {
        self.next() == Some(step) || (self == Self::Freezing && step == Self::Copying)
    }

    /// Whether ACTIVATE may have been sent, after which the move may not be aborted.
    #[must_use]
    pub fn past_activate(self) -> bool {
        matches!(self, Self::Activating | Self::Purging)
    }
}

/// One partition being moved from `source` to `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub source: ClusterId,
    pub target: ClusterId,
    pub step: MoveStep,
    /// Records copied into the target so far (as last persisted).
    pub keys_copied: u64,
    /// Wall-clock times (ms since the Unix epoch) carried by the commands: start, FREEZE sent,
    /// table switched. Only used for reporting.
    pub started_at_ms: u64,
    pub frozen_at_ms: Option<u64>,
    pub switched_at_ms: Option<u64>,
}

impl MoveRecord {
    /// Write pause (freeze → switch) in ms, once switched.
    #[must_use]
    pub fn write_pause_ms(&self) -> Option<u64> {
        Some(self.switched_at_ms?.saturating_sub(self.frozen_at_ms?))
    }
}

/// A move the planner proposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedMove {
    pub partition: PartitionId,
    pub source: ClusterId,
    pub target: ClusterId,
}

/// The moves needed to reach `target`: every partition with an owner whose desired owner is
/// another cluster, and no move in progress, in partition order. Pure.
#[must_use]
pub fn plan_moves(state: &MetaState) -> Vec<PlannedMove> {
    state
        .table
        .owners
        .iter()
        .zip(&state.target)
        .enumerate()
        .filter_map(|(p, (owner, target))| {
            let partition = PartitionId::try_from(p).ok()?;
            match (owner, target) {
                (Some(source), Some(target))
                    if source != target && !state.moves.contains_key(&partition) =>
                {
                    Some(PlannedMove {
                        partition,
                        source: *source,
                        target: *target,
                    })
                }
                _ => None,
            }
        })
        .collect()
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
    /// Record a move of `partition` from `source` to `target` (step Planned), before any step.
    StartMove {
        partition: PartitionId,
        source: ClusterId,
        target: ClusterId,
        at_ms: u64,
    },
    /// Persist that the move of `partition` now takes `step` (forward only, or Aborting before
    /// Activating), with the records copied so far.
    AdvanceMove {
        partition: PartitionId,
        step: MoveStep,
        keys_copied: u64,
        at_ms: u64,
    },
    /// The target serves the partition: table owner := target, epoch + 1, step Purging.
    SwitchOwner { partition: PartitionId, at_ms: u64 },
    /// The source's copy is purged: drop the record (after Purging).
    FinishMove { partition: PartitionId },
    /// The abort is done (source restored): drop the record (after Aborting).
    AbortMove { partition: PartitionId },
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
    /// The last replica of a cluster that holds keys asked to leave: the cluster is draining
    /// instead (its partitions move away first). Repeat the removal until it is `Removed`.
    Draining {
        cluster_id: ClusterId,
        partitions_left: u32,
        moves_in_progress: u32,
    },
    /// A move command took effect (or was already in effect: commands are idempotent).
    /// `record` is the move after it, `None` once finished or aborted.
    Moved {
        partition: PartitionId,
        record: Option<MoveRecord>,
        /// The table's epoch changed (a switch).
        table_changed: bool,
    },
}

impl MetaOutcome {
    /// Whether the partition table changed (clusters must then be sent their new assignment).
    #[must_use]
    pub fn table_changed(&self) -> bool {
        match self {
            Self::Registered { table_changed, .. }
            | Self::Removed { table_changed, .. }
            | Self::Moved { table_changed, .. } => *table_changed,
            Self::HasDataMarked | Self::Draining { .. } => false,
        }
    }
}

/// A deterministic "no" from [`MetaState::apply`]: nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaRefusal {
    #[error("no cluster exists yet: start a replica with -l first")]
    NoCluster,
    #[error(
        "replica is the last one of cluster {cluster}, which owns partitions holding keys, and \
         no other cluster is left to drain them to; removing it would lose them. Add a cluster \
         first, or pass --force to remove it and drop its partitions"
    )]
    LastReplicaHoldsKeys { cluster: ClusterId },
    #[error("move of partition {partition} refused: {why}")]
    MoveRefused { partition: PartitionId, why: String },
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
            Self::MoveRefused { .. } => "move_refused",
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
            assignment_epoch: 0,
            target: vec![None; partitions as usize],
            draining: BTreeSet::new(),
            moves: BTreeMap::new(),
            max_write_pause_ms: 0,
        }
    }

    /// Moves in progress that involve `cluster` as source or target.
    #[must_use]
    pub fn moves_involving(&self, cluster: ClusterId) -> usize {
        self.moves
            .values()
            .filter(|m| m.source == cluster || m.target == cluster)
            .count()
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
                if !self.has_data {
                    self.has_data = true;
                    self.recompute_target();
                }
                Ok(MetaOutcome::HasDataMarked)
            }
            MetaCommand::StartMove {
                partition,
                source,
                target,
                at_ms,
            } => self.start_move(partition, source, target, at_ms),
            MetaCommand::AdvanceMove {
                partition,
                step,
                keys_copied,
                at_ms,
            } => self.advance_move(partition, step, keys_copied, at_ms),
            MetaCommand::SwitchOwner { partition, at_ms } => self.switch_owner(partition, at_ms),
            MetaCommand::FinishMove { partition } => self.end_move(partition, MoveStep::Purging),
            MetaCommand::AbortMove { partition } => self.end_move(partition, MoveStep::Aborting),
        }
    }

    fn moved(&self, partition: PartitionId, table_changed: bool) -> MetaOutcome {
        MetaOutcome::Moved {
            partition,
            record: self.moves.get(&partition).cloned(),
            table_changed,
        }
    }

    fn start_move(
        &mut self,
        partition: PartitionId,
        source: ClusterId,
        target: ClusterId,
        at_ms: u64,
    ) -> Result<MetaOutcome, MetaRefusal> {
        let refuse = |why: String| Err(MetaRefusal::MoveRefused { partition, why });
        if let Some(existing) = self.moves.get(&partition) {
            if existing.source == source && existing.target == target {
                return Ok(self.moved(partition, false));
            }
            return refuse(format!(
                "a move from cluster {} to cluster {} is in progress",
                existing.source, existing.target
            ));
        }
        if !self.has_data {
            return refuse("the store holds no keys: the table is recomputed directly".into());
        }
        if self.table.owner(partition) != Some(source) {
            return refuse(format!("cluster {source} does not own it"));
        }
        if source == target || !self.clusters.contains_key(&target) {
            return refuse(format!("cluster {target} is not a valid target"));
        }
        if self.draining.contains(&target) {
            return refuse(format!("cluster {target} is draining"));
        }
        self.moves.insert(
            partition,
            MoveRecord {
                source,
                target,
                step: MoveStep::Planned,
                keys_copied: 0,
                started_at_ms: at_ms,
                frozen_at_ms: None,
                switched_at_ms: None,
            },
        );
        Ok(self.moved(partition, false))
    }

    fn advance_move(
        &mut self,
        partition: PartitionId,
        step: MoveStep,
        keys_copied: u64,
        at_ms: u64,
    ) -> Result<MetaOutcome, MetaRefusal> {
        let Some(record) = self.moves.get_mut(&partition) else {
            return Err(MetaRefusal::MoveRefused {
                partition,
                why: "no move in progress".into(),
            });
        };
        let allowed = match step {
            // The switch and the end of a move have their own commands.
            MoveStep::Planned | MoveStep::Purging => record.step == step,
            MoveStep::Aborting => !record.step.past_activate(),
            _ => record.step == step || record.step.may_advance_to(step),
        };
        if !allowed {
            return Err(MetaRefusal::MoveRefused {
                partition,
                why: format!(
                    "cannot go from step {} to step {}",
                    record.step.name(),
                    step.name()
                ),
            });
        }
        if step == MoveStep::Freezing && record.frozen_at_ms.is_none() {
            record.frozen_at_ms = Some(at_ms);
        }
        if step != record.step {
            record.step = step;
        }
        // A repeated copy starts from zero again; otherwise the count only grows within a step.
        record.keys_copied = keys_copied;
        Ok(self.moved(partition, false))
    }

    fn switch_owner(
        &mut self,
        partition: PartitionId,
        at_ms: u64,
    ) -> Result<MetaOutcome, MetaRefusal> {
        let Some(record) = self.moves.get_mut(&partition) else {
            return Err(MetaRefusal::MoveRefused {
                partition,
                why: "no move in progress".into(),
            });
        };
        match record.step {
            MoveStep::Purging => return Ok(self.moved(partition, false)),
            MoveStep::Activating => {}
            other => {
                return Err(MetaRefusal::MoveRefused {
                    partition,
                    why: format!("cannot switch the owner at step {}", other.name()),
                });
            }
        }
        record.step = MoveStep::Purging;
        record.switched_at_ms = Some(at_ms);
        let target = record.target;
        let changed = self.table.owner(partition) != Some(target);
        if changed {
            if let Some(owner) = self.table.owners.get_mut(partition as usize) {
                *owner = Some(target);
            }
            self.table.epoch += 1;
        }
        Ok(self.moved(partition, changed))
    }

    /// Drops the record of a move that reached `required` (Purging: finished; Aborting: aborted).
    /// Idempotent: no record is success.
    fn end_move(
        &mut self,
        partition: PartitionId,
        required: MoveStep,
    ) -> Result<MetaOutcome, MetaRefusal> {
        match self.moves.get(&partition) {
            None => Ok(self.moved(partition, false)),
            Some(record) if record.step == required => {
                if let Some(pause) = record.write_pause_ms() {
                    self.max_write_pause_ms = self.max_write_pause_ms.max(pause);
                }
                self.moves.remove(&partition);
                Ok(self.moved(partition, false))
            }
            Some(record) => Err(MetaRefusal::MoveRefused {
                partition,
                why: format!(
                    "cannot end the move at step {} (needs {})",
                    record.step.name(),
                    required.name()
                ),
            }),
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
            // Draining clusters are about to go: a joiner goes elsewhere when it can.
            let pick = |skip_draining: bool| {
                self.clusters
                    .values()
                    .filter(|c| !(skip_draining && self.draining.contains(&c.id)))
                    .min_by_key(|c| c.replicas.len())
            };
            let Some(cluster) = pick(true).or_else(|| pick(false)) else {
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
            if self.has_data {
                self.recompute_target();
            } else {
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
        let owned = self.table.count_of(cluster_id);
        let involved = self.moves_involving(cluster_id);
        if last && (owned > 0 || involved > 0) && self.has_data && !force {
            let can_drain = self
                .clusters
                .keys()
                .any(|c| *c != cluster_id && !self.draining.contains(c));
            // A cluster already draining keeps draining even if its destinations went away
            // meanwhile: its moves in progress must still finish.
            if !can_drain && !self.draining.contains(&cluster_id) {
                return Err(MetaRefusal::LastReplicaHoldsKeys {
                    cluster: cluster_id,
                });
            }
            if self.draining.insert(cluster_id) {
                self.recompute_target();
            }
            return Ok(MetaOutcome::Draining {
                cluster_id,
                partitions_left: u32::try_from(owned).unwrap_or(u32::MAX),
                moves_in_progress: u32::try_from(involved).unwrap_or(u32::MAX),
            });
        }

        self.replicas.remove(&node_id);
        let mut table_changed = false;
        if last {
            self.clusters.remove(&cluster_id);
            self.founders.remove(&cluster_id);
            self.draining.remove(&cluster_id);
            if self.has_data {
                table_changed = self.forget_moves_of(cluster_id);
                // Forced: the cluster's partitions become unowned (their keys are gone with it).
                table_changed |= self.unown(cluster_id);
                self.recompute_target();
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

    /// Settles the moves involving a cluster removed by force. Before ACTIVATE a move whose
    /// target goes is aborted (the source is restored); a move whose source goes before ACTIVATE
    /// is dropped (the data went with the source). After ACTIVATE a move whose target goes is
    /// dropped and its partition unowned (the only serving copy went); one whose source goes
    /// carries on (PURGE is skipped for a cluster that no longer exists). Returns whether the
    /// table changed.
    fn forget_moves_of(&mut self, cluster: ClusterId) -> bool {
        let mut changed = false;
        let partitions: Vec<PartitionId> = self.moves.keys().copied().collect();
        for p in partitions {
            let Some(record) = self.moves.get_mut(&p) else {
                continue;
            };
            let past = record.step.past_activate();
            if record.target == cluster {
                if past {
                    self.moves.remove(&p);
                    if let Some(owner) = self.table.owners.get_mut(p as usize)
                        && owner.is_some()
                    {
                        *owner = None;
                        changed = true;
                    }
                } else {
                    record.step = MoveStep::Aborting;
                }
            } else if record.source == cluster && !past {
                self.moves.remove(&p);
            }
        }
        if changed {
            self.table.epoch += 1;
        }
        changed
    }

    /// Sets `target` to the ring over the clusters that are not draining (with data), or to the
    /// table itself (no data: the table *is* recomputed).
    fn recompute_target(&mut self) {
        if !self.has_data {
            self.target = self.table.owners.clone();
            return;
        }
        let clusters: Vec<ClusterId> = self
            .clusters
            .keys()
            .copied()
            .filter(|c| !self.draining.contains(c))
            .collect();
        self.target = ring_owners(&clusters, self.partitions);
    }

    /// Sets the table to the ring's proposal over the current clusters; bumps the epoch if any
    /// owner changed. Returns whether it did.
    fn recompute_table(&mut self) -> bool {
        let clusters: Vec<ClusterId> = self.clusters.keys().copied().collect();
        let owners = ring_owners(&clusters, self.partitions);
        self.target.clone_from(&owners);
        if owners == self.table.owners {
            return false;
        }
        self.table.owners = owners;
        self.table.epoch += 1;
        self.assignment_epoch = self.table.epoch;
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
        if self.target.len() != self.partitions as usize {
            return corrupt(format!("target has {} partitions", self.target.len()));
        }
        if let Some(c) = self
            .draining
            .iter()
            .find(|c| !self.clusters.contains_key(c))
        {
            return corrupt(format!("draining cluster {c} does not exist"));
        }
        if let Some(p) = self.moves.keys().find(|p| **p >= self.partitions) {
            return corrupt(format!("move of partition {p} is out of range"));
        }
        if self.assignment_epoch > self.table.epoch {
            return corrupt("assignment epoch is ahead of the table".into());
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

/// The stored layout before migration (format 1), kept to upgrade an older admin's file.
#[derive(Deserialize)]
struct MetaStateV1 {
    partitions: u32,
    table: PartitionTable,
    clusters: BTreeMap<ClusterId, ClusterRecord>,
    replicas: BTreeMap<NodeId, ReplicaRecord>,
    has_data: bool,
    next_node_id: NodeId,
    next_cluster_id: ClusterId,
    tokens: BTreeMap<u64, NodeId>,
    founders: BTreeMap<ClusterId, NodeId>,
}

impl From<MetaStateV1> for MetaState {
    fn from(v1: MetaStateV1) -> Self {
        let target = v1.table.owners.clone();
        // Format 1 only changed the table by recomputing (an assignment) or by a forced
        // removal; either way no cluster needs more than the table's epoch.
        let assignment_epoch = v1.table.epoch;
        Self {
            partitions: v1.partitions,
            table: v1.table,
            clusters: v1.clusters,
            replicas: v1.replicas,
            has_data: v1.has_data,
            next_node_id: v1.next_node_id,
            next_cluster_id: v1.next_cluster_id,
            tokens: v1.tokens,
            founders: v1.founders,
            assignment_epoch,
            target,
            draining: BTreeSet::new(),
            moves: BTreeMap::new(),
            max_write_pause_ms: 0,
        }
    }
}

/// Encodes a state as stored: format tag, then postcard.
fn encode(state: &MetaState) -> Result<Vec<u8>, MetaError> {
    let mut bytes = vec![STATE_FORMAT_V2];
    bytes.extend(postcard::to_stdvec(state)?);
    Ok(bytes)
}

/// Decodes a stored state (upgrading format 1), refusing unknown format tags.
fn decode(bytes: &[u8]) -> Result<MetaState, MetaError> {
    match bytes.split_first() {
        Some((&STATE_FORMAT_V2, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&STATE_FORMAT_V1, rest)) => Ok(postcard::from_bytes::<MetaStateV1>(rest)?.into()),
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

    fn start(p: PartitionId, source: ClusterId, target: ClusterId) -> MetaCommand {
        MetaCommand::StartMove {
            partition: p,
            source,
            target,
            at_ms: 100,
        }
    }

    fn adv(p: PartitionId, step: MoveStep, at_ms: u64) -> MetaCommand {
        MetaCommand::AdvanceMove {
            partition: p,
            step,
            keys_copied: 0,
            at_ms,
        }
    }

    /// A store with keys on cluster 1 (P partitions), then `extra` more clusters added.
    fn loaded(partitions: u32, extra: u64) -> MetaState {
        let mut s = MetaState::new(partitions);
        s.apply(register(1, true)).unwrap();
        s.apply(MetaCommand::MarkHasData).unwrap();
        for token in 2..2 + extra {
            s.apply(register(token, true)).unwrap();
        }
        s
    }

    /// Applies `cmd` twice: the second time must succeed and change nothing.
    fn twice(s: &mut MetaState, cmd: MetaCommand) {
        s.apply(cmd.clone()).unwrap();
        let after = s.clone();
        s.apply(cmd).unwrap();
        assert_eq!(*s, after, "a repeated command must change nothing");
    }

    /// With keys stored, adding cluster N+1 plans moves only to the new cluster, exactly of the
    /// partitions the ring gives it, and the fraction moved is within ±5 points of 1/(N+1).
    #[test]
    fn planner_adding_a_cluster_moves_only_to_it() {
        let p = 1024;
        for n in 1..=3u64 {
            let mut s = loaded(p, n - 1);
            // Reach the balanced table over N clusters first, as finished moves would.
            s.table.owners.clone_from(&s.target);
            let before = s.table.owners.clone();
            s.apply(register(100 + n, true)).unwrap();
            let new = s.next_cluster_id - 1;
            assert_eq!(
                s.table.owners, before,
                "adding a cluster changes only the target"
            );
            let plan = plan_moves(&s);
            let expected = ring_owners(&s.clusters.keys().copied().collect::<Vec<_>>(), p);
            for m in &plan {
                assert_eq!(m.target, new);
                assert_eq!(Some(m.source), before[m.partition as usize]);
                assert_eq!(expected[m.partition as usize], Some(new));
            }
            // Exactly the partitions that change owner.
            let changed = before.iter().zip(&expected).filter(|(b, e)| b != e).count();
            assert_eq!(plan.len(), changed);
            let fraction = plan.len() as f64 / f64::from(p);
            let ideal = 1.0 / (n as f64 + 1.0);
            assert!(
                (fraction - ideal).abs() <= 0.05,
                "N={n}: moved {fraction:.3}, ideal {ideal:.3}"
            );
        }
    }

    /// Draining a cluster plans only its own partitions, each to its owner on the ring without
    /// it; the refusal without another cluster and the drain answer are deterministic.
    #[test]
    fn planner_draining_moves_only_the_drained_clusters_partitions() {
        let mut s = loaded(256, 2); // clusters 1, 2, 3
        s.table.owners.clone_from(&s.target);
        let before = s.table.owners.clone();
        let outcome = s
            .apply(MetaCommand::RemoveReplica {
                node_id: 2,
                force: false,
            })
            .unwrap();
        let owned = before.iter().filter(|o| **o == Some(2)).count() as u32;
        assert_eq!(
            outcome,
            MetaOutcome::Draining {
                cluster_id: 2,
                partitions_left: owned,
                moves_in_progress: 0
            }
        );
        assert!(s.draining.contains(&2) && s.clusters.contains_key(&2));
        let without = ring_owners(&[1, 3], 256);
        let plan = plan_moves(&s);
        assert_eq!(plan.len(), owned as usize);
        for m in &plan {
            assert_eq!(m.source, 2);
            assert_eq!(Some(m.target), without[m.partition as usize]);
        }
        // Repeating the removal while draining is idempotent.
        twice(
            &mut s,
            MetaCommand::RemoveReplica {
                node_id: 2,
                force: false,
            },
        );
        // A joiner avoids the draining cluster.
        let (_, c, _, _) = registered(s.apply(register(50, false)).unwrap());
        assert_ne!(c, 2);
        // Once it owns nothing and no move involves it, the removal goes through.
        for (p, owner) in s.table.owners.iter_mut().enumerate() {
            if *owner == Some(2) {
                *owner = without[p];
            }
        }
        let out = s
            .apply(MetaCommand::RemoveReplica {
                node_id: 2,
                force: false,
            })
            .unwrap();
        assert!(matches!(
            out,
            MetaOutcome::Removed {
                cluster_removed: true,
                ..
            }
        ));
        assert!(s.draining.is_empty());
        assert!(plan_moves(&s).is_empty());
    }

    /// Every move command is idempotent, steps only go forward, the abort is refused once
    /// ACTIVATE may have been sent, and the switch bumps the epoch exactly once.
    #[test]
    fn move_commands_are_idempotent_and_ordered() {
        let mut s = loaded(64, 1);
        let m = plan_moves(&s)[0];
        let (p, src, dst) = (m.partition, m.source, m.target);
        assert!(matches!(
            s.apply(start(p, src, src)),
            Err(MetaRefusal::MoveRefused { .. })
        ));
        twice(&mut s, start(p, src, dst));
        assert!(matches!(
            s.apply(start(p, src, 99)),
            Err(MetaRefusal::MoveRefused { .. })
        ));
        assert!(!plan_moves(&s).iter().any(|m| m.partition == p));
        // No skipping ahead.
        assert!(s.apply(adv(p, MoveStep::Copying, 1)).is_err());
        assert!(s.apply(adv(p, MoveStep::Freezing, 1)).is_err());
        twice(&mut s, adv(p, MoveStep::Exporting, 100));
        twice(&mut s, adv(p, MoveStep::Precopying, 150));
        assert_eq!(
            s.moves[&p].frozen_at_ms, None,
            "the pre-copy is no write pause"
        );
        twice(&mut s, adv(p, MoveStep::Freezing, 200));
        assert_eq!(s.moves[&p].frozen_at_ms, Some(200));
        // A repeat later keeps the first freeze time.
        s.apply(adv(p, MoveStep::Freezing, 300)).unwrap();
        assert_eq!(s.moves[&p].frozen_at_ms, Some(200));
        // The separate copying and releasing steps of earlier versions still apply.
        let mut earlier = s.clone();
        twice(&mut earlier, adv(p, MoveStep::Copying, 0));
        twice(&mut earlier, adv(p, MoveStep::Releasing, 0));
        twice(&mut earlier, adv(p, MoveStep::Activating, 0));
        assert!(
            earlier.apply(adv(p, MoveStep::Copying, 0)).is_err(),
            "no going back"
        );
        assert!(
            s.apply(adv(p, MoveStep::Releasing, 0)).is_err(),
            "releasing only follows copying"
        );
        assert!(
            s.apply(MetaCommand::SwitchOwner {
                partition: p,
                at_ms: 1
            })
            .is_err(),
            "no switch before Activating"
        );
        twice(&mut s, adv(p, MoveStep::Activating, 0));
        assert!(
            s.apply(adv(p, MoveStep::Aborting, 0)).is_err(),
            "no abort after ACTIVATE may have been sent"
        );
        let epoch = s.table.epoch;
        let assignment = s.assignment_epoch;
        twice(
            &mut s,
            MetaCommand::SwitchOwner {
                partition: p,
                at_ms: 700,
            },
        );
        assert_eq!(s.table.epoch, epoch + 1);
        assert_eq!(
            s.assignment_epoch, assignment,
            "a switch is not an assignment"
        );
        assert_eq!(s.table.owner(p), Some(dst));
        assert_eq!(s.moves[&p].step, MoveStep::Purging);
        assert!(s.apply(MetaCommand::AbortMove { partition: p }).is_err());
        twice(&mut s, MetaCommand::FinishMove { partition: p });
        assert!(s.moves.is_empty());
        assert_eq!(s.max_write_pause_ms, 500);

        // An abort before ACTIVATE restores nothing in the table.
        let m = plan_moves(&s)[0];
        s.apply(start(m.partition, m.source, m.target)).unwrap();
        s.apply(adv(m.partition, MoveStep::Exporting, 1)).unwrap();
        twice(&mut s, adv(m.partition, MoveStep::Aborting, 0));
        assert!(s.apply(adv(m.partition, MoveStep::Copying, 0)).is_err());
        assert!(
            s.apply(MetaCommand::FinishMove {
                partition: m.partition
            })
            .is_err()
        );
        twice(
            &mut s,
            MetaCommand::AbortMove {
                partition: m.partition,
            },
        );
        assert_eq!(s.table.owner(m.partition), Some(m.source));
        assert!(s.moves.is_empty());
        // Moves are refused while the store holds no keys.
        let mut empty = MetaState::new(8);
        empty.apply(register(1, true)).unwrap();
        empty.apply(register(2, true)).unwrap();
        assert!(plan_moves(&empty).is_empty());
        assert!(empty.apply(start(0, 1, 2)).is_err());
    }

    /// A forced removal settles the moves involving the cluster: before ACTIVATE a move to it
    /// is aborted, one from it dropped; after ACTIVATE a move to it is dropped and its partition
    /// unowned.
    #[test]
    fn forced_removal_settles_moves() {
        let mut s = loaded(64, 1); // clusters 1 (owner), 2 (target)
        let plan = plan_moves(&s);
        let (a, b) = (plan[0].partition, plan[1].partition);
        for p in [a, b] {
            s.apply(start(p, 1, 2)).unwrap();
            for step in [
                MoveStep::Exporting,
                MoveStep::Precopying,
                MoveStep::Freezing,
            ] {
                s.apply(adv(p, step, 1)).unwrap();
            }
        }
        for step in [MoveStep::Copying, MoveStep::Releasing, MoveStep::Activating] {
            s.apply(adv(b, step, 1)).unwrap();
        }
        s.apply(MetaCommand::RemoveReplica {
            node_id: 2,
            force: true,
        })
        .unwrap();
        assert_eq!(s.moves[&a].step, MoveStep::Aborting);
        assert!(!s.moves.contains_key(&b));
        assert_eq!(s.table.owner(b), None);
        assert_eq!(s.table.owner(a), Some(1));
        assert!(s.target.iter().all(|t| *t == Some(1)));
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
