//! How the admins' Raft reaches the other admins of its group: the store's shared Raft
//! transport (`ravel_raft_transport`) between the admins' `--grpc` ports, in envelopes for
//! [`ADMIN_GROUP_ID`], and the `RaftTransport` service each admin serves there. The admins
//! need neither pre-vote nor leadership hand-over, so those two calls are refused.

use super::raft::{AdminNode, AdminTypes};
use openraft::Raft;
use ravel_proto::v1::raft_transport_server::{RaftTransport, RaftTransportServer};
use ravel_proto::v1::{RaftEnvelope, RaftReply};
use ravel_raft_transport::{ADMIN_GROUP_ID, Endpoint, NetworkFactory};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// openraft's network of one admin.
pub type Network = NetworkFactory<AdminTypes>;

/// The network to the other admins (each serves Raft on its gRPC address).
#[must_use]
pub fn network() -> Network {
    NetworkFactory::new(
        ADMIN_GROUP_ID,
        |node: &AdminNode| node.grpc_addr.as_str(),
        Arc::new(()),
    )
}

/// The `RaftTransport` service of admin `id`.
pub struct AdminRaftService {
    endpoint: Endpoint<AdminTypes>,
}

impl AdminRaftService {
    /// The tonic service for admin `id`, served by `raft`.
    #[must_use]
    pub fn server(id: u64, raft: Raft<AdminTypes>) -> RaftTransportServer<Self> {
        RaftTransportServer::new(Self {
            endpoint: Endpoint::new(ADMIN_GROUP_ID, id, raft),
        })
        .max_decoding_message_size(ravel_core::limits::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(ravel_core::limits::MAX_GRPC_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl RaftTransport for AdminRaftService {
    async fn append_entries(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftReply>, Status> {
        Ok(self.endpoint.append_entries(request.into_inner()).await?.0)
    }

    async fn vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftReply>, Status> {
        Ok(self.endpoint.vote(request.into_inner()).await?.0)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftReply>, Status> {
        Ok(self
            .endpoint
            .install_snapshot(request.into_inner())
            .await?
            .0)
    }

    async fn timeout_now(&self, _: Request<RaftEnvelope>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented(
            "the admins' group has no leadership hand-over",
        ))
    }

    async fn pre_vote(&self, _: Request<RaftEnvelope>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("the admins' group has no pre-vote"))
    }
}
