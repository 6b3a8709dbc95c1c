//! Arbitrary request bodies to the JSON endpoints (see `harness/request_bodies.rs`).
#![no_main]

#[path = "../harness/request_bodies.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(
    init: harness::check_alive(),
    |data: &[u8]| harness::check(data)
);
