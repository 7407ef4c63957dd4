//! The sniff phase: from an accepted socket to a complete ClientHello, reading (never peeking)
//! into one buffer that becomes the bytes replayed to the backend (STYLE §5).
//!
//! [`ClientStream`] owns the client's socket and that buffer, the way mini-redis' `Connection`
//! owns its socket and frame buffer: [`ClientStream::sniff`] reads a PROXY header where the
//! listener expects one, then the hello under `timeouts.client_hello`, and returns the hello and
//! the bytes to replay as one [`Sniffed`] value, or a [`SniffError`] that says how the
//! connection ends and which alert it earns.
//!
//! Memory under a flood of stalled hellos is bounded twice: the buffer grows only by the bytes
//! that actually arrived (never by what a record header announces, never past
//! `limits.max_client_hello`), and all pending hellos together hold at most
//! `limits.max_pending_hello_bytes`, taken from the shared [`HelloBudget`]. A hello stays
//! pending (for its address and in the budget) until its bytes are handed on: the [`Replay`]
//! carries both holds out of this phase.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use tls_parser::TlsAlertDescription;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::context::{HelloBudget, ListenerContext, PendingSlot, Shared};
use super::{IoCause, Live, Outcome, Side};
use crate::hello::{ClientHello, HelloError, Peeker, Progress};
use crate::http::{Head, HeadError, HeadReader};
use crate::proxy_protocol::{self, Addresses, ProxyHeaderError};

/// The smallest hello buffer: a header-only stall holds this much, not a whole record's worth.
const MIN_BUFFER: usize = 512;
/// The largest port-80 request head (nginx's default allows 32 KiB of request line and headers
/// in four 8 KiB buffers).
pub(super) const MAX_HEAD: usize = 32 * 1024;
/// Bytes one read takes from the socket at most (into a per-thread scratch buffer, then copied
/// into the connection's buffer: so the buffer grows by what arrived, not by a guess).
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Where the client came from and where it connected to: a trusted PROXY header's addresses,
/// or the socket's. The socket's local address is only read when a PROXY header to the backend
/// needs it (a system call most connections don't make).
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    pub(super) source: SocketAddr,
    pub(super) destination: Option<SocketAddr>,
}

/// A client connection in its sniff phase: the socket, and every byte read from it so far.
#[derive(Debug)]
pub(super) struct ClientStream<'a> {
    pub(super) socket: TcpStream,
    origin: Origin,
    /// What the client sent after any PROXY header, in order: the hello first.
    buffer: Vec<u8>,
    /// `limits.max_client_hello`.
    limit: usize,
    /// The part of the pending-hello budget `buffer` holds.
    budget: BudgetHold<'a>,
}

/// Bytes taken from the shared [`HelloBudget`], given back when dropped, so no exit path keeps
/// them.
#[derive(Debug)]
struct BudgetHold<'a> {
    budget: &'a HelloBudget,
    /// `limits.max_pending_hello_bytes`.
    limit: usize,
    held: usize,
}

impl<'a> BudgetHold<'a> {
    /// Takes more so that `total` is held, if the shared budget allows.
    fn grow_to(&mut self, total: usize) -> bool {
        if !self.budget.take(total - self.held, self.limit) {
            return false;
        }
        self.held = total;
        true
    }

    /// What is held, moved out into a new hold; this one holds nothing after.
    fn take(&mut self) -> Self {
        Self {
            budget: self.budget,
            limit: self.limit,
            held: std::mem::take(&mut self.held),
        }
    }
}

impl Drop for BudgetHold<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// What the sniff phase yields: the hello, and everything read so far to replay.
#[derive(Debug)]
pub(super) struct Sniffed<'a> {
    pub(super) hello: ClientHello,
    pub(super) replay: Replay<'a>,
}

/// The bytes read from the client (its hello first), still counted as a pending hello, for its
/// address and in the budget, until they are handed on: written to the backend (passthrough) or
/// through the finished handshake (terminate). Dropping it gives both back.
#[derive(Debug)]
pub(super) struct Replay<'a> {
    pub(super) bytes: Vec<u8>,
    _budget: BudgetHold<'a>,
    _pending: PendingSlot<'a>,
}

/// How the sniff phase failed. Small and `Copy`, like every per-connection error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum SniffError {
    /// The hello was refused.
    #[error("{0}")]
    Hello(#[from] HelloError),
    /// Port 80: the request head was refused.
    #[error("{0}")]
    Head(HeadError),
    /// No complete hello within `timeouts.client_hello`.
    #[error("no complete hello in time")]
    HelloTimeout,
    /// The client closed or reset before its hello was complete.
    #[error("{0}")]
    ClientClosed(Closed),
    /// From a trusted source: the PROXY header was refused.
    #[error("{0}")]
    ProxyHeader(ProxyHeaderError),
    /// From a trusted source: no PROXY header within `timeouts.proxy_header`.
    #[error("no proxy protocol header in time")]
    ProxyHeaderTimeout,
    /// Over `limits.max_pending_per_ip` for the client's address.
    #[error("over limits.max_pending_per_ip")]
    PendingLimit,
    /// Taking more buffer would pass `limits.max_pending_hello_bytes`.
    #[error("over limits.max_pending_hello_bytes")]
    HelloBudget,
    /// Shutdown began while the hello was still arriving.
    #[error("shutting down")]
    Drained,
}

/// How a client went away mid-hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Closed {
    /// An orderly close (a read of 0 bytes).
    #[error("closed mid-hello")]
    Eof,
    /// A reset or another read error.
    #[error("{0}")]
    Error(IoCause),
}

impl SniffError {
    /// How the connection ends.
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Self::Hello(HelloError::NotTls) => Outcome::NotTls,
            Self::Hello(HelloError::Sslv2) => Outcome::Sslv2,
            Self::Hello(HelloError::TooLarge { .. }) => Outcome::HelloTooLarge,
            Self::Hello(_) => Outcome::BadHello,
            Self::Head(HeadError::Malformed(_)) => Outcome::BadRequest,
            Self::Head(HeadError::TooLarge { .. }) => Outcome::HeadTooLarge,
            Self::HelloTimeout => Outcome::HelloTimeout,
            Self::ClientClosed(_) => Outcome::ClientClosed,
            Self::ProxyHeader(_) | Self::ProxyHeaderTimeout => Outcome::BadProxyHeader,
            Self::PendingLimit => Outcome::PendingLimit,
            Self::HelloBudget => Outcome::HelloBudget,
            Self::Drained => Outcome::Drained,
        }
    }

    /// Whose doing it was.
    pub(super) fn side(&self) -> Side {
        match self {
            Self::PendingLimit | Self::HelloBudget | Self::Drained => Side::Internal,
            _ => Side::Client,
        }
    }

    /// The alert to send before closing, where the client speaks TLS records.
    pub(super) fn alert(&self) -> Option<TlsAlertDescription> {
        match self {
            Self::Hello(error) => error.alert(),
            _ => None,
        }
    }
}

impl<'a> ClientStream<'a> {
    /// A stream for the client at `peer`, reading hellos up to `live`'s limits.
    pub(super) fn new(
        socket: TcpStream,
        peer: SocketAddr,
        live: &Live,
        shared: &'a Shared,
    ) -> Self {
        Self {
            socket,
            origin: Origin {
                source: peer,
                destination: None,
            },
            buffer: Vec::new(),
            limit: live.limits.max_client_hello,
            budget: BudgetHold {
                budget: &shared.hello_budget,
                limit: live.limits.max_pending_hello_bytes,
                held: 0,
            },
        }
    }

    /// The client's addresses: a trusted PROXY header's once one is read, the socket's before.
    pub(super) fn origin(&self) -> Origin {
        self.origin
    }

    /// Reads a PROXY header (from a trusted source) and then the hello, each under its deadline
    /// and until shutdown begins; counts the connection as pending for its source address while
    /// the hello arrives.
    pub(super) async fn sniff(
        &mut self,
        live: &Live,
        listener: &ListenerContext,
        shared: &'a Shared,
    ) -> Result<Sniffed<'a>, SniffError> {
        let mut peeker = Peeker::new(self.limit);
        let read = |buffer: &[u8]| match peeker.feed(buffer) {
            Progress::NeedMore => Ok(None),
            Progress::Hello(hello) => Ok(Some(hello)),
            Progress::Reject(error) => Err(error.into()),
        };
        let (hello, replay) = self.sniff_first(live, listener, shared, read).await?;
        Ok(Sniffed { hello, replay })
    }

    /// As [`ClientStream::sniff`], for a port-80 connection: the request head, up to
    /// [`MAX_HEAD`] bytes (or `limits.max_client_hello`, if smaller).
    pub(super) async fn sniff_head(
        &mut self,
        live: &Live,
        listener: &ListenerContext,
        shared: &'a Shared,
    ) -> Result<(Head, Replay<'a>), SniffError> {
        let mut reader = HeadReader::new(self.limit.min(MAX_HEAD));
        let read = |buffer: &[u8]| reader.feed(buffer).map_err(SniffError::Head);
        self.sniff_first(live, listener, shared, read).await
    }

    /// The PROXY header, the pending count, then whatever `read` finds complete in the bytes
    /// so far (`Ok(None)`: it needs more), under `timeouts.client_hello` and until shutdown.
    async fn sniff_first<T>(
        &mut self,
        live: &Live,
        listener: &ListenerContext,
        shared: &'a Shared,
        mut read: impl FnMut(&[u8]) -> Result<Option<T>, SniffError>,
    ) -> Result<(T, Replay<'a>), SniffError> {
        let shutdown = &shared.shutdown.hellos;
        if listener.trusts(self.origin.source.ip()) {
            tokio::select! {
                read = timeout(live.timeouts.proxy_header, self.read_proxy_header()) => {
                    read.map_err(|_| SniffError::ProxyHeaderTimeout)??;
                }
                () = shutdown.cancelled() => return Err(SniffError::Drained),
            }
        }
        let Some(pending) = shared
            .pending
            .enter(self.origin.source.ip(), live.limits.max_pending_per_ip)
        else {
            listener.metrics.load().over_max_pending.increment(1);
            return Err(SniffError::PendingLimit);
        };
        let reading = async {
            loop {
                match read(&self.buffer)? {
                    Some(first) => return Ok::<T, SniffError>(first),
                    None => self.read_more().await?,
                }
            }
        };
        let first = tokio::select! {
            read = timeout(live.timeouts.client_hello, reading) => {
                read.map_err(|_| SniffError::HelloTimeout)??
            }
            () = shutdown.cancelled() => return Err(SniffError::Drained),
        };
        Ok((
            first,
            Replay {
                bytes: std::mem::take(&mut self.buffer),
                _budget: self.budget.take(),
                _pending: pending,
            },
        ))
    }

    /// Reads a PROXY header and takes it off the front of the buffer, leaving whatever followed
    /// it (the start of the hello). A header without addresses (a health check's LOCAL) leaves
    /// the socket's.
    async fn read_proxy_header(&mut self) -> Result<(), SniffError> {
        loop {
            match proxy_protocol::decode(&self.buffer) {
                Ok(Some(header)) => {
                    self.buffer.drain(..header.len);
                    if let Some(Addresses {
                        source,
                        destination,
                    }) = header.addresses
                    {
                        self.origin = Origin {
                            source,
                            destination: Some(destination),
                        };
                    }
                    return Ok(());
                }
                Ok(None) => self.read_more().await?,
                Err(error) => return Err(SniffError::ProxyHeader(error)),
            }
        }
    }

    /// Appends what the socket has next, waiting for it; the buffer grows by exactly what
    /// arrived, within `limit` and the budget. Read with `poll_read`, which, after a read that
    /// didn't fill the chunk, takes the socket as drained: the relay that follows doesn't probe
    /// it with a read that can only say EAGAIN (one system call less per connection).
    async fn read_more(&mut self) -> Result<(), SniffError> {
        let spare = self.limit.saturating_sub(self.buffer.len());
        if spare == 0 {
            return Err(HelloError::TooLarge { limit: self.limit }.into());
        }
        std::future::poll_fn(|context| {
            // Borrowed within one poll only: other connections on this thread use it too.
            SCRATCH.with_borrow_mut(|scratch| {
                let mut chunk = ReadBuf::new(&mut scratch[..spare.min(READ_CHUNK)]);
                match Pin::new(&mut self.socket).poll_read(context, &mut chunk) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(error)) => Poll::Ready(Err(SniffError::ClientClosed(
                        Closed::Error((&error).into()),
                    ))),
                    Poll::Ready(Ok(())) if chunk.filled().is_empty() => {
                        Poll::Ready(Err(SniffError::ClientClosed(Closed::Eof)))
                    }
                    Poll::Ready(Ok(())) => {
                        let read = chunk.filled();
                        Poll::Ready(self.reserve(read.len()).map(|()| {
                            self.buffer.extend_from_slice(read);
                        }))
                    }
                }
            })
        })
        .await
    }

    /// Makes room for `more` bytes: half again the buffer's size or what is needed, whichever is
    /// more, never past `limit`, paid for from the budget.
    fn reserve(&mut self, more: usize) -> Result<(), SniffError> {
        let needed = self.buffer.len() + more;
        let held = self.budget.held;
        if needed <= held {
            return Ok(());
        }
        let grown = needed.max(held + held / 2).max(MIN_BUFFER).min(self.limit);
        if !self.budget.grow_to(grown) {
            return Err(SniffError::HelloBudget);
        }
        self.buffer.reserve_exact(grown - self.buffer.len());
        Ok(())
    }
}
