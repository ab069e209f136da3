//! `ravel_admin`: the Ravel-rs admin and router. This main only parses flags, sets up logging
//! and hands over to the `ravel-admin` crate.

use std::net::SocketAddr;
use std::path::PathBuf;

#[path = "../common.rs"]
mod common;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use ravel_admin::AdminConfig;
use tokio_util::sync::CancellationToken;

/// The Ravel-rs admin: keeps the partition table and cluster membership, serves the client
/// HTTP API and routes every request to the leader of the cluster that owns the key.
#[derive(Parser, Debug)]
#[command(name = "ravel_admin", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the admin (resuming from --backupPath if it holds state).
    Start(StartArgs),
}

#[derive(Args, Debug)]
struct StartArgs {
    /// Client HTTP API address, host:port.
    #[arg(long, value_name = "ADDR")]
    http: SocketAddr,
    /// gRPC address replicas register and report to, host:port.
    #[arg(long, value_name = "ADDR")]
    grpc: SocketAddr,
    /// Directory of the admin's persisted metadata (clusters, replicas, partition table).
    #[arg(long = "backupPath", visible_alias = "data-dir", value_name = "DIR")]
    backup_path: PathBuf,
    /// Number of partitions P, fixed at the first start (default 1024).
    #[arg(long, value_name = "N")]
    partitions: Option<u32>,
    /// Most partition moves (migrations) run at once; more move faster, fewer disturb client
    /// traffic less.
    #[arg(long, value_name = "N", default_value_t = ravel_admin::mover::DEFAULT_MAX_CONCURRENT_MOVES,
          value_parser = clap::value_parser!(u16).range(1..=256).map(usize::from))]
    max_concurrent_moves: usize,
    /// Milliseconds before an aborted partition move is tried again; when it aborted because the
    /// target cluster had no quorum, no move to that cluster starts for this long either.
    /// Tests use a short one; in production the default lets a failed cluster be repaired.
    #[arg(long, value_name = "MS", default_value_t = ravel_admin::mover::DEFAULT_MOVE_RETRY_BACKOFF_MS,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    move_retry_backoff_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::init_tracing();
    let Command::Start(args) = cli.command;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(common::stop_on_signal(shutdown.clone()));
        let config = AdminConfig {
            http: args.http,
            grpc: args.grpc,
            backup_path: args.backup_path,
            partitions: args.partitions,
            max_concurrent_moves: args.max_concurrent_moves,
            move_retry_backoff_ms: args.move_retry_backoff_ms,
        };
        ravel_admin::run(config, shutdown).await?;
        Ok(())
    })
}
