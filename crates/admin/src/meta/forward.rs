//! A follower admin's metadata changes, forwarded to the admins' leader (`ProposeMeta` on its
//! gRPC port), and the leader's side of that call: the proposal's encoding and its answer's.

use super::members::{AdminChange, ChangeAnswer};
use super::raft::AdminNode;
use super::{MetaCommand, MetaError, MetaOutcome, MetaRefusal};
use ravel_proto::v1::admin_client::AdminClient;
use ravel_proto::v1::{ChangeAdminsReply, ChangeAdminsRequest, MetaProposal, MetaProposalReply};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::Channel;

/// Deadline of one forwarded proposal.
const FORWARD_CALL_TIMEOUT_MS: u64 = 5_000;

/// Deadline of one forwarded membership change (the leader waits for an added admin to catch
/// up, at most 30 s).
const FORWARD_CHANGE_TIMEOUT_MS: u64 = 35_000;

/// Why the leader did not answer a forwarded proposal with its outcome.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardRefusal {
    /// It does not lead (any more): nothing was proposed.
    NotLeader,
    /// It proposed the command but could not tell whether it committed.
    Failed(String),
}

/// A forwarded proposal's answer as it travels.
pub type ProposalAnswer = Result<Result<MetaOutcome, MetaRefusal>, ForwardRefusal>;

/// The leader's answer to a forwarded proposal, from its own `execute_here`.
pub fn proposal_answer(result: Result<MetaOutcome, MetaError>) -> ProposalAnswer {
    match result {
        Ok(outcome) => Ok(Ok(outcome)),
        Err(MetaError::Refused(refusal)) => Ok(Err(refusal)),
        Err(MetaError::NotLeader { .. }) => Err(ForwardRefusal::NotLeader),
        Err(other) => Err(ForwardRefusal::Failed(other.to_string())),
    }
}

/// Encodes a proposal's answer for `MetaProposalReply`.
pub fn encode_answer(answer: &ProposalAnswer) -> Result<MetaProposalReply, tonic::Status> {
    let answer = ravel_raft_transport::encode(answer)
        .map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))?;
    Ok(MetaProposalReply {
        answer: answer.to_vec(),
    })
}

/// Encodes a membership change's answer for `ChangeAdminsReply`.
pub fn encode_change_answer(answer: &ChangeAnswer) -> Result<ChangeAdminsReply, tonic::Status> {
    let answer = ravel_raft_transport::encode(answer)
        .map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))?;
    Ok(ChangeAdminsReply {
        answer: answer.to_vec(),
    })
}

/// Decodes a forwarded command.
pub fn decode_proposal(proposal: &MetaProposal) -> Result<MetaCommand, tonic::Status> {
    ravel_raft_transport::decode(&proposal.command)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable metadata command: {e}")))
}

/// The forwarding client: one cached channel to the leader last forwarded to.
#[derive(Default)]
pub(super) struct Forwarder {
    channel: Mutex<Option<(String, Channel)>>,
}

impl Forwarder {
    fn client(&self, addr: &str) -> Result<AdminClient<Channel>, MetaError> {
        let mut cached = self
            .channel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let channel = match cached.as_ref() {
            Some((at, channel)) if at == addr => channel.clone(),
            _ => {
                let channel = ravel_raft_transport::lazy_channel(addr)
                    .map_err(|e| MetaError::Forward(format!("admin address {addr}: {e}")))?;
                *cached = Some((addr.to_owned(), channel.clone()));
                channel
            }
        };
        Ok(AdminClient::new(channel))
    }

    /// Forwards an admins' membership change to `leader`, with the same answers as
    /// [`Self::forward`] (an added admin's catch-up may take a while: the deadline allows it).
    pub(super) async fn forward_change(
        &self,
        leader: &AdminNode,
        change: &AdminChange,
    ) -> Result<Option<Result<Vec<u64>, MetaError>>, MetaError> {
        let (add, grpc_addr) = match change {
            AdminChange::Add(addr) => (true, addr.clone()),
            AdminChange::Remove(addr) => (false, addr.clone()),
        };
        let mut request = tonic::Request::new(ChangeAdminsRequest { add, grpc_addr });
        request.set_timeout(Duration::from_millis(FORWARD_CHANGE_TIMEOUT_MS));
        let reply = match self.client(&leader.grpc_addr)?.change_admins(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => return Ok(None),
            Err(status) => {
                return Err(MetaError::Forward(format!(
                    "forwarding to the admins' leader {}: {}",
                    leader.grpc_addr,
                    status.message()
                )));
            }
        };
        let answer: ChangeAnswer = ravel_raft_transport::decode(&reply.answer)
            .map_err(|e| MetaError::Forward(format!("undecodable answer: {e}")))?;
        match answer {
            Ok(voters) => Ok(Some(Ok(voters))),
            Err(ForwardRefusal::NotLeader) => Ok(None),
            Err(ForwardRefusal::Failed(why)) => Ok(Some(Err(MetaError::Forward(why)))),
        }
    }

    /// Forwards `cmd` to `leader`: `Some` with the outcome when the leader took it; `None` when
    /// it certainly did not (it does not lead, or it was unreachable), so the caller may look
    /// for the leader again; an error when whether it committed is unknown.
    pub(super) async fn forward(
        &self,
        leader: &AdminNode,
        cmd: &MetaCommand,
    ) -> Result<Option<Result<MetaOutcome, MetaError>>, MetaError> {
        let command = ravel_raft_transport::encode(cmd)
            .map_err(|e| MetaError::Forward(format!("encoding the command: {e}")))?;
        let mut request = tonic::Request::new(MetaProposal {
            command: command.to_vec(),
        });
        request.set_timeout(Duration::from_millis(FORWARD_CALL_TIMEOUT_MS));
        let reply = match self.client(&leader.grpc_addr)?.propose_meta(request).await {
            Ok(reply) => reply.into_inner(),
            // Not connected, or the leader is going away: the call did not run there. (A
            // forwarded command is one a replica or a client repeats safely: a registration by
            // token, marking that data exists, a removal.)
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tracing::debug!(leader = %leader.grpc_addr, error = %status.message(), "the admins' leader is unreachable");
                return Ok(None);
            }
            Err(status) => {
                return Err(MetaError::Forward(format!(
                    "forwarding to the admins' leader {}: {}",
                    leader.grpc_addr,
                    status.message()
                )));
            }
        };
        let answer: ProposalAnswer = ravel_raft_transport::decode(&reply.answer)
            .map_err(|e| MetaError::Forward(format!("undecodable answer: {e}")))?;
        match answer {
            Ok(Ok(outcome)) => Ok(Some(Ok(outcome))),
            Ok(Err(refusal)) => Ok(Some(Err(MetaError::Refused(refusal)))),
            Err(ForwardRefusal::NotLeader) => Ok(None),
            Err(ForwardRefusal::Failed(why)) => Err(MetaError::Forward(why)),
        }
    }
}
