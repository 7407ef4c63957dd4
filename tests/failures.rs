//! Bad input and broken backends: each is closed the way the SPEC says (with the alert it earns),
//! and none stops the proxy serving the next client.

mod support;

use sniroute::hello::synth::{frame, ClientHelloBuilder};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const INTERNAL_ERROR: u8 = 80;
const UNEXPECTED_MESSAGE: u8 = 10;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
const ILLEGAL_PARAMETER: u8 = 47;

#[tokio::test]
async fn a_dead_backend_gets_internal_error_and_the_proxy_keeps_serving() {
    // A port that was bound and released: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let alive = tls_backend("alive", &["alive.test"]).await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"dead.test\"\nbackend = \"{dead}\"\n[[route]]\nsni = \"alive.test\"\nbackend = \"{alive}\"\n"
    ))
    .await;
    let exchange = tls_exchange(proxy.address, "dead.test", &[], Shape::PLAIN).await;
    assert_eq!(
        exchange.answer.unwrap_err(),
        rustls::Error::AlertReceived(rustls::AlertDescription::InternalError)
    );
    assert_eq!(who_answers(proxy.address, "alive.test", &[]).await, "alive");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_never_accepts_times_out_with_internal_error() {
    let stuck = StuckBackend::start().await;
    let address = stuck.address;
    // An idle limit too, so a connect that did succeed ends the exchange (and fails the
    // assertion) instead of waiting out the hang guard.
    let proxy = Proxy::start(&format!("[timeouts]\nconnect = \"100ms\"\nidle = \"2s\"\n[[route]]\nsni = \"stuck.test\"\nbackend = \"{address}\"\n")).await;
    let hello = ClientHelloBuilder::new().server_name("stuck.test").record();
    assert_eq!(send_raw(proxy.address, &hello).await, alert(INTERNAL_ERROR));
    proxy.shutdown().await;
    drop(stuck);
}

#[tokio::test]
async fn a_stalled_hello_is_closed_at_the_deadline_while_others_are_served() {
    let backend = tls_backend("served", &["served.test"]).await;
    let proxy = Proxy::start(&format!("[timeouts]\nclient_hello = \"300ms\"\n[[route]]\nsni = \"served.test\"\nbackend = \"{backend}\"\n")).await;
    let hello = ClientHelloBuilder::new()
        .server_name("served.test")
        .record();
    let mut stalled = TcpStream::connect(proxy.address).await.unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).await.unwrap();
    // Served while the stalled client holds its connection open.
    assert_eq!(
        who_answers(proxy.address, "served.test", &[]).await,
        "served"
    );
    // Closed by the proxy, without any byte reaching a backend or coming back.
    assert_eq!(read_until_closed(&mut stalled).await, b"");
    proxy.shutdown().await;
}

fn malformed_cases() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let builder = || ClientHelloBuilder::new();
    let mut broken_extensions = builder().server_name("ok.test").message();
    broken_extensions[113] = broken_extensions[113].wrapping_add(1);
    vec![
        (
            "an http request",
            b"GET / HTTP/1.1\r\nhost: ok.test\r\n\r\n".to_vec(),
            vec![],
        ),
        (
            "an sslv2 hello",
            vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0, 0, 0, 0x10],
            vec![],
        ),
        (
            "an alert record first",
            vec![21, 3, 3, 0, 2, 2, 40],
            alert(UNEXPECTED_MESSAGE),
        ),
        (
            "a record over 2^14",
            vec![22, 3, 1, 0x40, 0x01, 1, 0, 0, 0],
            alert(RECORD_OVERFLOW),
        ),
        (
            "a server hello",
            frame(&[2, 0, 0, 2, 3, 3], 1),
            alert(UNEXPECTED_MESSAGE),
        ),
        (
            "an empty host name",
            builder().server_name("").record(),
            alert(ILLEGAL_PARAMETER),
        ),
        (
            "two host names",
            builder()
                .server_name("ok.test")
                .server_name("other.test")
                .record(),
            alert(ILLEGAL_PARAMETER),
        ),
        (
            "a nul in the name",
            builder().server_name("ok.test\0.evil").record(),
            alert(ILLEGAL_PARAMETER),
        ),
        (
            "a name over 255 bytes",
            builder().server_name([b'a'; 256]).record(),
            alert(ILLEGAL_PARAMETER),
        ),
        (
            "a zero-length alpn protocol",
            builder().server_name("ok.test").alpn(&["h2", ""]).record(),
            alert(DECODE_ERROR),
        ),
        (
            "an inner encrypted_client_hello in the clear",
            builder()
                .server_name("ok.test")
                .extension(0xfe0d, [1])
                .record(),
            alert(ILLEGAL_PARAMETER),
        ),
        (
            "a broken extension block",
            frame(&broken_extensions, 1),
            alert(DECODE_ERROR),
        ),
        (
            "a hello over the limit",
            builder().server_name("ok.test").padding(5000).record(),
            alert(DECODE_ERROR),
        ),
    ]
}

/// Each malformed hello is closed with its alert (none for what isn't TLS), is never sent to
/// `[default]` (fail closed), and the next client is served.
#[tokio::test]
async fn malformed_hellos_are_closed_never_defaulted_and_the_next_client_is_served() {
    let ok = tls_backend("ok", &["ok.test"]).await;
    let mut default = Recording::start("default").await;
    let proxy = Proxy::start(&format!(
        "[limits]\nmax_client_hello = 4096\n[[route]]\nsni = \"ok.test\"\nbackend = \"{ok}\"\n[default]\nbackend = \"{}\"\n",
        default.address
    ))
    .await;
    for (what, bytes, expected) in malformed_cases() {
        assert_eq!(send_raw(proxy.address, &bytes).await, expected, "{what}");
        assert_eq!(
            who_answers(proxy.address, "ok.test", &[]).await,
            "ok",
            "after {what}"
        );
    }
    // The default backend has had no connection: the first it sees is this well-formed,
    // nameless hello.
    let nameless = ClientHelloBuilder::new().record();
    assert_eq!(send_raw(proxy.address, &nameless).await, b"default");
    assert_eq!(default.next().await, nameless);
    proxy.shutdown().await;
}

/// The same malformed hellos, one byte per write: rejection never waits for more bytes than it
/// needs, and the alert still arrives.
#[tokio::test]
async fn malformed_hellos_sent_byte_by_byte_get_the_same_answer() {
    let ok = tls_backend("ok", &["ok.test"]).await;
    let proxy = Proxy::start(&format!(
        "[limits]\nmax_client_hello = 4096\n[[route]]\nsni = \"ok.test\"\nbackend = \"{ok}\"\n"
    ))
    .await;
    for (what, bytes, expected) in malformed_cases() {
        let mut stream = TcpStream::connect(proxy.address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        for byte in &bytes {
            if stream.write_all(&[*byte]).await.is_err() {
                break; // the proxy has already answered and closed
            }
        }
        let _ = stream.shutdown().await;
        assert_eq!(read_until_closed(&mut stream).await, expected, "{what}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_others_resume() {
    let backend = tls_backend("served", &["served.test"]).await;
    let proxy = Proxy::start_one_worker(&format!("[limits]\nmax_connections = 1\n[[route]]\nsni = \"served.test\"\nbackend = \"{backend}\"\n")).await;
    let mut holder = TcpStream::connect(proxy.address).await.unwrap();
    holder.write_all(&[22]).await.unwrap();
    // The holder has the one slot: the next connection is closed without a byte.
    let over = send_raw(
        proxy.address,
        &ClientHelloBuilder::new()
            .server_name("served.test")
            .record(),
    )
    .await;
    assert_eq!(over, b"");
    // The holder leaves; once the proxy has closed it, its slot is free again.
    holder.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut holder).await, b"");
    assert_eq!(
        who_answers(proxy.address, "served.test", &[]).await,
        "served"
    );
    proxy.shutdown().await;
}

/// Connects to `proxy` from `source` (any 127/8 address is this machine's loopback).
#[tokio::test]
async fn one_address_with_too_many_pending_hellos_is_refused_while_others_are_served() {
    let mut backend = Recording::start("served").await;
    let proxy = Proxy::start_one_worker(&format!(
        "[limits]\nmax_pending_per_ip = 2\n[[route]]\nsni = \"served.test\"\nbackend = \"{}\"\n",
        backend.address
    ))
    .await;
    let hello = ClientHelloBuilder::new()
        .server_name("served.test")
        .record();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.1", proxy.address).await;
        stream.write_all(&hello[..10]).await.unwrap();
        stalled.push(stream);
    }
    // A third pending hello from 127.0.0.1 is closed at once, without a byte.
    let mut third = connect_from("127.0.0.1", proxy.address).await;
    third.write_all(&hello).await.unwrap();
    let _ = third.shutdown().await;
    assert_eq!(read_until_closed(&mut third).await, b"");
    // Another address is served meanwhile.
    let mut other = connect_from("127.0.0.2", proxy.address).await;
    other.write_all(&hello).await.unwrap();
    other.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut other).await, b"served");
    assert_eq!(backend.next().await, hello);
    // A stalled hello that completes frees its slot: 127.0.0.1 is served again.
    let mut first = stalled.remove(0);
    first.write_all(&hello[10..]).await.unwrap();
    first.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut first).await, b"served");
    let mut again = connect_from("127.0.0.1", proxy.address).await;
    again.write_all(&hello).await.unwrap();
    again.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut again).await, b"served");
    proxy.shutdown().await;
}

/// A route whose backend leads back to the proxy's own listener (through a name, which `check`
/// can't see): the replayed hello comes back, is recognised as the proxy's own and closed at once,
/// so one hello costs two connections, not every descriptor, and other routes go on.
#[tokio::test]
async fn a_routing_loop_through_a_name_is_closed_at_the_first_hop() {
    let served = tls_backend("served", &["served.test"]).await;
    let mut proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"served.test\"\nbackend = \"{served}\"\n"
    ))
    .await;
    let port = proxy.address.port();
    let report = proxy
        .reload_with(&format!(
            "[[route]]\nsni = \"served.test\"\nbackend = \"{served}\"\n\
             [[route]]\nsni = \"loop.test\"\nbackend = \"localhost:{port}\"\n"
        ))
        .await;
    assert_eq!(report.refused, None);
    for _ in 0..3 {
        let hello = ClientHelloBuilder::new().server_name("loop.test").record();
        // Closed instead of looping until descriptors run out: nothing comes back, or, where
        // `localhost` resolves to a second address that refuses, the internal_error alert of a
        // pool whose members all failed.
        let answer = send_raw(proxy.address, &hello).await;
        assert!(
            answer.is_empty() || answer == [21, 3, 3, 0, 2, 2, 80],
            "{answer:?}"
        );
    }
    assert_eq!(
        who_answers(proxy.address, "served.test", &[]).await,
        "served"
    );
    proxy.shutdown().await;
}

/// Hellos still arriving hold at most `limits.max_pending_hello_bytes` together: past it the
/// newest is closed (and logged as `hello_budget`), the ones already waiting keep their bytes,
/// and once they go the budget serves everyone again.
#[tokio::test]
async fn stalled_hellos_share_one_memory_budget() {
    let served = tls_backend("served", &["served.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[limits]\nmax_pending_hello_bytes = 65536\n\
             max_pending_per_ip = 0\n[[route]]\nsni = \"served.test\"\nbackend = \"{served}\"\n"
        ),
    )
    .unwrap();
    let mut binary = Binary::start(&config, &["--log-format", "json"]).await;
    let address = binary.wait_for_address("listening").await;
    let big = ClientHelloBuilder::new()
        .server_name("served.test")
        .padding(40_000)
        .record();
    // Each staller sends half of a 40 KB hello and waits: four of them can't all fit in 64 KiB.
    let mut stallers = Vec::new();
    for _ in 0..4 {
        let mut staller = TcpStream::connect(address).await.unwrap();
        staller.write_all(&big[..20_000]).await.unwrap();
        stallers.push(staller);
    }
    let line = binary.wait_for_line("\"outcome\":\"hello_budget\"").await;
    assert!(line.contains("\"side\":\"internal\""), "{line}");
    drop(stallers);
    assert_eq!(who_answers(address, "served.test", &[]).await, "served");
    assert_eq!(binary.terminate().await, Some(0));
}
