//! [`LocalProvider`]: a plain folder used as the remote, so that syncoxide can mount (and cache)
//! a NAS share, an external disk or any directory, and so that the whole core can be exercised
//! end to end against a real filesystem.
//!
//! # What it guarantees
//!
//! * **The folder is the truth.** Nothing is kept beside it: other programs may change the folder
//!   behind our back, and every call sees the folder as it is now.
//! * **Unreachable is never "not found".** Before every call, and again whenever a call fails, the
//!   root folder is checked; if it is missing, not a directory or unreadable (an unplugged disk,
//!   an unmounted share), the call fails with [`ProviderError::Unreachable`] naming the root, so
//!   the core never concludes that anything was deleted. `NotFound` means "the root is there and
//!   the entry is not". (A share unmounted from a mount point that stays behind as an *empty*
//!   directory cannot be told apart from an emptied folder: point the root at a folder *inside*
//!   the share.)
//! * **Versions** are `s{size}-m{mtime_ns}-i{inode}` (taken with `lstat`, so a symlink has its
//!   own version). A rewrite by another program changes the size or mtime; a replacement by
//!   rename changes the inode. Directories use the same scheme. The ctime is left out on purpose:
//!   a rename or chmod changes it without changing a byte, and a version change throws away every
//!   cached chunk of the file. Setting the mtime changes the version: use the entry returned by
//!   the call. Limitation: the kernel stamps times with a coarse clock (a few ms), so two
//!   states of a file with the same size within one clock tick can share a version: an in-place
//!   rewrite, or a replacement whose new inode reuses a just-freed inode number (A → B → A').
//!   Both need several same-size rewrites within milliseconds.
//! * **Writes are all-or-nothing.** The body is streamed into `.syncoxide-tmp-<random hex>` in the
//!   target's directory (such names are hidden from [`Provider::list`] and [`Provider::stat`] and
//!   cannot be created through the provider), checked to be exactly `len` bytes, given its
//!   mode/mtime (without a mode, the replaced file's permission bits are kept, else the umask
//!   applies; ownership is not kept), `fsync`ed and renamed over the target; the directory is
//!   `fsync`ed by the next [`Provider::sync`] (one `fsync` per directory for all the changes
//!   since the last one; the uploader syncs before it journals a change as applied). A failed or
//!   cancelled write (the future dropped midway) removes the temporary file (a guard unlinks it on
//!   drop) and never leaves a half-written file at the target.
//! * **Preconditions are check-then-act** (`conditional_write: false`), except `IfNotExists` on
//!   write, which is atomic (`renameat2(RENAME_NOREPLACE)`, or `link(2)` + `unlink` where the
//!   filesystem lacks it). `IfMatch` on write `lstat`s the target and compares its version just
//!   before the rename: another program changing the file between that `lstat` and the `rename`
//!   (microseconds) is not detected, and its change is overwritten. `IfMatch` on delete moves
//!   the file aside first (an atomic rename to a hidden `.syncoxide-tmp-…-v<version>r…` name),
//!   checks what moved and removes it only if it has the version asked for; anything else goes
//!   back (beside the name, as a conflict copy, if the name was taken meanwhile). Left of the
//!   window: a program that opened the file before the rename and writes after the check.
//! * **Reads never mix versions.** A read opens the file, `fstat`s it and compares the version
//!   (`PreconditionFailed` if it differs), then streams the range in pieces of up to 1 MiB with
//!   `pread`, `fstat`ing again after every piece: if the file changed meanwhile, the stream ends
//!   with `PreconditionFailed` instead of that piece. (If the file is *replaced* by rename, the
//!   open descriptor keeps the old contents and the stream finishes with the old, consistent
//!   contents.)
//!
//! Error mapping: ENOENT → `NotFound`, EEXIST → `AlreadyExists`, ENOTDIR → `NotADirectory`,
//! EISDIR → `IsADirectory`, ENOTEMPTY → `NotEmpty`, EACCES/EPERM/EROFS → `PermissionDenied`,
//! ENOSPC/EDQUOT → `NoSpace`, ENAMETOOLONG → `InvalidName`, ENOTCONN/ESTALE (a dead network or
//! FUSE mount) → `Unreachable`, ETIMEDOUT → `TimedOut`, EIO → retryable `Other`, anything else
//! non-retryable `Other`. ENOENT/ENOTDIR while creating an entry name the parent; while looking
//! an entry up, ENOTDIR (an ancestor is a file) is `NotFound`.
//!
//! Paths are joined under the root; [`RemotePath`] never contains `.` or `..`, but symlinks in
//! *intermediate* components are followed by the OS like for any other program. The last
//! component is never followed (`lstat`, `O_NOFOLLOW`, `utimensat(AT_SYMLINK_NOFOLLOW)`), except
//! for the permission bits: Linux cannot change a symlink's mode, so `set_attrs` ignores the mode
//! of a symlink. Special files (FIFOs, sockets, devices) are skipped by `list` and are
//! `NotSupported` for `stat`. Names that are not UTF-8 are skipped by `list` (with a warning).
//!
//! All filesystem calls run on tokio's blocking pool.

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use rustix::io::Errno;

use super::{
    ByteStream, Capabilities, EntryKind, ListPage, ObjectAttrs, Precondition, Provider,
    ProviderError, RemoteEntry, RemotePath, Result, Version,
};

/// Prefix of the temporary files that writes go through; hidden from `list` and `stat`.
pub const TMP_PREFIX: &str = ".syncoxide-tmp-";

/// Largest piece of a read stream.
const READ_CHUNK: u64 = 1 << 20;

/// Body bytes gathered before one blocking `write` call.
const WRITE_BATCH: usize = 1 << 20;

/// Longest name component, in bytes (Linux `NAME_MAX`).
const MAX_NAME_LEN: usize = 255;

/// A local folder as the remote. See the module documentation.
#[derive(Clone, Debug)]
pub struct LocalProvider {
    root: Arc<Root>,
}

impl LocalProvider {
    /// A provider over the folder `root`. The folder need not exist yet: while it is missing,
    /// every call fails with [`ProviderError::Unreachable`]. A relative `root` is made absolute
    /// against the current directory now; an empty one is refused.
    pub fn new(root: PathBuf) -> Result<Self> {
        if root.as_os_str().is_empty() {
            return Err(ProviderError::Other {
                message: "local provider: empty root path".into(),
                retryable: false,
            });
        }
        let root = std::path::absolute(&root).map_err(|e| ProviderError::Other {
            message: format!(
                "local provider: cannot make {} absolute: {e}",
                root.display()
            ),
            retryable: false,
        })?;
        Ok(LocalProvider {
            root: Arc::new(Root {
                path: root,
                dirs: Mutex::new(DirSync::default()),
                syncing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root.path
    }

    /// Runs `f` on the blocking pool after checking the root; an error is re-examined against
    /// the root so that a vanished root always shows as `Unreachable`.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Root) -> Result<T> + Send + 'static,
    {
        let root = Arc::clone(&self.root);
        match tokio::task::spawn_blocking(move || {
            root.check()?;
            f(&root).map_err(|e| root.confirm(e))
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(ProviderError::Other {
                message: format!("local provider: {op} task failed: {e}"),
                retryable: true,
            }),
        }
    }
}

#[derive(Debug)]
struct Root {
    path: PathBuf,
    /// Directories whose entries changed and are not synced yet.
    dirs: Mutex<DirSync>,
    /// Held by the caller of [`Provider::sync`] that is `fsync`ing (group commit: the others
    /// wait, and return at once if that sync covered their changes).
    syncing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct DirSync {
    unsynced: HashSet<PathBuf>,
    /// Changes noted so far, and how many of them are known durable.
    changed: u64,
    synced: u64,
}

/// How long a sync waits for more changes to join it: one directory `fsync` then covers many
/// uploads (an untar of 20k files syncs each directory a few times, not once per file).
const SYNC_GATHER: Duration = Duration::from_millis(20);

impl Root {
    /// Notes that an entry of `dir` was created, renamed or removed: the next
    /// [`Provider::sync`] makes that durable.
    fn changed_dir(&self, dir: PathBuf) {
        let mut d = self.dir_sync();
        d.unsynced.insert(dir);
        d.changed += 1;
    }

    fn dir_sync(&self) -> std::sync::MutexGuard<'_, DirSync> {
        self.dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn abs(&self, p: &RemotePath) -> PathBuf {
        if p.is_root() {
            self.path.clone()
        } else {
            self.path.join(p.as_str())
        }
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> ProviderError {
        ProviderError::Unreachable(format!("local folder {}: {why}", self.path.display()))
    }

    /// Cheap check before every call: the root exists and is a directory.
    fn check(&self) -> Result<()> {
        match fs::metadata(&self.path) {
            Ok(md) if md.is_dir() => Ok(()),
            Ok(_) => Err(self.unreachable("not a directory")),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// After a failure: if the root is gone or unreadable, that is the real error.
    fn confirm(&self, err: ProviderError) -> ProviderError {
        if matches!(
            err,
            ProviderError::Unreachable(_) | ProviderError::PreconditionFailed { .. }
        ) {
            return err;
        }
        if let Err(e) = self.check() {
            tracing::debug!(root = %self.path.display(), "local root vanished during a call");
            return e;
        }
        if let Err(e) = fs::read_dir(&self.path) {
            return self.unreachable(format_args!("cannot be read: {e}"));
        }
        err
    }

    /// `lstat` of an entry; the root itself is followed (it may be a symlink to a mount).
    fn lstat(&self, p: &RemotePath) -> io::Result<Metadata> {
        let abs = self.abs(p);
        if p.is_root() {
            fs::metadata(abs)
        } else {
            fs::symlink_metadata(abs)
        }
    }

    /// `lstat` of an entry that must exist (hidden temporary names do not).
    fn lookup(&self, p: &RemotePath) -> Result<Metadata> {
        if hidden(p) {
            return Err(ProviderError::NotFound(p.clone()));
        }
        self.lstat(p).map_err(|e| lookup_err(&e, p))
    }

    fn entry(&self, p: &RemotePath, md: &Metadata) -> Result<RemoteEntry> {
        entry_from(p.name(), md, || fs::read_link(self.abs(p)))
            .map_err(|e| lookup_err(&e, p))?
            .ok_or(SPECIAL)
    }
}

fn hidden(p: &RemotePath) -> bool {
    p.name().starts_with(TMP_PREFIX)
}

/// A name we may create.
fn check_new_name(p: &RemotePath) -> Result<()> {
    let name = p.name();
    if name.starts_with(TMP_PREFIX) {
        return Err(ProviderError::InvalidName {
            name: name.to_string(),
            reason: "reserved for syncoxide's temporary files",
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ProviderError::InvalidName {
            name: name.to_string(),
            reason: "name too long",
        });
    }
    Ok(())
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

/// The general io error → provider error mapping.
fn map_io(e: &io::Error, p: &RemotePath) -> ProviderError {
    let Some(no) = errno(e) else {
        return ProviderError::Other {
            message: format!("{p}: {e}"),
            retryable: false,
        };
    };
    match no {
        Errno::NOENT => ProviderError::NotFound(p.clone()),
        Errno::EXIST => ProviderError::AlreadyExists(p.clone()),
        Errno::NOTDIR => ProviderError::NotADirectory(p.clone()),
        Errno::ISDIR => ProviderError::IsADirectory(p.clone()),
        Errno::NOTEMPTY => ProviderError::NotEmpty(p.clone()),
        Errno::ACCESS | Errno::PERM | Errno::ROFS => ProviderError::PermissionDenied(p.clone()),
        Errno::NOSPC | Errno::DQUOT => ProviderError::NoSpace,
        Errno::NAMETOOLONG => ProviderError::InvalidName {
            name: p.name().to_string(),
            reason: "name too long",
        },
        Errno::NOTCONN | Errno::STALE => ProviderError::Unreachable(format!("{p}: {e}")),
        Errno::TIMEDOUT => ProviderError::TimedOut,
        Errno::IO => ProviderError::Other {
            message: format!("{p}: {e}"),
            retryable: true,
        },
        Errno::LOOP => ProviderError::Other {
            message: format!("{p}: is a symlink (or a symlink loop)"),
            retryable: false,
        },
        _ => ProviderError::Other {
            message: format!("{p}: {e}"),
            retryable: false,
        },
    }
}

/// Errors while looking up an existing entry: an ancestor that is a file means "not there".
fn lookup_err(e: &io::Error, p: &RemotePath) -> ProviderError {
    match errno(e) {
        Some(Errno::NOENT | Errno::NOTDIR) => ProviderError::NotFound(p.clone()),
        _ => map_io(e, p),
    }
}

/// Errors while creating `p`: a missing or non-directory ancestor names the parent.
fn create_err(e: &io::Error, p: &RemotePath) -> ProviderError {
    let parent = p.parent().unwrap_or_else(RemotePath::root);
    match errno(e) {
        Some(Errno::NOENT) => ProviderError::NotFound(parent),
        Some(Errno::NOTDIR) => ProviderError::NotADirectory(parent),
        _ => map_io(e, p),
    }
}

fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

fn system_time(secs: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, nsec)
    }
}

/// The version of an entry (see the module documentation).
pub fn version_of(md: &Metadata) -> Version {
    Version::from(format!(
        "s{}-m{}-i{}",
        md.size(),
        ns(md.mtime(), md.mtime_nsec()),
        md.ino()
    ))
}

fn kind_of(md: &Metadata) -> Option<EntryKind> {
    let ft = md.file_type();
    if ft.is_file() {
        Some(EntryKind::File)
    } else if ft.is_dir() {
        Some(EntryKind::Dir)
    } else if ft.is_symlink() {
        Some(EntryKind::Symlink)
    } else {
        None
    }
}

const SPECIAL: ProviderError =
    ProviderError::NotSupported("special files (FIFOs, sockets, devices)");

/// The entry for `md` (`None` for a special file); `read_link` is called for symlinks only.
fn entry_from(
    name: &str,
    md: &Metadata,
    read_link: impl FnOnce() -> io::Result<PathBuf>,
) -> io::Result<Option<RemoteEntry>> {
    let Some(kind) = kind_of(md) else {
        return Ok(None);
    };
    let symlink_target = if kind == EntryKind::Symlink {
        Some(read_link()?.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(Some(RemoteEntry {
        name: name.to_string(),
        kind,
        size: if kind == EntryKind::Dir { 0 } else { md.size() },
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        version: version_of(md),
        mode: Some(md.mode() & 0o7777),
        symlink_target,
    }))
}

/// `fsync` of a directory, after an entry in it was created, renamed or removed.
fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// `rename` that fails with EEXIST if `to` exists: `renameat2(RENAME_NOREPLACE)`, or, where the
/// filesystem does not support it, `link` + `unlink` (also atomic). Returns whether `from` is
/// still there (the `link` path leaves it for the caller to remove).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(false),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if !from.is_dir() => {
            tracing::debug!(to = %to.display(), "RENAME_NOREPLACE unsupported, using link");
            fs::hard_link(from, to)?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// A temporary name: `.syncoxide-tmp-<host>-<pid>-<random>`, so that one left behind by a
/// killed upload can be told from one being written by a live process (of this or another
/// machine sharing the folder).
pub(crate) fn tmp_name() -> String {
    tmp_name_with(&random_hex())
}

/// [`tmp_name`] with `tail` (no `-` in it) in place of the random part.
pub(crate) fn tmp_name_with(tail: &str) -> String {
    format!("{TMP_PREFIX}{}-{}-{tail}", this_host(), std::process::id())
}

/// This machine's name as it goes into temporary names (read once).
fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| {
                h.trim()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect()
            })
            .unwrap_or_else(|_| "host".into())
    })
}

/// The tail (random part) of a temporary name (made by [`tmp_name`]) that a process of this
/// host left behind when it died in the middle of an upload or delete (its pid no longer
/// runs); `None` for others' names and live ones. Also what the SFTP provider asks: the host
/// and pid are the client's.
pub(crate) fn abandoned_tail(name: &str) -> Option<&str> {
    let (host, pid, tail) = tmp_parts(name)?;
    let abandoned = host == this_host()
        && pid != std::process::id()
        && !Path::new(&format!("/proc/{pid}")).exists();
    abandoned.then_some(tail)
}

/// The tail (random part) of a temporary name made by this process; `None` for others.
pub(crate) fn own_tail(name: &str) -> Option<&str> {
    let (host, pid, tail) = tmp_parts(name)?;
    (host == this_host() && pid == std::process::id()).then_some(tail)
}

/// The host, pid and tail of a temporary name made by [`tmp_name`].
fn tmp_parts(name: &str) -> Option<(&str, u32, &str)> {
    let rest = name.strip_prefix(TMP_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let (tail, pid, host) = (parts.next()?, parts.next()?, parts.next()?);
    Some((host, pid.parse::<u32>().ok()?, tail))
}

/// Removes a temporary file that a process of this host left behind when it died in the
/// middle of an upload (its pid no longer runs). Others' and live ones are left alone. A file
/// set aside by a killed conditional delete is removed only if it still has the version the
/// delete was for; a changed one stays (hidden) and is reported.
fn remove_if_abandoned(path: &Path, name: &str) {
    let Some(tail) = abandoned_tail(name) else {
        return;
    };
    if tail.starts_with('v') {
        let same = fs::symlink_metadata(path)
            .map(|md| !md.is_dir() && delete_tail_is(tail, &version_of(&md)))
            .unwrap_or(false);
        if !same {
            tracing::warn!(file = %path.display(), "a file set aside by an interrupted delete changed meanwhile; left under its temporary name");
            return;
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(file = %path.display(), "removed a temporary file left by an interrupted upload")
        }
        Err(e) => {
            tracing::debug!(file = %path.display(), error = %e, "could not remove an abandoned temporary file")
        }
    }
}

/// A small xorshift64* generator for temporary names (no `rand` dependency).
fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .rotate_left(17);
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    for _ in 0..3 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
    }
    format!("{:016x}", x.wrapping_mul(0x2545_F491_4F6C_DD1D))
}

/// Removes the temporary file of a write unless disarmed (the write was renamed into place).
struct TmpGuard {
    path: Option<PathBuf>,
}

impl TmpGuard {
    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            // One unlink; fine to run inline even on an async worker.
            match fs::remove_file(&p) {
                Ok(()) => tracing::debug!(tmp = %p.display(), "removed temporary file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(tmp = %p.display(), error = %e, "cannot remove temporary file")
                }
            }
        }
    }
}

fn precondition_failed(p: &RemotePath) -> ProviderError {
    ProviderError::PreconditionFailed { path: p.clone() }
}

/// The tail of the temporary name a conditional delete of version `v` sets the file aside
/// under: `v<version>r<random>`, the version as letters and digits only, without its leading
/// `s` (no `-`; `v` is no hex digit, so an upload's random tail never looks like it), so that
/// what a killed delete left can be told to be the version it was to remove (see
/// [`remove_if_abandoned`]). Also the SFTP provider's.
pub(crate) fn delete_tail(v: &Version) -> String {
    format!("v{}r{}", plain_version(v), random_hex())
}

/// Whether a [`delete_tail`] was made for version `v`.
pub(crate) fn delete_tail_is(tail: &str, v: &Version) -> bool {
    tail.rsplit_once('r')
        .is_some_and(|(t, _)| t.strip_prefix('v') == Some(plain_version(v).as_str()))
}

/// The version `v` as it goes into a [`delete_tail`].
fn plain_version(v: &Version) -> String {
    let plain: String = v
        .as_bytes()
        .iter()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|&c| char::from(c))
        .collect();
    plain.trim_start_matches('s').to_string()
}

/// A `delete` conditional on version `v` (which `p` had a moment ago): the file is renamed to
/// a hidden temporary name beside it (atomically: whatever is at the name then moves), and
/// what moved is removed only if it still has version `v`. Anything else goes back to the name
/// (beside it, as `NAME.conflict-remote-<time>.EXT`, if the name was taken again meanwhile)
/// and the answer is `PreconditionFailed`. What is left of the window: a program that opened
/// the file before the rename and writes to it after the check.
fn delete_if_match(root: &Root, p: &RemotePath, v: &Version) -> Result<()> {
    let abs = root.abs(p);
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| abs.clone());
    let aside = dir.join(tmp_name_with(&delete_tail(v)));
    if let Err(e) = fs::rename(&abs, &aside) {
        return Err(match fs::symlink_metadata(&abs) {
            Err(e2) if e2.kind() == io::ErrorKind::NotFound => precondition_failed(p),
            Ok(md) if version_of(&md) != *v => precondition_failed(p),
            _ => lookup_err(&e, p),
        });
    }
    let same = match fs::symlink_metadata(&aside) {
        Ok(md) => !md.is_dir() && version_of(&md) == *v,
        // Someone removed it under its temporary name: gone, as asked.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => false,
    };
    if same {
        return match fs::remove_file(&aside) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                put_back(p, &abs, &aside)?;
                Err(map_io(&e, p))
            }
        };
    }
    // Changed (or replaced) between the check and the rename: not ours to remove.
    put_back(p, &abs, &aside)?;
    Err(precondition_failed(p))
}

/// Puts what a conditional delete set aside at `aside` back at `abs` without replacing what
/// may be there now; if the name was taken, beside it under a conflict name.
fn put_back(p: &RemotePath, abs: &Path, aside: &Path) -> Result<()> {
    let mut to = abs.to_path_buf();
    for n in 0..=100u32 {
        if n > 0 {
            let name = crate::uploader::conflict_name(p.name(), "remote", SystemTime::now(), n);
            to = abs.with_file_name(name);
        }
        match rename_noreplace(aside, &to) {
            Ok(still_there) => {
                if still_there {
                    let _ = fs::remove_file(aside);
                }
                if n > 0 {
                    tracing::warn!(path = %p, conflict = %to.display(), "local delete: the file changed meanwhile and its name was taken again: kept beside it");
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                tracing::warn!(path = %p, tmp = %aside.display(), error = %e, "local delete: cannot put the file back; it stays under the temporary name");
                return Err(map_io(&e, p));
            }
        }
    }
    tracing::warn!(path = %p, tmp = %aside.display(), "local delete: no free conflict name; the changed file stays under the temporary name");
    Err(ProviderError::Other {
        message: format!("local delete {p}: no free name to keep the changed file under"),
        retryable: false,
    })
}

/// State of a read stream.
struct ReadState {
    file: Arc<File>,
    path: RemotePath,
    version: Version,
    pos: u64,
    end: u64,
    done: bool,
}

/// Reads up to `want` bytes at `pos` (less only at end of file), then `fstat`s the file.
fn read_piece(file: &File, pos: u64, want: usize) -> io::Result<(Vec<u8>, Metadata)> {
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    let md = file.metadata()?;
    Ok((buf, md))
}

async fn next_piece(mut st: ReadState) -> Option<(Result<Bytes>, ReadState)> {
    if st.done || st.pos >= st.end {
        return None;
    }
    let want = (st.end - st.pos).min(READ_CHUNK) as usize;
    let file = Arc::clone(&st.file);
    let pos = st.pos;
    let res = tokio::task::spawn_blocking(move || read_piece(&file, pos, want)).await;
    let item = match res {
        Err(e) => Err(ProviderError::Other {
            message: format!("{}: read task failed: {e}", st.path),
            retryable: true,
        }),
        Ok(Err(e)) => Err(map_io(&e, &st.path)),
        Ok(Ok((buf, md))) => {
            if version_of(&md) != st.version {
                tracing::debug!(path = %st.path, "file changed during read");
                Err(precondition_failed(&st.path))
            } else if buf.is_empty() {
                // End of file before `end` with an unchanged version cannot happen; stop.
                return None;
            } else {
                if buf.len() < want {
                    st.done = true;
                }
                st.pos += buf.len() as u64;
                Ok(Bytes::from(buf))
            }
        }
    };
    if item.is_err() {
        st.done = true;
    }
    Some((item, st))
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    async fn sync(&self) -> Result<()> {
        let target = self.root.dir_sync().changed;
        let _one = self.root.syncing.lock().await;
        if self.root.dir_sync().synced >= target {
            return Ok(());
        }
        tokio::time::sleep(SYNC_GATHER).await;
        let (dirs, upto) = {
            let mut d = self.root.dir_sync();
            (std::mem::take(&mut d.unsynced), d.changed)
        };
        let dirs: Vec<PathBuf> = dirs.into_iter().collect();
        self.run("sync", move |root| {
            for (i, d) in dirs.iter().enumerate() {
                match fsync_dir(d) {
                    // Removed since: its parent's change is in the set too.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        // Synced again by the next call.
                        root.dir_sync().unsynced.extend(dirs[i..].iter().cloned());
                        return Err(ProviderError::Other {
                            message: format!(
                                "local provider: fsync of changed directory {} failed: {e}",
                                d.display()
                            ),
                            retryable: true,
                        });
                    }
                    Ok(()) => {}
                }
            }
            let mut d = root.dir_sync();
            d.synced = d.synced.max(upto);
            Ok(())
        })
        .await
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.path.display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rename: true,
            conditional_write: false,
            symlinks: true,
            attrs: true,
            max_name_len: MAX_NAME_LEN,
        }
    }

    async fn stat(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "local stat");
        let p = path.clone();
        self.run("stat", move |root| {
            let md = root.lookup(&p)?;
            root.entry(&p, &md)
        })
        .await
    }

    async fn list(&self, dir: &RemotePath, page: Option<String>) -> Result<ListPage> {
        tracing::debug!(%dir, "local list");
        if let Some(token) = page {
            return Err(ProviderError::Other {
                message: format!("{dir}: unknown list page token {token:?}"),
                retryable: false,
            });
        }
        let d = dir.clone();
        self.run("list", move |root| {
            let md = root.lookup(&d)?;
            if !md.is_dir() {
                return Err(ProviderError::NotADirectory(d));
            }
            let abs = root.abs(&d);
            let mut entries = Vec::new();
            for item in fs::read_dir(&abs).map_err(|e| lookup_err(&e, &d))? {
                let item = item.map_err(|e| map_io(&e, &d))?;
                let os_name = item.file_name();
                let Some(name) = os_name.to_str() else {
                    tracing::warn!(dir = %d, name = ?os_name, "skipping a name that is not UTF-8");
                    continue;
                };
                if name.starts_with(TMP_PREFIX) {
                    remove_if_abandoned(&abs.join(name), name);
                    continue;
                }
                let child = abs.join(name);
                let md = match fs::symlink_metadata(&child) {
                    Ok(md) => md,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(map_io(&e, &d)),
                };
                match entry_from(name, &md, || fs::read_link(&child)) {
                    Ok(Some(entry)) => entries.push(entry),
                    Ok(None) => tracing::debug!(dir = %d, name, "skipping a special file"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(map_io(&e, &d)),
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(ListPage {
                entries,
                next: None,
            })
        })
        .await
    }

    async fn read(
        &self,
        path: &RemotePath,
        version: &Version,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        tracing::debug!(%path, offset, len, "local read");
        let p = path.clone();
        let v = version.clone();
        let (file, size) = self
            .run("read", move |root| {
                if hidden(&p) {
                    return Err(ProviderError::NotFound(p));
                }
                let file = OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(root.abs(&p))
                    .map_err(|e| lookup_err(&e, &p))?;
                let md = file.metadata().map_err(|e| map_io(&e, &p))?;
                if md.is_dir() {
                    return Err(ProviderError::IsADirectory(p));
                }
                if !md.is_file() {
                    return Err(SPECIAL);
                }
                if version_of(&md) != v {
                    return Err(precondition_failed(&p));
                }
                Ok((file, md.size()))
            })
            .await?;
        let state = ReadState {
            file: Arc::new(file),
            path: path.clone(),
            version: version.clone(),
            pos: offset.min(size),
            end: offset.saturating_add(len).min(size),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_piece)))
    }

    async fn write(
        &self,
        path: &RemotePath,
        mut body: ByteStream,
        len: u64,
        pre: Precondition,
        attrs: ObjectAttrs,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%path, len, ?pre, "local write");
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        check_new_name(path)?;
        let parent = path.parent().unwrap_or_else(RemotePath::root);

        // A body that fits in one batch is gathered first (uploads from memory or the cache
        // yield it at once); then one blocking task makes the temporary file, writes, syncs and
        // renames, instead of three.
        let mut first: Vec<Bytes> = Vec::new();
        let mut received: u64 = 0;
        if len <= WRITE_BATCH as u64 {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                received += chunk.len() as u64;
                check_received(path, received, len, false)?;
                if !chunk.is_empty() {
                    first.push(chunk);
                }
            }
            check_received(path, received, len, true)?;
            let (p, par) = (path.clone(), parent);
            return self
                .run("write", move |root| {
                    let (file, guard) = create_tmp(root, &par, &p)?;
                    let mut f: &File = &file;
                    for b in &first {
                        f.write_all(b).map_err(|e| map_io(&e, &p))?;
                    }
                    finish_write(root, &file, guard, &p, &par, pre, attrs)
                })
                .await;
        }

        // 1. The temporary file. If this future is dropped while the task runs, the task's
        //    output (and with it the guard) is dropped when it completes: the file is removed.
        let p = path.clone();
        let par = parent.clone();
        let (file, guard) = self
            .run("write", move |root| {
                create_tmp(root, &par, &p).map(|(f, g)| (Arc::new(f), g))
            })
            .await?;

        // 2. The body, in batches of about 1 MiB.
        let mut batch: Vec<Bytes> = first;
        let mut batch_len = 0usize;
        loop {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Err(e),
                None => break,
            };
            received += chunk.len() as u64;
            check_received(path, received, len, false)?;
            if !chunk.is_empty() {
                batch_len += chunk.len();
                batch.push(chunk);
            }
            if batch_len >= WRITE_BATCH {
                self.write_batch(path, &file, std::mem::take(&mut batch))
                    .await?;
                batch_len = 0;
            }
        }
        check_received(path, received, len, true)?;
        if !batch.is_empty() {
            self.write_batch(path, &file, batch).await?;
        }

        // 3. Attributes, fsync, precondition, rename: one blocking task that owns the guard, so
        //    it runs to completion even if this future is dropped.
        let p = path.clone();
        self.run("write", move |root| {
            finish_write(root, &file, guard, &p, &parent, pre, attrs)
        })
        .await
    }

    async fn delete(&self, path: &RemotePath, pre: Precondition) -> Result<()> {
        tracing::debug!(%path, ?pre, "local delete");
        let p = path.clone();
        self.run("delete", move |root| {
            let md = root.lookup(&p)?;
            if md.is_dir() {
                return Err(ProviderError::IsADirectory(p));
            }
            match pre {
                Precondition::None => {}
                Precondition::IfMatch(v) => {
                    if version_of(&md) != v {
                        return Err(precondition_failed(&p));
                    }
                    let r = delete_if_match(root, &p, &v);
                    root.changed_dir(root.abs(&p.parent().unwrap_or_else(RemotePath::root)));
                    return r;
                }
                Precondition::IfNotExists => return Err(precondition_failed(&p)),
            }
            fs::remove_file(root.abs(&p)).map_err(|e| lookup_err(&e, &p))?;
            root.changed_dir(root.abs(&p.parent().unwrap_or_else(RemotePath::root)));
            Ok(())
        })
        .await
    }

    async fn mkdir(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "local mkdir");
        if path.is_root() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        check_new_name(path)?;
        let p = path.clone();
        self.run("mkdir", move |root| {
            let abs = root.abs(&p);
            fs::create_dir(&abs).map_err(|e| create_err(&e, &p))?;
            root.changed_dir(root.abs(&p.parent().unwrap_or_else(RemotePath::root)));
            let md = root.lookup(&p)?;
            root.entry(&p, &md)
        })
        .await
    }

    async fn rmdir(&self, path: &RemotePath) -> Result<()> {
        tracing::debug!(%path, "local rmdir");
        if path.is_root() {
            return Err(ProviderError::NotSupported("removing the root folder"));
        }
        let p = path.clone();
        self.run("rmdir", move |root| {
            let md = root.lookup(&p)?;
            if !md.is_dir() {
                return Err(ProviderError::NotADirectory(p));
            }
            fs::remove_dir(root.abs(&p)).map_err(|e| lookup_err(&e, &p))?;
            root.changed_dir(root.abs(&p.parent().unwrap_or_else(RemotePath::root)));
            Ok(())
        })
        .await
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%from, %to, replace, "local rename");
        if from.is_root() || to.is_root() {
            return Err(ProviderError::NotSupported(
                "renaming to or from the root folder",
            ));
        }
        check_new_name(to)?;
        if to != from && to.starts_with(from) {
            return Err(ProviderError::InvalidName {
                name: to.name().to_string(),
                reason: "cannot move a directory into itself",
            });
        }
        let (f, t) = (from.clone(), to.clone());
        self.run("rename", move |root| {
            let src = root.lookup(&f)?;
            match root.lstat(&t) {
                Ok(dst) => {
                    if !replace {
                        return Err(ProviderError::AlreadyExists(t));
                    }
                    match (src.is_dir(), dst.is_dir()) {
                        (true, false) => return Err(ProviderError::NotADirectory(t)),
                        (false, true) => return Err(ProviderError::IsADirectory(t)),
                        _ => {}
                    }
                }
                Err(e) if matches!(errno(&e), Some(Errno::NOENT)) => {}
                Err(e) => return Err(create_err(&e, &t)),
            }
            let (a, b) = (root.abs(&f), root.abs(&t));
            let res = if replace {
                fs::rename(&a, &b)
            } else {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &a,
                    rustix::fs::CWD,
                    &b,
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .map_err(io::Error::from)
            };
            res.map_err(|e| match errno(&e) {
                Some(Errno::INVAL) => ProviderError::InvalidName {
                    name: t.name().to_string(),
                    reason: "invalid rename (into itself, or unsupported by the filesystem)",
                },
                _ => create_err(&e, &t),
            })?;
            let from_dir = root.abs(&f.parent().unwrap_or_else(RemotePath::root));
            let to_dir = root.abs(&t.parent().unwrap_or_else(RemotePath::root));
            root.changed_dir(to_dir.clone());
            if from_dir != to_dir {
                root.changed_dir(from_dir);
            }
            let md = root.lookup(&t)?;
            root.entry(&t, &md)
        })
        .await
    }

    async fn symlink(&self, path: &RemotePath, target: &str) -> Result<RemoteEntry> {
        tracing::debug!(%path, "local symlink");
        if path.is_root() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        check_new_name(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(ProviderError::InvalidName {
                name: path.name().to_string(),
                reason: "invalid symlink target",
            });
        }
        let p = path.clone();
        let target = target.to_string();
        self.run("symlink", move |root| {
            std::os::unix::fs::symlink(&target, root.abs(&p)).map_err(|e| create_err(&e, &p))?;
            root.changed_dir(root.abs(&p.parent().unwrap_or_else(RemotePath::root)));
            let md = root.lookup(&p)?;
            root.entry(&p, &md)
        })
        .await
    }

    async fn set_attrs(&self, path: &RemotePath, attrs: ObjectAttrs) -> Result<RemoteEntry> {
        tracing::debug!(%path, ?attrs, "local set_attrs");
        let p = path.clone();
        self.run("set_attrs", move |root| {
            let md = root.lookup(&p)?;
            if kind_of(&md).is_none() {
                return Err(SPECIAL);
            }
            let abs = root.abs(&p);
            if let Some(mode) = attrs.mode {
                if !md.file_type().is_symlink() {
                    fs::set_permissions(&abs, Permissions::from_mode(mode & 0o7777))
                        .map_err(|e| lookup_err(&e, &p))?;
                }
            }
            if let Some(mtime) = attrs.mtime {
                let times = rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: 0,
                        tv_nsec: rustix::fs::UTIME_OMIT,
                    },
                    last_modification: timespec(mtime),
                };
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    &abs,
                    &times,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| lookup_err(&e.into(), &p))?;
            }
            let md = root.lookup(&p)?;
            root.entry(&p, &md)
        })
        .await
    }
}

impl LocalProvider {
    /// Appends one batch of body chunks to the temporary file on the blocking pool.
    async fn write_batch(
        &self,
        path: &RemotePath,
        file: &Arc<File>,
        batch: Vec<Bytes>,
    ) -> Result<()> {
        let file = Arc::clone(file);
        let p = path.clone();
        self.run("write", move |_| {
            let mut f: &File = &file;
            for b in &batch {
                f.write_all(b).map_err(|e| map_io(&e, &p))?;
            }
            Ok(())
        })
        .await
    }
}

/// `received` bytes of a body declared `len` long: more is an error at once, less once it
/// has ended (`done`).
fn check_received(path: &RemotePath, received: u64, len: u64, done: bool) -> Result<()> {
    if received > len {
        return Err(ProviderError::Other {
            message: format!("{path}: body is longer than the declared {len} bytes"),
            retryable: false,
        });
    }
    if done && received != len {
        return Err(ProviderError::Other {
            message: format!("{path}: body ended after {received} of {len} bytes"),
            retryable: false,
        });
    }
    Ok(())
}

/// A new temporary file in directory `par` for a write of `p`, removed by its guard unless
/// disarmed.
fn create_tmp(root: &Root, par: &RemotePath, p: &RemotePath) -> Result<(File, TmpGuard)> {
    let dir = root.abs(par);
    for _ in 0..16 {
        let tmp = dir.join(tmp_name());
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, TmpGuard { path: Some(tmp) })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(create_err(&e, p)),
        }
    }
    Err(ProviderError::Other {
        message: format!("{p}: no free temporary name"),
        retryable: true,
    })
}

/// The end of a write: attributes, `fsync`, precondition, rename into place (the directory is
/// synced by the next [`Provider::sync`]).
fn finish_write(
    root: &Root,
    file: &File,
    mut guard: TmpGuard,
    p: &RemotePath,
    parent: &RemotePath,
    pre: Precondition,
    attrs: ObjectAttrs,
) -> Result<RemoteEntry> {
    // Without a mode, a replaced file keeps its permission bits.
    let mode = attrs.mode.or_else(|| {
        fs::symlink_metadata(root.abs(p))
            .ok()
            .filter(Metadata::is_file)
            .map(|md| md.mode())
    });
    if let Some(mode) = mode {
        file.set_permissions(Permissions::from_mode(mode & 0o7777))
            .map_err(|e| map_io(&e, p))?;
    }
    if let Some(mtime) = attrs.mtime {
        file.set_times(FileTimes::new().set_modified(mtime))
            .map_err(|e| map_io(&e, p))?;
    }
    file.sync_all().map_err(|e| map_io(&e, p))?;
    let target = root.abs(p);
    match pre {
        Precondition::None => {
            fs::rename(guard.path(), &target).map_err(|e| create_err(&e, p))?;
            guard.disarm();
        }
        Precondition::IfNotExists => {
            let tmp_left =
                rename_noreplace(guard.path(), &target).map_err(|e| create_err(&e, p))?;
            if !tmp_left {
                guard.disarm();
            }
        }
        Precondition::IfMatch(v) => {
            let md = match fs::symlink_metadata(&target) {
                Ok(md) => md,
                Err(e) if matches!(errno(&e), Some(Errno::NOENT | Errno::NOTDIR)) => {
                    return Err(precondition_failed(p));
                }
                Err(e) => return Err(map_io(&e, p)),
            };
            if md.is_dir() {
                return Err(ProviderError::IsADirectory(p.clone()));
            }
            if version_of(&md) != v {
                return Err(precondition_failed(p));
            }
            // Window: a change to `target` from here to the rename goes unnoticed.
            fs::rename(guard.path(), &target).map_err(|e| create_err(&e, p))?;
            guard.disarm();
        }
    }
    drop(guard);
    root.changed_dir(root.abs(parent));
    let md = file.metadata().map_err(|e| map_io(&e, p))?;
    root.entry(p, &md)
}

fn timespec(t: SystemTime) -> rustix::fs::Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => rustix::fs::Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        },
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), i64::from(d.subsec_nanos()));
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: nanos,
            }
        }
    }
}
