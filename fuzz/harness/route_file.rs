//! The route-file fuzz harness, shared by `fuzz/fuzz_targets/route_file.rs` and the regression
//! test `tests/it/fuzz_regressions.rs`: arbitrary bytes through the route-file parser (as one
//! file, and split into two) and through the proxy-file parser. Errors are fine when they place
//! each problem on a line of a file given; a panic, or a valid table that does not survive
//! `to_yaml` and back, is a bug.

use std::path::PathBuf;

use pointsman::config::{self, ConfigError, RouteTable};
use pointsman::proxy_config::ProxyConfig;

/// Where an input is cut into two route files, when it holds this line; else at the newline
/// nearest its middle.
pub const SPLIT_MARK: &[u8] = b"\n#split\n";

/// Runs one input through every parser; panics on a bug.
pub fn check(data: &[u8]) {
    match config::parse_sources(&[(PathBuf::from("fuzz.yaml"), data.to_vec())]) {
        Ok(table) => round_trip(&table),
        Err(e) => check_places(&e, &[data]),
    }
    let (first, second) = split(data);
    let two = [
        (PathBuf::from("a.yaml"), first.to_vec()),
        (PathBuf::from("b.yaml"), second.to_vec()),
    ];
    match config::parse_sources(&two) {
        Ok(table) => round_trip(&table),
        Err(e) => check_places(&e, &[first, second]),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let env = |_: &str| Some("k".to_string());
        if let Err(e) = ProxyConfig::parse("proxy.yaml".as_ref(), text, &env) {
            let _ = e.to_string();
        }
    }
}

/// Every problem is reported in one of the files, on one of its lines (line 0: unknown).
fn check_places(error: &ConfigError, files: &[&[u8]]) {
    let shown = error.to_string();
    let ConfigError::Invalid { issues } = error else {
        panic!("parsing in memory failed as if reading files: {shown}");
    };
    assert!(!issues.is_empty(), "invalid without a problem: {shown}");
    for issue in issues {
        let file = match issue.file.to_str() {
            Some("fuzz.yaml" | "a.yaml") => files[0],
            Some("b.yaml") => files[files.len() - 1],
            _ => panic!("a problem in a file not given: {issue}"),
        };
        // YAML breaks lines at `\n`, `\r\n` and a lone `\r`
        let lone_cr = file
            .windows(2)
            .filter(|w| w[0] == b'\r' && w[1] != b'\n')
            .count()
            + usize::from(file.last() == Some(&b'\r'));
        let lines = 1 + file.iter().filter(|&&b| b == b'\n').count() + lone_cr;
        assert!(issue.line <= lines, "{issue}: the file has {lines} lines");
    }
}

/// The two files an input stands for.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    if let Some(at) = data.windows(SPLIT_MARK.len()).position(|w| w == SPLIT_MARK) {
        return (&data[..at + 1], &data[at + SPLIT_MARK.len()..]);
    }
    let middle = data.len() / 2;
    let at = data[middle..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |i| middle + i + 1);
    data.split_at(at)
}

/// A valid table written back as YAML must parse again into the same canonical table.
fn round_trip(table: &RouteTable) {
    let yaml = config::to_yaml(table);
    let back = config::parse_sources(&[(PathBuf::from("round-trip.yaml"), yaml.clone().into())])
        .unwrap_or_else(|e| panic!("to_yaml wrote a file that does not parse: {e}\n{yaml}"));
    assert_eq!(
        back.canonical_hash(),
        table.canonical_hash(),
        "to_yaml changed the table\nbefore: {table:?}\nafter:  {back:?}\n{yaml}"
    );
}
