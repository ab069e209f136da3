//! The Raft transport over gRPC (the `RaftTransport` service), for any openraft group whose
//! node ids are `u64`: the replicas' clusters and the admins' group use the same code.
//!
//! Each openraft request travels in a `RaftEnvelope { cluster_id, target_node_id, payload }`
//! (`cluster_id` names the group: a cluster's id, or [`ADMIN_GROUP_ID`]); the payload is a
//! one-byte format tag followed by the postcard encoding of the request, and the reply payload
//! is the tag plus the encoding of the whole `Result`, so remote Raft errors travel as data.
//!
//! - [`codec`]: the tagged payload encoding.
//! - [`client`]: openraft's network (`NetworkFactory`, one `PeerClient` per peer) with one
//!   lazily connected channel per peer address, and hooks a group may attach to its links.
//! - [`server`]: the serving side's envelope check and the three openraft calls.
//!
//! This crate must not decide anything about Raft itself: it only carries bytes and maps
//! transport failures to the errors openraft expects (unreachable peers make openraft back off).

pub mod client;
pub mod codec;
pub mod server;

pub use client::{LinkHooks, NetworkFactory, PeerClient, RaftAddrOf, lazy_channel};
pub use codec::{CodecError, FORMAT_POSTCARD, decode, encode};
pub use server::Endpoint;

/// The `cluster_id` the admins' group puts in its envelopes: clusters are numbered from 1, so
/// a message for the admins can never be taken for a cluster's, or the other way round.
pub const ADMIN_GROUP_ID: u64 = 0;
