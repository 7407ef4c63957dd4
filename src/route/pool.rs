//! A route's backends as they run: which members there are now (a host name's addresses
//! change), how healthy each is, and which ones a connection tries, in what order.
//!
//! Pure: no I/O and no clock. Time comes in as `now`, milliseconds on any monotonic scale that
//! starts above zero; the health checker, the resolver and the connect phase (in `proxy/`) feed
//! results in. Picking a member takes no lock: the member set is an `ArcSwap`, every count an
//! atomic.
//!
//! - Round robin walks a precomputed smooth weighted order (nginx's algorithm, run once when
//!   the set changes) from a shared cursor.
//! - Least connections scans for the fewest open connections per unit of weight, from a
//!   rotating start so that ties spread.
//! - Client hash is weighted rendezvous hashing: every member scores the client address, the
//!   highest score wins. A member leaving moves only the clients it had.
//!
//! A member is skipped while an active check holds it down or while it is ejected after
//! [`EJECT_AFTER`] connect failures in a row (for [`EJECTION_BASE_MS`], doubling with each
//! ejection up to [`EJECTION_MAX_MS`]; after one, a single failure ejects it again). If every
//! member is skipped, all are tried (panic mode).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use crate::config::{self, Backend, Balance, Health, MAX_MEMBERS};
use crate::metrics::MemberHandles;
use crate::name::ServerName;

/// Members one connection tries at most: the first and up to two more after a failure.
pub const MAX_ATTEMPTS: usize = 3;
/// Connect failures in a row that eject a member.
pub const EJECT_AFTER: u32 = 3;
/// The first ejection's length, in milliseconds.
pub const EJECTION_BASE_MS: u64 = 2_000;
/// The longest ejection, in milliseconds.
pub const EJECTION_MAX_MS: u64 = 120_000;

/// A route's backends and the state that outlives a reload.
#[derive(Debug)]
pub struct Pool {
    route: Arc<str>,
    balance: Balance,
    health: Option<Health>,
    /// The config's entries, in file order.
    entries: Vec<config::Member>,
    /// Each host entry's last good addresses (by index in `entries`); empty until resolved.
    /// Written by the resolver only, so a plain mutex off the data path.
    resolved: Mutex<Vec<Vec<SocketAddr>>>,
    members: ArcSwap<Members>,
    cursor: AtomicUsize,
    /// Whether the last pick found every member down.
    panicking: AtomicBool,
}

/// The members of a pool at one moment, with what balancing needs precomputed.
#[derive(Debug, Default)]
pub struct Members {
    list: Box<[Arc<Member>]>,
    weights: Box<[u32]>,
    /// Round robin's order: indexes into `list`, smooth and weighted.
    schedule: Box<[u16]>,
}

/// One backend address and its health; shared by every table that keeps it.
#[derive(Debug)]
pub struct Member {
    route: Arc<str>,
    /// Where it is.
    pub address: SocketAddr,
    /// Connections to it open now.
    active: AtomicU32,
    /// An active check holds it down.
    checked_down: AtomicBool,
    /// Checks in a row that disagree with `checked_down`.
    streak: AtomicU32,
    /// Connect failures in a row.
    failures: AtomicU32,
    /// Ejections since it last served; 0: not on probation.
    ejections: AtomicU32,
    /// Ejected until this time (0: not ejected).
    ejected_until: AtomicU64,
    /// Boxed: a member that never sees a connection or a check holds a pointer only.
    handles: OnceLock<Box<MemberHandles>>,
}

/// The members a connection tries, in order.
#[derive(Debug)]
pub struct Plan {
    members: Arc<Members>,
    order: [u16; MAX_ATTEMPTS],
    len: usize,
    /// `Some(true)` when this pick found every member down and the one before did not;
    /// `Some(false)` for the way back: a change the caller logs once.
    pub panic_changed: Option<bool>,
}

/// A change in a member's availability, for the caller to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Taken out of rotation, for this many milliseconds (an ejection) or until checks pass.
    Down(Option<u64>),
    /// Back in rotation.
    Up,
}

impl Pool {
    /// The pool of route `route` as `config` gives it, keeping the state of members (by
    /// address) and resolved host names of `previous`, the same route's pool before a reload.
    pub fn new(route: &str, config: &config::Pool, previous: Option<&Pool>) -> Self {
        let route: Arc<str> = route.into();
        let resolved = config
            .members
            .iter()
            .map(|entry| match (&entry.backend, previous) {
                (Backend::Host(..), Some(previous)) => previous.resolved_for(&entry.backend),
                _ => Vec::new(),
            })
            .collect();
        let pool = Self {
            route,
            balance: config.balance,
            health: config.health.clone(),
            entries: config.members.clone(),
            resolved: Mutex::new(resolved),
            members: ArcSwap::default(),
            cursor: AtomicUsize::new(0),
            panicking: AtomicBool::new(false),
        };
        let kept = previous.map(|previous| previous.members.load_full());
        pool.rebuild(kept.as_deref());
        if pool.health.is_none() {
            // Without checks nothing would ever bring back a member they held down.
            for member in pool.members.load().iter() {
                member.clear_checks();
            }
        }
        pool
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// How a connection's member is picked.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Active checks, if the route has them.
    pub fn health(&self) -> Option<&Health> {
        self.health.as_ref()
    }

    /// The config's entries that are host names: (index, host, port).
    pub fn hosts(&self) -> impl Iterator<Item = (usize, &ServerName, u16)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| match &entry.backend {
                Backend::Host(host, port) => Some((index, host, *port)),
                Backend::Addr(_) => None,
            })
    }

    /// Whether host entry `index` has addresses yet.
    pub fn is_resolved(&self, index: usize) -> bool {
        self.resolved
            .lock()
            .map(|resolved| !resolved[index].is_empty())
            .unwrap_or(false)
    }

    /// Host entry `index` now resolves to `addresses` (a failed resolution doesn't call this:
    /// the last good set stays). Returns whether the member set changed.
    pub fn set_resolved(&self, index: usize, mut addresses: Vec<SocketAddr>) -> bool {
        addresses.sort_unstable();
        addresses.dedup();
        {
            let Ok(mut resolved) = self.resolved.lock() else {
                return false;
            };
            if resolved[index] == addresses {
                return false;
            }
            resolved[index] = addresses;
        }
        let current = self.members.load_full();
        self.rebuild(Some(&current));
        true
    }

    /// The current members.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    fn resolved_for(&self, backend: &Backend) -> Vec<SocketAddr> {
        let Ok(resolved) = self.resolved.lock() else {
            return Vec::new();
        };
        self.entries
            .iter()
            .position(|entry| entry.backend == *backend)
            .map(|index| resolved[index].clone())
            .unwrap_or_default()
    }

    /// Makes the member set from the entries and resolved addresses, keeping the state of the
    /// members `kept` already has. The first entry to name an address gives its weight; past
    /// [`MAX_MEMBERS`] addresses, the rest are left out.
    fn rebuild(&self, kept: Option<&Members>) {
        let by_address: HashMap<SocketAddr, &Arc<Member>> = kept
            .map(|kept| {
                kept.list
                    .iter()
                    .map(|member| (member.address, member))
                    .collect()
            })
            .unwrap_or_default();
        let resolved = match self.resolved.lock() {
            Ok(resolved) => resolved.clone(),
            Err(_) => return,
        };
        let mut list: Vec<Arc<Member>> = Vec::new();
        let mut weights = Vec::new();
        for (entry, resolved) in self.entries.iter().zip(&resolved) {
            let addresses = match &entry.backend {
                Backend::Addr(address) => std::slice::from_ref(address),
                Backend::Host(..) => &resolved[..],
            };
            for &address in addresses {
                if list.len() == MAX_MEMBERS || list.iter().any(|m| m.address == address) {
                    continue;
                }
                list.push(match by_address.get(&address) {
                    Some(member) => Arc::clone(member),
                    None => Arc::new(Member::new(self.route.clone(), address)),
                });
                weights.push(entry.weight);
            }
        }
        let schedule = smooth_schedule(&weights);
        self.members.store(Arc::new(Members {
            list: list.into(),
            weights: weights.into(),
            schedule: schedule.into(),
        }));
    }

    /// The members a connection from `client` tries, in order: at most [`MAX_ATTEMPTS`], and
    /// at most the pool's size. Empty only while no host name has resolved.
    pub fn plan(&self, client: IpAddr, now: u64) -> Plan {
        let members = self.members.load_full();
        let count = members.list.len();
        let mut plan = Plan {
            order: [0; MAX_ATTEMPTS],
            len: 0,
            panic_changed: None,
            members,
        };
        if count <= 1 {
            // One member is always tried; none (a host name not resolved yet) is nothing to try.
            plan.len = count;
            return plan;
        }
        let members = &*plan.members;
        let any_up = members.list.iter().any(|member| member.is_available(now));
        if self.panicking.load(Relaxed) == any_up {
            // Changed since the last pick (once per change, whoever sees it first).
            if self.panicking.swap(!any_up, Relaxed) == any_up {
                plan.panic_changed = Some(!any_up);
            }
        }
        let wanted = count.min(MAX_ATTEMPTS);
        let eligible = |index: usize| !any_up || members.list[index].is_available(now);
        let mut order = [0u16; MAX_ATTEMPTS];
        let mut len = 0;
        let push = |order: &mut [u16; MAX_ATTEMPTS], len: &mut usize, index: usize| {
            if *len < wanted && !order[..*len].contains(&(index as u16)) {
                order[*len] = index as u16;
                *len += 1;
            }
        };
        match self.balance {
            Balance::RoundRobin => {
                let schedule = &members.schedule;
                let start = self.cursor.fetch_add(1, Relaxed);
                for step in 0..schedule.len() {
                    let index = schedule[(start + step) % schedule.len()] as usize;
                    if eligible(index) {
                        push(&mut order, &mut len, index);
                        if len == wanted {
                            break;
                        }
                    }
                }
            }
            Balance::LeastConnections => {
                let start = self.cursor.fetch_add(1, Relaxed);
                for _ in 0..wanted {
                    let mut best: Option<(usize, u64, u64)> = None;
                    for step in 0..count {
                        let index = (start + step) % count;
                        if !eligible(index) || order[..len].contains(&(index as u16)) {
                            continue;
                        }
                        let (active, weight) = (
                            u64::from(members.list[index].active.load(Relaxed)),
                            u64::from(members.weights[index]),
                        );
                        // Fewer connections per unit of weight: a/w < b/v as a·v < b·w.
                        if best.is_none_or(|(_, a, w)| active * w < a * weight) {
                            best = Some((index, active, weight));
                        }
                    }
                    match best {
                        Some((index, ..)) => push(&mut order, &mut len, index),
                        None => break,
                    }
                }
            }
            Balance::ClientHash => {
                // The `wanted` highest scores, highest first.
                let mut top = [(0.0f64, 0usize); MAX_ATTEMPTS];
                let mut kept = 0;
                for (index, member) in members.list.iter().enumerate() {
                    if !eligible(index) {
                        continue;
                    }
                    let score = rendezvous(client, member.address, members.weights[index]);
                    if kept < wanted {
                        kept += 1;
                    } else if score <= top[kept - 1].0 {
                        continue;
                    }
                    top[kept - 1] = (score, index);
                    let mut at = kept - 1;
                    while at > 0 && top[at - 1].0 < top[at].0 {
                        top.swap(at - 1, at);
                        at -= 1;
                    }
                }
                for &(_, index) in &top[..kept] {
                    push(&mut order, &mut len, index);
                }
            }
        }
        plan.order = order;
        plan.len = len;
        plan
    }
}

impl Members {
    /// Every member.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.list.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none (a host name not resolved yet).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Plan {
    /// The members to try, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.order[..self.len]
            .iter()
            .map(|&index| &self.members.list[index as usize])
    }

    /// How many members it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is nothing to try.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Member {
    fn new(route: Arc<str>, address: SocketAddr) -> Self {
        Self {
            route,
            address,
            active: AtomicU32::new(0),
            checked_down: AtomicBool::new(false),
            streak: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            handles: OnceLock::new(),
        }
    }

    /// The route it serves.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Its series, registered on first use (with its up gauge set).
    pub fn handles(&self) -> &MemberHandles {
        self.handles.get_or_init(|| {
            let handles = MemberHandles::new(&self.route, &self.address.to_string());
            handles.set_up(!self.checked_down.load(Relaxed) && self.ejections.load(Relaxed) == 0);
            Box::new(handles)
        })
    }

    /// Neither held down by checks nor ejected at `now`.
    pub fn is_available(&self, now: u64) -> bool {
        !self.checked_down.load(Relaxed) && self.ejected_until.load(Relaxed) <= now
    }

    /// Connections open to it now.
    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Counts a connection to it as open until the guard drops.
    pub fn open(self: &Arc<Self>) -> Open {
        self.active.fetch_add(1, Relaxed);
        self.handles().active.increment(1.0);
        Open(Arc::clone(self))
    }

    /// An active check's result, with the pool's `rise` and `fall`. Returns the change, if any.
    /// Called by one checker per member, so the streak needs no lock.
    pub fn checked(&self, passed: bool, rise: u32, fall: u32) -> Option<Change> {
        let down = self.checked_down.load(Relaxed);
        if passed != down {
            // Agrees with the current state.
            self.streak.store(0, Relaxed);
            return None;
        }
        let streak = self.streak.load(Relaxed) + 1;
        if streak < if down { rise } else { fall } {
            self.streak.store(streak, Relaxed);
            return None;
        }
        self.streak.store(0, Relaxed);
        self.checked_down.store(!down, Relaxed);
        self.handles()
            .set_up(down && self.ejections.load(Relaxed) == 0);
        Some(if down { Change::Up } else { Change::Down(None) })
    }

    /// Forgets what active checks said: for a pool that has none (any more).
    fn clear_checks(&self) {
        self.streak.store(0, Relaxed);
        if self.checked_down.swap(false, Relaxed) {
            self.handles().set_up(self.ejections.load(Relaxed) == 0);
        }
    }

    /// A connect to it failed at `now`. Returns the ejection it caused, if any.
    pub fn failed(&self, now: u64) -> Option<Change> {
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        let ejections = self.ejections.load(Relaxed);
        if failures < EJECT_AFTER && ejections == 0 {
            return None;
        }
        if self.ejected_until.load(Relaxed) > now {
            // Already out (a connection that picked it before the ejection).
            return None;
        }
        self.failures.store(0, Relaxed);
        self.ejections.store(ejections.saturating_add(1), Relaxed);
        let length = EJECTION_BASE_MS
            .saturating_mul(1 << ejections.min(16))
            .min(EJECTION_MAX_MS);
        self.ejected_until.store(now + length, Relaxed);
        self.handles().set_up(false);
        Some(Change::Down(Some(length)))
    }

    /// A connect to it succeeded. Returns [`Change::Up`] if it ends an ejection.
    pub fn succeeded(&self) -> Option<Change> {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) == 0 {
            return None;
        }
        self.ejections.store(0, Relaxed);
        self.ejected_until.store(0, Relaxed);
        let up = !self.checked_down.load(Relaxed);
        self.handles().set_up(up);
        up.then_some(Change::Up)
    }
}

/// A connection counted as open to a member; uncounted on drop.
#[derive(Debug)]
pub struct Open(Arc<Member>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
        self.0.handles().active.decrement(1.0);
    }
}

/// Smooth weighted round robin (nginx's): each step every member gains its weight and the
/// richest is picked and pays the total. Over one cycle each member appears `weight` times
/// (weights divided by their common divisor first), never bunched.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u16> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (index, weight) in weights.iter().enumerate() {
            current[index] += weight;
            if current[index] > current[best] {
                best = index;
            }
        }
        current[best] -= total;
        schedule.push(best as u16);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weighted rendezvous score of `member` for `client`: `weight / -ln(u)` with `u` in (0, 1)
/// from a fixed hash of both addresses (so the same across restarts and processes).
pub fn rendezvous(client: IpAddr, member: SocketAddr, weight: u32) -> f64 {
    let mut bytes = [0u8; 16 + 16 + 2];
    let client = match client {
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
        IpAddr::V6(ip) => ip.octets(),
    };
    let address = match member.ip() {
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
        IpAddr::V6(ip) => ip.octets(),
    };
    bytes[..16].copy_from_slice(&client);
    bytes[16..32].copy_from_slice(&address);
    bytes[32..].copy_from_slice(&member.port().to_be_bytes());
    let hash = mix(fnv1a(&bytes));
    // 53 bits into (0, 1).
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -unit.ln()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut hash: u64) -> u64 {
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests;
