//! The route handlers: each parses its request, asks the router (or, for the admins'
//! membership, the metadata), and answers in JSON.

use super::HttpState;
use super::body::RawBody;
use super::parse::{
    KeyPath, QueryMap, parse_cas, parse_key_body, parse_put_body, parse_stale, parse_value_body,
    path_key, query_of,
};
use super::response::{json_text, json_value, record_json};
use crate::cluster_view;
use crate::error::ApiError;
use crate::meta::MetaError;
use crate::meta::members::AdminChange;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;

pub(super) async fn legacy_put(
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

pub(super) async fn legacy_get(
    State(s): State<HttpState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = parse_key_body(&body)?;
    match s.router.get(key.as_bytes(), false).await? {
        Some(record) => Ok(json_text(record_json(&key, "val", &record)?)),
        None => Err(ApiError::not_found()),
    }
}

pub(super) async fn legacy_delete(
    State(s): State<HttpState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = parse_key_body(&body)?;
    let deleted = s.router.delete(key.as_bytes(), None).await?;
    Ok(json_value(
        &serde_json::json!({"msg": "ok", "deleted": deleted}),
    ))
}

pub(super) async fn kv_get(
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

pub(super) async fn kv_put(
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

pub(super) async fn kv_delete(
    State(s): State<HttpState>,
    path: KeyPath,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    let cas = parse_cas(&query_of(query)?)?;
    let deleted = s.router.delete(key.as_bytes(), cas).await?;
    Ok(json_value(&serde_json::json!({"deleted": deleted})))
}

pub(super) async fn kv_empty() -> ApiError {
    ApiError::empty_key()
}

pub(super) async fn cluster(State(s): State<HttpState>) -> Response {
    json_value(&cluster_view::cluster_view(&s.shared).await)
}

pub(super) async fn livez() -> Response {
    json_value(&serde_json::json!({"status": "ok"}))
}

pub(super) async fn readyz(State(s): State<HttpState>) -> Result<Response, ApiError> {
    match cluster_view::readiness(&s.shared) {
        Ok(()) => Ok(json_value(&serde_json::json!({"status": "ready"}))),
        Err(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            reason,
        )),
    }
}

pub(super) async fn metrics_text(State(s): State<HttpState>) -> Result<Response, ApiError> {
    crate::metrics::record_scrape_gauges(&s.shared);
    ravel_telemetry::metrics_response().map_err(ApiError::internal)
}

/// `PUT /v1/admins/{grpc_addr}`: adds the admin serving gRPC there to the admins' group (it
/// must be running with `--join`).
pub(super) async fn admin_add(
    State(s): State<HttpState>,
    Path(grpc_addr): Path<String>,
) -> Result<Response, ApiError> {
    change_admins(&s, AdminChange::Add(grpc_addr)).await
}

/// `DELETE /v1/admins/{grpc_addr}`: removes that admin from the admins' group.
pub(super) async fn admin_remove(
    State(s): State<HttpState>,
    Path(grpc_addr): Path<String>,
) -> Result<Response, ApiError> {
    change_admins(&s, AdminChange::Remove(grpc_addr)).await
}

async fn change_admins(s: &HttpState, change: AdminChange) -> Result<Response, ApiError> {
    let (AdminChange::Add(addr) | AdminChange::Remove(addr)) = &change;
    crate::pool::validate_addr(addr)
        .map_err(|e| ApiError::bad_request("invalid_address", format!("admin address: {e}")))?;
    match s.shared.meta.change_admins(change).await {
        Ok(voters) => Ok(json_value(&serde_json::json!({"voters": voters}))),
        Err(MetaError::NoAdminLeader) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_admin_leader",
            MetaError::NoAdminLeader.to_string(),
        )),
        Err(e @ MetaError::Peers(_)) => {
            Err(ApiError::bad_request("invalid_admin_change", e.to_string()))
        }
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
