//! The data path: accept, read the ClientHello, route, connect, replay, splice.
//!
//! Per connection (SPEC "Behaviour on the wire"): the hello is read under the `client_hello`
//! deadline into one buffer, which is written to the backend unchanged and then dropped; bytes
//! are then copied both ways, half-close passed on, until both directions end or the connection
//! idles out. Every exit path ends in one [`Outcome`] and one access-log line.

mod access_log;
mod alert;
mod conn;
mod listener;
mod splice;

use std::fmt;

pub use listener::{Listener, PendingHellos, Shutdown};

use crate::config::{Config, Limits, Timeouts};
use crate::hello::HelloError;
use crate::route::RouteTable;

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
}

impl Outcome {
    /// The snake_case label used in logs (and, later, metrics).
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

impl From<&HelloError> for Outcome {
    fn from(error: &HelloError) -> Self {
        match error {
            HelloError::NotTls => Self::NotTls,
            HelloError::Sslv2 => Self::Sslv2,
            HelloError::TooLarge { .. } => Self::HelloTooLarge,
            _ => Self::BadHello,
        }
    }
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
}

impl Live {
    /// The live state for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            table: RouteTable::new(config),
            timeouts: config.timeouts,
            limits: config.limits,
        }
    }
}
