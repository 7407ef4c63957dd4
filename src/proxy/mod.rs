//! The data path, one file per phase of a connection's life, read top to bottom:
//!
//! ```text
//! context.rs     what a connection needs from its listener and the server (shutdown stages,
//!                pending-hello counts and budget, trusted PROXY sources, series)
//! accept.rs      a worker's accept loop: connection cap, accept errors, one tracked task each
//! connection.rs  one connection's life: sniff → route → connect → relay, or terminate
//! sniff.rs       ClientStream: PROXY header and ClientHello (or request head) in, Sniffed or
//!                SniffError out
//! http.rs        port 80: route the request head by Host; redirect, or forward like TLS
//! quic/          quic listeners: a flow table per UDP socket; Initials read, routed, replayed
//! connect.rs     dial the pool's members in turn, send the PROXY header; ConnectError
//! tls.rs         terminate routes: rustls handshakes with the client and the backend
//! relay.rs       userspace copy both ways, idle timer, half-close
//! splice.rs      Linux zero-copy: splice(2) through pooled pipes
//! alert.rs       a fatal alert, then a lingering close
//! pools.rs       off the path: health checks, host-name resolution
//! access_log.rs  the one line per connection, and its end in the route's series
//! ```
//!
//! Per connection (SPEC "Behaviour on the wire"): the hello is read under the `client_hello`
//! deadline into one buffer, which is written to the backend unchanged and then dropped; bytes
//! are then copied both ways, half-close passed on, until both directions end or the connection
//! idles out. Every exit path ends in one [`Outcome`] and one access-log line.

mod accept;
mod access_log;
mod alert;
mod connect;
mod connection;
mod context;
mod http;
pub mod pools;
mod quic;
mod relay;
mod sniff;
#[cfg(target_os = "linux")]
mod splice;
mod tls;

pub(crate) use accept::AcceptErrors;
pub use accept::{accept, Listener, Sockets};
pub use context::{ConnectionSlots, HelloBudget, ListenerContext, PendingHellos, Shared, Shutdown};
pub use quic::serve as serve_quic;

use crate::config::{Config, Limits, Timeouts};
use crate::metrics::ConnectionMetrics;
pub use crate::outcome::{Outcome, Side};
use crate::route::RouteTable;

/// An I/O error as a connection's `cause`: the OS error number where there is one (shown as
/// `Connection refused (os error 111)`), else its kind. Small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IoCause {
    code: Option<i32>,
    kind: std::io::ErrorKind,
}

impl IoCause {
    /// The peer reset the connection (it had accepted it).
    pub(crate) fn is_reset(&self) -> bool {
        self.kind == std::io::ErrorKind::ConnectionReset
    }
}

impl From<&std::io::Error> for IoCause {
    fn from(error: &std::io::Error) -> Self {
        Self {
            code: error.raw_os_error(),
            kind: error.kind(),
        }
    }
}

impl From<std::io::ErrorKind> for IoCause {
    fn from(kind: std::io::ErrorKind) -> Self {
        Self { code: None, kind }
    }
}

impl std::fmt::Display for IoCause {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => std::io::Error::from_raw_os_error(code).fmt(formatter),
            None => std::io::Error::from(self.kind).fmt(formatter),
        }
    }
}

/// Milliseconds since the process first asked, plus one: the clock pools are given (see
/// [`crate::route::Pool`]).
pub(crate) fn ticks() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// What connections accepted now use: the route table and the limits of one config.
/// Swapped whole on reload; a connection keeps the one it was accepted with.
#[derive(Debug)]
pub struct Live {
    /// Routes.
    pub table: RouteTable,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Size limits.
    pub limits: Limits,
    /// Series every connection touches.
    pub metrics: ConnectionMetrics,
}

impl Live {
    /// The live state for `config`, keeping the backends' state of `previous`.
    pub fn new(config: &Config, previous: Option<&Live>) -> Self {
        Self {
            table: RouteTable::new(config, previous.map(|live| &live.table)),
            timeouts: config.timeouts,
            limits: config.limits,
            metrics: ConnectionMetrics::new(),
        }
    }
}
