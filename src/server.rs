//! The running proxy: binds the listeners, keeps the live route table, reloads it, and shuts down
//! in stages (SPEC "Signals", "Reload", "Shutdown").
//!
//! Signals arrive as an injected stream of [`Signal`]: `main` feeds it from SIGHUP, SIGTERM and
//! SIGINT, tests from a channel. The config file is also watched: a change to it, whether
//! rewritten in place or replaced by a rename (as editors and config managers do), reloads it.
//! Every reload goes through [`config::load`], like start-up; it either applies whole (routes,
//! limits, listeners added and removed) or not at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigError, Listen};
use crate::metrics::{self as series, ListenerMetrics};
use crate::proxy::{Listener, ListenerContext, Live, PendingHellos, Shutdown};

/// How long a burst of file events (an editor writes, renames, touches) settles before one
/// reload.
const SETTLE: Duration = Duration::from_millis(50);

/// What the outside world asks of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Load the config file again and swap the route table (SIGHUP).
    Reload,
    /// Stop accepting, drain, exit (SIGTERM, SIGINT).
    Shutdown,
}

/// What the last reload did, published after each one (tests and embedders wait on it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Reloads attempted so far, refused ones included.
    pub attempts: u64,
    /// Why the last one was refused, or `None` if it applied.
    pub refused: Option<String>,
    /// The listeners' bound addresses after it, in config order.
    pub listeners: Vec<SocketAddr>,
}

/// A proxy with its listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    /// Bound listeners with the address routes.toml gave each.
    listeners: Vec<(SocketAddr, Listener)>,
    /// `GET /metrics`, where the config asks for it.
    metrics: Option<(TcpListener, SocketAddr)>,
    live: Arc<ArcSwap<Live>>,
    permits: Arc<Semaphore>,
    max_connections: usize,
    report: watch::Sender<ReloadReport>,
    /// Changes to the config file, watched from `bind` on so that none is missed.
    file_changes: mpsc::Receiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
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
        let listeners = bind_listeners(path, config, &HashMap::<_, ()>::new()).await?;
        let report = ReloadReport {
            listeners: listeners
                .iter()
                .map(|(_, listener)| listener.address)
                .collect(),
            ..ReloadReport::default()
        };
        let (file_events, file_changes) = mpsc::channel(1);
        Ok(Self {
            _watcher: watch_file(path, file_events),
            file_changes,
            path: path.to_owned(),
            listeners,
            metrics,
            live: Arc::new(ArcSwap::from_pointee(Live::new(config))),
            permits: Arc::new(Semaphore::new(config.limits.max_connections)),
            max_connections: config.limits.max_connections,
            report: watch::channel(report).0,
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
            .map(|(_, listener)| listener.address)
            .collect()
    }

    /// Follows reloads: each one publishes a new [`ReloadReport`].
    pub fn reloads(&self) -> watch::Receiver<ReloadReport> {
        self.report.subscribe()
    }

    /// Serves until [`Signal::Shutdown`] (or the end of `signals`), reloading on
    /// [`Signal::Reload`] and on changes to the config file, then drains: listeners close,
    /// connections still reading their hello close, spliced connections get `timeouts.drain` to
    /// finish, the rest are closed. Returns when every connection is gone.
    pub async fn run(mut self, mut signals: mpsc::Receiver<Signal>) {
        let shutdown = Shutdown::default();
        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        let pending = Arc::new(PendingHellos::default());
        let mut running = Running {
            shutdown: &shutdown,
            connections: &connections,
            accept_loops: &accept_loops,
            pending: &pending,
            stops: HashMap::new(),
        };
        for (configured, listener) in std::mem::take(&mut self.listeners) {
            running.start(&self, configured, listener);
        }
        // Metrics stay up through the drain, so it can be watched; they stop last.
        let metrics_stop = CancellationToken::new();
        let metrics_task = self.metrics.take().map(|(socket, address)| {
            tracing::info!(%address, "serving metrics");
            tokio::spawn(series::serve(
                socket,
                series::install(),
                metrics_stop.clone(),
            ))
        });
        notify_ready();

        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Some(Signal::Reload) => self.reload(&mut running).await,
                    Some(Signal::Shutdown) | None => break,
                },
                Some(()) = self.file_changes.recv() => {
                    // Let the burst of events one save makes settle, then reload once.
                    tokio::time::sleep(SETTLE).await;
                    while self.file_changes.try_recv().is_ok() {}
                    self.reload(&mut running).await;
                }
            }
        }

        let drain = self.live.load().timeouts.drain;
        tracing::info!(drain_ms = drain.as_millis() as u64, "shutting down");
        shutdown.accepting.cancel();
        accept_loops.close();
        accept_loops.wait().await;
        tracing::info!(
            connections = connections.len(),
            "listeners closed; draining"
        );
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

    /// Loads the config file again and applies it whole, or refuses it with one WARN line and
    /// keeps everything as it was.
    async fn reload(&mut self, running: &mut Running<'_>) {
        let result = match config::load(&self.path) {
            Ok(config) => match bind_listeners(&self.path, &config, &running.stops).await {
                Ok(added) => {
                    self.apply(&config, added, running);
                    Ok(config)
                }
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match result {
            Ok(config) => {
                metrics::counter!(series::CONFIG_RELOADS, "result" => "ok").increment(1);
                tracing::info!(file = %self.path.display(), "config reloaded");
                let listeners = config
                    .listeners
                    .iter()
                    .filter_map(|listen| {
                        running
                            .stops
                            .get(&listen.address)
                            .map(|(address, _)| *address)
                    })
                    .collect();
                self.report.send_modify(|report| {
                    report.attempts += 1;
                    report.refused = None;
                    report.listeners = listeners;
                });
            }
            Err(error) => {
                metrics::counter!(series::CONFIG_RELOADS, "result" => "error").increment(1);
                tracing::warn!(%error, "reload refused; the previous config stays");
                self.report.send_modify(|report| {
                    report.attempts += 1;
                    report.refused = Some(error.to_string());
                });
            }
        }
    }

    /// Swaps in `config`: routes and limits for new connections, the connection cap, and the
    /// listener set (`added` already bound; listeners the config no longer names stop).
    fn apply(
        &mut self,
        config: &Config,
        added: Vec<(SocketAddr, Listener)>,
        running: &mut Running<'_>,
    ) {
        self.live.store(Arc::new(Live::new(config)));
        let wanted: Vec<SocketAddr> = config
            .listeners
            .iter()
            .map(|listen| listen.address)
            .collect();
        running.stops.retain(|configured, (address, stop)| {
            let keep = wanted.contains(configured);
            if !keep {
                tracing::info!(%address, "listener closed");
                stop.cancel();
            }
            keep
        });
        for (configured, listener) in added {
            running.start(self, configured, listener);
        }
        let max = config.limits.max_connections;
        if max > self.max_connections {
            self.permits.add_permits(max - self.max_connections);
        } else if max < self.max_connections {
            // Slots in use are not taken back: the cap shrinks as connections end.
            let permits = self.permits.clone();
            let fewer = (self.max_connections - max) as u32;
            tokio::spawn(async move {
                if let Ok(taken) = permits.acquire_many_owned(fewer).await {
                    taken.forget();
                }
            });
        }
        self.max_connections = max;
    }
}

/// The parts of a running server that reloads change.
struct Running<'a> {
    shutdown: &'a Shutdown,
    connections: &'a TaskTracker,
    accept_loops: &'a TaskTracker,
    pending: &'a Arc<PendingHellos>,
    /// Each listener's stop, by the address routes.toml gives it, with its bound address.
    stops: HashMap<SocketAddr, (SocketAddr, CancellationToken)>,
}

impl Running<'_> {
    fn start(&mut self, server: &Server, configured: SocketAddr, listener: Listener) {
        tracing::info!(address = %listener.address, "listening");
        let stop = self.shutdown.accepting.child_token();
        self.stops
            .insert(configured, (listener.address, stop.clone()));
        let shutdown = Shutdown {
            accepting: stop,
            ..self.shutdown.clone()
        };
        self.accept_loops.spawn(listener.run(
            server.live.clone(),
            server.permits.clone(),
            self.pending.clone(),
            self.connections.clone(),
            shutdown,
        ));
    }
}

/// Binds the listeners of `config` that are not in `bound` already (by the address routes.toml
/// gives them), with the address routes.toml gave each.
async fn bind_listeners<T>(
    path: &Path,
    config: &Config,
    bound: &HashMap<SocketAddr, T>,
) -> Result<Vec<(SocketAddr, Listener)>, ConfigError> {
    let mut listeners = Vec::new();
    for (index, listen) in config.listeners.iter().enumerate() {
        if bound.contains_key(&listen.address) {
            continue;
        }
        let (socket, address) = bind(path, listen, &format!("listen[{index}].address")).await?;
        let context = Arc::new(ListenerContext {
            proxy_trusted: listen.proxy_trusted.clone(),
            metrics: ListenerMetrics::new(&address.to_string()),
        });
        listeners.push((
            listen.address,
            Listener {
                socket,
                address,
                context,
            },
        ));
    }
    Ok(listeners)
}

/// Sends `()` on `events` whenever the file at `path` changes, is replaced or is created. The
/// directory is watched, not the file, so a replacement by rename is seen. `None` (with a WARN
/// line) where the platform can't watch; SIGHUP still reloads.
fn watch_file(path: &Path, events: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;

    let file_name = path.file_name()?.to_owned();
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event
            .paths
            .iter()
            .any(|changed| changed.file_name() == Some(&file_name))
        {
            // A full channel already holds a pending reload.
            let _ = events.try_send(());
        }
    };
    let watching = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(&directory, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watching {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(%error, directory = %directory.display(), "cannot watch the config file; reload with SIGHUP");
            None
        }
    }
}

/// Binds `listen` (which routes.toml names as `key`), or says which line couldn't be bound.
async fn bind(
    path: &Path,
    listen: &Listen,
    key: &str,
) -> Result<(TcpListener, SocketAddr), ConfigError> {
    let bound = listener_socket(listen).and_then(|socket| {
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

/// Connections the kernel queues for `accept` on each listener.
const BACKLOG: u32 = 4096;

/// A listening socket for `listen`: `SO_REUSEADDR` always (a restart can bind while old
/// connections linger in TIME_WAIT), `SO_REUSEPORT` where asked.
fn listener_socket(listen: &Listen) -> std::io::Result<TcpListener> {
    let socket = if listen.address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if listen.reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(listen.address)?;
    socket.listen(BACKLOG)
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
