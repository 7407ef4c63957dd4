//! The integration-test harness: real proxies on ephemeral loopback ports, real TLS backends that
//! answer with their name, recording backends, and real rustls clients.
//!
//! Nothing here sleeps to synchronise: servers are listening before `start` returns, and tests
//! wait on reads, accepts and task ends, each under a generous hang guard.

#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName as TlsName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use sniroute::config;
use sniroute::demo::{Pki, TlsBackend};
use sniroute::hello::synth::reframe;
use sniroute::server::{ReloadReport, Server, Signal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long any one wait in a test may take before the test fails as hung. It bounds deadlocks;
/// it says nothing about speed.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Runs `future`, failing the test if it hangs.
pub async fn guard<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .expect("hung: no answer within the hang guard")
}

/// The test run's certificate authority; every backend's certificate comes from it.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Pki::new().expect("make the test CA")
    })
}

/// A real TLS backend with its own certificate for `names`, answering `NAME: sni=… alpn=…`.
pub async fn tls_backend(name: &str, names: &[&str]) -> SocketAddr {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let config = pki()
        .server_config(&names, &[])
        .expect("backend certificate");
    TlsBackend::start("127.0.0.1:0".parse().unwrap(), name, config)
        .await
        .expect("bind backend")
        .address
}

/// A running proxy, configured from a routes.toml fragment with one `:0` listener added.
pub struct Proxy {
    pub address: SocketAddr,
    pub config_path: PathBuf,
    reloads: watch::Receiver<ReloadReport>,
    signals: mpsc::Sender<Signal>,
    task: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub async fn start(routes: &str) -> Self {
        Self::start_workers(routes, 2).await
    }

    /// A proxy with one worker thread, for tests that need connections accepted in the order
    /// they were made: with several workers, each accepts from its own socket of the listener,
    /// so two connections made one after the other may be taken in either order.
    pub async fn start_one_worker(routes: &str) -> Self {
        Self::start_workers(routes, 1).await
    }

    async fn start_workers(routes: &str, workers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("routes.toml");
        std::fs::write(&config_path, Self::config_text(routes)).unwrap();
        Self::start_with(dir, config_path, workers).await
    }

    /// A proxy running the config at `config_path` (already written, inside `dir`).
    pub async fn start_at(dir: tempfile::TempDir, config_path: PathBuf) -> Self {
        Self::start_with(dir, config_path, 2).await
    }

    async fn start_with(dir: tempfile::TempDir, config_path: PathBuf, workers: usize) -> Self {
        let config = config::load(&config_path).expect("test config");
        let server = Server::bind_for(&config_path, &config, workers)
            .await
            .expect("bind proxy");
        let address = server.local_addrs()[0];
        let reloads = server.reloads();
        let (signals, receiver) = mpsc::channel(4);
        let task = tokio::spawn(server.run(receiver));
        Self {
            address,
            config_path,
            reloads,
            signals,
            task,
            _dir: dir,
        }
    }

    /// Every listener's bound address, in config order.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        self.reloads.borrow().listeners.clone()
    }

    /// Where `GET /metrics` is served (the config must have `[metrics]`).
    pub fn metrics(&self) -> SocketAddr {
        self.reloads
            .borrow()
            .metrics
            .expect("[metrics] in the test config")
    }

    /// A routes.toml with the proxy's one `:0` listener and `routes`.
    pub fn config_text(routes: &str) -> String {
        format!("[[listen]]\naddress = \"127.0.0.1:0\"\n{routes}")
    }

    /// Replaces the config file (listener included) by a rename, as careful tools do, and
    /// reloads it as SIGHUP would; returns the report once the reload has been applied or
    /// refused. (The file watcher may reload it too; both read the whole new file.)
    pub async fn reload_with(&mut self, routes: &str) -> ReloadReport {
        self.replace_config(routes);
        self.reload().await
    }

    /// Replaces the config file by writing a new one beside it and renaming it over.
    pub fn replace_config(&self, routes: &str) {
        let replacement = self.config_path.with_extension("toml.new");
        std::fs::write(&replacement, Self::config_text(routes)).unwrap();
        std::fs::rename(&replacement, &self.config_path).unwrap();
    }

    /// Reloads as SIGHUP would and waits for the outcome.
    pub async fn reload(&mut self) -> ReloadReport {
        let before = self.reloads.borrow_and_update().attempts;
        self.signal(Signal::Reload).await;
        self.next_reload(before).await
    }

    /// Waits for a reload after the `before`th (a file change triggers one by itself).
    pub async fn next_reload(&mut self, before: u64) -> ReloadReport {
        guard(self.reloads.wait_for(|report| report.attempts > before))
            .await
            .unwrap()
            .clone()
    }

    /// Reloads attempted so far.
    pub fn reload_count(&mut self) -> u64 {
        self.reloads.borrow_and_update().attempts
    }

    /// Asks for a shutdown and waits until every connection is gone.
    pub async fn shutdown(self) {
        self.signal(Signal::Shutdown).await;
        self.stopped().await;
    }

    /// Sends a signal, as SIGHUP or SIGTERM would.
    pub async fn signal(&self, signal: Signal) {
        self.signals.send(signal).await.unwrap();
    }

    /// Waits until the server's `run` has returned.
    pub async fn stopped(self) {
        guard(self.task).await.unwrap().unwrap();
    }
}

/// What a hello looks like on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Records the hello is framed into (rustls uses one).
    pub records: usize,
    /// Bytes per write(2) on the socket.
    pub chunk: usize,
}

impl Shape {
    pub const PLAIN: Shape = Shape {
        records: 1,
        chunk: usize::MAX,
    };
}

/// A rustls client config trusting the test CA, offering `alpn`.
pub fn client_config(alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki().ca_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// The result of one TLS exchange through the proxy.
#[derive(Debug)]
pub struct Exchange {
    /// The backend's answer (the HTTP body), or the TLS error.
    pub answer: Result<String, rustls::Error>,
    /// Bytes of the ClientHello as sent.
    pub hello_len: usize,
    /// The client socket's local port.
    pub client_port: Option<u16>,
}

/// Connects to `proxy` with a rustls client verifying the backend's certificate for `name`
/// (a DNS name, or an IP address, which sends no SNI), sends its hello in `shape`, then one
/// HTTP request, and returns what the backend answered.
pub async fn tls_exchange(proxy: SocketAddr, name: &str, alpn: &[&str], shape: Shape) -> Exchange {
    let config = client_config(alpn);
    let name = TlsName::try_from(name.to_owned()).unwrap();
    guard(tokio::task::spawn_blocking(move || {
        blocking_exchange(proxy, config, name, shape)
    }))
    .await
    .unwrap()
}

fn blocking_exchange(
    proxy: SocketAddr,
    config: Arc<ClientConfig>,
    name: TlsName<'static>,
    shape: Shape,
) -> Exchange {
    let mut connection = ClientConnection::new(config, name).unwrap();
    let mut socket = std::net::TcpStream::connect(proxy).unwrap();
    let client_port = socket.local_addr().unwrap().port();
    socket.set_read_timeout(Some(HANG_GUARD)).unwrap();
    socket.set_nodelay(true).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    let wire = reframe(&hello, shape.records).unwrap();
    for chunk in wire.chunks(shape.chunk.min(wire.len())) {
        socket.write_all(chunk).unwrap();
    }
    let mut stream = rustls::Stream::new(&mut connection, &mut socket);
    let answer = (|| {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    let answer = answer.map_err(|error: std::io::Error| {
        match error
            .into_inner()
            .map(|inner| inner.downcast::<rustls::Error>())
        {
            Some(Ok(tls)) => *tls,
            other => rustls::Error::General(format!("{other:?}")),
        }
    });
    Exchange {
        client_port: Some(client_port),
        answer: answer.map(|response| {
            response
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .trim_end()
                .to_owned()
        }),
        hello_len: wire.len(),
    }
}

/// The name the backend said it was, or the TLS error text.
pub async fn who_answers(proxy: SocketAddr, name: &str, alpn: &[&str]) -> String {
    match tls_exchange(proxy, name, alpn, Shape::PLAIN).await.answer {
        Ok(answer) => answer.split(':').next().unwrap().to_owned(),
        Err(error) => format!("error: {error}"),
    }
}

/// A plain-TCP backend that records every byte of each connection until the client's EOF, then
/// answers `NAME` and closes. `connections` yields each connection's bytes.
pub struct Recording {
    pub address: SocketAddr,
    pub connections: mpsc::Receiver<Vec<u8>>,
}

impl Recording {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (sender, connections) = mpsc::channel(16);
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sender = sender.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    if stream.read_to_end(&mut received).await.is_ok() {
                        let _ = stream.write_all(name.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                    let _ = sender.send(received).await;
                });
            }
        });
        Self {
            address,
            connections,
        }
    }

    /// The bytes of the next connection, once the client has closed its side.
    pub async fn next(&mut self) -> Vec<u8> {
        guard(self.connections.recv()).await.unwrap()
    }
}

/// A plain-TCP echo backend: everything it reads it writes back, until EOF.
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

/// Sends `bytes` to `proxy`, closes the write side, and returns everything read back until EOF
/// (an error reading counts as EOF: a reset after an alert).
pub async fn send_raw(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let _ = stream.shutdown().await;
    read_until_closed(&mut stream).await
}

/// Reads until EOF or an error.
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match guard(stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => return received,
            Ok(read) => received.extend_from_slice(&chunk[..read]),
        }
    }
}

/// An address where connects are refused: a socket bound but not listening holds the port, so
/// no other test's listener can take it meanwhile.
pub fn refusing() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// A backend that never answers a SYN: a listener with a backlog of one that never accepts, its
/// queue filled, so the kernel drops further SYNs and a connect waits for its timeout.
pub struct StuckBackend {
    pub address: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl StuckBackend {
    pub async fn start() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let address = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let filler = tokio::net::TcpSocket::new_v4().unwrap();
            if let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_millis(100), filler.connect(address)).await
            {
                fillers.push(stream);
            }
        }
        // The premise: the queue is full, so one more connect goes unanswered. A kernel that
        // queued SYNs differently would make the tests meaningless: say so rather than pass or
        // hang.
        let probe = tokio::net::TcpSocket::new_v4().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), probe.connect(address))
                .await
                .is_err(),
            "the stuck backend answered a connect: its queue is not full on this kernel"
        );
        Self {
            address,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

/// Whether `tool` runs (`--version` or `version`); on a machine without it a test says so and
/// skips, except under CI, which installs every tool.
pub fn installed(tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
        || std::process::Command::new(tool)
            .arg("version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
    if !found {
        // CI installs every tool: there, a missing one is a broken CI, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed, and CI must run this test (.ci/run installs it)"
        );
        eprintln!("skipped: {tool} is not installed (.ci/run installs it)");
    }
    found
}

/// A connection to `proxy` from loopback address `source` (any of 127.0.0.0/8).
pub async fn connect_from(source: &str, proxy: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(proxy).await.unwrap()
}

/// Scrapes `GET /metrics` until `done` says the page is the one waited for, and returns it.
/// Metrics change with no event to wait on, so this polls, under the hang guard; `what` names
/// the wait when it hangs (with the last page's lines for `series`).
pub async fn scrape_until(
    address: SocketAddr,
    series: &str,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) -> String {
    let mut last = String::new();
    let waited = tokio::time::timeout(HANG_GUARD, async {
        loop {
            last = scrape(address, "/metrics").await;
            if done(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        let name = series.split('{').next().unwrap_or(series);
        let seen: Vec<&str> = last.lines().filter(|line| line.starts_with(name)).collect();
        panic!("hung: waiting for {what}, last seen {seen:?}");
    }
    last
}

/// Waits until `GET /metrics` shows `series` (name and labels) with value `value`.
pub async fn wait_for_metric(address: SocketAddr, series: &str, value: &str) {
    let wanted = format!("{series} {value}");
    scrape_until(address, series, &wanted, |page| {
        page.lines().any(|line| line == wanted)
    })
    .await;
}

/// The value of `series` (name and labels) in a `/metrics` page; 0 when it isn't there.
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().unwrap())
}

/// `GET path` on a metrics address; the whole HTTP response.
pub async fn scrape(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: metrics\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    guard(stream.read_to_string(&mut response)).await.unwrap();
    response
}

/// A fatal TLS alert record with this description.
pub fn alert(description: u8) -> Vec<u8> {
    vec![21, 3, 3, 0, 2, 2, description]
}

/// The sniroute binary this test run built.
pub const BIN: &str = env!("CARGO_BIN_EXE_sniroute");

/// The real binary running with a config, its stderr read line by line. A task drains stderr
/// as it comes, so a test that stops reading never blocks the binary's logging.
pub struct Binary {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Binary {
    pub async fn start(config: &std::path::Path, args: &[&str]) -> Self {
        let mut command = tokio::process::Command::new(BIN);
        command.arg("--config").arg(config).args(args);
        Self::spawn(command)
    }

    /// The binary with at most `descriptors` open files (soft and hard limits).
    pub async fn start_with_fd_limit(config: &std::path::Path, descriptors: u32) -> Self {
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(format!(
            "ulimit -n {descriptors} && exec \"$0\" --config \"$1\" --workers 1"
        ));
        command.arg(BIN).arg(config);
        Self::spawn(command)
    }

    fn spawn(mut command: tokio::process::Command) -> Self {
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The next stderr line containing `needle`.
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            let line = guard(self.lines.recv()).await.expect("stderr ended");
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The address in the next stderr line containing `needle` (`listening address=…`).
    pub async fn wait_for_address(&mut self, needle: &str) -> SocketAddr {
        let line = self.wait_for_line(needle).await;
        line.split(['=', ' ', '"', '}', ','])
            .find_map(|word| word.parse().ok())
            .expect("an address in the line")
    }

    /// Sends the signal `name` (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let kill = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status();
        assert!(kill.unwrap().success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait(mut self) -> Option<i32> {
        guard(self.child.wait()).await.unwrap().code()
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn terminate(self) -> Option<i32> {
        self.signal("TERM");
        self.wait().await
    }
}

/// Writes a certificate for `names` from `pki` and its key into `dir` as `{stem}.pem` and
/// `{stem}.key`; returns the two paths, for a `terminate` table.
pub fn write_certificate(
    pki: &Pki,
    dir: &std::path::Path,
    stem: &str,
    names: &[&str],
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (certificate, key) = pki.issue_pem(&names).unwrap();
    let (cert_file, key_file) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert_file, certificate).unwrap();
    std::fs::write(&key_file, key).unwrap();
    (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    )
}

/// Writes `pki`'s CA certificate into `dir` as `{stem}.pem`; returns its path.
pub fn write_ca(pki: &Pki, dir: &std::path::Path, stem: &str) -> String {
    let path = dir.join(format!("{stem}.pem"));
    std::fs::write(&path, pki.ca_pem()).unwrap();
    path.display().to_string()
}

/// A plaintext HTTP/1.1 backend: reads one request head and answers `NAME: REQUEST-LINE`, then
/// closes. What a terminate route's backend sees.
pub async fn http_backend(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).await.is_err() {
                    return;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).await.is_ok_and(|read| read > 2) {
                    line.clear();
                }
                let body = format!("{name}: {}\n", request_line.trim_end());
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut stream = reader.into_inner();
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    address
}
