//! QUIC long headers (RFC 9000 §17.2, RFC 9369 §3.2): enough to find a client's Initial packets
//! in a datagram, which may coalesce several packets (§12.2), and where each one's protected
//! packet number starts.

use super::QuicError;

/// QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
pub const VERSION_2: u32 = 0x6b33_43cf;
/// A connection ID's longest length in versions 1 and 2.
pub const MAX_CID_LEN: usize = 20;

/// The versions sniroute reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// RFC 9000.
    V1,
    /// RFC 9369.
    V2,
}

impl Version {
    /// The version a long header's version field names, if sniroute reads it.
    pub fn of(wire: u32) -> Option<Self> {
        match wire {
            VERSION_1 => Some(Self::V1),
            VERSION_2 => Some(Self::V2),
            _ => None,
        }
    }

    /// The wire value.
    pub fn wire(self) -> u32 {
        match self {
            Self::V1 => VERSION_1,
            Self::V2 => VERSION_2,
        }
    }

    /// The long-header type bits of an Initial packet (v2 renumbered them).
    pub fn initial_type(self) -> u8 {
        match self {
            Self::V1 => 0b00,
            Self::V2 => 0b01,
        }
    }

    /// The long-header type bits of a Retry packet, which has no Length field.
    fn retry_type(self) -> u8 {
        match self {
            Self::V1 => 0b11,
            Self::V2 => 0b00,
        }
    }

    /// rustls' name for it, for the Initial keys.
    pub fn rustls(self) -> rustls::quic::Version {
        match self {
            Self::V1 => rustls::quic::Version::V1,
            Self::V2 => rustls::quic::Version::V2,
        }
    }
}

/// One long-header packet of a datagram, its header parsed up to the packet number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongPacket<'a> {
    /// The version.
    pub version: Version,
    /// Whether it is an Initial packet (others are skipped while routing).
    pub initial: bool,
    /// Destination connection ID.
    pub dcid: &'a [u8],
    /// Source connection ID.
    pub scid: &'a [u8],
    /// Offset of the (protected) packet number in `bytes`.
    pub pn_offset: usize,
    /// The whole packet: header, packet number and protected payload.
    pub bytes: &'a [u8],
}

/// What a datagram starts with.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A long-header packet of a version sniroute reads, and the rest of the datagram.
    Long(LongPacket<'a>, &'a [u8]),
    /// A short-header packet: it runs to the end of the datagram (§12.2).
    Short,
}

/// The first packet of `datagram` (non-empty).
///
/// # Errors
/// A version sniroute doesn't read (Version Negotiation included), a Retry from a client, or a
/// header that doesn't add up.
pub fn first(datagram: &[u8]) -> Result<Packet<'_>, QuicError> {
    let mut reader = Reader::new(datagram);
    let first = reader.byte()?;
    if first & 0x80 == 0 {
        return Ok(Packet::Short);
    }
    let wire = reader.u32()?;
    let version = Version::of(wire).ok_or(QuicError::UnknownVersion(wire))?;
    // The fixed bit is not checked: a client that remembers its server allows it may grease it
    // even in its first Initial (RFC 9287 §3).
    let packet_type = (first >> 4) & 0b11;
    if packet_type == version.retry_type() {
        return Err(QuicError::Malformed("a Retry packet from a client"));
    }
    let dcid = reader.connection_id()?;
    let scid = reader.connection_id()?;
    let initial = packet_type == version.initial_type();
    if initial {
        let token = reader.varint()?;
        reader.skip(token)?;
    }
    let length = reader.varint()?;
    let pn_offset = reader.position();
    let end = pn_offset
        .checked_add(length)
        .filter(|&end| end <= datagram.len())
        .ok_or(QuicError::Malformed("a packet longer than its datagram"))?;
    Ok(Packet::Long(
        LongPacket {
            version,
            initial,
            dcid,
            scid,
            pn_offset,
            bytes: &datagram[..end],
        },
        &datagram[end..],
    ))
}

/// A long-header datagram's Destination and Source Connection IDs, read by the version-independent
/// layout of RFC 8999 §5.1 (any version; a Version Negotiation packet too): how a flow is found
/// again, and how a backend's chosen connection ID is learned. `None` for a short header or a
/// header cut short.
pub fn long_ids(datagram: &[u8]) -> Option<(&[u8], &[u8])> {
    if datagram.first()? & 0x80 == 0 {
        return None;
    }
    let mut reader = Reader::new(datagram.get(5..)?);
    let dcid = reader.connection_id().ok()?;
    let scid = reader.connection_id().ok()?;
    Some((dcid, scid))
}

/// The Source Connection ID a backend chose, from the first packet of its `datagram`: a long
/// header of version 1 or 2 that is not a Retry (whose ID the client drops for the next one);
/// `None` otherwise, a Version Negotiation packet included. The fixed bit is not looked at: an
/// endpoint may grease it once its peer allows (RFC 9287).
pub fn source_id(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    let wire = u32::from_be_bytes(datagram.get(1..5)?.try_into().ok()?);
    let version = Version::of(wire)?;
    if first & 0x80 == 0 || (first >> 4) & 0b11 == version.retry_type() {
        return None;
    }
    long_ids(datagram).map(|(_, scid)| scid)
}

/// Reads QUIC's big-endian fields and variable-length integers (RFC 9000 §16).
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// The next `len` bytes.
    ///
    /// # Errors
    /// Fewer are left.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], QuicError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(QuicError::Malformed("a field runs past its packet"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn skip(&mut self, len: usize) -> Result<(), QuicError> {
        self.take(len).map(|_| ())
    }

    /// One byte.
    ///
    /// # Errors
    /// None is left.
    pub fn byte(&mut self) -> Result<u8, QuicError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, QuicError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn connection_id(&mut self) -> Result<&'a [u8], QuicError> {
        let len = usize::from(self.byte()?);
        if len > MAX_CID_LEN {
            return Err(QuicError::Malformed("a connection ID over 20 bytes"));
        }
        self.take(len)
    }

    /// A variable-length integer, as a `usize` (every value fits on 64-bit targets).
    ///
    /// # Errors
    /// It runs past the end.
    pub fn varint(&mut self) -> Result<usize, QuicError> {
        let first = self.byte()?;
        let len = 1usize << (first >> 6);
        let mut value = u64::from(first & 0x3f);
        for &byte in self.take(len - 1)? {
            value = (value << 8) | u64::from(byte);
        }
        usize::try_from(value).map_err(|_| QuicError::Malformed("a length past memory"))
    }
}
