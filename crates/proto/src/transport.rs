//! What a failed gRPC call tells about whether its request reached the other side.
//!
//! The store's outcome rules hang on this: a write that certainly never left the caller may be
//! retried elsewhere, anything else may have been applied. Both the admin's router and a
//! replica forwarding to its leader ask the same question, so the answer lives here, next to
//! the generated types.

/// True only when the status shows the TCP connection to the node could not be opened, so the
/// request never left the caller. Conservative: anything unrecognised is "maybe sent".
pub fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut texts = vec![status.message().to_ascii_lowercase()];
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::AddrNotAvailable
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            ) {
                return true;
            }
        }
        texts.push(err.to_string().to_ascii_lowercase());
        source = err.source();
    }
    texts.iter().any(|t| {
        t.contains("tcp connect error")
            || t.contains("connection refused")
            || t.contains("error trying to connect")
            || t.contains("client error (connect)")
    })
}
