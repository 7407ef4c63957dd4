//! QUIC listeners (SPEC "QUIC"), with real QUIC stacks on loopback: quinn clients through
//! sniroute to quinn backends that answer with their name, the SNI and the ALPN they saw, then
//! echo a stream. Which backend served a flow is proven by what it answers.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint};
use sniroute::quic_demo::H3Backend;
use support::*;
use tokio::net::UdpSocket;

/// A quinn server with a certificate for `names`, negotiating `alpn`: on each bidirectional
/// stream it writes `NAME: sni=… alpn=…\n`, then echoes the stream.
async fn quic_backend(name: &'static str, names: &[&str], alpn: &[&str]) -> SocketAddr {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let tls = pki()
        .server_config(&names, alpn)
        .expect("backend certificate");
    let crypto = QuicServerConfig::try_from((*tls).clone()).expect("a QUIC-capable config");
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).expect("bind");
    let address = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                let seen = connection
                    .handshake_data()
                    .and_then(|data| data.downcast::<HandshakeData>().ok())
                    .map(|data| {
                        let alpn = data
                            .protocol
                            .map(|p| String::from_utf8_lossy(&p).into_owned());
                        format!(
                            "{name}: sni={} alpn={}\n",
                            data.server_name.unwrap_or_default(),
                            alpn.unwrap_or_else(|| "-".into())
                        )
                    })
                    .unwrap_or_default();
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        send.write_all(seen.as_bytes()).await?;
                        tokio::io::copy(&mut recv, &mut send).await?;
                        send.finish()?;
                        send.stopped().await?;
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                    });
                }
            });
        }
    });
    address
}

/// A quinn client endpoint trusting the test CA, offering `alpn`, on `socket`. Its connections
/// send a keep-alive every 200 ms while open, so a flow idles out only once they close.
fn client(alpn: &[&str], socket: std::net::UdpSocket) -> Endpoint {
    let tls = (*client_config(alpn)).clone();
    let crypto = QuicClientConfig::try_from(tls).expect("a QUIC-capable config");
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_millis(200)));
    let mut endpoint = Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("client endpoint");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    endpoint
}

fn loopback_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Connects to `name` through `proxy`, sends `payload` on one stream and returns the backend's
/// first line and the echoed bytes.
async fn exchange(
    endpoint: &Endpoint,
    proxy: SocketAddr,
    name: &str,
    payload: &[u8],
) -> Result<(String, Vec<u8>), ConnectionError> {
    let connection = guard(endpoint.connect(proxy, name).unwrap()).await?;
    let answer = guard(ask(&connection, payload)).await?;
    connection.close(0u32.into(), b"done");
    Ok(answer)
}

/// One stream on `connection`: `payload` out (while reading), the answer back.
async fn ask(
    connection: &quinn::Connection,
    payload: &[u8],
) -> Result<(String, Vec<u8>), ConnectionError> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let writing = async {
        send.write_all(payload).await.expect("write");
        send.finish().expect("finish");
    };
    let reading = async { recv.read_to_end(usize::MAX).await.expect("read") };
    let ((), answer) = tokio::join!(writing, reading);
    let newline = answer
        .iter()
        .position(|&b| b == b'\n')
        .expect("a first line");
    Ok((
        String::from_utf8_lossy(&answer[..newline]).into_owned(),
        answer[newline + 1..].to_vec(),
    ))
}

/// A proxy with its TCP listener, a quic listener (its second) and `[metrics]`, `timeouts`
/// lines added to `[timeouts]`. Its drain lasts a second: sniroute can't see a QUIC connection
/// close (that is encrypted), so at shutdown its flows run to the drain's end.
async fn quic_proxy_with(timeouts: &str, routes: &str) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(&quic_config(timeouts, routes)).await;
    let quic = proxy.listeners()[1];
    (proxy, quic)
}

/// The config of [`quic_proxy_with`], after the TCP listener.
fn quic_config(timeouts: &str, routes: &str) -> String {
    let drain = match timeouts.contains("drain") {
        true => "",
        false => "drain = \"1s\"",
    };
    format!(
        "[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"quic\"\n\n\
         [timeouts]\n{drain}\n{timeouts}\n\
         [metrics]\naddress = \"127.0.0.1:0\"\n\n{routes}"
    )
}

async fn quic_proxy(routes: &str) -> (Proxy, SocketAddr) {
    quic_proxy_with("", routes).await
}

fn route(sni: &str, backend: SocketAddr) -> String {
    format!("[[route]]\nsni = \"{sni}\"\nbackend = \"{backend}\"\n\n")
}

#[tokio::test]
async fn names_and_alpn_route_flows_to_their_backends() {
    let alpha = quic_backend("alpha", &["alpha.test"], &["h3"]).await;
    let beta = quic_backend("beta", &["beta.test"], &["h3", "hq-interop"]).await;
    let interop = quic_backend("interop", &["beta.test"], &["hq-interop"]).await;
    let (proxy, quic) = quic_proxy(&format!(
        "{}{}[[route]]\nsni = \"beta.test\"\nalpn = [\"hq-interop\"]\nbackend = \"{interop}\"\n",
        route("alpha.test", alpha),
        route("beta.test", beta),
    ))
    .await;
    let h3 = client(&["h3"], loopback_socket());
    // One client endpoint, two connections one after the other: flows apart by connection ID,
    // not address.
    let (first, echoed) = exchange(&h3, quic, "alpha.test", b"hello").await.unwrap();
    assert_eq!(first, "alpha: sni=alpha.test alpn=h3");
    assert_eq!(echoed, b"hello");
    let (first, _) = exchange(&h3, quic, "beta.test", b"x").await.unwrap();
    assert_eq!(first, "beta: sni=beta.test alpn=h3");
    let interop_client = client(&["hq-interop"], loopback_socket());
    let (first, _) = exchange(&interop_client, quic, "beta.test", b"x")
        .await
        .unwrap();
    assert_eq!(first, "interop: sni=beta.test alpn=hq-interop");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_post_quantum_hello_spanning_two_initials_is_routed_even_reordered() {
    let alpha = quic_backend("alpha", &["alpha.test"], &["h3"]).await;
    let (proxy, quic) = quic_proxy(&route("alpha.test", alpha)).await;
    // rustls prefers X25519MLKEM768 (the `prefer-post-quantum` feature): a hello of ~1,800
    // bytes, in CRYPTO frames over two Initial packets, two datagrams.
    let (first, _) = exchange(
        &client(&["h3"], loopback_socket()),
        quic,
        "alpha.test",
        b"pq",
    )
    .await
    .unwrap();
    assert_eq!(first, "alpha: sni=alpha.test alpn=h3");

    // The same through a relay that swaps the client's first two datagrams: the hello's end
    // arrives before its start.
    let (relay, spanned) = Swapper::start(quic).await;
    let (first, _) = exchange(
        &client(&["h3"], loopback_socket()),
        relay,
        "alpha.test",
        b"swapped",
    )
    .await
    .unwrap();
    assert_eq!(first, "alpha: sni=alpha.test alpn=h3");
    assert!(
        guard(spanned).await.unwrap(),
        "the hello needs both datagrams"
    );
    proxy.shutdown().await;
}

/// A UDP relay for one client that delivers its first two datagrams in the opposite order,
/// then everything in order both ways; it says whether the hello needed both (the first alone
/// not a whole hello, the two together one).
struct Swapper;

impl Swapper {
    async fn start(upstream: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Receiver<bool>) {
        use sniroute::quic::{InitialReader, DEFAULT_CRYPTO_LIMIT};
        let (spanned, said) = tokio::sync::oneshot::channel();
        let mut spanned = Some(spanned);
        let outer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let inner = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        inner.connect(upstream).await.unwrap();
        let address = outer.local_addr().unwrap();
        tokio::spawn(async move {
            let mut client = None;
            let mut held: Option<Vec<u8>> = None;
            let mut count = 0;
            let (mut a, mut b) = (vec![0; 65536], vec![0; 65536]);
            loop {
                tokio::select! {
                    Ok((len, from)) = outer.recv_from(&mut a) => {
                        client = Some(from);
                        count += 1;
                        match count {
                            1 => held = Some(a[..len].to_vec()),
                            2 => {
                                let first = held.take().unwrap();
                                let mut reader = InitialReader::new(DEFAULT_CRYPTO_LIMIT);
                                let alone = reader.feed(&first);
                                let both = reader.feed(&a[..len]);
                                let needed = matches!((alone, both), (Ok(None), Ok(Some(_))));
                                if let Some(spanned) = spanned.take() {
                                    let _ = spanned.send(needed);
                                }
                                inner.send(&a[..len]).await.unwrap();
                                inner.send(&first).await.unwrap();
                            }
                            _ => { inner.send(&a[..len]).await.unwrap(); }
                        }
                    }
                    Ok(len) = inner.recv(&mut b) => {
                        if let Some(client) = client {
                            outer.send_to(&b[..len], client).await.unwrap();
                        }
                    }
                }
            }
        });
        (address, said)
    }
}

#[tokio::test]
async fn sixteen_mebibytes_each_way_survive_a_client_rebinding_midway() {
    let alpha = quic_backend("alpha", &["alpha.test"], &["h3"]).await;
    let (proxy, quic) = quic_proxy(&route("alpha.test", alpha)).await;
    let endpoint = client(&["h3"], loopback_socket());
    let connection = guard(endpoint.connect(quic, "alpha.test").unwrap())
        .await
        .unwrap();
    let payload: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    // Halfway through reading the echo, the client's NAT rebinds: a new port, the same
    // connection, in the middle of the transfer.
    let before = endpoint.local_addr().unwrap();
    let (mut send, mut recv) = guard(connection.open_bi()).await.unwrap();
    let writing = async {
        send.write_all(&payload).await.unwrap();
        send.finish().unwrap();
    };
    let reading = async {
        let mut echoed = Vec::with_capacity(payload.len() + 64);
        let mut chunk = vec![0; 64 * 1024];
        let mut rebound = false;
        while let Some(read) = recv.read(&mut chunk).await.unwrap() {
            echoed.extend_from_slice(&chunk[..read]);
            if !rebound && echoed.len() >= 8 << 20 {
                endpoint.rebind(loopback_socket()).unwrap();
                rebound = true;
            }
        }
        echoed
    };
    let ((), answer) = guard(async { tokio::join!(writing, reading) }).await;
    let newline = answer.iter().position(|&b| b == b'\n').unwrap();
    let (first, echoed) = (
        String::from_utf8_lossy(&answer[..newline]).into_owned(),
        answer[newline + 1..].to_vec(),
    );
    assert_ne!(endpoint.local_addr().unwrap(), before, "rebound");
    assert_eq!(first, "alpha: sni=alpha.test alpn=h3");
    assert!(echoed == payload, "16 MiB echoed intact");
    // And the connection goes on from the new port.
    let (_, echoed) = guard(ask(&connection, &payload[..1 << 20])).await.unwrap();
    assert!(echoed == payload[..1 << 20], "1 MiB after rebinding");
    connection.close(0u32.into(), b"done");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_idle_flow_expires_and_is_counted() {
    let alpha = quic_backend("alpha", &["alpha.test"], &["h3"]).await;
    let (proxy, quic) = quic_proxy_with("quic_idle = \"1s\"", &route("alpha.test", alpha)).await;
    let endpoint = client(&["h3"], loopback_socket());
    exchange(&endpoint, quic, "alpha.test", b"once")
        .await
        .unwrap();
    // Nothing moves after the close: the flow is forgotten after quic_idle.
    wait_for_metric(
        proxy.metrics(),
        "sniroute_connections_closed_total{route=\"alpha.test\",outcome=\"idle_timeout\"}",
        "1",
    )
    .await;
    let page = scrape(proxy.metrics(), "/metrics").await;
    for direction in ["to_backend", "to_client"] {
        let series = format!(
            "sniroute_quic_datagrams_total{{route=\"alpha.test\",direction=\"{direction}\"}}"
        );
        assert!(metric(&page, &series) >= 2.0, "{series}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn bad_initials_are_dropped_and_counted_and_no_route_is_closed() {
    use sniroute::hello::synth::ClientHelloBuilder;
    use sniroute::quic::synth::{crypto_frame, initial};
    use sniroute::quic::Version;

    let alpha = quic_backend("alpha", &["alpha.test"], &["h3"]).await;
    let (proxy, quic) = quic_proxy(&route("alpha.test", alpha)).await;
    // A flow open through all of it.
    let endpoint = client(&["h3"], loopback_socket());
    let kept = guard(endpoint.connect(quic, "alpha.test").unwrap())
        .await
        .unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dcid = [7u8; 8];
    let good = {
        let message = ClientHelloBuilder::new()
            .server_name("alpha.test")
            .message();
        initial(Version::V1, &dcid, &[1; 8], 0, &crypto_frame(0, &message)).unwrap()
    };
    let mut tampered = good.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let mut unknown_version = good.clone();
    unknown_version[1..5].copy_from_slice(&0x0a0a_0a0au32.to_be_bytes());
    // A connection ID of 48 bytes; an Initial cut short; one whose tag doesn't verify; and
    // a version sniroute doesn't read.
    let garbage = [&[0xc0, 0, 0, 0, 1, 48][..], &[0x55; 100]].concat();
    for datagram in [garbage, good[..600].to_vec(), tampered, unknown_version] {
        sender.send_to(&datagram, quic).await.unwrap();
    }
    let listener = format!("listener=\"{quic}\"");
    for (reason, count) in [
        ("malformed", "2"),
        ("undecryptable", "1"),
        ("unknown_version", "1"),
    ] {
        wait_for_metric(
            proxy.metrics(),
            &format!("sniroute_quic_dropped_total{{{listener},reason=\"{reason}\"}}"),
            count,
        )
        .await;
    }

    // A name with no route and no [default]: quinn hears CONNECTION_CLOSE with the TLS alert
    // unrecognized_name (CRYPTO_ERROR 0x100 + 112).
    let refused = exchange(&endpoint, quic, "nobody.test", b"x")
        .await
        .unwrap_err();
    match refused {
        ConnectionError::ConnectionClosed(close) => {
            assert_eq!(u64::from(close.error_code), 0x100 + 112, "{close:?}")
        }
        other => panic!("expected a CONNECTION_CLOSE, got {other:?}"),
    }
    // None of it touched the open flow, or a new one.
    let (first, echoed) = guard(ask(&kept, b"still")).await.unwrap();
    assert_eq!(
        (&*first, &*echoed),
        ("alpha: sni=alpha.test alpn=h3", &b"still"[..])
    );
    let (first, _) = exchange(&endpoint, quic, "alpha.test", b"x").await.unwrap();
    assert_eq!(first, "alpha: sni=alpha.test alpn=h3");
    kept.close(0u32.into(), b"done");
    wait_for_metric(
        proxy.metrics(),
        "sniroute_connections_closed_total{route=\"none\",outcome=\"no_route\"}",
        "1",
    )
    .await;
    proxy.shutdown().await;
}

/// Past `limits.max_quic_flows`, a new flow's Initial is dropped and counted; the flows open go
/// on.
#[tokio::test]
async fn flows_past_max_quic_flows_are_dropped_and_counted() {
    use sniroute::hello::synth::ClientHelloBuilder;
    use sniroute::quic::synth::{crypto_frame, initial};
    use sniroute::quic::Version;

    let alpha = quic_backend("alpha", &["alpha.test"], &["h3"]).await;
    let (proxy, quic) = quic_proxy(&format!(
        "[limits]\nmax_quic_flows = 1\n\n{}",
        route("alpha.test", alpha)
    ))
    .await;
    let endpoint = client(&["h3"], loopback_socket());
    let kept = guard(endpoint.connect(quic, "alpha.test").unwrap())
        .await
        .unwrap();
    let message = ClientHelloBuilder::new()
        .server_name("alpha.test")
        .message();
    let second = initial(Version::V1, &[9; 8], &[1; 8], 0, &crypto_frame(0, &message)).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sender.send_to(&second, quic).await.unwrap();
    wait_for_metric(
        proxy.metrics(),
        &format!("sniroute_quic_dropped_total{{listener=\"{quic}\",reason=\"max_quic_flows\"}}"),
        "1",
    )
    .await;
    assert_eq!(
        guard(ask(&kept, b"1")).await.unwrap().0,
        "alpha: sni=alpha.test alpn=h3"
    );
    kept.close(0u32.into(), b"done");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reload_moves_new_flows_only_and_a_drain_lets_routed_flows_finish() {
    let alpha = quic_backend("alpha", &["app.test"], &["h3"]).await;
    let beta = quic_backend("beta", &["app.test"], &["h3"]).await;
    // Flows idle out a second after their connection closes (the client's keep-alives hold
    // them until then), which ends the drain.
    let timeouts = "drain = \"20s\"\nquic_idle = \"1s\"";
    let (mut proxy, quic) = quic_proxy_with(timeouts, &route("app.test", alpha)).await;
    let endpoint = client(&["h3"], loopback_socket());
    let kept = guard(endpoint.connect(quic, "app.test").unwrap())
        .await
        .unwrap();
    assert_eq!(
        guard(ask(&kept, b"1")).await.unwrap().0,
        "alpha: sni=app.test alpn=h3"
    );

    let reloaded = proxy
        .reload_with(&quic_config(timeouts, &route("app.test", beta)))
        .await;
    assert_eq!(reloaded.refused, None);
    let (first, _) = exchange(&endpoint, quic, "app.test", b"2").await.unwrap();
    assert_eq!(
        first, "beta: sni=app.test alpn=h3",
        "a new flow takes the new route"
    );
    assert_eq!(
        guard(ask(&kept, b"3")).await.unwrap().0,
        "alpha: sni=app.test alpn=h3",
        "a routed flow keeps its backend"
    );

    // SIGTERM: /readyz says draining, and the routed flow still works.
    let metrics = proxy.metrics();
    proxy.signal(sniroute::server::Signal::Shutdown).await;
    guard(async {
        while !scrape(metrics, "/readyz").await.starts_with("HTTP/1.1 503") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        guard(ask(&kept, b"4")).await.unwrap().0,
        "alpha: sni=app.test alpn=h3",
        "a routed flow runs on through the drain"
    );
    kept.close(0u32.into(), b"done");
    proxy.stopped().await;
}

#[tokio::test]
async fn a_terminate_route_beside_a_quic_listener_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(pki(), dir.path(), "admin", &["admin.test"]);
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n\n[[listen]]\naddress = \"127.0.0.1:0\"\n\
             protocol = \"quic\"\n\n[[route]]\nsni = \"admin.test\"\nbackend = \"127.0.0.1:9\"\n\
             terminate = {{ cert = \"{cert}\", key = \"{key}\" }}\n"
        ),
    )
    .unwrap();
    let error = sniroute::config::load(&path).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}:11:13: route[0].terminate: listen[1] is a quic listener, and QUIC is \
             passthrough only: serve this name from a config without one",
            path.display()
        )
    );
}

/// What a new user would do: headless Chromium loads a page over HTTP/3 through the real
/// sniroute binary from the backend named in the URL, and the access log shows the flow with
/// its SNI, route and a QUIC JA4.
#[tokio::test]
async fn chromium_loads_a_page_over_http3_through_sniroute() {
    if !installed("chromium") {
        return;
    }
    let backend = H3Backend::start(pki(), "127.0.0.1:0".parse().unwrap(), "app.test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"quic\"\n\n\
             [timeouts]\nquic_idle = \"1s\"\n\n\
             [[route]]\nsni = \"app.test\"\nbackend = \"{}\"\n",
            backend.address
        ),
    )
    .unwrap();
    let mut proxy = Binary::start(&config, &[]).await;
    let quic = proxy.wait_for_address("listening").await;
    let port = quic.port();
    let profile = tempfile::tempdir().unwrap();
    let page = guard(
        tokio::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--enable-quic",
                &format!("--origin-to-force-quic-on=app.test:{port}"),
                "--host-resolver-rules=MAP app.test 127.0.0.1",
                &format!("--ignore-certificate-errors-spki-list={}", backend.spki),
                &format!("--user-data-dir={}", profile.path().display()),
                "--dump-dom",
                &format!("https://app.test:{port}/hello"),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&page.stdout);
    assert!(
        dom.contains("h3 backend for app.test: GET /hello"),
        "the page: {dom}\nchromium: {}",
        String::from_utf8_lossy(&page.stderr)
    );
    let line = proxy.wait_for_line("sniroute::access").await;
    for field in [
        "sni=\"app.test\"",
        "route=\"app.test\"",
        "ja4=\"q13d",
        "alpn=\"h3",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert_eq!(proxy.terminate().await, Some(0));
}

/// `check` shows a quic listener as such, and the bounds only quic listeners use.
#[test]
fn check_shows_quic_listeners_and_their_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        "[[listen]]\naddress = \"127.0.0.1:8443\"\n\n[[listen]]\naddress = \"127.0.0.1:8443\"\n\
         protocol = \"quic\"\n\n[[route]]\nsni = \"app.test\"\nbackend = \"127.0.0.1:9001\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sniroute"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for line in [
        "listen    127.0.0.1:8443\n",
        "listen    127.0.0.1:8443 (quic)\n",
        ", quic_idle 1m\n",
        ", max_quic_flows 10000\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
}
