//! Replays every fuzz corpus file and every past crash (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the oracle its target uses, so `cargo test` on stable
//! checks what the fuzzers found without libFuzzer.

use std::path::Path;

use sniroute::fuzzing;

fn replay(target: &str, oracle: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| oracle(&bytes)).is_err() {
                panic!("{} fails the {target} oracle", path.display());
            }
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus for {target}");
}

#[test]
fn client_hello_corpus() {
    replay("client_hello", |bytes| {
        fuzzing::client_hello(bytes);
    });
}

#[test]
fn client_hello_chunks_corpus() {
    replay("client_hello_chunks", fuzzing::client_hello_chunks);
}

#[test]
fn client_hello_rustls_corpus() {
    replay("client_hello_rustls", fuzzing::client_hello_rustls);
}

#[test]
fn config_corpus() {
    replay("config", |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes) {
            fuzzing::config(text);
        }
    });
}

#[test]
fn route_corpus() {
    replay("route", fuzzing::route);
}

#[test]
fn proxy_protocol_corpus() {
    replay("proxy_protocol", fuzzing::proxy_protocol);
}

#[test]
fn http_head_corpus() {
    replay("http_head", fuzzing::http_head);
}

#[test]
fn quic_datagrams_corpus() {
    replay("quic_datagrams", fuzzing::quic_datagrams);
}

#[test]
fn quic_frames_corpus() {
    replay("quic_frames", fuzzing::quic_frames);
}
