//! A `protocol = "quic"` listener (SPEC "QUIC"): one UDP socket, served by one task on one
//! worker, which owns the listener's whole flow table, so finding a datagram's flow takes no
//! lock.
//!
//! ```text
//! client datagram ─► flow by connection ID (long header: its DCID; short header: each CID
//!                    length learned) or, failing that, by address (one flow there)
//!   known flow     ─► its backend socket, unchanged (the client's new address noted: rebinding)
//!   new Initial    ─► held (bounded) and fed to quic::InitialReader until the hello is whole,
//!                    then routed with the same table as TCP: the held datagrams are replayed
//!                    in order through a new connected UDP socket to the chosen backend, or,
//!                    with no route, the client gets a CONNECTION_CLOSE (unrecognized_name)
//! backend datagram ─► the flow's task: sent to the client from the listener's address; the
//!                    backend's first long header gives its connection ID, learned for
//!                    rebinding
//! ```
//!
//! A flow is one backend socket and one task, ending when no datagram moved either way for
//! `timeouts.quic_idle` (or its backend refuses it), with one access-log line. After routing,
//! a datagram costs one lookup and one send each way: no copy and no allocation (each
//! direction reads into one buffer per thread).
//!
//! Every table is bounded: flows and pending flows by `limits.max_quic_flows`, pending ones per
//! client address by `limits.max_pending_per_ip`, in time by `timeouts.client_hello`, and in
//! bytes by `limits.max_pending_hello_bytes` (shared with TCP) and [`MAX_HELD`] each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use quinn_udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access_log::{AccessLog, Cause};
use super::context::{ListenerContext, Shared};
use super::relay::Counts;
use super::{Live, Outcome, Side};
use crate::hello::{ClientHello, Transport};
use crate::metrics::{AttemptResult, QuicDrop};
use crate::quic::packet::{self, Packet, MAX_CID_LEN};
use crate::quic::{InitialReader, QuicError, DEFAULT_CRYPTO_LIMIT};
use crate::route::Open;

/// The largest UDP payload (what a datagram may carry over IPv4 or IPv6 without jumbograms).
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams one pending flow may hold before its hello is whole (Initials, and 0-RTT packets
/// sent alongside), in bytes: a post-quantum hello takes two datagrams of ~1,250 bytes.
pub(super) const MAX_HELD: usize = 64 * 1024;
/// The TLS alert a flow with no route is closed with.
const UNRECOGNIZED_NAME: u8 = 112;
/// Reads from a flow's backend after which its socket gets GRO.
const GRO_AFTER: u32 = 32;
/// Reads the listener's task makes per wake-up at most.
const BATCH: usize = 64;
/// How often pending flows are checked against `timeouts.client_hello`.
const SWEEP: Duration = Duration::from_millis(250);

thread_local! {
    /// Where a worker's flow tasks read their backends' datagrams.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// A connection ID, as a flow table key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Cid {
    len: u8,
    bytes: [u8; MAX_CID_LEN],
}

impl Cid {
    /// `None` for an empty ID (it names nothing) or one over 20 bytes.
    fn new(id: &[u8]) -> Option<Self> {
        if id.is_empty() || id.len() > MAX_CID_LEN {
            return None;
        }
        let mut bytes = [0; MAX_CID_LEN];
        bytes[..id.len()].copy_from_slice(id);
        Some(Self {
            len: id.len() as u8,
            bytes,
        })
    }
}

/// What a flow's task and the listener's task share.
#[derive(Debug)]
struct Link {
    /// Connected to the flow's backend.
    backend: UdpSocket,
    /// Where that is.
    backend_address: SocketAddr,
    /// Where the client is now (it moves when its NAT rebinds).
    client: ArcSwap<SocketAddr>,
    /// [`super::ticks`] when a datagram last moved either way.
    last: AtomicU64,
    bytes: Counts,
    datagrams: Counts,
}

impl Link {
    /// Counts `datagrams` of `bytes` in all, moved one way.
    fn moved(&self, bytes: usize, datagrams: usize, to_backend: bool) {
        let (bytes_count, datagrams_count) = match to_backend {
            true => (&self.bytes.to_backend, &self.datagrams.to_backend),
            false => (&self.bytes.to_client, &self.datagrams.to_client),
        };
        bytes_count.fetch_add(bytes as u64, Ordering::Relaxed);
        datagrams_count.fetch_add(datagrams as u64, Ordering::Relaxed);
        self.last.store(super::ticks(), Ordering::Relaxed);
    }
}

/// A routed flow, as the listener's task keeps it.
#[derive(Debug)]
struct Flow {
    link: Arc<Link>,
    /// Where the client was last seen (its key in [`Flows::by_address`] and
    /// [`Flows::by_ip`]).
    client: SocketAddr,
    /// The IDs it is found by: the client's first DCID, the backend's first SCID once learned,
    /// then IDs the client moved to (seen on a datagram found by its address), the oldest of
    /// those given up past [`MAX_FLOW_CIDS`].
    cids: Vec<Cid>,
    /// The length of the backend's IDs, once learned: how long a short header's DCID is.
    cid_len: Option<u8>,
}

/// Connection IDs a flow is found by, at most.
const MAX_FLOW_CIDS: usize = 8;

/// How many flows a key (a client address, or IP) has, and their IDs XORed together, which is
/// the one flow's ID when there is one: a datagram of no known connection ID from a key with
/// exactly one flow is that flow's.
#[derive(Debug)]
struct Occupancy<K>(HashMap<K, (u64, u32)>);

impl<K: std::hash::Hash + Eq> Occupancy<K> {
    fn join(&mut self, key: K, id: u64) {
        let (ids, count) = self.0.entry(key).or_insert((0, 0));
        *ids ^= id;
        *count += 1;
    }

    fn leave(&mut self, key: &K, id: u64) {
        if let Some((ids, count)) = self.0.get_mut(key) {
            *ids ^= id;
            *count -= 1;
            if *count == 0 {
                self.0.remove(key);
            }
        }
    }

    /// The flow of `key`, if it has exactly one.
    fn only(&self, key: &K) -> Option<u64> {
        match self.0.get(key) {
            Some(&(id, 1)) => Some(id),
            _ => None,
        }
    }
}

/// A flow still reading its hello.
#[derive(Debug)]
struct Pending {
    reader: InitialReader,
    /// Every datagram so far, in order, to replay to the backend.
    held: Vec<Vec<u8>>,
    bytes: usize,
    client: SocketAddr,
    since: Instant,
}

/// What a flow's task tells the listener's task.
#[derive(Debug)]
enum Event {
    /// The backend chose this connection ID: the flow can be found by it.
    Learned(u64, Cid),
    /// The flow is over.
    Ended(u64),
}

/// The listener's flow table and everything its task needs.
struct Flows {
    socket: Arc<UdpSocket>,
    /// The listener socket's GRO, GSO and ECN (also how datagrams are sent to backends).
    udp: Arc<UdpSocketState>,
    listener: Arc<ListenerContext>,
    live: Arc<ArcSwap<Live>>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    events: mpsc::UnboundedSender<Event>,
    flows: HashMap<u64, Flow>,
    by_cid: HashMap<Cid, u64>,
    /// Flows per client address: the fallback for a backend that uses no connection IDs.
    by_address: Occupancy<SocketAddr>,
    /// Flows per client IP: the fallback for a client whose NAT gave it a new port, and which
    /// moved to a connection ID sniroute couldn't see issued (inside encrypted frames).
    by_ip: Occupancy<IpAddr>,
    /// Lengths of the connection IDs learned so far, to read short headers' DCIDs by.
    cid_lengths: Vec<u8>,
    pending: HashMap<Cid, Pending>,
    pending_per_ip: HashMap<IpAddr, usize>,
    next_id: u64,
    /// No new flows: a drain has begun, or the listener was removed by a reload.
    closing: bool,
}

/// Serves the bound UDP `socket` until `stop` fires, then, if flows are left, hands them to a
/// task tracked by `flows` that serves them until the last ends (or the drain's end drops it).
pub async fn serve(
    socket: std::net::UdpSocket,
    listener: Arc<ListenerContext>,
    live: Arc<ArcSwap<Live>>,
    shared: Arc<Shared>,
    flows: TaskTracker,
    stop: CancellationToken,
) {
    let address = socket.local_addr().ok();
    let bound = UdpSocketState::new((&socket).into())
        .and_then(|udp| Ok((Arc::new(udp), Arc::new(UdpSocket::from_std(socket)?))));
    let (udp, socket) = match bound {
        Ok(bound) => bound,
        Err(error) => {
            let listener = address.map_or_else(|| "-".to_owned(), |address| address.to_string());
            tracing::error!(%listener, %error, "a worker cannot serve this quic listener");
            return;
        }
    };
    // Bounded by what sends on it: each flow's task sends two events at most.
    let (events, mut received) = mpsc::unbounded_channel();
    let mut table = Flows {
        socket,
        udp,
        listener,
        live,
        shared,
        tracker: flows.clone(),
        events,
        flows: HashMap::new(),
        by_cid: HashMap::new(),
        by_address: Occupancy(HashMap::new()),
        by_ip: Occupancy(HashMap::new()),
        cid_lengths: Vec::new(),
        pending: HashMap::new(),
        pending_per_ip: HashMap::new(),
        next_id: 0,
        closing: false,
    };
    let mut buffer = vec![0; MAX_DATAGRAM].into_boxed_slice();
    table.run(&mut buffer, &mut received, Some(&stop)).await;
    table.closing = true;
    table.drop_pending();
    if !table.flows.is_empty() {
        flows.spawn(async move {
            table.run(&mut buffer, &mut received, None).await;
        });
    }
}

impl Flows {
    /// Reads datagrams and events until `stop` fires, or, without one, until no flow is left.
    async fn run(
        &mut self,
        buffer: &mut [u8],
        events: &mut mpsc::UnboundedReceiver<Event>,
        stop: Option<&CancellationToken>,
    ) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = async {
            match stop {
                Some(stop) => stop.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                biased;
                () = &mut stopped => return,
                Some(event) = events.recv() => self.event(event),
                readable = self.socket.readable() => match readable {
                    Ok(()) => self.receive(buffer),
                    Err(_) => self.drop_one(QuicDrop::ReceiveError),
                },
                _ = sweep.tick(), if !self.pending.is_empty() => self.sweep(),
            }
            if stop.is_none() && self.flows.is_empty() {
                return;
            }
        }
    }

    /// Reads what the socket holds, [`BATCH`] reads at most (then events and timers get their
    /// turn): each read a datagram, or with GRO several from one client, handled one by one.
    fn receive(&mut self, buffer: &mut [u8]) {
        for _ in 0..BATCH {
            let meta = match receive(&self.socket, &self.udp, buffer) {
                Ok(meta) => meta,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                // An ICMP error for an earlier answer, say: nothing to do with the next.
                Err(_) => {
                    self.drop_one(QuicDrop::ReceiveError);
                    continue;
                }
            };
            for datagram in buffer[..meta.len].chunks(meta.stride.max(1)) {
                self.datagram(datagram, meta.addr, meta.ecn);
            }
        }
    }

    fn drop_one(&self, reason: QuicDrop) {
        self.listener
            .metrics
            .load()
            .quic_dropped(reason)
            .increment(1);
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Learned(id, cid) => {
                let Some(flow) = self.flows.get_mut(&id) else {
                    return;
                };
                flow.cid_len = Some(cid.len);
                if !self.cid_lengths.contains(&cid.len) {
                    self.cid_lengths.push(cid.len);
                }
                // An ID another flow has is not taken from it.
                if let std::collections::hash_map::Entry::Vacant(entry) = self.by_cid.entry(cid) {
                    entry.insert(id);
                    flow.cids.push(cid);
                }
            }
            Event::Ended(id) => {
                let Some(flow) = self.flows.remove(&id) else {
                    return;
                };
                for cid in &flow.cids {
                    self.by_cid.remove(cid);
                }
                self.by_address.leave(&flow.client, id);
                self.by_ip.leave(&flow.client.ip(), id);
            }
        }
    }

    /// The routed flow a datagram belongs to, and whether it was found by connection ID: by
    /// ID; else by address, then by IP (one flow there), except for an Initial with an ID of no
    /// flow, which starts one.
    fn find(&self, datagram: &[u8], from: SocketAddr) -> Option<(u64, bool)> {
        match packet::long_ids(datagram) {
            Some((dcid, _)) => {
                if let Some(&id) = Cid::new(dcid).and_then(|cid| self.by_cid.get(&cid)) {
                    return Some((id, true));
                }
                if packet::is_initial(datagram) {
                    return None;
                }
            }
            None => {
                for &len in &self.cid_lengths {
                    let id = datagram
                        .get(1..1 + usize::from(len))
                        .and_then(Cid::new)
                        .and_then(|cid| self.by_cid.get(&cid));
                    if let Some(&id) = id {
                        return Some((id, true));
                    }
                }
            }
        }
        let id = self
            .by_address
            .only(&from)
            .or_else(|| self.by_ip.only(&from.ip()))?;
        Some((id, false))
    }

    fn datagram(&mut self, datagram: &[u8], from: SocketAddr, ecn: Option<EcnCodepoint>) {
        if datagram.is_empty() {
            return self.drop_one(QuicDrop::Malformed);
        }
        if let Some((id, by_cid)) = self.find(datagram, from) {
            return self.forward(id, datagram, from, by_cid, ecn);
        }
        if datagram[0] & 0x80 == 0 {
            // A short header: only a routed flow's.
            return self.drop_one(QuicDrop::NoFlow);
        }
        let pending = packet::long_ids(datagram)
            .and_then(|(dcid, _)| Cid::new(dcid))
            .filter(|cid| self.pending.contains_key(cid));
        match pending {
            Some(cid) => self.hold(cid, datagram, from),
            None => self.start(datagram, from),
        }
    }

    /// A datagram of a routed flow: to its backend, as it came. Found other than by a known
    /// ID, a short header's DCID is learned as the flow's.
    fn forward(
        &mut self,
        id: u64,
        datagram: &[u8],
        from: SocketAddr,
        by_cid: bool,
        ecn: Option<EcnCodepoint>,
    ) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        let link = flow.link.clone();
        let alias = match (by_cid, flow.cid_len, datagram[0] & 0x80) {
            (false, Some(len), 0) => datagram.get(1..1 + usize::from(len)).and_then(Cid::new),
            _ => None,
        };
        if let Some(alias) = alias.filter(|alias| !self.by_cid.contains_key(alias)) {
            if flow.cids.len() == MAX_FLOW_CIDS {
                // The oldest ID the client moved to (the first two stay).
                self.by_cid.remove(&flow.cids.remove(2));
            }
            flow.cids.push(alias);
            self.by_cid.insert(alias, id);
        }
        if flow.client != from {
            // The client's address or port changed (NAT rebinding): answers follow it.
            let before = std::mem::replace(&mut flow.client, from);
            link.client.store(Arc::new(from));
            self.by_address.leave(&before, id);
            self.by_ip.leave(&before.ip(), id);
            self.by_address.join(from, id);
            self.by_ip.join(from.ip(), id);
        }
        match send(
            &self.udp,
            &link.backend,
            link.backend_address,
            ecn,
            datagram,
            0,
        ) {
            Ok(()) => link.moved(datagram.len(), 1, true),
            // The backend socket's buffer is full, or an ICMP error was queued: UDP may lose
            // a datagram, and QUIC sends it again.
            Err(_) => self.drop_one(QuicDrop::SendFailed),
        }
    }

    /// A datagram that may start a flow: its first packet must be an Initial of a version
    /// sniroute reads.
    fn start(&mut self, datagram: &[u8], from: SocketAddr) {
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
        self.pending.insert(
            cid,
            Pending {
                reader: InitialReader::new(DEFAULT_CRYPTO_LIMIT),
                held: Vec::new(),
                bytes: 0,
                client: from,
                since: Instant::now(),
            },
        );
        drop(live);
        self.hold(cid, datagram, from);
    }

    /// A datagram of a pending flow: held, and read for the hello.
    fn hold(&mut self, cid: Cid, datagram: &[u8], from: SocketAddr) {
        let limit = self.live.load().limits.max_pending_hello_bytes;
        let Some(pending) = self.pending.get_mut(&cid) else {
            return;
        };
        if pending.client != from {
            // Another address using this DCID before any answer: not the client's.
            return self.drop_one(QuicDrop::NoFlow);
        }
        if pending.bytes + datagram.len() > MAX_HELD {
            return self.drop_one(QuicDrop::PendingFull);
        }
        if !self.shared.hello_budget.take(datagram.len(), limit) {
            return self.drop_one(QuicDrop::HelloBudget);
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
                        QuicError::Hello(error) => super::sniff::SniffError::Hello(error).outcome(),
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
    fn sweep(&mut self) {
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
    fn drop_pending(&mut self) {
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
            Some(pool) => match pool.plan(pending.client.ip(), super::ticks()).iter().next() {
                // A pool whose only host name hasn't resolved yet.
                None => Some((Outcome::BackendUnreachable, Side::Backend, Cause::None)),
                Some(member) => match backend_socket(member.address, &pending.held) {
                    Ok(backend) => {
                        self.open(cid, &pending, backend, member.open(), hello, live.clone());
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

    /// Opens a routed flow: replays what it held to `backend` and starts its task.
    fn open(
        &mut self,
        cid: Cid,
        pending: &Pending,
        backend: (UdpSocket, Vec<usize>),
        open: Open,
        hello: ClientHello,
        live: Arc<Live>,
    ) {
        let (backend, sent) = backend;
        let link = Arc::new(Link {
            backend_address: backend.peer_addr().unwrap_or(pending.client),
            backend,
            client: ArcSwap::from_pointee(pending.client),
            last: AtomicU64::new(super::ticks()),
            bytes: Counts::default(),
            datagrams: Counts::default(),
        });
        for &len in &sent {
            link.moved(len, 1, true);
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
            },
        );
        self.by_cid.insert(cid, id);
        self.by_address.join(pending.client, id);
        self.by_ip.join(pending.client.ip(), id);
        let task = FlowTask {
            id,
            link,
            client_socket: self.socket.clone(),
            udp: self.udp.clone(),
            events: self.events.clone(),
            _open: open,
            learned: false,
            reads: 0,
        };
        self.tracker.spawn(task.run(live, hello));
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        self.drop_pending();
    }
}

/// A UDP socket connected to `backend`, from an ephemeral port (one per flow, so the backend's
/// answers come back to this flow alone, and the backend sees each flow as its own client),
/// with the `held` datagrams sent on it, in order, and the lengths of those sent.
///
/// Sent before the socket joins the runtime: tokio sends only once its poller has seen the
/// socket writable, which a new socket isn't yet.
fn backend_socket(
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
struct FlowTask {
    id: u64,
    link: Arc<Link>,
    client_socket: Arc<UdpSocket>,
    udp: Arc<UdpSocketState>,
    events: mpsc::UnboundedSender<Event>,
    /// Counts the flow as open to its backend.
    _open: Open,
    /// Whether the backend's connection ID was learned.
    learned: bool,
    /// Reads from the backend so far, up to [`GRO_AFTER`].
    reads: u32,
}

impl FlowTask {
    async fn run(mut self, live: Arc<Live>, mut hello: ClientHello) {
        let link = self.link.clone();
        let mut record = FlowRecord {
            log: Some(AccessLog::new(**link.client.load(), &live)),
            link: &link,
        };
        if let Some(log) = &mut record.log {
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
        let idle = live.timeouts.quic_idle.as_millis() as u64;
        let ending = loop {
            let deadline = link.last.load(Ordering::Relaxed) + idle;
            let now = super::ticks();
            if now >= deadline {
                break (Outcome::IdleTimeout, Side::Internal, Cause::None);
            }
            tokio::select! {
                ready = link.backend.readable() => {
                    if let Err(error) = ready.and_then(|()| self.relay()) {
                        let outcome = match error.kind() {
                            std::io::ErrorKind::ConnectionRefused => Outcome::BackendUnreachable,
                            _ => Outcome::Reset,
                        };
                        break (outcome, Side::Backend, Cause::Io((&error).into()));
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(deadline - now)) => {}
            }
        };
        record.end(ending);
        let _ = self.events.send(Event::Ended(self.id));
    }

    /// Sends every datagram the backend has waiting to the client: a burst read at once
    /// (GRO) goes out in one send (GSO), its datagrams as they came.
    fn relay(&mut self) -> std::io::Result<()> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                let meta = match receive(&self.link.backend, &self.udp, &mut scratch) {
                    Ok(meta) => meta,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
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
                    let learned = packet::long_ids(burst).and_then(|(_, scid)| Cid::new(scid));
                    if let Some(cid) = learned {
                        self.learned = true;
                        let _ = self.events.send(Event::Learned(self.id, cid));
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
                    self.link.moved(meta.len, datagrams, false);
                }
            }
        })
    }
}

/// One read from `socket` into `buffer`: a datagram, or several of one sender's, `stride` bytes
/// each but the last (GRO).
fn receive(
    socket: &UdpSocket,
    udp: &UdpSocketState,
    buffer: &mut [u8],
) -> std::io::Result<RecvMeta> {
    let mut meta = [RecvMeta::default()];
    socket.try_io(Interest::READABLE, || {
        udp.recv(
            socket.into(),
            &mut [std::io::IoSliceMut::new(buffer)],
            &mut meta,
        )
    })?;
    Ok(meta[0])
}

/// Sends `contents` to `destination` on `socket`, as datagrams of `stride` bytes each but the
/// last when `stride` is above 0 and shorter (in as few sends as GSO allows), else as one.
fn send(
    udp: &UdpSocketState,
    socket: &UdpSocket,
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    contents: &[u8],
    stride: usize,
) -> std::io::Result<()> {
    let stride = match stride {
        0 => contents.len(),
        stride => stride,
    };
    let per_send = stride * udp.max_gso_segments().max(1);
    for chunk in contents.chunks(per_send.max(1)) {
        let transmit = Transmit {
            destination,
            ecn,
            contents: chunk,
            segment_size: (chunk.len() > stride).then_some(stride),
            src_ip: None,
        };
        udp.try_send(socket.into(), &transmit)?;
    }
    Ok(())
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
