//! One connection: peek the hello, route, connect, replay, splice (SPEC "Behaviour on the wire").
//!
//! Every await is bounded: a PROXY header (from trusted sources) by `timeouts.proxy_header`, the
//! hello by `timeouts.client_hello`, the connect by `timeouts.connect`, the splice by
//! `timeouts.idle`, all of it by shutdown. Failures close the client with the alert they earn;
//! none touches another connection.

use std::net::SocketAddr;
#[cfg(target_os = "linux")]
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use tls_parser::TlsAlertDescription;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, Instant};

use super::access_log::AccessLog;
use super::handshake::{self, ClientTls};
use super::listener::{ListenerContext, PendingHellos, Shutdown};
use super::splice::{splice, supervise, Activity, Counted};
#[cfg(target_os = "linux")]
use super::zero_copy;
use super::{alert, Live, Outcome, Side};
use crate::config::{Backend, Route, Terminate};
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
    shutdown: Arc<Shutdown>,
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
    // Boxed: the setup's state (hello reads, connect, a whole terminated session) is freed when
    // it ends, so an established passthrough connection's task holds only the relay's.
    let next = Box::pin(conn.handle(peer, &mut log)).await;
    log.outcome = match next {
        Next::Done(outcome, side) => (outcome, side),
        #[cfg(target_os = "linux")]
        Next::Relay { backend, replay } => {
            relay_spliced(&client, backend, replay, &live, &shutdown, &mut log).await
        }
        #[cfg(not(target_os = "linux"))]
        Next::Relay { backend, replay } => {
            relay(&mut client, backend, replay, &live, &shutdown, &mut log).await
        }
    };
    live.metrics.active.decrement(1.0);
    drop(log);
    drop(permit);
    drop(client);
}

/// Where the setup phase leaves a connection.
enum Next {
    /// It is over, ended this way.
    Done(Outcome, Side),
    /// Passthrough with the backend connected: `replay` (everything read from the client so
    /// far, the hello first) goes to it, then bytes are copied both ways.
    Relay {
        backend: TcpStream,
        replay: BytesMut,
    },
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
    /// Everything before the long copy: PROXY header, hello, route, then the backend connect
    /// (passthrough) or a whole terminated session.
    async fn handle(&mut self, peer: SocketAddr, log: &mut AccessLog<'a>) -> Next {
        let live = self.live;
        let _ = self.client.set_nodelay(true);
        let limit = live.limits.max_client_hello;
        let mut buffer = BytesMut::with_capacity(INITIAL_HELLO_BUFFER.min(limit));
        let mut origin = Origin {
            source: peer,
            destination: None,
        };
        if self
            .listener
            .proxy_trusted
            .iter()
            .any(|range| range.contains(peer.ip()))
        {
            let read = tokio::select! {
                read = timeout(live.timeouts.proxy_header, read_proxy_header(self.client, &mut buffer, limit)) => read,
                () = self.shutdown.hellos.cancelled() => return Next::Done(Outcome::Drained, Side::Internal),
            };
            match read {
                Ok(Some(header)) => {
                    if let Some(addresses) = header {
                        origin = Origin {
                            source: addresses.source,
                            destination: Some(addresses.destination),
                        };
                    }
                    log.client = origin.source;
                }
                Ok(None) | Err(_) => return Next::Done(Outcome::BadProxyHeader, Side::Client),
            }
        }
        let Some(pending) = self
            .pending
            .enter(origin.source.ip(), live.limits.max_pending_per_ip)
        else {
            self.listener.metrics.over_max_pending.increment(1);
            return Next::Done(Outcome::PendingLimit, Side::Internal);
        };
        let read = tokio::select! {
            read = timeout(live.timeouts.client_hello, read_hello(self.client, &mut buffer, limit)) => read,
            () = self.shutdown.hellos.cancelled() => return Next::Done(Outcome::Drained, Side::Internal),
        };
        // The hello phase is over, whatever its result: this address has one pending hello less.
        drop(pending);
        let client = &mut *self.client;
        let hello = match read {
            Err(_elapsed) => return Next::Done(Outcome::HelloTimeout, Side::Client),
            Ok(Err(None)) => return Next::Done(Outcome::ClientClosed, Side::Client),
            Ok(Err(Some(error))) => {
                alert::close(client, error.alert()).await;
                return Next::Done(Outcome::from(&error), Side::Client);
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
            return Next::Done(Outcome::NoRoute, Side::Client);
        };
        log.route = Some(route);
        log.metrics = decision.metrics;
        match &route.terminate {
            None => self.passthrough(route, origin, buffer, log).await,
            Some(terminate) => {
                let (outcome, side) = self.terminate(route, terminate, origin, buffer, log).await;
                Next::Done(outcome, side)
            }
        }
    }

    /// Connects to the route's backend; what was read so far is replayed by the relay.
    async fn passthrough(
        &mut self,
        route: &'a Route,
        origin: Origin,
        buffer: BytesMut,
        log: &mut AccessLog<'a>,
    ) -> Next {
        let tlvs = Tlvs {
            authority: log.server_name.as_ref().map(|name| name.as_str()),
            alpn: log.alpn.first(),
            ssl: None,
        };
        let header = proxy_header(route, origin, self.client, tlvs);
        match connect(self.live, route, header.as_deref(), log).await {
            Ok(backend) => Next::Relay {
                backend,
                replay: buffer,
            },
            Err((outcome, side)) => {
                alert::close(self.client, Some(TlsAlertDescription::InternalError)).await;
                Next::Done(outcome, side)
            }
        }
    }

    /// Completes the client's handshake over the bytes already read, then connects to the
    /// route's backend (re-encrypting with `backend_tls`) and copies plaintext both ways.
    async fn terminate(
        &mut self,
        route: &'a Route,
        terminate: &'a Terminate,
        origin: Origin,
        buffer: BytesMut,
        log: &mut AccessLog<'a>,
    ) -> (Outcome, Side) {
        let live = self.live;
        let handshake = handshake::accept(&mut *self.client, &buffer, terminate.server.clone());
        let accepted = tokio::select! {
            accepted = timeout(live.timeouts.client_hello, handshake) => accepted,
            () = self.shutdown.hellos.cancelled() => return (Outcome::Drained, Side::Internal),
        };
        drop(buffer);
        let mut client = match accepted {
            Ok(Ok(client)) => client,
            Ok(Err(())) => return (Outcome::TlsError, Side::Client),
            Err(_elapsed) => return (Outcome::HelloTimeout, Side::Client),
        };
        // The negotiated protocol, borrowed from the route's list (it is one of them).
        let negotiated = client.get_ref().1.alpn_protocol();
        log.negotiated = negotiated.and_then(|negotiated| {
            terminate
                .files
                .alpn
                .iter()
                .find(|protocol| &protocol[..] == negotiated)
                .map(|protocol| &protocol[..])
        });
        // Read (the client certificate's name parsed) only for a PROXY header that carries it.
        let client_tls = route.proxy_protocol.map(|_| ClientTls::of(&client));
        let tlvs = Tlvs {
            authority: log.server_name.as_ref().map(|name| name.as_str()),
            alpn: log.negotiated,
            ssl: client_tls.as_ref().map(ClientTls::ssl),
        };
        let header = proxy_header(route, origin, client.get_ref().0, tlvs);
        let backend = match connect(live, route, header.as_deref(), log).await {
            Ok(backend) => backend,
            Err(ended) => {
                // The handshake is done: a close_notify is the alert left to send.
                let _ = timeout(alert::LINGER, client.shutdown()).await;
                return ended;
            }
        };
        let Some(backend_tls) = &terminate.backend_tls else {
            return relay(client, backend, BytesMut::new(), live, self.shutdown, log).await;
        };
        let upstream = timeout(
            live.timeouts.connect,
            handshake::connect(backend_tls, backend, log.negotiated),
        )
        .await;
        match upstream {
            Ok(Ok(backend)) => {
                relay(client, backend, BytesMut::new(), live, self.shutdown, log).await
            }
            _ => {
                let _ = timeout(alert::LINGER, client.shutdown()).await;
                (Outcome::TlsError, Side::Backend)
            }
        }
    }
}

/// Where the client came from and where it connected to: a trusted PROXY header's addresses,
/// or the socket's. The socket's local address is only read when a PROXY header to the backend
/// needs it (a system call most connections don't make).
#[derive(Debug, Clone, Copy)]
struct Origin {
    source: SocketAddr,
    destination: Option<SocketAddr>,
}

/// The PROXY protocol header `route` sends its backend first, if it sends one.
fn proxy_header(
    route: &Route,
    origin: Origin,
    client: &TcpStream,
    tlvs: Tlvs<'_>,
) -> Option<Vec<u8>> {
    let version = route.proxy_protocol?;
    let addresses = Addresses {
        source: origin.source,
        destination: origin
            .destination
            .unwrap_or_else(|| client.local_addr().unwrap_or(origin.source)),
    };
    let mut header = Vec::with_capacity(128);
    proxy_protocol::encode(version, addresses, tlvs, &mut header);
    Some(header)
}

/// Connects to `route`'s backend within `timeouts.connect` and sends it `header`; counts the
/// connect's time or failure.
async fn connect(
    live: &Live,
    route: &Route,
    header: Option<&[u8]>,
    log: &mut AccessLog<'_>,
) -> Result<TcpStream, (Outcome, Side)> {
    let route_metrics = log.metrics.handles();
    let connecting = Instant::now();
    let mut backend = match timeout(live.timeouts.connect, dial(&route.backend)).await {
        Ok(Ok(backend)) => {
            route_metrics
                .connect_duration
                .record(connecting.elapsed().as_secs_f64());
            backend
        }
        failed => {
            route_metrics.connect_failures.increment(1);
            let outcome = if failed.is_err() {
                Outcome::ConnectTimeout
            } else {
                Outcome::BackendUnreachable
            };
            return Err((outcome, Side::Backend));
        }
    };
    let _ = backend.set_nodelay(true);
    log.backend = match route.backend {
        Backend::Addr(addr) => Some(addr),
        Backend::Host(..) => backend.peer_addr().ok(),
    };
    if let Some(header) = header {
        if !matches!(
            timeout(live.timeouts.idle, backend.write_all(header)).await,
            Ok(Ok(()))
        ) {
            return Err((Outcome::Reset, Side::Backend));
        }
    }
    Ok(backend)
}

/// Passthrough on Linux: writes `replay` to the backend and drops it, then copies both ways
/// with splice(2) through pooled pipes, so an idle connection holds no buffer.
#[cfg(target_os = "linux")]
async fn relay_spliced(
    client: &TcpStream,
    mut backend: TcpStream,
    replay: BytesMut,
    live: &Live,
    shutdown: &Shutdown,
    log: &mut AccessLog<'_>,
) -> (Outcome, Side) {
    let replayed = timeout(live.timeouts.idle, backend.write_all(&replay)).await;
    let replay_len = replay.len() as u64;
    drop(replay);
    match replayed {
        Ok(Ok(())) => log.to_backend = replay_len,
        Ok(Err(_)) => return (Outcome::Reset, Side::Backend),
        Err(_) => return (Outcome::IdleTimeout, Side::Internal),
    }
    let activity = Activity::new();
    let counts = zero_copy::Counts::default();
    let copy = std::pin::pin!(zero_copy::copy_both_ways(
        client, &backend, &activity, &counts
    ));
    let outcome = supervise(copy, &activity, live.timeouts.idle, &shutdown.splices).await;
    log.to_backend += counts.to_backend.load(Ordering::Relaxed);
    log.to_client = counts.to_client.load(Ordering::Relaxed);
    outcome
}

/// Writes `replay` (everything read from the client so far, for passthrough) to the backend,
/// drops it, then copies both ways until the connection ends; byte counts go to the log.
async fn relay<C, B>(
    client: C,
    backend: B,
    replay: BytesMut,
    live: &Live,
    shutdown: &Shutdown,
    log: &mut AccessLog<'_>,
) -> (Outcome, Side)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Counted::new(client, Side::Client, &activity);
    let mut backend = Counted::new(backend, Side::Backend, &activity);
    let replayed = timeout(live.timeouts.idle, backend.write_all(&replay)).await;
    drop(replay);
    let outcome = match replayed {
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

async fn dial(backend: &Backend) -> std::io::Result<TcpStream> {
    match backend {
        Backend::Addr(addr) => TcpStream::connect(addr).await,
        Backend::Host(host, port) => TcpStream::connect((host.as_str(), *port)).await,
    }
}
