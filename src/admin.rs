//! The admin endpoint on the `[metrics]` address: `GET /metrics` in the Prometheus text format,
//! `GET /healthz` (200 while the process runs) and `GET /readyz` (200 while the listeners
//! accept, 503 from the moment a drain begins, so a balancer or Kubernetes stops sending new
//! connections). One short request per connection, bounded in size and time; accept errors back
//! off like the proxy's listeners, so running out of descriptors never makes it spin.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{self as series};
use crate::proxy::{AcceptErrors, Shared};

/// How often histogram samples are folded into buckets when nobody scrapes, so their buffers
/// stay bounded.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);
/// How long a scrape may take to send its request.
const SCRAPE_PATIENCE: Duration = Duration::from_secs(5);
/// Longest scrape request head read.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves `GET /metrics` on `listener` until `stop` fires, and keeps histogram buffers folded.
/// Each scrape runs on `tracker`.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let address = listener.local_addr().ok();
    let upkeep = async {
        let mut ticks = tokio::time::interval(UPKEEP_PERIOD);
        loop {
            ticks.tick().await;
            handle.run_upkeep();
        }
    };
    let accept = async {
        let accept_errors = metrics::counter!(series::ACCEPT_ERRORS, "listener" => "metrics");
        let mut errors = AcceptErrors::default();
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    errors.ok();
                    tracker.spawn(scrape(stream, handle.clone(), shared.clone()));
                }
                Err(error) => {
                    accept_errors.increment(1);
                    let pause = errors.failed(address, &error);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    };
    tokio::select! {
        () = upkeep => {}
        () = accept => {}
        () = stop.cancelled() => {}
    }
}

/// Answers one scrape: `GET /metrics` gets the text format, anything else 404.
async fn scrape(
    mut stream: TcpStream,
    handle: PrometheusHandle,
    shared: Arc<Shared>,
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD
        {
            match stream.read(&mut chunk).await? {
                0 => break,
                read => head.extend_from_slice(&chunk[..read]),
            }
        }
        Ok::<_, io::Error>(())
    };
    tokio::time::timeout(SCRAPE_PATIENCE, read_head).await??;
    const TEXT: &str = "text/plain; charset=utf-8";
    let (method, path) = requested(&head).unwrap_or(("", ""));
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    let (status, content_type, body) = match path {
        _ if known && method != "GET" && method != "HEAD" => (
            "405 Method Not Allowed",
            TEXT,
            "use GET or HEAD\n".to_owned(),
        ),
        "/metrics" => {
            metrics::counter!(series::LOG_LINES_DROPPED).absolute(crate::log::dropped_lines());
            metrics::gauge!(series::PENDING_HELLO_BYTES).set(shared.hello_budget.held() as f64);
            handle.run_upkeep();
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".to_owned()),
        "/readyz" if shared.shutdown.draining.is_cancelled() => {
            ("503 Service Unavailable", TEXT, "draining\n".to_owned())
        }
        "/readyz" => ("200 OK", TEXT, "ready\n".to_owned()),
        _ => (
            "404 Not Found",
            TEXT,
            "try GET /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let allow = match status {
        "405 Method Not Allowed" => "allow: GET, HEAD\r\n",
        _ => "",
    };
    let header = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{allow}connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// The method and path (without its query) of a request head.
fn requested(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&byte| byte == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    let method = words.next()?;
    let path = words.next()?.split('?').next()?;
    Some((method, path))
}
