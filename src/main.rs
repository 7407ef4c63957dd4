//! The `sniroute` binary: parse the command line, run it, print one line on failure.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = sniroute::cli::Args::parse();
    match sniroute::cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
