//! The commands a cluster's Raft log carries, and the answers its state machine gives.
//!
//! Every data command names its partition, so that the state machine can refuse, in log order,
//! a command for a partition it does not serve (`docs/design.md#ownership-fencing`). A refusal or a
//! CAS mismatch is a deterministic *answer* recorded with the entry, not an error.
//!
//! Moving a partition between clusters is a sequence of [`MigrationStep`]s, each one a
//! [`Command::Migrate`] entry in the log of the source or the target cluster (see
//! `docs/design.md#partition-states`, and the storage crate's state machine for the transitions).
//! This module only names the commands and their answers; it must not decide transitions or do I/O.

use crate::PartitionId;
use serde::{Deserialize, Serialize};

/// Most records one INGEST step (and one scan batch feeding it) carries. Keeps a migration
/// entry small next to client writes in the same log, so a copy never stalls them for long.
pub const MAX_MIGRATE_BATCH_RECORDS: usize = 512;

/// Most bytes (sum of key and value lengths) one scan batch returns; the first record of a
/// batch is always included whatever its size, so a batch stays under this plus one record.
pub const MAX_MIGRATE_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// A command proposed to a cluster's Raft log.
///
/// Variants are encoded by their position (postcard): append new ones, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write `value` (exact JSON text) under `key` in `partition`.
    /// With `cas = Some(v)`, only if the key's current version is `v` (0 = only if absent).
    Put {
        partition: PartitionId,
        key: Vec<u8>,
        value: Vec<u8>,
        cas: Option<u64>,
    },
    /// Delete `key` in `partition`; with `cas`, only if its current version matches.
    Delete {
        partition: PartitionId,
        key: Vec<u8>,
        cas: Option<u64>,
    },
    /// Make this cluster serve `partitions` as of table `epoch`: listed partitions that are
    /// absent become `Serving`, unlisted `Serving` ones become absent; `Frozen`, `Incoming` and
    /// `Released` partitions are left to the migration steps. Ignored (answered with the current
    /// epoch) when `epoch` is not newer than the one already applied.
    Assign {
        epoch: u64,
        partitions: Vec<PartitionId>,
    },
    /// One step of moving `partition` to or from this cluster.
    Migrate {
        partition: PartitionId,
        step: MigrationStep,
    },
    /// Several client commands proposed as one log entry by the leader's write batcher, so that
    /// concurrent writes share one append, one fsync and one replication round. Applied in
    /// order, each exactly as if it were its own entry, and answered with
    /// [`CommandResult::Batch`] holding one answer per command, in the same order.
    Batch(Vec<Command>),
}

/// What a cluster does with one partition (`docs/design.md#partition-states`). A partition with no
/// state ("absent") is not served and was never moved here.
///
/// The discriminants are the bytes the storage crate stores on disk, and the variant order is
/// the snapshot encoding: never renumber or reorder, only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PartitionState {
    /// Reads and writes are served.
    Serving = 1,
    /// Readable, writes refused (the partition is being moved away).
    Frozen = 2,
    /// Receiving a copy; neither reads nor client writes are served.
    Incoming = 3,
    /// Moved away: not served, data kept until PURGE. A tombstone: Assign never revives it.
    Released = 4,
    /// Served exactly like `Serving` while a copy is taken (pre-copy), and every put and
    /// delete is also logged under the version it consumed, so that the copy can catch up.
    Exporting = 5,
}

impl PartitionState {
    /// The byte stored on disk for this state.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The state a stored byte names, if any.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Serving),
            2 => Some(Self::Frozen),
            3 => Some(Self::Incoming),
            4 => Some(Self::Released),
            5 => Some(Self::Exporting),
            _ => None,
        }
    }

    /// Whether client reads of the partition are answered in this state.
    #[must_use]
    pub fn readable(self) -> bool {
        matches!(self, Self::Serving | Self::Frozen | Self::Exporting)
    }

    /// Whether the partition may be copied to a new owner from this state (a full scan or its
    /// change log): while it is exported, or frozen.
    #[must_use]
    pub fn copyable(self) -> bool {
        matches!(self, Self::Exporting | Self::Frozen)
    }

    /// Whether client writes of the partition are applied in this state.
    #[must_use]
    pub fn writable(self) -> bool {
        matches!(self, Self::Serving | Self::Exporting)
    }

    /// A lower-case name for messages and logs; `None` (absent) is "absent".
    #[must_use]
    pub fn name(state: Option<Self>) -> &'static str {
        match state {
            None => "absent",
            Some(Self::Serving) => "serving",
            Some(Self::Frozen) => "frozen",
            Some(Self::Incoming) => "incoming",
            Some(Self::Released) => "released",
            Some(Self::Exporting) => "exporting",
        }
    }
}

/// One key copied from a source cluster to a target, with the version it had at the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigratedRecord {
    pub key: Vec<u8>,
    pub version: u64,
    /// Exact JSON text.
    pub value: Vec<u8>,
}

/// One change read from a source's change log: the key's record as it was when read, or its
/// deletion (`value: None`) by the change with `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedRecord {
    pub key: Vec<u8>,
    pub version: u64,
    /// Exact JSON text; `None` if the key was deleted.
    pub value: Option<Vec<u8>>,
}

/// One step of a partition move. Each is idempotent: repeated in the state it leads to, it
/// succeeds and changes nothing (PREPARE_INCOMING and INGEST excepted as documented).
///
/// Variants are encoded by their position (postcard): append new ones, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationStep {
    /// Source: `Serving | Exporting → Frozen`. Writes are refused from this entry on; reads
    /// still served.
    Freeze,
    /// Target: absent, `Incoming` or `Released` → `Incoming`, deleting any data left under the
    /// partition first (so a retried or earlier aborted copy leaves nothing stale behind).
    PrepareIncoming,
    /// Target, requires `Incoming`: store `records` (overwriting) and raise the partition's
    /// version counter to at least `version_floor` and every record's version.
    Ingest {
        records: Vec<MigratedRecord>,
        version_floor: u64,
    },
    /// Source: `Frozen → Released`. Reads stop; the data stays until `Purge`.
    Release,
    /// Target: `Incoming → Serving`.
    Activate,
    /// Source, requires `Released`: deletes the partition's data; the state stays `Released`.
    Purge,
    /// Source, aborting a move whose target never got `Activate`:
    /// `Exporting | Frozen | Released → Serving`, dropping the change log.
    Restore,
    /// Target, aborting: `Incoming → absent`, deleting the partition's data.
    Abandon,
    /// Source, before the pre-copy: `Serving → Exporting`. From this entry on every put and
    /// delete of the partition is logged by version until the partition is released or restored.
    Export,
    /// Target, requires `Incoming`: applies each change whose version is above the key's version
    /// here (a put stores the record, a deletion removes the key), and raises the version
    /// counter to at least `version_floor` and every change's version.
    IngestChanges {
        records: Vec<ChangedRecord>,
        version_floor: u64,
    },
    /// Source, requires `Released`: deletes at most `max_keys` of the partition's keys (the
    /// first in key order), so that a large partition is purged in bounded entries instead of
    /// one entry that stalls the cluster's apply; repeated until no key is left. The state stays
    /// `Released`.
    PurgeSome { max_keys: u32 },
}

impl MigrationStep {
    /// A lower-case name for messages and logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Freeze => "freeze",
            Self::PrepareIncoming => "prepare_incoming",
            Self::Ingest { .. } => "ingest",
            Self::Release => "release",
            Self::Activate => "activate",
            Self::Purge => "purge",
            Self::Restore => "restore",
            Self::Abandon => "abandon",
            Self::Export => "export",
            Self::IngestChanges { .. } => "ingest_changes",
            Self::PurgeSome { .. } => "purge_some",
        }
    }
}

/// The state machine's answer to one applied entry.
///
/// Variants are encoded by their position (postcard): append new ones, never reorder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The entry was not a command (blank or membership entry).
    #[default]
    Empty,
    /// The put took effect; the key now has this version.
    Written { version: u64 },
    /// The delete was applied; `deleted` says whether the key existed.
    Deleted { deleted: bool },
    /// A CAS condition failed; `current` is the key's version (0 = absent). Nothing changed.
    CasMismatch { current: u64 },
    /// This cluster does not serve the partition (as of assignment `epoch`). Nothing changed.
    WrongOwner { epoch: u64 },
    /// The assignment now in force has this epoch.
    Assigned { epoch: u64 },
    /// A migration step took effect (or was already in effect). `state` is the partition's
    /// state after it (`None` = absent), `records_applied` the records an INGEST stored, and
    /// `partition_keys` the keys this cluster now holds under the partition.
    Migrated {
        state: Option<PartitionState>,
        records_applied: u64,
        partition_keys: u64,
    },
    /// The step is not allowed in the partition's current `state`; nothing changed.
    MigrationRefused {
        state: Option<PartitionState>,
        reason: String,
    },
    /// The answers to a [`Command::Batch`], one per command, in order.
    Batch(Vec<CommandResult>),
}

/// A key's stored record: its per-key version and its exact JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub value: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every partition state survives its on-disk byte, and unknown bytes name no state.
    #[test]
    fn state_bytes_round_trip() {
        for s in [
            PartitionState::Serving,
            PartitionState::Frozen,
            PartitionState::Incoming,
            PartitionState::Released,
            PartitionState::Exporting,
        ] {
            assert_eq!(PartitionState::from_byte(s.to_byte()), Some(s));
        }
        assert_eq!(PartitionState::from_byte(0), None);
        assert_eq!(PartitionState::from_byte(6), None);
        assert!(PartitionState::Exporting.readable() && PartitionState::Exporting.writable());
        assert!(PartitionState::Exporting.copyable() && !PartitionState::Serving.copyable());
        assert!(PartitionState::Frozen.readable() && !PartitionState::Frozen.writable());
        assert!(!PartitionState::Released.readable() && !PartitionState::Incoming.readable());
    }
}
