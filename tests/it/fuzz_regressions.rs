//! Replays the fuzz seeds (`fuzz/seeds/<target>/`) and every input a fuzzer once crashed on
//! (`tests/fuzz-regressions/<target>/`) through the fuzz targets' own harnesses, so that a fixed
//! bug stays fixed without a nightly toolchain. `scripts/fuzz.sh` says how to add an input.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/harness/request_bodies.rs"]
mod request_bodies;
#[path = "../../fuzz/harness/route_file.rs"]
mod route_file;

/// The seeds and regression inputs of `target`, in name order; dotfiles and READMEs skipped.
fn inputs(target: &str) -> Vec<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        repo.join("fuzz/seeds").join(target),
        repo.join("tests/fuzz-regressions").join(target),
    ] {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut here: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                p.is_file() && !name.starts_with('.') && !name.starts_with("README")
            })
            .collect();
        here.sort();
        files.extend(here);
    }
    assert!(!files.is_empty(), "no inputs for {target}");
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    for path in inputs(target) {
        // the harness panics on a bug; say which input it was
        eprintln!("replaying {}", path.display());
        check(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn route_file_inputs_do_not_crash() {
    replay("route_file", route_file::check);
}

#[test]
fn request_body_inputs_do_not_crash() {
    replay("request_bodies", request_bodies::check);
    request_bodies::check_alive();
}
