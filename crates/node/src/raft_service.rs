//! The server side of a replica's Raft transport (the `RaftTransport` gRPC service on
//! `--raftaddr`): openraft's calls through the shared transport's endpoint (which refuses
//! envelopes for another cluster or node), plus the replica's own pre-vote and hand-over
//! calls. Every accepted leader message is recorded for check-quorum. This module must not
//! interpret Raft messages beyond that.

use ravel_core::{ClusterId, NodeId};
use ravel_proto::v1::raft_transport_server::RaftTransport;
use ravel_proto::v1::{RaftEnvelope, RaftReply};
use ravel_raft_transport::server::{bad_payload, reply};
use ravel_raft_transport::{Endpoint, decode};
use ravel_storage::{Raft, TypeConfig};
use tonic::{Request, Response, Status};

use crate::handover::TimeoutNow;
use crate::prevote::{PreVoteRequest, PreVoter};

/// The Raft transport service of one replica.
pub struct RaftService {
    endpoint: Endpoint<TypeConfig>,
    node_id: NodeId,
    raft: Raft,
    prevoter: PreVoter,
}

impl RaftService {
    /// The service for replica `node_id` of cluster `cluster_id`; it records in the
    /// pre-voter's contact every leader message Raft accepts.
    #[must_use]
    pub fn new(cluster_id: ClusterId, node_id: NodeId, prevoter: PreVoter) -> Self {
        Self {
            endpoint: Endpoint::new(cluster_id, node_id, prevoter.raft.clone()),
            node_id,
            raft: prevoter.raft.clone(),
            prevoter,
        }
    }

    /// Notes a sign of a live leader (an accepted append or snapshot, a granted vote) and
    /// passes the reply on.
    fn heard(&self, (response, live_leader): (Response<RaftReply>, bool)) -> Response<RaftReply> {
        if live_leader {
            // As in Raft, granting a vote also restarts the wait before campaigning: the
            // candidate is about to lead, and a pre-vote now would only depose it.
            self.prevoter.contact.heard_from_leader();
        }
        response
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftReply>, Status> {
        let served = self.endpoint.append_entries(request.into_inner()).await?;
        Ok(self.heard(served))
    }

    async fn vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftReply>, Status> {
        let served = self.endpoint.vote(request.into_inner()).await?;
        Ok(self.heard(served))
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftReply>, Status> {
        let served = self.endpoint.install_snapshot(request.into_inner()).await?;
        Ok(self.heard(served))
    }

    async fn timeout_now(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftReply>, Status> {
        let payload = self.endpoint.accept(request.into_inner())?;
        let rpc: TimeoutNow = decode(&payload).map_err(bad_payload)?;
        reply(&self.campaign(&rpc).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftReply>, Status> {
        let payload = self.endpoint.accept(request.into_inner())?;
        let rpc: PreVoteRequest = decode(&payload).map_err(bad_payload)?;
        reply(&self.prevoter.answer(&rpc))
    }
}

impl RaftService {
    /// Starts an election at once for a stopping leader's hand-over (see `handover`), if this
    /// replica is a voter whose log holds everything the leader has.
    async fn campaign(&self, rpc: &TimeoutNow) -> Result<(), String> {
        let is_voter = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .any(|id| id == self.node_id);
        // From the log itself: openraft's metrics publish an append a moment after it (a
        // hand-over was refused once for an entry the log already held).
        let last_index = self.prevoter.log.last_log_id().map_or(0, |l| l.index);
        if !is_voter {
            return Err(format!("node {} is not a voter", self.node_id));
        }
        if last_index < rpc.leader_last_log_index {
            return Err(format!(
                "node {} holds the log up to {last_index}, the leader up to {}",
                self.node_id, rpc.leader_last_log_index
            ));
        }
        tracing::info!(from = rpc.leader, "the leader hands over: campaigning now");
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| format!("Raft is stopped: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::raft::{VoteRequest, VoteResponse};
    use ravel_raft_transport::client::FatalOr;
    use ravel_raft_transport::encode;
    use ravel_storage::Storage;
    use std::sync::Arc;

    async fn service(dir: &std::path::Path) -> (RaftService, Raft) {
        let storage = Storage::open(dir).unwrap();
        let config = Arc::new(crate::raft_config(7, 100).unwrap());
        let contact = Arc::new(crate::contact::Contact::default());
        let network = crate::raft_net::network(7, contact.clone());
        let raft = Raft::new(
            3,
            config,
            network.clone(),
            storage.log_store(),
            storage.state_machine(),
        )
        .await
        .unwrap();
        let prevoter = PreVoter {
            raft: raft.clone(),
            log: storage.log_store(),
            contact,
            network,
        };
        (RaftService::new(7, 3, prevoter), raft)
    }

    fn envelope(
        cluster_id: u64,
        target_node_id: u64,
        payload: bytes::Bytes,
    ) -> Request<RaftEnvelope> {
        Request::new(RaftEnvelope {
            cluster_id,
            target_node_id,
            payload,
        })
    }

    /// An envelope for another cluster or another node is refused with FailedPrecondition and
    /// never reaches Raft; one addressed to this replica is answered with Raft's own result.
    #[tokio::test]
    async fn refuses_misaddressed_envelopes() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, raft) = service(dir.path()).await;
        let vote: VoteRequest<NodeId> = VoteRequest::new(openraft::Vote::new(5, 1), None);
        let payload = encode(&vote).unwrap();

        let err = svc.vote(envelope(8, 3, payload.clone())).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("group 7"), "{}", err.message());
        let err = svc
            .append_entries(envelope(7, 4, payload.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("node 3"), "{}", err.message());
        let err = svc
            .install_snapshot(envelope(7, 9, payload.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        // The refused vote was not seen by Raft: its term is still 0.
        assert_eq!(raft.metrics().borrow().current_term, 0);

        let err = svc
            .vote(envelope(7, 3, bytes::Bytes::from_static(&[1, 0xff])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        let reply = svc
            .vote(envelope(7, 3, payload))
            .await
            .unwrap()
            .into_inner();
        let answer: FatalOr<VoteResponse<NodeId>> = decode(&reply.payload).unwrap();
        assert!(answer.unwrap().vote_granted);
        raft.shutdown().await.unwrap();
    }
}
