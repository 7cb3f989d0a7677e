//! Errors of the cache, named by what went wrong.
//!
//! The caller decides what to do from the variant alone: an [`CacheError::Integrity`] means "fetch
//! the chunk again", [`CacheError::NoRoom`] means "apply back-pressure until dirty data is
//! uploaded", a key error means "ask the user again".

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The passphrase (or key file) does not unlock this cache's data key. Nothing was changed.
    #[error("wrong passphrase (or key file): it does not unlock the cache key in {path} (nothing was changed; try again, or wipe the cache to start over)")]
    WrongPassphrase { path: PathBuf },

    /// Argon2id parameters that this build refuses (too small, too large, inconsistent).
    #[error("{reason}")]
    InvalidKdfParams { reason: String },

    /// The cache was created with another kind of key source than the one given.
    #[error("the cache in {path} is locked with a {expected}, but a {given} was given")]
    KeySourceMismatch {
        path: PathBuf,
        expected: &'static str,
        given: &'static str,
    },

    /// The key file exists but cannot be parsed.
    #[error("the cache key file {path} is damaged: {reason}")]
    KeyFileCorrupt { path: PathBuf, reason: String },

    /// A key file given as key source is not usable.
    #[error("the key file {path} is not usable: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },

    /// On-disk data written by an unknown (probably newer) format version.
    #[error("{what} in {path} has format version {found}, this build reads version {supported}; upgrade syncoxide or use another cache directory")]
    UnsupportedFormat {
        what: &'static str,
        path: PathBuf,
        found: u16,
        supported: u16,
    },

    /// A chunk failed authentication: it was edited, truncated, swapped, moved or replayed. Bad
    /// bytes are never returned; fetch the chunk again.
    #[error("cached chunk failed its integrity check ({reason}); it must be fetched again")]
    Integrity { reason: &'static str },

    /// Pinned bytes (dirty or kept offline) alone leave no room for this chunk.
    #[error("no room in the cache: {needed} bytes needed, {pinned} of the {capacity} bytes allowed are pinned (dirty or kept offline)")]
    NoRoom {
        needed: u64,
        pinned: u64,
        capacity: u64,
    },

    /// A chunk is larger than this cache accepts.
    #[error("chunk of {len} bytes is larger than the cache's maximum chunk size of {max} bytes")]
    ChunkTooLarge { len: usize, max: usize },

    /// The chunk is not in the cache (for operations that need it there, such as pinning).
    #[error("the chunk is not in the cache")]
    NotCached,

    /// Another process has this cache directory open.
    #[error(
        "the cache directory {path} is in use by another process (is another mount using it?)"
    )]
    InUse { path: PathBuf },

    /// A directory given as a cache is not one (refused before anything destructive).
    #[error("{path} is not a syncoxide cache directory (no format marker or key file); nothing was deleted")]
    NotACache { path: PathBuf },

    /// A file system operation on the cache directory failed.
    #[error("cache {op} failed on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The background task doing the blocking work panicked or was cancelled.
    #[error("cache worker task failed: {0}")]
    Worker(String),
}

impl CacheError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CacheError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the error comes from the cache disk failing (I/O error, full, read-only) rather
    /// than from the caller or the data.
    pub fn is_disk_failure(&self) -> bool {
        matches!(self, CacheError::Io { .. })
    }
}

/// Result with [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
