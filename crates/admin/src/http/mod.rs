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
//!
//! Its parts: `routes` (the app and its fallbacks), `middleware` (metrics, in-flight cap, request
//! timeout), `server` (accept loop, connection cap, shutdown), `body` (bounded body reading),
//! `parse` (bodies, keys, query parameters), `response` (JSON answers), `handlers` (one per route).

mod body;
mod handlers;
mod middleware;
mod parse;
mod response;
mod routes;
mod server;
#[cfg(test)]
mod test_support;

pub use body::{OVERSIZE_DRAIN_BYTES, RawBody};
pub use parse::{
    check_key, parse_cas, parse_key_body, parse_put_body, parse_stale, parse_value_body,
};
pub use response::record_json;
pub use routes::{HttpState, app};
pub use server::serve_http;

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
