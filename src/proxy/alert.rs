//! Sending a fatal TLS alert (or a port-80 error response) before closing, and closing without
//! a reset.
//!
//! The alert goes out in a plaintext record (RFC 8446 §6: alerts before the handshake completes
//! are not encrypted). Closing a socket that still has unread bytes makes the kernel send a
//! reset, which can overtake the alert; so after the alert the write side is shut and the
//! client's remaining bytes are read and dropped, bounded in time and size (a lingering close,
//! as nginx does).

use std::time::Duration;

use tls_parser::TlsAlertDescription;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a closing connection may take to send its alert and drain the client.
pub(super) const LINGER: Duration = Duration::from_secs(1);
/// How many of the client's bytes a lingering close reads at most.
const LINGER_BYTES: usize = 64 * 1024;

/// A fatal alert record: content type 21, version TLS 1.2 (what TLS 1.3 puts on the wire too),
/// length 2, level fatal (2), description.
pub(super) fn record(description: TlsAlertDescription) -> [u8; 7] {
    [21, 3, 3, 0, 2, 2, description.0]
}

/// Sends `description` (if any) to `client`, then closes gracefully within [`LINGER`].
pub(super) async fn close<S>(client: &mut S, description: Option<TlsAlertDescription>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match description {
        Some(description) => close_with(client, &record(description)).await,
        None => close_with(client, &[]).await,
    }
}

/// Sends `last` (an alert, an HTTP response) to `client`, then closes gracefully within
/// [`LINGER`].
pub(super) async fn close_with<S>(client: &mut S, last: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let linger = async {
        client.write_all(last).await?;
        client.shutdown().await?;
        let mut drained = 0;
        // On the heap, and only here: an array would sit in every connection's setup future.
        let mut scratch = vec![0u8; 1024];
        while drained < LINGER_BYTES {
            match client.read(&mut scratch).await? {
                0 => break,
                read => drained += read,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    // Errors and the deadline only end the courtesy early; the connection is closed either way.
    let _ = tokio::time::timeout(LINGER, linger).await;
}
