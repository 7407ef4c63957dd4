//! A `protocol = "quic"` listener (SPEC "QUIC"): one UDP socket, served by one task on one
//! worker, which owns the listener's whole flow table, so finding a datagram's flow takes no
//! lock.
//!
//! ```text
//! client datagram ─► flow by connection ID (long header: its DCID; short header: each CID
//!                    length learned) or, failing that, by address, then by IP (one flow
//!                    there: a rebinding client that moved to an ID it got encrypted)
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
//! a client's datagram costs one lookup and one send, and a backend's burst one read and one
//! send (GRO and GSO): no copy and no allocation (each direction reads into one buffer per
//! thread).
//!
//! ```text
//! mod.rs    the listener's task: its flow table, finding a datagram's flow, forwarding
//! admit.rs  a new flow: Initials held and read, the hello routed, or refused
//! flow.rs   a routed flow's task: its backend's datagrams to the client, its log line
//! udp.rs    batched UDP I/O: GRO, GSO, ECN (quinn-udp)
//! ```
//!
//! Every table is bounded: flows and pending flows by `limits.max_quic_flows`, pending ones per
//! client address by `limits.max_pending_per_ip`, in time by `timeouts.client_hello`, and in
//! bytes by `limits.max_pending_hello_bytes` (shared with TCP) and about twice
//! `limits.max_client_hello` each.

mod admit;
mod flow;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use quinn_udp::{EcnCodepoint, UdpSocketState};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::context::{ListenerContext, Shared};
use super::relay::Counts;
use super::{ticks, Live};
use crate::metrics::QuicDrop;
use crate::quic::packet::{self, MAX_CID_LEN};
use crate::quic::InitialReader;
use udp::{receive, send, MAX_DATAGRAM};

/// Reads the listener's task makes per wake-up at most.
const BATCH: usize = 64;
/// How often pending flows are checked against `timeouts.client_hello`.
const SWEEP: Duration = Duration::from_millis(250);

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
    /// Whether the client has sent anything since the flow was routed: until then (a hello
    /// from a spoofed address never goes on), the flow idles out after `timeouts.client_hello`.
    established: AtomicBool,
    bytes: Counts,
    datagrams: Counts,
}

impl Link {
    /// Counts `datagrams` of `bytes` in all, moved one way at `now` ([`ticks`]).
    fn moved(&self, bytes: usize, datagrams: usize, to_backend: bool, now: u64) {
        let (bytes_count, datagrams_count) = match to_backend {
            true => (&self.bytes.to_backend, &self.datagrams.to_backend),
            false => (&self.bytes.to_client, &self.datagrams.to_client),
        };
        bytes_count.fetch_add(bytes as u64, Ordering::Relaxed);
        datagrams_count.fetch_add(datagrams as u64, Ordering::Relaxed);
        self.last.store(now, Ordering::Relaxed);
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
    /// [`ticks`] when a datagram last came from `client`.
    seen: u64,
}

/// How long, in milliseconds, a client's address must have been quiet before a datagram found
/// by address alone from another one moves its flow there.
const QUIET: u64 = 1000;
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
    /// Ends every routed flow's task: when a removed listener's flows have had `timeouts.drain`.
    closed: CancellationToken,
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
        closed: CancellationToken::new(),
    };
    let mut buffer = vec![0; MAX_DATAGRAM].into_boxed_slice();
    table.run(&mut buffer, &mut received, Some(&stop)).await;
    table.closing = true;
    table.drop_pending();
    if !table.flows.is_empty() {
        // Routed flows run on, within the drain time (a shutdown's own end drops them sooner).
        let drain = table.live.load().timeouts.drain;
        flows.spawn(async move {
            let running = table.run(&mut buffer, &mut received, None);
            let _ = tokio::time::timeout(drain, running).await;
            table.closed.cancel();
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

    /// The routed flow a datagram's destination connection ID names: a long header's DCID, or
    /// a short header's first bytes at each ID length learned.
    fn by_id(&self, datagram: &[u8]) -> Option<u64> {
        match packet::long_ids(datagram) {
            Some((dcid, _)) => Cid::new(dcid)
                .and_then(|cid| self.by_cid.get(&cid))
                .copied(),
            None => self.cid_lengths.iter().find_map(|&len| {
                let cid = datagram.get(1..1 + usize::from(len)).and_then(Cid::new)?;
                self.by_cid.get(&cid).copied()
            }),
        }
    }

    fn datagram(&mut self, datagram: &[u8], from: SocketAddr, ecn: Option<EcnCodepoint>) {
        if datagram.is_empty() {
            return self.drop_one(QuicDrop::Malformed);
        }
        if let Some(id) = self.by_id(datagram) {
            return self.forward(id, datagram, from, true, ecn);
        }
        let fallback = match (datagram[0] & 0x80, packet::long_ids(datagram)) {
            // A short header of an ID sniroute didn't see issued (inside encrypted frames): the
            // one flow of its address, or, the client's port having changed, of its IP.
            (0, _) => self
                .by_address
                .only(&from)
                .or_else(|| self.by_ip.only(&from.ip())),
            // A long header: a pending flow's, one that starts a flow (or is refused as it
            // tries), or, for a backend that uses no connection IDs (an empty DCID), the one
            // flow of its address.
            (_, Some((dcid, _))) => match Cid::new(dcid) {
                Some(cid) if self.pending.contains_key(&cid) => {
                    self.hold(cid, datagram, from);
                    return;
                }
                Some(_) => return self.start(datagram, from),
                None => self.by_address.only(&from),
            },
            (_, None) => return self.start(datagram, from),
        };
        match fallback {
            Some(id) => self.forward(id, datagram, from, false, ecn),
            None => self.drop_one(QuicDrop::NoFlow),
        }
    }

    /// A datagram of a routed flow, found by a connection ID it knows (`by_id`) or by its
    /// client's address: to its backend, as it came.
    ///
    /// From another address than the client's last, the flow follows it (NAT rebinding) when
    /// the datagram named a known ID, which an off-path sender can't guess; found by address
    /// alone, only once the client's last address has been quiet for [`QUIET`] (a rebinding
    /// client has left it; a spoofed datagram would otherwise steal a busy flow's answers), and
    /// the short header's ID is then learned as the flow's.
    fn forward(
        &mut self,
        id: u64,
        datagram: &[u8],
        from: SocketAddr,
        by_id: bool,
        ecn: Option<EcnCodepoint>,
    ) {
        let now = ticks();
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        if flow.client == from {
            flow.seen = now;
        } else if by_id || now.saturating_sub(flow.seen) >= QUIET {
            self.follow(id, datagram, from, by_id, now);
        }
        let Some(flow) = self.flows.get(&id) else {
            return;
        };
        let link = &flow.link;
        link.established.store(true, Ordering::Relaxed);
        match send(
            &self.udp,
            &link.backend,
            link.backend_address,
            ecn,
            datagram,
            0,
        ) {
            Ok(()) => link.moved(datagram.len(), 1, true, now),
            // The backend socket's buffer is full, or an ICMP error was queued: UDP may lose
            // a datagram, and QUIC sends it again.
            Err(_) => self.drop_one(QuicDrop::SendFailed),
        }
    }

    /// Moves flow `id` to the client's new address `from` (its answers follow), learning a
    /// short header's ID as the flow's when the datagram was found by address alone.
    fn follow(&mut self, id: u64, datagram: &[u8], from: SocketAddr, by_id: bool, now: u64) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.seen = now;
        let alias = match (by_id, flow.cid_len, datagram[0] & 0x80) {
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
        let before = std::mem::replace(&mut flow.client, from);
        flow.link.client.store(Arc::new(from));
        self.by_address.leave(&before, id);
        self.by_ip.leave(&before.ip(), id);
        self.by_address.join(from, id);
        self.by_ip.join(from.ip(), id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's one flow is found whichever of several left first; none while two are there.
    #[test]
    fn occupancy_names_a_key_s_only_flow() {
        let mut occupancy = Occupancy(HashMap::new());
        let key = "192.0.2.1".parse::<IpAddr>().unwrap();
        occupancy.join(key, 3);
        assert_eq!(occupancy.only(&key), Some(3));
        occupancy.join(key, 5);
        occupancy.join(key, 9);
        assert_eq!(occupancy.only(&key), None);
        occupancy.leave(&key, 3);
        occupancy.leave(&key, 9);
        assert_eq!(
            occupancy.only(&key),
            Some(5),
            "the one left, not the latest"
        );
        occupancy.leave(&key, 5);
        assert!(occupancy.0.is_empty(), "an empty key is forgotten");
    }

    #[test]
    fn connection_ids_are_keys_only_when_they_name_something() {
        assert_eq!(Cid::new(&[]), None);
        assert_eq!(Cid::new(&[1; 21]), None);
        assert_ne!(Cid::new(&[1, 2]), Cid::new(&[1, 2, 0]));
    }
}
