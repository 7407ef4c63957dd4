//! How a connection ended ([`Outcome`]) and whose doing it was ([`Side`]): the access log's
//! `outcome` and `side` fields and the `outcome` label of `sniroute_connections_closed_total`.

use std::fmt;

/// How a connection ended: the access log's `outcome` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Spliced until both sides closed.
    Ok,
    /// The first bytes were not a TLS record.
    NotTls,
    /// An SSLv2-format hello.
    Sslv2,
    /// A malformed hello.
    BadHello,
    /// A hello over `limits.max_client_hello`.
    HelloTooLarge,
    /// The hello did not arrive within `timeouts.client_hello`.
    HelloTimeout,
    /// The client closed (or reset) before its hello was complete.
    ClientClosed,
    /// No route and no `[default]`: `unrecognized_name` alert.
    NoRoute,
    /// The backend refused the connection or could not be resolved.
    BackendUnreachable,
    /// The backend connect took longer than `timeouts.connect`.
    ConnectTimeout,
    /// No byte either way for `timeouts.idle`.
    IdleTimeout,
    /// A read or write failed while splicing (a reset, say).
    Reset,
    /// Closed by shutdown.
    Drained,
    /// Over `limits.max_connections`: closed at accept.
    OverLimit,
    /// Over `limits.max_pending_per_ip` for its address: closed at accept.
    PendingLimit,
    /// From a trusted source: a PROXY protocol header missing, malformed or late.
    BadProxyHeader,
    /// Terminate routes: the TLS handshake failed or timed out, with the client (a missing or
    /// bad client certificate, no ALPN in common) or, re-encrypting, with the backend (`side`
    /// says which).
    TlsError,
}

impl Outcome {
    /// Every outcome, in declaration order ([`Outcome::index`]).
    pub const ALL: [Outcome; 17] = [
        Self::Ok,
        Self::NotTls,
        Self::Sslv2,
        Self::BadHello,
        Self::HelloTooLarge,
        Self::HelloTimeout,
        Self::ClientClosed,
        Self::NoRoute,
        Self::BackendUnreachable,
        Self::ConnectTimeout,
        Self::IdleTimeout,
        Self::Reset,
        Self::Drained,
        Self::OverLimit,
        Self::PendingLimit,
        Self::BadProxyHeader,
        Self::TlsError,
    ];

    /// This outcome's position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The snake_case label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotTls => "not_tls",
            Self::Sslv2 => "sslv2",
            Self::BadHello => "bad_hello",
            Self::HelloTooLarge => "hello_too_large",
            Self::HelloTimeout => "hello_timeout",
            Self::ClientClosed => "client_closed",
            Self::NoRoute => "no_route",
            Self::BackendUnreachable => "backend_unreachable",
            Self::ConnectTimeout => "connect_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Reset => "reset",
            Self::Drained => "drained",
            Self::OverLimit => "over_limit",
            Self::PendingLimit => "pending_limit",
            Self::BadProxyHeader => "bad_proxy_header",
            Self::TlsError => "tls_error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Which side ended the connection (or whose fault it was): the access log's `side` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Client,
    /// The backend.
    Backend,
    /// sniroute itself (a limit, a timer, shutdown).
    Internal,
}

impl fmt::Display for Side {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Client => "client",
            Self::Backend => "backend",
            Self::Internal => "internal",
        })
    }
}
