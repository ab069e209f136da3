//! The serving side: the envelope check and openraft's three calls, for a group's own
//! `RaftTransport` service to build on (each group adds what it needs around them).
//!
//! An envelope addressed to another group or another node is refused with
//! `FailedPrecondition`: delivering a Raft message to the wrong member can lose data or elect
//! two leaders. A message that passes is decoded and handed to openraft; openraft's whole
//! `Result` is encoded back.

use openraft::error::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::{Raft, RaftTypeConfig};
use ravel_proto::v1::{RaftEnvelope, RaftReply};
use serde::Serialize;
use tonic::{Response, Status};

use crate::client::{FatalOr, SnapshotResult};
use crate::codec::{decode, encode};

/// One member's end of its group's transport.
pub struct Endpoint<C: RaftTypeConfig<NodeId = u64>> {
    group_id: u64,
    node_id: u64,
    raft: Raft<C>,
}

/// A served call's reply, and whether it showed a live leader (an accepted append-entries or
/// snapshot) or a granted vote: check-quorum counts those.
pub type Served = (Response<RaftReply>, bool);

/// Encodes `answer` as the reply payload.
pub fn reply<T: Serialize>(answer: &T) -> Result<Response<RaftReply>, Status> {
    let payload =
        encode(answer).map_err(|e| Status::internal(format!("encoding the Raft answer: {e}")))?;
    Ok(Response::new(RaftReply { payload }))
}

/// The status of an undecodable request.
pub fn bad_payload(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable Raft request: {e}"))
}

/// Append-entries and vote can only fail fatally; the `Infallible` API error cannot occur.
/// (`Fatal` is openraft's type and travels by value to be encoded; its size is not ours to box.)
#[allow(clippy::result_large_err)]
fn fatal_only<T>(result: Result<T, RaftError<u64>>) -> FatalOr<T> {
    result.map_err(|e| match e {
        RaftError::Fatal(f) => f,
        RaftError::APIError(never) => match never {},
    })
}

impl<C: RaftTypeConfig<NodeId = u64>> Endpoint<C> {
    /// Member `node_id` of group `group_id`, served by `raft`.
    #[must_use]
    pub fn new(group_id: u64, node_id: u64, raft: Raft<C>) -> Self {
        Self {
            group_id,
            node_id,
            raft,
        }
    }

    /// The Raft this endpoint serves.
    #[must_use]
    pub fn raft(&self) -> &Raft<C> {
        &self.raft
    }

    /// The envelope's payload if it is addressed to this member.
    pub fn accept(&self, envelope: RaftEnvelope) -> Result<bytes::Bytes, Status> {
        if envelope.cluster_id != self.group_id {
            return Err(Status::failed_precondition(format!(
                "this Raft endpoint belongs to group {}, not group {}",
                self.group_id, envelope.cluster_id
            )));
        }
        if envelope.target_node_id != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this Raft endpoint is node {}, not node {}",
                self.node_id, envelope.target_node_id
            )));
        }
        Ok(envelope.payload)
    }

    /// Serves an append-entries; the flag: accepted (not refused for a higher vote).
    pub async fn append_entries(&self, envelope: RaftEnvelope) -> Result<Served, Status> {
        let payload = self.accept(envelope)?;
        let rpc: AppendEntriesRequest<C> = decode(&payload).map_err(bad_payload)?;
        let answer = fatal_only(self.raft.append_entries(rpc).await);
        let accepted =
            matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_)));
        Ok((reply(&answer)?, accepted))
    }

    /// Serves a vote request; the flag: the vote was granted.
    pub async fn vote(&self, envelope: RaftEnvelope) -> Result<Served, Status> {
        let payload = self.accept(envelope)?;
        let rpc: VoteRequest<u64> = decode(&payload).map_err(bad_payload)?;
        let answer = fatal_only(self.raft.vote(rpc).await);
        let granted = matches!(&answer, Ok(a) if a.vote_granted);
        Ok((reply(&answer)?, granted))
    }

    /// Serves a snapshot chunk; the flag: it was accepted.
    pub async fn install_snapshot(&self, envelope: RaftEnvelope) -> Result<Served, Status> {
        let payload = self.accept(envelope)?;
        let rpc: InstallSnapshotRequest<C> = decode(&payload).map_err(bad_payload)?;
        let answer: SnapshotResult = self.raft.install_snapshot(rpc).await;
        let accepted = answer.is_ok();
        Ok((reply(&answer)?, accepted))
    }
}
