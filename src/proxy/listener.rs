//! Accepting connections: the connection cap, accept errors, and handing each connection to its
//! own tracked task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access_log::AccessLog;
use super::{conn, Live, Outcome, Side};

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

/// A bound listening socket and what its connections share.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: TcpListener,
    /// Its local address.
    pub address: SocketAddr,
}

impl Listener {
    /// Accepts until `shutdown.accepting` fires, spawning each connection on `tracker` with the
    /// routes live at its accept; past `permits`, connections are closed at once.
    pub async fn run(
        self,
        live: Arc<ArcSwap<Live>>,
        permits: Arc<Semaphore>,
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
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                let mut log = AccessLog::new(client_addr);
                log.outcome = (Outcome::OverLimit, Side::Internal);
                continue;
            };
            let live = live.load_full();
            tracker.spawn(conn::serve(
                stream,
                client_addr,
                live,
                shutdown.clone(),
                permit,
            ));
        }
    }
}
