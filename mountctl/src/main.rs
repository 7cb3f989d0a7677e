//! `mountctl`: the syncoxide command line. Wiring only: it parses, validates, turns arguments into
//! the libraries' config structs, and prints. Messages say what to fix.

mod aws;
mod cli;
mod client;
mod commands;
mod control;
mod daemon;
mod mountinfo;
mod named;
mod plan;
mod registry;
mod remote;
mod secrets;
mod serve;
mod units;

use std::io::IsTerminal;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // A mount served here logs what it does (to its log file in the background); other
    // commands only warn.
    let default_level = match &cli.command {
        cli::Command::Mount(a) if a.foreground => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SYNCOXIDE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_ansi(std::io::stderr().is_terminal())
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
