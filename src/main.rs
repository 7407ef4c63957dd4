//! The `sniroute` binary: parse the command line, run it, print one line on failure.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
