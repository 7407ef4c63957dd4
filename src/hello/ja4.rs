//! The JA4 fingerprint of a ClientHello (FoxIO's published definition, `technical_details/JA4.md`
//! in FoxIO-LLC/ja4): `t13d1516h2_8daaf6152771_e5627efa2ab1`. Operators use it to spot bots and
//! scanners without decrypting anything.
//!
//! - a: the transport (`t` for TLS over TCP, `q` for QUIC); the version (highest supported_versions entry, else legacy_version);
//!   `d` with a server_name extension, `i` without; cipher and extension counts (two digits,
//!   GREASE ignored, at most 99); the first and last character of the first ALPN protocol.
//! - b: the first 12 hex digits of the SHA-256 of the sorted cipher suites.
//! - c: the same of the sorted extensions (server_name and ALPN left out), an underscore and
//!   the signature algorithms in their order.

use std::fmt;

use sha2::{Digest, Sha256};

use super::ClientHello;

const EXTENSION_SERVER_NAME: u16 = 0x0000;
const EXTENSION_ALPN: u16 = 0x0010;
const LEN: usize = 36;

/// A JA4 fingerprint: 36 ASCII characters, kept inline (no allocation per connection).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ja4([u8; LEN]);

impl Ja4 {
    /// The fingerprint as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for Ja4 {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl fmt::Debug for Ja4 {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Ja4({self})")
    }
}

/// GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa.
fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

/// What carried the hello: JA4's first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS records over TCP (`t`).
    Tcp,
    /// CRYPTO frames in QUIC Initial packets (`q`).
    Quic,
}

impl ClientHello {
    /// This hello's JA4 fingerprint, as carried by `transport`.
    pub fn ja4(&self, transport: Transport) -> Ja4 {
        let mut out = [b'0'; LEN];
        out[0] = match transport {
            Transport::Tcp => b't',
            Transport::Quic => b'q',
        };
        let version = self
            .supported_versions
            .iter()
            .copied()
            .filter(|&version| !is_grease(version))
            .max()
            .unwrap_or(self.legacy_version);
        out[1..3].copy_from_slice(match version {
            0x0304 => b"13",
            0x0303 => b"12",
            0x0302 => b"11",
            0x0301 => b"10",
            0x0300 => b"s3",
            0x0002 => b"s2",
            0xfeff => b"d1",
            0xfefd => b"d2",
            0xfefc => b"d3",
            _ => b"00",
        });
        out[3] = if self.extensions.contains(&EXTENSION_SERVER_NAME) {
            b'd'
        } else {
            b'i'
        };
        let mut ciphers: Vec<u16> = self
            .cipher_suites
            .iter()
            .copied()
            .filter(|&c| !is_grease(c))
            .collect();
        let mut extensions: Vec<u16> = self
            .extensions
            .iter()
            .copied()
            .filter(|&e| !is_grease(e))
            .collect();
        write_count(&mut out[4..6], ciphers.len());
        write_count(&mut out[6..8], extensions.len());
        out[8..10].copy_from_slice(&alpn_ends(self.alpn.first().unwrap_or_default()));
        out[10] = b'_';
        out[23] = b'_';

        ciphers.sort_unstable();
        if !ciphers.is_empty() {
            let mut hasher = Sha256::new();
            hash_list(&mut hasher, &ciphers);
            write_truncated(&mut out[11..23], hasher);
        }
        extensions.retain(|&e| e != EXTENSION_SERVER_NAME && e != EXTENSION_ALPN);
        extensions.sort_unstable();
        if !extensions.is_empty() {
            let mut hasher = Sha256::new();
            hash_list(&mut hasher, &extensions);
            if !self.signature_algorithms.is_empty() {
                hasher.update(b"_");
                hash_list(&mut hasher, &self.signature_algorithms);
            }
            write_truncated(&mut out[24..36], hasher);
        }
        Ja4(out)
    }
}

fn write_count(out: &mut [u8], count: usize) {
    let count = count.min(99) as u8;
    out[0] = b'0' + count / 10;
    out[1] = b'0' + count % 10;
}

/// First and last character of the first ALPN protocol; their hex digits where either is not
/// alphanumeric; `00` without one.
fn alpn_ends(protocol: &[u8]) -> [u8; 2] {
    let (Some(&first), Some(&last)) = (protocol.first(), protocol.last()) else {
        return *b"00";
    };
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        [first, last]
    } else {
        [hex_digit(first >> 4), hex_digit(last & 0x0f)]
    }
}

fn hex_digit(nibble: u8) -> u8 {
    b"0123456789abcdef"[usize::from(nibble & 0x0f)]
}

/// Feeds `values` to `hasher` as lowercase 4-digit hex, comma-separated.
fn hash_list(hasher: &mut Sha256, values: &[u16]) {
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            hasher.update(b",");
        }
        let bytes = value.to_be_bytes();
        hasher.update([
            hex_digit(bytes[0] >> 4),
            hex_digit(bytes[0]),
            hex_digit(bytes[1] >> 4),
            hex_digit(bytes[1]),
        ]);
    }
}

fn write_truncated(out: &mut [u8], hasher: Sha256) {
    let digest = hasher.finalize();
    for (index, slot) in out.iter_mut().enumerate() {
        let byte = digest[index / 2];
        *slot = hex_digit(if index % 2 == 0 { byte >> 4 } else { byte });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example in FoxIO's JA4 definition.
    fn spec_example() -> ClientHello {
        ClientHello {
            supported_versions: vec![0x0304, 0x0303],
            legacy_version: 0x0303,
            cipher_suites: vec![
                0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
                0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            extensions: vec![
                0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023,
                0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
            ],
            signature_algorithms: vec![
                0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
            ],
            alpn: crate::hello::Alpn::from_protocols(&["h2", "http/1.1"]).unwrap(),
            ..ClientHello::default()
        }
    }

    #[test]
    fn the_published_example_gives_the_published_fingerprint() {
        assert_eq!(
            spec_example().ja4(Transport::Tcp).as_str(),
            "t13d1516h2_8daaf6152771_e5627efa2ab1"
        );
        let mut no_signatures = spec_example();
        no_signatures.signature_algorithms.clear();
        assert_eq!(
            no_signatures.ja4(Transport::Tcp).as_str(),
            "t13d1516h2_8daaf6152771_6d807ffa2a79"
        );
    }

    #[test]
    fn grease_is_ignored_and_empty_lists_hash_to_zeros() {
        let mut greased = spec_example();
        greased.cipher_suites.insert(0, 0x2a2a);
        greased.extensions.insert(3, 0xdada);
        greased.supported_versions.insert(0, 0x7a7a);
        assert_eq!(
            greased.ja4(Transport::Tcp),
            spec_example().ja4(Transport::Tcp)
        );
        let bare = ClientHello {
            legacy_version: 0x0301,
            ..ClientHello::default()
        };
        assert_eq!(
            bare.ja4(Transport::Tcp).as_str(),
            "t10i000000_000000000000_000000000000"
        );
    }

    #[test]
    fn alpn_ends_follow_the_published_rules() {
        assert_eq!(&alpn_ends(b"h2"), b"h2");
        assert_eq!(&alpn_ends(b"http/1.1"), b"h1");
        assert_eq!(&alpn_ends(b"x"), b"xx");
        assert_eq!(&alpn_ends(&[0xab]), b"ab");
        assert_eq!(&alpn_ends(&[0xab, 0xcd]), b"ad");
        assert_eq!(&alpn_ends(&[0x30, 0xab]), b"3b");
        assert_eq!(&alpn_ends(&[0x30, 0x31, 0xab, 0xcd]), b"3d");
        assert_eq!(&alpn_ends(&[0x30, 0xab, 0xcd, 0x31]), b"01");
        assert_eq!(&alpn_ends(b""), b"00");
    }
}
