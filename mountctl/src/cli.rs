//! The command line, as clap types. Parsers validate here so that errors name the flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mountctl",
    version,
    about = "syncoxide: cloud storage as a local drive"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage the encrypted local cache: create it, show its use, change its passphrase, wipe it.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Create an encrypted cache (or check that the passphrase opens an existing one).
    Init(CacheOpenArgs),
    /// Show what the cache holds: bytes used and allowed, dirty and pinned data.
    Status {
        #[command(flatten)]
        open: CacheOpenArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change the passphrase. Only the wrapped key is rewritten; cached data stays valid.
    Passwd {
        #[command(flatten)]
        dir: CacheDirArg,
        #[command(flatten)]
        pass: PassArgs,
        /// File holding the new passphrase (else SYNCOXIDE_NEW_PASSPHRASE, else a prompt).
        #[arg(long, value_name = "FILE", help_heading = "Passphrase")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Destroy the cache: the key first (crypto-erase), then every file, unflushed data included.
    Wipe {
        #[command(flatten)]
        dir: CacheDirArg,
        /// Confirm that data not yet uploaded may be destroyed.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug)]
pub struct CacheDirArg {
    /// The cache directory.
    #[arg(long, value_name = "DIR", default_value_os_t = default_cache_dir(), help_heading = "Cache")]
    pub cache_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct PassArgs {
    /// File holding the passphrase (else SYNCOXIDE_PASSPHRASE, else a prompt on a terminal).
    #[arg(long, value_name = "FILE", help_heading = "Passphrase")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CacheOpenArgs {
    #[command(flatten)]
    pub dir: CacheDirArg,
    /// Most bytes the cache may use on disk, every file counted (e.g. 512MiB, 10GiB).
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = crate::units::parse_size, help_heading = "Cache")]
    pub cache_size: u64,
    /// Keep at least this much free on the cache's disk (e.g. 1GiB); 0 for no floor.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = crate::units::parse_size, help_heading = "Cache")]
    pub cache_min_free: u64,
    #[command(flatten)]
    pub pass: PassArgs,
}

/// `$XDG_CACHE_HOME/syncoxide` or `~/.cache/syncoxide`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("syncoxide");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("syncoxide"),
        None => PathBuf::from("/var/tmp/syncoxide-cache"),
    }
}
