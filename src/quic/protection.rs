//! Initial packet protection (RFC 9001 §5): keys derived from the client's first Destination
//! Connection ID with rustls' `Keys::initial` (the salt is the version's), header protection
//! removed, payload decrypted. Anyone can do this: the keys are public by design, which is what
//! lets a router read the ClientHello without terminating anything.

use rustls::quic::{HeaderProtectionKey, Keys, PacketKey};
use rustls::Side;

use super::packet::{LongPacket, Version};
use super::QuicError;

/// The AEAD sample header protection takes (AES-128-GCM's, Initial packets' suite).
const SAMPLE_LEN: usize = 16;
/// The longest packet number encoding.
const MAX_PN_LEN: usize = 4;
/// The packet number length [`InitialKeys::seal_initial`] writes.
const INITIAL_PN_LEN: usize = 4;
/// The AEAD tag's length (AES-128-GCM).
pub const TAG_LEN: usize = 16;
/// An Initial header's bytes beside its connection IDs: first byte, version, two ID lengths,
/// an empty token's length, a 2-byte Length and a 4-byte packet number.
pub const INITIAL_OVERHEAD: usize = 1 + 4 + 2 + 1 + 2 + INITIAL_PN_LEN;

/// The keys a client's Initial packets are protected with.
pub struct InitialKeys {
    header: Box<dyn HeaderProtectionKey>,
    packet: Box<dyn PacketKey>,
}

impl std::fmt::Debug for InitialKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("InitialKeys")
    }
}

/// Initial keys of the connection whose client chose `dcid`, on `side`'s view: the server side
/// reads what the client sends (its `remote` keys), the client side writes it (`local`).
fn keys(version: Version, dcid: &[u8], side: Side) -> Keys {
    // The Initial suite is fixed (RFC 9001 §5.2); the provider's AES-128-GCM is there always.
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|suite| Some((suite, suite.quic?)));
    #[allow(clippy::expect_used)] // TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite with QUIC
    let (suite, quic) = suite.expect("a TLS 1.3 suite usable by QUIC");
    Keys::initial(version.rustls(), suite, quic, dcid, side)
}

impl InitialKeys {
    /// The keys that open a client's Initial packets sent to `dcid`.
    pub fn for_reading(version: Version, dcid: &[u8]) -> Self {
        let remote = keys(version, dcid, Side::Server).remote;
        Self {
            header: remote.header,
            packet: remote.packet,
        }
    }

    /// The keys a client protects its Initial packets to `dcid` with (tests and fuzzing).
    pub fn for_writing(version: Version, dcid: &[u8]) -> Self {
        let local = keys(version, dcid, Side::Client).local;
        Self {
            header: local.header,
            packet: local.packet,
        }
    }

    /// The keys a server answers the client that chose `dcid` with: how sniroute writes the
    /// CONNECTION_CLOSE of a flow it can't route.
    pub fn for_answering(version: Version, dcid: &[u8]) -> Self {
        let local = keys(version, dcid, Side::Server).local;
        Self {
            header: local.header,
            packet: local.packet,
        }
    }

    /// One Initial packet from `scid` to `dcid`, packet number `pn` (sent in 4 bytes), around
    /// `payload`, protected with these keys.
    ///
    /// # Errors
    /// A payload too short to sample once encrypted, or over 16 KiB.
    pub fn seal_initial(
        &self,
        version: Version,
        dcid: &[u8],
        scid: &[u8],
        pn: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, QuicError> {
        let length = u16::try_from(INITIAL_PN_LEN + payload.len() + TAG_LEN)
            .ok()
            .filter(|&length| length < 0x4000)
            .ok_or(QuicError::Malformed("an Initial payload over 16 KiB"))?;
        let mut header = vec![0xc0 | (version.initial_type() << 4) | (INITIAL_PN_LEN as u8 - 1)];
        header.extend_from_slice(&version.wire().to_be_bytes());
        for id in [dcid, scid] {
            header.push(id.len() as u8);
            header.extend_from_slice(id);
        }
        header.push(0); // no token
        header.extend_from_slice(&(length | 0x4000).to_be_bytes());
        header.extend_from_slice(&pn.to_be_bytes());
        self.seal(&header, u64::from(pn), INITIAL_PN_LEN, payload)
    }

    /// Removes `packet`'s protection in `buffer`: returns the packet number and the plaintext
    /// payload.
    ///
    /// # Errors
    /// Too short to sample, a payload that doesn't authenticate, or reserved bits set.
    pub fn open<'b>(
        &self,
        packet: &LongPacket<'_>,
        buffer: &'b mut Vec<u8>,
    ) -> Result<(u64, &'b [u8]), QuicError> {
        buffer.clear();
        buffer.extend_from_slice(packet.bytes);
        let pn_offset = packet.pn_offset;
        let sample: [u8; SAMPLE_LEN] = buffer
            .get(pn_offset + MAX_PN_LEN..pn_offset + MAX_PN_LEN + SAMPLE_LEN)
            .and_then(|sample| sample.try_into().ok())
            .ok_or(QuicError::Malformed("a packet too short to sample"))?;
        let (head, rest) = buffer.split_at_mut(pn_offset);
        let number = &mut rest[..MAX_PN_LEN];
        self.header
            .decrypt_in_place(&sample, &mut head[0], number)
            .map_err(|_| QuicError::Undecryptable)?;
        let first = buffer[0];
        let pn_len = usize::from(first & 0x03) + 1;
        let pn = buffer[pn_offset..pn_offset + pn_len]
            .iter()
            .fold(0u64, |pn, &byte| (pn << 8) | u64::from(byte));
        let (header, payload) = buffer.split_at_mut(pn_offset + pn_len);
        let plaintext = self
            .packet
            .decrypt_in_place(pn, header, payload)
            .map_err(|_| QuicError::Undecryptable)?;
        // Checked only once authenticated (RFC 9000 §17.2).
        if first & 0x0c != 0 {
            return Err(QuicError::Malformed("reserved header bits set"));
        }
        Ok((pn, plaintext))
    }

    /// Protects a packet whose unprotected `header` ends with a `pn_len`-byte packet number
    /// `pn`, around `payload`: the packet as sent.
    ///
    /// # Errors
    /// The payload is too short to sample once encrypted.
    pub fn seal(
        &self,
        header: &[u8],
        pn: u64,
        pn_len: usize,
        payload: &[u8],
    ) -> Result<Vec<u8>, QuicError> {
        let mut packet = header.to_vec();
        let mut body = payload.to_vec();
        let tag = self
            .packet
            .encrypt_in_place(pn, header, &mut body)
            .map_err(|_| QuicError::Undecryptable)?;
        packet.extend_from_slice(&body);
        packet.extend_from_slice(tag.as_ref());
        let pn_offset = header.len() - pn_len;
        let sample: [u8; SAMPLE_LEN] = packet
            .get(pn_offset + MAX_PN_LEN..pn_offset + MAX_PN_LEN + SAMPLE_LEN)
            .and_then(|sample| sample.try_into().ok())
            .ok_or(QuicError::Malformed("a packet too short to sample"))?;
        let (head, rest) = packet.split_at_mut(pn_offset);
        self.header
            .encrypt_in_place(&sample, &mut head[0], &mut rest[..pn_len])
            .map_err(|_| QuicError::Undecryptable)?;
        Ok(packet)
    }
}
