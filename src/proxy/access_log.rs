//! The access log: one line per connection, written when the connection's record drops, so
//! every exit path (a cancelled task included) logs exactly once. Target `sniroute::access`,
//! INFO. The same drop records the connection's end in the route's series.
//!
//! The record is filled by the connection's driver from what each phase returns; the phases
//! themselves never see it.

use std::fmt;
use std::net::SocketAddr;

use tokio::time::Instant;

use super::connect::ConnectError;
use super::sniff::SniffError;
use super::tls::TlsError;
use super::{Outcome, Side};
use crate::config::{Route, NO_ROUTE_NAME};
use crate::hello::{Alpn, ClientHello, Ech, Ja4, Transport};
use crate::metrics::RouteMetrics;
use crate::name::ServerName;

/// Why a connection ended the way it did, beyond its outcome: the phase's error, for the log's
/// `cause` field. Small and `Copy`; formatted only when the line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Nothing to add.
    None,
    /// The sniff phase's error.
    Sniff(SniffError),
    /// The connect phase's error.
    Connect(ConnectError),
    /// The TLS handshake's error (terminate routes).
    Tls(TlsError),
}

impl fmt::Display for Cause {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => formatter.write_str("-"),
            Self::Sniff(error) => error.fmt(formatter),
            Self::Connect(error) => error.fmt(formatter),
            Self::Tls(error) => error.fmt(formatter),
        }
    }
}

/// What is known of one connection so far; logged on drop.
#[derive(Debug)]
pub(super) struct AccessLog<'a> {
    start: Instant,
    /// The client's address: the socket's, or a trusted PROXY header's source.
    pub(super) client: SocketAddr,
    server_name: Option<ServerName>,
    alpn: Alpn,
    ech: Ech,
    ja4: Option<Ja4>,
    /// Terminate routes: the protocol negotiated with the client.
    pub(super) negotiated: Option<&'a [u8]>,
    pub(super) route: Option<&'a Route>,
    /// The series the connection's end is counted in: its route's, or `route="none"`.
    pub(super) metrics: &'a RouteMetrics,
    pub(super) backend: Option<SocketAddr>,
    pub(super) to_backend: u64,
    pub(super) to_client: u64,
    /// How it ended; a record dropped before anyone says is a task cancelled by shutdown.
    outcome: (Outcome, Side),
    cause: Cause,
}

impl<'a> AccessLog<'a> {
    pub(super) fn new(client: SocketAddr, unmatched: &'a RouteMetrics) -> Self {
        Self {
            start: Instant::now(),
            client,
            server_name: None,
            alpn: Alpn::default(),
            ech: Ech::None,
            ja4: None,
            negotiated: None,
            route: None,
            metrics: unmatched,
            backend: None,
            to_backend: 0,
            to_client: 0,
            outcome: (Outcome::Drained, Side::Internal),
            cause: Cause::None,
        }
    }

    /// Time since accept.
    pub(super) fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// Keeps what the log line needs of `hello`.
    pub(super) fn hello(&mut self, hello: &mut ClientHello) {
        self.ja4 = Some(hello.ja4(Transport::Tcp));
        self.ech = hello.ech;
        self.server_name = hello.server_name.take();
        self.alpn = std::mem::take(&mut hello.alpn);
    }

    /// The client's offered name and protocols, for routing.
    pub(super) fn offer(&self) -> (Option<&ServerName>, &Alpn) {
        (self.server_name.as_ref(), &self.alpn)
    }

    /// How the connection ended.
    pub(super) fn end(&mut self, outcome: Outcome, side: Side, cause: Cause) {
        self.outcome = (outcome, side);
        self.cause = cause;
    }
}

impl Drop for AccessLog<'_> {
    fn drop(&mut self) {
        let (outcome, side) = self.outcome;
        let elapsed = self.start.elapsed();
        let handles = self.metrics.handles();
        handles.closed(outcome).increment(1);
        handles.to_backend.increment(self.to_backend);
        handles.to_client.increment(self.to_client);
        handles.duration.record(elapsed.as_secs_f64());
        let sni = self.server_name.as_ref().map_or("-", ServerName::as_str);
        let alpn = if self.alpn.is_empty() {
            "-".to_owned()
        } else {
            self.alpn.to_string()
        };
        let negotiated = self
            .negotiated
            .map_or(std::borrow::Cow::Borrowed("-"), String::from_utf8_lossy);
        let route = self.route.map_or(NO_ROUTE_NAME, |route| &route.name);
        let backend = self
            .backend
            .map_or_else(|| "-".to_owned(), |addr| addr.to_string());
        let ja4 = self.ja4.as_ref().map_or("-", Ja4::as_str);
        // A string, so the human format quotes it (a cause has spaces); formatted only on
        // failures.
        let cause = match self.cause {
            Cause::None => std::borrow::Cow::Borrowed("-"),
            cause => std::borrow::Cow::Owned(cause.to_string()),
        };
        tracing::info!(
            target: "sniroute::access",
            sni = sni,
            client.addr = %self.client,
            alpn = alpn,
            alpn.negotiated = %negotiated,
            ech = self.ech.as_str(),
            route = route,
            backend.addr = backend,
            bytes.to_backend = self.to_backend,
            bytes.to_client = self.to_client,
            duration_ms = elapsed.as_millis() as u64,
            outcome = outcome.as_str(),
            side = %side,
            cause = &*cause,
            ja4 = ja4,
            "connection closed"
        );
    }
}
