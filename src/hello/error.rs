//! Why a ClientHello was refused, and the TLS alert each refusal earns.
//!
//! Pure data: small `Copy` values, no strings built per connection. The alert mapping follows
//! RFC 8446 §6.2: a structure that can't be decoded is `decode_error`, a value that decodes but is
//! not allowed is `illegal_parameter`, a record of the wrong kind is `unexpected_message`.

use tls_parser::TlsAlertDescription;

use crate::name::NameError;

/// A ClientHello the peeker will not route. Every variant closes the connection; none is ever
/// sent to `[default]` (SPEC "Fail closed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first bytes are not a TLS record header (an HTTP request, say).
    #[error("not tls")]
    NotTls,
    /// An SSL 2.0-format ClientHello (RFC 6101 appendix E.2); nothing can be routed from it.
    #[error("sslv2 client hello")]
    Sslv2,
    /// A TLS record whose content type is not handshake (22).
    #[error("expected a handshake record, found content type {0}")]
    UnexpectedContentType(u8),
    /// A record longer than 2^14 bytes (RFC 8446 §5.1).
    #[error("record of {0} bytes, over 16384")]
    RecordOverflow(u16),
    /// A zero-length handshake record (forbidden by RFC 8446 §5.1).
    #[error("empty handshake record")]
    EmptyRecord,
    /// A handshake message other than ClientHello (type 1).
    #[error("expected a client hello, found handshake type {0}")]
    NotClientHello(u8),
    /// The hello needs more than `limits.max_client_hello` bytes.
    #[error("client hello over {limit} bytes")]
    TooLarge {
        /// The limit in force, in bytes.
        limit: usize,
    },
    /// A length or field that does not decode.
    #[error("malformed client hello: {0}")]
    Malformed(&'static str),
    /// The server_name extension carries a name that is not a DNS name.
    #[error("bad server name: {0}")]
    BadServerName(NameError),
    /// The server_name extension carries two host names (RFC 6066 §3 forbids it).
    #[error("two host names in server_name")]
    TwoServerNames,
    /// The same extension twice (RFC 8446 §4.2); checked for the ones routing reads.
    #[error("extension {0} appears twice")]
    DuplicateExtension(u16),
    /// An ALPN protocol name of zero bytes (RFC 7301 §3.1).
    #[error("empty alpn protocol")]
    EmptyAlpnProtocol,
    /// An inner-type encrypted_client_hello in the clear (it belongs inside an outer hello).
    #[error("inner encrypted_client_hello in the clear")]
    EchInner,
}

impl HelloError {
    /// The alert to send before closing, or `None` where the peer is not speaking TLS records and
    /// would not understand one (plain text, SSLv2).
    pub fn alert(&self) -> Option<TlsAlertDescription> {
        match self {
            Self::NotTls | Self::Sslv2 => None,
            Self::UnexpectedContentType(_) | Self::NotClientHello(_) => {
                Some(TlsAlertDescription::UnexpectedMessage)
            }
            Self::RecordOverflow(_) => Some(TlsAlertDescription::RecordOverflow),
            Self::EmptyRecord
            | Self::TooLarge { .. }
            | Self::Malformed(_)
            | Self::EmptyAlpnProtocol => Some(TlsAlertDescription::DecodeError),
            Self::BadServerName(_)
            | Self::TwoServerNames
            | Self::DuplicateExtension(_)
            | Self::EchInner => Some(TlsAlertDescription::IllegalParameter),
        }
    }
}

/// The RFC 8446 §6 name of the alerts sniroute sends (`decode_error`), for operators to read.
pub fn alert_name(description: TlsAlertDescription) -> &'static str {
    match description {
        TlsAlertDescription::UnexpectedMessage => "unexpected_message",
        TlsAlertDescription::RecordOverflow => "record_overflow",
        TlsAlertDescription::HandshakeFailure => "handshake_failure",
        TlsAlertDescription::IllegalParameter => "illegal_parameter",
        TlsAlertDescription::DecodeError => "decode_error",
        TlsAlertDescription::InternalError => "internal_error",
        TlsAlertDescription::UnrecognizedName => "unrecognized_name",
        TlsAlertDescription::NoApplicationProtocol => "no_application_protocol",
        _ => "other",
    }
}
