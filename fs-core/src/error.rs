//! Errors of the core, named by what went wrong. Each adapter maps them exhaustively (one
//! `match`, no catch-all) to its errno or NTSTATUS, so a new variant cannot compile until every
//! adapter decides.

use crate::provider::ProviderError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid name")]
    InvalidName,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument")]
    InvalidArgument,
    /// A feature this drive does not offer (hard links, RENAME_EXCHANGE, ...). See SEMANTICS.md.
    #[error("operation not supported")]
    NotSupported,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    PermissionDenied,
    #[error("read-only mount")]
    ReadOnly,
    /// The cache is full of data not yet uploaded and the provider cannot take it.
    #[error("no space left (cache full of unflushed data)")]
    NoSpace,
    #[error("file too large")]
    FileTooLarge,
    #[error("stale file handle")]
    BadHandle,
    /// The provider cannot be reached and the data is not cached.
    #[error("provider unreachable and data not cached")]
    Offline,
    #[error("operation timed out")]
    TimedOut,
    /// Anything else: a provider error, a cache disk failure, an integrity failure. Logged
    /// where it happened.
    #[error("I/O error: {0}")]
    Io(String),
}

impl FsError {
    pub(crate) fn io(e: impl std::fmt::Display) -> Self {
        FsError::Io(e.to_string())
    }
}

impl From<ProviderError> for FsError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::NotFound(_) => FsError::NotFound,
            ProviderError::AlreadyExists(_) => FsError::Exists,
            ProviderError::NotADirectory(_) => FsError::NotADirectory,
            ProviderError::IsADirectory(_) => FsError::IsADirectory,
            ProviderError::NotEmpty(_) => FsError::NotEmpty,
            ProviderError::InvalidName { .. } => FsError::InvalidName,
            ProviderError::NotSupported(_) => FsError::NotSupported,
            ProviderError::PermissionDenied(_) => FsError::PermissionDenied,
            ProviderError::NoSpace => FsError::NoSpace,
            ProviderError::Unreachable(_) => FsError::Offline,
            ProviderError::TimedOut => FsError::TimedOut,
            e @ (ProviderError::PreconditionFailed { .. } | ProviderError::Other { .. }) => {
                FsError::io(e)
            }
        }
    }
}

impl From<cache::CacheError> for FsError {
    fn from(e: cache::CacheError) -> Self {
        match e {
            cache::CacheError::NoRoom { .. } => FsError::NoSpace,
            e => FsError::io(e),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
