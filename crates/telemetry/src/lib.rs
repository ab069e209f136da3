//! What both Ravel-rs processes share to be observed: the process-wide Prometheus recorder that
//! every `metrics::counter!`/`histogram!`/`gauge!` call feeds and every `/metrics` route renders,
//! and the log output (`--log-format text|json`, colours only on a terminal).
//!
//! Metric names carry their unit (`_seconds`, `_bytes`, `_total`) and labels never carry a key
//! or a value, only bounded things (a route, a method, a status code).

pub mod logging;

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub use logging::{LogFormat, init_logging};

/// Bucket bounds (seconds) of every `*_seconds` histogram: from 100 µs (an fsync on a fast disk,
/// an apply) to 10 s (a request that waited out a leader election).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds of every histogram that counts things (names ending in one of
/// [`COUNT_SUFFIXES`]): powers of two up to the batchers' largest batch.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Name endings of the histograms that count things per event (commands per Raft entry, reads
/// per leadership round, appends per fsync, entries per apply).
pub const COUNT_SUFFIXES: &[&str] = &["_commands", "_reads", "_appends", "_entries"];

/// How often the recorder drains its histograms' internal buffers.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use. `None` when another recorder was
/// installed first (then `/metrics` says so rather than serving nothing).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let installed = COUNT_SUFFIXES.iter().fold(
                PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS),
                |builder, suffix| {
                    builder.and_then(|b| {
                        b.set_buckets_for_metric(Matcher::Suffix((*suffix).into()), COUNT_BUCKETS)
                    })
                },
            );
            let installed = installed.and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "could not install the Prometheus recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// Drains the recorder's buffers every few seconds until `shutdown`, so that a process nobody
/// scrapes does not grow them without bound.
pub fn spawn_upkeep(shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let handle = prometheus();
    tokio::spawn(async move {
        let Some(handle) = handle else { return };
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    })
}

/// The body of a `/metrics` answer: every series in Prometheus text format, or `None` when no
/// recorder could be installed.
pub fn render() -> Option<String> {
    prometheus().map(PrometheusHandle::render)
}

/// A `/metrics` response in Prometheus text format with its content type; `Err` carries the
/// reason when no recorder is installed, for the caller to turn into its error shape.
pub fn metrics_response() -> Result<Response, &'static str> {
    let text = render().ok_or("no Prometheus recorder is installed")?;
    let mut resp = (StatusCode::OK, Body::from(text)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}
