//! The lingering close: we send FIN and read what the client still sends
//! until it closes its side, so the kernel never answers unread bytes with
//! a reset that could destroy a response the client has not read yet.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long a closing connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// What we still write before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Farewell {
    /// Nothing: close, then linger.
    Silent,
    /// A request head that did not finish in time: 408.
    RequestTimeout,
    /// The client never sent a byte: close without lingering.
    Unused,
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Closes our side and waits (briefly) for the client to close its own.
pub(super) async fn linger<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    farewell: Farewell,
    cut: &CancellationToken,
) {
    if let Farewell::RequestTimeout = farewell {
        // A small write into an idle connection's empty send buffer; bounded
        // anyway, in case the client stopped reading too.
        let write = tokio::time::timeout(LINGER, io.write_all(REQUEST_TIMEOUT));
        if !matches!(write.await, Ok(Ok(()))) {
            return;
        }
    }
    // hyper may have shut our side down already (it does when it ends an
    // HTTP/1 connection itself); a second shutdown is harmless, and its
    // error is no reason to skip the reading.
    let _ = io.shutdown().await;
    if farewell == Farewell::Unused {
        return;
    }
    let drain_reads = async {
        let mut scratch = [0u8; 4096];
        while let Ok(n) = io.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER, drain_reads) => {}
        () = cut.cancelled() => {}
    }
}
