//! The axum application: the route table, the layers around it (metrics, in-flight cap,
//! request timeout), and the JSON 404 and 405 fallbacks.

use super::MAX_IN_FLIGHT_REQUESTS;
use super::handlers::{
    admin_add, admin_remove, cluster, kv_delete, kv_empty, kv_get, kv_put, legacy_delete,
    legacy_get, legacy_put, livez, metrics_text, readyz,
};
use super::middleware::{limit_in_flight, observe, request_timeout};
use crate::error::ApiError;
use crate::router::Router;
use crate::{SharedState, ui};
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::routing::{get, post, put};
use ravel_core::limits;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The axum state: the router plus the admin's shared state.
#[derive(Clone)]
pub struct HttpState {
    pub(super) shared: SharedState,
    pub(super) router: Router,
    pub(super) in_flight: Arc<Semaphore>,
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
        .route(
            "/v1/admins/{grpc_addr}",
            put(admin_add).delete(admin_remove),
        )
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

async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_support::{call, test_state};
    use axum::body::Body;
    use axum::http::header;
    use tower::ServiceExt;

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
        let app = app(test_state(dir.path()).await);
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
        let app = app(test_state(dir.path()).await);
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

    /// Routes answer wrong methods with 405 JSON, unknown paths with 404 `no_route`, and a
    /// write to a store with no cluster with a definite 503 `no_cluster` and Retry-After.
    #[tokio::test]
    async fn routes_methods_and_no_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(test_state(dir.path()).await);

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
}
