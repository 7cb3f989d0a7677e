//! Every `--conflict` policy and `--conflict-loser` over the in-memory provider: a file is
//! read (so the drive knows its version), changed here and changed behind the drive's back,
//! then flushed. What is at the name and in conflict copies must match docs/CONFLICTS.md, and
//! no version is lost unless the policy deletes the loser.

use std::sync::Arc;
use std::time::Duration;

use cache::{CacheConfig, CacheLimit, ChunkCache, KdfParams, Passphrase};
use fs_core::provider::memory::MemoryProvider;
use fs_core::{ConflictLoser, ConflictPolicy, ConflictWinner, NodeId, OpenFlags, Vfs, VfsConfig};

const W: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: true,
    exclusive: false,
};

struct Outcome {
    at_name: Vec<u8>,
    copies: Vec<Vec<u8>>,
    winner: Option<ConflictWinner>,
}

/// `local` is written through the drive over "base", `remote` behind its back; after the
/// remote write the remote file's time is later than the local one unless `remote_first`.
async fn run(
    policy: ConflictPolicy,
    loser: ConflictLoser,
    local: &[u8],
    remote: &[u8],
    remote_first: bool,
) -> Outcome {
    let d = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        ChunkCache::open(
            CacheConfig::new(d.path(), CacheLimit::bytes(64 << 20)),
            &Passphrase::new("pw", KdfParams::FAST_INSECURE),
        )
        .unwrap(),
    );
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("/f.txt", b"base");
    let cfg = VfsConfig {
        write_back_delay: Duration::from_secs(3600),
        chunk_size: 64 << 10,
        provider_timeout: Duration::from_secs(5),
        poll_interval: Duration::ZERO,
        conflict: policy,
        conflict_loser: loser,
        ..VfsConfig::default()
    };
    let vfs = Vfs::new(cfg, cache, mem.clone()).unwrap();
    vfs.spawn_uploader();
    let ino = vfs.lookup(NodeId::ROOT, "f.txt").await.unwrap().ino;
    if remote_first {
        mem.put_file("/f.txt", remote);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let o = vfs.open(ino, W).await.unwrap();
    vfs.write(o.fh, 0, local).await.unwrap();
    vfs.flush(o.fh).await.unwrap();
    vfs.release(o.fh).await.unwrap();
    if !remote_first {
        tokio::time::sleep(Duration::from_millis(20)).await;
        mem.put_file("/f.txt", remote);
    }
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    let snap = mem.snapshot();
    let copies = snap
        .keys()
        .filter(|k| k.starts_with("f.conflict-") && k.ends_with(".txt"))
        .map(|k| mem.file(k).unwrap())
        .collect();
    let conflicts = vfs.conflicts();
    assert!(conflicts.len() <= 1, "{conflicts:?}");
    Outcome {
        at_name: mem.file("/f.txt").unwrap(),
        copies,
        winner: conflicts.first().map(|c| c.winner),
    }
}

#[tokio::test]
async fn keep_both_keeps_the_remote_at_the_name_whatever_the_loser_flag() {
    for loser in [ConflictLoser::Keep, ConflictLoser::Delete] {
        let o = run(ConflictPolicy::KeepBoth, loser, b"local", b"remote", false).await;
        assert_eq!(o.at_name, b"remote");
        assert_eq!(o.copies, vec![b"local".to_vec()]);
        assert_eq!(o.winner, Some(ConflictWinner::Remote));
    }
}

#[tokio::test]
async fn local_wins_and_the_remote_is_kept_or_replaced() {
    let o = run(
        ConflictPolicy::Local,
        ConflictLoser::Keep,
        b"local",
        b"remote",
        false,
    )
    .await;
    assert_eq!(
        (o.at_name.as_slice(), o.copies),
        (&b"local"[..], vec![b"remote".to_vec()])
    );
    assert_eq!(o.winner, Some(ConflictWinner::Local));
    let o = run(
        ConflictPolicy::Local,
        ConflictLoser::Delete,
        b"local",
        b"remote",
        false,
    )
    .await;
    assert_eq!((o.at_name.as_slice(), o.copies.len()), (&b"local"[..], 0));
}

#[tokio::test]
async fn remote_wins_and_the_local_is_kept_or_dropped() {
    let o = run(
        ConflictPolicy::Remote,
        ConflictLoser::Keep,
        b"local",
        b"remote",
        false,
    )
    .await;
    assert_eq!(
        (o.at_name.as_slice(), o.copies),
        (&b"remote"[..], vec![b"local".to_vec()])
    );
    let o = run(
        ConflictPolicy::Remote,
        ConflictLoser::Delete,
        b"local",
        b"remote",
        false,
    )
    .await;
    assert_eq!((o.at_name.as_slice(), o.copies.len()), (&b"remote"[..], 0));
    assert_eq!(o.winner, Some(ConflictWinner::Remote));
}

#[tokio::test]
async fn larger_and_smaller_compare_sizes() {
    let k = ConflictLoser::Keep;
    let o = run(ConflictPolicy::Larger, k, b"long local", b"rem", false).await;
    assert_eq!(
        (o.at_name.as_slice(), o.copies),
        (&b"long local"[..], vec![b"rem".to_vec()])
    );
    let o = run(ConflictPolicy::Larger, k, b"loc", b"long remote", false).await;
    assert_eq!(
        (o.at_name.as_slice(), o.copies),
        (&b"long remote"[..], vec![b"loc".to_vec()])
    );
    let o = run(ConflictPolicy::Smaller, k, b"loc", b"long remote", false).await;
    assert_eq!(
        (o.at_name.as_slice(), o.copies),
        (&b"loc"[..], vec![b"long remote".to_vec()])
    );
    // A tie goes to the remote version.
    let o = run(ConflictPolicy::Larger, k, b"same", b"size", false).await;
    assert_eq!(o.at_name, b"size");
}

#[tokio::test]
async fn newer_and_older_compare_modification_times() {
    let k = ConflictLoser::Keep;
    // The remote written after the local close: the remote is newer.
    let o = run(ConflictPolicy::Newer, k, b"local", b"remote", false).await;
    assert_eq!(
        (o.at_name.as_slice(), o.copies),
        (&b"remote"[..], vec![b"local".to_vec()])
    );
    let o = run(ConflictPolicy::Older, k, b"local", b"remote", false).await;
    assert_eq!(
        (o.at_name.as_slice(), o.copies),
        (&b"local"[..], vec![b"remote".to_vec()])
    );
    // The remote written first: the local is newer.
    let o = run(ConflictPolicy::Newer, k, b"local", b"remote", true).await;
    assert_eq!(
        (o.at_name.as_slice(), o.copies),
        (&b"local"[..], vec![b"remote".to_vec()])
    );
}
