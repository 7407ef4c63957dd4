use super::synth::{crypto_frame, initial};
use super::*;
use crate::hello::synth::ClientHelloBuilder;

fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/quic/{name}", env!("CARGO_MANIFEST_DIR"));
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}

const DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

/// RFC 9001 Appendix A.2 and RFC 9369 Appendix A.2: the same client Initial protected for
/// versions 1 and 2 decrypts to one CRYPTO frame carrying a hello for example.com.
#[test]
fn the_rfc_client_initials_give_their_hello() {
    for (file, version) in [
        ("rfc9001-a2-client-initial.hex", Version::V1),
        ("rfc9369-a2-client-initial.hex", Version::V2),
    ] {
        let datagram = vector(file);
        assert_eq!(datagram.len(), 1200);
        let mut reader = InitialReader::new(DEFAULT_CRYPTO_LIMIT);
        let hello = reader.feed(&datagram).unwrap().expect("a complete hello");
        assert_eq!(
            hello.server_name.as_ref().map(|name| name.as_str()),
            Some("example.com"),
            "{file}"
        );
        assert_eq!(hello.alpn.first(), Some(&b"alpn"[..]));
        assert_eq!(hello.wire_len, 241);
        assert_eq!(reader.connection(), Some((version, &DCID[..])));
    }
}

/// A post-quantum-sized hello in CRYPTO frames spread over two datagrams, shuffled and mixed
/// with PING, PADDING and ACK (as Chrome sends it), reassembles; nothing completes early.
#[test]
fn a_hello_in_shuffled_frames_across_datagrams_reassembles() {
    let message = ClientHelloBuilder::new()
        .server_name("big.test")
        .alpn(&["h3"])
        .padding(1800)
        .message();
    assert!(message.len() > 1800);
    let cuts = [0, 700, 900, 1500, message.len()];
    let piece = |n: usize| crypto_frame(cuts[n], &message[cuts[n]..cuts[n + 1]]);
    for version in [Version::V1, Version::V2] {
        let mut first = piece(2);
        first.push(0x01); // PING
        first.extend(piece(0));
        let mut second = vec![0x02, 0x00, 0x00, 0x00, 0x00]; // ACK 0
        second.extend(piece(3));
        second.extend([0x00, 0x00]); // PADDING
        second.extend(piece(1));
        let mut reader = InitialReader::new(DEFAULT_CRYPTO_LIMIT);
        let one = initial(version, &DCID, b"c", 0, &first).unwrap();
        assert_eq!(reader.feed(&one), Ok(None));
        let two = initial(version, &DCID, b"c", 1, &second).unwrap();
        let hello = reader.feed(&two).unwrap().expect("complete");
        assert_eq!(hello.server_name.unwrap().as_str(), "big.test");
        assert_eq!(hello.alpn.first(), Some(&b"h3"[..]));
    }
}

#[test]
fn what_cannot_be_read_is_refused() {
    let hello = ClientHelloBuilder::new().server_name("a.test").message();
    let good = initial(Version::V1, &DCID, b"", 0, &crypto_frame(0, &hello)).unwrap();
    let read = |datagram: &[u8]| InitialReader::new(DEFAULT_CRYPTO_LIMIT).feed(datagram);
    assert!(read(&good).unwrap().is_some());

    let mut tampered = good.clone();
    tampered[100] ^= 1;
    assert_eq!(read(&tampered), Err(QuicError::Undecryptable));

    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&0xff00_001d_u32.to_be_bytes());
    assert_eq!(read(&unknown), Err(QuicError::UnknownVersion(0xff00_001d)));

    assert_eq!(
        read(&good[..1100]),
        Err(QuicError::Malformed("a packet longer than its datagram"))
    );
    let stream_frame = [0x08, 0x00, 0x01, 0x61];
    let stream = initial(Version::V1, &DCID, b"", 0, &stream_frame).unwrap();
    assert_eq!(read(&stream), Err(QuicError::ProtocolViolation(0x08)));
    let close = initial(Version::V2, &DCID, b"", 0, &[0x1c, 0x00, 0x00, 0x00]).unwrap();
    assert_eq!(read(&close), Err(QuicError::ClientClosed));

    // A second Initial for another connection ID is not this flow's.
    let mut reader = InitialReader::new(DEFAULT_CRYPTO_LIMIT);
    let half = initial(Version::V1, &DCID, b"", 0, &crypto_frame(0, &hello[..10])).unwrap();
    assert_eq!(reader.feed(&half), Ok(None));
    let other = initial(
        Version::V1,
        b"other-id",
        b"",
        1,
        &crypto_frame(10, &hello[10..]),
    )
    .unwrap();
    assert_eq!(
        reader.feed(&other),
        Err(QuicError::Malformed("an Initial of another connection"))
    );

    // A short-header datagram carries no Initial: nothing changes.
    assert_eq!(read(&[0x40, 1, 2, 3]), Ok(None));

    // A hello that is not one: the same refusal as over TCP.
    let junk = initial(
        Version::V1,
        &DCID,
        b"",
        0,
        &crypto_frame(0, &[2, 0, 0, 1, 0]),
    )
    .unwrap();
    assert!(matches!(read(&junk), Err(QuicError::Hello(_))));
}

/// An Initial coalesced with a 0-RTT packet after it (RFC 9000 §12.2) is read; the 0-RTT packet
/// is left alone.
#[test]
fn coalesced_packets_are_walked() {
    let hello = ClientHelloBuilder::new().server_name("a.test").message();
    let mut datagram = initial(Version::V1, &DCID, b"", 0, &crypto_frame(0, &hello)).unwrap();
    // A 0-RTT long header (type 0b01 in v1) with a 20-byte body.
    datagram.extend([0xd3, 0, 0, 0, 1, 8]);
    datagram.extend(DCID);
    datagram.extend([0, 20]);
    datagram.extend([0u8; 20]);
    let hello = InitialReader::new(DEFAULT_CRYPTO_LIMIT)
        .feed(&datagram)
        .unwrap();
    assert_eq!(hello.unwrap().server_name.unwrap().as_str(), "a.test");
}
