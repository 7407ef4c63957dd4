//! Shutdown (SIGTERM/SIGINT), driven by an injected signal: listeners close, connections still
//! sending their hello close, spliced connections finish within the drain time, the rest close.

mod support;

use sniroute::hello::synth::ClientHelloBuilder;
use sniroute::server::Signal;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a spliced connection through `proxy` and proves it spliced: the hello comes back.
async fn spliced(proxy: std::net::SocketAddr) -> TcpStream {
    let hello = ClientHelloBuilder::new().server_name("echo.test").record();
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(&hello).await.unwrap();
    let mut echoed = vec![0; hello.len()];
    guard(stream.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(echoed, hello);
    stream
}

#[tokio::test]
async fn shutdown_refuses_new_connections_closes_hellos_and_lets_spliced_ones_finish() {
    let backend = echo_backend().await;
    let proxy = Proxy::start(&format!(
        "[metrics]\naddress = \"127.0.0.1:0\"\n\
         [timeouts]\ndrain = \"1h\"\n[[route]]\nsni = \"echo.test\"\nbackend = \"{backend}\"\n"
    ))
    .await;
    let address = proxy.address;
    let admin = proxy.metrics();
    assert!(scrape(admin, "/readyz")
        .await
        .starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(scrape(admin, "/healthz")
        .await
        .starts_with("HTTP/1.1 200 OK\r\n"));
    let mut busy = spliced(address).await;
    let mut waiting = TcpStream::connect(address).await.unwrap();
    waiting.write_all(&[22, 3, 1]).await.unwrap();

    proxy.signal(Signal::Shutdown).await;
    // The connection still sending its hello is closed (after the listeners).
    assert_eq!(read_until_closed(&mut waiting).await, b"");
    // New connections are refused.
    assert!(TcpStream::connect(address).await.is_err());
    // A balancer sees the drain at once: not ready, still alive.
    let ready = scrape(admin, "/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{ready}"
    );
    assert!(ready.ends_with("\r\n\r\ndraining\n"), "{ready}");
    assert!(scrape(admin, "/healthz")
        .await
        .starts_with("HTTP/1.1 200 OK\r\n"));
    // The spliced connection goes on as long as it likes within the drain time.
    busy.write_all(b"still here").await.unwrap();
    let mut echoed = [0; 10];
    guard(busy.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"still here");
    busy.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut busy).await, b"");
    // With the last connection gone, the server has stopped.
    proxy.stopped().await;
}

#[tokio::test]
async fn connections_still_open_when_the_drain_time_is_up_are_closed() {
    let backend = echo_backend().await;
    let proxy = Proxy::start(&format!(
        "[timeouts]\ndrain = \"100ms\"\n[[route]]\nsni = \"echo.test\"\nbackend = \"{backend}\"\n"
    ))
    .await;
    let mut lingering = spliced(proxy.address).await;
    proxy.signal(Signal::Shutdown).await;
    // Never closed by the client: the proxy closes it once the drain time is up, and stops.
    assert_eq!(read_until_closed(&mut lingering).await, b"");
    proxy.stopped().await;
}

/// `reuse_port = true`: a second process (here a second server) binds the same address and both
/// serve; a listener without it can't share the address and says so.
#[tokio::test]
async fn listeners_with_reuse_port_share_an_address_and_others_are_refused() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let config = |address: &str, reuse_port: bool| {
        sniroute::config::Config::parse(
            &path,
            &format!(
                "[[listen]]\naddress = \"{address}\"\nreuse_port = {reuse_port}\n\
                 [timeouts]\ndrain = \"100ms\"\n\
                 [[route]]\nsni = \"echo.test\"\nbackend = \"{backend}\"\n"
            ),
        )
        .unwrap()
    };
    // The first serves alone...
    let first = sniroute::server::Server::bind(&path, &config("127.0.0.1:0", true))
        .await
        .unwrap();
    let address = first.local_addrs()[0].to_string();
    let (stop_first, signals) = tokio::sync::mpsc::channel(1);
    let first = tokio::spawn(first.run(signals));
    drop(spliced(address.parse().unwrap()).await);
    // ...a second binds the same address beside it, a listener without reuse_port can't...
    let second = sniroute::server::Server::bind(&path, &config(&address, true))
        .await
        .unwrap();
    assert_eq!(second.local_addrs()[0].to_string(), address);
    let error = sniroute::server::Server::bind(&path, &config(&address, false))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.ends_with(&format!(
            "routes.toml:2:11: listen[0].address: cannot bind {address}: Address already in use (os error 98)"
        )),
        "{error}"
    );
    // ...and once the first has stopped, the second serves alone.
    let (_stop_second, signals) = tokio::sync::mpsc::channel(1);
    tokio::spawn(second.run(signals));
    stop_first
        .send(sniroute::server::Signal::Shutdown)
        .await
        .unwrap();
    guard(first).await.unwrap().unwrap();
    for _ in 0..4 {
        drop(spliced(address.parse().unwrap()).await);
    }
}

/// A second SIGTERM/SIGINT during the drain is an operator's "now": the remaining connections
/// are closed at once instead of at the drain limit.
#[tokio::test]
async fn a_second_shutdown_signal_ends_the_drain_at_once() {
    let backend = echo_backend().await;
    let proxy = Proxy::start(&format!(
        "[timeouts]\ndrain = \"1h\"\n[[route]]\nsni = \"echo.test\"\nbackend = \"{backend}\"\n"
    ))
    .await;
    let mut stream = spliced(proxy.address).await;
    proxy.signal(sniroute::server::Signal::Shutdown).await;
    proxy.signal(sniroute::server::Signal::Shutdown).await;
    // Within the hang guard, not the hour the drain allows.
    proxy.stopped().await;
    assert_eq!(read_until_closed(&mut stream).await, b"");
}
