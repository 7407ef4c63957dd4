use proptest::prelude::*;
use tls_parser::TlsAlertDescription;

use super::synth::{frame, reframe, ClientHelloBuilder};
use super::*;
use crate::name::NameError;

const LIMIT: usize = 65536;

fn capture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/hello/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn feed_whole(stream: &[u8]) -> Progress {
    Peeker::new(LIMIT).feed(stream)
}

/// Feeds `stream` cut at `cuts` (offsets, ascending), the way TCP segments would arrive, and
/// returns the first answer that is not NeedMore (or NeedMore if none is).
fn feed_in_chunks(stream: &[u8], cuts: &[usize]) -> Progress {
    let mut peeker = Peeker::new(LIMIT);
    for &cut in cuts.iter().chain([&stream.len()]) {
        match peeker.feed(&stream[..cut]) {
            Progress::NeedMore => {}
            done => return done,
        }
    }
    Progress::NeedMore
}

fn hello(progress: Progress) -> ClientHello {
    match progress {
        Progress::Hello(hello) => hello,
        other => panic!("expected a hello, got {other:?}"),
    }
}

fn rejection(stream: &[u8]) -> HelloError {
    match feed_whole(stream) {
        Progress::Reject(error) => error,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The same hello with the framing facts blanked, to compare hellos framed differently.
fn content(mut hello: ClientHello) -> ClientHello {
    hello.records = 0;
    hello.wire_len = 0;
    hello
}

/// Every hello in `tests/data/hello/` that the peeker accepts (CONTRIBUTING.md "Captured hellos"): file,
/// server name, ALPN, records.
const CAPTURES: &[(&str, Option<&str>, &str, usize)] = &[
    ("curl-openssl3.bin", Some("curl.capture.test"), "h2,http/1.1", 1),
    ("openssl-s_client.bin", Some("openssl.capture.test"), "h2,http/1.1", 1),
    ("python-ssl.bin", Some("python.capture.test"), "h2,http/1.1", 1),
    ("no-sni-openssl.bin", None, "", 1),
    ("curl-to-ip-address.bin", None, "h2,http/1.1", 1),
    ("ip-literal-sni-openssl.bin", None, "", 1),
    ("gnutls-cli.bin", Some("gnutls.capture.test"), "h2,http/1.1", 1),
    ("chromium.bin", Some("chromium.capture.test"), "h2,http/1.1", 1),
    ("go-crypto-tls.bin", Some("go.capture.test"), "h2,http/1.1", 1),
    ("java-httpclient.bin", Some("java.capture.test"), "h2,http/1.1", 1),
    ("rustls-post-quantum.bin", Some("rustls.capture.test"), "h2,http/1.1", 1),
    ("rustls-five-records.bin", Some("rustls.capture.test"), "h2,http/1.1", 5),
    ("synthetic-padding.bin", Some("padding.synthetic.test"), "h2", 1),
    ("synthetic-grease-heavy.bin", Some("grease.synthetic.test"), "\\n\\n,h2,\\x1a\\x1a", 1),
    ("synthetic-oversize.bin", Some("oversize.synthetic.test"), "", 2),
    ("openssl-two-records.bin", Some("alpha.test"), "x-protocol-00-with-a-long-name-to-pad-the-hello,x-protocol-01-with-a-long-name-to-pad-the-hello,x-protocol-02-with-a-long-name-to-pad-the-hello,x-protocol-03-with-a-long-name-to-pad-the-hello,x-protocol-04-with-a-long-name-to-pad-the-hello,x-protocol-05-with-a-long-name-to-pad-the-hello,x-protocol-06-with-a-long-name-to-pad-the-hello,x-protocol-07-with-a-long-name-to-pad-the-hello", 2),
];

#[test]
fn captured_hellos_give_their_name_and_alpn() {
    for &(file, server_name, alpn, records) in CAPTURES {
        let hello = hello(feed_whole(&capture(file)));
        assert_eq!(
            hello.server_name.as_ref().map(ServerName::as_str),
            server_name,
            "{file}"
        );
        assert_eq!(hello.alpn.to_string(), alpn, "{file}");
        assert!(hello.supported_versions.contains(&0x0304), "{file}");
        assert!(!hello.cipher_suites.is_empty(), "{file}");
        assert_eq!(hello.records, records, "{file}");
    }
}

/// JA4 of every capture, pinned. curl 7.88/OpenSSL 3.0's is the value published for curl in
/// several JA4 databases; Chromium's `t13d1517h2_8daaf6152771` prefix is the one published for
/// Chrome (its 15 ciphers are FoxIO's worked example); the rest are regression pins.
#[test]
fn captured_hellos_have_their_ja4() {
    let expected = [
        ("chromium.bin", "t13d1517h2_8daaf6152771_0d789d2519e1"),
        ("curl-openssl3.bin", "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"),
        (
            "curl-to-ip-address.bin",
            "t13i3111h2_e8f1e7e78f70_b26ce05bbdd6",
        ),
        ("gnutls-cli.bin", "t13d2914h2_723694b0fccc_2cc26d266019"),
        ("go-crypto-tls.bin", "t13d1910h2_9dc949149365_97f8aa674fd9"),
        (
            "ip-literal-sni-openssl.bin",
            "t13d311000_e8f1e7e78f70_1f22a2ca17c4",
        ),
        (
            "java-httpclient.bin",
            "t13d3713h2_db35923f8641_7c76daad20ec",
        ),
        ("no-sni-openssl.bin", "t13i310900_e8f1e7e78f70_1f22a2ca17c4"),
        (
            "openssl-s_client.bin",
            "t13d3111h2_e8f1e7e78f70_1f22a2ca17c4",
        ),
        (
            "openssl-two-records.bin",
            "t13d3111xo_e8f1e7e78f70_1f22a2ca17c4",
        ),
        ("python-ssl.bin", "t13d1812h2_85036bcba153_d41ae481755e"),
        (
            "rustls-five-records.bin",
            "t13d1011h2_61a7ad8aa9b6_0d308c48d2a3",
        ),
        (
            "rustls-post-quantum.bin",
            "t13d1011h2_61a7ad8aa9b6_0d308c48d2a3",
        ),
        (
            "synthetic-grease-heavy.bin",
            "t13d04060a_77f0cd3447db_e12c865f31a5",
        ),
        (
            "synthetic-oversize.bin",
            "t13d040600_77f0cd3447db_824aca5a4570",
        ),
        (
            "synthetic-padding.bin",
            "t13d0407h2_77f0cd3447db_824aca5a4570",
        ),
    ];
    assert_eq!(expected.len(), CAPTURES.len());
    for (file, ja4) in expected {
        assert_eq!(
            hello(feed_whole(&capture(file)))
                .ja4(Transport::Tcp)
                .as_str(),
            ja4,
            "{file}"
        );
    }
}

#[test]
fn captured_refusals_are_refused() {
    assert_eq!(rejection(&capture("sslv2.bin")), HelloError::Sslv2);
    let oversize = capture("synthetic-oversize.bin");
    assert_eq!(
        Peeker::new(16 * 1024).feed(&oversize),
        Progress::Reject(HelloError::TooLarge { limit: 16 * 1024 })
    );
}

/// `stream` split at every offset, sent byte by byte, and re-framed into 1 to 12 records (also
/// sent byte by byte) gives the same hello as whole.
fn assert_framing_never_changes_the_hello(label: &str, stream: &[u8]) {
    let whole = feed_whole(stream);
    assert!(matches!(whole, Progress::Hello(_)), "{label}: {whole:?}");
    for cut in 0..stream.len() {
        assert_eq!(
            feed_in_chunks(stream, &[cut]),
            whole,
            "{label} cut at {cut}"
        );
    }
    let every_byte: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(
        feed_in_chunks(stream, &every_byte),
        whole,
        "{label} byte by byte"
    );
    let whole = content(hello(whole));
    for records in 1..=12 {
        let reframed = reframe(stream, records).unwrap();
        let every_byte: Vec<usize> = (1..reframed.len()).collect();
        let parsed = hello(feed_in_chunks(&reframed, &every_byte));
        // A message over 2^14 bytes needs more than one record whatever was asked.
        let expected = records.max(whole.message_len.div_ceil(1 << 14));
        assert_eq!(parsed.records, expected, "{label} in {records} records");
        assert_eq!(parsed.wire_len, reframed.len());
        assert_eq!(content(parsed), whole, "{label} in {records} records");
    }
}

#[test]
fn captured_hellos_give_the_same_hello_however_framed() {
    for &(file, ..) in CAPTURES {
        assert_framing_never_changes_the_hello(file, &capture(file));
    }
}

/// The first flight of an in-process rustls client: its default (aws-lc-rs) provider sends an
/// X25519MLKEM768 key share, which makes a hello of about 1.4 KB.
fn rustls_hello(name: &str, alpn: &[&str]) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn a_rustls_post_quantum_hello_gives_the_same_hello_however_framed() {
    const X25519MLKEM768: u16 = 0x11ec;
    let stream = rustls_hello("PQ.Example.test", &["h2", "http/1.1"]);
    assert!(stream.len() > 1200, "{} bytes", stream.len());
    let parsed = hello(feed_whole(&stream));
    assert_eq!(parsed.server_name.unwrap().as_str(), "pq.example.test");
    assert_eq!(parsed.alpn.to_string(), "h2,http/1.1");
    assert_eq!(parsed.supported_groups.first(), Some(&X25519MLKEM768));
    assert_framing_never_changes_the_hello("rustls", &stream);
}

#[test]
fn bytes_after_the_hello_are_left_for_the_caller() {
    let mut stream = ClientHelloBuilder::new().server_name("a.test").record();
    let hello_len = stream.len();
    stream.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
    let hello = hello(feed_whole(&stream));
    assert_eq!(hello.wire_len, hello_len);
}

#[test]
fn oversize_hellos_are_accepted_up_to_the_limit_across_records() {
    let builder = ClientHelloBuilder::new()
        .server_name("big.test")
        .padding(40_000);
    let stream = builder.record();
    assert!(stream.len() > 40_000 && stream.len() < LIMIT);
    let hello = hello(feed_whole(&stream));
    assert_eq!(hello.records, 3);
    assert_eq!(hello.server_name.unwrap().as_str(), "big.test");

    let limit = stream.len() - 1;
    assert_eq!(
        Peeker::new(limit).feed(&stream),
        Progress::Reject(HelloError::TooLarge { limit })
    );
}

#[test]
fn an_oversize_hello_is_refused_from_its_headers_before_its_body_arrives() {
    let stream = ClientHelloBuilder::new().padding(20_000).record();
    // The first record header plus the handshake header announce the size.
    assert_eq!(
        Peeker::new(4096).feed(&stream[..9]),
        Progress::Reject(HelloError::TooLarge { limit: 4096 })
    );
}

#[test]
fn plain_text_is_refused_at_the_first_byte() {
    assert_eq!(
        Peeker::new(LIMIT).feed(b"G"),
        Progress::Reject(HelloError::NotTls)
    );
    assert_eq!(rejection(b"GET / HTTP/1.1\r\n\r\n"), HelloError::NotTls);
    assert_eq!(rejection(b"SSH-2.0-OpenSSH_9.2\r\n"), HelloError::NotTls);
    assert_eq!(rejection(&[22, 0x47, 0x45]), HelloError::NotTls);
}

#[test]
fn sslv2_hellos_are_refused_from_the_header() {
    // SSLv2 CLIENT-HELLO: 2-byte length with the top bit set, message type 1, version 3.1.
    let sslv2 = [0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15];
    assert_eq!(Peeker::new(LIMIT).feed(&sslv2[..2]), Progress::NeedMore);
    assert_eq!(rejection(&sslv2), HelloError::Sslv2);
    assert_eq!(HelloError::Sslv2.alert(), None);
}

#[test]
fn other_record_types_are_refused_from_the_header() {
    let alert_record = [21, 3, 3, 0, 2, 2, 40];
    assert_eq!(
        Peeker::new(LIMIT).feed(&alert_record[..1]),
        Progress::NeedMore
    );
    assert_eq!(
        Peeker::new(LIMIT).feed(&alert_record[..2]),
        Progress::Reject(HelloError::UnexpectedContentType(21))
    );
    assert_eq!(
        rejection(&[23, 3, 3, 0, 1, 0]),
        HelloError::UnexpectedContentType(23)
    );
}

#[test]
fn a_second_record_of_another_type_is_refused() {
    let mut stream = frame(&ClientHelloBuilder::new().message(), 2);
    // Turn the second record's content type into change_cipher_spec.
    let first_len = usize::from(u16::from_be_bytes([stream[3], stream[4]]));
    assert_eq!(stream[5 + first_len], 22, "the second record starts here");
    stream[5 + first_len] = 20;
    assert_eq!(rejection(&stream), HelloError::UnexpectedContentType(20));
}

/// Fuzzer find (`fuzz/regressions/client_hello_chunks/crash-1378631a…`): a second record of
/// another content type was refused as `UnexpectedContentType` when its first byte arrived
/// alone, but as a bad record version when two arrived together.
#[test]
fn a_later_record_of_another_type_is_refused_the_same_however_cut() {
    let mut stream = ClientHelloBuilder::new().padding(100).record()[..40].to_vec();
    stream[3..5].copy_from_slice(&35u16.to_be_bytes());
    stream.extend_from_slice(&[101, 0x74, 0x16]);
    let whole = feed_whole(&stream);
    assert_eq!(
        whole,
        Progress::Reject(HelloError::UnexpectedContentType(101))
    );
    for cut in 0..stream.len() {
        assert_eq!(feed_in_chunks(&stream, &[cut]), whole, "cut at {cut}");
    }
    // The same for the first record: an alert type waits for the version byte to call it TLS.
    assert_eq!(Peeker::new(LIMIT).feed(&[21]), Progress::NeedMore);
    assert_eq!(
        feed_whole(&[21, 0x47]),
        Progress::Reject(HelloError::NotTls)
    );
    assert_eq!(
        feed_whole(&[21, 3]),
        Progress::Reject(HelloError::UnexpectedContentType(21))
    );
}

#[test]
fn record_headers_out_of_bounds_are_refused_at_once() {
    assert_eq!(
        rejection(&[22, 3, 1, 0x40, 0x01]),
        HelloError::RecordOverflow(16385)
    );
    assert_eq!(rejection(&[22, 3, 1, 0, 0]), HelloError::EmptyRecord);
    assert_eq!(
        rejection(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
        HelloError::NotClientHello(2)
    );
}

#[test]
fn malformed_names_are_refused() {
    let cases: &[(&[u8], HelloError)] = &[
        (b"", HelloError::BadServerName(NameError::Empty)),
        (
            b"a\0b.test",
            HelloError::BadServerName(NameError::ControlByte),
        ),
        (
            b"a\x07.test",
            HelloError::BadServerName(NameError::ControlByte),
        ),
        (&[b'a'; 256], HelloError::BadServerName(NameError::TooLong)),
    ];
    for (name, error) in cases {
        let stream = ClientHelloBuilder::new().server_name(name).record();
        assert_eq!(rejection(&stream), *error, "{}", name.escape_ascii());
        assert_eq!(error.alert(), Some(TlsAlertDescription::IllegalParameter));
    }
}

#[test]
fn two_host_names_are_refused() {
    let stream = ClientHelloBuilder::new()
        .server_name("a.test")
        .server_name("b.test")
        .record();
    assert_eq!(rejection(&stream), HelloError::TwoServerNames);
}

#[test]
fn a_second_server_name_extension_is_refused() {
    let mut list = vec![0, 0, 6, 0, 0, 3];
    list.extend_from_slice(b"b.t");
    list[1] = 6;
    let stream = ClientHelloBuilder::new()
        .server_name("a.test")
        .extension(0, &list)
        .record();
    assert_eq!(rejection(&stream), HelloError::DuplicateExtension(0));
}

#[test]
fn alpn_faults_are_refused() {
    let empty_protocol = ClientHelloBuilder::new().alpn(&["h2", ""]).record();
    assert_eq!(rejection(&empty_protocol), HelloError::EmptyAlpnProtocol);
    let none: [&str; 0] = [];
    let empty_list = ClientHelloBuilder::new().alpn(&none).record();
    assert_eq!(
        rejection(&empty_list),
        HelloError::Malformed("empty alpn list")
    );
}

/// RFC 7301 and 8446 bound ALPN lists and extensions only by the hello's size, and real clients
/// (Python's ssl with 200 protocols) send long lists: within `max_client_hello`, all are read.
#[test]
fn long_alpn_lists_and_many_extensions_are_routed() {
    let many: Vec<String> = (0..200).map(|i| format!("protocol-{i}")).collect();
    let long = ClientHelloBuilder::new().alpn(&many).record();
    assert!(long.len() > 2000);
    let hello = hello_of(&long);
    assert_eq!(hello.alpn.iter().count(), 200);
    assert_eq!(hello.alpn.iter().last(), Some(&b"protocol-199"[..]));
    let mut builder = ClientHelloBuilder::new().server_name("many.test");
    for extension_type in 0..300u16 {
        builder = builder.extension(0xf000 + extension_type, []);
    }
    let hello = hello_of(&builder.record());
    assert!(hello.extensions.contains(&(0xf000 + 299)));
    assert_eq!(hello.server_name.unwrap().as_str(), "many.test");
}

#[test]
fn an_outer_ech_hello_routes_on_its_public_name_and_an_inner_one_is_refused() {
    let outer = ClientHelloBuilder::new()
        .server_name("public.test")
        .extension(0xfe0d, [0, 0, 1, 0, 1, 7])
        .record();
    let hello = hello_of(&outer);
    assert_eq!(hello.ech, Ech::Outer);
    assert_eq!(hello.server_name.unwrap().as_str(), "public.test");
    let inner = ClientHelloBuilder::new()
        .server_name("secret.test")
        .extension(0xfe0d, [1])
        .record();
    assert_eq!(rejection(&inner), HelloError::EchInner);
    assert_eq!(
        HelloError::EchInner.alert(),
        Some(TlsAlertDescription::IllegalParameter)
    );
    let plain = ClientHelloBuilder::new().server_name("a.test").record();
    assert_eq!(hello_of(&plain).ech, Ech::None);
}

fn hello_of(record: &[u8]) -> ClientHello {
    hello(feed_whole(record))
}

/// A hello whose extension block length overruns the message must not read as a hello without
/// extensions (and so without SNI): that would route it to `[default]`.
#[test]
fn a_broken_extension_block_fails_closed() {
    let mut message = ClientHelloBuilder::new().server_name("a.test").message();
    // The extensions length sits after version, random, session id, suites and compression.
    let at = 4 + 2 + 32 + 1 + 32 + 2 + 8 + 2;
    let len = u16::from_be_bytes([message[at], message[at + 1]]);
    message[at..at + 2].copy_from_slice(&(len + 1).to_be_bytes());
    assert_eq!(
        rejection(&frame(&message, 1)),
        HelloError::Malformed("extensions length")
    );

    let mut message = ClientHelloBuilder::new().server_name("a.test").message();
    let len = u16::from_be_bytes([message[at], message[at + 1]]);
    message[at..at + 2].copy_from_slice(&(len - 1).to_be_bytes());
    assert!(matches!(
        rejection(&frame(&message, 1)),
        HelloError::Malformed(_)
    ));
}

#[test]
fn a_server_name_list_with_trailing_bytes_is_refused() {
    let mut list = vec![0, 0, 0, 0, 6];
    list.extend_from_slice(b"a.test");
    list.push(0xff);
    let len = (list.len() - 2) as u16;
    list[..2].copy_from_slice(&len.to_be_bytes());
    let stream = ClientHelloBuilder::new().extension(0, &list).record();
    assert_eq!(
        rejection(&stream),
        HelloError::Malformed("server_name entry")
    );
}

#[test]
fn every_rejection_maps_to_its_alert() {
    use TlsAlertDescription as Alert;
    assert_eq!(HelloError::NotTls.alert(), None);
    assert_eq!(
        HelloError::RecordOverflow(20000).alert(),
        Some(Alert::RecordOverflow)
    );
    assert_eq!(
        HelloError::NotClientHello(2).alert(),
        Some(Alert::UnexpectedMessage)
    );
    assert_eq!(
        HelloError::TooLarge { limit: 1 }.alert(),
        Some(Alert::DecodeError)
    );
    assert_eq!(
        HelloError::TwoServerNames.alert(),
        Some(Alert::IllegalParameter)
    );
}

fn any_stream() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(vec!["a.test", "B.Example.COM.", "", "x\0y"]);
    let protocols = prop::collection::vec(prop::sample::select(vec!["h2", "http/1.1", ""]), 0..4);
    (names, protocols, 0usize..3000, 1usize..8).prop_map(|(name, alpn, padding, records)| {
        let mut builder = ClientHelloBuilder::new().padding(padding);
        if !name.is_empty() {
            builder = builder.server_name(name);
        }
        if !alpn.is_empty() {
            builder = builder.alpn(&alpn);
        }
        frame(&builder.message(), records)
    })
}

proptest! {
    #[test]
    fn any_chunking_gives_the_whole_answer(
        stream in any_stream(),
        cuts in prop::collection::vec(any::<u16>(), 0..16),
    ) {
        crate::fuzzing::client_hello_chunks(&crate::fuzzing::chunks_input(&cuts, &stream));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_pass_the_limit(
        stream in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        crate::fuzzing::client_hello(&stream);
    }

    /// Whatever rustls makes of these hellos, sniroute agrees on name and ALPN.
    #[test]
    fn generated_hellos_read_as_rustls_reads_them(stream in any_stream()) {
        crate::fuzzing::client_hello_rustls(&stream);
    }
}
