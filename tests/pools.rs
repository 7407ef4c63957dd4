//! Backend pools end to end: a real proxy, real backends that say who they are, connections from
//! several loopback addresses. Which backend served a connection is read from its answer.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sniroute::demo::TlsBackend;
use sniroute::hello::synth::ClientHelloBuilder;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A plain-TCP backend that answers `NAME\n` as soon as a connection arrives, then holds it
/// open until the client closes: so a client knows who served it while the connection lives.
struct Named {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl Named {
    async fn start(name: &str) -> Self {
        Self::at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn at(name: &str, address: SocketAddr) -> Self {
        let listener = TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let line = format!("{name}\n");
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let line = line.clone();
                tokio::spawn(async move {
                    let _ = stream.write_all(line.as_bytes()).await;
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
                });
            }
        });
        Self { address, task }
    }

    /// Stops listening: new connects are refused.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Sends a hello for `name` from `source` and reads the backend's name; the connection stays
/// open.
async fn ask_from(proxy: SocketAddr, source: &str, name: &str) -> (String, TcpStream) {
    let mut stream = connect_from(source, proxy).await;
    let hello = ClientHelloBuilder::new().server_name(name).record();
    stream.write_all(&hello).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\n") {
        match guard(stream.read(&mut byte)).await {
            Ok(1) => answer.push(byte[0]),
            _ => return (format!("closed after {answer:?}"), stream),
        }
    }
    answer.pop();
    (String::from_utf8(answer).unwrap(), stream)
}

async fn ask(proxy: SocketAddr) -> String {
    ask_from(proxy, "127.0.0.1", "app.test").await.0
}

fn pool_route(members: &str, extra: &str) -> String {
    format!("[metrics]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"app.test\"\nname = \"app\"\nbackends = [{members}]\n{extra}")
}

fn counts(answers: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for answer in answers {
        *counts.entry(answer.as_str()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_follows_the_weights() {
    let (a, b, c) = (
        Named::start("a").await,
        Named::start("b").await,
        Named::start("c").await,
    );
    let proxy = Proxy::start(&pool_route(
        &format!(
            "\"{}\", \"{}\", {{ address = \"{}\", weight = 2 }}",
            a.address, b.address, c.address
        ),
        "",
    ))
    .await;
    let mut answers = Vec::new();
    for _ in 0..40 {
        answers.push(ask(proxy.address).await);
    }
    assert_eq!(
        counts(&answers),
        HashMap::from([("a", 10), ("b", 10), ("c", 20)])
    );
    // Smooth: the heavy member never serves three in a row.
    assert!(
        !answers.windows(3).any(|w| w.iter().all(|x| x == "c")),
        "{answers:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn least_connections_counts_the_connections_held_open() {
    let (a, b) = (Named::start("a").await, Named::start("b").await);
    let proxy = Proxy::start(&pool_route(
        &format!(
            "\"{}\", {{ address = \"{}\", weight = 2 }}",
            a.address, b.address
        ),
        "balance = \"least_connections\"\n",
    ))
    .await;
    let mut held: Vec<(String, TcpStream)> = Vec::new();
    for _ in 0..6 {
        held.push(ask_from(proxy.address, "127.0.0.1", "app.test").await);
    }
    let answers: Vec<String> = held.iter().map(|(name, _)| name.clone()).collect();
    // Open per unit of weight kept level: 2 on a, 4 on b.
    assert_eq!(counts(&answers), HashMap::from([("a", 2), ("b", 4)]));
    // Three of b's end: b is now the least loaded (1 per 2 of weight against 2).
    let mut closed = 0;
    held.retain(|(name, _)| {
        let close = name == "b" && closed < 3;
        closed += usize::from(close);
        !close
    });
    wait_for_metric(
        proxy.metrics(),
        &format!(
            "sniroute_backend_active_connections{{route=\"app\",backend=\"{}\"}}",
            b.address
        ),
        "1",
    )
    .await;
    assert_eq!(ask(proxy.address).await, "b");
    drop(held);
    proxy.shutdown().await;
}

/// Clients from 127.0.0.x keep their member; a reload that removes a member moves only its
/// clients (about a third here), and those to the others.
#[tokio::test]
async fn client_hash_is_sticky_and_a_removed_member_moves_only_its_clients() {
    let (a, b, c) = (
        Named::start("a").await,
        Named::start("b").await,
        Named::start("c").await,
    );
    let members = |list: &[&Named]| {
        list.iter()
            .map(|named| format!("\"{}\"", named.address))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let hashed = "balance = \"client_hash\"\n";
    let mut proxy = Proxy::start(&pool_route(&members(&[&a, &b, &c]), hashed)).await;
    let sources: Vec<String> = (2..92).map(|host| format!("127.0.0.{host}")).collect();
    let mut before = Vec::new();
    for source in &sources {
        let first = ask_from(proxy.address, source, "app.test").await.0;
        let again = ask_from(proxy.address, source, "app.test").await.0;
        assert_eq!(first, again, "{source} moved between two connections");
        before.push(first);
    }
    let report = proxy
        .reload_with(&pool_route(&members(&[&a, &b]), hashed))
        .await;
    assert_eq!(report.refused, None);
    let mut moved = 0;
    for (source, member) in sources.iter().zip(&before) {
        let after = ask_from(proxy.address, source, "app.test").await.0;
        if member == "c" {
            assert_ne!(after, "c");
            moved += 1;
        } else {
            assert_eq!(&after, member, "{source}'s member stayed but it moved");
        }
    }
    assert!(
        (15..=45).contains(&moved),
        "{moved} of 90 moved: not about a third"
    );
    proxy.shutdown().await;
}

/// A member that refuses, one that accepts and resets, one that never answers the SYN: each
/// time the next member serves, and gets the PROXY header and the hello byte for byte.
#[tokio::test]
async fn failover_replays_the_proxy_header_and_hello_to_the_next_member() {
    let (refused, _held) = refusing();
    let resetting = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_address = resetting.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = resetting.accept().await {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    let stuck = StuckBackend::start().await;
    for (bad, result) in [
        (refused, "unreachable"),
        (reset_address, "reset"),
        (stuck.address, "timeout"),
    ] {
        let mut recording = Recording::start("served").await;
        let proxy = Proxy::start(&pool_route(
            &format!("\"{bad}\", \"{}\"", recording.address),
            "proxy_protocol = \"v1\"\n[timeouts]\nconnect = \"2s\"\n",
        ))
        .await;
        // Round robin starts with the bad member: the first connection meets it.
        let hello = ClientHelloBuilder::new().server_name("app.test").record();
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        let local = client.local_addr().unwrap();
        client.write_all(&hello).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_until_closed(&mut client).await, b"served", "{result}");
        let mut expected = format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            local.port(),
            proxy.address.port()
        )
        .into_bytes();
        expected.extend_from_slice(&hello);
        assert_eq!(recording.next().await, expected, "{result}");
        wait_for_metric(
            proxy.metrics(),
            &format!("sniroute_backend_connect_attempts_total{{route=\"app\",backend=\"{bad}\",result=\"{result}\"}}"),
            "1",
        )
        .await;
        proxy.shutdown().await;
    }
}

/// Every member failing: the client gets internal_error after the bounded attempts.
#[tokio::test]
async fn when_every_attempt_fails_the_client_gets_internal_error() {
    let dead: Vec<_> = (0..4).map(|_| refusing()).collect();
    let members: Vec<String> = dead
        .iter()
        .map(|(address, _)| format!("\"{address}\""))
        .collect();
    let proxy = Proxy::start(&pool_route(&members.join(", "), "")).await;
    let hello = ClientHelloBuilder::new().server_name("app.test").record();
    assert_eq!(send_raw(proxy.address, &hello).await, alert(80));
    proxy.shutdown().await;
}

/// The acceptance run: three TLS backends, one stopped mid-run; every connection is
/// served by the other two, and `/metrics` shows the stopped one down (ejected after failed
/// connects, with no active checks).
#[tokio::test]
async fn a_member_stopped_mid_run_costs_no_client_an_error() {
    let mut backends = Vec::new();
    for name in ["one", "two", "three"] {
        let config = pki().server_config(&["app.test".to_owned()], &[]).unwrap();
        backends.push(
            TlsBackend::start("127.0.0.1:0".parse().unwrap(), name, config)
                .await
                .unwrap(),
        );
    }
    let members: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.address))
        .collect();
    let proxy = Proxy::start(&pool_route(&members.join(", "), "")).await;
    let stopped_address = backends[1].address;
    let mut stopped = Some(backends.remove(1));
    let mut answers = Vec::new();
    for round in 0..30 {
        if round == 9 {
            stopped.take().unwrap().stop().await;
        }
        answers.push(who_answers(proxy.address, "app.test", &[]).await);
    }
    assert!(
        answers
            .iter()
            .all(|a| ["one", "two", "three"].contains(&a.as_str())),
        "{answers:?}"
    );
    assert!(!answers[9..].contains(&"two".to_owned()), "{answers:?}");
    wait_for_metric(
        proxy.metrics(),
        &format!("sniroute_backend_up{{route=\"app\",backend=\"{stopped_address}\"}}"),
        "0",
    )
    .await;
    proxy.shutdown().await;
}

/// Active checks: a member that stops listening is out after `fall` checks, and back after
/// `rise` once it listens again.
#[tokio::test]
async fn a_member_failing_its_checks_leaves_and_comes_back() {
    let (a, b) = (Named::start("a").await, Named::start("b").await);
    let b_address = b.address;
    let proxy = Proxy::start(&pool_route(
        &format!("\"{}\", \"{}\"", a.address, b.address),
        "health = { check = \"tcp\", interval = \"50ms\", timeout = \"50ms\", rise = 2, fall = 2 }\n",
    ))
    .await;
    let up = format!("sniroute_backend_up{{route=\"app\",backend=\"{b_address}\"}}");
    let attempts = format!(
        "sniroute_backend_connect_attempts_total{{route=\"app\",backend=\"{b_address}\",result=\"unreachable\"}}"
    );
    wait_for_metric(proxy.metrics(), &up, "1").await;
    b.stop().await;
    wait_for_metric(proxy.metrics(), &up, "0").await;
    for _ in 0..10 {
        assert_eq!(ask(proxy.address).await, "a");
    }
    // Skipped, not tried and failed over.
    let page = scrape(proxy.metrics(), "/metrics").await;
    assert_eq!(metric(&page, &attempts), 0.0, "{page}");
    let b = Named::at("b", b_address).await;
    wait_for_metric(proxy.metrics(), &up, "1").await;
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(ask(proxy.address).await);
    }
    assert_eq!(counts(&answers), HashMap::from([("a", 5), ("b", 5)]));
    b.stop().await;
    proxy.shutdown().await;
}

/// A `tls` check offers the route's name: a backend that refuses hellos without SNI passes it
/// for a named route and fails it for `[default]` (which has no name to offer).
#[tokio::test]
async fn a_tls_check_offers_the_routes_name() {
    let mut config = (*pki().server_config(&["app.test".to_owned()], &[]).unwrap()).clone();
    config.cert_resolver = Arc::new(NeedsSni(config.cert_resolver.clone()));
    let backend = TlsBackend::start("127.0.0.1:0".parse().unwrap(), "strict", Arc::new(config))
        .await
        .unwrap();
    let address = backend.address;
    let proxy = Proxy::start(&format!(
        "[metrics]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nsni = \"app.test\"\nname = \"app\"\nbackend = \"{address}\"\n\
         health = {{ check = \"tls\", interval = \"50ms\", timeout = \"50ms\", rise = 1, fall = 1 }}\n\
         [default]\nbackend = \"{address}\"\n\
         health = {{ check = \"tls\", interval = \"50ms\", timeout = \"50ms\", rise = 1, fall = 1 }}\n"
    ))
    .await;
    let checks = |route: &str, result: &str| {
        format!("sniroute_backend_health_checks_total{{route=\"{route}\",backend=\"{address}\",result=\"{result}\"}}")
    };
    let page = scrape_until(
        proxy.metrics(),
        "sniroute_backend_health_checks_total",
        "a passed check of app and a failed one of default",
        |page| {
            metric(page, &checks("app", "ok")) > 0.0
                && metric(page, &checks("default", "failed")) > 0.0
        },
    )
    .await;
    assert_eq!(metric(&page, &checks("app", "failed")), 0.0, "{page}");
    assert_eq!(metric(&page, &checks("default", "ok")), 0.0, "{page}");
    wait_for_metric(
        proxy.metrics(),
        &format!("sniroute_backend_up{{route=\"default\",backend=\"{address}\"}}"),
        "0",
    )
    .await;
    proxy.shutdown().await;
    backend.stop().await;
}

#[derive(Debug)]
struct NeedsSni(Arc<dyn rustls::server::ResolvesServerCert>);

impl rustls::server::ResolvesServerCert for NeedsSni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        hello.server_name()?;
        self.0.resolve(hello)
    }
}

/// Every member down by its checks: all are tried rather than none (here both speak plain TCP,
/// so `tls` checks fail while connections are still served).
#[tokio::test]
async fn with_every_member_down_connections_are_still_tried() {
    let (a, b) = (Named::start("a").await, Named::start("b").await);
    let proxy = Proxy::start(&pool_route(
        &format!("\"{}\", \"{}\"", a.address, b.address),
        "health = { check = \"tls\", interval = \"50ms\", timeout = \"50ms\", rise = 1, fall = 1 }\n",
    ))
    .await;
    for named in [&a, &b] {
        wait_for_metric(
            proxy.metrics(),
            &format!(
                "sniroute_backend_up{{route=\"app\",backend=\"{}\"}}",
                named.address
            ),
            "0",
        )
        .await;
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(ask(proxy.address).await);
    }
    assert_eq!(counts(&answers), HashMap::from([("a", 2), ("b", 2)]));
    proxy.shutdown().await;
}

/// Health is kept across a reload for members that stay: a member the checks took down is
/// still skipped after the reload, before any new check has run (the new interval is an hour).
#[tokio::test]
async fn health_survives_a_reload() {
    let (a, b) = (Named::start("a").await, Named::start("b").await);
    let b_address = b.address;
    let members = format!("\"{}\", \"{}\"", a.address, b.address);
    let mut proxy = Proxy::start(&pool_route(
        &members,
        "health = { interval = \"50ms\", timeout = \"50ms\", fall = 1 }\n",
    ))
    .await;
    let up = format!("sniroute_backend_up{{route=\"app\",backend=\"{b_address}\"}}");
    b.stop().await;
    wait_for_metric(proxy.metrics(), &up, "0").await;
    let report = proxy
        .reload_with(&pool_route(
            &members,
            "health = { interval = \"1h\", timeout = \"1s\", fall = 1 }\n",
        ))
        .await;
    assert_eq!(report.refused, None);
    for _ in 0..6 {
        assert_eq!(ask(proxy.address).await, "a");
    }
    let page = scrape(proxy.metrics(), "/metrics").await;
    let tried = format!(
        "sniroute_backend_connect_attempts_total{{route=\"app\",backend=\"{b_address}\",result=\"unreachable\"}}"
    );
    assert_eq!(
        metric(&page, &tried),
        0.0,
        "the down member was tried after the reload:\n{page}"
    );
    proxy.shutdown().await;
}

/// A host name is resolved in the background, never on a connection's path: `localhost`
/// (from the hosts file) serves.
#[tokio::test]
async fn a_host_name_member_is_resolved_and_serves() {
    let a = Named::start("a").await;
    let proxy = Proxy::start(&pool_route(
        &format!("\"localhost:{}\"", a.address.port()),
        "",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(ask(proxy.address).await, "a");
    }
    proxy.shutdown().await;
}
