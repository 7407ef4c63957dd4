//! Bytes into the PROXY protocol v1/v2 decoder (oracle: sniroute::fuzzing::proxy_protocol).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sniroute::fuzzing::proxy_protocol(data);
});
