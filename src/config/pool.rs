//! A route's backends: `backend` (one) or `backends` (a pool), how connections are spread over
//! them (`balance`) and how their health is checked (`health`). SPEC "routes.toml", "Behaviour
//! on the wire".

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName as ServerNameTls;
use toml::{Spanned, Value};

use super::error::{quoted, ConfigError, Source};
use super::limits::duration;
use super::raw::RawHealth;
use crate::name::{NamePattern, ServerName};

/// Members a pool may list.
pub const MAX_MEMBERS: usize = 256;
/// The largest `weight`.
pub const MAX_WEIGHT: u32 = 100;

/// Where a route sends its connections: one or more members, a balance, and health checks.
#[derive(Debug, Clone)]
pub struct Pool {
    /// In file order; never empty.
    pub members: Vec<Member>,
    /// How a connection's member is picked.
    pub balance: Balance,
    /// Active checks, if the route asks for them (passive ejection is always on).
    pub health: Option<Health>,
}

/// One `backends` entry (or the `backend`).
#[derive(Debug, Clone)]
pub struct Member {
    /// Where it is: an address, or a host name resolved in the background.
    pub backend: Backend,
    /// Its share of round robin and of client hash, relative to the others; 1 to 100, default
    /// 1. Least connections compares connections per unit of weight.
    pub weight: u32,
    /// Where routes.toml names it (line, column), for faults found after loading.
    pub position: (usize, usize),
}

/// `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each member in turn, in proportion to its weight, interleaved (smooth: a member of weight
    /// 3 among weights 1 does not get three in a row).
    RoundRobin,
    /// The member with the fewest open connections per unit of weight.
    LeastConnections,
    /// The same client address gets the same member while it is up; when one of N members
    /// leaves, only its clients (about 1/N) move.
    ClientHash,
}

/// `health = { check, interval, timeout, rise, fall, server_name, ca }`.
#[derive(Debug, Clone)]
pub struct Health {
    /// What a check does.
    pub check: Check,
    /// Time between checks of one member (each one jittered by up to a tenth). Default 5 s.
    pub interval: Duration,
    /// A check not done in this time failed. Default 2 s, at most `interval`.
    pub timeout: Duration,
    /// Passed checks in a row that bring a down member up. Default 2.
    pub rise: u32,
    /// Failed checks in a row that take an up member down. Default 3.
    pub fall: u32,
}

/// `health.check`.
#[derive(Debug, Clone)]
pub enum Check {
    /// A TCP connect.
    Tcp,
    /// A TLS handshake offering `server_name`; the certificate is verified only against the
    /// pool's `health.ca`.
    Tls {
        /// Sent as SNI: `health.server_name`, or the route's name (a wildcard's suffix);
        /// `None` (no SNI) for `[default]`.
        server_name: Option<ServerNameTls<'static>>,
        /// The handshake's settings.
        client: Arc<rustls::ClientConfig>,
    },
}

/// A backend address: an IP and port, or a host name and port, the name resolved in the
/// background (every address it resolves to is a member).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A host name and port.
    Host(ServerName, u16),
}

impl Backend {
    pub(super) fn parse(raw: &str) -> Result<Self, String> {
        if let Ok(addr) = raw.parse() {
            return Ok(Self::Addr(addr));
        }
        let expected = || format!("expected host:port, found {}", quoted(raw));
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

impl Balance {
    /// As written in routes.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::ClientHash => "client_hash",
        }
    }
}

impl fmt::Display for Pool {
    /// The members, as `check` and `explain` show them.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, member) in self.members.iter().enumerate() {
            if index > 0 {
                formatter.write_str(", ")?;
            }
            write!(formatter, "{}", member.backend)?;
            if member.weight != 1 {
                write!(formatter, " (weight {})", member.weight)?;
            }
        }
        Ok(())
    }
}

impl Pool {
    /// The balance (for several members) and the health checks, as `check` and `explain` show
    /// them; `None` for one member without checks.
    pub fn settings(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.members.len() > 1 || matches!(self.members[0].backend, Backend::Host(..)) {
            parts.push(self.balance.as_str().to_owned());
        }
        if let Some(health) = &self.health {
            let check = match &health.check {
                Check::Tcp => "tcp".to_owned(),
                Check::Tls {
                    server_name: Some(name),
                    ..
                } => format!("tls offering {}", name.to_str()),
                Check::Tls { .. } => "tls offering no name".to_owned(),
            };
            parts.push(format!(
                "health {check} every {}, timeout {}, rise {}, fall {}",
                humantime::format_duration(health.interval),
                humantime::format_duration(health.timeout),
                health.rise,
                health.fall
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// What a route does with a request on an `http` listener (port 80).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// `308` to the same URL with `https` (the default); ACME http-01 requests are forwarded.
    Redirect,
    /// The connection's bytes go to the route's HTTP backends unchanged.
    Forward,
}

/// A route's port-80 side: its mode and the backends requests are forwarded to.
#[derive(Debug, Clone)]
pub struct Http {
    /// `http`.
    pub mode: HttpMode,
    /// `http_backend`, or each of the route's backends with port 80; balanced like the route,
    /// no active checks.
    pub pool: Pool,
    /// Whether `http_backend` names it (else it is derived from the backends).
    pub explicit: bool,
}

/// `http` and `http_backend` of the route at `key`, whose pool is `pool`.
pub(super) fn http(
    source: Source<'_>,
    key: &str,
    mode: &Option<Spanned<String>>,
    backend: &Option<Spanned<String>>,
    pool: &Pool,
) -> Result<Http, ConfigError> {
    let mode = match mode {
        None => HttpMode::Redirect,
        Some(value) => match value.get_ref().as_str() {
            "redirect" => HttpMode::Redirect,
            "forward" => HttpMode::Forward,
            other => {
                return Err(source.at(
                    value,
                    format!("{key}.http"),
                    format!(
                        "expected \"redirect\" or \"forward\", found {}",
                        quoted(other)
                    ),
                ))
            }
        },
    };
    let members = match backend {
        Some(one) => vec![Member {
            backend: Backend::parse(one.get_ref())
                .map_err(|message| source.at(one, format!("{key}.http_backend"), message))?,
            weight: 1,
            position: source.line_column(one.span().start),
        }],
        None => {
            let mut members: Vec<Member> = Vec::with_capacity(pool.members.len());
            for member in &pool.members {
                let backend = match &member.backend {
                    Backend::Addr(address) => Backend::Addr(SocketAddr::new(address.ip(), 80)),
                    Backend::Host(host, _) => Backend::Host(host.clone(), 80),
                };
                if !members.iter().any(|known| known.backend == backend) {
                    members.push(Member {
                        backend,
                        ..member.clone()
                    });
                }
            }
            members
        }
    };
    Ok(Http {
        mode,
        explicit: backend.is_some(),
        pool: Pool {
            members,
            balance: pool.balance,
            health: None,
        },
    })
}

/// The pool keys of a route or `[default]`, as routes.toml gives them.
pub(super) struct RawPool<'a> {
    pub backend: &'a Option<Spanned<String>>,
    pub backends: &'a Option<Spanned<Vec<Spanned<Value>>>>,
    pub balance: &'a Option<Spanned<String>>,
    pub health: &'a Option<Spanned<RawHealth>>,
}

/// `backend` xor `backends`, `balance` and `health` of the route at `key` (whose table spans
/// `table`), named by `sni` (`None` for `[default]`).
pub(super) fn pool(
    source: Source<'_>,
    key: &str,
    table: std::ops::Range<usize>,
    raw: RawPool<'_>,
    sni: Option<&NamePattern>,
) -> Result<Pool, ConfigError> {
    let members = match (raw.backend, raw.backends) {
        (Some(_), Some(list)) => {
            return Err(source.at(
                list,
                format!("{key}.backends"),
                "give `backend` or `backends`, not both",
            ))
        }
        (None, None) => return Err(source.error(table, key, "missing key `backend`")),
        (Some(one), None) => vec![Member {
            backend: Backend::parse(one.get_ref())
                .map_err(|message| source.at(one, format!("{key}.backend"), message))?,
            weight: 1,
            position: source.line_column(one.span().start),
        }],
        (None, Some(list)) => members(source, key, list)?,
    };
    let balance = match raw.balance {
        None => Balance::RoundRobin,
        Some(value) => match value.get_ref().as_str() {
            "round_robin" => Balance::RoundRobin,
            "least_connections" => Balance::LeastConnections,
            "client_hash" => Balance::ClientHash,
            other => {
                return Err(source.at(
                    value,
                    format!("{key}.balance"),
                    format!(
                    "expected \"round_robin\", \"least_connections\" or \"client_hash\", found {}",
                    quoted(other)
                ),
                ))
            }
        },
    };
    let health = raw
        .health
        .as_ref()
        .map(|health| self::health(source, &format!("{key}.health"), health, sni))
        .transpose()?;
    Ok(Pool {
        members,
        balance,
        health,
    })
}

fn members(
    source: Source<'_>,
    key: &str,
    list: &Spanned<Vec<Spanned<Value>>>,
) -> Result<Vec<Member>, ConfigError> {
    let count = list.get_ref().len();
    if count == 0 || count > MAX_MEMBERS {
        return Err(source.at(
            list,
            format!("{key}.backends"),
            format!("expected 1 to {MAX_MEMBERS} backends, found {count}"),
        ));
    }
    let mut members: Vec<Member> = Vec::with_capacity(count);
    for (index, entry) in list.get_ref().iter().enumerate() {
        let at = format!("{key}.backends[{index}]");
        let fault = |message: String| source.at(entry, at.clone(), message);
        let (address, weight) = match entry.get_ref() {
            Value::String(address) => (address.as_str(), 1),
            Value::Table(table) => {
                if let Some(unknown) = table.keys().find(|k| *k != "address" && *k != "weight") {
                    return Err(fault(format!(
                        "unknown key `{unknown}`, expected `address` or `weight`"
                    )));
                }
                let Some(Value::String(address)) = table.get("address") else {
                    return Err(fault("expected `address = \"host:port\"`".to_owned()));
                };
                let weight = match table.get("weight") {
                    None => 1,
                    Some(Value::Integer(weight)) if (1..=MAX_WEIGHT as i64).contains(weight) => {
                        *weight as u32
                    }
                    Some(other) => {
                        return Err(fault(format!(
                            "expected a weight of 1 to {MAX_WEIGHT}, found {other}"
                        )))
                    }
                };
                (address.as_str(), weight)
            }
            other => {
                return Err(fault(format!(
                    "expected \"host:port\" or {{ address, weight }}, found {}",
                    other.type_str()
                )))
            }
        };
        let backend = Backend::parse(address).map_err(fault)?;
        if let Some(earlier) = members.iter().position(|m| m.backend == backend) {
            return Err(fault(format!("{backend} is already backends[{earlier}]")));
        }
        members.push(Member {
            backend,
            weight,
            position: source.line_column(entry.span().start),
        });
    }
    Ok(members)
}

fn health(
    source: Source<'_>,
    key: &str,
    spanned: &Spanned<RawHealth>,
    sni: Option<&NamePattern>,
) -> Result<Health, ConfigError> {
    let raw = spanned.get_ref();
    let interval = match &raw.interval {
        Some(value) => duration(source, value, format!("{key}.interval"))?,
        None => Duration::from_secs(5),
    };
    let timeout = match &raw.timeout {
        Some(value) => duration(source, value, format!("{key}.timeout"))?,
        None => Duration::from_secs(2).min(interval),
    };
    if timeout > interval {
        let at = raw.timeout.as_ref().map_or(spanned.span(), Spanned::span);
        return Err(source.error(
            at,
            format!("{key}.timeout"),
            "expected at most the interval",
        ));
    }
    let threshold = |value: &Option<Spanned<i64>>, name: &str, default: u32| match value {
        None => Ok(default),
        Some(value) if (1..=100).contains(value.get_ref()) => Ok(*value.get_ref() as u32),
        Some(value) => Err(source.at(
            value,
            format!("{key}.{name}"),
            format!("expected 1 to 100, found {}", value.get_ref()),
        )),
    };
    let rise = threshold(&raw.rise, "rise", 2)?;
    let fall = threshold(&raw.fall, "fall", 3)?;
    let check = match raw
        .check
        .as_ref()
        .map(|check| (check, check.get_ref().as_str()))
    {
        None | Some((_, "tcp")) => {
            for (name, value) in [("server_name", &raw.server_name), ("ca", &raw.ca)] {
                if let Some(value) = value {
                    return Err(source.at(value, format!("{key}.{name}"), "needs check = \"tls\""));
                }
            }
            Check::Tcp
        }
        Some((_, "tls")) => {
            let server_name = match (&raw.server_name, sni) {
                (Some(name), _) => Some(ServerNameTls::try_from(name.get_ref().clone()).map_err(
                    |_| {
                        source.at(
                            name,
                            format!("{key}.server_name"),
                            format!("expected a DNS name, found {}", quoted(name.get_ref())),
                        )
                    },
                )?),
                (None, Some(NamePattern::Exact(name))) => {
                    ServerNameTls::try_from(name.as_str().to_owned()).ok()
                }
                (None, Some(NamePattern::Wildcard(_))) if raw.ca.is_some() => {
                    return Err(source.at(
                        spanned,
                        format!("{key}.server_name"),
                        "needed with `ca` on a wildcard route: name one its certificates cover",
                    ))
                }
                (None, Some(NamePattern::Wildcard(suffix))) => {
                    ServerNameTls::try_from(suffix.trim_start_matches('.').to_owned()).ok()
                }
                (None, None) => None,
            };
            let client = crate::terminate::health_check(
                raw.ca
                    .as_ref()
                    .map(|ca| source.relative_path(ca))
                    .as_deref(),
            )
            .map_err(|error| match &raw.ca {
                Some(ca) => source.at(ca, format!("{key}.ca"), error.to_string()),
                None => source.at(spanned, key.to_owned(), error.to_string()),
            })?;
            Check::Tls {
                server_name,
                client,
            }
        }
        Some((check, other)) => {
            return Err(source.at(
                check,
                format!("{key}.check"),
                format!("expected \"tcp\" or \"tls\", found {}", quoted(other)),
            ))
        }
    };
    Ok(Health {
        check,
        interval,
        timeout,
        rise,
        fall,
    })
}
