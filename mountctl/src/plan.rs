//! A mount, checked before anything is created: the remote folder exists (or an S3 remote's
//! settings and credentials are found), the mount point is an existing directory that nothing
//! is mounted on, the cache directory can be created or written, and none of them lies inside
//! another. Each refusal says what to fix.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use fs_core::provider::s3::{S3Config, S3Provider};
use fs_core::provider::sftp::{SftpConfig, SftpProvider};
use fs_core::provider::webdav::{WebDavConfig, WebDavProvider};
use fs_core::VfsConfig;

use crate::aws::{self, S3Options};
use crate::cli::MountArgs;
use crate::remote::{
    default_cache_dir_for, default_cache_dir_for_s3, default_cache_dir_for_sftp,
    default_cache_dir_for_webdav, Remote,
};
use crate::secrets::Secret;
use crate::units::duration_arg;
use crate::{mountinfo, registry};

/// Longest path a unix socket address holds (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The remote of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanRemote {
    /// Canonical remote folder (or its absolute path while it cannot be reached).
    Local(PathBuf),
    /// A bucket and prefix; `endpoint` is the resolved endpoint (for the cache's name).
    S3 {
        bucket: String,
        prefix: String,
        options: S3Options,
        endpoint: String,
    },
    /// A WebDAV folder (`http(s)://…/`), the user of its URL and that user's password (from
    /// [`WEBDAV_PASSWORD_ENV`], else stored with the named remote; never shown).
    WebDav {
        url: String,
        user: Option<String>,
        password: Option<Secret>,
    },
    /// An SFTP folder, the key file to log in with and the known_hosts file.
    Sftp {
        user: String,
        host: String,
        port: u16,
        path: String,
        key: PathBuf,
        known_hosts: Option<PathBuf>,
    },
}

/// Where the passphrase of an encrypted SFTP key comes from (never the command line).
pub const SFTP_KEY_PASSPHRASE_ENV: &str = "SYNCOXIDE_SFTP_KEY_PASSPHRASE";

/// The key an SFTP mount logs in with: `--sftp-key`, else the first of `~/.ssh/id_ed25519`,
/// `~/.ssh/id_ecdsa` that exists.
fn sftp_key(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(k) = given {
        return std::path::absolute(k)
            .with_context(|| format!("cannot make {} absolute", k.display()));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    for name in ["id_ed25519", "id_ecdsa"] {
        let p = home.join(".ssh").join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no SSH key for the SFTP remote: give one with --sftp-key FILE (ed25519 or ECDSA), or create ~/.ssh/id_ed25519 (ssh-keygen -t ed25519)")
}

/// The provider settings of an SFTP remote.
#[allow(clippy::too_many_arguments)]
pub fn sftp_config(
    user: &str,
    host: &str,
    port: u16,
    path: &str,
    key: &Path,
    known_hosts: Option<&Path>,
    request_timeout: Duration,
) -> SftpConfig {
    SftpConfig {
        host: host.to_string(),
        port,
        user: user.to_string(),
        path: path.to_string(),
        key: key.to_path_buf(),
        key_passphrase: std::env::var(SFTP_KEY_PASSPHRASE_ENV).ok(),
        known_hosts: known_hosts.map(Path::to_path_buf),
        host_key_fingerprint: None,
        request_timeout,
    }
}

/// Where the password of a WebDAV remote comes from (never the command line).
pub const WEBDAV_PASSWORD_ENV: &str = "SYNCOXIDE_WEBDAV_PASSWORD";

/// The password of a WebDAV remote whose URL names `user`: [`WEBDAV_PASSWORD_ENV`], else the
/// one `stored` with the named remote. None without a user.
pub fn webdav_password(user: Option<&str>, stored: Option<Secret>) -> Result<Option<Secret>> {
    let Some(u) = user else {
        return Ok(None);
    };
    if let Ok(p) = std::env::var(WEBDAV_PASSWORD_ENV) {
        return Ok(Some(Secret::new(p)));
    }
    match stored {
        Some(p) => Ok(Some(p)),
        None => bail!(
            "the WebDAV remote names the user {u:?}: give the password in {WEBDAV_PASSWORD_ENV}, or store it with a named remote (`mountctl remote add NAME URL --ask-password`)"
        ),
    }
}

/// The provider settings of a WebDAV remote: basic authentication when the URL names a user.
pub fn webdav_config(
    url: &str,
    user: Option<&str>,
    password: Option<&Secret>,
    request_timeout: Duration,
) -> WebDavConfig {
    WebDavConfig {
        url: url.to_string(),
        username: user.map(str::to_string),
        password: password.map(|p| p.expose().to_string()),
        request_timeout,
    }
}

impl PlanRemote {
    /// The remote as the user would write it.
    pub fn display(&self) -> String {
        match self {
            PlanRemote::Local(p) => p.display().to_string(),
            PlanRemote::S3 { bucket, prefix, .. } if prefix.is_empty() => format!("s3://{bucket}"),
            PlanRemote::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
            PlanRemote::WebDav { url, user, .. } => crate::remote::webdav_url(url, user.as_deref()),
            PlanRemote::Sftp {
                user,
                host,
                port,
                path,
                ..
            } => {
                let sep = if path.starts_with('/') { "/" } else { "" };
                format!(
                    "sftp://{user}@{host}:{port}/{sep}{}",
                    path.trim_start_matches('/')
                )
            }
        }
    }

    /// The remote folder, for a local remote.
    pub fn local(&self) -> Option<&Path> {
        match self {
            PlanRemote::Local(p) => Some(p),
            PlanRemote::S3 { .. } | PlanRemote::WebDav { .. } | PlanRemote::Sftp { .. } => None,
        }
    }

    /// What kind of remote, in the mount's fsname (`local`, `s3`).
    pub fn kind(&self) -> &'static str {
        match self {
            PlanRemote::Local(_) => "local",
            PlanRemote::S3 { .. } => "s3",
            PlanRemote::WebDav { .. } => "webdav",
            PlanRemote::Sftp { .. } => "sftp",
        }
    }

    fn arg(&self) -> OsString {
        match self {
            PlanRemote::Local(p) => p.clone().into(),
            PlanRemote::S3 { .. } | PlanRemote::WebDav { .. } | PlanRemote::Sftp { .. } => {
                self.display().into()
            }
        }
    }
}

/// The provider settings of an S3 remote, credentials included, read from the environment and
/// the AWS files (see [`aws`]).
pub fn s3_config(
    bucket: &str,
    prefix: &str,
    options: &S3Options,
    request_timeout: Duration,
) -> Result<S3Config> {
    aws::s3_config(
        bucket,
        prefix,
        options,
        request_timeout,
        &aws::Sources::process(),
    )
}

/// Everything a mount needs, validated, with absolute paths.
#[derive(Clone, Debug)]
pub struct MountPlan {
    pub remote: PlanRemote,
    /// Canonical mount point.
    pub mountpoint: PathBuf,
    /// Absolute cache directory (may not exist yet).
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub chunk_size: u64,
    pub write_back_delay: Duration,
    pub dir_cache_time: Duration,
    pub poll_interval: Duration,
    pub attr_timeout: Duration,
    pub conflict: fs_core::ConflictPolicy,
    pub conflict_loser: fs_core::ConflictLoser,
    pub auto_merge: bool,
    pub offline_timeout: Duration,
    pub transfers: u16,
    pub request_timeout: Duration,
    pub read_only: bool,
    pub allow_other: bool,
}

impl MountPlan {
    /// Checks `args`; creates nothing. `stored_password`: the password stored with a named
    /// WebDAV remote (or handed to a background mount), used when [`WEBDAV_PASSWORD_ENV`] is
    /// not set.
    pub fn check(args: &MountArgs, stored_password: Option<Secret>) -> Result<MountPlan> {
        let ro = &args.remote_options;
        let request_timeout = ro.request_timeout();
        let remote = match Remote::parse(&args.remote)? {
            Remote::Local(folder) => PlanRemote::Local(local_remote(args, &folder)?),
            Remote::S3 { bucket, prefix } => {
                let options = ro.s3_options();
                let cfg = s3_config(&bucket, &prefix, &options, request_timeout)?;
                let endpoint = cfg.endpoint.clone();
                S3Provider::new(cfg)
                    .map_err(|e| anyhow!("{e}; fix the s3:// URL, --s3-endpoint or --s3-region"))?;
                PlanRemote::S3 {
                    bucket,
                    prefix,
                    options,
                    endpoint,
                }
            }
            Remote::WebDav { url, user } => {
                let password = webdav_password(user.as_deref(), stored_password)?;
                let cfg = webdav_config(&url, user.as_deref(), password.as_ref(), request_timeout);
                WebDavProvider::new(cfg).map_err(|e| anyhow!("{e}; fix the webdav:// URL"))?;
                PlanRemote::WebDav {
                    url,
                    user,
                    password,
                }
            }
            Remote::Sftp {
                user,
                host,
                port,
                path,
            } => {
                let key = sftp_key(ro.sftp_key.as_deref())?;
                if !key.is_file() {
                    bail!(
                        "the SSH key {} does not exist; give another with --sftp-key",
                        key.display()
                    );
                }
                let known_hosts = match &ro.sftp_known_hosts {
                    Some(k) => Some(
                        std::path::absolute(k)
                            .with_context(|| format!("cannot make {} absolute", k.display()))?,
                    ),
                    None => None,
                };
                let cfg = sftp_config(
                    &user,
                    &host,
                    port,
                    &path,
                    &key,
                    known_hosts.as_deref(),
                    request_timeout,
                );
                SftpProvider::new(cfg)
                    .map_err(|e| anyhow!("{e}; fix the sftp:// URL or --sftp-key"))?;
                PlanRemote::Sftp {
                    user,
                    host,
                    port,
                    path,
                    key,
                    known_hosts,
                }
            }
        };
        let mountpoint = canonical_mountpoint(&args.mountpoint)?;
        if let Some(e) =
            mountinfo::mount_at(&mountpoint).context("cannot read /proc/self/mountinfo")?
        {
            match registry::find(&mountpoint)?.filter(|r| registry::process_alive(r.pid)) {
                Some(r) => bail!(
                    "{} is already mounted (syncoxide, remote {}, process {}); unmount it first with `mountctl unmount {}`, or choose another mountpoint",
                    mountpoint.display(), r.remote, r.pid, mountpoint.display()
                ),
                None => bail!(
                    "{} is already a mount point ({} from {}); unmount it first (`mountctl unmount {}` for a syncoxide mount, else umount), or choose another mountpoint",
                    mountpoint.display(), e.fstype, e.source, mountpoint.display()
                ),
            }
        }
        if let Some(remote) = remote.local() {
            if mountpoint.starts_with(remote) || remote.starts_with(&mountpoint) {
                bail!(
                    "the mountpoint {} and the remote folder {} lie inside one another; choose a mountpoint outside the remote folder",
                    mountpoint.display(),
                    remote.display()
                );
            }
        }
        let cache_dir = cache_dir_of(args, &remote)?;
        check_cache_dir(&cache_dir, &mountpoint, remote.local())?;
        for (what, p) in [("mountpoint", &mountpoint), ("cache directory", &cache_dir)] {
            if p.to_str().is_none() {
                bail!(
                    "the {what} {} is not valid UTF-8; choose a path with a UTF-8 name",
                    p.display()
                );
            }
        }
        Ok(MountPlan {
            remote,
            mountpoint,
            cache_dir,
            cache_size: args.cache_size,
            chunk_size: args.chunk_size,
            write_back_delay: args.write_back_delay,
            dir_cache_time: args.dir_cache_time,
            poll_interval: args.poll_interval,
            attr_timeout: args.attr_timeout,
            conflict: args.conflict,
            conflict_loser: args.conflict_loser,
            auto_merge: args.auto_merge,
            offline_timeout: args.offline_timeout,
            transfers: args.transfers,
            request_timeout,
            read_only: args.read_only,
            allow_other: args.allow_other,
        })
    }

    /// Whether the cache is created by this mount (ask for a new passphrase twice).
    pub fn new_cache(&self) -> bool {
        !cache::crypto::keys::key_file_exists(&self.cache_dir)
    }

    /// The mount's log in the background: `CACHE_DIR.log`, beside the cache directory rather
    /// than in it, so that the cache's accounting of its own files stays exact.
    pub fn log_file(&self) -> PathBuf {
        let mut name = self
            .cache_dir
            .file_name()
            .unwrap_or_default()
            .to_os_string();
        name.push(".log");
        self.cache_dir.with_file_name(name)
    }

    pub fn socket(&self) -> PathBuf {
        registry::control_socket(&self.cache_dir)
    }

    pub fn vfs_config(&self) -> VfsConfig {
        VfsConfig {
            chunk_size: self.chunk_size,
            write_back_delay: self.write_back_delay,
            dir_cache_time: self.dir_cache_time,
            poll_interval: self.poll_interval,
            attr_timeout: self.attr_timeout,
            conflict: self.conflict,
            conflict_loser: self.conflict_loser,
            auto_merge: self.auto_merge,
            offline_timeout: self.offline_timeout,
            read_only: self.read_only,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            transfers: usize::from(self.transfers),
            ..VfsConfig::default()
        }
    }

    /// The arguments that serve this plan in a background child (after the program name).
    pub fn child_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "mount".into(),
            self.remote.arg(),
            self.mountpoint.clone().into(),
            "--cache-dir".into(),
            self.cache_dir.clone().into(),
            "--cache-size".into(),
            self.cache_size.to_string().into(),
            "--chunk-size".into(),
            self.chunk_size.to_string().into(),
            "--write-back-delay".into(),
            duration_arg(self.write_back_delay).into(),
            "--dir-cache-time".into(),
            duration_arg(self.dir_cache_time).into(),
            "--poll-interval".into(),
            duration_arg(self.poll_interval).into(),
            "--attr-timeout".into(),
            duration_arg(self.attr_timeout).into(),
            "--conflict".into(),
            self.conflict.name().into(),
            "--conflict-loser".into(),
            match self.conflict_loser {
                fs_core::ConflictLoser::Keep => "keep",
                fs_core::ConflictLoser::Delete => "delete",
            }
            .into(),
            "--offline-timeout".into(),
            duration_arg(self.offline_timeout).into(),
            "--transfers".into(),
            self.transfers.to_string().into(),
            "--request-timeout".into(),
            duration_arg(self.request_timeout).into(),
        ];
        if let PlanRemote::Sftp {
            key, known_hosts, ..
        } = &self.remote
        {
            a.extend(["--sftp-key".into(), key.clone().into()]);
            if let Some(k) = known_hosts {
                a.extend(["--sftp-known-hosts".into(), k.clone().into()]);
            }
        }
        if let PlanRemote::S3 { options, .. } = &self.remote {
            if let Some(e) = &options.endpoint {
                a.extend(["--s3-endpoint".into(), e.into()]);
            }
            if let Some(r) = &options.region {
                a.extend(["--s3-region".into(), r.into()]);
            }
            if let Some(ad) = options.addressing {
                a.extend(["--s3-addressing".into(), ad.name().into()]);
            }
            if let Some(p) = &options.profile {
                a.extend(["--s3-profile".into(), p.into()]);
            }
        }
        if self.auto_merge {
            a.push("--auto-merge".into());
        }
        if self.read_only {
            a.push("--read-only".into());
        }
        if self.allow_other {
            a.push("--allow-other".into());
        }
        a.push("--foreground".into());
        a.push("--daemon-child".into());
        a
    }
}

/// The remote folder, canonical. A folder that cannot be reached (an unplugged disk, an
/// unmounted share) is offline, not empty: a cache that already holds its state mounts from
/// that state.
fn local_remote(args: &MountArgs, remote: &Path) -> Result<PathBuf> {
    Ok(match canonical_remote(remote) {
        Ok(r) => r,
        Err(e) if !remote.exists() => {
            let abs = std::path::absolute(remote)
                .with_context(|| format!("cannot make {} absolute", remote.display()))?;
            let cache_dir = cache_dir_of(args, &PlanRemote::Local(abs.clone()))?;
            if !fs_core::cache::is_cache_dir(&cache_dir) {
                return Err(e);
            }
            eprintln!(
                "mountctl: the remote folder {} cannot be reached; mounting offline from the cache {} (changes queue until it is back)",
                abs.display(),
                cache_dir.display()
            );
            abs
        }
        Err(e) => return Err(e),
    })
}

/// `--cache-dir` made absolute, else the default cache directory of `remote`.
fn cache_dir_of(args: &MountArgs, remote: &PlanRemote) -> Result<PathBuf> {
    let base = crate::cli::default_cache_dir();
    Ok(match (&args.cache_dir, remote) {
        (Some(d), _) => std::path::absolute(d)
            .with_context(|| format!("cannot make {} absolute", d.display()))?,
        (None, PlanRemote::Local(folder)) => default_cache_dir_for(&base, folder),
        (
            None,
            PlanRemote::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            },
        ) => default_cache_dir_for_s3(&base, endpoint, bucket, prefix),
        (None, PlanRemote::WebDav { url, user, .. }) => {
            default_cache_dir_for_webdav(&base, url, user.as_deref())
        }
        (
            None,
            PlanRemote::Sftp {
                user,
                host,
                port,
                path,
                ..
            },
        ) => default_cache_dir_for_sftp(&base, user, host, *port, path),
    })
}

fn canonical_remote(p: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(p) {
        Ok(c) if c.is_dir() => Ok(c),
        Ok(_) => bail!(
            "the remote {} is not a folder; give the folder to mount",
            p.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "the remote folder {} does not exist; create it or check the path",
            p.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot open the remote folder {}", p.display())),
    }
}

fn canonical_mountpoint(p: &Path) -> Result<PathBuf> {
    // stat first: a FUSE mount whose process died fails it with ENOTCONN, while realpath
    // still resolves the path.
    match std::fs::metadata(p).and_then(|md| Ok((md, std::fs::canonicalize(p)?))) {
        Ok((md, c)) if md.is_dir() => Ok(c),
        Ok(_) => bail!(
            "the mountpoint {} is not a directory; give an existing, empty directory",
            p.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "the mountpoint {} does not exist; create it first (mkdir -p {})",
            p.display(),
            p.display()
        ),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) => bail!(
            "{} is already a mount point, left behind by a syncoxide (or other FUSE) process that died; clear it with `mountctl unmount {}` first",
            p.display(),
            p.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot open the mountpoint {}", p.display())),
    }
}

/// The cache directory must be a writable directory, or be creatable: its nearest existing
/// ancestor a writable directory. It must not lie under the mount point or the remote.
fn check_cache_dir(dir: &Path, mountpoint: &Path, remote: Option<&Path>) -> Result<()> {
    let fix = "choose another with --cache-dir, or fix its permissions";
    if dir.parent().is_none() {
        bail!(
            "the cache directory cannot be {}; choose another with --cache-dir",
            dir.display()
        );
    }
    let mut existing = dir;
    let md = loop {
        match std::fs::metadata(existing) {
            Ok(md) => break md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match existing.parent() {
                Some(p) => existing = p,
                None => bail!(
                    "the cache directory {} cannot be created; {fix}",
                    dir.display()
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                bail!("the cache directory {} cannot be created: a part of its path is a file, not a directory; {fix}", dir.display())
            }
            Err(e) => bail!(
                "the cache directory {} is not usable ({e}); {fix}",
                dir.display()
            ),
        }
    };
    if !md.is_dir() {
        if existing == dir {
            bail!(
                "the cache directory {} is not a directory; {fix}",
                dir.display()
            );
        }
        bail!(
            "the cache directory {} cannot be created: {} is a file, not a directory; {fix}",
            dir.display(),
            existing.display()
        );
    }
    let canonical = std::fs::canonicalize(existing)
        .with_context(|| format!("cannot resolve {}", existing.display()))?
        .join(dir.strip_prefix(existing).unwrap_or(Path::new("")));
    if canonical.starts_with(mountpoint) || remote.is_some_and(|r| canonical.starts_with(r)) {
        bail!(
            "the cache directory {} lies inside the mountpoint or the remote folder; choose one outside both with --cache-dir",
            dir.display()
        );
    }
    use rustix::fs::Access;
    if let Err(e) = rustix::fs::access(existing, Access::WRITE_OK | Access::EXEC_OK) {
        if existing == dir {
            bail!(
                "the cache directory {} is not writable ({e}); {fix}",
                dir.display()
            );
        }
        bail!(
            "the cache directory {} cannot be created: {} is not writable ({e}); {fix}",
            dir.display(),
            existing.display()
        );
    }
    let socket = registry::control_socket(dir);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "the cache directory path {} is too long for its control socket ({} of at most {MAX_SOCKET_PATH} bytes); choose a shorter one with --cache-dir",
            dir.display(),
            socket.as_os_str().len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    fn plan(cache_dir: &str) -> MountPlan {
        MountPlan {
            remote: PlanRemote::Local("/data/r".into()),
            mountpoint: "/mnt/m".into(),
            cache_dir: cache_dir.into(),
            cache_size: 10 << 30,
            chunk_size: 1 << 20,
            write_back_delay: Duration::from_millis(200),
            dir_cache_time: Duration::from_secs(300),
            poll_interval: Duration::from_secs(7),
            attr_timeout: Duration::from_millis(1500),
            conflict: fs_core::ConflictPolicy::Newer,
            conflict_loser: fs_core::ConflictLoser::Delete,
            auto_merge: true,
            offline_timeout: Duration::from_secs(3),
            transfers: 4,
            request_timeout: Duration::from_secs(12),
            read_only: true,
            allow_other: false,
        }
    }

    #[test]
    fn the_log_is_beside_the_cache() {
        assert_eq!(
            plan("/c/local-ab").log_file(),
            PathBuf::from("/c/local-ab.log")
        );
        assert_eq!(
            plan("/c/local-ab").socket(),
            PathBuf::from("/c/local-ab/control.sock")
        );
    }

    #[test]
    fn the_child_gets_the_same_plan() {
        use clap::Parser;
        let p = plan("/c/x");
        let mut argv = vec![OsString::from("mountctl")];
        argv.extend(p.child_args());
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Mount(a) = cli.command else {
            panic!("not a mount")
        };
        assert_eq!(a.remote, "/data/r");
        assert_eq!(a.cache_dir.as_deref(), Some(Path::new("/c/x")));
        assert_eq!(a.write_back_delay, Duration::from_millis(200));
        assert_eq!(a.dir_cache_time, Duration::from_secs(300));
        assert_eq!(
            (a.cache_size, a.chunk_size, a.transfers),
            (10 << 30, 1 << 20, 4)
        );
        assert!(a.read_only && !a.allow_other && a.foreground && a.daemon_child);
        assert_eq!(
            (a.poll_interval, a.attr_timeout, a.offline_timeout),
            (
                Duration::from_secs(7),
                Duration::from_millis(1500),
                Duration::from_secs(3)
            )
        );
        assert_eq!(
            (a.conflict, a.conflict_loser, a.auto_merge),
            (
                fs_core::ConflictPolicy::Newer,
                fs_core::ConflictLoser::Delete,
                true
            )
        );
    }

    #[test]
    fn an_s3_child_gets_its_options_and_no_secret() {
        use clap::Parser;
        let mut p = plan("/c/y");
        p.remote = PlanRemote::S3 {
            bucket: "bkt".into(),
            prefix: "a/b".into(),
            options: S3Options {
                endpoint: Some("http://127.0.0.1:9".into()),
                region: Some("eu-west-1".into()),
                addressing: Some(aws::Addressing::Path),
                profile: Some("work".into()),
            },
            endpoint: "http://127.0.0.1:9".into(),
        };
        let args = p.child_args();
        let mut argv = vec![OsString::from("mountctl")];
        argv.extend(args.clone());
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Mount(a) = cli.command else {
            panic!("not a mount")
        };
        assert_eq!(a.remote, "s3://bkt/a/b");
        assert_eq!(
            a.remote_options.request_timeout,
            Some(Duration::from_secs(12))
        );
        let PlanRemote::S3 { options, .. } = &p.remote else {
            unreachable!()
        };
        assert_eq!(&a.remote_options.s3_options(), options);
        let joined = args.join(OsStr::new(" "));
        assert!(!joined.to_string_lossy().to_lowercase().contains("secret"));
    }

    #[test]
    fn a_webdav_password_is_in_no_argument_and_no_debug_output() {
        let mut p = plan("/c/w");
        p.remote = PlanRemote::WebDav {
            url: "https://dav.example/x/".into(),
            user: Some("me".into()),
            password: Some(Secret::new("dav-secret-1".into())),
        };
        let args = p.child_args().join(OsStr::new(" "));
        assert!(!args.to_string_lossy().contains("dav-secret-1"));
        assert!(args
            .to_string_lossy()
            .contains("webdavs://me@dav.example/x/"));
        assert!(!format!("{p:?}").contains("dav-secret-1"));
        assert_eq!(p.remote.display(), "webdavs://me@dav.example/x/");
        let cfg = webdav_config(
            "https://dav.example/x/",
            Some("me"),
            Some(&Secret::new("dav-secret-1".into())),
            Duration::from_secs(1),
        );
        assert_eq!(cfg.password.as_deref(), Some("dav-secret-1"));
        assert!(!format!("{cfg:?}").contains("dav-secret-1"));
    }

    #[test]
    fn cache_dir_checks() {
        let d = tempfile::tempdir().unwrap();
        let mp = d.path().join("mnt");
        let remote = d.path().join("remote");
        let ok = d.path().join("a/b/cache");
        check_cache_dir(&ok, &mp, Some(&remote)).unwrap();
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = check_cache_dir(&file.join("cache"), &mp, Some(&remote))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is a file, not a directory") && e.contains("--cache-dir"),
            "{e}"
        );
        let e = check_cache_dir(&file, &mp, Some(&remote))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let e = check_cache_dir(&mp.join("c"), &mp, Some(&remote))
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the mountpoint"), "{e}");
        let long = d.path().join("x".repeat(120));
        let e = check_cache_dir(&long, &mp, Some(&remote))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too long"), "{e}");
    }
}
