//! The properties the fuzz targets check, as library code: the targets in `fuzz/` are a few
//! lines each calling these, the replay test (`tests/fuzz_corpus.rs`) runs every corpus file and
//! past crash through them, and the proptests call them with random input, so `cargo test` on
//! stable exercises every oracle without libFuzzer.
//!
//! Each function panics when its property fails; that is how a fuzzer or a test notices.

// An oracle's job is to panic on a broken property; nothing on the data path calls this module.
#![allow(clippy::panic, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use crate::config::{
    Backend, Balance, Config, Http, HttpMode, Limits, Listen, Member, Pool, Protocol, Route,
    Target, Timeouts,
};
use crate::hello::{HelloError, Peeker, Progress};
use crate::name::{NamePattern, ServerName};
use crate::route::RouteTable;

/// The limit the ClientHello oracles give the peeker: small enough that fuzzed inputs reach it.
pub const HELLO_LIMIT: usize = 8192;

/// Whole input into the peeker: it never reads past its limit, and what it accepts is sane: the
/// server name is a valid, normalised DNS name, ALPN protocols are non-empty, and what it keeps
/// is bounded by the hello's own size.
pub fn client_hello(data: &[u8]) -> Progress {
    let progress = Peeker::new(HELLO_LIMIT).feed(data);
    match &progress {
        Progress::Hello(hello) => {
            assert!(hello.wire_len <= HELLO_LIMIT && hello.wire_len <= data.len());
            assert!(hello.records >= 1 && hello.message_len <= hello.wire_len);
            if let Some(name) = &hello.server_name {
                let text = name.as_str();
                assert_eq!(ServerName::parse(text.as_bytes()).as_ref(), Ok(name));
                assert!(!text.ends_with('.') && !text.bytes().any(|b| b.is_ascii_uppercase()));
            }
            assert!(hello.alpn.iter().all(|protocol| !protocol.is_empty()));
            assert!(hello.extensions.len() * 4 <= hello.message_len);
        }
        // Wanting more means the stream so far is shorter than the limit.
        Progress::NeedMore => assert!(data.len() < HELLO_LIMIT),
        Progress::Reject(error) => {
            let _ = error.alert();
        }
    }
    progress
}

/// Input plus cut points: fed in those chunks, the peeker gives exactly the whole-input answer.
/// `input` is a count byte (at most 16 counts), that many big-endian u16 cut offsets, then the
/// stream ([`chunks_input`] writes it).
pub fn client_hello_chunks(input: &[u8]) {
    let (&count, rest) = input.split_first().unwrap_or((&0, &[]));
    let cut_bytes = (usize::from(count) % 17 * 2).min(rest.len());
    let (cuts, data) = rest.split_at(cut_bytes);
    let whole = client_hello(data);
    let mut cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|cut| usize::from(u16::from_be_bytes([cut[0], cut[1]])) % (data.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut peeker = Peeker::new(HELLO_LIMIT);
    let mut chunked = Progress::NeedMore;
    for &cut in cuts.iter().chain([&data.len()]) {
        chunked = peeker.feed(&data[..cut]);
        if chunked != Progress::NeedMore {
            break;
        }
    }
    assert_eq!(chunked, whole);
}

/// The input [`client_hello_chunks`] reads: `stream` to be cut at `cuts`.
pub fn chunks_input(cuts: &[u16], stream: &[u8]) -> Vec<u8> {
    let cuts = &cuts[..cuts.len().min(16)];
    let mut input = vec![cuts.len() as u8];
    input.extend(cuts.iter().flat_map(|cut| cut.to_be_bytes()));
    input.extend_from_slice(stream);
    input
}

/// Differential check against rustls' own ClientHello parser (`rustls::server::Acceptor`):
/// whenever rustls accepts a hello, sniroute accepts it too and sees the same server name and
/// ALPN list, except where sniroute is deliberately stricter ([`stricter_than_rustls`]).
pub fn client_hello_rustls(data: &[u8]) {
    let Some((server_name, alpn)) = rustls_view(data) else {
        return;
    };
    match Peeker::new(usize::MAX).feed(data) {
        Progress::Hello(hello) => {
            assert_eq!(
                hello.server_name.as_ref().map(ServerName::as_str),
                server_name.as_deref(),
                "server name"
            );
            let ours: Vec<&[u8]> = hello.alpn.iter().collect();
            let theirs: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
            assert_eq!(ours, theirs, "alpn");
        }
        Progress::Reject(error) if stricter_than_rustls(&error) => {}
        other => panic!("rustls accepted this hello; sniroute answered {other:?}"),
    }
}

/// Where sniroute refuses a hello that rustls' `Acceptor` takes, and why (CONTRIBUTING.md "Fuzzing"):
/// - in server_name, rustls stops reading at the first entry that is not a host_name and
///   ignores whatever follows; sniroute reads every entry (each has a 16-bit length, RFC 6066
///   §3), so it refuses a list that doesn't add up, and a second host_name after an entry of
///   another type (RFC 6066 forbids two; Go's crypto/tls refuses them too), so no bytes in the
///   name list go unexamined by the component that routes on it.
pub fn stricter_than_rustls(error: &HelloError) -> bool {
    matches!(
        error,
        HelloError::Malformed("server_name entry") | HelloError::TwoServerNames
    )
}

/// What rustls sees in `data`: `None` if it refuses the hello or needs more bytes.
fn rustls_view(data: &[u8]) -> Option<(Option<String>, Vec<Vec<u8>>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = data;
    let accepted = loop {
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) if rest.is_empty() => return None,
            Ok(None) => {
                if acceptor.read_tls(&mut rest).is_err() {
                    return None;
                }
            }
            Err(_) => return None,
        }
    };
    let hello = accepted.client_hello();
    let name = hello
        .server_name()
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase());
    let alpn = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    Some((name, alpn))
}

/// Text into the routes.toml loader: it never panics, and a fault it reports is one line that
/// points inside the input.
pub fn config(text: &str) {
    if let Err(error) = Config::parse(Path::new("routes.toml"), text) {
        let line = error.to_string();
        assert!(!line.contains('\n'), "{line}");
        if let Some((line_number, column)) = error.position {
            assert!(line_number >= 1 && column >= 1);
            assert!(
                line_number <= text.split('\n').count(),
                "line {line_number} of {}",
                text.split('\n').count()
            );
        }
    }
}

/// A route table and lookups made from `data`: every lookup returns a route whose pattern
/// matches the name, and no matching route is more specific (exact over wildcard, a longer
/// suffix over a shorter one); a name no route matches gets `[default]`.
pub fn route(data: &[u8]) {
    let (table_bytes, lookups) = data.split_at(data.len() / 2);
    let mut patterns: Vec<NamePattern> = Vec::new();
    for chunk in table_bytes.chunks(4) {
        let Some(pattern) = pattern_from(chunk) else {
            continue;
        };
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    let pool = Pool {
        members: vec![Member {
            backend: Backend::Addr(([127, 0, 0, 1], 9).into()),
            weight: 1,
            position: (1, 1),
        }],
        balance: Balance::RoundRobin,
        health: None,
    };
    let target = Arc::new(Target {
        http: Http {
            mode: HttpMode::Redirect,
            pool: pool.clone(),
            explicit: false,
        },
        pool,
        proxy_protocol: None,
        terminate: None,
    });
    let routes: Vec<Route> = patterns
        .into_iter()
        .enumerate()
        .map(|(line, pattern)| Route {
            name: format!("r{line}"),
            sni: Some(pattern),
            alpn: Vec::new(),
            target: target.clone(),
            line,
            file: None,
            written: Default::default(),
        })
        .collect();
    let config = Config {
        listeners: vec![Listen {
            protocol: Protocol::Tls,
            address: ([127, 0, 0, 1], 0).into(),
            position: (1, 1),
            proxy_trusted: Vec::new(),
            reuse_port: false,
        }],
        timeouts: Timeouts::default(),
        limits: Limits::default(),
        metrics: None,
        routes,
        include_dirs: Vec::new(),
        default: Some(Route {
            name: "default".to_owned(),
            sni: None,
            alpn: Vec::new(),
            target,
            line: 0,
            file: None,
            written: Default::default(),
        }),
        loaded: Default::default(),
    };
    let table = RouteTable::new(&config, None);
    let offer = crate::hello::Alpn::default();
    for chunk in lookups.chunks(3) {
        let Some(name) = name_from(chunk) else {
            continue;
        };
        let decision = table.lookup(Some(&name), &offer);
        let specificity = |route: &Route| match &route.sni {
            Some(NamePattern::Exact(_)) => usize::MAX,
            Some(NamePattern::Wildcard(suffix)) => suffix.len(),
            None => 0,
        };
        let best = config
            .routes
            .iter()
            .filter(|route| route.sni.as_ref().is_some_and(|p| p.matches(&name)))
            .map(specificity)
            .max();
        let found = decision.route.expect("a default route exists");
        let route = config
            .routes
            .get(found.index())
            .or(config.default.as_ref())
            .expect("the table numbers routes as the config does");
        assert_eq!(found.name(), route.name);
        match best {
            Some(best) => {
                assert!(
                    route
                        .sni
                        .as_ref()
                        .is_some_and(|pattern| pattern.matches(&name)),
                    "{name} got {}",
                    route.name
                );
                assert_eq!(specificity(route), best, "{name} got {}", route.name);
            }
            None => assert_eq!(route.name, "default", "{name}"),
        }
    }
}

/// Bytes into the PROXY protocol decoder: it never claims more bytes than it was given, a
/// header it reads re-encodes (v1 and v2) to one that reads back the same addresses, and any
/// prefix of a complete header is "need more", never an error.
pub fn proxy_protocol(data: &[u8]) {
    use crate::proxy_protocol::{decode, encode, Tlvs, Version};

    let Ok(Some(header)) = decode(data) else {
        return;
    };
    assert!(header.len <= data.len());
    for cut in [0, header.len / 2, header.len - 1] {
        assert_eq!(decode(&data[..cut]), Ok(None), "prefix of {cut} bytes");
    }
    let Some(addresses) = header.addresses else {
        return;
    };
    for version in [Version::V1, Version::V2] {
        let mut encoded = Vec::new();
        encode(version, addresses, Tlvs::default(), &mut encoded);
        let again = decode(&encoded)
            .expect("our own header decodes")
            .expect("complete");
        assert_eq!(again.len, encoded.len());
        let back = again.addresses.expect("addresses");
        // Mixed families are sent as IPv6 with the IPv4 address mapped.
        let same = |a: std::net::SocketAddr, b: std::net::SocketAddr| {
            a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
        };
        assert!(
            same(back.source, addresses.source) && same(back.destination, addresses.destination),
            "{version:?}"
        );
    }
}

/// A name of one to three labels from a three-letter alphabet, so that random tables and names
/// collide often.
fn name_from(bytes: &[u8]) -> Option<ServerName> {
    let labels = 1 + usize::from(*bytes.first()? % 3);
    let text: Vec<&str> = bytes
        .iter()
        .take(labels)
        .map(|byte| ["a", "b", "c"][usize::from(byte >> 4) % 3])
        .collect();
    ServerName::parse(text.join(".").as_bytes()).ok()
}

fn pattern_from(bytes: &[u8]) -> Option<NamePattern> {
    let (&kind, rest) = bytes.split_first()?;
    let name = name_from(rest)?;
    let text = if kind & 1 == 1 {
        format!("*.{name}")
    } else {
        name.to_string()
    };
    NamePattern::parse(&text).ok()
}

/// Bytes into the port-80 request-head reader: fed whole or a few bytes at a time (the step
/// taken from the first byte), the verdict is the same; a head it accepts is no longer than its
/// input, and what a redirect would write from it (authority, target) holds no whitespace or
/// control byte, so no response header can be split.
pub fn http_head(data: &[u8]) {
    use crate::http::HeadReader;

    const LIMIT: usize = 4096;
    let whole = HeadReader::new(LIMIT).feed(data);
    let step = data.first().map_or(1, |byte| usize::from(byte % 16) + 1);
    let mut reader = HeadReader::new(LIMIT);
    let mut chunked = Ok(None);
    let mut end = 0;
    while end < data.len() {
        end = (end + step).min(data.len());
        chunked = reader.feed(&data[..end]);
        if !matches!(chunked, Ok(None)) {
            break;
        }
    }
    assert_eq!(whole, chunked, "whole and chunked disagree");
    if let Ok(Some(head)) = whole {
        assert!(head.len <= data.len());
        for text in [&*head.authority, &*head.target] {
            assert!(
                text.bytes().all(|byte| byte > b' ' && byte != 0x7f),
                "{text:?}"
            );
        }
    }
}

/// Datagrams into a QUIC flow's Initial reader, the input cut into datagrams by 2-byte
/// big-endian length prefixes: no panic, and it stops at its first verdict, a hello within its
/// limit or a refusal.
pub fn quic_datagrams(data: &[u8]) {
    use crate::quic::InitialReader;

    const LIMIT: usize = 4096;
    let mut reader = InitialReader::new(LIMIT);
    let mut rest = data;
    while let [high, low, tail @ ..] = rest {
        let len = (usize::from(*high) << 8 | usize::from(*low)).min(tail.len());
        let (datagram, after) = tail.split_at(len);
        rest = after;
        match reader.feed(datagram) {
            Ok(None) => {}
            Ok(Some(hello)) => {
                assert!(hello.wire_len <= LIMIT);
                return;
            }
            Err(_) => return,
        }
    }
}

/// Fuzzer-chosen frames, protected properly into client Initials (the first byte picks the
/// version, `0xfe 0xfe` separates one packet's frames from the next), so the fuzzer reaches
/// the frame parser and CRYPTO reassembly past the AEAD: no panic; a hello is found only from
/// CRYPTO data, and the same frames give the same verdict again.
pub fn quic_frames(data: &[u8]) {
    use crate::quic::synth::initial;
    use crate::quic::{InitialReader, Version};

    let Some((&selector, frames)) = data.split_first() else {
        return;
    };
    let version = if selector & 1 == 0 {
        Version::V1
    } else {
        Version::V2
    };
    let mut datagrams = Vec::new();
    let mut rest = frames;
    loop {
        let end = rest
            .windows(2)
            .position(|pair| pair == [0xfe, 0xfe])
            .unwrap_or(rest.len());
        let Ok(datagram) = initial(
            version,
            b"fuzzdcid",
            b"",
            datagrams.len() as u32,
            &rest[..end],
        ) else {
            return;
        };
        datagrams.push(datagram);
        if end == rest.len() || datagrams.len() == 8 {
            break;
        }
        rest = &rest[end + 2..];
    }
    let verdict = |datagrams: &[Vec<u8>]| {
        let mut reader = InitialReader::new(4096);
        for datagram in datagrams {
            match reader.feed(datagram) {
                Ok(None) => {}
                other => return other,
            }
        }
        Ok(None)
    };
    let first = verdict(&datagrams);
    if let Ok(Some(hello)) = &first {
        assert!(frames.contains(&0x06), "a hello without a CRYPTO frame");
        assert!(hello.wire_len >= 4);
    }
    assert_eq!(
        first,
        verdict(&datagrams),
        "the same frames, another verdict"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hello::synth::ClientHelloBuilder;

    /// The differential oracle only means something if rustls accepts the hellos it is given.
    #[test]
    fn rustls_accepts_the_synthetic_hellos_and_sniroute_agrees() {
        let hello = ClientHelloBuilder::new()
            .server_name("A.example.test")
            .alpn(&["h2", "x"])
            .record();
        let (name, alpn) = rustls_view(&hello).expect("rustls accepts the builder's hello");
        assert_eq!(name.as_deref(), Some("a.example.test"));
        assert_eq!(alpn, vec![b"h2".to_vec(), b"x".to_vec()]);
        client_hello_rustls(&hello);
    }

    /// Each case [`stricter_than_rustls`] names is one rustls really accepts. The server_name
    /// case is the differential fuzzer's find
    /// (`fuzz/regressions/client_hello_rustls/crash-200a53e3…`: a GnuTLS hello whose host name
    /// length was cut short, leaving bytes rustls skips and sniroute refuses).
    #[test]
    fn the_documented_differences_from_rustls_are_real() {
        // A host_name followed by an entry of another type that doesn't parse.
        let mut names = vec![0, 0, 0, 0, 6];
        names.extend_from_slice(b"a.test");
        names.extend_from_slice(&[0x73, 0x74]);
        let list_len = (names.len() - 2) as u16;
        names[..2].copy_from_slice(&list_len.to_be_bytes());
        let trailing_entry = ClientHelloBuilder::new().extension(0, &names).record();
        // Fuzzer find `crash-82199272…`: host_name, an entry of type 0x70, then a second host_name.
        let mut names = vec![0, 0, 0, 0, 6];
        names.extend_from_slice(b"a.test");
        names.extend_from_slice(&[0x70, 0, 0, 0, 0, 6]);
        names.extend_from_slice(b"b.test");
        let list_len = (names.len() - 2) as u16;
        names[..2].copy_from_slice(&list_len.to_be_bytes());
        let second_name = ClientHelloBuilder::new().extension(0, &names).record();
        for (what, hello, error) in [
            ("second host_name", second_name, HelloError::TwoServerNames),
            (
                "server_name entry",
                trailing_entry,
                HelloError::Malformed("server_name entry"),
            ),
        ] {
            assert!(rustls_view(&hello).is_some(), "rustls refuses too: {what}");
            assert_eq!(
                Peeker::new(usize::MAX).feed(&hello),
                Progress::Reject(error),
                "{what}"
            );
            assert!(stricter_than_rustls(&error));
        }
    }

    /// Bounds protect memory and never refuse what the RFCs allow: rustls reads a hello with
    /// 200 ALPN protocols and 100 extensions, and so does sniroute, seeing the same.
    #[test]
    fn long_alpn_lists_and_many_extensions_agree_with_rustls() {
        let protocols: Vec<String> = (0..200).map(|i| format!("protocol-{i}")).collect();
        let mut builder = ClientHelloBuilder::new()
            .server_name("a.test")
            .alpn(&protocols);
        for extension_type in 0..100u16 {
            builder = builder.extension(0x7a00 + extension_type, []);
        }
        let hello = builder.record();
        assert!(rustls_view(&hello).is_some());
        client_hello_rustls(&hello);
    }

    #[test]
    fn an_ip_address_in_server_name_counts_as_no_name_as_in_rustls() {
        let hello = ClientHelloBuilder::new().server_name("192.0.2.1").record();
        assert_eq!(rustls_view(&hello).map(|view| view.0), Some(None));
        client_hello_rustls(&hello);
    }
}
