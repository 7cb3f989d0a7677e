//! Nothing readable at rest: no plaintext, object id, version or passphrase in any byte or any
//! name under the cache directory; private modes; wipe; a wrong passphrase changes nothing.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cache::{
    CacheConfig, CacheError, CacheLimit, ChunkCache, ChunkKey, ChunkState, KdfParams, Passphrase,
    PutKind,
};

const PASSPHRASE: &str = "correct horse battery staple 2026";
const OBJECTS: [&str; 3] = [
    "/home/user/Secret Plans/budget-2026.xlsx",
    "/home/user/Documents/diary entry (private).txt",
    "s3://acme-confidential/payroll/q3.csv",
];
const VERSIONS: [&str; 3] = [
    "etag-\"abc123\"",
    "rev-0042-cafebabe",
    "2026-01-02T03:04:05Z#17",
];
const SIZES: [usize; 6] = [1 << 20, 300 << 10, 64 << 10, 4097, 100, 1];

fn pass(p: &str) -> Passphrase {
    Passphrase::new(p, KdfParams::FAST_INSECURE)
}

fn open(dir: &Path) -> ChunkCache {
    ChunkCache::open(
        CacheConfig::new(dir, CacheLimit::bytes(64 << 20)),
        &pass(PASSPHRASE),
    )
    .expect("open the cache")
}

fn random_hex() -> String {
    let a = RandomState::new().build_hasher().finish();
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{a:016x}{:016x}", h.finish())
}

fn hex(b: &[u8], upper: bool) -> String {
    b.iter()
        .map(|x| {
            if upper {
                format!("{x:02X}")
            } else {
                format!("{x:02x}")
            }
        })
        .collect()
}

/// `marker` repeated to `len` bytes.
fn plaintext(marker: &str, len: usize) -> Vec<u8> {
    marker.bytes().cycle().take(len).collect()
}

/// Every file and directory under `root` (itself included).
fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = fs::symlink_metadata(&p).expect("stat");
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("list") {
                todo.push(e.expect("entry").path());
            }
        }
        out.push((p, md));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w[0] == needle[0] && w == needle)
}

/// Fills a cache in `dir` with chunks of every kind and size, each holding `marker`, under every
/// object id and version. Returns the keys with their data.
fn fill(cache: &ChunkCache, marker: &str) -> Vec<(ChunkKey, Vec<u8>)> {
    let mut stored = Vec::new();
    let mut n = 0u64;
    for (o, object) in OBJECTS.iter().enumerate() {
        for version in VERSIONS {
            for (s, &size) in SIZES.iter().enumerate() {
                // Keep the total reasonable: the big sizes once per object.
                if size >= (64 << 10) && version != VERSIONS[o] {
                    continue;
                }
                let key = ChunkKey::new(*object, version, s as u64);
                let data = plaintext(marker, size);
                let kind = match n % 4 {
                    0 => PutKind::Clean,
                    1 => PutKind::Dirty,
                    2 => PutKind::Pinned,
                    _ => PutKind::Dirty,
                };
                cache.put(&key, &data, kind).expect("put");
                if n % 4 == 3 {
                    cache.pin(&key).expect("pin a dirty chunk");
                }
                n += 1;
                stored.push((key, data));
            }
        }
    }
    stored
}

/// The strings that must appear nowhere under the cache directory.
fn needles(marker: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = vec![
        ("marker".into(), marker.as_bytes().to_vec()),
        (
            "marker hex".into(),
            hex(marker.as_bytes(), false).into_bytes(),
        ),
        ("passphrase".into(), PASSPHRASE.as_bytes().to_vec()),
        (
            "passphrase hex".into(),
            hex(PASSPHRASE.as_bytes(), false).into_bytes(),
        ),
        ("file name".into(), b"budget-2026".to_vec()),
        ("folder name".into(), b"Secret Plans".to_vec()),
    ];
    for s in OBJECTS.iter().chain(VERSIONS.iter()) {
        out.push((format!("{s:?}"), s.as_bytes().to_vec()));
        out.push((
            format!("{s:?} as hex"),
            hex(s.as_bytes(), false).into_bytes(),
        ));
        out.push((
            format!("{s:?} as upper-case hex"),
            hex(s.as_bytes(), true).into_bytes(),
        ));
    }
    out
}

/// Scans every byte of every file and every path component under `dir`. Returns the bytes
/// scanned, or what was found where.
fn find_readable(dir: &Path, marker: &str) -> Result<usize, String> {
    let needles = needles(marker);
    let mut scanned = 0;
    for (path, md) in walk(dir) {
        let rel = path.strip_prefix(dir).expect("under dir");
        for comp in rel.components() {
            let name = comp.as_os_str().to_string_lossy();
            if let Some((what, _)) = needles.iter().find(|(_, n)| contains(name.as_bytes(), n)) {
                return Err(format!("the name {rel:?} contains the {what}"));
            }
        }
        if md.is_file() {
            let bytes = fs::read(&path).expect("read");
            scanned += bytes.len();
            if let Some((what, _)) = needles.iter().find(|(_, n)| contains(&bytes, n)) {
                return Err(format!(
                    "{rel:?} ({} bytes) contains the {what}",
                    bytes.len()
                ));
            }
        }
    }
    Ok(scanned)
}

fn assert_nothing_readable(dir: &Path, marker: &str, when: &str) -> usize {
    find_readable(dir, marker).unwrap_or_else(|e| panic!("{when}: {e}"))
}

#[test]
fn the_needle_search_finds_what_it_looks_for() {
    // The scan below is only worth something if it would find a leak.
    let marker = format!("SYNCOXIDE-MARKER-{}", random_hex());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    fs::create_dir_all(dir.join("chunks")).expect("mkdir");
    assert_eq!(find_readable(&dir, &marker), Ok(0));
    let planted = dir.join("chunks").join("x.c");
    for (what, needle) in needles(&marker) {
        let mut leak = vec![0u8; 5000];
        leak.extend_from_slice(&needle);
        leak.extend_from_slice(&[0u8; 7]);
        fs::write(&planted, &leak).expect("write");
        let found = find_readable(&dir, &marker);
        assert!(found.is_err(), "a planted {what} must be found: {found:?}");
    }
    fs::remove_file(&planted).expect("rm");
    let name = dir.join(format!("a{}", hex(marker.as_bytes(), false)));
    fs::write(&name, b"").expect("write");
    let found = find_readable(&dir, &marker);
    assert!(found.is_err(), "a planted name must be found: {found:?}");
}

#[test]
fn nothing_readable_at_rest() {
    let marker = format!("SYNCOXIDE-MARKER-{}", random_hex());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    let cache = open(&dir);
    let stored = fill(&cache, &marker);
    // Every state is represented, and every chunk is really there.
    let states: Vec<ChunkState> = stored
        .iter()
        .map(|(k, _)| cache.state(k).expect("stored"))
        .collect();
    for s in [
        ChunkState::Clean,
        ChunkState::Dirty,
        ChunkState::Pinned,
        ChunkState::DirtyPinned,
    ] {
        assert!(states.contains(&s), "no chunk in state {s:?}");
    }
    for (k, data) in &stored {
        assert_eq!(cache.get(k).expect("get").as_deref(), Some(&data[..]));
    }
    // Some dirty chunks became clean (their file was renamed).
    cache.mark_clean(&stored[1].0).expect("mark_clean");
    cache.flush_index().expect("flush_index");
    assert_eq!(cache.usage().chunks, stored.len() as u64);
    let total: usize = stored.iter().map(|(_, d)| d.len()).sum();
    let while_open = assert_nothing_readable(&dir, &marker, "while open");
    assert!(
        while_open >= total,
        "the scan read {while_open} bytes, less than the {total} bytes stored"
    );
    drop(cache);

    let names: Vec<_> = walk(&dir)
        .into_iter()
        .map(|(p, _)| p.strip_prefix(&dir).expect("under").to_path_buf())
        .collect();
    for f in ["format", "lock", "key", "index", "tmp", "chunks"] {
        assert!(names.contains(&PathBuf::from(f)), "{f} missing: {names:?}");
    }
    let chunk_files = fs::read_dir(dir.join("chunks")).expect("list").count();
    assert_eq!(chunk_files, stored.len(), "one file per chunk");
    let after = assert_nothing_readable(&dir, &marker, "after drop");
    assert!(after >= total);

    // And the cache still reads it all back.
    let cache = open(&dir);
    for (k, data) in &stored {
        assert_eq!(cache.get(k).expect("get").as_deref(), Some(&data[..]));
    }
}

fn assert_private(dir: &Path, when: &str) -> (usize, usize) {
    let (mut dirs, mut files) = (0, 0);
    for (path, md) in walk(dir) {
        let mode = md.permissions().mode() & 0o777;
        if md.is_dir() {
            dirs += 1;
            assert_eq!(mode, 0o700, "{when}: directory {path:?} has mode {mode:o}");
        } else {
            files += 1;
            assert!(
                md.is_file(),
                "{when}: {path:?} is neither file nor directory"
            );
            assert_eq!(mode, 0o600, "{when}: file {path:?} has mode {mode:o}");
        }
    }
    (dirs, files)
}

#[test]
fn cache_files_and_directories_are_private() {
    let marker = format!("SYNCOXIDE-MARKER-{}", random_hex());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nested").join("cache");
    let cache = open(&dir);
    let stored = fill(&cache, &marker);
    cache.mark_clean(&stored[1].0).expect("mark_clean");
    cache.unpin(&stored[2].0).expect("unpin");
    cache.flush_index().expect("flush_index");
    let (dirs, files) = assert_private(&dir, "while open");
    assert_eq!(dirs, 3, "the cache dir, chunks/ and tmp/");
    // format, lock, key, index and one file per chunk.
    assert_eq!(files, 4 + stored.len());
    drop(cache);
    assert_private(&dir, "after drop");
    let cache = open(&dir);
    assert_private(&dir, "after reopen");
    drop(cache);
}

#[test]
fn open_makes_an_existing_directory_private() {
    let tmp = tempfile::tempdir().expect("tempdir");

    // An empty directory someone created with the usual umask.
    let dir = tmp.path().join("fresh");
    fs::create_dir(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let cache = open(&dir);
    let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "open must make the cache directory private");
    assert_private(&dir, "fresh");
    drop(cache);

    // An existing cache whose directories were opened up.
    let dir = tmp.path().join("existing");
    let key = ChunkKey::new(OBJECTS[0], VERSIONS[0], 0);
    {
        let cache = open(&dir);
        cache.put(&key, b"data", PutKind::Dirty).expect("put");
    }
    for d in [dir.clone(), dir.join("chunks"), dir.join("tmp")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let cache = open(&dir);
    for d in [dir.clone(), dir.join("chunks"), dir.join("tmp")] {
        let mode = fs::metadata(&d).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{d:?} must be made private again");
    }
    assert_eq!(cache.get(&key).expect("get").as_deref(), Some(&b"data"[..]));
}

/// Path, kind, length, mode, modification time and contents of everything under `dir`.
type Snapshot = BTreeMap<PathBuf, (bool, u64, u32, SystemTime, Option<Vec<u8>>)>;

fn snapshot(dir: &Path) -> Snapshot {
    walk(dir)
        .into_iter()
        .map(|(p, md)| {
            let contents = md.is_file().then(|| fs::read(&p).expect("read"));
            let mtime = md.modified().expect("mtime");
            (p, (md.is_dir(), md.len(), md.mode(), mtime, contents))
        })
        .collect()
}

#[test]
fn wipe_removes_the_cache_but_not_while_it_is_open() {
    let marker = format!("SYNCOXIDE-MARKER-{}", random_hex());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    let cache = open(&dir);
    let stored = fill(&cache, &marker);
    cache.flush_index().expect("flush_index");

    let before = snapshot(&dir);
    match ChunkCache::wipe(&dir) {
        Err(CacheError::InUse { path }) => assert_eq!(path, dir),
        other => panic!("wipe of an open cache must fail with InUse, got {other:?}"),
    }
    assert_eq!(
        snapshot(&dir),
        before,
        "a refused wipe must delete or change nothing"
    );
    for (k, data) in &stored {
        assert_eq!(cache.get(k).expect("get").as_deref(), Some(&data[..]));
    }
    drop(cache);

    ChunkCache::wipe(&dir).expect("wipe");
    assert!(!dir.exists(), "the cache directory must be gone");
    assert!(tmp.path().exists(), "its parent stays");
    ChunkCache::wipe(&dir).expect("wiping an absent cache is fine");

    // A cache opened there again is a new, empty one.
    let cache = open(&dir);
    assert_eq!(cache.usage().chunks, 0);
    for (k, _) in &stored {
        assert_eq!(cache.get(k).expect("get"), None);
    }
}

#[test]
fn wrong_passphrase_is_refused_and_changes_nothing() {
    let marker = format!("SYNCOXIDE-MARKER-{}", random_hex());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    let stored = {
        let cache = open(&dir);
        fill(&cache, &marker)
    };
    let before = snapshot(&dir);
    assert!(before.len() > stored.len(), "snapshot of the whole tree");

    for wrong in [
        "correct horse battery staple 2025",
        "",
        PASSPHRASE.trim_end_matches('6'),
    ] {
        let r = ChunkCache::open(
            CacheConfig::new(&dir, CacheLimit::bytes(64 << 20)),
            &pass(wrong),
        );
        match r {
            Err(e @ CacheError::WrongPassphrase { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("wrong passphrase"),
                    "the message must say so: {msg}"
                );
                assert!(!msg.contains(wrong) || wrong.is_empty(), "{msg}");
            }
            other => panic!("open with {wrong:?} must fail with WrongPassphrase, got {other:?}"),
        }
        assert_eq!(
            snapshot(&dir),
            before,
            "a failed unlock with {wrong:?} must change no file"
        );
    }

    // The right passphrase still opens it (the failed attempts released the lock).
    let cache = open(&dir);
    for (k, data) in &stored {
        assert_eq!(cache.get(k).expect("get").as_deref(), Some(&data[..]));
    }
}

#[test]
fn wipe_refuses_a_directory_that_is_not_a_cache() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("precious.txt"), b"do not delete").unwrap();
    let err = cache::ChunkCache::wipe(d.path()).unwrap_err();
    assert!(matches!(err, cache::CacheError::NotACache { .. }), "{err}");
    assert!(err.to_string().contains("nothing was deleted"), "{err}");
    assert!(d.path().join("precious.txt").exists());
}
