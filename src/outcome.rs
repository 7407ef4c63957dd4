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
    /// Its hello would have taken pending hellos past `limits.max_pending_hello_bytes`: closed
    /// (the newest connection gives way; those already waiting keep their bytes).
    HelloBudget,
    /// From a trusted source: a PROXY protocol header missing, malformed or late.
    BadProxyHeader,
    /// Terminate routes: the TLS handshake failed or timed out, with the client (a missing or
    /// bad client certificate, no ALPN in common) or, re-encrypting, with the backend (`side`
    /// says which).
    TlsError,
    /// sniroute itself could not go on: out of file descriptors or memory (the log's `cause`
    /// says which). Not the backend's fault, and not counted against it.
    InternalError,
    /// The hello was the proxy's own, replayed to a backend that led back to one of its
    /// listeners: a routing loop, closed at once.
    RoutingLoop,
    /// Port 80: answered `308` to the https URL, no backend dialled.
    Redirected,
    /// Port 80: a malformed or ambiguous request head, answered `400`.
    BadRequest,
    /// Port 80: a request head over its limit, answered `431`.
    HeadTooLarge,
    /// Port 80: no complete request head within `timeouts.client_hello`, answered `408`.
    HeadTimeout,
}

impl Outcome {
    /// Every outcome, in declaration order ([`Outcome::index`]).
    pub const ALL: [Outcome; 24] = [
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
        Self::HelloBudget,
        Self::BadProxyHeader,
        Self::TlsError,
        Self::InternalError,
        Self::RoutingLoop,
        Self::Redirected,
        Self::BadRequest,
        Self::HeadTooLarge,
        Self::HeadTimeout,
    ];

    /// This outcome's position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether it can end a connection before a route is chosen (`route="none"`).
    pub fn before_route(self) -> bool {
        !matches!(
            self,
            Self::Ok
                | Self::BackendUnreachable
                | Self::ConnectTimeout
                | Self::IdleTimeout
                | Self::Reset
                | Self::TlsError
                | Self::Redirected
        )
    }

    /// Whether it can end a connection that has a route.
    pub fn after_route(self) -> bool {
        matches!(
            self,
            Self::Ok
                | Self::BackendUnreachable
                | Self::ConnectTimeout
                | Self::IdleTimeout
                | Self::Reset
                | Self::Drained
                | Self::TlsError
                // A terminate route's handshake with the client.
                | Self::HelloTimeout
                | Self::InternalError
                | Self::Redirected
        )
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
            Self::HelloBudget => "hello_budget",
            Self::BadProxyHeader => "bad_proxy_header",
            Self::TlsError => "tls_error",
            Self::InternalError => "internal_error",
            Self::RoutingLoop => "routing_loop",
            Self::Redirected => "redirected",
            Self::BadRequest => "bad_request",
            Self::HeadTooLarge => "head_too_large",
            Self::HeadTimeout => "head_timeout",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_listed_once_in_declaration_order_with_a_distinct_label() {
        for (position, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), position, "{outcome} out of order in ALL");
        }
        let mut labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(
            labels.len(),
            Outcome::ALL.len(),
            "two outcomes share a label"
        );
    }
}
