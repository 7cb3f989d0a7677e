//! The command line, as clap types. Parsers validate here so that errors name the flag.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Mount REMOTE (a local folder, s3://BUCKET[/PREFIX], webdav[s]://HOST/PATH,
    /// sftp://USER@HOST/PATH, or a named remote NAME: or NAME:SUB/DIR) on MOUNTPOINT. Returns
    /// once the mount is live; the mount keeps running in the background until `mountctl
    /// unmount MOUNTPOINT`.
    Mount(Box<MountArgs>),
    /// Upload everything queued, then unmount and stop the mount's process. Exit code 1 if the
    /// provider could not be reached: the drive is unmounted all the same, and what stays
    /// queued in the cache's write-ahead log is uploaded by the next mount of that cache.
    Unmount {
        /// Where the drive is mounted.
        mountpoint: PathBuf,
        #[command(flatten)]
        wait: StallArg,
    },
    /// Show running mounts: cache use, dirty bytes, queued operations, uploads in flight and
    /// the last error. Without MOUNTPOINT: every registered mount.
    Status {
        /// One mount only.
        mountpoint: Option<PathBuf>,
        /// Print JSON instead of text (an object for one MOUNTPOINT, else an array).
        #[arg(long)]
        json: bool,
    },
    /// Fetch files (directories recursively) into the cache and keep them there: available
    /// offline. Pinned bytes count toward the cache limit; a pin that does not fit is refused.
    Pin {
        /// Files or directories on a running mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Let pinned files be evicted from the cache again.
    Unpin {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show each file's state: online-only, partly-cached, cached, pinned, dirty, uploading,
    /// conflict (or directory, symlink).
    State {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the conflicts a running mount resolved since it started: the file, where the losing
    /// version was saved, and which version is at the name. Without MOUNTPOINT: every mount.
    Conflicts {
        /// One mount only.
        mountpoint: Option<PathBuf>,
        /// Print JSON instead of text (an array of conflicts, each with its `mountpoint`).
        #[arg(long)]
        json: bool,
    },
    /// Upload everything queued now (ignoring the write-back delay); returns when the queue is
    /// empty, or fails if the provider stops taking it.
    Flush {
        /// Where the drive is mounted.
        mountpoint: PathBuf,
        #[command(flatten)]
        wait: StallArg,
    },
    /// Manage the encrypted local cache: create it, show its use, change its passphrase, wipe it.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Manage named remotes: a URL and its options stored under a NAME, mounted as `mountctl
    /// mount NAME: MOUNTPOINT`. Kept in $XDG_CONFIG_HOME/syncoxide/remotes.toml (else
    /// ~/.config/syncoxide/remotes.toml, or the file SYNCOXIDE_REMOTES names), private (0600).
    #[command(subcommand)]
    Remote(RemoteCommand),
}

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Store a remote under NAME. Secrets never come from the command line: a WebDAV password
    /// is stored only with --password-from-env or --ask-password.
    Add(Box<RemoteAddArgs>),
    /// Show the named remotes: name, URL and options (a stored password shows as
    /// `password: stored`, never its value).
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of text (an array of remotes).
        #[arg(long)]
        json: bool,
    },
    /// Forget the remote NAME (its cache and what it mounted stay as they are).
    #[command(alias = "rm")]
    Remove {
        /// The remote's name.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct RemoteAddArgs {
    /// The name: letters, digits, - and _, at least two characters (mounted as NAME: or
    /// NAME:SUB/DIR).
    pub name: String,
    /// What it names: a local folder (a path, made absolute, or a file:// URL), s3://BUCKET[/PREFIX],
    /// webdav[s]://[USER@]HOST[:PORT]/PATH or sftp://USER@HOST[:PORT]/PATH.
    pub url: String,
    #[command(flatten)]
    pub options: RemoteOptions,
    /// Store the WebDAV password, read from SYNCOXIDE_WEBDAV_PASSWORD.
    #[arg(long, conflicts_with = "ask_password", help_heading = "WebDAV")]
    pub password_from_env: bool,
    /// Store the WebDAV password, asked for (twice) on the terminal.
    #[arg(long, help_heading = "WebDAV")]
    pub ask_password: bool,
    /// Replace the remote of that name if there is one (else adding an existing name fails).
    #[arg(long)]
    pub force: bool,
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

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// The remote: a local folder (a path or a file:// URL), an S3 bucket,
    /// s3://BUCKET[/PREFIX] (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the
    /// AWS profile files), or a WebDAV folder, webdav[s]://[USER@]HOST[:PORT]/PATH (the
    /// password in SYNCOXIDE_WEBDAV_PASSWORD, else the one stored with the named remote), or an
    /// SFTP folder, sftp://USER@HOST[:PORT]/PATH (key authentication), or a named remote (see
    /// `mountctl remote`): NAME: for its URL and options, NAME:SUB/DIR for a folder inside it
    /// (options given here override the stored ones; ./NAME: is the local folder of that name).
    pub remote: String,
    /// An existing, empty directory to mount on.
    pub mountpoint: PathBuf,
    /// The cache directory [default: one per remote, `local-HASH` in the default cache
    /// directory ($XDG_CACHE_HOME/syncoxide or ~/.cache/syncoxide), HASH naming the remote's
    /// canonical path]. The mount's log is written beside it, as DIR.log.
    #[arg(long, value_name = "DIR", help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the cache may use on disk, every file counted (e.g. 512MiB, 10GiB).
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = crate::units::parse_size, help_heading = "Cache")]
    pub cache_size: u64,
    /// Bytes per chunk, the unit of fetching and caching (4KiB to 16MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_chunk_size, help_heading = "Cache")]
    pub chunk_size: u64,
    /// How long after a file is closed it is uploaded (e.g. 250ms, 5s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::units::parse_duration, help_heading = "Transfers")]
    pub write_back_delay: Duration,
    /// How long a directory listing is trusted before it is read again from the remote.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::units::parse_duration, help_heading = "Transfers")]
    pub dir_cache_time: Duration,
    /// How often the remote is polled for changes made elsewhere (0 turns polling off).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = crate::units::parse_duration, help_heading = "Remote changes")]
    pub poll_interval: Duration,
    /// How long the kernel may cache a file's attributes; a file opened after they are older
    /// is checked against the remote first (close-to-open consistency).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::units::parse_duration, help_heading = "Remote changes")]
    pub attr_timeout: Duration,
    /// Who wins when a file changed both here and on the remote: keep-both (the remote version
    /// stays at the name, the local one is saved beside it as NAME.conflict-HOST-TIME.EXT),
    /// newer, older, larger, smaller, local or remote.
    #[arg(long, value_name = "POLICY", default_value = "keep-both", value_parser = parse_conflict, help_heading = "Remote changes")]
    pub conflict: fs_core::ConflictPolicy,
    /// What becomes of the version a policy did not pick: keep (as a conflict copy) or delete.
    #[arg(long, value_name = "WHAT", default_value = "keep", value_parser = parse_loser, help_heading = "Remote changes")]
    pub conflict_loser: fs_core::ConflictLoser,
    /// Merge text files changed on both sides line by line when the changes do not overlap
    /// (else the conflict policy decides).
    #[arg(long, help_heading = "Remote changes")]
    pub auto_merge: bool,
    /// How long a read of data that is not cached waits for an unreachable remote before it
    /// fails with an I/O error.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::units::parse_duration, help_heading = "Remote changes")]
    pub offline_timeout: Duration,
    /// Uploads and other remote operations in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256), help_heading = "Transfers")]
    pub transfers: u16,
    #[command(flatten)]
    pub remote_options: RemoteOptions,
    /// Mount read-only.
    #[arg(long, help_heading = "Mount")]
    pub read_only: bool,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long, help_heading = "Mount")]
    pub allow_other: bool,
    /// Serve the mount from this process, in the foreground, until Ctrl-C, SIGTERM or
    /// `mountctl unmount`.
    #[arg(long, help_heading = "Mount")]
    pub foreground: bool,
    #[command(flatten)]
    pub pass: PassArgs,
    /// Internal: started by `mountctl mount` in the background. The passphrase arrives on
    /// stdin; readiness or the error goes to stdout as one JSON line.
    #[arg(long, hide = true, requires = "foreground")]
    pub daemon_child: bool,
}

/// The options of a remote itself (not of a mount of it): given to `mount`, or stored with a
/// named remote by `remote add` (the command line's win over the stored ones at `mount`).
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Deadline of every request to a network remote: connecting, the answer's start, and each
    /// wait for more of a body [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration, help_heading = "Transfers")]
    pub request_timeout: Option<Duration>,
    /// The S3 endpoint, for S3-compatible servers (e.g. http://127.0.0.1:9000) [default:
    /// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS's endpoint of the region].
    #[arg(long, value_name = "URL", help_heading = "S3")]
    pub s3_endpoint: Option<String>,
    /// The S3 region [default: AWS_REGION, AWS_DEFAULT_REGION, the profile's, else us-east-1].
    #[arg(long, value_name = "REGION", help_heading = "S3")]
    pub s3_region: Option<String>,
    /// How the bucket is addressed: path (endpoint/BUCKET/key) or virtual (BUCKET.endpoint/key)
    /// [default: virtual for AWS, path for other endpoints].
    #[arg(long, value_name = "STYLE", value_enum, help_heading = "S3")]
    pub s3_addressing: Option<crate::aws::Addressing>,
    /// The AWS profile whose credentials (and region) to use [default: AWS_PROFILE, else
    /// default].
    #[arg(long, value_name = "NAME", help_heading = "S3")]
    pub s3_profile: Option<String>,
    /// The private key of an sftp:// remote (ed25519 or ECDSA; an encrypted one's passphrase
    /// in SYNCOXIDE_SFTP_KEY_PASSPHRASE) [default: ~/.ssh/id_ed25519, ~/.ssh/id_ecdsa].
    #[arg(long, value_name = "FILE", help_heading = "SFTP")]
    pub sftp_key: Option<PathBuf>,
    /// The known_hosts file the server's key must be in [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE", help_heading = "SFTP")]
    pub sftp_known_hosts: Option<PathBuf>,
}

/// `--request-timeout` when none is given.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl RemoteOptions {
    /// The S3 settings given.
    pub fn s3_options(&self) -> crate::aws::S3Options {
        crate::aws::S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            addressing: self.s3_addressing,
            profile: self.s3_profile.clone(),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }

    /// These options, each one not given taken from `stored`.
    pub fn or(self, stored: &RemoteOptions) -> RemoteOptions {
        RemoteOptions {
            request_timeout: self.request_timeout.or(stored.request_timeout),
            s3_endpoint: self.s3_endpoint.or_else(|| stored.s3_endpoint.clone()),
            s3_region: self.s3_region.or_else(|| stored.s3_region.clone()),
            s3_addressing: self.s3_addressing.or(stored.s3_addressing),
            s3_profile: self.s3_profile.or_else(|| stored.s3_profile.clone()),
            sftp_key: self.sftp_key.or_else(|| stored.sftp_key.clone()),
            sftp_known_hosts: self
                .sftp_known_hosts
                .or_else(|| stored.sftp_known_hosts.clone()),
        }
    }
}

#[derive(Args, Debug)]
pub struct StallArg {
    /// Give up uploading once the queue has not shrunk for this long (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
}

fn parse_conflict(s: &str) -> Result<fs_core::ConflictPolicy, String> {
    fs_core::ConflictPolicy::parse(s).ok_or_else(|| {
        format!(
            "{s:?} is not a conflict policy; use one of {}",
            fs_core::ConflictPolicy::NAMES.join(", ")
        )
    })
}

fn parse_loser(s: &str) -> Result<fs_core::ConflictLoser, String> {
    match s {
        "keep" => Ok(fs_core::ConflictLoser::Keep),
        "delete" => Ok(fs_core::ConflictLoser::Delete),
        _ => Err(format!(
            "{s:?} is not an answer; use keep (save the losing version as a conflict copy) or delete"
        )),
    }
}

fn parse_chunk_size(s: &str) -> Result<u64, String> {
    let n = crate::units::parse_size(s)?;
    if !(4 << 10..=16 << 20).contains(&n) {
        return Err(format!(
            "{s:?} is out of range; the chunk size must be between 4KiB and 16MiB (1MiB is the default)"
        ));
    }
    Ok(n)
}

#[derive(Args, Debug)]
pub struct CacheDirArg {
    /// The cache directory.
    #[arg(long, value_name = "DIR", default_value_os_t = default_cache_dir(), help_heading = "Cache")]
    pub cache_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
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
