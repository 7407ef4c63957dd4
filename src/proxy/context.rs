//! What a connection needs from the listener and the server that accepted it: the shutdown
//! stages, the per-address count of pending hellos, the budget of bytes all pending hellos may
//! hold, and the listener's own settings and series. Shared, read-mostly, lock-free.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Protocol;
use crate::metrics::ListenerMetrics;
use crate::proxy_protocol::Cidr;

/// The stage of shutdown a connection listens for (the accept loops have their own stops; when
/// the drain time is up, the workers drop what is left).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled the moment a drain begins, before the listeners close: `GET /readyz` answers
    /// 503 from then on.
    pub draining: CancellationToken,
    /// Closes connections still reading their hello.
    pub hellos: CancellationToken,
}

/// Connections still sending their hello, per client address (`limits.max_pending_per_ip`).
///
/// Lock-free: a count-min sketch of two rows of atomic counters, each address hashed with this
/// process's random key into one counter per row; an address's count is the smaller of its two.
/// Touched twice per connection (when its hello phase starts, after any PROXY header whose
/// source is the address counted, and when it ends), never on the data path. Fixed size
/// whatever the traffic. Two addresses share the limit only if they collide in both rows
/// (about one pair in a billion, and not one an attacker can aim for without the key).
#[derive(Debug)]
pub struct PendingHellos {
    key: RandomState,
    counters: Box<[AtomicU32]>,
}

/// Counters per row of the sketch.
const SKETCH_ROW: usize = 1 << 15;

impl Default for PendingHellos {
    fn default() -> Self {
        Self {
            key: RandomState::new(),
            counters: (0..2 * SKETCH_ROW).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl PendingHellos {
    /// A slot for one more pending hello from `address`, or `None` if it already has `limit`
    /// (0: no limit).
    pub(super) fn enter(&self, address: IpAddr, limit: usize) -> Option<PendingSlot<'_>> {
        if limit == 0 {
            return Some(PendingSlot {
                hellos: None,
                slots: [0, 0],
            });
        }
        let hash = self.key.hash_one(address);
        let slots = [
            (hash as usize) % SKETCH_ROW,
            SKETCH_ROW + ((hash >> 32) as usize) % SKETCH_ROW,
        ];
        let before = slots.map(|slot| self.counters[slot].fetch_add(1, Ordering::Relaxed));
        let slot = PendingSlot {
            hellos: Some(self),
            slots,
        };
        // Over the limit: the slot's drop takes the two increments back.
        ((before[0].min(before[1]) as usize) < limit).then_some(slot)
    }
}

/// One pending hello; given back when dropped.
#[derive(Debug)]
pub(crate) struct PendingSlot<'a> {
    hellos: Option<&'a PendingHellos>,
    /// Its counter in each row of the sketch.
    slots: [usize; 2],
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        let Some(hellos) = self.hellos else { return };
        for slot in self.slots {
            hellos.counters[slot].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The hellos this process has replayed to backends and whose connections are still open, by
/// the first 8 bytes of their random (unique per connection, RFC 8446 §4.1.2). A hello that
/// arrives with one of them is the proxy's own, come back through a routing loop (a backend that
/// is one of its own listeners, directly, through a name, or through another hop): it is closed
/// at once, so a loop can't snowball into every descriptor. Fixed size, lock-free; two hellos
/// sharing a slot only make a loop take one more hop to be seen.
#[derive(Debug)]
pub struct ReplayedHellos {
    slots: Box<[AtomicU64]>,
}

/// Slots in [`ReplayedHellos`].
const REPLAYED_SLOTS: usize = 1 << 12;

impl Default for ReplayedHellos {
    fn default() -> Self {
        Self {
            slots: (0..REPLAYED_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl ReplayedHellos {
    /// Notes a hello about to be replayed; forgotten when the guard drops. A zero prefix (no
    /// random to go by) is not noted.
    pub(super) fn note(&self, random_prefix: u64) -> ReplayedHello<'_> {
        let slot = &self.slots[random_prefix as usize % REPLAYED_SLOTS];
        if random_prefix != 0 {
            slot.store(random_prefix, Ordering::Relaxed);
        }
        ReplayedHello {
            slot,
            random_prefix,
        }
    }

    /// Whether a hello with this random is one the proxy itself replayed.
    pub(super) fn is_own(&self, random_prefix: u64) -> bool {
        random_prefix != 0
            && self.slots[random_prefix as usize % REPLAYED_SLOTS].load(Ordering::Relaxed)
                == random_prefix
    }
}

/// A replayed hello's entry, removed when dropped (unless another took its slot since).
#[derive(Debug)]
pub(super) struct ReplayedHello<'a> {
    slot: &'a AtomicU64,
    random_prefix: u64,
}

impl Drop for ReplayedHello<'_> {
    fn drop(&mut self) {
        let _ =
            self.slot
                .compare_exchange(self.random_prefix, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The connection cap (`limits.max_connections`), lock-free: taking a slot is one atomic add,
/// giving it back one atomic subtract, from whichever worker.
#[derive(Debug)]
pub struct ConnectionSlots {
    open: AtomicUsize,
    max: AtomicUsize,
}

impl ConnectionSlots {
    /// A cap of `max` connections open at once.
    pub fn new(max: usize) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// A new cap (a reload). Slots in use are not taken back: a lower cap takes effect as
    /// connections end.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A slot for one more connection, or `None` at the cap.
    pub(super) fn take(shared: &Arc<Shared>) -> Option<ConnectionSlot> {
        let slots = &shared.slots;
        if slots.open.fetch_add(1, Ordering::Relaxed) >= slots.max.load(Ordering::Relaxed) {
            slots.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionSlot(shared.clone()))
    }
}

/// One open connection's slot, given back when dropped.
#[derive(Debug)]
pub(super) struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.slots.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every connection shares, whatever listener accepted it: created once per server and
/// kept across reloads.
#[derive(Debug)]
pub struct Shared {
    /// The connection cap.
    pub slots: ConnectionSlots,
    /// Hellos replayed to backends, to see a routing loop.
    pub replayed: ReplayedHellos,
    /// The shutdown stage connections watch.
    pub shutdown: Shutdown,
    /// Pending hellos per client address.
    pub pending: PendingHellos,
    /// Bytes all pending hellos hold.
    pub hello_budget: HelloBudget,
}

impl Shared {
    /// What connections share, with a cap of `max_connections` open at once.
    pub fn new(max_connections: usize) -> Self {
        Self {
            slots: ConnectionSlots::new(max_connections),
            replayed: ReplayedHellos::default(),
            shutdown: Shutdown::default(),
            pending: PendingHellos::default(),
            hello_budget: HelloBudget::default(),
        }
    }
}

/// What each connection needs to know of the listener that accepted it.
#[derive(Debug)]
pub struct ListenerContext {
    /// Sources that must send a PROXY protocol header first (and the only ones that may);
    /// swapped whole when a reload changes `proxy_protocol.trusted`, read once per accept.
    pub proxy_trusted: ArcSwap<Vec<Cidr>>,
    /// The listener's series; made again when a reload installs the metrics recorder, so a
    /// listener kept from before `[metrics]` existed counts too.
    pub metrics: ArcSwap<ListenerMetrics>,
    /// Its bound address, the series' `listener` label.
    address: SocketAddr,
    /// What it speaks: TLS, or plaintext HTTP (port 80).
    pub protocol: Protocol,
}

impl ListenerContext {
    /// A context for the `protocol` listener bound at `address`, trusting PROXY headers from
    /// `trusted`.
    pub fn new(address: SocketAddr, protocol: Protocol, trusted: Vec<Cidr>) -> Self {
        Self {
            proxy_trusted: ArcSwap::from_pointee(trusted),
            metrics: ArcSwap::from_pointee(ListenerMetrics::new(&address.to_string())),
            address,
            protocol,
        }
    }

    /// Registers the listener's series again (with the recorder installed now).
    pub fn renew_metrics(&self) {
        self.metrics.store(std::sync::Arc::new(ListenerMetrics::new(
            &self.address.to_string(),
        )));
    }

    /// Whether connections from `source` must start with a PROXY header.
    pub(super) fn trusts(&self, source: IpAddr) -> bool {
        self.proxy_trusted
            .load()
            .iter()
            .any(|range| range.contains(source))
    }
}

/// Bytes all pending hellos hold together (`limits.max_pending_hello_bytes`): a buffer grows only
/// by what it can take from this budget, so a flood of stalled hellos can't pin more memory than
/// the operator allowed, whatever the number of source addresses.
#[derive(Debug, Default)]
pub struct HelloBudget {
    held: AtomicUsize,
}

impl HelloBudget {
    /// Takes `bytes` from the budget if that keeps the total within `limit`.
    pub(super) fn take(&self, bytes: usize, limit: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    pub(super) fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_hellos_are_limited_per_address_and_given_back() {
        let pending = PendingHellos::default();
        let (one, other): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let first = pending.enter(one, 2).unwrap();
        let _second = pending.enter(one, 2).unwrap();
        assert!(pending.enter(one, 2).is_none(), "a third from one address");
        assert!(
            pending.enter(one, 2).is_none(),
            "refusals give their count back"
        );
        let _elsewhere = pending.enter(other, 2).unwrap();
        drop(first);
        let _again = pending.enter(one, 2).unwrap();
        assert!(pending.enter(one, 0).is_some(), "0: no limit");
        drop((_second, _again, _elsewhere));
        assert!(pending
            .counters
            .iter()
            .all(|counter| counter.load(Ordering::Relaxed) == 0));
    }
}
