//! [`SftpProvider`]: a folder on an SSH server, spoken to with SFTP (protocol version 3, the one
//! OpenSSH's `sftp-server` / `internal-sftp` implements) over one SSH connection, all in Rust
//! (`russh` with its aws-lc-rs crypto, `russh-sftp`). Written and tested against Debian's
//! OpenSSH 9.2.
//!
//! # Connecting
//!
//! * One SSH connection with one SFTP session, made on the first call and shared by every call
//!   (SFTP requests are pipelined: many calls and many reads/writes of one call are in flight at
//!   once). A connection found closed (the server restarted, the network dropped it) is made
//!   again by the next call; a call whose first request already met the dead connection, before
//!   any answer, is run once more on a fresh one (`mkdir` and `symlink`, whose first request
//!   changes something, only when it could not even be sent).
//! * Authentication is with the private key file [`SftpConfig::key`] (ed25519 or ECDSA, in
//!   OpenSSH format, optionally encrypted with [`SftpConfig::key_passphrase`]); it is read by
//!   [`SftpProvider::new`]. RSA keys are not supported (the `rsa` feature of russh is left out).
//! * The host key is checked against [`SftpConfig::host_key_fingerprint`] (`SHA256:…` as
//!   `ssh-keygen -l` prints it) when set, else against the `known_hosts` file
//!   [`SftpConfig::known_hosts`] (default `~/.ssh/known_hosts`; `[host]:port` entries for other
//!   ports, hashed names too). An unknown or changed host key fails the connection.
//!
//! # How the tree maps onto the server
//!
//! * [`SftpConfig::path`] is the root folder: absolute, or relative to the login directory (`""`
//!   is the login directory). `a/b` is `<path>/a/b`; names are sent as UTF-8. A name on the
//!   server that is not UTF-8 arrives mangled (the SFTP library decodes names lossily): such
//!   entries are left out of listings, with a warning.
//! * **The root always exists.** Whenever an answer would be "no such file" (or "not a
//!   directory" for a parent), the root folder is checked first: when it is missing or not a
//!   folder (an unmounted share), the call fails with [`ProviderError::Unreachable`] naming it,
//!   never `NotFound`.
//! * **Versions** are `s{size}-m{mtime}` (SFTP v3 has neither inodes nor change times, and its
//!   times are whole seconds), taken with `lstat` (a symlink has its own version). Directories
//!   are version `dir` (so that `list` and `stat` agree while entries come and go). Limitation:
//!   two states of a file with the same size within one second share a version. This provider's
//!   own writes avoid it: a write without an mtime of its own that replaces a file of the same
//!   size and an mtime at or after its own stamps its file one second after the replaced one (so
//!   rapid same-size rewrites move the mtime ahead, a second each).
//! * **Times** are whole seconds from 1970 to 2106 (SFTP v3 sends them as 32-bit counts):
//!   [`ObjectAttrs::mtime`] is rounded down to the second, and clamped to that range.
//! * Permission bits are kept (`attrs: true`), set with `setstat` (Linux cannot change a
//!   symlink's mode: `set_attrs` ignores the mode of a symlink), and the mtime of a symlink
//!   itself is set with the `lsetstat@openssh.com` extension (`NotSupported` without it).
//!   Symlinks are made with `SSH_FXP_SYMLINK` (with OpenSSH's argument order, target first) and
//!   read with `readlink`; special files (FIFOs, sockets, devices) are left out of listings and
//!   are `NotSupported` for `stat`.
//! * Names starting with [`TMP_PREFIX`] (the same as the local provider's) are uploads in
//!   progress: hidden from listings and `stat`, and reserved. An upload's temporary name
//!   carries the client's host name and pid (`.syncoxide-tmp-<host>-<pid>-<random>`); a
//!   listing removes those of this host whose process no longer runs (a mount killed in the
//!   middle of an upload). Those of other hosts are left alone.
//!
//! # Operations
//!
//! * `read`: `lstat` (the version asked for, else `PreconditionFailed`), `open`, `fstat` (the
//!   same version, else `PreconditionFailed`: the file was replaced in between), then pieces of
//!   up to 1 MiB, each read as 64 KiB requests all in flight at once and followed by an `fstat`:
//!   a piece is only handed out once the open file is seen to still have the version asked for,
//!   so the stream ends with `PreconditionFailed` rather than with bytes of another version. (A
//!   file replaced by rename keeps being read from the old, open one, consistently.) A
//!   connection lost midway ends the stream with `Unreachable`.
//! * `write`: the body is streamed (16 requests of up to 64 KiB in flight) into
//!   `.syncoxide-tmp-<random>` in the target's folder, opened with `O_EXCL`; exactly `len` bytes
//!   or it fails. Then the mode (given, else the replaced file's, else the server's umask
//!   applies) and mtime are set with `fsetstat`, the file is `fsync`ed where the server offers
//!   `fsync@openssh.com`, and renamed over the target with `posix-rename@openssh.com` (an atomic
//!   `rename(2)`). Without that extension the target is removed first and the temporary file
//!   renamed after it: a reader may find no file in that window. A failed write removes the
//!   temporary file before it returns; a cancelled one (the future dropped) has it removed in
//!   the background; see below for a connection lost midway.
//! * **Preconditions are check-then-act** (`conditional_write: false`): `IfMatch` is checked
//!   before the upload and again with an `lstat` just before the final rename; a change by
//!   someone else between that `lstat` and the rename (one round trip) is overwritten.
//!   `IfNotExists` renames with the plain SFTP rename, which OpenSSH does with `link(2)` +
//!   `unlink` for a file: it fails atomically when anything is at the target.
//!   `IfMatch` on a missing file whose parent is missing or not a folder is `NotFound` /
//!   `NotADirectory` of the parent (OpenSSH answers "no such file" below a file), as a
//!   creation there is, rather than `PreconditionFailed`.
//! * `delete`: `lstat` (a directory is `IsADirectory`; `IfMatch` compared). Without a
//!   precondition, then `remove`. With `IfMatch`, a change made before the removal is never
//!   removed: the file is renamed (atomically, with `posix-rename@openssh.com` where offered)
//!   to a hidden `.syncoxide-tmp-<host>-<pid>-v<size>m<mtime>r<random>` beside it (a mount
//!   killed right then leaves it there; a later listing removes it if it still has that
//!   version, else leaves it hidden with a warning), and that name is `lstat`ed: the version
//!   asked for is removed; anything else (changed or replaced before the rename) goes back
//!   with the plain SFTP rename, which never replaces, and the answer is `PreconditionFailed`;
//!   if the name was taken again meanwhile, the changed file is kept beside it as
//!   `NAME.conflict-remote-<time>.EXT` (also `PreconditionFailed`). The remaining window: for
//!   those two or three round trips the name is absent (a reader finds no file there; a file
//!   created there meanwhile is what sends the put-back to a conflict name), and a program
//!   that had the file open before the rename and writes to it after the `lstat` writes into
//!   the removed file, as with any removal. A cancelled delete puts the file back in the
//!   background; for a connection lost midway, see below.
//! * **Requests carried out late.** A request that timed out, or whose connection went, may
//!   still reach the server once the network moves again — after the call failed and the
//!   drive retried it on a new connection (closing the old connection cannot take back what is
//!   on the way). The temporary name such a request was about is *in doubt*, and before any
//!   further call runs (the retry included) it is settled on the new connection: an upload's
//!   temporary file is removed, so that a late rename of it finds nothing to move (it would
//!   put the older upload over the newer one); a conditional delete's set-aside file is removed
//!   if it has the version the delete was for, else put back. That is repeated, less and less
//!   often, for two minutes (for a late open that makes the file after that). A listing also
//!   removes this process's temporary files that no call uses. A late rename *into* a
//!   set-aside name is settled when it lands, if it lands within those two minutes. Not
//!   fenced: a late plain `remove` (a delete without a precondition, which the drive only
//!   sends for a change replayed after a crash) or a late `rename` of a name the drive reused
//!   meanwhile.
//! * `mkdir`: `mkdir` (the umask applies). `rmdir`: `rmdir`, which the server refuses for a
//!   non-empty directory (`NotEmpty`; an upload in progress in it counts).
//! * `rename`: what is at the target is checked first (a file never replaces a directory or the
//!   reverse; `AlreadyExists` without `replace`), then `posix-rename@openssh.com` (atomic, and a
//!   directory replaces only an empty one) with `replace`, the plain SFTP rename without (which
//!   OpenSSH refuses when the target exists). A change at the target between the check and the
//!   rename is a window of one round trip.
//! * `sync`: where the server offers `fsync@openssh.com`, every folder whose entries this
//!   provider changed since the last `sync` is opened and `fsync`ed, so that renames and
//!   removals survive a power loss of the server too (files are `fsync`ed before their rename).
//!
//! # Errors
//!
//! Connection refused, DNS, the SSH handshake (an untrusted host key included) and a connection
//! lost are [`ProviderError::Unreachable`] naming `user@host:port`; a key the server refuses is
//! `PermissionDenied` (and a warning saying so); every request, and making the connection, is
//! bounded by [`SftpConfig::request_timeout`] (`TimedOut`, and the connection is dropped). SFTP
//! v3 status codes are coarse (OpenSSH answers "failure" for "exists", "not empty", "no space"
//! alike), so a failure is explained by looking at the paths involved: "no such file" is
//! `NotFound` (of the parent, for a creation), "permission denied" `PermissionDenied`,
//! "unsupported" `NotSupported`, and a failure nothing explains a retryable `Other` (or
//! `NoSpace`, when `statvfs@openssh.com` says the filesystem is full).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, FileType, OpenFlags, Packet, StatusCode};

pub use super::local::TMP_PREFIX;
use super::{
    ByteStream, Capabilities, EntryKind, ListPage, ObjectAttrs, Precondition, Provider,
    ProviderError, RemoteEntry, RemotePath, Result, Version,
};

/// Longest name component, in bytes (like the other providers, so names behave the same).
const MAX_NAME_LEN: usize = 255;
/// The version of every directory.
const DIR_VERSION: &str = "dir";
/// Bytes of one read or write request (OpenSSH takes up to 255 KiB; `limits@openssh.com` may
/// say less).
const CHUNK: u64 = 64 * 1024;
/// Requests of one read piece, or of a write, in flight at once.
const IN_FLIGHT: usize = 16;
/// A read hands out pieces of this size, each checked with an `fstat`.
const PIECE: u64 = CHUNK * IN_FLIGHT as u64;
/// Symlink targets read at once while listing.
const READLINKS: usize = 16;
/// How often a request waiting for its answer checks that its connection is still there.
const CLOSED_CHECK: Duration = Duration::from_millis(250);

const EXT_POSIX_RENAME: &str = "posix-rename@openssh.com";
const EXT_FSYNC: &str = "fsync@openssh.com";
const EXT_LSETSTAT: &str = "lsetstat@openssh.com";
const EXT_STATVFS: &str = "statvfs@openssh.com";
const EXT_LIMITS: &str = "limits@openssh.com";

/// Where and how to reach the folder.
#[derive(Clone)]
pub struct SftpConfig {
    pub host: String,
    /// Usually 22.
    pub port: u16,
    pub user: String,
    /// The remote folder that is the root of the tree: absolute, or relative to the login
    /// directory (`""`: the login directory itself).
    pub path: String,
    /// The private key file (OpenSSH format; ed25519 or ECDSA).
    pub key: PathBuf,
    /// The passphrase of an encrypted key.
    pub key_passphrase: Option<String>,
    /// The `known_hosts` file to check the host key against (default `~/.ssh/known_hosts`);
    /// not read when [`SftpConfig::host_key_fingerprint`] is set.
    pub known_hosts: Option<PathBuf>,
    /// The expected host key, `SHA256:…` as `ssh-keygen -l` prints it.
    pub host_key_fingerprint: Option<String>,
    /// See the module documentation, "Errors".
    pub request_timeout: Duration,
}

impl fmt::Debug for SftpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("path", &self.path)
            .field("key", &self.key)
            .field(
                "key_passphrase",
                &self.key_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("known_hosts", &self.known_hosts)
            .field("host_key_fingerprint", &self.host_key_fingerprint)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A configuration the provider cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum SftpConfigError {
    #[error("the SFTP host is empty or invalid: {0:?}")]
    Host(String),
    #[error("the SFTP user name is empty or invalid: {0:?}")]
    User(String),
    #[error("invalid remote folder {0:?}")]
    Path(String),
    #[error("cannot use the SSH key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("invalid host key fingerprint {0:?}: expected SHA256:… as `ssh-keygen -l` prints it")]
    Fingerprint(String),
    #[error(
        "no known_hosts file to check the host key against (no home directory): \
         set one, or a host key fingerprint"
    )]
    KnownHosts,
    #[error("the request timeout must be more than zero")]
    Timeout,
}

// ---------------------------------------------------------------------------------------------
// Names, versions, attributes

fn is_hidden(name: &str) -> bool {
    name.starts_with(TMP_PREFIX)
}

/// A name we may create.
fn check_new_name(p: &RemotePath) -> Result<()> {
    let name = p.name();
    if is_hidden(name) {
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

fn precondition_failed(p: &RemotePath) -> ProviderError {
    ProviderError::PreconditionFailed { path: p.clone() }
}

/// Whether a file with `attrs` has the version a [`delete_tail`] was made for.
fn delete_tail_matches(tail: &str, attrs: &FileAttributes) -> bool {
    !is_dir(attrs) && super::local::delete_tail_is(tail, &version_of(attrs))
}

/// What an entry is, from its attributes (`None`: a special file).
fn kind_of(a: &FileAttributes) -> Option<EntryKind> {
    if a.permissions.is_none() {
        return Some(EntryKind::File);
    }
    match a.file_type() {
        FileType::File => Some(EntryKind::File),
        FileType::Dir => Some(EntryKind::Dir),
        FileType::Symlink => Some(EntryKind::Symlink),
        FileType::Other => None,
    }
}

fn is_dir(a: &FileAttributes) -> bool {
    kind_of(a) == Some(EntryKind::Dir)
}

fn mtime_of(a: &FileAttributes) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(a.mtime.unwrap_or(0)))
}

/// The version of a file or symlink with these attributes.
fn version_of(a: &FileAttributes) -> Version {
    if is_dir(a) {
        return Version::from(DIR_VERSION);
    }
    Version::from(format!("s{}-m{}", a.size.unwrap_or(0), a.mtime.unwrap_or(0)).as_str())
}

/// SFTP v3 seconds: rounded down, clamped to 1970..2106.
fn sftp_time(t: SystemTime) -> u32 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
        Err(_) => 0,
    }
}

fn entry_from(name: &str, a: &FileAttributes, target: Option<String>) -> Option<RemoteEntry> {
    let kind = kind_of(a)?;
    Some(RemoteEntry {
        name: name.to_string(),
        kind,
        size: if kind == EntryKind::Dir {
            0
        } else {
            a.size.unwrap_or(0)
        },
        mtime: mtime_of(a),
        version: version_of(a),
        mode: a.permissions.map(|m| m & 0o7777),
        symlink_target: target,
    })
}

/// SSH wire strings, for extension requests.
fn ssh_strings(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// Attributes with only permission bits and/or times set.
fn set_attrs_of(mode: Option<u32>, times: Option<(u32, u32)>) -> FileAttributes {
    let mut a = FileAttributes::empty();
    a.permissions = mode.map(|m| m & 0o7777);
    if let Some((atime, mtime)) = times {
        a.atime = Some(atime);
        a.mtime = Some(mtime);
    }
    a
}

// ---------------------------------------------------------------------------------------------
// The connection

/// How the host key is checked.
#[derive(Clone, Debug)]
enum HostKeyCheck {
    Fingerprint(String),
    KnownHosts(PathBuf),
}

/// The russh client handler: checks the host key, and says why it refused one.
struct HostCheck {
    check: HostKeyCheck,
    host: String,
    port: u16,
    refused: Arc<Mutex<Option<String>>>,
}

impl HostCheck {
    fn refuse(&self, why: String) -> bool {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        false
    }
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(
                self.refuse("the server offers a host certificate, which is not supported".into())
            );
        };
        let seen = key.fingerprint(HashAlg::Sha256).to_string();
        Ok(match &self.check {
            HostKeyCheck::Fingerprint(want) if *want == seen => true,
            HostKeyCheck::Fingerprint(want) => {
                self.refuse(format!("its host key is {seen}, not the expected {want}"))
            }
            HostKeyCheck::KnownHosts(file) => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, file) {
                    Ok(true) => true,
                    Ok(false) => {
                        self.refuse(format!("its host key {seen} is not in {}", file.display()))
                    }
                    Err(russh::keys::Error::KeyChanged { line }) => self.refuse(format!(
                        "its host key {seen} differs from the one in {} line {line} \
                         (the server changed its key, or someone is in between)",
                        file.display()
                    )),
                    Err(e) => self.refuse(format!("cannot check {}: {e}", file.display())),
                }
            }
        })
    }
}

/// Which extensions the server offers.
#[derive(Clone, Copy, Debug, Default)]
struct Extensions {
    posix_rename: bool,
    fsync: bool,
    lsetstat: bool,
    statvfs: bool,
}

/// One SSH connection with its SFTP session.
struct Conn {
    ssh: client::Handle<HostCheck>,
    sftp: RawSftpSession,
    ext: Extensions,
    /// Bytes per read / write request.
    read_len: u64,
    write_len: u64,
    /// Set once a request found the session gone.
    dead: AtomicBool,
    /// The provider's [`Inner::temps`].
    temps: Arc<Temps>,
}

/// How long a temporary name stays in doubt (see [`Doubt`]): a request stalled in the network
/// is carried out within this, or never.
const DOUBT_WINDOW: Duration = Duration::from_secs(120);

/// A temporary name that a request went unanswered about (it timed out, or its connection
/// went): the request may still be carried out late, once the network moves again — after the
/// call failed and was retried on a new connection. An upload's temporary file is removed
/// before any further call runs, so that a late rename of it finds nothing to move (it would
/// put an older upload over a newer one), and again now and then for a while, for a late open
/// that creates it after that. A conditional delete's set-aside file is removed if it is the
/// version the delete was for, else put back. See [`Cx::settle_doubts`].
struct Doubt {
    tmp: String,
    /// `Some((name, version))`: `tmp` is a conditional delete's set-aside file of `name`, to be
    /// removed if it has `version` (never when `None`), else put back; `None`: an upload's
    /// temporary file.
    aside: Option<(RemotePath, Option<Version>)>,
    since: Instant,
    next: Instant,
    tries: u32,
}

/// The temporary names of this process, shared by the provider and its connections.
#[derive(Default)]
struct Temps {
    /// Those a call uses right now (full paths): a listing never removes them.
    live: Mutex<HashSet<String>>,
    doubts: Mutex<Vec<Doubt>>,
}

impl Temps {
    fn doubt(&self, tmp: String, aside: Option<(RemotePath, Option<Version>)>) {
        tracing::debug!(%tmp, "sftp: a request about a temporary name went unanswered; settled before the next call");
        let now = Instant::now();
        self.doubts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Doubt {
                tmp,
                aside,
                since: now,
                next: now,
                tries: 0,
            });
    }

    fn is_live(&self, tmp: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tmp)
    }

    fn set_live(&self, tmp: &str, live: bool) {
        let mut l = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live {
            l.insert(tmp.to_string());
        } else {
            l.remove(tmp);
        }
    }
}

impl Conn {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::Relaxed) && !self.ssh.is_closed()
    }
}

/// Why an SFTP request failed.
#[derive(Debug)]
enum Fail {
    /// The server answered with this status.
    Status(StatusCode, String),
    /// The connection is gone (or the protocol broke): the connection is dropped.
    Lost(String),
    /// No answer within the request timeout: the connection is dropped.
    TimedOut,
}

impl Fail {
    /// No answer came: the request may have been carried out, or may still be.
    fn unanswered(&self) -> bool {
        matches!(self, Fail::Lost(_) | Fail::TimedOut)
    }

    fn code(&self) -> Option<StatusCode> {
        match self {
            Fail::Status(c, _) => Some(*c),
            _ => None,
        }
    }
}

struct Inner {
    cfg: SftpConfig,
    key: Arc<PrivateKey>,
    check: HostKeyCheck,
    /// The root folder as sent to the server (no trailing `/` except for `/` itself).
    root: String,
    /// `user@host:port`, for messages.
    who: String,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Held while connecting, so that concurrent calls wait for one connection.
    connecting: tokio::sync::Mutex<()>,
    /// Folders whose entries changed since the last `sync`.
    dirty: Mutex<HashSet<RemotePath>>,
    /// Held by a `sync` round.
    syncing: tokio::sync::Mutex<()>,
    temps: Arc<Temps>,
    /// Held while the doubts are settled, so that no call runs before that is done.
    fence: tokio::sync::Mutex<()>,
}

/// Something that cannot connect.
enum ConnectError {
    Provider(ProviderError),
    /// The server refused the key.
    Auth(String),
}

impl Inner {
    fn full(&self, p: &RemotePath) -> String {
        if p.is_root() {
            self.root.clone()
        } else if self.root == "/" {
            format!("/{}", p.as_str())
        } else {
            format!("{}/{}", self.root, p.as_str())
        }
    }

    fn unreachable(&self, why: impl fmt::Display) -> ProviderError {
        ProviderError::Unreachable(format!("SFTP server {}: {why}", self.who))
    }

    fn touched(&self, dir: Option<RemotePath>) {
        if let Some(d) = dir {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(d);
        }
    }

    /// The live connection, made (again) if there is none. `reused`: it was there before.
    async fn conn(&self, p: &RemotePath) -> Result<(Arc<Conn>, bool)> {
        if let Some(c) = self.cached() {
            return Ok((c, true));
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok((c, true));
        }
        tracing::debug!(who = %self.who, "sftp connecting");
        let c = match tokio::time::timeout(self.cfg.request_timeout, self.connect()).await {
            Err(_) => return Err(ProviderError::TimedOut),
            Ok(Err(ConnectError::Provider(e))) => return Err(e),
            Ok(Err(ConnectError::Auth(msg))) => {
                tracing::warn!("{msg}");
                return Err(ProviderError::PermissionDenied(p.clone()));
            }
            Ok(Ok(c)) => Arc::new(c),
        };
        tracing::debug!(who = %self.who, ext = ?c.ext, "sftp connected");
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&c));
        Ok((c, false))
    }

    fn cached(&self) -> Option<Arc<Conn>> {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(c) if c.alive() => Some(Arc::clone(c)),
            Some(_) => {
                tracing::debug!(who = %self.who, "sftp connection lost; reconnecting");
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Forgets `c` (if it is still the current connection), so that the next call reconnects.
    fn drop_conn(&self, c: &Arc<Conn>) {
        if c.dead.swap(true, Ordering::Relaxed) {
            return;
        }
        {
            let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, c)) {
                *slot = None;
            }
        }
        // Closed, so that the server gets nothing more from it than what is on the way.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (c, timeout) = (Arc::clone(c), self.cfg.request_timeout);
            rt.spawn(async move {
                let bye = c.ssh.disconnect(
                    russh::Disconnect::ByApplication,
                    "giving up on this connection",
                    "en",
                );
                let _ = tokio::time::timeout(timeout, bye).await;
            });
        }
    }

    async fn connect(&self) -> std::result::Result<Conn, ConnectError> {
        let who = &self.who;
        let lost = |what: &str, e: &dyn fmt::Display| {
            ConnectError::Provider(self.unreachable(format!("{what}: {e}")))
        };
        let config = Arc::new(client::Config {
            // Noticed within a minute when the server vanishes without closing the connection.
            keepalive_interval: Some(Duration::from_secs(20)),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let refused = Arc::new(Mutex::new(None));
        let handler = HostCheck {
            check: self.check.clone(),
            host: self.cfg.host.clone(),
            port: self.cfg.port,
            refused: Arc::clone(&refused),
        };
        let mut ssh =
            match client::connect(config, (self.cfg.host.as_str(), self.cfg.port), handler).await {
                Ok(s) => s,
                Err(e) => {
                    let why = refused.lock().unwrap_or_else(|e| e.into_inner()).take();
                    return Err(match why {
                        Some(why) => lost("untrusted server", &why),
                        None => lost("cannot connect", &e),
                    });
                }
            };
        let key = PrivateKeyWithHashAlg::new(Arc::clone(&self.key), None);
        match ssh
            .authenticate_publickey(self.cfg.user.as_str(), key)
            .await
        {
            Ok(r) if r.success() => {}
            Ok(_) => {
                return Err(ConnectError::Auth(format!(
                    "SFTP server {who} refused the key {} for user {:?} (is its public key in \
                     the user's authorized_keys?)",
                    self.cfg.key.display(),
                    self.cfg.user
                )))
            }
            Err(e) => return Err(lost("authentication failed", &e)),
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| lost("cannot open a session", &e))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| lost("cannot start SFTP", &e))?;
        let mut channel = channel;
        loop {
            match channel.wait().await {
                Some(russh::ChannelMsg::Success) => break,
                Some(russh::ChannelMsg::Failure) => {
                    return Err(lost(
                        "cannot start SFTP",
                        &"the server has no sftp subsystem",
                    ))
                }
                Some(russh::ChannelMsg::WindowAdjusted { .. })
                | Some(russh::ChannelMsg::ExtendedData { .. }) => {}
                Some(other) => {
                    return Err(lost("cannot start SFTP", &format!("unexpected {other:?}")))
                }
                None => return Err(lost("cannot start SFTP", &"the channel closed")),
            }
        }
        let mut sftp = RawSftpSession::new(channel.into_stream());
        // Our own timeout (below) comes first.
        sftp.set_timeout(self.cfg.request_timeout.as_secs() + 5);
        let version = sftp
            .init()
            .await
            .map_err(|e| lost("SFTP handshake failed", &e))?;
        let has = |name: &str| version.extensions.contains_key(name);
        let ext = Extensions {
            posix_rename: has(EXT_POSIX_RENAME),
            fsync: has(EXT_FSYNC),
            lsetstat: has(EXT_LSETSTAT),
            statvfs: has(EXT_STATVFS),
        };
        let (mut read_len, mut write_len) = (CHUNK, CHUNK);
        if has(EXT_LIMITS) {
            if let Ok(limits) = sftp.limits().await {
                let limits = russh_sftp::client::rawsession::Limits::from(limits);
                if let Some(r) = limits.read_len {
                    read_len = read_len.min(r).max(1024);
                }
                if let Some(w) = limits.write_len {
                    write_len = write_len.min(w).max(1024);
                }
                sftp.set_limits(limits);
            }
        }
        Ok(Conn {
            ssh,
            sftp,
            ext,
            read_len,
            write_len,
            dead: AtomicBool::new(false),
            temps: Arc::clone(&self.temps),
        })
    }
}

/// One attempt of a call: the connection it uses, and whether anything was answered yet.
struct Cx {
    inner: Arc<Inner>,
    c: Arc<Conn>,
    /// The connection was made before this attempt.
    reused: bool,
    answered: AtomicBool,
    /// A request could not even be sent: the session was already gone.
    unsent: AtomicBool,
}

impl Cx {
    async fn new(inner: &Arc<Inner>, p: &RemotePath) -> Result<Cx> {
        let (c, reused) = inner.conn(p).await?;
        let cx = Cx {
            inner: Arc::clone(inner),
            c,
            reused,
            answered: AtomicBool::new(false),
            unsent: AtomicBool::new(false),
        };
        cx.settle_doubts().await?;
        cx.answered.store(false, Ordering::Relaxed);
        Ok(cx)
    }

    /// Settles the [`Doubt`]s that are due, before the call runs: a call that follows a failed
    /// one (its retry) never races that one's late requests. Fails (and the call with it) when
    /// the connection does.
    async fn settle_doubts(&self) -> Result<()> {
        let _one = self.inner.fence.lock().await;
        let now = Instant::now();
        let due: Vec<Doubt> = {
            let mut d = self
                .inner
                .temps
                .doubts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if d.is_empty() {
                return Ok(());
            }
            let (due, rest) = std::mem::take(&mut *d)
                .into_iter()
                .partition(|x| x.next <= now);
            *d = rest;
            due
        };
        let mut failed = None;
        let mut keep = Vec::new();
        for mut x in due {
            if failed.is_none() {
                match self.settle(&x).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        // Again later, less and less often, for a late request.
                        x.tries += 1;
                        x.next = Instant::now() + Duration::from_secs(1 << x.tries.min(6));
                        if x.since.elapsed() >= DOUBT_WINDOW {
                            continue;
                        }
                    }
                    Err(e) => failed = Some(e),
                }
            }
            keep.push(x);
        }
        self.inner
            .temps
            .doubts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(keep);
        failed.map_or(Ok(()), Err)
    }

    /// One doubt: `Ok(true)` when settled for good, `Ok(false)` when nothing is there (yet).
    async fn settle(&self, x: &Doubt) -> Result<bool> {
        let Some((path, v)) = &x.aside else {
            return match self.req_status(self.c.sftp.remove(x.tmp.as_str())).await {
                Ok(()) => {
                    tracing::info!(tmp = %x.tmp, "sftp: removed a temporary file a failed request may still have been using");
                    Ok(false)
                }
                Err(Fail::Status(StatusCode::NoSuchFile, _)) => Ok(false),
                Err(Fail::Status(code, msg)) => {
                    tracing::warn!(tmp = %x.tmp, %code, %msg, "sftp: cannot remove a temporary file");
                    Ok(true)
                }
                Err(f) => Err(self.fail(f, &RemotePath::root(), "remove").await),
            };
        };
        let a = match self.req(self.c.sftp.lstat(x.tmp.as_str())).await {
            Ok(a) => a.attrs,
            Err(Fail::Status(StatusCode::NoSuchFile, _)) => return Ok(false),
            Err(f) => return Err(self.fail(f, path, "lstat").await),
        };
        if v.as_ref()
            .is_some_and(|v| !is_dir(&a) && version_of(&a) == *v)
        {
            // What the delete was to remove.
            return match self.req_status(self.c.sftp.remove(x.tmp.as_str())).await {
                Ok(()) | Err(Fail::Status(StatusCode::NoSuchFile, _)) => Ok(true),
                Err(f) => Err(self.fail(f, path, "remove").await),
            };
        }
        self.put_back(path, &x.tmp).await.map(|()| true)
    }

    /// Whether the failed attempt met a connection that was already dead (nothing of the call
    /// was done), so that a fresh connection may run it again.
    fn retry<T>(&self, r: &Result<T>) -> bool {
        self.reused
            && !self.answered.load(Ordering::Relaxed)
            && matches!(r, Err(ProviderError::Unreachable(_)))
    }

    /// [`Cx::retry`] for a call whose first request changes something (`mkdir`, `symlink`):
    /// only when that request was never sent, so that it was not carried out.
    fn retry_unsent<T>(&self, r: &Result<T>) -> bool {
        self.retry(r) && self.unsent.load(Ordering::Relaxed)
    }

    fn full(&self, p: &RemotePath) -> String {
        self.inner.full(p)
    }

    /// One request, bounded by the request timeout.
    async fn req<T>(
        &self,
        f: impl Future<Output = std::result::Result<T, SftpError>>,
    ) -> std::result::Result<T, Fail> {
        // The SFTP library can leave a request sent just as the connection went without an
        // answer until its own timeout: a closed connection ends the wait at once, as lost.
        let closed = async {
            loop {
                tokio::time::sleep(CLOSED_CHECK).await;
                if !self.c.alive() {
                    break;
                }
            }
        };
        let r = tokio::select! {
            r = tokio::time::timeout(self.inner.cfg.request_timeout, f) => r,
            () = closed => Ok(Err(SftpError::UnexpectedBehavior("the connection closed".into()))),
        };
        let r = match r {
            Err(_) => Err(Fail::TimedOut),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(SftpError::Status(s))) => match s.status_code {
                StatusCode::NoConnection | StatusCode::ConnectionLost => {
                    Err(Fail::Lost(s.error_message))
                }
                code => Err(Fail::Status(code, s.error_message)),
            },
            Ok(Err(SftpError::Timeout)) => Err(Fail::TimedOut),
            Ok(Err(e)) => Err(Fail::Lost(e.to_string())),
        };
        match &r {
            Ok(_) | Err(Fail::Status(..)) => self.answered.store(true, Ordering::Relaxed),
            Err(Fail::Lost(why)) => {
                tracing::debug!(who = %self.inner.who, %why, "sftp connection lost");
                // What the SFTP library says when it did not send the request at all.
                if why.starts_with("session closed") || why.starts_with("SendError") {
                    self.unsent.store(true, Ordering::Relaxed);
                }
                self.inner.drop_conn(&self.c);
            }
            Err(Fail::TimedOut) => {
                tracing::debug!(who = %self.inner.who, "sftp request timed out; reconnecting next");
                self.inner.drop_conn(&self.c);
            }
        }
        r
    }

    /// A request answered with a plain status.
    async fn req_status(
        &self,
        f: impl Future<Output = std::result::Result<russh_sftp::protocol::Status, SftpError>>,
    ) -> std::result::Result<(), Fail> {
        self.req(f).await.map(drop)
    }

    /// An extension request answered with a status.
    async fn extended(&self, name: &str, data: Vec<u8>) -> std::result::Result<(), Fail> {
        match self.req(self.c.sftp.extended(name, data)).await? {
            Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
            Packet::Status(s) => Err(Fail::Status(s.status_code, s.error_message)),
            other => Err(Fail::Lost(format!(
                "unexpected answer to {name}: {other:?}"
            ))),
        }
    }

    /// The provider error for a failure about `p` with nothing better to say.
    async fn fail(&self, f: Fail, p: &RemotePath, what: &str) -> ProviderError {
        match f {
            Fail::TimedOut => ProviderError::TimedOut,
            Fail::Lost(why) => self.inner.unreachable(format!("connection lost ({why})")),
            Fail::Status(code, msg) => match code {
                StatusCode::NoSuchFile => match self.check_root().await {
                    Ok(()) => ProviderError::NotFound(p.clone()),
                    Err(e) => e,
                },
                StatusCode::PermissionDenied => ProviderError::PermissionDenied(p.clone()),
                StatusCode::OpUnsupported => {
                    ProviderError::NotSupported("an operation the SFTP server does not implement")
                }
                StatusCode::BadMessage => ProviderError::Other {
                    message: format!("SFTP {what} {p}: the server refused the request ({msg})"),
                    retryable: false,
                },
                _ => {
                    if self.full_disk(p).await {
                        return ProviderError::NoSpace;
                    }
                    ProviderError::Other {
                        message: format!("SFTP {what} {p} on {}: {code}: {msg}", self.inner.who),
                        retryable: true,
                    }
                }
            },
        }
    }

    /// Whether the filesystem of `p`'s folder is full (where the server can tell).
    async fn full_disk(&self, p: &RemotePath) -> bool {
        if !self.c.ext.statvfs {
            return false;
        }
        let dir = p.parent().unwrap_or_else(RemotePath::root);
        match self.req(self.c.sftp.statvfs(self.full(&dir))).await {
            Ok(s) => s.blocks_avail == 0 || s.inodes_avail == 0 && s.inodes > 0,
            Err(_) => false,
        }
    }

    /// `Ok` when the root folder is there (else `Unreachable`).
    async fn check_root(&self) -> Result<()> {
        self.root_attrs().await.map(drop)
    }

    async fn root_attrs(&self) -> Result<FileAttributes> {
        let root = &self.inner.root;
        match self.req(self.c.sftp.stat(root.as_str())).await {
            Ok(a) if is_dir(&a.attrs) => Ok(a.attrs),
            Ok(_) => Err(self
                .inner
                .unreachable(format!("the remote folder {root} is not a folder"))),
            Err(Fail::Status(StatusCode::NoSuchFile, _)) => Err(self
                .inner
                .unreachable(format!("the remote folder {root} is missing"))),
            Err(Fail::Status(StatusCode::PermissionDenied, _)) => Err(self
                .inner
                .unreachable(format!("the remote folder {root} cannot be read"))),
            Err(Fail::TimedOut) => Err(ProviderError::TimedOut),
            Err(Fail::Lost(why)) => Err(self.inner.unreachable(format!("connection lost ({why})"))),
            Err(Fail::Status(code, msg)) => Err(self.inner.unreachable(format!(
                "cannot stat the remote folder {root}: {code}: {msg}"
            ))),
        }
    }

    /// `lstat` of `p`: `None` when nothing is there (the root was checked).
    async fn lstat_opt(&self, p: &RemotePath) -> Result<Option<FileAttributes>> {
        if p.is_root() {
            return self.root_attrs().await.map(Some);
        }
        if is_hidden(p.name()) {
            self.check_root().await?;
            return Ok(None);
        }
        match self.req(self.c.sftp.lstat(self.full(p))).await {
            Ok(a) => Ok(Some(a.attrs)),
            Err(Fail::Status(StatusCode::NoSuchFile, _)) => {
                self.check_root().await?;
                Ok(None)
            }
            Err(f) => Err(self.fail(f, p, "lstat").await),
        }
    }

    /// The entry for `p` with attributes `a` (reads a symlink's target); `None` for a special
    /// file, or a symlink that vanished meanwhile.
    async fn entry(&self, p: &RemotePath, a: &FileAttributes) -> Result<Option<RemoteEntry>> {
        let target = if kind_of(a) == Some(EntryKind::Symlink) {
            match self.req(self.c.sftp.readlink(self.full(p))).await {
                Ok(name) => name.files.into_iter().next().map(|f| f.filename),
                Err(Fail::Status(StatusCode::NoSuchFile, _)) => return Ok(None),
                Err(f) => return Err(self.fail(f, p, "readlink").await),
            }
        } else {
            None
        };
        Ok(entry_from(p.name(), a, target))
    }

    /// The entry at `p`, `None` when nothing is there.
    async fn stat_opt(&self, p: &RemotePath) -> Result<Option<RemoteEntry>> {
        let Some(a) = self.lstat_opt(p).await? else {
            return Ok(None);
        };
        match self.entry(p, &a).await? {
            Some(e) => Ok(Some(e)),
            None if kind_of(&a).is_none() => Err(ProviderError::NotSupported(
                "special files (FIFOs, sockets, devices)",
            )),
            None => Ok(None),
        }
    }

    /// The entry just made or changed at `p`.
    async fn stat_after(&self, p: &RemotePath, what: &str) -> Result<RemoteEntry> {
        self.stat_opt(p).await?.ok_or_else(|| ProviderError::Other {
            message: format!("SFTP {what} {p}: gone right after"),
            retryable: true,
        })
    }

    /// Why creating `p` failed with "no such file" (or a failure): its parent is missing or not
    /// a folder. `None` when the parent is a folder.
    async fn parent_problem(&self, p: &RemotePath) -> Result<Option<ProviderError>> {
        let parent = p.parent().unwrap_or_else(RemotePath::root);
        Ok(match self.lstat_opt(&parent).await? {
            None => Some(ProviderError::NotFound(parent)),
            Some(a) if !is_dir(&a) => Some(ProviderError::NotADirectory(parent)),
            Some(_) => None,
        })
    }

    /// The error for a creation of `p` that failed with `f`.
    async fn create_fail(&self, f: Fail, p: &RemotePath, what: &str) -> ProviderError {
        if matches!(f.code(), Some(StatusCode::NoSuchFile | StatusCode::Failure)) {
            match self.lstat_opt(p).await {
                Ok(Some(_)) => return ProviderError::AlreadyExists(p.clone()),
                Ok(None) => {}
                Err(e) => return e,
            }
            match self.parent_problem(p).await {
                Ok(Some(e)) => return e,
                Ok(None) => {}
                Err(e) => return e,
            }
        }
        self.fail(f, p, what).await
    }

    /// `Ok` when `p`'s parent is a folder.
    async fn check_parent(&self, p: &RemotePath) -> Result<()> {
        match self.parent_problem(p).await? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Closes a handle, ignoring the answer.
    async fn close(&self, handle: String) {
        let _ = self.req(self.c.sftp.close(handle)).await;
    }
}

/// Closes a handle (and removes a temporary file, or puts a file set aside by a conditional
/// `delete` back at its name) when dropped before [`Cleanup::run`], in the background: a
/// cancelled read, write or delete leaves nothing open, behind or hidden.
struct Cleanup {
    c: Arc<Conn>,
    timeout: Duration,
    handle: Option<String>,
    remove: Option<String>,
    /// Renamed back (no-replace) when dropped.
    restore: Option<Restore>,
    /// Temporary names made [`Temps::live`] for this call: no longer, once it is cleaned up.
    live: Vec<String>,
}

/// A conditional delete's set-aside file `tmp`, of `path` (full name `full`) at `version`.
struct Restore {
    tmp: String,
    full: String,
    path: RemotePath,
    version: Version,
}

type CleanupWork = (Option<String>, Option<String>, Option<Restore>, Vec<String>);

impl Cleanup {
    fn new(c: &Arc<Conn>, timeout: Duration) -> Self {
        Cleanup {
            c: Arc::clone(c),
            timeout,
            handle: None,
            remove: None,
            restore: None,
            live: Vec::new(),
        }
    }

    /// Makes `tmp` live for this call (until the call is cleaned up).
    fn live(&mut self, tmp: &str) {
        self.c.temps.set_live(tmp, true);
        self.live.push(tmp.to_string());
    }

    fn take(&mut self) -> CleanupWork {
        (
            self.handle.take(),
            self.remove.take(),
            self.restore.take(),
            std::mem::take(&mut self.live),
        )
    }

    /// Closes and removes now.
    async fn run(mut self) {
        let work = self.take();
        cleanup(Arc::clone(&self.c), self.timeout, work).await;
    }
}

/// Removes the temporary file `r`; if the connection fails first, it is left for the next one.
async fn remove_temp(c: &Arc<Conn>, timeout: Duration, r: String) {
    if !c.alive() {
        // A request about it went unanswered: maybe carried out later.
        c.temps.doubt(r, None);
        return;
    }
    let gone = match tokio::time::timeout(timeout, c.sftp.remove(r.as_str())).await {
        Ok(Ok(_)) => true,
        Ok(Err(russh_sftp::client::error::Error::Status(st))) => {
            // Gone already, or refused for good: nothing a retry would change.
            st.status_code != StatusCode::Failure || c.alive()
        }
        _ => false,
    };
    if !gone {
        tracing::debug!(file = %r, "sftp: removing a temporary file failed; retried before the next call");
        c.temps.doubt(r, None);
    }
}

async fn cleanup(c: Arc<Conn>, timeout: Duration, (handle, remove, restore, live): CleanupWork) {
    if let Some(h) = handle {
        if c.alive() {
            let _ = tokio::time::timeout(timeout, c.sftp.close(h)).await;
        }
    }
    if let Some(r) = remove {
        remove_temp(&c, timeout, r).await;
    }
    if let Some(r) = restore {
        let back = c.alive()
            && matches!(
                tokio::time::timeout(timeout, c.sftp.rename(r.tmp.as_str(), r.full.as_str())).await,
                Ok(Ok(_))
            );
        if !back {
            // Settled before the next call: removed if unchanged, else put back (beside the
            // name if that was taken meanwhile).
            c.temps.doubt(r.tmp, Some((r.path, Some(r.version))));
        }
    }
    for t in live {
        c.temps.set_live(&t, false);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let work = self.take();
        if matches!(work, (None, None, None, ref l) if l.is_empty()) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(cleanup(Arc::clone(&self.c), self.timeout, work));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The provider

/// A folder on an SFTP server; see the module documentation.
pub struct SftpProvider {
    inner: Arc<Inner>,
}

impl fmt::Debug for SftpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpProvider")
            .field("config", &self.inner.cfg)
            .finish()
    }
}

/// Runs `$body` (an expression using `$cx`) with a connection, once more on a fresh connection
/// when the first attempt met a dead one before anything was answered (`$retry`: [`Cx::retry`]
/// or [`Cx::retry_unsent`]).
macro_rules! with_cx {
    ($inner:expr, $path:expr, |$cx:ident| $body:expr) => {
        with_cx!($inner, $path, retry, |$cx| $body)
    };
    ($inner:expr, $path:expr, $retry:ident, |$cx:ident| $body:expr) => {{
        let mut first = true;
        loop {
            let $cx = Cx::new($inner, $path).await?;
            let r = $body.await;
            if first && $cx.$retry(&r) {
                first = false;
                continue;
            }
            break r;
        }
    }};
}

impl SftpProvider {
    /// A provider for `cfg`. The key is read now; nothing is sent yet: an unreachable server
    /// or a missing folder shows up as [`ProviderError::Unreachable`] on each call.
    pub fn new(cfg: SftpConfig) -> std::result::Result<Self, SftpConfigError> {
        if cfg.host.is_empty() || cfg.host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(SftpConfigError::Host(cfg.host.clone()));
        }
        if cfg.user.is_empty() || cfg.user.contains(|c: char| c.is_control()) {
            return Err(SftpConfigError::User(cfg.user.clone()));
        }
        if cfg.path.contains('\0') {
            return Err(SftpConfigError::Path(cfg.path.clone()));
        }
        if cfg.request_timeout.is_zero() {
            return Err(SftpConfigError::Timeout);
        }
        let root = match cfg.path.trim_end_matches('/') {
            "" if cfg.path.starts_with('/') => "/".to_string(),
            "" => ".".to_string(),
            r => r.to_string(),
        };
        let key =
            russh::keys::load_secret_key(&cfg.key, cfg.key_passphrase.as_deref()).map_err(|e| {
                SftpConfigError::Key {
                    path: cfg.key.clone(),
                    reason: e.to_string(),
                }
            })?;
        let check = match (&cfg.host_key_fingerprint, &cfg.known_hosts) {
            (Some(f), _) => {
                let f = f.trim();
                let valid = f.strip_prefix("SHA256:").is_some_and(|b| {
                    !b.is_empty()
                        && b.bytes().all(|c| {
                            c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'='
                        })
                });
                if !valid {
                    return Err(SftpConfigError::Fingerprint(f.to_string()));
                }
                HostKeyCheck::Fingerprint(f.trim_end_matches('=').to_string())
            }
            (None, Some(file)) => HostKeyCheck::KnownHosts(file.clone()),
            (None, None) => {
                let home = std::env::var_os("HOME").ok_or(SftpConfigError::KnownHosts)?;
                HostKeyCheck::KnownHosts(PathBuf::from(home).join(".ssh").join("known_hosts"))
            }
        };
        let who = format!("{}@{}:{}", cfg.user, cfg.host, cfg.port);
        Ok(SftpProvider {
            inner: Arc::new(Inner {
                cfg,
                key: Arc::new(key),
                check,
                root,
                who,
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                temps: Arc::default(),
                fence: tokio::sync::Mutex::new(()),
                dirty: Mutex::new(HashSet::new()),
                syncing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The extensions the server offers that this provider uses, by name (connects if needed).
    pub async fn server_extensions(&self) -> Result<Vec<&'static str>> {
        let (c, _) = self.inner.conn(&RemotePath::root()).await?;
        let mut out = Vec::new();
        for (has, name) in [
            (c.ext.posix_rename, EXT_POSIX_RENAME),
            (c.ext.fsync, EXT_FSYNC),
            (c.ext.lsetstat, EXT_LSETSTAT),
            (c.ext.statvfs, EXT_STATVFS),
        ] {
            if has {
                out.push(name);
            }
        }
        Ok(out)
    }
}

/// How a write ends: the temporary file renamed over the target.
struct Upload<'a> {
    path: &'a RemotePath,
    tmp: String,
    pre: &'a Precondition,
    attrs: ObjectAttrs,
}

impl Cx {
    async fn stat_once(&self, path: &RemotePath) -> Result<RemoteEntry> {
        self.stat_opt(path)
            .await?
            .ok_or_else(|| ProviderError::NotFound(path.clone()))
    }

    async fn list_once(&self, dir: &RemotePath) -> Result<ListPage> {
        if is_hidden(dir.name()) && !dir.is_root() {
            self.check_root().await?;
            return Err(ProviderError::NotFound(dir.clone()));
        }
        let handle = match self.req(self.c.sftp.opendir(self.full(dir))).await {
            Ok(h) => h.handle,
            Err(f) => {
                // OpenSSH answers "no such file" for a file too (ENOTDIR).
                if matches!(f.code(), Some(StatusCode::NoSuchFile | StatusCode::Failure)) {
                    match self.lstat_opt(dir).await? {
                        None => return Err(ProviderError::NotFound(dir.clone())),
                        Some(a) if !is_dir(&a) => {
                            return Err(ProviderError::NotADirectory(dir.clone()))
                        }
                        Some(_) => {}
                    }
                }
                return Err(self.fail(f, dir, "opendir").await);
            }
        };
        let mut guard = Cleanup::new(&self.c, self.inner.cfg.request_timeout);
        guard.handle = Some(handle.clone());
        let mut files = Vec::new();
        loop {
            match self.req(self.c.sftp.readdir(handle.as_str())).await {
                Ok(name) => files.extend(name.files),
                Err(Fail::Status(StatusCode::Eof, _)) => break,
                Err(f) => {
                    guard.run().await;
                    return Err(self.fail(f, dir, "readdir").await);
                }
            }
        }
        guard.run().await;
        // Uploads of this machine's mounts that were killed midway, and this process's own that
        // no call uses (what a request carried out late made): removed in the background.
        let dir_full = self.full(dir);
        let dir_full = dir_full.trim_end_matches('/');
        let abandoned: Vec<String> = files
            .iter()
            .filter(|f| {
                let own = || {
                    super::local::own_tail(&f.filename).filter(|_| {
                        !self
                            .c
                            .temps
                            .is_live(&format!("{dir_full}/{}", f.filename))
                    })
                };
                match super::local::abandoned_tail(&f.filename).or_else(own) {
                None => false,
                // A conditional delete's file set aside: removed only if it still has the
                // version the delete was for; a changed one stays (hidden) and is reported.
                Some(tail) if tail.starts_with('v') => {
                    let ok = delete_tail_matches(tail, &f.attrs);
                    if !ok {
                        tracing::warn!(dir = %dir, name = %f.filename, "sftp: a file set aside by an interrupted delete changed meanwhile; left under its temporary name");
                    }
                    ok
                }
                Some(_) => true,
                }
            })
            .map(|f| format!("{dir_full}/{}", f.filename))
            .collect();
        if !abandoned.is_empty() {
            let c = Arc::clone(&self.c);
            let timeout = self.inner.cfg.request_timeout;
            tokio::spawn(async move {
                for f in abandoned {
                    match tokio::time::timeout(timeout, c.sftp.remove(f.as_str())).await {
                        Ok(Ok(_)) => {
                            tracing::info!(file = %f, "sftp: removed a temporary file left by an interrupted upload")
                        }
                        _ => {
                            tracing::debug!(file = %f, "sftp: could not remove an abandoned temporary file")
                        }
                    }
                }
            });
        }
        let wanted: Vec<_> = files
            .into_iter()
            .filter(|f| f.filename != "." && f.filename != ".." && !is_hidden(&f.filename))
            .filter(|f| {
                let bad = f.filename.contains('\u{FFFD}') || !super::valid_component(&f.filename);
                if bad {
                    tracing::warn!(
                        dir = %dir,
                        name = %f.filename,
                        "sftp: skipping a name that is not UTF-8 or not valid"
                    );
                }
                !bad
            })
            .collect();
        let mut entries = futures::stream::iter(wanted.into_iter().map(|f| async move {
            let Some(p) = dir.join(&f.filename) else {
                return Ok(None);
            };
            self.entry(&p, &f.attrs).await
        }))
        .buffered(READLINKS);
        let mut out = Vec::new();
        while let Some(e) = entries.next().await {
            if let Some(e) = e? {
                out.push(e);
            }
        }
        Ok(ListPage {
            entries: out,
            next: None,
        })
    }

    /// Checks the read and opens the file: the handle and the size to read up to.
    async fn open_read(&self, path: &RemotePath, version: &Version) -> Result<(String, u64)> {
        let full = self.full(path);
        // One round trip: the lstat and the open are in flight together.
        let (st, opened) = futures::join!(
            self.lstat_opt(path),
            self.req(
                self.c
                    .sftp
                    .open(full.as_str(), OpenFlags::READ, FileAttributes::empty())
            )
        );
        let opened = opened.map(|h| h.handle);
        let mut guard = Cleanup::new(&self.c, self.inner.cfg.request_timeout);
        guard.handle = opened.as_ref().ok().cloned();
        match self.check_opened(path, version, st, opened).await {
            Ok(ok) => {
                // Handed over to the read stream.
                guard.take();
                Ok(ok)
            }
            Err(e) => {
                guard.run().await;
                Err(e)
            }
        }
    }

    async fn check_opened(
        &self,
        path: &RemotePath,
        version: &Version,
        st: Result<Option<FileAttributes>>,
        opened: std::result::Result<String, Fail>,
    ) -> Result<(String, u64)> {
        let a = st?.ok_or_else(|| ProviderError::NotFound(path.clone()))?;
        match kind_of(&a) {
            Some(EntryKind::File) => {}
            Some(EntryKind::Dir) => return Err(ProviderError::IsADirectory(path.clone())),
            Some(EntryKind::Symlink) => {
                return Err(ProviderError::Other {
                    message: format!("SFTP read {path}: is a symlink"),
                    retryable: false,
                })
            }
            None => {
                return Err(ProviderError::NotSupported(
                    "special files (FIFOs, sockets, devices)",
                ))
            }
        }
        if version_of(&a) != *version {
            return Err(precondition_failed(path));
        }
        let handle = match opened {
            Ok(h) => h,
            // Gone (or replaced by something else) between the two.
            Err(Fail::Status(StatusCode::NoSuchFile, _)) => return Err(precondition_failed(path)),
            Err(f) => return Err(self.fail(f, path, "open").await),
        };
        // The file opened is the one seen (not replaced in between).
        match self.req(self.c.sftp.fstat(handle.as_str())).await {
            Ok(f) if version_of(&f.attrs) == *version && !is_dir(&f.attrs) => {}
            Ok(_) => return Err(precondition_failed(path)),
            Err(f) => return Err(self.fail(f, path, "fstat").await),
        }
        Ok((handle, a.size.unwrap_or(0)))
    }
}

/// The state of a read stream.
struct ReadState {
    cx: Cx,
    path: RemotePath,
    version: Version,
    /// Closed when the stream ends or is dropped.
    guard: Cleanup,
    handle: String,
    pos: u64,
    end: u64,
    done: bool,
}

impl ReadState {
    async fn next(mut self) -> Option<(Result<Bytes>, Self)> {
        if self.done {
            return None;
        }
        if self.pos >= self.end {
            self.finish().await;
            return None;
        }
        let r = self.piece().await;
        match &r {
            Ok(b) => {
                self.pos += b.len() as u64;
                if self.pos >= self.end {
                    self.finish().await;
                }
            }
            Err(_) => self.finish().await,
        }
        Some((r, self))
    }

    /// Closes the file; the stream ends.
    async fn finish(&mut self) {
        self.done = true;
        let (handle, _, _, _) = self.guard.take();
        if let Some(h) = handle {
            self.cx.close(h).await;
        }
    }

    /// The next piece, read with several requests in flight and checked with an `fstat`.
    async fn piece(&self) -> Result<Bytes> {
        let cx = &self.cx;
        let chunk = cx.c.read_len;
        let want = (self.end - self.pos).min(PIECE);
        let mut reqs = FuturesOrdered::new();
        let mut off = self.pos;
        while off < self.pos + want {
            let n = chunk.min(self.pos + want - off);
            let h = self.handle.as_str();
            reqs.push_back(async move { (n, cx.req(cx.c.sftp.read(h, off, n as u32)).await) });
            off += n;
        }
        let mut buf = BytesMut::with_capacity(want as usize);
        let mut short = false;
        let mut failure = None;
        while let Some((n, r)) = reqs.next().await {
            match r {
                Ok(d) if !short => {
                    buf.extend_from_slice(&d.data);
                    short = (d.data.len() as u64) < n;
                }
                Ok(_) => {}
                Err(Fail::Status(StatusCode::Eof, _)) => short = true,
                Err(f) => {
                    if failure.is_none() {
                        failure = Some(f);
                    }
                }
            }
        }
        if let Some(f) = failure {
            return Err(cx.fail(f, &self.path, "read").await);
        }
        // Every byte above was read before this answer: the version is still the one asked for.
        match cx.req(cx.c.sftp.fstat(self.handle.as_str())).await {
            Ok(a) if version_of(&a.attrs) == self.version => {}
            Ok(_) => return Err(precondition_failed(&self.path)),
            Err(f) => return Err(cx.fail(f, &self.path, "fstat").await),
        }
        if buf.is_empty() {
            // The size did not change and yet the file ends early.
            return Err(ProviderError::Other {
                message: format!("SFTP read {}: ended early at {}", self.path, self.pos),
                retryable: true,
            });
        }
        Ok(buf.freeze())
    }
}

impl Cx {
    /// Checks the write's precondition against what is at the target now. Returns the
    /// attributes of what is there.
    async fn check_write(
        &self,
        path: &RemotePath,
        pre: &Precondition,
    ) -> Result<Option<FileAttributes>> {
        let st = self.lstat_opt(path).await?;
        match (pre, &st) {
            (Precondition::IfNotExists, Some(_)) => Err(ProviderError::AlreadyExists(path.clone())),
            (_, Some(a)) if is_dir(a) => Err(ProviderError::IsADirectory(path.clone())),
            (Precondition::IfMatch(_), None) => {
                // OpenSSH answers "no such file" below a file too: a missing or replaced
                // parent is named as such (as a creation would), not a changed file.
                match self.parent_problem(path).await? {
                    Some(e) => Err(e),
                    None => Err(precondition_failed(path)),
                }
            }
            (Precondition::IfMatch(v), Some(a)) if version_of(a) != *v => {
                Err(precondition_failed(path))
            }
            _ => Ok(st),
        }
    }

    /// Streams `body` into a new temporary file and renames it over the target.
    async fn upload(
        &self,
        up: Upload<'_>,
        existing: Option<FileAttributes>,
        body: ByteStream,
        len: u64,
        guard: &mut Cleanup,
    ) -> Result<RemoteEntry> {
        let path = up.path;
        // The mode: the one asked for, else the replaced file's.
        let mode = up.attrs.mode.or_else(|| {
            existing
                .as_ref()
                .filter(|a| kind_of(a) == Some(EntryKind::File))
                .and_then(|a| a.permissions)
        });
        let mut open_attrs = FileAttributes::empty();
        open_attrs.permissions = mode.map(|m| m & 0o7777);
        // Removed if this call fails from the open on: an unanswered open may still make it.
        guard.live(&up.tmp);
        guard.remove = Some(up.tmp.clone());
        let handle = match self
            .req(self.c.sftp.open(
                up.tmp.as_str(),
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::TRUNCATE,
                open_attrs,
            ))
            .await
        {
            Ok(h) => h.handle,
            Err(f) => {
                if matches!(f.code(), Some(StatusCode::NoSuchFile | StatusCode::Failure)) {
                    if let Some(e) = self.parent_problem(path).await? {
                        return Err(e);
                    }
                }
                return Err(self.fail(f, path, "open").await);
            }
        };
        guard.handle = Some(handle.clone());
        self.send_body(path, &handle, body, len).await?;
        // The mode exactly (open's is subject to the umask) and the mtime.
        let times = up.attrs.mtime.map(|t| {
            let s = sftp_time(t);
            (s, s)
        });
        if mode.is_some() || times.is_some() {
            let a = set_attrs_of(mode, times);
            if let Err(f) = self
                .req_status(self.c.sftp.fsetstat(handle.as_str(), a))
                .await
            {
                return Err(self.fail(f, path, "fsetstat").await);
            }
        }
        let mut written = match self.req(self.c.sftp.fstat(handle.as_str())).await {
            Ok(a) => a.attrs,
            Err(f) => return Err(self.fail(f, path, "fstat").await),
        };
        if written.size != Some(len) {
            return Err(ProviderError::Other {
                message: format!(
                    "SFTP write {path}: the server stored {:?} of {len} bytes",
                    written.size
                ),
                retryable: true,
            });
        }
        // Just before the rename: the precondition again, and our version must differ from the
        // one we replace.
        let now = self.check_write(path, up.pre).await?;
        if let (Some(a), None) = (&now, up.attrs.mtime) {
            let (ours, theirs) = (written.mtime.unwrap_or(0), a.mtime.unwrap_or(0));
            if a.size == written.size && ours <= theirs {
                let m = theirs.saturating_add(1);
                let bump = set_attrs_of(None, Some((m, m)));
                if let Err(f) = self
                    .req_status(self.c.sftp.fsetstat(handle.as_str(), bump))
                    .await
                {
                    return Err(self.fail(f, path, "fsetstat").await);
                }
                written.mtime = Some(m);
                written.atime = Some(m);
            }
        }
        if self.c.ext.fsync {
            if let Err(f) = self.req_status(self.c.sftp.fsync(handle.as_str())).await {
                return Err(self.fail(f, path, "fsync").await);
            }
        }
        guard.handle = None;
        if let Err(f) = self.req_status(self.c.sftp.close(handle)).await {
            return Err(self.fail(f, path, "close").await);
        }
        self.rename_into_place(path, &up.tmp, up.pre, now.is_some())
            .await?;
        // Renamed: nothing to clean up any more.
        guard.remove = None;
        self.inner.touched(path.parent());
        entry_from(path.name(), &written, None).ok_or_else(|| ProviderError::Other {
            message: format!("SFTP write {path}: not a file after the upload"),
            retryable: true,
        })
    }

    /// Sends exactly `len` bytes of `body` to the open `handle`.
    async fn send_body(
        &self,
        path: &RemotePath,
        handle: &str,
        mut body: ByteStream,
        len: u64,
    ) -> Result<()> {
        let chunk = self.c.write_len as usize;
        let mut inflight = FuturesUnordered::new();
        let mut pending = BytesMut::new();
        let mut sent: u64 = 0;
        let mut ended = false;
        loop {
            // Whole chunks are sent as soon as they are there, the rest at the end.
            while pending.len() >= chunk || (ended && !pending.is_empty()) {
                if inflight.len() >= IN_FLIGHT {
                    break;
                }
                let n = chunk.min(pending.len());
                let data = pending.split_to(n).to_vec();
                let off = sent;
                sent += n as u64;
                inflight.push(async move {
                    self.req_status(self.c.sftp.write(handle, off, data)).await
                });
            }
            if ended && pending.is_empty() && inflight.is_empty() {
                break;
            }
            let body_open = !ended && inflight.len() < IN_FLIGHT && pending.len() < chunk;
            tokio::select! {
                biased;
                Some(r) = inflight.next(), if !inflight.is_empty() => {
                    if let Err(f) = r {
                        return Err(self.fail(f, path, "write").await);
                    }
                }
                piece = body.next(), if body_open => match piece {
                    Some(Ok(b)) => {
                        if sent + (pending.len() + b.len()) as u64 > len {
                            return Err(ProviderError::Other {
                                message: format!(
                                    "{path}: body is longer than the declared {len} bytes"
                                ),
                                retryable: false,
                            });
                        }
                        pending.extend_from_slice(&b);
                    }
                    Some(Err(e)) => return Err(e),
                    None => ended = true,
                },
            }
        }
        if sent != len {
            return Err(ProviderError::Other {
                message: format!("{path}: body ended after {sent} of {len} bytes"),
                retryable: false,
            });
        }
        Ok(())
    }

    /// The last step of a write.
    async fn rename_into_place(
        &self,
        path: &RemotePath,
        tmp: &str,
        pre: &Precondition,
        target_exists: bool,
    ) -> Result<()> {
        let full = self.full(path);
        if *pre == Precondition::IfNotExists || !target_exists && !self.c.ext.posix_rename {
            // OpenSSH links a file into place: fails, atomically, when the target exists.
            return match self
                .req_status(self.c.sftp.rename(tmp, full.as_str()))
                .await
            {
                Ok(()) => Ok(()),
                Err(f) => Err(match self.lstat_opt(path).await {
                    Ok(Some(_)) if *pre == Precondition::IfNotExists => {
                        ProviderError::AlreadyExists(path.clone())
                    }
                    Ok(Some(a)) if is_dir(&a) => ProviderError::IsADirectory(path.clone()),
                    Ok(_) => self.fail(f, path, "rename").await,
                    Err(e) => e,
                }),
            };
        }
        if self.c.ext.posix_rename {
            return match self
                .extended(EXT_POSIX_RENAME, ssh_strings(&[tmp, &full]))
                .await
            {
                Ok(()) => Ok(()),
                Err(f) => Err(match self.lstat_opt(path).await {
                    Ok(Some(a)) if is_dir(&a) => ProviderError::IsADirectory(path.clone()),
                    Ok(_) => self.fail(f, path, "rename").await,
                    Err(e) => e,
                }),
            };
        }
        // No atomic replace: remove the target, then rename (a window with no file).
        match self.req_status(self.c.sftp.remove(full.as_str())).await {
            Ok(()) | Err(Fail::Status(StatusCode::NoSuchFile, _)) => {}
            Err(f) => return Err(self.fail(f, path, "remove").await),
        }
        match self
            .req_status(self.c.sftp.rename(tmp, full.as_str()))
            .await
        {
            Ok(()) => Ok(()),
            Err(f) => Err(self.fail(f, path, "rename").await),
        }
    }

    async fn delete_once(&self, path: &RemotePath, pre: &Precondition) -> Result<()> {
        let a = match self.lstat_opt(path).await? {
            None => return Err(ProviderError::NotFound(path.clone())),
            Some(a) if is_dir(&a) => return Err(ProviderError::IsADirectory(path.clone())),
            Some(a) => a,
        };
        match pre {
            Precondition::None => {}
            Precondition::IfMatch(v) if *v == version_of(&a) => {
                let mut guard = Cleanup::new(&self.c, self.inner.cfg.request_timeout);
                let r = self.delete_if_match(path, v, &mut guard).await;
                guard.run().await;
                return r;
            }
            Precondition::IfMatch(_) | Precondition::IfNotExists => {
                return Err(precondition_failed(path))
            }
        }
        match self.req_status(self.c.sftp.remove(self.full(path))).await {
            Ok(()) => {
                self.inner.touched(path.parent());
                Ok(())
            }
            Err(f) => Err(match self.lstat_opt(path).await {
                Ok(Some(a)) if is_dir(&a) => ProviderError::IsADirectory(path.clone()),
                Err(e) => e,
                _ => self.fail(f, path, "remove").await,
            }),
        }
    }

    /// A `delete` conditional on version `v` (which `path` had a moment ago): `path` is renamed
    /// to a hidden temporary name beside it (atomically: whatever is at the name moves), and
    /// what moved is removed only if it has version `v`; anything else goes back (see
    /// [`Cx::put_back`]) and the answer is `PreconditionFailed`.
    async fn delete_if_match(
        &self,
        path: &RemotePath,
        v: &Version,
        guard: &mut Cleanup,
    ) -> Result<()> {
        let parent = path.parent().unwrap_or_else(RemotePath::root);
        let tmp = match parent.join(&super::local::tmp_name_with(&super::local::delete_tail(v))) {
            Some(t) => self.full(&t),
            None => {
                return Err(ProviderError::Other {
                    message: format!("SFTP delete {path}: cannot name a temporary file"),
                    retryable: false,
                })
            }
        };
        let full = self.full(path);
        guard.live(&tmp);
        // The temporary name is new: posix-rename (rename(2)) is atomic, the plain rename
        // (link(2) + unlink) as good as that for a file.
        let moved = if self.c.ext.posix_rename {
            self.extended(EXT_POSIX_RENAME, ssh_strings(&[&full, &tmp]))
                .await
        } else {
            self.req_status(self.c.sftp.rename(full.as_str(), tmp.as_str()))
                .await
        };
        if let Err(f) = moved {
            if f.unanswered() {
                // Maybe carried out late: settled before the next call.
                self.c
                    .temps
                    .doubt(tmp, Some((path.clone(), Some(v.clone()))));
                return Err(self.fail(f, path, "rename").await);
            }
            return Err(match self.lstat_opt(path).await {
                Err(e) => e,
                // Removed or changed meanwhile.
                Ok(None) => precondition_failed(path),
                Ok(Some(a)) if version_of(&a) != *v => precondition_failed(path),
                Ok(Some(_)) => self.fail(f, path, "rename").await,
            });
        }
        guard.restore = Some(Restore {
            tmp: tmp.clone(),
            full,
            path: path.clone(),
            version: v.clone(),
        });
        self.inner.touched(Some(parent));
        let now = match self.req(self.c.sftp.lstat(tmp.as_str())).await {
            Ok(a) => a.attrs,
            // Someone removed it under its temporary name: gone, as asked.
            Err(Fail::Status(StatusCode::NoSuchFile, _)) => {
                guard.restore = None;
                return Ok(());
            }
            // The connection went: the cleanup leaves it to be settled before the next call.
            Err(f) if f.unanswered() => return Err(self.fail(f, path, "lstat").await),
            Err(f) => {
                let e = self.fail(f, path, "lstat").await;
                guard.restore = None;
                self.put_back(path, &tmp).await?;
                return Err(e);
            }
        };
        if version_of(&now) != *v {
            // Changed (or replaced) between our lstat and the rename: not ours to remove.
            guard.restore = None;
            self.put_back(path, &tmp).await?;
            return Err(precondition_failed(path));
        }
        // (A file version: a directory there never has it.)
        let removed = self.req_status(self.c.sftp.remove(tmp.as_str())).await;
        match removed {
            Ok(()) | Err(Fail::Status(StatusCode::NoSuchFile, _)) => {
                guard.restore = None;
                Ok(())
            }
            Err(f) if f.unanswered() => Err(self.fail(f, path, "remove").await),
            Err(f) => {
                guard.restore = None;
                let e = self.fail(f, path, "remove").await;
                self.put_back(path, &tmp).await?;
                Err(e)
            }
        }
    }

    /// Puts what a conditional `delete` set aside at `tmp` back at `path`, with the plain SFTP
    /// rename (which never replaces). When the name was taken meanwhile, both are kept: the
    /// set-aside one goes beside it under a conflict name (`NAME.conflict-remote-<time>.EXT`).
    async fn put_back(&self, path: &RemotePath, tmp: &str) -> Result<()> {
        let full = self.full(path);
        let f = match self
            .req_status(self.c.sftp.rename(tmp, full.as_str()))
            .await
        {
            Ok(()) => return Ok(()),
            Err(f) if f.unanswered() => {
                self.c
                    .temps
                    .doubt(tmp.to_string(), Some((path.clone(), None)));
                return Err(self.fail(f, path, "rename").await);
            }
            Err(f) => f,
        };
        if self.lstat_opt(path).await?.is_none() {
            let e = self.fail(f, path, "rename").await;
            tracing::warn!(%path, %tmp, error = %e, "sftp delete: cannot put the file back; it stays under the temporary name");
            return Err(e);
        }
        let parent = path.parent().unwrap_or_else(RemotePath::root);
        for n in 1..=100 {
            let name = crate::uploader::conflict_name(path.name(), "remote", SystemTime::now(), n);
            let Some(aside) = parent.join(&name).filter(|a| check_new_name(a).is_ok()) else {
                break;
            };
            let to = self.full(&aside);
            match self.req_status(self.c.sftp.rename(tmp, to.as_str())).await {
                Ok(()) => {
                    tracing::warn!(%path, conflict = %aside, "sftp delete: the file changed meanwhile and its name was taken again: kept beside it");
                    return Ok(());
                }
                Err(f) if f.unanswered() => {
                    self.c
                        .temps
                        .doubt(tmp.to_string(), Some((path.clone(), None)));
                    return Err(self.fail(f, &aside, "rename").await);
                }
                Err(f) => {
                    if self.lstat_opt(&aside).await?.is_none() {
                        return Err(self.fail(f, &aside, "rename").await);
                    }
                }
            }
        }
        tracing::warn!(%path, %tmp, "sftp delete: no free conflict name; the changed file stays under the temporary name");
        Err(ProviderError::Other {
            message: format!("SFTP delete {path}: no free name to keep the changed file under"),
            retryable: false,
        })
    }

    async fn mkdir_once(&self, path: &RemotePath) -> Result<RemoteEntry> {
        match self
            .req_status(self.c.sftp.mkdir(self.full(path), FileAttributes::empty()))
            .await
        {
            Ok(()) => {
                self.inner.touched(path.parent());
                self.stat_after(path, "mkdir").await
            }
            Err(f) => Err(self.create_fail(f, path, "mkdir").await),
        }
    }

    async fn rmdir_once(&self, path: &RemotePath) -> Result<()> {
        match self.lstat_opt(path).await? {
            None => return Err(ProviderError::NotFound(path.clone())),
            Some(a) if !is_dir(&a) => return Err(ProviderError::NotADirectory(path.clone())),
            Some(_) => {}
        }
        match self.req_status(self.c.sftp.rmdir(self.full(path))).await {
            Ok(()) => {
                self.inner.touched(path.parent());
                Ok(())
            }
            Err(f) => Err(match (f.code(), self.lstat_opt(path).await) {
                (Some(StatusCode::Failure), Ok(Some(a))) if is_dir(&a) => {
                    ProviderError::NotEmpty(path.clone())
                }
                (_, Ok(Some(a))) if !is_dir(&a) => ProviderError::NotADirectory(path.clone()),
                (_, Ok(None)) => ProviderError::NotFound(path.clone()),
                (_, Err(e)) => e,
                _ => self.fail(f, path, "rmdir").await,
            }),
        }
    }

    async fn rename_once(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry> {
        let src = self
            .lstat_opt(from)
            .await?
            .ok_or_else(|| ProviderError::NotFound(from.clone()))?;
        self.check_parent(to).await?;
        if from == to {
            return self.stat_after(from, "rename").await;
        }
        let dst = self.lstat_opt(to).await?;
        let (from_full, to_full) = (self.full(from), self.full(to));
        let r = match (&dst, is_dir(&src)) {
            (None, _) => {
                self.req_status(self.c.sftp.rename(from_full.as_str(), to_full.as_str()))
                    .await
            }
            (Some(_), _) if !replace => return Err(ProviderError::AlreadyExists(to.clone())),
            (Some(d), true) if !is_dir(d) => return Err(ProviderError::NotADirectory(to.clone())),
            (Some(d), false) if is_dir(d) => return Err(ProviderError::IsADirectory(to.clone())),
            (Some(_), _) if self.c.ext.posix_rename => {
                self.extended(EXT_POSIX_RENAME, ssh_strings(&[&from_full, &to_full]))
                    .await
            }
            (Some(_), _) => {
                // No atomic replace: remove the target first (a window with nothing there).
                let removed = if is_dir(&src) {
                    self.req_status(self.c.sftp.rmdir(to_full.as_str())).await
                } else {
                    self.req_status(self.c.sftp.remove(to_full.as_str())).await
                };
                match removed {
                    Ok(()) | Err(Fail::Status(StatusCode::NoSuchFile, _)) => {
                        self.req_status(self.c.sftp.rename(from_full.as_str(), to_full.as_str()))
                            .await
                    }
                    Err(f) => Err(f),
                }
            }
        };
        if let Err(f) = r {
            let now = self.lstat_opt(to).await?;
            return Err(match (f.code(), now) {
                (Some(StatusCode::Failure), Some(_)) if !replace => {
                    ProviderError::AlreadyExists(to.clone())
                }
                (Some(StatusCode::Failure), Some(d)) if is_dir(&d) && is_dir(&src) => {
                    ProviderError::NotEmpty(to.clone())
                }
                (Some(StatusCode::NoSuchFile), _) => match self.lstat_opt(from).await? {
                    None => ProviderError::NotFound(from.clone()),
                    Some(_) => self.fail(f, to, "rename").await,
                },
                _ => self.fail(f, to, "rename").await,
            });
        }
        self.inner.touched(from.parent());
        self.inner.touched(to.parent());
        self.stat_after(to, "rename").await
    }

    async fn symlink_once(&self, path: &RemotePath, target: &str) -> Result<RemoteEntry> {
        // OpenSSH takes the target first (the reverse of the draft it implements).
        match self
            .req_status(self.c.sftp.symlink(target, self.full(path)))
            .await
        {
            Ok(()) => {
                self.inner.touched(path.parent());
                self.stat_after(path, "symlink").await
            }
            Err(f) => Err(self.create_fail(f, path, "symlink").await),
        }
    }

    async fn set_attrs_once(&self, path: &RemotePath, attrs: ObjectAttrs) -> Result<RemoteEntry> {
        let a = self
            .lstat_opt(path)
            .await?
            .ok_or_else(|| ProviderError::NotFound(path.clone()))?;
        let symlink = kind_of(&a) == Some(EntryKind::Symlink);
        // Linux cannot change a symlink's mode.
        let mode = attrs.mode.filter(|_| !symlink);
        let times = attrs.mtime.map(|t| (a.atime.unwrap_or(0), sftp_time(t)));
        if mode.is_none() && times.is_none() {
            return self.stat_after(path, "set_attrs").await;
        }
        let set = set_attrs_of(mode, times);
        let full = self.full(path);
        let r = if self.c.ext.lsetstat {
            let mut data = ssh_strings(&[&full]);
            match russh_sftp::ser::to_bytes(&set) {
                Ok(b) => data.extend_from_slice(&b),
                Err(e) => {
                    return Err(ProviderError::Other {
                        message: format!("SFTP set_attrs {path}: {e}"),
                        retryable: false,
                    })
                }
            }
            self.extended(EXT_LSETSTAT, data).await
        } else if symlink {
            return Err(ProviderError::NotSupported(
                "the modification time of a symlink (the server lacks lsetstat@openssh.com)",
            ));
        } else {
            self.req_status(self.c.sftp.setstat(full.as_str(), set))
                .await
        };
        if let Err(f) = r {
            return Err(self.fail(f, path, "set_attrs").await);
        }
        self.stat_after(path, "set_attrs").await
    }

    /// `fsync`s the folder `dir` (nothing when it is gone).
    async fn sync_dir(&self, dir: &RemotePath) -> Result<()> {
        let opened = self
            .req(
                self.c
                    .sftp
                    .open(self.full(dir), OpenFlags::READ, FileAttributes::empty()),
            )
            .await;
        let handle = match opened {
            Ok(h) => h.handle,
            // Removed since (or never a folder we can open): nothing to make durable there.
            Err(Fail::Status(..)) => return Ok(()),
            Err(f) => return Err(self.fail(f, dir, "open").await),
        };
        let r = self.req_status(self.c.sftp.fsync(handle.as_str())).await;
        self.close(handle).await;
        match r {
            Ok(()) | Err(Fail::Status(..)) => Ok(()),
            Err(f) => Err(self.fail(f, dir, "fsync").await),
        }
    }
}

#[async_trait::async_trait]
impl Provider for SftpProvider {
    fn describe(&self) -> String {
        let cfg = &self.inner.cfg;
        let root = &self.inner.root;
        let sep = if root.starts_with('/') { "" } else { "/~/" };
        format!("sftp://{}@{}:{}{sep}{root}", cfg.user, cfg.host, cfg.port)
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
        tracing::debug!(%path, "sftp stat");
        with_cx!(&self.inner, path, |cx| cx.stat_once(path))
    }

    async fn list(&self, dir: &RemotePath, _page: Option<String>) -> Result<ListPage> {
        tracing::debug!(%dir, "sftp list");
        with_cx!(&self.inner, dir, |cx| cx.list_once(dir))
    }

    async fn read(
        &self,
        path: &RemotePath,
        version: &Version,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        tracing::debug!(%path, offset, len, "sftp read");
        let mut first = true;
        let (cx, handle, size) = loop {
            let cx = Cx::new(&self.inner, path).await?;
            let r = cx.open_read(path, version).await;
            if first && cx.retry(&r) {
                first = false;
                continue;
            }
            let (handle, size) = r?;
            break (cx, handle, size);
        };
        let end = offset.saturating_add(len).min(size);
        let mut guard = Cleanup::new(&cx.c, self.inner.cfg.request_timeout);
        guard.handle = Some(handle.clone());
        let state = ReadState {
            path: path.clone(),
            version: version.clone(),
            guard,
            handle,
            pos: offset,
            end,
            done: false,
            cx,
        };
        Ok(Box::pin(futures::stream::unfold(state, ReadState::next)))
    }

    async fn write(
        &self,
        path: &RemotePath,
        body: ByteStream,
        len: u64,
        pre: Precondition,
        attrs: ObjectAttrs,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%path, len, ?pre, ?attrs, "sftp write");
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        check_new_name(path)?;
        let mut first = true;
        let (cx, existing) = loop {
            let cx = Cx::new(&self.inner, path).await?;
            let r = cx.check_write(path, &pre).await;
            if first && cx.retry(&r) {
                first = false;
                continue;
            }
            break (cx, r?);
        };
        let parent = path.parent().unwrap_or_else(RemotePath::root);
        let tmp_name = super::local::tmp_name();
        let tmp = match parent.join(&tmp_name) {
            Some(t) => cx.full(&t),
            None => {
                return Err(ProviderError::Other {
                    message: format!("SFTP write {path}: cannot name a temporary file"),
                    retryable: false,
                })
            }
        };
        let mut guard = Cleanup::new(&cx.c, self.inner.cfg.request_timeout);
        let up = Upload {
            path,
            tmp,
            pre: &pre,
            attrs,
        };
        let r = cx.upload(up, existing, body, len, &mut guard).await;
        guard.run().await;
        r
    }

    async fn delete(&self, path: &RemotePath, pre: Precondition) -> Result<()> {
        tracing::debug!(%path, ?pre, "sftp delete");
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        with_cx!(&self.inner, path, |cx| cx.delete_once(path, &pre))
    }

    async fn mkdir(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "sftp mkdir");
        if path.is_root() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        check_new_name(path)?;
        with_cx!(&self.inner, path, retry_unsent, |cx| cx.mkdir_once(path))
    }

    async fn rmdir(&self, path: &RemotePath) -> Result<()> {
        tracing::debug!(%path, "sftp rmdir");
        if path.is_root() {
            return Err(ProviderError::NotSupported("removing the root folder"));
        }
        with_cx!(&self.inner, path, |cx| cx.rmdir_once(path))
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%from, %to, replace, "sftp rename");
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
        let mut e = with_cx!(&self.inner, from, |cx| cx.rename_once(from, to, replace))?;
        e.name = to.name().to_string();
        Ok(e)
    }

    async fn symlink(&self, path: &RemotePath, target: &str) -> Result<RemoteEntry> {
        tracing::debug!(%path, target, "sftp symlink");
        if path.is_root() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        check_new_name(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(ProviderError::InvalidName {
                name: target.to_string(),
                reason: "not a symlink target",
            });
        }
        let (inner, to) = (&self.inner, target);
        with_cx!(inner, path, retry_unsent, |cx| cx.symlink_once(path, to))
    }

    async fn set_attrs(&self, path: &RemotePath, attrs: ObjectAttrs) -> Result<RemoteEntry> {
        tracing::debug!(%path, ?attrs, "sftp set_attrs");
        with_cx!(&self.inner, path, |cx| cx.set_attrs_once(path, attrs))
    }

    async fn sync(&self) -> Result<()> {
        tracing::debug!("sftp sync");
        // One round at a time: a caller waits for the round under way, then makes its own.
        let _round = self.inner.syncing.lock().await;
        let dirs: Vec<RemotePath> = {
            let mut dirty = self.inner.dirty.lock().unwrap_or_else(|e| e.into_inner());
            dirty.drain().collect()
        };
        if dirs.is_empty() {
            return Ok(());
        }
        let root = RemotePath::root();
        let cx = Cx::new(&self.inner, &root).await;
        let result = match cx {
            Err(e) => Err(e),
            // Nothing more to do where folders cannot be synced.
            Ok(cx) if !cx.c.ext.fsync => Ok(()),
            Ok(cx) => {
                let mut result = Ok(());
                for batch in dirs.chunks(IN_FLIGHT) {
                    let mut all = FuturesUnordered::new();
                    for d in batch {
                        all.push(cx.sync_dir(d));
                    }
                    while let Some(r) = all.next().await {
                        if result.is_ok() {
                            result = r;
                        }
                    }
                }
                result
            }
        };
        if result.is_err() {
            // Not done: the next sync tries them again.
            let mut dirty = self.inner.dirty.lock().unwrap_or_else(|e| e.into_inner());
            dirty.extend(dirs);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_times_and_names() {
        let mut a = FileAttributes::empty();
        a.size = Some(12);
        a.mtime = Some(1_700_000_000);
        a.permissions = Some(0o100644);
        assert_eq!(version_of(&a), Version::from("s12-m1700000000"));
        let e = entry_from("f", &a, None).unwrap();
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.mode, Some(0o644));
        assert_eq!(e.mtime, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        a.permissions = Some(0o040755);
        assert_eq!(version_of(&a), Version::from(DIR_VERSION));
        assert_eq!(entry_from("d", &a, None).unwrap().size, 0);
        a.permissions = Some(0o010644);
        assert!(entry_from("fifo", &a, None).is_none());
        assert_eq!(sftp_time(UNIX_EPOCH + Duration::new(5, 999_999_999)), 5);
        assert_eq!(sftp_time(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(
            sftp_time(UNIX_EPOCH + Duration::from_secs(1 << 40)),
            u32::MAX
        );
        assert_eq!(
            ssh_strings(&["ab", ""]),
            [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]
        );
        assert!(check_new_name(&RemotePath::parse(&format!("{TMP_PREFIX}x")).unwrap()).is_err());
        // What a killed conditional delete set aside is known by its version.
        let a = FileAttributes {
            size: Some(243_788),
            mtime: Some(1_733_561_234),
            ..FileAttributes::empty()
        };
        let tail = super::super::local::delete_tail(&version_of(&a));
        assert!(!tail.contains('-'), "{tail}");
        assert!(delete_tail_matches(&tail, &a), "{tail}");
        let changed = FileAttributes {
            size: Some(243_789),
            ..a.clone()
        };
        assert!(!delete_tail_matches(&tail, &changed), "{tail}");
        assert!(check_new_name(&RemotePath::parse(&"n".repeat(256)).unwrap()).is_err());
        assert!(check_new_name(&RemotePath::parse(&"n".repeat(255)).unwrap()).is_ok());
    }

    #[test]
    fn config_checks_and_redaction() {
        let dir = std::env::temp_dir().join(format!("syncoxide-sftp-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = SftpConfig {
            host: "127.0.0.1".into(),
            port: 2222,
            user: "me".into(),
            path: "/srv/data/".into(),
            key: dir.join("missing-key"),
            key_passphrase: Some("TOPSECRET".into()),
            known_hosts: None,
            host_key_fingerprint: Some("SHA256:abc".into()),
            request_timeout: Duration::from_secs(5),
        };
        assert!(!format!("{cfg:?}").contains("SECRET"));
        assert!(matches!(
            SftpProvider::new(cfg.clone()),
            Err(SftpConfigError::Key { .. })
        ));
        for bad in [
            SftpConfig {
                host: String::new(),
                ..cfg.clone()
            },
            SftpConfig {
                user: String::new(),
                ..cfg.clone()
            },
            SftpConfig {
                request_timeout: Duration::ZERO,
                ..cfg.clone()
            },
        ] {
            assert!(SftpProvider::new(bad).is_err());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
