//! Frames protected into client Initials, past the AEAD (oracle: sniroute::fuzzing::quic_frames).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sniroute::fuzzing::quic_frames(data);
});
