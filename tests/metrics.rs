//! Prometheus metrics after real traffic through the real binary: the right series move by the
//! right amounts, and no label carries a client's name or address. Each connection's access-log
//! line is written after its metrics are recorded, so the test scrapes once it has read them.

mod support;

use sniroute::hello::synth::ClientHelloBuilder;
use support::*;
use tokio::net::TcpStream;

/// The value of the series `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .collect();
    assert_eq!(matching.len(), 1, "{name} {labels:?} in:\n{text}");
    matching[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn metrics_count_real_traffic_by_route_and_outcome() {
    let mut backend = Recording::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[metrics]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\nsni = \"app.test\"\nbackend = \"{}\"\n",
            backend.address
        ),
    )
    .unwrap();
    let mut binary = Binary::start(&config, &[]).await;
    let proxy = binary.wait_for_address("listening").await;
    let metrics = binary.wait_for_address("serving metrics").await;

    let hello = ClientHelloBuilder::new().server_name("app.test").record();
    let mut sent = hello.clone();
    sent.extend_from_slice(b"payload");
    for _ in 0..2 {
        assert_eq!(send_raw(proxy, &sent).await, b"app");
        assert_eq!(backend.next().await, sent);
    }
    let unknown = ClientHelloBuilder::new()
        .server_name("secret-client-name.test")
        .record();
    assert_eq!(send_raw(proxy, &unknown).await, alert(112));
    assert_eq!(send_raw(proxy, b"GET / HTTP/1.1\r\n\r\n").await, b"");
    for _ in 0..4 {
        binary.wait_for_line("sniroute::access").await;
    }

    let response = scrape(metrics, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let text = response.split("\r\n\r\n").nth(1).unwrap();
    let app = [("route", "app.test")];
    assert_eq!(
        value(
            text,
            "sniroute_connections_closed_total",
            &[("route", "app.test"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        value(
            text,
            "sniroute_connections_closed_total",
            &[("route", "none"), ("outcome", "no_route")]
        ),
        1.0
    );
    assert_eq!(
        value(
            text,
            "sniroute_connections_closed_total",
            &[("route", "none"), ("outcome", "not_tls")]
        ),
        1.0
    );
    assert_eq!(
        value(
            text,
            "sniroute_connections_closed_total",
            &[("route", "app.test"), ("outcome", "reset")]
        ),
        0.0
    );
    assert_eq!(
        value(
            text,
            "sniroute_transfer_bytes_total",
            &[("route", "app.test"), ("direction", "to_backend")]
        ),
        (2 * sent.len()) as f64
    );
    assert_eq!(
        value(
            text,
            "sniroute_transfer_bytes_total",
            &[("route", "app.test"), ("direction", "to_client")]
        ),
        6.0
    );
    assert_eq!(
        value(
            text,
            "sniroute_connections_accepted_total",
            &[("listener", &proxy.to_string())]
        ),
        4.0
    );
    assert_eq!(value(text, "sniroute_connections_active", &[]), 0.0);
    assert_eq!(value(text, "sniroute_client_hello_bytes_count", &[]), 3.0);
    assert_eq!(
        value(text, "sniroute_client_hello_bytes_sum", &[]),
        (2 * hello.len() + unknown.len()) as f64
    );
    assert_eq!(
        value(
            text,
            "sniroute_client_hello_bytes_bucket",
            &[("le", "1024")]
        ),
        3.0
    );
    assert_eq!(
        value(text, "sniroute_client_hello_duration_seconds_count", &[]),
        3.0
    );
    assert_eq!(
        value(
            text,
            "sniroute_backend_connect_duration_seconds_count",
            &app
        ),
        2.0
    );
    assert_eq!(
        value(text, "sniroute_connection_duration_seconds_count", &app),
        2.0
    );
    assert!(
        text.contains("# HELP sniroute_connections_closed_total"),
        "{text}"
    );
    // Labels are route names and enum values: no client name or address.
    assert!(!text.contains("secret-client-name"), "{text}");
    let client_ports = text.matches("127.0.0.1:").count();
    let config_addresses = text.matches(&proxy.to_string()).count()
        + text.matches(&backend.address.to_string()).count();
    assert_eq!(client_ports, config_addresses, "{text}");
    for line in text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
    {
        assert!(line.starts_with("sniroute_"), "{line}");
    }

    // Present from the start: the build, and reloads at 0 before the first.
    assert_eq!(
        value(
            text,
            "sniroute_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for result in ["ok", "error"] {
        assert_eq!(
            value(text, "sniroute_config_reloads_total", &[("result", result)]),
            0.0
        );
    }
    // A route has series only for the outcomes a routed connection can have; route="none" only
    // for those before routing.
    assert_eq!(
        value(
            text,
            "sniroute_connections_closed_total",
            &[("route", "app.test"), ("outcome", "backend_unreachable")]
        ),
        0.0
    );
    assert!(
        !text.contains("route=\"app.test\",outcome=\"not_tls\""),
        "{text}"
    );
    assert!(!text.contains("route=\"none\",outcome=\"ok\""), "{text}");

    assert!(scrape(metrics, "/healthz").await.ends_with("\r\n\r\nok\n"));
    for (request, answer) in [
        ("HEAD /readyz HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\n"),
        (
            "POST /readyz HTTP/1.1\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed\r\n",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        let response = String::from_utf8(read_until_closed(&mut stream).await).unwrap();
        assert!(response.starts_with(answer), "{response}");
        assert!(
            response.ends_with("\r\n\r\n") || answer.contains("405"),
            "{response}"
        );
    }
    assert!(scrape(metrics, "/readyz")
        .await
        .ends_with("\r\n\r\nready\n"));
    assert!(scrape(metrics, "/other").await.starts_with("HTTP/1.1 404"));
    assert_eq!(binary.terminate().await, Some(0));
}

/// Nobody reads the binary's stderr after its `listening` line: the pipe fills after a few
/// hundred access-log lines, and connections must go on regardless (the log has its own
/// writer thread and bounded buffer).
#[tokio::test]
async fn connections_go_on_when_nobody_reads_the_log() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"echo.test\"\nbackend = \"{backend}\"\n"
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        guard(tokio::io::AsyncBufReadExt::read_line(
            &mut stderr,
            &mut line,
        ))
        .await
        .unwrap();
    }
    let proxy: std::net::SocketAddr = line.rsplit('=').next().unwrap().trim().parse().unwrap();
    // About 300 bytes of log per connection: 1,000 of them are several pipes' worth.
    let hello = ClientHelloBuilder::new().server_name("echo.test").record();
    for _ in 0..1000 {
        assert_eq!(send_raw(proxy, &hello).await, hello);
    }
    drop(stderr);
}

/// Out of descriptors, the metrics endpoint's accepts fail: it backs off (no spinning), logs the
/// episode once and counts every failure; once descriptors come back it serves again.
#[tokio::test]
async fn metrics_accept_errors_back_off_are_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        "[[listen]]\naddress = \"127.0.0.1:0\"\n[metrics]\naddress = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut binary = Binary::start_with_fd_limit(&config, 64).await;
    // `listening` comes first, then `serving metrics`: the proxy is up once this one is read.
    let metrics = binary.wait_for_address("serving metrics").await;
    // Idle scrapes hold a descriptor each until the process has none left.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(metrics).await.unwrap());
    }
    let line = binary.wait_for_line("accept failed").await;
    assert!(line.contains(&format!("listener={metrics}")), "{line}");
    drop(held);
    let text = scrape(metrics, "/metrics").await;
    assert!(
        value(
            &text,
            "sniroute_accept_errors_total",
            &[("listener", "metrics")]
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(binary.terminate().await, Some(0));
}
