//! The one mapping from the admin's client-facing errors to HTTP status codes and JSON bodies.
//!
//! Two types live here: [`RouteError`], what the router can answer for one request (named for
//! what the caller can do), and [`ApiError`], an HTTP error with a stable snake_case `code`.
//! Every HTTP error the admin sends, whether from validation, routing, a timeout or axum itself,
//! goes through [`ApiError`], so the body is always `{"error": <message>, "code": <code>}`.
//!
//! The promise kept here (`docs/design.md#definite-and-unknown-outcomes` and
//! `#status-and-error-codes`): a 503 only when the request was certainly not applied;
//! an error after a write may have been proposed is a 504 `outcome_unknown`; 404 only ever means
//! "no such key". This module must not route, parse or log requests: it only maps.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ravel_core::limits;

/// Seconds a client is told to wait (`Retry-After`) before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// What routing one request to its cluster can end in, short of success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The partition table has no owner for the key's partition (no cluster exists yet).
    #[error("no cluster serves this key yet")]
    NoCluster,
    /// No replica of the owning cluster accepted the request within the budget; nothing was
    /// proposed.
    #[error("the owning cluster has no reachable leader")]
    NoLeader,
    /// The key's partition is being moved between clusters and the bounded wait ran out; nothing
    /// was applied.
    #[error("the key's partition is moving between clusters")]
    PartitionMoving,
    /// The compare-and-set condition failed; `current` is the key's version (0 = absent).
    #[error("version mismatch: the key's current version is {current}")]
    CasMismatch { current: u64 },
    /// A write may or may not have been applied (timeout or failure after it could have been
    /// proposed).
    #[error("the write's outcome is unknown: it may or may not have been applied")]
    OutcomeUnknown,
    /// A read could not be answered by any replica in time (nothing is changed by a read).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected answer (e.g. a node refused the request as malformed).
    #[error("internal error: {0}")]
    Internal(String),
}

impl RouteError {
    /// The stable snake_case code of this error (also its HTTP `code`).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoCluster => "no_cluster",
            Self::NoLeader => "no_leader",
            Self::PartitionMoving => "partition_moving",
            Self::CasMismatch { .. } => "cas_mismatch",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// Marks a response produced by [`ApiError`], so that middleware can count it by its code and
/// knows not to rewrite it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// An HTTP error answer: status, stable code, a message for a person, and extra body fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra top-level fields of the JSON body (e.g. `current_version` on a 412).
    pub extra: Vec<(&'static str, serde_json::Value)>,
}

impl ApiError {
    /// An error with no extra body fields.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    /// 400 with `code`.
    #[must_use]
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 `malformed_json`.
    #[must_use]
    pub fn malformed_json(detail: impl std::fmt::Display) -> Self {
        Self::bad_request(
            "malformed_json",
            format!("the request body is not valid JSON: {detail}"),
        )
    }

    /// 400 `missing_key`.
    #[must_use]
    pub fn missing_key() -> Self {
        Self::bad_request("missing_key", "the request has no \"key\" field")
    }

    /// 400 `empty_key`.
    #[must_use]
    pub fn empty_key() -> Self {
        Self::bad_request("empty_key", "the key is empty")
    }

    /// 400 `invalid_key`.
    #[must_use]
    pub fn invalid_key() -> Self {
        Self::bad_request("invalid_key", "the key must be a JSON string")
    }

    /// 400 `missing_value`.
    #[must_use]
    pub fn missing_value() -> Self {
        Self::bad_request(
            "missing_value",
            "the request has no value (\"val\" or \"value\")",
        )
    }

    /// 400 `invalid_cas`.
    #[must_use]
    pub fn invalid_cas(raw: &str) -> Self {
        Self::bad_request(
            "invalid_cas",
            format!("cas must be an unsigned 64-bit version, got {raw:?}"),
        )
    }

    /// 400 `invalid_consistency`.
    #[must_use]
    pub fn invalid_consistency(raw: &str) -> Self {
        Self::bad_request(
            "invalid_consistency",
            format!("consistency must be \"linearizable\" or \"stale\", got {raw:?}"),
        )
    }

    /// 400 `too_deeply_nested`: the value nests arrays and objects `depth` levels deep.
    #[must_use]
    pub fn too_deeply_nested(depth: usize) -> Self {
        Self::bad_request(
            "too_deeply_nested",
            format!(
                "the value nests arrays and objects {depth} levels deep, the limit is {}",
                limits::MAX_JSON_DEPTH
            ),
        )
    }

    /// 404 `not_found`: the key does not exist (and only that).
    #[must_use]
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such key")
    }

    /// 404 `no_route`: no such path.
    #[must_use]
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no route for path {path}"),
        )
    }

    /// 405 `method_not_allowed`.
    #[must_use]
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method {method} is not allowed on {path}"),
        )
    }

    /// 408 `request_timeout`: the whole request took longer than the admin allows.
    #[must_use]
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long",
        )
    }

    /// 413 `key_too_large`.
    #[must_use]
    pub fn key_too_large(len: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "key_too_large",
            format!(
                "the key is {len} bytes, the limit is {} bytes",
                limits::MAX_KEY_BYTES
            ),
        )
    }

    /// 413 `value_too_large`.
    #[must_use]
    pub fn value_too_large(len: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "the value is {len} bytes of JSON, the limit is {} bytes",
                limits::MAX_VALUE_BYTES
            ),
        )
    }

    /// 413 `body_too_large`.
    #[must_use]
    pub fn body_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the request body exceeds the limit of {} bytes",
                limits::MAX_BODY_BYTES
            ),
        )
    }

    /// 503 `overloaded`: too many requests in flight; nothing was done.
    #[must_use]
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the admin is serving too many requests; retry shortly",
        )
    }

    /// 500 `internal`.
    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The generic answer for an error response that did not come from here (an axum rejection
    /// or a layer's bare status): picks a code from the status alone.
    #[must_use]
    pub fn from_status(status: StatusCode) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND => "no_route",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        };
        let message = status.canonical_reason().unwrap_or("error").to_owned();
        Self::new(status, code, message)
    }

    /// The JSON body text: `{"error": message, "code": code, ...extra}`.
    #[must_use]
    pub fn body(&self) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("error".into(), self.message.clone().into());
        obj.insert("code".into(), self.code.into());
        for (k, v) in &self.extra {
            obj.insert((*k).into(), v.clone());
        }
        serde_json::Value::Object(obj).to_string()
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let message = e.to_string();
        let code = e.code();
        match e {
            RouteError::NoCluster | RouteError::NoLeader | RouteError::PartitionMoving => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            }
            // A read that nobody could answer changed nothing, so a 503 is definite here.
            RouteError::Unavailable(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message),
            RouteError::CasMismatch { current } => {
                let mut err = Self::new(StatusCode::PRECONDITION_FAILED, code, message);
                err.extra.push(("current_version", current.into()));
                err
            }
            RouteError::OutcomeUnknown => Self::new(StatusCode::GATEWAY_TIMEOUT, code, message),
            RouteError::Internal(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every routing error maps to the status the contract gives it, with its stable code.
    #[test]
    fn route_errors_map_to_contract_statuses() {
        let cases = [
            (RouteError::NoCluster, 503, "no_cluster"),
            (RouteError::NoLeader, 503, "no_leader"),
            (RouteError::PartitionMoving, 503, "partition_moving"),
            (RouteError::CasMismatch { current: 7 }, 412, "cas_mismatch"),
            (RouteError::OutcomeUnknown, 504, "outcome_unknown"),
            (RouteError::Unavailable("x".into()), 503, "unavailable"),
            (RouteError::Internal("x".into()), 500, "internal"),
        ];
        for (err, status, code) in cases {
            let api = ApiError::from(err);
            assert_eq!(api.status.as_u16(), status, "{code}");
            assert_eq!(api.code, code);
        }
    }

    /// A 412 body carries the key's current version; a 503 carries Retry-After.
    #[test]
    fn bodies_and_headers() {
        let api = ApiError::from(RouteError::CasMismatch { current: 42 });
        let body: serde_json::Value = serde_json::from_str(&api.body()).unwrap();
        assert_eq!(body["code"], "cas_mismatch");
        assert_eq!(body["current_version"], 42);
        assert!(body["error"].as_str().unwrap().contains("42"));

        let resp = ApiError::from(RouteError::NoLeader).into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            resp.extensions().get::<ErrorCode>(),
            Some(&ErrorCode("no_leader"))
        );

        let resp = ApiError::from(RouteError::OutcomeUnknown).into_response();
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }
}
