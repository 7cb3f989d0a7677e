//! The provider: where the files really live (a local folder, an S3 bucket, a WebDAV folder,
//! an in-memory store for tests; SFTP later). One async trait, versions opaque, errors
//! classified so that the core can tell "not found" from "cannot reach" (a clean cached file is
//! never treated as deleted because the network is down).
//!
//! Paths are [`RemotePath`]s: relative to the remote root, `/`-separated, never `.`/`..`.

pub mod faulty;
pub mod local;
pub mod memory;
pub mod s3;
pub mod sftp;
pub mod webdav;

use std::fmt;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

pub use cache::Version;

/// A path on the provider, relative to its root (`""` is the root). Components are non-empty
/// and never `.` or `..`, and contain no `/` or NUL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath(String);

impl RemotePath {
    pub fn root() -> Self {
        RemotePath(String::new())
    }

    /// Parses a `/`-separated relative path; `None` when a component is invalid.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim_matches('/');
        if s.is_empty() {
            return Some(Self::root());
        }
        if s.split('/').all(valid_component) {
            Some(RemotePath(s.to_string()))
        } else {
            None
        }
    }

    /// `self/name`; `None` when `name` is not a valid component.
    pub fn join(&self, name: &str) -> Option<Self> {
        if !valid_component(name) {
            return None;
        }
        Some(if self.0.is_empty() {
            RemotePath(name.to_string())
        } else {
            RemotePath(format!("{}/{name}", self.0))
        })
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component (`""` for the root).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// The parent directory (`None` for the root).
    pub fn parent(&self) -> Option<RemotePath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => RemotePath(self.0[..i].to_string()),
            None => Self::root(),
        })
    }

    /// Whether `self` is `other` or inside it.
    pub fn starts_with(&self, other: &RemotePath) -> bool {
        other.0.is_empty()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

/// Whether `name` can be one component of a path.
pub fn valid_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

impl fmt::Debug for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// What an entry on the provider is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    /// The last path component.
    pub name: String,
    pub kind: EntryKind,
    /// Bytes of a file; 0 for a directory; length of the target for a symlink.
    pub size: u64,
    pub mtime: SystemTime,
    /// Opaque version: changes whenever the content changes.
    pub version: Version,
    /// Permission bits, where the provider keeps them.
    pub mode: Option<u32>,
    /// Target of a symlink.
    pub symlink_target: Option<String>,
}

/// One page of a directory listing.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub entries: Vec<RemoteEntry>,
    /// Token of the next page, if any.
    pub next: Option<String>,
}

/// A condition on the provider's current state, checked atomically where the provider can
/// (`Capabilities::conditional_write`), else just before the final step (see the provider's doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// Only if the object exists with exactly this version.
    IfMatch(Version),
    /// Only if nothing exists at the path.
    IfNotExists,
}

/// Attributes to store with an object, where the provider keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectAttrs {
    pub mode: Option<u32>,
    pub mtime: Option<SystemTime>,
}

/// What a provider can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Atomic server-side rename of files and directories.
    pub rename: bool,
    /// Preconditions are checked atomically with the write.
    pub conditional_write: bool,
    pub symlinks: bool,
    /// Keeps permission bits and modification times.
    pub attrs: bool,
    /// Longest name component it stores, in bytes.
    pub max_name_len: usize,
}

/// Bytes of an object, as a stream of chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>;

/// What went wrong talking to a provider.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("not found: {0}")]
    NotFound(RemotePath),
    #[error("already exists: {0}")]
    AlreadyExists(RemotePath),
    /// The object is not (or no longer) at the version the operation expected.
    #[error("{path} changed on the provider (expected another version)")]
    PreconditionFailed { path: RemotePath },
    #[error("not a directory: {0}")]
    NotADirectory(RemotePath),
    #[error("is a directory: {0}")]
    IsADirectory(RemotePath),
    #[error("directory not empty: {0}")]
    NotEmpty(RemotePath),
    /// The provider cannot store this name.
    #[error("the provider cannot store the name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("the provider does not support {0}")]
    NotSupported(&'static str),
    #[error("permission denied by the provider: {0}")]
    PermissionDenied(RemotePath),
    #[error("the provider is out of space")]
    NoSpace,
    /// Cannot reach the provider (connection refused, root folder missing, DNS): retry later,
    /// and never conclude that anything was deleted.
    #[error("the provider cannot be reached: {0}")]
    Unreachable(String),
    #[error("the provider did not answer in time")]
    TimedOut,
    /// Anything else; `retryable` says whether the same call may succeed later.
    #[error("provider error: {message}")]
    Other { message: String, retryable: bool },
}

impl ProviderError {
    /// Whether trying again later may succeed (the queue keeps the operation).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Unreachable(_) | ProviderError::TimedOut | ProviderError::NoSpace => {
                true
            }
            ProviderError::Other { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Whether this means "offline" (as opposed to an answer from a reachable provider).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ProviderError::Unreachable(_) | ProviderError::TimedOut
        )
    }
}

pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

/// Where files really live. Every method may be called concurrently.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// For logs and status, e.g. `local:/srv/data`. No secrets.
    fn describe(&self) -> String;

    fn capabilities(&self) -> Capabilities;

    /// The entry at `path`; `NotFound` if none.
    async fn stat(&self, path: &RemotePath) -> Result<RemoteEntry>;

    /// One page of the entries of directory `dir`, in any order.
    async fn list(&self, dir: &RemotePath, page: Option<String>) -> Result<ListPage>;

    /// `len` bytes from `offset` of the file at `path`, which must still be at `version`
    /// (`PreconditionFailed` otherwise, where the provider can tell). Shorter at the end of file.
    async fn read(
        &self,
        path: &RemotePath,
        version: &Version,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream>;

    /// Replaces (or creates) the whole file at `path` with `len` bytes from `body`, under
    /// `pre`. A half-sent body never becomes visible. Returns the new entry.
    async fn write(
        &self,
        path: &RemotePath,
        body: ByteStream,
        len: u64,
        pre: Precondition,
        attrs: ObjectAttrs,
    ) -> Result<RemoteEntry>;

    /// Removes the file or symlink at `path`, under `pre`.
    async fn delete(&self, path: &RemotePath, pre: Precondition) -> Result<()>;

    /// Creates the directory `path` (its parent must exist). `AlreadyExists` if anything is there.
    async fn mkdir(&self, path: &RemotePath) -> Result<RemoteEntry>;

    /// Removes the empty directory `path`.
    async fn rmdir(&self, path: &RemotePath) -> Result<()>;

    /// Moves `from` to `to` (file, symlink or directory). With `replace`, an existing file at
    /// `to` is replaced; without, `AlreadyExists`. Providers without native rename return
    /// `NotSupported` for directories and copy + delete files.
    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry>;

    /// Creates a symlink at `path` pointing to `target` (`NotSupported` without the capability).
    async fn symlink(&self, path: &RemotePath, target: &str) -> Result<RemoteEntry>;

    /// Sets permission bits and/or modification time (`NotSupported` without the capability).
    async fn set_attrs(&self, path: &RemotePath, attrs: ObjectAttrs) -> Result<RemoteEntry>;

    /// Makes every change this provider has acknowledged so far survive a power loss. A
    /// provider whose acknowledgement is already durable (an object store, a server) does
    /// nothing; the local folder syncs the directories its calls changed, so that many calls
    /// share one directory `fsync`. The uploader calls it before it journals that a change was
    /// applied.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// Reads a whole stream into memory (tests, small objects).
pub async fn collect(mut s: ByteStream) -> Result<Vec<u8>> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b?);
    }
    Ok(out)
}

/// A stream of one buffer.
pub fn once(b: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(b) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths() {
        let p = RemotePath::parse("/a/b/c/").unwrap();
        assert_eq!(p.as_str(), "a/b/c");
        assert_eq!(p.name(), "c");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(
            RemotePath::parse("a").unwrap().parent(),
            Some(RemotePath::root())
        );
        assert!(RemotePath::parse("a/../b").is_none());
        assert!(RemotePath::parse("a//b").is_none());
        assert!(RemotePath::root().join("..").is_none());
        assert!(p.starts_with(&RemotePath::parse("a/b").unwrap()));
        assert!(!RemotePath::parse("a/bc")
            .unwrap()
            .starts_with(&RemotePath::parse("a/b").unwrap()));
        assert!(p.starts_with(&RemotePath::root()));
    }
}
