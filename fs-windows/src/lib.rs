//! Thin WinFSP adapter over `fs-core`: portable logic (name rules, NTSTATUS mapping) is unit-tested
//! on Linux; the FFI lives under `cfg(windows)`. Filled by a later issue.

pub use fs_core;
