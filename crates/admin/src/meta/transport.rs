//! How the admins' Raft reaches the other admins of its group.
//!
//! A group of one never sends a Raft message, so for now every peer is unreachable; the gRPC
//! transport between admins (`--peers`) replaces this.

use super::raft::{AdminNode, AdminTypes};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

/// Builds a [`Peer`] per other admin.
#[derive(Clone, Default)]
pub struct Network;

/// openraft's link to one other admin.
pub struct Peer {
    addr: String,
}

impl RaftNetworkFactory<AdminTypes> for Network {
    type Network = Peer;

    async fn new_client(&mut self, _target: u64, node: &AdminNode) -> Peer {
        Peer {
            addr: node.grpc_addr.clone(),
        }
    }
}

impl Peer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, AdminNode, E> {
        let why = std::io::Error::other(format!(
            "admin {} is not reachable: this build runs the admins' group as a group of one",
            self.addr
        ));
        RPCError::Unreachable(Unreachable::new(&why))
    }
}

impl RaftNetwork<AdminTypes> for Peer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<AdminTypes>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, AdminNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<AdminTypes>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, AdminNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, AdminNode, RaftError<u64>>> {
        Err(self.unreachable())
    }
}
