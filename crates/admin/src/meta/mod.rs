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
//!
//! Its parts: `state` (the records, `MetaState` and `apply`), `command` (commands and outcomes),
//! `moves` (the move model, the planner and the move transitions), `error` (refusals and errors),
//! `format` (the stored record's encoding and checks), `store` (`MetaStore` on sled) and `raft`
//! (the same state machine for an admins' Raft group, not wired in yet).

mod command;
mod error;
mod format;
mod moves;
pub mod raft;
mod state;
mod store;
#[cfg(test)]
mod test_support;

pub use command::{MetaCommand, MetaOutcome};
pub use error::{MetaError, MetaRefusal};
pub use moves::{MoveRecord, MoveStep, PlannedMove, plan_moves};
pub use state::{ClusterRecord, MetaState, ReplicaRecord};
pub use store::MetaStore;
