//! Port 80 end to end: an `http` listener beside the TLS one, routed by Host; redirects to
//! https, ACME http-01 requests and `forward` routes reaching their backend (proved by its
//! answer), and every refusal with its status. Clients: curl where installed, and raw requests.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy with a TLS listener and an `http` one; `routes` follow.
async fn start(routes: &str) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(&format!(
        "[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
         [timeouts]\nclient_hello = \"2s\"\n{routes}"
    ))
    .await;
    let http = proxy.listeners()[1];
    (proxy, http)
}

/// Sends `request` and returns the whole response.
async fn exchange(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = guard(stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

fn status(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn a_request_is_redirected_to_https_without_dialling() {
    let (dead, _held) = refusing();
    let (proxy, http) = start(&format!(
        "[[route]]\nsni = \"app.test\"\nbackend = \"{dead}\"\n"
    ))
    .await;
    let response = exchange(
        http,
        b"GET /a/b?c=d HTTP/1.1\r\nHost: APP.test:80\r\nUser-Agent: raw\r\n\r\n",
    )
    .await;
    assert_eq!(status(&response), "HTTP/1.1 308 Permanent Redirect");
    assert!(
        response.contains("\r\nlocation: https://app.test/a/b?c=d\r\n"),
        "{response}"
    );

    if installed("curl") {
        let output = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
            ])
            .arg("--connect-to")
            .arg(format!("app.test:80:{http}"))
            .arg("http://app.test/index.html?x=1")
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "308 https://app.test/index.html?x=1",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    proxy.shutdown().await;
}

/// ACME http-01 requests reach the backend even on a redirecting route; a `forward` route sends
/// everything. The backend gets the request unchanged.
#[tokio::test]
async fn acme_challenges_and_forward_routes_reach_the_backend() {
    let renewing = http_backend("renewing").await;
    let plain = http_backend("plain").await;
    let (proxy, http) = start(&format!(
        "[[route]]\nsni = \"app.test\"\nbackend = \"127.0.0.1:1\"\nhttp_backend = \"{renewing}\"\n\
         [[route]]\nsni = \"plain.test\"\nbackend = \"127.0.0.1:1\"\nhttp = \"forward\"\nhttp_backend = \"{plain}\"\n"
    ))
    .await;
    let response = exchange(
        http,
        b"GET /.well-known/acme-challenge/token-1 HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await;
    assert!(
        response.ends_with("renewing: GET /.well-known/acme-challenge/token-1 HTTP/1.1\n"),
        "{response}"
    );
    let response = exchange(http, b"GET /page HTTP/1.1\r\nHost: plain.test\r\n\r\n").await;
    assert!(
        response.ends_with("plain: GET /page HTTP/1.1\n"),
        "{response}"
    );

    if installed("curl") {
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--connect-to"])
            .arg(format!("app.test:80:{http}"))
            .arg("http://app.test/.well-known/acme-challenge/x")
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "renewing: GET /.well-known/acme-challenge/x HTTP/1.1\n",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn bad_ambiguous_unroutable_and_slow_requests_get_their_status() {
    let (dead, _held) = refusing();
    let (proxy, http) = start(&format!(
        "[[route]]\nsni = \"app.test\"\nbackend = \"{dead}\"\nhttp = \"forward\"\nhttp_backend = \"{dead}\"\n"
    ))
    .await;
    for (request, expected) in [
        (
            "GET / HTTP/1.1\nHost: app.test\n\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: app.test\r\n\r\n", "x".repeat(40_000)),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            "GET / HTTP/1.1\r\nHost: unknown.test\r\n\r\n".to_owned(),
            "HTTP/1.1 421 Misdirected Request",
        ),
        (
            "GET / HTTP/1.0\r\n\r\n".to_owned(),
            "HTTP/1.1 404 Not Found",
        ),
        (
            "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n".to_owned(),
            "HTTP/1.1 502 Bad Gateway",
        ),
    ] {
        let response = exchange(http, request.as_bytes()).await;
        assert_eq!(status(&response), expected, "{request:.80}");
    }
    // Half a head, then nothing: 408 once client_hello runs out.
    let response = exchange(http, b"GET / HTTP/1.1\r\nHost: app").await;
    assert_eq!(status(&response), "HTTP/1.1 408 Request Timeout");
    proxy.shutdown().await;
}
