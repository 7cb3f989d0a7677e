//! Polling over the in-memory provider: `poll_once` brings remote changes into the namespace,
//! and a file open across a remote change fails rather than mixing versions. Close-to-open:
//! an open after `attr_timeout` asks the provider for the file's version.

use std::sync::Arc;
use std::time::Duration;

use cache::{CacheConfig, CacheLimit, ChunkCache, KdfParams, Passphrase};
use fs_core::provider::memory::MemoryProvider;
use fs_core::{NodeId, OpenFlags, Vfs, VfsConfig};

fn vfs(dir: &std::path::Path, mem: Arc<MemoryProvider>) -> Vfs {
    // Attributes trusted for long too: no open asks the provider.
    vfs_with(dir, mem, Duration::from_secs(3600))
}

fn vfs_with(dir: &std::path::Path, mem: Arc<MemoryProvider>, attr_timeout: Duration) -> Vfs {
    let cache = Arc::new(
        ChunkCache::open(
            CacheConfig::new(dir, CacheLimit::bytes(64 << 20)),
            &Passphrase::new("pw", KdfParams::FAST_INSECURE),
        )
        .unwrap(),
    );
    let cfg = VfsConfig {
        chunk_size: 4 << 10,
        provider_timeout: Duration::from_secs(5),
        // Listings trusted for long: only the poll can bring news.
        dir_cache_time: Duration::from_secs(3600),
        poll_interval: Duration::ZERO,
        attr_timeout,
        ..VfsConfig::default()
    };
    Vfs::new(cfg, cache, mem).unwrap()
}

const R: OpenFlags = OpenFlags {
    read: true,
    write: false,
    append: false,
    truncate: false,
    exclusive: false,
};

async fn read_all(v: &Vfs, ino: NodeId) -> Vec<u8> {
    let o = v.open(ino, R).await.unwrap();
    let mut out = Vec::new();
    loop {
        let b = v.read(o.fh, out.len() as u64, 1 << 20).await.unwrap();
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    v.release(o.fh).await.unwrap();
    out
}

async fn names(v: &Vfs, dir: NodeId) -> Vec<String> {
    let mut n: Vec<String> = v
        .readdir(dir)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != "." && n != "..")
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn a_poll_brings_new_changed_and_removed_entries() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.mkdir_all("/dir");
    mem.put_file("/dir/a.txt", b"one");
    mem.put_file("/dir/gone.txt", b"bye");
    let v = vfs(d.path(), mem.clone());
    let dir = v.lookup(NodeId::ROOT, "dir").await.unwrap().ino;
    let a = v.lookup(dir, "a.txt").await.unwrap().ino;
    assert_eq!(read_all(&v, a).await, b"one");
    assert_eq!(names(&v, dir).await, ["a.txt", "gone.txt"]);

    mem.put_file("/dir/a.txt", b"two, longer");
    mem.remove("/dir/gone.txt");
    mem.put_file("/dir/new.txt", b"new");
    // Not seen before the poll: the listing is trusted for an hour.
    assert_eq!(names(&v, dir).await, ["a.txt", "gone.txt"]);
    assert!(v.poll_once().await >= 2, "root and dir are listed again");
    assert_eq!(names(&v, dir).await, ["a.txt", "new.txt"]);
    assert_eq!(read_all(&v, a).await, b"two, longer");
    assert_eq!(v.getattr(a).await.unwrap().size, 11);
}

#[tokio::test]
async fn an_open_file_replaced_remotely_fails_instead_of_mixing() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("/big", &[1u8; 64 << 10]);
    let v = vfs(d.path(), mem.clone());
    let ino = v.lookup(NodeId::ROOT, "big").await.unwrap().ino;
    let o = v.open(ino, R).await.unwrap();
    assert_eq!(
        v.read(o.fh, 0, 4096).await.unwrap().as_ref(),
        &[1u8; 4096][..]
    );
    mem.put_file("/big", &[2u8; 64 << 10]);
    v.poll_once().await;
    let e = v
        .read(o.fh, 4096, 4096)
        .await
        .expect_err("a read after the remote change");
    assert!(e.to_string().contains("changed on the remote"), "{e}");
    v.release(o.fh).await.unwrap();
    assert_eq!(read_all(&v, ino).await, vec![2u8; 64 << 10]);
}

#[tokio::test]
async fn an_unreachable_provider_keeps_what_is_known() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("/kept.txt", b"kept");
    let v = vfs(d.path(), mem.clone());
    assert_eq!(names(&v, NodeId::ROOT).await, ["kept.txt"]);
    mem.set_unreachable(true);
    v.poll_once().await;
    assert_eq!(
        names(&v, NodeId::ROOT).await,
        ["kept.txt"],
        "offline is not deleted"
    );
}

#[tokio::test]
async fn an_open_after_the_attr_timeout_sees_the_new_version() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("/doc.txt", b"first");
    mem.put_file("/gone.txt", b"soon gone");
    let v = vfs_with(d.path(), mem.clone(), Duration::ZERO);
    let ino = v.lookup(NodeId::ROOT, "doc.txt").await.unwrap().ino;
    assert_eq!(read_all(&v, ino).await, b"first");
    let stats = mem.counters().stat;

    mem.put_file("/doc.txt", b"second, longer");
    // No poll, the listing trusted for an hour: only the open asks.
    assert_eq!(read_all(&v, ino).await, b"second, longer");
    assert_eq!(v.getattr(ino).await.unwrap().size, 14);
    assert!(mem.counters().stat > stats, "the open asked the provider");

    let gone = v.lookup(NodeId::ROOT, "gone.txt").await.unwrap().ino;
    mem.remove("/gone.txt");
    let e = v
        .open(gone, R)
        .await
        .expect_err("opening a file removed remotely");
    assert_eq!(e, fs_core::FsError::NotFound);
    assert_eq!(names(&v, NodeId::ROOT).await, ["doc.txt"]);

    // Offline, the known version opens at once.
    mem.set_unreachable(true);
    assert_eq!(read_all(&v, ino).await, b"second, longer");
}

#[tokio::test]
async fn an_open_within_the_attr_timeout_does_not_ask() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("/doc.txt", b"first");
    let v = vfs(d.path(), mem.clone());
    let ino = v.lookup(NodeId::ROOT, "doc.txt").await.unwrap().ino;
    assert_eq!(read_all(&v, ino).await, b"first");
    let stats = mem.counters().stat;
    mem.put_file("/doc.txt", b"second");
    assert_eq!(
        read_all(&v, ino).await,
        b"first",
        "trusted until the timeout"
    );
    assert_eq!(mem.counters().stat, stats, "no provider call on open");
}
