//! Raw datagrams into a QUIC flow's Initial reader (oracle: sniroute::fuzzing::quic_datagrams).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sniroute::fuzzing::quic_datagrams(data);
});
