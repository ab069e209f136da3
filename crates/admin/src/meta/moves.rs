//! The move model (a partition moving between clusters, step by step), the planner that lists
//! the moves still needed, and the move commands' transitions of [`MetaState`].

use super::{MetaOutcome, MetaRefusal, MetaState};
use ravel_core::{ClusterId, PartitionId};
use serde::{Deserialize, Serialize};

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

impl MetaState {
    fn moved(&self, partition: PartitionId, table_changed: bool) -> MetaOutcome {
        MetaOutcome::Moved {
            partition,
            record: self.moves.get(&partition).cloned(),
            table_changed,
        }
    }

    pub(super) fn start_move(
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

    pub(super) fn advance_move(
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

    pub(super) fn switch_owner(
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
    pub(super) fn end_move(
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

    /// Settles the moves involving a cluster removed by force. Before ACTIVATE a move whose
    /// target goes is aborted (the source is restored); a move whose source goes before ACTIVATE
    /// is dropped (the data went with the source). After ACTIVATE a move whose target goes is
    /// dropped and its partition unowned (the only serving copy went); one whose source goes
    /// carries on (PURGE is skipped for a cluster that no longer exists). Returns whether the
    /// table changed.
    pub(super) fn forget_moves_of(&mut self, cluster: ClusterId) -> bool {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaCommand;
    use crate::meta::test_support::{adv, register, registered, start};
    use ravel_core::table::ring_owners;

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
}
