//! The handshake layer: one ClientHello message reassembled from fragments, each given with its
//! offset in the handshake stream. TLS records deliver fragments in order (RFC 8446 §5.1 lets a
//! handshake message span records); QUIC CRYPTO frames (RFC 9000 §19.6) deliver them at any
//! offset, in any order, overlapping or repeated. Both feed this one assembler.
//!
//! Bounded: no byte at or past `limit` is kept, the buffer grows only by the bytes that arrived,
//! and the received ranges are merged as they touch, so their count stays small for any real
//! client and is capped for any other.

use std::ops::Range;

use super::HelloError;

/// Handshake header: message type and a 24-bit length (RFC 8446 §4).
pub(super) const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Disjoint byte ranges an assembler tracks at most. Chrome splits its QUIC hello into a dozen
/// shuffled frames at most; a peer needing more gaps than this is refused, not remembered.
const MAX_GAPS: usize = 64;

/// The length of the ClientHello message whose first bytes are `prefix` (header included), once
/// its header is there.
///
/// # Errors
/// Another handshake message type, or a message longer than `limit`.
pub(super) fn message_len(prefix: &[u8], limit: usize) -> Result<Option<usize>, HelloError> {
    let Some(&message_type) = prefix.first() else {
        return Ok(None);
    };
    if message_type != HANDSHAKE_CLIENT_HELLO {
        return Err(HelloError::NotClientHello(message_type));
    }
    let Some(header) = prefix.first_chunk::<HANDSHAKE_HEADER_LEN>() else {
        return Ok(None);
    };
    let len =
        HANDSHAKE_HEADER_LEN + u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
    if len > limit {
        return Err(HelloError::TooLarge { limit });
    }
    Ok(Some(len))
}

/// Reassembles one ClientHello from `(offset, bytes)` fragments.
#[derive(Debug, Default)]
pub struct HandshakeAssembler {
    limit: usize,
    /// Handshake stream bytes from offset 0; bytes in no received range are zero.
    bytes: Vec<u8>,
    /// Received ranges, sorted, disjoint and not touching.
    received: Vec<Range<usize>>,
}

impl HandshakeAssembler {
    /// An assembler that keeps at most `limit` bytes of handshake stream.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            bytes: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Adds `data`, found at `offset` in the handshake stream.
    ///
    /// # Errors
    /// Data past `limit` (`TooLarge`), data that contradicts bytes already received at the same
    /// offsets, or more gaps than the assembler tracks (`Malformed`).
    pub fn add(&mut self, offset: usize, data: &[u8]) -> Result<(), HelloError> {
        let end = offset
            .checked_add(data.len())
            .filter(|&end| end <= self.limit)
            .ok_or(HelloError::TooLarge { limit: self.limit })?;
        if data.is_empty() {
            return Ok(());
        }
        if end > self.bytes.len() {
            let grown = end
                .max(self.bytes.len() + self.bytes.len() / 2)
                .min(self.limit);
            self.bytes.reserve_exact(grown - self.bytes.len());
            self.bytes.resize(end, 0);
        }
        // Bytes already received must match: a retransmission can't change the hello.
        for range in &self.received {
            let (start, stop) = (range.start.max(offset), range.end.min(end));
            if start < stop && self.bytes[start..stop] != data[start - offset..stop - offset] {
                return Err(HelloError::Malformed(
                    "handshake data differs on retransmission",
                ));
            }
        }
        // Merge `offset..end` into the ranges it touches, refusing before anything changes if
        // that would make one range too many.
        let first = self.received.partition_point(|range| range.end < offset);
        let last = self.received.partition_point(|range| range.start <= end);
        if first == last && self.received.len() == MAX_GAPS {
            return Err(HelloError::Malformed("too many gaps in the handshake data"));
        }
        let merged = if first < last {
            self.received[first].start.min(offset)..self.received[last - 1].end.max(end)
        } else {
            offset..end
        };
        self.received.splice(first..last, [merged]);
        self.bytes[offset..end].copy_from_slice(data);
        Ok(())
    }

    /// The whole ClientHello message (header included) once every byte of it has arrived.
    ///
    /// # Errors
    /// As [`message_len`].
    pub fn message(&self) -> Result<Option<&[u8]>, HelloError> {
        let contiguous = match self.received.first() {
            Some(range) if range.start == 0 => &self.bytes[..range.end],
            _ => return Ok(None),
        };
        Ok(message_len(contiguous, self.limit)?.and_then(|len| contiguous.get(..len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Vec<u8> {
        let mut message = vec![1, 0, 0, 60];
        message.extend((0..60).map(|i| i as u8));
        message
    }

    #[test]
    fn fragments_in_any_order_with_overlaps_and_repeats_make_the_message() {
        let message = message();
        let cuts = [
            (30, 64),
            (0, 10),
            (5, 20),
            (30, 64),
            (22, 35),
            (10, 12),
            (20, 23),
        ];
        let mut assembler = HandshakeAssembler::new(1024);
        for (index, &(start, end)) in cuts.iter().enumerate() {
            assert_eq!(assembler.message().unwrap(), None, "complete after {index}");
            assembler.add(start, &message[start..end]).unwrap();
        }
        assert_eq!(assembler.message().unwrap(), Some(&message[..]));
    }

    #[test]
    fn contradicting_data_past_the_limit_and_other_messages_are_refused() {
        let message = message();
        let mut assembler = HandshakeAssembler::new(64);
        assembler.add(0, &message[..10]).unwrap();
        assert!(
            assembler.add(5, &[9; 5]).is_err(),
            "contradicting retransmission"
        );
        assert_eq!(
            assembler.add(60, &[0; 5]),
            Err(HelloError::TooLarge { limit: 64 })
        );
        let mut server_hello = HandshakeAssembler::new(64);
        server_hello.add(0, &[2, 0, 0, 1, 0]).unwrap();
        assert_eq!(server_hello.message(), Err(HelloError::NotClientHello(2)));
    }

    #[test]
    fn gaps_are_bounded() {
        let mut assembler = HandshakeAssembler::new(1 << 16);
        for gap in 0..MAX_GAPS {
            assembler.add(1 + 2 * gap, &[0]).unwrap();
        }
        assert!(assembler.add(1 + 2 * MAX_GAPS, &[0]).is_err());
    }
}
