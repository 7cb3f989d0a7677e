//! `mountctl`: the syncoxide command line. Wiring only: it parses, validates, turns arguments into
//! the libraries' config structs, and prints. Messages say what to fix.

mod cli;
mod commands;
mod secrets;
mod units;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SYNCOXIDE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mountctl: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
