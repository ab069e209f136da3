//! The node's side of partition migration (`docs/design.md#the-steps-of-a-move`): the
//! `Control.Migrate` and `Control.ScanPartition` handlers, called by the admin's mover.
//!
//! Both are leader-only. `Migrate` turns a wire step into a `Command::Migrate` and proposes it
//! through [`Replica::write`], so the split between definite answers (NOT_LEADER before the
//! proposal; a refusal the state machine recorded, sent as WRONG_OWNER with its reason) and
//! OUTCOME_UNKNOWN (a timeout or error after the proposal) is the same as for client writes; the
//! admin may simply repeat a step whose outcome is unknown, since every step is idempotent.
//! `ScanPartition` reads one bounded batch of an exporting or frozen partition — its records in
//! key order, or its change log in version order — after a linearizable read barrier, so that
//! the batch includes every write the cluster acknowledged before it (for a frozen partition:
//! every write there will ever be).
//!
//! This module must not decide what moves where, nor retry: the admin drives every move.

use std::time::Instant;

use ravel_core::PartitionId;
use ravel_core::command::{
    ChangedRecord, Command, CommandResult, MAX_MIGRATE_BATCH_BYTES, MAX_MIGRATE_BATCH_RECORDS,
    MigratedRecord, MigrationStep, PartitionState,
};
use ravel_core::limits::{MAX_KEY_BYTES, MAX_PARTITIONS, MAX_VALUE_BYTES};
use ravel_proto::v1::{
    MigrateOp, MigrateRecord, MigrateReply, MigrateRequest, PartitionStateView, ScanPartitionReply,
    ScanPartitionRequest,
};
use ravel_storage::ReadRefused;

use crate::data_service::refusal;
use crate::error::NodeError;
use crate::replica::Replica;

/// Most records one `ScanPartition` reply carries, whatever the request asks.
pub const SCAN_BATCH_MAX_RECORDS: usize = MAX_MIGRATE_BATCH_RECORDS;

/// Most bytes (keys plus values) one `ScanPartition` reply carries past its first record.
pub const SCAN_BATCH_MAX_BYTES: usize = MAX_MIGRATE_BATCH_BYTES;

/// Most records one INGEST request may carry.
pub const INGEST_MAX_RECORDS: usize = MAX_MIGRATE_BATCH_RECORDS;

/// Most bytes (keys plus values) one INGEST request may carry: a full scan batch, with room for
/// one more record at the size limits, so an admin that cuts its batches after the record that
/// crosses the byte budget (rather than before it) is not refused. Far below the gRPC limit.
pub const INGEST_MAX_BYTES: usize = MAX_MIGRATE_BATCH_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES;

/// The wire form of a partition state (`None` = absent).
#[must_use]
pub fn state_view(state: Option<PartitionState>) -> PartitionStateView {
    match state {
        None => PartitionStateView::Absent,
        Some(PartitionState::Serving) => PartitionStateView::Serving,
        Some(PartitionState::Frozen) => PartitionStateView::Frozen,
        Some(PartitionState::Incoming) => PartitionStateView::Incoming,
        Some(PartitionState::Released) => PartitionStateView::Released,
        Some(PartitionState::Exporting) => PartitionStateView::Exporting,
    }
}

/// What a step answered: the state after it, records stored, keys held under the partition.
struct Migrated {
    state: Option<PartitionState>,
    records_applied: u64,
    partition_keys: u64,
}

/// Answers `Control.Migrate`.
pub async fn migrate(replica: &Replica, req: MigrateRequest) -> MigrateReply {
    match propose_step(replica, req).await {
        Ok(m) => {
            let mut reply = MigrateReply {
                records_applied: m.records_applied,
                partition_keys: m.partition_keys,
                ..MigrateReply::default()
            };
            reply.set_state(state_view(m.state));
            reply
        }
        Err(e) => {
            let mut reply = MigrateReply {
                error: Some(e.to_wire()),
                ..MigrateReply::default()
            };
            // A refusal says where the partition stands, so the admin can tell "already past
            // this step" from "a step of another move" without another call.
            if let NodeError::MigrationRefused { state, .. } = &e {
                reply.set_state(state_view(*state));
            }
            reply
        }
    }
}

async fn propose_step(replica: &Replica, req: MigrateRequest) -> Result<Migrated, NodeError> {
    replica.check_cluster(req.cluster_id)?;
    check_partition(req.partition)?;
    let step = step_of(req.op, req.records, req.version_floor, req.max_records)?;
    let name = step.name();
    let partition = req.partition;
    let started = Instant::now();
    let answer = replica.write(Command::Migrate { partition, step }).await?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match answer {
        CommandResult::Migrated {
            state,
            records_applied,
            partition_keys,
        } => {
            if name.starts_with("ingest") {
                tracing::debug!(
                    partition,
                    records_applied,
                    partition_keys,
                    elapsed_ms,
                    "ingested"
                );
            } else {
                tracing::info!(
                    partition,
                    step = name,
                    state = PartitionState::name(state),
                    partition_keys,
                    elapsed_ms,
                    "migration step applied"
                );
            }
            Ok(Migrated {
                state,
                records_applied,
                partition_keys,
            })
        }
        CommandResult::MigrationRefused { state, reason } => {
            tracing::info!(partition, step = name, %reason, "migration step refused");
            Err(NodeError::MigrationRefused { state, reason })
        }
        other => Err(refusal(other)),
    }
}

/// The step a request names, with its records checked against the limits. Nothing is proposed
/// for a malformed request.
fn step_of(
    op: i32,
    records: Vec<MigrateRecord>,
    version_floor: u64,
    max_records: u32,
) -> Result<MigrationStep, NodeError> {
    let op = MigrateOp::try_from(op)
        .map_err(|_| NodeError::Invalid(format!("unknown migration op {op}")))?;
    let carries_records = matches!(op, MigrateOp::Ingest | MigrateOp::IngestChanges);
    if !carries_records && !records.is_empty() {
        return Err(NodeError::Invalid(format!(
            "only INGEST and INGEST_CHANGES carry records, not {}",
            op.as_str_name()
        )));
    }
    if op == MigrateOp::Ingest && records.iter().any(|r| r.deleted) {
        return Err(NodeError::Invalid(
            "INGEST carries no deletions (INGEST_CHANGES does)".into(),
        ));
    }
    Ok(match op {
        MigrateOp::Unspecified => {
            return Err(NodeError::Invalid("the migration op is missing".into()));
        }
        MigrateOp::Freeze => MigrationStep::Freeze,
        MigrateOp::PrepareIncoming => MigrationStep::PrepareIncoming,
        MigrateOp::Ingest => MigrationStep::Ingest {
            records: check_records(records)?
                .into_iter()
                .map(|(r, _)| r)
                .collect(),
            version_floor,
        },
        MigrateOp::Release => MigrationStep::Release,
        MigrateOp::Activate => MigrationStep::Activate,
        MigrateOp::Purge if max_records == 0 => MigrationStep::Purge,
        MigrateOp::Purge => MigrationStep::PurgeSome {
            max_keys: max_records,
        },
        MigrateOp::Restore => MigrationStep::Restore,
        MigrateOp::Abandon => MigrationStep::Abandon,
        MigrateOp::Export => MigrationStep::Export,
        MigrateOp::IngestChanges => MigrationStep::IngestChanges {
            records: check_records(records)?
                .into_iter()
                .map(|(r, deleted)| ChangedRecord {
                    key: r.key,
                    version: r.version,
                    value: (!deleted).then_some(r.value),
                })
                .collect(),
            version_floor,
        },
    })
}

/// Bounds an INGEST or INGEST_CHANGES batch (count, total bytes, each key and value) and
/// refuses records that could not have come from a store: an empty key, version 0, or a
/// deletion with a value. Each record comes back with its `deleted` flag.
fn check_records(records: Vec<MigrateRecord>) -> Result<Vec<(MigratedRecord, bool)>, NodeError> {
    if records.len() > INGEST_MAX_RECORDS {
        return Err(NodeError::Invalid(format!(
            "an ingest carries at most {INGEST_MAX_RECORDS} records, not {}",
            records.len()
        )));
    }
    let bytes: usize = records.iter().map(|r| r.key.len() + r.value.len()).sum();
    if bytes > INGEST_MAX_BYTES {
        return Err(NodeError::Invalid(format!(
            "an ingest carries at most {INGEST_MAX_BYTES} bytes of keys and values, not {bytes}"
        )));
    }
    records
        .into_iter()
        .map(|r| {
            if r.key.is_empty() || r.key.len() > MAX_KEY_BYTES {
                return Err(NodeError::Invalid(format!(
                    "an ingested key must have 1 to {MAX_KEY_BYTES} bytes, not {}",
                    r.key.len()
                )));
            }
            if r.value.len() > MAX_VALUE_BYTES {
                return Err(NodeError::Invalid(format!(
                    "an ingested value exceeds {MAX_VALUE_BYTES} bytes"
                )));
            }
            if r.version == 0 {
                return Err(NodeError::Invalid(
                    "an ingested record needs a version above 0".into(),
                ));
            }
            if r.deleted && !r.value.is_empty() {
                return Err(NodeError::Invalid(
                    "an ingested deletion carries no value".into(),
                ));
            }
            Ok((
                MigratedRecord {
                    key: r.key,
                    version: r.version,
                    value: r.value,
                },
                r.deleted,
            ))
        })
        .collect()
}

fn check_partition(partition: PartitionId) -> Result<(), NodeError> {
    if partition < MAX_PARTITIONS {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "partition {partition} is not below {MAX_PARTITIONS}"
        )))
    }
}

/// Answers `Control.ScanPartition`.
pub async fn scan_partition(replica: &Replica, req: ScanPartitionRequest) -> ScanPartitionReply {
    match scan(replica, req).await {
        Ok(reply) => reply,
        Err(e) => ScanPartitionReply {
            error: Some(e.to_wire()),
            ..ScanPartitionReply::default()
        },
    }
}

async fn scan(
    replica: &Replica,
    req: ScanPartitionRequest,
) -> Result<ScanPartitionReply, NodeError> {
    replica.check_cluster(req.cluster_id)?;
    check_partition(req.partition)?;
    // The definite NOT_LEADER first; then the barrier makes the local state machine at least as
    // new as every write acknowledged before it, the freeze included.
    replica.ensure_leader()?;
    replica.read_barrier().await?;
    let limit = match usize::try_from(req.limit) {
        Ok(0) | Err(_) => SCAN_BATCH_MAX_RECORDS,
        Ok(n) => n.min(SCAN_BATCH_MAX_RECORDS),
    };
    if req.changes {
        let scan = replica
            .reader
            .scan_changes(
                req.partition,
                req.after_version,
                limit,
                SCAN_BATCH_MAX_BYTES,
            )
            .map_err(scan_refused)?;
        return Ok(ScanPartitionReply {
            records: scan
                .records
                .into_iter()
                .map(|r| MigrateRecord {
                    key: r.key,
                    version: r.version,
                    deleted: r.value.is_none(),
                    value: r.value.unwrap_or_default(),
                })
                .collect(),
            done: scan.done,
            version_floor: scan.version_floor,
            last_version: scan.last_version,
            error: None,
        });
    }
    let after = (!req.from_start).then_some(req.after_key.as_slice());
    let scan = replica
        .reader
        .scan_partition(req.partition, after, limit, SCAN_BATCH_MAX_BYTES)
        .map_err(scan_refused)?;
    Ok(ScanPartitionReply {
        records: scan
            .records
            .into_iter()
            .map(|r| MigrateRecord {
                key: r.key,
                version: r.version,
                value: r.value,
                deleted: false,
            })
            .collect(),
        done: scan.done,
        version_floor: scan.version_floor,
        last_version: 0,
        error: None,
    })
}

fn scan_refused(refused: ReadRefused) -> NodeError {
    match refused {
        ReadRefused::NotCopyable { state } => NodeError::MigrationRefused {
            state,
            reason: format!(
                "only an exporting or frozen partition can be scanned; it is {} here",
                PartitionState::name(state)
            ),
        },
        ReadRefused::WrongOwner { epoch } => NodeError::WrongOwner { epoch },
        ReadRefused::Unavailable { reason } => {
            NodeError::Unavailable(format!("the state machine could not be read: {reason}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &[u8], version: u64, value_bytes: usize) -> MigrateRecord {
        MigrateRecord {
            key: key.to_vec(),
            version,
            value: vec![b'1'; value_bytes],
            deleted: false,
        }
    }

    /// Each wire op maps to its step; a missing op, an unknown op, or records on a step other
    /// than INGEST are refused before anything is proposed.
    #[test]
    fn ops_map_to_steps() {
        let step = |op: MigrateOp| step_of(op as i32, Vec::new(), 0, 0).map(|s| s.name());
        assert_eq!(step(MigrateOp::Freeze).unwrap(), "freeze");
        assert_eq!(
            step(MigrateOp::PrepareIncoming).unwrap(),
            "prepare_incoming"
        );
        assert_eq!(step(MigrateOp::Release).unwrap(), "release");
        assert_eq!(step(MigrateOp::Activate).unwrap(), "activate");
        assert_eq!(step(MigrateOp::Purge).unwrap(), "purge");
        assert_eq!(
            step_of(MigrateOp::Purge as i32, Vec::new(), 0, 500).unwrap(),
            MigrationStep::PurgeSome { max_keys: 500 }
        );
        assert_eq!(step(MigrateOp::Restore).unwrap(), "restore");
        assert_eq!(step(MigrateOp::Abandon).unwrap(), "abandon");
        assert_eq!(
            step_of(MigrateOp::Ingest as i32, vec![record(b"k", 3, 1)], 7, 0).unwrap(),
            MigrationStep::Ingest {
                records: vec![MigratedRecord {
                    key: b"k".to_vec(),
                    version: 3,
                    value: b"1".to_vec()
                }],
                version_floor: 7
            }
        );
        assert_eq!(step(MigrateOp::Unspecified).unwrap_err().code(), "invalid");
        assert_eq!(step_of(99, Vec::new(), 0, 0).unwrap_err().code(), "invalid");
        let e = step_of(MigrateOp::Freeze as i32, vec![record(b"k", 1, 1)], 0, 0).unwrap_err();
        assert_eq!(e.code(), "invalid");
    }

    /// INGEST batches are bounded in records and bytes, and malformed records are refused.
    #[test]
    fn ingest_batches_are_bounded() {
        let ingest = |records| step_of(MigrateOp::Ingest as i32, records, 0, 0);
        let many = (0..=INGEST_MAX_RECORDS)
            .map(|i| record(format!("k{i}").as_bytes(), 1, 1))
            .collect();
        assert_eq!(ingest(many).err().map(|e| e.code()), Some("invalid"));
        let full = (0..INGEST_MAX_RECORDS)
            .map(|i| record(format!("k{i}").as_bytes(), 1, 1))
            .collect();
        assert!(ingest(full).is_ok());
        // Four values at the size limit are more bytes than a batch may carry; three are not.
        let big = (0..4)
            .map(|i| record(format!("k{i}").as_bytes(), 1, MAX_VALUE_BYTES))
            .collect();
        assert_eq!(ingest(big).err().map(|e| e.code()), Some("invalid"));
        let three = (0..3)
            .map(|i| record(format!("k{i}").as_bytes(), 1, MAX_VALUE_BYTES))
            .collect();
        assert!(ingest(three).is_ok());
        for bad in [
            record(b"", 1, 1),
            record(b"k", 0, 1),
            record(b"k", 1, MAX_VALUE_BYTES + 1),
            record(&vec![b'k'; MAX_KEY_BYTES + 1], 1, 1),
        ] {
            assert_eq!(ingest(vec![bad]).err().map(|e| e.code()), Some("invalid"));
        }
    }

    /// Every state has its own wire value, and absent is the proto default.
    #[test]
    fn states_map_to_views() {
        assert_eq!(state_view(None), PartitionStateView::Absent);
        assert_eq!(PartitionStateView::default(), PartitionStateView::Absent);
        assert_eq!(
            state_view(Some(PartitionState::Released)),
            PartitionStateView::Released
        );
        assert_eq!(
            state_view(Some(PartitionState::Frozen)),
            PartitionStateView::Frozen
        );
    }
}
