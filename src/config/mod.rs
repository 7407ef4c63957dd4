//! routes.toml: parsed into validated domain types, or refused with one located fault.
//!
//! [`load`] is the one way in: start-up, `check`, `explain` and the demo all use it, so a fault
//! reads the same everywhere. Parse, don't validate: what [`Config::from_raw`] returns has its
//! defaults applied and its invariants checked (names normalised, durations above zero, one
//! backend per route, no two routes that tie). It does no DNS and no I/O beyond reading the file
//! and the PEM files it names. One file per section: `listen`, `limits` (with `[timeouts]`),
//! `route` (with `[default]`); `raw` mirrors the TOML, `error` locates faults. SPEC "routes.toml".

mod error;
mod include;
mod limits;
mod listen;
mod pool;
mod raw;
mod route;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use error::Source;
pub use error::{quoted, ConfigError};
pub use limits::{Limits, Timeouts};
pub use listen::{Listen, ListenKey, Protocol};
pub use pool::{Backend, Balance, Check, Health, Http, HttpMode, Member, Pool, MAX_MEMBERS};
use raw::RawConfig;
pub use route::{Route, Target, Terminate, DEFAULT_ROUTE_NAME, NO_ROUTE_NAME};

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
    /// Routes in file order: routes.toml's, then each tenant file's (`include`).
    pub routes: Vec<Route>,
    /// The directories `include` reads tenant files from, watched like routes.toml.
    pub include_dirs: Vec<PathBuf>,
    /// Where hellos with no name, or a name no route matches, go; `None`: they get an
    /// `unrecognized_name` alert.
    pub default: Option<Route>,
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
        let listeners = listen::listeners(source, &raw.listen)?;
        let metrics = raw
            .metrics
            .as_ref()
            .map(|metrics| listen::socket_address(source, &metrics.address, "metrics.address"))
            .transpose()?;
        let timeouts = limits::timeouts(source, &raw.timeouts)?;
        let limits = limits::limits(source, &raw.limits)?;

        let included = match &raw.include {
            Some(patterns) => include::resolve(source, patterns)?,
            None => include::Included::default(),
        };
        // Each tenant file read and parsed in turn; kept, as the routes' faults point into them.
        let mut tenants = Vec::with_capacity(included.files.len());
        for path in &included.files {
            let text = std::fs::read_to_string(path)
                .map_err(|error| ConfigError::file(path, format!("cannot read: {error}")))?;
            tenants.push((Arc::<Path>::from(path.as_path()), text));
        }
        let mut parsed = Vec::with_capacity(tenants.len());
        for (path, text) in &tenants {
            let line_starts = error::line_starts(text);
            let tenant = {
                let source = Source {
                    file: path,
                    text,
                    line_starts: &line_starts,
                };
                toml::from_str::<raw::RawTenant>(text).map_err(|error| source.toml_error(&error))?
            };
            parsed.push((line_starts, tenant));
        }

        let mut routes = Vec::with_capacity(raw.route.len());
        let mut written = Vec::with_capacity(raw.route.len());
        for (index, route) in raw.route.iter().enumerate() {
            routes.push(route::route_from_raw(source, index, route, None)?);
            written.push(route::Written {
                source,
                raw: route,
                index,
            });
        }
        for ((path, text), (line_starts, tenant)) in tenants.iter().zip(&parsed) {
            let source = Source {
                file: path,
                text,
                line_starts,
            };
            for (index, route) in tenant.route.iter().enumerate() {
                routes.push(route::route_from_raw(source, index, route, Some(path))?);
                written.push(route::Written {
                    source,
                    raw: route,
                    index,
                });
            }
        }
        route::check_routes(&written, &routes)?;

        let default = raw
            .default
            .as_ref()
            .map(|default| route::default_from_raw(source, default))
            .transpose()?;
        // Every route is reachable from every listener, and QUIC is passthrough only.
        if let Some(quic) = listeners.iter().position(|listen| listen.protocol.is_udp()) {
            let terminating = written
                .iter()
                .map(|written| {
                    let key = format!("route[{}].terminate", written.index);
                    (written.source, &written.raw.get_ref().terminate, key)
                })
                .chain(raw.default.iter().map(|default| {
                    (
                        source,
                        &default.get_ref().terminate,
                        "default.terminate".to_owned(),
                    )
                }));
            for (source, terminate, key) in terminating {
                if let Some(terminate) = terminate {
                    return Err(source.at(
                        terminate,
                        key,
                        format!(
                            "listen[{quic}] is a quic listener, and QUIC is passthrough only: \
                             serve this name from a config without one"
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            listeners,
            timeouts,
            limits,
            metrics,
            routes,
            include_dirs: included.directories,
            default,
        })
    }
}

#[cfg(test)]
mod tests;
