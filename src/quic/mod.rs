//! QUIC Initial packets, read the way the hello peeker reads TLS records (SPEC "QUIC"): fed a
//! client's datagrams one by one, [`InitialReader`] removes the Initial packets' protection
//! (whose keys come from the client's first Destination Connection ID, public by design),
//! reassembles the CRYPTO frames into the ClientHello in any order, and parses it with the same
//! parser and fail-closed rules as TCP. Nothing after the Initials is decrypted.
//!
//! It also writes the one packet a router sends of its own: [`InitialReader::refusal`], the
//! CONNECTION_CLOSE a server would send a hello it has no route for; and [`packet::long_ids`]
//! reads the connection IDs a flow is found by.
//!
//! Pure: no sockets and no clock. Bounded: the handshake assembler keeps at most its limit of
//! CRYPTO stream and a capped number of gaps; each datagram is read once.
//!
//! ```text
//! packet.rs      long headers, coalesced packets, versions 1 and 2, varints
//! protection.rs  Initial keys (rustls::quic::Keys::initial), header protection, AEAD
//! frames.rs      PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE; nothing else in an Initial
//! ```

pub mod frames;
pub mod packet;
pub mod protection;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod synth;

use crate::hello::{self, ClientHello, HandshakeAssembler, HelloError};
pub use packet::Version;
use packet::{LongPacket, Packet};
use protection::InitialKeys;

/// QUIC's variable-length integer encoding (RFC 9000 §16), always in its shortest form.
pub fn varint(value: u64, out: &mut Vec<u8>) {
    match value {
        0..=0x3f => out.push(value as u8),
        0x40..=0x3fff => out.extend_from_slice(&(value as u16 | 0x4000).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&(value as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// CRYPTO stream bytes the tests and fuzz targets hold for one hello (ngtcp2's limit); a quic
/// listener holds up to `limits.max_client_hello`, the same bound as over TCP.
pub const DEFAULT_CRYPTO_LIMIT: usize = 16 * 1024;
/// The smallest datagram that may carry a client's Initial (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;

/// Why a flow's Initials were refused. Small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuicError {
    /// A version sniroute doesn't read: the client falls back to TCP.
    #[error("unknown QUIC version {0:#010x}")]
    UnknownVersion(u32),
    /// A header or frame that doesn't add up.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// Protection that doesn't come off: not this connection's keys, or tampered with.
    #[error("an Initial packet that doesn't decrypt")]
    Undecryptable,
    /// A frame an Initial packet may not carry (its type), or no frame at all.
    #[error("frame type {0:#x} in an Initial packet")]
    ProtocolViolation(u64),
    /// The client sent CONNECTION_CLOSE.
    #[error("the client closed the connection")]
    ClientClosed,
    /// The reassembled ClientHello was refused.
    #[error("{0}")]
    Hello(#[from] HelloError),
}

/// A connection as its client's first Initial names it.
#[derive(Debug)]
struct Connection {
    version: Version,
    /// The Destination Connection ID the client chose: the Initial keys come from it.
    dcid: Vec<u8>,
    /// The client's Source Connection ID: where an answer is addressed.
    scid: Vec<u8>,
    keys: InitialKeys,
}

/// One flow's Initials, read until its ClientHello is complete.
#[derive(Debug)]
pub struct InitialReader {
    /// The connection as its first Initial names it.
    connection: Option<Connection>,
    assembler: HandshakeAssembler,
    /// Where packets are decrypted; kept, so each datagram reuses it.
    scratch: Vec<u8>,
}

impl InitialReader {
    /// A reader keeping at most `limit` bytes of CRYPTO stream.
    pub fn new(limit: usize) -> Self {
        Self {
            connection: None,
            assembler: HandshakeAssembler::new(limit),
            scratch: Vec::new(),
        }
    }

    /// The version and Destination Connection ID of the flow's first Initial, once seen.
    pub fn connection(&self) -> Option<(Version, &[u8])> {
        self.connection
            .as_ref()
            .map(|connection| (connection.version, &connection.dcid[..]))
    }

    /// The datagram that ends the connection as a server would, once an Initial was read: an
    /// Initial packet with a CONNECTION_CLOSE carrying CRYPTO_ERROR for the TLS `alert` (RFC
    /// 9001 §4.8), protected with the server's Initial keys, far smaller than what the client
    /// sent.
    pub fn refusal(&self, alert: u8, reason: &str) -> Option<Vec<u8>> {
        let connection = self.connection.as_ref()?;
        let mut frame = vec![0x1c];
        varint(0x100 + u64::from(alert), &mut frame);
        varint(0x06, &mut frame); // the frame that carried the hello: CRYPTO
        varint(reason.len() as u64, &mut frame);
        frame.extend_from_slice(reason.as_bytes());
        InitialKeys::for_answering(connection.version, &connection.dcid)
            .seal_initial(
                connection.version,
                &connection.scid,
                &connection.dcid,
                0,
                &frame,
            )
            .ok()
    }

    /// Reads one datagram from the client: `Ok(None)` while the hello is incomplete (a
    /// datagram with no Initial in it changes nothing).
    ///
    /// # Errors
    /// The datagram, one of its Initial packets or the hello is refused; the flow should be
    /// dropped.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<Option<ClientHello>, QuicError> {
        let mut rest = datagram;
        while !rest.is_empty() {
            let (packet, after) = match packet::first(rest)? {
                Packet::Short => break,
                Packet::Long(packet, after) => (packet, after),
            };
            rest = after;
            if packet.initial {
                if datagram.len() < MIN_INITIAL_DATAGRAM {
                    return Err(QuicError::Malformed(
                        "an Initial in a datagram under 1200 bytes",
                    ));
                }
                self.read_initial(&packet)?;
            }
        }
        match self.assembler.message()? {
            Some(message) => {
                let mut hello = hello::parse_message(message)?;
                hello.wire_len = message.len();
                Ok(Some(hello))
            }
            None => Ok(None),
        }
    }

    fn read_initial(&mut self, packet: &LongPacket<'_>) -> Result<(), QuicError> {
        let connection = self.connection.get_or_insert_with(|| Connection {
            version: packet.version,
            dcid: packet.dcid.to_vec(),
            scid: packet.scid.to_vec(),
            keys: InitialKeys::for_reading(packet.version, packet.dcid),
        });
        if connection.version != packet.version || connection.dcid[..] != *packet.dcid {
            return Err(QuicError::Malformed("an Initial of another connection"));
        }
        let (_pn, payload) = connection.keys.open(packet, &mut self.scratch)?;
        let assembler = &mut self.assembler;
        frames::read(payload, |offset, data| {
            assembler.add(offset, data).map_err(QuicError::from)
        })
    }
}

#[cfg(test)]
mod tests;
