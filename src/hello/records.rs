//! The TLS record layer, as far as a ClientHello needs it (RFC 8446 §5.1): record headers read
//! and checked from as few bytes as possible, and each complete record's fragment handed on
//! by its place in the stream. A hello may span any number of records; only handshake records
//! may carry it.

use std::ops::Range;

use super::HelloError;

/// TLS record header: content type, legacy version, length (RFC 8446 §5.1).
pub(super) const RECORD_HEADER_LEN: usize = 5;
/// Largest plaintext record (RFC 8446 §5.1).
const MAX_RECORD_LEN: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;

/// Walks the records at the start of a stream, never past `limit` bytes of it.
#[derive(Debug)]
pub(super) struct RecordReader {
    limit: usize,
    /// Stream offset of the next record header not yet read.
    next_record: usize,
    records: usize,
}

impl RecordReader {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            next_record: 0,
            records: 0,
        }
    }

    /// Records read so far.
    pub(super) fn count(&self) -> usize {
        self.records
    }

    /// Stream bytes those records took, headers included.
    pub(super) fn consumed(&self) -> usize {
        self.next_record
    }

    /// Where the next record's fragment lies in `stream` (every byte the client has sent so
    /// far), once the whole record is there; `Ok(None)`: more bytes are needed.
    ///
    /// # Errors
    /// A record that can't carry (part of) a ClientHello, or one that would pass the limit.
    pub(super) fn next(&mut self, stream: &[u8]) -> Result<Option<Range<usize>>, HelloError> {
        // Another record is needed; if even a one-byte record would pass the limit, the hello
        // can't complete within it, whatever comes next.
        if self.next_record + RECORD_HEADER_LEN + 1 > self.limit {
            return Err(HelloError::TooLarge { limit: self.limit });
        }
        let rest = stream.get(self.next_record..).unwrap_or_default();
        check_record_start(rest, self.records == 0)?;
        let Some(header) = rest.first_chunk::<RECORD_HEADER_LEN>() else {
            return Ok(None);
        };
        let length = u16::from_be_bytes([header[3], header[4]]);
        if usize::from(length) > MAX_RECORD_LEN {
            return Err(HelloError::RecordOverflow(length));
        }
        if length == 0 {
            return Err(HelloError::EmptyRecord);
        }
        let record_end = self.next_record + RECORD_HEADER_LEN + usize::from(length);
        if record_end > self.limit {
            return Err(HelloError::TooLarge { limit: self.limit });
        }
        if stream.len() < record_end {
            return Ok(None);
        }
        let fragment = self.next_record + RECORD_HEADER_LEN..record_end;
        self.next_record = record_end;
        self.records += 1;
        Ok(Some(fragment))
    }
}

/// Refuses, from as few bytes as possible, a record that can't start (or continue) a hello:
/// plain text and SSLv2 at the first byte or three, other content types at once.
///
/// Each verdict waits for exactly the bytes that settle it, and they are checked in one order,
/// so the answer never depends on how the stream was cut (the fuzzer's chunking oracle).
fn check_record_start(rest: &[u8], first: bool) -> Result<(), HelloError> {
    let Some(&content_type) = rest.first() else {
        return Ok(());
    };
    if !first {
        if content_type != CONTENT_TYPE_HANDSHAKE {
            return Err(HelloError::UnexpectedContentType(content_type));
        }
        // Every TLS record version has major version 3 (RFC 8446 §5.1 legacy_record_version).
        return match rest.get(1) {
            Some(3) | None => Ok(()),
            Some(_) => Err(HelloError::Malformed("record version")),
        };
    }
    if content_type & 0x80 != 0 {
        // An SSLv2 record header has the top bit set and a message type of 1 (CLIENT-HELLO)
        // in its third byte; no TLS content type has the top bit set.
        return match rest.get(2) {
            Some(1) => Err(HelloError::Sslv2),
            Some(_) => Err(HelloError::NotTls),
            None => Ok(()),
        };
    }
    if !(20..=24).contains(&content_type) {
        return Err(HelloError::NotTls);
    }
    // A TLS content type followed by major version 3 is TLS; anything else is not.
    match rest.get(1) {
        None => Ok(()),
        Some(3) if content_type == CONTENT_TYPE_HANDSHAKE => Ok(()),
        Some(3) => Err(HelloError::UnexpectedContentType(content_type)),
        Some(_) => Err(HelloError::NotTls),
    }
}
