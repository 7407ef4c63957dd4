//! routes.toml: parsed into validated domain types, or refused with one located fault.
//!
//! [`load`] is the one way in: start-up, `check`, `explain` and the demo all use it, so a fault
//! reads the same everywhere. Parse, don't validate: what [`Config::from_raw`] returns has its
//! defaults applied and its invariants checked (names normalised, durations above zero, one
//! backend per route, no two routes that tie). It does no DNS and no I/O beyond reading the file.
//! SPEC "routes.toml".

mod error;
mod raw;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use error::ConfigError;
use error::Source;
use raw::{RawBackendTls, RawConfig, RawDefault, RawRoute, RawTerminate};
use rustls::pki_types::ServerName as ServerNameTls;
use toml::{Spanned, Value};

use crate::name::{NamePattern, ServerName};
use crate::proxy_protocol::{Cidr, Version};
use crate::terminate::{self, BackendTls, TerminateFiles};

/// Route name used for `[default]` in logs.
pub const DEFAULT_ROUTE_NAME: &str = "default";
/// Route label for connections that matched no route.
pub const NO_ROUTE_NAME: &str = "none";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sockets to accept TLS connections on, in file order.
    pub listeners: Vec<Listen>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Size and count limits.
    pub limits: Limits,
    /// Where Prometheus scrapes `GET /metrics`; `None`: no metrics.
    pub metrics: Option<Listen>,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// Where hellos with no name, or a name no route matches, go; `None`: they get an
    /// `unrecognized_name` alert.
    pub default: Option<Route>,
}

/// One `[[listen]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Address and port to bind.
    pub address: SocketAddr,
    /// Where `address` is written in routes.toml, to name it if it can't be bound.
    pub position: (usize, usize),
    /// Sources whose connections start with a PROXY protocol header (required from them, refused
    /// from anyone else); empty: no header is accepted.
    pub proxy_trusted: Vec<Cidr>,
    /// `SO_REUSEPORT`: several sniroute processes may listen on this address and the kernel
    /// spreads connections across them. Default false.
    pub reuse_port: bool,
}

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole ClientHello must arrive within this, from accept (from the end of the PROXY
    /// header, where one is expected). Default 10 s; past it the connection is closed (outcome
    /// `hello_timeout`).
    pub client_hello: Duration,
    /// Backend TCP connect, DNS included. Default 5 s; past it the client gets an
    /// `internal_error` alert (outcome `connect_timeout`).
    pub connect: Duration,
    /// No byte in either direction for this long closes a spliced connection. Default 1 h.
    pub idle: Duration,
    /// On shutdown, how long spliced connections may go on. Default 30 s.
    pub drain: Duration,
    /// From a trusted source, the PROXY protocol header must arrive within this, from accept.
    /// Default 5 s; past it the connection is closed (outcome `bad_proxy_header`).
    pub proxy_header: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_hello: Duration::from_secs(10),
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(3600),
            drain: Duration::from_secs(30),
            proxy_header: Duration::from_secs(5),
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
    /// Connections from one client address still sending their hello, at most; 0 for no limit.
    /// Default 64; past it new connections from that address are closed at once (outcome
    /// `pending_limit`) while other addresses are served.
    pub max_pending_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_client_hello: 65_536,
            max_pending_per_ip: 64,
        }
    }
}

/// The bounds `[limits]` values must fall within.
const MAX_CONNECTIONS: Range<i64> = 1..10_000_001;
const MAX_CLIENT_HELLO: Range<i64> = 512..16_777_217;
const MAX_PENDING_PER_IP: Range<i64> = 0..1_000_001;

/// One `[[route]]` (or `[default]`, with no `sni`).
#[derive(Debug, Clone)]
pub struct Route {
    /// Label in logs: `name`, or the sni pattern plus `/alpn,list` when there is one.
    pub name: String,
    /// The names this route matches; `None` for `[default]`.
    pub sni: Option<NamePattern>,
    /// ALPN protocols, any of which the client must offer for the route to match; empty: no
    /// condition.
    pub alpn: Vec<Box<[u8]>>,
    /// Where the connection goes.
    pub backend: Backend,
    /// The PROXY protocol header sent to the backend before the client's bytes, if any.
    pub proxy_protocol: Option<Version>,
    /// `None`: passthrough (the hello and everything after it go to the backend unchanged);
    /// otherwise sniroute completes the handshake itself.
    pub terminate: Option<Terminate>,
    /// Line of the route's table in routes.toml, for `check` and `explain`.
    pub line: usize,
}

/// A terminate route's TLS: loaded when the config is, shared by every connection it serves
/// (a reload loads the files again; open connections keep what they started with).
#[derive(Debug, Clone)]
pub struct Terminate {
    /// The files it was made from, paths resolved against routes.toml's directory.
    pub files: TerminateFiles,
    /// The server config: certificate, key, ALPN, client verifier.
    pub server: Arc<rustls::ServerConfig>,
    /// `backend_tls`: re-encrypt to the backend; `None`: the backend receives plaintext.
    pub backend_tls: Option<BackendTls>,
}

/// A backend address: an IP and port, or a host name resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A host name (resolved on each connect) and port.
    Host(ServerName, u16),
}

impl Backend {
    fn parse(raw: &str) -> Result<Self, String> {
        if let Ok(addr) = raw.parse() {
            return Ok(Self::Addr(addr));
        }
        let expected = || format!("expected host:port, found \"{}\"", raw.escape_debug());
        let (host, port) = raw.rsplit_once(':').ok_or_else(expected)?;
        let port: u16 = port.parse().map_err(|_| expected())?;
        if port == 0 || host.contains(':') {
            return Err(expected());
        }
        let host = ServerName::parse(host.as_bytes())
            .map_err(|error| format!("{}: {error}", expected()))?;
        Ok(Self::Host(host, port))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => write!(formatter, "{addr}"),
            Self::Host(host, port) => write!(formatter, "{host}:{port}"),
        }
    }
}

/// Reads, parses and validates the config at `path`.
///
/// # Errors
/// The first fault in file order, naming `path` and, where it has one, the line and key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::file(path, format!("cannot read: {error}")))?;
    Config::parse(path, &text)
}

impl Config {
    /// Parses and validates `text`; `file` is only used to name it in errors.
    ///
    /// # Errors
    /// As [`load`].
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let line_starts = error::line_starts(text);
        let source = Source {
            file,
            text,
            line_starts: &line_starts,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|error| source.toml_error(&error))?;
        Self::from_raw(source, raw)
    }

    fn from_raw(source: Source<'_>, raw: RawConfig) -> Result<Self, ConfigError> {
        let mut listeners: Vec<Listen> = Vec::new();
        if raw.listen.is_empty() {
            return Err(source.error(0..0, "listen", "expected at least one [[listen]] table"));
        }
        for (index, listen) in raw.listen.iter().enumerate() {
            let key = format!("listen[{index}]");
            let listen_table = listen.get_ref();
            if let Some(protocol) = &listen_table.protocol {
                match protocol.get_ref().as_str() {
                    "tcp" => {}
                    "quic" => {
                        return Err(source.at(
                            protocol,
                            format!("{key}.protocol"),
                            "quic is not supported yet",
                        ))
                    }
                    other => {
                        return Err(source.at(
                            protocol,
                            format!("{key}.protocol"),
                            format!("expected \"tcp\", found \"{}\"", other.escape_debug()),
                        ))
                    }
                }
            }
            let address = &listen_table.address;
            let mut listen = socket_address(source, address, &format!("{key}.address"))?;
            let addr = listen.address;
            listen.reuse_port = listen_table.reuse_port.unwrap_or(false);
            if let Some(proxy) = &listen_table.proxy_protocol {
                for (position, range) in proxy.trusted.iter().enumerate() {
                    let cidr = Cidr::parse(range.get_ref()).map_err(|message| {
                        source.at(
                            range,
                            format!("{key}.proxy_protocol.trusted[{position}]"),
                            message,
                        )
                    })?;
                    listen.proxy_trusted.push(cidr);
                }
            }
            if let Some(earlier) = listeners
                .iter()
                .position(|other: &Listen| other.address == addr && addr.port() != 0)
            {
                return Err(source.at(
                    address,
                    format!("{key}.address"),
                    format!("same address as listen[{earlier}]"),
                ));
            }
            listeners.push(listen);
        }

        let metrics = raw
            .metrics
            .as_ref()
            .map(|metrics| socket_address(source, &metrics.address, "metrics.address"))
            .transpose()?;
        let timeouts = timeouts(source, &raw.timeouts)?;
        let limits = limits(source, &raw.limits)?;

        let mut routes = Vec::with_capacity(raw.route.len());
        for (index, route) in raw.route.iter().enumerate() {
            routes.push(route_from_raw(source, index, route)?);
        }
        check_routes(source, &raw.route, &routes)?;

        let default = raw
            .default
            .as_ref()
            .map(|default| default_from_raw(source, default))
            .transpose()?;
        Ok(Self {
            listeners,
            timeouts,
            limits,
            metrics,
            routes,
            default,
        })
    }
}

/// An IP address and port, as `listen.address` and `metrics.address` take them.
fn socket_address(
    source: Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<Listen, ConfigError> {
    let address = value.get_ref().parse().map_err(|_| {
        source.at(
            value,
            key,
            format!(
                "expected an address like 127.0.0.1:8443 or [::1]:8443, found \"{}\"",
                value.get_ref().escape_debug()
            ),
        )
    })?;
    Ok(Listen {
        address,
        position: source.line_column(value.span().start),
        proxy_trusted: Vec::new(),
        reuse_port: false,
    })
}

fn unsupported(
    source: Source<'_>,
    table: &str,
    key: &str,
    value: &Option<Spanned<Value>>,
) -> Result<(), ConfigError> {
    match value {
        Some(value) => Err(source.at(value, format!("{table}.{key}"), "not supported yet")),
        None => Ok(()),
    }
}

fn timeouts(source: Source<'_>, raw: &raw::RawTimeouts) -> Result<Timeouts, ConfigError> {
    let defaults = Timeouts::default();
    let duration = |value: &Option<Spanned<String>>, key: &str, default: Duration| match value {
        None => Ok(default),
        Some(value) => match humantime::parse_duration(value.get_ref()) {
            Ok(duration) if !duration.is_zero() => Ok(duration),
            Ok(_) => Err(source.at(
                value,
                format!("timeouts.{key}"),
                "expected a duration above zero",
            )),
            Err(_) => Err(source.at(
                value,
                format!("timeouts.{key}"),
                format!(
                    "expected a duration like \"10s\" or \"500ms\", found \"{}\"",
                    value.get_ref().escape_debug()
                ),
            )),
        },
    };
    Ok(Timeouts {
        client_hello: duration(&raw.client_hello, "client_hello", defaults.client_hello)?,
        connect: duration(&raw.connect, "connect", defaults.connect)?,
        idle: duration(&raw.idle, "idle", defaults.idle)?,
        drain: duration(&raw.drain, "drain", defaults.drain)?,
        proxy_header: duration(&raw.proxy_header, "proxy_header", defaults.proxy_header)?,
    })
}

fn limits(source: Source<'_>, raw: &raw::RawLimits) -> Result<Limits, ConfigError> {
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
    })
}

/// The keys a route and `[default]` share: where the traffic goes.
struct RawTargetRef<'a> {
    backend: &'a Option<Spanned<String>>,
    proxy_protocol: &'a Option<Spanned<String>>,
    terminate: &'a Option<Spanned<RawTerminate>>,
    backend_tls: &'a Option<Spanned<RawBackendTls>>,
    unsupported: [(&'static str, &'a Option<Spanned<Value>>); 2],
}

impl<'a> From<&'a RawRoute> for RawTargetRef<'a> {
    fn from(raw: &'a RawRoute) -> Self {
        Self {
            backend: &raw.backend,
            proxy_protocol: &raw.proxy_protocol,
            terminate: &raw.terminate,
            backend_tls: &raw.backend_tls,
            unsupported: [("backends", &raw.backends), ("balance", &raw.balance)],
        }
    }
}

impl<'a> From<&'a RawDefault> for RawTargetRef<'a> {
    fn from(raw: &'a RawDefault) -> Self {
        Self {
            backend: &raw.backend,
            proxy_protocol: &raw.proxy_protocol,
            terminate: &raw.terminate,
            backend_tls: &raw.backend_tls,
            unsupported: [("backends", &raw.backends), ("balance", &raw.balance)],
        }
    }
}

/// Where a route (or `[default]`) sends its traffic, and how.
struct Target {
    backend: Backend,
    proxy_protocol: Option<Version>,
    terminate: Option<Terminate>,
}

/// Where a route (or `[default]`) sends its traffic, the PROXY header it sends first, and its
/// TLS when it terminates.
fn target(
    source: Source<'_>,
    key: &str,
    table: Range<usize>,
    target: RawTargetRef<'_>,
) -> Result<Target, ConfigError> {
    for (name, value) in target.unsupported {
        unsupported(source, key, name, value)?;
    }
    let backend = target
        .backend
        .as_ref()
        .ok_or_else(|| source.error(table, key, "missing key `backend`"))?;
    let backend = Backend::parse(backend.get_ref())
        .map_err(|message| source.at(backend, format!("{key}.backend"), message))?;
    let proxy_protocol = match target.proxy_protocol {
        None => None,
        Some(version) => match version.get_ref().as_str() {
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            other => {
                return Err(source.at(
                    version,
                    format!("{key}.proxy_protocol"),
                    format!(
                        "expected \"v1\" or \"v2\", found \"{}\"",
                        other.escape_debug()
                    ),
                ))
            }
        },
    };
    let terminate = match (target.terminate, target.backend_tls) {
        (None, None) => None,
        (None, Some(backend_tls)) => {
            return Err(source.at(
                backend_tls,
                format!("{key}.backend_tls"),
                "needs `terminate` (passthrough traffic stays the client's TLS end to end)",
            ))
        }
        (Some(raw), backend_tls) => Some(terminate(
            source,
            key,
            raw.get_ref(),
            backend_tls.as_ref(),
            &backend,
        )?),
    };
    Ok(Target {
        backend,
        proxy_protocol,
        terminate,
    })
}

/// Loads a terminate route's certificate, key and CAs and builds its TLS configs. Relative paths
/// are taken from routes.toml's directory. A PEM fault is reported at the key naming the file,
/// and names the file too.
fn terminate(
    source: Source<'_>,
    route: &str,
    raw: &RawTerminate,
    backend_tls: Option<&Spanned<RawBackendTls>>,
    backend: &Backend,
) -> Result<Terminate, ConfigError> {
    let table = format!("{route}.terminate");
    let files = TerminateFiles {
        cert: source.relative_path(&raw.cert),
        key: source.relative_path(&raw.key),
        client_ca: raw.client_ca.as_ref().map(|ca| source.relative_path(ca)),
        alpn: match &raw.alpn {
            Some(list) => alpn_list(source, &format!("{table}.alpn"), list)?,
            None => Vec::new(),
        },
    };
    let mut named = vec![("cert", &raw.cert), ("key", &raw.key)];
    named.extend(raw.client_ca.as_ref().map(|ca| ("client_ca", ca)));
    let server = terminate::server_config(&files)
        .map_err(|error| source.file_fault(error, &table, &named))?;
    let backend_tls = backend_tls
        .map(|raw_tls| upstream_tls(source, route, raw_tls, backend, &files.alpn))
        .transpose()?;
    Ok(Terminate {
        files,
        server,
        backend_tls,
    })
}

/// `backend_tls`: whom the backend's certificate must chain to, the name it must carry (default:
/// the backend's host or IP), and with `alpn_to_backend` the protocols `offered` to clients.
fn upstream_tls(
    source: Source<'_>,
    route: &str,
    spanned: &Spanned<RawBackendTls>,
    backend: &Backend,
    offered: &[Box<[u8]>],
) -> Result<BackendTls, ConfigError> {
    let raw = spanned.get_ref();
    let table = format!("{route}.backend_tls");
    let server_name = match (&raw.server_name, backend) {
        (Some(name), _) => ServerNameTls::try_from(name.get_ref().clone()).map_err(|_| {
            source.at(
                name,
                format!("{table}.server_name"),
                format!(
                    "expected a DNS name or IP address, found \"{}\"",
                    name.get_ref().escape_debug()
                ),
            )
        })?,
        (None, Backend::Addr(addr)) => ServerNameTls::from(addr.ip()),
        (None, Backend::Host(host, _)) => ServerNameTls::try_from(host.as_str().to_owned())
            .map_err(|_| source.at(spanned, table.clone(), "expected a `server_name`"))?,
    };
    let alpn = match raw.alpn_to_backend {
        Some(true) if offered.is_empty() => {
            return Err(source.at(
                spanned,
                format!("{table}.alpn_to_backend"),
                "needs `terminate.alpn`",
            ))
        }
        Some(true) => offered,
        _ => &[],
    };
    terminate::backend_tls(&source.relative_path(&raw.ca), server_name, alpn)
        .map_err(|error| source.file_fault(error, &table, &[("ca", &raw.ca)]))
}

/// A non-empty list of ALPN protocol names, each 1 to 255 bytes.
fn alpn_list(
    source: Source<'_>,
    key: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<Box<[u8]>>, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(source.at(list, key, "expected at least one protocol"));
    }
    list.get_ref()
        .iter()
        .enumerate()
        .map(|(position, protocol)| {
            let bytes = protocol.get_ref().as_bytes();
            if bytes.is_empty() || bytes.len() > 255 {
                return Err(source.at(
                    protocol,
                    format!("{key}[{position}]"),
                    "expected a protocol name of 1 to 255 bytes",
                ));
            }
            Ok(Box::from(bytes))
        })
        .collect()
}

fn route_from_raw(
    source: Source<'_>,
    index: usize,
    spanned: &Spanned<RawRoute>,
) -> Result<Route, ConfigError> {
    let key = format!("route[{index}]");
    let raw = spanned.get_ref();
    let sni = NamePattern::parse(raw.sni.get_ref()).map_err(|error| {
        source.at(
            &raw.sni,
            format!("{key}.sni"),
            format!("\"{}\": {error}", raw.sni.get_ref().escape_debug()),
        )
    })?;
    let alpn = match &raw.alpn {
        Some(list) => alpn_list(source, &format!("{key}.alpn"), list)?,
        None => Vec::new(),
    };
    let target = target(source, &key, spanned.span(), raw.into())?;
    let name = match &raw.name {
        Some(name) => {
            let text = name.get_ref();
            if text.is_empty() || text.chars().any(char::is_control) {
                return Err(source.at(
                    name,
                    format!("{key}.name"),
                    "expected a non-empty name without control characters",
                ));
            }
            if text == DEFAULT_ROUTE_NAME || text == NO_ROUTE_NAME {
                return Err(source.at(
                    name,
                    format!("{key}.name"),
                    format!("\"{text}\" is reserved"),
                ));
            }
            text.clone()
        }
        None if alpn.is_empty() => sni.to_string(),
        None => {
            let list: Vec<&str> = raw
                .alpn
                .iter()
                .flat_map(|list| list.get_ref().iter().map(|p| p.get_ref().as_str()))
                .collect();
            format!("{sni}/{}", list.join(","))
        }
    };
    Ok(Route {
        name,
        sni: Some(sni),
        alpn,
        backend: target.backend,
        proxy_protocol: target.proxy_protocol,
        terminate: target.terminate,
        line: source.line_column(spanned.span().start).0,
    })
}

fn default_from_raw(
    source: Source<'_>,
    spanned: &Spanned<RawDefault>,
) -> Result<Route, ConfigError> {
    let target = target(source, "default", spanned.span(), spanned.get_ref().into())?;
    Ok(Route {
        name: DEFAULT_ROUTE_NAME.to_owned(),
        sni: None,
        alpn: Vec::new(),
        backend: target.backend,
        proxy_protocol: target.proxy_protocol,
        terminate: target.terminate,
        line: source.line_column(spanned.span().start).0,
    })
}

/// Refuses two routes that could match the same ClientHello equally well (same pattern, and
/// either both without `alpn` or with a protocol in common), and two routes with one name.
/// Reported at the later route, naming the earlier.
fn check_routes(
    source: Source<'_>,
    raw: &[Spanned<RawRoute>],
    routes: &[Route],
) -> Result<(), ConfigError> {
    let mut by_pattern: HashMap<&NamePattern, Vec<usize>> = HashMap::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (index, route) in routes.iter().enumerate() {
        let Some(pattern) = &route.sni else { continue };
        let same_pattern = by_pattern.entry(pattern).or_default();
        for &earlier in same_pattern.iter() {
            let other = &routes[earlier];
            let tie = match (route.alpn.is_empty(), other.alpn.is_empty()) {
                (true, true) => Some("same name as"),
                (false, false) if route.alpn.iter().any(|p| other.alpn.contains(p)) => {
                    Some("same name and overlapping alpn as")
                }
                _ => None,
            };
            if let Some(what) = tie {
                return Err(source.at(
                    &raw[index].get_ref().sni,
                    format!("route[{index}].sni"),
                    format!("{what} route[{earlier}] (line {})", other.line),
                ));
            }
        }
        same_pattern.push(index);
        if let Some(earlier) = by_name.insert(&route.name, index) {
            let at = raw[index]
                .get_ref()
                .name
                .as_ref()
                .map_or(raw[index].get_ref().sni.span(), Spanned::span);
            return Err(source.error(
                at,
                format!("route[{index}].name"),
                format!(
                    "same name \"{}\" as route[{earlier}] (line {})",
                    route.name, routes[earlier].line
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
