//! QUIC through sniroute against a direct connection (sniroute's README "QUIC"): quinn clients
//! and a quinn backend in this process, on loopback, the proxy a real sniroute process with a
//! quic listener. Two figures, for each target:
//!
//! 1. handshakes/s at concurrency 64 (a full QUIC handshake with a post-quantum key share, one
//!    stream asking for a short answer, a close), and the proxy's CPU seconds per 1,000 flows;
//! 2. bulk download over one connection: MB/s, datagrams/s (quinn's count of what the client
//!    received), and the proxy's CPU seconds per GiB.
//!
//! sniroute can't see a QUIC connection close (it is encrypted), so each flow stays until
//! `timeouts.quic_idle`: the bench sets it to 2 s, with room for every flow a run makes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::Endpoint;

use super::{
    closed_loop, launch, sniroute_binary, sniroute_command, Bench, Fault, Faults, Kind, Table,
    Target, GIB,
};

/// What the backend answers a one-byte request with.
const ANSWER: &[u8] = b"quic backend\n";
/// Client endpoints (UDP sockets) the handshakes spread over.
const CLIENT_SOCKETS: usize = 8;
/// Handshakes timed one at a time, for their median.
const SEQUENTIAL: usize = 200;
/// A bulk request: this many bytes back.
const BULK: u64 = 256 << 20;

/// The QUIC table: direct and sniroute, `runs` interleaved runs.
pub(super) async fn flows(bench: &Bench, runs: usize) -> anyhow::Result<Table> {
    let pki = sniroute::demo::Pki::new()?;
    let backend = backend(&pki).await?;
    let dir = bench.root.join("sniroute-quic");
    std::fs::create_dir_all(&dir)?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let quic = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let text = format!(
        "[[listen]]\naddress = \"{listen}\"\n\n[[listen]]\naddress = \"{quic}\"\n\
         protocol = \"quic\"\n\n[timeouts]\ndrain = \"1s\"\nquic_idle = \"2s\"\n\n\
         [limits]\nmax_quic_flows = 1000000\nmax_pending_per_ip = 0\n\n\
         [metrics]\naddress = \"{metrics}\"\n\n\
         [[route]]\nsni = \"quic.bench.test\"\nbackend = \"{backend}\"\n"
    );
    let command = sniroute_command(&sniroute_binary()?, &dir, &text)?;
    let sniroute = Target {
        listen: Some(quic),
        proxy: Some(launch(command, &dir, false, listen).await?),
        ..Target::new(Kind::Sniroute)
    };
    let direct = Target::new(Kind::Direct);
    let targets = [(&direct, backend), (&sniroute, quic)];
    let clients = (0..CLIENT_SOCKETS)
        .map(|_| client(&pki))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let clients: Arc<[Endpoint]> = clients.into();
    let mut table = Table::new(["direct", "sniroute"]);
    let faults: [Arc<Faults>; 2] = Default::default();
    for run in 1..=runs {
        for (column, (target, address)) in targets.iter().enumerate() {
            let label = target.kind.label();
            eprintln!("[run {run}/{runs}] QUIC handshakes: {label}");
            let (spread, address) = (clients.clone(), *address);
            let cpu_before = target.cpu_seconds();
            let (done, seconds) = closed_loop(bench.window, &faults[column], move |index| {
                let client = spread[index % spread.len()].clone();
                async move { handshake(&client, address).await.map_err(|_| Fault::Error) }
            })
            .await?;
            table.add("QUIC handshakes/s", column, done / seconds);
            if let Some(cpu) = target.cpu_since(cpu_before) {
                table.add("proxy CPU s per 1,000 flows", column, cpu * 1000.0 / done);
            }
            eprintln!("[run {run}/{runs}] QUIC handshakes one at a time: {label}");
            let mut times = Vec::with_capacity(SEQUENTIAL);
            for _ in 0..SEQUENTIAL {
                let start = Instant::now();
                handshake(&clients[0], address).await?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            table.add(
                "handshake ms, one at a time (p50)",
                column,
                times[SEQUENTIAL / 2],
            );
            eprintln!("[run {run}/{runs}] QUIC bulk download: {label}");
            let cpu_before = target.cpu_seconds();
            let (bytes, datagrams, seconds) = bulk(&clients[0], address, bench.window).await?;
            table.add("download MB/s, 1 connection", column, bytes / seconds / 1e6);
            table.add("datagrams/s received", column, datagrams / seconds);
            if let Some(cpu) = target.cpu_since(cpu_before) {
                table.add("proxy CPU s per GiB", column, cpu / (bytes / GIB));
            }
        }
    }
    for (column, faults) in faults.iter().enumerate() {
        table.add("errors (total)", column, faults.errors.load(Relaxed) as f64);
    }
    table.add(
        "datagrams sniroute dropped (total)",
        1,
        dropped(metrics).await?,
    );
    Ok(table)
}

/// A quinn server for `quic.bench.test`: a one-byte request gets [`ANSWER`]; an 8-byte one,
/// that many bytes.
async fn backend(pki: &sniroute::demo::Pki) -> anyhow::Result<SocketAddr> {
    let tls = pki.server_config(&["quic.bench.test".into()], &["h3"])?;
    let crypto = QuicServerConfig::try_from((*tls).clone())?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    let address = endpoint.local_addr()?;
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        let request = recv.read_to_end(8).await?;
                        match <[u8; 8]>::try_from(&request[..]) {
                            Ok(size) => {
                                let block = vec![0u8; 64 * 1024];
                                let mut left = u64::from_be_bytes(size);
                                while left > 0 {
                                    let chunk = left.min(block.len() as u64) as usize;
                                    send.write_all(&block[..chunk]).await?;
                                    left -= chunk as u64;
                                }
                            }
                            Err(_) => send.write_all(ANSWER).await?,
                        }
                        send.finish()?;
                        Ok::<_, anyhow::Error>(())
                    });
                }
            });
        }
    });
    Ok(address)
}

/// A quinn client endpoint trusting `pki`'s CA, offering `h3`.
fn client(pki: &sniroute::demo::Pki) -> anyhow::Result<Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(sniroute::terminate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut endpoint = Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}

/// One connection: handshake, one short request and its answer, close.
async fn handshake(client: &Endpoint, address: SocketAddr) -> anyhow::Result<()> {
    let attempt = async {
        let connection = client.connect(address, "quic.bench.test")?.await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(b"?").await?;
        send.finish()?;
        let answer = recv.read_to_end(64).await?;
        connection.close(0u32.into(), b"");
        if answer != ANSWER {
            bail!("another answer");
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .context("timed out")?
}

/// Downloads over one connection for `window`: bytes, datagrams received, seconds.
async fn bulk(
    client: &Endpoint,
    address: SocketAddr,
    window: Duration,
) -> anyhow::Result<(f64, f64, f64)> {
    let connection = client.connect(address, "quic.bench.test")?.await?;
    let received = Arc::new(AtomicU64::new(0));
    let reading = {
        let (connection, received) = (connection.clone(), received.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let (mut send, mut recv) = connection.open_bi().await?;
                send.write_all(&BULK.to_be_bytes()).await?;
                send.finish()?;
                while let Some(read) = recv.read(&mut buffer).await? {
                    received.fetch_add(read as u64, Relaxed);
                }
            }
            #[allow(unreachable_code)]
            Ok::<_, anyhow::Error>(())
        })
    };
    let (start, datagrams_before) = (Instant::now(), connection.stats().udp_rx.datagrams);
    tokio::time::sleep(window).await;
    let bytes = received.load(Relaxed) as f64;
    let datagrams = (connection.stats().udp_rx.datagrams - datagrams_before) as f64;
    let seconds = start.elapsed().as_secs_f64();
    reading.abort();
    connection.close(0u32.into(), b"");
    if bytes == 0.0 {
        bail!("no byte delivered");
    }
    Ok((bytes, datagrams, seconds))
}

/// The sum of `sniroute_quic_dropped_total` on sniroute's metrics endpoint (a drop there is a
/// datagram the client or backend sends again); each reason goes to stderr.
async fn dropped(metrics: SocketAddr) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(metrics).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await?;
    let mut page = String::new();
    stream.read_to_string(&mut page).await?;
    let mut total = 0.0;
    for line in page
        .lines()
        .filter(|line| line.starts_with("sniroute_quic_dropped_total"))
    {
        eprintln!("{line}");
        total += line.rsplit(' ').next().unwrap_or("0").parse::<f64>()?;
    }
    Ok(total)
}
