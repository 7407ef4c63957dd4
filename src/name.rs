//! Server names as the route table compares them: [`ServerName`] (one normalised DNS name) and
//! [`NamePattern`] (an exact name or a `*.suffix` wildcard).
//!
//! Pure: no I/O, no tokio. Normalisation happens once, where a name enters (the ClientHello
//! peeker, the config loader, `explain`), so that route lookup compares bytes and allocates
//! nothing. SPEC "Matching": names are compared lowercase, without a trailing dot.

use std::fmt;

/// Longest name accepted, in bytes, after the trailing dot is removed (RFC 1035 §2.3.4 allows
/// 255 octets on the wire, which leaves 253 characters of text; we accept up to 255 to be lenient
/// with clients that count differently).
pub const MAX_NAME_LEN: usize = 255;

/// Longest label accepted, in bytes (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing left once the trailing dot is removed.
    #[error("empty name")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("name longer than 255 bytes")]
    TooLong,
    /// A NUL or other control byte.
    #[error("control byte in name")]
    ControlByte,
    /// A byte that is not a letter, digit, `-`, `_` or `.`.
    #[error("byte {0:#04x} not allowed in a DNS name")]
    BadByte(u8),
    /// Two dots in a row, or a leading dot.
    #[error("empty label in name")]
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`].
    #[error("label longer than 63 bytes")]
    LabelTooLong,
    /// A `*` anywhere but as the whole first label of a pattern.
    #[error("a wildcard must be the whole first label, as in *.example.com")]
    BadWildcard,
}

/// Whether `raw` is an IP address literal. RFC 6066 §3 forbids one in server_name, but some
/// clients send one; like rustls, sniroute reads it as no name at all, so no route can match it.
pub fn is_ip_literal(raw: &[u8]) -> bool {
    std::str::from_utf8(raw).is_ok_and(|text| text.parse::<std::net::IpAddr>().is_ok())
}

/// A DNS name, lowercase, without a trailing dot, checked to be letters, digits, `-`, `_` and
/// dots, with no empty label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName(Box<str>);

impl ServerName {
    /// Normalises and checks `raw` (bytes as they came off the wire or out of a config).
    ///
    /// # Errors
    /// A [`NameError`] naming the first fault found.
    pub fn parse(raw: &[u8]) -> Result<Self, NameError> {
        let trimmed = raw.strip_suffix(b".").unwrap_or(raw);
        check_name(trimmed)?;
        let lower: String = trimmed
            .iter()
            .map(|&byte| char::from(byte.to_ascii_lowercase()))
            .collect();
        Ok(Self(lower.into_boxed_str()))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// What a route's `sni` matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    /// Exactly this name.
    Exact(ServerName),
    /// Any name ending in `.suffix`, at any depth. Holds the suffix with its leading dot
    /// (`.tenants.example.com`), so a match is one `ends_with`.
    Wildcard(Box<str>),
}

impl NamePattern {
    /// Parses `example.com` or `*.example.com`, normalising as [`ServerName::parse`] does.
    ///
    /// # Errors
    /// A [`NameError`]; `*` anywhere but as the whole first label is
    /// [`NameError::BadWildcard`].
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        match raw.strip_prefix("*.") {
            Some(suffix) => {
                if suffix.contains('*') {
                    return Err(NameError::BadWildcard);
                }
                let name = ServerName::parse(suffix.as_bytes())?;
                Ok(Self::Wildcard(format!(".{name}").into_boxed_str()))
            }
            None if raw.contains('*') => Err(NameError::BadWildcard),
            None => Ok(Self::Exact(ServerName::parse(raw.as_bytes())?)),
        }
    }

    /// Whether `name` matches this pattern.
    pub fn matches(&self, name: &ServerName) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Wildcard(suffix) => {
                name.as_str().len() > suffix.len() && name.as_str().ends_with(&**suffix)
            }
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `write_str`, not `write!`: a million tenant routes' names are made with it at load.
        match self {
            Self::Exact(name) => formatter.write_str(name.as_str()),
            Self::Wildcard(suffix) => {
                formatter.write_str("*")?;
                formatter.write_str(suffix)
            }
        }
    }
}

fn check_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let mut label_len = 0;
    for &byte in name {
        match byte {
            b'.' => {
                if label_len == 0 {
                    return Err(NameError::EmptyLabel);
                }
                label_len = 0;
                continue;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'*' => return Err(NameError::BadWildcard),
            0..=0x1f | 0x7f => return Err(NameError::ControlByte),
            other => return Err(NameError::BadByte(other)),
        }
        label_len += 1;
        if label_len > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong);
        }
    }
    if label_len == 0 {
        // Only reachable for a name that ended in two dots: one was stripped already.
        return Err(NameError::EmptyLabel);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> ServerName {
        ServerName::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn names_are_lowercased_and_lose_one_trailing_dot() {
        assert_eq!(name("App.Example.COM.").as_str(), "app.example.com");
        assert_eq!(
            ServerName::parse(b"example.com.."),
            Err(NameError::EmptyLabel)
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert_eq!(ServerName::parse(b""), Err(NameError::Empty));
        assert_eq!(ServerName::parse(b"."), Err(NameError::Empty));
        assert_eq!(ServerName::parse(b"a\0b"), Err(NameError::ControlByte));
        assert_eq!(ServerName::parse(b"a\nb"), Err(NameError::ControlByte));
        assert_eq!(ServerName::parse(b"a b"), Err(NameError::BadByte(b' ')));
        assert_eq!(ServerName::parse(b"a..b"), Err(NameError::EmptyLabel));
        assert_eq!(ServerName::parse(b".a"), Err(NameError::EmptyLabel));
        assert_eq!(
            ServerName::parse("é.com".as_bytes()),
            Err(NameError::BadByte(0xc3))
        );
        let long_label = "a".repeat(64);
        assert_eq!(
            ServerName::parse(long_label.as_bytes()),
            Err(NameError::LabelTooLong)
        );
        let long_name = vec!["a".repeat(63); 5].join(".");
        assert_eq!(
            ServerName::parse(long_name.as_bytes()),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn wildcards_match_any_depth_but_not_the_bare_suffix() {
        let pattern = NamePattern::parse("*.Tenants.Example.com.").unwrap();
        assert_eq!(pattern.to_string(), "*.tenants.example.com");
        assert!(pattern.matches(&name("a.tenants.example.com")));
        assert!(pattern.matches(&name("a.b.c.tenants.example.com")));
        assert!(!pattern.matches(&name("tenants.example.com")));
        assert!(!pattern.matches(&name("atenants.example.com")));
    }

    #[test]
    fn stars_outside_the_first_label_are_refused() {
        for raw in ["*", "a.*.com", "*a.com", "*.*.com", "**.com"] {
            assert_eq!(
                NamePattern::parse(raw),
                Err(NameError::BadWildcard),
                "{raw}"
            );
        }
    }
}
