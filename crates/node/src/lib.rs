//! A Ravel-rs replica: one member of one cluster's Raft group.
//!
//! [`run`] is the whole life of a `ravel_node start` process:
//! 1. resume the identity in the storage directory, or register with the admin (retrying until
//!    it answers) and persist the identity it assigns;
//! 2. open the storage and start openraft, initializing a new group if this replica bootstraps
//!    its cluster;
//! 3. serve the Raft transport on `--raftaddr` and the `Data` + `Control` services on
//!    `--grpcaddr` (peers are told to reach the Raft transport at `--raft-advertise`, the admin
//!    the services at `--grpc-advertise`, which default to the listen addresses); `Data` is
//!    served on `--raftaddr` too, for requests a follower forwards to its leader;
//! 4. report leadership to the admin and, for a new member, join the cluster until it is a voter;
//! 5. on shutdown stop the servers, Raft and the storage, in that order.
//!
//! The crate must not decide placement or routing (the admin does) nor interpret stored data
//! (the storage crate does). `cmd/ravel_node` only parses flags and calls in here.

mod admins;
pub mod config;
pub mod contact;
pub mod control_service;
pub mod data_service;
pub mod error;
pub mod handover;
pub mod http;
pub mod identity;
pub mod kill;
pub mod membership;
pub mod migration;
pub mod prevote;
pub mod raft_net;
pub mod raft_service;
pub mod read_index;
pub mod replica;
pub mod write_batcher;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};
use ravel_core::ClusterId;
use ravel_core::limits::MAX_GRPC_MESSAGE_BYTES;
use ravel_proto::v1::control_server::ControlServer;
use ravel_proto::v1::data_server::DataServer;
use ravel_proto::v1::raft_transport_server::RaftTransportServer;
use ravel_storage::{Raft, RavelNode, Storage};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

pub use config::{NodeConfig, PartialNodeConfig};
pub use error::NodeError;

use crate::control_service::ControlService;
use crate::data_service::DataService;
use crate::identity::Identity;
use crate::raft_net::NetworkFactory;
use crate::raft_service::RaftService;
use crate::replica::Replica;

/// The Raft timing every group uses (the admins' too): see `ravel_core::limits`. Pre-vote (see
/// `prevote`) keeps a replica from campaigning before its peers' leases ran out, so leader loss
/// to a new leader takes about one maximum election timeout plus a pre-vote round.
pub use ravel_core::limits::{
    ELECTION_TIMEOUT_MAX_MS, ELECTION_TIMEOUT_MIN_MS, HEARTBEAT_INTERVAL_MS,
};
/// Deadline of one snapshot chunk (openraft's default of 200 ms resends big chunks forever).
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;
/// Snapshot chunk size: far below [`MAX_GRPC_MESSAGE_BYTES`] even after encoding.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Most log entries kept behind a snapshot (for followers that are only a little behind).
pub const MAX_LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;

/// How long opening the storage is retried (e.g. while a previous run releases its lock).
pub const STORAGE_OPEN_RETRY_MS: u64 = 10_000;
const STORAGE_OPEN_RETRY_PAUSE_MS: u64 = 50;

/// The openraft configuration of a replica of `cluster_id`.
pub fn raft_config(cluster_id: ClusterId, snapshot_threshold: u64) -> Result<Config, NodeError> {
    let config = Config {
        cluster_name: format!("ravel-cluster-{cluster_id}"),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_threshold),
        // Keeping at most half the threshold makes small test thresholds really purge.
        max_in_snapshot_log_to_keep: MAX_LOGS_KEPT_AFTER_SNAPSHOT.min(snapshot_threshold / 2),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        // Must exceed the snapshot interval, or a lagging follower is sent snapshots needlessly.
        replication_lag_threshold: snapshot_threshold.saturating_mul(2).max(5_000),
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| NodeError::Config(format!("Raft configuration: {e}")))
}

/// Runs a replica until `shutdown` is cancelled (see the crate doc for the steps).
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let dir = config.storagedir.clone();
    std::fs::create_dir_all(&dir)
        .map_err(|e| NodeError::io(format!("creating storage directory {}", dir.display()), e))?;
    let identity = match identity::load(&dir)? {
        Some(existing) => membership::refresh_identity(existing, &config)?,
        None => membership::register(&config, &shutdown).await?,
    };
    let span = tracing::info_span!(
        "replica",
        node = identity.node_id,
        cluster = identity.cluster_id
    );
    run_replica(config, identity, shutdown)
        .instrument(span)
        .await
}

async fn run_replica(
    config: NodeConfig,
    identity: Identity,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let storage = open_storage(&config, &shutdown).await?;
    let contact = Arc::new(contact::Contact::default());
    let network = raft_net::network(identity.cluster_id, contact.clone());
    let raft = start_raft(&identity, &config, &storage, network.clone()).await?;
    let replica = Arc::new(Replica::new(
        identity.node_id,
        identity.cluster_id,
        raft.clone(),
        storage.reader(),
        contact.clone(),
        // What peers dial, reported in `Status` and sent when joining.
        (config.raft_advertise.clone(), config.grpc_advertise.clone()),
    ));
    let prevoter = prevote::PreVoter {
        raft: raft.clone(),
        log: storage.log_store(),
        contact,
        network: network.clone(),
    };
    // Not a child of `shutdown`: the servers stop when `wait_for_stop` says so, after it has
    // seen the shutdown, so that a server ending is only ever an unexpected failure.
    let servers_stop = CancellationToken::new();
    let servers = match serve(&config, &replica, &storage, &prevoter, &servers_stop).await {
        Ok(servers) => servers,
        Err(e) => {
            stop_raft_and_storage(&raft, &storage).await;
            return Err(e);
        }
    };
    identity::write_pid(&config.storagedir)?;
    tracing::info!(
        raft = %config.raftaddr,
        raft_advertise = %config.raft_advertise,
        grpc = %config.grpcaddr,
        grpc_advertise = %config.grpc_advertise,
        http = config.http.as_deref().unwrap_or("off"),
        "replica serving"
    );
    let admin = admins::Admins::new(&config.adminrpcaddr)?;
    // The background tasks get their own token so that they also stop when a server fails.
    let tasks_stop = shutdown.child_token();
    let mut tasks = vec![
        tokio::spawn(membership::leader_reporter(
            replica.clone(),
            admin.clone(),
            tasks_stop.clone(),
        )),
        tokio::spawn(http::count_leader_changes(
            replica.clone(),
            tasks_stop.clone(),
        )),
        tokio::spawn(prevote::run(
            prevoter,
            identity.cluster_id,
            identity.node_id,
            tasks_stop.clone(),
        )),
    ];
    if !identity.bootstrap {
        tasks.push(tokio::spawn(membership::join_loop(
            replica.clone(),
            admin,
            tasks_stop.clone(),
        )));
    }
    let outcome = wait_for_stop(servers, &servers_stop, &shutdown, async {
        // The servers still run: the successor's vote must reach this replica.
        handover::hand_over(&replica, &network).await;
    })
    .await;
    tracing::info!("stopping the replica");
    tasks_stop.cancel();
    for task in tasks {
        // They only wait on Raft and the network, and return at once when cancelled.
        let _finished = task.await;
    }
    drop(replica);
    stop_raft_and_storage(&raft, &storage).await;
    identity::remove_pid(&config.storagedir);
    outcome
}

/// Opens the storage, retrying for a bounded time: the database lock of a previous run (a
/// process still exiting, or an earlier `run` in this process whose tasks are still winding
/// down) is released shortly after, and waiting for it beats failing a restart.
async fn open_storage(
    config: &NodeConfig,
    shutdown: &CancellationToken,
) -> Result<Storage, NodeError> {
    let dir = identity::sled_dir(&config.storagedir);
    let deadline = std::time::Instant::now() + Duration::from_millis(STORAGE_OPEN_RETRY_MS);
    loop {
        match Storage::open(&dir) {
            Ok(storage) => return Ok(storage),
            Err(e) if std::time::Instant::now() < deadline && !shutdown.is_cancelled() => {
                tracing::debug!("opening {} failed, retrying: {e}", dir.display());
                tokio::time::sleep(Duration::from_millis(STORAGE_OPEN_RETRY_PAUSE_MS)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn start_raft(
    identity: &Identity,
    config: &NodeConfig,
    storage: &Storage,
    network: NetworkFactory,
) -> Result<Raft, NodeError> {
    let raft_config = Arc::new(raft_config(identity.cluster_id, config.snapshot_threshold)?);
    let raft = Raft::new(
        identity.node_id,
        raft_config,
        network,
        storage.log_store(),
        storage.state_machine(),
    )
    .await
    .map_err(|e| NodeError::Raft(format!("starting Raft: {e}")))?;
    // Elections wait for a won pre-vote (see `prevote`); off before the first timer can fire.
    raft.runtime_config().elect(false);
    if identity.bootstrap {
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if !initialized {
            let me = RavelNode {
                raft_addr: identity.raft_addr.clone(),
                grpc_addr: identity.grpc_addr.clone(),
            };
            match raft
                .initialize(BTreeMap::from([(identity.node_id, me)]))
                .await
            {
                Ok(()) => tracing::info!("initialized a new Raft group"),
                // Someone (an earlier run) initialized it already: nothing to do.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(NodeError::Raft(format!("initializing: {e}"))),
            }
        }
    }
    Ok(raft)
}

/// Binds every listener and spawns both gRPC servers, and the HTTP endpoint with `--http`.
async fn serve(
    config: &NodeConfig,
    replica: &Arc<Replica>,
    storage: &Storage,
    prevoter: &prevote::PreVoter,
    stop: &CancellationToken,
) -> Result<Vec<JoinHandle<Result<(), NodeError>>>, NodeError> {
    let raft_listener = bind(&config.raftaddr).await?;
    let grpc_listener = bind(&config.grpcaddr).await?;
    let http_listener = match &config.http {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let raft_service = RaftTransportServer::new(RaftService::new(
        replica.cluster_id,
        replica.node_id,
        prevoter.clone(),
    ))
    .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let data_service = Arc::new(DataService::new(replica.clone(), prevoter.network.clone()));
    let data_server = || {
        DataServer::from_arc(data_service.clone())
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    };
    let control_service = ControlServer::new(ControlService::new(replica.clone()))
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    // Data on the Raft port too: followers forward requests to the leader there.
    let raft_router = tonic::transport::Server::builder()
        .add_service(raft_service)
        .add_service(data_server());
    let grpc_router = tonic::transport::Server::builder()
        .add_service(data_server())
        .add_service(control_service);
    let raft_addr = config.raftaddr.clone();
    let grpc_addr = config.grpcaddr.clone();
    let raft_stop = stop.clone();
    let grpc_stop = stop.clone();
    let raft_task = tokio::spawn(async move {
        raft_router
            .serve_with_incoming_shutdown(
                TcpIncoming::from(raft_listener).with_nodelay(Some(true)),
                raft_stop.cancelled_owned(),
            )
            .await
            .map_err(|e| NodeError::Serve {
                addr: raft_addr,
                message: e.to_string(),
            })
    });
    let grpc_task = tokio::spawn(async move {
        grpc_router
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                grpc_stop.cancelled_owned(),
            )
            .await
            .map_err(|e| NodeError::Serve {
                addr: grpc_addr,
                message: e.to_string(),
            })
    });
    let mut servers = vec![raft_task, grpc_task];
    if let Some(listener) = http_listener {
        servers.push(tokio::spawn(http::serve(
            listener,
            http::HttpState {
                replica: replica.clone(),
                storage: storage.clone(),
            },
            stop.clone(),
        )));
    }
    Ok(servers)
}

async fn bind(addr: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|e| NodeError::Serve {
        addr: addr.to_owned(),
        message: e.to_string(),
    })
}

/// Waits for `shutdown` and then runs `before_stop` (the leadership hand-over), or for a server
/// to fail; then stops every server and joins them.
async fn wait_for_stop(
    mut servers: Vec<JoinHandle<Result<(), NodeError>>>,
    servers_stop: &CancellationToken,
    shutdown: &CancellationToken,
    before_stop: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let mut outcome = Ok(());
    tokio::select! {
        biased;
        () = shutdown.cancelled() => before_stop.await,
        (first, index, _) = futures_select_all(&mut servers) => {
            outcome = Err(server_result(first).err().unwrap_or_else(|| NodeError::Serve {
                addr: String::new(),
                message: "a gRPC server stopped unexpectedly".into(),
            }));
            servers.remove(index);
        }
    }
    servers_stop.cancel();
    for server in servers {
        if let Err(e) = server_result(server.await) {
            tracing::warn!("gRPC server: {e}");
        }
    }
    outcome
}

fn server_result(
    joined: Result<Result<(), NodeError>, tokio::task::JoinError>,
) -> Result<(), NodeError> {
    joined.map_err(|e| NodeError::Serve {
        addr: String::new(),
        message: format!("server task failed: {e}"),
    })?
}

/// Resolves when the first of `handles` finishes, with its result and index.
async fn futures_select_all(
    handles: &mut [JoinHandle<Result<(), NodeError>>],
) -> (
    Result<Result<(), NodeError>, tokio::task::JoinError>,
    usize,
    (),
) {
    std::future::poll_fn(|cx| {
        for (index, handle) in handles.iter_mut().enumerate() {
            if let std::task::Poll::Ready(result) = std::pin::Pin::new(handle).poll(cx) {
                return std::task::Poll::Ready((result, index, ()));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn stop_raft_and_storage(raft: &Raft, storage: &Storage) {
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("Raft did not shut down cleanly: {e}");
    }
    if let Err(e) = storage.sync().await {
        tracing::error!("the final storage sync failed: {e}");
    }
}
