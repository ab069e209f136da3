//! The client HTTP API (`docs/design.md#http-api`): routes, JSON parsing and validation, limits
//! and the server.
//!
//! Bodies are parsed as JSON whatever their `Content-Type`, read as raw bytes under
//! `MAX_BODY_BYTES`. Values are kept as their exact JSON text (`RawValue`) from the request to
//! the node and back, and responses splice the stored text in verbatim: `1.0` stays `1.0` and an
//! object keeps its key order. A value nested deeper than `MAX_JSON_DEPTH` is refused (the
//! depth is measured without recursion, in `json_depth`). The dashboard's routes come
//! from [`crate::ui`].
//!
//! The server is hyper's HTTP/1 connection builder driven by our own accept loop, not
//! `axum::serve`, because it bounds what a client can hold: a header-read timeout (which in
//! hyper also closes idle keep-alive connections), a cap on open connections, a cap on requests
//! in flight (load-shed with 503 `overloaded`, never queued), and a whole-request timeout.
//!
//! This module must not decide routing (that is [`crate::router`]) nor invent status codes
//! (they come from [`crate::error`]).

use crate::error::{ApiError, ErrorCode};
use crate::router::Router;
use crate::{SharedState, cluster_view, json_depth, ui};
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ravel_core::command::Record;
use ravel_core::limits;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most client connections open at once. Idle keep-alive connections cost one small task each,
/// so the cap is high; it exists so that file descriptors cannot run out.
pub const MAX_HTTP_CONNECTIONS: usize = 16_384;

/// File descriptors kept free for everything else (sled, gRPC channels, logs) when the
/// connection cap has to shrink to fit `RLIMIT_NOFILE`.
pub const RESERVED_FDS: u64 = 512;

/// Most requests being handled at once; beyond it requests get 503 `overloaded` at once.
pub const MAX_IN_FLIGHT_REQUESTS: usize = 4_096;

/// A client must send a request's headers within this time, and an idle keep-alive connection
/// is closed after it (hyper starts the timer whenever it waits for a request head).
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// A request body must arrive within this time (408 otherwise), so that routing always has its
/// whole budget before the request timeout.
pub const BODY_READ_TIMEOUT_MS: u64 = 5_000;

/// Whole-request timeout (408 `request_timeout`). Above body read plus the router's budget, so a
/// routed write always ends with the router's own definite or `outcome_unknown` answer.
pub const REQUEST_TIMEOUT_MS: u64 = 15_000;

/// How long in-flight requests may run on after shutdown is asked for.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// The axum state: the router plus the admin's shared state.
#[derive(Clone)]
pub struct HttpState {
    shared: SharedState,
    router: Router,
    in_flight: Arc<Semaphore>,
}

/// Builds the HTTP API: every route, the in-flight cap, the request timeout, metrics, and the
/// rewriting of any bare error (axum's own rejections included) into the JSON error shape.
pub fn app(state: SharedState) -> axum::Router {
    // Install the recorder now, so that counting starts with the first request.
    let _ = ravel_telemetry::prometheus();
    crate::metrics::describe();
    let http_state = HttpState {
        router: Router::new(state.clone()),
        shared: state,
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_REQUESTS)),
    };
    axum::Router::new()
        .route("/put", post(legacy_put))
        .route("/get", post(legacy_get))
        .route("/delete", post(legacy_delete))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/", get(kv_empty).put(kv_empty).delete(kv_empty))
        .route("/v1/cluster", get(cluster))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(ui::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .layer(
            tower::ServiceBuilder::new()
                .layer(middleware::from_fn(observe))
                .layer(middleware::from_fn_with_state(
                    http_state.clone(),
                    limit_in_flight,
                ))
                .layer(middleware::from_fn(request_timeout)),
        )
        .with_state(http_state)
}

/// Serves the client HTTP API on `listener` until `shutdown` is cancelled.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let max_connections = connection_cap();
    let connections = Arc::new(Semaphore::new(max_connections));
    let app = app(state);
    let upkeep = ravel_telemetry::spawn_upkeep(shutdown.clone());
    tracing::info!(addr = ?listener.local_addr()?, max_connections, "serving the HTTP API");

    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends are transient; do not spin while they last.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), conn).await {
                        Ok(r) => r,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }

    // Wait (bounded) for open connections to finish: they hold every permit not available.
    let cap = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        Duration::from_millis(SHUTDOWN_GRACE_MS + 1_000),
        connections.acquire_many(cap),
    )
    .await;
    upkeep.abort();
    Ok(())
}

/// Raises `RLIMIT_NOFILE` as far as allowed and returns a connection cap that fits under it.
fn connection_cap() -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let fit = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
            MAX_HTTP_CONNECTIONS.min(fit.max(64))
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            MAX_HTTP_CONNECTIONS
        }
    }
}

// ------------------------------------------------------------------------------ middleware

/// Counts every request by route and code, times it, and turns any error response that did not
/// come from [`ApiError`] (axum rejections, layers) into the JSON error shape.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut resp = next.run(req).await;
    let status = resp.status();
    let code = match resp.extensions().get::<ErrorCode>() {
        Some(ErrorCode(code)) => *code,
        None if status.is_client_error() || status.is_server_error() => {
            let api = ApiError::from_status(status);
            let code = api.code;
            resp = api.into_response();
            code
        }
        None => "ok",
    };
    metrics::counter!("ravel_admin_requests_total", "route" => route.clone(), "code" => code)
        .increment(1);
    metrics::histogram!("ravel_admin_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Sheds load beyond [`MAX_IN_FLIGHT_REQUESTS`] with 503 `overloaded` instead of queueing.
async fn limit_in_flight(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::overloaded().into_response(),
    }
}

/// Bounds the whole request (408 `request_timeout`).
async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::request_timeout().into_response(),
    }
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

// ------------------------------------------------------------------------------ body and parsing

/// The raw request body, read under [`limits::MAX_BODY_BYTES`] whatever the Content-Type.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let announced_oversize = announced.is_some_and(|n| n > limits::MAX_BODY_BYTES as u64);
        let read = read_body(req.into_body(), announced_oversize);
        match tokio::time::timeout(Duration::from_millis(BODY_READ_TIMEOUT_MS), read).await {
            Err(_) => Err(ApiError::request_timeout()),
            Ok(result) => result.map(Self),
        }
    }
}

/// After an oversized body is refused, up to this much more of it is still read and thrown
/// away, so that a client still sending it gets to read the 413 instead of a reset connection
/// (closing a socket with unread data makes the kernel send a reset). Past it the connection is
/// simply closed.
pub const OVERSIZE_DRAIN_BYTES: usize = 8 * 1024 * 1024;

/// Buffers a body of at most [`limits::MAX_BODY_BYTES`]; an oversized one (announced or found
/// while reading) is drained (bounded) and refused with 413 `body_too_large`.
async fn read_body(body: Body, announced_oversize: bool) -> Result<Bytes, ApiError> {
    use tokio_stream::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buffer = bytes::BytesMut::new();
    let mut too_large = announced_oversize;
    let mut drained = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "malformed_body",
                format!("could not read the request body: {e}"),
            )
        })?;
        if !too_large && buffer.len() + chunk.len() > limits::MAX_BODY_BYTES {
            too_large = true;
            buffer = bytes::BytesMut::new();
        }
        if too_large {
            drained += chunk.len();
            if drained > OVERSIZE_DRAIN_BYTES {
                break;
            }
        } else {
            buffer.extend_from_slice(&chunk);
        }
    }
    if too_large {
        return Err(ApiError::body_too_large());
    }
    Ok(buffer.freeze())
}

/// Deserializes a present field as `Some(raw)`, even when it is JSON `null` (a plain
/// `Option<&RawValue>` would turn `null` into `None`).
fn present<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

/// The fields of the legacy JSON bodies, each kept as raw JSON until validated.
#[derive(Deserialize)]
struct LegacyBody<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    key: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    val: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    value: Option<&'a RawValue>,
}

fn parse_legacy(body: &[u8]) -> Result<LegacyBody<'_>, ApiError> {
    // serde would also accept a JSON array as a struct (by position); the contract is an object.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::malformed_json("the body must be a JSON object"));
    }
    serde_json::from_slice::<LegacyBody<'_>>(body).map_err(ApiError::malformed_json)
}

/// Checks a key against the contract: non-empty and at most [`limits::MAX_KEY_BYTES`].
pub fn check_key(key: String) -> Result<String, ApiError> {
    if key.is_empty() {
        return Err(ApiError::empty_key());
    }
    if key.len() > limits::MAX_KEY_BYTES {
        return Err(ApiError::key_too_large(key.len()));
    }
    Ok(key)
}

fn key_of(raw: Option<&RawValue>) -> Result<String, ApiError> {
    let raw = raw.ok_or_else(ApiError::missing_key)?;
    let key: String = serde_json::from_str(raw.get()).map_err(|_| ApiError::invalid_key())?;
    check_key(key)
}

/// Checks a value against the contract: at most [`limits::MAX_VALUE_BYTES`] of JSON text, nested
/// at most [`limits::MAX_JSON_DEPTH`] deep.
fn check_value(raw: &RawValue) -> Result<&RawValue, ApiError> {
    let len = raw.get().len();
    if len > limits::MAX_VALUE_BYTES {
        return Err(ApiError::value_too_large(len));
    }
    let depth = json_depth::nesting_depth(raw.get().as_bytes());
    if depth > limits::MAX_JSON_DEPTH {
        return Err(ApiError::too_deeply_nested(depth));
    }
    Ok(raw)
}

/// Parses a `/put` body: `{"key": K, "val": V}` (or `"value": V`). Returns the key and the
/// value's exact JSON text.
pub fn parse_put_body(body: &[u8]) -> Result<(String, &RawValue), ApiError> {
    let parsed = parse_legacy(body)?;
    let key = key_of(parsed.key)?;
    let value = parsed
        .val
        .or(parsed.value)
        .ok_or_else(ApiError::missing_value)?;
    Ok((key, check_value(value)?))
}

/// Parses a `/get` or `/delete` body: `{"key": K}`.
pub fn parse_key_body(body: &[u8]) -> Result<String, ApiError> {
    key_of(parse_legacy(body)?.key)
}

/// Parses a whole body as one JSON value (`PUT /v1/kv/{key}`), returning its exact text.
pub fn parse_value_body(body: &[u8]) -> Result<&RawValue, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::missing_value());
    }
    let raw: &RawValue = serde_json::from_slice(body).map_err(ApiError::malformed_json)?;
    check_value(raw)
}

/// Parses the `cas` query parameter, if present.
pub fn parse_cas(query: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    query
        .get("cas")
        .map(|raw| raw.parse::<u64>().map_err(|_| ApiError::invalid_cas(raw)))
        .transpose()
}

/// Parses the `consistency` query parameter: true for `stale`.
pub fn parse_stale(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("consistency").map(String::as_str) {
        None | Some("linearizable") => Ok(false),
        Some("stale") => Ok(true),
        Some(other) => Err(ApiError::invalid_consistency(other)),
    }
}

/// The JSON text of a found record, splicing the stored value text in verbatim:
/// `{"key":K,"<value_field>":V,"version":N}`.
pub fn record_json(key: &str, value_field: &str, record: &Record) -> Result<String, ApiError> {
    let value = std::str::from_utf8(&record.value)
        .map_err(|_| ApiError::internal("a stored value is not UTF-8 JSON text"))?;
    // Never emit a broken document, even if a node returned garbage.
    serde_json::from_str::<&RawValue>(value)
        .map_err(|_| ApiError::internal("a stored value is not valid JSON text"))?;
    let key_json = serde_json::Value::from(key).to_string();
    Ok(format!(
        "{{\"key\":{key_json},\"{value_field}\":{value},\"version\":{}}}",
        record.version
    ))
}

fn json_text(text: String) -> Response {
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_value(value: &serde_json::Value) -> Response {
    json_text(value.to_string())
}

type QueryMap = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;
type KeyPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

fn query_of(query: QueryMap) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("malformed_query", e.body_text()))
}

fn path_key(path: KeyPath) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|_| ApiError::invalid_key())?;
    check_key(key)
}

// ------------------------------------------------------------------------------ handlers

async fn legacy_put(
    State(s): State<HttpState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let (key, value) = parse_put_body(&body)?;
    let value = Bytes::copy_from_slice(value.get().as_bytes());
    let version = s.router.put(key.as_bytes(), value, None).await?;
    Ok(json_value(
        &serde_json::json!({"msg": "ok", "version": version}),
    ))
}

async fn legacy_get(
    State(s): State<HttpState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = parse_key_body(&body)?;
    match s.router.get(key.as_bytes(), false).await? {
        Some(record) => Ok(json_text(record_json(&key, "val", &record)?)),
        None => Err(ApiError::not_found()),
    }
}

async fn legacy_delete(
    State(s): State<HttpState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = parse_key_body(&body)?;
    let deleted = s.router.delete(key.as_bytes(), None).await?;
    Ok(json_value(
        &serde_json::json!({"msg": "ok", "deleted": deleted}),
    ))
}

async fn kv_get(
    State(s): State<HttpState>,
    path: KeyPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    let stale = parse_stale(&query_of(query)?)?;
    match s.router.get(key.as_bytes(), stale).await? {
        Some(record) => Ok(json_text(record_json(&key, "value", &record)?)),
        None => Err(ApiError::not_found()),
    }
}

async fn kv_put(
    State(s): State<HttpState>,
    path: KeyPath,
    query: QueryMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    let cas = parse_cas(&query_of(query)?)?;
    let value = parse_value_body(&body)?;
    let value = Bytes::copy_from_slice(value.get().as_bytes());
    let version = s.router.put(key.as_bytes(), value, cas).await?;
    Ok(json_value(&serde_json::json!({"version": version})))
}

async fn kv_delete(
    State(s): State<HttpState>,
    path: KeyPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    let cas = parse_cas(&query_of(query)?)?;
    let deleted = s.router.delete(key.as_bytes(), cas).await?;
    Ok(json_value(&serde_json::json!({"deleted": deleted})))
}

async fn kv_empty() -> ApiError {
    ApiError::empty_key()
}

async fn cluster(State(s): State<HttpState>) -> Response {
    json_value(&cluster_view::cluster_view(&s.shared).await)
}

async fn livez() -> Response {
    json_value(&serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<HttpState>) -> Result<Response, ApiError> {
    match cluster_view::readiness(&s.shared) {
        Ok(()) => Ok(json_value(&serde_json::json!({"status": "ready"}))),
        Err(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            reason,
        )),
    }
}

async fn metrics_text(State(s): State<HttpState>) -> Result<Response, ApiError> {
    crate::metrics::record_scrape_gauges(&s.shared);
    ravel_telemetry::metrics_response().map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// An admin state with no cluster, backed by a fresh directory.
    fn test_state(dir: &std::path::Path) -> SharedState {
        Arc::new(crate::AdminState::new(
            crate::meta::MetaStore::open(dir, Some(8)).unwrap(),
        ))
    }

    /// The real HTTP server on a loopback port over fresh metadata: the metadata's directory
    /// (keep it alive), the address, the shutdown token and the server task.
    async fn start_test_server() -> (
        tempfile::TempDir,
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let server = tokio::spawn(serve_http(listener, test_state(dir.path()), token.clone()));
        (dir, addr, token, server)
    }

    fn code_of(result: Result<impl std::fmt::Debug, ApiError>) -> &'static str {
        match result {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.code,
        }
    }

    /// Every validation failure of the legacy bodies gets its own stable code.
    #[test]
    fn legacy_body_validation_codes() {
        assert_eq!(code_of(parse_put_body(b"")), "malformed_json");
        assert_eq!(code_of(parse_put_body(b"{\"key\":")), "malformed_json");
        assert_eq!(code_of(parse_put_body(b"[1,2]")), "malformed_json");
        assert_eq!(code_of(parse_put_body(br#"{"val":1}"#)), "missing_key");
        assert_eq!(
            code_of(parse_put_body(br#"{"key":"","val":1}"#)),
            "empty_key"
        );
        assert_eq!(
            code_of(parse_put_body(br#"{"key":5,"val":1}"#)),
            "invalid_key"
        );
        assert_eq!(
            code_of(parse_put_body(br#"{"key":{"a":1},"val":1}"#)),
            "invalid_key"
        );
        assert_eq!(
            code_of(parse_put_body(br#"{"key":null,"val":1}"#)),
            "invalid_key"
        );
        assert_eq!(code_of(parse_put_body(br#"{"key":"k"}"#)), "missing_value");
        assert_eq!(code_of(parse_key_body(br#"{}"#)), "missing_key");
        assert_eq!(code_of(parse_key_body(br#"{"key":[]}"#)), "invalid_key");

        let long_key = "k".repeat(limits::MAX_KEY_BYTES + 1);
        let body = format!(r#"{{"key":"{long_key}","val":1}}"#);
        let err = parse_put_body(body.as_bytes()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (413, "key_too_large"));
        let ok_key = "k".repeat(limits::MAX_KEY_BYTES);
        let body = format!(r#"{{"key":"{ok_key}","val":1}}"#);
        assert_eq!(parse_put_body(body.as_bytes()).unwrap().0, ok_key);

        let big = format!("\"{}\"", "v".repeat(limits::MAX_VALUE_BYTES));
        let body = format!(r#"{{"key":"k","val":{big}}}"#);
        let err = parse_put_body(body.as_bytes()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (413, "value_too_large"));
        assert_eq!(code_of(parse_value_body(big.as_bytes())), "value_too_large");

        assert_eq!(code_of(parse_value_body(b"")), "missing_value");
        assert_eq!(code_of(parse_value_body(b"  \n")), "missing_value");
        assert_eq!(code_of(parse_value_body(b"{\"a\":")), "malformed_json");
        assert_eq!(code_of(parse_value_body(b"1 2")), "malformed_json");
    }

    /// A JSON `null` value is a value, `"value"` is an alias of `"val"`, and keys may be any
    /// JSON string (escapes decoded).
    #[test]
    fn legacy_body_accepts_null_alias_and_escapes() {
        let (key, val) = parse_put_body(br#"{"key":"a\"b\u00e9","val":null}"#).unwrap();
        assert_eq!(key, "a\"b\u{e9}");
        assert_eq!(val.get(), "null");
        let (_, val) = parse_put_body(br#"{"key":"k","value":[1, 2]}"#).unwrap();
        assert_eq!(val.get(), "[1, 2]");
        let (_, val) = parse_put_body(br#"{"key":"k","val":"x","value":"y"}"#).unwrap();
        assert_eq!(val.get(), "\"x\"");
        assert_eq!(parse_key_body(br#"{"key":"k","extra":true}"#).unwrap(), "k");
    }

    /// Query parameters: cas must be a u64, consistency linearizable or stale.
    #[test]
    fn query_validation() {
        let q = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(parse_cas(&HashMap::new()).unwrap(), None);
        assert_eq!(parse_cas(&q("cas", "0")).unwrap(), Some(0));
        assert_eq!(
            parse_cas(&q("cas", "18446744073709551615")).unwrap(),
            Some(u64::MAX)
        );
        assert_eq!(code_of(parse_cas(&q("cas", "-1"))), "invalid_cas");
        assert_eq!(code_of(parse_cas(&q("cas", "x"))), "invalid_cas");
        assert_eq!(code_of(parse_cas(&q("cas", ""))), "invalid_cas");
        assert!(!parse_stale(&HashMap::new()).unwrap());
        assert!(!parse_stale(&q("consistency", "linearizable")).unwrap());
        assert!(parse_stale(&q("consistency", "stale")).unwrap());
        assert_eq!(
            code_of(parse_stale(&q("consistency", "eventual"))),
            "invalid_consistency"
        );
    }

    /// Every JSON type survives parse → store → response byte for byte, in both APIs.
    #[test]
    fn values_round_trip_exactly() {
        let values = [
            "1.0",
            "-0",
            "1e400",
            "12345678901234567890123",
            "\"str \\u00e9 \\n\"",
            "\"\"",
            "true",
            "false",
            "null",
            "{\"b\":1,\"a\":2}",
            "{ \"nested\" : [ 1 , {\"x\" : null} ] }",
            "[]",
            "[1,\"two\",3.50]",
        ];
        for v in values {
            let body = format!(r#"{{"key":"k","val":{v}}}"#);
            let (_, raw) = parse_put_body(body.as_bytes()).unwrap();
            assert_eq!(raw.get(), v);
            let body = format!(" \n{v}\t ");
            let whole = parse_value_body(body.as_bytes()).unwrap();
            assert_eq!(whole.get(), v);

            let record = Record {
                version: 3,
                value: raw.get().as_bytes().to_vec(),
            };
            let legacy = record_json("k/é", "val", &record).unwrap();
            assert_eq!(legacy, format!(r#"{{"key":"k/é","val":{v},"version":3}}"#));
            let modern = record_json("k", "value", &record).unwrap();
            assert_eq!(modern, format!(r#"{{"key":"k","value":{v},"version":3}}"#));
            // The spliced document is valid JSON.
            serde_json::from_str::<serde::de::IgnoredAny>(&modern).unwrap();
        }
        let garbage = Record {
            version: 1,
            value: b"{oops".to_vec(),
        };
        assert_eq!(code_of(record_json("k", "val", &garbage)), "internal");
    }

    /// `[[...]]` nested `depth` levels deep around `1`.
    fn nested_array(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    /// A value nested exactly [`limits::MAX_JSON_DEPTH`] deep is accepted on both write bodies;
    /// one level more (arrays or objects) is refused with 400 `too_deeply_nested`, and brackets
    /// inside strings do not count.
    #[test]
    fn nesting_depth_limit_on_values() {
        let max = limits::MAX_JSON_DEPTH;
        let at_limit = nested_array(max);
        assert_eq!(
            parse_value_body(at_limit.as_bytes()).unwrap().get(),
            at_limit
        );
        let body = format!(r#"{{"key":"k","val":{at_limit}}}"#);
        assert_eq!(parse_put_body(body.as_bytes()).unwrap().1.get(), at_limit);

        let over = nested_array(max + 1);
        let err = parse_value_body(over.as_bytes()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (400, "too_deeply_nested"));
        assert!(
            err.message.contains(&(max + 1).to_string()),
            "{}",
            err.message
        );
        let body = format!(r#"{{"key":"k","value":{over}}}"#);
        assert_eq!(
            code_of(parse_put_body(body.as_bytes())),
            "too_deeply_nested"
        );

        let objects = format!("{}1{}", r#"{"a":"#.repeat(max + 1), "}".repeat(max + 1));
        assert_eq!(
            code_of(parse_value_body(objects.as_bytes())),
            "too_deeply_nested"
        );
        let brackets_in_string = format!(r#"["{}"]"#, "[".repeat(max * 2));
        assert!(parse_value_body(brackets_in_string.as_bytes()).is_ok());
    }

    /// A 100,000-deep array (the stack-overflow attempt) sent to the real server gets 400
    /// `too_deeply_nested` on both write routes, and the server goes on serving.
    #[tokio::test]
    async fn hostile_nesting_is_refused_and_the_server_keeps_serving() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_dir, addr, token, server) = start_test_server().await;
        let deep = nested_array(100_000);
        let put_body = format!(r#"{{"key":"k","val":{deep}}}"#);
        let requests = [
            ("POST /put", put_body.as_str()),
            ("PUT /v1/kv/k", deep.as_str()),
            ("GET /livez", ""),
        ];
        for (line, body) in requests {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "{line} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(body.as_bytes()).await.unwrap();
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer))
                .await
                .expect("the server answers")
                .unwrap();
            if body.is_empty() {
                assert!(answer.starts_with("HTTP/1.1 200"), "{line}: {answer}");
            } else {
                assert!(answer.starts_with("HTTP/1.1 400"), "{line}: {answer}");
                assert!(answer.contains("\"too_deeply_nested\""), "{line}: {answer}");
            }
        }
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    }

    /// Sends a GET and returns the response's status, headers and body text.
    async fn get_text(app: &axum::Router, uri: &str) -> (u16, axum::http::HeaderMap, String) {
        let req = axum::http::Request::builder()
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// `/ui` and `/ui/` serve the page, and its script and style sheet come from `/ui/...`, each
    /// with its Content-Type and a same-origin-only Content-Security-Policy that allows nothing
    /// inline; other `/ui/...` paths are the JSON 404 and other methods the JSON 405.
    #[tokio::test]
    async fn dashboard_is_served_with_types_and_a_strict_policy() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(test_state(dir.path()));
        let cases = [
            (
                "/ui",
                "text/html; charset=utf-8",
                "<title>Ravel-rs dashboard</title>",
            ),
            (
                "/ui/",
                "text/html; charset=utf-8",
                "<title>Ravel-rs dashboard</title>",
            ),
            (
                "/ui/dashboard.js",
                "text/javascript; charset=utf-8",
                "/v1/cluster",
            ),
            (
                "/ui/dashboard.css",
                "text/css; charset=utf-8",
                ".partition-grid",
            ),
        ];
        for (uri, content_type, needle) in cases {
            let (status, headers, body) = get_text(&app, uri).await;
            assert_eq!(status, 200, "{uri}");
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{uri}");
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert_eq!(csp, ui::CONTENT_SECURITY_POLICY, "{uri}");
            assert!(csp.starts_with("default-src 'none';"), "{csp}");
            for directive in [
                "script-src 'self'",
                "style-src 'self'",
                "connect-src 'self'",
            ] {
                assert!(csp.contains(directive), "{csp} lacks {directive}");
            }
            assert!(!csp.contains("unsafe") && !csp.contains('*'), "{csp}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{uri}");
            assert!(body.contains(needle), "{uri} lacks {needle}");
        }
        for uri in ["/ui/nope", "/ui/dashboard.js/x", "/uix"] {
            let (status, _, body) = get_text(&app, uri).await;
            assert_eq!(status, 404, "{uri}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["code"], "no_route", "{uri}");
        }
        let (s, j, _) = call(&app, "POST", "/ui", "").await;
        assert_eq!((s, j["code"].as_str()), (405, Some("method_not_allowed")));
    }

    /// The dashboard loads nothing from elsewhere (no scheme-qualified or protocol-relative URL,
    /// every `src`/`href` under `/ui/`), has no inline script or style for the policy to refuse,
    /// and never hands data to an HTML parser.
    #[tokio::test]
    async fn dashboard_is_self_contained_and_never_parses_data_as_html() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(test_state(dir.path()));
        let (_, _, page) = get_text(&app, "/ui").await;
        let (_, _, script) = get_text(&app, "/ui/dashboard.js").await;
        let (_, _, style) = get_text(&app, "/ui/dashboard.css").await;
        for (name, text) in [("page", &page), ("script", &script), ("style", &style)] {
            for external in [
                "http:",
                "https:",
                "//cdn",
                "url(",
                "@import",
                "src=\"//",
                "href=\"//",
            ] {
                assert!(!text.contains(external), "the {name} contains {external:?}");
            }
        }
        for attr in ["src=\"", "href=\""] {
            for (at, _) in page.match_indices(attr) {
                let value = &page[at + attr.len()..];
                assert!(
                    value.starts_with("/ui/"),
                    "{attr}{}",
                    &value[..20.min(value.len())]
                );
            }
        }
        assert!(page.contains("<script src=\"/ui/dashboard.js\""), "{page}");
        assert!(
            !page.contains("<style") && !page.contains("style=\""),
            "inline style"
        );
        assert_eq!(
            page.matches("<script").count(),
            1,
            "one external script, nothing inline"
        );
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "the script uses {sink}");
        }
    }

    async fn call(
        app: &axum::Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (u16, serde_json::Value, Option<String>) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
        (status, json, retry)
    }

    /// Routes answer wrong methods with 405 JSON, unknown paths with 404 `no_route`, and a
    /// write to a store with no cluster with a definite 503 `no_cluster` and Retry-After.
    #[tokio::test]
    async fn routes_methods_and_no_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(test_state(dir.path()));

        let (s, j, _) = call(&app, "GET", "/put", "").await;
        assert_eq!((s, j["code"].as_str()), (405, Some("method_not_allowed")));
        let (s, j, _) = call(&app, "POST", "/v1/kv/a", "1").await;
        assert_eq!((s, j["code"].as_str()), (405, Some("method_not_allowed")));
        let (s, j, _) = call(&app, "GET", "/nope", "").await;
        assert_eq!((s, j["code"].as_str()), (404, Some("no_route")));
        let (s, j, _) = call(&app, "GET", "/livez", "").await;
        assert_eq!((s, j["status"].as_str()), (200, Some("ok")));
        let (s, j, retry) = call(&app, "GET", "/readyz", "").await;
        assert_eq!((s, j["code"].as_str()), (503, Some("not_ready")));
        assert_eq!(retry.as_deref(), Some("1"));
        let (s, j, _) = call(&app, "GET", "/v1/cluster", "").await;
        assert_eq!(s, 200);
        assert!(j.is_object());
        let (s, j, _) = call(&app, "POST", "/metrics", "").await;
        assert_eq!((s, j["code"].as_str()), (405, Some("method_not_allowed")));

        let (s, j, retry) = call(&app, "POST", "/put", r#"{"key":"k","val":1}"#).await;
        assert_eq!((s, j["code"].as_str()), (503, Some("no_cluster")));
        assert_eq!(retry.as_deref(), Some("1"));
        let (s, j, _) = call(&app, "PUT", "/v1/kv/a%2Fb", "{\"x\":1}").await;
        assert_eq!((s, j["code"].as_str()), (503, Some("no_cluster")));
        let (s, j, _) = call(&app, "GET", "/v1/kv/a/b?consistency=stale", "").await;
        assert_eq!((s, j["code"].as_str()), (503, Some("no_cluster")));
        let (s, j, _) = call(&app, "POST", "/get", r#"{"key":"k"}"#).await;
        assert_eq!((s, j["code"].as_str()), (503, Some("no_cluster")));

        let (s, j, _) = call(&app, "POST", "/put", r#"{"key":"k"}"#).await;
        assert_eq!((s, j["code"].as_str()), (400, Some("missing_value")));
        let (s, j, _) = call(&app, "POST", "/delete", "not json").await;
        assert_eq!((s, j["code"].as_str()), (400, Some("malformed_json")));
        let (s, j, _) = call(&app, "PUT", "/v1/kv/a?cas=abc", "1").await;
        assert_eq!((s, j["code"].as_str()), (400, Some("invalid_cas")));
        let (s, j, _) = call(&app, "DELETE", "/v1/kv/a?cas=-3", "").await;
        assert_eq!((s, j["code"].as_str()), (400, Some("invalid_cas")));
        let (s, j, _) = call(&app, "GET", "/v1/kv/a?consistency=weak", "").await;
        assert_eq!((s, j["code"].as_str()), (400, Some("invalid_consistency")));
        let (s, j, _) = call(&app, "PUT", "/v1/kv/", "1").await;
        assert_eq!((s, j["code"].as_str()), (400, Some("empty_key")));
        let (s, j, _) = call(&app, "PUT", "/v1/kv/a", "").await;
        assert_eq!((s, j["code"].as_str()), (400, Some("missing_value")));
        let long = "k".repeat(limits::MAX_KEY_BYTES + 1);
        let (s, j, _) = call(&app, "GET", &format!("/v1/kv/{long}"), "").await;
        assert_eq!((s, j["code"].as_str()), (413, Some("key_too_large")));
    }

    /// `/metrics` serves Prometheus text that includes the per-route request counter.
    #[tokio::test]
    async fn metrics_count_requests() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(test_state(dir.path()));
        let _ = call(&app, "GET", "/livez", "").await;
        let req = axum::http::Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains("ravel_admin_requests_total"), "{text}");
        assert!(text.contains("route=\"/livez\""), "{text}");
    }

    /// Oversized bodies get 413 `body_too_large`, both when announced by Content-Length (not
    /// read) and when streamed without one.
    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(test_state(dir.path()));
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/put")
            .header(
                header::CONTENT_LENGTH,
                (limits::MAX_BODY_BYTES + 1).to_string(),
            )
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            resp.extensions().get::<ErrorCode>(),
            Some(&ErrorCode("body_too_large"))
        );

        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..3)
            .map(|_| Ok(Bytes::from(vec![b' '; limits::MAX_BODY_BYTES / 2])))
            .collect();
        let req = axum::http::Request::builder()
            .method("PUT")
            .uri("/v1/kv/a")
            .body(Body::from_stream(tokio_stream::iter(chunks)))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            resp.extensions().get::<ErrorCode>(),
            Some(&ErrorCode("body_too_large"))
        );
    }

    /// A client that sends an oversized body whole gets its 413 and can go on using the same
    /// connection: the refused body is drained (bounded), not left unread behind a reset.
    #[tokio::test]
    async fn oversized_body_is_drained_and_the_connection_stays_usable() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_dir, addr, token, server) = start_test_server().await;
        let (mut reader, mut writer) = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap()
            .into_split();
        let size = limits::MAX_BODY_BYTES + 1;
        let head = format!("POST /put HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
        let sender = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await.unwrap();
            writer.write_all(&vec![b' '; size]).await.unwrap();
            writer
                .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            writer
        });
        let mut answers = String::new();
        let mut buf = vec![0u8; 4096];
        while !answers.contains("{\"status\":\"ok\"}") {
            let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf))
                .await
                .expect("the server answers both requests")
                .unwrap();
            assert!(n > 0, "the server closed the connection: {answers}");
            answers.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(answers.starts_with("HTTP/1.1 413"), "{answers}");
        assert!(answers.contains("body_too_large"), "{answers}");
        drop(sender.await.unwrap());
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    }

    /// The real server answers over TCP and stops when the shutdown token is cancelled.
    #[tokio::test]
    async fn server_serves_and_shuts_down() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_dir, addr, token, server) = start_test_server().await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("{\"status\":\"ok\"}"), "{text}");
        token.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_ok());
    }
}
