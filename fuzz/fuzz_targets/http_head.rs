//! Bytes into the port-80 request-head reader (oracle: sniroute::fuzzing::http_head).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sniroute::fuzzing::http_head(data);
});
