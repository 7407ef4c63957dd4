//! `[timeouts]` and `[limits]`: every bound a connection lives under, with its default and
//! what happens at it. SPEC "routes.toml".

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::error::{quoted, ConfigError, Source};
use super::raw::{RawLimits, RawTimeouts};

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole ClientHello must arrive within this, from accept (from the end of the PROXY
    /// header, where one is expected). Default 10 s; past it the connection is closed (outcome
    /// `hello_timeout`).
    pub client_hello: Duration,
    /// The whole backend dial: every attempt across a pool's members, and the PROXY header's
    /// write. Default 5 s; past it the client gets an `internal_error` alert (outcome
    /// `connect_timeout`).
    pub connect: Duration,
    /// No byte in either direction for this long closes a spliced connection. Default 1 h.
    pub idle: Duration,
    /// On shutdown, how long spliced connections may go on. Default 30 s.
    pub drain: Duration,
    /// From a trusted source, the PROXY protocol header must arrive within this, from accept.
    /// Default 5 s; past it the connection is closed (outcome `bad_proxy_header`).
    pub proxy_header: Duration,
    /// A QUIC flow with no datagram either way for this long is forgotten. Default 60 s: longer
    /// than the idle timeouts QUIC endpoints negotiate (quinn and Chromium: 30 s), so a flow
    /// outlives the connection it carries.
    pub quic_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_hello: Duration::from_secs(10),
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(3600),
            drain: Duration::from_secs(30),
            proxy_header: Duration::from_secs(5),
            quic_idle: Duration::from_secs(60),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most, across listeners. Default 50,000; past it new connections are
    /// closed at once (outcome `over_limit`).
    pub max_connections: usize,
    /// Bytes of ClientHello at most, record headers included, across records. Default 65,536;
    /// a longer hello is refused (outcome `hello_too_large`).
    pub max_client_hello: usize,
    /// Connections from one client address whose hello is pending (still arriving, or not yet
    /// handed on: the backend connect, a terminate route's handshake), at most; 0 for no limit.
    /// Default 64; past it new connections from that address are closed at once (outcome
    /// `pending_limit`) while other addresses are served.
    pub max_pending_per_ip: usize,
    /// Bytes all pending hellos (as above) may hold together. Default 64 MiB; a
    /// connection whose hello would take more is closed (outcome `hello_budget`) while the ones
    /// already waiting keep theirs.
    pub max_pending_hello_bytes: usize,
    /// QUIC flows (routed or still reading their Initials) at most, per quic listener. Default
    /// 10,000 (each routed flow holds a UDP socket towards its backend); past it a new flow's
    /// Initials are dropped and counted (the client falls back to TCP).
    pub max_quic_flows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_client_hello: 65_536,
            max_pending_per_ip: 64,
            max_pending_hello_bytes: 64 << 20,
            max_quic_flows: 10_000,
        }
    }
}

/// The bounds `[limits]` values must fall within.
const MAX_CONNECTIONS: Range<i64> = 1..10_000_001;
const MAX_CLIENT_HELLO: Range<i64> = 512..16_777_217;
const MAX_PENDING_PER_IP: Range<i64> = 0..1_000_001;
const MAX_PENDING_HELLO_BYTES: Range<i64> = (1 << 16)..(1 << 40) + 1;
const MAX_QUIC_FLOWS: Range<i64> = 1..1_000_001;

pub(super) fn timeouts(source: Source<'_>, raw: &RawTimeouts) -> Result<Timeouts, ConfigError> {
    let defaults = Timeouts::default();
    let duration = |value: &Option<Spanned<String>>, key: &str, default: Duration| match value {
        None => Ok(default),
        Some(value) => duration(source, value, format!("timeouts.{key}")),
    };
    Ok(Timeouts {
        client_hello: duration(&raw.client_hello, "client_hello", defaults.client_hello)?,
        connect: duration(&raw.connect, "connect", defaults.connect)?,
        idle: duration(&raw.idle, "idle", defaults.idle)?,
        drain: duration(&raw.drain, "drain", defaults.drain)?,
        proxy_header: duration(&raw.proxy_header, "proxy_header", defaults.proxy_header)?,
        quic_idle: duration(&raw.quic_idle, "quic_idle", defaults.quic_idle)?,
    })
}

/// A humane duration above zero (`"10s"`, `"500ms"`), or a fault at `key`.
pub(super) fn duration(
    source: Source<'_>,
    value: &Spanned<String>,
    key: String,
) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(value.get_ref()) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err(source.at(value, key, "expected a duration above zero")),
        Err(_) => Err(source.at(
            value,
            key,
            format!(
                "expected a duration like \"10s\" or \"500ms\", found {}",
                quoted(value.get_ref())
            ),
        )),
    }
}

pub(super) fn limits(source: Source<'_>, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let bounded =
        |value: &Option<Spanned<i64>>, key: &str, range: Range<i64>, default: usize| match value {
            None => Ok(default),
            Some(value) if range.contains(value.get_ref()) => Ok(*value.get_ref() as usize),
            Some(value) => Err(source.at(
                value,
                format!("limits.{key}"),
                format!(
                    "expected {} to {}, found {}",
                    range.start,
                    range.end - 1,
                    value.get_ref()
                ),
            )),
        };
    Ok(Limits {
        max_connections: bounded(
            &raw.max_connections,
            "max_connections",
            MAX_CONNECTIONS,
            defaults.max_connections,
        )?,
        max_client_hello: bounded(
            &raw.max_client_hello,
            "max_client_hello",
            MAX_CLIENT_HELLO,
            defaults.max_client_hello,
        )?,
        max_pending_per_ip: bounded(
            &raw.max_pending_per_ip,
            "max_pending_per_ip",
            MAX_PENDING_PER_IP,
            defaults.max_pending_per_ip,
        )?,
        max_pending_hello_bytes: bounded(
            &raw.max_pending_hello_bytes,
            "max_pending_hello_bytes",
            MAX_PENDING_HELLO_BYTES,
            defaults.max_pending_hello_bytes,
        )?,
        max_quic_flows: bounded(
            &raw.max_quic_flows,
            "max_quic_flows",
            MAX_QUIC_FLOWS,
            defaults.max_quic_flows,
        )?,
    })
}
