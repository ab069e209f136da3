//! Named limits and timeouts, with their units in their names.
//!
//! Every input a client can send is bounded here, before it can reach a Raft log. The numbers
//! follow the interface contract (`docs/design.md#limits-and-timeouts`): keys up to 1 KiB, values
//! up to 1 MiB, whole request bodies up to 1.5 MiB (a 1 MiB value plus its key and JSON framing,
//! with room to spare), and values nested at most 256 levels deep.

/// Largest key, in bytes of its UTF-8 encoding.
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value, in bytes of its JSON text as sent.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Deepest nesting of arrays and objects in a stored value (`[[1]]` is 2 levels deep; a scalar
/// is 0). Deeper values are refused, because readers that parse recursively (serde_json's
/// `Value` stops at 128, Python's `json` at about 1,000) could not read them back, and a parser
/// without a limit could be made to overflow its stack.
pub const MAX_JSON_DEPTH: usize = 256;

/// Largest HTTP request body the admin reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024 + 512 * 1024;

/// Largest gRPC message either side decodes: a whole put plus framing, or one snapshot chunk.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Default number of partitions chosen at the admin's first start.
pub const DEFAULT_PARTITIONS: u32 = 1024;

/// Upper bound on the partition count an operator may choose. It keeps the admin's persisted
/// table small (a few tens of KiB), well under the size at which sled moves a value out to a
/// separate blob file, and one assignment command well under a gRPC message.
pub const MAX_PARTITIONS: u32 = 16_384;

/// Deadline of one admin → node data call (put, get, delete).
pub const DATA_RPC_TIMEOUT_MS: u64 = 5_000;

/// Deadline of one control call (status, join, assign, leave).
pub const CONTROL_RPC_TIMEOUT_MS: u64 = 10_000;

/// Deadline for opening a TCP connection to a peer.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Heartbeat period of a Raft leader (replicas' clusters and the admins' group): ten per
/// leader lease.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;

/// openraft draws election timeouts from this range, and its leader lease (a voter refuses to
/// vote while it heard a leader within the lease) is the maximum. Measured under the
/// benchmark's load on the 2-core machine: no election without a fault (BENCHMARKS.md).
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 500;
/// See [`ELECTION_TIMEOUT_MIN_MS`].
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 1_000;
