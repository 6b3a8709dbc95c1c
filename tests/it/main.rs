//! Integration tests, built as one binary. Tests that need the real embedding model fail loudly
//! when it is missing (run `scripts/setup.sh`, or `scripts/test.sh` which does it for you).

mod api;
mod apis;
mod clients;
mod common;
mod cost;
mod door;
mod e2e;
mod faults;
mod fuzz_regressions;
mod model;
mod proxy;
mod quality;
mod redis;
mod specs;
mod upstream;
