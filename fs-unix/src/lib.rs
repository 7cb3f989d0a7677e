//! Thin FUSE adapter over `fs-core` (fuser 0.18, pure Rust on Linux: mount(2) as root,
//! `fusermount3` otherwise; no libfuse at build time). It owns no namespace state: every
//! callback opens a span, calls the core on a tokio runtime, and replies or maps the core's
//! error to an errno in one exhaustive function.
//!
//! ```no_run
//! # fn demo(vfs: fs_core::Vfs, rt: tokio::runtime::Handle) -> Result<(), fs_unix::MountError> {
//! let m = fs_unix::mount(vfs, rt, std::path::Path::new("/mnt/drive"), &Default::default())?;
//! m.wait(); // until someone runs `fusermount3 -u /mnt/drive`
//! m.unmount()?;
//! # Ok(()) }
//! ```

mod adapter;
mod errno;
mod invalidate;
mod mount;

pub use errno::errno;
pub use fs_core;
pub use mount::{mount, MountError, MountOptions, Mounted};
