//! The client side: how a group's openraft reaches its peers. One lazily connected tonic
//! `Channel` per peer address is cached and shared by every link of the factory.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::RaftTypeConfig;
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
use ravel_proto::v1::RaftEnvelope;
use ravel_proto::v1::raft_transport_client::RaftTransportClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::codec::{decode, encode};

/// Largest encoded Raft payload sent in one message: the gRPC limit less room for the envelope.
const MAX_RAFT_PAYLOAD_BYTES: usize = MAX_GRPC_MESSAGE_BYTES - 64 * 1024;

/// The wire form of an append-entries or vote answer: these can only fail fatally.
pub type FatalOr<T> = Result<T, Fatal<u64>>;
/// The wire form of an install-snapshot answer.
pub type SnapshotResult =
    Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;

/// Where a group member, as its membership records it, serves its `RaftTransport` service.
pub type RaftAddrOf<N> = fn(&N) -> &str;

/// What a group attaches to its links (the replicas: check-quorum's contact record). The
/// defaults do nothing.
pub trait LinkHooks: Send + Sync + 'static {
    /// While true, this node sends no append-entries or snapshot (a leader standing aside).
    fn standing_aside(&self) -> bool {
        false
    }
    /// Peer `target` accepted an append-entries of this leader.
    fn acked_by(&self, _target: u64) {}
}

/// Links without hooks.
impl LinkHooks for () {}

/// A `RaftTransport` client on `channel` with the store's message size limits.
#[must_use]
pub fn transport_client(channel: Channel) -> RaftTransportClient<Channel> {
    RaftTransportClient::new(channel)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
}

/// A lazily connecting channel to `host:port` with the store's connect timeout.
pub fn lazy_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Builds one [`PeerClient`] per target of group `group_id`, sharing one channel per address.
pub struct NetworkFactory<C: RaftTypeConfig, H: LinkHooks = ()> {
    group_id: u64,
    raft_addr_of: RaftAddrOf<C::Node>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    hooks: Arc<H>,
    types: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig, H: LinkHooks> Clone for NetworkFactory<C, H> {
    fn clone(&self) -> Self {
        Self {
            group_id: self.group_id,
            raft_addr_of: self.raft_addr_of,
            channels: Arc::clone(&self.channels),
            hooks: Arc::clone(&self.hooks),
            types: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig, H: LinkHooks> NetworkFactory<C, H> {
    /// A factory for the Raft group `group_id` whose members serve Raft at `raft_addr_of`
    /// and whose links report to `hooks`.
    #[must_use]
    pub fn new(group_id: u64, raft_addr_of: RaftAddrOf<C::Node>, hooks: Arc<H>) -> Self {
        Self {
            group_id,
            raft_addr_of,
            channels: Arc::new(Mutex::new(HashMap::new())),
            hooks,
            types: PhantomData,
        }
    }

    /// The cached channel to `addr`, created lazily (no I/O here, so this cannot block).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
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

    /// A `RaftTransport` client for the peer at `addr`, on the shared channel (for calls that
    /// are not openraft's own, such as a pre-vote).
    pub fn client(
        &self,
        addr: &str,
    ) -> Result<RaftTransportClient<Channel>, tonic::transport::Error> {
        Ok(transport_client(self.channel(addr)?))
    }
}

impl<C, H> RaftNetworkFactory<C> for NetworkFactory<C, H>
where
    C: RaftTypeConfig<NodeId = u64>,
    H: LinkHooks,
{
    type Network = PeerClient<C, H>;

    async fn new_client(&mut self, target: u64, node: &C::Node) -> PeerClient<C, H> {
        let addr = (self.raft_addr_of)(node).to_owned();
        PeerClient {
            group_id: self.group_id,
            hooks: Arc::clone(&self.hooks),
            target,
            channel: self.channel(&addr).map_err(|e| e.to_string()),
            addr,
            types: PhantomData,
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
    fn into_rpc<N, E>(self) -> RPCError<u64, N, RaftError<u64, E>>
    where
        N: openraft::Node,
        E: std::error::Error,
    {
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
pub struct PeerClient<C, H: LinkHooks = ()> {
    group_id: u64,
    hooks: Arc<H>,
    target: u64,
    addr: String,
    channel: Result<Channel, String>,
    types: PhantomData<fn() -> C>,
}

type SnapshotRpcError<N> = RPCError<u64, N, RaftError<u64, InstallSnapshotError>>;

impl<C, H> PeerClient<C, H>
where
    C: RaftTypeConfig<NodeId = u64>,
    H: LinkHooks,
{
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
            cluster_id: self.group_id,
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
            // member or group: like a dead peer, retrying at once cannot help, so openraft
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
    ) -> Result<Result<Resp, E>, SnapshotRpcError<C::Node>>
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

    fn aside(&self) -> Option<TransportFailure> {
        self.hooks
            .standing_aside()
            .then(|| TransportFailure::Unreachable {
                addr: self.addr.clone(),
                message: "this leader lost its majority and stands aside".into(),
            })
    }
}

/// Re-types an RPC error whose API error type is not involved (transport or size failures).
fn retype<N: openraft::Node, E: std::error::Error>(
    e: SnapshotRpcError<N>,
) -> RPCError<u64, N, RaftError<u64, E>> {
    match e {
        RPCError::Timeout(t) => RPCError::Timeout(t),
        RPCError::Unreachable(u) => RPCError::Unreachable(u),
        RPCError::PayloadTooLarge(p) => RPCError::PayloadTooLarge(p),
        RPCError::Network(n) => RPCError::Network(n),
        RPCError::RemoteError(r) => RPCError::Network(NetworkError::new(&r)),
    }
}

impl<C, H> RaftNetwork<C> for PeerClient<C, H>
where
    C: RaftTypeConfig<NodeId = u64>,
    H: LinkHooks,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, C::Node, RaftError<u64>>> {
        if let Some(aside) = self.aside() {
            return Err(aside.into_rpc());
        }
        let entries = rpc.entries.len();
        let answer: FatalOr<AppendEntriesResponse<u64>> = self
            .call(Rpc::AppendEntries, &rpc, &option, entries)
            .await
            .map_err(retype)?;
        if matches!(&answer, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
            self.hooks.acked_by(self.target);
        }
        answer
            .map_err(|f| RPCError::RemoteError(RemoteError::new(self.target, RaftError::Fatal(f))))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, SnapshotRpcError<C::Node>> {
        if let Some(aside) = self.aside() {
            return Err(aside.into_rpc());
        }
        let answer: SnapshotResult = self.call(Rpc::InstallSnapshot, &rpc, &option, 1).await?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, C::Node, RaftError<u64>>> {
        let answer: FatalOr<VoteResponse<u64>> = self
            .call(Rpc::Vote, &rpc, &option, 1)
            .await
            .map_err(retype)?;
        answer
            .map_err(|f| RPCError::RemoteError(RemoteError::new(self.target, RaftError::Fatal(f))))
    }
}
