//! Arbitrary bytes through the route-file and proxy-file parsers (see `harness/route_file.rs`).
#![no_main]

#[path = "../harness/route_file.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
