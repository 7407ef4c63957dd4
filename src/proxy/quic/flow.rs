//! A routed flow's task: its backend's datagrams to the client (a burst at once, with GRO and
//! GSO, once the flow carries more than a handshake), the backend's connection ID learned for
//! the listener's table, the idle timeout, and the flow's access-log line.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quinn_udp::UdpSocketState;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::udp::{receive, send, MAX_DATAGRAM};
use super::{Cid, Event, Link, BATCH};
use crate::hello::{ClientHello, Transport};
use crate::proxy::access_log::{AccessLog, Cause};
use crate::proxy::{ticks, Live, Outcome, Side};
use crate::quic::packet;
use crate::route::Open;

/// Reads from a flow's backend after which its socket gets GRO.
const GRO_AFTER: u32 = 32;

thread_local! {
    /// Where a worker's flow tasks read their backends' datagrams.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// A UDP socket connected to `backend`, from an ephemeral port (one per flow, so the backend's
/// answers come back to this flow alone, and the backend sees each flow as its own client),
/// with the `held` datagrams sent on it, in order, and the lengths of those sent.
///
/// Sent before the socket joins the runtime: tokio sends only once its poller has seen the
/// socket writable, which a new socket isn't yet.
pub(super) fn backend_socket(
    backend: SocketAddr,
    held: &[Vec<u8>],
) -> std::io::Result<(UdpSocket, Vec<usize>)> {
    let local: SocketAddr = match backend {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(backend)?;
    socket.set_nonblocking(true)?;
    // A datagram the buffer can't take is lost, as on the network: the client sends it again.
    let sent = held
        .iter()
        .filter_map(|datagram| socket.send(datagram).ok())
        .collect();
    Ok((UdpSocket::from_std(socket)?, sent))
}

/// A routed flow's own task: the backend's datagrams to the client, until the flow idles out.
pub(super) struct FlowTask {
    pub(super) id: u64,
    pub(super) link: Arc<Link>,
    pub(super) client_socket: Arc<UdpSocket>,
    pub(super) udp: Arc<UdpSocketState>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    /// Counts the flow as open to its backend.
    pub(super) _open: Open,
    /// Whether the backend's connection ID was learned.
    pub(super) learned: bool,
    /// Reads from the backend so far, up to [`GRO_AFTER`].
    pub(super) reads: u32,
    /// Cancelled when the listener that routed it is gone and its drain time is up.
    pub(super) closing: CancellationToken,
    /// When its first Initial came.
    pub(super) started: Instant,
}

impl FlowTask {
    pub(super) async fn run(mut self, live: Arc<Live>, mut hello: ClientHello) {
        let link = self.link.clone();
        let mut record = FlowRecord {
            log: Some(AccessLog::new(**link.client.load(), &live)),
            link: &link,
        };
        if let Some(log) = &mut record.log {
            log.since(self.started);
            log.hello(&mut hello, Transport::Quic);
            drop(hello);
            // Looked up again rather than handed over: the record borrows the table it is
            // kept with (one lookup per flow, not per datagram).
            let decision = {
                let (server_name, offer) = log.offer();
                live.table.lookup(server_name, offer)
            };
            log.metrics = decision.metrics;
            log.route = decision.route;
            log.backend = Some(link.backend_address);
            log.attempts = 1;
        }
        let timeouts = &live.timeouts;
        let idle = |established: bool| match established {
            true => timeouts.quic_idle,
            // Only Initials so far: a client that never goes on (a spoofed address) holds
            // the flow no longer than a hello may take.
            false => timeouts.quic_idle.min(timeouts.client_hello),
        };
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let ending = loop {
            let established = link.established.load(Ordering::Relaxed);
            let deadline = link.last.load(Ordering::Relaxed) + idle(established).as_millis() as u64;
            let now = ticks();
            if now >= deadline {
                break (Outcome::IdleTimeout, Side::Internal, Cause::None);
            }
            timer
                .as_mut()
                .reset(Instant::now() + Duration::from_millis(deadline - now));
            tokio::select! {
                ready = link.backend.readable() => {
                    match ready.and_then(|()| self.relay()) {
                        Ok(true) => {}
                        // More waiting: let the worker's other flows have their turn first.
                        Ok(false) => tokio::task::yield_now().await,
                        Err(error) => {
                            let outcome = match error.kind() {
                                std::io::ErrorKind::ConnectionRefused => {
                                    Outcome::BackendUnreachable
                                }
                                _ => Outcome::Reset,
                            };
                            break (outcome, Side::Backend, Cause::Io((&error).into()));
                        }
                    }
                }
                () = &mut timer => {}
                () = self.closing.cancelled() => {
                    break (Outcome::Drained, Side::Internal, Cause::None);
                }
            }
        };
        record.end(ending);
        let _ = self.events.send(Event::Ended(self.id));
    }

    /// Sends what the backend has waiting to the client, [`BATCH`] reads at most: a burst read
    /// at once (GRO) goes out in one send (GSO), its datagrams as they came. `Ok(true)` once
    /// nothing is left.
    fn relay(&mut self) -> std::io::Result<bool> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            for _ in 0..BATCH {
                let meta = match receive(&self.link.backend, &self.udp, &mut scratch) {
                    Ok(meta) => meta,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        return Ok(true)
                    }
                    Err(error) => return Err(error),
                };
                self.reads = (self.reads + 1).min(GRO_AFTER + 1);
                if self.reads == GRO_AFTER {
                    // A flow that carries more than a handshake: its backend's bursts are read
                    // whole from now on (GRO), and their ECN marks kept. (Ten system calls: not
                    // worth it for flows that end sooner.)
                    let _ = UdpSocketState::new((&self.link.backend).into());
                }
                let burst = &scratch[..meta.len];
                if !self.learned {
                    // The backend's first Initial or Handshake packet names its connection ID
                    // (not a Retry's, which it drops, nor a Version Negotiation's).
                    if let Some(scid) = packet::source_id(burst) {
                        self.learned = true;
                        if let Some(cid) = Cid::new(scid) {
                            let _ = self.events.send(Event::Learned(self.id, cid));
                        }
                    }
                }
                let client = **self.link.client.load();
                // A full send buffer loses the datagrams, as the network may: QUIC resends.
                if send(
                    &self.udp,
                    &self.client_socket,
                    client,
                    meta.ecn,
                    burst,
                    meta.stride,
                )
                .is_ok()
                {
                    let datagrams = meta.len.div_ceil(meta.stride.max(1));
                    self.link.moved(meta.len, datagrams, false, ticks());
                }
            }
            Ok(false)
        })
    }
}

/// A flow's access-log record, with the flow's counts moved in whenever the line is written: at
/// the flow's end, or when its task is dropped at the end of a drain.
struct FlowRecord<'a, 'l> {
    /// Taken by [`FlowRecord::end`].
    log: Option<AccessLog<'a>>,
    link: &'l Link,
}

impl FlowRecord<'_, '_> {
    fn count(&self) {
        let Some(log) = &self.log else { return };
        for (into, from) in [
            (&log.bytes.to_backend, &self.link.bytes.to_backend),
            (&log.bytes.to_client, &self.link.bytes.to_client),
        ] {
            into.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let handles = log.metrics.handles();
        for (to_backend, from) in [
            (true, &self.link.datagrams.to_backend),
            (false, &self.link.datagrams.to_client),
        ] {
            handles
                .quic_datagrams(to_backend)
                .increment(from.load(Ordering::Relaxed));
        }
    }

    fn end(mut self, (outcome, side, cause): (Outcome, Side, Cause)) {
        self.count();
        if let Some(log) = self.log.take() {
            log.end(outcome, side, cause);
        }
    }
}

impl Drop for FlowRecord<'_, '_> {
    fn drop(&mut self) {
        // Dropped with its task: the record, dropped next, logs the flow as drained.
        self.count();
    }
}
