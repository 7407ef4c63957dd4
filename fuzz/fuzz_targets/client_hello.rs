//! Whole input into the ClientHello peeker: it never panics and never reads past its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniroute::hello::{Peeker, Progress};

const LIMIT: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Progress::Hello(hello) = Peeker::new(LIMIT).feed(data) {
        assert!(hello.wire_len <= LIMIT && hello.wire_len <= data.len());
    }
});
