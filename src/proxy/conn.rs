//! One connection: peek the hello, route, connect, replay, splice (SPEC "Behaviour on the wire").
//!
//! Every await is bounded: a PROXY header (from trusted sources) by `timeouts.proxy_header`, the
//! hello by `timeouts.client_hello`, the connect by `timeouts.connect`, the splice by
//! `timeouts.idle`, all of it by shutdown. Failures close the client with the alert they earn;
//! none touches another connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use tls_parser::TlsAlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, Instant};

use super::access_log::AccessLog;
use super::listener::{ListenerContext, PendingHellos, Shutdown};
use super::splice::{splice, Activity, Counted};
use super::{alert, Live, Outcome, Side};
use crate::config::Backend;
use crate::hello::{ClientHello, HelloError, Peeker, Progress};
use crate::proxy_protocol::{self, Addresses, Tlvs};

/// The hello buffer starts this big (a post-quantum hello is 1.5 to 2 KB) and doubles up to
/// `limits.max_client_hello`.
const INITIAL_HELLO_BUFFER: usize = 2048;

/// Serves one accepted connection to its end, then writes its access-log line and metrics. The
/// line, the metrics and the connection's slot (`permit`) are all done with before the client
/// socket closes, so a client that has seen the close can count on them.
pub(super) async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    live: Arc<Live>,
    listener: Arc<ListenerContext>,
    pending: Arc<PendingHellos>,
    shutdown: Shutdown,
    permit: OwnedSemaphorePermit,
) {
    live.metrics.active.increment(1.0);
    let mut log = AccessLog::new(peer, live.table.unmatched());
    let mut conn = Conn {
        client: &mut client,
        live: &live,
        listener: &listener,
        pending: &pending,
        shutdown: &shutdown,
    };
    log.outcome = conn.handle(peer, &mut log).await;
    live.metrics.active.decrement(1.0);
    drop(log);
    drop(permit);
    drop(client);
}

/// One connection's borrowed surroundings.
struct Conn<'c, 'a> {
    client: &'c mut TcpStream,
    live: &'a Live,
    listener: &'c ListenerContext,
    pending: &'c Arc<PendingHellos>,
    shutdown: &'c Shutdown,
}

impl<'a> Conn<'_, 'a> {
    async fn handle(&mut self, peer: SocketAddr, log: &mut AccessLog<'a>) -> (Outcome, Side) {
        let live = self.live;
        let _ = self.client.set_nodelay(true);
        let limit = live.limits.max_client_hello;
        let mut buffer = BytesMut::with_capacity(INITIAL_HELLO_BUFFER.min(limit));
        // Where the client came from and connected to: the socket's, or a trusted header's.
        let mut addresses = Addresses {
            source: peer,
            destination: self.client.local_addr().unwrap_or(peer),
        };
        if self
            .listener
            .proxy_trusted
            .iter()
            .any(|range| range.contains(peer.ip()))
        {
            let read = tokio::select! {
                read = timeout(live.timeouts.proxy_header, read_proxy_header(self.client, &mut buffer, limit)) => read,
                () = self.shutdown.hellos.cancelled() => return (Outcome::Drained, Side::Internal),
            };
            match read {
                Ok(Some(header)) => {
                    addresses = header.unwrap_or(addresses);
                    log.client = addresses.source;
                }
                Ok(None) | Err(_) => return (Outcome::BadProxyHeader, Side::Client),
            }
        }
        let Some(pending) = self
            .pending
            .enter(addresses.source.ip(), live.limits.max_pending_per_ip)
        else {
            self.listener.metrics.over_max_pending.increment(1);
            return (Outcome::PendingLimit, Side::Internal);
        };
        let read = tokio::select! {
            read = timeout(live.timeouts.client_hello, read_hello(self.client, &mut buffer, limit)) => read,
            () = self.shutdown.hellos.cancelled() => return (Outcome::Drained, Side::Internal),
        };
        // The hello phase is over, whatever its result: this address has one pending hello less.
        drop(pending);
        let client = &mut *self.client;
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
        let mut backend = match timeout(live.timeouts.connect, connect(&route.backend)).await {
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
        if let Some(version) = route.proxy_protocol {
            let tlvs = Tlvs {
                authority: log.server_name.as_ref().map(|name| name.as_str()),
                alpn: log.alpn.first(),
            };
            let mut header = Vec::with_capacity(128);
            proxy_protocol::encode(version, addresses, tlvs, &mut header);
            if !matches!(
                timeout(live.timeouts.idle, backend.write_all(&header)).await,
                Ok(Ok(()))
            ) {
                return (Outcome::Reset, Side::Backend);
            }
        }

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
                    &self.shutdown.splices,
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
}

/// Reads a PROXY protocol header into `buffer` and takes it off the front, leaving whatever
/// followed it (the start of the hello). `Ok(Some(None))`: a header without addresses (a health
/// check's LOCAL); `Ok(None)`: malformed, or the client closed first.
async fn read_proxy_header(
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    limit: usize,
) -> Option<Option<Addresses>> {
    loop {
        match proxy_protocol::decode(buffer) {
            Ok(Some(header)) => {
                buffer.advance(header.len);
                return Some(header.addresses);
            }
            Ok(None) => {}
            Err(_) => return None,
        }
        let spare = limit.checked_sub(buffer.len()).filter(|&spare| spare > 0)?;
        if buffer.len() == buffer.capacity() {
            buffer.reserve(buffer.len().clamp(1, spare));
        }
        match client.read_buf(&mut (&mut *buffer).limit(spare)).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Reads until the peeker has a verdict, starting with what `buffer` already holds.
/// `Err(None)`: the client closed or reset first.
async fn read_hello(
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    limit: usize,
) -> Result<ClientHello, Option<HelloError>> {
    let mut peeker = Peeker::new(limit);
    loop {
        match peeker.feed(buffer) {
            Progress::NeedMore => {}
            Progress::Hello(hello) => return Ok(hello),
            Progress::Reject(error) => return Err(Some(error)),
        }
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
    }
}

async fn connect(backend: &Backend) -> std::io::Result<TcpStream> {
    match backend {
        Backend::Addr(addr) => TcpStream::connect(addr).await,
        Backend::Host(host, port) => TcpStream::connect((host.as_str(), *port)).await,
    }
}
