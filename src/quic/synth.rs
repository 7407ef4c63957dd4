//! Client Initial datagrams made to order, for tests and the fuzz targets: real protection
//! (rustls' client-side Initial keys), chosen frames.

use super::packet::Version;
use super::protection::InitialKeys;
use super::{QuicError, MIN_INITIAL_DATAGRAM};

/// A CRYPTO frame carrying `data` at `offset`.
pub fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x06];
    varint(offset as u64, &mut frame);
    varint(data.len() as u64, &mut frame);
    frame.extend_from_slice(data);
    frame
}

/// QUIC's variable-length integer encoding (RFC 9000 §16), always in its shortest form.
pub fn varint(value: u64, out: &mut Vec<u8>) {
    match value {
        0..=0x3f => out.push(value as u8),
        0x40..=0x3fff => out.extend_from_slice(&(value as u16 | 0x4000).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&(value as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes()),
    }
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
    const PN_LEN: usize = 4;
    const TAG_LEN: usize = 16;
    let mut header = vec![0xc0 | (version.initial_type() << 4) | (PN_LEN as u8 - 1)];
    header.extend_from_slice(&version.wire().to_be_bytes());
    header.push(dcid.len() as u8);
    header.extend_from_slice(dcid);
    header.push(scid.len() as u8);
    header.extend_from_slice(scid);
    header.push(0); // no token
                    // Length: a 2-byte varint, so the header's size is known before it is written.
    let fixed = header.len() + 2 + PN_LEN + TAG_LEN;
    let payload_len = frames.len().max(MIN_INITIAL_DATAGRAM.saturating_sub(fixed));
    let length = (PN_LEN + payload_len + TAG_LEN) as u16;
    header.extend_from_slice(&(length | 0x4000).to_be_bytes());
    header.extend_from_slice(&pn.to_be_bytes());
    let mut payload = frames.to_vec();
    payload.resize(payload_len, 0); // PADDING
    InitialKeys::for_writing(version, dcid).seal(&header, u64::from(pn), PN_LEN, &payload)
}
