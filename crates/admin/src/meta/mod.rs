//! The admin's metadata (clusters, replicas, the partition table) as ONE deterministic state
//! machine, with a durable store behind it.
//!
//! Every change is a [`MetaCommand`] applied by [`MetaState::apply`]: pure, no I/O, no clock, no
//! randomness, no hash-map iteration. That makes it the state machine of the admins' Raft
//! group (`raft`): each command is a log entry, and every admin applies the same entries to the
//! same state.
//!
//! [`MetaStore`] proposes each command to the group and answers once it is committed (durable
//! on a majority) and applied here; the applied state is published as one `Arc` swap, so no
//! reader sees a state before it is durable. A restart rebuilds exactly the applied state from
//! the last snapshot and the log after it. A single admin is a group of one.
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
//! `format` (the state's encoding and checks), `raft` (the group's types, log entry and state
//! machine), `store` (`MetaStore`: the group, opened and driven), `duties` (whether this admin
//! leads; the base proposal), `members` (adding and removing admins), `forward` (a follower's changes sent to the leader) and
//! `transport` (how the group's Raft reaches other admins).

mod command;
mod duties;
mod error;
mod format;
pub mod forward;
pub mod members;
mod moves;
pub mod raft;
mod state;
mod store;
#[cfg(test)]
mod test_support;
pub mod transport;

pub use command::{MetaCommand, MetaOutcome};
pub use error::{MetaError, MetaRefusal};
pub use moves::{MoveRecord, MoveStep, PlannedMove, plan_moves};
pub use state::{ClusterRecord, MetaState, ReplicaRecord};
pub use store::{DEFAULT_SNAPSHOT_EVERY, MetaOptions, MetaStore, admin_id_of};
