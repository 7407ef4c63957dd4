//! The access log: one line per connection, written by [`AccessLog::end`] or, for a task
//! dropped at the end of a drain, when its record drops, so every exit path logs exactly once.
//! Target `sniroute::access`, INFO, formatted by hand ([`crate::log::Fields`]) rather than
//! through tracing. Writing the line also records the connection's end in the route's series.
//!
//! The record is filled by the connection's driver from what each phase returns; the phases
//! themselves never see it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::connect::ConnectError;
use super::relay::Counts;
use super::sniff::SniffError;
use super::tls::TlsError;
use super::{Live, Outcome, Side};
use crate::config::NO_ROUTE_NAME;
use crate::hello::{Alpn, ClientHello, Ech, Ja4, Transport};
use crate::metrics::RouteMetrics;
use crate::name::ServerName;
use crate::route::RouteRef;

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
    /// A QUIC flow's Initials were refused.
    Quic(crate::quic::QuicError),
    /// A socket's error.
    Io(super::IoCause),
}

impl fmt::Display for Cause {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => formatter.write_str("-"),
            Self::Sniff(error) => error.fmt(formatter),
            Self::Connect(error) => error.fmt(formatter),
            Self::Tls(error) => error.fmt(formatter),
            Self::Quic(error) => error.fmt(formatter),
            Self::Io(error) => error.fmt(formatter),
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
    pub(super) route: Option<RouteRef<'a>>,
    /// The series the connection's end is counted in: its route's, or `route="none"`.
    pub(super) metrics: RouteMetrics<'a>,
    pub(super) backend: Option<SocketAddr>,
    /// Backends tried (0: none was).
    pub(super) attempts: u8,
    /// Bytes written each way, counted by the relay as they move.
    pub(super) bytes: Counts,
    /// `sniroute_connections_active`, counted up while the record lives.
    active: &'a metrics::Gauge,
    /// Whether [`AccessLog::end`] has written the line; a record dropped before that is a task
    /// dropped at the end of a drain.
    ended: bool,
}

impl<'a> AccessLog<'a> {
    /// The record of a connection from `client`, accepted with `live`'s routes; it counts as
    /// active until dropped.
    pub(super) fn new(client: SocketAddr, live: &'a Live) -> Self {
        live.metrics.active.increment(1.0);
        Self {
            start: Instant::now(),
            client,
            server_name: None,
            alpn: Alpn::default(),
            ech: Ech::None,
            ja4: None,
            negotiated: None,
            route: None,
            metrics: live.table.unmatched(),
            backend: None,
            attempts: 0,
            bytes: Counts::default(),
            active: &live.metrics.active,
            ended: false,
        }
    }

    /// Counts the connection from `start` rather than from the record's making: a QUIC flow
    /// from its first Initial.
    pub(super) fn since(&mut self, start: Instant) {
        self.start = start;
    }

    /// Time since accept.
    pub(super) fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// Keeps what the log line needs of `hello`, which came by `transport`.
    pub(super) fn hello(&mut self, hello: &mut ClientHello, transport: Transport) {
        // Two SHA-256s: only for a line that will be written.
        if crate::log::access_lines().is_some() {
            self.ja4 = Some(hello.ja4(transport));
        }
        self.ech = hello.ech;
        self.server_name = hello.server_name.take();
        self.alpn = std::mem::take(&mut hello.alpn);
    }

    /// Port 80: the request's Host, logged as `sni`.
    pub(super) fn host(&mut self, host: Option<ServerName>) {
        self.server_name = host;
    }

    /// The client's offered name and protocols, for routing.
    pub(super) fn offer(&self) -> (Option<&ServerName>, &Alpn) {
        (self.server_name.as_ref(), &self.alpn)
    }

    /// How the connection ended: writes the line and counts the end (the outcome and cause are
    /// not kept in the live connection, only passed here).
    pub(super) fn end(mut self, outcome: Outcome, side: Side, cause: Cause) {
        self.write(outcome, side, cause);
        self.ended = true;
    }

    fn write(&self, outcome: Outcome, side: Side, cause: Cause) {
        let elapsed = self.start.elapsed();
        let (to_backend, to_client) = (
            self.bytes.to_backend.load(Ordering::Relaxed),
            self.bytes.to_client.load(Ordering::Relaxed),
        );
        self.active.decrement(1.0);
        let handles = self.metrics.handles();
        handles.closed(outcome).increment(1);
        handles.to_backend.increment(to_backend);
        handles.to_client.increment(to_client);
        handles.duration.record(elapsed.as_secs_f64());
        let Some(lines) = crate::log::access_lines() else {
            return;
        };
        let mut line = lines.line("sniroute::access", "connection closed");
        line.str(
            "sni",
            self.server_name.as_ref().map_or("-", ServerName::as_str),
        )
        .display("client.addr", self.client);
        match self.alpn.is_empty() {
            true => line.str("alpn", "-"),
            false => line.quoted("alpn", &self.alpn),
        };
        match self.negotiated {
            Some(negotiated) => {
                line.display("alpn.negotiated", String::from_utf8_lossy(negotiated))
            }
            None => line.display("alpn.negotiated", "-"),
        };
        line.str("ech", self.ech.as_str()).str(
            "route",
            self.route.map_or(NO_ROUTE_NAME, |route| route.name()),
        );
        match self.backend {
            Some(backend) => line.quoted("backend.addr", backend),
            None => line.str("backend.addr", "-"),
        };
        line.u64("backend.attempts", u64::from(self.attempts));
        line.u64("bytes.to_backend", to_backend)
            .u64("bytes.to_client", to_client)
            .u64("duration_ms", elapsed.as_millis() as u64)
            .str("outcome", outcome.as_str())
            .display("side", side);
        match cause {
            Cause::None => line.str("cause", "-"),
            cause => line.quoted("cause", cause),
        };
        line.str("ja4", self.ja4.as_ref().map_or("-", Ja4::as_str));
        lines.send(line);
    }
}

impl Drop for AccessLog<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.write(Outcome::Drained, Side::Internal, Cause::None);
        }
    }
}
