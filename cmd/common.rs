//! What both mains share: the allocator, the logging flags and the signal that starts a
//! graceful stop.

use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: the request path allocates many small buffers (HTTP and
/// gRPC frames, protobuf messages, sled pages), and glibc's arena locking and consolidation
/// showed up in profiles of the leader under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The logging flags both `start` commands take.
#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Log lines as `text` (colours only on a terminal) or `json` (one object per line).
    /// `RUST_LOG` sets the filter (default: info, libraries at warn).
    #[arg(
        long,
        env = "RAVEL_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: ravel_telemetry::LogFormat,
}

/// Cancels `shutdown` on SIGINT or SIGTERM, for a graceful stop.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}
