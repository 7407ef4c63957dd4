//! The connect phase: dial a route's backends, in the order the pool's balancer gives, within
//! `timeouts.connect` for the whole dial, and send each the PROXY header the route asks for.
//!
//! Failover: a member that refuses, resets or doesn't answer in its share of the time (what is
//! left of the limit, split over the members left to try) is counted against it and the next is
//! tried, the PROXY header sent again byte for byte. A passthrough connection with another
//! member left to try also writes the buffered hello and waits for the backend's first byte: a
//! backend that accepts and then closes or resets without answering is failed over too (a slow
//! one that answers after its share is kept, not abandoned). Otherwise the relay that follows
//! replays the hello.
//!
//! A failure is a [`ConnectError`] that says whose fault it is: a backend that refuses, resets,
//! or doesn't answer in time is the backend's (`backend_unreachable`, `connect_timeout`); the
//! proxy running out of its own descriptors or memory is sniroute's (`internal_error`, side
//! `internal`), is not counted against the backend and ends the dial.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::{ticks, IoCause, Outcome, Side};
use crate::config::Timeouts;
use crate::metrics::{AttemptResult, RouteHandles};
use crate::route::{Change, Member, Plan};

/// A connected backend.
#[derive(Debug)]
pub(super) struct Connected {
    pub(super) stream: TcpStream,
    /// The member that was reached.
    pub(super) member: Arc<Member>,
    /// Members tried, this one included.
    pub(super) attempts: u8,
    /// Whether the replay has been written (and answered) already.
    pub(super) replayed: bool,
}

/// A dial that reached no backend.
#[derive(Debug, Clone, Copy)]
pub(super) struct Failed {
    pub(super) error: ConnectError,
    /// The last member tried, if any.
    pub(super) member: Option<SocketAddr>,
    /// Members tried.
    pub(super) attempts: u8,
}

/// What each attempt sends before the backend counts as reached.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dial<'a> {
    /// The PROXY header, written first.
    pub(super) header: Option<&'a [u8]>,
    /// Passthrough: the buffered hello, written (and its answer awaited) when another member is
    /// left to try.
    pub(super) replay: Option<&'a [u8]>,
}

/// Why a backend couldn't be reached. Small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ConnectError {
    /// The backend refused, reset or was unreachable.
    #[error("{0}")]
    Unreachable(IoCause),
    /// No answer within `timeouts.connect`.
    #[error("no answer in time")]
    Timeout,
    /// sniroute itself couldn't make the socket: out of file descriptors or memory.
    #[error("{}", io::Error::from_raw_os_error(*.0))]
    Local(i32),
    /// Writing the PROXY header failed.
    #[error("proxy header: {0}")]
    Header(IoCause),
    /// The backend closed or reset the connection before answering the hello.
    #[error("closed before answering: {0}")]
    NoAnswer(IoCause),
    /// The pool has no address yet: its host names haven't resolved.
    #[error("no address resolved yet")]
    NoAddress,
}

impl ConnectError {
    fn of(error: &io::Error) -> Self {
        // EMFILE, ENFILE, ENOBUFS, ENOMEM (Linux's numbers): the proxy's own limits, not the
        // backend's fault.
        const LOCAL: [i32; 4] = [24, 23, 105, 12];
        match error.raw_os_error() {
            Some(code) if LOCAL.contains(&code) => Self::Local(code),
            _ => Self::Unreachable(error.into()),
        }
    }

    /// How the connection ends.
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Self::Unreachable(_) | Self::NoAnswer(_) | Self::NoAddress => {
                Outcome::BackendUnreachable
            }
            Self::Timeout => Outcome::ConnectTimeout,
            Self::Local(_) => Outcome::InternalError,
            Self::Header(_) => Outcome::Reset,
        }
    }

    /// Whose doing it was.
    pub(super) fn side(&self) -> Side {
        match self {
            Self::Local(_) => Side::Internal,
            _ => Side::Backend,
        }
    }

    fn result(&self) -> AttemptResult {
        match self {
            Self::Timeout => AttemptResult::Timeout,
            Self::Header(_) | Self::NoAnswer(_) => AttemptResult::Reset,
            // Accepted, then reset before the connect was seen to complete.
            Self::Unreachable(cause) if cause.is_reset() => AttemptResult::Reset,
            _ => AttemptResult::Unreachable,
        }
    }
}

/// Tries `plan`'s members in order until one is reached, all within `timeouts.connect`;
/// records each attempt against its member and a successful connect's time in `metrics`.
pub(super) async fn connect(
    plan: &Plan,
    dial: Dial<'_>,
    timeouts: &Timeouts,
    metrics: &RouteHandles,
) -> Result<Connected, Failed> {
    let started = Instant::now();
    let deadline = started + timeouts.connect;
    let mut failed = Failed {
        error: ConnectError::NoAddress,
        member: None,
        attempts: 0,
    };
    for (tried, member) in plan.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            failed.error = ConnectError::Timeout;
            break;
        }
        let left = (plan.len() - tried) as u32;
        let probe = match dial.replay {
            Some(replay) if left > 1 => Some(replay),
            _ => None,
        };
        failed.member = Some(member.address);
        failed.attempts = tried as u8 + 1;
        match attempt(
            member.address,
            dial.header,
            probe,
            now + (deadline - now) / left,
        )
        .await
        {
            Ok(stream) => {
                member.handles().attempt(AttemptResult::Ok);
                note(member, member.succeeded());
                metrics
                    .connect_duration
                    .record(started.elapsed().as_secs_f64());
                return Ok(Connected {
                    stream,
                    member: Arc::clone(member),
                    attempts: failed.attempts,
                    replayed: probe.is_some(),
                });
            }
            Err(error) => {
                failed.error = error;
                if error.side() != Side::Backend {
                    break;
                }
                member.handles().attempt(error.result());
                // A backend that drops a hello may be refusing what this client sent: fail
                // over, but only what the backend does on its own counts towards ejecting it.
                if !matches!(error, ConnectError::NoAnswer(_)) {
                    note(member, member.failed(ticks()));
                }
            }
        }
    }
    Err(failed)
}

/// One member: connect, send the header, and with `probe` the hello, waiting for the first
/// byte of the answer; all by `deadline`, except that an answer still pending then is taken as
/// a slow backend's, not a dead one's.
async fn attempt(
    address: SocketAddr,
    header: Option<&[u8]>,
    probe: Option<&[u8]>,
    deadline: Instant,
) -> Result<TcpStream, ConnectError> {
    let mut stream = match timeout_at(deadline, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(ConnectError::of(&error)),
        Err(_elapsed) => return Err(ConnectError::Timeout),
    };
    let _ = stream.set_nodelay(true);
    if let Some(header) = header {
        match timeout_at(deadline, stream.write_all(header)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(ConnectError::Header((&error).into())),
            Err(_elapsed) => return Err(ConnectError::Header(io::ErrorKind::TimedOut.into())),
        }
    }
    let Some(replay) = probe else {
        return Ok(stream);
    };
    match timeout_at(deadline, stream.write_all(replay)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(ConnectError::NoAnswer((&error).into())),
        Err(_elapsed) => return Err(ConnectError::Timeout),
    }
    match timeout_at(deadline, stream.peek(&mut [0u8; 1])).await {
        Ok(Ok(0)) => Err(ConnectError::NoAnswer(io::ErrorKind::UnexpectedEof.into())),
        Ok(Err(error)) => Err(ConnectError::NoAnswer((&error).into())),
        Ok(Ok(_)) | Err(_) => Ok(stream),
    }
}

/// Logs a member's change of availability (rare: once per ejection or recovery).
fn note(member: &Member, change: Option<Change>) {
    match change {
        None => {}
        Some(Change::Down(Some(ms))) => tracing::warn!(
            route = member.route(),
            backend.addr = %member.address,
            ejected_ms = ms,
            "backend ejected after failed connects"
        ),
        Some(Change::Down(None)) => {}
        Some(Change::Up) => tracing::info!(
            route = member.route(),
            backend.addr = %member.address,
            "backend back in rotation"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of descriptors is the proxy's own limit, not a dead backend: its own outcome, side
    /// `internal`, and (in `connect`) no count against the backend.
    #[test]
    fn running_out_of_descriptors_is_sniroutes_fault_not_the_backends() {
        for code in [24, 23] {
            let error = ConnectError::of(&io::Error::from_raw_os_error(code));
            assert_eq!(error, ConnectError::Local(code));
            assert_eq!(
                (error.outcome(), error.side()),
                (Outcome::InternalError, Side::Internal)
            );
        }
        assert_eq!(
            ConnectError::Local(24).to_string(),
            "Too many open files (os error 24)"
        );
        let refused = ConnectError::of(&io::Error::from_raw_os_error(111));
        assert_eq!(
            (refused.outcome(), refused.side()),
            (Outcome::BackendUnreachable, Side::Backend)
        );
        assert_eq!(refused.to_string(), "Connection refused (os error 111)");
    }
}
