//! Helpers shared by the cache's integration tests.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cache::{CacheConfig, CacheLimit, ChunkCache, KdfParams, Passphrase};

pub const PW: &str = "correct horse battery staple";

pub fn pass() -> Passphrase {
    Passphrase::new(PW, KdfParams::FAST_INSECURE)
}

pub fn open(dir: &Path, limit: u64) -> ChunkCache {
    ChunkCache::open(CacheConfig::new(dir, CacheLimit::bytes(limit)), &pass()).unwrap()
}

/// Bytes the directory occupies, the larger of `du -sb` (apparent) and `du -s` (blocks), every
/// file and directory counted.
pub fn disk_usage(dir: &Path) -> u64 {
    let (mut apparent, mut blocks) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(_) => continue,
        };
        apparent += md.len();
        blocks += md.blocks() * 512;
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    apparent.max(blocks)
}

/// The chunk files, sorted by name.
pub fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("chunks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Deterministic test data.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
