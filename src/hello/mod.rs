//! The ClientHello peeker, in layers: the TLS record layer (`records.rs`) hands each record's
//! fragment to the handshake layer (`handshake.rs`, an assembler fed `(offset, bytes)` that QUIC's
//! CRYPTO frames will feed too), whose complete message goes to the ClientHello parser
//! (`parse.rs`, tls-parser underneath); `ja4.rs` fingerprints the result, the transport a
//! parameter. Feed the peeker the bytes a client has sent so far and it answers "need more",
//! "here is the hello" or "reject".
//!
//! Pure: no I/O, no tokio, no clock (the caller owns the deadline). It reassembles the handshake
//! message across any TCP segmentation and across several TLS records (RFC 8446 §5.1 lets a
//! handshake message span records), refuses what is not a TLS handshake from the first bytes of
//! the record header, and never looks past `limit` bytes. It does not copy the stream while the
//! hello sits in one record (the usual case): the caller keeps the bytes (to forward them
//! unchanged) and passes the whole stream received so far on every call.

mod error;
mod handshake;
mod ja4;
mod parse;
mod records;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod synth;

use std::fmt;

pub use error::{alert_name, HelloError};
pub use handshake::HandshakeAssembler;
pub use ja4::{Ja4, Transport};
pub use parse::Ech;
use records::RecordReader;

use crate::name::ServerName;

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

/// Incremental ClientHello reader for one TCP connection.
///
/// While the hello arrives it keeps only a few counters: the bytes stay in the caller's stream.
/// A hello in one record (the usual case) is parsed in place; one spread over several is
/// gathered once, when its last record is in, through the [`HandshakeAssembler`], and that copy
/// is dropped as soon as it is parsed. So a stalled hello costs its stream bytes and nothing else.
#[derive(Debug)]
pub struct Peeker {
    limit: usize,
    records: RecordReader,
    /// The handshake header's bytes seen so far (a header may span records).
    header: [u8; handshake::HANDSHAKE_HEADER_LEN],
    header_len: usize,
    /// Handshake bytes in the records read so far.
    gathered: usize,
    /// The message's length, header included, once its header is in.
    message_len: Option<usize>,
}

impl Peeker {
    /// A peeker that refuses hellos needing more than `limit` bytes of stream (record headers
    /// included).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            records: RecordReader::new(limit),
            header: [0; handshake::HANDSHAKE_HEADER_LEN],
            header_len: 0,
            gathered: 0,
            message_len: None,
        }
    }

    /// Reads what is new in `stream`, which holds every byte the client has sent so far (so each
    /// call passes a longer or equal slice of the same stream), and says how far the hello got.
    ///
    /// After [`Progress::Hello`] or [`Progress::Reject`] the peeker is spent; the stream bytes
    /// past the hello (early data, say) are the caller's to forward.
    pub fn feed(&mut self, stream: &[u8]) -> Progress {
        match self.read(stream) {
            Ok(Some(hello)) => Progress::Hello(hello),
            Ok(None) => Progress::NeedMore,
            Err(error) => Progress::Reject(error),
        }
    }

    fn read(&mut self, stream: &[u8]) -> Result<Option<ClientHello>, HelloError> {
        while let Some(fragment) = self.records.next(stream)? {
            let fragment = &stream[fragment];
            if self.header_len < self.header.len() {
                let take = (self.header.len() - self.header_len).min(fragment.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&fragment[..take]);
                self.header_len += take;
                // Each further record costs a header too, so this bound is never too strict.
                self.message_len =
                    handshake::message_len(&self.header[..self.header_len], self.limit)?;
            }
            self.gathered += fragment.len();
            let Some(len) = self.message_len.filter(|&len| self.gathered >= len) else {
                continue;
            };
            let mut hello = if self.records.count() == 1 {
                parse::client_hello(&fragment[..len])?
            } else {
                let assembler = gather(stream, self.limit, len)?;
                let message = assembler
                    .message()?
                    .ok_or(HelloError::Malformed("handshake reassembly"))?;
                parse::client_hello(message)?
            };
            hello.records = self.records.count();
            hello.wire_len = self.records.consumed();
            return Ok(Some(hello));
        }
        Ok(None)
    }
}

/// Parses one whole ClientHello handshake message (its 4-byte header included), as a QUIC
/// CRYPTO stream carries it: the same checks as a hello read from TLS records.
///
/// # Errors
/// The hello is refused, as [`Peeker::feed`] would.
pub fn parse_message(message: &[u8]) -> Result<ClientHello, HelloError> {
    parse::client_hello(message)
}

/// The `len` bytes of handshake message carried by the records at the start of `stream`, which
/// have all arrived (and passed the record checks once already), gathered in an assembler.
fn gather(stream: &[u8], limit: usize, len: usize) -> Result<HandshakeAssembler, HelloError> {
    let mut assembler = HandshakeAssembler::new(len);
    let mut records = RecordReader::new(limit);
    let mut offset = 0;
    while offset < len {
        let Some(fragment) = records.next(stream)? else {
            break;
        };
        let fragment = &stream[fragment];
        let piece = &fragment[..fragment.len().min(len - offset)];
        // Records carry the handshake stream in order, end to end.
        assembler.add(offset, piece)?;
        offset += piece.len();
    }
    Ok(assembler)
}

/// What the peeker read from a complete ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The host name from server_name (RFC 6066 §3), normalised; `None` without the extension.
    pub server_name: Option<ServerName>,
    /// The protocols offered in application_layer_protocol_negotiation (RFC 7301), in order.
    pub alpn: Alpn,
    /// Whether the hello carries an encrypted_client_hello extension, and which kind.
    pub ech: Ech,
    /// `legacy_version` from the hello body.
    pub legacy_version: u16,
    /// The first 8 bytes of the hello's random (RFC 8446 §4.1.2: 32 bytes from a secure
    /// random source, so unique per connection): how the proxy recognises its own replayed
    /// hello coming back to it through a routing loop.
    pub random_prefix: u64,
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
