//! Accepting connections: the connection cap, accept errors, and handing each connection to its
//! own tracked task with the route table live at its accept.
//!
//! Accept errors (out of file descriptors, say) never end the loop: each is counted, logged once
//! per episode, and followed by a pause that doubles up to a second, so a listener can't spin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access_log::{AccessLog, Cause};
use super::context::{ConnectionSlots, ListenerContext, Shared};
use super::{connection, Live, Outcome, Side};

/// Longest pause after failed accepts before trying again.
pub(crate) const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A listener's bound sockets.
#[derive(Debug)]
pub enum Sockets {
    /// TCP: one listening socket per worker, in one `SO_REUSEPORT` group, each accepted on by
    /// its own worker thread.
    Tcp(Vec<std::net::TcpListener>),
    /// UDP (quic): one socket, served by one worker, which keeps the listener's flow table.
    Udp(std::net::UdpSocket),
}

/// A bound listener and what its connections share.
#[derive(Debug)]
pub struct Listener {
    /// Its sockets.
    pub sockets: Sockets,
    /// Its local address.
    pub address: SocketAddr,
    /// Whether it was bound with `SO_REUSEPORT` (a reload can't change that).
    pub reuse_port: bool,
    /// What its connections need to know of it.
    pub context: Arc<ListenerContext>,
}

/// Consecutive accept failures, for backing off and logging once per episode.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    backoff: Duration,
}

impl AcceptErrors {
    /// An accept succeeded: the episode, if any, is over.
    pub(crate) fn ok(&mut self) {
        self.backoff = Duration::ZERO;
    }

    /// An accept failed: logs the first failure of an episode, and says how long to pause.
    pub(crate) fn failed(
        &mut self,
        address: Option<SocketAddr>,
        error: &std::io::Error,
    ) -> Duration {
        if self.backoff.is_zero() {
            let listener = address.map_or_else(|| "-".to_owned(), |address| address.to_string());
            tracing::warn!(%listener, %error, "accept failed; backing off until accepts succeed");
        }
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
        self.backoff
    }
}

/// One worker's accept loop on its handle of a listening socket, until `stop` fires: each
/// connection is spawned, as a task tracked by `tracker`, on the worker's own runtime (it never
/// leaves that thread), with the routes live at its accept; past the connection cap it is closed
/// at once.
pub async fn accept(
    socket: std::net::TcpListener,
    listener: Arc<ListenerContext>,
    live: Arc<ArcSwap<Live>>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let address = socket.local_addr().ok();
    let socket = match TcpListener::from_std(socket) {
        Ok(socket) => socket,
        Err(error) => {
            // Only if the worker's poller can't take one more descriptor.
            let listener = address.map_or_else(|| "-".to_owned(), |address| address.to_string());
            tracing::error!(%listener, %error, "a worker cannot accept on this listener");
            return;
        }
    };
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (stream, client_addr) = match accepted {
            Ok(accepted) => {
                errors.ok();
                accepted
            }
            Err(error) => {
                listener.metrics.load().accept_errors.increment(1);
                let pause = errors.failed(address, &error);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = stop.cancelled() => return,
                }
            }
        };
        listener.metrics.load().accepted.increment(1);
        let live = live.load_full();
        let Some(slot) = ConnectionSlots::take(&shared) else {
            listener.metrics.load().over_max_connections.increment(1);
            AccessLog::new(client_addr, &live).end(Outcome::OverLimit, Side::Internal, Cause::None);
            continue;
        };
        tracker.spawn(connection::serve(
            Box::new((stream, client_addr)),
            live,
            listener.clone(),
            shared.clone(),
            slot,
        ));
    }
}
