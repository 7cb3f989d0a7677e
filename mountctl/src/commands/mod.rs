//! One module per command; each turns parsed arguments into library calls.

mod cache_cmd;
mod mount_cmd;
mod remote_cmd;
mod running_cmd;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Cache(c) => cache_cmd::run(c),
        Command::Mount(a) => mount_cmd::run(*a),
        Command::Remote(c) => remote_cmd::run(c),
        Command::Unmount { mountpoint, wait } => running_cmd::unmount(&mountpoint, wait.timeout),
        Command::Status { mountpoint, json } => running_cmd::status(mountpoint.as_deref(), json),
        Command::Pin { paths } => running_cmd::pin(&paths, true),
        Command::Unpin { paths } => running_cmd::pin(&paths, false),
        Command::State { paths } => running_cmd::state(&paths),
        Command::Conflicts { mountpoint, json } => {
            running_cmd::conflicts(mountpoint.as_deref(), json)
        }
        Command::Flush { mountpoint, wait } => running_cmd::flush(&mountpoint, wait.timeout),
    }
}
