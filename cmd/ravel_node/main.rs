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
#[command(name = "ravel_node", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  # the first replica of a new cluster (-l), then two more that join the smallest cluster
  ravel_node start -s /var/lib/ravel/n1 -g 127.0.0.1:7010 -r 127.0.0.1:7011 -a 127.0.0.1:9090 -l
  ravel_node start -s /var/lib/ravel/n2 -g 127.0.0.1:7020 -r 127.0.0.1:7021 -a 127.0.0.1:9090
  ravel_node start -y /etc/ravel/n3.yaml --http 127.0.0.1:7032
  # remove a replica from its cluster and delete its directory
  ravel_node kill -s /var/lib/ravel/n2

Every `start` flag can also be set in the environment: RAVEL_NODE_STORAGEDIR,
RAVEL_NODE_GRPCADDR, RAVEL_NODE_RAFTADDR, RAVEL_NODE_ADMINRPCADDR, RAVEL_NODE_LEADER,
RAVEL_NODE_HTTP, ...; a flag wins over the environment, and both over the YAML file.
";

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
    #[arg(
        short = 's',
        long = "storagedir",
        env = "RAVEL_NODE_STORAGEDIR",
        value_name = "DIR"
    )]
    storagedir: Option<PathBuf>,
    /// Address of the data and control gRPC service (the admin calls it), host:port.
    #[arg(
        short = 'g',
        long = "grpcaddr",
        env = "RAVEL_NODE_GRPCADDR",
        value_name = "ADDR"
    )]
    grpcaddr: Option<String>,
    /// Address of the Raft transport between replicas, host:port.
    #[arg(
        short = 'r',
        long = "raftaddr",
        env = "RAVEL_NODE_RAFTADDR",
        value_name = "ADDR"
    )]
    raftaddr: Option<String>,
    /// The Raft address peers are told to dial, host:port (default: --raftaddr). Set it when
    /// peers reach this replica through a proxy, NAT or load balancer.
    #[arg(
        long = "raft-advertise",
        env = "RAVEL_NODE_RAFT_ADVERTISE",
        value_name = "ADDR"
    )]
    raft_advertise: Option<String>,
    /// The gRPC address the admin is told to dial, host:port (default: --grpcaddr). Set it when
    /// the admin reaches this replica through a proxy, NAT or load balancer.
    #[arg(
        long = "grpc-advertise",
        env = "RAVEL_NODE_GRPC_ADVERTISE",
        value_name = "ADDR"
    )]
    grpc_advertise: Option<String>,
    /// The admin's gRPC address, host:port.
    #[arg(
        short = 'a',
        long = "adminrpcaddr",
        env = "RAVEL_NODE_ADMINRPCADDR",
        value_name = "ADDR"
    )]
    adminrpcaddr: Option<String>,
    /// Create a new cluster with this replica as its first member (only when DIR is new;
    /// restarting with the same command line resumes).
    #[arg(short = 'l', long = "leader", env = "RAVEL_NODE_LEADER")]
    leader: bool,
    /// YAML config file; keys are the long flag names. Flags given here override it.
    #[arg(
        short = 'y',
        long = "yaml",
        env = "RAVEL_NODE_YAML",
        value_name = "FILE"
    )]
    yaml: Option<PathBuf>,
    /// Raft entries between snapshots; older entries are then purged from the log.
    #[arg(
        long = "snapshot-threshold",
        env = "RAVEL_NODE_SNAPSHOT_THRESHOLD",
        value_name = "ENTRIES"
    )]
    snapshot_threshold: Option<u64>,
    /// Serve this replica's /livez, /readyz and Prometheus /metrics on ADDR (host:port).
    #[arg(long = "http", env = "RAVEL_NODE_HTTP", value_name = "ADDR")]
    http: Option<String>,
    #[command(flatten)]
    log: common::LogArgs,
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
    let log_format = match &cli.command {
        Command::Start(args) => args.log.log_format,
        Command::Kill(_) => ravel_telemetry::LogFormat::Text,
    };
    ravel_telemetry::init_logging(log_format);
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
        grpc_advertise: args.grpc_advertise,
        adminrpcaddr: args.adminrpcaddr,
        // A bare `-l` is the only way to say "leader" on the command line; its absence must not
        // override a `leader: true` from the YAML file.
        leader: args.leader.then_some(true),
        snapshot_threshold: args.snapshot_threshold,
        http: args.http,
    };
    let config = NodeConfig::resolve(args.yaml.as_deref(), flags)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(common::stop_on_signal(shutdown.clone()));
    ravel_node::run(config, shutdown).await?;
    Ok(())
}
