//! Pinning and file states over the in-memory provider.

use std::sync::Arc;
use std::time::Duration;

use cache::{CacheConfig, CacheLimit, ChunkCache, KdfParams, Passphrase};
use fs_core::provider::memory::MemoryProvider;
use fs_core::{FileState, FsError, Vfs, VfsConfig};

fn vfs(dir: &std::path::Path, limit: u64, mem: Arc<MemoryProvider>) -> Vfs {
    let cache = Arc::new(
        ChunkCache::open(
            CacheConfig::new(dir, CacheLimit::bytes(limit)),
            &Passphrase::new("pw", KdfParams::FAST_INSECURE),
        )
        .unwrap(),
    );
    let cfg = VfsConfig {
        chunk_size: 64 << 10,
        provider_timeout: Duration::from_secs(5),
        poll_interval: Duration::ZERO,
        ..VfsConfig::default()
    };
    Vfs::new(cfg, cache, mem).unwrap()
}

#[tokio::test]
async fn pin_fetches_everything_and_keeps_it_offline() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.mkdir_all("/docs/deep");
    mem.put_file("/docs/a.bin", &[7u8; 200 << 10]);
    mem.put_file("/docs/deep/b.bin", &[8u8; 70 << 10]);
    mem.put_file("/other.bin", &[9u8; 10]);
    let v = vfs(d.path(), 64 << 20, mem.clone());
    let docs = v.resolve("docs").await.unwrap();
    let b = v.resolve("docs/deep/b.bin").await.unwrap();
    let other = v.resolve("/other.bin").await.unwrap();
    assert_eq!(v.file_state(b).unwrap(), FileState::OnlineOnly);
    assert_eq!(v.file_state(docs).unwrap(), FileState::Directory);

    let rep = v.pin(docs, true).await.unwrap();
    assert_eq!((rep.files, rep.bytes), (2, (200 << 10) + (70 << 10)));
    assert_eq!(v.file_state(b).unwrap(), FileState::Pinned);
    assert_eq!(v.file_state(other).unwrap(), FileState::OnlineOnly);
    assert!(v.status().pinned_bytes >= 270 << 10);

    // Offline, the pinned files are whole in the cache.
    mem.set_unreachable(true);
    let o = v
        .open(
            b,
            fs_core::OpenFlags {
                read: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v.read(o.fh, 0, 1 << 20).await.unwrap().len(), 70 << 10);
    v.release(o.fh).await.unwrap();
    mem.set_unreachable(false);

    v.pin(docs, false).await.unwrap();
    assert_eq!(v.file_state(b).unwrap(), FileState::Cached);
    assert_eq!(v.status().pinned_bytes, 0);
    assert!(matches!(
        v.resolve("docs/none").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn a_pin_that_cannot_fit_is_refused_before_fetching() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("/huge.bin", &vec![1u8; 8 << 20]);
    let v = vfs(d.path(), 4 << 20, mem.clone());
    let f = v.resolve("huge.bin").await.unwrap();
    mem.reset_counters();
    assert!(matches!(v.pin(f, true).await, Err(FsError::NoSpace)));
    assert_eq!(mem.counters().read, 0, "nothing fetched for a refused pin");
    assert_eq!(v.file_state(f).unwrap(), FileState::OnlineOnly);
}

#[tokio::test]
async fn a_pinned_file_changed_remotely_stays_pinned_with_its_new_version() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("/kept.bin", &[1u8; 100 << 10]);
    let v = vfs(d.path(), 64 << 20, mem.clone());
    let f = v.resolve("kept.bin").await.unwrap();
    v.pin(f, true).await.unwrap();
    let pinned_before = v.status().pinned_bytes;
    assert!(pinned_before >= 100 << 10);

    mem.put_file("/kept.bin", &[2u8; 150 << 10]);
    v.poll_once().await;
    // The new version is fetched and pinned behind the poll.
    let mut state = v.file_state(f).unwrap();
    for _ in 0..200 {
        if state == FileState::Pinned {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        state = v.file_state(f).unwrap();
    }
    assert_eq!(state, FileState::Pinned);
    let pinned = v.status().pinned_bytes;
    assert!(
        (150 << 10..(150 << 10) + (100 << 10)).contains(&pinned),
        "the new version is pinned, the old one no longer: {pinned}"
    );
    mem.set_unreachable(true);
    let o = v
        .open(
            f,
            fs_core::OpenFlags {
                read: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got = v.read(o.fh, 0, 1 << 20).await.unwrap();
    assert_eq!(
        got.as_ref(),
        &[2u8; 150 << 10][..],
        "offline, the new version"
    );
    v.release(o.fh).await.unwrap();
}
