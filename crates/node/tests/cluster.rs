//! Three real replicas in one process: real storage in temporary directories, real gRPC on
//! loopback, and a minimal in-test admin that hands out identities and cluster membership.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ravel_node::config::NodeConfig;
use ravel_proto::v1::admin_server::{Admin, AdminServer};
use ravel_proto::v1::control_client::ControlClient;
use ravel_proto::v1::data_client::DataClient;
use ravel_proto::v1::node_error::Kind;
use ravel_proto::v1::*;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const CLUSTER: u64 = 1;

#[derive(Default)]
struct AdminState {
    /// token → (node id, bootstrap)
    tokens: BTreeMap<u64, (u64, bool)>,
    replicas: BTreeMap<u64, ReplicaInfo>,
    leader: u64,
    reports: Vec<LeaderReport>,
}

#[derive(Clone, Default)]
struct FakeAdmin(Arc<Mutex<AdminState>>);

#[tonic::async_trait]
impl Admin for FakeAdmin {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let r = request.into_inner();
        let mut s = self.0.lock().unwrap();
        let next = s.tokens.len() as u64 + 1;
        let (node_id, bootstrap) = *s.tokens.entry(r.token).or_insert((next, r.new_cluster));
        s.replicas.insert(
            node_id,
            ReplicaInfo {
                node_id,
                raft_addr: r.raft_addr,
                grpc_addr: r.grpc_addr,
            },
        );
        Ok(Response::new(RegisterReply {
            node_id,
            cluster_id: CLUSTER,
            bootstrap,
        }))
    }

    async fn cluster_info(
        &self,
        _request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoReply>, Status> {
        let s = self.0.lock().unwrap();
        Ok(Response::new(ClusterInfoReply {
            cluster_id: CLUSTER,
            leader_id: s.leader,
            replicas: s.replicas.values().cloned().collect(),
        }))
    }

    async fn report_leader(
        &self,
        request: Request<LeaderReport>,
    ) -> Result<Response<LeaderReportReply>, Status> {
        let r = request.into_inner();
        let mut s = self.0.lock().unwrap();
        s.leader = r.node_id;
        s.reports.push(r);
        Ok(Response::new(LeaderReportReply {}))
    }

    async fn remove_replica(
        &self,
        _request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn propose_meta(
        &self,
        _request: Request<MetaProposal>,
    ) -> Result<Response<MetaProposalReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn change_admins(
        &self,
        _request: Request<ChangeAdminsRequest>,
    ) -> Result<Response<ChangeAdminsReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn admin_status(
        &self,
        _request: Request<AdminStatusRequest>,
    ) -> Result<Response<AdminStatusReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Assigns `partitions` (epoch 1) through the leader at `leader_addr`; returns its answer.
async fn assign(leader_addr: &str, partitions: Vec<u32>) -> ravel_proto::v1::AssignReply {
    ControlClient::connect(format!("http://{leader_addr}"))
        .await
        .unwrap()
        .assign(AssignRequest {
            cluster_id: CLUSTER,
            epoch: 1,
            partitions,
        })
        .await
        .unwrap()
        .into_inner()
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", ravel_testkit::free_port())
}

struct Node {
    config: NodeConfig,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ravel_node::NodeError>>,
}

fn start(config: NodeConfig) -> Node {
    let stop = CancellationToken::new();
    let task = tokio::spawn(ravel_node::run(config.clone(), stop.clone()));
    Node { config, stop, task }
}

async fn stop(node: Node) -> NodeConfig {
    node.stop.cancel();
    node.task.await.unwrap().unwrap();
    assert!(!node.config.storagedir.join("node.pid").exists());
    node.config
}

async fn status(addr: &str) -> Option<StatusReply> {
    let mut c = ControlClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    Some(c.status(StatusRequest {}).await.ok()?.into_inner())
}

/// Polls `f` every 100 ms until it returns Some, or panics after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn data(addr: &str) -> DataClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    DataClient::new(channel)
}

async fn start_admin() -> (FakeAdmin, String) {
    let admin = FakeAdmin::default();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin_listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(admin.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                admin_listener,
            )),
    );
    (admin, admin_addr)
}

/// Configurations of replicas in `dirs`; the first one creates the cluster (`-l`).
fn node_configs(dirs: &[tempfile::TempDir], admin_addr: &str) -> Vec<NodeConfig> {
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let raftaddr = free_addr();
            let grpcaddr = free_addr();
            NodeConfig {
                storagedir: PathBuf::from(d.path()).join("node"),
                grpc_advertise: grpcaddr.clone(),
                grpcaddr,
                raft_advertise: raftaddr.clone(),
                raftaddr,
                adminrpcaddr: admin_addr.to_owned(),
                leader: i == 0,
                snapshot_threshold: 50,
                http: None,
            }
        })
        .collect()
}

/// The replica that `status` on every node agrees leads, once all three are voters and the
/// membership change that made them so is over.
async fn leader_of(nodes: &[Node]) -> usize {
    eventually(60, "a leader with three voters", || async {
        for (i, n) in nodes.iter().enumerate() {
            let s = status(&n.config.grpcaddr).await?;
            if s.role == "leader" && s.voters.len() == 3 && !s.membership_changing {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// A new cluster forms through registration and the join loop; writes go through the leader,
/// reads are linearizable there, followers answer NOT_LEADER with the leader's address, fenced
/// and misaddressed requests are refused, and everything survives a restart of all replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_elect_write_read_and_restart() {
    let (admin, admin_addr) = start_admin().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = node_configs(&dirs, &admin_addr);
    // The first replica registers (and bootstraps) before the others, as with `-l`.
    let mut nodes = vec![start(configs[0].clone())];
    eventually(30, "node 1 to lead", || async {
        status(&configs[0].grpcaddr)
            .await
            .filter(|s| s.role == "leader")
    })
    .await;
    nodes.push(start(configs[1].clone()));
    nodes.push(start(configs[2].clone()));
    let leader = leader_of(&nodes).await;
    assert_eq!(leader, 0, "the bootstrap replica keeps leading");
    let leader_addr = configs[leader].grpcaddr.clone();
    let follower_addr = configs[(leader + 1) % 3].grpcaddr.clone();

    // The leader reported itself to the admin.
    eventually(10, "a leader report", || async {
        let s = admin.0.lock().unwrap();
        s.reports
            .iter()
            .any(|r| r.node_id == 1 && r.cluster_id == CLUSTER)
            .then_some(())
    })
    .await;

    let assigned = assign(&leader_addr, (0..8).collect()).await;
    assert_eq!((assigned.epoch, assigned.error), (1, None));

    let mut leader_data = data(&leader_addr);
    let put = |partition: u32, key: &str, value: &str, cas: Option<u64>| PutRequest {
        cluster_id: CLUSTER,
        partition,
        key: key.as_bytes().to_vec(),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        cas,
        forward: false,
    };
    let get = |key: &str, stale: bool| GetRequest {
        cluster_id: CLUSTER,
        partition: 3,
        key: key.as_bytes().to_vec(),
        stale,
        forward: false,
    };
    let r = leader_data
        .put(put(3, "k", "\"v1\"", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.error), (1, None));
    let r = leader_data
        .put(put(3, "k", "\"v2\"", Some(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.error), (2, None));
    let r = leader_data
        .put(put(3, "k", "\"v3\"", Some(1)))
        .await
        .unwrap()
        .into_inner();
    let e = r.error.unwrap();
    assert_eq!((e.kind(), e.current_version), (Kind::CasMismatch, 2));

    let g = leader_data.get(get("k", false)).await.unwrap().into_inner();
    assert_eq!(
        (g.found, &g.value[..], g.version, g.error),
        (true, &b"\"v2\""[..], 2, None)
    );
    let g = leader_data
        .get(get("absent", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((g.found, g.error), (false, None));

    // A partition this cluster does not serve is refused, in the log and on read.
    let r = leader_data
        .put(put(99, "k", "1", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error.unwrap().kind(), Kind::WrongOwner);
    // Another cluster's request is refused before anything else.
    let mut wrong = put(3, "k", "1", None);
    wrong.cluster_id = 42;
    let r = leader_data.put(wrong).await.unwrap().into_inner();
    assert_eq!(r.error.unwrap().kind(), Kind::WrongCluster);

    // Followers redirect writes and linearizable reads to the leader, and serve stale reads.
    let mut follower_data = data(&follower_addr);
    for e in [
        follower_data
            .put(put(3, "k", "2", None))
            .await
            .unwrap()
            .into_inner()
            .error,
        follower_data
            .get(get("k", false))
            .await
            .unwrap()
            .into_inner()
            .error,
    ] {
        let e = e.unwrap();
        assert_eq!(e.kind(), Kind::NotLeader);
        assert_eq!(
            (e.leader_id, e.leader_grpc_addr.as_str()),
            (1, leader_addr.as_str())
        );
    }
    let stale = eventually(10, "the follower to apply the write", || {
        let mut c = follower_data.clone();
        let req = get("k", true);
        async move {
            let g = c.get(req).await.ok()?.into_inner();
            (g.version == 2).then_some(g)
        }
    })
    .await;
    assert_eq!((&stale.value[..], stale.error), (&b"\"v2\""[..], None));

    let r = leader_data
        .delete(DeleteRequest {
            cluster_id: CLUSTER,
            partition: 3,
            key: b"gone".to_vec(),
            cas: None,
            forward: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.deleted, r.error), (false, None));

    // Stop everything and restart with the same configuration: same identities, same data.
    let mut configs = Vec::new();
    for node in nodes {
        configs.push(stop(node).await);
    }
    let nodes: Vec<Node> = configs.into_iter().map(start).collect();
    let leader = leader_of(&nodes).await;
    let s = status(&nodes[leader].config.grpcaddr).await.unwrap();
    assert_eq!(s.cluster_id, CLUSTER);
    assert_eq!((s.assignment_epoch, s.serving_partitions), (1, 8));
    let mut leader_data = data(&nodes[leader].config.grpcaddr);
    let g = eventually(30, "a linearizable read after restart", || {
        let mut c = leader_data.clone();
        let req = get("k", false);
        async move {
            let g = c.get(req).await.ok()?.into_inner();
            g.error.is_none().then_some(g)
        }
    })
    .await;
    assert_eq!((g.found, g.version), (true, 2));
    let r = leader_data
        .put(put(3, "k", "\"v4\"", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.error), (3, None));
    assert_eq!(
        admin.0.lock().unwrap().tokens.len(),
        3,
        "no replica registered twice"
    );
    for node in nodes {
        stop(node).await;
    }
}

/// A replica that joins after the leader has snapshotted and purged its log catches up through
/// a snapshot sent over the Raft transport in chunks, and then serves the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_joiner_catches_up_from_a_snapshot() {
    let (_admin, admin_addr) = start_admin().await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = node_configs(&dirs, &admin_addr);
    let first = start(configs[0].clone());
    let leader_addr = configs[0].grpcaddr.clone();
    eventually(30, "node 1 to lead", || async {
        status(&leader_addr).await.filter(|s| s.role == "leader")
    })
    .await;
    let assigned = assign(&leader_addr, vec![0]).await;
    assert_eq!(assigned.error, None);
    let mut leader_data = data(&leader_addr);
    for i in 0..150 {
        let r = leader_data
            .put(PutRequest {
                cluster_id: CLUSTER,
                partition: 0,
                key: format!("key{i}").into_bytes(),
                value: bytes::Bytes::from(format!("{i}")),
                cas: None,
                forward: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.error, None);
    }
    eventually(30, "the leader to purge its log", || async {
        status(&leader_addr).await.filter(|s| s.purged_index > 0)
    })
    .await;

    let second = start(configs[1].clone());
    let joiner = configs[1].grpcaddr.clone();
    let s = eventually(60, "the joiner to become a voter with all keys", || async {
        status(&joiner)
            .await
            .filter(|s| s.voters.len() == 2 && s.key_count == 150)
    })
    .await;
    assert!(s.snapshots_installed >= 1, "{s:?}");
    let g = data(&joiner)
        .get(GetRequest {
            cluster_id: CLUSTER,
            partition: 0,
            key: b"key7".to_vec(),
            stale: true,
            forward: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((g.found, &g.value[..], g.error), (true, &b"7"[..], None));
    stop(second).await;
    stop(first).await;
}

/// Concurrent writes to the leader share Raft entries (the write batcher) and concurrent
/// linearizable reads share read-index rounds, yet every write gets its own answer: 200
/// concurrent puts of distinct keys in one partition get exactly the versions 1..=200, each
/// key then reads back with its own version, and the log grew by far fewer than 200 entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_entries_and_keep_their_answers() {
    const PUTS: u64 = 200;
    let (_admin, admin_addr) = start_admin().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = node_configs(&dirs, &admin_addr);
    let mut nodes = vec![start(configs[0].clone())];
    eventually(30, "node 1 to lead", || async {
        status(&configs[0].grpcaddr)
            .await
            .filter(|s| s.role == "leader")
    })
    .await;
    nodes.push(start(configs[1].clone()));
    nodes.push(start(configs[2].clone()));
    let leader_addr = configs[leader_of(&nodes).await].grpcaddr.clone();
    let assigned = assign(&leader_addr, vec![5]).await;
    assert_eq!(assigned.error, None);
    let log_before = status(&leader_addr).await.unwrap().last_log_index;

    let mut puts = tokio::task::JoinSet::new();
    for i in 0..PUTS {
        let mut client = data(&leader_addr);
        puts.spawn(async move {
            let reply = client
                .put(PutRequest {
                    cluster_id: CLUSTER,
                    partition: 5,
                    key: format!("key{i}").into_bytes(),
                    value: bytes::Bytes::from_static(b"1"),
                    cas: None,
                    forward: false,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(reply.error, None, "put {i}");
            (i, reply.version)
        });
    }
    let answers: BTreeMap<u64, u64> = puts.join_all().await.into_iter().collect();
    let mut versions: Vec<u64> = answers.values().copied().collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=PUTS).collect::<Vec<_>>());
    let grown = status(&leader_addr).await.unwrap().last_log_index - log_before;
    assert!(grown < PUTS * 3 / 4, "{PUTS} puts took {grown} log entries");

    let mut gets = tokio::task::JoinSet::new();
    for (i, version) in answers {
        let mut client = data(&leader_addr);
        gets.spawn(async move {
            let reply = client
                .get(GetRequest {
                    cluster_id: CLUSTER,
                    partition: 5,
                    key: format!("key{i}").into_bytes(),
                    stale: false,
                    forward: false,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!((reply.error, reply.found), (None, true), "get {i}");
            assert_eq!(reply.version, version, "key{i}");
        });
    }
    gets.join_all().await;
    for node in nodes {
        stop(node).await;
    }
}
