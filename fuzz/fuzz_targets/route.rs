//! Random route tables and lookups (oracle: sniroute::fuzzing::route).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sniroute::fuzzing::route(data);
});
