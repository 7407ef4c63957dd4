//! One connection's life, phase by phase (SPEC "Behaviour on the wire"):
//!
//! ```text
//! sniff (sniff.rs) → route (RouteTable) → connect (connect.rs) → relay (splice.rs / relay.rs)
//!                                      ↘ terminate (tls.rs) → connect → relay (relay.rs)
//! ```
//!
//! Each phase returns a typed value or a typed error; this driver turns them into the access-log
//! record and, on failure, the alert. Every await is bounded: a PROXY header (from trusted
//! sources) by `timeouts.proxy_header`, the hello by `timeouts.client_hello`, the connect by
//! `timeouts.connect`, the relay by `timeouts.idle`, all of it by shutdown. No failure touches
//! another connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tls_parser::TlsAlertDescription;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::access_log::{AccessLog, Cause};
use super::connect::{self, ConnectError, Connected, Dial, Failed};
use super::context::{ConnectionSlot, ListenerContext, ReplayedHello, Shared};
use super::relay::{self, Activity, Counted};
use super::sniff::{ClientStream, Origin, Replay, SniffError, Sniffed};
use super::tls::{self, ClientTls, TlsError};
use super::{alert, Live, Outcome, Side};
use crate::config::{Protocol, Target, Terminate};
use crate::hello::Transport;
use crate::proxy_protocol::{self, Addresses, Tlvs};
use crate::route::{Open, Pool, RouteRef};

/// How a connection ended: its outcome, whose doing, and why.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ending {
    pub(super) outcome: Outcome,
    side: Side,
    cause: Cause,
}

impl Ending {
    /// An ending the outcome says all about.
    pub(super) fn new(outcome: Outcome, side: Side) -> Self {
        Self {
            outcome,
            side,
            cause: Cause::None,
        }
    }
}

impl From<SniffError> for Ending {
    fn from(error: SniffError) -> Self {
        Self {
            outcome: error.outcome(),
            side: error.side(),
            cause: Cause::Sniff(error),
        }
    }
}

impl From<ConnectError> for Ending {
    fn from(error: ConnectError) -> Self {
        Self {
            outcome: error.outcome(),
            side: error.side(),
            cause: Cause::Connect(error),
        }
    }
}

impl From<TlsError> for Ending {
    fn from(error: TlsError) -> Self {
        Self {
            outcome: error.outcome(),
            side: error.side(),
            cause: Cause::Tls(error),
        }
    }
}

/// Serves one accepted connection to its end, then writes its access-log line and metrics. The
/// line, the metrics and the connection's slot are all done with before the client
/// socket is closed. (A failure's alert is followed by a shutdown of the write side, which a
/// client sees as EOF slightly before that.)
///
/// An `async` block rather than an `async fn`: an `async fn` keeps a copy of each argument
/// beside the locals it moves them into, for the task's whole life. For the same reason the
/// accepted socket and address come boxed: whatever a task captures keeps its room for the
/// task's life, and these two are handed on at once (64 bytes of every idle connection, for
/// one short-lived allocation).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(super) fn serve(
    accepted: Box<(TcpStream, SocketAddr)>,
    live: Arc<Live>,
    listener: Arc<ListenerContext>,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send {
    async move {
        let (socket, peer) = *accepted;
        let mut log = AccessLog::new(peer, &live);
        let _ = socket.set_nodelay(true);
        // Boxed: the setup's state (the hello's buffer and reads, connect, a whole terminated
        // session) is freed when it ends, so an established passthrough connection's task
        // holds only its two sockets, its record and the relay's state.
        let (mut client, mut next) =
            Box::pin(setup(socket, listener, &live, &shared, &mut log)).await;
        // Matched by reference: moved out, its parts would take room of their own in the task.
        let ending = match &mut next {
            Next::Done(ending) => *ending,
            Next::Relay { backend, .. } => passthrough(&mut client, backend, &live, &log).await,
        };
        drop(next);
        log.end(ending.outcome, ending.side, ending.cause);
        drop(slot);
        drop(client);
    }
}

/// Where the setup phase leaves a connection.
pub(super) enum Next<'s> {
    /// It is over, ended this way.
    Done(Ending),
    /// Passthrough with the backend connected and everything read from the client so far
    /// written to it: bytes are copied both ways from here.
    Relay {
        backend: TcpStream,
        /// The hello's random, noted while the connection is open to see a routing loop (none
        /// for port 80).
        _noted: Option<ReplayedHello<'s>>,
        /// Counts the connection as open to its backend.
        _open: Open,
    },
}

/// Everything before the long copy: sniff, route, then the backend connect (passthrough) or a
/// whole terminated session. Gives the client's socket back, for the relay or to be closed.
async fn setup<'a, 's>(
    socket: TcpStream,
    listener: Arc<ListenerContext>,
    live: &'a Live,
    shared: &'s Shared,
    log: &mut AccessLog<'a>,
) -> (TcpStream, Next<'s>) {
    let mut client = ClientStream::new(socket, log.client, live, shared);
    let next = match listener.protocol {
        Protocol::Http => {
            super::http::head_and_route(&mut client, live, &listener, shared, log).await
        }
        // A quic listener has no TCP socket: its datagrams go to quic.rs.
        Protocol::Tls | Protocol::Quic => {
            sniff_and_route(&mut client, live, &listener, shared, log).await
        }
    };
    (client.socket, next)
}

/// [`setup`]'s steps, on the client's stream.
async fn sniff_and_route<'a, 's>(
    client: &mut ClientStream<'s>,
    live: &'a Live,
    listener: &ListenerContext,
    shared: &'s Shared,
    log: &mut AccessLog<'a>,
) -> Next<'s> {
    let sniffed = client.sniff(live, listener, shared).await;
    log.client = client.origin().source;
    let Sniffed { mut hello, replay } = match sniffed {
        Ok(sniffed) => sniffed,
        Err(error) => {
            alert::close(&mut client.socket, error.alert()).await;
            return Next::Done(error.into());
        }
    };
    if shared.replayed.is_own(hello.random_prefix) {
        // Our own replayed hello, back through a routing loop: close it at once, no alert (the
        // other end is this process).
        log.hello(&mut hello, Transport::Tcp);
        return Next::Done(Ending::new(Outcome::RoutingLoop, Side::Internal));
    }
    let random_prefix = hello.random_prefix;
    live.metrics.hello_bytes.record(hello.wire_len as f64);
    live.metrics
        .hello_duration
        .record(log.elapsed().as_secs_f64());
    log.hello(&mut hello, Transport::Tcp);
    drop(hello);

    let decision = {
        let (server_name, offer) = log.offer();
        live.table.lookup(server_name, offer)
    };
    log.metrics = decision.metrics;
    let Some(route) = decision.route else {
        alert::close(
            &mut client.socket,
            Some(TlsAlertDescription::UnrecognizedName),
        )
        .await;
        return Next::Done(Ending::new(Outcome::NoRoute, Side::Client));
    };
    log.route = Some(route);
    let origin = client.origin();
    let target = &**route.target();
    // Set with the route.
    let Some(pool) = decision.pool else {
        return Next::Done(Ending::new(Outcome::InternalError, Side::Internal));
    };
    match &target.terminate {
        None => {
            let (server_name, offer) = log.offer();
            let tlvs = Tlvs {
                authority: server_name.map(|name| name.as_str()),
                alpn: offer.first(),
                ssl: None,
            };
            let header = proxy_header(target, origin, &client.socket, tlvs);
            // Noted before the replay goes out, for as long as the connection is open: if this
            // hello comes back, it is the proxy's own.
            let noted = shared.replayed.note(random_prefix);
            let dialled = {
                let dial = Dial {
                    header: header.as_deref(),
                    replay: Some(&replay.bytes),
                };
                // Boxed: a pending hello's future holds only the sniff's state, not the dial's.
                Box::pin(reach(live, pool, dial, log)).await
            };
            match dialled {
                Ok(connected) => {
                    let mut backend = connected.stream;
                    let written = if connected.replayed {
                        let written = replay.bytes.len() as u64;
                        drop(replay);
                        Ok(written)
                    } else {
                        replay_to(&mut backend, replay, live).await
                    };
                    match written {
                        Ok(written) => {
                            log.bytes.to_backend.fetch_add(written, Ordering::Relaxed);
                            Next::Relay {
                                backend,
                                _noted: Some(noted),
                                _open: connected.member.open(),
                            }
                        }
                        Err(ending) => Next::Done(ending),
                    }
                }
                Err(ending) => {
                    alert::close(&mut client.socket, Some(TlsAlertDescription::InternalError))
                        .await;
                    Next::Done(ending)
                }
            }
        }
        Some(terminate) => Next::Done(
            Box::pin(terminated(
                &mut client.socket,
                (route, pool),
                terminate,
                origin,
                replay,
                live,
                shared,
                log,
            ))
            .await,
        ),
    }
}

/// Connects to one of `pool`'s members, noting in the log the member reached (or last tried)
/// and how many were tried.
pub(super) async fn reach(
    live: &Live,
    pool: &Pool,
    dial: Dial<'_>,
    log: &mut AccessLog<'_>,
) -> Result<Connected, Ending> {
    let plan = pool.plan(log.client.ip(), super::ticks());
    match plan.panic_changed {
        Some(true) => tracing::warn!(
            route = pool.route(),
            "every backend is down: trying them all"
        ),
        Some(false) => tracing::info!(route = pool.route(), "a backend is up again"),
        None => {}
    }
    match connect::connect(&plan, dial, &live.timeouts, log.metrics.handles()).await {
        Ok(connected) => {
            log.backend = Some(connected.member.address);
            log.attempts = connected.attempts;
            Ok(connected)
        }
        Err(Failed {
            error,
            member,
            attempts,
        }) => {
            log.backend = member;
            log.attempts = attempts;
            Err(error.into())
        }
    }
}

/// A terminate route: completes the client's handshake over the bytes already read, then
/// connects to the backend (re-encrypting with `backend_tls`) and copies plaintext both ways.
#[allow(clippy::too_many_arguments)]
async fn terminated<'a>(
    socket: &mut TcpStream,
    (route, pool): (RouteRef<'a>, &Pool),
    terminate: &'a Terminate,
    origin: Origin,
    replay: Replay<'_>,
    live: &'a Live,
    shared: &Shared,
    log: &mut AccessLog<'a>,
) -> Ending {
    let handshake = tls::accept(&mut *socket, &replay.bytes, terminate.server.clone());
    let accepted = tokio::select! {
        accepted = timeout(live.timeouts.client_hello, handshake) => accepted,
        () = shared.shutdown.hellos.cancelled() => {
            return Ending::new(Outcome::Drained, Side::Internal);
        }
    };
    drop(replay);
    let mut client = match accepted {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => return error.into(),
        Err(_elapsed) => return TlsError::ClientTimeout.into(),
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
    let target = &**route.target();
    // Read (the client certificate's name parsed) only for a PROXY header that carries it.
    let client_tls = target.proxy_protocol.map(|_| ClientTls::of(&client));
    let tlvs = Tlvs {
        authority: log.offer().0.map(|name| name.as_str()),
        alpn: log.negotiated,
        ssl: client_tls.as_ref().map(ClientTls::ssl),
    };
    let header = proxy_header(target, origin, client.get_ref().0, tlvs);
    let dial = Dial {
        header: header.as_deref(),
        replay: None,
    };
    let (backend, _open) = match reach(live, pool, dial, log).await {
        Ok(connected) => (connected.stream, connected.member.open()),
        Err(ending) => {
            // The handshake is done: a close_notify is the alert left to send.
            let _ = timeout(alert::LINGER, client.shutdown()).await;
            return ending;
        }
    };
    let Some(backend_tls) = &terminate.backend_tls else {
        return copy(client, backend, live, log).await;
    };
    let upstream = timeout(
        live.timeouts.connect,
        tls::connect(backend_tls, backend, log.negotiated),
    )
    .await;
    match upstream {
        Ok(Ok(backend)) => copy(client, backend, live, log).await,
        failed => {
            let _ = timeout(alert::LINGER, client.shutdown()).await;
            let reason = match &failed {
                Ok(Err(error)) => tls::describe_io(error),
                _ => "not complete in time",
            };
            TlsError::Backend(reason).into()
        }
    }
}

/// The PROXY protocol header `target` sends its backend first, if it sends one.
pub(super) fn proxy_header(
    target: &Target,
    origin: Origin,
    client: &TcpStream,
    tlvs: Tlvs<'_>,
) -> Option<Vec<u8>> {
    let version = target.proxy_protocol?;
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

/// Writes the replay (the hello and whatever followed it) to the backend, within the idle
/// limit; once written it is no longer a pending hello. Returns the bytes written.
pub(super) async fn replay_to(
    backend: &mut TcpStream,
    replay: Replay<'_>,
    live: &Live,
) -> Result<u64, Ending> {
    let written = timeout(live.timeouts.idle, backend.write_all(&replay.bytes)).await;
    let len = replay.bytes.len() as u64;
    drop(replay);
    match written {
        Ok(Ok(())) => Ok(len),
        Ok(Err(_)) => Err(Ending::new(Outcome::Reset, Side::Backend)),
        Err(_) => Err(Ending::new(Outcome::IdleTimeout, Side::Internal)),
    }
}

/// Passthrough, the replay already written: copies both ways (with splice(2) on Linux, so an
/// idle connection holds no buffer).
/// (An `async` block, for the reason [`serve`] gives.)
fn passthrough<'a>(
    client: &'a mut TcpStream,
    backend: &'a mut TcpStream,
    live: &'a Live,
    log: &'a AccessLog<'_>,
) -> impl Future<Output = Ending> + Send + 'a {
    async move {
        #[cfg(target_os = "linux")]
        {
            let activity = Activity::new();
            let copy = std::pin::pin!(super::splice::copy_both_ways(
                &*client, &*backend, &activity, &log.bytes
            ));
            let (outcome, side) = relay::supervise(copy, &activity, live.timeouts.idle).await;
            Ending::new(outcome, side)
        }
        #[cfg(not(target_os = "linux"))]
        {
            copy(client, backend, live, log).await
        }
    }
}

/// Copies both ways in user space until the connection ends, counting bytes into the log.
async fn copy<C, B>(client: C, backend: B, live: &Live, log: &AccessLog<'_>) -> Ending
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Counted::new(client, Side::Client, &activity, &log.bytes.to_client);
    let mut backend = Counted::new(backend, Side::Backend, &activity, &log.bytes.to_backend);
    let (outcome, side) =
        relay::copy(&mut client, &mut backend, &activity, live.timeouts.idle).await;
    Ending::new(outcome, side)
}
