//! The cache disk failing: full (ENOSPC), read-only (EROFS), and the free-space floor. These tests
//! mount a small tmpfs, so they need root (CI runs as root); elsewhere they say so and pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cache::{
    CacheConfig, CacheError, CacheLimit, ChunkCache, ChunkKey, Health, PutKind, PutOutcome,
};
use common::*;

struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if rustix_is_root() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("mnt");
            std::fs::create_dir(&path).unwrap();
            let ok = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Some(Tmpfs { path, _dir: dir });
            }
        }
        eprintln!("skipped: mounting a tmpfs needs root");
        None
    }

    fn remount_ro(&self) {
        let s = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn key(i: u64) -> ChunkKey {
    ChunkKey::new("object", "v", i)
}

fn open_at(dir: &Path, limit: CacheLimit) -> ChunkCache {
    ChunkCache::open(CacheConfig::new(dir, limit), &pass()).unwrap()
}

fn avail(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_full_disk_fails_dirty_writes_loudly_and_keeps_what_was_written() {
    let Some(fs) = Tmpfs::mount("3m") else { return };
    let c = open_at(&fs.path.join("cache"), CacheLimit::bytes(64 << 20));
    let mut stored = Vec::new();
    let err = loop {
        let i = stored.len() as u64;
        match c.put(&key(i), &data(i, 200_000), PutKind::Dirty) {
            Ok(PutOutcome::Stored) => stored.push(i),
            Ok(o) => panic!("unexpected {o:?}"),
            Err(e) => break e,
        }
        assert!(i < 100, "a 3 MiB disk cannot take 20 MB");
    };
    assert!(matches!(err, CacheError::Io { .. }), "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(matches!(c.health(), Health::Degraded { .. }));
    assert!(!stored.is_empty());
    for i in &stored {
        assert_eq!(
            c.get(&key(*i)).unwrap().as_deref(),
            Some(&data(*i, 200_000)[..])
        );
    }
    // Nothing half-written is left behind.
    assert_eq!(
        std::fs::read_dir(fs.path.join("cache/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_read_only_disk_still_serves_clean_reads() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let c = open_at(&fs.path.join("cache"), CacheLimit::bytes(64 << 20));
    c.put(&key(1), &data(1, 50_000), PutKind::Clean).unwrap();
    fs.remount_ro();
    assert_eq!(
        c.get(&key(1)).unwrap().as_deref(),
        Some(&data(1, 50_000)[..])
    );
    let err = c
        .put(&key(2), &data(2, 50_000), PutKind::Dirty)
        .unwrap_err();
    assert!(err.to_string().contains("Read-only"), "{err}");
    // The disk is known to fail: optional clean writes are skipped until a probe succeeds.
    for i in 3..5 {
        assert_eq!(
            c.put(&key(i), &data(i, 50_000), PutKind::Clean).unwrap(),
            PutOutcome::SkippedUnhealthy
        );
    }
    assert!(matches!(c.health(), Health::Degraded { .. }));
}

#[test]
fn the_free_space_floor_is_kept_by_evicting() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let floor = 4 << 20;
    let c = open_at(
        &fs.path.join("cache"),
        CacheLimit {
            max_bytes: 64 << 20,
            min_free_bytes: floor,
        },
    );
    for i in 0..60u64 {
        c.put(&key(i), &data(i, 200_000), PutKind::Clean).unwrap();
        assert!(
            avail(&fs.path) >= floor,
            "free space fell under the floor at put {i}"
        );
    }
    assert!(c.stats().evictions > 0);
    // Dirty data that would break the floor is refused as NoRoom, not written.
    for i in 0..60u64 {
        let _ = c.pin(&key(i));
    }
    let err = c
        .put(&key(100), &data(100, 200_000), PutKind::Dirty)
        .unwrap_err();
    assert!(matches!(err, CacheError::NoRoom { .. }), "{err}");
    assert!(avail(&fs.path) >= floor);
}
