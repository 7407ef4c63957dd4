//! The relay phase: copying bytes both ways once the hello is forwarded, counting them and
//! timing idleness. This file holds the userspace copy (terminate routes, and every route on
//! platforms without splice(2)) and what both copies share: [`Activity`] and [`supervise`].
//! `splice.rs` holds Linux's zero-copy path.
//!
//! `copy_bidirectional_with_sizes` shuts down the write half of one side when the other side's
//! read hits EOF and keeps the other direction flowing: the SPEC's half-close. A thin wrapper
//! around each stream counts its bytes into the connection's record ([`Counts`]), so they
//! survive errors, timeouts and the end of a drain. One idle timer per
//! connection: each read or write stamps the time, and the timer, when it fires, sleeps again
//! until the last stamp plus the idle limit (no timeout per read).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{Outcome, Side};

/// Bytes buffered per direction while splicing: one maximum-size TLS record.
const COPY_BUFFER: usize = 16 * 1024;

/// Bytes written each way, kept in the connection's access-log record: counted as they move, so
/// they are right however the copy ends (its task dropped at the end of a drain included).
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) to_backend: AtomicU64,
    pub(super) to_client: AtomicU64,
}

/// What both directions of one connection share: when a byte last moved, and which side
/// closed or failed first.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    /// Nanoseconds after `start` of the last read or write that moved bytes.
    last: AtomicU64,
    /// The side whose read ended first (EOF or error), as [`side_code`].
    first_closed: AtomicU8,
    /// The side whose read or write failed first, as [`side_code`].
    first_failed: AtomicU8,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            first_closed: AtomicU8::new(0),
            first_failed: AtomicU8::new(0),
        }
    }

    /// Bytes moved just now.
    pub(super) fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// `side`'s read ended (EOF or error); the first such side is who closed.
    pub(super) fn closed(&self, side: Side) {
        Self::record(&self.first_closed, side);
    }

    /// A read or write on `side` failed; the first such side is to blame.
    pub(super) fn failed(&self, side: Side) {
        Self::record(&self.first_failed, side);
        Self::record(&self.first_closed, side);
    }

    fn record(slot: &AtomicU8, side: Side) {
        let _ = slot.compare_exchange(0, side_code(side), Ordering::Relaxed, Ordering::Relaxed);
    }

    fn side(slot: &AtomicU8) -> Side {
        match slot.load(Ordering::Relaxed) {
            1 => Side::Client,
            2 => Side::Backend,
            _ => Side::Internal,
        }
    }
}

fn side_code(side: Side) -> u8 {
    match side {
        Side::Client => 1,
        Side::Backend => 2,
        Side::Internal => 3,
    }
}

/// A stream that counts the bytes written into it and stamps [`Activity`].
#[derive(Debug)]
pub(super) struct Counted<'a, S> {
    inner: S,
    side: Side,
    activity: &'a Activity,
    /// Bytes written into this stream so far.
    written: &'a AtomicU64,
}

impl<'a, S> Counted<'a, S> {
    pub(super) fn new(
        inner: S,
        side: Side,
        activity: &'a Activity,
        written: &'a AtomicU64,
    ) -> Self {
        Self {
            inner,
            side,
            activity,
            written,
        }
    }

    fn note<T>(&self, result: &io::Result<T>) {
        if result.is_err() {
            self.activity.failed(self.side);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(context, buf));
        self.note(&result);
        if result.is_ok() {
            if buf.filled().len() > before {
                self.activity.touch();
            } else {
                self.activity.closed(self.side);
            }
        }
        Poll::Ready(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = ready!(Pin::new(&mut self.inner).poll_write(context, buf));
        self.note(&result);
        if let Ok(written) = result {
            self.written.fetch_add(written as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        Poll::Ready(result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(Pin::new(&mut self.inner).poll_flush(context));
        self.note(&result);
        Poll::Ready(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(Pin::new(&mut self.inner).poll_shutdown(context));
        self.note(&result);
        Poll::Ready(result)
    }
}

/// Copies both ways until both directions are done or the connection idles for `idle`; says how
/// it ended and which side ended it.
pub(super) async fn copy<C, B>(
    client: &mut Counted<'_, C>,
    backend: &mut Counted<'_, B>,
    activity: &Activity,
    idle: Duration,
) -> (Outcome, Side)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let copy = std::pin::pin!(async {
        tokio::io::copy_bidirectional_with_sizes(client, backend, COPY_BUFFER, COPY_BUFFER)
            .await
            .map(|_| ())
    });
    supervise(copy, activity, idle).await
}

/// Runs `copy` (both directions of one connection) under the idle timer; says how it ended and
/// which side ended it. `copy` is pinned by the caller and borrowed, not moved in: a moved future
/// would take room twice in the connection's task (argument and pinned local); for the same
/// reason this is an `async` block, not an `async fn`. Nothing here waits for shutdown: when the
/// drain time is up, the workers drop the connections' tasks, and each one's record logs it as
/// drained (so an idle connection holds no waiter for that).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(super) fn supervise<'a>(
    mut copy: Pin<&'a mut impl Future<Output = io::Result<()>>>,
    activity: &'a Activity,
    idle: Duration,
) -> impl Future<Output = (Outcome, Side)> + 'a {
    async move {
        let mut timer = std::pin::pin!(tokio::time::sleep(idle));
        loop {
            tokio::select! {
                result = copy.as_mut() => {
                    return match result {
                        Ok(()) => (Outcome::Ok, Activity::side(&activity.first_closed)),
                        Err(_) => (Outcome::Reset, Activity::side(&activity.first_failed)),
                    };
                }
                () = &mut timer => {
                    let deadline = activity.last() + idle;
                    if deadline <= Instant::now() {
                        return (Outcome::IdleTimeout, Side::Internal);
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Runs a splice between two in-memory pipes; returns the far ends and the splice task.
    async fn start(
        idle: Duration,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<(Outcome, Side, u64, u64)>,
    ) {
        let (client_far, client_near) = duplex(64);
        let (backend_near, backend_far) = duplex(64);
        let task = tokio::spawn(async move {
            let activity = Activity::new();
            let counts = Counts::default();
            let mut client = Counted::new(client_near, Side::Client, &activity, &counts.to_client);
            let mut backend =
                Counted::new(backend_near, Side::Backend, &activity, &counts.to_backend);
            let (outcome, side) = copy(&mut client, &mut backend, &activity, idle).await;
            (
                outcome,
                side,
                counts.to_backend.load(Ordering::Relaxed),
                counts.to_client.load(Ordering::Relaxed),
            )
        });
        (client_far, backend_far, task)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_idle_limit() {
        let (_client, _backend, task) = start(Duration::from_secs(60)).await;
        let started = Instant::now();
        let (outcome, side, ..) = task.await.unwrap();
        assert_eq!((outcome, side), (Outcome::IdleTimeout, Side::Internal));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_idle_deadline_back() {
        let (mut client, mut backend, task) = start(Duration::from_secs(60)).await;
        let started = Instant::now();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            client.write_all(b"ping").await.unwrap();
            let mut ping = [0; 4];
            backend.read_exact(&mut ping).await.unwrap();
        }
        let (outcome, _, to_backend, _) = task.await.unwrap();
        assert_eq!(outcome, Outcome::IdleTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(120 + 60));
        assert_eq!(to_backend, 12);
    }

    #[tokio::test]
    async fn a_half_close_is_passed_on_and_the_other_way_keeps_flowing() {
        let (mut client, mut backend, task) = start(Duration::from_secs(60)).await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut request = Vec::new();
        backend.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        backend
            .write_all(b"response after the client's eof")
            .await
            .unwrap();
        backend.shutdown().await.unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        assert_eq!(response, b"response after the client's eof");
        let (outcome, side, to_backend, to_client) = task.await.unwrap();
        assert_eq!((outcome, side), (Outcome::Ok, Side::Client));
        assert_eq!((to_backend, to_client), (7, 31));
    }
}
