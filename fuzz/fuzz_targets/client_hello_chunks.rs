//! Input plus cut points: chunked feeding gives the whole-input answer
//! (oracle: sniroute::fuzzing::client_hello_chunks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sniroute::fuzzing::client_hello_chunks(data);
});
