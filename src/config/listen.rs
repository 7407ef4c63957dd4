//! `[[listen]]` and `[metrics]`: the sockets sniroute accepts on, keyed by (protocol, address)
//! so that a UDP and a TCP listener may one day share a port number. SPEC "routes.toml".

use std::fmt;
use std::net::SocketAddr;

use toml::Spanned;

use super::error::{quoted, ConfigError, Source};
use super::raw::RawListen;
use crate::proxy_protocol::Cidr;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TLS over TCP: routed by the ClientHello (the default).
    Tls,
    /// Plaintext HTTP/1.x: routed by the request's Host (SPEC "Port 80").
    Http,
    /// QUIC over UDP: routed by the ClientHello in its Initial packets (SPEC "QUIC").
    Quic,
}

impl Protocol {
    /// Whether it runs over UDP (a UDP and a TCP listener may share an address).
    pub fn is_udp(self) -> bool {
        self == Self::Quic
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Quic => "quic",
        })
    }
}

/// What identifies a listener across reloads: a kept key keeps its socket.
pub type ListenKey = (Protocol, SocketAddr);

/// One `[[listen]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// What the listener speaks.
    pub protocol: Protocol,
    /// Address and port to bind.
    pub address: SocketAddr,
    /// Where `address` is written in routes.toml, to name it if it can't be bound.
    pub position: (usize, usize),
    /// Sources whose connections start with a PROXY protocol header (required from them, refused
    /// from anyone else); empty: no header is accepted.
    pub proxy_trusted: Vec<Cidr>,
    /// `SO_REUSEPORT`: several sniroute processes may listen on this address and the kernel
    /// spreads connections across them. Default false.
    pub reuse_port: bool,
}

impl Listen {
    /// The listener's identity: (protocol, address as configured).
    pub fn key(&self) -> ListenKey {
        (self.protocol, self.address)
    }
}

/// Every `[[listen]]` table, in file order; at least one.
pub(super) fn listeners(
    source: Source<'_>,
    raw: &[Spanned<RawListen>],
) -> Result<Vec<Listen>, ConfigError> {
    if raw.is_empty() {
        return Err(source.error(0..0, "listen", "expected at least one [[listen]] table"));
    }
    let mut listeners: Vec<Listen> = Vec::with_capacity(raw.len());
    for (index, listen) in raw.iter().enumerate() {
        let key = format!("listen[{index}]");
        let table = listen.get_ref();
        let protocol = match &table.protocol {
            None => Protocol::Tls,
            Some(protocol) => match protocol.get_ref().as_str() {
                "tls" => Protocol::Tls,
                "http" => Protocol::Http,
                "quic" => Protocol::Quic,
                other => {
                    return Err(source.at(
                        protocol,
                        format!("{key}.protocol"),
                        format!(
                            "expected \"tls\", \"http\" or \"quic\", found {}",
                            quoted(other)
                        ),
                    ))
                }
            },
        };
        let mut parsed = socket_address(source, &table.address, &format!("{key}.address"))?;
        parsed.protocol = protocol;
        parsed.reuse_port = table.reuse_port.unwrap_or(false);
        if protocol.is_udp() && parsed.reuse_port {
            return Err(source.at(
                &table.address,
                format!("{key}.reuse_port"),
                "not on a quic listener: the kernel would split a client whose port changes \
                 from its flow",
            ));
        }
        if let Some(proxy) = &table.proxy_protocol {
            if let (Protocol::Quic, Some(first)) = (protocol, proxy.trusted.first()) {
                return Err(source.at(
                    first,
                    format!("{key}.proxy_protocol"),
                    "a quic listener takes no PROXY header (UDP datagrams carry none)",
                ));
            }
            for (position, range) in proxy.trusted.iter().enumerate() {
                let cidr = Cidr::parse(range.get_ref()).map_err(|message| {
                    source.at(
                        range,
                        format!("{key}.proxy_protocol.trusted[{position}]"),
                        message,
                    )
                })?;
                parsed.proxy_trusted.push(cidr);
            }
        }
        if let Some((earlier, other)) = listeners.iter().enumerate().find(|(_, other)| {
            other.protocol.is_udp() == parsed.protocol.is_udp() && overlap(other, &parsed)
        }) {
            let what = if other.address == parsed.address {
                "same address as".to_owned()
            } else {
                format!("{} overlaps", other.address)
            };
            return Err(source.at(
                &table.address,
                format!("{key}.address"),
                format!("{what} listen[{earlier}]"),
            ));
        }
        listeners.push(parsed);
    }
    Ok(listeners)
}

/// Whether binding both would fail: the same port (not `:0`) and the same address, or one of
/// them the wildcard address that covers the other (`0.0.0.0:P` beside `127.0.0.1:P`; `[::]:P`
/// covers IPv4 too, as Linux binds it dual-stack by default). `reuse_port` on both lets several
/// sockets share one address, but sniroute never needs two of its own on one.
fn overlap(one: &Listen, other: &Listen) -> bool {
    let (one, other) = (one.address, other.address);
    if one.port() != other.port() || one.port() == 0 {
        return false;
    }
    let covers = |wide: SocketAddr, narrow: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || narrow.is_ipv4())
    };
    one.ip() == other.ip() || covers(one, other) || covers(other, one)
}

/// An IP address and port, as `listen.address` and `metrics.address` take them.
pub(super) fn socket_address(
    source: Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<Listen, ConfigError> {
    let address = value.get_ref().parse().map_err(|_| {
        source.at(
            value,
            key,
            format!(
                "expected an address like 127.0.0.1:8443 or [::1]:8443, found {}",
                quoted(value.get_ref())
            ),
        )
    })?;
    Ok(Listen {
        protocol: Protocol::Tls,
        address,
        position: source.line_column(value.span().start),
        proxy_trusted: Vec::new(),
        reuse_port: false,
    })
}
