//! One module per command; each turns parsed arguments into library calls.

mod cache_cmd;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Cache(c) => cache_cmd::run(c),
    }
}
