//! `ravel_admin`: the Ravel-rs admin and router (`start`), and the client commands that talk
//! to running admins (`status`, `get`, `put`, `delete`, `probe`). This main only parses flags,
//! sets up logging and hands over to the `ravel-admin` and `ravel-cli` crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[path = "../common.rs"]
mod common;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ravel_admin::AdminConfig;
use tokio_util::sync::CancellationToken;

/// The Ravel-rs admin: keeps the partition table and cluster membership, serves the client
/// HTTP API and routes every request to the leader of the cluster that owns the key. The
/// client commands talk to running admins over that same HTTP API.
#[derive(Parser, Debug)]
#[command(name = "ravel_admin", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  ravel_admin start --http 127.0.0.1:8080 --grpc 127.0.0.1:9090 --backupPath /var/lib/ravel/admin
  ravel_admin start --http 127.0.0.1:8081 --grpc 127.0.0.1:9091 --backupPath /var/lib/ravel/admin1 \
      --peers 127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093
  ravel_admin status
  ravel_admin put user/42 '{\"name\":\"Ada\"}'
  ravel_admin get user/42 -o json
  ravel_admin delete user/42 --endpoints http://10.0.0.1:8080,http://10.0.0.2:8080
  ravel_admin probe http://127.0.0.1:8080/readyz
  ravel_admin members add 127.0.0.1:9094 --endpoints http://127.0.0.1:8081

Every `start` flag can also be set in the environment: RAVEL_ADMIN_HTTP, RAVEL_ADMIN_GRPC,
RAVEL_ADMIN_BACKUP_PATH, RAVEL_ADMIN_PARTITIONS, ...; a flag given wins over the environment.
";

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the admin (resuming from --backupPath if it holds state).
    Start(StartArgs),
    /// Show admins, clusters, replicas (role, health), leaders, partitions, keys and moves.
    Status(ClientArgs),
    /// Read a key (linearizable unless --stale).
    Get {
        /// The key to read.
        key: String,
        /// Read the owning cluster leader's copy without confirming its leadership first.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a key.
    ///
    /// VALUE is stored as JSON when it parses as JSON (42, true, {"a":1}, "quoted"), otherwise
    /// as a string; --string always stores a string.
    Put {
        /// The key (any UTF-8 text up to the key size limit).
        key: String,
        /// The value: JSON, or text stored as a JSON string.
        value: String,
        /// Store VALUE as a JSON string even when it parses as JSON.
        #[arg(long)]
        string: bool,
        /// Write only if the key's current version is N (0: only if the key is absent).
        #[arg(long, value_name = "N")]
        cas: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key.
    Delete {
        /// The key to delete.
        key: String,
        /// Delete only if the key's current version is N.
        #[arg(long, value_name = "N")]
        cas: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add an admin to the admin group, or remove one.
    Members {
        #[command(subcommand)]
        change: MembersChange,
    },
    /// GET a URL and exit 0 only if it answers 2xx (a health check).
    ///
    /// For container images, which have no shell and no curl:
    /// `ravel_admin probe http://127.0.0.1:8080/readyz`.
    Probe {
        /// The URL to check, e.g. http://127.0.0.1:8080/readyz.
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, value_name = "MS", default_value_t = ravel_cli::DEFAULT_PROBE_TIMEOUT_MS)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
enum MembersChange {
    /// Make the admin serving gRPC at GRPC a voter of the group. Start it first with
    /// `ravel_admin start ... --join`; it catches up, then votes.
    Add {
        /// The new admin's --grpc address, host:port.
        grpc: SocketAddr,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take the admin serving gRPC at GRPC out of the group (stop it afterwards).
    Remove {
        /// The admin's --grpc address, host:port.
        grpc: SocketAddr,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Where the client commands send their requests and how they print the answer.
#[derive(Args, Debug)]
struct ClientArgs {
    /// Admin HTTP endpoints, comma-separated; the next is tried when one cannot be reached.
    #[arg(long, env = "RAVEL_ENDPOINTS", value_name = "URL[,URL...]",
          default_value = ravel_cli::DEFAULT_ENDPOINT)]
    endpoints: String,
    /// `table` for a person, `json` for scripts.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FORMAT",
        default_value = "table"
    )]
    output: ravel_cli::Output,
    /// Give up on an endpoint after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = ravel_cli::DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
}

#[derive(Args, Debug)]
struct StartArgs {
    /// Client HTTP API address, host:port (required here, in the environment or in the YAML file).
    #[arg(long, env = "RAVEL_ADMIN_HTTP", value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// gRPC address replicas register and report to, and other admins reach (required).
    #[arg(long, env = "RAVEL_ADMIN_GRPC", value_name = "ADDR")]
    grpc: Option<SocketAddr>,
    /// Directory of the admin's persisted metadata (clusters, replicas, partition table)
    /// (required).
    #[arg(
        long = "backupPath",
        visible_alias = "data-dir",
        env = "RAVEL_ADMIN_BACKUP_PATH",
        value_name = "DIR"
    )]
    backup_path: Option<PathBuf>,
    /// Number of partitions P, fixed at the first start (default 1024).
    #[arg(long, env = "RAVEL_ADMIN_PARTITIONS", value_name = "N")]
    partitions: Option<u32>,
    /// The gRPC addresses of every admin of the admin group, this admin's own --grpc included,
    /// comma-separated; the same list on every admin (order irrelevant). Without it the admin
    /// is a group of one. Read at the first start only: later, the group's membership is in
    /// its log (restart with the identical command line).
    #[arg(
        long,
        env = "RAVEL_ADMIN_PEERS",
        value_name = "GRPC,GRPC,...",
        value_delimiter = ','
    )]
    peers: Vec<SocketAddr>,
    /// Join an existing admin group instead of forming one: the admin waits until an admin of
    /// the group adds it (`ravel_admin members add`). Keep it on restarts.
    #[arg(long, env = "RAVEL_ADMIN_JOIN", conflicts_with = "peers")]
    join: bool,
    /// Most partition moves (migrations) run at once, 1-256 (default 4); more move faster,
    /// fewer disturb client traffic less.
    #[arg(long, env = "RAVEL_ADMIN_MAX_CONCURRENT_MOVES", value_name = "N")]
    max_concurrent_moves: Option<usize>,
    /// Milliseconds before an aborted partition move is tried again, 100-3600000 (default
    /// 30000); when it aborted because the target cluster had no quorum, no move to that
    /// cluster starts for this long either. Tests use a short one; in production the default
    /// lets a failed cluster be repaired.
    #[arg(long, env = "RAVEL_ADMIN_MOVE_RETRY_BACKOFF_MS", value_name = "MS")]
    move_retry_backoff_ms: Option<u64>,
    /// A YAML file of these settings, keyed by the long flag names (`http`, `grpc`,
    /// `backupPath`, `partitions`, `peers`, `join`, `max-concurrent-moves`,
    /// `move-retry-backoff-ms`); flags and their environment variables override it.
    #[arg(
        short = 'y',
        long = "yaml",
        env = "RAVEL_ADMIN_YAML",
        value_name = "FILE"
    )]
    yaml: Option<PathBuf>,
    #[command(flatten)]
    log: common::LogArgs,
}

impl StartArgs {
    /// The configuration: the YAML file (if any) overridden by every flag given.
    fn config(&self) -> anyhow::Result<AdminConfig> {
        let file = match &self.yaml {
            Some(path) => ravel_admin::config::read_yaml(path).map_err(anyhow::Error::msg)?,
            None => ravel_admin::config::PartialAdminConfig::default(),
        };
        let flags = ravel_admin::config::PartialAdminConfig {
            http: self.http,
            grpc: self.grpc,
            backup_path: self.backup_path.clone(),
            partitions: self.partitions,
            peers: (!self.peers.is_empty())
                .then(|| ravel_admin::config::Peers::List(self.peers.clone())),
            join: self.join.then_some(true),
            max_concurrent_moves: self.max_concurrent_moves,
            move_retry_backoff_ms: self.move_retry_backoff_ms,
        };
        file.overridden_by(flags)
            .into_config()
            .map_err(anyhow::Error::msg)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Start(args) => args,
        client_command => std::process::exit(run_client(client_command)),
    };
    ravel_telemetry::init_logging(args.log.log_format);
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(common::stop_on_signal(shutdown.clone()));
        ravel_admin::run(config, shutdown).await?;
        Ok(())
    })
}

/// Runs one client command and prints its answer; returns the exit code (0 success, 1 any
/// failure: the message on standard error, or the JSON error on standard output with `-o json`).
fn run_client(command: Command) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return 1;
        }
    };
    let output = match &command {
        Command::Status(c)
        | Command::Get { client: c, .. }
        | Command::Put { client: c, .. }
        | Command::Delete { client: c, .. }
        | Command::Members {
            change: MembersChange::Add { client: c, .. } | MembersChange::Remove { client: c, .. },
        } => c.output,
        Command::Start(_) | Command::Probe { .. } => ravel_cli::Output::Table,
    };
    let result = runtime.block_on(async move {
        let connect = |c: &ClientArgs| {
            ravel_cli::Client::new(&c.endpoints, Duration::from_millis(c.timeout_ms))
        };
        match command {
            Command::Start(_) => unreachable!("start is not a client command"),
            Command::Status(c) => ravel_cli::status(&connect(&c)?, c.output).await,
            Command::Get { key, stale, client } => {
                ravel_cli::get(&connect(&client)?, &key, stale, client.output).await
            }
            Command::Put {
                key,
                value,
                string,
                cas,
                client,
            } => {
                let syntax = if string {
                    ravel_cli::ValueSyntax::String
                } else {
                    ravel_cli::ValueSyntax::JsonOrString
                };
                let value = ravel_cli::parse_value(&value, syntax);
                ravel_cli::put(&connect(&client)?, &key, &value, cas, client.output).await
            }
            Command::Delete { key, cas, client } => {
                ravel_cli::delete(&connect(&client)?, &key, cas, client.output).await
            }
            Command::Members { change } => {
                let (add, grpc, client) = match change {
                    MembersChange::Add { grpc, client } => (true, grpc, client),
                    MembersChange::Remove { grpc, client } => (false, grpc, client),
                };
                ravel_cli::change_admins(&connect(&client)?, add, &grpc.to_string(), client.output)
                    .await
            }
            Command::Probe { url, timeout_ms } => {
                ravel_cli::probe(&url, Duration::from_millis(timeout_ms)).await
            }
        }
    });
    match result {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) if output == ravel_cli::Output::Json => {
            println!("{}", e.to_json());
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
