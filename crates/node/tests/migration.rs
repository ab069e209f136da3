//! A partition moved between two real single-replica clusters in one process, through the
//! `Control.Migrate` and `Control.ScanPartition` RPCs exactly as the admin's mover drives them:
//! freeze at the source, prepare, scan and ingest at the target, release, activate, purge.

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
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// An admin that gives every registering replica its own new cluster (id = node id).
#[derive(Clone, Default)]
struct FakeAdmin(Arc<Mutex<BTreeMap<u64, u64>>>);

#[tonic::async_trait]
impl Admin for FakeAdmin {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let r = request.into_inner();
        let mut tokens = self.0.lock().unwrap();
        let next = tokens.len() as u64 + 1;
        let node_id = *tokens.entry(r.token).or_insert(next);
        Ok(Response::new(RegisterReply {
            node_id,
            cluster_id: node_id,
            bootstrap: true,
        }))
    }

    async fn cluster_info(
        &self,
        _request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn report_leader(
        &self,
        _request: Request<LeaderReport>,
    ) -> Result<Response<LeaderReportReply>, Status> {
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

fn free_addr() -> String {
    format!("127.0.0.1:{}", ravel_testkit::free_port())
}

struct Node {
    addr: String,
    cluster: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ravel_node::NodeError>>,
}

impl Node {
    fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(channel(&self.addr))
    }

    fn data(&self) -> DataClient<Channel> {
        DataClient::new(channel(&self.addr))
    }

    async fn migrate(&self, partition: u32, op: MigrateOp) -> MigrateReply {
        self.migrate_with(partition, op, Vec::new(), 0).await
    }

    async fn migrate_with(
        &self,
        partition: u32,
        op: MigrateOp,
        records: Vec<MigrateRecord>,
        version_floor: u64,
    ) -> MigrateReply {
        self.control()
            .migrate(MigrateRequest {
                cluster_id: self.cluster,
                partition,
                op: op as i32,
                records,
                version_floor,
                ..MigrateRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn put(&self, partition: u32, key: &str, value: &str) -> PutReply {
        self.data()
            .put(PutRequest {
                cluster_id: self.cluster,
                partition,
                key: key.as_bytes().to_vec(),
                value: bytes::Bytes::copy_from_slice(value.as_bytes()),
                cas: None,
                forward: false,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn get(&self, partition: u32, key: &str) -> GetReply {
        self.data()
            .get(GetRequest {
                cluster_id: self.cluster,
                partition,
                key: key.as_bytes().to_vec(),
                stale: false,
                forward: false,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn scan(&self, partition: u32, after: Option<&[u8]>) -> ScanPartitionReply {
        self.control()
            .scan_partition(ScanPartitionRequest {
                cluster_id: self.cluster,
                partition,
                after_key: after.unwrap_or_default().to_vec(),
                from_start: after.is_none(),
                limit: 0,
                ..ScanPartitionRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn status(&self) -> StatusReply {
        self.control()
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// Starts a replica that creates its own cluster, and waits until it leads it.
async fn start_leader(dir: &tempfile::TempDir, admin_addr: &str) -> Node {
    let raftaddr = free_addr();
    let grpcaddr = free_addr();
    let config = NodeConfig {
        storagedir: PathBuf::from(dir.path()).join("node"),
        grpc_advertise: grpcaddr.clone(),
        grpcaddr,
        raft_advertise: raftaddr.clone(),
        raftaddr,
        adminrpcaddr: admin_addr.to_owned(),
        leader: true,
        snapshot_threshold: 1_000,
        http: None,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(ravel_node::run(config.clone(), stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = ControlClient::connect(format!("http://{}", config.grpcaddr))
            .await
            .ok();
        if let Some(mut c) = status
            && let Ok(s) = c.status(StatusRequest {}).await
            && s.get_ref().role == "leader"
        {
            return Node {
                addr: config.grpcaddr,
                cluster: s.get_ref().cluster_id,
                stop,
                task,
            };
        }
        assert!(Instant::now() < deadline, "no leader in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assign(node: &Node, partitions: Vec<u32>, epoch: u64) {
    let r = node
        .control()
        .assign(AssignRequest {
            cluster_id: node.cluster,
            epoch,
            partitions,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.epoch, r.error), (epoch, None));
}

fn kind(e: &Option<NodeError>) -> Option<Kind> {
    e.as_ref().map(NodeError::kind)
}

/// Partition 2 moves from cluster S to cluster T with every key and version: during the move
/// the source refuses writes but serves reads until RELEASE, the target serves nothing until
/// ACTIVATE; afterwards a put at S is WRONG_OWNER, a get at T returns the copied version, a put
/// at T gets a version above every copied one, and the source's copy is purged. Every step
/// repeated answers the same, and a step in the wrong state is WRONG_OWNER with the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_moves_between_two_clusters() {
    const P: u32 = 2;
    // More keys than one scan batch holds, so the copy takes several batches.
    const KEYS: usize = 600;
    let admin = FakeAdmin::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(admin))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (s_dir, t_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = start_leader(&s_dir, &admin_addr).await;
    let t = start_leader(&t_dir, &admin_addr).await;
    assert_ne!(s.cluster, t.cluster);
    assign(&s, vec![0, 1, 2, 3], 1).await;
    assign(&t, vec![4, 5, 6, 7], 1).await;

    // Written by a few concurrent writers so the group commit batches their fsyncs.
    let s = Arc::new(s);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let s = s.clone();
        writers.spawn(async move {
            let mut versions = Vec::new();
            for i in (w..KEYS).step_by(8) {
                let r = s.put(P, &format!("key{i:04}"), &format!("{i}")).await;
                assert_eq!(r.error, None);
                versions.push((i, r.version));
            }
            versions
        });
    }
    let mut versions = BTreeMap::new();
    while let Some(done) = writers.join_next().await {
        versions.extend(done.unwrap());
    }
    let s = Arc::into_inner(s).unwrap();
    // "key0000" ends at version KEYS + 1.
    let r = s.put(P, "key0000", "\"last\"").await;
    assert_eq!((r.version, r.error), (KEYS as u64 + 1, None));
    // A delete consumes a version too: the floor the copy carries is KEYS + 2.
    s.put(P, "gone", "1").await;
    let d = s
        .data()
        .delete(DeleteRequest {
            cluster_id: s.cluster,
            partition: P,
            key: b"gone".to_vec(),
            cas: None,
            forward: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.deleted);
    let floor = KEYS as u64 + 3;

    // A scan of a partition that is not frozen is refused.
    let r = s.scan(P, None).await;
    assert_eq!(kind(&r.error), Some(Kind::WrongOwner));

    // 1. Freeze at S (twice: idempotent). Writes refused, reads served.
    for _ in 0..2 {
        let r = s.migrate(P, MigrateOp::Freeze).await;
        assert_eq!(r.error, None);
        assert_eq!(
            (r.state(), r.partition_keys),
            (PartitionStateView::Frozen, KEYS as u64)
        );
    }
    assert_eq!(
        kind(&s.put(P, "key0001", "2").await.error),
        Some(Kind::WrongOwner)
    );
    let g = s.get(P, "key0000").await;
    assert_eq!((g.found, g.version, g.error), (true, KEYS as u64 + 1, None));

    // 2. Prepare at T, then copy in batches.
    let r = t.migrate(P, MigrateOp::PrepareIncoming).await;
    assert_eq!((r.state(), r.error), (PartitionStateView::Incoming, None));
    assert_eq!(
        kind(&t.get(P, "key0000").await.error),
        Some(Kind::WrongOwner)
    );
    let mut after: Option<Vec<u8>> = None;
    let mut batches = 0;
    let mut copied = 0;
    loop {
        let scan = s.scan(P, after.as_deref()).await;
        assert_eq!(scan.error, None);
        assert_eq!(scan.version_floor, floor);
        batches += 1;
        after = scan.records.last().map(|r| r.key.clone());
        let n = scan.records.len() as u64;
        let r = t
            .migrate_with(P, MigrateOp::Ingest, scan.records, scan.version_floor)
            .await;
        assert_eq!(r.error, None);
        copied += n;
        assert_eq!((r.records_applied, r.partition_keys), (n, copied));
        if scan.done {
            break;
        }
    }
    assert_eq!((batches, copied), (2, KEYS as u64));

    // 3. Release at S: reads stop there too.
    for _ in 0..2 {
        let r = s.migrate(P, MigrateOp::Release).await;
        assert_eq!((r.state(), r.error), (PartitionStateView::Released, None));
    }
    assert_eq!(
        kind(&s.get(P, "key0000").await.error),
        Some(Kind::WrongOwner)
    );
    assert_eq!(kind(&s.scan(P, None).await.error), Some(Kind::WrongOwner));

    // 4. Activate at T.
    for _ in 0..2 {
        let r = t.migrate(P, MigrateOp::Activate).await;
        assert_eq!(r.error, None);
        assert_eq!(
            (r.state(), r.partition_keys),
            (PartitionStateView::Serving, KEYS as u64)
        );
    }
    assert_eq!(
        kind(&s.put(P, "key0000", "1").await.error),
        Some(Kind::WrongOwner)
    );
    let g = t.get(P, "key0000").await;
    assert_eq!(
        (g.found, &g.value[..], g.version, g.error),
        (true, &b"\"last\""[..], KEYS as u64 + 1, None)
    );
    let g = t.get(P, "key0599").await;
    assert_eq!(
        (g.found, &g.value[..], g.version),
        (true, &b"599"[..], versions[&599])
    );
    assert!(!t.get(P, "gone").await.found);
    let r = t.put(P, "gone", "\"back\"").await;
    assert_eq!((r.version, r.error), (floor + 1, None));

    // A step in the wrong state is refused with the state it found.
    let r = s.migrate(P, MigrateOp::Activate).await;
    assert_eq!(kind(&r.error), Some(Kind::WrongOwner));
    assert_eq!(r.state(), PartitionStateView::Released);
    assert!(r.error.unwrap().message.contains("activate"));
    let r = t.migrate(P, MigrateOp::Abandon).await;
    assert_eq!(
        (kind(&r.error), r.state()),
        (Some(Kind::WrongOwner), PartitionStateView::Serving)
    );
    // Malformed requests are refused before anything is proposed.
    let r = s.migrate(P, MigrateOp::Unspecified).await;
    assert_eq!(kind(&r.error), Some(Kind::Invalid));
    let mut c = s.control();
    let r = c
        .migrate(MigrateRequest {
            cluster_id: t.cluster,
            partition: P,
            op: MigrateOp::Freeze as i32,
            records: Vec::new(),
            version_floor: 0,
            ..MigrateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kind(&r.error), Some(Kind::WrongCluster));

    // 6. Purge at S, first a bounded entry, then the rest; a late assignment listing the
    // partition does not revive it.
    let keys_before = s.status().await.key_count;
    let half = KEYS as u32 / 2;
    let r = s
        .control()
        .migrate(MigrateRequest {
            cluster_id: s.cluster,
            partition: P,
            op: MigrateOp::Purge as i32,
            max_records: half,
            ..MigrateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.state(), r.partition_keys, r.error),
        (
            PartitionStateView::Released,
            KEYS as u64 - u64::from(half),
            None
        )
    );
    assert_eq!(s.status().await.key_count, keys_before - u64::from(half));
    for _ in 0..2 {
        let r = s.migrate(P, MigrateOp::Purge).await;
        assert_eq!(
            (r.state(), r.partition_keys, r.error),
            (PartitionStateView::Released, 0, None)
        );
    }
    assert_eq!(s.status().await.key_count, keys_before - KEYS as u64);
    assign(&s, vec![0, 1, 2, 3], 2).await;
    assert_eq!(
        kind(&s.put(P, "key0000", "1").await.error),
        Some(Kind::WrongOwner)
    );
    assert_eq!(
        kind(&s.get(P, "key0000").await.error),
        Some(Kind::WrongOwner)
    );

    for node in [s, t] {
        node.stop.cancel();
        node.task.await.unwrap().unwrap();
    }
}
