//! The data path: accept, read the ClientHello, route, connect, replay, splice.
//!
//! Per connection (SPEC "Behaviour on the wire"): the hello is read under the `client_hello`
//! deadline into one buffer, which is written to the backend unchanged and then dropped; bytes
//! are then copied both ways, half-close passed on, until both directions end or the connection
//! idles out. Every exit path ends in one [`Outcome`] and one access-log line.

mod access_log;
mod alert;
mod conn;
mod handshake;
mod listener;
mod splice;
#[cfg(target_os = "linux")]
mod zero_copy;

pub use listener::{Listener, ListenerContext, PendingHellos, Shutdown};

use crate::config::{Config, Limits, Timeouts};
use crate::hello::HelloError;
use crate::metrics::ConnectionMetrics;
pub use crate::outcome::{Outcome, Side};
use crate::route::RouteTable;

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
    /// Series every connection touches.
    pub metrics: ConnectionMetrics,
}

impl Live {
    /// The live state for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            table: RouteTable::new(config),
            timeouts: config.timeouts,
            limits: config.limits,
            metrics: ConnectionMetrics::new(),
        }
    }
}
