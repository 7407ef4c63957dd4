//! The HTTP/1.x request head of a port-80 connection, read the way the hello peeker reads a
//! ClientHello: fed the bytes so far, it answers need-more, a [`Head`], or a [`HeadError`] with
//! the status to send (SPEC "Port 80").
//!
//! Pure: no I/O. The grammar is httparse's (hyper's parser); this module adds what a router
//! must refuse because two readers could understand it differently (RFC 9112): a bare LF, an
//! obs-fold, no Host or two, an absolute-form target whose authority differs from Host,
//! Content-Length beside Transfer-Encoding or given twice differently, a Transfer-Encoding that
//! doesn't end in `chunked`. Only the first request is read: the connection's bytes then go to
//! the backend unchanged, later requests included (as for TLS, one connection goes to one
//! backend).
//!
//! Work is linear in the bytes: the end of the head is searched only in what arrived since the
//! last look, and the head is parsed once, when complete.

use crate::name::{is_ip_literal, ServerName};

/// Headers a request head may carry at most (past it: 431).
pub const MAX_HEADERS: usize = 128;

/// The path prefix of ACME http-01 challenges (RFC 8555 §8.3), forwarded whatever the route's
/// `http` setting says.
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// A complete, acceptable request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The Host header's name, lowercase, without port or trailing dot; `None` when the request
    /// has no Host (HTTP/1.0) or names an IP address.
    pub host: Option<ServerName>,
    /// The Host without its port, as a redirect names it: the normalised name, or the IP
    /// address (IPv6 in brackets); empty without a Host.
    pub authority: Box<str>,
    /// The request target as path and query (an absolute-form target's authority removed;
    /// `*` for an asterisk-form one).
    pub target: Box<str>,
    /// Bytes of the head, the blank line included.
    pub len: usize,
    /// A `GET` or `HEAD` without a body (no Content-Length above 0, no Transfer-Encoding).
    pub bodyless_read: bool,
}

impl Head {
    /// An ACME http-01 challenge request: `GET` or `HEAD` of the prefix and one token
    /// (base64url, RFC 8555 §8.3), nothing after it, no body. Nothing else passes for one, so
    /// a redirecting route can't be used to reach its backend's other paths.
    pub fn is_acme(&self) -> bool {
        self.bodyless_read
            && self.target.strip_prefix(ACME_PREFIX).is_some_and(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
            })
    }
}

/// Why a head was refused, and the status it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Malformed or ambiguous: 400.
    #[error("bad request: {0}")]
    Malformed(&'static str),
    /// Over the size limit or [`MAX_HEADERS`]: 431.
    #[error("request head over {limit} bytes or {MAX_HEADERS} headers")]
    TooLarge {
        /// The byte limit.
        limit: usize,
    },
}

impl HeadError {
    /// The status line's code and reason.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::Malformed(_) => (400, "Bad Request"),
            Self::TooLarge { .. } => (431, "Request Header Fields Too Large"),
        }
    }
}

/// Reads one request head from a growing buffer.
#[derive(Debug)]
pub struct HeadReader {
    limit: usize,
    /// Bytes already searched for the end of the head.
    searched: usize,
}

impl HeadReader {
    /// A reader refusing heads over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit, searched: 0 }
    }

    /// Looks at `buffer` (every byte so far, the first request's first): `Ok(None)` when more
    /// is needed.
    ///
    /// # Errors
    /// The head is refused; the error says with which status.
    pub fn feed(&mut self, buffer: &[u8]) -> Result<Option<Head>, HeadError> {
        let Some(end) = self.end_of_head(buffer) else {
            if buffer.len() >= self.limit {
                return Err(HeadError::TooLarge { limit: self.limit });
            }
            return Ok(None);
        };
        if end > self.limit {
            return Err(HeadError::TooLarge { limit: self.limit });
        }
        parse(&buffer[..end]).map(Some)
    }

    /// Where the head ends (just past its blank line), searching only new bytes. A bare-LF
    /// blank line ends it too, to be refused by [`parse`] rather than waited on.
    fn end_of_head(&mut self, buffer: &[u8]) -> Option<usize> {
        // Back up over what could be the start of a terminator split across reads.
        let from = self.searched.saturating_sub(3);
        let found = buffer[from..]
            .windows(2)
            .position(|pair| pair == b"\n\n")
            .map(|at| from + at + 2);
        let crlf = buffer[from..]
            .windows(4)
            .position(|four| four == b"\r\n\r\n")
            .map(|at| from + at + 4);
        self.searched = buffer.len();
        match (found, crlf) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Parses and vets a complete head.
fn parse(head: &[u8]) -> Result<Head, HeadError> {
    // Every LF ends a CRLF; a line may not start with whitespace (obs-fold).
    for (at, &byte) in head.iter().enumerate() {
        if byte == b'\n' {
            if at == 0 || head[at - 1] != b'\r' {
                return Err(HeadError::Malformed("a bare LF"));
            }
            if matches!(head.get(at + 1), Some(b' ' | b'\t')) {
                return Err(HeadError::Malformed("a folded header line"));
            }
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("an incomplete head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooLarge { limit: head.len() })
        }
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1.x request head")),
    };
    let version = request.version.unwrap_or(1);
    let target = request.path.unwrap_or("/");
    let mut host: Option<&[u8]> = None;
    let mut content_length: Option<&[u8]> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    for header in request.headers.iter() {
        let value = trim(header.value);
        if header.name.eq_ignore_ascii_case("host") {
            if host.replace(value).is_some() {
                return Err(HeadError::Malformed("two Host headers"));
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed(
                    "a Content-Length that is not a number",
                ));
            }
            if content_length
                .replace(value)
                .is_some_and(|earlier| earlier != value)
            {
                return Err(HeadError::Malformed("two different Content-Lengths"));
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            && transfer_encoding.replace(value).is_some()
        {
            return Err(HeadError::Malformed("two Transfer-Encoding headers"));
        }
    }
    if let Some(codings) = transfer_encoding {
        let last = codings.rsplit(|&byte| byte == b',').next().map(trim);
        if version == 0 {
            return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        if content_length.is_some() {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if !last.is_some_and(|last| last.eq_ignore_ascii_case(b"chunked")) {
            return Err(HeadError::Malformed(
                "a Transfer-Encoding not ending in chunked",
            ));
        }
    }
    let (authority, path) = split_target(target)?;
    let host = match (host, authority) {
        (None, None) if version == 1 => return Err(HeadError::Malformed("no Host header")),
        (None, None) => None,
        (Some(host), Some(authority)) if !host.eq_ignore_ascii_case(authority.as_bytes()) => {
            return Err(HeadError::Malformed(
                "the target's authority differs from Host",
            ))
        }
        (Some(host), _) => Some(host),
        (None, Some(authority)) => Some(authority.as_bytes()),
    };
    let (host, authority) = match host {
        None => (None, Box::from("")),
        Some(host) => server_name(host)?,
    };
    let bodyless_read = matches!(request.method, Some("GET" | "HEAD"))
        && transfer_encoding.is_none()
        && content_length.is_none_or(|length| length.iter().all(|&digit| digit == b'0'));
    Ok(Head {
        host,
        authority,
        target: path.into(),
        len,
        bodyless_read,
    })
}

/// The authority (for an absolute-form target) and the path-and-query of a request target.
fn split_target(target: &str) -> Result<(Option<&str>, &str), HeadError> {
    if target.starts_with('/') || target == "*" {
        return Ok((None, target));
    }
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| {
            target
                .get(..scheme.len())
                .filter(|prefix| prefix.eq_ignore_ascii_case(scheme))
                .map(|_| &target[scheme.len()..])
        })
        .ok_or(HeadError::Malformed(
            "a request target that is neither a path nor a URL",
        ))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(HeadError::Malformed("a URL without a plain authority"));
    }
    Ok((Some(authority), if path.is_empty() { "/" } else { path }))
}

/// The name of a Host value (`name`, `name:port`, `[v6]:port`), `None` for an IP address, and
/// the value without its port.
fn server_name(host: &[u8]) -> Result<(Option<ServerName>, Box<str>), HeadError> {
    if host.starts_with(b"[") {
        // `[2001:db8::1]` or `[2001:db8::1]:80`: an IPv6 literal.
        let end = host.iter().position(|&byte| byte == b']');
        let literal = end.map(|end| &host[..=end]);
        let valid = literal.is_some_and(|literal| {
            std::str::from_utf8(&literal[1..literal.len() - 1])
                .is_ok_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
        });
        let rest = end.map_or(&b""[..], |end| &host[end + 1..]);
        let port_ok = rest.is_empty()
            || (rest.len() > 1 && rest[0] == b':' && rest[1..].iter().all(u8::is_ascii_digit));
        return match (literal, valid && port_ok) {
            (Some(literal), true) => Ok((
                None,
                String::from_utf8_lossy(literal).to_ascii_lowercase().into(),
            )),
            _ => Err(HeadError::Malformed("a Host that is not a name")),
        };
    }
    let name = match host.iter().rposition(|&byte| byte == b':') {
        Some(colon) => {
            let port = &host[colon + 1..];
            if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("a Host with a bad port"));
            }
            &host[..colon]
        }
        None => host,
    };
    if is_ip_literal(name) {
        return match std::str::from_utf8(name).map(str::parse::<std::net::Ipv4Addr>) {
            Ok(Ok(ip)) => Ok((None, ip.to_string().into())),
            _ => Err(HeadError::Malformed("a Host that is not a name")),
        };
    }
    let name =
        ServerName::parse(name).map_err(|_| HeadError::Malformed("a Host that is not a name"))?;
    let authority = name.as_str().into();
    Ok((Some(name), authority))
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|byte| !byte.is_ascii_whitespace())
        .map_or(start, |at| at + 1);
    &value[start..end.max(start)]
}

#[cfg(test)]
mod tests;
