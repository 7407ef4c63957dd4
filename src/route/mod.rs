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
mod patch;
mod pool;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use once_cell::race::OnceBox;

pub use patch::Patched;
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
    /// In file order, then `[default]`; a patched table's new routes after those.
    routes: Vec<Entry>,
    /// The distinct targets, with their pools.
    targets: Vec<Shared>,
    /// The distinct `alpn` lists.
    alpn: Vec<AlpnList>,
    /// Exact names, to the first route of the name.
    exact: Index,
    /// Wildcards' suffixes with their leading dot (`.tenants.example.com`), likewise.
    wildcards: Index,
    /// Labels, to their route: a patch refuses a label taken.
    labels: Index,
    /// Each tenant file's routes, as runs of route numbers.
    files: HashMap<Arc<Path>, Vec<Range<u32>>>,
    /// `[default]`'s route number; [`NONE`]: none.
    default: u32,
    /// Routes a patch took out, left in place.
    dead: usize,
    /// Whether the config has an `http` listener: targets get port-80 pools.
    serves_http: bool,
    /// The series of connections that match no route.
    unmatched: OnceBox<RouteHandles>,
}

/// One route, as offsets into the table's text and numbers of its other parts, and its series
/// (registered on first use) beside them: a lookup touches one line of memory for both.
#[derive(Debug)]
struct Entry {
    /// Where its pattern starts in the table's text.
    text: u32,
    /// Bytes of its own label after the pattern; 0: the pattern is its label.
    label: u32,
    /// Bytes of its pattern.
    pattern: u16,
    wildcard: bool,
    /// Taken out by a patch: in no index, skipped by [`RouteTable::routes`].
    dead: bool,
    /// Its target, by index in `targets`.
    target: u32,
    /// Its `alpn` list, by index in `alpn`; [`NONE`]: none.
    alpn: u32,
    /// The next route with the same pattern (their order doesn't matter: routes of one pattern
    /// never share a protocol); [`NONE`]: the last.
    next: u32,
    series: OnceBox<RouteHandles>,
}

/// A target and what it has beside its config: its pools' live state, and how many live routes
/// have it (a target no route has any more runs no checks).
#[derive(Debug, Clone)]
struct Shared {
    target: Arc<Target>,
    pool: Arc<Pool>,
    /// Its port-80 backends, where the config has an `http` listener.
    http: Option<Arc<Pool>>,
    routes: u32,
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
        let count = |wildcard: bool| {
            config
                .routes
                .iter()
                .filter(|route| matches!(route.sni, Some(NamePattern::Wildcard(_))) == wildcard)
                .count()
        };
        let all = config.routes.len() + usize::from(config.default.is_some());
        let mut table = Self {
            text: String::with_capacity(config.routes.iter().map(|route| route.name.len()).sum()),
            routes: Vec::with_capacity(all),
            targets: Vec::new(),
            alpn: Vec::new(),
            exact: Index::with_capacity(count(false)),
            wildcards: Index::with_capacity(count(true)),
            labels: Index::with_capacity(all),
            files: HashMap::new(),
            default: NONE,
            dead: 0,
            serves_http: config
                .listeners
                .iter()
                .any(|listen| listen.protocol == crate::config::Protocol::Http),
            unmatched: OnceBox::new(),
        };
        let mut adding = Adding::new(&table, previous);
        for route in &config.routes {
            // The config refused routes that tie or share a label, and the indexes have room.
            let _ = table.add(route, &mut adding);
        }
        if let Some(default) = &config.default {
            let _ = table.add(default, &mut adding);
            table.default = table.routes.len() as u32 - 1;
        }
        table
    }

    /// Adds `route` after the others: its text, its target (one of `adding`'s, or a new one with
    /// the state of the pool of its label before), its `alpn` list, and its entries in the
    /// indexes. `false`, with nothing added, where it would tie with a route of its pattern,
    /// its label is taken, or an index is full.
    fn add(&mut self, route: &Route, adding: &mut Adding<'_>) -> bool {
        let start = self.text.len();
        if let Some(pattern) = &route.sni {
            use fmt::Write as _;
            // A String's fmt::Write never fails.
            let _ = write!(self.text, "{pattern}");
        }
        let wildcard = matches!(route.sni, Some(NamePattern::Wildcard(_)));
        let pattern = self.text.len() - start;
        let label = match self.text[start..] == *route.name {
            true => 0,
            false => {
                self.text.push_str(&route.name);
                route.name.len()
            }
        };
        let number = self.routes.len() as u32;
        let entry = Entry {
            // Offsets fit: a config is read into memory whole, and each pattern is at most 257
            // bytes (a wildcard's `*.` and 255).
            text: start as u32,
            label: label as u32,
            pattern: pattern as u16,
            wildcard,
            dead: false,
            target: NONE,
            alpn: NONE,
            next: NONE,
            series: OnceBox::new(),
        };
        let refused = |table: &mut Self| {
            table.text.truncate(start);
            false
        };
        // Room, no tie with a route of its pattern, and its label free.
        let (text, routes) = (&self.text, &self.routes);
        let key_of = |index: u32| match index == number {
            true => key(text, &entry),
            false => key(text, &routes[index as usize]),
        };
        let label_of = |index: u32| match index == number {
            true => name(text, &entry).as_bytes(),
            false => name(text, &routes[index as usize]).as_bytes(),
        };
        let index = match wildcard {
            true => &self.wildcards,
            false => &self.exact,
        };
        let first = match route.sni {
            None => None,
            Some(_) if !index.has_room(1) => return refused(self),
            Some(_) => index.get(key(text, &entry), key_of),
        };
        let ties = self.chain(first).any(|other| {
            let other = self.alpn_of(other);
            match (route.alpn.is_empty(), other.is_empty()) {
                (true, true) => true,
                (false, false) => route.alpn.iter().any(|protocol| other.contains(protocol)),
                _ => false,
            }
        });
        if ties
            || !self.labels.has_room(1)
            || self
                .labels
                .get(name(text, &entry).as_bytes(), label_of)
                .is_some()
        {
            return refused(self);
        }

        let mut entry = entry;
        entry.target = adding.target(route, self);
        entry.alpn = match route.alpn.is_empty() {
            true => NONE,
            false => adding.alpn(&route.alpn, self),
        };
        self.targets[entry.target as usize].routes += 1;
        self.routes.push(entry);
        let (text, routes) = (&self.text, &mut self.routes);
        let key_of = |index: u32| key(text, &routes[index as usize]);
        self.labels.insert(
            name(text, &routes[number as usize]).as_bytes(),
            number,
            |index| name(text, &routes[index as usize]).as_bytes(),
        );
        if route.sni.is_some() {
            let index = match wildcard {
                true => &mut self.wildcards,
                false => &mut self.exact,
            };
            if let Some(first) = index.insert(key(text, &routes[number as usize]), number, key_of) {
                // Second in its chain: the order of a pattern's routes doesn't matter.
                routes[number as usize].next = routes[first as usize].next;
                routes[first as usize].next = number;
            }
        }
        if let Some(file) = &route.file {
            let runs = self.files.entry(file.clone()).or_default();
            match runs.last_mut() {
                Some(run) if run.end == number => run.end += 1,
                _ => runs.push(number..number + 1),
            }
        }
        true
    }

    /// The routes of one pattern, from `first` on.
    fn chain(&self, first: Option<u32>) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(first, |&index| {
            Some(self.routes[index as usize].next).filter(|&next| next != NONE)
        })
    }

    /// A route's `alpn` list; empty: none.
    fn alpn_of(&self, index: u32) -> &[Box<[u8]>] {
        match self.routes[index as usize].alpn {
            NONE => &[],
            alpn => &self.alpn[alpn as usize],
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
        for protocol in offer.iter() {
            for index in self.chain(Some(first)) {
                if let Some(accepted) = self
                    .alpn_of(index)
                    .iter()
                    .find(|accepted| ***accepted == *protocol)
                {
                    return Some((index, Some(&**accepted)));
                }
            }
        }
        self.chain(Some(first))
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
        match self.default {
            NONE => Decision {
                route: None,
                metrics: self.unmatched(),
                pool: None,
                http_pool: None,
                reason,
            },
            default => self.decision(default, reason),
        }
    }

    /// The series of connections that match no route (`route="none"`).
    pub fn unmatched(&self) -> RouteMetrics<'_> {
        RouteMetrics::new(NO_ROUTE, &self.unmatched)
    }

    /// Every distinct target's pools (its backends, then its port-80 backends), in the order of
    /// the first route that has it; not those of targets no route has any more.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.targets
            .iter()
            .filter(|shared| shared.routes > 0)
            .flat_map(|shared| std::iter::once(&shared.pool).chain(shared.http.as_ref()))
    }

    /// Every route: in file order, then `[default]`, then the routes a patch added.
    pub fn routes(&self) -> impl Iterator<Item = RouteRef<'_>> {
        (0..self.routes.len() as u32)
            .filter(|&index| !self.routes[index as usize].dead)
            .map(|index| RouteRef { table: self, index })
    }

    /// Bytes the table holds, by part: its text, its routes, its indexes, and the rest (targets,
    /// `alpn` lists).
    pub fn footprint(&self) -> Footprint {
        [
            ("text", self.text.capacity()),
            ("routes", self.routes.capacity() * size_of::<Entry>()),
            (
                "indexes",
                self.exact.bytes() + self.wildcards.bytes() + self.labels.bytes(),
            ),
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

/// A route's label: its own, or its pattern.
fn name<'t>(text: &'t str, entry: &Entry) -> &'t str {
    let (start, pattern) = (entry.text as usize, usize::from(entry.pattern));
    match entry.label {
        0 => &text[start..start + pattern],
        label => &text[start + pattern..start + pattern + label as usize],
    }
}

/// What adding routes to a table looks up: the targets and `alpn` lists it has (by pointer, by
/// value), and the pools of the table before it by label, whose state new pools keep.
struct Adding<'p> {
    target_of: HashMap<*const Target, u32>,
    alpn_of: HashMap<AlpnList, u32>,
    before: HashMap<&'p str, &'p Shared>,
}

impl<'p> Adding<'p> {
    fn new(table: &RouteTable, before: Option<&'p RouteTable>) -> Self {
        Self {
            target_of: (table.targets.iter().enumerate())
                .map(|(index, shared)| (Arc::as_ptr(&shared.target), index as u32))
                .collect(),
            alpn_of: (table.alpn.iter().enumerate())
                .map(|(index, list)| (list.clone(), index as u32))
                .collect(),
            before: before
                .iter()
                .flat_map(|table| &table.targets)
                .map(|shared| (shared.pool.route(), shared))
                .collect(),
        }
    }

    /// The number of `route`'s target in `table`, entered now if it is new there.
    fn target(&mut self, route: &Route, table: &mut RouteTable) -> u32 {
        *self
            .target_of
            .entry(Arc::as_ptr(&route.target))
            .or_insert_with(|| {
                let before = self.before.get(route.name.as_str());
                table.targets.push(Shared {
                    target: route.target.clone(),
                    pool: Arc::new(Pool::new(
                        &route.name,
                        &route.target.pool,
                        before.map(|shared| &*shared.pool),
                    )),
                    http: table.serves_http.then(|| {
                        Arc::new(Pool::new(
                            &route.name,
                            &route.target.http.pool,
                            before.and_then(|shared| shared.http.as_deref()),
                        ))
                    }),
                    routes: 0,
                });
                table.targets.len() as u32 - 1
            })
    }

    /// The number of `list` among `table`'s `alpn` lists, entered now if it is new there.
    fn alpn(&mut self, list: &[Box<[u8]>], table: &mut RouteTable) -> u32 {
        if let Some(&index) = self.alpn_of.get(list) {
            return index;
        }
        let list: AlpnList = list.into();
        table.alpn.push(list.clone());
        let index = table.alpn.len() as u32 - 1;
        self.alpn_of.insert(list, index);
        index
    }
}

impl<'a> RouteRef<'a> {
    /// Its label in logs and metrics: `name`, or the sni pattern plus `/alpn,list` when it has
    /// one; `default` for `[default]`.
    pub fn name(&self) -> &'a str {
        name(&self.table.text, self.entry())
    }

    /// Where it sends its traffic, and how.
    pub fn target(&self) -> &'a Arc<Target> {
        &self.shared().target
    }

    /// Its `alpn` list; empty: no condition.
    pub fn alpn(&self) -> &'a [Box<[u8]>] {
        self.table.alpn_of(self.index)
    }

    /// Its place in the config a table was made from (not patched): the index in
    /// `Config::routes`, which for `[default]` is their number.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// Its series.
    pub fn metrics(&self) -> RouteMetrics<'a> {
        RouteMetrics::new(self.name(), &self.entry().series)
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
