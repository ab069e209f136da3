//! `ravel_node`: a replica of a Ravel-rs cluster. This main only parses flags, sets up logging
//! and hands over to the `ravel-node` crate.

use std::path::PathBuf;

#[path = "../common.rs"]
mod common;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ravel_node::config::{NodeConfig, PartialNodeConfig};
use tokio_util::sync::CancellationToken;

/// A replica of a Ravel-rs cluster: one member of a Raft group that stores a share of the keys.
#[derive(Parser, Debug)]
#[command(name = "ravel_node", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start (or restart) a replica. A new storage dir registers with the admin; an existing one
    /// resumes the same node id and cluster.
    Start(StartArgs),
    /// Remove a replica from its cluster, stop it if it runs, and delete its storage dir.
    Kill(KillArgs),
}

#[derive(Args, Debug)]
struct StartArgs {
    /// Storage directory of this replica (Raft log, state machine, identity).
    #[arg(short = 's', long = "storagedir", value_name = "DIR")]
    storagedir: Option<PathBuf>,
    /// Address of the data and control gRPC service (the admin calls it), host:port.
    #[arg(short = 'g', long = "grpcaddr", value_name = "ADDR")]
    grpcaddr: Option<String>,
    /// Address of the Raft transport between replicas, host:port.
    #[arg(short = 'r', long = "raftaddr", value_name = "ADDR")]
    raftaddr: Option<String>,
    /// The Raft address peers are told to dial, host:port (default: --raftaddr). Set it when
    /// peers reach this replica through a proxy, NAT or load balancer.
    #[arg(long = "raft-advertise", value_name = "ADDR")]
    raft_advertise: Option<String>,
    /// The admin's gRPC address, host:port.
    #[arg(short = 'a', long = "adminrpcaddr", value_name = "ADDR")]
    adminrpcaddr: Option<String>,
    /// Create a new cluster with this replica as its first member (only when DIR is new;
    /// restarting with the same command line resumes).
    #[arg(short = 'l', long = "leader")]
    leader: bool,
    /// YAML config file; keys are the long flag names. Flags given here override it.
    #[arg(short = 'y', long = "yaml", value_name = "FILE")]
    yaml: Option<PathBuf>,
    /// Raft entries between snapshots; older entries are then purged from the log.
    #[arg(long = "snapshot-threshold", value_name = "ENTRIES")]
    snapshot_threshold: Option<u64>,
}

#[derive(Args, Debug)]
struct KillArgs {
    /// Storage directory of the replica to remove.
    #[arg(short = 's', long = "storagedir", value_name = "DIR")]
    storagedir: PathBuf,
    /// Remove the last replica of a cluster even though its keys would be lost.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Start(args) => start(args).await,
            Command::Kill(args) => {
                ravel_node::kill::kill(&args.storagedir, args.force)
                    .await
                    .with_context(|| format!("kill {}", args.storagedir.display()))?;
                println!("removed replica {}", args.storagedir.display());
                Ok(())
            }
        }
    })
}

async fn start(args: StartArgs) -> anyhow::Result<()> {
    let flags = PartialNodeConfig {
        storagedir: args.storagedir,
        grpcaddr: args.grpcaddr,
        raftaddr: args.raftaddr,
        raft_advertise: args.raft_advertise,
        adminrpcaddr: args.adminrpcaddr,
        // A bare `-l` is the only way to say "leader" on the command line; its absence must not
        // override a `leader: true` from the YAML file.
        leader: args.leader.then_some(true),
        snapshot_threshold: args.snapshot_threshold,
    };
    let config = NodeConfig::resolve(args.yaml.as_deref(), flags)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(common::stop_on_signal(shutdown.clone()));
    ravel_node::run(config, shutdown).await?;
    Ok(())
}
