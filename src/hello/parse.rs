//! tls-parser glue: one complete ClientHello handshake message in, a [`ClientHello`] out.
//!
//! tls-parser decodes the hello body; the extensions routing depends on (server_name, ALPN) are
//! decoded here, strictly, with `tls_parser::nom` (tls-parser's own decoders skip trailing bytes
//! in those lists, and a lenient reading of the name is how a proxy and a backend come to
//! disagree about it). Every length must add up exactly: a hello whose extension block doesn't
//! parse is refused, never taken for a hello without extensions.

use tls_parser::nom::multi::length_data;
use tls_parser::nom::number::complete::{be_u16, be_u8};
use tls_parser::nom::IResult;
use tls_parser::parse_tls_handshake_client_hello;

use super::{Alpn, ClientHello, HelloError};
use crate::name::ServerName;

const EXTENSION_SERVER_NAME: u16 = 0;
const EXTENSION_SUPPORTED_GROUPS: u16 = 10;
const EXTENSION_SIGNATURE_ALGORITHMS: u16 = 13;
const EXTENSION_ALPN: u16 = 16;
const EXTENSION_SUPPORTED_VERSIONS: u16 = 43;
/// encrypted_client_hello (draft-ietf-tls-esni, RFC 9849 once published).
const EXTENSION_ECH: u16 = 0xfe0d;
const ECH_OUTER: u8 = 0;
const ECH_INNER: u8 = 1;

/// What a hello says about Encrypted Client Hello. sniroute holds no ECH keys: it routes an
/// outer hello on its outer (public) name, as any client-facing server without the keys must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ech {
    /// No encrypted_client_hello extension.
    #[default]
    None,
    /// An outer ClientHello: the real name is encrypted inside; the SNI is the public name.
    Outer,
}

impl Ech {
    /// The access log's `ech` field: `outer` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Outer => "outer",
        }
    }
}
const SERVER_NAME_TYPE_HOST_NAME: u8 = 0;

/// Parses `message`: a whole handshake message (4-byte header included) of type ClientHello.
pub(super) fn client_hello(message: &[u8]) -> Result<ClientHello, HelloError> {
    let body = message.get(4..).unwrap_or_default();
    let (rest, contents) = parse_tls_handshake_client_hello(body)
        .map_err(|_| HelloError::Malformed("client hello body"))?;
    if !rest.is_empty() {
        // tls-parser reads the extension block as optional: a block whose length overruns the
        // message comes back as "no extensions" plus leftover bytes.
        return Err(HelloError::Malformed("extensions length"));
    }
    let mut hello = ClientHello {
        legacy_version: contents.version.0,
        random_prefix: contents
            .random
            .first_chunk::<8>()
            .map_or(0, |prefix| u64::from_be_bytes(*prefix)),
        cipher_suites: contents.ciphers.iter().map(|suite| suite.0).collect(),
        message_len: message.len(),
        ..ClientHello::default()
    };
    let mut extensions = contents.ext.unwrap_or_default();
    let mut seen_server_name = false;
    let mut seen_alpn = false;
    while !extensions.is_empty() {
        let (rest, (extension_type, data)) =
            extension(extensions).map_err(|_| HelloError::Malformed("extension header"))?;
        extensions = rest;
        hello.extensions.push(extension_type);
        match extension_type {
            EXTENSION_SERVER_NAME => {
                if std::mem::replace(&mut seen_server_name, true) {
                    return Err(HelloError::DuplicateExtension(extension_type));
                }
                hello.server_name = server_name(data)?;
            }
            EXTENSION_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Err(HelloError::DuplicateExtension(extension_type));
                }
                hello.alpn = alpn(data)?;
            }
            EXTENSION_ECH => {
                if hello.ech != Ech::None {
                    return Err(HelloError::DuplicateExtension(extension_type));
                }
                hello.ech = ech(data)?;
            }
            EXTENSION_SUPPORTED_VERSIONS => {
                hello.supported_versions = u16_list(data, ListLength::U8, "supported_versions")?;
            }
            EXTENSION_SUPPORTED_GROUPS => {
                hello.supported_groups = u16_list(data, ListLength::U16, "supported_groups")?;
            }
            EXTENSION_SIGNATURE_ALGORITHMS => {
                hello.signature_algorithms =
                    u16_list(data, ListLength::U16, "signature_algorithms")?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn extension(input: &[u8]) -> IResult<&[u8], (u16, &[u8])> {
    let (input, extension_type) = be_u16(input)?;
    let (input, data) = length_data(be_u16)(input)?;
    Ok((input, (extension_type, data)))
}

/// The body of a 16-bit-length-prefixed vector that must fill `data` exactly.
fn whole_vector<'a>(data: &'a [u8], what: &'static str) -> Result<&'a [u8], HelloError> {
    let parsed: IResult<&[u8], &[u8]> = length_data(be_u16)(data);
    match parsed {
        Ok(([], list)) => Ok(list),
        _ => Err(HelloError::Malformed(what)),
    }
}

/// server_name (RFC 6066 §3): exactly one host_name, a DNS name; other name types are skipped.
fn server_name(data: &[u8]) -> Result<Option<ServerName>, HelloError> {
    let mut list = whole_vector(data, "server_name length")?;
    if list.is_empty() {
        return Err(HelloError::Malformed("empty server_name list"));
    }
    let mut found = None;
    while !list.is_empty() {
        let (rest, (name_type, name)) =
            name_entry(list).map_err(|_| HelloError::Malformed("server_name entry"))?;
        list = rest;
        if name_type != SERVER_NAME_TYPE_HOST_NAME {
            continue;
        }
        if found.is_some() {
            return Err(HelloError::TwoServerNames);
        }
        found = Some(host_name(name)?);
    }
    Ok(found.flatten())
}

/// One host_name. An IP address is not a host name (RFC 6066 §3), but some clients send one:
/// like rustls, take it as no name at all rather than refuse the hello.
fn host_name(name: &[u8]) -> Result<Option<ServerName>, HelloError> {
    if crate::name::is_ip_literal(name) {
        return Ok(None);
    }
    ServerName::parse(name)
        .map(Some)
        .map_err(HelloError::BadServerName)
}

fn name_entry(input: &[u8]) -> IResult<&[u8], (u8, &[u8])> {
    let (input, name_type) = be_u8(input)?;
    let (input, name) = length_data(be_u16)(input)?;
    Ok((input, (name_type, name)))
}

/// application_layer_protocol_negotiation (RFC 7301 §3.1): one or more non-empty names.
fn alpn(data: &[u8]) -> Result<Alpn, HelloError> {
    let list = whole_vector(data, "alpn length")?;
    if list.is_empty() {
        return Err(HelloError::Malformed("empty alpn list"));
    }
    // However many protocols: the list is kept as one allocation, bounded by the hello's size.
    let mut rest = list;
    while let Some((&len, tail)) = rest.split_first() {
        if len == 0 {
            return Err(HelloError::EmptyAlpnProtocol);
        }
        rest = tail
            .get(usize::from(len)..)
            .ok_or(HelloError::Malformed("alpn protocol length"))?;
    }
    Ok(Alpn::from_checked(list))
}

/// encrypted_client_hello: its first byte says outer (0) or inner (1). An inner hello belongs
/// inside an outer one's encrypted payload and never on the wire in the clear: refused with
/// illegal_parameter, as rustls does.
fn ech(data: &[u8]) -> Result<Ech, HelloError> {
    match data.first() {
        Some(&ECH_OUTER) => Ok(Ech::Outer),
        Some(&ECH_INNER) => Err(HelloError::EchInner),
        _ => Err(HelloError::Malformed("encrypted_client_hello type")),
    }
}

enum ListLength {
    U8,
    U16,
}

/// A vector of u16 values with a one- or two-byte length prefix that fills `data` exactly.
fn u16_list(data: &[u8], prefix: ListLength, what: &'static str) -> Result<Vec<u16>, HelloError> {
    let list = match prefix {
        ListLength::U8 => match data.split_first() {
            Some((&len, list)) if list.len() == usize::from(len) => list,
            _ => return Err(HelloError::Malformed(what)),
        },
        ListLength::U16 => whole_vector(data, what)?,
    };
    if list.len() % 2 != 0 {
        return Err(HelloError::Malformed(what));
    }
    Ok(list
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect())
}
