//! The request body, read as raw bytes under the size limit and the body-read timeout; an
//! oversized one is drained (bounded) and refused with 413.

use super::BODY_READ_TIMEOUT_MS;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use bytes::Bytes;
use ravel_core::limits;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::http::app;
    use crate::http::test_support::{start_test_server, test_state};
    use axum::http::StatusCode;
    use tower::ServiceExt;

    /// Oversized bodies get 413 `body_too_large`, both when announced by Content-Length (not
    /// read) and when streamed without one.
    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(test_state(dir.path()).await);
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
}
