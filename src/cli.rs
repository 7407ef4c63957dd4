//! The command line (SPEC "Command line"): run the proxy, `check`, `explain`, `peek`, `demo`.
//!
//! Human output goes to stdout; logs go to stderr. Every fault comes back as an error whose
//! `Display` is the one line `main` prints before exiting with status 1.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{self, Config, Route};
use crate::demo::{Pki, TlsBackend};
use crate::hello::{alert_name, Alpn, ClientHello, Peeker, Progress, Transport};
use crate::name::{NamePattern, ServerName};
use crate::route::{Reason, RouteTable};
use crate::server::{Server, Signal};

/// sniroute: a TLS front door. Routes each connection by the server name (SNI) and ALPN of
/// its ClientHello, without decrypting, and splices it to the chosen backend.
#[derive(Debug, Parser)]
#[command(name = "sniroute", version)]
pub struct Args {
    /// The config file.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "routes.toml"
    )]
    config: PathBuf,
    /// Worker threads, each accepting and serving its own connections, 1 to 1024 [default: the
    /// number of cores].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Access log and events on stderr, as text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config and print the resolved route table.
    Check,
    /// Print which route a ClientHello with this name and ALPN list gets, and why.
    Explain {
        /// The server name (SNI) the hello carries; leave out for a hello without one.
        #[arg(long, value_name = "NAME")]
        sni: Option<String>,
        /// A protocol the hello offers in ALPN, in the client's order; repeat for several.
        #[arg(long, value_name = "PROTO")]
        alpn: Vec<String>,
        /// The client's IP address: shows the backend `client_hash` picks for it.
        #[arg(long, value_name = "IP")]
        client: Option<std::net::IpAddr>,
    },
    /// Parse a captured ClientHello (raw TLS records from FILE, or stdin) and print what the
    /// peeker sees.
    Peek {
        /// The capture; stdin when left out.
        file: Option<PathBuf>,
    },
    /// Run the proxy on 127.0.0.1:8443 with the example routes.toml and two built-in TLS
    /// backends, and print curl commands that show routing.
    Demo,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// key=value text.
    Human,
    /// One JSON object per line.
    Json,
}

/// The example config, which the demo runs.
const EXAMPLE_CONFIG: &str = include_str!("../routes.toml");

/// Runs the command `args` names.
///
/// # Errors
/// Anything that stops the command: a bad config, an address that can't be bound, a hello that
/// doesn't parse; the error's `Display` (causes joined with `: `) is the line to print.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The one crypto provider, chosen explicitly (rcgen and rustls could otherwise disagree).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match args.command {
        None => {
            let config = config::load(&args.config)?;
            let _flush_logs_at_exit = init_logging(args.log_format)?;
            runtime()?.block_on(serve(&args.config, config, args.workers))?;
        }
        Some(Command::Check) => check(&args.config)?,
        Some(Command::Explain { sni, alpn, client }) => {
            explain(&args.config, sni.as_deref(), &alpn, client)?
        }
        Some(Command::Peek { file }) => peek(file.as_deref())?,
        Some(Command::Demo) => {
            let _flush_logs_at_exit = init_logging(args.log_format)?;
            runtime()?.block_on(demo(args.workers))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr from a writer thread ([`crate::log`]), so no connection waits on a pipe or
/// a terminal. Keep the guard until exit: dropping it writes what is still buffered.
fn init_logging(format: LogFormat) -> anyhow::Result<crate::log::FlushOnDrop> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNIROUTE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn"));
    let (writer, guard) = crate::log::start().context("start the log writer")?;
    let builder = tracing_subscriber::fmt()
        .with_writer(writer.clone())
        .with_env_filter(filter);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    // The access log writes its own lines, in the same format, where the filter lets it.
    if tracing::enabled!(target: "sniroute::access", tracing::Level::INFO) {
        crate::log::write_access_lines(&writer, format == LogFormat::Json);
    }
    Ok(guard)
}

/// Descriptors an open connection holds: the client's socket and the backend's.
const DESCRIPTORS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for listeners, the metrics endpoint, the config watcher, and pipes while
/// bursts are spliced (at most 8,192 pipes of two ends, far fewer in practice).
const SPARE_DESCRIPTORS: u64 = 1024;

/// Raises the soft limit on open files to the hard limit, as HAProxy sizes it from maxconn, and
/// warns when even that is below what `max_connections` needs: past it, the proxy's own connects
/// and accepts fail (`internal_error`, accept errors) rather than any backend's.
#[cfg(target_os = "linux")]
fn raise_descriptor_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};

    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "cannot raise the open files limit");
        }
    }
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = max_connections as u64 * DESCRIPTORS_PER_CONNECTION + SPARE_DESCRIPTORS;
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open files limit is below what limits.max_connections needs; raise it (LimitNOFILE= under systemd, ulimit -n) or lower max_connections"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn raise_descriptor_limit(_max_connections: usize) {}

/// The runtime of the server's own work (signals, reloads, metrics, the demo's backends): one
/// thread. Connections run on the server's worker threads ([`crate::workers`]).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Binds `config`'s listeners for `--workers` (by default one per core).
async fn bind(path: &Path, config: &Config, workers: Option<u16>) -> anyhow::Result<Server> {
    let workers = workers.map_or_else(crate::workers::default_count, usize::from);
    Ok(Server::bind_for(path, config, workers).await?)
}

/// Binds, installs the signal handlers, then serves until SIGTERM or SIGINT.
async fn serve(path: &Path, config: Config, workers: Option<u16>) -> anyhow::Result<()> {
    let server = bind(path, &config, workers).await?;
    raise_descriptor_limit(config.limits.max_connections);
    // The table holds what serving needs; the config's million routes, say, are not kept.
    drop(config);
    run_with_signals(server).await
}

/// Feeds SIGHUP, SIGTERM and SIGINT to the server as [`Signal`]s, from a task that ends when the
/// server stops listening (the receiver is dropped) or `stop` fires.
fn forward_signals(
    tasks: &tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<mpsc::Receiver<Signal>> {
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let (sender, receiver) = mpsc::channel(4);
    tasks.spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = hangup.recv() => Signal::Reload,
                _ = terminate.recv() => Signal::Shutdown,
                _ = interrupt.recv() => Signal::Shutdown,
                () = stop.cancelled() => return,
            };
            if sender.send(signal).await.is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}

/// Runs `server` with the process's signals until it has drained.
async fn run_with_signals(server: Server) -> anyhow::Result<()> {
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let signals = forward_signals(&tasks, stop.clone())?;
    let ran = server
        .run(signals)
        .await
        .context("cannot start the workers");
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    ran
}

/// Routes in the order they are tried: exact names, wildcards by longest suffix, `[default]`.
fn in_match_order(config: &Config) -> Vec<&Route> {
    let mut routes: Vec<(usize, &Route)> = config.routes.iter().enumerate().collect();
    routes.sort_by_key(|&(index, route)| match &route.sni {
        Some(NamePattern::Exact(_)) => (0, 0, index),
        Some(NamePattern::Wildcard(suffix)) => (1, usize::MAX - suffix.len(), index),
        None => (2, 0, index),
    });
    let mut routes: Vec<&Route> = routes.into_iter().map(|(_, route)| route).collect();
    routes.extend(&config.default);
    routes
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = config::load(path)?;
    crate::server::refuse_loops(path, &config)?;
    let mut out = String::new();
    writeln!(out, "{}: ok", path.display())?;
    for listen in &config.listeners {
        match listen.protocol {
            config::Protocol::Tls => writeln!(out, "listen    {}", listen.address)?,
            protocol => writeln!(out, "listen    {} ({protocol})", listen.address)?,
        }
    }
    if let Some(metrics) = &config.metrics {
        writeln!(
            out,
            "metrics   {} (/metrics, /healthz, /readyz)",
            metrics.address
        )?;
    }
    let timeouts = config.timeouts;
    // The QUIC bounds only where a quic listener uses them.
    let quic = config
        .listeners
        .iter()
        .any(|listen| listen.protocol.is_udp());
    writeln!(
        out,
        "timeouts  client_hello {}, connect {}, idle {}, drain {}, proxy_header {}{}",
        humantime::format_duration(timeouts.client_hello),
        humantime::format_duration(timeouts.connect),
        humantime::format_duration(timeouts.idle),
        humantime::format_duration(timeouts.drain),
        humantime::format_duration(timeouts.proxy_header),
        match quic {
            true => format!(
                ", quic_idle {}",
                humantime::format_duration(timeouts.quic_idle)
            ),
            false => String::new(),
        }
    )?;
    writeln!(
        out,
        "limits    max_connections {}, max_client_hello {}, max_pending_per_ip {}, max_pending_hello_bytes {}{}",
        config.limits.max_connections,
        config.limits.max_client_hello,
        config.limits.max_pending_per_ip,
        config.limits.max_pending_hello_bytes,
        match quic {
            true => format!(", max_quic_flows {}", config.limits.max_quic_flows),
            false => String::new(),
        }
    )?;
    writeln!(out, "routes, in the order they match:")?;
    let routes = in_match_order(&config);
    // Two passes over the routes, the cells written into the same six strings each time: a
    // million routes print without a million rows held.
    let header = ["line", "name", "sni", "alpn", "backend", "tls"];
    let mut widths = header.map(str::len);
    let mut cells: [String; 6] = Default::default();
    let mut shown = Shown::default();
    for route in &routes {
        route_cells(route, &mut cells, &mut shown);
        for (width, cell) in widths.iter_mut().zip(&cells) {
            *width = (*width).max(cell.len());
        }
    }
    row(&mut out, &header, &widths);
    for route in &routes {
        route_cells(route, &mut cells, &mut shown);
        row(&mut out, &cells, &widths);
    }
    let pools: Vec<(&str, String)> = routes
        .iter()
        .filter_map(|route| Some((route.name.as_str(), route.target.pool.settings()?)))
        .collect();
    if !pools.is_empty() {
        writeln!(out, "pools:")?;
        for (name, settings) in pools {
            writeln!(out, "  {name}: {settings}")?;
        }
    }
    if config.default.is_none() {
        writeln!(out, "no [default]: hellos without a name or with an unknown one get an unrecognized_name alert")?;
    }
    emit(&out)
}

/// `check`'s cells for `route`: line, name, sni, alpn, backend, tls. What routes share (a file's
/// name, a target's backends and TLS mode) is written once per file and target, in `shown`.
fn route_cells(route: &Route, cells: &mut [String; 6], shown: &mut Shown) {
    for cell in cells.iter_mut() {
        cell.clear();
    }
    if let Some(file) = &route.file {
        // By pointer: the routes of one file share its path, and hashing a path is slow.
        let file = shown
            .files
            .entry(Arc::as_ptr(file))
            .or_insert_with(|| file.display().to_string());
        cells[0].push_str(file);
        cells[0].push(':');
    }
    // A String's fmt::Write never fails.
    let _ = write!(cells[0], "{}", route.line);
    cells[1].push_str(&route.name);
    let _ = match &route.sni {
        Some(sni) => write!(cells[2], "{sni}"),
        None => write!(cells[2], "(no name, or no match)"),
    };
    cells[3].push_str(&alpn_list(route));
    let (backend, tls) = shown
        .targets
        .entry(Arc::as_ptr(&route.target))
        .or_insert_with(|| (route.target.pool.to_string(), tls_mode(route)));
    cells[4].push_str(backend);
    cells[5].push_str(tls);
}

/// What [`route_cells`] has written for files and targets already.
#[derive(Default)]
struct Shown {
    files: HashMap<*const Path, String>,
    targets: HashMap<*const config::Target, (String, String)>,
}

/// One line of `check`'s table: two spaces in, cells padded to `widths` (in characters, as
/// `{:width$}` pads), two spaces apart, no trailing blanks.
fn row(out: &mut String, cells: &[impl AsRef<str>], widths: &[usize]) {
    let start = out.len();
    out.push_str("  ");
    for (cell, width) in cells.iter().zip(widths) {
        let cell = cell.as_ref();
        out.push_str(cell);
        out.extend(std::iter::repeat_n(
            ' ',
            width.saturating_sub(cell.chars().count()) + 2,
        ));
    }
    let kept = out[start..].trim_end().len();
    out.truncate(start + kept);
    out.push('\n');
}

/// Writes command output to stdout in one go; a reader that has gone away (`| head`) is not a
/// fault.
fn emit(out: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("stdout")
        }
        _ => Ok(()),
    }
}

/// How a route treats the client's TLS: `passthrough`, or `terminate` and what it adds.
fn tls_mode(route: &Route) -> String {
    let Some(terminate) = &route.target.terminate else {
        return "passthrough".to_owned();
    };
    let mut mode = "terminate".to_owned();
    if !terminate.files.alpn.is_empty() {
        let offered: Vec<String> = terminate
            .files
            .alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        mode.push_str(&format!(", offers {}", offered.join(",")));
    }
    if terminate.files.client_ca.is_some() {
        mode.push_str(", client certificate required");
    }
    if let Some(backend_tls) = &terminate.backend_tls {
        mode.push_str(&format!(
            ", re-encrypts to {}",
            backend_tls.server_name.to_str()
        ));
    }
    mode
}

fn alpn_list(route: &Route) -> String {
    if route.alpn.is_empty() {
        return "-".to_owned();
    }
    let protocols: Vec<String> = route
        .alpn
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    protocols.join(",")
}

fn explain(
    path: &Path,
    sni: Option<&str>,
    alpn: &[String],
    client: Option<std::net::IpAddr>,
) -> anyhow::Result<()> {
    let config = config::load(path)?;
    // As the proxy reads a hello: an IP address in server_name is no name at all.
    let ip_literal = sni.is_some_and(|sni| crate::name::is_ip_literal(sni.as_bytes()));
    let server_name = sni
        .filter(|_| !ip_literal)
        .map(|sni| {
            ServerName::parse(sni.as_bytes())
                .with_context(|| format!("--sni {}", config::quoted(sni)))
        })
        .transpose()?;
    let Some(offer) = Alpn::from_protocols(alpn) else {
        bail!("--alpn: expected protocol names of 1 to 255 bytes");
    };
    let table = RouteTable::new(&config, None);
    let decision = table.lookup(server_name.as_ref(), &offer);
    let mut out = String::new();
    writeln!(
        out,
        "sni      {}",
        match (&server_name, ip_literal) {
            (Some(name), _) => name.as_str(),
            (None, true) => "(none: an IP address in server_name is read as no name)",
            (None, false) => "(none)",
        }
    )?;
    writeln!(
        out,
        "alpn     {}",
        if offer.is_empty() {
            "(none)".to_owned()
        } else {
            offer.to_string()
        }
    )?;
    match decision.route {
        Some(found) => {
            // The table numbers its routes as the config does, `[default]` after them.
            let route = config
                .routes
                .get(found.index())
                .or(config.default.as_ref())
                .context("a decision's route is in the config")?;
            writeln!(out, "route    {} ({})", route.name, route.place())?;
            writeln!(out, "backend  {}", route.target.pool)?;
            if let Some(settings) = route.target.pool.settings() {
                writeln!(out, "pool     {settings}")?;
            }
            if let (Some(client), Some(pool)) = (client, decision.pool) {
                writeln!(out, "client   {}", picked(pool, client))?;
            }
            writeln!(out, "tls      {}", tls_mode(route))?;
            match decision.reason {
                Reason::NoServerName | Reason::NoMatch => {
                    writeln!(out, "why      {}, so [default]", decision.reason)?
                }
                _ => writeln!(out, "why      {}", decision.reason)?,
            }
        }
        None => {
            writeln!(out, "route    none")?;
            writeln!(out, "why      {}, and there is no [default]: the client gets an unrecognized_name alert", decision.reason)?;
        }
    }
    emit(&out)
}

/// What `explain --client` says of a pool: the member `client_hash` picks for `client`, with
/// every member up (host names are not resolved here).
fn picked(pool: &crate::route::Pool, client: std::net::IpAddr) -> String {
    let config = pool.members();
    let unresolved = match pool.hosts().next() {
        Some(_) => " (of the addresses; host names resolve only when sniroute runs)",
        None => "",
    };
    match (pool.balance(), pool.plan(client, 1).iter().next()) {
        (config::Balance::ClientHash, Some(member)) => {
            format!(
                "{client} goes to {} while it is up{unresolved}",
                member.address
            )
        }
        (config::Balance::ClientHash, None) => {
            format!("{client}: the pool's host names resolve only when it runs")
        }
        (balance, _) if config.len() > 1 => format!(
            "{client} goes to whichever member {} gives next",
            balance.as_str()
        ),
        (_, _) => format!("{client} goes to the pool's one member"),
    }
}

/// Reads the capture a chunk at a time, feeding the peeker as it goes, and stops at its verdict
/// or at `limits.max_client_hello`'s default: `peek /dev/zero` answers at once.
fn peek(file: Option<&Path>) -> anyhow::Result<()> {
    let (label, mut input): (String, Box<dyn Read>) = match file {
        Some(path) => (
            path.display().to_string(),
            Box::new(
                std::fs::File::open(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?,
            ),
        ),
        None => ("stdin".to_owned(), Box::new(std::io::stdin())),
    };
    let limit = config::Limits::default().max_client_hello;
    let mut peeker = Peeker::new(limit);
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let verdict = loop {
        let spare = chunk.len().min(limit - bytes.len());
        let read = input
            .read(&mut chunk[..spare])
            .with_context(|| format!("{label}: cannot read"))?;
        bytes.extend_from_slice(&chunk[..read]);
        match peeker.feed(&bytes) {
            Progress::NeedMore if read > 0 && bytes.len() < limit => continue,
            progress => break progress,
        }
    };
    match verdict {
        Progress::Hello(hello) => emit(&describe_hello(&hello)?)?,
        Progress::NeedMore => bail!("{label}: incomplete client hello ({} bytes)", bytes.len()),
        Progress::Reject(error) => match error.alert() {
            Some(alert) => bail!(
                "{label}: rejected: {error} (alert {} ({}))",
                alert_name(alert),
                alert.0
            ),
            None => bail!("{label}: rejected: {error} (closed without an alert)"),
        },
    }
    Ok(())
}

fn describe_hello(hello: &ClientHello) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    let hex = |values: &[u16]| {
        values
            .iter()
            .map(|value| format!("{value:#06x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    writeln!(
        out,
        "server name           {}",
        hello
            .server_name
            .as_ref()
            .map_or("(none)", ServerName::as_str)
    )?;
    writeln!(
        out,
        "alpn                  {}",
        if hello.alpn.is_empty() {
            "(none)".to_owned()
        } else {
            hello.alpn.to_string()
        }
    )?;
    writeln!(out, "ja4                   {}", hello.ja4(Transport::Tcp))?;
    writeln!(out, "ech                   {}", hello.ech.as_str())?;
    writeln!(
        out,
        "records               {} ({} bytes)",
        hello.records, hello.wire_len
    )?;
    writeln!(out, "handshake message     {} bytes", hello.message_len)?;
    writeln!(out, "legacy version        {:#06x}", hello.legacy_version)?;
    writeln!(
        out,
        "supported versions    {}",
        hex(&hello.supported_versions)
    )?;
    writeln!(
        out,
        "cipher suites ({:>2})    {}",
        hello.cipher_suites.len(),
        hex(&hello.cipher_suites)
    )?;
    let extensions: Vec<String> = hello.extensions.iter().map(u16::to_string).collect();
    writeln!(
        out,
        "extensions ({:>2})       {}",
        hello.extensions.len(),
        extensions.join(" ")
    )?;
    writeln!(
        out,
        "supported groups      {}",
        hex(&hello.supported_groups)
    )?;
    writeln!(
        out,
        "signature algorithms  {}",
        hex(&hello.signature_algorithms)
    )?;
    Ok(out)
}

/// Writes `text` to `path`, removing what was there first and creating the file new, so nothing is
/// ever written through a link someone left at that fixed name.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Where the demo's proxy listens, as the README and the example routes.toml say.
const DEMO_PORT: u16 = 8443;

async fn demo(workers: Option<u16>) -> anyhow::Result<()> {
    // The example config, written where the demo can watch it: SIGHUP, or an edit of this file,
    // reloads it as it would a real one.
    let config_path = std::env::temp_dir().join("sniroute-demo-routes.toml");
    write_new(&config_path, EXAMPLE_CONFIG)?;
    let path = config_path.as_path();
    let config = Config::parse(path, EXAMPLE_CONFIG)?;
    let pki = Pki::new()?;

    // One TLS backend per backend address, with a certificate for every name routed to it.
    let mut backends: BTreeMap<String, (SocketAddr, Vec<String>)> = BTreeMap::new();
    for route in &config.routes {
        let Some(pattern) = &route.sni else { continue };
        for member in &route.target.pool.members {
            let config::Backend::Addr(address) = member.backend else {
                continue;
            };
            let entry = backends
                .entry(address.to_string())
                .or_insert((address, Vec::new()));
            entry.1.push(pattern.to_string());
        }
    }
    let mut running = Vec::new();
    for (label, (address, names)) in &backends {
        let name = format!("backend {label} ({})", names.join(", "));
        running.push(
            TlsBackend::start(*address, &name, pki.server_config(names, &["http/1.1"])?)
                .await
                .with_context(|| format!("demo backend: cannot bind {address}"))?,
        );
    }
    // One fixed name, so the README's curl commands work as written (the demo's fixed ports
    // already mean one demo at a time).
    let ca_path = std::env::temp_dir().join("sniroute-demo-ca.pem");
    write_new(&ca_path, &pki.ca_pem())?;

    let server = bind(path, &config, workers).await?;
    let proxy = server.local_addrs()[0];
    let ca = ca_path.display();
    let mut out = String::new();
    writeln!(
        out,
        "sniroute demo: the proxy listens on {proxy}; its TLS backends on {}.",
        backends.keys().cloned().collect::<Vec<_>>().join(" and ")
    )?;
    writeln!(
        out,
        "Each name reaches its own backend, which answers with its name:\n"
    )?;
    let mut examples: Vec<String> = Vec::new();
    for route in &config.routes {
        match &route.sni {
            Some(NamePattern::Exact(name)) => examples.push(name.to_string()),
            Some(NamePattern::Wildcard(suffix)) => examples.push(format!("www{suffix}")),
            None => {}
        }
    }
    examples.push("unknown.demo.test".to_owned());
    for name in &examples {
        writeln!(out, "  curl --cacert {ca} --connect-to {name}:{DEMO_PORT}:{proxy} https://{name}:{DEMO_PORT}/")?;
    }
    writeln!(out, "\nThe last name matches no route: with no [default], the client gets a TLS unrecognized_name alert.")?;
    writeln!(
        out,
        "Ctrl-C stops the demo. The access log follows on stderr.\n"
    )?;
    emit(&out)?;
    run_with_signals(server).await?;
    for backend in running {
        backend.stop().await;
    }
    let _ = std::fs::remove_file(&ca_path);
    let _ = std::fs::remove_file(&config_path);
    Ok(())
}
