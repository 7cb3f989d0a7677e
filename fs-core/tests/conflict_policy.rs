//! Every `--conflict` policy and `--conflict-loser` over the in-memory provider: a file is
//! read (so the drive knows its version), changed here and changed behind the drive's back,
//! then flushed. What is at the name and in conflict copies must match docs/CONFLICTS.md, and
//! no version is lost unless the policy deletes the loser.

use std::sync::Arc;
use std::time::Duration;

use cache::{CacheConfig, CacheLimit, ChunkCache, KdfParams, Passphrase};
use fs_core::provider::memory::MemoryProvider;
use fs_core::{
    ConflictLoser, ConflictPolicy, ConflictWinner, NodeId, OpenFlags, RenameFlags, Vfs, VfsConfig,
};

const W: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: true,
    exclusive: false,
};

/// A 64 MiB cache in `dir` with the fast test key parameters.
fn test_cache(dir: &std::path::Path) -> Arc<ChunkCache> {
    Arc::new(
        ChunkCache::open(
            CacheConfig::new(dir, CacheLimit::bytes(64 << 20)),
            &Passphrase::new("pw", KdfParams::FAST_INSECURE),
        )
        .unwrap(),
    )
}

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
    let cache = test_cache(d.path());
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

/// `--auto-merge` over keep-both: "base" text is read through the drive (so its chunks are
/// cached) unless `read_base` is false, rewritten here as `local`, and as `remote` behind the
/// drive's back. Answers what is at the name, the conflict copies, and what the drive shows.
async fn merge_run(
    base: &str,
    local: &str,
    remote: &str,
    read_base: bool,
) -> (String, Vec<String>, String) {
    let d = tempfile::tempdir().unwrap();
    let cache = test_cache(d.path());
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("/f.txt", base.as_bytes());
    let cfg = VfsConfig {
        write_back_delay: Duration::from_secs(3600),
        chunk_size: 64 << 10,
        provider_timeout: Duration::from_secs(5),
        poll_interval: Duration::ZERO,
        auto_merge: true,
        ..VfsConfig::default()
    };
    let vfs = Vfs::new(cfg, cache, mem.clone()).unwrap();
    vfs.spawn_uploader();
    let ino = vfs.lookup(NodeId::ROOT, "f.txt").await.unwrap().ino;
    let read_all = |vfs: Vfs| async move {
        let o = vfs.open(ino, R).await.unwrap();
        let b = vfs.read(o.fh, 0, 1 << 20).await.unwrap();
        vfs.release(o.fh).await.unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    };
    if read_base {
        assert_eq!(read_all(vfs.clone()).await, base);
    }
    let o = vfs.open(ino, W).await.unwrap();
    vfs.write(o.fh, 0, local.as_bytes()).await.unwrap();
    vfs.flush(o.fh).await.unwrap();
    vfs.release(o.fh).await.unwrap();
    mem.put_file("/f.txt", remote.as_bytes());
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let copies = mem
        .snapshot()
        .keys()
        .filter(|k| k.starts_with("f.conflict-"))
        .map(|k| text(mem.file(k).unwrap()))
        .collect();
    let shown = read_all(vfs.clone()).await;
    (text(mem.file("/f.txt").unwrap()), copies, shown)
}

const R: OpenFlags = OpenFlags {
    read: true,
    write: false,
    append: false,
    truncate: false,
    exclusive: false,
};

#[tokio::test]
async fn auto_merge_joins_changes_to_different_lines() {
    let (at_name, copies, shown) = merge_run(
        "one\ntwo\nthree\nfour\nfive\n",
        "ONE\ntwo\nthree\nfour\nfive\n",
        "one\ntwo\nthree\nfour\nFIVE\n",
        true,
    )
    .await;
    assert_eq!(at_name, "ONE\ntwo\nthree\nfour\nFIVE\n");
    assert!(copies.is_empty(), "{copies:?}");
    assert_eq!(shown, at_name, "the drive shows the merged text");
}

#[tokio::test]
async fn auto_merge_of_overlapping_changes_falls_back_to_the_policy() {
    let (at_name, copies, _) =
        merge_run("one\ntwo\n", "one\nTWO here\n", "one\nTWO there\n", true).await;
    assert_eq!(at_name, "one\nTWO there\n", "keep-both: the remote stays");
    assert_eq!(copies, ["one\nTWO here\n"]);
}

#[tokio::test]
async fn auto_merge_without_the_base_in_the_cache_falls_back_to_the_policy() {
    let (at_name, copies, _) = merge_run("one\ntwo\n", "ONE\ntwo\n", "one\nTWO\n", false).await;
    assert_eq!(at_name, "one\nTWO\n");
    assert_eq!(copies, ["ONE\ntwo\n"]);
}

#[tokio::test]
async fn auto_merge_leaves_binary_files_to_the_policy() {
    let (at_name, copies, _) = merge_run("a\0b\n", "A\0b\n", "a\0B\n", true).await;
    assert_eq!(at_name, "a\0B\n");
    assert_eq!(copies, ["A\0b\n"]);
}

// ---------------------------------------------------------------------------------------------
// Namespace changes queued while the remote replaced or removed their directory: the drive
// cannot reach the provider while the change is made and the provider changes behind its back,
// then it can again and `flush_all` applies the queue.

async fn held_drive(mem: &Arc<MemoryProvider>, d: &std::path::Path) -> Vfs {
    let cache = test_cache(d);
    let cfg = VfsConfig {
        write_back_delay: Duration::from_secs(3600),
        chunk_size: 64 << 10,
        provider_timeout: Duration::from_secs(5),
        poll_interval: Duration::ZERO,
        ..VfsConfig::default()
    };
    let vfs = Vfs::new(cfg, cache, mem.clone()).unwrap();
    vfs.spawn_uploader();
    vfs
}

fn names(mem: &MemoryProvider) -> Vec<String> {
    mem.snapshot().keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_mkdir_whose_parent_became_a_file_keeps_both() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.mkdir_all("a");
    let vfs = held_drive(&mem, d.path()).await;
    let a = vfs.lookup(NodeId::ROOT, "a").await.unwrap().ino;
    let _ = vfs.lookup(a, "c").await;
    mem.set_unreachable(true);
    vfs.mkdir(a, "c", 0o755).await.unwrap();
    mem.put_file("a", b"theirs");
    mem.set_unreachable(false);
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    let snap = mem.snapshot();
    assert!(
        matches!(
            snap.get("a/c"),
            Some(fs_core::provider::memory::SnapshotEntry::Dir)
        ),
        "{:?}",
        names(&mem)
    );
    let aside: Vec<_> = snap
        .keys()
        .filter(|k| k.starts_with("a.conflict-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", names(&mem));
    assert_eq!(mem.file(aside[0]).unwrap(), b"theirs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_rename_into_a_directory_removed_remotely_makes_it_again() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.mkdir_all("a");
    mem.put_file("f", b"ours");
    let vfs = held_drive(&mem, d.path()).await;
    let a = vfs.lookup(NodeId::ROOT, "a").await.unwrap().ino;
    vfs.lookup(NodeId::ROOT, "f").await.unwrap();
    let _ = vfs.lookup(a, "f").await;
    mem.set_unreachable(true);
    vfs.rename(NodeId::ROOT, "f", a, "f", RenameFlags::default())
        .await
        .unwrap();
    mem.remove_returning("a");
    mem.set_unreachable(false);
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        mem.file("a/f").as_deref(),
        Some(&b"ours"[..]),
        "{:?}",
        names(&mem)
    );
    assert!(mem.file("f").is_none(), "{:?}", names(&mem));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_rmdir_of_a_directory_the_remote_replaced_by_a_file_keeps_the_file() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.mkdir_all("a");
    let vfs = held_drive(&mem, d.path()).await;
    let a = vfs.lookup(NodeId::ROOT, "a").await.unwrap().ino;
    let _ = vfs.lookup(a, "x").await;
    mem.set_unreachable(true);
    vfs.rmdir(NodeId::ROOT, "a").await.unwrap();
    mem.put_file("a", b"theirs");
    mem.set_unreachable(false);
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    assert_eq!(mem.file("a").as_deref(), Some(&b"theirs"[..]));
}
