//! Named remotes: a URL and its options stored under a name by `mountctl remote add`, mounted as
//! `mountctl mount NAME: MOUNTPOINT` (or `NAME:SUB/DIR`, a folder inside it).
//!
//! They are kept in one TOML file, `SYNCOXIDE_REMOTES` if set, else
//! `$XDG_CONFIG_HOME/syncoxide/remotes.toml`, else `~/.config/syncoxide/remotes.toml`:
//!
//! ```toml
//! [remotes.home]
//! url = "/srv/data"
//!
//! [remotes.dav]
//! url = "webdavs://me@dav.example/remote.php/dav/files/me/"
//! request-timeout = "1m"
//! password = "..."
//! ```
//!
//! Keys are the flag names of `mount` (`s3-endpoint`, `s3-region`, `s3-addressing`,
//! `s3-profile`, `sftp-key`, `sftp-known-hosts`, `request-timeout`), plus `password`, a WebDAV
//! password stored in plain text: the file's privacy is its protection. It is written only
//! whole, atomically (a private temporary file in the same directory, fsync'd, renamed over
//! it), with mode 0600 in a directory created 0700, under a lock against concurrent `add` and
//! `remove`. A file that other users may read or write (any group or other permission bit) is
//! refused, not repaired, as ssh refuses a private key anyone can read: whatever password it
//! holds may have been seen, and a file others can write may point a remote at their server.
//! The message says to `chmod 600` it. A malformed file is an error naming the file and line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::aws::Addressing;
use crate::cli::{MountArgs, RemoteOptions};
use crate::remote::Remote;
use crate::secrets::Secret;

/// A file path that overrides where the named remotes are kept (tests, several setups).
pub const REMOTES_ENV: &str = "SYNCOXIDE_REMOTES";

/// What the file starts with; comments written by hand are not kept when it is rewritten.
const HEADER: &str = "# syncoxide's named remotes, written by `mountctl remote add|remove`.\n\
# Private (0600): it may hold WebDAV passwords. Comments are not kept.\n\n";

/// A remote's name: ASCII letters, digits, `-` and `_`, at least two characters (one letter
/// followed by `:` reads as a drive letter), not starting with `-` (it would read as a flag).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RemoteName(String);

impl RemoteName {
    pub fn new(name: &str) -> Result<RemoteName, String> {
        if name.is_empty() {
            return Err("the remote name is empty; give a name like home or work-s3".into());
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(format!(
                "the remote name {name:?} holds {c:?}; a name has only letters, digits, - and _ (like home or work-s3)"
            ));
        }
        if name.len() < 2 {
            return Err(format!(
                "the remote name {name:?} is one character, which reads as a drive letter ({name}:); give two or more"
            ));
        }
        if name.starts_with('-') {
            return Err(format!(
                "the remote name {name:?} starts with -, which reads as an option; start it with a letter or digit"
            ));
        }
        Ok(RemoteName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RemoteName {
    type Error = String;
    fn try_from(s: String) -> Result<RemoteName, String> {
        RemoteName::new(&s)
    }
}

impl From<RemoteName> for String {
    fn from(n: RemoteName) -> String {
        n.0
    }
}

impl std::fmt::Display for RemoteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One named remote as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StoredRemote {
    /// What [`Remote::parse`] reads: an absolute folder path or a URL.
    #[serde(deserialize_with = "de_url")]
    pub url: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_duration",
        deserialize_with = "de_duration"
    )]
    pub request_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_addressing: Option<Addressing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_profile: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_absolute"
    )]
    pub sftp_key: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_absolute"
    )]
    pub sftp_known_hosts: Option<PathBuf>,
    /// A WebDAV remote's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

impl StoredRemote {
    pub fn new(url: String, o: RemoteOptions, password: Option<Secret>) -> StoredRemote {
        StoredRemote {
            url,
            request_timeout: o.request_timeout,
            s3_endpoint: o.s3_endpoint,
            s3_region: o.s3_region,
            s3_addressing: o.s3_addressing,
            s3_profile: o.s3_profile,
            sftp_key: o.sftp_key,
            sftp_known_hosts: o.sftp_known_hosts,
            password,
        }
    }

    pub fn options(&self) -> RemoteOptions {
        RemoteOptions {
            request_timeout: self.request_timeout,
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_addressing: self.s3_addressing,
            s3_profile: self.s3_profile.clone(),
            sftp_key: self.sftp_key.clone(),
            sftp_known_hosts: self.sftp_known_hosts.clone(),
        }
    }

    /// The options that are set, as (flag name, value) pairs; never the password.
    pub fn shown_options(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(t) = self.request_timeout {
            v.push(("request-timeout", duration_text(t)));
        }
        let strings = [
            ("s3-endpoint", &self.s3_endpoint),
            ("s3-region", &self.s3_region),
            ("s3-profile", &self.s3_profile),
        ];
        for (k, val) in strings {
            if let Some(val) = val {
                v.push((k, val.clone()));
            }
        }
        if let Some(a) = self.s3_addressing {
            v.push(("s3-addressing", a.name().to_string()));
        }
        for (k, p) in [
            ("sftp-key", &self.sftp_key),
            ("sftp-known-hosts", &self.sftp_known_hosts),
        ] {
            if let Some(p) = p {
                v.push((k, p.display().to_string()));
            }
        }
        v
    }
}

fn de_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    let s = String::deserialize(d)?;
    match Remote::parse(&s).map_err(|e| D::Error::custom(format!("{e:#}")))? {
        Remote::Local(p) if !p.is_absolute() => Err(D::Error::custom(format!(
            "the folder {s:?} is not an absolute path; write the whole path, from /"
        ))),
        _ => Ok(s),
    }
}

/// A duration as people write it (`90s`, `2m`, `1500ms`), which [`crate::units::parse_duration`]
/// reads back exactly.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    use serde::de::Error;
    let s = String::deserialize(d)?;
    crate::units::parse_duration(&s)
        .map(Some)
        .map_err(D::Error::custom)
}

fn ser_duration<S: Serializer>(t: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&duration_text(*t)),
        None => s.serialize_none(),
    }
}

fn de_absolute<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    use serde::de::Error;
    let p = PathBuf::deserialize(d)?;
    if !p.is_absolute() {
        return Err(D::Error::custom(format!(
            "{} is not an absolute path; write the whole path, from /",
            p.display()
        )));
    }
    Ok(Some(p))
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    remotes: BTreeMap<RemoteName, StoredRemote>,
}

/// Where the named remotes are kept, from the process's environment.
pub fn file_path() -> Result<PathBuf> {
    file_path_from(|k| std::env::var_os(k))
}

/// [`REMOTES_ENV`], else `$XDG_CONFIG_HOME/syncoxide/remotes.toml` (an absolute
/// XDG_CONFIG_HOME only, as the XDG spec says), else `$HOME/.config/syncoxide/remotes.toml`.
pub fn file_path_from(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var(REMOTES_ENV) {
        return std::path::absolute(&p)
            .with_context(|| format!("cannot make {} absolute", p.display()));
    }
    if let Some(x) = var("XDG_CONFIG_HOME").filter(|x| x.is_absolute()) {
        return Ok(x.join("syncoxide").join("remotes.toml"));
    }
    if let Some(h) = var("HOME") {
        return Ok(h.join(".config").join("syncoxide").join("remotes.toml"));
    }
    bail!("cannot tell where the named remotes are kept: set HOME, XDG_CONFIG_HOME or {REMOTES_ENV} (a file path)")
}

/// The named remotes of one file.
#[derive(Debug)]
pub struct Remotes {
    path: PathBuf,
    remotes: BTreeMap<RemoteName, StoredRemote>,
}

impl Remotes {
    /// Reads `path`; a file that does not exist holds no remotes.
    pub fn load(path: &Path) -> Result<Remotes> {
        let text = match read_private(path)? {
            Some(t) => t,
            None => {
                return Ok(Remotes {
                    path: path.to_path_buf(),
                    remotes: BTreeMap::new(),
                })
            }
        };
        let file: FileFormat = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| {
                let before = &text.as_bytes()[..s.start.min(text.len())];
                before.iter().filter(|&&b| b == b'\n').count() + 1
            });
            let msg = e.message().trim_end();
            match line {
                Some(l) => anyhow!(
                    "the remotes file {} is malformed at line {l}: {msg}; fix that line",
                    path.display()
                ),
                None => anyhow!(
                    "the remotes file {} is malformed: {msg}; fix it",
                    path.display()
                ),
            }
        })?;
        Ok(Remotes {
            path: path.to_path_buf(),
            remotes: file.remotes,
        })
    }

    pub fn get(&self, name: &str) -> Option<&StoredRemote> {
        self.remotes.get(&RemoteName(name.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RemoteName, &StoredRemote)> {
        self.remotes.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.remotes.is_empty()
    }

    /// Adds or replaces `name`; the replaced remote, if any.
    pub fn insert(&mut self, name: RemoteName, r: StoredRemote) -> Option<StoredRemote> {
        self.remotes.insert(name, r)
    }

    pub fn remove(&mut self, name: &str) -> Option<StoredRemote> {
        self.remotes.remove(&RemoteName(name.to_string()))
    }

    /// The file's text.
    fn to_toml(&self) -> Result<String> {
        let file = FileFormat {
            remotes: self.remotes.clone(),
        };
        let body = toml::to_string(&file).context("cannot write the named remotes as TOML")?;
        Ok(format!("{HEADER}{body}"))
    }

    /// Writes the file whole, atomically, private.
    pub fn save(&self) -> Result<()> {
        let text = self.to_toml()?;
        // A symlinked file (dotfiles kept elsewhere) is written where it points.
        let target = match fs::symlink_metadata(&self.path) {
            Ok(md) if md.file_type().is_symlink() => fs::canonicalize(&self.path)
                .with_context(|| format!("cannot resolve the symlink {}", self.path.display()))?,
            _ => self.path.clone(),
        };
        write_private(&target, text.as_bytes())
    }
}

/// The parent directory of `path`, created 0700 if missing.
fn private_dir(path: &Path) -> Result<&Path> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    Ok(dir)
}

/// The text of `path`, refused if it is not private; `None` if it does not exist.
fn read_private(path: &Path) -> Result<Option<String>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let md = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !md.is_file() {
        bail!(
            "the remotes file {} is not a regular file; remove it or point {REMOTES_ENV} elsewhere",
            path.display()
        );
    }
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the remotes file {} may be read or changed by other users (mode {mode:04o}), and may hold passwords; make it private with `chmod 600 {}` (and change any password in it that others may have read)",
            path.display(),
            path.display()
        );
    }
    let bytes = io::read_to_string(f);
    match bytes {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => bail!(
            "the remotes file {} is not UTF-8 text; fix or remove it",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Replaces `path` by `bytes`: a new 0600 file in the same directory, fsync'd, renamed over it,
/// the directory fsync'd. A failure leaves the old file as it was.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = private_dir(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let r = (|| -> io::Result<()> {
        // Left by a process of the same id that died mid-write (callers hold the lock).
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.with_context(|| format!("cannot write the remotes file {}", path.display()))
}

/// Held while a command reads, changes and writes the file, so that two at once lose nothing.
pub struct Lock(#[allow(dead_code)] File);

/// Locks the remotes file `path` (a `.NAME.lock` file beside it), waiting for another holder.
pub fn lock(path: &Path) -> Result<Lock> {
    let dir = private_dir(path)?;
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".lock");
    let lock_path = dir.join(name);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    Ok(Lock(f))
}

/// `NAME` and `SUB` of a `REMOTE` written `NAME:` or `NAME:SUB`, when NAME is a valid name:
/// such a string may name a stored remote. Never for a URL (`://`) or a path starting with
/// `/` or `.`, nor for one letter and a colon (a drive letter).
pub fn reference(remote: &str) -> Option<(&str, &str)> {
    if remote.contains("://") {
        return None;
    }
    let (name, sub) = remote.split_once(':')?;
    RemoteName::new(name).ok()?;
    Some((name, sub))
}

/// Resolves a named `REMOTE` of `args` in place: the stored URL (joined with SUB), and the
/// stored options under those given on the command line. Returns the stored password.
///
/// `NAME:SUB` is the named remote when NAME is stored, else the local path it spells (as
/// before named remotes existed). `NAME:` alone is the named remote, or the local folder of
/// that name if it exists, else an error naming the name.
pub fn resolve_mount(args: &mut MountArgs) -> Result<Option<Secret>> {
    let Some((name, sub)) = reference(&args.remote) else {
        return Ok(None);
    };
    let path = file_path()?;
    let remotes = Remotes::load(&path)?;
    let Some(stored) = remotes.get(name) else {
        if sub.is_empty() && !Path::new(&args.remote).exists() {
            bail!(
                "no remote named {name:?} in {}; `mountctl remote list` shows the named remotes, `mountctl remote add {name} URL` adds one (for a local folder named {:?}, write ./{})",
                path.display(),
                args.remote,
                args.remote
            );
        }
        return Ok(None);
    };
    let remote = Remote::parse(&stored.url)
        .and_then(|r| r.join(sub))
        .with_context(|| format!("the remote {name:?} of {}", path.display()))?;
    args.remote = remote.url()?;
    args.remote_options = args.remote_options.clone().or(&stored.options());
    Ok(stored.password.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn sample() -> StoredRemote {
        StoredRemote {
            url: "webdavs://me@dav.example/a b/".into(),
            request_timeout: Some(Duration::from_secs(90)),
            s3_endpoint: None,
            s3_region: None,
            s3_addressing: None,
            s3_profile: None,
            sftp_key: None,
            sftp_known_hosts: None,
            password: Some(Secret::new("p\"w = '#\n".into())),
        }
    }

    #[test]
    fn durations_are_written_readably_and_read_back() {
        for (ms, text) in [
            (0, "0"),
            (1500, "1500ms"),
            (90_000, "90s"),
            (120_000, "2m"),
            (7_200_000, "2h"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(duration_text(d), text);
            assert_eq!(crate::units::parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn names() {
        for ok in ["home", "work-s3", "a_b", "A1", "00", "x-"] {
            assert!(RemoteName::new(ok).is_ok(), "{ok}");
        }
        let err = |n: &str| RemoteName::new(n).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err("my remote").contains("only letters, digits, - and _"));
        assert!(err("a/b").contains("'/'"));
        assert!(err("é-x").contains("only letters"));
        assert!(err("C").contains("drive letter"));
        assert!(err("-x").contains("reads as an option"));
    }

    #[test]
    fn references() {
        assert_eq!(reference("home:"), Some(("home", "")));
        assert_eq!(reference("home:a/b"), Some(("home", "a/b")));
        assert_eq!(reference("home"), None);
        assert_eq!(reference("C:"), None, "a drive letter");
        assert_eq!(reference("C:/x"), None);
        assert_eq!(reference("/data/x:y"), None);
        assert_eq!(reference("./home:"), None);
        assert_eq!(reference("../a:b"), None);
        assert_eq!(reference("my dir:x"), None);
        assert_eq!(reference("s3://b/x:y"), None);
        assert_eq!(reference("home:x://y"), None);
    }

    #[test]
    fn the_file_round_trips_and_is_private() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("conf/syncoxide/remotes.toml");
        let mut r = Remotes::load(&path).unwrap();
        assert!(r.is_empty(), "no file, no remotes");
        r.insert(RemoteName::new("dav").unwrap(), sample());
        let s3 = StoredRemote::new(
            "s3://bkt/p".into(),
            RemoteOptions {
                s3_endpoint: Some("http://127.0.0.1:9000".into()),
                s3_region: Some("eu-west-1".into()),
                s3_addressing: Some(Addressing::Path),
                s3_profile: Some("work".into()),
                ..RemoteOptions::default()
            },
            None,
        );
        r.insert(RemoteName::new("work").unwrap(), s3.clone());
        let sftp = StoredRemote::new(
            "sftp://me@h:2222//srv".into(),
            RemoteOptions {
                sftp_key: Some("/k/id_ed25519".into()),
                sftp_known_hosts: Some("/k/known_hosts".into()),
                ..RemoteOptions::default()
            },
            None,
        );
        r.insert(RemoteName::new("box").unwrap(), sftp.clone());
        r.save().unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# syncoxide's named remotes"), "{text}");
        assert!(text.contains("[remotes.work]"), "{text}");
        assert!(
            text.contains("s3-endpoint = \"http://127.0.0.1:9000\""),
            "{text}"
        );
        assert!(text.contains("request-timeout = \"90s\""), "{text}");
        assert!(text.contains("s3-addressing = \"path\""), "{text}");

        let back = Remotes::load(&path).unwrap();
        assert_eq!(back.get("dav"), Some(&sample()));
        assert_eq!(back.get("work"), Some(&s3));
        assert_eq!(back.get("box"), Some(&sftp));
        assert_eq!(
            back.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["box", "dav", "work"]
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["remotes.toml"], "{names:?}");

        let mut back = back;
        assert!(back.remove("dav").is_some());
        assert!(back.remove("dav").is_none());
        back.save().unwrap();
        let again = Remotes::load(&path).unwrap();
        assert!(again.get("dav").is_none() && again.get("work").is_some());
        assert!(!fs::read_to_string(&path).unwrap().contains("password ="));
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("remotes.toml");
        let mut r = Remotes::load(&path).unwrap();
        r.insert(RemoteName::new("dav").unwrap(), sample());
        r.save().unwrap();
        for loose in [0o644, 0o640, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(loose)).unwrap();
            let e = format!("{:#}", Remotes::load(&path).unwrap_err());
            assert!(
                e.contains("chmod 600") && e.contains(&format!("{loose:04o}")),
                "{e}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Remotes::load(&path).unwrap().get("dav").is_some());
        // Saving makes it 0600 again.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        Remotes::load(&path).unwrap().save().unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_malformed_file_names_the_file_and_the_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("remotes.toml");
        let write = |text: &str| {
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        };
        let cases: [(&str, usize, &str); 7] = [
            ("[remotes.a]\nurl = \"/x\"\n\n[remotes.b\n", 4, ""),
            (
                "[remotes.home]\nurl = \"/x\"\ncolour = \"red\"\n",
                3,
                "colour",
            ),
            (
                "[remotes.home]\n\nurl = \"ftp://h/x\"\n",
                3,
                "not supported",
            ),
            ("[remotes.home]\nurl = \"rel/x\"\n", 2, "absolute"),
            (
                "[remotes.home]\nurl = \"/x\"\nrequest-timeout = \"soon\"\n",
                3,
                "duration",
            ),
            (
                "[remotes.s3x]\nurl = \"s3://b\"\ns3-addressing = \"sideways\"\n",
                3,
                "sideways",
            ),
            ("[remotes.\"my home\"]\nurl = \"/x\"\n", 1, "only letters"),
        ];
        for (text, line, phrase) in cases {
            write(text);
            let e = format!("{:#}", Remotes::load(&path).unwrap_err());
            assert!(
                e.contains(&format!("{} is malformed at line {line}:", path.display()))
                    && e.contains(phrase),
                "{text:?}: {e}"
            );
        }
        write("[remotes.home]\n");
        let e = format!("{:#}", Remotes::load(&path).unwrap_err());
        assert!(
            e.contains("url") && e.contains(&path.display().to_string()),
            "{e}"
        );
    }

    fn path_with(vars: &[(&str, &str)]) -> Result<PathBuf> {
        file_path_from(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn where_the_file_is() {
        let all = [
            (REMOTES_ENV, "/o/r.toml"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("HOME", "/home/me"),
        ];
        assert_eq!(path_with(&all).unwrap(), PathBuf::from("/o/r.toml"));
        assert_eq!(
            path_with(&all[1..]).unwrap(),
            PathBuf::from("/xdg/syncoxide/remotes.toml")
        );
        assert_eq!(
            path_with(&all[2..]).unwrap(),
            PathBuf::from("/home/me/.config/syncoxide/remotes.toml")
        );
        // Empty is unset; a relative XDG_CONFIG_HOME is ignored, as the spec says.
        assert_eq!(
            path_with(&[
                (REMOTES_ENV, ""),
                ("XDG_CONFIG_HOME", "rel"),
                ("HOME", "/h")
            ])
            .unwrap(),
            PathBuf::from("/h/.config/syncoxide/remotes.toml")
        );
        assert!(path_with(&[(REMOTES_ENV, "rel.toml")])
            .unwrap()
            .is_absolute());
        assert!(path_with(&[]).unwrap_err().to_string().contains("set HOME"));
    }

    #[test]
    fn the_lock_excludes_a_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/remotes.toml");
        let l = lock(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            let _l = lock(&p2).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(l);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert_eq!(mode(&d.path().join("sub/.remotes.toml.lock")), 0o600);
    }
}
