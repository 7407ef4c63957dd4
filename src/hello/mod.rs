//! The ClientHello peeker: feed it the bytes a client has sent so far and it answers "need more",
//! "here is the hello" or "reject".
//!
//! Pure: no I/O, no tokio, no clock (the caller owns the deadline). It reassembles the handshake
//! message across any TCP segmentation and across several TLS records (RFC 8446 §5.1 lets a
//! handshake message span records), refuses what is not a TLS handshake from the first bytes of
//! the record header, never looks past `limit` bytes, and hands the complete message to
//! tls-parser ([`parse`]). It does not copy the stream: the caller keeps the bytes (to forward
//! them unchanged) and passes the whole stream received so far on every call.

mod error;
mod ja4;
mod parse;
pub mod synth;

use std::fmt;
use std::ops::Range;

pub use error::{alert_name, HelloError};
pub use ja4::Ja4;

use crate::name::ServerName;

/// TLS record header: content type, legacy version, length (RFC 8446 §5.1).
const RECORD_HEADER_LEN: usize = 5;
/// Handshake header: message type and a 24-bit length (RFC 8446 §4).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// Largest plaintext record (RFC 8446 §5.1).
const MAX_RECORD_LEN: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;

/// Most extensions accepted in one hello. Browsers send about 20 (GREASE included).
pub const MAX_EXTENSIONS: usize = 64;
/// Most ALPN protocols accepted in one hello. Browsers send 2 or 3.
pub const MAX_ALPN_PROTOCOLS: usize = 32;

/// What one call to [`Peeker::feed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The hello is not complete yet; call again when more bytes arrive.
    NeedMore,
    /// A complete, well-formed hello.
    Hello(ClientHello),
    /// Not a hello that can be routed; close the connection (with [`HelloError::alert`]).
    Reject(HelloError),
}

/// Incremental ClientHello reader for one connection.
#[derive(Debug)]
pub struct Peeker {
    limit: usize,
    /// Stream offset of the next record header not yet read.
    next_record: usize,
    records: usize,
    /// Where the first record's fragment lies in the stream: while the hello sits in one record
    /// (the usual case) it is parsed in place.
    first_fragment: Range<usize>,
    /// The handshake bytes gathered so far, once a second record is needed.
    gathered: Vec<u8>,
}

impl Peeker {
    /// A peeker that refuses hellos needing more than `limit` bytes of stream (record headers
    /// included).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            next_record: 0,
            records: 0,
            first_fragment: 0..0,
            gathered: Vec::new(),
        }
    }

    /// Reads what is new in `stream`, which holds every byte the client has sent so far (so each
    /// call passes a longer or equal slice of the same stream), and says how far the hello got.
    ///
    /// After [`Progress::Hello`] or [`Progress::Reject`] the peeker is spent; the stream bytes
    /// past the hello (early data, say) are the caller's to forward.
    pub fn feed(&mut self, stream: &[u8]) -> Progress {
        loop {
            // Another record is needed; if even a one-byte record would pass the limit, the hello
            // can't complete within it, whatever comes next.
            if self.next_record + RECORD_HEADER_LEN + 1 > self.limit {
                return Progress::Reject(HelloError::TooLarge { limit: self.limit });
            }
            let rest = stream.get(self.next_record..).unwrap_or_default();
            if let Err(error) = check_record_start(rest, self.records == 0) {
                return Progress::Reject(error);
            }
            let Some(header) = rest.first_chunk::<RECORD_HEADER_LEN>() else {
                return Progress::NeedMore;
            };
            let length = u16::from_be_bytes([header[3], header[4]]);
            if usize::from(length) > MAX_RECORD_LEN {
                return Progress::Reject(HelloError::RecordOverflow(length));
            }
            if length == 0 {
                return Progress::Reject(HelloError::EmptyRecord);
            }
            let record_end = self.next_record + RECORD_HEADER_LEN + usize::from(length);
            if record_end > self.limit {
                return Progress::Reject(HelloError::TooLarge { limit: self.limit });
            }
            if stream.len() < record_end {
                return Progress::NeedMore;
            }
            let fragment = self.next_record + RECORD_HEADER_LEN..record_end;
            self.next_record = record_end;
            self.records += 1;
            match self.records {
                1 => self.first_fragment = fragment,
                2 => {
                    self.gathered
                        .extend_from_slice(&stream[self.first_fragment.clone()]);
                    self.gathered.extend_from_slice(&stream[fragment]);
                }
                _ => self.gathered.extend_from_slice(&stream[fragment]),
            }
            let handshake = if self.records == 1 {
                &stream[self.first_fragment.clone()]
            } else {
                &self.gathered[..]
            };
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Progress::Reject(HelloError::NotClientHello(handshake[0]));
            }
            let Some(header) = handshake.first_chunk::<HANDSHAKE_HEADER_LEN>() else {
                continue;
            };
            let message_len = HANDSHAKE_HEADER_LEN
                + u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
            // Each further record costs a header too, so this bound is never too strict.
            if message_len > self.limit {
                return Progress::Reject(HelloError::TooLarge { limit: self.limit });
            }
            if handshake.len() >= message_len {
                let wire_len = self.next_record;
                return match parse::client_hello(&handshake[..message_len]) {
                    Ok(mut hello) => {
                        hello.records = self.records;
                        hello.wire_len = wire_len;
                        Progress::Hello(hello)
                    }
                    Err(error) => Progress::Reject(error),
                };
            }
        }
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

/// What the peeker read from a complete ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The host name from server_name (RFC 6066 §3), normalised; `None` without the extension.
    pub server_name: Option<ServerName>,
    /// The protocols offered in application_layer_protocol_negotiation (RFC 7301), in order.
    pub alpn: Alpn,
    /// `legacy_version` from the hello body.
    pub legacy_version: u16,
    /// supported_versions (RFC 8446 §4.2.1), in order, GREASE included.
    pub supported_versions: Vec<u16>,
    /// Cipher suites, in order, GREASE included.
    pub cipher_suites: Vec<u16>,
    /// Extension types, in order, GREASE included.
    pub extensions: Vec<u16>,
    /// supported_groups (RFC 8446 §4.2.7), in order.
    pub supported_groups: Vec<u16>,
    /// signature_algorithms (RFC 8446 §4.2.3), in order.
    pub signature_algorithms: Vec<u16>,
    /// Bytes of the handshake message, its 4-byte header included.
    pub message_len: usize,
    /// Records the message arrived in.
    pub records: usize,
    /// Bytes of stream those records took, headers included.
    pub wire_len: usize,
}

/// The ALPN protocol list as it was on the wire (each protocol preceded by its length), so that
/// keeping it costs one allocation however many protocols there are.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Alpn(Box<[u8]>);

impl Alpn {
    /// Wraps a protocol_name_list body that [`parse`] has already checked.
    fn from_checked(list: &[u8]) -> Self {
        Self(list.into())
    }

    /// An offer made of these protocols, in order; `None` if one is empty or over 255 bytes.
    pub fn from_protocols<P: AsRef<[u8]>>(protocols: &[P]) -> Option<Self> {
        let mut list = Vec::new();
        for protocol in protocols {
            let protocol = protocol.as_ref();
            list.push(u8::try_from(protocol.len()).ok().filter(|&len| len > 0)?);
            list.extend_from_slice(protocol);
        }
        Some(Self(list.into()))
    }

    /// The offered protocols, in the client's order of preference.
    pub fn iter(&self) -> AlpnIter<'_> {
        AlpnIter(&self.0)
    }

    /// Whether the client offered no ALPN at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first protocol offered, if any.
    pub fn first(&self) -> Option<&[u8]> {
        self.iter().next()
    }
}

impl fmt::Debug for Alpn {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// Shown as the protocols joined by commas (`h2,http/1.1`), bytes outside printable ASCII
/// escaped, for logs and `peek`.
impl fmt::Display for Alpn {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, protocol) in self.iter().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{}", protocol.escape_ascii())?;
        }
        Ok(())
    }
}

/// Iterator over [`Alpn`] protocols.
#[derive(Debug, Clone)]
pub struct AlpnIter<'a>(&'a [u8]);

impl<'a> Iterator for AlpnIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.0.split_first()?;
        let (protocol, rest) = rest.split_at_checked(usize::from(len))?;
        self.0 = rest;
        Some(protocol)
    }
}

#[cfg(test)]
mod tests;
