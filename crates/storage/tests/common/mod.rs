//! Helpers shared by the storage crate's integration tests: a fresh runtime per phase, and the
//! network of a one-node Raft group (which never sends a message).
// Each test binary uses a part of this module.
#![allow(dead_code)]

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use ravel_storage::{RavelNode, TypeConfig};
use std::future::Future;

/// A network to nowhere: a one-node group never sends a message.
pub struct NoNetwork;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, RavelNode, RaftError<u64, E>>>;

// openraft fixes this error type in the RaftNetwork signatures.
#[allow(clippy::result_large_err)]
fn unreachable<T, E: std::error::Error>() -> RpcResult<T, E> {
    let e = std::io::Error::other("single-node test has no peers");
    Err(RPCError::Unreachable(Unreachable::new(&e)))
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        unreachable()
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        unreachable()
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        unreachable()
    }
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;

    async fn new_client(&mut self, _target: u64, _node: &RavelNode) -> NoNetwork {
        NoNetwork
    }
}

/// Runs `f` on a fresh runtime and drops the runtime afterwards, so that the storage's tasks
/// (and with them the sled database's lock) are gone before the next phase reopens it.
pub fn phase<F: Future<Output = T>, T>(f: F) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f)
}
