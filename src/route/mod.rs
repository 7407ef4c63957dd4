//! The route table: which route a ClientHello's server name and ALPN offer get, and why.
//!
//! Pure: no I/O. Built once per config (start-up, reload), then only read: a connection takes an
//! `Arc` of the table at accept and keeps it. Lookup allocates nothing: exact names are one hash
//! lookup, wildcards one hash lookup per label of the name (longest suffix first), so a table of
//! any size costs the same per hello. SPEC "Matching".
//!
//! Compact, for tables of millions of tenants: every route's pattern (and its label, where it
//! has its own) is written once into one text, a route is a 24-byte [`Entry`] of offsets and
//! numbers, the indexes hold `u32`s ([`index`]), and routes with the same target share it, its
//! backends' live state and their series. A route's own series are registered when it first
//! sees a connection.

mod index;
mod pool;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use once_cell::race::OnceBox;

pub use pool::{
    rendezvous, smooth_schedule, Change, Member, Members, Open, Plan, Pool, EJECTION_BASE_MS,
    EJECTION_MAX_MS, EJECT_AFTER, MAX_ATTEMPTS,
};

use crate::config::{Config, Route, Target};
use crate::hello::Alpn;
use crate::metrics::{RouteHandles, RouteMetrics, NO_ROUTE};
use crate::name::{NamePattern, ServerName};
use index::Index;

/// No next route, or no `alpn` list.
const NONE: u32 = u32::MAX;

/// A route's `alpn` list.
type AlpnList = Box<[Box<[u8]>]>;

/// Bytes a table holds, by part, as `(part, bytes)`.
pub type Footprint = [(&'static str, usize); 4];

/// Routes by name, ready for lookup.
#[derive(Debug)]
pub struct RouteTable {
    /// Each route's pattern (`a.example.com`, `*.example.com`; empty for `[default]`), followed
    /// by its label where that is not the pattern itself.
    text: String,
    /// In file order, then `[default]`.
    routes: Box<[Entry]>,
    /// Each route's series, registered on first use.
    series: Box<[OnceBox<RouteHandles>]>,
    /// The distinct targets, with their pools.
    targets: Box<[Shared]>,
    /// The distinct `alpn` lists.
    alpn: Box<[AlpnList]>,
    /// Exact names, to the first route of the name.
    exact: Index,
    /// Wildcards' suffixes with their leading dot (`.tenants.example.com`), likewise.
    wildcards: Index,
    /// Whether the last entry is `[default]`.
    has_default: bool,
    /// The series of connections that match no route.
    unmatched: OnceBox<RouteHandles>,
}

/// One route, as offsets into the table's text and numbers of its other parts.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where its pattern starts in the table's text.
    text: u32,
    /// Bytes of its own label after the pattern; 0: the pattern is its label.
    label: u32,
    /// Bytes of its pattern.
    pattern: u16,
    wildcard: bool,
    /// Its target, by index in `targets`.
    target: u32,
    /// Its `alpn` list, by index in `alpn`; [`NONE`]: none.
    alpn: u32,
    /// The next route (in file order) with the same pattern; [`NONE`]: the last.
    next: u32,
}

/// A target and what it has beside its config: its pools' live state.
#[derive(Debug)]
struct Shared {
    target: Arc<Target>,
    pool: Arc<Pool>,
    /// Its port-80 backends, where the config has an `http` listener.
    http: Option<Arc<Pool>>,
}

/// A route of a table.
#[derive(Debug, Clone, Copy)]
pub struct RouteRef<'a> {
    table: &'a RouteTable,
    index: u32,
}

/// The route a hello gets, and why.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The route, or `None`: the client gets an `unrecognized_name` alert.
    pub route: Option<RouteRef<'a>>,
    /// The route's series (those of `route="none"` without one).
    pub metrics: RouteMetrics<'a>,
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
    /// Indexes `config`'s routes. The config has already refused routes that tie. Routes with one
    /// target (the config shares a target between routes that write it alike) share its pools;
    /// each pool keeps the state (health, resolved addresses) of the pool with its label in
    /// `previous`, the table a reload replaces.
    pub fn new(config: &Config, previous: Option<&RouteTable>) -> Self {
        let all: Vec<&Route> = config.routes.iter().chain(&config.default).collect();
        let serves_http = config
            .listeners
            .iter()
            .any(|listen| listen.protocol == crate::config::Protocol::Http);
        let previous: HashMap<&str, &Shared> = previous
            .map(|table| {
                table
                    .targets
                    .iter()
                    .map(|shared| (shared.pool.route(), shared))
                    .collect()
            })
            .unwrap_or_default();

        let mut text = String::with_capacity(all.iter().map(|route| route.name.len()).sum());
        let mut routes = Vec::with_capacity(all.len());
        let mut targets: Vec<Shared> = Vec::new();
        let mut target_of: HashMap<*const Target, u32> = HashMap::new();
        let mut alpn: Vec<AlpnList> = Vec::new();
        let mut alpn_of: HashMap<&[Box<[u8]>], u32> = HashMap::new();
        for route in &all {
            let start = text.len();
            let wildcard = matches!(route.sni, Some(NamePattern::Wildcard(_)));
            if let Some(pattern) = &route.sni {
                use fmt::Write as _;
                // A String's fmt::Write never fails.
                let _ = write!(text, "{pattern}");
            }
            let pattern = text.len() - start;
            let label = match text[start..] == *route.name {
                true => 0,
                false => {
                    text.push_str(&route.name);
                    route.name.len()
                }
            };
            let target = *target_of
                .entry(Arc::as_ptr(&route.target))
                .or_insert_with(|| {
                    let before = previous.get(route.name.as_str());
                    targets.push(Shared {
                        target: route.target.clone(),
                        pool: Arc::new(Pool::new(
                            &route.name,
                            &route.target.pool,
                            before.map(|shared| &*shared.pool),
                        )),
                        http: serves_http.then(|| {
                            Arc::new(Pool::new(
                                &route.name,
                                &route.target.http.pool,
                                before.and_then(|shared| shared.http.as_deref()),
                            ))
                        }),
                    });
                    (targets.len() - 1) as u32
                });
            let alpn = match route.alpn.is_empty() {
                true => NONE,
                false => *alpn_of.entry(&route.alpn).or_insert_with(|| {
                    alpn.push(route.alpn.clone().into_boxed_slice());
                    (alpn.len() - 1) as u32
                }),
            };
            routes.push(Entry {
                // Offsets fit: a config is read into memory whole, and each name is at most 257
                // bytes (a wildcard's `*.` and 255).
                text: start as u32,
                label: label as u32,
                pattern: pattern as u16,
                wildcard,
                target,
                alpn,
                next: NONE,
            });
        }
        let count = |wildcard: bool| {
            config
                .routes
                .iter()
                .filter(|route| matches!(route.sni, Some(NamePattern::Wildcard(_))) == wildcard)
                .count()
        };
        let mut table = Self {
            text,
            series: routes.iter().map(|_| OnceBox::new()).collect(),
            routes: routes.into_boxed_slice(),
            targets: targets.into_boxed_slice(),
            alpn: alpn.into_boxed_slice(),
            exact: Index::with_capacity(count(false)),
            wildcards: Index::with_capacity(count(true)),
            has_default: config.default.is_some(),
            unmatched: OnceBox::new(),
        };
        table.index(config.routes.len());
        table
    }

    /// Enters the first `count` routes in the indexes; later routes with a pattern already
    /// entered are chained after it, in file order.
    fn index(&mut self, count: usize) {
        let (text, routes) = (&self.text, &mut self.routes);
        for number in 0..count as u32 {
            let entry = routes[number as usize];
            let key_of = |index: u32| key(text, &routes[index as usize]);
            let key = key(text, &entry);
            let index = match entry.wildcard {
                true => &mut self.wildcards,
                false => &mut self.exact,
            };
            let Some(first) = index.insert(key, number, key_of) else {
                continue;
            };
            let mut last = first;
            while routes[last as usize].next != NONE {
                last = routes[last as usize].next;
            }
            routes[last as usize].next = number;
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
        let key_of = |index: u32| key(&self.text, &self.routes[index as usize]);
        if let Some(first) = self.exact.get(name.as_bytes(), key_of) {
            if let Some((index, protocol)) = self.pick(first, offer) {
                return self.decision(index, Reason::Exact { protocol });
            }
        }
        if !self.wildcards.is_empty() {
            // Longest suffix first: cut the name after each of its dots, left to right.
            for (dot, _) in name.match_indices('.').filter(|&(dot, _)| dot > 0) {
                if let Some(first) = self.wildcards.get(&name.as_bytes()[dot..], key_of) {
                    if let Some((index, protocol)) = self.pick(first, offer) {
                        return self.decision(index, Reason::Wildcard { protocol });
                    }
                }
            }
        }
        self.fallback(Reason::NoMatch)
    }

    /// The route among those of one pattern (from `first` on) for `offer`, and the protocol
    /// (from the route's own list, so the decision borrows only the table) that made it match.
    fn pick(&self, first: u32, offer: &Alpn) -> Option<(u32, Option<&[u8]>)> {
        let chain = || {
            std::iter::successors(Some(first), |&index| {
                Some(self.routes[index as usize].next).filter(|&next| next != NONE)
            })
        };
        for protocol in offer.iter() {
            for index in chain() {
                let alpn = self.routes[index as usize].alpn;
                if alpn == NONE {
                    continue;
                }
                if let Some(accepted) = self.alpn[alpn as usize]
                    .iter()
                    .find(|accepted| ***accepted == *protocol)
                {
                    return Some((index, Some(&**accepted)));
                }
            }
        }
        chain()
            .find(|&index| self.routes[index as usize].alpn == NONE)
            .map(|index| (index, None))
    }

    fn decision<'a>(&'a self, index: u32, reason: Reason<'a>) -> Decision<'a> {
        let route = RouteRef { table: self, index };
        let shared = route.shared();
        Decision {
            route: Some(route),
            metrics: route.metrics(),
            pool: Some(&shared.pool),
            http_pool: shared.http.as_ref(),
            reason,
        }
    }

    fn fallback(&self, reason: Reason<'static>) -> Decision<'_> {
        match self.has_default {
            true => self.decision(self.routes.len() as u32 - 1, reason),
            false => Decision {
                route: None,
                metrics: self.unmatched(),
                pool: None,
                http_pool: None,
                reason,
            },
        }
    }

    /// The series of connections that match no route (`route="none"`).
    pub fn unmatched(&self) -> RouteMetrics<'_> {
        RouteMetrics::new(NO_ROUTE, &self.unmatched)
    }

    /// Every distinct target's pools (its backends, then its port-80 backends), in the order of
    /// the first route that has it.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.targets
            .iter()
            .flat_map(|shared| std::iter::once(&shared.pool).chain(shared.http.as_ref()))
    }

    /// Every route, in file order, then `[default]`.
    pub fn routes(&self) -> impl Iterator<Item = RouteRef<'_>> {
        (0..self.routes.len() as u32).map(|index| RouteRef { table: self, index })
    }

    /// Bytes the table holds, by part: its text, its routes, its indexes, and the rest (targets,
    /// `alpn` lists).
    pub fn footprint(&self) -> Footprint {
        [
            ("text", self.text.capacity()),
            (
                "routes",
                self.routes.len() * (size_of::<Entry>() + size_of::<OnceBox<RouteHandles>>()),
            ),
            ("indexes", self.exact.bytes() + self.wildcards.bytes()),
            (
                "targets",
                self.targets.len() * size_of::<Shared>()
                    + self.alpn.iter().map(|list| list.len() * 16).sum::<usize>(),
            ),
        ]
    }
}

/// The name a route is indexed under: an exact name, or a wildcard's suffix with its dot.
fn key<'t>(text: &'t str, entry: &Entry) -> &'t [u8] {
    let start = entry.text as usize + usize::from(entry.wildcard);
    &text.as_bytes()[start..entry.text as usize + usize::from(entry.pattern)]
}

impl<'a> RouteRef<'a> {
    /// Its label in logs and metrics: `name`, or the sni pattern plus `/alpn,list` when it has
    /// one; `default` for `[default]`.
    pub fn name(&self) -> &'a str {
        let entry = self.entry();
        let (start, pattern) = (entry.text as usize, usize::from(entry.pattern));
        match entry.label {
            0 => &self.table.text[start..start + pattern],
            label => &self.table.text[start + pattern..start + pattern + label as usize],
        }
    }

    /// Where it sends its traffic, and how.
    pub fn target(&self) -> &'a Arc<Target> {
        &self.shared().target
    }

    /// Its `alpn` list; empty: no condition.
    pub fn alpn(&self) -> &'a [Box<[u8]>] {
        match self.entry().alpn {
            NONE => &[],
            alpn => &self.table.alpn[alpn as usize],
        }
    }

    /// Its place in the config: the index in `Config::routes`, which for `[default]` is their
    /// number.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// Its series.
    pub fn metrics(&self) -> RouteMetrics<'a> {
        RouteMetrics::new(self.name(), &self.table.series[self.index as usize])
    }

    fn entry(&self) -> &'a Entry {
        &self.table.routes[self.index as usize]
    }

    fn shared(&self) -> &'a Shared {
        &self.table.targets[self.entry().target as usize]
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
