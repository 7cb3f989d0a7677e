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
    /// Bytes all prefetching together may hold in flight.
    pub prefetch_budget: u64,
    /// Files up to this size travel inside their commit record (one fsync per close).
    pub inline_max: u64,
    /// Deadline of one provider call.
    pub provider_timeout: Duration,
    /// Write-back buffer per file before chunks are spilled to the cache.
    pub write_buffer_chunks: usize,
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
        }
    }
}
