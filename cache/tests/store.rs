//! Behaviour of the chunk store: integrity, versions, persistence, pins, the limit, health.

mod common;

use std::sync::Arc;

use cache::{
    CacheConfig, CacheError, CacheLimit, ChunkCache, ChunkKey, ChunkState, EvictionKind, Health,
    PutKind, PutOutcome, SingleFlight,
};
use common::*;

fn key(obj: &str, ver: &str, i: u64) -> ChunkKey {
    ChunkKey::new(obj, ver, i)
}

#[test]
fn put_then_get_returns_the_bytes_for_every_kind_and_size() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 64 << 20);
    for (i, len) in [0usize, 1, 4095, 4096, 65536, 1 << 20]
        .into_iter()
        .enumerate()
    {
        for kind in [PutKind::Clean, PutKind::Pinned, PutKind::Dirty] {
            let k = key(&format!("obj{i}{kind:?}"), "v1", i as u64);
            let v = data(i as u64, len);
            assert_eq!(c.put(&k, &v, kind).unwrap(), PutOutcome::Stored);
            assert_eq!(c.get(&k).unwrap().as_deref(), Some(&v[..]));
        }
    }
    assert_eq!(c.get(&key("absent", "v1", 0)).unwrap(), None);
}

#[test]
fn every_flipped_byte_of_a_chunk_file_is_an_integrity_error() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 16 << 20);
    let k = key("o", "v", 3);
    // Dirty: an integrity failure keeps the file, so the same file can be flipped byte by byte.
    c.put(&k, &data(1, 100), PutKind::Dirty).unwrap();
    let f = chunk_files(d.path()).pop().unwrap();
    let good = std::fs::read(&f).unwrap();
    assert_eq!(good.len(), 100 + cache::format::OVERHEAD);
    // Header 0..16, nonce 16..28, ciphertext 28..128, tag 128..144: every single offset.
    for off in 0..good.len() {
        let mut bad = good.clone();
        bad[off] ^= 0x01;
        std::fs::write(&f, &bad).unwrap();
        match c.get(&k) {
            Err(CacheError::Integrity { .. }) => {}
            other => panic!("flip at offset {off}: expected an integrity error, got {other:?}"),
        }
    }
    // Truncated and extended.
    std::fs::write(&f, &good[..good.len() - 1]).unwrap();
    assert!(matches!(c.get(&k), Err(CacheError::Integrity { .. })));
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&f, &longer).unwrap();
    assert!(matches!(c.get(&k), Err(CacheError::Integrity { .. })));
    std::fs::write(&f, &good).unwrap();
    assert_eq!(c.get(&k).unwrap().as_deref(), Some(&data(1, 100)[..]));
    assert!(c.stats().integrity_failures >= good.len() as u64);
}

#[test]
fn a_failed_clean_chunk_is_dropped_and_can_be_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 16 << 20);
    let k = key("o", "v", 0);
    c.put(&k, b"hello", PutKind::Clean).unwrap();
    let f = chunk_files(d.path()).pop().unwrap();
    let mut b = std::fs::read(&f).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x80;
    std::fs::write(&f, &b).unwrap();
    assert!(matches!(c.get(&k), Err(CacheError::Integrity { .. })));
    assert_eq!(c.get(&k).unwrap(), None, "the bad chunk is gone: a miss");
    assert!(!f.exists());
    c.put(&k, b"hello", PutKind::Clean).unwrap();
    assert_eq!(c.get(&k).unwrap().as_deref(), Some(&b"hello"[..]));
}

#[test]
fn swapped_chunk_files_both_fail() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 16 << 20);
    let (a, b) = (key("o", "v", 0), key("o", "v", 1));
    c.put(&a, &data(1, 5000), PutKind::Dirty).unwrap();
    c.put(&b, &data(2, 5000), PutKind::Dirty).unwrap();
    let files = chunk_files(d.path());
    assert_eq!(files.len(), 2);
    let (fa, fb) = (
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&files[1]).unwrap(),
    );
    std::fs::write(&files[0], &fb).unwrap();
    std::fs::write(&files[1], &fa).unwrap();
    assert!(matches!(c.get(&a), Err(CacheError::Integrity { .. })));
    assert!(matches!(c.get(&b), Err(CacheError::Integrity { .. })));
}

#[test]
fn a_chunk_moved_to_another_key_fails() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 16 << 20);
    let a = key("obj-a", "v", 0);
    let b = key("obj-b", "v", 0);
    c.put(&a, &data(1, 300), PutKind::Dirty).unwrap();
    c.put(&b, &data(2, 300), PutKind::Dirty).unwrap();
    let files = chunk_files(d.path());
    // One file's content under both names: exactly one of the keys now sees a foreign chunk.
    std::fs::copy(&files[0], &files[1]).unwrap();
    let ra = c.get(&a);
    let rb = c.get(&b);
    let failures = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Err(CacheError::Integrity { .. })))
        .count();
    assert_eq!(failures, 1, "a: {ra:?}, b: {rb:?}");
}

#[test]
fn an_older_version_is_a_miss_and_a_replayed_one_fails() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 16 << 20);
    let v1 = key("obj", "etag-1", 0);
    let v2 = key("obj", "etag-2", 0);
    c.put(&v1, b"old content", PutKind::Clean).unwrap();
    assert_eq!(
        c.get(&v2).unwrap(),
        None,
        "a newer version never sees older bytes"
    );
    c.put(&v2, b"new content", PutKind::Dirty).unwrap();
    // Replay: the old version's file copied over the new version's name.
    let files = chunk_files(d.path());
    let old_file = files
        .iter()
        .find(|p| p.to_str().unwrap().ends_with(".c"))
        .unwrap();
    let new_file = files
        .iter()
        .find(|p| p.to_str().unwrap().ends_with(".d"))
        .unwrap();
    std::fs::copy(old_file, new_file).unwrap();
    assert!(matches!(c.get(&v2), Err(CacheError::Integrity { .. })));
    assert_eq!(c.get(&v1).unwrap().as_deref(), Some(&b"old content"[..]));
}

#[test]
fn chunks_pins_and_dirty_state_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let keys: Vec<_> = (0..6).map(|i| key("o", "v", i)).collect();
    let usage_before;
    {
        let c = open(d.path(), 16 << 20);
        c.put(&keys[0], &data(0, 70_000), PutKind::Clean).unwrap();
        c.put(&keys[1], &data(1, 70_000), PutKind::Dirty).unwrap();
        c.put(&keys[2], &data(2, 70_000), PutKind::Pinned).unwrap();
        c.put(&keys[3], &data(3, 70_000), PutKind::Dirty).unwrap();
        c.pin(&keys[3]).unwrap();
        c.put(&keys[4], &data(4, 70_000), PutKind::Dirty).unwrap();
        c.mark_clean(&keys[4]).unwrap();
        usage_before = c.usage();
    }
    let c = open(d.path(), 16 << 20);
    let want = [
        ChunkState::Clean,
        ChunkState::Dirty,
        ChunkState::Pinned,
        ChunkState::DirtyPinned,
        ChunkState::Clean,
    ];
    for (i, s) in want.iter().enumerate() {
        assert_eq!(c.state(&keys[i]), Some(*s), "state of chunk {i}");
        assert_eq!(
            c.get(&keys[i]).unwrap().as_deref(),
            Some(&data(i as u64, 70_000)[..])
        );
    }
    assert_eq!(c.state(&keys[5]), None);
    let u = c.usage();
    assert_eq!(u.chunks, 5);
    assert_eq!(u.dirty_chunks, 2);
    assert_eq!(u.pinned_chunks, 3);
    assert_eq!(u.dirty_bytes, usage_before.dirty_bytes);
    assert_eq!(u.pinned_bytes, usage_before.pinned_bytes);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let _c = open(d.path(), 1 << 20);
    let err = ChunkCache::open(
        CacheConfig::new(d.path(), CacheLimit::bytes(1 << 20)),
        &pass(),
    )
    .unwrap_err();
    assert!(matches!(err, CacheError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn pinned_and_dirty_chunks_are_never_evicted_and_a_full_cache_says_no_room() {
    let d = tempfile::tempdir().unwrap();
    let limit = 2 << 20;
    let c = open(d.path(), limit);
    let chunk = 200_000;
    let mut dirty = Vec::new();
    let mut err = None;
    for i in 0..50u64 {
        let k = key("dirty", "v", i);
        match c.put(&k, &data(i, chunk), PutKind::Dirty) {
            Ok(_) => dirty.push(k),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        assert!(c.usage().used_bytes <= limit);
        assert!(disk_usage(d.path()) <= limit);
    }
    let err = err.expect("the cache must fill up with dirty data");
    assert!(matches!(err, CacheError::NoRoom { .. }), "{err}");
    assert!(err.to_string().contains("pinned"), "{err}");
    assert!(dirty.len() >= 5);
    // A clean put cannot push anything out either.
    assert!(matches!(
        c.put(&key("clean", "v", 0), &data(99, chunk), PutKind::Clean),
        Err(CacheError::NoRoom { .. })
    ));
    for (i, k) in dirty.iter().enumerate() {
        assert_eq!(
            c.get(k).unwrap().as_deref(),
            Some(&data(i as u64, chunk)[..])
        );
    }
    // Once uploads commit, room comes back by evicting the now clean chunks.
    for k in &dirty {
        c.mark_clean(k).unwrap();
    }
    c.put(&key("dirty", "v", 1000), &data(7, chunk), PutKind::Dirty)
        .unwrap();
    assert!(c.stats().evictions >= 1);
    assert!(disk_usage(d.path()) <= limit);
}

#[test]
fn a_clean_put_never_replaces_dirty_data() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 8 << 20);
    let k = key("o", "v", 0);
    c.put(&k, b"local edit", PutKind::Dirty).unwrap();
    assert_eq!(
        c.put(&k, b"stale fetch", PutKind::Clean).unwrap(),
        PutOutcome::KeptDirty
    );
    assert_eq!(c.get(&k).unwrap().as_deref(), Some(&b"local edit"[..]));
    assert_eq!(
        c.put(&k, b"stale fetch", PutKind::Pinned).unwrap(),
        PutOutcome::KeptDirty
    );
    assert_eq!(c.state(&k), Some(ChunkState::DirtyPinned));
    c.mark_clean(&k).unwrap();
    assert_eq!(c.state(&k), Some(ChunkState::Pinned));
    assert_eq!(c.get(&k).unwrap().as_deref(), Some(&b"local edit"[..]));
}

#[test]
fn pin_unpin_and_remove() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 8 << 20);
    let k = key("o", "v", 0);
    assert!(matches!(c.pin(&k), Err(CacheError::NotCached)));
    c.put(&k, b"x", PutKind::Clean).unwrap();
    c.pin(&k).unwrap();
    assert_eq!(c.state(&k), Some(ChunkState::Pinned));
    c.unpin(&k).unwrap();
    assert_eq!(c.state(&k), Some(ChunkState::Clean));
    c.put(&k, b"y", PutKind::Dirty).unwrap();
    c.remove(&k).unwrap();
    assert_eq!(c.state(&k), None);
    assert!(chunk_files(d.path()).is_empty());
    assert_eq!(c.usage().chunks, 0);
    assert_eq!(c.usage().dirty_bytes, 0);
}

#[test]
fn eviction_is_least_recently_used_and_the_order_survives_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let chunk = 100_000;
    // Room for the fixed files and about eight chunks.
    let limit = {
        let c = open(d.path(), 64 << 20);
        c.usage().used_bytes + 8 * 104_000 + 8192
    };
    let keys: Vec<_> = (0..8).map(|i| key("o", "v", i)).collect();
    let open_lru = |limit| {
        let mut cfg = CacheConfig::new(d.path(), CacheLimit::bytes(limit));
        cfg.eviction = EvictionKind::Lru;
        ChunkCache::open(cfg, &pass()).unwrap()
    };
    {
        let c = open_lru(limit);
        for (i, k) in keys.iter().enumerate() {
            c.put(k, &data(i as u64, chunk), PutKind::Clean).unwrap();
        }
        assert_eq!(c.usage().chunks, 8);
        assert!(
            c.get(&keys[0]).unwrap().is_some(),
            "touch 0: now the most recent"
        );
    }
    let c = open(d.path(), limit);
    c.put(&key("new", "v", 0), &data(100, chunk), PutKind::Clean)
        .unwrap();
    assert!(
        c.contains(&keys[0]),
        "recently read chunk kept across the restart"
    );
    assert!(!c.contains(&keys[1]), "least recently used chunk evicted");
    assert!(c.usage().used_bytes <= limit);
}

#[test]
fn the_default_sieve_policy_keeps_a_hot_chunk_through_a_scan() {
    let d = tempfile::tempdir().unwrap();
    let limit = 1 << 20;
    let c = open(d.path(), limit);
    assert_eq!(EvictionKind::default(), EvictionKind::Sieve);
    for i in 0..100u64 {
        c.put(&key("o", "v", i), &data(i, 50_000), PutKind::Clean)
            .unwrap();
        if i % 3 == 0 {
            let _ = c.get(&key("o", "v", 0)).unwrap();
        }
        assert!(c.usage().used_bytes <= limit);
    }
    assert!(
        c.contains(&key("o", "v", 0)),
        "a hot chunk survives the scan"
    );
    assert!(disk_usage(d.path()) <= limit);
}

#[test]
fn a_smaller_limit_at_open_evicts_clean_chunks_only() {
    let d = tempfile::tempdir().unwrap();
    {
        let c = open(d.path(), 16 << 20);
        for i in 0..20u64 {
            c.put(&key("o", "v", i), &data(i, 100_000), PutKind::Clean)
                .unwrap();
        }
        c.put(&key("d", "v", 0), &data(50, 100_000), PutKind::Dirty)
            .unwrap();
    }
    let limit = 600_000;
    let c = open(d.path(), limit);
    assert!(c.usage().used_bytes <= limit);
    assert!(disk_usage(d.path()) <= limit);
    assert_eq!(
        c.get(&key("d", "v", 0)).unwrap().as_deref(),
        Some(&data(50, 100_000)[..])
    );
}

#[test]
fn open_repairs_what_a_crash_left() {
    let d = tempfile::tempdir().unwrap();
    let k = key("o", "v", 0);
    {
        let c = open(d.path(), 8 << 20);
        c.put(&k, b"kept", PutKind::Dirty).unwrap();
    }
    let chunks = d.path().join("chunks");
    let dirty_file = chunk_files(d.path()).pop().unwrap();
    std::fs::write(d.path().join("tmp").join("half-written.7"), b"partial").unwrap();
    std::fs::write(chunks.join("not-a-chunk"), b"junk").unwrap();
    std::fs::write(chunks.join(format!("{}.c", "ab".repeat(16))), b"torn").unwrap();
    // A clean twin of the dirty chunk (crash between rename and removal of the older file).
    let twin = dirty_file.with_extension("c");
    std::fs::write(
        &twin,
        b"an older clean copy that is long enough to look like a chunk file",
    )
    .unwrap();
    let c = open(d.path(), 8 << 20);
    assert_eq!(c.stats().repaired_at_open, 4);
    assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(chunk_files(d.path()), vec![dirty_file]);
    assert_eq!(c.get(&k).unwrap().as_deref(), Some(&b"kept"[..]));
    assert_eq!(c.usage().chunks, 1);
}

#[test]
fn usage_counts_every_byte_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let limit = 3 << 20;
    let c = open(d.path(), limit);
    for i in 0..200u64 {
        let kind = if i % 7 == 0 {
            PutKind::Dirty
        } else {
            PutKind::Clean
        };
        let len = (i as usize * 7919) % 150_000;
        match c.put(&key("o", "v", i % 40), &data(i, len), kind) {
            Ok(_) | Err(CacheError::NoRoom { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        if i % 7 == 0 {
            let _ = c.mark_clean(&key("o", "v", i % 40));
        }
        let du = disk_usage(d.path());
        let used = c.usage().used_bytes;
        assert!(du <= used, "on disk {du} > counted {used} after op {i}");
        assert!(used <= limit);
    }
    c.flush_index().unwrap();
    assert!(disk_usage(d.path()) <= c.usage().used_bytes);
}

#[test]
fn a_chunk_larger_than_the_maximum_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = CacheConfig::new(d.path(), CacheLimit::bytes(8 << 20));
    cfg.max_chunk_size = 1000;
    let c = ChunkCache::open(cfg, &pass()).unwrap();
    let err = c
        .put(&key("o", "v", 0), &[0; 1001], PutKind::Clean)
        .unwrap_err();
    assert!(matches!(
        err,
        CacheError::ChunkTooLarge {
            len: 1001,
            max: 1000
        }
    ));
}

#[test]
fn an_unreadable_clean_chunk_degrades_to_a_miss_and_marks_the_disk_unhealthy() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 8 << 20);
    let k = key("o", "v", 0);
    c.put(&k, b"data", PutKind::Clean).unwrap();
    let f = chunk_files(d.path()).pop().unwrap();
    // Reading a directory fails with EISDIR: an I/O error that is not a missing file.
    std::fs::remove_file(&f).unwrap();
    std::fs::create_dir(&f).unwrap();
    assert_eq!(c.get(&k).unwrap(), None);
    assert!(matches!(c.health(), Health::Degraded { .. }));
    // The same failure on dirty data is an error, never a silent miss.
    let kd = key("o", "v", 1);
    c.put(&kd, b"dirty", PutKind::Dirty).unwrap();
    let fd = chunk_files(d.path())
        .into_iter()
        .find(|p| p.to_str().unwrap().ends_with(".d"))
        .unwrap();
    std::fs::remove_file(&fd).unwrap();
    std::fs::create_dir(&fd).unwrap();
    assert!(matches!(c.get(&kd), Err(CacheError::Io { .. })));
    // While degraded, optional writes are skipped; dirty writes are still attempted.
    assert_eq!(
        c.put(&key("o", "v", 2), b"x", PutKind::Clean).unwrap(),
        PutOutcome::SkippedUnhealthy
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_and_writers_never_see_wrong_bytes() {
    let d = tempfile::tempdir().unwrap();
    let c = Arc::new(open(d.path(), 4 << 20));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150u64 {
                let idx = (t * 31 + i * 7) % 24;
                let k = key("shared", "v", idx);
                if (t + i) % 3 == 0 {
                    // Content depends only on the key, so any winner is right.
                    let kind = if i % 5 == 0 {
                        PutKind::Dirty
                    } else {
                        PutKind::Clean
                    };
                    match c.put_async(k.clone(), data(idx, 60_000).into(), kind).await {
                        Ok(_) | Err(CacheError::NoRoom { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    if kind == PutKind::Dirty {
                        let _ = c.mark_clean(&k);
                    }
                } else if let Some(b) = c.get_async(k).await.unwrap() {
                    assert_eq!(&b[..], &data(idx, 60_000)[..]);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(c.usage().used_bytes <= 4 << 20);
    assert!(disk_usage(d.path()) <= 4 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_of_one_chunk_cause_one_fetch() {
    let d = tempfile::tempdir().unwrap();
    let c = Arc::new(open(d.path(), 4 << 20));
    let flights = Arc::new(SingleFlight::<ChunkKey, Result<bytes::Bytes, String>>::new());
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let k = key("o", "v", 9);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, flights, fetches, k) = (c.clone(), flights.clone(), fetches.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            if let Some(b) = c.get_async(k.clone()).await.unwrap() {
                return b;
            }
            flights
                .run(k.clone(), || async {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let b = bytes::Bytes::from(data(9, 1000));
                    c.put_async(k, b.clone(), PutKind::Clean)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(b)
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], &data(9, 1000)[..]);
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn retain_dirty_drops_only_unreferenced_dirty_chunks() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 8 << 20);
    let (keep, drop_me, clean) = (key("o", "l1", 0), key("o", "l2", 0), key("o", "r1", 0));
    c.put(&keep, b"committed", PutKind::Dirty).unwrap();
    c.put(&drop_me, b"never committed", PutKind::Dirty).unwrap();
    c.put(&clean, b"fetched", PutKind::Clean).unwrap();
    let wanted = c.name_of(&keep);
    assert_eq!(c.retain_dirty(|n| *n == wanted).unwrap(), 1);
    assert_eq!(c.state(&keep), Some(ChunkState::Dirty));
    assert_eq!(c.state(&drop_me), None);
    assert_eq!(c.state(&clean), Some(ChunkState::Clean));
    assert_eq!(c.usage().dirty_chunks, 1);
}

#[test]
fn external_files_are_charged_and_make_room_by_evicting() {
    let d = tempfile::tempdir().unwrap();
    let limit = 2 << 20;
    let c = open(d.path(), limit);
    for i in 0..15u64 {
        c.put(&key("o", "v", i), &data(i, 100_000), PutKind::Clean)
            .unwrap();
    }
    let before = c.usage().used_bytes;
    c.charge_external(1 << 20).unwrap();
    assert!(c.usage().used_bytes <= limit);
    assert!(
        c.stats().evictions > 0,
        "room was made by evicting clean chunks"
    );
    c.put(&key("d", "v", 0), &data(1, 100_000), PutKind::Dirty)
        .unwrap();
    c.pin(&key("d", "v", 0)).unwrap();
    assert!(matches!(
        c.charge_external(limit),
        Err(CacheError::NoRoom { .. })
    ));
    c.release_external(1 << 20);
    assert!(c.usage().used_bytes < before + 200_000);
}

#[test]
fn every_block_of_a_multi_block_chunk_is_authenticated() {
    let d = tempfile::tempdir().unwrap();
    let c = open(d.path(), 16 << 20);
    let k = key("o", "v", 0);
    let len = 3 * cache::format::BLOCK + 500;
    c.put(&k, &data(4, len), PutKind::Dirty).unwrap();
    let f = chunk_files(d.path()).pop().unwrap();
    let good = std::fs::read(&f).unwrap();
    let b = cache::format::BLOCK + 16;
    // A byte in the ciphertext and in the tag of every block; a ranged read of that block fails,
    // a ranged read of another block does not.
    for block in 0..4usize {
        let start = 28 + block * b;
        let end = (start + b).min(good.len());
        for off in [start, start + 1000.min(end - start - 17), end - 1] {
            let mut bad = good.clone();
            bad[off] ^= 0x20;
            std::fs::write(&f, &bad).unwrap();
            let at = (block * cache::format::BLOCK) as u64;
            assert!(
                matches!(c.get_range(&k, at, 10), Err(CacheError::Integrity { .. })),
                "flip at {off} in block {block}"
            );
            assert!(matches!(c.get(&k), Err(CacheError::Integrity { .. })));
            let other = ((block + 1) % 4 * cache::format::BLOCK) as u64;
            assert_eq!(
                c.get_range(&k, other, 10).unwrap().as_deref(),
                Some(&data(4, len)[other as usize..other as usize + 10])
            );
        }
    }
    // Two blocks swapped.
    let mut swapped = good.clone();
    let (x, y) = (28, 28 + b);
    let blk0 = good[x..x + b].to_vec();
    swapped[x..x + b].copy_from_slice(&good[y..y + b]);
    swapped[y..y + b].copy_from_slice(&blk0);
    std::fs::write(&f, &swapped).unwrap();
    assert!(matches!(
        c.get_range(&k, 0, 10),
        Err(CacheError::Integrity { .. })
    ));
    // The last block cut off and the length fixed up: the header no longer matches.
    let mut cut = good.clone();
    cut.truncate(good.len() - 516);
    std::fs::write(&f, &cut).unwrap();
    assert!(matches!(c.get(&k), Err(CacheError::Integrity { .. })));
    std::fs::write(&f, &good).unwrap();
    assert_eq!(c.get(&k).unwrap().as_deref(), Some(&data(4, len)[..]));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
    #[test]
    fn a_ranged_read_equals_the_same_slice_of_a_whole_read(
        len in 0usize..300_000,
        offset in 0u64..320_000,
        want in 0u64..200_000,
    ) {
        let d = tempfile::tempdir().unwrap();
        let c = open(d.path(), 16 << 20);
        let k = key("o", "v", 1);
        let bytes = data(len as u64, len);
        c.put(&k, &bytes, PutKind::Clean).unwrap();
        let got = c.get_range(&k, offset, want).unwrap().unwrap();
        let from = (offset as usize).min(len);
        let to = (offset.saturating_add(want) as usize).min(len);
        proptest::prop_assert_eq!(&got[..], &bytes[from..to]);
    }
}
