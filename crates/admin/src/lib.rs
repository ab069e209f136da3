//! The Ravel-rs admin: the store's control plane and its client-facing router.
//!
//! It keeps the persisted metadata (clusters, replicas, the partition table), serves the client
//! HTTP API, and routes each request over gRPC to the leader of the cluster that owns the key.
//!
//! Module map (each module's own doc says more):
//! - [`meta`]: the admin's metadata as one deterministic state machine (`MetaState::apply`),
//!   replicated and persisted by the admins' Raft group (a single admin is a group of one).
//! - [`pool`]: pooled gRPC channels per node and the leader cache per cluster.
//! - [`node_api`]: the gRPC service replicas call (register, leader reports, removal).
//! - [`placement`]: pushes the partition assignment to clusters and finds their leaders.
//! - [`mover`]: drives partition moves (migration) step by step, resuming them after a restart.
//! - [`cluster_view`]: `/v1/cluster` and readiness.
//! - [`config`]: `ravel_admin start`'s YAML file and flags, merged.
//! - [`router`]: the life of a client request from partition to leader and back.
//! - [`reachability`]: replicas this admin cannot reach now, probed until they answer.
//! - [`http`]: the HTTP API with its limits, timeouts and connection cap.
//! - `json_depth`: the nesting depth of a JSON value, measured without recursion.
//! - [`ui`]: the dashboard page at `/ui`, compiled in.
//! - [`error`]: the one mapping from routing errors to HTTP status codes and JSON bodies.

pub mod cluster_view;
pub mod config;
pub mod error;
pub mod http;
mod json_depth;
pub mod meta;
pub mod metrics;
pub mod mover;
pub mod node_api;
pub mod placement;
pub mod pool;
pub mod reachability;
pub mod router;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Upper bound on one Admin gRPC call as served: a removal may look for a leader for
/// [`node_api::REMOVE_LEAVE_BUDGET_MS`] and then make one control call.
const ADMIN_GRPC_REQUEST_TIMEOUT_MS: u64 =
    node_api::REMOVE_LEAVE_BUDGET_MS + 2 * ravel_core::limits::CONTROL_RPC_TIMEOUT_MS;

/// Concurrent Admin gRPC calls per connection (replicas send a handful at a time).
const ADMIN_GRPC_CONCURRENCY_PER_CONNECTION: usize = 64;

/// Everything the admin's tasks share. Cheap to clone behind an `Arc`.
pub struct AdminState {
    /// The persisted metadata.
    pub meta: meta::MetaStore,
    /// gRPC channels and leader cache.
    pub pool: pool::NodePool,
    /// Replicas marked unreachable by failed calls (routing goes around them).
    pub reach: reachability::Reachability,
    /// Which clusters confirmed the current assignment epoch; wakes the placement task.
    pub placement: placement::Placement,
    /// Wakes the mover and holds its live copy progress.
    pub mover: mover::Mover,
    /// The addresses this admin serves on, as `/v1/cluster` lists them under `admins`.
    pub addrs: AdminAddrs,
}

/// Where one admin serves: replicas call `grpc`, clients `http`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminAddrs {
    pub grpc: String,
    pub http: String,
}

impl AdminState {
    /// The state around opened metadata, with an empty pool and nothing confirmed.
    #[must_use]
    pub fn new(meta: meta::MetaStore) -> Self {
        Self {
            meta,
            pool: pool::NodePool::new(),
            reach: reachability::Reachability::default(),
            placement: placement::Placement::new(),
            mover: mover::Mover::new(),
            addrs: AdminAddrs::default(),
        }
    }
}

/// Shared handle to the admin's state.
pub type SharedState = Arc<AdminState>;

/// How to run an admin (the flags of `ravel_admin start`).
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Client HTTP API address (`--http`).
    pub http: SocketAddr,
    /// Admin gRPC address replicas call (`--grpc`).
    pub grpc: SocketAddr,
    /// Metadata directory (`--backupPath`, alias `--data-dir`).
    pub backup_path: PathBuf,
    /// Partition count for a first start (`--partitions`); fixed afterwards.
    pub partitions: Option<u32>,
    /// The gRPC addresses of every admin of the admins' group, this one's included
    /// (`--peers`); empty: a group of one.
    pub peers: Vec<String>,
    /// Join an existing admins' group instead of forming one (`--join`).
    pub join: bool,
    /// Most partition moves started at once (`--max-concurrent-moves`, default
    /// [`mover::DEFAULT_MAX_CONCURRENT_MOVES`]).
    pub max_concurrent_moves: usize,
    /// How long an aborted move (and, if its target was down, every move to that target) waits
    /// before it is tried again (`--move-retry-backoff-ms`, default
    /// [`mover::DEFAULT_MOVE_RETRY_BACKOFF_MS`]).
    pub move_retry_backoff_ms: u64,
}

/// Why the admin could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot open the admin metadata in {path}: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: meta::MetaError,
    },
    #[error("cannot listen for {what} on {addr}: {source} (is another process using that port?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("an admin task failed: {0}")]
    Task(String),
}

impl AdminError {
    /// Stable snake_case code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Meta { source, .. } => source.code(),
            Self::Bind { .. } => "address_in_use",
            Self::Grpc(_) => "grpc_server_failed",
            Self::Http(_) => "http_server_failed",
            Self::Task(_) => "task_failed",
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { what, addr, source })
}

/// Opens the metadata, binds both listeners (fail fast with a clear error if a port is taken),
/// serves the Admin gRPC service and the HTTP API until `shutdown` is cancelled.
pub async fn run(config: AdminConfig, shutdown: CancellationToken) -> Result<(), AdminError> {
    let AdminConfig {
        http,
        grpc,
        backup_path,
        partitions,
        peers,
        join,
        max_concurrent_moves,
        move_retry_backoff_ms,
    } = config;
    // Both ports are bound before anything else, so a taken port fails the start at once.
    let grpc_listener = bind("admin gRPC", grpc).await?;
    let http_listener = bind("HTTP", http).await?;
    let addrs = AdminAddrs {
        grpc: grpc_listener.local_addr().unwrap_or(grpc).to_string(),
        http: http_listener.local_addr().unwrap_or(http).to_string(),
    };
    let options = meta::MetaOptions {
        node: meta::raft::AdminNode {
            grpc_addr: addrs.grpc.clone(),
            http_addr: addrs.http.clone(),
        },
        peers,
        join,
        ..meta::MetaOptions::new(partitions)
    };
    let meta = meta::MetaStore::open_with(&backup_path, options)
        .await
        .map_err(|source| AdminError::Meta {
            path: backup_path.clone(),
            source,
        })?;
    {
        let m = meta.current();
        tracing::info!(
            path = %backup_path.display(),
            partitions = m.partitions,
            epoch = m.table.epoch,
            clusters = m.clusters.len(),
            replicas = m.replicas.len(),
            has_data = m.has_data,
            moves_in_progress = m.moves.len(),
            "admin metadata loaded"
        );
    }

    tracing::info!(%grpc, %http, "admin listening");

    let state: SharedState = Arc::new(AdminState {
        addrs,
        ..AdminState::new(meta)
    });
    // Stops every task when `shutdown` is cancelled or when one server fails.
    let stop = shutdown.child_token();

    // In a larger group the partition count is known once the group's base is applied here.
    let conflict: Arc<std::sync::Mutex<Option<meta::MetaError>>> = Arc::default();
    let partitions_check = {
        let (state, stop, conflict) = (Arc::clone(&state), stop.clone(), Arc::clone(&conflict));
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = state.meta.wait_based() => {
                    if let Err(e) = state.meta.check_partitions(partitions) {
                        tracing::error!(error = %e, "stopping: this admin's --partitions differs from its group's");
                        *conflict.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                        stop.cancel();
                    }
                }
            }
        })
    };

    // Every admin keeps its own view of the clusters' leaders and assignments.
    let placement = tokio::spawn(placement::run(Arc::clone(&state), stop.clone()));
    // Only the admins' leader drives moves: on leading, resumes every persisted move, then
    // starts planned ones.
    let mover = tokio::spawn(mover::run_while_leading(
        Arc::clone(&state),
        max_concurrent_moves,
        std::time::Duration::from_millis(move_retry_backoff_ms),
        stop.clone(),
    ));
    let grpc_server = {
        let service = node_api::NodeApi::new(Arc::clone(&state)).into_service();
        let admin_raft =
            meta::transport::AdminRaftService::server(state.meta.id(), state.meta.raft().clone());
        // Without TCP_NODELAY, small replies wait for the peer's delayed ACK (~40 ms).
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let stop = stop.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .timeout(std::time::Duration::from_millis(
                    ADMIN_GRPC_REQUEST_TIMEOUT_MS,
                ))
                .concurrency_limit_per_connection(ADMIN_GRPC_CONCURRENCY_PER_CONNECTION)
                .add_service(service)
                .add_service(admin_raft)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        })
    };
    let http_server = tokio::spawn(http::serve_http(
        http_listener,
        Arc::clone(&state),
        stop.clone(),
    ));

    let (mut grpc_server, mut http_server) = (grpc_server, http_server);
    let mut grpc_result = None;
    let mut http_result = None;
    tokio::select! {
        r = &mut grpc_server => grpc_result = Some(r),
        r = &mut http_server => http_result = Some(r),
    }
    // Whichever ended first (shutdown or failure), the other follows.
    stop.cancel();
    let grpc_result = match grpc_result {
        Some(r) => r,
        None => grpc_server.await,
    };
    let http_result = match http_result {
        Some(r) => r,
        None => http_server.await,
    };
    if let Err(e) = placement.await {
        tracing::error!(error = %e, "placement task failed");
    }
    if let Err(e) = mover.await {
        tracing::error!(error = %e, "mover task failed");
    }
    partitions_check.abort();
    state.meta.close().await;
    let conflict = conflict
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(source) = conflict {
        return Err(AdminError::Meta {
            path: backup_path,
            source,
        });
    }
    grpc_result.map_err(|e| AdminError::Task(e.to_string()))??;
    http_result
        .map_err(|e| AdminError::Task(e.to_string()))?
        .map_err(AdminError::Http)?;
    tracing::info!("admin stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    /// A taken port fails the start at once with a Bind error naming it; free ports serve until
    /// shutdown, and the metadata created by the first run is there for the next.
    #[tokio::test]
    async fn run_fails_fast_on_taken_port_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = AdminConfig {
            http: free_addr(),
            grpc: taken.local_addr().unwrap(),
            backup_path: dir.path().to_path_buf(),
            partitions: Some(16),
            peers: Vec::new(),
            join: false,
            max_concurrent_moves: mover::DEFAULT_MAX_CONCURRENT_MOVES,
            move_retry_backoff_ms: mover::DEFAULT_MOVE_RETRY_BACKOFF_MS,
        };
        let err = run(config.clone(), CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "address_in_use");
        assert!(
            err.to_string()
                .contains(&taken.local_addr().unwrap().to_string())
        );
        drop(taken);

        let shutdown = CancellationToken::new();
        let grpc = free_addr();
        let serving = tokio::spawn(run(
            AdminConfig {
                grpc,
                http: free_addr(),
                ..config.clone()
            },
            shutdown.clone(),
        ));
        // Poll until the gRPC port accepts, then stop.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(grpc).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "admin never listened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        serving.await.unwrap().unwrap();

        // P is fixed by the first run.
        let err = run(
            AdminConfig {
                partitions: Some(32),
                ..config
            },
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), "partitions_fixed");
    }
}
