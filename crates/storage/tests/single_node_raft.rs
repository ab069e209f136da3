//! A real one-node openraft group on this storage: writes, a snapshot with log purge, and a
//! restart from disk that must keep every acknowledged write.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Config, ServerState, SnapshotPolicy};
use ravel_core::command::{Command, CommandResult};
use ravel_storage::{Raft, RavelNode, Storage, TypeConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A network to nowhere: a one-node group never sends a message.
struct NoNetwork;

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

fn phase<F: std::future::Future<Output = T>, T>(f: F) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f)
}

async fn start(storage: &Storage) -> Raft {
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 0,
        ..Config::default()
    };
    let config = Arc::new(config.validate().unwrap());
    Raft::new(
        1,
        config,
        NoNetwork,
        storage.log_store(),
        storage.state_machine(),
    )
    .await
    .unwrap()
}

async fn wait_leader(raft: &Raft) {
    raft.wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "leader")
        .await
        .unwrap();
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        partition: 0,
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        cas: None,
    }
}

/// Every acknowledged write survives a snapshot (which purges the log below it) and a
/// restart: openraft does not reload snapshots, so the state machine itself must be durable.
#[test]
fn single_node_writes_survive_snapshot_purge_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (last_version, last_applied) = phase(async {
        let storage = Storage::open(dir.path()).unwrap();
        let raft = start(&storage).await;
        raft.initialize(BTreeMap::from([(1, RavelNode::default())]))
            .await
            .unwrap();
        wait_leader(&raft).await;
        let assigned = raft
            .client_write(Command::Assign {
                epoch: 1,
                partitions: vec![0],
            })
            .await
            .unwrap();
        assert_eq!(assigned.data, CommandResult::Assigned { epoch: 1 });
        let mut last_version = 0;
        for i in 0..30 {
            let reply = raft.client_write(put(&format!("k{i}"), "1")).await.unwrap();
            let CommandResult::Written { version } = reply.data else {
                panic!("unexpected {:?}", reply.data);
            };
            assert!(version > last_version);
            last_version = version;
        }
        raft.trigger().snapshot().await.unwrap();
        let metrics = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some() && m.purged == m.snapshot, "purged")
            .await
            .unwrap();
        // More writes after the snapshot, only in the log.
        let reply = raft.client_write(put("after", "2")).await.unwrap();
        let CommandResult::Written { version } = reply.data else {
            panic!("unexpected {:?}", reply.data);
        };
        assert!(metrics.purged.is_some());
        raft.shutdown().await.unwrap();
        (version, reply.log_id)
    });
    phase(async {
        let storage = Storage::open(dir.path()).unwrap();
        let raft = start(&storage).await;
        wait_leader(&raft).await;
        raft.wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(last_applied.index), "re-applied")
            .await
            .unwrap();
        let reader = storage.reader();
        for i in 0..30 {
            let record = reader.get(0, format!("k{i}").as_bytes()).unwrap();
            assert!(record.is_some(), "k{i} survived");
        }
        assert_eq!(
            reader.get(0, b"after").unwrap().unwrap().version,
            last_version
        );
        let reply = raft.client_write(put("k0", "3")).await.unwrap();
        let CommandResult::Written { version } = reply.data else {
            panic!("unexpected {:?}", reply.data);
        };
        assert!(
            version > last_version,
            "versions keep increasing after restart"
        );
        raft.shutdown().await.unwrap();
    });
}
