//! The terminate phase: the TLS handshake with the client, started from the ClientHello bytes
//! the sniff phase already read, and (with `backend_tls`) the handshake with the backend. A
//! failure is a [`TlsError`] naming what rustls refused, in a few words fit for a log field.
//!
//! The hello is in the connection's buffer, not in the socket, so it is fed to a
//! `rustls::server::Acceptor` by hand and the accepted hello handed to tokio-rustls with the
//! socket (`StartHandshake::from_parts`); tokio-rustls' `LazyConfigAcceptor` would read the socket
//! first and wait for a hello that has already arrived. Every byte read so far goes to the
//! acceptor, so whatever the client sent after its hello is kept for the session too.

use std::io;
use std::sync::Arc;

use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::{StartHandshake, TlsStream};
use tokio_rustls::{client, TlsConnector};

use super::{Outcome, Side};
use crate::proxy_protocol::Ssl;
use crate::terminate::BackendTls;

/// Why a TLS handshake failed. Small and `Copy`: rustls' error reduced to a few static words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum TlsError {
    /// The client's handshake failed.
    #[error("client handshake: {0}")]
    Client(&'static str),
    /// The client's handshake didn't complete within `timeouts.client_hello`.
    #[error("client handshake not complete in time")]
    ClientTimeout,
    /// The re-encrypting handshake with the backend failed or timed out.
    #[error("backend handshake: {0}")]
    Backend(&'static str),
}

impl TlsError {
    /// How the connection ends: a failed handshake is `tls_error`; one that didn't complete in
    /// time is `hello_timeout`, like a hello that didn't.
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Self::Client(_) | Self::Backend(_) => Outcome::TlsError,
            Self::ClientTimeout => Outcome::HelloTimeout,
        }
    }

    /// Whose doing it was.
    pub(super) fn side(&self) -> Side {
        match self {
            Self::Client(_) | Self::ClientTimeout => Side::Client,
            Self::Backend(_) => Side::Backend,
        }
    }
}

/// Completes the handshake with `client` whose first bytes, its whole ClientHello included, are
/// `received`. On failure the client has been sent the alert rustls chose, where there is one.
pub(super) async fn accept<S>(
    mut client: S,
    received: &[u8],
    config: Arc<ServerConfig>,
) -> Result<TlsStream<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut acceptor = Acceptor::default();
    let mut unread = received;
    while !unread.is_empty() {
        // `&[u8]` reads from its front: each call takes what the acceptor has room for.
        match acceptor.read_tls(&mut unread) {
            Ok(read) if read > 0 => {}
            _ => return Err(TlsError::Client("hello refused by rustls")),
        }
    }
    let accepted = match acceptor.accept() {
        Ok(Some(accepted)) => accepted,
        // The peeker found a whole hello in these bytes; rustls not finding one is a hello
        // rustls refuses.
        Ok(None) => return Err(TlsError::Client("hello refused by rustls")),
        Err((error, mut alert)) => {
            let mut bytes = Vec::new();
            if alert.write_all(&mut bytes).is_ok() {
                let _ = client.write_all(&bytes).await;
            }
            return Err(TlsError::Client(describe(&error)));
        }
    };
    // tokio-rustls sends the alert of a failed handshake itself.
    StartHandshake::from_parts(accepted, client)
        .into_stream(config)
        .await
        .map_err(|error| TlsError::Client(describe_io(&error)))
}

/// A few words for a handshake's I/O error: rustls' own error where it is one.
pub(super) fn describe_io(error: &io::Error) -> &'static str {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(error) => describe(error),
        None if error.kind() == io::ErrorKind::UnexpectedEof => "closed by the peer",
        None => "connection error",
    }
}

/// A few words for what rustls refused.
fn describe(error: &rustls::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match error {
        Error::NoApplicationProtocol => "no application protocol in common",
        Error::NoCertificatesPresented => "no certificate presented",
        Error::InvalidCertificate(reason) => match reason {
            CertificateError::BadEncoding => "certificate: bad encoding",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate: expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate: not valid yet"
            }
            CertificateError::UnknownIssuer => "certificate: unknown issuer",
            CertificateError::BadSignature => "certificate: bad signature",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "certificate: not valid for the name"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "certificate: invalid purpose"
            }
            CertificateError::Revoked => "certificate: revoked",
            _ => "certificate: unsupported or invalid",
        },
        Error::AlertReceived(_) => "alert received",
        Error::PeerIncompatible(_) => "incompatible peer",
        Error::PeerMisbehaved(_) => "peer misbehaved",
        Error::InvalidMessage(_) => "invalid message",
        Error::InappropriateHandshakeMessage { .. } | Error::InappropriateMessage { .. } => {
            "unexpected message"
        }
        _ => "handshake failed",
    }
}

/// The TLS parameters of a finished handshake with a client, for the PROXY header's SSL TLV.
#[derive(Debug, Default)]
pub(super) struct ClientTls {
    version: &'static str,
    cipher: &'static str,
    /// The verified client certificate's subject CN (`Some("")` when it has none).
    client_cn: Option<String>,
}

impl ClientTls {
    pub(super) fn of<S>(stream: &TlsStream<S>) -> Self {
        let connection = stream.get_ref().1;
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "",
        };
        let cipher = connection
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("");
        let client_cn = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| common_name(leaf).unwrap_or_default());
        Self {
            version,
            cipher,
            client_cn,
        }
    }

    pub(super) fn ssl(&self) -> Ssl<'_> {
        Ssl {
            version: self.version,
            cipher: self.cipher,
            client_cn: self.client_cn.as_deref(),
        }
    }
}

/// The first common name in a certificate's subject.
fn common_name(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

/// Re-encrypts to the backend: a TLS handshake over `backend`, verifying its certificate,
/// offering `alpn` where the route forwards the client's protocol.
pub(super) async fn connect(
    tls: &BackendTls,
    backend: TcpStream,
    alpn: Option<&[u8]>,
) -> std::io::Result<client::TlsStream<TcpStream>> {
    TlsConnector::from(tls.client_config(alpn))
        .connect(tls.server_name.clone(), backend)
        .await
}
