//! The VFS core of syncoxide: namespace, providers, read path, write-back WAL and reconciler.
//!
//! It knows nothing of FUSE, WinFSP or errno; the adapters (`fs-unix`, `fs-windows`) translate.
#![warn(clippy::unwrap_used)]

pub mod config;
pub mod content;
pub mod error;
pub mod journal;
pub mod namespace;
pub mod provider;
pub mod types;

pub use cache;
pub use error::{FsError, FsResult};
pub use types::*;
