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
mod reload;
mod route;

use std::path::{Path, PathBuf};

use error::Source;
pub use error::{quoted, ConfigError};
pub use limits::{Limits, Timeouts};
pub use listen::{Listen, ListenKey, Protocol};
pub use pool::{Backend, Balance, Check, Health, Http, HttpMode, Member, Pool, MAX_MEMBERS};
use raw::RawConfig;
pub use reload::{Loaded, TenantChanges};
pub use route::{tie, Route, Target, Terminate, Written, DEFAULT_ROUTE_NAME, NO_ROUTE_NAME};

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
    /// What was read, for a reload to read again only the tenant files that changed.
    pub loaded: Loaded,
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
        let mut reading = route::Reading {
            quic: listeners.iter().position(|listen| listen.protocol.is_udp()),
            ..Default::default()
        };
        let mut routes = Vec::with_capacity(raw.route.len());
        for (index, route) in raw.route.iter().enumerate() {
            routes.push(route::route_from_raw(
                source,
                index,
                route,
                None,
                &mut reading,
            )?);
        }
        let default = raw
            .default
            .as_ref()
            .map(|default| route::default_from_raw(source, default, &reading))
            .transpose()?;
        let read_at = std::time::SystemTime::now();
        let quic = reading.quic;
        let (targets, stamps) = include::read(&included.files, reading, &mut routes)?;
        route::check_routes(source.file, &routes)?;
        let loaded = Loaded::new(
            source.text,
            raw.include.clone(),
            stamps,
            read_at,
            route::Reading { targets, quic },
            &routes,
            default.as_ref(),
        );
        Ok(Self {
            listeners,
            timeouts,
            limits,
            metrics,
            routes,
            include_dirs: included.directories,
            default,
            loaded,
        })
    }
}

/// `work(0)` to `work(count - 1)`, each on a thread of its own where there are several, their
/// results in that order. A thread that panicked: the panic goes on here, as if the work had
/// run on this thread.
fn on_threads<T: Send>(count: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if count <= 1 {
        return (0..count).map(&work).collect();
    }
    std::thread::scope(|scope| {
        let work = &work;
        let started: Vec<_> = (0..count)
            .map(|index| scope.spawn(move || work(index)))
            .collect();
        started
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests;
