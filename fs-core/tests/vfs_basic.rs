//! The core without FUSE over the in-memory provider: the basic life of files and directories,
//! write-back, and recovery after a crash.

use std::sync::Arc;
use std::time::Duration;

use cache::{CacheConfig, CacheLimit, ChunkCache, KdfParams, Passphrase};
use fs_core::provider::memory::{MemoryProvider, SnapshotEntry};
use fs_core::provider::{
    ByteStream, Capabilities, ListPage, ObjectAttrs, Precondition, Provider, RemoteEntry,
    RemotePath, Result as PResult, Version,
};
use fs_core::{NodeId, OpenFlags, RenameFlags, Vfs, VfsConfig};

fn cfg() -> VfsConfig {
    VfsConfig {
        write_back_delay: Duration::from_millis(50),
        chunk_size: 64 << 10,
        provider_timeout: Duration::from_secs(5),
        ..VfsConfig::default()
    }
}

/// Opens the cache; after an in-process "crash" the dropped drive's background tasks may hold
/// it a few milliseconds longer (a real kill takes them along), so a busy cache is retried.
fn open_cache(dir: &std::path::Path) -> Arc<ChunkCache> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match ChunkCache::open(
            CacheConfig::new(dir, CacheLimit::bytes(64 << 20)),
            &Passphrase::new("pw", KdfParams::FAST_INSECURE),
        ) {
            Ok(c) => return Arc::new(c),
            Err(cache::CacheError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

const W: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
    exclusive: false,
};

async fn write_file(vfs: &Vfs, parent: NodeId, name: &str, data: &[u8]) -> NodeId {
    let (attr, opened) = vfs.create(parent, name, 0o644, W).await.unwrap();
    let mut off = 0;
    for piece in data.chunks(10_000) {
        vfs.write(opened.fh, off, piece).await.unwrap();
        off += piece.len() as u64;
    }
    vfs.flush(opened.fh).await.unwrap();
    vfs.release(opened.fh).await.unwrap();
    attr.ino
}

async fn read_all(vfs: &Vfs, ino: NodeId) -> Vec<u8> {
    let o = vfs
        .open(
            ino,
            OpenFlags {
                read: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let b = vfs.read(o.fh, out.len() as u64, 100_000).await.unwrap();
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    vfs.release(o.fh).await.unwrap();
    out
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_directories_reach_the_provider() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("existing.txt", b"was there before");
    let vfs = Vfs::new(cfg(), open_cache(d.path()), mem.clone()).unwrap();
    vfs.spawn_uploader();

    let names: Vec<String> = vfs
        .readdir(NodeId::ROOT)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["existing.txt"]);
    let ex = vfs.lookup(NodeId::ROOT, "existing.txt").await.unwrap();
    assert_eq!(read_all(&vfs, ex.ino).await, b"was there before");

    let dir = vfs.mkdir(NodeId::ROOT, "docs", 0o755).await.unwrap();
    let big = data(300_000, 1);
    let f = write_file(&vfs, dir.ino, "big.bin", &big).await;
    assert_eq!(read_all(&vfs, f).await, big, "reads its own writes at once");
    write_file(&vfs, dir.ino, "small.txt", b"hello").await;
    vfs.rename(
        dir.ino,
        "small.txt",
        NodeId::ROOT,
        "moved.txt",
        RenameFlags::default(),
    )
    .await
    .unwrap();
    vfs.symlink(NodeId::ROOT, "link", "docs/big.bin")
        .await
        .unwrap();
    vfs.unlink(NodeId::ROOT, "existing.txt").await.unwrap();
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();

    let snap = mem.snapshot();
    assert_eq!(
        snap.get("docs/big.bin"),
        Some(&SnapshotEntry::File(big.clone()))
    );
    assert_eq!(
        snap.get("moved.txt"),
        Some(&SnapshotEntry::File(b"hello".to_vec()))
    );
    assert_eq!(
        snap.get("link"),
        Some(&SnapshotEntry::Symlink("docs/big.bin".into()))
    );
    assert_eq!(snap.get("existing.txt"), None);
    assert_eq!(snap.get("docs"), Some(&SnapshotEntry::Dir));
    assert_eq!(snap.len(), 4, "{snap:?}");

    // Overwrite the middle of the big file and truncate it.
    let o = vfs.open(f, W).await.unwrap();
    vfs.write(o.fh, 100_000, b"PATCH").await.unwrap();
    vfs.release(o.fh).await.unwrap();
    vfs.setattr(
        f,
        fs_core::SetAttr {
            size: Some(200_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    let mut want = big[..200_000].to_vec();
    want[100_000..100_005].copy_from_slice(b"PATCH");
    assert_eq!(mem.file("docs/big.bin").unwrap(), want);
    assert_eq!(read_all(&vfs, f).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_upload_loses_nothing_that_was_closed() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    let content = data(200_000, 7);
    {
        let mut c = cfg();
        c.write_back_delay = Duration::from_secs(3600);
        let vfs = Vfs::new(c, open_cache(d.path()), mem.clone()).unwrap();
        let dir = vfs.mkdir(NodeId::ROOT, "a", 0o755).await.unwrap();
        write_file(&vfs, dir.ino, "f", &content).await;
        write_file(&vfs, NodeId::ROOT, "tiny", b"inline").await;
        // Written but never closed: may be lost, must not appear half.
        let (_, o) = vfs
            .create(NodeId::ROOT, "unclosed", 0o644, W)
            .await
            .unwrap();
        vfs.write(o.fh, 0, &data(150_000, 9)).await.unwrap();
        // "Crash": drop everything without flushing or checkpointing.
    }
    assert!(
        mem.snapshot().is_empty(),
        "nothing was uploaded before the crash"
    );
    let vfs = Vfs::new(cfg(), open_cache(d.path()), mem.clone()).unwrap();
    vfs.spawn_uploader();
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    let snap = mem.snapshot();
    assert_eq!(snap.get("a/f"), Some(&SnapshotEntry::File(content)));
    assert_eq!(
        snap.get("tiny"),
        Some(&SnapshotEntry::File(b"inline".to_vec()))
    );
    assert_eq!(
        snap.get("unclosed"),
        Some(&SnapshotEntry::File(Vec::new())),
        "a file created before the crash exists, as it was last committed (empty), never half"
    );
    assert_eq!(
        vfs.cache().usage().dirty_chunks,
        0,
        "every dirty chunk was uploaded or dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remount_lists_from_the_checkpoint_and_reads_from_the_cache() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("dir/data.bin", &data(500_000, 3));
    {
        let vfs = Vfs::new(cfg(), open_cache(d.path()), mem.clone()).unwrap();
        vfs.spawn_uploader();
        let dir = vfs.lookup(NodeId::ROOT, "dir").await.unwrap();
        let f = vfs.lookup(dir.ino, "data.bin").await.unwrap();
        assert_eq!(read_all(&vfs, f.ino).await, data(500_000, 3));
        vfs.flush_all(Duration::from_secs(5)).await.unwrap();
        vfs.close(Duration::from_secs(5)).await.unwrap();
    }
    mem.reset_counters();
    // Even with the provider unreachable, the remount lists and reads from what it knew.
    mem.set_unreachable(true);
    let vfs = Vfs::new(cfg(), open_cache(d.path()), mem.clone()).unwrap();
    let dir = vfs.lookup(NodeId::ROOT, "dir").await.unwrap();
    let f = vfs.lookup(dir.ino, "data.bin").await.unwrap();
    assert_eq!(read_all(&vfs, f.ino).await, data(500_000, 3));
    let c = mem.counters();
    assert_eq!(c.read, 0, "no byte fetched again after a remount: {c:?}");
    mem.set_unreachable(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_three_times_the_cache_is_written_and_read_within_the_limit() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    let limit = 4u64 << 20;
    let cache = Arc::new(
        ChunkCache::open(
            CacheConfig::new(d.path(), CacheLimit::bytes(limit)),
            &Passphrase::new("pw", KdfParams::FAST_INSECURE),
        )
        .unwrap(),
    );
    let vfs = Vfs::new(cfg(), cache.clone(), mem.clone()).unwrap();
    vfs.spawn_uploader();
    let big = data(12 << 20, 5);
    let (attr, o) = vfs.create(NodeId::ROOT, "big", 0o644, W).await.unwrap();
    for (k, piece) in big.chunks(128 << 10).enumerate() {
        vfs.write(o.fh, (k * (128 << 10)) as u64, piece)
            .await
            .unwrap();
        assert!(cache.usage().used_bytes <= limit);
    }
    vfs.release(o.fh).await.unwrap();
    vfs.flush_all(Duration::from_secs(20)).await.unwrap();
    assert!(
        mem.file("big").unwrap() == big,
        "the provider has every byte"
    );
    assert_eq!(read_all(&vfs, attr.ino).await, big);
    assert!(cache.usage().used_bytes <= limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_after_a_crash_keeps_the_last_local_commit_and_the_remote_change() {
    // Two commits of `f` are queued when a crash comes (after it both are replayed, being
    // recovered); meanwhile `f` changed on the provider. The second commit was made on the
    // same old version as the first: it must conflict too, not overwrite the remote change
    // (it did once the first conflict had taken the remote version as the node's), and the
    // drive shows the remote version at the name in the end. The first commit, replaced by
    // the user before the crash, makes no copy of its own (without a crash it would not have
    // been uploaded either): the copy holds what the user has.
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    let (first, second, theirs) = (data(100, 1), data(70_000, 2), data(50, 3));
    {
        let vfs = Vfs::new(cfg(), open_cache(d.path()), mem.clone()).unwrap();
        vfs.spawn_uploader();
        write_file(&vfs, NodeId::ROOT, "f", b"original").await;
        vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    }
    {
        let mut c = cfg();
        c.write_back_delay = Duration::from_secs(3600);
        let vfs = Vfs::new(c, open_cache(d.path()), mem.clone()).unwrap();
        vfs.spawn_uploader();
        write_file(&vfs, NodeId::ROOT, "f", &first).await;
        write_file(&vfs, NodeId::ROOT, "f", &second).await;
        // "Crash".
    }
    mem.put_file("f", &theirs);
    let vfs = Vfs::new(cfg(), open_cache(d.path()), mem.clone()).unwrap();
    vfs.spawn_uploader();
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    let snap = mem.snapshot();
    assert_eq!(snap.get("f"), Some(&SnapshotEntry::File(theirs.clone())));
    let copies: Vec<&Vec<u8>> = snap
        .iter()
        .filter(|(k, _)| k.starts_with("f.conflict-"))
        .map(|(_, e)| match e {
            SnapshotEntry::File(b) => b,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(copies, [&second], "{:?}", snap.keys().collect::<Vec<_>>());
    assert!(!copies.contains(&&first));
    let f = vfs.lookup(NodeId::ROOT, "f").await.unwrap();
    assert_eq!(read_all(&vfs, f.ino).await, theirs);
    assert_eq!(vfs.cache().usage().dirty_chunks, 0);
    assert_eq!(vfs.status().conflicts, 1);
}

/// The memory provider, but a rename returns only a while after it took effect (the window in
/// which the provider has the new name and the drive does not know it yet).
struct SlowRenameAnswers(Arc<MemoryProvider>, Duration);

#[async_trait::async_trait]
impl Provider for SlowRenameAnswers {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn stat(&self, path: &RemotePath) -> PResult<RemoteEntry> {
        self.0.stat(path).await
    }
    async fn list(&self, dir: &RemotePath, page: Option<String>) -> PResult<ListPage> {
        self.0.list(dir, page).await
    }
    async fn read(
        &self,
        path: &RemotePath,
        version: &Version,
        offset: u64,
        len: u64,
    ) -> PResult<ByteStream> {
        self.0.read(path, version, offset, len).await
    }
    async fn write(
        &self,
        path: &RemotePath,
        body: ByteStream,
        len: u64,
        pre: Precondition,
        attrs: ObjectAttrs,
    ) -> PResult<RemoteEntry> {
        self.0.write(path, body, len, pre, attrs).await
    }
    async fn delete(&self, path: &RemotePath, pre: Precondition) -> PResult<()> {
        self.0.delete(path, pre).await
    }
    async fn mkdir(&self, path: &RemotePath) -> PResult<RemoteEntry> {
        self.0.mkdir(path).await
    }
    async fn rmdir(&self, path: &RemotePath) -> PResult<()> {
        self.0.rmdir(path).await
    }
    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> PResult<RemoteEntry> {
        let r = self.0.rename(from, to, replace).await;
        tokio::time::sleep(self.1).await;
        r
    }
    async fn symlink(&self, path: &RemotePath, target: &str) -> PResult<RemoteEntry> {
        self.0.symlink(path, target).await
    }
    async fn set_attrs(&self, path: &RemotePath, attrs: ObjectAttrs) -> PResult<RemoteEntry> {
        self.0.set_attrs(path, attrs).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_while_a_rename_of_the_file_takes_effect_waits_for_it() {
    // The file was never read, so its bytes must come from the provider, where the rename has
    // happened: the drive still had it at the old name (its record in flight), the read got
    // NotFound. It now waits for the rename's outcome and reads at the new name.
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    let content = data(1000, 4);
    mem.put_file("b", &content);
    let slow = Arc::new(SlowRenameAnswers(mem.clone(), Duration::from_millis(300)));
    let vfs = Vfs::new(cfg(), open_cache(d.path()), slow).unwrap();
    vfs.spawn_uploader();
    let b = vfs.lookup(NodeId::ROOT, "b").await.unwrap();
    vfs.rename(NodeId::ROOT, "b", NodeId::ROOT, "a", RenameFlags::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(mem.file("a").is_some(), "the provider renamed it already");
    assert_eq!(read_all(&vfs, b.ino).await, content);
    vfs.flush_all(Duration::from_secs(10)).await.unwrap();
    assert_eq!(read_all(&vfs, b.ino).await, content);
}

/// A file read from start to end costs one provider read (a stream from the first read to the
/// end of the file; 401 before the streams), not one per chunk, including the last chunks,
/// still being stored when the stream ends; a jump ahead starts another stream (after the
/// jump's own chunk and the next, fetched on their own); and every byte read is the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_read_is_one_stream_not_a_request_per_chunk() {
    let d = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemoryProvider::new());
    let chunks = 400u64;
    let cs = cfg().chunk_size;
    let content = data((chunks * cs) as usize + 12_345, 9);
    mem.put_file("big.bin", &content);
    let vfs = Vfs::new(cfg(), open_cache(d.path()), mem.clone()).unwrap();
    let f = vfs.lookup(NodeId::ROOT, "big.bin").await.unwrap();
    mem.reset_counters();
    assert!(read_all(&vfs, f.ino).await == content, "sequential read");
    let c = mem.counters();
    assert_eq!(
        c.read,
        1,
        "{} chunks read with {} provider reads: {c:?}",
        chunks + 1,
        c.read
    );
    // A jump: the first 10 chunks, then from chunk 300 on (another cache, all cold).
    let d2 = tempfile::tempdir().unwrap();
    let vfs = Vfs::new(cfg(), open_cache(d2.path()), mem.clone()).unwrap();
    let f = vfs.lookup(NodeId::ROOT, "big.bin").await.unwrap();
    let o = vfs
        .open(
            f.ino,
            OpenFlags {
                read: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    mem.reset_counters();
    let step = cs as u32;
    for (from, n) in [(0u64, 10u64), (300, 101)] {
        for i in from..from + n {
            let b = vfs.read(o.fh, i * cs, step).await.unwrap();
            let start = (i * cs) as usize;
            let end = (start + step as usize).min(content.len());
            assert!(b[..] == content[start..end], "chunk {i}");
        }
    }
    let c = mem.counters();
    assert!(c.read <= 4, "two runs of sequential reads: {c:?}");
}
