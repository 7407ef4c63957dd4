//! The running proxy: binds the listeners, keeps the live route table, reloads it, and shuts down
//! in stages (SPEC "Signals", "Reload", "Shutdown").
//!
//! Signals arrive as an injected stream of [`Signal`]: `main` feeds it from SIGHUP, SIGTERM and
//! SIGINT, tests from a channel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigError, Listen};
use crate::metrics::{self as series, ListenerMetrics};
use crate::proxy::{Listener, Live, PendingHellos, Shutdown};

/// What the outside world asks of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Load the config file again and swap the route table (SIGHUP).
    Reload,
    /// Stop accepting, drain, exit (SIGTERM, SIGINT).
    Shutdown,
}

/// A proxy with its listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    listeners: Vec<Listener>,
    /// `GET /metrics`, where the config asks for it.
    metrics: Option<(TcpListener, SocketAddr)>,
    live: Arc<ArcSwap<Live>>,
    permits: Arc<Semaphore>,
}

impl Server {
    /// Binds every listener of `config` (read from `path`).
    ///
    /// # Errors
    /// A listener that can't be bound, as a [`ConfigError`] naming its line in `path`.
    pub async fn bind(path: &Path, config: &Config) -> Result<Self, ConfigError> {
        // The recorder goes in before any handle is made, or those handles would record nothing.
        let metrics = match &config.metrics {
            Some(listen) => {
                let socket = bind(path, listen, "metrics.address").await?;
                series::install();
                Some(socket)
            }
            None => None,
        };
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (index, listen) in config.listeners.iter().enumerate() {
            let (socket, address) = bind(path, listen, &format!("listen[{index}].address")).await?;
            let metrics = ListenerMetrics::new(&address.to_string());
            listeners.push(Listener {
                socket,
                address,
                metrics,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            listeners,
            metrics,
            live: Arc::new(ArcSwap::from_pointee(Live::new(config))),
            permits: Arc::new(Semaphore::new(config.limits.max_connections)),
        })
    }

    /// Where `GET /metrics` is served, if the config asks for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, address)| *address)
    }

    /// The bound addresses, in config order (the real ports where the config said `:0`).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|listener| listener.address)
            .collect()
    }

    /// Serves until [`Signal::Shutdown`] (or the end of `signals`), then drains: listeners
    /// close, connections still reading their hello close, spliced connections get
    /// `timeouts.drain` to finish, the rest are closed. Returns when every connection is gone.
    pub async fn run(self, mut signals: mpsc::Receiver<Signal>) {
        let shutdown = Shutdown::default();
        let connections = TaskTracker::new();
        let pending = Arc::new(PendingHellos::default());
        let accept_loops = TaskTracker::new();
        for listener in self.listeners {
            tracing::info!(address = %listener.address, "listening");
            accept_loops.spawn(listener.run(
                self.live.clone(),
                self.permits.clone(),
                pending.clone(),
                connections.clone(),
                shutdown.clone(),
            ));
        }
        // Metrics stay up through the drain, so it can be watched; they stop last.
        let metrics_stop = tokio_util::sync::CancellationToken::new();
        let metrics_task = self.metrics.map(|(socket, address)| {
            tracing::info!(%address, "serving metrics");
            tokio::spawn(series::serve(
                socket,
                series::install(),
                metrics_stop.clone(),
            ))
        });
        accept_loops.close();
        notify_ready();

        while let Some(Signal::Reload) = signals.recv().await {
            match config::load(&self.path) {
                Ok(config) => {
                    self.live.store(Arc::new(Live::new(&config)));
                    metrics::counter!(series::CONFIG_RELOADS, "result" => "ok").increment(1);
                    tracing::info!(file = %self.path.display(), "config reloaded");
                }
                Err(error) => {
                    metrics::counter!(series::CONFIG_RELOADS, "result" => "error").increment(1);
                    tracing::warn!(%error, "reload refused; the previous config stays");
                }
            }
        }

        let drain = self.live.load().timeouts.drain;
        tracing::info!(drain_ms = drain.as_millis() as u64, "shutting down");
        shutdown.accepting.cancel();
        accept_loops.wait().await;
        shutdown.hellos.cancel();
        connections.close();
        if tokio::time::timeout(drain, connections.wait())
            .await
            .is_err()
        {
            shutdown.splices.cancel();
            connections.wait().await;
        }
        metrics_stop.cancel();
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        tracing::info!("stopped");
    }
}

/// Binds `listen` (which routes.toml names as `key`), or says which line couldn't be bound.
async fn bind(
    path: &Path,
    listen: &Listen,
    key: &str,
) -> Result<(TcpListener, SocketAddr), ConfigError> {
    let bound = TcpListener::bind(listen.address).await.and_then(|socket| {
        let address = socket.local_addr()?;
        Ok((socket, address))
    });
    bound.map_err(|error| ConfigError {
        file: path.to_owned(),
        position: Some(listen.position),
        key: key.to_owned(),
        message: format!("cannot bind {}: {error}", listen.address),
    })
}

/// Tells systemd the proxy is ready (`READY=1` to `$NOTIFY_SOCKET`), if it asked.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(b"READY=1", &address)
            }
            None => socket.send_to(b"READY=1", &path),
        }
    });
    if let Err(error) = sent {
        tracing::warn!(%error, "could not notify systemd");
    }
}
