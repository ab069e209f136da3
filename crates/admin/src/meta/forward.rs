//! A follower admin's metadata changes, forwarded to the admins' leader on its gRPC port
//! (`ProposeMeta` for a command, `ChangeAdmins` for a membership change), and the leader's
//! side of those calls: the proposal's encoding and the answer's.

use super::members::AdminChange;
use super::raft::AdminNode;
use super::{MetaCommand, MetaError, MetaOutcome, MetaRefusal};
use ravel_proto::v1::admin_client::AdminClient;
use ravel_proto::v1::{ChangeAdminsRequest, MetaProposal};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::Channel;

/// Deadline of one forwarded proposal.
const FORWARD_CALL_TIMEOUT_MS: u64 = 5_000;

/// Deadline of one forwarded membership change (the leader waits for an added admin to catch
/// up, at most 30 s).
const FORWARD_CHANGE_TIMEOUT_MS: u64 = 35_000;

/// Why the leader did not answer a forwarded call with its result.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardRefusal {
    /// It does not lead (any more): nothing was done.
    NotLeader,
    /// It tried but could not tell whether the change committed.
    Failed(String),
}

/// A forwarded call's answer as it travels: the leader's result (a command's outcome, the
/// voters after a membership change) or its deterministic refusal, or why there is neither.
pub type Answer<T> = Result<Result<T, MetaRefusal>, ForwardRefusal>;

/// The leader's answer to a forwarded call, from its own result.
pub fn answer_of<T>(result: Result<T, MetaError>) -> Answer<T> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(MetaError::Refused(refusal)) => Ok(Err(refusal)),
        Err(MetaError::NotLeader { .. }) => Err(ForwardRefusal::NotLeader),
        Err(other) => Err(ForwardRefusal::Failed(other.to_string())),
    }
}

/// Encodes an answer for its reply message (`MetaProposalReply`, `ChangeAdminsReply`).
pub fn encode_answer<T: Serialize>(answer: &Answer<T>) -> Result<Vec<u8>, tonic::Status> {
    ravel_raft_transport::encode(answer)
        .map(|bytes| bytes.to_vec())
        .map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))
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

    /// Sends one call to `leader` with `call` (which returns the reply's encoded answer):
    /// `Some` with the leader's result when it took the call; `None` when it certainly did not
    /// (it does not lead, or it was unreachable: the call did not run there), so the caller
    /// may look for the leader again; an error when whether it took effect is unknown. (What
    /// is forwarded is what a replica, a client or an operator repeats safely: a registration
    /// by token, marking that data exists, a removal, a membership change.)
    async fn send<T: DeserializeOwned>(
        &self,
        leader: &AdminNode,
        call: impl AsyncFnOnce(AdminClient<Channel>) -> Result<Vec<u8>, tonic::Status>,
    ) -> Result<Option<Result<T, MetaError>>, MetaError> {
        let reply = match call(self.client(&leader.grpc_addr)?).await {
            Ok(reply) => reply,
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
        let answer: Answer<T> = ravel_raft_transport::decode(&reply)
            .map_err(|e| MetaError::Forward(format!("undecodable answer: {e}")))?;
        match answer {
            Ok(Ok(value)) => Ok(Some(Ok(value))),
            Ok(Err(refusal)) => Ok(Some(Err(MetaError::Refused(refusal)))),
            Err(ForwardRefusal::NotLeader) => Ok(None),
            Err(ForwardRefusal::Failed(why)) => Err(MetaError::Forward(why)),
        }
    }

    /// Forwards `cmd` to `leader` (`ProposeMeta`); answers as [`Self::send`].
    pub(super) async fn forward(
        &self,
        leader: &AdminNode,
        cmd: &MetaCommand,
    ) -> Result<Option<Result<MetaOutcome, MetaError>>, MetaError> {
        let command = ravel_raft_transport::encode(cmd)
            .map_err(|e| MetaError::Forward(format!("encoding the command: {e}")))?
            .to_vec();
        self.send(leader, async |mut client| {
            let mut request = tonic::Request::new(MetaProposal { command });
            request.set_timeout(Duration::from_millis(FORWARD_CALL_TIMEOUT_MS));
            Ok(client.propose_meta(request).await?.into_inner().answer)
        })
        .await
    }

    /// Forwards an admins' membership change to `leader` (`ChangeAdmins`; the deadline allows
    /// for an added admin's catch-up); answers as [`Self::send`].
    pub(super) async fn forward_change(
        &self,
        leader: &AdminNode,
        change: &AdminChange,
    ) -> Result<Option<Result<Vec<u64>, MetaError>>, MetaError> {
        let (add, grpc_addr) = match change {
            AdminChange::Add(addr) => (true, addr.clone()),
            AdminChange::Remove(addr) => (false, addr.clone()),
        };
        self.send(leader, async |mut client| {
            let mut request = tonic::Request::new(ChangeAdminsRequest { add, grpc_addr });
            request.set_timeout(Duration::from_millis(FORWARD_CHANGE_TIMEOUT_MS));
            Ok(client.change_admins(request).await?.into_inner().answer)
        })
        .await
    }
}
