//! Differential check against rustls' Acceptor (oracle: sniroute::fuzzing::client_hello_rustls).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sniroute::fuzzing::client_hello_rustls(data);
});
