//! Whole input into the ClientHello peeker (oracle: sniroute::fuzzing::client_hello).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sniroute::fuzzing::client_hello(data);
});
