//! The VFS core of syncoxide: namespace, providers, read path, write-back WAL and reconciler.
//!
//! It knows nothing of FUSE, WinFSP or errno; the adapters (`fs-unix`, `fs-windows`) translate.
#![warn(clippy::unwrap_used)]

pub mod config;
pub mod content;
mod data;
pub mod error;
pub mod journal;
pub mod merge;
pub mod namespace;
mod ops;
pub mod pin;
pub mod poll;
pub mod provider;
pub mod snapshot;
mod stream;
pub mod types;
pub mod uploader;
pub mod vfs;
pub mod wal;

pub use cache;
pub use config::{ConflictLoser, ConflictPolicy, VfsConfig};
pub use error::{FsError, FsResult};
pub use pin::{FileState, PinReport};
pub use types::*;
pub use vfs::{
    ConflictRecord, ConflictWinner, Invalidator, LocalDiskWaitAllowed, Status, Vfs,
    MAX_CONFLICTS_KEPT,
};
