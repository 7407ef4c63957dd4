//! Linux: copying both ways, small bursts with recv/send through a pooled buffer and large ones
//! with splice(2), socket → pipe → socket, so their bytes never enter user space; no buffer or
//! pipe is held by an idle connection.
//!
//! A burst starts with one `recv` into a [`BURST`]-byte buffer from a per-thread pool. Most
//! bursts (a TLS flight, a request, a reply) are smaller: the read is short, which says the
//! socket is drained without a second read, the bytes go out with one `send`, and the buffer
//! goes back to the pool; if the sink takes only part, the buffer stays with the direction until
//! the rest is sent. A read that fills the buffer marks the direction's flow as bulk: its next
//! bursts take a pipe instead, as long as they fill [`BURST`] bytes.
//!
//! Pipes come from a per-thread pool only while a bulk burst is in flight: the direction moves
//! what the socket has into the pipe, drains the pipe into the other socket **completely**, and
//! repeats until the source would block; then the empty pipe goes back to the pool. A pipe left
//! holding data by an error is closed, never pooled.
//!
//! The trap this order avoids: splice from a socket into a pipe says EAGAIN both when the socket
//! is empty and when the pipe is full. The pipe is always empty when the socket is read, so
//! EAGAIN there can only mean the socket is empty, and the task waits for it to be readable.
//!
//! Half-close as in `relay.rs`: EOF one way shuts down the other side's write half while the
//! other direction keeps flowing.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use rustix::net::Shutdown;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::relay::{Activity, Counts};
use super::Side;

/// Bytes one pipe holds: Linux's default, 16 pages.
const PIPE_CAPACITY: usize = 64 * 1024;
/// Empty pipes each runtime thread keeps for reuse; more are closed when returned.
const POOLED_PER_THREAD: usize = 64;
/// Pipes open at once in the process, in flight or pooled. Past it, bulk bursts go through
/// buffers too, so a storm of busy connections can't exhaust descriptors.
const MAX_PIPES: usize = 8192;
/// Bytes of a burst's buffer: what HAProxy's buffers hold. A first read that fills it switches
/// the direction to pipes.
const BURST: usize = 16 * 1024;
/// Empty buffers each runtime thread keeps for reuse; more are freed when returned.
const BUFFERS_PER_THREAD: usize = 64;

/// Pipes open in the process (pooled or in use).
static PIPES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Pipes and buffers taken on this thread minus those returned or dropped on it (exact on a
    /// current-thread runtime; tests use it to see that idle connections hold none).
    static IN_USE: std::cell::Cell<Held> = const { std::cell::Cell::new(Held { pipes: 0, buffers: 0 }) };
}

/// Pipes and buffers held, for the tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    pipes: isize,
    buffers: isize,
}

/// Counts pipes and buffers taken (`1`) and returned or dropped (`-1`) for the tests; nothing
/// otherwise.
fn count_in_use(_pipes: isize, _buffers: isize) {
    #[cfg(test)]
    IN_USE.with(|in_use| {
        let held = in_use.get();
        in_use.set(Held {
            pipes: held.pipes + _pipes,
            buffers: held.buffers + _buffers,
        })
    });
}

/// A pipe's two ends, both non-blocking; counted in [`PIPES`] while open. Dropped, it closes
/// itself with whatever it holds; only [`Pipe::give_back`] (called when it is empty) pools it.
/// So no exit path (an error, the idle timer, drain, a reset) can leak a pipe or its count.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Taken by a direction (not pooled): for the tests' count of pipes in use.
    in_use: bool,
}

impl Pipe {
    /// An empty pipe from this thread's pool, or a new one; `None` at [`MAX_PIPES`] or when the
    /// process is out of descriptors.
    fn take() -> Option<Self> {
        let mut pipe = match POOL.with(|pool| pool.borrow_mut().pop()) {
            Some(pipe) => pipe,
            None => {
                if PIPES.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
                    PIPES.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                match rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
                    Ok((read, write)) => Self {
                        read,
                        write,
                        in_use: false,
                    },
                    Err(_) => {
                        PIPES.fetch_sub(1, Ordering::Relaxed);
                        return None;
                    }
                }
            }
        };
        pipe.in_use = true;
        count_in_use(1, 0);
        Some(pipe)
    }

    /// Back to this thread's pool (or closed, when the pool is full); only ever called with the
    /// pipe empty.
    fn give_back(mut self) {
        self.in_use = false;
        count_in_use(-1, 0);
        put_back(&POOL, self, POOLED_PER_THREAD);
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if self.in_use {
            count_in_use(-1, 0);
        }
        PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A burst's buffer from this thread's pool, or a new one. Dropped, it is freed; only
/// [`Buffer::give_back`] (called when it is sent) pools it.
#[derive(Debug)]
struct Buffer(Box<[u8]>);

impl Buffer {
    fn take() -> Self {
        count_in_use(0, 1);
        match BUFFERS.with(|pool| pool.borrow_mut().pop()) {
            Some(bytes) => Self(bytes),
            None => Self(vec![0; BURST].into_boxed_slice()),
        }
    }

    fn give_back(mut self) {
        put_back(&BUFFERS, std::mem::take(&mut self.0), BUFFERS_PER_THREAD);
    }
}

/// Into this thread's `pool`, unless it holds `most` already (then dropped).
fn put_back<T>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>, item: T, most: usize) {
    pool.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < most {
            pool.push(item);
        }
    });
}

impl Drop for Buffer {
    fn drop(&mut self) {
        count_in_use(0, -1);
    }
}

/// Copies both ways between `client` and `backend` until both directions have ended; the first
/// error ends both. Hand-written over the sockets' own readiness (`poll_read_ready`,
/// `poll_write_ready`) rather than as two async blocks: it holds no readiness futures, so an
/// idle connection's task stays small.
pub(super) fn copy_both_ways<'a>(
    client: &'a TcpStream,
    backend: &'a TcpStream,
    activity: &'a Activity,
    counts: &'a Counts,
) -> CopyBothWays<'a> {
    CopyBothWays {
        to_backend: Direction::new(client, backend, Side::Client, &counts.to_backend),
        to_client: Direction::new(backend, client, Side::Backend, &counts.to_client),
        activity,
    }
}

/// The future [`copy_both_ways`] returns.
#[derive(Debug)]
pub(super) struct CopyBothWays<'a> {
    to_backend: Direction<'a>,
    to_client: Direction<'a>,
    activity: &'a Activity,
}

impl Future for CopyBothWays<'_> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let client_done = this.to_client.is_done();
        let to_backend = this.to_backend.poll(context, this.activity, client_done)?;
        let backend_done = this.to_backend.is_done();
        let to_client = this.to_client.poll(context, this.activity, backend_done)?;
        if to_backend.is_ready() && to_client.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// One direction: from `source` (the `side` named) into `sink`.
#[derive(Debug)]
struct Direction<'a> {
    source: &'a TcpStream,
    sink: &'a TcpStream,
    side: Side,
    written: &'a AtomicU64,
    state: State,
    /// The first read (or fill) of the last burst took [`BURST`] bytes: the next burst goes
    /// through a pipe.
    bulk: bool,
}

/// Where a direction is.
#[derive(Debug)]
enum State {
    /// Waiting for the source to have bytes; holds nothing.
    Idle,
    /// A burst in flight: `in_pipe` bytes in `pipe` wait for the sink.
    Draining { pipe: Pipe, in_pipe: usize },
    /// A burst read into a buffer: `buffer[start..end]` waits for the sink.
    Buffered {
        buffer: Buffer,
        start: usize,
        end: usize,
    },
    /// The source ended and the sink's write half is shut down.
    Done,
}

/// What a splice or read into an empty pipe or buffer found.
enum Fill {
    /// Bytes moved.
    Moved(usize),
    /// The source has nothing now (its readiness is cleared).
    Empty,
    /// The source ended.
    Ended,
}

impl<'a> Direction<'a> {
    fn new(source: &'a TcpStream, sink: &'a TcpStream, side: Side, written: &'a AtomicU64) -> Self {
        Self {
            source,
            sink,
            side,
            written,
            state: State::Idle,
            bulk: false,
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn other(&self) -> Side {
        match self.side {
            Side::Client => Side::Backend,
            _ => Side::Client,
        }
    }

    /// Moves bytes until the direction would block (`Pending`), ends (`Ready(Ok)`) or fails.
    /// `other_done`: the opposite direction has ended, so this one ending ends the connection.
    fn poll(
        &mut self,
        context: &mut Context<'_>,
        activity: &Activity,
        other_done: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            // Each step sets the next state and says whether to return (`Some`) or go on.
            let step = match std::mem::replace(&mut self.state, State::Done) {
                State::Done => Some(Poll::Ready(Ok(()))),
                State::Idle => self.poll_idle(context, activity, other_done),
                State::Draining { pipe, in_pipe } => {
                    self.poll_draining(context, activity, other_done, pipe, in_pipe)
                }
                State::Buffered { buffer, start, end } => {
                    self.poll_buffered(context, activity, buffer, start..end)
                }
            };
            if let Some(returned) = step {
                return returned;
            }
        }
    }

    /// Idle: wait for the source, then start a burst: through a pipe after a bulk one (while
    /// there are pipes), else through a buffer. Stays Idle when the source turned out empty: the
    /// next poll registers for its readiness.
    fn poll_idle(
        &mut self,
        context: &mut Context<'_>,
        activity: &Activity,
        other_done: bool,
    ) -> Option<Poll<io::Result<()>>> {
        self.state = State::Idle;
        match self.source.poll_read_ready(context) {
            Poll::Pending => return Some(Poll::Pending),
            Poll::Ready(Err(error)) => {
                activity.failed(self.side);
                return Some(Poll::Ready(Err(error)));
            }
            Poll::Ready(Ok(())) => {}
        }
        if self.bulk {
            if let Some(pipe) = Pipe::take() {
                return self.fill_pipe(pipe, activity, other_done, true);
            }
        }
        let mut buffer = Buffer::take();
        match read(self.source, &mut buffer.0) {
            Ok(Fill::Moved(end)) => {
                activity.touch();
                self.bulk = end == BURST;
                self.state = State::Buffered {
                    buffer,
                    start: 0,
                    end,
                };
                None
            }
            Ok(Fill::Empty) => {
                buffer.give_back();
                None
            }
            Ok(Fill::Ended) => {
                buffer.give_back();
                Some(self.end(activity, other_done))
            }
            Err(error) => {
                activity.failed(self.side);
                Some(Poll::Ready(Err(error)))
            }
        }
    }

    /// Draining: move the pipe's bytes into the sink; once it is empty, refill it while the
    /// source has more. A pipe left holding bytes by an error is dropped, which closes it.
    fn poll_draining(
        &mut self,
        context: &mut Context<'_>,
        activity: &Activity,
        other_done: bool,
        pipe: Pipe,
        mut in_pipe: usize,
    ) -> Option<Poll<io::Result<()>>> {
        if let Some(returned) = self.sink_ready(context, activity) {
            self.state = State::Draining { pipe, in_pipe };
            return Some(returned);
        }
        let drained = self.sink.try_io(Interest::WRITABLE, || {
            rustix::pipe::splice(
                &pipe.read,
                None,
                self.sink,
                None,
                in_pipe,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            )
            .map_err(io::Error::from)
        });
        match self.sent(drained, activity) {
            Ok(moved) => in_pipe -= moved,
            Err(error) => return Some(Poll::Ready(Err(error))),
        }
        if in_pipe > 0 {
            self.state = State::Draining { pipe, in_pipe };
            return None;
        }
        // The pipe is empty: the burst goes on with it while the source has more.
        self.fill_pipe(pipe, activity, other_done, false)
    }

    /// Buffered: write `buffer[range]` into the sink; the buffer goes back to the pool once
    /// sent.
    fn poll_buffered(
        &mut self,
        context: &mut Context<'_>,
        activity: &Activity,
        buffer: Buffer,
        range: std::ops::Range<usize>,
    ) -> Option<Poll<io::Result<()>>> {
        let (mut start, end) = (range.start, range.end);
        if let Some(returned) = self.sink_ready(context, activity) {
            self.state = State::Buffered { buffer, start, end };
            return Some(returned);
        }
        match self.sent(self.sink.try_write(&buffer.0[start..end]), activity) {
            Ok(sent) => start += sent,
            Err(error) => return Some(Poll::Ready(Err(error))),
        }
        if start < end {
            self.state = State::Buffered { buffer, start, end };
        } else {
            buffer.give_back();
            self.state = State::Idle;
        }
        None
    }

    /// Waits for the sink to take bytes: `None` when it can, else what `poll` returns (pending,
    /// or the sink's error).
    fn sink_ready(
        &self,
        context: &mut Context<'_>,
        activity: &Activity,
    ) -> Option<Poll<io::Result<()>>> {
        match self.sink.poll_write_ready(context) {
            Poll::Pending => Some(Poll::Pending),
            Poll::Ready(Err(error)) => {
                activity.failed(self.other());
                Some(Poll::Ready(Err(error)))
            }
            Poll::Ready(Ok(())) => None,
        }
    }

    /// Counts what a write into the sink moved (none when it would block); a failed write is
    /// the sink's side's failure.
    fn sent(&self, written: io::Result<usize>, activity: &Activity) -> io::Result<usize> {
        match written {
            Ok(moved) => {
                self.written.fetch_add(moved as u64, Ordering::Relaxed);
                activity.touch();
                Ok(moved)
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(error) => {
                activity.failed(self.other());
                Err(error)
            }
        }
    }

    /// Fills the empty `pipe` from the source and sets the next state: a burst to drain, or
    /// Idle with the pipe given back when the source has nothing. `Some`: the direction ended
    /// (EOF or an error) and this is what `poll` returns. The first fill of a burst says, as a
    /// buffer's read does, whether the next burst is bulk too (a burst's last fill is short).
    fn fill_pipe(
        &mut self,
        pipe: Pipe,
        activity: &Activity,
        other_done: bool,
        first: bool,
    ) -> Option<Poll<io::Result<()>>> {
        match self.fill(&pipe) {
            Ok(Fill::Moved(moved)) => {
                activity.touch();
                if first {
                    self.bulk = moved >= BURST;
                }
                self.state = State::Draining {
                    pipe,
                    in_pipe: moved,
                };
                None
            }
            Ok(Fill::Empty) => {
                pipe.give_back();
                self.state = State::Idle;
                None
            }
            Ok(Fill::Ended) => {
                pipe.give_back();
                Some(self.end(activity, other_done))
            }
            Err(error) => {
                pipe.give_back();
                activity.failed(self.side);
                Some(Poll::Ready(Err(error)))
            }
        }
    }

    /// Splices what the source has into `pipe`, which is empty: so EAGAIN can only mean the
    /// source is empty (the trap of a full pipe can't arise).
    fn fill(&self, pipe: &Pipe) -> io::Result<Fill> {
        let filled = self.source.try_io(Interest::READABLE, || {
            rustix::pipe::splice(
                self.source,
                None,
                &pipe.write,
                None,
                PIPE_CAPACITY,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            )
            .map_err(io::Error::from)
        });
        match filled {
            Ok(0) => Ok(Fill::Ended),
            Ok(moved) => Ok(Fill::Moved(moved)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(Fill::Empty),
            Err(error) => Err(error),
        }
    }

    /// The source ended: shut down the sink's write half, as the half-close is passed on. When
    /// the other direction is over too, the sockets are about to close, which says the same:
    /// no separate shutdown.
    fn end(&mut self, activity: &Activity, other_done: bool) -> Poll<io::Result<()>> {
        activity.closed(self.side);
        self.state = State::Done;
        if other_done {
            return Poll::Ready(Ok(()));
        }
        match rustix::net::shutdown(self.sink, Shutdown::Write) {
            // NOTCONN: the sink already went away; the other direction will see it.
            Ok(()) | Err(rustix::io::Errno::NOTCONN) => Poll::Ready(Ok(())),
            Err(error) => {
                activity.failed(self.other());
                Poll::Ready(Err(error.into()))
            }
        }
    }
}

/// A read into `buffer`. A short read drained the socket: its readiness is cleared with it,
/// as tokio's own `poll_read` does, so no read follows only to hear EAGAIN.
fn read(source: &TcpStream, buffer: &mut [u8]) -> io::Result<Fill> {
    let mut read = 0;
    let result = source.try_io(Interest::READABLE, || {
        (read, _) = rustix::net::recv(source, &mut *buffer, rustix::net::RecvFlags::empty())?;
        match read {
            // WouldBlock from here clears the readiness this read saw, and only that.
            short if short > 0 && short < buffer.len() => Err(io::ErrorKind::WouldBlock.into()),
            _ => Ok(read),
        }
    });
    match result {
        Ok(0) => Ok(Fill::Ended),
        Ok(_) => Ok(Fill::Moved(read)),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => match read {
            0 => Ok(Fill::Empty),
            _ => Ok(Fill::Moved(read)),
        },
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected loopback pair: (far end, near end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (near, _) = listener.accept().await.unwrap();
        (far, near)
    }

    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
    }

    /// Reads to EOF in 1000-byte bites, yielding between them.
    async fn slow_read(stream: &mut tokio::net::tcp::ReadHalf<'_>) -> Vec<u8> {
        let mut received = Vec::new();
        let mut bite = [0u8; 1000];
        loop {
            let read = stream.read(&mut bite).await.unwrap();
            if read == 0 {
                return received;
            }
            received.extend_from_slice(&bite[..read]);
            tokio::task::yield_now().await;
        }
    }

    fn in_use() -> Held {
        IN_USE.with(std::cell::Cell::get)
    }

    /// Both ways at once, several pipes' worth each, read back in small bites with yields: the
    /// pipes fill and the sockets fill, so every EAGAIN case happens, and nothing stalls.
    #[tokio::test]
    async fn bursts_larger_than_a_pipe_with_slow_readers_arrive_intact_both_ways() {
        let (mut client, client_near) = pair().await;
        let (backend_near, mut backend) = pair().await;
        let copy = tokio::spawn(async move {
            let activity = Activity::new();
            let counts = Counts::default();
            copy_both_ways(&client_near, &backend_near, &activity, &counts)
                .await
                .unwrap();
            (
                counts.to_backend.load(Ordering::Relaxed),
                counts.to_client.load(Ordering::Relaxed),
            )
        });
        let (up, down) = (pattern(1, 3 * 1024 * 1024), pattern(2, 2 * 1024 * 1024));
        let (mut client_read, mut client_write) = client.split();
        let (mut backend_read, mut backend_write) = backend.split();
        let (_, _, received_up, received_down) = tokio::join!(
            async {
                client_write.write_all(&up).await.unwrap();
                client_write.shutdown().await.unwrap();
            },
            async {
                backend_write.write_all(&down).await.unwrap();
                backend_write.shutdown().await.unwrap();
            },
            slow_read(&mut backend_read),
            slow_read(&mut client_read),
        );
        assert!(received_up == up, "client to backend differs");
        assert!(received_down == down, "backend to client differs");
        assert_eq!(copy.await.unwrap(), (up.len() as u64, down.len() as u64));
    }

    /// Small bursts (short reads, through buffers) to a slow reader: sends that the sink takes
    /// only in part resume where they stopped, and every byte arrives once, in order.
    #[tokio::test]
    async fn small_bursts_to_a_slow_reader_arrive_intact() {
        let (mut client, client_near) = pair().await;
        let (backend_near, mut backend) = pair().await;
        // Small socket buffers towards the backend, so that sends are taken only in part.
        rustix::net::sockopt::set_socket_send_buffer_size(&backend_near, 16 * 1024).unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size(&backend, 64 * 1024).unwrap();
        let copy = tokio::spawn(async move {
            let activity = Activity::new();
            let counts = Counts::default();
            copy_both_ways(&client_near, &backend_near, &activity, &counts)
                .await
                .unwrap();
            counts.to_backend.load(Ordering::Relaxed)
        });
        let sent = pattern(3, 1024 * 1024);
        let (mut client_read, mut client_write) = client.split();
        let (mut backend_read, mut backend_write) = backend.split();
        let (_, received) = tokio::join!(
            async {
                // Pieces of 1 to 3,000 bytes, yielding after each: the copy reads them short.
                let mut at = 0;
                for size in (1..=3000).cycle() {
                    let end = (at + size).min(sent.len());
                    client_write.write_all(&sent[at..end]).await.unwrap();
                    at = end;
                    if at == sent.len() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                client_write.shutdown().await.unwrap();
            },
            slow_read(&mut backend_read),
        );
        assert!(received == sent, "client to backend differs");
        backend_write.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client_read.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(copy.await.unwrap(), sent.len() as u64);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_pipe_and_a_half_close_passes_through() {
        let (mut client, client_near) = pair().await;
        let (backend_near, mut backend) = pair().await;
        let before = in_use();
        let copy = tokio::spawn(async move {
            let activity = Activity::new();
            let counts = Counts::default();
            copy_both_ways(&client_near, &backend_near, &activity, &counts).await
        });
        client.write_all(b"request").await.unwrap();
        let mut request = [0u8; 7];
        backend.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"request");
        // The copy task ran on this thread up to its next wait: the burst is over.
        assert_eq!(
            in_use(),
            before,
            "an idle connection holds a pipe or buffer"
        );

        client.shutdown().await.unwrap();
        assert_eq!(
            backend.read(&mut request).await.unwrap(),
            0,
            "eof passed on"
        );
        backend.write_all(b"response").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        assert_eq!(response, b"response");
        copy.await.unwrap().unwrap();
        assert_eq!(in_use(), before);
    }

    /// A copy dropped mid-burst (the idle timer, drain, a reset elsewhere) while a pipe or a
    /// buffer holds bytes: it is closed or freed and its counts go back, so no exit path leaks
    /// one. The client writes `block` bytes at a time, pausing after each with `pause`; the
    /// backend never reads, so once its buffers are full a burst waits. Returns what was held.
    async fn drop_mid_burst(block: usize, pause: bool) -> Held {
        let (mut client, client_near) = pair().await;
        let (backend_near, _backend) = pair().await;
        let before = (in_use(), PIPES.load(Ordering::Relaxed));
        let activity = Activity::new();
        let counts = Counts::default();
        let mut copy = Box::pin(copy_both_ways(
            &client_near,
            &backend_near,
            &activity,
            &counts,
        ));
        let writer = tokio::spawn(async move {
            let block = vec![7u8; block];
            while client.write_all(&block).await.is_ok() {
                if pause {
                    tokio::task::yield_now().await;
                }
            }
        });
        // Drive the copy by hand, one poll at a time, until something is held (a hang guard
        // bounds it; it says nothing about speed).
        let held = async {
            loop {
                let _ =
                    std::future::poll_fn(|context| Poll::Ready(copy.as_mut().poll(context))).await;
                if in_use() != before.0 {
                    return in_use();
                }
                tokio::task::yield_now().await;
            }
        };
        let held = tokio::time::timeout(std::time::Duration::from_secs(30), held)
            .await
            .expect("hung: the copy never held a pipe or buffer");
        drop(copy);
        assert_eq!(in_use(), before.0, "the dropped burst is still counted");
        assert!(PIPES.load(Ordering::Relaxed) <= before.1 + POOLED_PER_THREAD);
        writer.abort();
        Held {
            pipes: held.pipes - before.0.pipes,
            buffers: held.buffers - before.0.buffers,
        }
    }

    /// Bulk: each read fills a buffer, so the bursts go through pipes.
    #[tokio::test]
    async fn a_copy_dropped_with_bytes_in_its_pipe_gives_the_pipe_back() {
        let held = drop_mid_burst(1 << 20, false).await;
        assert_eq!(
            held,
            Held {
                pipes: 1,
                buffers: 0
            }
        );
    }

    /// Small bursts, each read short: they go through buffers, one of which waits for the sink.
    #[tokio::test]
    async fn a_copy_dropped_with_bytes_in_its_buffer_frees_the_buffer() {
        let held = drop_mid_burst(1000, true).await;
        assert_eq!(
            held,
            Held {
                pipes: 0,
                buffers: 1
            }
        );
    }
}
