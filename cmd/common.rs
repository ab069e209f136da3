//! What both mains share: the allocator, logging set-up and the signal that starts a graceful
//! stop.

use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: the request path allocates many small buffers (HTTP and
/// gRPC frames, protobuf messages, sled pages), and glibc's arena locking and consolidation
/// showed up in profiles of the leader under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Logs to stderr; `RUST_LOG` overrides the default filter, which keeps the chatty libraries
/// (openraft, sled, h2, tower) at warnings.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .init();
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
