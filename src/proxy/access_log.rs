//! The access log: one line per connection, written when the connection's guard drops, so every
//! exit path (a cancelled task included) logs exactly once. Target `sniroute::access`, INFO.
//! The same guard records the connection's end in the route's series.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::{Outcome, Side};
use crate::config::{Route, NO_ROUTE_NAME};
use crate::hello::{Alpn, Ja4};
use crate::metrics::RouteMetrics;
use crate::name::ServerName;

/// What is known of one connection so far; logged on drop.
#[derive(Debug)]
pub(super) struct AccessLog<'a> {
    start: Instant,
    /// The client's address: the socket's, or a trusted PROXY header's source.
    pub(super) client: SocketAddr,
    pub(super) server_name: Option<ServerName>,
    pub(super) alpn: Alpn,
    /// Terminate routes: the protocol negotiated with the client.
    pub(super) negotiated: Option<&'a [u8]>,
    pub(super) ja4: Option<Ja4>,
    pub(super) route: Option<&'a Route>,
    /// The series the connection's end is counted in: its route's, or `route="none"`.
    pub(super) metrics: &'a RouteMetrics,
    pub(super) backend: Option<SocketAddr>,
    pub(super) to_backend: u64,
    pub(super) to_client: u64,
    /// How it ended; a guard dropped before anyone says is a task cancelled by shutdown.
    pub(super) outcome: (Outcome, Side),
}

impl<'a> AccessLog<'a> {
    pub(super) fn new(client: SocketAddr, unmatched: &'a RouteMetrics) -> Self {
        Self {
            start: Instant::now(),
            client,
            server_name: None,
            alpn: Alpn::default(),
            negotiated: None,
            ja4: None,
            route: None,
            metrics: unmatched,
            backend: None,
            to_backend: 0,
            to_client: 0,
            outcome: (Outcome::Drained, Side::Internal),
        }
    }

    /// Time since accept.
    pub(super) fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
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
        tracing::info!(
            target: "sniroute::access",
            sni = sni,
            client.addr = %self.client,
            alpn = alpn,
            alpn.negotiated = %negotiated,
            route = route,
            backend.addr = backend,
            bytes.to_backend = self.to_backend,
            bytes.to_client = self.to_client,
            duration_ms = elapsed.as_millis() as u64,
            outcome = outcome.as_str(),
            side = %side,
            ja4 = ja4,
            "connection closed"
        );
    }
}
