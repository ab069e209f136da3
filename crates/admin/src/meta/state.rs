//! The metadata state machine: the records, [`MetaState`] and its pure, deterministic
//! [`MetaState::apply`] (registration, removal and the table recomputed from the ring).

use super::{MetaCommand, MetaOutcome, MetaRefusal, MoveRecord, MoveStep};
use ravel_core::{ClusterId, NodeId, PartitionId, PartitionTable, table::ring_owners};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::test_support::{register, registered};

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
}
