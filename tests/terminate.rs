//! Terminate routes: sniroute completes the handshake with its own certificate, from the hello
//! it already peeked, and forwards plaintext (or re-encrypts). Real rustls clients verify the
//! proxy's certificate against the test CA; backends prove what reached them by their answers
//! and recordings.

mod support;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore};
use sniroute::demo::{Pki, TlsBackend};
use sniroute::hello::synth::reframe;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

type Identity = (CertificateDer<'static>, PrivateKeyDer<'static>);

/// A client config trusting `ca`, offering `alpn`, presenting `identity` when asked.
fn client(ca: &Pki, alpn: &[&str], identity: Option<Identity>) -> Arc<ClientConfig> {
    pki();
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca_der()).unwrap();
    let builder = ClientConfig::builder_with_provider(sniroute::terminate::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((certificate, key)) => builder
            .with_client_auth_cert(vec![certificate], key)
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

async fn connect(
    proxy: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = TcpStream::connect(proxy).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    guard(TlsConnector::from(config).connect(name, socket)).await
}

/// Sends `request`, closes the sending side with close_notify, and reads the answer to its end.
async fn exchange(stream: &mut TlsStream<TcpStream>, request: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(request).await?;
    stream.shutdown().await?;
    let mut answer = Vec::new();
    guard(stream.read_to_end(&mut answer)).await?;
    Ok(answer)
}

/// What ends a session the proxy refused after the client's side of the handshake: read (not
/// written to, which could fail on the closed socket first) until the alert arrives.
async fn refusal(stream: &mut TlsStream<TcpStream>) -> std::io::Error {
    let mut answer = Vec::new();
    guard(stream.read_to_end(&mut answer)).await.unwrap_err()
}

/// The TLS alert a failed read or handshake ended with.
fn alert_of(error: &std::io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

const REQUEST: &[u8] = b"GET /admin HTTP/1.1\r\nhost: admin.test\r\n\r\n";

/// A terminate table for a certificate for `name` written into `dir`, with `extra` keys.
fn terminate_table(dir: &std::path::Path, name: &str, extra: &str) -> String {
    let stem = name.split('.').next().unwrap();
    let (cert, key) = write_certificate(pki(), dir, stem, &[name]);
    format!("terminate = {{ cert = \"{cert}\", key = \"{key}\"{extra} }}\n")
}

#[tokio::test]
async fn the_backend_receives_exactly_the_decrypted_stream_and_its_answer_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Recording::start("plain backend").await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n{}",
        backend.address,
        terminate_table(dir.path(), "admin.test", "")
    ))
    .await;
    let mut stream = connect(proxy.address, "admin.test", client(pki(), &[], None))
        .await
        .unwrap();
    // Far more than one TLS record, in writes that don't line up with records.
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for chunk in sent.chunks(10_007) {
        stream.write_all(chunk).await.unwrap();
    }
    // close_notify from the client is a write shutdown toward the backend; the backend's answer
    // still flows back afterwards (half-close).
    let answer = exchange(&mut stream, b"").await.unwrap();
    assert_eq!(answer, b"plain backend");
    assert!(backend.next().await == sent, "the backend got other bytes");
    proxy.shutdown().await;
}

#[tokio::test]
async fn alpn_is_chosen_from_the_routes_list_and_no_overlap_gets_no_application_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n{}",
        http_backend("plain").await,
        terminate_table(dir.path(), "admin.test", ", alpn = [\"h2\", \"http/1.1\"]")
    ))
    .await;
    for (offer, negotiated) in [
        (&["http/1.1", "h2"][..], Some(&b"h2"[..])),
        (&["http/1.1"][..], Some(&b"http/1.1"[..])),
        (&[][..], None),
    ] {
        let mut stream = connect(proxy.address, "admin.test", client(pki(), offer, None))
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), negotiated, "{offer:?}");
        let answer = exchange(&mut stream, REQUEST).await.unwrap();
        assert!(answer.ends_with(b"plain: GET /admin HTTP/1.1\n"));
    }
    let refused = connect(
        proxy.address,
        "admin.test",
        client(pki(), &["spdy/3"], None),
    )
    .await;
    assert_eq!(
        alert_of(&refused.unwrap_err()),
        Some(AlertDescription::NoApplicationProtocol)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_lets_a_verified_client_in_and_refuses_none_or_a_stranger() {
    let dir = tempfile::tempdir().unwrap();
    let clients = Pki::new().unwrap();
    let client_ca = write_ca(&clients, dir.path(), "clients-ca");
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n{}",
        http_backend("plain").await,
        terminate_table(
            dir.path(),
            "admin.test",
            &format!(", client_ca = \"{client_ca}\"")
        )
    ))
    .await;
    let alice = clients.issue_client("alice").unwrap();
    let mut stream = connect(proxy.address, "admin.test", client(pki(), &[], Some(alice)))
        .await
        .unwrap();
    let answer = exchange(&mut stream, REQUEST).await.unwrap();
    assert!(answer.ends_with(b"plain: GET /admin HTTP/1.1\n"));

    // TLS 1.3: the client finishes its side of the handshake before the proxy has judged its
    // certificate, so the refusal arrives as an alert on the first read. The stranger's CA has
    // the same name as the trusted one, so its signature is what fails: decrypt_error.
    let stranger = Pki::new().unwrap().issue_client("mallory").unwrap();
    for (identity, expected) in [
        (None, AlertDescription::CertificateRequired),
        (Some(stranger), AlertDescription::DecryptError),
    ] {
        let refused = match connect(proxy.address, "admin.test", client(pki(), &[], identity)).await
        {
            Ok(mut stream) => refusal(&mut stream).await,
            Err(error) => error,
        };
        assert_eq!(alert_of(&refused), Some(expected));
    }
    proxy.shutdown().await;
}

/// The hello a rustls client sends for `name` (an IP address: no SNI).
fn hello_for(name: &str) -> Vec<u8> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut connection = ClientConnection::new(client(pki(), &[], None), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// The spec's fail-closed rule, tried against mTLS: every way of not naming the protected route
/// (no SNI, another name, a malformed name) lands elsewhere, and every way of naming it (one
/// record or several, any case) meets the certificate check. The protected backend is a socket
/// that never accepts: any connection the proxy made to it would be waiting in its queue.
#[tokio::test]
async fn no_other_name_or_framing_reaches_the_backend_that_mtls_protects() {
    let dir = tempfile::tempdir().unwrap();
    let protected = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut default = Recording::start("default").await;
    let client_ca = write_ca(&Pki::new().unwrap(), dir.path(), "clients-ca");
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n{}[default]\nbackend = \"{}\"\n",
        protected.local_addr().unwrap(),
        terminate_table(
            dir.path(),
            "admin.test",
            &format!(", client_ca = \"{client_ca}\"")
        ),
        default.address
    ))
    .await;
    for name in ["127.0.0.1", "other.test", "admin.test.evil.test"] {
        let hello = hello_for(name);
        assert_eq!(send_raw(proxy.address, &hello).await, b"default", "{name}");
        assert_eq!(default.next().await, hello);
    }
    for (name, records) in [("admin.test", 1), ("admin.test", 5), ("ADMIN.test", 3)] {
        let wire = reframe(&hello_for(name), records).unwrap();
        let mut socket = TcpStream::connect(proxy.address).await.unwrap();
        for byte in wire.chunks(1) {
            socket.write_all(byte).await.unwrap();
        }
        // The proxy answers with its ServerHello (the handshake goes on, toward the client
        // certificate it will not get); the client gives up.
        let mut record_type = [0u8; 1];
        guard(socket.read_exact(&mut record_type)).await.unwrap();
        assert_eq!(
            record_type,
            [22],
            "{name} in {records} records: a handshake record"
        );
    }
    let malformed = hello_for("admin.test");
    let mut cut = malformed.clone();
    cut.truncate(malformed.len() - 1);
    assert_eq!(send_raw(proxy.address, &cut).await, Vec::<u8>::new());
    proxy.shutdown().await;
    protected.set_nonblocking(true).unwrap();
    assert_eq!(
        protected.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "a connection reached the protected backend"
    );
}

#[tokio::test]
async fn a_verified_client_certificate_and_the_negotiated_protocol_go_on_in_proxy_v2() {
    let dir = tempfile::tempdir().unwrap();
    let clients = Pki::new().unwrap();
    let client_ca = write_ca(&clients, dir.path(), "clients-ca");
    let mut backend = Recording::start("app").await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\nproxy_protocol = \"v2\"\n{}",
        backend.address,
        terminate_table(
            dir.path(),
            "admin.test",
            &format!(", alpn = [\"h2\"], client_ca = \"{client_ca}\"")
        )
    ))
    .await;
    let alice = clients.issue_client("alice").unwrap();
    let mut stream = connect(
        proxy.address,
        "admin.test",
        client(pki(), &["h2"], Some(alice)),
    )
    .await
    .unwrap();
    let client_port = stream.get_ref().0.local_addr().unwrap().port();
    assert_eq!(exchange(&mut stream, REQUEST).await.unwrap(), b"app");
    let received = backend.next().await;
    let length = u16::from_be_bytes([received[14], received[15]]) as usize;
    let (header, plaintext) = received.split_at(16 + length);
    assert_eq!(plaintext, REQUEST);
    assert_eq!(&header[24..26], client_port.to_be_bytes());
    let contains = |needle: &[u8]| header.windows(needle.len()).any(|window| window == needle);
    assert!(contains(b"\x01\x00\x02h2"), "ALPN TLV: {header:?}");
    assert!(contains(b"\x02\x00\x0aadmin.test"), "authority TLV");
    assert!(contains(b"\x21\x00\x07TLSv1.3"), "SSL version sub-TLV");
    assert!(contains(b"\x22\x00\x05alice"), "SSL CN sub-TLV");
    proxy.shutdown().await;
}

#[tokio::test]
async fn re_encryption_verifies_the_backend_and_offers_it_the_negotiated_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Pki::new().unwrap();
    let backend_config = internal
        .server_config(&["admin.internal".to_owned()], &["h2", "http/1.1"])
        .unwrap();
    let backend = TlsBackend::start("127.0.0.1:0".parse().unwrap(), "internal", backend_config)
        .await
        .unwrap()
        .address;
    let internal_ca = write_ca(&internal, dir.path(), "internal-ca");
    let wrong_ca = write_ca(&Pki::new().unwrap(), dir.path(), "wrong-ca");
    let terminate = terminate_table(dir.path(), "admin.test", ", alpn = [\"h2\", \"http/1.1\"]");
    let other = terminate_table(dir.path(), "other.test", "");
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"admin.test\"\nbackend = \"{backend}\"\n{terminate}\
         backend_tls = {{ ca = \"{internal_ca}\", server_name = \"admin.internal\", alpn_to_backend = true }}\n\
         [[route]]\nsni = \"other.test\"\nbackend = \"{backend}\"\n{other}\
         backend_tls = {{ ca = \"{wrong_ca}\", server_name = \"admin.internal\" }}\n"
    ))
    .await;
    for (offer, answer) in [
        ("h2", "internal: sni=admin.internal alpn=h2\n"),
        ("http/1.1", "internal: sni=admin.internal alpn=http/1.1\n"),
    ] {
        let mut stream = connect(proxy.address, "admin.test", client(pki(), &[offer], None))
            .await
            .unwrap();
        let response = exchange(&mut stream, REQUEST).await.unwrap();
        assert!(
            response.ends_with(answer.as_bytes()),
            "{}",
            String::from_utf8_lossy(&response)
        );
    }
    // A backend whose certificate the route's CA didn't sign: the client's session is closed
    // with close_notify before any byte of its reaches the backend.
    let mut stream = connect(proxy.address, "other.test", client(pki(), &[], None))
        .await
        .unwrap();
    assert_eq!(exchange(&mut stream, REQUEST).await.unwrap(), b"");
    proxy.shutdown().await;
}

#[tokio::test]
async fn passthrough_and_terminate_routes_share_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    let passthrough = tls_backend("pass", &["pass.test"]).await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"pass.test\"\nbackend = \"{passthrough}\"\n\
         [[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n{}",
        http_backend("plain").await,
        terminate_table(dir.path(), "admin.test", "")
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(who_answers(proxy.address, "pass.test", &[]).await, "pass");
        let mut stream = connect(proxy.address, "admin.test", client(pki(), &[], None))
            .await
            .unwrap();
        let answer = exchange(&mut stream, REQUEST).await.unwrap();
        assert!(answer.ends_with(b"plain: GET /admin HTTP/1.1\n"));
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn changed_certificates_take_effect_on_reload_and_open_sessions_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "[[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n{}",
        echo_backend().await,
        terminate_table(dir.path(), "admin.test", "")
    );
    let mut proxy = Proxy::start(&routes).await;
    let mut open = connect(proxy.address, "admin.test", client(pki(), &[], None))
        .await
        .unwrap();
    let mut echo = [0u8; 6];
    open.write_all(b"before").await.unwrap();
    guard(open.read_exact(&mut echo)).await.unwrap();

    // A renewal from another CA: the same file names, new contents.
    let renewed = Pki::new().unwrap();
    write_certificate(&renewed, dir.path(), "admin", &["admin.test"]);
    assert_eq!(proxy.reload().await.refused, None);
    connect(proxy.address, "admin.test", client(&renewed, &[], None))
        .await
        .unwrap();
    let stale = connect(proxy.address, "admin.test", client(pki(), &[], None)).await;
    assert!(stale.is_err(), "the old certificate is still served");

    // A key that doesn't match: refused whole, the renewed certificate goes on serving.
    let (_, other_key) = Pki::new()
        .unwrap()
        .issue_pem(&["admin.test".to_owned()])
        .unwrap();
    std::fs::write(dir.path().join("admin.key"), other_key).unwrap();
    let refused = proxy.reload().await.refused.unwrap();
    assert!(
        refused.contains("route[0].terminate.key: ")
            && refused.contains("admin.key: key does not match the certificate in ")
            && refused.ends_with("admin.pem"),
        "{refused}"
    );
    connect(proxy.address, "admin.test", client(&renewed, &[], None))
        .await
        .unwrap();

    open.write_all(b"after!").await.unwrap();
    guard(open.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"after!");
    assert_eq!(exchange(&mut open, b"").await.unwrap(), b"");
    proxy.shutdown().await;
}

/// `check` and start-up refuse a key that isn't the certificate's with one line naming both
/// files and the route key; the refused handshake is counted and the access log names the
/// negotiated protocol.
#[tokio::test]
async fn a_key_for_another_certificate_is_one_clear_line_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = write_certificate(pki(), dir.path(), "admin", &["admin.test"]);
    let (_, other_key) = write_certificate(pki(), dir.path(), "other", &["admin.test"]);
    let config = dir.path().join("routes.toml");
    let text = format!(
        "[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = \"admin.test\"\nbackend = \"127.0.0.1:1\"\n\
         terminate = {{ cert = \"{cert}\", key = \"{other_key}\" }}\n"
    );
    std::fs::write(&config, &text).unwrap();
    let column = text.lines().nth(5).unwrap().find(&other_key).unwrap();
    let expected = format!(
        "{}:6:{column}: route[0].terminate.key: {other_key}: key does not match the certificate in {cert}\n",
        config.display()
    );
    for args in [&["check", "--config"][..], &["--config"][..]] {
        let output = std::process::Command::new(BIN)
            .args(args)
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&output.stderr), expected);
    }
}

#[tokio::test]
async fn a_refused_client_certificate_is_counted_and_the_log_names_the_negotiated_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let client_ca = write_ca(&Pki::new().unwrap(), dir.path(), "clients-ca");
    let (cert, key) = write_certificate(pki(), dir.path(), "mtls", &["mtls.test"]);
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[metrics]\naddress = \"127.0.0.1:0\"\n\
             [[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n{}\
             [[route]]\nsni = \"mtls.test\"\nbackend = \"127.0.0.1:1\"\n\
             terminate = {{ cert = \"{cert}\", key = \"{key}\", client_ca = \"{client_ca}\" }}\n",
            http_backend("plain").await,
            terminate_table(dir.path(), "admin.test", ", alpn = [\"h2\"]"),
        ),
    )
    .unwrap();
    let mut binary = Binary::start(&config, &["--log-format", "json"]).await;
    let proxy = binary.wait_for_address("listening").await;
    let metrics = binary.wait_for_address("serving metrics").await;

    let mut stream = connect(proxy, "admin.test", client(pki(), &["h2"], None))
        .await
        .unwrap();
    exchange(&mut stream, REQUEST).await.unwrap();
    let line = binary.wait_for_line("connection closed").await;
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["alpn.negotiated"], "h2", "{line}");
    assert_eq!(record["outcome"], "ok", "{line}");

    let refused = match connect(proxy, "mtls.test", client(pki(), &[], None)).await {
        Ok(mut stream) => refusal(&mut stream).await,
        Err(error) => error,
    };
    assert_eq!(
        alert_of(&refused),
        Some(AlertDescription::CertificateRequired)
    );
    let line = binary.wait_for_line("connection closed").await;
    assert!(line.contains("\"outcome\":\"tls_error\""), "{line}");
    assert!(line.contains("\"side\":\"client\""), "{line}");
    // The log says why, in a few words from what rustls refused.
    assert!(
        line.contains("\"cause\":\"client handshake: no certificate presented\""),
        "{line}"
    );
    let stranger = Pki::new().unwrap().issue_client("mallory").unwrap();
    let refused = match connect(proxy, "mtls.test", client(pki(), &[], Some(stranger))).await {
        Ok(mut stream) => refusal(&mut stream).await,
        Err(error) => error,
    };
    assert!(alert_of(&refused).is_some(), "{refused}");
    let line = binary.wait_for_line("connection closed").await;
    assert!(
        line.contains("\"cause\":\"client handshake: certificate: "),
        "{line}"
    );
    let scraped = scrape(metrics, "/metrics").await;
    assert!(
        scraped.contains(
            "sniroute_connections_closed_total{route=\"mtls.test\",outcome=\"tls_error\"} 2"
        ),
        "{scraped}"
    );
    assert_eq!(binary.terminate().await, Some(0));
}

/// A hello whose handshake sniroute is still completing is still a pending hello: it counts
/// against `max_pending_per_ip` (and the hello budget) until the handshake is done, so clients
/// that send a whole hello and go quiet can't sidestep the limit.
#[tokio::test]
async fn a_terminate_handshake_in_progress_counts_as_a_pending_hello() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&format!(
        "[limits]\nmax_pending_per_ip = 2\n[[route]]\nsni = \"admin.test\"\nbackend = \"{}\"\n{}",
        http_backend("plain").await,
        terminate_table(dir.path(), "admin.test", ""),
    ))
    .await;
    let mut quiet = Vec::new();
    for _ in 0..2 {
        let hello = sniroute::hello::synth::ClientHelloBuilder::new()
            .server_name("admin.test")
            .record();
        let mut stream = TcpStream::connect(proxy.address).await.unwrap();
        stream.write_all(&hello).await.unwrap();
        // The server's first flight: the handshake is under way, waiting for the client.
        let mut flight = [0u8; 5];
        guard(stream.read_exact(&mut flight)).await.unwrap();
        assert_eq!(flight[0], 22, "a handshake record");
        quiet.push(stream);
    }
    let third = sniroute::hello::synth::ClientHelloBuilder::new()
        .server_name("admin.test")
        .record();
    assert_eq!(
        send_raw(proxy.address, &third).await,
        b"",
        "a third pending hello from one address was served"
    );
    // Once they are gone (the proxy has closed them, so their slots are back), the address is
    // served again.
    for mut stream in quiet {
        stream.shutdown().await.unwrap();
        read_until_closed(&mut stream).await;
    }
    let mut stream = connect(proxy.address, "admin.test", client(pki(), &[], None))
        .await
        .unwrap();
    exchange(&mut stream, REQUEST).await.unwrap();
    proxy.shutdown().await;
}
