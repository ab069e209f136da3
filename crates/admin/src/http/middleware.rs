//! The layers every request goes through: metrics by route and code (with bare errors turned
//! into the JSON error shape), the in-flight cap, and the whole-request timeout.

use super::{HttpState, REQUEST_TIMEOUT_MS};
use crate::error::{ApiError, ErrorCode};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::{Duration, Instant};

/// Counts every request by route and code, times it, and turns any error response that did not
/// come from [`ApiError`] (axum rejections, layers) into the JSON error shape.
pub(super) async fn observe(req: Request, next: Next) -> Response {
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

/// Sheds load beyond [`MAX_IN_FLIGHT_REQUESTS`](super::MAX_IN_FLIGHT_REQUESTS) with 503
/// `overloaded` instead of queueing.
pub(super) async fn limit_in_flight(
    State(state): State<HttpState>,
    req: Request,
    next: Next,
) -> Response {
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::overloaded().into_response(),
    }
}

/// Bounds the whole request (408 `request_timeout`).
pub(super) async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::request_timeout().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use crate::http::app;
    use crate::http::test_support::{call, test_state};
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    /// `/metrics` serves Prometheus text that includes the per-route request counter.
    #[tokio::test]
    async fn metrics_count_requests() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(test_state(dir.path()).await);
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
}
