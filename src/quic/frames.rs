//! The frames an Initial packet may carry (RFC 9000 §17.2.2, §12.4): PADDING, PING, ACK, CRYPTO
//! and CONNECTION_CLOSE. Anything else in an Initial is a protocol violation.

use super::packet::Reader;
use super::QuicError;

/// Reads `payload`'s frames, handing each CRYPTO frame's `(offset, data)` to `crypto`.
///
/// # Errors
/// An empty payload, a frame not allowed in an Initial, a CONNECTION_CLOSE (the client gave
/// up), a frame that runs past the payload, or what `crypto` says.
pub fn read(
    payload: &[u8],
    mut crypto: impl FnMut(usize, &[u8]) -> Result<(), QuicError>,
) -> Result<(), QuicError> {
    if payload.is_empty() {
        return Err(QuicError::ProtocolViolation(0));
    }
    let mut reader = Reader::new(payload);
    while !reader.is_empty() {
        let frame = reader.varint()?;
        match frame {
            // PADDING, PING.
            0x00 | 0x01 => {}
            // ACK, with ECN counts for 0x03.
            0x02 | 0x03 => {
                let _largest = reader.varint()?;
                let _delay = reader.varint()?;
                let ranges = reader.varint()?;
                let _first = reader.varint()?;
                for _ in 0..ranges {
                    let _gap = reader.varint()?;
                    let _length = reader.varint()?;
                }
                if frame == 0x03 {
                    for _ in 0..3 {
                        reader.varint()?;
                    }
                }
            }
            0x06 => {
                let offset = reader.varint()?;
                let len = reader.varint()?;
                crypto(offset, reader.take(len)?)?;
            }
            0x1c => return Err(QuicError::ClientClosed),
            other => return Err(QuicError::ProtocolViolation(other as u64)),
        }
    }
    Ok(())
}
