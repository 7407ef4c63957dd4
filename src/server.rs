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
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ConfigError, Listen, ListenKey};
use crate::metrics as series;
use crate::proxy::{pools, Listener, ListenerContext, Live, Shared, Sockets};
use crate::watch::ConfigWatch;
use crate::workers::{self, Workers};

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
    /// Where `GET /metrics` is served after it, if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// A proxy with its listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    /// Bound listeners with the (protocol, address) routes.toml gave each.
    listeners: Vec<(ListenKey, Listener)>,
    /// `GET /metrics`, where the config asks for it.
    metrics: Option<MetricsSocket>,
    live: Arc<ArcSwap<Live>>,
    /// What connections share: the connection cap, the shutdown stage, pending hellos.
    shared: Arc<Shared>,
    /// Worker threads to run (`--workers`).
    workers: usize,
    /// Resolves backend host names, in the background.
    resolver: pools::Resolver,
    report: watch::Sender<ReloadReport>,
    /// Changes to the config file, watched from `bind` on so that none is missed.
    file_changes: mpsc::Receiver<()>,
    watch: Option<ConfigWatch>,
    /// What the last load read (all of it, or the tenant files that changed), for a reload that
    /// reads only the tenant files changed since.
    loaded: config::Loaded,
    /// The listeners as the last full load gave them: routes read again are checked for loops
    /// through them.
    listens: Vec<Listen>,
}

impl Server {
    /// Binds every listener of `config` (read from `path`) for one worker per core.
    ///
    /// # Errors
    /// A listener that can't be bound, as a [`ConfigError`] naming its line in `path`.
    pub async fn bind(path: &Path, config: &Config) -> Result<Self, ConfigError> {
        Self::bind_for(path, config, workers::default_count()).await
    }

    /// Binds every listener of `config` (read from `path`) for `workers` worker threads (at
    /// least one).
    ///
    /// # Errors
    /// A listener that can't be bound, as a [`ConfigError`] naming its line in `path`.
    pub async fn bind_for(
        path: &Path,
        config: &Config,
        workers: usize,
    ) -> Result<Self, ConfigError> {
        let workers = workers.max(1);
        refuse_loops(path, config)?;
        // The recorder goes in before any handle is made, or those handles would record nothing.
        let metrics = match &config.metrics {
            Some(listen) => Some(MetricsSocket::bind(path, listen).await),
            None => None,
        }
        .transpose();
        let listeners = bind_listeners(path, config, &HashMap::<_, ()>::new(), workers).await;
        // Both are tried, so that of two addresses in use the first in the file is the one named.
        let (metrics, listeners) = match (metrics, listeners) {
            (Ok(metrics), Ok(listeners)) => (metrics, listeners),
            (Err(error), Ok(_)) | (Ok(_), Err(error)) => return Err(error),
            (Err(metrics), Err(listeners)) => {
                return Err(match metrics.position < listeners.position {
                    true => metrics,
                    false => listeners,
                })
            }
        };
        let report = ReloadReport {
            listeners: listeners
                .iter()
                .map(|(_, listener)| listener.address)
                .collect(),
            metrics: metrics.as_ref().map(|metrics| metrics.bound),
            ..ReloadReport::default()
        };
        let (file_events, file_changes) = mpsc::channel(1);
        let mut watch = ConfigWatch::start(path, file_events);
        if let Some(watch) = &mut watch {
            watch.set_includes(&config.include_dirs);
        }
        let resolver = pools::Resolver::system();
        let live = Live::new(config, None);
        pools::resolve_new(&live.table, &resolver, config.timeouts.connect).await;
        Ok(Self {
            watch,
            file_changes,
            path: path.to_owned(),
            listeners,
            metrics,
            resolver,
            live: Arc::new(ArcSwap::from_pointee(live)),
            shared: Arc::new(Shared::new(config.limits.max_connections)),
            workers,
            report: watch::channel(report).0,
            loaded: config.loaded.clone(),
            listens: config.listeners.clone(),
        })
    }

    /// Where `GET /metrics` is served, if the config asks for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|metrics| metrics.bound)
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
    ///
    /// # Errors
    /// The worker threads can't be started.
    pub async fn run(mut self, mut signals: mpsc::Receiver<Signal>) -> std::io::Result<()> {
        let workers = Workers::start(self.workers)?;
        let shared = self.shared.clone();
        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        let admin = TaskTracker::new();
        let background = TaskTracker::new();
        let mut running = Running {
            pool_work: pools::start(&self.live.load().table, &self.resolver, &background),
            background: &background,
            workers: &workers,
            shared: &shared,
            connections: &connections,
            accept_loops: &accept_loops,
            admin: &admin,
            listeners: HashMap::new(),
            quic_listeners: 0,
            metrics: None,
        };
        for (configured, listener) in std::mem::take(&mut self.listeners) {
            running.start(&self, configured, listener);
        }
        // Metrics stay up through the drain, so it can be watched; they stop last.
        running.serve_metrics(self.metrics.take());
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
        shared.shutdown.draining.cancel();
        tracing::info!(drain_ms = drain.as_millis() as u64, "shutting down");
        for listener in running.listeners.values() {
            listener.stop.cancel();
        }
        accept_loops.close();
        accept_loops.wait().await;
        tracing::info!(
            connections = connections.len(),
            "listeners closed; draining"
        );
        shared.shutdown.hellos.cancel();
        connections.close();
        // The drain ends when the connections do, at its limit, or at a second SIGTERM/SIGINT
        // (an operator's "now"), whichever comes first; then the rest are closed.
        let second_signal = async {
            while let Some(signal) = signals.recv().await {
                if signal == Signal::Shutdown {
                    tracing::info!("second shutdown signal: closing the remaining connections");
                    return;
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = connections.wait() => {}
            _ = tokio::time::timeout(drain, second_signal) => {
                // The rest are closed with their workers' runtimes, which drop their tasks.
                workers.stop().await;
            }
        }
        running.serve_metrics(None);
        running.pool_work.cancel();
        background.close();
        admin.close();
        admin.wait().await;
        background.wait().await;
        workers.stop().await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Loads the config file again and applies it whole, or refuses it with one WARN line and
    /// keeps everything as it was.
    async fn reload(&mut self, running: &mut Running<'_>) {
        // A reload may follow a symlink swap: watch where the path leads now.
        if let Some(watch) = &mut self.watch {
            watch.refresh();
        }
        if let Some(changed) = self.reload_tenants(running).await {
            self.report.send_modify(|report| {
                report.attempts += 1;
                report.refused = None;
            });
            reloaded(&self.path, changed);
            return;
        }
        let result = match config::load(&self.path) {
            Ok(config) => match self.prepare(&config, running).await {
                Ok(prepared) => {
                    // Backends' state carries over; new host names are resolved before the
                    // table serves.
                    let live = Live::new(&config, Some(&self.live.load()));
                    pools::resolve_new(&live.table, &self.resolver, config.timeouts.connect).await;
                    let old = self.live.load();
                    let (before, after) = (route_names(&old), route_names(&live));
                    let changed = Changed {
                        routes_added: after.difference(&before).count(),
                        routes_removed: before.difference(&after).count(),
                        listeners_added: prepared.added.len(),
                        listeners_removed: 0,
                    };
                    let (closing, listeners_removed) = self.apply(&config, live, prepared, running);
                    // Reported only once the removed listeners' sockets are closed.
                    closing.close();
                    closing.wait().await;
                    Ok((
                        config,
                        Changed {
                            listeners_removed,
                            ..changed
                        },
                    ))
                }
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match result {
            Ok((mut config, changed)) => {
                if let Some(watch) = &mut self.watch {
                    watch.set_includes(&config.include_dirs);
                }
                reloaded(&self.path, changed);
                let listeners = config
                    .listeners
                    .iter()
                    .filter_map(|listen| running.listeners.get(&listen.key()))
                    .map(|listener| listener.bound)
                    .collect();
                let metrics = running.metrics.as_ref().map(|metrics| metrics.bound);
                self.report.send_modify(|report| {
                    report.attempts += 1;
                    report.refused = None;
                    report.listeners = listeners;
                    report.metrics = metrics;
                });
                self.loaded = std::mem::take(&mut config.loaded);
                self.listens = config.listeners;
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

    /// A reload where routes.toml is as it was and only tenant files changed: reads those,
    /// patches the table and swaps it in; the listeners, limits and metrics stay as they are.
    /// `None`, with nothing changed, where it can't be done that way (see
    /// [`config::Loaded::changed_tenants`] and [`RouteTable::patched`]): the caller then reloads
    /// everything, which names any fault.
    async fn reload_tenants(&mut self, running: &mut Running<'_>) -> Option<Changed> {
        let changes = self.loaded.changed_tenants(&self.path)?;
        let new = changes
            .routes
            .iter()
            .map(|route| (Some(route.written.index), route));
        refuse_loops_in(&self.path, &self.listens, new).ok()?;
        let old = self.live.load_full();
        let patched = old.table.patched(&changes.removed, &changes.routes)?;
        let live = Live {
            table: patched.table,
            timeouts: old.timeouts,
            limits: old.limits,
            metrics: crate::metrics::ConnectionMetrics::new(),
        };
        pools::resolve_new(&live.table, &self.resolver, old.timeouts.connect).await;
        running.pool_work.cancel();
        running.pool_work = pools::start(&live.table, &self.resolver, running.background);
        self.live.store(Arc::new(live));
        self.loaded = changes.loaded;
        Some(Changed {
            routes_added: patched.added,
            routes_removed: patched.removed,
            listeners_added: 0,
            listeners_removed: 0,
        })
    }

    /// Everything a reload needs that can fail, done before anything changes: settings a kept
    /// listener can't take live are refused, new sockets are bound.
    async fn prepare(
        &self,
        config: &Config,
        running: &Running<'_>,
    ) -> Result<Prepared, ConfigError> {
        refuse_loops(&self.path, config)?;
        for (index, listen) in config.listeners.iter().enumerate() {
            if let Some(kept) = running.listeners.get(&listen.key()) {
                if kept.reuse_port != listen.reuse_port {
                    return Err(ConfigError {
                        file: self.path.clone(),
                        position: Some(listen.position),
                        key: format!("listen[{index}].reuse_port"),
                        message: "can't change on a running listener; restart sniroute to apply it"
                            .to_owned(),
                    });
                }
            }
        }
        let metrics = match (&config.metrics, &running.metrics) {
            (Some(wanted), Some(current)) if wanted.address == current.configured => {
                MetricsChange::Keep
            }
            (Some(wanted), _) => {
                MetricsChange::Serve(MetricsSocket::bind(&self.path, wanted).await?)
            }
            (None, Some(_)) => MetricsChange::Stop,
            (None, None) => MetricsChange::Keep,
        };
        let added = bind_listeners(&self.path, config, &running.listeners, self.workers).await?;
        Ok(Prepared { added, metrics })
    }

    /// Swaps in `config`: routes and limits for new connections, the connection cap, kept
    /// listeners' trusted PROXY sources, the listener set (new ones already bound; those the
    /// config no longer names stop), and the metrics address.
    /// Returns a tracker of the removed listeners' accept loops, which end as they close their
    /// sockets, and how many were removed.
    fn apply(
        &mut self,
        config: &Config,
        live: Live,
        prepared: Prepared,
        running: &mut Running<'_>,
    ) -> (TaskTracker, usize) {
        let closing = TaskTracker::new();
        let mut removed = 0;
        running.pool_work.cancel();
        running.pool_work = pools::start(&live.table, &self.resolver, running.background);
        self.live.store(Arc::new(live));
        let wanted: HashMap<ListenKey, &Listen> = config
            .listeners
            .iter()
            .map(|listen| (listen.key(), listen))
            .collect();
        running.listeners.retain(|key, listener| match wanted.get(key) {
            Some(listen) => {
                if **listener.context.proxy_trusted.load() != listen.proxy_trusted {
                    tracing::info!(address = %listener.bound, "listener's trusted proxy sources changed");
                    listener.context.proxy_trusted.store(Arc::new(listen.proxy_trusted.clone()));
                }
                true
            }
            None => {
                tracing::info!(address = %listener.bound, "listener closed");
                listener.stop.cancel();
                let loops = listener.loops.clone();
                closing.spawn(async move { loops.wait().await });
                removed += 1;
                false
            }
        });
        for (configured, listener) in prepared.added {
            running.start(self, configured, listener);
        }
        match prepared.metrics {
            MetricsChange::Keep => {}
            MetricsChange::Stop => running.serve_metrics(None),
            MetricsChange::Serve(socket) => {
                if running.metrics.is_none() {
                    // The recorder was just installed: kept listeners' handles were made
                    // without it.
                    for listener in running.listeners.values() {
                        listener.context.renew_metrics();
                    }
                }
                running.serve_metrics(Some(socket));
            }
        }
        self.shared.slots.set_max(config.limits.max_connections);
        (closing, removed)
    }
}

/// What an applied reload changed, for its log line.
#[derive(Debug, Clone, Copy)]
struct Changed {
    routes_added: usize,
    routes_removed: usize,
    listeners_added: usize,
    listeners_removed: usize,
}

/// Counts an applied reload and logs it.
fn reloaded(path: &Path, changed: Changed) {
    metrics::counter!(series::CONFIG_RELOADS, "result" => "ok").increment(1);
    tracing::info!(
        file = %path.display(),
        routes_added = changed.routes_added,
        routes_removed = changed.routes_removed,
        listeners_added = changed.listeners_added,
        listeners_removed = changed.listeners_removed,
        "config reloaded"
    );
}

/// The route names of a table, `[default]` included.
fn route_names(live: &Live) -> std::collections::HashSet<&str> {
    live.table.routes().map(|route| route.name()).collect()
}

/// What a reload bound before applying anything.
struct Prepared {
    added: Vec<(ListenKey, Listener)>,
    metrics: MetricsChange,
}

/// What a reload does to the metrics endpoint.
enum MetricsChange {
    /// Same address (or still none).
    Keep,
    /// Serve on this new socket, stopping the old one.
    Serve(MetricsSocket),
    /// `[metrics]` is gone.
    Stop,
}

/// The metrics endpoint's socket, bound.
#[derive(Debug)]
struct MetricsSocket {
    socket: TcpListener,
    /// The address routes.toml gives it.
    configured: SocketAddr,
    /// The address it is bound to.
    bound: SocketAddr,
}

impl MetricsSocket {
    /// Binds `[metrics]` and installs the recorder, before any handle that should record is
    /// made.
    async fn bind(path: &Path, listen: &Listen) -> Result<Self, ConfigError> {
        let bound = socket_for(listen.address).and_then(|socket| {
            socket.bind(listen.address)?;
            let socket = socket.listen(BACKLOG)?;
            let address = socket.local_addr()?;
            Ok((socket, address))
        });
        let (socket, bound) =
            bound.map_err(|error| bind_error(path, listen, "metrics.address", &error))?;
        series::install();
        Ok(Self {
            socket,
            configured: listen.address,
            bound,
        })
    }
}

/// A listener that is accepting.
struct RunningListener {
    bound: SocketAddr,
    reuse_port: bool,
    context: Arc<ListenerContext>,
    stop: CancellationToken,
    /// Its accept loops, one per worker.
    loops: TaskTracker,
}

/// The metrics endpoint as it runs.
struct RunningMetrics {
    /// The address routes.toml gives it.
    configured: SocketAddr,
    /// The address it is bound to.
    bound: SocketAddr,
    stop: CancellationToken,
}

/// The parts of a running server that reloads change.
struct Running<'a> {
    workers: &'a Workers,
    shared: &'a Arc<Shared>,
    connections: &'a TaskTracker,
    accept_loops: &'a TaskTracker,
    admin: &'a TaskTracker,
    /// The pools' health checks and resolutions.
    background: &'a TaskTracker,
    /// Stops the live table's pool work.
    pool_work: CancellationToken,
    /// Each listener by the (protocol, address) routes.toml gives it.
    listeners: HashMap<ListenKey, RunningListener>,
    /// Quic listeners started so far, to spread them over the workers.
    quic_listeners: usize,
    metrics: Option<RunningMetrics>,
}

impl Running<'_> {
    fn start(&mut self, server: &Server, configured: ListenKey, listener: Listener) {
        tracing::info!(address = %listener.address, "listening");
        let stop = CancellationToken::new();
        let loops = TaskTracker::new();
        loops.close();
        self.listeners.insert(
            configured,
            RunningListener {
                bound: listener.address,
                reuse_port: listener.reuse_port,
                context: listener.context.clone(),
                stop: stop.clone(),
                loops: loops.clone(),
            },
        );
        let workers = self.workers.handles();
        match listener.sockets {
            Sockets::Tcp(sockets) => {
                for (socket, worker) in sockets.into_iter().zip(workers) {
                    self.accept_loops.spawn_on(
                        loops.track_future(crate::proxy::accept(
                            socket,
                            listener.context.clone(),
                            server.live.clone(),
                            self.shared.clone(),
                            self.connections.clone(),
                            stop.clone(),
                        )),
                        worker,
                    );
                }
            }
            Sockets::Udp(socket) => {
                // Quic listeners spread over the workers, one each.
                let worker = &workers[self.quic_listeners % workers.len()];
                self.quic_listeners += 1;
                self.accept_loops.spawn_on(
                    loops.track_future(crate::proxy::serve_quic(
                        socket,
                        listener.context.clone(),
                        server.live.clone(),
                        self.shared.clone(),
                        self.connections.clone(),
                        stop,
                    )),
                    worker,
                );
            }
        }
    }

    /// Stops the metrics endpoint if it runs, and serves it on `socket` if there is one.
    fn serve_metrics(&mut self, socket: Option<MetricsSocket>) {
        if let Some(running) = self.metrics.take() {
            running.stop.cancel();
        }
        let Some(MetricsSocket {
            socket,
            configured,
            bound,
        }) = socket
        else {
            return;
        };
        tracing::info!(address = %bound, "serving metrics");
        let stop = CancellationToken::new();
        self.admin.spawn(crate::admin::serve(
            socket,
            series::install(),
            self.shared.clone(),
            self.admin.clone(),
            stop.clone(),
        ));
        self.metrics = Some(RunningMetrics {
            configured,
            bound,
            stop,
        });
    }
}

/// Binds the listeners of `config` that are not in `bound` already (by the (protocol, address)
/// routes.toml gives them).
async fn bind_listeners<T>(
    path: &Path,
    config: &Config,
    bound: &HashMap<ListenKey, T>,
    workers: usize,
) -> Result<Vec<(ListenKey, Listener)>, ConfigError> {
    let mut listeners = Vec::new();
    for (index, listen) in config.listeners.iter().enumerate() {
        if bound.contains_key(&listen.key()) {
            continue;
        }
        let (sockets, address) = bind(path, listen, workers, &format!("listen[{index}].address"))?;
        let context = Arc::new(ListenerContext::new(
            address,
            listen.protocol,
            listen.proxy_trusted.clone(),
        ));
        listeners.push((
            listen.key(),
            Listener {
                sockets,
                address,
                reuse_port: listen.reuse_port,
                context,
            },
        ));
    }
    Ok(listeners)
}

/// Refuses a route (or `[default]`) whose backend is one of the config's own listeners: the
/// listener's address itself, or, for a listener on a wildcard address, any local address with
/// its port. One hello to such a route would loop through the proxy until descriptors ran out.
/// Backends named by host are resolved only at connect time; a passthrough loop through one is
/// caught on the wire (outcome `routing_loop`). A terminate route that re-encrypts to its own
/// listener starts a new handshake each hop, which nothing recognises: `max_connections` bounds
/// it.
///
/// # Errors
/// The first such route, located at its `backend`.
pub fn refuse_loops(path: &Path, config: &Config) -> Result<(), ConfigError> {
    let routes = config
        .routes
        .iter()
        .map(|route| (Some(route.written.index), route));
    let default = config.default.iter().map(|route| (None, route));
    refuse_loops_in(path, &config.listeners, routes.chain(default))
}

/// [`refuse_loops`] for `routes` (each with its index in its file; `None`: `[default]`) of a
/// config with `listeners`.
fn refuse_loops_in<'r>(
    path: &Path,
    listeners: &[Listen],
    routes: impl Iterator<Item = (Option<usize>, &'r config::Route)>,
) -> Result<(), ConfigError> {
    let serves_http = listeners
        .iter()
        .any(|listen| listen.protocol == config::Protocol::Http);
    // Routes share targets: each is checked once, at the first route that has it (whose keys
    // its members' positions point into).
    let mut checked = std::collections::HashSet::new();
    for (index, route) in routes {
        if !checked.insert(Arc::as_ptr(&route.target)) {
            continue;
        }
        let key = match index {
            Some(index) => format!("route[{index}]"),
            None => "default".to_owned(),
        };
        let pool = &route.target.pool;
        let http = &route.target.http;
        let pool_key = match pool.members.len() {
            1 => format!("{key}.backend"),
            _ => format!("{key}.backends"),
        };
        let mut pools = vec![(pool, pool_key.clone(), "")];
        if serves_http {
            match http.explicit {
                true => pools.push((&http.pool, format!("{key}.http_backend"), "")),
                false => pools.push((
                    &http.pool,
                    pool_key,
                    " (its port-80 side: the backend's host with port 80; set http_backend)",
                )),
            }
        }
        for (pool, key, what) in pools {
            for member in &pool.members {
                let config::Backend::Addr(backend) = member.backend else {
                    continue;
                };
                let Some((index, listen)) = listeners
                    .iter()
                    .enumerate()
                    .find(|(_, listen)| reaches(listen.address, backend))
                else {
                    continue;
                };
                return Err(ConfigError {
                    file: route.file.as_deref().unwrap_or(path).to_owned(),
                    position: Some(member.position),
                    key,
                    message: format!(
                        "{backend} is this proxy's own listen[{index}] ({}): a routing loop{what}",
                        listen.address
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Whether connecting to `backend` reaches a socket listening on `listener`.
fn reaches(listener: SocketAddr, backend: SocketAddr) -> bool {
    if listener.port() != backend.port() || listener.port() == 0 {
        return false;
    }
    if listener.ip() == backend.ip() {
        return true;
    }
    // A wildcard listener takes every local address of its family (`[::]` both, dual-stack).
    listener.ip().is_unspecified()
        && (listener.is_ipv6() || backend.is_ipv4())
        && is_local(backend.ip())
}

/// Whether `ip` is one of this machine's addresses: loopback, unspecified (connecting to it
/// reaches the machine), or one a socket can be bound to.
fn is_local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Binds `listen` (which routes.toml names as `key`): with one socket per worker for TCP, one
/// socket for UDP; or says which line couldn't be bound.
fn bind(
    path: &Path,
    listen: &Listen,
    workers: usize,
    key: &str,
) -> Result<(Sockets, SocketAddr), ConfigError> {
    let bound = match listen.protocol.is_udp() {
        true => std::net::UdpSocket::bind(listen.address).and_then(|socket| {
            let address = socket.local_addr()?;
            Ok((Sockets::Udp(socket), address))
        }),
        false => worker_sockets(listen, workers).and_then(|sockets| {
            let address = sockets[0].local_addr()?;
            Ok((Sockets::Tcp(sockets), address))
        }),
    };
    bound.map_err(|error| bind_error(path, listen, key, &error))
}

/// The error of a `listen` (which routes.toml names as `key`) that can't be bound.
fn bind_error(path: &Path, listen: &Listen, key: &str, error: &std::io::Error) -> ConfigError {
    ConfigError {
        file: path.to_owned(),
        position: Some(listen.position),
        key: key.to_owned(),
        message: format!("cannot bind {}: {error}", listen.address),
    }
}

/// Connections the kernel queues for `accept` on each listening socket.
const BACKLOG: u32 = 4096;

/// One listening socket per worker for `listen`, in one `SO_REUSEPORT` group: the kernel spreads
/// new connections over them, and each worker waits only on its own, so no connection wakes
/// every worker (1.6 failed accepts per connection with one shared socket, sequential clients).
///
/// Without `reuse_port` the address must be free: a probe socket without `SO_REUSEPORT` binds it
/// first, which fails if anything listens there, this proxy's own group included. (A process
/// that asks for `SO_REUSEPORT` itself, a sniroute with `reuse_port = true` say, could still
/// join: the kernel leaves that to the user that owns both.) `SO_REUSEADDR` always: a restart
/// can bind while old connections linger in TIME_WAIT.
fn worker_sockets(listen: &Listen, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut address = listen.address;
    if !listen.reuse_port {
        let probe = socket_for(address)?;
        probe.bind(address)?;
        address = probe.local_addr()?;
    }
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let socket = socket_for(address)?;
        socket.set_reuseport(true)?;
        socket.bind(address)?;
        let socket = socket.listen(BACKLOG)?.into_std()?;
        // The first's port for the others, where the config said `:0`.
        address = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// A TCP socket of `address`'s family with `SO_REUSEADDR`.
fn socket_for(address: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
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
