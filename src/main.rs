//! The `sniroute` binary: parse the command line, run it, print one line on failure.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc rather than glibc's malloc, which keeps the pages a reload of a large route table
/// frees: jemalloc's background thread hands them back to the system within seconds, even while
/// the proxy is idle (README "Multi-tenant scale").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Without it, freed pages go back only as later allocations come: not while idle.
    #[cfg(feature = "jemalloc")]
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let args = match sniroute::cli::Args::try_parse() {
        Ok(args) => args,
        // --help and --version print to stdout and exit 0.
        Err(error) if !error.use_stderr() => error.exit(),
        // A usage error is one line too, like every other fault, with clap's status 2.
        Err(error) => {
            let text = error.to_string();
            let line = text.lines().next().unwrap_or_default();
            eprintln!("{}", line.strip_prefix("error: ").unwrap_or(line));
            return ExitCode::from(2);
        }
    };
    match sniroute::cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
