//! A new flow: its datagrams held (bounded) while its Initials are read, then the hello routed
//! with the same table as TCP, the held datagrams replayed to the backend and the flow's task
//! started; or, with no route, a CONNECTION_CLOSE; or, for a hello that is late or refused,
//! nothing but a log line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::flow::{backend_socket, FlowTask};
use super::{Cid, Flow, Flows, Link, Pending};
use crate::hello::{ClientHello, Transport};
use crate::metrics::{AttemptResult, QuicDrop};
use crate::proxy::access_log::{AccessLog, Cause};
use crate::proxy::relay::Counts;
use crate::proxy::sniff::SniffError;
use crate::proxy::{ticks, Live, Outcome, Side};
use crate::quic::packet::{self, Packet};
use crate::quic::{InitialReader, QuicError};
use crate::route::Open;

/// The TLS alert a flow with no route is closed with.
const UNRECOGNIZED_NAME: u8 = 112;

/// The bytes a pending flow may hold, for a hello of at most `hello_limit`: Initials are padded
/// to 1,200 bytes and carry headers, and 0-RTT packets may come alongside.
fn held_limit(hello_limit: usize) -> usize {
    2 * hello_limit + 16 * 1024
}

/// A backend a flow was routed to.
struct Backend {
    address: SocketAddr,
    /// Connected to it, the held datagrams sent.
    socket: UdpSocket,
    /// The lengths of those sent.
    sent: Vec<usize>,
    open: Open,
}

impl Flows {
    /// A datagram that may start a flow: its first packet must be an Initial of a version
    /// sniroute reads.
    pub(super) fn start(&mut self, datagram: &[u8], from: SocketAddr) {
        let packet = match packet::first(datagram) {
            Ok(Packet::Long(packet, _)) if packet.initial => packet,
            Ok(_) => return self.drop_one(QuicDrop::NoFlow),
            Err(error) => return self.drop_one(QuicDrop::of(&error)),
        };
        let Some(cid) = Cid::new(packet.dcid) else {
            return self.drop_one(QuicDrop::Malformed);
        };
        let live = self.live.load();
        let limits = &live.limits;
        if self.closing {
            return self.drop_one(QuicDrop::Closing);
        }
        if self.flows.len() + self.pending.len() >= limits.max_quic_flows {
            return self.drop_one(QuicDrop::MaxFlows);
        }
        let per_ip = self.pending_per_ip.get(&from.ip()).copied().unwrap_or(0);
        if limits.max_pending_per_ip != 0 && per_ip >= limits.max_pending_per_ip {
            return self.drop_one(QuicDrop::PendingLimit);
        }
        *self.pending_per_ip.entry(from.ip()).or_default() += 1;
        self.listener.metrics.load().accepted.increment(1);
        self.pending.insert(
            cid,
            Pending {
                // The same bound as a hello over TCP.
                reader: InitialReader::new(limits.max_client_hello),
                held: Vec::new(),
                bytes: 0,
                client: from,
                since: Instant::now(),
            },
        );
        drop(live);
        if !self.hold(cid, datagram, from) {
            // Its first datagram wasn't held (the budget is spent): no flow.
            self.remove_pending(&cid);
        }
    }

    /// A datagram of a pending flow: held, and read for the hello. Whether it was held (it
    /// wasn't when refused, and then was dropped and counted).
    pub(super) fn hold(&mut self, cid: Cid, datagram: &[u8], from: SocketAddr) -> bool {
        let (limit, hello_limit) = {
            let limits = &self.live.load().limits;
            (limits.max_pending_hello_bytes, limits.max_client_hello)
        };
        let Some(pending) = self.pending.get_mut(&cid) else {
            return false;
        };
        let refused = if pending.client != from {
            // Another address using this DCID before any answer: not the client's.
            Some(QuicDrop::NoFlow)
        } else if pending.bytes + datagram.len() > held_limit(hello_limit) {
            Some(QuicDrop::PendingFull)
        } else if !self.shared.hello_budget.take(datagram.len(), limit) {
            Some(QuicDrop::HelloBudget)
        } else {
            None
        };
        if let Some(reason) = refused {
            self.drop_one(reason);
            return false;
        }
        pending.bytes += datagram.len();
        pending.held.push(datagram.to_vec());
        match pending.reader.feed(datagram) {
            Ok(None) => {}
            Ok(Some(hello)) => {
                if let Some(pending) = self.remove_pending(&cid) {
                    self.route(cid, pending, hello);
                }
            }
            Err(error) => {
                self.drop_one(QuicDrop::of(&error));
                if let Some(pending) = self.remove_pending(&cid) {
                    let live = self.live.load_full();
                    let outcome = match error {
                        QuicError::Hello(error) => SniffError::Hello(error).outcome(),
                        QuicError::ClientClosed => Outcome::ClientClosed,
                        _ => Outcome::BadHello,
                    };
                    AccessLog::new(pending.client, &live).end(
                        outcome,
                        Side::Client,
                        Cause::Quic(error),
                    );
                }
            }
        }
        true
    }

    /// Takes a pending flow out of the table, giving back what it held.
    fn remove_pending(&mut self, cid: &Cid) -> Option<Pending> {
        let pending = self.pending.remove(cid)?;
        self.shared.hello_budget.give_back(pending.bytes);
        let ip = pending.client.ip();
        if let Some(count) = self.pending_per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.pending_per_ip.remove(&ip);
            }
        }
        Some(pending)
    }

    /// Ends the pending flows whose hello is late.
    pub(super) fn sweep(&mut self) {
        let limit = self.live.load().timeouts.client_hello;
        let late: Vec<Cid> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.since.elapsed() >= limit)
            .map(|(cid, _)| *cid)
            .collect();
        for cid in late {
            if let Some(pending) = self.remove_pending(&cid) {
                let live = self.live.load_full();
                AccessLog::new(pending.client, &live).end(
                    Outcome::HelloTimeout,
                    Side::Client,
                    Cause::None,
                );
            }
        }
    }

    /// Forgets every pending flow (the listener is closing).
    pub(super) fn drop_pending(&mut self) {
        let all: Vec<Cid> = self.pending.keys().copied().collect();
        for cid in all {
            self.remove_pending(&cid);
        }
    }

    /// A whole hello: routes the flow, replays what it held and starts its task; or, with no
    /// route, answers with a CONNECTION_CLOSE.
    fn route(&mut self, cid: Cid, pending: Pending, mut hello: ClientHello) {
        let live = self.live.load_full();
        live.metrics.hello_bytes.record(hello.wire_len as f64);
        live.metrics
            .hello_duration
            .record(pending.since.elapsed().as_secs_f64());
        let decision = live.table.lookup(hello.server_name.as_ref(), &hello.alpn);
        let refused = match decision.pool {
            None => Some((Outcome::NoRoute, Side::Client, Cause::None)),
            Some(pool) => match pool.plan(pending.client.ip(), ticks()).iter().next() {
                // A pool whose only host name hasn't resolved yet.
                None => Some((Outcome::BackendUnreachable, Side::Backend, Cause::None)),
                Some(member) => match backend_socket(member.address, &pending.held) {
                    Ok((socket, sent)) => {
                        let backend = Backend {
                            address: member.address,
                            socket,
                            sent,
                            open: member.open(),
                        };
                        self.open(cid, &pending, backend, hello, live.clone());
                        return;
                    }
                    Err(error) => {
                        member.handles().attempt(AttemptResult::Unreachable);
                        let cause = Cause::Io((&error).into());
                        Some((Outcome::BackendUnreachable, Side::Backend, cause))
                    }
                },
            },
        };
        let mut log = AccessLog::new(pending.client, &live);
        log.since(pending.since);
        log.hello(&mut hello, Transport::Quic);
        log.metrics = decision.metrics;
        log.route = decision.route;
        if let Some((outcome, side, cause)) = refused {
            if outcome == Outcome::NoRoute {
                // No route and no [default]: the TLS alert unrecognized_name, as a server would.
                if let Some(close) = pending.reader.refusal(UNRECOGNIZED_NAME, "no route") {
                    let _ = self.socket.try_send_to(&close, pending.client);
                }
            }
            log.end(outcome, side, cause);
        }
    }

    /// Opens a routed flow, its held datagrams replayed to `backend`: enters it in the table and
    /// starts its task.
    fn open(
        &mut self,
        cid: Cid,
        pending: &Pending,
        backend: Backend,
        hello: ClientHello,
        live: Arc<Live>,
    ) {
        let link = Arc::new(Link {
            backend_address: backend.address,
            backend: backend.socket,
            client: ArcSwap::from_pointee(pending.client),
            last: AtomicU64::new(ticks()),
            established: AtomicBool::new(false),
            bytes: Counts::default(),
            datagrams: Counts::default(),
        });
        let now = ticks();
        for &len in &backend.sent {
            link.moved(len, 1, true, now);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.flows.insert(
            id,
            Flow {
                link: link.clone(),
                client: pending.client,
                cids: vec![cid],
                cid_len: None,
                seen: ticks(),
            },
        );
        // A pending flow's ID is no routed flow's (both are looked up first): never taken over.
        self.by_cid.entry(cid).or_insert(id);
        self.by_address.join(pending.client, id);
        self.by_ip.join(pending.client.ip(), id);
        let task = FlowTask {
            id,
            link,
            client_socket: self.socket.clone(),
            udp: self.udp.clone(),
            events: self.events.clone(),
            _open: backend.open,
            learned: false,
            reads: 0,
            closing: self.closed.clone(),
            started: pending.since,
        };
        self.tracker.spawn(task.run(live, hello));
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        self.drop_pending();
    }
}
