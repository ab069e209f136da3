//! The client side of the Raft transport: how this replica's openraft reaches its peers.
//!
//! Each openraft request travels in a `RaftEnvelope { cluster_id, target_node_id, payload }`,
//! where the payload is a one-byte format tag followed by the postcard encoding of the request;
//! the reply payload is the tag plus the encoding of the whole `Result`, so remote Raft errors
//! travel as data. One lazily connected tonic `Channel` per peer address is cached and shared.
//! This module must not decide anything about Raft itself: it only carries bytes and maps
//! transport failures to the errors openraft expects (unreachable peers make openraft back off).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use ravel_core::limits::{CONNECT_TIMEOUT_MS, MAX_GRPC_MESSAGE_BYTES};
use ravel_core::{ClusterId, NodeId};
use ravel_proto::v1::RaftEnvelope;
use ravel_proto::v1::data_client::DataClient;
use ravel_proto::v1::raft_transport_client::RaftTransportClient;
use ravel_storage::{RavelNode, TypeConfig};

use crate::contact::Contact;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

/// Format tag of a postcard-encoded payload. A new encoding gets a new tag, so that a replica
/// never misreads a peer running another version.
pub(crate) const FORMAT_POSTCARD: u8 = 1;

/// Largest encoded Raft payload sent in one message: the gRPC limit less room for the envelope.
const MAX_RAFT_PAYLOAD_BYTES: usize = MAX_GRPC_MESSAGE_BYTES - 64 * 1024;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("the Raft payload is empty")]
    Empty,
    #[error("the Raft payload has unknown format tag {0}")]
    UnknownFormat(u8),
    #[error("the Raft payload could not be encoded or decoded: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Encodes `value` as a tagged payload.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, CodecError> {
    let out = postcard::to_extend(value, vec![FORMAT_POSTCARD])?;
    Ok(Bytes::from(out))
}

/// Decodes a tagged payload.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    match payload.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_POSTCARD, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((tag, _)) => Err(CodecError::UnknownFormat(*tag)),
    }
}

/// The wire form of an append-entries or vote answer: these can only fail fatally.
pub(crate) type FatalOr<T> = Result<T, Fatal<NodeId>>;
/// The wire form of an install-snapshot answer.
pub(crate) type SnapshotResult =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// Builds one [`PeerClient`] per target, sharing one channel per peer address.
#[derive(Clone)]
pub struct NetworkFactory {
    cluster_id: ClusterId,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    contact: Arc<Contact>,
}

impl NetworkFactory {
    /// A factory for the Raft group of `cluster_id`; peers' acknowledgements are recorded in
    /// `contact` (for check-quorum).
    #[must_use]
    pub fn new(cluster_id: ClusterId, contact: Arc<Contact>) -> Self {
        Self {
            cluster_id,
            channels: Arc::new(Mutex::new(HashMap::new())),
            contact,
        }
    }

    /// The cached channel to `addr`, created lazily (no I/O here, so this cannot block).
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = lazy_channel(addr)?;
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl NetworkFactory {
    /// A `RaftTransport` client for the peer at `addr`, on the shared channel (for the calls
    /// that are not openraft's own: pre-vote and the hand-over's TimeoutNow).
    pub(crate) fn client(
        &self,
        addr: &str,
    ) -> Result<RaftTransportClient<Channel>, tonic::transport::Error> {
        Ok(transport_client(self.channel(addr)?))
    }

    /// A `Data` client for the peer at `addr`'s Raft transport, on the shared channel: a
    /// follower forwards a client request to its leader over the link Raft already keeps up.
    pub(crate) fn data_client(
        &self,
        addr: &str,
    ) -> Result<DataClient<Channel>, tonic::transport::Error> {
        Ok(DataClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES))
    }
}

/// A `RaftTransport` client on `channel` with the crate's message size limits.
fn transport_client(channel: Channel) -> RaftTransportClient<Channel> {
    RaftTransportClient::new(channel)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
}

/// A lazily connecting channel to `host:port` with the crate's connect timeout.
pub(crate) fn lazy_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &RavelNode) -> PeerClient {
        PeerClient {
            cluster_id: self.cluster_id,
            contact: self.contact.clone(),
            target,
            addr: node.raft_addr.clone(),
            channel: self.channel(&node.raft_addr).map_err(|e| e.to_string()),
        }
    }
}

/// How one RPC to a peer failed before any Raft answer came back.
#[derive(Debug, thiserror::Error)]
enum TransportFailure {
    #[error("peer {addr} is unreachable: {message}")]
    Unreachable { addr: String, message: String },
    #[error("transport error talking to peer {addr}: {message}")]
    Network { addr: String, message: String },
}

impl TransportFailure {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<NodeId, RavelNode, RaftError<NodeId, E>> {
        match self {
            Self::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&self)),
            Self::Network { .. } => RPCError::Network(NetworkError::new(&self)),
        }
    }
}

/// Which RPC of the `RaftTransport` service to call.
#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// openraft's connection to one peer.
pub struct PeerClient {
    cluster_id: ClusterId,
    contact: Arc<Contact>,
    target: NodeId,
    addr: String,
    channel: Result<Channel, String>,
}

impl PeerClient {
    /// Sends `payload` to the peer under the deadline `ttl` and returns the reply payload.
    async fn send(
        &self,
        rpc: Rpc,
        payload: Bytes,
        ttl: Duration,
    ) -> Result<Bytes, TransportFailure> {
        let channel = self
            .channel
            .clone()
            .map_err(|message| TransportFailure::Unreachable {
                addr: self.addr.clone(),
                message,
            })?;
        let mut client = transport_client(channel);
        let mut request = tonic::Request::new(RaftEnvelope {
            cluster_id: self.cluster_id,
            target_node_id: self.target,
            payload,
        });
        request.set_timeout(ttl);
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        reply
            .map(|r| r.into_inner().payload)
            .map_err(|status| self.failure(&status))
    }

    fn failure(&self, status: &tonic::Status) -> TransportFailure {
        let addr = self.addr.clone();
        let message = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            // A refused envelope (FailedPrecondition) means the address now belongs to another
            // replica or cluster: like a dead peer, retrying at once cannot help, so openraft
            // should back off.
            tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
                TransportFailure::Unreachable { addr, message }
            }
            _ => TransportFailure::Network { addr, message },
        }
    }

    /// Encodes `req`, sends it, and decodes the `Result` the peer's Raft answered with.
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
        entries: usize,
    ) -> Result<Result<Resp, E>, RPCError<NodeId, RavelNode, RaftError<NodeId, InstallSnapshotError>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned,
    {
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if payload.len() > MAX_RAFT_PAYLOAD_BYTES {
            // Ask openraft to send fewer entries per message; the factor keeps a margin.
            let hint = entries * MAX_RAFT_PAYLOAD_BYTES / payload.len() / 2;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint.max(1) as u64),
            ));
        }
        let reply = self
            .send(rpc, payload, option.hard_ttl())
            .await
            .map_err(TransportFailure::into_rpc)?;
        decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

/// Re-types an RPC error whose API error type is not involved (transport or size failures).
fn retype<E: std::error::Error>(
    e: RPCError<NodeId, RavelNode, RaftError<NodeId, InstallSnapshotError>>,
) -> RPCError<NodeId, RavelNode, RaftError<NodeId, E>> {
    match e {
        RPCError::Timeout(t) => RPCError::Timeout(t),
        RPCError::Unreachable(u) => RPCError::Unreachable(u),
        RPCError::PayloadTooLarge(p) => RPCError::PayloadTooLarge(p),
        RPCError::Network(n) => RPCError::Network(n),
        RPCError::RemoteError(r) => RPCError::Network(NetworkError::new(&r)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RavelNode, RaftError<NodeId>>> {
        if self.contact.is_aside() {
            return Err(TransportFailure::Unreachable {
                addr: self.addr.clone(),
                message: "this leader lost its majority and stands aside".into(),
            }
            .into_rpc());
        }
        let entries = rpc.entries.len();
        let answer: FatalOr<AppendEntriesResponse<NodeId>> = self
            .call(Rpc::AppendEntries, &rpc, &option, entries)
            .await
            .map_err(retype)?;
        if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
            self.contact.acked_by(self.target);
        }
        answer
            .map_err(|f| RPCError::RemoteError(RemoteError::new(self.target, RaftError::Fatal(f))))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RavelNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        if self.contact.is_aside() {
            return Err(TransportFailure::Unreachable {
                addr: self.addr.clone(),
                message: "this leader lost its majority and stands aside".into(),
            }
            .into_rpc());
        }
        let answer: SnapshotResult = self.call(Rpc::InstallSnapshot, &rpc, &option, 1).await?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RavelNode, RaftError<NodeId>>> {
        let answer: FatalOr<VoteResponse<NodeId>> = self
            .call(Rpc::Vote, &rpc, &option, 1)
            .await
            .map_err(retype)?;
        answer
            .map_err(|f| RPCError::RemoteError(RemoteError::new(self.target, RaftError::Fatal(f))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload survives encode/decode; a wrong tag or an empty payload is refused.
    #[test]
    fn codec_round_trip_and_tag() {
        let vote: VoteRequest<NodeId> = VoteRequest::new(openraft::Vote::new(3, 1), None);
        let bytes = encode(&vote).unwrap();
        assert_eq!(bytes[0], FORMAT_POSTCARD);
        let back: VoteRequest<NodeId> = decode(&bytes).unwrap();
        assert_eq!(back, vote);
        let mut wrong = bytes.to_vec();
        wrong[0] = 99;
        assert!(matches!(
            decode::<VoteRequest<NodeId>>(&wrong),
            Err(CodecError::UnknownFormat(99))
        ));
        assert!(matches!(
            decode::<VoteRequest<NodeId>>(&[]),
            Err(CodecError::Empty)
        ));
    }

    /// A fatal Raft answer travels as data and comes back as the same error.
    #[test]
    fn fatal_answer_round_trip() {
        let answer: FatalOr<VoteResponse<NodeId>> = Err(Fatal::Stopped);
        let back: FatalOr<VoteResponse<NodeId>> = decode(&encode(&answer).unwrap()).unwrap();
        assert_eq!(back, Err(Fatal::Stopped));
    }
}
