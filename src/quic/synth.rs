//! Client Initial datagrams made to order, for tests and the fuzz targets: real protection
//! (rustls' client-side Initial keys), chosen frames.

use super::packet::Version;
use super::protection::{InitialKeys, INITIAL_OVERHEAD, TAG_LEN};
pub use super::varint;
use super::{QuicError, MIN_INITIAL_DATAGRAM};

/// A CRYPTO frame carrying `data` at `offset`.
pub fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x06];
    varint(offset as u64, &mut frame);
    varint(data.len() as u64, &mut frame);
    frame.extend_from_slice(data);
    frame
}

/// One client Initial packet to `dcid` with packet number `pn` carrying `frames`, padded so
/// that its datagram is 1200 bytes, protected as a client would.
///
/// # Errors
/// Frames too large for the packet's sample.
pub fn initial(
    version: Version,
    dcid: &[u8],
    scid: &[u8],
    pn: u32,
    frames: &[u8],
) -> Result<Vec<u8>, QuicError> {
    let fixed = INITIAL_OVERHEAD + dcid.len() + scid.len() + TAG_LEN;
    let mut payload = frames.to_vec();
    payload.resize(
        frames.len().max(MIN_INITIAL_DATAGRAM.saturating_sub(fixed)),
        0,
    ); // PADDING
    InitialKeys::for_writing(version, dcid).seal_initial(version, dcid, scid, pn, &payload)
}
