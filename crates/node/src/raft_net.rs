//! The client side of a replica's Raft transport: the shared transport
//! (`ravel_raft_transport`) for this cluster's type configuration, with check-quorum's
//! [`Contact`] on its links, and the replica's extra use of the same channels (a follower
//! forwarding a client request to its leader).

use crate::contact::Contact;
use ravel_core::limits::MAX_GRPC_MESSAGE_BYTES;
use ravel_proto::v1::data_client::DataClient;
use ravel_raft_transport::LinkHooks;
use ravel_storage::{RavelNode, TypeConfig};
use tonic::transport::Channel;

pub(crate) use ravel_raft_transport::{decode, encode, lazy_channel};

/// openraft's network of one replica: one link per peer, one channel per peer address.
pub type NetworkFactory = ravel_raft_transport::NetworkFactory<TypeConfig, Contact>;

/// The network of cluster `cluster_id`, its links reporting to `contact`.
#[must_use]
pub fn network(
    cluster_id: ravel_core::ClusterId,
    contact: std::sync::Arc<Contact>,
) -> NetworkFactory {
    NetworkFactory::new(
        cluster_id,
        |node: &RavelNode| node.raft_addr.as_str(),
        contact,
    )
}

/// A leader that lost its majority sends nothing while it stands aside; every peer's
/// acknowledgement counts toward check-quorum.
impl LinkHooks for Contact {
    fn standing_aside(&self) -> bool {
        self.is_aside()
    }
    fn acked_by(&self, target: u64) {
        Contact::acked_by(self, target);
    }
}

/// A `Data` client for the peer at `addr`'s Raft transport, on the shared channel: a follower
/// forwards a client request to its leader over the link Raft already keeps up.
pub(crate) fn data_client(
    network: &NetworkFactory,
    addr: &str,
) -> Result<DataClient<Channel>, tonic::transport::Error> {
    Ok(DataClient::new(network.channel(addr)?)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES))
}
