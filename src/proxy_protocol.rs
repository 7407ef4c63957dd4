//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): decoding the header a
//! trusted load balancer puts in front of a connection, and encoding the one sniroute puts in
//! front of what it forwards to a backend.
//!
//! Pure: no I/O, no tokio. [`decode`] takes the bytes received so far and says "need more",
//! "here is the header and its length" or "malformed", never reading past the header, so the
//! bytes after it (the ClientHello) stay where they are.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
const V2_HEADER: usize = 16;
/// PP2_TYPE_ALPN and PP2_TYPE_AUTHORITY.
const TLV_ALPN: u8 = 0x01;
const TLV_AUTHORITY: u8 = 0x02;
const TLV_SSL: u8 = 0x20;
const TLV_SSL_VERSION: u8 = 0x21;
const TLV_SSL_CN: u8 = 0x22;
const TLV_SSL_CIPHER: u8 = 0x23;
/// PP2_TYPE_SSL client flags: the connection used TLS; a client certificate was presented on
/// this connection; and on its session.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// A PROXY protocol version, as a route's `proxy_protocol` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text format.
    V1,
    /// The binary format, which also carries TLVs.
    V2,
}

/// The addresses a header carries: the client's, and the one it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The original client.
    pub source: SocketAddr,
    /// Where the client connected.
    pub destination: SocketAddr,
}

/// A complete header at the start of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The addresses; `None` for a v2 LOCAL command (a health check) or a v1 `UNKNOWN` or an
    /// address family sniroute doesn't route (UDP, UNIX): the connection's own addresses apply.
    pub addresses: Option<Addresses>,
    /// Bytes the header takes.
    pub len: usize,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Neither a v1 nor a v2 signature.
    #[error("no proxy protocol header")]
    Missing,
    /// A v1 header longer than 107 bytes.
    #[error("proxy protocol v1 header over 107 bytes")]
    TooLong,
    /// A field that doesn't parse.
    #[error("malformed proxy protocol header: {0}")]
    Malformed(&'static str),
}

/// Reads the header at the start of `input` (all bytes received so far): `Ok(None)` until it is
/// complete.
///
/// # Errors
/// [`ProxyHeaderError`] as soon as the bytes so far can't start a valid header.
pub fn decode(input: &[u8]) -> Result<Option<Header>, ProxyHeaderError> {
    let signature_v1 = b"PROXY ";
    if input.len() < V2_SIGNATURE.len() && !signature_v1.starts_with(&input[..input.len().min(6)]) {
        // Could still be a v2 signature.
        if !V2_SIGNATURE.starts_with(input) {
            return Err(ProxyHeaderError::Missing);
        }
        return Ok(None);
    }
    if input.starts_with(&V2_SIGNATURE) {
        return decode_v2(input);
    }
    if signature_v1.starts_with(&input[..input.len().min(6)]) {
        return decode_v1(input);
    }
    Err(ProxyHeaderError::Missing)
}

fn decode_v1(input: &[u8]) -> Result<Option<Header>, ProxyHeaderError> {
    let Some(end) = input
        .windows(2)
        .take(V1_MAX - 1)
        .position(|pair| pair == b"\r\n")
    else {
        return if input.len() >= V1_MAX {
            Err(ProxyHeaderError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line =
        std::str::from_utf8(&input[..end]).map_err(|_| ProxyHeaderError::Malformed("v1 text"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let addresses = match fields.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut field = || {
                fields
                    .next()
                    .ok_or(ProxyHeaderError::Malformed("v1 fields"))
            };
            let (source, destination) = (field()?, field()?);
            let (source_port, destination_port) = (field()?, field()?);
            let ip = |text: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip: IpAddr = text
                    .parse()
                    .map_err(|_| ProxyHeaderError::Malformed("v1 address"))?;
                if ip.is_ipv4() != (family == "TCP4") {
                    return Err(ProxyHeaderError::Malformed("v1 address family"));
                }
                Ok(ip)
            };
            let port = |text: &str| -> Result<u16, ProxyHeaderError> {
                if text.is_empty()
                    || !text.bytes().all(|b| b.is_ascii_digit())
                    || (text.len() > 1 && text.starts_with('0'))
                {
                    return Err(ProxyHeaderError::Malformed("v1 port"));
                }
                text.parse()
                    .map_err(|_| ProxyHeaderError::Malformed("v1 port"))
            };
            let addresses = Addresses {
                source: SocketAddr::new(ip(source)?, port(source_port)?),
                destination: SocketAddr::new(ip(destination)?, port(destination_port)?),
            };
            if fields.next().is_some() {
                return Err(ProxyHeaderError::Malformed("v1 fields"));
            }
            Some(addresses)
        }
        _ => return Err(ProxyHeaderError::Malformed("v1 protocol")),
    };
    Ok(Some(Header {
        addresses,
        len: end + 2,
    }))
}

fn decode_v2(input: &[u8]) -> Result<Option<Header>, ProxyHeaderError> {
    let Some(fixed) = input.first_chunk::<V2_HEADER>() else {
        return Ok(None);
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version"));
    }
    let len = V2_HEADER + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let Some(block) = input.get(V2_HEADER..len) else {
        return Ok(None);
    };
    let addresses = match command {
        0x0 => None,
        0x1 => match fixed[13] {
            0x11 => {
                let a = block
                    .first_chunk::<12>()
                    .ok_or(ProxyHeaderError::Malformed("v2 address length"))?;
                Some(Addresses {
                    source: SocketAddr::from((
                        [a[0], a[1], a[2], a[3]],
                        u16::from_be_bytes([a[8], a[9]]),
                    )),
                    destination: SocketAddr::from((
                        [a[4], a[5], a[6], a[7]],
                        u16::from_be_bytes([a[10], a[11]]),
                    )),
                })
            }
            0x21 => {
                let a = block
                    .first_chunk::<36>()
                    .ok_or(ProxyHeaderError::Malformed("v2 address length"))?;
                let ip = |bytes: &[u8]| {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(bytes);
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                Some(Addresses {
                    source: SocketAddr::new(ip(&a[0..16]), u16::from_be_bytes([a[32], a[33]])),
                    destination: SocketAddr::new(
                        ip(&a[16..32]),
                        u16::from_be_bytes([a[34], a[35]]),
                    ),
                })
            }
            // UNSPEC, UDP, UNIX: nothing to route by; the connection's own addresses apply.
            _ => None,
        },
        _ => return Err(ProxyHeaderError::Malformed("v2 command")),
    };
    Ok(Some(Header { addresses, len }))
}

/// What a v2 header sent to a backend carries besides the addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tlvs<'a> {
    /// PP2_TYPE_AUTHORITY: the normalised server name.
    pub authority: Option<&'a str>,
    /// PP2_TYPE_ALPN: the first protocol the client offered (passthrough) or the one negotiated
    /// (terminate).
    pub alpn: Option<&'a [u8]>,
    /// PP2_TYPE_SSL: the client's TLS, on terminate routes.
    pub ssl: Option<Ssl<'a>>,
}

/// PP2_TYPE_SSL's contents: how the client's TLS went, when sniroute terminated it.
#[derive(Debug, Clone, Copy)]
pub struct Ssl<'a> {
    /// PP2_SUBTYPE_SSL_VERSION: `TLSv1.3` or `TLSv1.2`.
    pub version: &'a str,
    /// PP2_SUBTYPE_SSL_CIPHER: the cipher suite's IANA name.
    pub cipher: &'a str,
    /// PP2_SUBTYPE_SSL_CN: the verified client certificate's subject common name. `Some("")`
    /// for a verified certificate without one; `None`: no client certificate.
    pub client_cn: Option<&'a str>,
}

impl Ssl<'_> {
    /// The TLV's value: client flags, verify result (0: verified, the only kind sniroute lets
    /// through), then the sub-TLVs.
    fn encode(&self, out: &mut Vec<u8>) {
        let mut client = PP2_CLIENT_SSL;
        if self.client_cn.is_some() {
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
        }
        out.push(client);
        out.extend_from_slice(&0u32.to_be_bytes());
        tlv(out, TLV_SSL_VERSION, self.version.as_bytes());
        tlv(out, TLV_SSL_CIPHER, self.cipher.as_bytes());
        if let Some(name) = self.client_cn.filter(|name| !name.is_empty()) {
            tlv(out, TLV_SSL_CN, name.as_bytes());
        }
    }
}

/// Appends one type-length-value; a value too long for the length field is left out (nothing
/// sniroute sends comes near 64 KiB: names are ≤ 255 bytes, a certificate's CN ≤ 64).
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    if let Ok(len) = u16::try_from(value.len()) {
        out.push(kind);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value);
    }
}

/// Appends a header for `addresses` to `out`; v2 also carries `tlvs`.
pub fn encode(version: Version, addresses: Addresses, tlvs: Tlvs<'_>, out: &mut Vec<u8>) {
    let Addresses {
        source,
        destination,
    } = addresses;
    match version {
        Version::V1 => {
            let line = match (source, destination) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    format!(
                        "PROXY TCP4 {} {} {} {}\r\n",
                        s.ip(),
                        d.ip(),
                        s.port(),
                        d.port()
                    )
                }
                _ => {
                    let (s, d) = (v6(source.ip()), v6(destination.ip()));
                    format!(
                        "PROXY TCP6 {s} {d} {} {}\r\n",
                        source.port(),
                        destination.port()
                    )
                }
            };
            out.extend_from_slice(line.as_bytes());
        }
        Version::V2 => {
            let mut block = Vec::with_capacity(36 + 64);
            let family = match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    block.extend_from_slice(&s.octets());
                    block.extend_from_slice(&d.octets());
                    0x11
                }
                (s, d) => {
                    block.extend_from_slice(&v6(s).octets());
                    block.extend_from_slice(&v6(d).octets());
                    0x21
                }
            };
            block.extend_from_slice(&source.port().to_be_bytes());
            block.extend_from_slice(&destination.port().to_be_bytes());
            if let Some(alpn) = tlvs.alpn {
                tlv(&mut block, TLV_ALPN, alpn);
            }
            if let Some(authority) = tlvs.authority {
                tlv(&mut block, TLV_AUTHORITY, authority.as_bytes());
            }
            if let Some(ssl) = tlvs.ssl {
                let mut value = Vec::with_capacity(64);
                ssl.encode(&mut value);
                tlv(&mut block, TLV_SSL, &value);
            }
            out.extend_from_slice(&V2_SIGNATURE);
            out.extend_from_slice(&[0x21, family]);
            out.extend_from_slice(&(block.len() as u16).to_be_bytes());
            out.extend_from_slice(&block);
        }
    }
}

/// An IPv4 address as IPv4-mapped IPv6, for headers whose two addresses differ in family.
fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// An address range such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix` (a bare address is a /32 or /128).
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = address.parse().map_err(|_| {
            format!(
                "expected an address range like 10.0.0.0/8, found \"{}\"",
                text.escape_debug()
            )
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix.parse().ok().filter(|&p| p <= max).ok_or_else(|| {
                format!(
                    "expected a prefix length of 0 to {max}, found \"{}\"",
                    prefix.escape_debug()
                )
            })?
        };
        Ok(Self { network, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(source: &str, destination: &str) -> Addresses {
        Addresses {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn v1_headers_encode_and_decode() {
        let four = addresses("203.0.113.7:4242", "127.0.0.1:8443");
        let mut out = Vec::new();
        encode(Version::V1, four, Tlvs::default(), &mut out);
        assert_eq!(out, b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 8443\r\n");
        out.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            decode(&out),
            Ok(Some(Header {
                addresses: Some(four),
                len: 44
            }))
        );
        let mixed = addresses("[2001:db8::1]:1", "127.0.0.1:2");
        let mut out = Vec::new();
        encode(Version::V1, mixed, Tlvs::default(), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 1 2\r\n");
        assert_eq!(
            decode(b"PROXY UNKNOWN whatever\r\nrest"),
            Ok(Some(Header {
                addresses: None,
                len: 24
            }))
        );
    }

    #[test]
    fn v2_headers_carry_addresses_and_tlvs() {
        let four = addresses("203.0.113.7:4242", "127.0.0.1:8443");
        let mut out = Vec::new();
        encode(
            Version::V2,
            four,
            Tlvs {
                authority: Some("app.test"),
                alpn: Some(b"h2"),
                ssl: None,
            },
            &mut out,
        );
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12 + 5 + 11]);
        expected.extend_from_slice(&[203, 0, 113, 7, 127, 0, 0, 1, 0x10, 0x92, 0x20, 0xfb]);
        expected.extend_from_slice(&[1, 0, 2, b'h', b'2', 2, 0, 8]);
        expected.extend_from_slice(b"app.test");
        assert_eq!(out, expected);
        assert_eq!(
            decode(&out),
            Ok(Some(Header {
                addresses: Some(four),
                len: out.len()
            }))
        );
        let six = addresses("[2001:db8::1]:1", "[::1]:2");
        let mut out = Vec::new();
        encode(Version::V2, six, Tlvs::default(), &mut out);
        assert_eq!(
            decode(&out),
            Ok(Some(Header {
                addresses: Some(six),
                len: 52
            }))
        );
    }

    #[test]
    fn a_terminated_connection_carries_its_tls_and_client_certificate_name() {
        let mut out = Vec::new();
        let ssl = Ssl {
            version: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            client_cn: Some("alice"),
        };
        let tlvs = Tlvs {
            ssl: Some(ssl),
            ..Tlvs::default()
        };
        encode(
            Version::V2,
            addresses("10.0.0.1:1", "10.0.0.2:2"),
            tlvs,
            &mut out,
        );
        let mut expected = vec![TLV_SSL, 0, 1 + 4 + 10 + 27 + 8, 0x07, 0, 0, 0, 0];
        expected.extend_from_slice(&[TLV_SSL_VERSION, 0, 7]);
        expected.extend_from_slice(b"TLSv1.3");
        expected.extend_from_slice(&[TLV_SSL_CIPHER, 0, 24]);
        expected.extend_from_slice(b"TLS13_AES_128_GCM_SHA256");
        expected.extend_from_slice(&[TLV_SSL_CN, 0, 5]);
        expected.extend_from_slice(b"alice");
        assert!(out.ends_with(&expected));
        assert_eq!(out.len(), 16 + 12 + expected.len());
    }

    #[test]
    fn partial_headers_need_more_and_bad_ones_are_refused() {
        let mut v2 = Vec::new();
        encode(
            Version::V2,
            addresses("10.0.0.1:1", "10.0.0.2:2"),
            Tlvs::default(),
            &mut v2,
        );
        for cut in 0..v2.len() {
            assert_eq!(decode(&v2[..cut]), Ok(None), "v2 cut at {cut}");
        }
        let v1 = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n";
        for cut in 0..v1.len() {
            assert_eq!(decode(&v1[..cut]), Ok(None), "v1 cut at {cut}");
        }
        assert_eq!(decode(b"\x16\x03\x01"), Err(ProxyHeaderError::Missing));
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::Missing)
        );
        assert_eq!(decode(&[b'A'; 200]), Err(ProxyHeaderError::Missing));
        assert_eq!(
            decode(format!("PROXY TCP4 {}", "1".repeat(120)).as_bytes()),
            Err(ProxyHeaderError::TooLong)
        );
        for bad in [
            &b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n"[..],
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2 3\r\n",
            b"PROXY TCP4 ::1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 01 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 70000 2\r\n",
            b"PROXY UDP4 10.0.0.1 10.0.0.2 1 2\r\n",
        ] {
            assert!(
                matches!(decode(bad), Err(ProxyHeaderError::Malformed(_))),
                "{}",
                bad.escape_ascii()
            );
        }
        let mut bad_version = v2.clone();
        bad_version[12] = 0x11;
        assert_eq!(
            decode(&bad_version),
            Err(ProxyHeaderError::Malformed("v2 version"))
        );
        let mut short_block = v2.clone();
        short_block[15] = 4;
        assert_eq!(
            decode(&short_block),
            Err(ProxyHeaderError::Malformed("v2 address length"))
        );
    }

    #[test]
    fn a_v2_local_command_carries_no_addresses() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            decode(&local),
            Ok(Some(Header {
                addresses: None,
                len: 16
            }))
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_hold_the_decoder_to_its_oracle(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            crate::fuzzing::proxy_protocol(&data);
        }
    }

    #[test]
    fn headers_we_encode_pass_the_fuzz_oracle() {
        for version in [Version::V1, Version::V2] {
            for (source, destination) in [
                ("203.0.113.7:4242", "127.0.0.1:8443"),
                ("[2001:db8::1]:1", "127.0.0.1:2"),
            ] {
                let mut out = Vec::new();
                encode(
                    version,
                    addresses(source, destination),
                    Tlvs {
                        authority: Some("a.test"),
                        alpn: Some(b"h2"),
                        ssl: Some(Ssl {
                            version: "TLSv1.3",
                            cipher: "TLS13_AES_128_GCM_SHA256",
                            client_cn: Some("alice"),
                        }),
                    },
                    &mut out,
                );
                crate::fuzzing::proxy_protocol(&out);
            }
        }
    }

    #[test]
    fn cidrs_match_their_range() {
        let range = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(range.contains("10.1.2.3".parse().unwrap()));
        assert!(range.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!range.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("192.0.2.1".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8::7".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(!Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten/8").is_err());
    }
}
