//! The shared vocabulary of Ravel-rs, at the bottom of the dependency graph.
//!
//! Everything here is plain data and pure functions: identifiers, the named limits, the frozen
//! partition function, the partition table with the ring that computes it, and the commands a
//! cluster's Raft log carries. This crate must not do I/O and must not know about gRPC, HTTP,
//! sled or openraft, so that every other crate can depend on it.

pub mod command;
pub mod limits;
pub mod partition;
pub mod table;

/// Identifies a replica (one `ravel_node` process) across the whole store. Allocated by the
/// admin, never reused, persisted in the replica's storage directory.
pub type NodeId = u64;

/// Identifies a cluster (one Raft group). Allocated by the admin, never reused.
pub type ClusterId = u64;

/// One of the P fixed partitions of the key space, `0..P`.
pub type PartitionId = u32;

pub use partition::partition_of;
pub use table::PartitionTable;
