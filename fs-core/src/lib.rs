//! The VFS core of syncoxide: namespace, providers, read path, write-back WAL and reconciler.
//!
//! It knows nothing of FUSE, WinFSP or errno; the adapters (`fs-unix`, `fs-windows`) translate.
//! This crate is filled by the drive issue; today it only fixes the dependency direction
//! `fs-core → cache`.

pub use cache;
