//! Provider conformance: one library of scenarios, each an async fn over a [`Backing`] (a
//! provider plus a way to see and change its backing state behind its back), run against both
//! `LocalProvider` (on a temporary folder) and `MemoryProvider` (also with a page size of 2), so
//! that the in-memory test double behaves like the real thing. Local-only behaviour (unreachable
//! root, a file changed by another program mid-read, cancelled writes, hidden temporary files)
//! is tested at the end.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fs_core::provider::local::{LocalProvider, TMP_PREFIX};
use fs_core::provider::memory::MemoryProvider;
use fs_core::provider::s3::{S3Config, S3Provider};
use fs_core::provider::sftp::{SftpConfig, SftpProvider};
use fs_core::provider::webdav::{WebDavConfig, WebDavProvider, APACHE_TMP_PREFIX};
use fs_core::provider::{
    collect, once, ByteStream, EntryKind, ObjectAttrs, Precondition, Provider, ProviderError,
    RemoteEntry, RemotePath, Version,
};
use futures::StreamExt;

// ---------------------------------------------------------------------------------------------
// Backings

/// A provider under test and its backing state.
trait Backing: Send + Sync {
    fn provider(&self) -> &dyn Provider;
    /// The bytes of the file at `path` in the backing store, if a file is there.
    fn file(&self, path: &str) -> Option<Vec<u8>>;
    /// Whether anything is at `path` in the backing store.
    fn exists(&self, path: &str) -> bool;
    /// Every name in directory `dir` of the backing store, hidden ones included.
    fn raw_names(&self, dir: &str) -> Vec<String>;
    /// Behind the provider's back: puts a file (parents must exist).
    fn put_file(&self, path: &str, data: &[u8]);
    /// The provider's list page size, if it pages.
    fn page_size(&self) -> Option<usize>;
    /// What the provider is expected to offer: (atomic rename, symlinks, attributes).
    fn capabilities(&self) -> (bool, bool, bool) {
        (true, true, true)
    }
}

struct Local {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    provider: LocalProvider,
}

impl Local {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("remote");
        std::fs::create_dir(&root).unwrap();
        let provider = LocalProvider::new(root.clone()).unwrap();
        Local {
            _tmp: tmp,
            root,
            provider,
        }
    }

    fn abs(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
}

impl Backing for Local {
    fn provider(&self) -> &dyn Provider {
        &self.provider
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        let p = self.abs(path);
        let md = std::fs::symlink_metadata(&p).ok()?;
        md.is_file().then(|| std::fs::read(&p).unwrap())
    }
    fn exists(&self, path: &str) -> bool {
        std::fs::symlink_metadata(self.abs(path)).is_ok()
    }
    fn raw_names(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.abs(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
    fn put_file(&self, path: &str, data: &[u8]) {
        std::fs::write(self.abs(path), data).unwrap();
    }
    fn page_size(&self) -> Option<usize> {
        None
    }
}

struct Memory {
    provider: MemoryProvider,
}

impl Memory {
    fn new() -> Self {
        Memory {
            provider: MemoryProvider::new(),
        }
    }
    fn paged() -> Self {
        Memory {
            provider: MemoryProvider::with_page_size(2),
        }
    }
}

impl Backing for Memory {
    fn provider(&self) -> &dyn Provider {
        &self.provider
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.provider.file(path)
    }
    fn exists(&self, path: &str) -> bool {
        self.provider.snapshot().contains_key(path)
    }
    fn raw_names(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.provider
            .snapshot()
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .map(str::to_string)
            .collect()
    }
    fn put_file(&self, path: &str, data: &[u8]) {
        self.provider.put_file(path, data);
    }
    fn page_size(&self) -> Option<usize> {
        Some(self.provider.page_size())
    }
}

/// A bucket of the test S3 server (moto, started by the harness on 127.0.0.1), under a key
/// prefix so that keys outside the tree are seen to stay untouched. The backing state is seen
/// through a second provider over the same bucket and prefix (`raw`), and through raw key
/// listings.
struct S3 {
    provider: S3Provider,
    raw: S3Provider,
    bucket: String,
}

fn s3_config(bucket: &str, prefix: &str) -> S3Config {
    let server = harness::servers::s3();
    S3Config {
        endpoint: server.endpoint.clone(),
        region: harness::servers::S3_REGION.into(),
        bucket: bucket.into(),
        prefix: prefix.into(),
        path_style: true,
        access_key: harness::servers::S3_ACCESS_KEY.into(),
        secret_key: harness::servers::S3_SECRET_KEY.into(),
        session_token: None,
        request_timeout: Duration::from_secs(20),
    }
}

impl S3 {
    async fn new(what: &str, page_size: Option<usize>) -> Self {
        let bucket = harness::servers::s3().bucket(what);
        let mut provider = S3Provider::new(s3_config(&bucket, "tree/root")).unwrap();
        if let Some(n) = page_size {
            provider = provider.with_list_page_size(n);
        }
        provider.create_bucket().await.unwrap();
        let raw = S3Provider::new(s3_config(&bucket, "tree/root")).unwrap();
        S3 {
            provider,
            raw,
            bucket,
        }
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }

    fn keys(&self) -> Vec<String> {
        self.block_on(self.raw.object_keys()).unwrap()
    }
}

impl Backing for S3 {
    fn provider(&self) -> &dyn Provider {
        &self.provider
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        let e = self.block_on(self.raw.stat(&rp(path))).ok()?;
        if e.kind != EntryKind::File {
            return None;
        }
        Some(self.block_on(async {
            collect(
                self.raw
                    .read(&rp(path), &e.version, 0, u64::MAX)
                    .await
                    .unwrap(),
            )
            .await
            .unwrap()
        }))
    }
    fn exists(&self, path: &str) -> bool {
        let dir = format!("{path}/");
        let link = format!("{path}{}", fs_core::provider::s3::LINK_SUFFIX);
        self.keys()
            .iter()
            .any(|k| k == path || *k == link || k.starts_with(&dir))
    }
    fn raw_names(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut names: Vec<String> = self
            .keys()
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter_map(|rest| rest.split('/').next())
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        names.dedup();
        names
    }
    fn put_file(&self, path: &str, data: &[u8]) {
        self.block_on(put(&self.raw, path, data));
    }
    fn page_size(&self) -> Option<usize> {
        self.provider.list_page_size()
    }
    fn capabilities(&self) -> (bool, bool, bool) {
        (false, true, false)
    }
}

/// A fresh folder of the test WebDAV server (Apache with mod_dav, started by the harness on
/// 127.0.0.1). The backing state is the folder on disk, which Apache serves: the truly
/// independent view.
struct WebDav {
    provider: WebDavProvider,
    folder: harness::webdav_server::DavFolder,
}

fn webdav_config(url: &str) -> WebDavConfig {
    WebDavConfig {
        url: url.to_string(),
        username: None,
        password: None,
        request_timeout: Duration::from_secs(20),
    }
}

impl WebDav {
    fn new(what: &str) -> Self {
        let folder = harness::webdav_server::webdav().folder(what);
        let provider = WebDavProvider::new(webdav_config(&folder.url)).unwrap();
        WebDav { provider, folder }
    }

    fn abs(&self, path: &str) -> PathBuf {
        self.folder.path.join(path)
    }
}

impl Backing for WebDav {
    fn provider(&self) -> &dyn Provider {
        &self.provider
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        let p = self.abs(path);
        let md = std::fs::symlink_metadata(&p).ok()?;
        md.is_file().then(|| std::fs::read(&p).unwrap())
    }
    /// A symlink `l` is the file `l.rclonelink`.
    fn exists(&self, path: &str) -> bool {
        let link = format!("{path}{}", fs_core::provider::s3::LINK_SUFFIX);
        std::fs::symlink_metadata(self.abs(path)).is_ok()
            || std::fs::symlink_metadata(self.abs(&link)).is_ok()
    }
    /// Gives Apache a moment to remove the temporary file of an upload this provider aborted
    /// (it does once it notices the connection closed).
    fn raw_names(&self, dir: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut names: Vec<String> = std::fs::read_dir(self.abs(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let in_flight = names.iter().any(|n| n.starts_with(APACHE_TMP_PREFIX));
            if !in_flight || std::time::Instant::now() > deadline {
                return names;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn put_file(&self, path: &str, data: &[u8]) {
        std::fs::write(self.abs(path), data).unwrap();
        harness::webdav_server::webdav().give(&self.abs(path));
    }
    fn page_size(&self) -> Option<usize> {
        None
    }
    fn capabilities(&self) -> (bool, bool, bool) {
        (true, true, false)
    }
}

/// A fresh folder of the test SFTP server (OpenSSH's sshd with internal-sftp, started by the
/// harness on 127.0.0.1). The server is this machine: the backing state is the folder on disk.
struct Sftp {
    provider: SftpProvider,
    folder: harness::sftp_server::SftpFolder,
}

fn sftp_config(server: &harness::sftp_server::SftpServer, remote: &str) -> SftpConfig {
    SftpConfig {
        host: server.host.clone(),
        port: server.port,
        user: server.user.clone(),
        path: remote.to_string(),
        key: server.client_key.clone(),
        key_passphrase: None,
        known_hosts: Some(server.known_hosts.clone()),
        host_key_fingerprint: None,
        request_timeout: Duration::from_secs(20),
    }
}

impl Sftp {
    fn new(what: &str) -> Self {
        Self::on(harness::sftp_server::sftp(), what)
    }

    fn on(server: &harness::sftp_server::SftpServer, what: &str) -> Self {
        let folder = server.folder(what);
        let provider = SftpProvider::new(sftp_config(server, &folder.remote)).unwrap();
        Sftp { provider, folder }
    }

    fn abs(&self, path: &str) -> PathBuf {
        self.folder.path.join(path)
    }
}

impl Backing for Sftp {
    fn provider(&self) -> &dyn Provider {
        &self.provider
    }
    fn file(&self, path: &str) -> Option<Vec<u8>> {
        let p = self.abs(path);
        let md = std::fs::symlink_metadata(&p).ok()?;
        md.is_file().then(|| std::fs::read(&p).unwrap())
    }
    fn exists(&self, path: &str) -> bool {
        std::fs::symlink_metadata(self.abs(path)).is_ok()
    }
    fn raw_names(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.abs(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
    fn put_file(&self, path: &str, data: &[u8]) {
        std::fs::write(self.abs(path), data).unwrap();
    }
    fn page_size(&self) -> Option<usize> {
        None
    }
}

/// Runs a scenario against [`Sftp`]: SFTP v3 keeps times as whole seconds since 1970 (32 bits),
/// so the two scenarios that set times to the nanosecond, and before 1970, run in a variant
/// with whole-second times (at the end of the file); every other scenario runs as it is.
macro_rules! sftp_scenario {
    (write_stat_read_round_trip, $h:expr) => {
        crate::sftp_write_stat_read_round_trip($h).await
    };
    (set_attrs_mode_and_mtime, $h:expr) => {
        crate::sftp_set_attrs_mode_and_mtime($h).await
    };
    ($scenario:ident, $h:expr) => {
        crate::$scenario($h).await
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn rp(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

/// Deterministic test data.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

/// `data` as a stream of chunks of `chunk` bytes.
fn body(data: &[u8], chunk: usize) -> ByteStream {
    let pieces: Vec<Result<Bytes, ProviderError>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(pieces))
}

async fn put(p: &dyn Provider, path: &str, bytes: &[u8]) -> RemoteEntry {
    p.write(
        &rp(path),
        body(bytes, 100_000),
        bytes.len() as u64,
        Precondition::None,
        ObjectAttrs::default(),
    )
    .await
    .unwrap()
}

async fn read_all(p: &dyn Provider, path: &str, v: &Version) -> Vec<u8> {
    collect(p.read(&rp(path), v, 0, u64::MAX).await.unwrap())
        .await
        .unwrap()
}

async fn read_range(p: &dyn Provider, path: &str, v: &Version, off: u64, len: u64) -> Vec<u8> {
    collect(p.read(&rp(path), v, off, len).await.unwrap())
        .await
        .unwrap()
}

/// Every page of a listing, checking the page size.
async fn list_all(h: &dyn Backing, dir: &str) -> Vec<RemoteEntry> {
    let mut out = Vec::new();
    let mut page = None;
    let mut pages = 0;
    loop {
        let got = h.provider().list(&rp(dir), page).await.unwrap();
        if let Some(n) = h.page_size() {
            assert!(
                got.entries.len() <= n,
                "page of {} > {n}",
                got.entries.len()
            );
        }
        out.extend(got.entries);
        pages += 1;
        assert!(pages < 1000, "endless listing");
        match got.next {
            Some(t) => page = Some(t),
            None => break,
        }
    }
    out
}

fn names(entries: &[RemoteEntry]) -> Vec<String> {
    let mut v: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    v.sort();
    v
}

fn no_tmp_left(h: &dyn Backing, dir: &str) {
    let stray: Vec<String> = h
        .raw_names(dir)
        .into_iter()
        .filter(|n| n.starts_with(TMP_PREFIX) || n.starts_with(APACHE_TMP_PREFIX))
        .collect();
    assert!(stray.is_empty(), "temporary files left behind: {stray:?}");
}

/// A body that yields `first` and then fails (or ends) — for failed writes.
fn short_body(first: &[u8]) -> ByteStream {
    once(Bytes::copy_from_slice(first))
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn write_stat_read_round_trip(h: &dyn Backing) {
    let p = h.provider();
    for (name, len) in [("empty", 0usize), ("small", 1234), ("big", 3 << 20)] {
        let bytes = data(len, 1);
        let written = p
            .write(
                &rp(name),
                body(&bytes, 64 * 1024 + 7),
                len as u64,
                Precondition::None,
                ObjectAttrs::default(),
            )
            .await
            .unwrap();
        assert_eq!(written.name, name);
        assert_eq!(written.kind, EntryKind::File);
        assert_eq!(written.size, len as u64);
        let st = p.stat(&rp(name)).await.unwrap();
        assert_eq!(
            st, written,
            "stat right after write reports the written entry"
        );
        assert_eq!(read_all(p, name, &st.version).await, bytes);
        assert_eq!(h.file(name).unwrap(), bytes);
    }
    // A nested file and a write with attributes (kept only where the provider stores them).
    p.mkdir(&rp("d")).await.unwrap();
    let attrs = p.capabilities().attrs;
    let mtime = UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    let e = p
        .write(
            &rp("d/f"),
            body(b"hello", 2),
            5,
            Precondition::None,
            ObjectAttrs {
                mode: Some(0o640),
                mtime: Some(mtime),
            },
        )
        .await
        .unwrap();
    if attrs {
        assert_eq!(e.mode, Some(0o640));
        assert_eq!(e.mtime, mtime);
    } else {
        assert_eq!(e.mode, None);
        assert_ne!(e.mtime, mtime);
    }
    assert_eq!(p.stat(&rp("d/f")).await.unwrap(), e);
    assert_eq!(h.file("d/f").unwrap(), b"hello");
    // Rewritten without a mode: the mode stays.
    let e = p
        .write(
            &rp("d/f"),
            body(b"hello again", 4),
            11,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    assert_eq!(e.mode, attrs.then_some(0o640));
    assert_ne!(e.mtime, mtime);
    assert_eq!(p.stat(&rp("d/f")).await.unwrap(), e);
    no_tmp_left(h, "");
    no_tmp_left(h, "d");
}

async fn ranged_reads(h: &dyn Backing) {
    let p = h.provider();
    let bytes = data(200_000, 2);
    let e = put(p, "f", &bytes).await;
    let v = &e.version;
    let size = bytes.len() as u64;
    assert_eq!(
        read_range(p, "f", v, size - 10, 100).await,
        &bytes[bytes.len() - 10..]
    );
    assert_eq!(
        read_range(p, "f", v, size - 10, 10).await,
        &bytes[bytes.len() - 10..]
    );
    assert!(read_range(p, "f", v, size, 10).await.is_empty());
    assert!(read_range(p, "f", v, size + 5, 10).await.is_empty());
    assert!(read_range(p, "f", v, 0, 0).await.is_empty());
    assert_eq!(
        read_range(p, "f", v, 65_000, 70_000).await,
        &bytes[65_000..135_000]
    );
    assert_eq!(read_range(p, "f", v, 1, u64::MAX).await, &bytes[1..]);
}

async fn read_stale_version_fails(h: &dyn Backing) {
    let p = h.provider();
    let v1 = put(p, "f", b"one").await.version;
    let v2 = put(p, "f", b"second").await.version;
    assert_ne!(v1, v2);
    let err = p.read(&rp("f"), &v1, 0, 10).await.err().unwrap();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("f") });
    assert_eq!(read_all(p, "f", &v2).await, b"second");

    // Changed behind the back.
    h.put_file("f", b"third, longer");
    let err = p.read(&rp("f"), &v2, 0, 10).await.err().unwrap();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("f") });
    let v3 = p.stat(&rp("f")).await.unwrap().version;
    assert_ne!(v3, v2);
    assert_eq!(read_all(p, "f", &v3).await, b"third, longer");
}

async fn write_if_not_exists_on_existing(h: &dyn Backing) {
    let p = h.provider();
    let before = put(p, "f", b"original").await;
    let err = p
        .write(
            &rp("f"),
            body(b"new", 3),
            3,
            Precondition::IfNotExists,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::AlreadyExists(rp("f")));
    assert_eq!(h.file("f").unwrap(), b"original");
    assert_eq!(p.stat(&rp("f")).await.unwrap().version, before.version);
    no_tmp_left(h, "");

    // On a free path it creates.
    let e = p
        .write(
            &rp("g"),
            body(b"new", 1),
            3,
            Precondition::IfNotExists,
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    assert_eq!(e.size, 3);
    assert_eq!(h.file("g").unwrap(), b"new");
    // Over a directory.
    p.mkdir(&rp("d")).await.unwrap();
    let err = p
        .write(
            &rp("d"),
            body(b"x", 1),
            1,
            Precondition::IfNotExists,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::AlreadyExists(rp("d")));
    no_tmp_left(h, "");
}

async fn write_if_match_stale(h: &dyn Backing) {
    let p = h.provider();
    let v1 = put(p, "f", b"one").await.version;
    let v2 = put(p, "f", b"two!").await.version;
    let err = p
        .write(
            &rp("f"),
            body(b"three", 5),
            5,
            Precondition::IfMatch(v1.clone()),
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("f") });
    assert_eq!(h.file("f").unwrap(), b"two!");
    assert_eq!(p.stat(&rp("f")).await.unwrap().version, v2);
    // IfMatch on a missing path fails too and creates nothing.
    let err = p
        .write(
            &rp("nope"),
            body(b"x", 1),
            1,
            Precondition::IfMatch(v1),
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("nope") });
    assert!(!h.exists("nope"));
    no_tmp_left(h, "");
}

async fn write_if_match_current(h: &dyn Backing) {
    let p = h.provider();
    let v1 = put(p, "f", b"one").await.version;
    let e = p
        .write(
            &rp("f"),
            body(b"three", 2),
            5,
            Precondition::IfMatch(v1.clone()),
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    assert_ne!(e.version, v1);
    assert_eq!(e.size, 5);
    assert_eq!(h.file("f").unwrap(), b"three");
    assert_eq!(p.stat(&rp("f")).await.unwrap().version, e.version);
    // The old version no longer matches.
    let err = p
        .write(
            &rp("f"),
            body(b"4", 1),
            1,
            Precondition::IfMatch(v1),
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("f") });
    assert_eq!(h.file("f").unwrap(), b"three");
}

async fn short_long_and_failing_bodies(h: &dyn Backing) {
    let p = h.provider();
    // Short: nothing at the path.
    let err = p
        .write(
            &rp("f"),
            short_body(b"abc"),
            10,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Other { .. }), "{err:?}");
    assert!(!h.exists("f"));
    assert_eq!(
        p.stat(&rp("f")).await.unwrap_err(),
        ProviderError::NotFound(rp("f"))
    );
    // Long: nothing either.
    let err = p
        .write(
            &rp("f"),
            body(&data(100, 3), 7),
            50,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Other { .. }), "{err:?}");
    assert!(!h.exists("f"));
    // A body that fails midway: its error comes back, the old contents stay.
    put(p, "g", b"old contents").await;
    let failing: ByteStream = Box::pin(futures::stream::iter(vec![
        Ok(Bytes::from_static(b"new ")),
        Err(ProviderError::Other {
            message: "source broke".into(),
            retryable: true,
        }),
    ]));
    let err = p
        .write(
            &rp("g"),
            failing,
            8,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::Other {
            message: "source broke".into(),
            retryable: true
        }
    );
    assert_eq!(h.file("g").unwrap(), b"old contents");
    // Short over an existing file: the old contents stay.
    let big = data(3 << 20, 4);
    let err = p
        .write(
            &rp("g"),
            body(&big[..(2 << 20) + 5], 1 << 20),
            big.len() as u64,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Other { .. }), "{err:?}");
    assert_eq!(h.file("g").unwrap(), b"old contents");
    no_tmp_left(h, "");
}

async fn list_entries(h: &dyn Backing) {
    let p = h.provider();
    p.mkdir(&rp("d")).await.unwrap();
    for n in ["c", "a", "b", "e"] {
        put(p, &format!("d/{n}"), n.as_bytes()).await;
    }
    p.mkdir(&rp("d/s")).await.unwrap();
    put(p, "d/s/inner", b"not listed").await;
    let caps = p.capabilities();
    let mut expected = vec!["a", "b", "c", "e", "s"];
    if caps.symlinks {
        p.symlink(&rp("d/l"), "a").await.unwrap();
        expected.insert(4, "l");
    }
    let entries = list_all(h, "d").await;
    assert_eq!(names(&entries), expected);
    for e in &entries {
        let st = p.stat(&rp(&format!("d/{}", e.name))).await.unwrap();
        assert_eq!(&st, e, "list and stat agree on {}", e.name);
        match e.name.as_str() {
            "s" => assert_eq!(e.kind, EntryKind::Dir),
            "l" => {
                assert_eq!(e.kind, EntryKind::Symlink);
                assert_eq!(e.symlink_target.as_deref(), Some("a"));
            }
            _ => {
                assert_eq!(e.kind, EntryKind::File);
                assert_eq!(e.size, 1);
                assert_eq!(e.mode.is_some(), caps.attrs);
            }
        }
    }
    // The root, an empty directory, a file and a missing directory.
    assert_eq!(names(&list_all(h, "").await), ["d"]);
    p.mkdir(&rp("empty")).await.unwrap();
    assert!(list_all(h, "empty").await.is_empty());
    assert_eq!(
        p.list(&rp("d/a"), None).await.unwrap_err(),
        ProviderError::NotADirectory(rp("d/a"))
    );
    assert_eq!(
        p.list(&rp("missing"), None).await.unwrap_err(),
        ProviderError::NotFound(rp("missing"))
    );
}

async fn mkdir_and_rmdir(h: &dyn Backing) {
    let p = h.provider();
    let e = p.mkdir(&rp("d")).await.unwrap();
    assert_eq!(e.kind, EntryKind::Dir);
    assert_eq!(e.name, "d");
    assert_eq!(p.stat(&rp("d")).await.unwrap().kind, EntryKind::Dir);
    assert_eq!(
        p.mkdir(&rp("d")).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("d"))
    );
    assert_eq!(
        p.mkdir(&rp("x/y")).await.unwrap_err(),
        ProviderError::NotFound(rp("x"))
    );
    put(p, "f", b"file").await;
    assert_eq!(
        p.mkdir(&rp("f")).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("f"))
    );
    assert_eq!(
        p.mkdir(&rp("f/y")).await.unwrap_err(),
        ProviderError::NotADirectory(rp("f"))
    );
    p.mkdir(&rp("d/sub")).await.unwrap();
    put(p, "d/sub/x", b"x").await;
    assert_eq!(
        p.rmdir(&rp("d")).await.unwrap_err(),
        ProviderError::NotEmpty(rp("d"))
    );
    assert_eq!(
        p.rmdir(&rp("d/sub")).await.unwrap_err(),
        ProviderError::NotEmpty(rp("d/sub"))
    );
    assert!(h.exists("d/sub/x"));
    assert_eq!(
        p.rmdir(&rp("f")).await.unwrap_err(),
        ProviderError::NotADirectory(rp("f"))
    );
    p.delete(&rp("d/sub/x"), Precondition::None).await.unwrap();
    p.rmdir(&rp("d/sub")).await.unwrap();
    p.rmdir(&rp("d")).await.unwrap();
    assert!(!h.exists("d"));
    assert_eq!(
        p.rmdir(&rp("d")).await.unwrap_err(),
        ProviderError::NotFound(rp("d"))
    );
    assert!(p.rmdir(&RemotePath::root()).await.is_err());
}

/// `sync` succeeds with nothing to do, after changes in directories removed since, and when
/// many callers ask at once (the local folder gathers them into one round of `fsync`s).
async fn sync_after_changes(h: &dyn Backing) {
    let p = h.provider();
    p.sync().await.unwrap();
    p.mkdir(&rp("d")).await.unwrap();
    put(p, "d/f", b"x").await;
    p.delete(&rp("d/f"), Precondition::None).await.unwrap();
    p.rmdir(&rp("d")).await.unwrap();
    p.mkdir(&rp("e")).await.unwrap();
    put(p, "e/g", b"y").await;
    let all = futures::future::join_all((0..8).map(|_| p.sync())).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    p.sync().await.unwrap();
    assert!(h.exists("e/g") && !h.exists("d"));
}

async fn delete_files(h: &dyn Backing) {
    let p = h.provider();
    put(p, "f", b"x").await;
    p.delete(&rp("f"), Precondition::None).await.unwrap();
    assert!(!h.exists("f"));
    assert_eq!(
        p.stat(&rp("f")).await.unwrap_err(),
        ProviderError::NotFound(rp("f"))
    );
    assert_eq!(
        p.delete(&rp("f"), Precondition::None).await.unwrap_err(),
        ProviderError::NotFound(rp("f"))
    );
    p.mkdir(&rp("d")).await.unwrap();
    assert_eq!(
        p.delete(&rp("d"), Precondition::None).await.unwrap_err(),
        ProviderError::IsADirectory(rp("d"))
    );
    // Preconditions.
    let v1 = put(p, "g", b"1").await.version;
    let v2 = put(p, "g", b"22").await.version;
    assert_eq!(
        p.delete(&rp("g"), Precondition::IfMatch(v1))
            .await
            .unwrap_err(),
        ProviderError::PreconditionFailed { path: rp("g") }
    );
    assert_eq!(h.file("g").unwrap(), b"22");
    p.delete(&rp("g"), Precondition::IfMatch(v2)).await.unwrap();
    assert!(!h.exists("g"));
    // Symlinks are deleted themselves, not their target.
    if !p.capabilities().symlinks {
        return;
    }
    put(p, "t", b"target").await;
    p.symlink(&rp("l"), "t").await.unwrap();
    p.delete(&rp("l"), Precondition::None).await.unwrap();
    assert!(!h.exists("l"));
    assert_eq!(h.file("t").unwrap(), b"target");
}

async fn rename_file(h: &dyn Backing) {
    let p = h.provider();
    put(p, "a", b"contents").await;
    p.mkdir(&rp("d")).await.unwrap();
    let e = p.rename(&rp("a"), &rp("d/b"), false).await.unwrap();
    assert_eq!(e.name, "b");
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(e.size, 8);
    assert!(!h.exists("a"));
    assert_eq!(h.file("d/b").unwrap(), b"contents");
    assert_eq!(
        p.stat(&rp("a")).await.unwrap_err(),
        ProviderError::NotFound(rp("a"))
    );
    let st = p.stat(&rp("d/b")).await.unwrap();
    assert_eq!(st, e);
    assert_eq!(read_all(p, "d/b", &st.version).await, b"contents");
    assert_eq!(
        p.rename(&rp("a"), &rp("c"), false).await.unwrap_err(),
        ProviderError::NotFound(rp("a"))
    );
    assert_eq!(
        p.rename(&rp("d/b"), &rp("x/c"), false).await.unwrap_err(),
        ProviderError::NotFound(rp("x"))
    );
}

async fn rename_dir_with_children(h: &dyn Backing) {
    let p = h.provider();
    p.mkdir(&rp("d")).await.unwrap();
    p.mkdir(&rp("d/e")).await.unwrap();
    put(p, "d/x", b"x").await;
    put(p, "d/e/y", b"yy").await;
    let symlinks = p.capabilities().symlinks;
    if symlinks {
        p.symlink(&rp("d/l"), "x").await.unwrap();
    }
    let e = p.rename(&rp("d"), &rp("d2"), false).await.unwrap();
    assert_eq!(e.kind, EntryKind::Dir);
    assert!(!h.exists("d"));
    assert_eq!(h.file("d2/x").unwrap(), b"x");
    assert_eq!(h.file("d2/e/y").unwrap(), b"yy");
    assert_eq!(names(&list_all(h, "d2/e").await), ["y"]);
    if symlinks {
        assert_eq!(names(&list_all(h, "d2").await), ["e", "l", "x"]);
        assert_eq!(
            p.stat(&rp("d2/l")).await.unwrap().symlink_target.as_deref(),
            Some("x")
        );
    } else {
        assert_eq!(names(&list_all(h, "d2").await), ["e", "x"]);
    }
    assert_eq!(
        p.stat(&rp("d/e/y")).await.unwrap_err(),
        ProviderError::NotFound(rp("d/e/y"))
    );
    // Into itself.
    assert!(p.rename(&rp("d2"), &rp("d2/e/z"), false).await.is_err());
    assert!(h.exists("d2/e/y"));
}

async fn rename_over_existing(h: &dyn Backing) {
    let p = h.provider();
    put(p, "a", b"aaa").await;
    put(p, "b", b"bb").await;
    assert_eq!(
        p.rename(&rp("a"), &rp("b"), false).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("b"))
    );
    assert_eq!(h.file("a").unwrap(), b"aaa");
    assert_eq!(h.file("b").unwrap(), b"bb");
    let e = p.rename(&rp("a"), &rp("b"), true).await.unwrap();
    assert_eq!(e.size, 3);
    assert!(!h.exists("a"));
    assert_eq!(h.file("b").unwrap(), b"aaa");
    // Files and directories do not replace each other.
    p.mkdir(&rp("d")).await.unwrap();
    assert_eq!(
        p.rename(&rp("b"), &rp("d"), true).await.unwrap_err(),
        ProviderError::IsADirectory(rp("d"))
    );
    assert_eq!(
        p.rename(&rp("d"), &rp("b"), true).await.unwrap_err(),
        ProviderError::NotADirectory(rp("b"))
    );
    assert_eq!(
        p.rename(&rp("d"), &rp("b"), false).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("b"))
    );
    assert_eq!(h.file("b").unwrap(), b"aaa");
}

async fn symlinks(h: &dyn Backing) {
    let p = h.provider();
    if !p.capabilities().symlinks {
        assert!(matches!(
            p.symlink(&rp("l"), "x").await.unwrap_err(),
            ProviderError::NotSupported(_)
        ));
        assert!(!h.exists("l"));
        return;
    }
    let e = p.symlink(&rp("l"), "some/where/else").await.unwrap();
    assert_eq!(e.kind, EntryKind::Symlink);
    assert_eq!(e.symlink_target.as_deref(), Some("some/where/else"));
    assert_eq!(e.size, "some/where/else".len() as u64);
    let st = p.stat(&rp("l")).await.unwrap();
    assert_eq!(st, e);
    assert_eq!(
        p.symlink(&rp("l"), "x").await.unwrap_err(),
        ProviderError::AlreadyExists(rp("l"))
    );
    assert_eq!(
        p.symlink(&rp("nodir/l"), "x").await.unwrap_err(),
        ProviderError::NotFound(rp("nodir"))
    );
    assert!(h.exists("l"));
    assert!(h.file("l").is_none(), "a symlink is not a file");
}

async fn set_attrs_mode_and_mtime(h: &dyn Backing) {
    let p = h.provider();
    let before = put(p, "f", b"abc").await;
    if !p.capabilities().attrs {
        let err = p
            .set_attrs(
                &rp("f"),
                ObjectAttrs {
                    mode: Some(0o600),
                    mtime: None,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::NotSupported(_)), "{err:?}");
        assert_eq!(p.stat(&rp("f")).await.unwrap(), before);
        return;
    }
    let mtime = UNIX_EPOCH + Duration::new(978_307_200, 987_654_321);
    let e = p
        .set_attrs(
            &rp("f"),
            ObjectAttrs {
                mode: Some(0o600),
                mtime: Some(mtime),
            },
        )
        .await
        .unwrap();
    assert_eq!(e.mode, Some(0o600));
    assert_eq!(e.mtime, mtime);
    assert_eq!(e.size, 3);
    let st = p.stat(&rp("f")).await.unwrap();
    assert_eq!(st, e);
    assert_eq!(h.file("f").unwrap(), b"abc");
    // Only the mode; the mtime stays.
    let e2 = p
        .set_attrs(
            &rp("f"),
            ObjectAttrs {
                mode: Some(0o755),
                mtime: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(e2.mode, Some(0o755));
    assert_eq!(e2.mtime, mtime);
    // A time before 1970 and a directory.
    p.mkdir(&rp("d")).await.unwrap();
    let old = UNIX_EPOCH - Duration::new(86_400, 500);
    let e3 = p
        .set_attrs(
            &rp("d"),
            ObjectAttrs {
                mode: None,
                mtime: Some(old),
            },
        )
        .await
        .unwrap();
    assert_eq!(e3.mtime, old);
    // The mtime of a symlink itself.
    p.symlink(&rp("l"), "f").await.unwrap();
    let e4 = p
        .set_attrs(
            &rp("l"),
            ObjectAttrs {
                mode: None,
                mtime: Some(mtime + Duration::from_secs(5)),
            },
        )
        .await
        .unwrap();
    assert_eq!(e4.mtime, mtime + Duration::from_secs(5));
    assert_eq!(
        p.stat(&rp("f")).await.unwrap().mtime,
        mtime,
        "the target is untouched"
    );
    let _ = before;
}

async fn not_found(h: &dyn Backing) {
    let p = h.provider();
    let v = Version::from("whatever");
    let nf = |s: &str| ProviderError::NotFound(rp(s));
    assert_eq!(p.stat(&rp("x")).await.unwrap_err(), nf("x"));
    assert_eq!(p.stat(&rp("x/y/z")).await.unwrap_err(), nf("x/y/z"));
    assert_eq!(p.read(&rp("x"), &v, 0, 1).await.err().unwrap(), nf("x"));
    assert_eq!(
        p.delete(&rp("x"), Precondition::None).await.unwrap_err(),
        nf("x")
    );
    assert_eq!(p.rmdir(&rp("x")).await.unwrap_err(), nf("x"));
    assert_eq!(
        p.set_attrs(&rp("x"), ObjectAttrs::default())
            .await
            .unwrap_err(),
        nf("x")
    );
    assert_eq!(
        p.rename(&rp("x"), &rp("y"), true).await.unwrap_err(),
        nf("x")
    );
    assert_eq!(
        p.write(
            &rp("x/y"),
            body(b"1", 1),
            1,
            Precondition::None,
            ObjectAttrs::default()
        )
        .await
        .unwrap_err(),
        nf("x")
    );
    // Below a file: not found for lookups.
    put(p, "f", b"1").await;
    assert_eq!(p.stat(&rp("f/y")).await.unwrap_err(), nf("f/y"));
    // Reading a directory.
    p.mkdir(&rp("d")).await.unwrap();
    let dv = p.stat(&rp("d")).await.unwrap().version;
    assert_eq!(
        p.read(&rp("d"), &dv, 0, 1).await.err().unwrap(),
        ProviderError::IsADirectory(rp("d"))
    );
    // The root is a directory.
    assert_eq!(
        p.stat(&RemotePath::root()).await.unwrap().kind,
        EntryKind::Dir
    );
    // Writing over a directory.
    assert_eq!(
        p.write(
            &rp("d"),
            body(b"1", 1),
            1,
            Precondition::None,
            ObjectAttrs::default()
        )
        .await
        .unwrap_err(),
        ProviderError::IsADirectory(rp("d"))
    );
    no_tmp_left(h, "");
}

async fn capabilities_and_names(h: &dyn Backing) {
    let p = h.provider();
    let caps = p.capabilities();
    // What each provider can store is known: the local folder and the test double can do all.
    assert_eq!(
        (caps.rename, caps.symlinks, caps.attrs),
        h.capabilities(),
        "capabilities of {}",
        p.describe()
    );
    assert_eq!(caps.max_name_len, 255);
    let long = "n".repeat(256);
    assert!(matches!(
        p.mkdir(&rp(&long)).await.unwrap_err(),
        ProviderError::InvalidName { .. }
    ));
    let ok = "n".repeat(255);
    p.mkdir(&rp(&ok)).await.unwrap();
    assert!(!p.describe().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Running the library against both providers

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let h = super::Local::new();
                    super::$scenario(&h).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let h = super::Memory::new();
                    super::$scenario(&h).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let h = super::S3::new(stringify!($scenario), None).await;
                    super::$scenario(&h).await;
                }
            )*
        }
        mod s3_paged {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let h = super::S3::new(stringify!($scenario), Some(2)).await;
                    super::$scenario(&h).await;
                }
            )*
        }
        mod webdav {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let h = super::WebDav::new(stringify!($scenario));
                    super::$scenario(&h).await;
                }
            )*
        }
        mod sftp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let h = super::Sftp::new(stringify!($scenario));
                    sftp_scenario!($scenario, &h);
                }
            )*
        }
        mod memory_paged {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let h = super::Memory::paged();
                    super::$scenario(&h).await;
                }
            )*
        }
    };
}

conformance!(
    write_stat_read_round_trip,
    ranged_reads,
    read_stale_version_fails,
    write_if_not_exists_on_existing,
    write_if_match_stale,
    write_if_match_current,
    short_long_and_failing_bodies,
    list_entries,
    mkdir_and_rmdir,
    sync_after_changes,
    delete_files,
    rename_file,
    rename_dir_with_children,
    rename_over_existing,
    symlinks,
    set_attrs_mode_and_mtime,
    not_found,
    capabilities_and_names,
);

// ---------------------------------------------------------------------------------------------
// Memory only

#[tokio::test]
async fn memory_list_pages_by_two_with_name_tokens() {
    let m = MemoryProvider::with_page_size(2);
    for n in ["e", "a", "d", "c", "b"] {
        m.put_file(&format!("dir/{n}"), n.as_bytes());
    }
    m.put_file("dir/a2/deep", b"not in dir");
    m.put_file("dirx", b"a sibling with a common prefix");
    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let page = m.list(&rp("dir"), token).await.unwrap();
        pages.push(
            page.entries
                .iter()
                .map(|e| e.name.clone())
                .collect::<Vec<_>>(),
        );
        match page.next {
            Some(t) => {
                assert_eq!(
                    Some(&t),
                    page.entries.last().map(|e| &e.name),
                    "token = last name"
                );
                token = Some(t);
            }
            None => break,
        }
    }
    assert_eq!(pages, [vec!["a", "a2"], vec!["b", "c"], vec!["d", "e"]]);
    // Exactly full last page: no extra empty page.
    m.remove("dir/e");
    let p1 = m.list(&rp("dir"), None).await.unwrap();
    let p2 = m.list(&rp("dir"), p1.next).await.unwrap();
    let p3 = m.list(&rp("dir"), p2.next.clone()).await.unwrap();
    assert_eq!(names(&p3.entries), ["d"]);
    assert_eq!(p3.next, None);
    assert_eq!(m.counters().list, 6);
}

#[tokio::test]
async fn memory_helpers_counters_and_unreachable() {
    use fs_core::provider::memory::{Counters, SnapshotEntry};
    let m = MemoryProvider::new();
    m.mkdir_all("a/b");
    m.put_file("a/b/f", b"123");
    assert_eq!(
        m.counters(),
        Counters::default(),
        "helpers are not operations"
    );
    let v = m.stat(&rp("a/b/f")).await.unwrap().version;
    assert_eq!(read_all(&m, "a/b/f", &v).await, b"123");
    put(&m, "a/g", b"4567").await;
    m.symlink(&rp("a/l"), "g").await.unwrap();
    let c = m.counters();
    assert_eq!(
        (
            c.stat,
            c.read,
            c.read_bytes,
            c.write,
            c.write_bytes,
            c.symlink
        ),
        (1, 1, 3, 1, 4, 1)
    );
    let snap = m.snapshot();
    assert_eq!(
        snap.into_iter().collect::<Vec<_>>(),
        vec![
            ("a".to_string(), SnapshotEntry::Dir),
            ("a/b".to_string(), SnapshotEntry::Dir),
            ("a/b/f".to_string(), SnapshotEntry::File(b"123".to_vec())),
            ("a/g".to_string(), SnapshotEntry::File(b"4567".to_vec())),
            ("a/l".to_string(), SnapshotEntry::Symlink("g".into())),
        ]
    );
    m.reset_counters();
    assert_eq!(m.counters(), Counters::default());

    m.set_unreachable(true);
    assert!(matches!(
        m.stat(&rp("a")).await,
        Err(ProviderError::Unreachable(_))
    ));
    assert!(matches!(
        m.list(&rp("a"), None).await,
        Err(ProviderError::Unreachable(_))
    ));
    assert!(matches!(
        m.write(
            &rp("a/h"),
            body(b"1", 1),
            1,
            Precondition::None,
            ObjectAttrs::default()
        )
        .await,
        Err(ProviderError::Unreachable(_))
    ));
    assert_eq!(m.file("a/g").unwrap(), b"4567", "helpers still work");
    assert_eq!(m.counters().stat, 1, "failed calls are counted");
    m.set_unreachable(false);
    m.remove("a/b");
    assert!(m.file("a/b/f").is_none());
    assert!(m.stat(&rp("a/g")).await.is_ok());
    m.remove("");
    assert!(m.snapshot().is_empty());
    assert_eq!(
        m.stat(&RemotePath::root()).await.unwrap().kind,
        EntryKind::Dir
    );
}

#[tokio::test]
async fn memory_read_serves_the_version_it_checked() {
    let m = MemoryProvider::new();
    let bytes = data(300_000, 9);
    let v = put(&m, "f", &bytes).await.version;
    let s = m.read(&rp("f"), &v, 0, u64::MAX).await.unwrap();
    m.put_file("f", b"changed behind the back");
    assert_eq!(collect(s).await.unwrap(), bytes);
}

// ---------------------------------------------------------------------------------------------
// Local only

/// A provider whose root can be removed: `<tmp>/root`.
fn local_with_root() -> (tempfile::TempDir, PathBuf, LocalProvider) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let p = LocalProvider::new(root.clone()).unwrap();
    (tmp, root, p)
}

async fn assert_all_unreachable(p: &LocalProvider, v: &Version) {
    let root = p.root().display().to_string();
    let is_unreachable = |r: Result<(), ProviderError>, what: &str| match r {
        Err(ProviderError::Unreachable(msg)) => {
            assert!(msg.contains(&root), "{what}: message names the root: {msg}")
        }
        other => panic!("{what}: expected Unreachable, got {other:?}"),
    };
    is_unreachable(p.stat(&rp("f")).await.map(drop), "stat");
    is_unreachable(p.stat(&RemotePath::root()).await.map(drop), "stat root");
    is_unreachable(p.list(&RemotePath::root(), None).await.map(drop), "list");
    is_unreachable(p.list(&rp("d"), None).await.map(drop), "list d");
    is_unreachable(p.read(&rp("f"), v, 0, 10).await.map(drop), "read");
    is_unreachable(
        p.write(
            &rp("f"),
            body(b"1", 1),
            1,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .map(drop),
        "write",
    );
    is_unreachable(p.mkdir(&rp("d")).await.map(drop), "mkdir");
    is_unreachable(p.rmdir(&rp("d")).await.map(drop), "rmdir");
    is_unreachable(
        p.delete(&rp("f"), Precondition::None).await.map(drop),
        "delete",
    );
    is_unreachable(p.rename(&rp("f"), &rp("g"), true).await.map(drop), "rename");
    is_unreachable(p.symlink(&rp("l"), "f").await.map(drop), "symlink");
    is_unreachable(
        p.set_attrs(&rp("f"), ObjectAttrs::default())
            .await
            .map(drop),
        "set_attrs",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_root_removed_is_unreachable_not_not_found() {
    let (_tmp, root, p) = local_with_root();
    let v = put(&p, "f", b"data").await.version;
    p.mkdir(&rp("d")).await.unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert_all_unreachable(&p, &v).await;

    // A file where the root folder was is no better.
    std::fs::write(&root, b"not a folder").unwrap();
    assert_all_unreachable(&p, &v).await;
    std::fs::remove_file(&root).unwrap();

    // Back again (an empty folder): now answers are real answers.
    std::fs::create_dir(&root).unwrap();
    assert_eq!(
        p.stat(&rp("f")).await.unwrap_err(),
        ProviderError::NotFound(rp("f"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_root_missing_at_construction() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("not-yet");
    let p = LocalProvider::new(root.clone()).unwrap();
    assert!(p.describe().contains("not-yet"));
    assert_all_unreachable(&p, &Version::from("v")).await;
    std::fs::create_dir(&root).unwrap();
    put(&p, "f", b"now").await;
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_unreadable_root_is_unreachable() {
    let (_tmp, root, p) = local_with_root();
    let v = put(&p, "f", b"data").await.version;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o000)).unwrap();
    let probe = std::fs::read_dir(&root);
    if probe.is_ok() {
        // Running as root: permissions do not apply; nothing to test.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        return;
    }
    let err = p.stat(&rp("f")).await.unwrap_err();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(err, ProviderError::Unreachable(_)), "{err:?}");
    assert_eq!(p.stat(&rp("f")).await.unwrap().version, v);
}

/// Reads the first item of a 3 MiB stream, lets `change` modify the file, and returns the rest.
async fn read_while_changing(
    change: impl FnOnce(&Path),
) -> (Vec<u8>, Vec<Result<Bytes, ProviderError>>) {
    let (_tmp, root, p) = local_with_root();
    let bytes = data(3 << 20, 5);
    let v = put(&p, "f", &bytes).await.version;
    let mut s = p.read(&rp("f"), &v, 0, u64::MAX).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty() && first.len() <= 1 << 20);
    assert_eq!(&first[..], &bytes[..first.len()]);
    change(&root.join("f"));
    let mut rest = Vec::new();
    while let Some(item) = s.next().await {
        rest.push(item);
    }
    (bytes, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_file_rewritten_mid_stream_ends_with_precondition_failed() {
    let (_, rest) =
        read_while_changing(|f| std::fs::write(f, data((2 << 20) + 1, 6)).unwrap()).await;
    let last = rest.last().expect("the stream yields an error");
    assert_eq!(
        last,
        &Err(ProviderError::PreconditionFailed { path: rp("f") })
    );
    assert!(rest[..rest.len() - 1].iter().all(Result::is_ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_file_patched_in_place_mid_stream_ends_with_precondition_failed() {
    let (_, rest) = read_while_changing(|f| {
        // Same size, same inode: only the times change (sleep past the coarse clock tick).
        std::thread::sleep(Duration::from_millis(50));
        let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        std::os::unix::fs::FileExt::write_at(&file, b"patched", 2 << 20).unwrap();
    })
    .await;
    assert_eq!(
        rest.last(),
        Some(&Err(ProviderError::PreconditionFailed { path: rp("f") }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_file_replaced_by_rename_mid_stream_never_mixes_versions() {
    let (bytes, rest) = read_while_changing(|f| {
        let tmp = f.with_file_name("other");
        std::fs::write(&tmp, b"replacement").unwrap();
        std::fs::rename(&tmp, f).unwrap();
    })
    .await;
    // The open file keeps the old contents; unlinking it updates its ctime, which (unless it
    // falls in the same clock tick as the original write) ends the stream with
    // PreconditionFailed. Either way every byte delivered is from the old version.
    let mut got = Vec::new();
    let mut failed = false;
    for item in rest {
        assert!(!failed, "nothing after the error");
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => {
                assert_eq!(e, ProviderError::PreconditionFailed { path: rp("f") });
                failed = true;
            }
        }
    }
    let first = 1 << 20;
    assert_eq!(got, &bytes[first..first + got.len()]);
    assert!(failed || got.len() == bytes.len() - first);
}

fn tmp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TMP_PREFIX))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cancelled_write_leaves_no_tmp_and_no_target() {
    let (_tmp, root, p) = local_with_root();
    let p = Arc::new(p);
    // One chunk, then nothing, forever. Declared larger than one write batch (1 MiB), so the
    // body is streamed into the temporary file (a smaller one is gathered first, then written
    // in one go).
    let stalled: ByteStream = Box::pin(
        futures::stream::iter(vec![Ok(Bytes::from(data(1000, 7)))])
            .chain(futures::stream::pending()),
    );
    let task = {
        let p = Arc::clone(&p);
        tokio::spawn(async move {
            p.write(
                &rp("f"),
                stalled,
                4 << 20,
                Precondition::None,
                ObjectAttrs::default(),
            )
            .await
        })
    };
    // Wait until the write is under way (its temporary file exists).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tmp_files(&root).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary file appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(tmp_files(&root).is_empty(), "{:?}", tmp_files(&root));
    assert!(!root.join("f").exists());

    // Same with a plain timeout around the call, over an existing file.
    put(&*p, "g", b"old").await;
    let stalled: ByteStream = Box::pin(
        futures::stream::iter(vec![Ok(Bytes::from_static(b"new"))])
            .chain(futures::stream::pending()),
    );
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        p.write(
            &rp("g"),
            stalled,
            10,
            Precondition::None,
            ObjectAttrs::default(),
        ),
    )
    .await;
    assert!(r.is_err(), "the write cannot finish");
    assert!(tmp_files(&root).is_empty());
    assert_eq!(std::fs::read(root.join("g")).unwrap(), b"old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_tmp_names_are_hidden_and_reserved() {
    let (_tmp, root, p) = local_with_root();
    let hidden = format!("{TMP_PREFIX}0123456789abcdef");
    std::fs::write(root.join(&hidden), b"someone's upload").unwrap();
    put(&p, "visible", b"v").await;
    let page = p.list(&RemotePath::root(), None).await.unwrap();
    assert_eq!(names(&page.entries), ["visible"]);
    assert_eq!(page.next, None);
    assert_eq!(
        p.stat(&rp(&hidden)).await.unwrap_err(),
        ProviderError::NotFound(rp(&hidden))
    );
    assert!(matches!(
        p.write(
            &rp(&hidden),
            body(b"x", 1),
            1,
            Precondition::None,
            ObjectAttrs::default()
        )
        .await
        .unwrap_err(),
        ProviderError::InvalidName { .. }
    ));
    assert!(matches!(
        p.mkdir(&rp(&format!("{TMP_PREFIX}x"))).await.unwrap_err(),
        ProviderError::InvalidName { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_versions_follow_changes_by_other_programs() {
    let (_tmp, root, p) = local_with_root();
    let v1 = put(&p, "f", b"one").await.version;
    assert_eq!(p.stat(&rp("f")).await.unwrap().version, v1);
    assert_eq!(
        p.stat(&rp("f")).await.unwrap().version,
        v1,
        "stable while untouched"
    );
    // Replaced by another program (new inode).
    let other = root.join("other");
    std::fs::write(&other, b"one").unwrap();
    std::fs::rename(&other, root.join("f")).unwrap();
    let v2 = p.stat(&rp("f")).await.unwrap().version;
    assert_ne!(v2, v1);
    // Appended to (size).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("f"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"!").unwrap();
    let v3 = p.stat(&rp("f")).await.unwrap().version;
    assert_ne!(v3, v2);
    let s = String::from_utf8(v3.as_bytes().to_vec()).unwrap();
    assert!(s.starts_with("s4-m") && s.contains("-i"), "{s}");
    // A rename or chmod changes no byte, so it keeps the version (and every cached chunk).
    std::fs::rename(root.join("f"), root.join("g")).unwrap();
    std::fs::set_permissions(
        root.join("g"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(p.stat(&rp("g")).await.unwrap().version, v3);
    let _ = SystemTime::now();
}

// ---------------------------------------------------------------------------------------------
// S3 only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conditional_writes_are_probed_and_honoured() {
    let h = S3::new("probe", None).await;
    let p = &h.provider;
    let v1 = put(p, "f", b"one").await.version;
    let err = p
        .write(
            &rp("f"),
            body(b"two", 3),
            3,
            Precondition::IfMatch(Version::from("\"0123\"")),
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("f") });
    // moto honours If-Match and If-None-Match on PUT: no fallback window.
    assert!(p.capabilities().conditional_write);
    p.write(
        &rp("f"),
        body(b"two", 3),
        3,
        Precondition::IfMatch(v1),
        ObjectAttrs::default(),
    )
    .await
    .unwrap();
    assert_eq!(h.file("f").unwrap(), b"two");
    // The probe objects are gone or hidden, and their names cannot be used.
    assert_eq!(names(&list_all(&h, "").await), ["f"]);
    let err = p
        .mkdir(&rp(&format!("{}x", fs_core::provider::s3::PROBE_PREFIX)))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::InvalidName { .. }), "{err:?}");
}

/// A download damaged on the way (a proxy flips a byte of the body) is never handed out: a read
/// of the whole object is checked against the MD5 its ETag publishes, and ends with a
/// retryable error instead of its last piece; the same read through an honest network gives
/// the bytes. (A part of an object has no published hash: S3 offers none per range.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_damaged_downloads_are_detected_against_the_etag_md5() {
    use harness::proxy::Proxy;
    let h = S3::new("damaged", None).await;
    let proxy = Proxy::start(harness::servers::s3().port);
    let mut cfg = s3_config(&h.bucket, "tree/root");
    cfg.endpoint = proxy.url();
    let via = S3Provider::new(cfg).unwrap();
    // Hashed on the read path, and on a thread of its own (above 1 MiB).
    for (name, n) in [("f.bin", 300_000u64), ("big.bin", 3 << 20)] {
        damaged_download_detected(&h, &via, &proxy, name, n).await;
    }
}

async fn damaged_download_detected(
    h: &S3,
    via: &S3Provider,
    proxy: &harness::proxy::Proxy,
    name: &str,
    n: u64,
) {
    use harness::proxy::Fault;
    let data = data(n as usize, 7);
    let v = put(&h.provider, name, &data).await.version;
    // Honest network first: whole and ranged reads are right.
    assert_eq!(read_all(via, name, &v).await, data);
    proxy.set(Fault::Corrupt);
    for (off, len) in [(0, u64::MAX), (0, n), (0, n + (1 << 20))] {
        let s = via.read(&rp(name), &v, off, len).await.unwrap();
        match collect(s).await {
            Ok(got) => panic!(
                "read {off}+{len} through a damaging network gave {} bytes ({})",
                got.len(),
                if got == data { "right" } else { "WRONG" }
            ),
            Err(ProviderError::Other { message, retryable }) => {
                assert!(retryable, "{message}");
                assert!(message.contains("MD5"), "{message}");
            }
            Err(e) => panic!("read {off}+{len}: {e:?}"),
        }
    }
    proxy.set(Fault::None);
    assert_eq!(read_all(via, name, &v).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_folders_without_markers_and_keys_outside_the_tree() {
    let h = S3::new("markers", Some(2)).await;
    let p = &h.provider;
    // Written by another tool: no marker objects, and a key the drive cannot show.
    h.raw.put_raw("a/b/c.txt", b"deep").await.unwrap();
    h.raw.put_raw("a/x", b"x").await.unwrap();
    h.raw.put_raw("a/bad//name", b"?").await.unwrap();
    let outside = S3Provider::new(s3_config(&bucket_of(&h), "tree")).unwrap();
    outside.put_raw("sibling", b"not ours").await.unwrap();
    assert_eq!(names(&list_all(&h, "").await), ["a"]);
    assert_eq!(names(&list_all(&h, "a").await), ["b", "bad", "x"]);
    assert_eq!(p.stat(&rp("a/b")).await.unwrap().kind, EntryKind::Dir);
    let f = p.stat(&rp("a/b/c.txt")).await.unwrap();
    assert_eq!(read_all(p, "a/b/c.txt", &f.version).await, b"deep");
    // A rename moves everything; the last file of a marker-less folder leaves the folder.
    p.rename(&rp("a"), &rp("z"), false).await.unwrap();
    assert!(!h.exists("a"));
    assert_eq!(h.file("z/b/c.txt").unwrap(), b"deep");
    assert!(h.keys().contains(&"z/bad//name".to_string()));
    p.delete(&rp("z/b/c.txt"), Precondition::None)
        .await
        .unwrap();
    // Its folder stays, as on a disk: the marker was written first.
    assert_eq!(p.stat(&rp("z/b")).await.unwrap().kind, EntryKind::Dir);
    assert!(h.keys().contains(&"z/b/".to_string()));
    // The key outside the prefix was never touched.
    assert_eq!(
        outside
            .object_keys()
            .await
            .unwrap()
            .iter()
            .filter(|k| *k == "sibling")
            .count(),
        1
    );
}

fn bucket_of(h: &S3) -> String {
    // `describe` is `s3://BUCKET/PREFIX (ENDPOINT)`.
    let d = h.provider.describe();
    d.trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_and_dead_endpoint_are_unreachable_not_empty() {
    let server = harness::servers::s3();
    let p = S3Provider::new(s3_config(&server.bucket("never-made"), "")).unwrap();
    let v = Version::from("\"x\"");
    for err in [
        p.stat(&RemotePath::root()).await.unwrap_err(),
        p.stat(&rp("f")).await.unwrap_err(),
        p.list(&RemotePath::root(), None).await.unwrap_err(),
        p.read(&rp("f"), &v, 0, 10).await.err().unwrap(),
    ] {
        assert!(matches!(err, ProviderError::Unreachable(_)), "{err:?}");
    }
    // Nothing listens on the port: refused at once, and named.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = S3Provider::new(S3Config {
        endpoint: format!("http://127.0.0.1:{port}"),
        ..s3_config("some-bucket", "")
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    match dead.stat(&rp("f")).await.unwrap_err() {
        ProviderError::Unreachable(msg) => assert!(msg.contains(&port.to_string()), "{msg}"),
        e => panic!("{e:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_directory_rename_cut_short_finishes_when_run_again() {
    let h = S3::new("dir-rename-resume", None).await;
    let p = &h.provider;
    p.mkdir(&rp("d")).await.unwrap();
    for i in 0..6 {
        put(p, &format!("d/f{i}"), format!("file {i}").as_bytes()).await;
    }
    // An earlier attempt copied two files (and no marker) before it stopped.
    for i in 0..2 {
        h.raw
            .put_raw(&format!("e/f{i}"), format!("file {i}").as_bytes())
            .await
            .unwrap();
    }
    p.rename(&rp("d"), &rp("e"), false).await.unwrap();
    assert!(!h.exists("d"));
    for i in 0..6 {
        assert_eq!(
            h.file(&format!("e/f{i}")).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert!(
        h.keys().contains(&"e/".to_string()),
        "the marker was moved too"
    );
    // A target holding something else is not taken for an earlier attempt.
    p.mkdir(&rp("g")).await.unwrap();
    put(p, "g/f0", b"file 0").await;
    h.raw.put_raw("h/other", b"other").await.unwrap();
    assert_eq!(
        p.rename(&rp("g"), &rp("h"), false).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("h"))
    );
    assert_eq!(h.file("g/f0").unwrap(), b"file 0");
}

/// What a small write costs, from the S3 server's own log. Into a folder this provider made:
/// the `PUT` alone, and one listing of the folder per `NAMES_TTL` in place of a listing at
/// each name (is a folder or a link there?). Into a folder made by another tool: a listing at
/// the name and the `PUT`. Nothing after it (the `PUT`'s answer gives the object's time), and no
/// check of a folder this provider wrote into less than `DIR_SEEN_TTL` ago. The untar of many
/// small files goes at the rate the server answers requests, so this is its speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_small_writes_take_one_put_each() {
    use fs_core::provider::s3::NAMES_TTL;
    let h = S3::new("small-writes", None).await;
    let p = &h.provider;
    let server = harness::servers::s3();
    let bucket = bucket_of(&h);
    // Probes conditional writes too, before the count starts.
    p.mkdir(&rp("d")).await.unwrap();
    let before = server.requests(&bucket).len();
    let t0 = std::time::Instant::now();
    let mut written = Vec::new();
    for i in 0..10 {
        let e = p
            .write(
                &rp(&format!("d/f{i}")),
                body(b"small", 2),
                5,
                Precondition::IfNotExists,
                ObjectAttrs::default(),
            )
            .await
            .unwrap();
        written.push(e);
    }
    for (i, e) in written.iter().enumerate().take(5) {
        p.write(
            &rp(&format!("d/f{i}")),
            body(b"again", 2),
            5,
            Precondition::IfMatch(e.version.clone()),
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    }
    let periods = (t0.elapsed().as_secs_f64() / NAMES_TTL.as_secs_f64()).ceil() as usize;
    let reqs = server.requests(&bucket)[before..].to_vec();
    let folder = "prefix=tree%2Froot%2Fd%2F";
    let listings = reqs.iter().filter(|r| r.contains("list-type=2")).count();
    let of_folder = reqs
        .iter()
        .filter(|r| r.contains(&format!("{folder}&")) || r.ends_with(folder))
        .count();
    let puts = reqs.iter().filter(|r| r.starts_with("PUT ")).count();
    assert_eq!(puts, 15, "{reqs:#?}");
    // Only a run slower than NAMES_TTL lists the folder again (once per period).
    assert_eq!(listings, of_folder, "no listing at a name: {reqs:#?}");
    assert!(of_folder < periods, "{periods} periods: {reqs:#?}");
    assert_eq!(reqs.len(), puts + listings, "{reqs:#?}");
    // The entry a write returns is what a stat finds.
    assert_eq!(p.stat(&rp("d/f9")).await.unwrap(), written[9]);

    // A folder made by another tool (no marker): the first write into it finds the folder by
    // its keys, the next ones know it.
    h.raw.put_raw("e/x", b"x").await.unwrap();
    let before = server.requests(&bucket).len();
    for name in ["e/y", "e/z"] {
        put(p, name, b"small").await;
    }
    let reqs = server.requests(&bucket)[before..].to_vec();
    // e/y: the listing at the name (empty), the marker's HEAD, a listing of e/, the PUT; e/z:
    // the listing and the PUT.
    assert!(reqs.len() <= 6, "{reqs:#?}");
    // An overwrite's listing finds the file, so the folder needs no check even when unknown.
    let fresh = S3Provider::new(s3_config(&bucket, "tree/root")).unwrap();
    let before = server.requests(&bucket).len();
    put(&fresh, "e/x", b"new x").await;
    let reqs = server.requests(&bucket)[before..].to_vec();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(h.file("e/x").unwrap(), b"new x");
}

/// A folder this provider made is known by its view, renewed by one listing of the folder once
/// older than its time to live (`NAMES_TTL`, 2 s here): what another tool put in it by then is seen (a folder, a link, a
/// file) and the write is checked against it, while a name the listing shows free needs no
/// request of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_folder_made_here_is_listed_again_once_its_view_is_old() {
    const TTL: Duration = Duration::from_secs(2);
    let mut h = S3::new("folder-views", None).await;
    h.provider = h.provider.with_names_ttl(TTL);
    let p = &h.provider;
    let server = harness::servers::s3();
    let bucket = bucket_of(&h);
    p.mkdir(&rp("v")).await.unwrap();
    put(p, "v/mine", b"mine").await;
    h.raw.put_raw("v/sub/k", b"k").await.unwrap();
    h.raw.put_raw("v/theirs", b"theirs").await.unwrap();
    h.raw.mkdir(&rp("v/dir")).await.unwrap();
    h.raw.symlink(&rp("v/link"), "target").await.unwrap();
    tokio::time::sleep(TTL).await;
    let w = |path: &'static str, pre: Precondition| async move {
        p.write(&rp(path), body(b"data", 3), 4, pre, ObjectAttrs::default())
            .await
    };
    assert_eq!(
        w("v/sub", Precondition::None).await.unwrap_err(),
        ProviderError::IsADirectory(rp("v/sub"))
    );
    for taken in ["v/dir", "v/theirs", "v/link"] {
        assert_eq!(
            w(taken, Precondition::IfNotExists).await.unwrap_err(),
            ProviderError::AlreadyExists(rp(taken))
        );
    }
    assert_eq!(
        p.mkdir(&rp("v/theirs")).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("v/theirs"))
    );
    // A link is replaced by a file written over it.
    w("v/link", Precondition::None).await.unwrap();
    assert_eq!(h.file("v/link").unwrap(), b"data");
    assert_eq!(p.stat(&rp("v/link")).await.unwrap().kind, EntryKind::File);
    // A free name: the `PUT` alone, when the view is fresh.
    let t0 = std::time::Instant::now();
    let before = server.requests(&bucket).len();
    w("v/new", Precondition::IfNotExists).await.unwrap();
    let reqs = server.requests(&bucket)[before..].to_vec();
    if t0.elapsed() < TTL {
        assert_eq!(reqs.len(), 1, "{reqs:#?}");
    }
    assert_eq!(h.file("v/new").unwrap(), b"data");
    // A folder removed and made again starts a new view: what was in the old one is gone.
    for name in ["v/new", "v/mine", "v/theirs", "v/link"] {
        p.delete(&rp(name), Precondition::None).await.unwrap();
    }
    p.delete(&rp("v/sub/k"), Precondition::None).await.unwrap();
    p.rmdir(&rp("v/sub")).await.ok();
    p.rmdir(&rp("v/dir")).await.unwrap();
    p.rmdir(&rp("v")).await.unwrap();
    p.mkdir(&rp("v")).await.unwrap();
    p.mkdir(&rp("v/mine")).await.unwrap();
    assert_eq!(p.stat(&rp("v/mine")).await.unwrap().kind, EntryKind::Dir);
    assert_eq!(
        w("v/mine", Precondition::None).await.unwrap_err(),
        ProviderError::IsADirectory(rp("v/mine"))
    );
}

/// The listing that checks a name before a write is one page: siblings sorting between `name`
/// and `name/` (`name-1`, `name.a`, …) can fill it before the link object or the folder shows;
/// what the page could not show is asked for on its own, so the checks hold (a page of 2 keys
/// here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_checks_before_a_write_see_past_a_full_page() {
    let h = S3::new("name-probe-pages", Some(2)).await;
    let p = &h.provider;
    let w = |path: &'static str, pre: Precondition| async move {
        p.write(&rp(path), body(b"data", 3), 4, pre, ObjectAttrs::default())
            .await
    };
    for k in ["s/name-1", "s/name-2", "s/name.a", "s/name/inside"] {
        h.raw.put_raw(k, b"k").await.unwrap();
    }
    // The page ends before the link's key and the folder's prefix.
    assert_eq!(
        w("s/name", Precondition::None).await.unwrap_err(),
        ProviderError::IsADirectory(rp("s/name"))
    );
    assert_eq!(
        w("s/name", Precondition::IfNotExists).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("s/name"))
    );
    // The page ends at the link: the folder is asked for on its own.
    for k in ["s/x-1", "s/x.rclonelink", "s/x.z", "s/x/inside"] {
        h.raw.put_raw(k, b"k").await.unwrap();
    }
    assert_eq!(
        w("s/x", Precondition::None).await.unwrap_err(),
        ProviderError::IsADirectory(rp("s/x"))
    );
    // A link behind a full page: refused for a create, replaced by a plain write.
    for k in ["s/lnk-1", "s/lnk-2"] {
        h.raw.put_raw(k, b"k").await.unwrap();
    }
    h.raw.put_raw("s/lnk.rclonelink", b"target").await.unwrap();
    assert_eq!(p.stat(&rp("s/lnk")).await.unwrap().kind, EntryKind::Symlink);
    assert_eq!(
        w("s/lnk", Precondition::IfNotExists).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("s/lnk"))
    );
    let e = w("s/lnk", Precondition::None).await.unwrap();
    assert_eq!(p.stat(&rp("s/lnk")).await.unwrap(), e);
    assert!(!h.keys().contains(&"s/lnk.rclonelink".to_string()));
    assert_eq!(h.file("s/lnk").unwrap(), b"data");
    // Siblings only: the write goes through, and a folder or link made the same way is refused
    // for the name.
    for k in ["s/y-1", "s/y-2", "s/y.a"] {
        h.raw.put_raw(k, b"k").await.unwrap();
    }
    w("s/y", Precondition::IfNotExists).await.unwrap();
    assert_eq!(h.file("s/y").unwrap(), b"data");
    assert_eq!(
        p.mkdir(&rp("s/y")).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("s/y"))
    );
    assert_eq!(
        p.symlink(&rp("s/name"), "t").await.unwrap_err(),
        ProviderError::AlreadyExists(rp("s/name"))
    );
    assert_eq!(
        p.mkdir(&rp("s/lnk-1")).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("s/lnk-1"))
    );
}

// ---------------------------------------------------------------------------------------------
// WebDAV only

async fn assert_webdav_unreachable(p: &WebDavProvider, v: &Version, url: &str) {
    let is_unreachable = |r: Result<(), ProviderError>, what: &str| match r {
        Err(ProviderError::Unreachable(msg)) => {
            assert!(msg.contains(url), "{what}: message names the URL: {msg}")
        }
        other => panic!("{what}: expected Unreachable, got {other:?}"),
    };
    is_unreachable(p.stat(&rp("f")).await.map(drop), "stat");
    is_unreachable(p.stat(&rp("d/x")).await.map(drop), "stat deep");
    is_unreachable(p.stat(&RemotePath::root()).await.map(drop), "stat root");
    is_unreachable(p.list(&RemotePath::root(), None).await.map(drop), "list");
    is_unreachable(p.list(&rp("d"), None).await.map(drop), "list d");
    is_unreachable(p.read(&rp("f"), v, 0, 10).await.map(drop), "read");
    is_unreachable(p.read(&rp("f"), v, 0, 0).await.map(drop), "read nothing");
    for pre in [
        Precondition::None,
        Precondition::IfNotExists,
        Precondition::IfMatch(v.clone()),
    ] {
        is_unreachable(
            p.write(&rp("f"), body(b"1", 1), 1, pre, ObjectAttrs::default())
                .await
                .map(drop),
            "write",
        );
    }
    is_unreachable(p.mkdir(&rp("d")).await.map(drop), "mkdir");
    is_unreachable(p.rmdir(&rp("d")).await.map(drop), "rmdir");
    is_unreachable(
        p.delete(&rp("f"), Precondition::None).await.map(drop),
        "delete",
    );
    is_unreachable(p.rename(&rp("f"), &rp("g"), true).await.map(drop), "rename");
    is_unreachable(
        p.set_attrs(&rp("f"), ObjectAttrs::default())
            .await
            .map(drop),
        "set_attrs",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_root_folder_removed_is_unreachable_not_not_found() {
    let h = WebDav::new("root-removed");
    let p = &h.provider;
    let v = put(p, "f", b"data").await.version;
    p.mkdir(&rp("d")).await.unwrap();
    std::fs::remove_dir_all(&h.folder.path).unwrap();
    assert_webdav_unreachable(p, &v, &h.folder.url).await;

    // A file where the folder was is no better.
    std::fs::write(&h.folder.path, b"not a folder").unwrap();
    assert_webdav_unreachable(p, &v, &h.folder.url).await;
    std::fs::remove_file(&h.folder.path).unwrap();

    // Back again (an empty folder): now answers are real answers.
    std::fs::create_dir(&h.folder.path).unwrap();
    harness::webdav_server::webdav().give(&h.folder.path);
    assert_eq!(
        p.stat(&rp("f")).await.unwrap_err(),
        ProviderError::NotFound(rp("f"))
    );
    put(p, "f", b"again").await;
    assert_eq!(h.file("f").unwrap(), b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_dead_port_is_unreachable_quickly() {
    // Nothing listens on the port: refused at once, and named.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/dav/");
    let p = WebDavProvider::new(webdav_config(&url)).unwrap();
    let t0 = std::time::Instant::now();
    for err in [
        p.stat(&rp("f")).await.unwrap_err(),
        p.list(&RemotePath::root(), None).await.unwrap_err(),
        p.read(&rp("f"), &Version::from("\"x\""), 0, 10)
            .await
            .err()
            .unwrap(),
        p.write(
            &rp("f"),
            body(b"1", 1),
            1,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err(),
    ] {
        match err {
            ProviderError::Unreachable(msg) => assert!(msg.contains(&port.to_string()), "{msg}"),
            e => panic!("{e:?}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// What Apache itself honours, asked directly (no check of the provider's in front), and the
/// provider refusing stale versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_if_match_is_honoured() {
    let h = WebDav::new("if-match");
    let p = &h.provider;
    let v1 = put(p, "f", b"one").await.version;
    let v2 = put(p, "f", b"two!").await.version;
    assert_ne!(v1, v2);
    let url = format!("{}f", h.folder.url);
    let stale = String::from_utf8(v1.as_bytes().to_vec()).unwrap();
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    // PUT, GET and DELETE with a stale If-Match; PUT with If-None-Match: * over a file.
    let put_stale = http
        .put(&url)
        .header("if-match", &stale)
        .body("three")
        .send()
        .await
        .unwrap();
    assert_eq!(status(put_stale), 412);
    let get_stale = http
        .get(&url)
        .header("if-match", &stale)
        .header("range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(status(get_stale), 412);
    let delete_stale = http
        .delete(&url)
        .header("if-match", &stale)
        .send()
        .await
        .unwrap();
    assert_eq!(status(delete_stale), 412);
    let create_over = http
        .put(&url)
        .header("if-none-match", "*")
        .body("three")
        .send()
        .await
        .unwrap();
    assert_eq!(status(create_over), 412);
    // The WebDAV If header with a stale tag (what the provider sends for a weak ETag).
    let if_stale = http
        .put(&url)
        .header("if", format!("<{url}> ([{stale}])"))
        .body("three")
        .send()
        .await
        .unwrap();
    assert_eq!(status(if_stale), 412);
    assert_eq!(h.file("f").unwrap(), b"two!");

    // Through the provider.
    let err = p
        .write(
            &rp("f"),
            body(b"three", 5),
            5,
            Precondition::IfMatch(v1.clone()),
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("f") });
    assert_eq!(
        p.delete(&rp("f"), Precondition::IfMatch(v1.clone()))
            .await
            .unwrap_err(),
        ProviderError::PreconditionFailed { path: rp("f") }
    );
    assert_eq!(
        p.read(&rp("f"), &v1, 0, 10).await.err().unwrap(),
        ProviderError::PreconditionFailed { path: rp("f") }
    );
    assert_eq!(h.file("f").unwrap(), b"two!");
    // Changed behind the back with the same size: a new version all the same.
    h.put_file("f", b"TWO!");
    let v3 = p.stat(&rp("f")).await.unwrap().version;
    assert_ne!(v3, v2);
    assert_eq!(
        p.write(
            &rp("f"),
            body(b"x", 1),
            1,
            Precondition::IfMatch(v2),
            ObjectAttrs::default()
        )
        .await
        .unwrap_err(),
        ProviderError::PreconditionFailed { path: rp("f") }
    );
    assert_eq!(h.file("f").unwrap(), b"TWO!");
}

/// Apache calls the ETag of a file changed within the last second weak (and refuses `If-Match`
/// on it); the provider's versions do not change when it turns strong, and conditional calls
/// work on both sides of that second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_versions_are_stable_across_the_weak_etag_second() {
    let h = WebDav::new("weak-etags");
    let p = &h.provider;
    let bytes = data(50_000, 8);
    let e = put(p, "f", &bytes).await;
    assert_eq!(p.stat(&rp("f")).await.unwrap(), e);
    assert_eq!(read_range(p, "f", &e.version, 10, 20).await, &bytes[10..30]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        p.stat(&rp("f")).await.unwrap(),
        e,
        "the same, a second later"
    );
    assert_eq!(read_range(p, "f", &e.version, 10, 20).await, &bytes[10..30]);
    let e2 = p
        .write(
            &rp("f"),
            body(b"new", 3),
            3,
            Precondition::IfMatch(e.version.clone()),
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    // Right after: weak again.
    assert_eq!(read_all(p, "f", &e2.version).await, b"new");
    p.delete(&rp("f"), Precondition::IfMatch(e2.version))
        .await
        .unwrap();
    assert!(!h.exists("f"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_names_are_percent_encoded() {
    let h = WebDav::new("names");
    let p = &h.provider;
    let odd = [
        "a b",
        "100%",
        "x#y?z&w=1",
        "plus+sign",
        "ünïcödé",
        "semi;colon",
    ];
    p.mkdir(&rp("dir with space")).await.unwrap();
    for n in odd {
        put(p, &format!("dir with space/{n}"), n.as_bytes()).await;
    }
    let mut expected: Vec<&str> = odd.to_vec();
    expected.sort();
    assert_eq!(names(&list_all(&h, "dir with space").await), expected);
    for n in odd {
        let path = format!("dir with space/{n}");
        assert_eq!(h.file(&path).unwrap(), n.as_bytes(), "{n}");
        let e = p.stat(&rp(&path)).await.unwrap();
        assert_eq!(e.name, n);
        assert_eq!(read_all(p, &path, &e.version).await, n.as_bytes());
    }
    p.rename(&rp("dir with space/a b"), &rp("c d"), false)
        .await
        .unwrap();
    assert_eq!(h.file("c d").unwrap(), b"a b");
    // Apache's uploads in progress are hidden, and their names reserved.
    h.put_file(&format!("{APACHE_TMP_PREFIX}123456"), b"in flight");
    assert_eq!(names(&list_all(&h, "").await), ["c d", "dir with space"]);
    assert!(matches!(
        p.mkdir(&rp(&format!("{APACHE_TMP_PREFIX}x")))
            .await
            .unwrap_err(),
        ProviderError::InvalidName { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_basic_auth() {
    use harness::webdav_server::{WEBDAV_PASSWORD, WEBDAV_USER};
    let folder = harness::webdav_server::webdav().private_folder("auth");
    let with = |user: Option<&str>, password: Option<&str>| {
        WebDavProvider::new(WebDavConfig {
            username: user.map(str::to_string),
            password: password.map(str::to_string),
            ..webdav_config(&folder.url)
        })
        .unwrap()
    };
    for p in [
        with(None, None),
        with(Some(WEBDAV_USER), Some("wrong")),
        with(Some("nobody-known"), Some(WEBDAV_PASSWORD)),
    ] {
        assert_eq!(
            p.stat(&rp("f")).await.unwrap_err(),
            ProviderError::PermissionDenied(rp("f"))
        );
        assert_eq!(
            p.write(
                &rp("f"),
                body(b"1", 1),
                1,
                Precondition::None,
                ObjectAttrs::default()
            )
            .await
            .unwrap_err(),
            ProviderError::PermissionDenied(rp("f"))
        );
    }
    assert!(!folder.path.join("f").exists());
    let p = with(Some(WEBDAV_USER), Some(WEBDAV_PASSWORD));
    assert!(!format!("{p:?}").contains(WEBDAV_PASSWORD));
    assert!(!p.describe().contains(WEBDAV_PASSWORD));
    let e = put(&p, "f", b"secret stuff").await;
    assert_eq!(read_all(&p, "f", &e.version).await, b"secret stuff");
    assert_eq!(
        std::fs::read(folder.path.join("f")).unwrap(),
        b"secret stuff"
    );
}

/// A TCP proxy to the WebDAV server that cuts the connection once, after `cut_after` bytes of
/// one answer (only a large `GET` answers that much), and counts the connections.
struct CuttingProxy {
    url: String,
    cuts: Arc<std::sync::atomic::AtomicU32>,
}

fn cutting_proxy(folder_url: &str, cut_after: usize) -> CuttingProxy {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU32, Ordering};
    let server = harness::webdav_server::webdav();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = server.port;
    let cuts = Arc::new(AtomicU32::new(0));
    let cuts2 = Arc::clone(&cuts);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let (mut c_read, mut u_write) = (client.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut u_write);
                let _ = u_write.shutdown(std::net::Shutdown::Write);
            });
            let cuts = Arc::clone(&cuts2);
            let (mut u_read, mut c_write) = (up, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0usize;
                loop {
                    let n = match u_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if total + n > cut_after && cuts.load(Ordering::SeqCst) == 0 {
                        cuts.fetch_add(1, Ordering::SeqCst);
                        let _ = c_write.write_all(&buf[..cut_after - total]);
                        let _ = c_write.shutdown(std::net::Shutdown::Both);
                        let _ = u_read.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if c_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    total += n;
                }
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let url = folder_url.replace(&format!(":{upstream}/"), &format!(":{port}/"));
    CuttingProxy { url, cuts }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_read_cut_midway_resumes() {
    let h = WebDav::new("cut-read");
    let bytes = data(3 << 20, 11);
    let v = put(&h.provider, "f", &bytes).await.version;
    let proxy = cutting_proxy(&h.folder.url, 1 << 20);
    let p = WebDavProvider::new(webdav_config(&proxy.url)).unwrap();
    assert_eq!(read_all(&p, "f", &v).await, bytes);
    assert_eq!(proxy.cuts.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A range, cut too (a fresh proxy), resumes from the byte reached.
    let proxy = cutting_proxy(&h.folder.url, 512 << 10);
    let p = WebDavProvider::new(webdav_config(&proxy.url)).unwrap();
    let got = read_range(&p, "f", &v, 100_000, 2 << 20).await;
    assert_eq!(got, &bytes[100_000..100_000 + (2 << 20)]);
    assert_eq!(proxy.cuts.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Changed between the cut and the resumption: the stream ends with PreconditionFailed,
    // never mixing versions.
    let proxy = cutting_proxy(&h.folder.url, 1 << 20);
    let p = WebDavProvider::new(webdav_config(&proxy.url)).unwrap();
    let mut s = p.read(&rp("f"), &v, 0, u64::MAX).await.unwrap();
    let mut got = Vec::new();
    let mut changed = false;
    let mut last = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => {
                got.extend_from_slice(&b);
                if !changed && got.len() > 256 << 10 {
                    // A new file renamed over it (Apache keeps sending the old one it opened).
                    h.put_file("other", &data(3 << 20, 12));
                    std::fs::rename(h.abs("other"), h.abs("f")).unwrap();
                    changed = true;
                }
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        &got[..],
        &bytes[..got.len()],
        "only bytes of the old version"
    );
    assert_eq!(
        last,
        Some(ProviderError::PreconditionFailed { path: rp("f") })
    );
}

/// `MOVE` with `Overwrite: T` would remove a directory at the target with everything in it: a
/// directory replaces only an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_directory_replaces_only_an_empty_directory() {
    let h = WebDav::new("dir-over-dir");
    let p = &h.provider;
    p.mkdir(&rp("a")).await.unwrap();
    put(p, "a/x", b"x").await;
    p.mkdir(&rp("full")).await.unwrap();
    put(p, "full/keep", b"keep").await;
    p.mkdir(&rp("empty")).await.unwrap();
    assert_eq!(
        p.rename(&rp("a"), &rp("full"), true).await.unwrap_err(),
        ProviderError::NotEmpty(rp("full"))
    );
    assert_eq!(h.file("full/keep").unwrap(), b"keep");
    assert_eq!(
        p.rename(&rp("a"), &rp("empty"), false).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("empty"))
    );
    let e = p.rename(&rp("a"), &rp("empty"), true).await.unwrap();
    assert_eq!(e.kind, EntryKind::Dir);
    assert_eq!(e.name, "empty");
    assert_eq!(h.file("empty/x").unwrap(), b"x");
    assert!(!h.exists("a"));
    assert_eq!(p.stat(&rp("empty")).await.unwrap(), e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_symlinks_are_rclone_link_files() {
    let h = WebDav::new("links");
    let p = &h.provider;
    // Made by `rclone --links` behind the provider's back: a link file whose body is the target.
    h.put_file("made-by-rclone.rclonelink", b"some/target");
    let e = p.stat(&rp("made-by-rclone")).await.unwrap();
    assert_eq!(e.kind, EntryKind::Symlink);
    assert_eq!(e.symlink_target.as_deref(), Some("some/target"));
    assert_eq!(e.size, "some/target".len() as u64);
    assert_eq!(list_all(&h, "").await, vec![e]);
    assert_eq!(
        p.stat(&rp("made-by-rclone.rclonelink")).await.unwrap_err(),
        ProviderError::NotFound(rp("made-by-rclone.rclonelink"))
    );
    // Ours are the same files.
    p.symlink(&rp("mine"), "../up").await.unwrap();
    assert_eq!(h.file("mine.rclonelink").unwrap(), b"../up");
    assert_eq!(h.file("mine"), None, "not a file");
    // A file written over a link replaces it; a link renamed over a file replaces the file.
    put(p, "mine", b"now a file").await;
    assert_eq!(p.stat(&rp("mine")).await.unwrap().kind, EntryKind::File);
    assert_eq!(h.raw_names(""), ["made-by-rclone.rclonelink", "mine"]);
    let e = p
        .rename(&rp("made-by-rclone"), &rp("mine"), true)
        .await
        .unwrap();
    assert_eq!(e.symlink_target.as_deref(), Some("some/target"));
    assert_eq!(p.stat(&rp("mine")).await.unwrap(), e);
    assert_eq!(h.raw_names(""), ["mine.rclonelink"]);
    // A file renamed over a link replaces the link.
    put(p, "f", b"file").await;
    let e = p.rename(&rp("f"), &rp("mine"), true).await.unwrap();
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(p.stat(&rp("mine")).await.unwrap(), e);
    assert_eq!(h.raw_names(""), ["mine"]);
    assert_eq!(h.file("mine").unwrap(), b"file");
    // The suffix is not a name one can use.
    let err = p.mkdir(&rp("x.rclonelink")).await.unwrap_err();
    assert!(matches!(err, ProviderError::InvalidName { .. }), "{err:?}");
    let err = p
        .write(
            &rp("x.rclonelink"),
            body(b"x", 1),
            1,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::InvalidName { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_symlinks_are_rclone_link_objects() {
    let h = S3::new("links", None).await;
    let p = &h.provider;
    // Made by `rclone --links`: a link object whose body is the target.
    h.raw
        .put_raw("made-by-rclone.rclonelink", b"some/target")
        .await
        .unwrap();
    let e = p.stat(&rp("made-by-rclone")).await.unwrap();
    assert_eq!(e.kind, EntryKind::Symlink);
    assert_eq!(e.symlink_target.as_deref(), Some("some/target"));
    assert_eq!(list_all(&h, "").await, vec![e]);
    // Ours are the same objects.
    p.symlink(&rp("mine"), "../up").await.unwrap();
    assert!(h.keys().contains(&"mine.rclonelink".to_string()));
    assert_eq!(h.file("mine.rclonelink"), None, "not shown as a file");
    // A file written over a link replaces it; a link renamed over a file replaces the file.
    put(p, "mine", b"now a file").await;
    assert_eq!(p.stat(&rp("mine")).await.unwrap().kind, EntryKind::File);
    assert!(!h.keys().contains(&"mine.rclonelink".to_string()));
    p.rename(&rp("made-by-rclone"), &rp("mine"), true)
        .await
        .unwrap();
    let e = p.stat(&rp("mine")).await.unwrap();
    assert_eq!(e.symlink_target.as_deref(), Some("some/target"));
    assert_eq!(h.keys(), ["mine.rclonelink"]);
    // The suffix is not a name one can use.
    let err = p.mkdir(&rp("x.rclonelink")).await.unwrap_err();
    assert!(matches!(err, ProviderError::InvalidName { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// SFTP only

/// [`write_stat_read_round_trip`] with times in whole seconds (all SFTP v3 keeps).
async fn sftp_write_stat_read_round_trip(h: &dyn Backing) {
    let p = h.provider();
    for (name, len) in [("empty", 0usize), ("small", 1234), ("big", 3 << 20)] {
        let bytes = data(len, 1);
        let written = p
            .write(
                &rp(name),
                body(&bytes, 64 * 1024 + 7),
                len as u64,
                Precondition::None,
                ObjectAttrs::default(),
            )
            .await
            .unwrap();
        assert_eq!(written.name, name);
        assert_eq!(written.kind, EntryKind::File);
        assert_eq!(written.size, len as u64);
        let st = p.stat(&rp(name)).await.unwrap();
        assert_eq!(st, written);
        assert_eq!(read_all(p, name, &st.version).await, bytes);
        assert_eq!(h.file(name).unwrap(), bytes);
    }
    p.mkdir(&rp("d")).await.unwrap();
    let mtime = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let e = p
        .write(
            &rp("d/f"),
            body(b"hello", 2),
            5,
            Precondition::None,
            ObjectAttrs {
                mode: Some(0o640),
                mtime: Some(mtime),
            },
        )
        .await
        .unwrap();
    assert_eq!(e.mode, Some(0o640));
    assert_eq!(e.mtime, mtime);
    assert_eq!(p.stat(&rp("d/f")).await.unwrap(), e);
    assert_eq!(h.file("d/f").unwrap(), b"hello");
    // Rewritten without a mode: the mode stays.
    let e = p
        .write(
            &rp("d/f"),
            body(b"hello again", 4),
            11,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    assert_eq!(e.mode, Some(0o640));
    assert_ne!(e.mtime, mtime);
    assert_eq!(p.stat(&rp("d/f")).await.unwrap(), e);
    // A time with nanoseconds is kept to the second; one before 1970 becomes 1970.
    let e = p
        .write(
            &rp("d/g"),
            body(b"g", 1),
            1,
            Precondition::None,
            ObjectAttrs {
                mode: Some(0o777),
                mtime: Some(mtime + Duration::new(3, 999_999_999)),
            },
        )
        .await
        .unwrap();
    assert_eq!(e.mtime, mtime + Duration::from_secs(3));
    assert_eq!(e.mode, Some(0o777), "exactly, whatever the umask");
    no_tmp_left(h, "");
    no_tmp_left(h, "d");
}

/// [`set_attrs_mode_and_mtime`] with times in whole seconds.
async fn sftp_set_attrs_mode_and_mtime(h: &dyn Backing) {
    let p = h.provider();
    put(p, "f", b"abc").await;
    let mtime = UNIX_EPOCH + Duration::from_secs(978_307_200);
    let e = p
        .set_attrs(
            &rp("f"),
            ObjectAttrs {
                mode: Some(0o600),
                mtime: Some(mtime + Duration::from_nanos(987_654_321)),
            },
        )
        .await
        .unwrap();
    assert_eq!(e.mode, Some(0o600));
    assert_eq!(e.mtime, mtime);
    assert_eq!(e.size, 3);
    assert_eq!(p.stat(&rp("f")).await.unwrap(), e);
    assert_eq!(h.file("f").unwrap(), b"abc");
    let e2 = p
        .set_attrs(
            &rp("f"),
            ObjectAttrs {
                mode: Some(0o755),
                mtime: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(e2.mode, Some(0o755));
    assert_eq!(e2.mtime, mtime);
    // A time before 1970 is clamped to 1970; a directory.
    p.mkdir(&rp("d")).await.unwrap();
    let e3 = p
        .set_attrs(
            &rp("d"),
            ObjectAttrs {
                mode: Some(0o700),
                mtime: Some(UNIX_EPOCH - Duration::new(86_400, 500)),
            },
        )
        .await
        .unwrap();
    assert_eq!(e3.mtime, UNIX_EPOCH);
    assert_eq!(e3.mode, Some(0o700));
    assert_eq!(p.stat(&rp("d")).await.unwrap(), e3);
    // The mtime of a symlink itself (lsetstat@openssh.com); its mode is left alone.
    p.symlink(&rp("l"), "f").await.unwrap();
    let e4 = p
        .set_attrs(
            &rp("l"),
            ObjectAttrs {
                mode: Some(0o600),
                mtime: Some(mtime + Duration::from_secs(5)),
            },
        )
        .await
        .unwrap();
    assert_eq!(e4.mtime, mtime + Duration::from_secs(5));
    assert_eq!(e4.kind, EntryKind::Symlink);
    assert_eq!(
        p.stat(&rp("f")).await.unwrap().mtime,
        mtime,
        "the target is untouched"
    );
    assert_eq!(p.stat(&rp("f")).await.unwrap().mode, Some(0o755));
    // Setting nothing changes nothing.
    assert_eq!(
        p.set_attrs(&rp("f"), ObjectAttrs::default()).await.unwrap(),
        p.stat(&rp("f")).await.unwrap()
    );
}

async fn assert_sftp_unreachable(p: &SftpProvider, v: &Version, folder: &str) {
    let is_unreachable = |r: Result<(), ProviderError>, what: &str| match r {
        Err(ProviderError::Unreachable(msg)) => {
            assert!(
                msg.contains(folder),
                "{what}: message names the folder: {msg}"
            )
        }
        other => panic!("{what}: expected Unreachable, got {other:?}"),
    };
    is_unreachable(p.stat(&rp("f")).await.map(drop), "stat");
    is_unreachable(p.stat(&rp("d/f")).await.map(drop), "stat d/f");
    is_unreachable(p.stat(&RemotePath::root()).await.map(drop), "stat root");
    is_unreachable(p.list(&RemotePath::root(), None).await.map(drop), "list");
    is_unreachable(p.list(&rp("d"), None).await.map(drop), "list d");
    is_unreachable(p.read(&rp("f"), v, 0, 10).await.map(drop), "read");
    is_unreachable(
        p.write(
            &rp("f"),
            body(b"1", 1),
            1,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .map(drop),
        "write",
    );
    is_unreachable(p.mkdir(&rp("d")).await.map(drop), "mkdir");
    is_unreachable(p.rmdir(&rp("d")).await.map(drop), "rmdir");
    is_unreachable(
        p.delete(&rp("f"), Precondition::None).await.map(drop),
        "delete",
    );
    is_unreachable(p.rename(&rp("f"), &rp("g"), true).await.map(drop), "rename");
    is_unreachable(p.symlink(&rp("l"), "f").await.map(drop), "symlink");
    is_unreachable(
        p.set_attrs(&rp("f"), ObjectAttrs::default())
            .await
            .map(drop),
        "set_attrs",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_root_missing_is_unreachable_not_not_found() {
    let h = Sftp::new("root-missing");
    let p = &h.provider;
    let v = put(p, "f", b"data").await.version;
    p.mkdir(&rp("d")).await.unwrap();
    std::fs::remove_dir_all(&h.folder.path).unwrap();
    assert_sftp_unreachable(p, &v, &h.folder.remote).await;

    // A file where the folder was is no better.
    std::fs::write(&h.folder.path, b"not a folder").unwrap();
    assert_sftp_unreachable(p, &v, &h.folder.remote).await;
    std::fs::remove_file(&h.folder.path).unwrap();

    // Back again (an empty folder): now answers are real answers.
    std::fs::create_dir(&h.folder.path).unwrap();
    assert_eq!(
        p.stat(&rp("f")).await.unwrap_err(),
        ProviderError::NotFound(rp("f"))
    );
    put(p, "f", b"again").await;
    assert_eq!(h.file("f").unwrap(), b"again");

    // A folder that never existed.
    let server = harness::sftp_server::sftp();
    let missing = format!("{}/never-made", h.folder.remote);
    let p = SftpProvider::new(sftp_config(server, &missing)).unwrap();
    assert!(p.describe().contains("never-made"), "{}", p.describe());
    assert_sftp_unreachable(&p, &v, &missing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_dead_port_is_unreachable_quickly() {
    let server = harness::sftp_server::sftp();
    // Nothing listens on the port: refused at once, and named.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = SftpProvider::new(SftpConfig {
        port,
        ..sftp_config(server, "/")
    })
    .unwrap();
    let who = format!("{}@127.0.0.1:{port}", server.user);
    let t0 = std::time::Instant::now();
    for err in [
        p.stat(&rp("f")).await.unwrap_err(),
        p.list(&RemotePath::root(), None).await.unwrap_err(),
        p.read(&rp("f"), &Version::from("x"), 0, 10)
            .await
            .err()
            .unwrap(),
        p.write(
            &rp("f"),
            body(b"1", 1),
            1,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err(),
    ] {
        match err {
            ProviderError::Unreachable(msg) => assert!(msg.contains(&who), "{msg}"),
            e => panic!("{e:?}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// A server that accepts connections and never says a word: every call ends with `TimedOut`
/// after the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_silent_server_times_out() {
    let server = harness::sftp_server::sftp();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(4) {
            held.push(conn);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let p = SftpProvider::new(SftpConfig {
        port,
        request_timeout: Duration::from_millis(700),
        ..sftp_config(server, "/")
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(p.stat(&rp("f")).await.unwrap_err(), ProviderError::TimedOut);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "bounded by the request timeout: {:?}",
        t0.elapsed()
    );
    assert!(ProviderError::TimedOut.is_unreachable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_keys_and_host_keys() {
    use fs_core::provider::sftp::SftpConfigError;
    use harness::sftp_server::KEY_PASSPHRASE;
    let server = harness::sftp_server::sftp();
    let folder = server.folder("keys");
    let cfg = sftp_config(server, &folder.remote);
    // A key the server does not know, or a user it does not let in: PermissionDenied.
    for p in [
        SftpProvider::new(SftpConfig {
            key: server.unknown_key.clone(),
            ..cfg.clone()
        })
        .unwrap(),
        SftpProvider::new(SftpConfig {
            user: "nobody-known".into(),
            ..cfg.clone()
        })
        .unwrap(),
    ] {
        assert_eq!(
            p.stat(&rp("f")).await.unwrap_err(),
            ProviderError::PermissionDenied(rp("f"))
        );
        assert_eq!(
            p.write(
                &rp("f"),
                body(b"1", 1),
                1,
                Precondition::None,
                ObjectAttrs::default()
            )
            .await
            .unwrap_err(),
            ProviderError::PermissionDenied(rp("f"))
        );
    }
    assert!(!folder.path.join("f").exists());

    // An encrypted key: without its passphrase, or with a wrong one, it cannot be used.
    let encrypted = |pass: Option<&str>| SftpConfig {
        key: server.encrypted_key.clone(),
        key_passphrase: pass.map(str::to_string),
        ..cfg.clone()
    };
    for pass in [None, Some("wrong")] {
        assert!(matches!(
            SftpProvider::new(encrypted(pass)),
            Err(SftpConfigError::Key { .. })
        ));
    }
    let p = SftpProvider::new(encrypted(Some(KEY_PASSPHRASE))).unwrap();
    assert!(!format!("{p:?}").contains(KEY_PASSPHRASE));
    assert!(!p.describe().contains(KEY_PASSPHRASE));
    let e = put(&p, "f", b"with the encrypted key").await;
    assert_eq!(
        read_all(&p, "f", &e.version).await,
        b"with the encrypted key"
    );
    assert!(matches!(
        SftpProvider::new(SftpConfig {
            key: folder.path.join("no-such-key"),
            ..cfg.clone()
        }),
        Err(SftpConfigError::Key { .. })
    ));

    // The host key: the right fingerprint works; a wrong one, or a known_hosts file without
    // the server, fails the connection (Unreachable, saying why).
    let with_fp = |fp: &str| {
        SftpProvider::new(SftpConfig {
            host_key_fingerprint: Some(fp.to_string()),
            known_hosts: None,
            ..cfg.clone()
        })
        .unwrap()
    };
    let p = with_fp(&server.host_key_fingerprint);
    assert_eq!(p.stat(&rp("f")).await.unwrap(), e);
    let p = with_fp("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    match p.stat(&rp("f")).await.unwrap_err() {
        ProviderError::Unreachable(msg) => {
            assert!(msg.contains("host key"), "{msg}");
            assert!(msg.contains(&server.host_key_fingerprint), "{msg}");
        }
        e => panic!("{e:?}"),
    }
    let empty = folder.path.join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let p = SftpProvider::new(SftpConfig {
        known_hosts: Some(empty),
        ..cfg.clone()
    })
    .unwrap();
    match p.stat(&rp("f")).await.unwrap_err() {
        ProviderError::Unreachable(msg) => assert!(msg.contains("known_hosts"), "{msg}"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        SftpProvider::new(SftpConfig {
            host_key_fingerprint: Some("MD5:aa:bb".into()),
            ..cfg.clone()
        }),
        Err(SftpConfigError::Fingerprint(_))
    ));
}

/// Reads the first piece of a 3 MiB file, lets `change` modify it on disk, and returns the
/// file's bytes, how many bytes the first piece had, and the rest of the stream.
async fn sftp_read_while_changing(
    h: &Sftp,
    change: impl FnOnce(&Path),
) -> (Vec<u8>, usize, Vec<Result<Bytes, ProviderError>>) {
    let p = &h.provider;
    let bytes = data(3 << 20, 5);
    let v = put(p, "f", &bytes).await.version;
    let mut s = p.read(&rp("f"), &v, 0, u64::MAX).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty() && first.len() <= 1 << 20);
    assert_eq!(&first[..], &bytes[..first.len()]);
    change(&h.abs("f"));
    let mut rest = Vec::new();
    while let Some(item) = s.next().await {
        rest.push(item);
    }
    (bytes, first.len(), rest)
}

/// Every byte after the first piece is from the old version, and the stream ends with
/// `PreconditionFailed` (when `must_fail`) or complete.
fn assert_never_mixed(
    bytes: &[u8],
    first: usize,
    rest: Vec<Result<Bytes, ProviderError>>,
    must_fail: bool,
) {
    let mut got = Vec::new();
    let mut failed = false;
    for item in rest {
        assert!(!failed, "nothing after the error");
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => {
                assert_eq!(e, ProviderError::PreconditionFailed { path: rp("f") });
                failed = true;
            }
        }
    }
    assert_eq!(
        got,
        &bytes[first..first + got.len()],
        "only bytes of the old version"
    );
    if must_fail {
        assert!(failed, "the stream ends with PreconditionFailed");
    } else {
        assert!(!failed);
        assert_eq!(first + got.len(), bytes.len(), "complete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_file_changed_during_a_read_fails_never_mixes() {
    // Rewritten in place with another size.
    let h = Sftp::new("read-rewritten");
    let (bytes, first, rest) =
        sftp_read_while_changing(&h, |f| std::fs::write(f, data((2 << 20) + 1, 6)).unwrap()).await;
    assert_never_mixed(&bytes, first, rest, true);

    // Patched in place, same size, the mtime moved (as any write a second later does).
    let h = Sftp::new("read-patched");
    let (bytes, first, rest) = sftp_read_while_changing(&h, |f| {
        let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        std::os::unix::fs::FileExt::write_at(&file, b"patched", 2 << 20).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
    })
    .await;
    assert_never_mixed(&bytes, first, rest, true);

    // Replaced by rename: the open file keeps the old contents, read to the end.
    let h = Sftp::new("read-replaced");
    let (bytes, first, rest) = sftp_read_while_changing(&h, |f| {
        let tmp = f.with_file_name("other");
        std::fs::write(&tmp, b"replacement").unwrap();
        std::fs::rename(&tmp, f).unwrap();
    })
    .await;
    assert_never_mixed(&bytes, first, rest, false);

    // A read of a file changed between stat and read: refused before any byte.
    let p = &h.provider;
    let v = p.stat(&rp("f")).await.unwrap().version;
    h.put_file("f", b"changed again");
    assert_eq!(
        p.read(&rp("f"), &v, 0, 10).await.err().unwrap(),
        ProviderError::PreconditionFailed { path: rp("f") }
    );
}

fn sftp_tmp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TMP_PREFIX))
        .collect()
}

/// A body of `chunks`, which calls `between` after handing out the first.
fn body_with_side_effect(
    chunks: Vec<Vec<u8>>,
    between: impl FnOnce() + Send + 'static,
) -> ByteStream {
    let mut between = Some(between);
    let items: Vec<_> = chunks.into_iter().enumerate().collect();
    Box::pin(futures::stream::iter(items).map(move |(i, c)| {
        if i == 1 {
            if let Some(f) = between.take() {
                f();
            }
        }
        Ok(Bytes::from(c))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_failed_and_cancelled_writes_leave_no_temp_files() {
    let h = Sftp::new("no-tmp");
    let p = Arc::new(
        SftpProvider::new(sftp_config(harness::sftp_server::sftp(), &h.folder.remote)).unwrap(),
    );
    let root = h.folder.path.clone();
    put(&*p, "g", b"old").await;
    // Cancelled: one chunk, then nothing, forever; the task is aborted once its temporary
    // file exists. The file is removed (in the background) and the target is untouched.
    let stalled: ByteStream = Box::pin(
        futures::stream::iter(vec![Ok(Bytes::from(data(1000, 7)))])
            .chain(futures::stream::pending()),
    );
    let task = {
        let p = Arc::clone(&p);
        tokio::spawn(async move {
            p.write(
                &rp("g"),
                stalled,
                4 << 20,
                Precondition::None,
                ObjectAttrs::default(),
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sftp_tmp_files(&root).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary file appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !sftp_tmp_files(&root).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            sftp_tmp_files(&root)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read(root.join("g")).unwrap(), b"old");

    // Changed behind the back while the body was sent: IfMatch fails at the rename, their
    // contents stay.
    let v = put(&*p, "c", b"v1").await.version;
    let theirs = root.join("c");
    let changing = body_with_side_effect(vec![b"new ".to_vec(), b"contents".to_vec()], move || {
        std::fs::write(&theirs, b"theirs").unwrap()
    });
    assert_eq!(
        p.write(
            &rp("c"),
            changing,
            12,
            Precondition::IfMatch(v),
            ObjectAttrs::default()
        )
        .await
        .unwrap_err(),
        ProviderError::PreconditionFailed { path: rp("c") }
    );
    assert_eq!(std::fs::read(root.join("c")).unwrap(), b"theirs");
    // Created by someone else while the body was sent: IfNotExists fails at the rename.
    let theirs = root.join("n");
    let racing = body_with_side_effect(vec![b"ours ".to_vec(), b"too".to_vec()], move || {
        std::fs::write(&theirs, b"theirs").unwrap()
    });
    assert_eq!(
        p.write(
            &rp("n"),
            racing,
            8,
            Precondition::IfNotExists,
            ObjectAttrs::default()
        )
        .await
        .unwrap_err(),
        ProviderError::AlreadyExists(rp("n"))
    );
    assert_eq!(std::fs::read(root.join("n")).unwrap(), b"theirs");
    // A folder put where the file was, midway.
    let theirs = root.join("x");
    std::fs::write(&theirs, b"x").unwrap();
    let dir_in_the_way = body_with_side_effect(vec![b"a".to_vec(), b"b".to_vec()], move || {
        std::fs::remove_file(&theirs).unwrap();
        std::fs::create_dir(&theirs).unwrap();
    });
    assert_eq!(
        p.write(
            &rp("x"),
            dir_in_the_way,
            2,
            Precondition::None,
            ObjectAttrs::default()
        )
        .await
        .unwrap_err(),
        ProviderError::IsADirectory(rp("x"))
    );
    assert!(
        sftp_tmp_files(&root).is_empty(),
        "{:?}",
        sftp_tmp_files(&root)
    );
    no_tmp_left(&h, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_reconnects_after_the_connection_is_killed() {
    // A server of its own: killing its connections cuts no other test's.
    let server = harness::sftp_server::SftpServer::start();
    let h = Sftp::on(&server, "reconnect");
    let p = &h.provider;
    let bytes = data(3 << 20, 9);
    let e = put(p, "f", &bytes).await;
    assert!(server.kill_connections() > 0, "a connection was open");
    // The next call reconnects and works.
    assert_eq!(p.stat(&rp("f")).await.unwrap(), e);
    assert_eq!(read_all(p, "f", &e.version).await, bytes);
    for round in 0..3 {
        assert!(server.kill_connections() > 0);
        let e = put(p, &format!("g{round}"), b"after a kill").await;
        assert_eq!(h.file(&format!("g{round}")).unwrap(), b"after a kill");
        assert_eq!(p.stat(&rp(&format!("g{round}"))).await.unwrap(), e);
    }
    // A read cut midway ends with Unreachable (never short and Ok); the next one works.
    let mut s = p.read(&rp("f"), &e.version, 0, u64::MAX).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(&first[..], &bytes[..first.len()]);
    server.kill_connections();
    let mut got = first.to_vec();
    let mut last = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    assert_eq!(&got[..], &bytes[..got.len()]);
    assert!(
        matches!(last, Some(ProviderError::Unreachable(_))),
        "{last:?} after {} bytes",
        got.len()
    );
    assert_eq!(read_all(p, "f", &e.version).await, bytes);
    assert_eq!(names(&list_all(&h, "").await), ["f", "g0", "g1", "g2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_extensions_names_and_versions() {
    use std::os::unix::ffi::OsStrExt;
    let h = Sftp::new("names");
    let p = &h.provider;
    // What the provider relies on, offered by OpenSSH.
    let ext = p.server_extensions().await.unwrap();
    for want in [
        "posix-rename@openssh.com",
        "fsync@openssh.com",
        "lsetstat@openssh.com",
    ] {
        assert!(ext.contains(&want), "{want} missing from {ext:?}");
    }
    let server = harness::sftp_server::sftp();
    let d = p.describe();
    assert!(
        d.starts_with("sftp://")
            && d.contains(&format!("{}@127.0.0.1:{}", server.user, server.port))
            && d.ends_with(&h.folder.remote),
        "{d}"
    );
    // Odd names.
    let odd = [
        "a b",
        "100%",
        "x#y?z&w=1",
        "ünïcödé",
        "semi;colon",
        "-dash",
        "new\nline",
    ];
    p.mkdir(&rp("dir with space")).await.unwrap();
    for n in odd {
        put(p, &format!("dir with space/{n}"), n.as_bytes()).await;
    }
    let mut expected: Vec<&str> = odd.to_vec();
    expected.sort();
    assert_eq!(names(&list_all(&h, "dir with space").await), expected);
    for n in odd {
        let path = format!("dir with space/{n}");
        assert_eq!(h.file(&path).unwrap(), n.as_bytes(), "{n}");
        let e = p.stat(&rp(&path)).await.unwrap();
        assert_eq!(read_all(p, &path, &e.version).await, n.as_bytes());
    }
    // Temporary names are hidden and reserved; a name that is not UTF-8 is skipped.
    let hidden = format!("{TMP_PREFIX}0123456789abcdef");
    h.put_file(&hidden, b"someone's upload");
    std::fs::write(
        h.folder
            .path
            .join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        b"x",
    )
    .unwrap();
    assert_eq!(names(&list_all(&h, "").await), ["dir with space"]);
    assert_eq!(
        p.stat(&rp(&hidden)).await.unwrap_err(),
        ProviderError::NotFound(rp(&hidden))
    );
    for err in [
        p.write(
            &rp(&hidden),
            body(b"x", 1),
            1,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err(),
        p.mkdir(&rp(&format!("{TMP_PREFIX}x"))).await.unwrap_err(),
        p.symlink(&rp(&format!("{TMP_PREFIX}x")), "t")
            .await
            .unwrap_err(),
        p.rename(&rp("dir with space"), &rp(&hidden), true)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, ProviderError::InvalidName { .. }), "{err:?}");
    }
    // Same-size rewrites within one second still get new versions (the provider stamps its
    // file a second after the one it replaces), and stale versions are refused.
    let mut seen = Vec::new();
    for c in [b"aaaa", b"bbbb", b"cccc", b"dddd"] {
        let e = put(p, "same", c).await;
        assert_eq!(p.stat(&rp("same")).await.unwrap(), e);
        assert!(!seen.contains(&e.version), "{:?} again", e.version);
        seen.push(e.version);
    }
    for stale in &seen[..3] {
        assert_eq!(
            p.write(
                &rp("same"),
                body(b"eeee", 4),
                4,
                Precondition::IfMatch(stale.clone()),
                ObjectAttrs::default()
            )
            .await
            .unwrap_err(),
            ProviderError::PreconditionFailed { path: rp("same") }
        );
    }
    assert_eq!(h.file("same").unwrap(), b"dddd");
    // sync makes the folders durable (fsync@openssh.com on each folder changed).
    p.sync().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// S3 multipart uploads (parts of 5 MiB, moto's and S3's smallest, above 8 MiB)

const MP_PART: u64 = 5 << 20;

/// An S3 backing whose provider uploads files above 8 MiB in parts of 5 MiB.
async fn s3_multipart(what: &str) -> (S3, S3Provider) {
    let h = S3::new(what, None).await;
    let p = h.provider.clone().with_multipart(8 << 20, MP_PART);
    (h, p)
}

/// `data` in chunks of `chunk` bytes, failing (retryably) once `fail_after` bytes are out.
fn failing_body(data: &[u8], chunk: usize, fail_after: usize) -> ByteStream {
    let mut pieces: Vec<Result<Bytes, ProviderError>> = data[..fail_after]
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    pieces.push(Err(ProviderError::Other {
        message: "the source went away".into(),
        retryable: true,
    }));
    Box::pin(futures::stream::iter(pieces))
}

/// `data` in chunks of 1 MiB; once the last is out, `raw` stores `other` at `rel_key` (a change
/// behind the writer's back while its upload runs).
fn body_then_change(data: Vec<u8>, raw: S3Provider, rel_key: &'static str) -> ByteStream {
    let chunks: Vec<Bytes> = data.chunks(1 << 20).map(Bytes::copy_from_slice).collect();
    let n = chunks.len();
    Box::pin(futures::stream::unfold(
        (chunks.into_iter().enumerate(), raw),
        move |(mut it, raw)| async move {
            let (i, c) = it.next()?;
            if i + 1 == n {
                raw.put_raw(rel_key, b"changed behind the back")
                    .await
                    .unwrap();
            }
            Some((Ok(c), (it, raw)))
        },
    ))
}

/// The part numbers PUT (with their status) to `key` of `bucket`, from moto's request log.
fn part_puts(bucket: &str, key: &str) -> Vec<(u32, u16)> {
    let log = std::fs::read_to_string(&harness::servers::s3().log).unwrap_or_default();
    let needle = format!("\"PUT /{bucket}/{key}?partNumber=");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            let n = rest.split('&').next()?.parse().ok()?;
            let status = rest
                .split("HTTP/1.1\" ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((n, status))
        })
        .collect()
}

/// The ids of the unfinished multipart uploads of `bucket`.
fn unfinished_uploads(bucket: &str) -> Vec<String> {
    let a = harness::servers::s3().request("GET", &format!("/{bucket}?uploads"), b"");
    assert_eq!(a.status, 200);
    String::from_utf8_lossy(&a.body)
        .split("<UploadId>")
        .skip(1)
        .filter_map(|s| s.split("</UploadId>").next())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_write_round_trip() {
    let (h, p) = s3_multipart("mp-round-trip").await;
    let bucket = bucket_of(&h);
    let bytes = data(3 * MP_PART as usize + 1234, 7);
    let written = p
        .write(
            &rp("big"),
            body(&bytes, 300_007),
            bytes.len() as u64,
            Precondition::IfNotExists,
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    assert_eq!(written.size, bytes.len() as u64);
    let v = String::from_utf8_lossy(written.version.as_bytes()).into_owned();
    assert!(v.ends_with("-4\""), "a multipart ETag of 4 parts: {v}");
    assert_eq!(p.stat(&rp("big")).await.unwrap(), written);
    assert_eq!(read_all(&p, "big", &written.version).await, bytes);
    assert_eq!(h.file("big").unwrap(), bytes);
    let mut parts: Vec<u32> = part_puts(&bucket, "tree/root/big")
        .into_iter()
        .map(|(n, s)| {
            assert_eq!(s, 200);
            n
        })
        .collect();
    parts.sort();
    assert_eq!(parts, [1, 2, 3, 4]);
    assert_eq!(unfinished_uploads(&bucket), Vec::<String>::new());
    // Up to the threshold: one PUT, a plain MD5 ETag.
    let small = data(8 << 20, 8);
    let e = p
        .write(
            &rp("at-threshold"),
            body(&small, 1 << 20),
            small.len() as u64,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(e.version.as_bytes()).contains('-'));
    assert!(part_puts(&bucket, "tree/root/at-threshold").is_empty());
    // A short body is never completed, and its upload is aborted (not retryable).
    let err = p
        .write(
            &rp("short"),
            body(&bytes[..bytes.len() - 10], 1 << 20),
            bytes.len() as u64,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(h.file("short").is_none());
    assert_eq!(unfinished_uploads(&bucket), Vec::<String>::new());
    // So is a long one.
    let err = p
        .write(
            &rp("long"),
            body(&bytes, 1 << 20),
            bytes.len() as u64 - 10,
            Precondition::None,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(h.file("long").is_none());
    assert_eq!(unfinished_uploads(&bucket), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_interrupted_write_resumes_without_resending_parts() {
    let (h, p) = s3_multipart("mp-resume").await;
    let bucket = bucket_of(&h);
    let key = "tree/root/big";
    // 5 parts; the source fails in part 3, after parts 1 and 2 were read (and sent).
    let a = data(4 * MP_PART as usize + (3 << 20), 1);
    let err = p
        .write(
            &rp("big"),
            failing_body(&a, 1 << 20, 12 << 20),
            a.len() as u64,
            Precondition::IfNotExists,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(
        p.stat(&rp("big")).await.unwrap_err(),
        ProviderError::NotFound(rp("big"))
    );
    assert_eq!(h.file("big"), None);
    let uploads = unfinished_uploads(&bucket);
    assert_eq!(uploads.len(), 1, "the upload is left for the next attempt");
    let first = part_puts(&bucket, key);
    assert!(first.iter().all(|(_, s)| *s == 200), "{first:?}");
    let mut sent: Vec<u32> = first.iter().map(|(n, _)| *n).collect();
    sent.sort();
    assert_eq!(sent, [1, 2]);

    // The next attempt, of other data that differs only in part 2: part 1 is not sent again,
    // part 2 is (its MD5 differs), and so are the parts never sent.
    let mut b = a.clone();
    b[MP_PART as usize + 17] ^= 0xff;
    let written = p
        .write(
            &rp("big"),
            body(&b, 1 << 20),
            b.len() as u64,
            Precondition::IfNotExists,
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    let mut again: Vec<u32> = part_puts(&bucket, key)[first.len()..]
        .iter()
        .map(|(n, s)| {
            assert_eq!(*s, 200);
            *n
        })
        .collect();
    again.sort();
    assert_eq!(again, [2, 3, 4, 5]);
    assert_eq!(h.file("big").unwrap(), b);
    assert_eq!(p.stat(&rp("big")).await.unwrap(), written);
    assert_eq!(unfinished_uploads(&bucket), Vec::<String>::new());
    let all = harness::servers::s3().request("GET", &format!("/{bucket}?uploads"), b"");
    assert!(!String::from_utf8_lossy(&all.body).contains(&uploads[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_preconditions() {
    let (h, p) = s3_multipart("mp-pre").await;
    let bucket = bucket_of(&h);
    let bytes = data(2 * MP_PART as usize + 100, 3);
    let len = bytes.len() as u64;
    let v1 = put(&p, "f", b"one").await.version;
    // A stale version: refused before anything is sent, nothing changed.
    let err = p
        .write(
            &rp("f"),
            body(&bytes, 1 << 20),
            len,
            Precondition::IfMatch(Version::from("\"0123\"")),
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("f") });
    assert_eq!(h.file("f").unwrap(), b"one");
    // IfNotExists on an existing key.
    let err = p
        .write(
            &rp("f"),
            body(&bytes, 1 << 20),
            len,
            Precondition::IfNotExists,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::AlreadyExists(rp("f")));
    assert_eq!(h.file("f").unwrap(), b"one");
    assert!(part_puts(&bucket, "tree/root/f").is_empty());
    // The object changes while the parts are sent: refused at the completion, the upload
    // aborted, the other writer's object kept.
    let err = p
        .write(
            &rp("f"),
            body_then_change(bytes.clone(), h.raw.clone(), "f"),
            len,
            Precondition::IfMatch(v1),
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::PreconditionFailed { path: rp("f") });
    assert_eq!(h.file("f").unwrap(), b"changed behind the back");
    assert_eq!(unfinished_uploads(&bucket), Vec::<String>::new());
    // Created while the parts are sent: AlreadyExists.
    let err = p
        .write(
            &rp("g"),
            body_then_change(bytes.clone(), h.raw.clone(), "g"),
            len,
            Precondition::IfNotExists,
            ObjectAttrs::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::AlreadyExists(rp("g")));
    assert_eq!(h.file("g").unwrap(), b"changed behind the back");
    assert_eq!(unfinished_uploads(&bucket), Vec::<String>::new());
    // The current version: replaced.
    let v2 = p.stat(&rp("f")).await.unwrap().version;
    let e = p
        .write(
            &rp("f"),
            body(&bytes, 1 << 20),
            len,
            Precondition::IfMatch(v2),
            ObjectAttrs::default(),
        )
        .await
        .unwrap();
    assert_eq!(h.file("f").unwrap(), bytes);
    assert_eq!(p.stat(&rp("f")).await.unwrap(), e);
}

/// A directory replaces only an empty directory (posix-rename is `rename(2)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_directory_replaces_only_an_empty_directory() {
    let h = Sftp::new("dir-over-dir");
    let p = &h.provider;
    p.mkdir(&rp("a")).await.unwrap();
    put(p, "a/x", b"x").await;
    p.mkdir(&rp("full")).await.unwrap();
    put(p, "full/keep", b"keep").await;
    p.mkdir(&rp("empty")).await.unwrap();
    assert_eq!(
        p.rename(&rp("a"), &rp("full"), true).await.unwrap_err(),
        ProviderError::NotEmpty(rp("full"))
    );
    assert_eq!(h.file("full/keep").unwrap(), b"keep");
    assert_eq!(
        p.rename(&rp("a"), &rp("empty"), false).await.unwrap_err(),
        ProviderError::AlreadyExists(rp("empty"))
    );
    let e = p.rename(&rp("a"), &rp("empty"), true).await.unwrap();
    assert_eq!(e.kind, EntryKind::Dir);
    assert_eq!(e.name, "empty");
    assert_eq!(h.file("empty/x").unwrap(), b"x");
    assert!(!h.exists("a"));
    assert_eq!(p.stat(&rp("empty")).await.unwrap(), e);
    // A symlink is renamed itself, not its target.
    p.symlink(&rp("l"), "empty/x").await.unwrap();
    let e = p.rename(&rp("l"), &rp("l2"), false).await.unwrap();
    assert_eq!(e.kind, EntryKind::Symlink);
    assert_eq!(e.symlink_target.as_deref(), Some("empty/x"));
    assert_eq!(h.file("empty/x").unwrap(), b"x");
}

/// A conditional delete never removes a change made behind the provider's back: a file changed
/// on disk right before the delete is `PreconditionFailed` and still there; and with the
/// change racing the delete (the rename to a hidden name, then the version check), the changed
/// bytes always survive, at the name or beside it under a conflict name, with no temporary
/// file left.
async fn conditional_delete_keeps_a_change_made_behind_its_back(
    h: &dyn Backing,
    root: &Path,
    rounds: u64,
    step: Duration,
) {
    let p = h.provider();
    let changed: &[u8] = b"changed behind the back";
    // Changed before the delete.
    let v = put(p, "f.txt", b"base").await.version;
    h.put_file("f.txt", changed);
    assert_eq!(
        p.delete(&rp("f.txt"), Precondition::IfMatch(v))
            .await
            .unwrap_err(),
        ProviderError::PreconditionFailed { path: rp("f.txt") }
    );
    assert_eq!(h.file("f.txt").unwrap(), changed);
    assert_eq!(h.raw_names(""), ["f.txt"]);
    // The current version is removed.
    let v = p.stat(&rp("f.txt")).await.unwrap().version;
    p.delete(&rp("f.txt"), Precondition::IfMatch(v))
        .await
        .unwrap();
    assert!(!h.exists("f.txt"));
    // A symlink is removed by its own version (git makes and removes one to probe for them).
    if p.capabilities().symlinks {
        let l = p.symlink(&rp("l"), "target").await.unwrap();
        p.delete(&rp("l"), Precondition::IfMatch(l.version))
            .await
            .unwrap();
        assert!(!h.exists("l"));
    }
    // Changed while the delete runs, at different moments.
    for i in 0..rounds {
        let name = format!("r{i}.txt");
        let v = put(p, &name, b"base").await.version;
        let target = root.join(&name);
        let staged = root.join(format!(".staged-{name}"));
        // The change replaces the file (as editors and sync tools save). A write into the file
        // in place whose `open` started before the delete's rename reaches the removed file,
        // as with any removal (the window documented in local.rs and sftp.rs; CI met it once
        // in 400 rounds of this test): no test can assert it away.
        let writer = std::thread::spawn(move || {
            std::fs::write(&staged, changed).unwrap();
            std::thread::sleep(step * (i as u32));
            std::fs::rename(&staged, &target).unwrap();
        });
        let r = p.delete(&rp(&name), Precondition::IfMatch(v)).await;
        writer.join().unwrap();
        match &r {
            Ok(()) => {}
            Err(ProviderError::PreconditionFailed { path }) => assert_eq!(path, &rp(&name)),
            Err(e) => panic!("delete {name}: {e:?}"),
        }
        let kept: Vec<String> = h
            .raw_names("")
            .into_iter()
            .filter(|n| n.starts_with(&format!("r{i}.")))
            .collect();
        assert!(
            kept.iter().any(|n| h.file(n).as_deref() == Some(changed)),
            "delete {name} ({r:?}) lost the change: {kept:?}"
        );
        assert_eq!(sftp_tmp_files(root), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_conditional_delete_keeps_a_change_made_behind_its_back() {
    let h = Sftp::new("delete-vs-change");
    conditional_delete_keeps_a_change_made_behind_its_back(
        &h,
        &h.abs(""),
        60,
        Duration::from_micros(20),
    )
    .await;
}

/// The same for a local folder: the lstat-then-unlink it did before let a program's write
/// that came between the two be removed (the conflict table's local delete vs remote modify
/// row failed in CI once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_conditional_delete_keeps_a_change_made_behind_its_back() {
    let h = Local::new();
    let root = h.root.clone();
    conditional_delete_keeps_a_change_made_behind_its_back(
        &h,
        &root,
        400,
        Duration::from_nanos(500),
    )
    .await;
}
