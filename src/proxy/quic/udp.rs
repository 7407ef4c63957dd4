//! Batched UDP I/O through quinn-udp: a read takes a datagram, or with GRO a burst of one
//! sender's datagrams; a send takes a datagram, or with GSO a burst cut into datagrams by the
//! kernel; ECN marks are read and written.

use std::net::SocketAddr;

use quinn_udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The largest UDP payload (what a datagram may carry over IPv4 or IPv6 without jumbograms).
pub(super) const MAX_DATAGRAM: usize = 65_535;

/// One read from `socket` into `buffer`: a datagram, or several of one sender's, `stride` bytes
/// each but the last (GRO).
pub(super) fn receive(
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
pub(super) fn send(
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
