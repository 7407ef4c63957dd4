//! One connection: peek the hello, route, connect, replay, splice (SPEC "Behaviour on the wire").
//!
//! Every await is bounded: the hello by `timeouts.client_hello`, the connect by
//! `timeouts.connect`, the splice by `timeouts.idle`, all of it by shutdown. Failures close the
//! client with the alert they earn; none touches another connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tls_parser::TlsAlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, Instant};

use super::access_log::AccessLog;
use super::listener::{PendingSlot, Shutdown};
use super::splice::{splice, Activity, Counted};
use super::{alert, Live, Outcome, Side};
use crate::config::Backend;
use crate::hello::{ClientHello, HelloError, Peeker, Progress};

/// The hello buffer starts this big (a post-quantum hello is 1.5 to 2 KB) and doubles up to
/// `limits.max_client_hello`.
const INITIAL_HELLO_BUFFER: usize = 2048;

/// Serves one accepted connection to its end, then writes its access-log line and metrics. The
/// line, the metrics and the connection's slot (`permit`) are all done with before the client
/// socket closes, so a client that has seen the close can count on them.
pub(super) async fn serve(
    mut client: TcpStream,
    client_addr: SocketAddr,
    live: Arc<Live>,
    shutdown: Shutdown,
    permit: OwnedSemaphorePermit,
    pending: PendingSlot,
) {
    live.metrics.active.increment(1.0);
    let mut log = AccessLog::new(client_addr, live.table.unmatched());
    log.outcome = handle(&mut client, &live, &mut log, &shutdown, pending).await;
    live.metrics.active.decrement(1.0);
    drop(log);
    drop(permit);
    drop(client);
}

async fn handle<'a>(
    client: &mut TcpStream,
    live: &'a Live,
    log: &mut AccessLog<'a>,
    shutdown: &Shutdown,
    pending: PendingSlot,
) -> (Outcome, Side) {
    let _ = client.set_nodelay(true);
    let limit = live.limits.max_client_hello;
    let mut buffer = BytesMut::with_capacity(INITIAL_HELLO_BUFFER.min(limit));
    let read = tokio::select! {
        read = timeout(live.timeouts.client_hello, read_hello(client, &mut buffer, limit)) => read,
        () = shutdown.hellos.cancelled() => return (Outcome::Drained, Side::Internal),
    };
    // The hello phase is over, whatever its result: this address has one pending hello less.
    drop(pending);
    let hello = match read {
        Err(_elapsed) => return (Outcome::HelloTimeout, Side::Client),
        Ok(Err(None)) => return (Outcome::ClientClosed, Side::Client),
        Ok(Err(Some(error))) => {
            alert::close(client, error.alert()).await;
            return (Outcome::from(&error), Side::Client);
        }
        Ok(Ok(hello)) => hello,
    };
    live.metrics.hello_bytes.record(hello.wire_len as f64);
    live.metrics
        .hello_duration
        .record(log.elapsed().as_secs_f64());
    log.ja4 = Some(hello.ja4());
    log.server_name = hello.server_name;
    log.alpn = hello.alpn;

    let decision = live.table.lookup(log.server_name.as_ref(), &log.alpn);
    let Some(route) = decision.route else {
        alert::close(client, Some(TlsAlertDescription::UnrecognizedName)).await;
        return (Outcome::NoRoute, Side::Client);
    };
    log.route = Some(route);
    log.metrics = decision.metrics;
    let route_metrics = decision.metrics.handles();

    let connecting = Instant::now();
    let backend = match timeout(live.timeouts.connect, connect(&route.backend)).await {
        Ok(Ok(backend)) => {
            route_metrics
                .connect_duration
                .record(connecting.elapsed().as_secs_f64());
            backend
        }
        failed => {
            route_metrics.connect_failures.increment(1);
            alert::close(client, Some(TlsAlertDescription::InternalError)).await;
            let outcome = if failed.is_err() {
                Outcome::ConnectTimeout
            } else {
                Outcome::BackendUnreachable
            };
            return (outcome, Side::Backend);
        }
    };
    let _ = backend.set_nodelay(true);
    log.backend = backend.peer_addr().ok();

    let activity = Activity::new();
    let mut client = Counted::new(client, Side::Client, &activity);
    let mut backend = Counted::new(backend, Side::Backend, &activity);
    // Everything read so far, the hello and anything after it, goes first and unchanged.
    let replay = timeout(live.timeouts.idle, backend.write_all(&buffer)).await;
    drop(buffer);
    let outcome = match replay {
        Ok(Ok(())) => {
            splice(
                &mut client,
                &mut backend,
                &activity,
                live.timeouts.idle,
                &shutdown.splices,
            )
            .await
        }
        Ok(Err(_)) => (Outcome::Reset, Side::Backend),
        Err(_) => (Outcome::IdleTimeout, Side::Internal),
    };
    log.to_backend = backend.written;
    log.to_client = client.written;
    outcome
}

/// Reads until the peeker has a verdict. `Err(None)`: the client closed or reset first.
async fn read_hello(
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    limit: usize,
) -> Result<ClientHello, Option<HelloError>> {
    let mut peeker = Peeker::new(limit);
    loop {
        let spare = limit - buffer.len();
        if spare == 0 {
            return Err(Some(HelloError::TooLarge { limit }));
        }
        if buffer.len() == buffer.capacity() {
            buffer.reserve(buffer.len().clamp(1, spare));
        }
        match client.read_buf(&mut (&mut *buffer).limit(spare)).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
        match peeker.feed(buffer) {
            Progress::NeedMore => {}
            Progress::Hello(hello) => return Ok(hello),
            Progress::Reject(error) => return Err(Some(error)),
        }
    }
}

async fn connect(backend: &Backend) -> std::io::Result<TcpStream> {
    match backend {
        Backend::Addr(addr) => TcpStream::connect(addr).await,
        Backend::Host(host, port) => TcpStream::connect((host.as_str(), *port)).await,
    }
}
