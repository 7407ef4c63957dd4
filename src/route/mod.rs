//! The route table: which route a ClientHello's server name and ALPN offer get, and why.
//!
//! Pure: no I/O. Built once per config (start-up, reload), then only read: a connection takes an
//! `Arc` of the table at accept and keeps it. Lookup allocates nothing: exact names are one hash
//! lookup, wildcards one hash lookup per label of the name (longest suffix first), so a table of
//! any size costs the same per hello. SPEC "Matching".
//!
//! Compact, for tables of millions of tenants: every route's pattern (and its label, where it
//! has its own) is written once into one text; a route is an [`Entry`] of offsets and numbers
//! (24 bytes) and its series (8: registered when it first sees a connection); the indexes of
//! patterns and labels hold `u32`s ([`index`]); routes with the same target share it, its
//! backends' live state and their series. A reload that changed a few tenant files patches a
//! copy rather than building anew ([`patch`]).

mod index;
mod patch;
mod pool;
mod set;

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
use set::{Entry, Record, Set};

/// No next route, or no `alpn` list.
const NONE: u32 = u32::MAX;

/// A route's `alpn` list.
type AlpnList = Box<[Box<[u8]>]>;

/// Bytes a table holds, by part, as `(part, bytes)`.
pub type Footprint = [(&'static str, usize); 4];

/// Routes by name, ready for lookup.
#[derive(Debug)]
pub struct RouteTable {
    /// The routes a build made, in file order, then `[default]`: shared by the tables patched
    /// from this one.
    base: Arc<Set>,
    /// The routes patches added since (few).
    added: Set,
    /// A bit per route of `base`: set where a patch took it out.
    dead: Vec<u64>,
    /// Bits set in `dead`.
    dead_count: usize,
    /// The distinct targets, with their pools.
    targets: Vec<Shared>,
    /// The distinct `alpn` lists.
    alpn: Vec<AlpnList>,
    /// Each tenant file's routes, as runs of numbers in `base` and in `added`.
    files: HashMap<Arc<Path>, Runs>,
    /// `[default]`'s route number; [`NONE`]: none.
    default: u32,
    /// Whether the config has an `http` listener: targets get port-80 pools.
    serves_http: bool,
    /// The series of connections that match no route.
    unmatched: OnceBox<RouteHandles>,
}

/// A tenant file's routes in a table: runs of numbers in its base and in its added set.
#[derive(Debug, Clone, Default)]
struct Runs {
    base: Vec<Range<u32>>,
    added: Vec<Range<u32>>,
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
    number: u32,
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
        let text = config.routes.iter().map(|route| route.name.len()).sum();
        let mut table = Self {
            base: Arc::new(Set::with_capacity(0, 0, 0, 0)),
            added: Set::with_capacity(0, 0, 0, 0),
            dead: Vec::new(),
            dead_count: 0,
            targets: Vec::new(),
            alpn: Vec::new(),
            files: HashMap::new(),
            default: NONE,
            serves_http: config
                .listeners
                .iter()
                .any(|listen| listen.protocol == crate::config::Protocol::Http),
            unmatched: OnceBox::new(),
        };
        let mut base = Set::with_capacity(count(false), count(true), all, text);
        let mut adding = Adding::new(&table, previous);
        let mut pattern = String::new();
        // The config refused routes that tie or share a label, and the indexes have room.
        for route in config.routes.iter().chain(&config.default) {
            let number = base.push(adding.record(route, &mut pattern, &mut table));
            if let Some(file) = &route.file {
                runs(
                    &mut table.files.entry(file.clone()).or_default().base,
                    number,
                );
            }
        }
        if config.default.is_some() {
            table.default = base.len() as u32 - 1;
        }
        table.dead = vec![0; base.len().div_ceil(64)];
        table.base = Arc::new(base);
        table
    }

    /// Route `number`: in the base set, or in the added set after it.
    fn entry(&self, number: u32) -> &Entry {
        match number.checked_sub(self.base.len() as u32) {
            None => self.base.entry(number),
            Some(added) => self.added.entry(added),
        }
    }

    fn is_dead(&self, number: u32) -> bool {
        self.dead_count > 0
            && (number as usize) < self.base.len()
            && self.dead[number as usize / 64] & (1 << (number % 64)) != 0
    }

    /// The first routes of a pattern (by its key: an exact name, or a wildcard's suffix with
    /// its dot) in the base and the added set: one hash of the key each.
    fn heads(&self, wildcard: bool, key: &[u8]) -> [Option<u32>; 2] {
        let added = match self.added.len() {
            0 => None,
            _ => self.added.first(wildcard, key),
        };
        [self.base.first(wildcard, key), added]
    }

    /// The live routes of a pattern, from its `heads`.
    fn pattern(&self, [base, added]: [Option<u32>; 2]) -> impl Iterator<Item = u32> + '_ {
        let offset = self.base.len() as u32;
        (self.base.chain(base))
            .filter(|&number| !self.is_dead(number))
            .chain(self.added.chain(added).map(move |added| offset + added))
    }

    /// The live route labelled `label`, in either set.
    fn labelled(&self, label: &str) -> Option<u32> {
        match self.base.labelled(label) {
            Some(number) if !self.is_dead(number) => Some(number),
            _ => (self.added.labelled(label)).map(|added| self.base.len() as u32 + added),
        }
    }

    /// A route's `alpn` list; empty: none.
    fn alpn_of(&self, number: u32) -> &[Box<[u8]>] {
        match self.entry(number).alpn {
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
        if let Some((number, protocol)) = self.pick(false, name.as_bytes(), offer) {
            return self.decision(number, Reason::Exact { protocol });
        }
        if self.base.has_wildcards() || self.added.has_wildcards() {
            // Longest suffix first: cut the name after each of its dots, left to right.
            for (dot, _) in name.match_indices('.').filter(|&(dot, _)| dot > 0) {
                if let Some((number, protocol)) = self.pick(true, &name.as_bytes()[dot..], offer) {
                    return self.decision(number, Reason::Wildcard { protocol });
                }
            }
        }
        self.fallback(Reason::NoMatch)
    }

    /// The route of a pattern (by its key) for `offer`, and the protocol (from the route's own
    /// list, so the decision borrows only the table) that made it match.
    fn pick(&self, wildcard: bool, key: &[u8], offer: &Alpn) -> Option<(u32, Option<&[u8]>)> {
        let heads = self.heads(wildcard, key);
        if heads == [None, None] {
            return None;
        }
        for protocol in offer.iter() {
            for number in self.pattern(heads) {
                if let Some(accepted) =
                    (self.alpn_of(number).iter()).find(|accepted| ***accepted == *protocol)
                {
                    return Some((number, Some(&**accepted)));
                }
            }
        }
        self.pattern(heads)
            .find(|&number| self.entry(number).alpn == NONE)
            .map(|number| (number, None))
    }

    fn decision<'a>(&'a self, number: u32, reason: Reason<'a>) -> Decision<'a> {
        let route = RouteRef {
            table: self,
            number,
        };
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

    /// Every route: in file order, then `[default]`, then the routes patches added.
    pub fn routes(&self) -> impl Iterator<Item = RouteRef<'_>> {
        (0..(self.base.len() + self.added.len()) as u32)
            .filter(|&number| !self.is_dead(number))
            .map(|number| RouteRef {
                table: self,
                number,
            })
    }

    /// Bytes the table's base set holds, by part: its text, its routes (with the bits marking
    /// those taken out), its indexes, and its targets and `alpn` lists.
    pub fn footprint(&self) -> Footprint {
        let [text, routes, indexes] = self.base.bytes();
        let alpn: usize = self.alpn.iter().map(|list| list.len() * 16).sum();
        [
            ("text", text),
            ("routes", routes + self.dead.len() * 8),
            ("indexes", indexes),
            ("targets", self.targets.len() * size_of::<Shared>() + alpn),
        ]
    }
}

/// Adds `number` to `runs`: to the last run, where it follows it.
fn runs(runs: &mut Vec<Range<u32>>, number: u32) {
    match runs.last_mut() {
        Some(run) if run.end == number => run.end += 1,
        _ => runs.push(number..number + 1),
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
            // Only pools some route had: a patch keeps the others, out of service.
            before: before
                .iter()
                .flat_map(|table| &table.targets)
                .filter(|shared| shared.routes > 0)
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

    /// `route` as a set enters it, its pattern written into `pattern`, its target and `alpn`
    /// list (counted as having one more route) entered in `table` if new there.
    fn record<'r>(
        &mut self,
        route: &'r Route,
        pattern: &'r mut String,
        table: &mut RouteTable,
    ) -> Record<'r> {
        pattern.clear();
        if let Some(sni) = &route.sni {
            use fmt::Write as _;
            // A String's fmt::Write never fails.
            let _ = write!(pattern, "{sni}");
        }
        let target = self.target(route, table);
        table.targets[target as usize].routes += 1;
        Record {
            pattern,
            label: &route.name,
            target,
            alpn: match route.alpn.is_empty() {
                true => NONE,
                false => self.alpn(&route.alpn, table),
            },
        }
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
        match self.number.checked_sub(self.table.base.len() as u32) {
            None => self.table.base.name(self.number),
            Some(added) => self.table.added.name(added),
        }
    }

    /// Where it sends its traffic, and how.
    pub fn target(&self) -> &'a Arc<Target> {
        &self.shared().target
    }

    /// Its `alpn` list; empty: no condition.
    pub fn alpn(&self) -> &'a [Box<[u8]>] {
        self.table.alpn_of(self.number)
    }

    /// Its place in the config a table was made from (not patched): the index in
    /// `Config::routes`, which for `[default]` is their number.
    pub fn index(&self) -> usize {
        self.number as usize
    }

    /// Its series.
    pub fn metrics(&self) -> RouteMetrics<'a> {
        RouteMetrics::new(self.name(), &self.table.entry(self.number).series)
    }

    fn shared(&self) -> &'a Shared {
        &self.table.targets[self.table.entry(self.number).target as usize]
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
