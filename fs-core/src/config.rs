//! Plain configuration of the core; `mountctl` builds it from flags.

use std::time::Duration;

/// How the VFS behaves.
#[derive(Clone, Debug)]
pub struct VfsConfig {
    /// Bytes per chunk: the unit of fetching, caching and local writes. 1 MiB by default: the
    /// kernel sends at most 1 MiB per FUSE request, and benches/chunk_size shows larger chunks
    /// raise the cost of small random reads while smaller ones cost more requests.
    pub chunk_size: u64,
    /// How long after the last close (commit) a file is uploaded.
    pub write_back_delay: Duration,
    /// How long a directory listing is trusted before it is refreshed from the provider.
    pub dir_cache_time: Duration,
    /// How long the kernel may cache attributes and entries.
    pub attr_timeout: Duration,
    pub read_only: bool,
    /// Owner reported for every file.
    pub uid: u32,
    pub gid: u32,
    /// Uploads and other provider operations in flight at once.
    pub transfers: usize,
    /// Largest read-ahead window, in chunks.
    pub max_readahead_chunks: u64,
    /// Bytes all prefetching together may hold in flight: each read stream takes a window
    /// (`max_readahead_chunks` chunks) of it, so this bounds the streams open at once.
    pub prefetch_budget: u64,
    /// Files up to this size travel inside their commit record (one fsync per close).
    pub inline_max: u64,
    /// Deadline of one provider call.
    pub provider_timeout: Duration,
    /// Write-back buffer per file before chunks are spilled to the cache.
    pub write_buffer_chunks: usize,
    /// How often the provider is polled for remote changes (known directories listed again);
    /// `Duration::ZERO` turns polling off.
    pub poll_interval: Duration,
    /// How long a read of data that is not cached waits for an unreachable provider before it
    /// fails (EIO); once the drive knows it is offline such reads fail at once.
    pub offline_timeout: Duration,
    /// Who wins when a file changed both here and on the provider.
    pub conflict: ConflictPolicy,
    /// What becomes of the losing version under a policy that picks a winner.
    pub conflict_loser: ConflictLoser,
    /// Three-way line merge of text files changed on both sides (base version still cached);
    /// overlapping changes fall back to `conflict`.
    pub auto_merge: bool,
}

/// `--conflict`: what happens when an upload finds the provider at another version than the one
/// the local change started from. See docs/CONFLICTS.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The remote version stays at the name; the local one is written beside it as a conflict
    /// copy.
    #[default]
    KeepBoth,
    /// The version with the later modification time wins.
    Newer,
    /// The version with the earlier modification time wins.
    Older,
    /// The larger version wins.
    Larger,
    /// The smaller version wins.
    Smaller,
    /// The local version wins.
    Local,
    /// The remote version wins.
    Remote,
}

impl ConflictPolicy {
    pub const NAMES: [&'static str; 7] = [
        "keep-both",
        "newer",
        "older",
        "larger",
        "smaller",
        "local",
        "remote",
    ];

    /// Parses a `--conflict` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "keep-both" => ConflictPolicy::KeepBoth,
            "newer" => ConflictPolicy::Newer,
            "older" => ConflictPolicy::Older,
            "larger" => ConflictPolicy::Larger,
            "smaller" => ConflictPolicy::Smaller,
            "local" => ConflictPolicy::Local,
            "remote" => ConflictPolicy::Remote,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ConflictPolicy::KeepBoth => "keep-both",
            ConflictPolicy::Newer => "newer",
            ConflictPolicy::Older => "older",
            ConflictPolicy::Larger => "larger",
            ConflictPolicy::Smaller => "smaller",
            ConflictPolicy::Local => "local",
            ConflictPolicy::Remote => "remote",
        }
    }
}

/// `--conflict-loser`: the version a policy did not pick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConflictLoser {
    /// Kept as a conflict copy beside the winner.
    #[default]
    Keep,
    /// Deleted (the user asked for it).
    Delete,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            chunk_size: 1 << 20,
            write_back_delay: Duration::from_secs(5),
            dir_cache_time: Duration::from_secs(300),
            attr_timeout: Duration::from_secs(1),
            read_only: false,
            uid: 0,
            gid: 0,
            transfers: 4,
            max_readahead_chunks: 16,
            prefetch_budget: 64 << 20,
            inline_max: 64 << 10,
            provider_timeout: Duration::from_secs(30),
            write_buffer_chunks: 4,
            poll_interval: Duration::from_secs(60),
            offline_timeout: Duration::from_secs(5),
            conflict: ConflictPolicy::KeepBoth,
            conflict_loser: ConflictLoser::Keep,
            auto_merge: false,
        }
    }
}
