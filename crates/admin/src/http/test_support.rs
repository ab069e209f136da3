//! Helpers shared by the HTTP layer's unit tests: a state with no cluster, the real server on
//! a loopback port, one-shot calls to the app, and error-code and nesting helpers.

use super::serve_http;
use crate::SharedState;
use crate::error::ApiError;
use axum::body::Body;
use axum::http::header;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// An admin state with no cluster, backed by a fresh directory.
pub(super) async fn test_state(dir: &std::path::Path) -> SharedState {
    Arc::new(crate::AdminState::new(
        crate::meta::MetaStore::open(dir, Some(8)).await.unwrap(),
    ))
}

/// The real HTTP server on a loopback port over fresh metadata: the metadata's directory
/// (keep it alive), the address, the shutdown token and the server task.
pub(super) async fn start_test_server() -> (
    tempfile::TempDir,
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let server = tokio::spawn(serve_http(
        listener,
        test_state(dir.path()).await,
        token.clone(),
    ));
    (dir, addr, token, server)
}

pub(super) fn code_of(result: Result<impl std::fmt::Debug, ApiError>) -> &'static str {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code,
    }
}

/// `[[...]]` nested `depth` levels deep around `1`.
pub(super) fn nested_array(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

pub(super) async fn call(
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
