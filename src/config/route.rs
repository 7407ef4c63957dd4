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

/// Where a route (or `[default]`) sends its traffic, the PROXY header it sends first, and its
/// TLS when it terminates.
fn target(
    source: Source<'_>,
    key: &str,
    table: Range<usize>,
    target: RawTargetRef<'_>,
    sni: Option<&NamePattern>,
) -> Result<Arc<Target>, ConfigError> {
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
) -> Result<Route, ConfigError> {
    let key = format!("route[{index}]");
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
    let target = target(source, &key, spanned.span(), raw.into(), Some(&sni))?;
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
        target,
        line: source.line_column(spanned.span().start).0,
        file: file.cloned(),
    })
}

pub(super) fn default_from_raw(
    source: Source<'_>,
    spanned: &Spanned<RawDefault>,
) -> Result<Route, ConfigError> {
    let target = target(
        source,
        "default",
        spanned.span(),
        spanned.get_ref().into(),
        None,
    )?;
    Ok(Route {
        name: DEFAULT_ROUTE_NAME.to_owned(),
        sni: None,
        alpn: Vec::new(),
        target,
        line: source.line_column(spanned.span().start).0,
        file: None,
    })
}

/// One route as written: the file it is in, its table, and its index there.
pub(super) struct Written<'a> {
    pub source: Source<'a>,
    pub raw: &'a Spanned<RawRoute>,
    pub index: usize,
}

/// Refuses two routes that could match the same ClientHello equally well (same pattern, and
/// either both without `alpn` or with a protocol in common), and two routes with one name,
/// across routes.toml and its tenant files. Reported at the later route, naming the earlier.
pub(super) fn check_routes(written: &[Written<'_>], routes: &[Route]) -> Result<(), ConfigError> {
    let mut by_pattern: HashMap<&NamePattern, Vec<usize>> = HashMap::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (at, route) in routes.iter().enumerate() {
        let Some(pattern) = &route.sni else { continue };
        let Written { source, raw, index } = &written[at];
        let earlier_is = |earlier: usize| {
            let other = &written[earlier];
            let line = routes[earlier].line;
            match other.source.file == source.file {
                true => format!("route[{}] (line {line})", other.index),
                false => format!(
                    "route[{}] ({} line {line})",
                    other.index,
                    other.source.file.display()
                ),
            }
        };
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
                    &raw.get_ref().sni,
                    format!("route[{index}].sni"),
                    format!("{what} {}", earlier_is(earlier)),
                ));
            }
        }
        same_pattern.push(at);
        if let Some(earlier) = by_name.insert(&route.name, at) {
            let spot = raw
                .get_ref()
                .name
                .as_ref()
                .map_or(raw.get_ref().sni.span(), Spanned::span);
            return Err(source.error(
                spot,
                format!("route[{index}].name"),
                format!("same name \"{}\" as {}", route.name, earlier_is(earlier)),
            ));
        }
    }
    Ok(())
}
