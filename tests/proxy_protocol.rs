//! PROXY protocol both ways: headers sent to backends (checked byte for byte, and by HAProxy as a
//! real peer reporting the client address), headers accepted from trusted load balancers only.

mod support;

use std::net::SocketAddr;

use sniroute::hello::synth::ClientHelloBuilder;
use sniroute::proxy_protocol::{encode, Addresses, Tlvs, Version};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Sends `bytes` from `source` (a 127/8 address), closes the write side, returns the answer.
async fn send_from(source: &str, proxy: SocketAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(proxy).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(bytes).await.unwrap();
    let _ = stream.shutdown().await;
    (local, read_until_closed(&mut stream).await)
}

fn header(version: Version, source: &str, destination: &str, tlvs: Tlvs<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let addresses = Addresses {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
    };
    encode(version, addresses, tlvs, &mut out);
    out
}

/// `bytes` behind a v1 header from a balancer's client (203.0.113.7:4242).
fn behind_v1_header(bytes: &[u8]) -> Vec<u8> {
    let mut sent = header(
        Version::V1,
        "203.0.113.7:4242",
        "198.51.100.1:443",
        Tlvs::default(),
    );
    sent.extend_from_slice(bytes);
    sent
}

#[tokio::test]
async fn routes_send_v1_and_v2_headers_with_the_client_address_sni_and_alpn() {
    let mut v1 = Recording::start("v1").await;
    let mut v2 = Recording::start("v2").await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"one.test\"\nproxy_protocol = \"v1\"\nbackend = \"{}\"\n\
         [[route]]\nsni = \"two.test\"\nproxy_protocol = \"v2\"\nbackend = \"{}\"\n",
        v1.address, v2.address
    ))
    .await;
    let hello = ClientHelloBuilder::new()
        .server_name("One.Test")
        .alpn(&["h2", "http/1.1"])
        .record();
    let (client, answer) = send_from("127.0.0.1", proxy.address, &hello).await;
    assert_eq!(answer, b"v1");
    let mut expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        client.port(),
        proxy.address.port()
    )
    .into_bytes();
    expected.extend_from_slice(&hello);
    assert_eq!(v1.next().await, expected);

    let hello = ClientHelloBuilder::new()
        .server_name("two.test")
        .alpn(&["h2", "http/1.1"])
        .record();
    let (client, answer) = send_from("127.0.0.1", proxy.address, &hello).await;
    assert_eq!(answer, b"v2");
    let mut expected = header(
        Version::V2,
        &client.to_string(),
        &proxy.address.to_string(),
        Tlvs {
            authority: Some("two.test"),
            alpn: Some(b"h2"),
            ssl: None,
        },
    );
    expected.extend_from_slice(&hello);
    assert_eq!(v2.next().await, expected);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_trusted_balancers_header_is_the_client_address_everywhere() {
    let mut backend = Recording::start("app").await;
    let routes = format!(
        "[limits]\nmax_pending_per_ip = 1\n[[route]]\nsni = \"app.test\"\nproxy_protocol = \"v1\"\nbackend = \"{}\"\n",
        backend.address
    );
    // The harness's listener takes no header; a second one, added by reload, trusts loopback.
    // One worker: the stalled connection below is served before the one that must find its
    // address taken.
    let mut proxy = Proxy::start_one_worker(&routes).await;
    let report = proxy
        .reload_with(&format!("[[listen]]\naddress = \"127.0.0.4:0\"\nproxy_protocol = {{ trusted = [\"127.0.0.0/8\"] }}\n{routes}"))
        .await;
    let balanced = report.listeners[1];
    let hello = ClientHelloBuilder::new().server_name("app.test").record();

    for version in [Version::V1, Version::V2] {
        let mut sent = header(
            version,
            "203.0.113.7:4242",
            "198.51.100.1:443",
            Tlvs::default(),
        );
        sent.extend_from_slice(&hello);
        let (_, answer) = send_from("127.0.0.1", balanced, &sent).await;
        assert_eq!(answer, b"app", "{version:?}");
        let mut expected = b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\n".to_vec();
        expected.extend_from_slice(&hello);
        assert_eq!(backend.next().await, expected, "{version:?}");
    }

    // max_pending_per_ip counts the header's source, not the balancer's address.
    let mut stalled = TcpStream::connect(balanced).await.unwrap();
    stalled
        .write_all(&header(
            Version::V2,
            "203.0.113.7:1",
            "198.51.100.1:443",
            Tlvs::default(),
        ))
        .await
        .unwrap();
    stalled.write_all(&hello[..10]).await.unwrap();
    let mut same_source = header(
        Version::V2,
        "203.0.113.7:2",
        "198.51.100.1:443",
        Tlvs::default(),
    );
    same_source.extend_from_slice(&hello);
    assert_eq!(send_from("127.0.0.1", balanced, &same_source).await.1, b"");
    let mut other_source = header(
        Version::V2,
        "203.0.113.8:3",
        "198.51.100.1:443",
        Tlvs::default(),
    );
    other_source.extend_from_slice(&hello);
    assert_eq!(
        send_from("127.0.0.1", balanced, &other_source).await.1,
        b"app"
    );
    assert!(backend.next().await.starts_with(b"PROXY TCP4 203.0.113.8 "));
    drop(stalled);
    proxy.shutdown().await;
}

#[tokio::test]
async fn headers_are_required_from_trusted_sources_and_refused_from_others() {
    let mut backend = Recording::start("app").await;
    let routes = format!(
        "[[route]]\nsni = \"app.test\"\nbackend = \"{}\"\n",
        backend.address
    );
    let mut proxy = Proxy::start(&routes).await;
    let report = proxy
        .reload_with(&format!(
            "[[listen]]\naddress = \"127.0.0.5:0\"\nproxy_protocol = {{ trusted = [\"127.0.0.1/32\"] }}\n{routes}"
        ))
        .await;
    let listener = report.listeners[1];
    let hello = ClientHelloBuilder::new().server_name("app.test").record();
    let with_header = behind_v1_header(&hello);

    // From the trusted source: a missing or malformed header closes the connection.
    assert_eq!(send_from("127.0.0.1", listener, &hello).await.1, b"");
    assert_eq!(
        send_from("127.0.0.1", listener, b"PROXY TCP4 nonsense\r\n")
            .await
            .1,
        b""
    );
    // From any other source a header is not TLS: closed; a plain hello is served.
    assert_eq!(send_from("127.0.0.2", listener, &with_header).await.1, b"");
    assert_eq!(send_from("127.0.0.2", listener, &hello).await.1, b"app");
    assert_eq!(backend.next().await, hello);
    // The listener without proxy_protocol takes no header from anyone.
    assert_eq!(
        send_from("127.0.0.1", proxy.address, &with_header).await.1,
        b""
    );
    assert_eq!(
        send_from("127.0.0.1", listener, &with_header).await.1,
        b"app"
    );
    assert_eq!(backend.next().await, hello);
    proxy.shutdown().await;
}

/// HAProxy, listening with `accept-proxy` on a socket bound before it starts (a Python shim binds
/// port 0, prints it, and execs haproxy with `bind fd@N`), terminates TLS and answers with the
/// client address it read from sniroute's header.
async fn start_haproxy(dir: &std::path::Path) -> Option<(tokio::process::Child, SocketAddr)> {
    if std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "haproxy is not installed, and CI must run this test (.ci/run installs it)"
        );
        eprintln!("skipped: haproxy is not installed (.ci/run installs it)");
        return None;
    }
    let certificate = dir.join("backend.pem");
    let names = ["app.test".to_owned(), "v1.app.test".to_owned()];
    let (certificate_pem, key_pem) = pki().issue_pem(&names).unwrap();
    std::fs::write(&certificate, certificate_pem + &key_pem).unwrap();
    let config = format!(
        "global\n  log stderr format raw local0 err\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 20s\n  timeout server 20s\n\
         frontend app\n  bind fd@__FD__ accept-proxy ssl crt {}\n  http-request return status 200 content-type text/plain lf-string \"haproxy saw %ci:%cp\"\n",
        certificate.display()
    );
    std::fs::write(dir.join("haproxy.cfg.in"), config).unwrap();
    let shim = "import os, socket, sys\n\
                s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(64); s.set_inheritable(True)\n\
                d = sys.argv[1]\n\
                open(d + '/haproxy.cfg', 'w').write(open(d + '/haproxy.cfg.in').read().replace('__FD__', str(s.fileno())))\n\
                print(s.getsockname()[1], flush=True)\n\
                os.execvp('haproxy', ['haproxy', '-db', '-f', d + '/haproxy.cfg'])\n";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", shim])
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = guard(lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    Some((child, SocketAddr::from(([127, 0, 0, 1], port))))
}

#[tokio::test]
async fn haproxy_reports_the_client_address_from_sniroutes_header() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_haproxy, address)) = start_haproxy(dir.path()).await else {
        return;
    };
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"app.test\"\nproxy_protocol = \"v2\"\nbackend = \"{address}\"\n\
         [[route]]\nsni = \"v1.app.test\"\nproxy_protocol = \"v1\"\nbackend = \"{address}\"\n"
    ))
    .await;
    for name in ["app.test", "v1.app.test"] {
        let exchange = tls_exchange(proxy.address, name, &[], Shape::PLAIN).await;
        let answer = exchange.answer.unwrap();
        let reported: SocketAddr = answer
            .strip_prefix("haproxy saw ")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(reported.ip().to_string(), "127.0.0.1");
        assert_eq!(Some(reported.port()), exchange.client_port, "{answer}");
    }
    proxy.shutdown().await;
}

/// `proxy_protocol.trusted` is a security boundary: a reload that narrows it on a kept listener
/// takes effect for the next connection, never leaving a removed source trusted.
#[tokio::test]
async fn a_reload_that_narrows_a_kept_listeners_trusted_sources_applies_at_once() {
    let backend = tls_backend("app", &["app.test"]).await;
    let routes = format!("[[route]]\nsni = \"app.test\"\nbackend = \"{backend}\"\n");
    let mut proxy = Proxy::start(&routes).await;
    let with_listener = |trusted: &str| {
        format!("[[listen]]\naddress = \"127.0.0.6:0\"\nproxy_protocol = {{ trusted = [\"{trusted}\"] }}\n{routes}")
    };
    let balanced = proxy
        .reload_with(&with_listener("127.0.0.0/8"))
        .await
        .listeners[1];
    let hello = ClientHelloBuilder::new().server_name("app.test").record();
    let with_header = behind_v1_header(&hello);
    // Trusted: a hello without a header is refused; one with a header is served.
    assert_eq!(send_raw(balanced, &hello).await, b"");
    assert!(!send_raw(balanced, &with_header).await.is_empty());

    let report = proxy.reload_with(&with_listener("192.0.2.0/24")).await;
    assert_eq!(report.refused, None);
    assert_eq!(report.listeners[1], balanced, "the listener was kept");
    // No longer trusted: served without a header, and a header is refused as not TLS.
    assert_eq!(who_answers(balanced, "app.test", &[]).await, "app");
    assert_eq!(send_raw(balanced, &with_header).await, b"");
    proxy.shutdown().await;
}
