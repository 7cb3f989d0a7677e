//! Thin FUSE adapter over `fs-core` (fuser). It owns no namespace state: every callback opens a
//! span, calls the core, and replies or maps the core's error to an errno in one exhaustive
//! function. Filled by the drive issue.

pub use fs_core;
