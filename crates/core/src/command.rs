//! The commands a cluster's Raft log carries, and the answers its state machine gives.
//!
//! Every data command names its partition, so that the state machine can refuse, in log order,
//! a command for a partition it does not serve (ownership fencing, DESIGN §4). A refusal or a
//! CAS mismatch is a deterministic *answer* recorded with the entry, not an error.

use crate::PartitionId;
use serde::{Deserialize, Serialize};

/// A command proposed to a cluster's Raft log.
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
    /// Replace the set of partitions this cluster serves, as of table `epoch`. Ignored (answered
    /// with the current epoch) when `epoch` is not newer than the one already applied.
    Assign {
        epoch: u64,
        partitions: Vec<PartitionId>,
    },
}

/// The state machine's answer to one applied entry.
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
}

/// A key's stored record: its per-key version and its exact JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub value: Vec<u8>,
}
