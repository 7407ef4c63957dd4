//! The route table: which route a ClientHello's server name and ALPN offer get, and why.
//!
//! Pure: no I/O. Built once per config (start-up, reload), then only read: a connection takes an
//! `Arc` of the table at accept and keeps it. Lookup allocates nothing: exact names are one hash
//! lookup, wildcards one hash lookup per label of the name (longest suffix first), so a table of
//! any size costs the same per hello. SPEC "Matching".

mod pool;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use pool::{
    rendezvous, smooth_schedule, Change, Member, Members, Open, Plan, Pool, EJECTION_BASE_MS,
    EJECTION_MAX_MS, EJECT_AFTER, MAX_ATTEMPTS,
};

use crate::config::{Config, Route};
use crate::hello::Alpn;
use crate::metrics::{RouteMetrics, NO_ROUTE};
use crate::name::{NamePattern, ServerName};

/// Routes by name, ready for lookup.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Each route's series and pool, by index in `routes`.
    state: Vec<RouteState>,
    exact: HashMap<Box<str>, Candidates>,
    /// Keyed by the suffix with its leading dot (`.tenants.example.com`).
    wildcards: HashMap<Box<str>, Candidates>,
    default: Option<(Route, RouteState)>,
    /// The series of connections that match no route.
    unmatched: RouteMetrics,
}

/// What a route has beside its config: its series and its pool's live state.
#[derive(Debug)]
struct RouteState {
    metrics: RouteMetrics,
    pool: Arc<Pool>,
    /// Its port-80 backends, where the config has an `http` listener.
    http: Option<Arc<Pool>>,
}

/// The routes sharing one pattern: those with an `alpn` list (in file order) and at most one
/// without (the config refuses two).
#[derive(Debug, Default)]
struct Candidates {
    with_alpn: Vec<usize>,
    without_alpn: Option<usize>,
}

/// The route a hello gets, and why.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The route, or `None`: the client gets an `unrecognized_name` alert.
    pub route: Option<&'a Route>,
    /// The route's series (those of `route="none"` without one).
    pub metrics: &'a RouteMetrics,
    /// The route's backends.
    pub pool: Option<&'a Arc<Pool>>,
    /// The route's port-80 backends (where the config has an `http` listener).
    pub http_pool: Option<&'a Arc<Pool>>,
    /// Why.
    pub reason: Reason<'a>,
}

/// Why a [`Decision`] went the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    /// The route names the server name exactly; `protocol` is the offered protocol that met the
    /// route's `alpn` list, if it has one.
    Exact {
        /// The offered protocol that matched, when the route has an `alpn` list.
        protocol: Option<&'a [u8]>,
    },
    /// The route's wildcard is the longest suffix of the server name that matched.
    Wildcard {
        /// The offered protocol that matched, when the route has an `alpn` list.
        protocol: Option<&'a [u8]>,
    },
    /// The hello carries no server name.
    NoServerName,
    /// No route matches the server name (and ALPN offer).
    NoMatch,
}

impl RouteTable {
    /// Indexes `config`'s routes. The config has already refused routes that tie. Each
    /// route's pool keeps the state (health, resolved addresses) of the pool of the same name in
    /// `previous`, the table a reload replaces.
    pub fn new(config: &Config, previous: Option<&RouteTable>) -> Self {
        let mut exact: HashMap<Box<str>, Candidates> = HashMap::new();
        let mut wildcards: HashMap<Box<str>, Candidates> = HashMap::new();
        for (index, route) in config.routes.iter().enumerate() {
            let candidates = match &route.sni {
                Some(NamePattern::Exact(name)) => exact.entry(name.as_str().into()).or_default(),
                Some(NamePattern::Wildcard(suffix)) => wildcards.entry(suffix.clone()).or_default(),
                None => continue,
            };
            if route.alpn.is_empty() {
                candidates.without_alpn = Some(index);
            } else {
                candidates.with_alpn.push(index);
            }
        }
        let previous: HashMap<&str, &RouteState> = previous
            .map(|table| {
                table
                    .states()
                    .map(|(route, state)| (route.name.as_str(), state))
                    .collect()
            })
            .unwrap_or_default();
        let serves_http = config
            .listeners
            .iter()
            .any(|listen| listen.protocol == crate::config::Protocol::Http);
        let state_of = |route: &Route| {
            let before = previous.get(route.name.as_str());
            RouteState {
                metrics: RouteMetrics::new(&route.name),
                pool: Arc::new(Pool::new(
                    &route.name,
                    &route.target.pool,
                    before.map(|state| &*state.pool),
                )),
                http: serves_http.then(|| {
                    Arc::new(Pool::new(
                        &route.name,
                        &route.target.http.pool,
                        before.and_then(|state| state.http.as_deref()),
                    ))
                }),
            }
        };
        Self {
            routes: config.routes.clone(),
            state: config.routes.iter().map(state_of).collect(),
            exact,
            wildcards,
            default: config
                .default
                .as_ref()
                .map(|route| (route.clone(), state_of(route))),
            unmatched: RouteMetrics::new(NO_ROUTE),
        }
    }

    /// The route for a hello with this server name and ALPN offer: an exact name first, then the
    /// wildcard with the longest suffix, then `[default]`. Among routes for one pattern, one whose
    /// `alpn` list holds a protocol the client offers wins (the client's most preferred protocol
    /// first) over the one with no `alpn`.
    pub fn lookup(&self, server_name: Option<&ServerName>, offer: &Alpn) -> Decision<'_> {
        let Some(name) = server_name else {
            return self.fallback(Reason::NoServerName);
        };
        let name = name.as_str();
        if let Some(candidates) = self.exact.get(name) {
            if let Some((index, protocol)) = self.pick(candidates, offer) {
                return self.decision(index, Reason::Exact { protocol });
            }
        }
        // Longest suffix first: cut the name after each of its dots, left to right.
        for (dot, _) in name.match_indices('.').filter(|&(dot, _)| dot > 0) {
            if let Some(candidates) = self.wildcards.get(&name[dot..]) {
                if let Some((index, protocol)) = self.pick(candidates, offer) {
                    return self.decision(index, Reason::Wildcard { protocol });
                }
            }
        }
        self.fallback(Reason::NoMatch)
    }

    /// The route among `candidates` for `offer` (its index), and the protocol (from the route's
    /// own list, so the decision borrows only the table) that made it match.
    fn pick(&self, candidates: &Candidates, offer: &Alpn) -> Option<(usize, Option<&[u8]>)> {
        for protocol in offer.iter() {
            for &index in &candidates.with_alpn {
                if let Some(accepted) = self.routes[index]
                    .alpn
                    .iter()
                    .find(|accepted| ***accepted == *protocol)
                {
                    return Some((index, Some(&**accepted)));
                }
            }
        }
        candidates.without_alpn.map(|index| (index, None))
    }

    fn decision<'a>(&'a self, index: usize, reason: Reason<'a>) -> Decision<'a> {
        Decision {
            route: Some(&self.routes[index]),
            metrics: &self.state[index].metrics,
            pool: Some(&self.state[index].pool),
            http_pool: self.state[index].http.as_ref(),
            reason,
        }
    }

    fn fallback(&self, reason: Reason<'static>) -> Decision<'_> {
        match &self.default {
            Some((route, state)) => Decision {
                route: Some(route),
                metrics: &state.metrics,
                pool: Some(&state.pool),
                http_pool: state.http.as_ref(),
                reason,
            },
            None => Decision {
                route: None,
                metrics: &self.unmatched,
                pool: None,
                http_pool: None,
                reason,
            },
        }
    }

    /// The series of connections that match no route (`route="none"`).
    pub fn unmatched(&self) -> &RouteMetrics {
        &self.unmatched
    }

    /// Every route's pools (its backends, then its port-80 backends), in file order, then
    /// `[default]`'s.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.states()
            .flat_map(|(_, state)| std::iter::once(&state.pool).chain(state.http.as_ref()))
    }

    fn states(&self) -> impl Iterator<Item = (&Route, &RouteState)> {
        self.routes
            .iter()
            .zip(&self.state)
            .chain(self.default.as_ref().map(|(route, state)| (route, state)))
    }

    /// Every route, in file order, then `[default]`.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes
            .iter()
            .chain(self.default.as_ref().map(|(route, _)| route))
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, protocol) = match self {
            Self::Exact { protocol } => ("the exact name matched", protocol),
            Self::Wildcard { protocol } => ("the longest matching wildcard", protocol),
            Self::NoServerName => return formatter.write_str("the hello has no server name"),
            Self::NoMatch => return formatter.write_str("no route matches the name"),
        };
        formatter.write_str(what)?;
        match protocol {
            Some(protocol) => write!(
                formatter,
                ", and the offered alpn {} is in its list",
                protocol.escape_ascii()
            ),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
