//! Accepting connections: the connection cap, accept errors, and handing each connection to its
//! own tracked task.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access_log::AccessLog;
use super::{conn, Live, Outcome, Side};
use crate::metrics::ListenerMetrics;
use crate::proxy_protocol::Cidr;

/// Longest pause after failed accepts (out of file descriptors, say) before trying again.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The stages of shutdown a connection listens for.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stops the accept loops.
    pub accepting: CancellationToken,
    /// Closes connections still reading their hello.
    pub hellos: CancellationToken,
    /// Closes spliced connections (when the drain time is up).
    pub splices: CancellationToken,
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
    pub(super) fn enter(self: &Arc<Self>, address: IpAddr, limit: usize) -> Option<PendingSlot> {
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
            hellos: Some(self.clone()),
            slots,
        };
        // Over the limit: the slot's drop takes the two increments back.
        ((before[0].min(before[1]) as usize) < limit).then_some(slot)
    }
}

/// One pending hello; given back when dropped.
#[derive(Debug)]
pub(super) struct PendingSlot {
    hellos: Option<Arc<PendingHellos>>,
    /// Its counter in each row of the sketch.
    slots: [usize; 2],
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let Some(hellos) = &self.hellos else { return };
        for slot in self.slots {
            hellos.counters[slot].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A bound listening socket and what its connections share.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: TcpListener,
    /// Its local address.
    pub address: SocketAddr,
    /// What its connections need to know of it.
    pub context: Arc<ListenerContext>,
}

/// What each connection needs to know of the listener that accepted it.
#[derive(Debug)]
pub struct ListenerContext {
    /// Sources that must send a PROXY protocol header first (and the only ones that may).
    pub proxy_trusted: Vec<Cidr>,
    /// The listener's series.
    pub metrics: ListenerMetrics,
}

impl Listener {
    /// Accepts until `shutdown.accepting` fires, spawning each connection on `tracker` with the
    /// routes live at its accept; past `permits`, connections are closed at once.
    pub async fn run(
        self,
        live: Arc<ArcSwap<Live>>,
        permits: Arc<Semaphore>,
        pending: Arc<PendingHellos>,
        tracker: TaskTracker,
        shutdown: Shutdown,
    ) {
        // Shared by this listener's connections: one reference count each, where cloning the
        // tokens would lock each token's node.
        let connection_shutdown = Arc::new(shutdown.clone());
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                accepted = self.socket.accept() => accepted,
                () = shutdown.accepting.cancelled() => return,
            };
            let (stream, client_addr) = match accepted {
                Ok(accepted) => {
                    backoff = Duration::ZERO;
                    accepted
                }
                Err(error) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(listener = %self.address, %error, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = shutdown.accepting.cancelled() => return,
                    }
                }
            };
            self.context.metrics.accepted.increment(1);
            let live = live.load_full();
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.context.metrics.over_max_connections.increment(1);
                let mut log = AccessLog::new(client_addr, live.table.unmatched());
                log.outcome = (Outcome::OverLimit, Side::Internal);
                continue;
            };
            tracker.spawn(conn::serve(
                stream,
                client_addr,
                live,
                self.context.clone(),
                pending.clone(),
                connection_shutdown.clone(),
                permit,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_hellos_are_limited_per_address_and_given_back() {
        let pending = Arc::new(PendingHellos::default());
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
