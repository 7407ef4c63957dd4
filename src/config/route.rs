//! `[[route]]` and `[default]`: what a ClientHello is matched on (name, ALPN) and the
//! [`Target`] it is sent to (pool of backends, PROXY header, TLS mode). The match part stays in the
//! route; the target is shared behind an `Arc`, so it can grow a pool and state that outlive a
//! reload. Overlapping routes are refused here. SPEC "routes.toml", "Matching".

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName as ServerNameTls;
use toml::Spanned;

use super::error::{quoted, ConfigError, Source};
use super::pool::{self, Backend, Http, Pool, RawPool};
use super::raw::{RawBackendTls, RawDefault, RawRoute, RawTerminate};
use crate::name::NamePattern;
use crate::proxy_protocol::Version;
use crate::terminate::{self, BackendTls, TerminateFiles};

/// Route name used for `[default]` in logs.
pub const DEFAULT_ROUTE_NAME: &str = "default";
/// Route label for connections that matched no route.
pub const NO_ROUTE_NAME: &str = "none";

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
    /// Where a matched connection goes, and how.
    pub target: Arc<Target>,
    /// Line of the route's table in its file, for `check` and `explain`.
    pub line: usize,
    /// The tenant file the route is in; `None`: routes.toml itself.
    pub file: Option<Arc<Path>>,
    /// Where its keys are, for the faults found once every route is read.
    pub written: Written,
}

/// Where a route's keys are written: the raw tables are dropped file by file as they are read,
/// and an overlap is only found once every route is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Its index among its file's routes.
    pub index: usize,
    /// Line and column of its `sni` value.
    pub sni: (usize, usize),
    /// Line and column of its `name` value; its `sni`'s when it has none.
    pub name: (usize, usize),
}

impl Route {
    /// Where the route is written: `line 12`, or `routes.d/a.toml line 3` for a tenant file's.
    pub fn place(&self) -> String {
        match &self.file {
            None => format!("line {}", self.line),
            Some(file) => format!("{} line {}", file.display(), self.line),
        }
    }
}

/// Where a route (or `[default]`) sends its traffic, and how: what the data path needs once a
/// route is chosen.
#[derive(Debug)]
pub struct Target {
    /// The backends, their balance and their health checks.
    pub pool: Pool,
    /// On `http` listeners: redirect, or forward to these backends.
    pub http: Http,
    /// The PROXY protocol header sent to the backend before the client's bytes, if any.
    pub proxy_protocol: Option<Version>,
    /// `None`: passthrough (the hello and everything after it go to the backend unchanged);
    /// otherwise sniroute completes the handshake itself.
    pub terminate: Option<Terminate>,
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

/// The keys a route and `[default]` share: where the traffic goes.
struct RawTargetRef<'a> {
    pool: RawPool<'a>,
    http: &'a Option<Spanned<String>>,
    http_backend: &'a Option<Spanned<String>>,
    proxy_protocol: &'a Option<Spanned<String>>,
    terminate: &'a Option<Spanned<RawTerminate>>,
    backend_tls: &'a Option<Spanned<RawBackendTls>>,
}

impl<'a> From<&'a RawRoute> for RawTargetRef<'a> {
    fn from(raw: &'a RawRoute) -> Self {
        Self {
            pool: RawPool {
                backend: &raw.backend,
                backends: &raw.backends,
                balance: &raw.balance,
                health: &raw.health,
            },
            http: &raw.http,
            http_backend: &raw.http_backend,
            proxy_protocol: &raw.proxy_protocol,
            terminate: &raw.terminate,
            backend_tls: &raw.backend_tls,
        }
    }
}

impl<'a> From<&'a RawDefault> for RawTargetRef<'a> {
    fn from(raw: &'a RawDefault) -> Self {
        Self {
            pool: RawPool {
                backend: &raw.backend,
                backends: &raw.backends,
                balance: &raw.balance,
                health: &raw.health,
            },
            http: &raw.http,
            http_backend: &raw.http_backend,
            proxy_protocol: &raw.proxy_protocol,
            terminate: &raw.terminate,
            backend_tls: &raw.backend_tls,
        }
    }
}

/// Targets by what their keys say (see [`Reading::key`]): a million routes to a thousand
/// backends hold a thousand targets.
pub(super) type Targets = HashMap<Box<str>, Arc<Target>>;

/// What a file's routes are read with: the targets read so far, each once, and the quic
/// listener, if the config has one.
#[derive(Debug, Default, Clone)]
pub(super) struct Reading {
    /// The targets read so far.
    pub targets: Targets,
    /// The index of the first quic listener: terminate routes are refused beside one.
    pub quic: Option<usize>,
}

impl Reading {
    /// The target `raw` writes: one read before from the same keys, or read now.
    fn target(
        &mut self,
        source: Source<'_>,
        key: &str,
        table: Range<usize>,
        raw: RawTargetRef<'_>,
        sni: Option<&NamePattern>,
    ) -> Result<Arc<Target>, ConfigError> {
        let Some(shared) = Self::key(source, &raw, sni) else {
            return target(source, key, table, raw, sni, self.quic);
        };
        if let Some(known) = self.targets.get(shared.as_str()) {
            return Ok(known.clone());
        }
        let target = target(source, key, table, raw, sni, self.quic)?;
        self.targets.insert(shared.into(), target.clone());
        Ok(target)
    }

    /// What makes two routes' targets the same: every key of it, as written (a CA's path as
    /// found), and the route's name where a TLS check sends it. `None` for a terminate route, which reads files
    /// (shared by no other route).
    fn key(
        source: Source<'_>,
        raw: &RawTargetRef<'_>,
        sni: Option<&NamePattern>,
    ) -> Option<String> {
        if raw.terminate.is_some() || raw.backend_tls.is_some() {
            return None;
        }
        fn text(value: &Option<Spanned<String>>) -> Option<&str> {
            value.as_ref().map(|value| value.get_ref().as_str())
        }
        let mut key = String::with_capacity(64);
        put(&mut key, text(raw.pool.backend));
        let backends = raw.pool.backends.as_ref().map(|list| {
            let list: Vec<&toml::Value> = list.get_ref().iter().map(Spanned::get_ref).collect();
            format!("{list:?}")
        });
        put(&mut key, backends.as_deref());
        put(&mut key, text(raw.pool.balance));
        put(&mut key, text(raw.http));
        put(&mut key, text(raw.http_backend));
        put(&mut key, text(raw.proxy_protocol));
        if let Some(health) = raw.pool.health {
            let health = health.get_ref();
            let number = |value: &Option<Spanned<i64>>| value.as_ref().map(|v| *v.get_ref());
            let (rise, fall) = (number(&health.rise), number(&health.fall));
            put(&mut key, Some(&format!("{rise:?} {fall:?}")));
            for value in [
                &health.check,
                &health.interval,
                &health.timeout,
                &health.server_name,
            ] {
                put(&mut key, text(value));
            }
            // As found: a relative path is taken from the directory of the file that names it.
            let ca = health.ca.as_ref().map(|ca| source.relative_path(ca));
            put(
                &mut key,
                ca.as_ref().map(|ca| ca.to_string_lossy()).as_deref(),
            );
            // A TLS check without `server_name` offers the route's own name.
            if text(&health.check) == Some("tls") && health.server_name.is_none() {
                put(&mut key, sni.map(ToString::to_string).as_deref());
            }
        }
        Some(key)
    }
}

/// Appends `value`, or a marker for none, to a target's key: its length first, so that no two
/// sequences of values give one key.
fn put(key: &mut String, value: Option<&str>) {
    match value {
        Some(value) => {
            key.push_str(itoa::Buffer::new().format(value.len()));
            key.push(':');
            key.push_str(value);
        }
        None => key.push('-'),
    }
}

/// Where a route (or `[default]`) sends its traffic, the PROXY header it sends first, and its
/// TLS when it terminates (refused where listener `quic` is a quic listener).
fn target(
    source: Source<'_>,
    key: &str,
    table: Range<usize>,
    target: RawTargetRef<'_>,
    sni: Option<&NamePattern>,
    quic: Option<usize>,
) -> Result<Arc<Target>, ConfigError> {
    if let (Some(terminate), Some(quic)) = (target.terminate, quic) {
        return Err(source.at(
            terminate,
            format!("{key}.terminate"),
            format!(
                "listen[{quic}] is a quic listener, and QUIC is passthrough only: \
                 serve this name from a config without one"
            ),
        ));
    }
    let pool = pool::pool(source, key, table, target.pool, sni)?;
    let http = pool::http(source, key, target.http, target.http_backend, &pool)?;
    let proxy_protocol = match target.proxy_protocol {
        None => None,
        Some(version) => match version.get_ref().as_str() {
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            other => {
                return Err(source.at(
                    version,
                    format!("{key}.proxy_protocol"),
                    format!("expected \"v1\" or \"v2\", found {}", quoted(other)),
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
            &pool,
        )?),
    };
    Ok(Arc::new(Target {
        pool,
        http,
        proxy_protocol,
        terminate,
    }))
}

/// Loads a terminate route's certificate, key and CAs and builds its TLS configs. Relative paths
/// are taken from routes.toml's directory. A PEM fault is reported at the key naming the file,
/// and names the file too.
fn terminate(
    source: Source<'_>,
    route: &str,
    raw: &RawTerminate,
    backend_tls: Option<&Spanned<RawBackendTls>>,
    pool: &Pool,
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
        .map(|raw_tls| upstream_tls(source, route, raw_tls, pool, &files.alpn))
        .transpose()?;
    Ok(Terminate {
        files,
        server,
        backend_tls,
    })
}

/// `backend_tls`: whom the backends' certificates must chain to, the name they must carry
/// (default: the backend's host or IP; a pool of several needs it named unless its members share
/// one host), and with `alpn_to_backend` the protocols `offered` to clients.
fn upstream_tls(
    source: Source<'_>,
    route: &str,
    spanned: &Spanned<RawBackendTls>,
    pool: &Pool,
    offered: &[Box<[u8]>],
) -> Result<BackendTls, ConfigError> {
    let raw = spanned.get_ref();
    let table = format!("{route}.backend_tls");
    let backend = &pool.members[0].backend;
    let shared_host = pool
        .members
        .iter()
        .all(|member| match (&member.backend, backend) {
            (Backend::Host(host, _), Backend::Host(first, _)) => host == first,
            _ => false,
        });
    if raw.server_name.is_none() && pool.members.len() > 1 && !shared_host {
        return Err(source.at(
            spanned,
            format!("{table}.server_name"),
            "needed for a pool whose backends don't share one host name",
        ));
    }
    let server_name = match (&raw.server_name, backend) {
        (Some(name), _) => ServerNameTls::try_from(name.get_ref().clone()).map_err(|_| {
            source.at(
                name,
                format!("{table}.server_name"),
                format!(
                    "expected a DNS name or IP address, found {}",
                    quoted(name.get_ref())
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

pub(super) fn route_from_raw(
    source: Source<'_>,
    index: usize,
    spanned: &Spanned<RawRoute>,
    file: Option<&Arc<Path>>,
    reading: &mut Reading,
) -> Result<Route, ConfigError> {
    // Without `format!`: this runs once per route of a million.
    let key = ["route[", itoa::Buffer::new().format(index), "]"].concat();
    let raw = spanned.get_ref();
    if crate::name::is_ip_literal(raw.sni.get_ref().as_bytes()) {
        return Err(source.at(
            &raw.sni,
            format!("{key}.sni"),
            "an IP address is not a server name: clients that connect by IP send none (route them with [default])",
        ));
    }
    let sni = NamePattern::parse(raw.sni.get_ref()).map_err(|error| {
        source.at(
            &raw.sni,
            format!("{key}.sni"),
            format!("{}: {error}", quoted(raw.sni.get_ref())),
        )
    })?;
    let alpn = match &raw.alpn {
        Some(list) => alpn_list(source, &format!("{key}.alpn"), list)?,
        None => Vec::new(),
    };
    let target = reading.target(source, &key, spanned.span(), raw.into(), Some(&sni))?;
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
    let sni_at = source.line_column(raw.sni.span().start);
    Ok(Route {
        name,
        sni: Some(sni),
        alpn,
        target,
        line: source.line_column(spanned.span().start).0,
        file: file.cloned(),
        written: Written {
            index,
            sni: sni_at,
            name: raw
                .name
                .as_ref()
                .map_or(sni_at, |name| source.line_column(name.span().start)),
        },
    })
}

pub(super) fn default_from_raw(
    source: Source<'_>,
    spanned: &Spanned<RawDefault>,
    reading: &Reading,
) -> Result<Route, ConfigError> {
    // Its own, not shared: a fault found later in a route's target is reported at that route.
    let target = target(
        source,
        "default",
        spanned.span(),
        spanned.get_ref().into(),
        None,
        reading.quic,
    )?;
    Ok(Route {
        name: DEFAULT_ROUTE_NAME.to_owned(),
        sni: None,
        alpn: Vec::new(),
        target,
        line: source.line_column(spanned.span().start).0,
        file: None,
        written: Written::default(),
    })
}

/// Refuses two routes that could match the same ClientHello equally well (same pattern, and
/// either both without `alpn` or with a protocol in common), and two routes with one name,
/// across routes.toml (`main`) and its tenant files. Reported at the later route, naming the
/// earlier; the first fault in file order. One hash lookup per route, on every core: each
/// thread takes the patterns and names of one share of the hashes. Also refuses routes whose
/// names and patterns pass what the route table's offsets reach (4 GiB).
pub(super) fn check_routes(main: &Path, routes: &[Route]) -> Result<(), ConfigError> {
    // Where the route table's text would pass 4 GiB, if anywhere.
    let mut text = 0;
    let too_much = routes.iter().position(|route| {
        text += route.name.len()
            + match &route.sni {
                Some(NamePattern::Exact(name)) => name.as_str().len(),
                Some(NamePattern::Wildcard(suffix)) => suffix.len() + 1,
                None => 0,
            };
        text > u32::MAX as usize
    });
    let too_much = too_much.map(|at| {
        let route = &routes[at];
        let file = route.file.as_deref().unwrap_or(main);
        let key = format!("route[{}].name", route.written.index);
        let message = "the routes' names and patterns pass 4 GiB in all";
        (
            at,
            0,
            ConfigError::at(file, route.written.name, key, message),
        )
    });
    let shares = match routes.len() {
        0..10_000 => 1,
        _ => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(8),
    };
    let faults = super::on_threads(shares, |share| check_share(main, routes, share, shares));
    // The first in file order; at one route, in the order a route is checked.
    match faults
        .into_iter()
        .flatten()
        .chain(too_much)
        .min_by_key(|fault| (fault.0, fault.1))
    {
        Some((_, _, error)) => Err(error),
        None => Ok(()),
    }
}

/// Whether two routes of one pattern with these `alpn` lists could match one hello equally well,
/// and how it is said: both without a list, or lists with a protocol in common.
pub fn tie(one: &[Box<[u8]>], other: &[Box<[u8]>]) -> Option<&'static str> {
    match (one.is_empty(), other.is_empty()) {
        (true, true) => Some("same name as"),
        (false, false) if one.iter().any(|protocol| other.contains(protocol)) => {
            Some("same name and overlapping alpn as")
        }
        _ => None,
    }
}

/// A fault found at a route: its number, what was checked (0: the text's size, 1: its pattern,
/// 2: its name), and the error.
type Fault = (usize, u8, ConfigError);

/// [`check_routes`]' checks of the patterns and names whose spread (FNV-1a) falls in `share`
/// of `shares`; the first fault, in file order.
fn check_share(main: &Path, routes: &[Route], share: usize, shares: usize) -> Option<Fault> {
    let mine = |text: &str| {
        let spread = (text.bytes()).fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        spread as usize % shares == share
    };
    let capacity = routes.len() / shares + 1;
    // The first route of each pattern, and after each route the next with its pattern.
    let mut by_pattern: HashMap<&NamePattern, usize> = HashMap::with_capacity(capacity);
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(capacity);
    for (at, route) in routes.iter().enumerate() {
        let Some(pattern) = &route.sni else { continue };
        let file = route.file.as_deref().unwrap_or(main);
        let earlier_is = |earlier: usize| {
            let other = &routes[earlier];
            let index = other.written.index;
            match other.file == route.file {
                true => format!("route[{index}] (line {})", other.line),
                false => format!(
                    "route[{index}] ({} line {})",
                    other.file.as_deref().unwrap_or(main).display(),
                    other.line
                ),
            }
        };
        let key = |what: &str| format!("route[{}].{what}", route.written.index);
        let pattern_text = match pattern {
            NamePattern::Exact(name) => name.as_str(),
            NamePattern::Wildcard(suffix) => suffix,
        };
        if mine(pattern_text) {
            let first = *by_pattern.entry(pattern).or_insert(at);
            let same_pattern =
                std::iter::successors(Some(first), |earlier| next.get(earlier).copied());
            let mut last = first;
            for earlier in same_pattern.take_while(|&earlier| earlier != at) {
                last = earlier;
                let other = &routes[earlier];
                if let Some(what) = tie(&route.alpn, &other.alpn) {
                    let message = format!("{what} {}", earlier_is(earlier));
                    let error = ConfigError::at(file, route.written.sni, key("sni"), message);
                    return Some((at, 1, error));
                }
            }
            if last != at {
                next.insert(last, at);
            }
        }
        if mine(&route.name) {
            if let Some(earlier) = by_name.insert(&route.name, at) {
                let message = format!("same name \"{}\" as {}", route.name, earlier_is(earlier));
                let error = ConfigError::at(file, route.written.name, key("name"), message);
                return Some((at, 2, error));
            }
        }
    }
    None
}
