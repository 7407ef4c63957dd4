//! The connect phase: dial a route's backend within `timeouts.connect`, and send it the PROXY
//! header the route asks for. The buffered hello is replayed by the relay that follows.
//!
//! A failure is a [`ConnectError`] that says whose fault it is: a backend that refuses, resets,
//! doesn't resolve or doesn't answer in time is the backend's (`backend_unreachable`,
//! `connect_timeout`); the proxy running out of its own descriptors or memory is sniroute's
//! (`internal_error`, side `internal`), and is not counted against the backend.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::{IoCause, Outcome, Side};
use crate::config::{Backend, Timeouts};
use crate::metrics::RouteHandles;

/// A connected backend.
#[derive(Debug)]
pub(super) struct Connected {
    pub(super) stream: TcpStream,
    /// The address it was reached at (a host name's resolved address).
    pub(super) address: Option<SocketAddr>,
}

/// Why a backend couldn't be reached. Small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ConnectError {
    /// The backend refused, reset or was unreachable; or its name didn't resolve.
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
            Self::Unreachable(_) => Outcome::BackendUnreachable,
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
}

/// Connects to `backend` within `timeouts.connect` and sends it `header`; records the connect's
/// time, or a failure that is the backend's, in `metrics`.
pub(super) async fn connect(
    backend: &Backend,
    header: Option<&[u8]>,
    timeouts: &Timeouts,
    metrics: &RouteHandles,
) -> Result<Connected, ConnectError> {
    let connecting = Instant::now();
    let dialled = match timeout(timeouts.connect, dial(backend)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(ConnectError::of(&error)),
        Err(_elapsed) => Err(ConnectError::Timeout),
    };
    let mut stream = match dialled {
        Ok(stream) => stream,
        Err(error) => {
            if error.side() == Side::Backend {
                metrics.connect_failures.increment(1);
            }
            return Err(error);
        }
    };
    metrics
        .connect_duration
        .record(connecting.elapsed().as_secs_f64());
    let _ = stream.set_nodelay(true);
    let address = match backend {
        Backend::Addr(address) => Some(*address),
        Backend::Host(..) => stream.peer_addr().ok(),
    };
    if let Some(header) = header {
        // Part of the connect: bounded by its limit, and counted against the backend.
        let written = match timeout(timeouts.connect, stream.write_all(header)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ConnectError::Header((&error).into())),
            Err(_elapsed) => Err(ConnectError::Header(io::ErrorKind::TimedOut.into())),
        };
        if let Err(error) = written {
            metrics.connect_failures.increment(1);
            return Err(error);
        }
    }
    Ok(Connected { stream, address })
}

async fn dial(backend: &Backend) -> io::Result<TcpStream> {
    match backend {
        Backend::Addr(address) => TcpStream::connect(address).await,
        Backend::Host(host, port) => TcpStream::connect((host.as_str(), *port)).await,
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
