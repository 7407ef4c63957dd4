//! Prometheus metrics: every series name (as a `const`), its description and buckets, the
//! per-route handles the data path increments, and the `GET /metrics` endpoint.
//!
//! Label values are bounded: route names, listener and backend addresses from the config, and
//! enum values; never a client's name or address. Unmatched traffic is `route="none"`. The
//! exporter is metrics-exporter-prometheus without its HTTP features: sniroute serves the text
//! itself from a socket it binds like any listener, so a bad `metrics.address` is reported like
//! a bad `listen.address`, and tests can bind port 0.

use std::sync::OnceLock;

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use once_cell::race::OnceBox;

use crate::outcome::Outcome;

/// Connections accepted, by listener address.
pub const CONNECTIONS_ACCEPTED: &str = "sniroute_connections_accepted_total";
/// Connections closed at accept, by `reason`: `max_connections` or `max_pending_per_ip`.
pub const CONNECTIONS_REJECTED: &str = "sniroute_connections_rejected_total";
/// Connections open now.
pub const CONNECTIONS_ACTIVE: &str = "sniroute_connections_active";
/// Connections ended, by route and outcome (every connection ends in exactly one).
pub const CONNECTIONS_CLOSED: &str = "sniroute_connections_closed_total";
/// Size of each ClientHello on the wire, record headers included.
pub const CLIENT_HELLO_BYTES: &str = "sniroute_client_hello_bytes";
/// Time from accept to a complete ClientHello.
pub const CLIENT_HELLO_DURATION: &str = "sniroute_client_hello_duration_seconds";
/// Time to reach a backend, by route (successful dials: failovers included, and for a pool the
/// wait for the backend's first byte).
pub const BACKEND_CONNECT_DURATION: &str = "sniroute_backend_connect_duration_seconds";
/// Backend connects that failed or timed out, by route and backend.
pub const BACKEND_CONNECT_FAILURES: &str = "sniroute_backend_connect_failures_total";
/// Bytes forwarded, by route and direction (`to_backend`, hello included; `to_client`).
pub const TRANSFER_BYTES: &str = "sniroute_transfer_bytes_total";
/// Time from accept to close, by route.
pub const CONNECTION_DURATION: &str = "sniroute_connection_duration_seconds";
/// Gauge: 1, labelled with the running `version`.
pub const BUILD_INFO: &str = "sniroute_build_info";
/// Config reloads, by result (`ok`, `error`).
pub const CONFIG_RELOADS: &str = "sniroute_config_reloads_total";
/// Log lines dropped because the writer thread's buffer was full (stderr too slow).
pub const LOG_LINES_DROPPED: &str = "sniroute_log_lines_dropped_total";
/// Counter: failed accepts (out of file descriptors, say), per listener (`listener` label; the
/// metrics listener is `listener="metrics"`).
pub const ACCEPT_ERRORS: &str = "sniroute_accept_errors_total";
/// Gauge: bytes held by the buffers of hellos still arriving (`limits.max_pending_hello_bytes`).
pub const PENDING_HELLO_BYTES: &str = "sniroute_pending_hello_bytes";
/// Counter: datagrams a quic listener dropped, by `listener` and `reason` ([`QuicDrop`]).
pub const QUIC_DROPPED: &str = "sniroute_quic_dropped_total";
/// Counter: datagrams forwarded by QUIC flows, by route and `direction`, counted as flows end.
pub const QUIC_DATAGRAMS: &str = "sniroute_quic_datagrams_total";

/// Gauge: 1 while a backend is in rotation (passing its checks, not ejected), by route and
/// backend address.
pub const BACKEND_UP: &str = "sniroute_backend_up";
/// Gauge: connections open to a backend, by route and backend address.
pub const BACKEND_ACTIVE: &str = "sniroute_backend_active_connections";
/// Counter: connect attempts to a backend, by route, backend address and `result` (`ok`,
/// `unreachable`, `timeout`, `reset`: closed before answering the hello).
pub const BACKEND_CONNECT_ATTEMPTS: &str = "sniroute_backend_connect_attempts_total";
/// Counter: active health checks, by route, backend address and `result` (`ok`, `failed`).
pub const BACKEND_HEALTH_CHECKS: &str = "sniroute_backend_health_checks_total";
/// Counter: background resolutions of a backend host name, by route, `host` (as routes.toml
/// names it) and `result` (`ok`, `failed`: the last good addresses stay).
pub const BACKEND_RESOLUTIONS: &str = "sniroute_backend_resolutions_total";

/// The route label of connections that matched no route.
pub const NO_ROUTE: &str = "none";

const SIZE_BUCKETS: &[f64] = &[
    256.0, 512.0, 1024.0, 1536.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0,
];
const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LIFETIME_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle) and
/// describes every series.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in [
                (CLIENT_HELLO_BYTES, SIZE_BUCKETS),
                (CLIENT_HELLO_DURATION, FAST_BUCKETS),
                (BACKEND_CONNECT_DURATION, FAST_BUCKETS),
                (CONNECTION_DURATION, LIFETIME_BUCKETS),
            ] {
                // Only fails for an empty bucket list.
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                    .unwrap_or_else(|_| PrometheusBuilder::new());
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours renders nothing, and
            // that is the embedder's choice.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            // Present from the start, not from the first event.
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            for result in ["ok", "error"] {
                metrics::counter!(CONFIG_RELOADS, "result" => result).increment(0);
            }
            handle
        })
        .clone()
}

fn describe() {
    describe_quic();
    describe_counter!(CONNECTIONS_ACCEPTED, "Connections accepted, by listener.");
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections closed at accept, by reason."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Connections open now.");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections ended, by route and outcome."
    );
    describe_histogram!(
        CLIENT_HELLO_BYTES,
        Unit::Bytes,
        "ClientHello size on the wire."
    );
    describe_histogram!(
        CLIENT_HELLO_DURATION,
        Unit::Seconds,
        "Time from accept to a complete ClientHello."
    );
    describe_histogram!(
        BACKEND_CONNECT_DURATION,
        Unit::Seconds,
        "Time to reach a backend (failovers included), by route."
    );
    describe_counter!(
        BACKEND_CONNECT_FAILURES,
        "Failed or timed-out backend connects, by route and backend."
    );
    describe_counter!(
        TRANSFER_BYTES,
        Unit::Bytes,
        "Bytes forwarded, by route and direction."
    );
    describe_histogram!(
        CONNECTION_DURATION,
        Unit::Seconds,
        "Time from accept to close, by route."
    );
    describe_gauge!(
        BACKEND_UP,
        "1 while a backend is in rotation (passing checks, not ejected), by route and backend."
    );
    describe_gauge!(
        BACKEND_ACTIVE,
        "Connections open to a backend, by route and backend."
    );
    describe_counter!(
        BACKEND_CONNECT_ATTEMPTS,
        "Backend connect attempts, by route, backend and result."
    );
    describe_counter!(
        BACKEND_HEALTH_CHECKS,
        "Active health checks, by route, backend and result."
    );
    describe_counter!(
        BACKEND_RESOLUTIONS,
        "Background resolutions of backend host names, by route, host and result."
    );
    describe_counter!(CONFIG_RELOADS, "Config reloads, by result.");
    describe_gauge!(BUILD_INFO, "1, labelled with the running version.");
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because stderr could not keep up."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts (out of file descriptors, say), by listener."
    );
    describe_gauge!(
        PENDING_HELLO_BYTES,
        "Bytes held by the buffers of hellos still arriving."
    );
}

fn describe_quic() {
    describe_counter!(
        QUIC_DROPPED,
        "Datagrams a quic listener dropped, by listener and reason."
    );
    describe_counter!(
        QUIC_DATAGRAMS,
        "Datagrams forwarded by QUIC flows, by route and direction (counted as flows end)."
    );
}

/// The series every connection touches, whatever its route.
#[derive(Debug)]
pub struct ConnectionMetrics {
    /// `sniroute_connections_active`.
    pub active: Gauge,
    /// `sniroute_client_hello_bytes`.
    pub hello_bytes: Histogram,
    /// `sniroute_client_hello_duration_seconds`.
    pub hello_duration: Histogram,
}

impl ConnectionMetrics {
    /// Registers (or finds) the handles.
    pub fn new() -> Self {
        Self {
            active: metrics::gauge!(CONNECTIONS_ACTIVE),
            hello_bytes: metrics::histogram!(CLIENT_HELLO_BYTES),
            hello_duration: metrics::histogram!(CLIENT_HELLO_DURATION),
        }
    }
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One listener's series.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// `sniroute_connections_accepted_total{listener}`.
    pub accepted: Counter,
    /// `sniroute_connections_rejected_total{reason="max_connections"}`.
    pub over_max_connections: Counter,
    /// `sniroute_connections_rejected_total{reason="max_pending_per_ip"}`.
    pub over_max_pending: Counter,
    /// `sniroute_accept_errors_total{listener}`.
    pub accept_errors: Counter,
    /// `sniroute_quic_dropped_total{listener, reason}`, by [`QuicDrop`]; registered on first
    /// use (only quic listeners drop datagrams).
    quic_dropped: [OnceLock<Counter>; QuicDrop::ALL.len()],
    address: metrics::SharedString,
}

/// Why a quic listener dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicDrop {
    /// A long header of a version sniroute doesn't read (the client falls back to TCP).
    UnknownVersion,
    /// A header, frame or Initial that doesn't add up, or a hello that doesn't parse.
    Malformed,
    /// An Initial packet whose protection doesn't come off.
    Undecryptable,
    /// A frame an Initial may not carry.
    ProtocolViolation,
    /// Not an Initial, and of no flow known.
    NoFlow,
    /// A new flow past `limits.max_quic_flows`.
    MaxFlows,
    /// A new flow from an address with `limits.max_pending_per_ip` pending already.
    PendingLimit,
    /// A pending flow's datagram past `limits.max_pending_hello_bytes` for all of them.
    HelloBudget,
    /// A pending flow's datagram past what one may hold.
    PendingFull,
    /// A new flow on a listener that is closing (a drain, or removed by a reload).
    Closing,
    /// The socket towards the backend couldn't take it.
    SendFailed,
    /// The listener's socket reported an error.
    ReceiveError,
}

impl QuicDrop {
    /// Every reason, in label order.
    pub const ALL: [Self; 12] = [
        Self::UnknownVersion,
        Self::Malformed,
        Self::Undecryptable,
        Self::ProtocolViolation,
        Self::NoFlow,
        Self::MaxFlows,
        Self::PendingLimit,
        Self::HelloBudget,
        Self::PendingFull,
        Self::Closing,
        Self::SendFailed,
        Self::ReceiveError,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownVersion => "unknown_version",
            Self::Malformed => "malformed",
            Self::Undecryptable => "undecryptable",
            Self::ProtocolViolation => "protocol_violation",
            Self::NoFlow => "no_flow",
            Self::MaxFlows => "max_quic_flows",
            Self::PendingLimit => "max_pending_per_ip",
            Self::HelloBudget => "max_pending_hello_bytes",
            Self::PendingFull => "pending_full",
            Self::Closing => "closing",
            Self::SendFailed => "send_failed",
            Self::ReceiveError => "receive_error",
        }
    }

    /// The reason for a refused Initial.
    pub fn of(error: &crate::quic::QuicError) -> Self {
        use crate::quic::QuicError;
        match error {
            QuicError::UnknownVersion(_) => Self::UnknownVersion,
            QuicError::Undecryptable => Self::Undecryptable,
            QuicError::ProtocolViolation(_) => Self::ProtocolViolation,
            QuicError::Malformed(_) | QuicError::ClientClosed | QuicError::Hello(_) => {
                Self::Malformed
            }
        }
    }
}

impl ListenerMetrics {
    /// The series of the listener bound to `address`.
    pub fn new(address: &str) -> Self {
        Self {
            accepted: metrics::counter!(CONNECTIONS_ACCEPTED, "listener" => address.to_owned()),
            over_max_connections: metrics::counter!(CONNECTIONS_REJECTED, "reason" => "max_connections"),
            over_max_pending: metrics::counter!(CONNECTIONS_REJECTED, "reason" => "max_pending_per_ip"),
            accept_errors: metrics::counter!(ACCEPT_ERRORS, "listener" => address.to_owned()),
            quic_dropped: Default::default(),
            address: address.to_owned().into(),
        }
    }

    /// `sniroute_quic_dropped_total` for `reason`.
    pub fn quic_dropped(&self, reason: QuicDrop) -> &Counter {
        // ALL lists the reasons in declaration order.
        self.quic_dropped[reason as usize].get_or_init(|| {
            metrics::counter!(QUIC_DROPPED, "listener" => self.address.clone(), "reason" => reason.as_str())
        })
    }
}

/// One route's series: its label and where its handles are kept, in the route table. Registered
/// on first use, so a table of many routes costs a pointer per route until traffic arrives; the
/// data path then only increments handles.
#[derive(Debug, Clone, Copy)]
pub struct RouteMetrics<'a> {
    route: &'a str,
    /// Boxed: a route that never sees a connection holds a pointer, not the handles' room.
    handles: &'a OnceBox<RouteHandles>,
}

/// The registered handles of one route.
#[derive(Debug)]
pub struct RouteHandles {
    /// `sniroute_transfer_bytes_total{direction="to_backend"}`.
    pub to_backend: Counter,
    /// `sniroute_transfer_bytes_total{direction="to_client"}`.
    pub to_client: Counter,
    /// `sniroute_connection_duration_seconds`.
    pub duration: Histogram,
    /// `sniroute_backend_connect_duration_seconds`.
    pub connect_duration: Histogram,
    /// `sniroute_connections_closed_total`, by [`Outcome::index`]: registered with the handles
    /// for the outcomes that can end a connection of this kind ([`Outcome::before_route`] for
    /// `route="none"`, [`Outcome::after_route`] for a route), any other on first use.
    closed: Vec<OnceLock<Counter>>,
    /// `sniroute_quic_datagrams_total`, to the backend and to the client: registered when a
    /// QUIC flow of the route first ends.
    quic_datagrams: [OnceLock<Counter>; 2],
    route: metrics::SharedString,
}

impl<'a> RouteMetrics<'a> {
    /// The series of the route labelled `route`, their handles kept in `handles`.
    pub fn new(route: &'a str, handles: &'a OnceBox<RouteHandles>) -> Self {
        Self { route, handles }
    }

    /// The handles, registering them on first use.
    pub fn handles(&self) -> &'a RouteHandles {
        self.handles.get_or_init(|| {
            let route = metrics::SharedString::from(self.route.to_owned());
            let transfer = |direction: &'static str| {
                metrics::counter!(TRANSFER_BYTES, "route" => route.clone(), "direction" => direction)
            };
            let unmatched = self.route == NO_ROUTE;
            let handles = RouteHandles {
                to_backend: transfer("to_backend"),
                to_client: transfer("to_client"),
                duration: metrics::histogram!(CONNECTION_DURATION, "route" => route.clone()),
                connect_duration: metrics::histogram!(BACKEND_CONNECT_DURATION, "route" => route.clone()),
                closed: Outcome::ALL.iter().map(|_| OnceLock::new()).collect(),
                quic_datagrams: Default::default(),
                route,
            };
            for outcome in Outcome::ALL {
                let possible = match unmatched {
                    true => outcome.before_route(),
                    false => outcome.after_route(),
                };
                if possible {
                    handles.closed(outcome);
                }
            }
            Box::new(handles)
        })
    }
}

impl RouteHandles {
    /// `sniroute_quic_datagrams_total` to the backend, or to the client.
    pub fn quic_datagrams(&self, to_backend: bool) -> &Counter {
        let direction = match to_backend {
            true => "to_backend",
            false => "to_client",
        };
        self.quic_datagrams[usize::from(!to_backend)].get_or_init(|| {
            metrics::counter!(QUIC_DATAGRAMS, "route" => self.route.clone(), "direction" => direction)
        })
    }

    /// `sniroute_connections_closed_total` for `outcome`.
    pub fn closed(&self, outcome: Outcome) -> &Counter {
        self.closed[outcome.index()].get_or_init(|| {
            metrics::counter!(CONNECTIONS_CLOSED, "route" => self.route.clone(), "outcome" => outcome.as_str())
        })
    }
}

/// The series of one backend of one route, registered when it first sees a connection or a
/// check.
#[derive(Debug)]
pub struct MemberHandles {
    /// `sniroute_backend_up`.
    up: Gauge,
    /// `sniroute_backend_active_connections`.
    pub active: Gauge,
    /// `sniroute_backend_connect_attempts_total`, one per [`AttemptResult`].
    attempts: [Counter; 4],
    /// `sniroute_backend_connect_failures_total`.
    pub connect_failures: Counter,
    /// `sniroute_backend_health_checks_total{result="ok"}`, `{result="failed"}`.
    checks: [Counter; 2],
}

/// How a connect attempt to one backend went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// Connected (and, where it was waited for, the backend answered).
    Ok,
    /// Refused, reset, unreachable.
    Unreachable,
    /// No answer within the attempt's share of `timeouts.connect`.
    Timeout,
    /// Connected, then closed or reset before answering the hello.
    Reset,
}

impl MemberHandles {
    /// Registers the series of backend `backend` of route `route`.
    pub fn new(route: &str, backend: &str) -> Self {
        let labels = [("route", route.to_owned()), ("backend", backend.to_owned())];
        let attempt = |result: &'static str| metrics::counter!(BACKEND_CONNECT_ATTEMPTS, "route" => route.to_owned(), "backend" => backend.to_owned(), "result" => result);
        let check = |result: &'static str| metrics::counter!(BACKEND_HEALTH_CHECKS, "route" => route.to_owned(), "backend" => backend.to_owned(), "result" => result);
        Self {
            up: metrics::gauge!(BACKEND_UP, &labels),
            active: metrics::gauge!(BACKEND_ACTIVE, &labels),
            attempts: ["ok", "unreachable", "timeout", "reset"].map(attempt),
            connect_failures: metrics::counter!(BACKEND_CONNECT_FAILURES, &labels),
            checks: ["ok", "failed"].map(check),
        }
    }

    /// Sets `sniroute_backend_up`.
    pub fn set_up(&self, up: bool) {
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    /// Counts a connect attempt; a failed one in `sniroute_backend_connect_failures_total` too.
    pub fn attempt(&self, result: AttemptResult) {
        self.attempts[result as usize].increment(1);
        if result != AttemptResult::Ok {
            self.connect_failures.increment(1);
        }
    }

    /// Counts a health check.
    pub fn checked(&self, passed: bool) {
        self.checks[usize::from(!passed)].increment(1);
    }
}
