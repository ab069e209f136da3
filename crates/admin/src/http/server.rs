//! The server: our own accept loop under the connection cap, hyper's HTTP/1 connections with
//! the header-read timeout, and the graceful shutdown.

use super::{HEADER_READ_TIMEOUT_MS, MAX_HTTP_CONNECTIONS, RESERVED_FDS, SHUTDOWN_GRACE_MS, app};
use crate::SharedState;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

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

#[cfg(test)]
mod tests {
    use crate::http::test_support::{nested_array, start_test_server};
    use std::time::Duration;

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
