//! The `pointsman` binary: parses the command line, runs the command, maps the result to an
//! exit code (0 success, 1 a check that ran and failed, 2 an error).

use std::process::ExitCode;

use clap::Parser;
use pointsman::cli::{self, Cli, Outcome};

/// jemalloc for the whole process: the binary's `malloc` and `free` are jemalloc's, so ONNX
/// Runtime's allocations (loaded at run time, it calls the process's `malloc`) go to it too.
/// glibc's `malloc` and `free` were 4% of the server's samples in a profile of `serve` at
/// concurrency 1; with jemalloc a request took about 0.1 ms less (2%, with a wide spread: the
/// paired runs of `benches/ab.sh` in docs/speed.md), with the same answers.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = match cli::init_logging(cli.log_format, cli.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match cli::run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
