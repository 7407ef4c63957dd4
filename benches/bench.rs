//! The side-by-side benchmark: sniroute against a direct connection (the ceiling), HAProxy and
//! nginx, on loopback, with the load generator and the backends in this process.
//!
//! Client and backends do no TLS crypto, so the proxy's work is the only variable: each client
//! sends a real rustls ClientHello (post-quantum key share, about 1.5 KB, as browsers send) for
//! one of several names, and the plain-TCP backend the name routes to reads the hello and answers
//! a line naming itself, which the client checks (another name is a misroute). For each target,
//! in interleaved runs (direct, sniroute, haproxy, nginx, direct, ...), reported as median
//! (min–max) across runs:
//!
//! 1. connections/s at concurrency 64 (connect, hello, reply line, close);
//! 2. the proxy's CPU seconds (utime + stime in /proc/PID/stat, all its processes) per 10,000
//!    of those connections;
//! 3. throughput over 1 and 8 connections each way, and CPU seconds per GiB;
//! 4. latency at a fixed open-loop rate, timed from each connection's *scheduled* start (no
//!    coordinated omission), and what each proxy adds to direct;
//! 5. RSS (VmRSS in /proc/PID/status) per idle established connection, on a fresh instance;
//! 6. errors (I/O errors, timeouts) and misroutes.
//!
//! Every proxy gets 2 worker threads or processes, and shares the machine's cores with the
//! generator (2 runtime threads) and the backends: ratios say more than absolute figures.
//! sniroute only: full TLS 1.3 handshakes/s through a passthrough and a terminate route (client
//! crypto runs here too), and micro-benchmarks of the peeker and of a lookup in 100,000 routes
//! (`bench micro` runs only those). QUIC through sniroute against direct: `quic/`. A million
//! routes against nginx's `map`: `scale/`.

use std::fmt::Write as _;
use std::fs;
use std::future::Future;
use std::hint::black_box;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rustls::pki_types::ServerName as TlsName;
use sniroute::hello::{Alpn, Peeker, Progress};
use sniroute::route::{Reason, RouteTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;

mod quic;
mod scale;

/// Client tasks in the closed-loop measurements.
const CONCURRENCY: usize = 64;
/// Connections being opened at once while filling the idle set.
const OPENING: usize = 256;
/// [`Bench::names`] holds the reply backends b0..b3 first, then the sink, then the source.
const REPLIES: usize = 4;
const UP: usize = 4;
const DOWN: usize = 5;
/// Bytes per write for the source backend and the upload client.
const BLOCK: usize = 64 * 1024;
/// Bound on one exchange (connect, hello, reply line); past it, an error.
const EXCHANGE_PATIENCE: Duration = Duration::from_secs(5);
/// Bound on a proxy accepting after it is started.
const READY_PATIENCE: Duration = Duration::from_secs(10);
/// Bound on the backends seeing a measurement's connections close.
const CLOSE_PATIENCE: Duration = Duration::from_secs(60);
/// Bound on a backend connection's life.
const BACKEND_PATIENCE: Duration = Duration::from_secs(600);
/// Clock ticks per second in /proc/PID/stat (USER_HZ: 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;
const GIB: f64 = (1u64 << 30) as f64;

/// The figures in the order they run within a run.
const FIGURES: [Figure; 7] = [
    Figure::Connections,
    Figure::Throughput(Direction::Upload, 1),
    Figure::Throughput(Direction::Upload, 8),
    Figure::Throughput(Direction::Download, 1),
    Figure::Throughput(Direction::Download, 8),
    Figure::Latency,
    Figure::Idle,
];
/// Rows of the ratio table, and whether higher is better.
const RATIOS: [(&str, bool); 9] = [
    ("connections/s, concurrency 64", true),
    ("CPU s per 10k connections", false),
    ("upload GiB/s, 8 connections", true),
    ("download GiB/s, 8 connections", true),
    ("CPU s per GiB, upload 8 connections", false),
    ("CPU s per GiB, download 8 connections", false),
    ("added latency p50, µs", false),
    ("added latency p99, µs", false),
    ("RSS per idle connection, bytes", false),
];

/// Bytes the sink backend has read after the hellos.
static SUNK: AtomicU64 = AtomicU64::new(0);
/// Backend connections open now.
static OPEN: AtomicI64 = AtomicI64::new(0);

/// sniroute against direct, HAProxy and nginx on loopback (see the file header).
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Runs of each figure for each target.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Smoke test: 1 second and 1 run.
    #[arg(long)]
    quick: bool,
    /// Open-loop rate for the latency figure, connections/s.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Idle connections held for the memory figure.
    #[arg(long, default_value_t = 4000)]
    idle: usize,
    /// Only these figures (connections, throughput, latency, idle, quic, scale), without the TLS and
    /// micro-benchmark tables: for iterating on one figure.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Another sniroute build measured beside this one, log on, as the column
    /// `sniroute-baseline`: a before/after in one run.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Route counts for the multi-tenant scale section.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    scale: Vec<usize>,
    /// Leave out these columns (for example `haproxy,nginx,sniroute-log-off`) to iterate faster.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// `cargo bench` passes `--bench` to every benchmark binary; nothing to do with it.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Only the micro-benchmarks: the peeker on captured hellos, a 100,000-route lookup.
    Micro,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Mode::Micro) = args.mode {
        println!("{}", micro()?);
        return Ok(());
    }
    let (runs, seconds) = match args.quick {
        true => (1, 1.0),
        false => (args.runs.max(1), args.seconds),
    };
    let fd_limit = raise_fd_limit();
    println!("{}", machine(fd_limit));
    let only = args.only.clone();
    let bench = Bench {
        scale: args.scale,
        only: args.only,
        baseline: args.baseline,
        skip: args.skip,
        names: Arc::from([]),
        window: Duration::try_from_secs_f64(seconds).context("--seconds")?,
        rate: args.rate.max(1),
        idle: args.idle.max(1),
        fd_limit: fd_limit.unwrap_or(1024),
        root: std::env::temp_dir().join(format!("sniroute-bench-{}", std::process::id())),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("{}", runtime.block_on(compare(bench, runs))?);
    drop(runtime);
    if only.is_empty() {
        println!("{}", micro()?);
    }
    let reproduce = match args.quick {
        true => "--quick".to_owned(),
        false => format!("--runs {runs} --seconds {seconds}"),
    };
    println!(
        "Reproduce: cargo bench -- {reproduce} --rate {} --idle {}",
        args.rate, args.idle
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The comparison.

/// What every measurement shares.
struct Bench {
    names: Arc<[Name]>,
    /// `--scale`: route counts for the scale section.
    scale: Vec<usize>,
    /// `--only`: the figures to run (all when empty).
    only: Vec<String>,
    /// `--baseline`: another sniroute binary.
    baseline: Option<PathBuf>,
    /// `--skip`: columns left out.
    skip: Vec<String>,
    window: Duration,
    rate: u32,
    idle: usize,
    fd_limit: u64,
    /// Configs and logs, one directory per proxy instance.
    root: PathBuf,
}

/// A server name the generator asks for: its hello, the line its backend answers, and the
/// backend's address (where `direct` connects).
struct Name {
    host: String,
    reply: String,
    hello: Vec<u8>,
    backend: SocketAddr,
    /// `backend` and three more answering the same way: the `sniroute-pool4` column's pool.
    pool: [SocketAddr; 4],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Figure {
    Connections,
    Throughput(Direction, usize),
    Latency,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Upload,
    Download,
}

async fn compare(mut bench: Bench, runs: usize) -> anyhow::Result<String> {
    fs::create_dir_all(&bench.root)?;
    bench.names = start_backends().await?.into();
    let mut targets = vec![Target::new(Kind::Direct)];
    let mut notes = Vec::new();
    for kind in [
        Kind::Sniroute,
        Kind::SnirouteBaseline,
        Kind::SnirouteLogOff,
        Kind::SniroutePool,
        Kind::SnirouteMillion,
        Kind::Haproxy,
        Kind::Nginx,
    ] {
        if bench.skip.iter().any(|skip| skip == kind.label())
            || (kind == Kind::SnirouteBaseline && bench.baseline.is_none())
        {
            continue;
        }
        if matches!(
            kind,
            Kind::Sniroute
                | Kind::SnirouteBaseline
                | Kind::SnirouteLogOff
                | Kind::SniroutePool
                | Kind::SnirouteMillion
        ) || installed(kind.label())
        {
            targets.push(Target::start(&bench, kind).await);
        } else {
            notes.push(format!("{}: not installed, skipped", kind.label()));
        }
    }
    let mut table = Table::new(targets.iter().map(|target| target.kind.label()));
    for run in 1..=runs {
        for figure in FIGURES {
            let name = match figure {
                Figure::Connections => "connections",
                Figure::Throughput(..) => "throughput",
                Figure::Latency => "latency",
                Figure::Idle => "idle",
            };
            if !bench.only.is_empty() && !bench.only.iter().any(|only| only == name) {
                continue;
            }
            let mut direct: Option<Vec<f64>> = None;
            for (column, target) in targets.iter_mut().enumerate() {
                target.check_alive();
                // The million-route column is there for the connection rate only.
                if target.failure.is_some()
                    || (figure, target.kind) == (Figure::Idle, Kind::Direct)
                    || (target.kind == Kind::SnirouteMillion && figure != Figure::Connections)
                {
                    continue;
                }
                let label = target.kind.label();
                eprintln!("[run {run}/{runs}] {figure:?}: {label}");
                let values = match measure(&bench, target, figure, run).await {
                    Ok(values) => values,
                    Err(error) => {
                        notes.push(format!("run {run}, {label}, {figure:?}: {error:#}"));
                        continue;
                    }
                };
                match (figure, target.kind, &direct) {
                    (Figure::Latency, Kind::Direct, _) => {
                        direct = Some(values.iter().map(|value| value.1).collect());
                    }
                    (Figure::Latency, _, Some(direct)) => {
                        for ((row, value), base) in values.iter().zip(direct) {
                            table.add(&format!("added {row}"), column, value - base);
                        }
                    }
                    _ => {}
                }
                for (row, value) in values {
                    table.add(&row, column, value);
                }
            }
        }
    }
    for (column, target) in targets.iter().enumerate() {
        table.add(
            "errors (total)",
            column,
            target.faults.errors.load(Relaxed) as f64,
        );
        table.add(
            "misroutes (total)",
            column,
            target.faults.misroutes.load(Relaxed) as f64,
        );
        if let Some(failure) = &target.failure {
            notes.push(format!("{}: failed: {failure}", target.kind.label()));
            table.columns[column].push_str(" (failed)");
        }
    }
    let tls = match bench.only.is_empty() {
        false => String::new(),
        true => match tls_routes(&bench, runs).await {
            Ok(table) => table.render("sniroute, full TLS 1.3 handshakes, concurrency 64"),
            Err(error) => format!("TLS handshakes: failed: {error:#}\n"),
        },
    };
    let scale = match bench.only.is_empty() || bench.only.iter().any(|only| only == "scale") {
        false => String::new(),
        true => match scale::section(&bench, &bench.scale) {
            Ok(table) => format!("## Multi-tenant scale\n\n{table}"),
            Err(error) => format!("Multi-tenant scale: failed: {error:#}\n"),
        },
    };
    let quic_only = bench.only.iter().any(|only| only == "quic");
    let quic = match bench.only.is_empty() || quic_only {
        false => String::new(),
        true => match quic::flows(&bench, runs).await {
            Ok(table) => table.render("QUIC (quinn client and backend), one route"),
            Err(error) => format!("QUIC: failed: {error:#}\n"),
        },
    };
    if targets.iter().any(|target| target.failure.is_some()) {
        notes.push(format!("logs and configs kept in {}", bench.root.display()));
    } else {
        drop(targets);
        let _ = fs::remove_dir_all(&bench.root);
    }
    let mut report = format!(
        "## Results\n\n{runs} run(s) of {} s per measurement; cells median (min–max). Latency: \
         open loop at {} connections/s, from each scheduled start. RSS: {} idle connections on a \
         fresh instance of each proxy (allocators keep freed memory: an instance that already \
         served a run would hide the cost).\n\n{}{}\nClient crypto runs in the bench process, \
         on the same cores.\n\n{tls}\n{quic}\n{scale}",
        bench.window.as_secs_f64(),
        bench.rate,
        bench.idle,
        table.render("figure"),
        ratios(&table),
    );
    for note in notes {
        writeln!(report, "- {note}")?;
    }
    Ok(report)
}

/// One figure for one target: its rows and values.
async fn measure(
    bench: &Bench,
    target: &Target,
    figure: Figure,
    run: usize,
) -> anyhow::Result<Vec<(String, f64)>> {
    let cpu_before = target.cpu_seconds();
    Ok(match figure {
        Figure::Connections => {
            let (names, listen) = (bench.names.clone(), target.listen);
            let (done, seconds) = closed_loop(bench.window, &target.faults, move |index| {
                let names = names.clone();
                async move {
                    let name = &names[index % REPLIES];
                    exchange(listen.unwrap_or(name.backend), name)
                        .await
                        .map(drop)
                }
            })
            .await?;
            let mut values = vec![("connections/s, concurrency 64".into(), done / seconds)];
            if let Some(cpu) = target.cpu_since(cpu_before) {
                values.push(("CPU s per 10k connections".into(), cpu * 10_000.0 / done));
            }
            values
        }
        Figure::Throughput(direction, connections) => {
            throughput(bench, target, direction, connections).await?
        }
        Figure::Latency => latency(bench, target).await?,
        Figure::Idle => {
            let bytes = idle_memory(bench, target, run).await?;
            vec![("RSS per idle connection, bytes".into(), bytes)]
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Backends and hellos.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Reads the hello, answers its name, reads until EOF.
    Reply,
    /// Reads the hello, answers its name, counts what follows in [`SUNK`].
    Sink,
    /// Reads the hello, answers its name, writes blocks until a write fails.
    Source,
    /// Answers its name at once (behind sniroute's terminate route: plaintext, no hello).
    Greeter,
}

/// The reply backends b0..b3, the sink `up` and the source `down`, with their names' hellos.
async fn start_backends() -> anyhow::Result<Vec<Name>> {
    let mut names = Vec::new();
    for (label, role) in [
        ("b0", Role::Reply),
        ("b1", Role::Reply),
        ("b2", Role::Reply),
        ("b3", Role::Reply),
        ("up", Role::Sink),
        ("down", Role::Source),
    ] {
        let backend = serve(role, label).await?;
        let pool = [
            backend,
            serve(role, label).await?,
            serve(role, label).await?,
            serve(role, label).await?,
        ];
        let host = format!("{label}.bench.test");
        let hello = client_hello(&host)?;
        let reply = label.to_owned();
        names.push(Name {
            host,
            reply,
            hello,
            backend,
            pool,
        });
    }
    Ok(names)
}

/// Binds a backend on an ephemeral loopback port; it serves until the runtime stops.
async fn serve(role: Role, label: &str) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let reply: Arc<[u8]> = format!("{label}\n").into_bytes().into();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => drop(tokio::spawn(answer(stream, role, reply.clone()))),
                // Out of descriptors, most likely: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    Ok(address)
}

async fn answer(mut stream: TcpStream, role: Role, reply: Arc<[u8]>) -> io::Result<()> {
    OPEN.fetch_add(1, Relaxed);
    let _open = Closed;
    stream.set_nodelay(true)?;
    if role != Role::Greeter {
        let mut header = [0u8; 5];
        let hello = async {
            stream.read_exact(&mut header).await?;
            let length = u16::from_be_bytes([header[3], header[4]]);
            stream.read_exact(&mut vec![0; usize::from(length)]).await
        };
        timeout(EXCHANGE_PATIENCE, hello).await??;
    }
    stream.write_all(&reply).await?;
    let mut buffer = vec![0u8; BLOCK];
    let rest = async {
        match role {
            Role::Reply | Role::Greeter => while stream.read(&mut buffer).await? > 0 {},
            Role::Sink => loop {
                match stream.read(&mut buffer).await? {
                    0 => break,
                    read => SUNK.fetch_add(read as u64, Relaxed),
                };
            },
            Role::Source => loop {
                stream.write_all(&buffer).await?;
            },
        }
        io::Result::Ok(())
    };
    timeout(BACKEND_PATIENCE, rest).await?
}

/// Counts a backend connection closed when dropped.
struct Closed;

impl Drop for Closed {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Relaxed);
    }
}

/// A real rustls (aws-lc-rs, post-quantum key share first) client's first flight for `host`,
/// offering h2 and http/1.1, in one TLS record.
fn client_hello(host: &str) -> anyhow::Result<Vec<u8>> {
    let mut config = rustls::ClientConfig::builder_with_provider(sniroute::terminate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = TlsName::try_from(host.to_owned())?;
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut hello = Vec::new();
    connection.write_tls(&mut hello)?;
    if hello.len() != 5 + usize::from(u16::from_be_bytes([hello[3], hello[4]])) {
        bail!("the hello for {host} is not one record");
    }
    Ok(hello)
}

// ---------------------------------------------------------------------------------------------
// Targets: direct, or a proxy process.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Sniroute,
    /// sniroute with its access log off (`SNIROUTE_LOG=warn`): the log's cost is the difference.
    SnirouteLogOff,
    /// Another sniroute build (`--baseline`), log on.
    SnirouteBaseline,
    /// sniroute with each name sent to a round-robin pool of 4 backends, log on.
    SniroutePool,
    /// sniroute with a million more routes loaded (the scale section's tenant files), log on:
    /// for the connection rate only.
    SnirouteMillion,
    Haproxy,
    Nginx,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Sniroute => "sniroute",
            Kind::SnirouteLogOff => "sniroute-log-off",
            Kind::SnirouteBaseline => "sniroute-baseline",
            Kind::SniroutePool => "sniroute-pool4",
            Kind::SnirouteMillion => "sniroute-1m",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }
}

/// What went wrong with one connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// An I/O error or a timeout.
    Error,
    /// Another backend answered.
    Misroute,
}

#[derive(Default)]
struct Faults {
    errors: AtomicU64,
    misroutes: AtomicU64,
}

impl Faults {
    fn count(&self, fault: Fault) {
        let counter = match fault {
            Fault::Error => &self.errors,
            Fault::Misroute => &self.misroutes,
        };
        counter.fetch_add(1, Relaxed);
    }
}

struct Target {
    kind: Kind,
    /// Where the proxy listens; `None` for direct (each name's backend).
    listen: Option<SocketAddr>,
    proxy: Option<Proxy>,
    failure: Option<String>,
    faults: Arc<Faults>,
}

impl Target {
    fn new(kind: Kind) -> Self {
        let faults = Arc::default();
        Self {
            kind,
            listen: None,
            proxy: None,
            failure: None,
            faults,
        }
    }

    /// The main instance of a proxy; one that doesn't start is a target marked failed.
    async fn start(bench: &Bench, kind: Kind) -> Self {
        let mut target = Self::new(kind);
        match start_proxy(bench, kind, "main").await {
            Ok((listen, proxy)) => (target.listen, target.proxy) = (Some(listen), Some(proxy)),
            Err(error) => target.failure = Some(format!("{error:#}")),
        }
        target
    }

    /// Marks the target failed if its process has exited.
    fn check_alive(&mut self) {
        if let Some(exit) = self.proxy.as_mut().and_then(Proxy::exited) {
            self.failure.get_or_insert(exit);
        }
    }

    fn cpu_seconds(&self) -> Option<f64> {
        Some(cpu_seconds(&self.proxy.as_ref()?.pids()))
    }

    fn cpu_since(&self, before: Option<f64>) -> Option<f64> {
        Some(self.cpu_seconds()? - before?)
    }
}

/// A proxy process, stopped when dropped: SIGTERM, then SIGKILL for it and its children.
struct Proxy {
    child: Child,
    /// Whether it has worker processes to count (nginx).
    tree: bool,
    log: PathBuf,
}

impl Proxy {
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        if self.tree {
            pids.extend(children(self.child.id()));
        }
        pids
    }

    fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        Some(format!("exited ({status}): {}", self.log_tail()))
    }

    /// The last lines of its stderr.
    fn log_tail(&self) -> String {
        let mut tail = String::new();
        if let Ok(mut file) = fs::File::open(&self.log) {
            let length = file.metadata().map_or(0, |metadata| metadata.len());
            let _ = file.seek(SeekFrom::Start(length.saturating_sub(1024)));
            let _ = file.read_to_string(&mut tail);
        }
        let lines: Vec<&str> = tail.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let pids = self.pids();
        signal(self.child.id(), false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        pids.into_iter().for_each(|pid| signal(pid, true));
        let _ = self.child.wait();
    }
}

/// Writes `kind`'s config routing every name into `ROOT/KIND-TAG/` and starts it on a free port.
async fn start_proxy(bench: &Bench, kind: Kind, tag: &str) -> anyhow::Result<(SocketAddr, Proxy)> {
    let dir = bench.root.join(format!("{}-{tag}", kind.label()));
    fs::create_dir_all(&dir)?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let routes = bench.names.iter().map(|name| (&name.host, name.backend));
    let (command, tree) = match kind {
        Kind::Sniroute
        | Kind::SnirouteLogOff
        | Kind::SnirouteBaseline
        | Kind::SniroutePool
        | Kind::SnirouteMillion => {
            let mut text = String::new();
            if kind == Kind::SnirouteMillion {
                scale::tenant_files(&dir, 1_000_000)?;
                writeln!(text, "include = [\"routes.d/*.toml\"]")?;
            }
            text.push_str(&sniroute_header(listen));
            for name in bench.names.iter() {
                let host = &name.host;
                match kind {
                    Kind::SniroutePool => {
                        let members: Vec<String> = name
                            .pool
                            .iter()
                            .map(|member| format!("\"{member}\""))
                            .collect();
                        write!(
                            text,
                            "\n[[route]]\nsni = \"{host}\"\nbackends = [{}]\n",
                            members.join(", ")
                        )?
                    }
                    _ => write!(
                        text,
                        "\n[[route]]\nsni = \"{host}\"\nbackend = \"{}\"\n",
                        name.backend
                    )?,
                }
            }
            let binary = match (kind, &bench.baseline) {
                (Kind::SnirouteBaseline, Some(baseline)) => baseline.clone(),
                _ => sniroute_binary()?,
            };
            let mut command = sniroute_command(&binary, &dir, &text)?;
            if kind == Kind::SnirouteLogOff {
                command.env("SNIROUTE_LOG", "warn");
            }
            (command, false)
        }
        Kind::Haproxy => {
            // HAProxy refuses to start if maxconn needs more descriptors than it may open:
            // 2 per connection and 1 per splice pipe end (a pipe per 4 connections).
            let maxconn = (bench.fd_limit.saturating_sub(500) * 2 / 5).clamp(1000, 50_000);
            let mut text = format!(
                "global\n    nbthread 2\n    maxconn {maxconn}\n\ndefaults\n    mode tcp\n    \
                 maxconn {maxconn}\n    timeout connect 5s\n    timeout client 10m\n    \
                 timeout server 10m\n    option splice-auto\n\nfrontend bench\n    \
                 bind {listen}\n    tcp-request inspect-delay 10s\n    \
                 tcp-request content accept if {{ req.ssl_hello_type 1 }}\n"
            );
            let mut backends = String::new();
            for (index, (host, backend)) in routes.enumerate() {
                writeln!(
                    text,
                    "    use_backend route{index} if {{ req.ssl_sni -i {host} }}"
                )?;
                write!(
                    backends,
                    "\nbackend route{index}\n    server backend {backend}\n"
                )?;
            }
            fs::write(dir.join("haproxy.cfg"), text + &backends)?;
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
            (command, false)
        }
        Kind::Nginx => {
            // The distribution's module snippet loads `modules/…` relative to the prefix (-p).
            let modules = ["/usr/share/nginx/modules", "/usr/lib/nginx/modules"]
                .into_iter()
                .find(|path| Path::new(path).exists());
            if let Some(modules) = modules {
                let _ = std::os::unix::fs::symlink(modules, dir.join("modules"));
            }
            let mut map = String::new();
            for (host, backend) in routes {
                writeln!(map, "        {host} {backend};")?;
            }
            let text = format!(
                "include /etc/nginx/modules-enabled/*.conf;\nworker_processes 2;\n\
                 worker_rlimit_nofile {limit};\npid {dir}/nginx.pid;\n\
                 error_log {dir}/error.log warn;\nevents {{\n    worker_connections 20000;\n}}\n\
                 stream {{\n    access_log off;\n    map $ssl_preread_server_name $backend {{\n\
                 {map}    }}\n    server {{\n        listen {listen};\n        ssl_preread on;\n        \
                 preread_timeout 10s;\n        proxy_connect_timeout 5s;\n        \
                 proxy_timeout 10m;\n        proxy_pass $backend;\n    }}\n}}\n",
                limit = bench.fd_limit,
                dir = dir.display()
            );
            fs::write(dir.join("nginx.conf"), text)?;
            let mut command = Command::new("nginx");
            command
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"));
            command.args(["-g", "daemon off;"]);
            (command, true)
        }
        Kind::Direct => bail!("direct runs no proxy"),
    };
    Ok((listen, launch(command, &dir, tree, listen).await?))
}

/// sniroute's config up to the routes: generous limits, as for the other proxies (every client
/// here is 127.0.0.1, so the per-address limit on pending hellos is off).
fn sniroute_header(listen: SocketAddr) -> String {
    format!(
        "[[listen]]\naddress = \"{listen}\"\n\n[timeouts]\ndrain = \"1s\"\n\n\
         [limits]\nmax_connections = 50000\nmax_pending_per_ip = 0\n"
    )
}

/// `BINARY --workers 2 --config DIR/routes.toml`, with `text` written there.
fn sniroute_command(binary: &Path, dir: &Path, text: &str) -> anyhow::Result<Command> {
    fs::write(dir.join("routes.toml"), text)?;
    let mut command = Command::new(binary);
    command
        .args(["--workers", "2", "--config"])
        .arg(dir.join("routes.toml"));
    Ok(command)
}

/// The sniroute binary cargo built with this benchmark (the bench profile: release), or the one
/// `SNIROUTE_BENCH_BINARY` names (to measure another build, a before/after say).
fn sniroute_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::var_os("SNIROUTE_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_sniroute")),
        PathBuf::from,
    );
    if !binary.exists() {
        bail!(
            "{} is missing: run the benchmark with cargo bench",
            binary.display()
        );
    }
    Ok(binary)
}

/// Runs `command` (stderr to `DIR/stderr.log`) and waits, 10 s at most, until `listen` accepts.
async fn launch(
    mut command: Command,
    dir: &Path,
    tree: bool,
    listen: SocketAddr,
) -> anyhow::Result<Proxy> {
    let program = command.get_program().to_string_lossy().into_owned();
    let log = dir.join("stderr.log");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let mut proxy = Proxy { child, tree, log };
    let deadline = Instant::now() + READY_PATIENCE;
    loop {
        if let Some(exit) = proxy.exited() {
            bail!("{exit}");
        }
        if TcpStream::connect(listen).await.is_ok() {
            return Ok(proxy);
        }
        if Instant::now() > deadline {
            bail!("not accepting on {listen} after 10 s: {}", proxy.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// Connect, send `name`'s hello, read the reply line and check it names `name`'s backend.
async fn exchange(address: SocketAddr, name: &Name) -> Result<TcpStream, Fault> {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        stream.write_all(&fresh_random(&name.hello)).await?;
        let mut line = Vec::with_capacity(64);
        let mut chunk = [0u8; 256];
        while !line.contains(&b'\n') && line.len() < 1024 {
            match stream.read(&mut chunk).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                read => line.extend_from_slice(&chunk[..read]),
            }
        }
        io::Result::Ok((stream, line))
    };
    match timeout(EXCHANGE_PATIENCE, attempt).await {
        Ok(Ok((stream, line)))
            if line.split(|&byte| byte == b'\n').next() == Some(name.reply.as_bytes()) =>
        {
            Ok(stream)
        }
        Ok(Ok(_)) => Err(Fault::Misroute),
        _ => Err(Fault::Error),
    }
}

/// `hello` with a random of its own, as every real client draws one per connection (RFC 8446
/// §4.1.2): sniroute takes a hello whose random it is forwarding right now for its own, come
/// back through a routing loop, so replaying one captured hello would measure that instead.
fn fresh_random(hello: &[u8]) -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut hello = hello.to_vec();
    // Record header (5), handshake header (4), legacy_version (2), then the 32-byte random.
    let unique = COUNTER.fetch_add(1, Relaxed).to_be_bytes();
    hello[11..19].copy_from_slice(&unique);
    hello
}

/// Runs `attempt(0)`, `attempt(1)`, ... in 64 tasks until the window ends; returns how many
/// succeeded and the seconds it took.
async fn closed_loop<A, F>(
    window: Duration,
    faults: &Arc<Faults>,
    attempt: A,
) -> anyhow::Result<(f64, f64)>
where
    A: Fn(usize) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), Fault>> + Send + 'static,
{
    let (attempt, next) = (Arc::new(attempt), Arc::new(AtomicUsize::new(0)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (attempt, next, faults) = (attempt.clone(), next.clone(), faults.clone());
        tasks.spawn(async move {
            let mut done = 0u64;
            while start.elapsed() < window {
                match attempt(next.fetch_add(1, Relaxed)).await {
                    Ok(()) => done += 1,
                    Err(fault) => faults.count(fault),
                }
            }
            done
        });
    }
    let mut done = 0;
    while let Some(task) = tasks.join_next().await {
        done += task?;
    }
    if done == 0 {
        bail!("nothing completed");
    }
    Ok((done as f64, start.elapsed().as_secs_f64()))
}

/// GiB/s delivered over `connections` streams during the window (counted at the sink for
/// upload, at the client for download), and the proxy's CPU seconds per GiB.
async fn throughput(
    bench: &Bench,
    target: &Target,
    direction: Direction,
    connections: usize,
) -> anyhow::Result<Vec<(String, f64)>> {
    let open_before = OPEN.load(Relaxed);
    let (name, way) = match direction {
        Direction::Upload => (&bench.names[UP], "upload"),
        Direction::Download => (&bench.names[DOWN], "download"),
    };
    let mut streams = Vec::new();
    for _ in 0..connections {
        let stream = exchange(target.listen.unwrap_or(name.backend), name).await;
        streams.push(
            stream
                .inspect_err(|&fault| target.faults.count(fault))
                .ok()
                .context("connect")?,
        );
    }
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for mut stream in streams {
        let received = received.clone();
        tasks.spawn(async move {
            let mut buffer = vec![0u8; BLOCK];
            match direction {
                Direction::Upload => while stream.write_all(&buffer).await.is_ok() {},
                Direction::Download => {
                    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
                        received.fetch_add(read as u64, Relaxed);
                    }
                }
            }
        });
    }
    let delivered = || match direction {
        Direction::Upload => SUNK.load(Relaxed),
        Direction::Download => received.load(Relaxed),
    };
    let (bytes_before, cpu_before, start) = (delivered(), target.cpu_seconds(), Instant::now());
    tokio::time::sleep(bench.window).await;
    let (bytes, cpu) = (delivered() - bytes_before, target.cpu_since(cpu_before));
    let seconds = start.elapsed().as_secs_f64();
    tasks.abort_all();
    while let Some(task) = tasks.join_next().await {
        if task.is_ok() {
            target.faults.count(Fault::Error); // it ended by itself: the stream broke
        }
    }
    settle(open_before).await?;
    let gib = bytes as f64 / GIB;
    if bytes == 0 {
        bail!("no byte delivered");
    }
    let plural = if connections == 1 { "" } else { "s" };
    let mut values = vec![(
        format!("{way} GiB/s, {connections} connection{plural}"),
        gib / seconds,
    )];
    if let Some(cpu) = cpu {
        values.push((
            format!("CPU s per GiB, {way} {connections} connection{plural}"),
            cpu / gib,
        ));
    }
    Ok(values)
}

/// Open loop: a connection starts at each scheduled instant, whether or not earlier ones have
/// finished, and its latency runs from that instant to the reply line. The first second is a
/// warm-up, not sampled (the figure before leaves the machine in another state). p50, p99, p99.9
/// in µs.
async fn latency(bench: &Bench, target: &Target) -> anyhow::Result<Vec<(String, f64)>> {
    let (per_second, seconds) = (f64::from(bench.rate), bench.window.as_secs_f64());
    let warm_up = (per_second * seconds.min(1.0)).ceil() as u64;
    let total = warm_up + (per_second * seconds).ceil() as u64;
    let (names, listen, rate) = (bench.names.clone(), target.listen, u64::from(bench.rate));
    let runtime = tokio::runtime::Handle::current();
    // The schedule runs on a blocking thread: its sleeps are precise to tens of µs, where the
    // runtime's timer rounds to the millisecond.
    let scheduled = tokio::task::spawn_blocking(move || {
        let start = Instant::now() + Duration::from_millis(10);
        let mut tasks = Vec::with_capacity(total as usize);
        for index in 0..total {
            let at = start + Duration::from_nanos(index * 1_000_000_000 / rate);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let names = names.clone();
            tasks.push(runtime.spawn(async move {
                let name = &names[index as usize % REPLIES];
                let stream = exchange(listen.unwrap_or(name.backend), name).await;
                stream.map(|_| at.elapsed())
            }));
        }
        tasks
    })
    .await?;
    let mut samples = Vec::with_capacity(scheduled.len());
    for (index, task) in scheduled.into_iter().enumerate() {
        match task.await? {
            Ok(latency) if index as u64 >= warm_up => samples.push(latency),
            Ok(_) => {}
            Err(fault) => target.faults.count(fault),
        }
    }
    if samples.is_empty() {
        bail!("nothing completed");
    }
    samples.sort_unstable();
    let percentile = |quantile: f64| {
        let rank = (quantile * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1e6
    };
    let rows = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)];
    Ok(rows
        .map(|(label, quantile)| (format!("latency {label}, µs"), percentile(quantile)))
        .into())
}

/// RSS per idle connection on a fresh instance of the target's proxy: after a warm-up, RSS
/// before and after `bench.idle` connections are established and answered.
async fn idle_memory(bench: &Bench, target: &Target, run: usize) -> anyhow::Result<f64> {
    let open_before = OPEN.load(Relaxed);
    let (listen, proxy) = start_proxy(bench, target.kind, &format!("idle-{run}")).await?;
    for _ in 0..4 {
        drop(open_connections(bench, listen, CONCURRENCY, &target.faults).await);
        settle(open_before).await?;
    }
    let pids = proxy.pids();
    let before = rss_bytes(&pids).context("no VmRSS")?;
    let held = open_connections(bench, listen, bench.idle, &target.faults).await;
    let after = rss_bytes(&pids).context("no VmRSS")?;
    let count = held.len();
    drop(held);
    settle(open_before).await?;
    if count < bench.idle {
        bail!("only {count} of {} connections opened", bench.idle);
    }
    Ok((after as f64 - before as f64) / count as f64)
}

/// Opens `count` connections to `listen` over the reply names, `OPENING` at a time; returns
/// those that were answered.
async fn open_connections(
    bench: &Bench,
    listen: SocketAddr,
    count: usize,
    faults: &Faults,
) -> Vec<TcpStream> {
    let permits = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let (permits, names) = (permits.clone(), bench.names.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|_| Fault::Error)?;
            exchange(listen, &names[index % REPLIES]).await
        });
    }
    let mut streams = Vec::with_capacity(count);
    while let Some(task) = tasks.join_next().await {
        match task.unwrap_or(Err(Fault::Error)) {
            Ok(stream) => streams.push(stream),
            Err(fault) => faults.count(fault),
        }
    }
    streams
}

/// Waits (bounded) until the backends have seen a measurement's connections close.
async fn settle(open_before: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLOSE_PATIENCE;
    while OPEN.load(Relaxed) > open_before {
        if Instant::now() > deadline {
            bail!("backend connections still open after {CLOSE_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sniroute only: full TLS handshakes, passthrough against terminate.

/// A second sniroute with a passthrough route to an in-process TLS backend and a terminate
/// route to a plaintext one; full TLS 1.3 handshakes (no resumption) at concurrency 64.
async fn tls_routes(bench: &Bench, runs: usize) -> anyhow::Result<Table> {
    let pki = sniroute::demo::Pki::new()?;
    let config = pki.server_config(&["pass.bench.test".into()], &["http/1.1"])?;
    let local = "127.0.0.1:0".parse()?;
    let pass = sniroute::demo::TlsBackend::start(local, "pass", config)
        .await?
        .address;
    let term = serve(Role::Greeter, "term").await?;
    let dir = bench.root.join("sniroute-tls");
    fs::create_dir_all(&dir)?;
    let (certificate, key) = pki.issue_pem(&["term.bench.test".into()])?;
    fs::write(dir.join("term.pem"), certificate)?;
    fs::write(dir.join("term.key"), key)?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let text = format!(
        "{}\n[[route]]\nsni = \"pass.bench.test\"\nbackend = \"{pass}\"\n\n[[route]]\n\
         sni = \"term.bench.test\"\nbackend = \"{term}\"\n\
         terminate = {{ cert = \"term.pem\", key = \"term.key\", alpn = [\"http/1.1\"] }}\n",
        sniroute_header(listen)
    );
    let command = sniroute_command(&sniroute_binary()?, &dir, &text)?;
    let proxy = Some(launch(command, &dir, false, listen).await?);
    let target = Target {
        listen: Some(listen),
        proxy,
        ..Target::new(Kind::Sniroute)
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der())?;
    let mut config = rustls::ClientConfig::builder_with_provider(sniroute::terminate::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let routes: [(&str, &'static str, &'static [u8]); 2] = [
        (
            "passthrough (backend terminates)",
            "pass.bench.test",
            b"pass: sni=pass.bench.test",
        ),
        (
            "terminate (sniroute terminates)",
            "term.bench.test",
            b"term\n",
        ),
    ];
    let mut table = Table::new(routes.map(|route| route.0));
    let faults: [Arc<Faults>; 2] = Default::default();
    for run in 1..=runs {
        for (column, (label, host, expected)) in routes.into_iter().enumerate() {
            eprintln!("[run {run}/{runs}] TLS handshakes: {label}");
            let connector = connector.clone();
            let cpu_before = target.cpu_seconds();
            let (done, seconds) = closed_loop(bench.window, &faults[column], move |_| {
                let connector = connector.clone();
                async move {
                    let attempt = tls_exchange(connector, listen, host, expected);
                    match timeout(EXCHANGE_PATIENCE, attempt).await {
                        Ok(Ok(())) => Ok(()),
                        _ => Err(Fault::Error),
                    }
                }
            })
            .await?;
            table.add("handshakes/s", column, done / seconds);
            if let Some(cpu) = target.cpu_since(cpu_before) {
                table.add(
                    "proxy CPU s per 10k handshakes",
                    column,
                    cpu * 10_000.0 / done,
                );
            }
        }
    }
    for (column, faults) in faults.iter().enumerate() {
        table.add("errors (total)", column, faults.errors.load(Relaxed) as f64);
    }
    Ok(table)
}

/// One full handshake through the proxy, a request, and an answer naming the right backend.
async fn tls_exchange(
    connector: tokio_rustls::TlsConnector,
    address: SocketAddr,
    host: &'static str,
    expected: &[u8],
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut tls = connector.connect(TlsName::try_from(host)?, stream).await?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await?;
    let (mut answer, mut chunk) = (Vec::new(), [0u8; 1024]);
    while !answer
        .windows(expected.len())
        .any(|window| window == expected)
    {
        match tls.read(&mut chunk).await? {
            0 => bail!("closed before the expected answer"),
            read => answer.extend_from_slice(&chunk[..read]),
        }
    }
    Ok(tls.shutdown().await?)
}

// ---------------------------------------------------------------------------------------------
// Micro-benchmarks.

/// The peeker on captured hellos (whole, and fed one byte more per call) and a lookup in a
/// table of 100,000 routes, on one core; a Markdown table.
fn micro() -> anyhow::Result<String> {
    eprintln!("micro-benchmarks");
    let mut out = String::from(
        "## Micro-benchmarks (one core; median (min–max) of 5 measurements of ≥ 0.5 s)\n\n\
         | micro-benchmark | ns per operation | per second, one core |\n| --- | ---: | ---: |\n",
    );
    let mut row = |label: String, stats: Stats, unit: &str| {
        let rate = number(1e9 / stats.median);
        let _ = writeln!(out, "| {label} | {} | {rate} {unit}/s |", stats.cell());
    };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hello");
    for file in ["rustls-post-quantum.bin", "chromium.bin"] {
        let bytes = fs::read(data.join(file)).with_context(|| format!("reading {file}"))?;
        let whole = || {
            matches!(
                Peeker::new(65536).feed(black_box(&bytes)),
                Progress::Hello(_)
            )
        };
        let bytewise = || {
            let mut peeker = Peeker::new(65536);
            for end in 1..=bytes.len() {
                match peeker.feed(black_box(&bytes[..end])) {
                    Progress::NeedMore => {}
                    Progress::Hello(_) => return end == bytes.len(),
                    Progress::Reject(_) => return false,
                }
            }
            false
        };
        if !whole() || !bytewise() {
            bail!("{file}: the peeker does not return the hello");
        }
        let size = bytes.len();
        let stats = time_per_call(1, || {
            black_box(whole());
        });
        row(format!("peeker, {file} ({size} B), whole"), stats, "hellos");
        let stats = time_per_call(1, || {
            black_box(bytewise());
        });
        row(
            format!("peeker, {file} ({size} B), one byte more per call"),
            stats,
            "hellos",
        );
    }
    let (table, names, build) = route_table()?;
    let offer = Alpn::default();
    let stats = time_per_call(names.len(), || {
        for name in &names {
            black_box(table.lookup(Some(black_box(name)), &offer));
        }
    });
    let label = format!(
        "route lookup, 100,000 routes (10,000 wildcards; parsed and built in {:.1} s): 40% exact, \
         40% wildcard at depth 1–3, 20% misses",
        build.as_secs_f64()
    );
    row(label, stats, "lookups");
    Ok(out)
}

/// 90,000 exact routes and 10,000 wildcards, and 10,000 names, each checked to get the kind of
/// answer it is meant to.
fn route_table() -> anyhow::Result<(RouteTable, Vec<sniroute::name::ServerName>, Duration)> {
    let start = Instant::now();
    // One routes.toml of 100,000 routes, through the same loader as start-up and reload.
    let mut text = String::from("[[listen]]\naddress = \"127.0.0.1:0\"\n");
    for index in 0..100_000usize {
        let sni = match index.checked_sub(90_000) {
            None => format!("host{index}.example{}.test", index % 100),
            Some(tenant) => format!("*.tenant{tenant}.example.test"),
        };
        write!(
            text,
            "\n[[route]]\nsni = \"{sni}\"\nbackend = \"127.0.0.1:9000\"\n"
        )?;
    }
    let config = sniroute::config::Config::parse(Path::new("bench.toml"), &text)?;
    let table = RouteTable::new(&config, None);
    let build = start.elapsed();
    let mut names = Vec::new();
    for index in 0..10_000usize {
        let (host, tenant) = (index * 7919 % 90_000, index * 104_729 % 10_000);
        let (raw, expect) = match index % 10 {
            0..=3 => (format!("host{host}.example{}.test", host % 100), "exact"),
            4 | 5 => (format!("www.tenant{tenant}.example.test"), "wildcard"),
            6 => (format!("a.b.tenant{tenant}.example.test"), "wildcard"),
            7 => (format!("x.y.z.tenant{tenant}.example.test"), "wildcard"),
            8 => (
                format!("host{host}.example{}.test", (host + 1) % 100),
                "miss",
            ),
            _ => (format!("www.tenant{tenant}.example.invalid"), "miss"),
        };
        let name = sniroute::name::ServerName::parse(raw.as_bytes())?;
        let got = match table.lookup(Some(&name), &Alpn::default()).reason {
            Reason::Exact { .. } => "exact",
            Reason::Wildcard { .. } => "wildcard",
            _ => "miss",
        };
        if got != expect {
            bail!("{raw}: expected {expect}, the table says {got}");
        }
        names.push(name);
    }
    Ok((table, names, build))
}

/// Nanoseconds per operation of `work` (which does `operations` per call): calibrated so that
/// a measurement takes ≥ 0.5 s, then 5 measurements.
fn time_per_call(operations: usize, mut work: impl FnMut()) -> Stats {
    let mut calls = 1u64;
    let mut measure = |calls: u64| {
        let start = Instant::now();
        (0..calls).for_each(|_| work());
        start.elapsed().as_secs_f64()
    };
    let seconds = loop {
        match measure(calls) {
            seconds if seconds >= 0.1 => break seconds,
            _ => calls *= 2,
        }
    };
    let calls = (calls as f64 * 0.55 / seconds).ceil() as u64;
    let per_operation = 1e9 / (calls as f64 * operations as f64);
    let samples: Vec<f64> = (0..5).map(|_| measure(calls) * per_operation).collect();
    Stats::of(&samples).unwrap_or(Stats {
        median: 0.0,
        min: 0.0,
        max: 0.0,
    })
}

// ---------------------------------------------------------------------------------------------
// Results.

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max, middle) = (sorted.first()?, sorted.last()?, sorted.len() / 2);
        let median = match sorted.len() % 2 {
            1 => sorted[middle],
            _ => (sorted[middle - 1] + sorted[middle]) / 2.0,
        };
        Some(Self { median, min, max })
    }

    /// `median (min–max)`, or the value alone when every sample is the same.
    fn cell(self) -> String {
        let (median, min, max) = (number(self.median), number(self.min), number(self.max));
        match min == max {
            true => median,
            false => format!("{median} ({min}–{max})"),
        }
    }
}

/// A figure per row (in the order first added), a target per column, every run's sample.
struct Table {
    columns: Vec<String>,
    rows: Vec<(String, Vec<Vec<f64>>)>,
}

impl Table {
    fn new<'a>(columns: impl IntoIterator<Item = &'a str>) -> Self {
        let columns = columns.into_iter().map(str::to_owned).collect();
        Self {
            columns,
            rows: Vec::new(),
        }
    }

    fn add(&mut self, row: &str, column: usize, value: f64) {
        let index = match self.rows.iter().position(|(label, _)| label == row) {
            Some(index) => index,
            None => {
                let cells = vec![Vec::new(); self.columns.len()];
                self.rows.push((row.to_owned(), cells));
                self.rows.len() - 1
            }
        };
        self.rows[index].1[column].push(value);
    }

    fn median(&self, row: &str, column: &str) -> Option<f64> {
        let column = self.columns.iter().position(|label| label == column)?;
        let (_, cells) = self.rows.iter().find(|(label, _)| label == row)?;
        Some(Stats::of(&cells[column])?.median)
    }

    fn render(&self, corner: &str) -> String {
        let mut out = format!("| {corner} | {} |\n| --- |", self.columns.join(" | "));
        out.push_str(&" ---: |".repeat(self.columns.len()));
        for (label, cells) in &self.rows {
            let cells = cells
                .iter()
                .map(|samples| Stats::of(samples).map_or("–".into(), Stats::cell));
            let _ = write!(
                out,
                "\n| {label} | {} |",
                cells.collect::<Vec<_>>().join(" | ")
            );
        }
        out + "\n"
    }
}

/// sniroute's median over the better of haproxy's and nginx's, for the rows in [`RATIOS`].
fn ratios(table: &Table) -> String {
    let mut out = String::from(
        "\nsniroute against the better of haproxy and nginx (ratio of medians):\n\n\
         | figure | sniroute / best other | best other |\n| --- | ---: | --- |\n",
    );
    for (row, higher_is_better) in RATIOS {
        let Some(ours) = table.median(row, "sniroute") else {
            continue;
        };
        let others = ["haproxy", "nginx"]
            .into_iter()
            .filter_map(|other| Some((table.median(row, other)?, other)));
        let best = match higher_is_better {
            true => others.max_by(|a, b| a.0.total_cmp(&b.0)),
            false => others.min_by(|a, b| a.0.total_cmp(&b.0)),
        };
        if let Some((theirs, other)) = best {
            let ratio = if theirs > 0.0 {
                format!("{:.2}×", ours / theirs)
            } else {
                "n/a".into()
            };
            let _ = writeln!(out, "| {row} | {ratio} | {other} ({}) |", number(theirs));
        }
    }
    out
}

/// Thousands separated from 1,000 up; integers as such; otherwise about 3 significant digits.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        let digits = format!("{magnitude:.0}");
        let mut grouped = String::from(if value < 0.0 { "-" } else { "" });
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        grouped
    } else if magnitude >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else {
        let decimals = if magnitude >= 10.0 {
            1
        } else if magnitude >= 1.0 {
            2
        } else {
            3
        };
        format!("{value:.decimals$}")
    }
}

// ---------------------------------------------------------------------------------------------
// The machine and /proc.

fn machine(fd_limit: Option<u64>) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then_some(value.trim())
    });
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut out = format!(
        "## Machine\n\n- cores: {cores}\n- CPU: {}\n- kernel: {}\n- open files limit: {}\n",
        model.unwrap_or("unknown"),
        kernel.trim(),
        fd_limit.map_or("unchanged".into(), |limit| limit.to_string())
    );
    for program in ["haproxy", "nginx"] {
        let output = Command::new(program).arg("-v").output();
        let version = output.ok().and_then(|output| {
            let text =
                String::from_utf8_lossy(&[output.stdout, output.stderr].concat()).into_owned();
            text.lines().next().map(str::to_owned)
        });
        let _ = writeln!(
            out,
            "- {program}: {}",
            version.as_deref().unwrap_or("not installed")
        );
    }
    let hello = client_hello("b0.bench.test").map_or(0, |hello| hello.len());
    let _ = writeln!(
        out,
        "- hellos: rustls 0.23 (aws-lc-rs), X25519MLKEM768 key share, {hello} bytes"
    );
    if let Ok(binary) = sniroute_binary() {
        let _ = writeln!(out, "- sniroute: {}", binary.display());
        let modified = |path: &Path| {
            fs::metadata(path)
                .and_then(|metadata| metadata.modified())
                .ok()
        };
        if modified(&binary) < modified(&binary.with_file_name("libsniroute.rlib")) {
            out.push_str("- WARNING: the sniroute binary is older than the library: rebuild it\n");
        }
    }
    out
}

fn installed(program: &str) -> bool {
    let status = Command::new("which")
        .arg(program)
        .stdout(Stdio::null())
        .status();
    status.is_ok_and(|status| status.success())
}

/// The fields of /proc/PID/stat after the command name (the first is field 3, the state).
fn stat(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        text.rsplit_once(") ")?
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids = entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok());
    pids.filter(|&pid| stat(pid).and_then(|fields| fields.get(1)?.parse().ok()) == Some(parent))
        .collect()
}

/// utime + stime (fields 14 and 15) of these processes, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = pids.iter().filter_map(|&pid| {
        let fields = stat(pid)?;
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    ticks.sum::<u64>() as f64 / TICKS_PER_SECOND
}

/// VmRSS of these processes, summed, in bytes.
fn rss_bytes(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))?;
            Some(
                line.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()?
                    * 1024,
            )
        })
        .sum()
}

/// Raises the soft open-files limit to the hard one (children inherit it); the new limit.
#[cfg(target_os = "linux")]
fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).ok()?;
    limit.current
}

#[cfg(not(target_os = "linux"))]
fn raise_fd_limit() -> Option<u64> {
    None
}

/// SIGTERM, or SIGKILL when `kill`.
#[cfg(target_os = "linux")]
fn signal(pid: u32, kill: bool) {
    use rustix::process::{kill_process, Pid, Signal};
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, if kill { Signal::KILL } else { Signal::TERM });
    }
}

#[cfg(not(target_os = "linux"))]
fn signal(_pid: u32, _kill: bool) {}

/// SIGHUP: a reload.
#[cfg(target_os = "linux")]
fn signal_hup(pid: u32) {
    use rustix::process::{kill_process, Pid, Signal};
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, Signal::HUP);
    }
}

#[cfg(not(target_os = "linux"))]
fn signal_hup(_pid: u32) {}
