//! The dashboard at `/ui`: one HTML page, its script and its style sheet, compiled into the
//! binary (`src/ui/`), served by the admin itself. The page draws `GET /v1/cluster` and fetches
//! it again every two seconds; it loads nothing from anywhere else.
//!
//! The script and the style sheet are files of their own rather than inline, so that the
//! Content-Security-Policy can allow exactly this origin (`'self'`) and nothing inline: a string
//! from the cluster view that somehow reached the page as markup still could not run.
//!
//! This module must not compute anything about the cluster: the page shows `/v1/cluster` as is.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page (`/ui` and `/ui/`).
const PAGE_HTML: &str = include_str!("ui/index.html");

/// The page's script (`/ui/dashboard.js`).
const SCRIPT_JS: &str = include_str!("ui/dashboard.js");

/// The page's style sheet (`/ui/dashboard.css`).
const STYLE_CSS: &str = include_str!("ui/dashboard.css");

/// Sent with every dashboard response: scripts, styles and fetches from this origin only,
/// nothing inline, no plugins, no framing, no forms, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to be merged into the HTTP API's router (any other `/ui/...` path
/// falls through to its JSON 404).
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/dashboard.js", get(script))
        .route("/ui/dashboard.css", get(style))
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// A compiled-in asset with its type and the security headers. `no-cache` makes a browser
/// revalidate, so a restarted (upgraded) admin's page is picked up at once.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
