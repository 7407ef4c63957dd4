//! Accepting connections: the connection cap, accept errors, and handing each connection to its
//! own tracked task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
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
/// Locked twice per connection, when its hello phase starts (after any PROXY header, whose source
/// is the address counted) and when it ends; never on the data path.
/// Holds an entry only for addresses with a pending hello, so it is bounded by the connection cap.
#[derive(Debug, Default)]
pub struct PendingHellos {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PendingHellos {
    /// A slot for one more pending hello from `address`, or `None` if it already has `limit`
    /// (0: no limit).
    pub(super) fn enter(self: &Arc<Self>, address: IpAddr, limit: usize) -> Option<PendingSlot> {
        if limit > 0 {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(address).or_default();
            if *count >= limit {
                return None;
            }
            *count += 1;
        }
        Some(PendingSlot {
            hellos: (limit > 0).then(|| self.clone()),
            address,
        })
    }
}

/// One pending hello; given back when dropped.
#[derive(Debug)]
pub(super) struct PendingSlot {
    hellos: Option<Arc<PendingHellos>>,
    address: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let Some(hellos) = &self.hellos else { return };
        let mut counts = hellos.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
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
                shutdown.clone(),
                permit,
            ));
        }
    }
}
