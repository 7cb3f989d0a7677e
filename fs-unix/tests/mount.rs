//! Real mounts through /dev/fuse (run as root, as CI does): programs' file operations through
//! the kernel reach the core, and after `flush_all` the provider (in memory, or a local folder)
//! holds exactly the tree and bytes seen through the mount.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fs_core::cache::{CacheConfig, CacheLimit, ChunkCache, KdfParams, Passphrase};
use fs_core::provider::local::LocalProvider;
use fs_core::provider::memory::{MemoryProvider, SnapshotEntry};
use fs_core::provider::Provider;
use fs_core::{Vfs, VfsConfig};
use fs_unix::{mount, MountError, MountOptions, Mounted};

/// What one path holds, for comparing trees.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

type Tree = BTreeMap<String, Entry>;

#[allow(unsafe_code)]
fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid have no preconditions and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// When the uploader runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Uploads {
    /// From the start, concurrently with the operations (as in real use).
    Live,
    /// Only from the first flush: the operations run against a quiet provider.
    AtFlush,
}

/// A drive mounted at a temporary directory, with its runtime.
struct Drive {
    vfs: Vfs,
    mounted: Option<Mounted>,
    mnt: tempfile::TempDir,
    _cache: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
    uploader: std::sync::atomic::AtomicBool,
}

impl Drive {
    fn new(provider: Arc<dyn Provider>) -> Drive {
        Drive::with(provider, Uploads::Live, |_| {})
    }

    fn with(
        provider: Arc<dyn Provider>,
        uploads: Uploads,
        tweak: impl FnOnce(&mut VfsConfig),
    ) -> Drive {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(
            ChunkCache::open(
                CacheConfig::new(cache_dir.path(), CacheLimit::bytes(256 << 20)),
                &Passphrase::new("pw", KdfParams::FAST_INSECURE),
            )
            .unwrap(),
        );
        let (uid, gid) = ids();
        let mut cfg = VfsConfig {
            write_back_delay: Duration::from_millis(200),
            uid,
            gid,
            ..Default::default()
        };
        tweak(&mut cfg);
        let vfs = Vfs::new(cfg, cache, provider).unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let opts = MountOptions {
            fsname: "syncoxide:test".into(),
            ..Default::default()
        };
        let mounted = mount(vfs.clone(), rt.handle().clone(), mnt.path(), &opts).unwrap();
        let d = Drive {
            vfs,
            mounted: Some(mounted),
            mnt,
            _cache: cache_dir,
            rt: Some(rt),
            uploader: Default::default(),
        };
        if uploads == Uploads::Live {
            d.start_uploader();
        }
        d
    }

    fn memory() -> (Drive, Arc<MemoryProvider>) {
        Drive::memory_with(Uploads::Live)
    }

    fn memory_with(uploads: Uploads) -> (Drive, Arc<MemoryProvider>) {
        let mem = Arc::new(MemoryProvider::new());
        (Drive::with(mem.clone(), uploads, |_| {}), mem)
    }

    fn start_uploader(&self) {
        if !self
            .uploader
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let _g = self.rt.as_ref().unwrap().enter();
            self.vfs.spawn_uploader();
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    fn flush(&self) {
        self.start_uploader();
        let rt = self.rt.as_ref().unwrap();
        rt.block_on(self.vfs.flush_all(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("flush_all: {e}; status {:?}", self.vfs.status()));
    }

    /// Everything under the mount point, as programs see it.
    fn tree(&self) -> Tree {
        walk(self.mnt.path())
    }

    fn unmount(mut self) {
        self.mounted.take().unwrap().unmount().unwrap();
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        drop(self.mounted.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// The tree under `root` (keys `a/b`), skipping the local provider's temporary files.
fn walk(root: &Path) -> Tree {
    fn go(root: &Path, dir: &Path, out: &mut Tree) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(fs_core::provider::local::TMP_PREFIX) {
                continue;
            }
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let ft = fs::symlink_metadata(&path).unwrap().file_type();
            if ft.is_symlink() {
                let t = fs::read_link(&path).unwrap();
                out.insert(rel, Entry::Symlink(t.to_string_lossy().into_owned()));
            } else if ft.is_dir() {
                out.insert(rel, Entry::Dir);
                go(root, &path, out);
            } else {
                assert!(!ft.is_fifo() && !ft.is_socket(), "special file {rel}");
                out.insert(rel, Entry::File(fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Tree::new();
    go(root, root, &mut out);
    out
}

fn snapshot(mem: &MemoryProvider) -> Tree {
    mem.snapshot()
        .into_iter()
        .map(|(k, v)| {
            let e = match v {
                SnapshotEntry::File(b) => Entry::File(b),
                SnapshotEntry::Dir => Entry::Dir,
                SnapshotEntry::Symlink(t) => Entry::Symlink(t),
            };
            (k, e)
        })
        .collect()
}

/// Asserts two trees are equal, naming the first difference rather than dumping megabytes.
fn assert_same(seen: &Tree, provider: &Tree) {
    let only_seen: Vec<&String> = seen.keys().filter(|k| !provider.contains_key(*k)).collect();
    let only_prov: Vec<&String> = provider.keys().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        only_seen.is_empty() && only_prov.is_empty(),
        "only on the mount: {only_seen:?}; only on the provider: {only_prov:?}"
    );
    for (k, v) in seen {
        let p = &provider[k];
        if v != p {
            let short = |e: &Entry| match e {
                Entry::File(b) => format!("file of {} bytes, sha {}", b.len(), sha(b)),
                other => format!("{other:?}"),
            };
            panic!("{k}: mount has {}, provider has {}", short(v), short(p));
        }
    }
}

fn sha(b: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

/// Flushes, checks the memory provider against the mount, unmounts.
fn finish(d: Drive, mem: &MemoryProvider) -> Tree {
    d.flush();
    let seen = d.tree();
    assert_same(&seen, &snapshot(mem));
    d.unmount();
    seen
}

#[test]
fn create_write_read_back() {
    let (d, mem) = Drive::memory();
    fs::write(d.p("hello.txt"), b"hello, drive").unwrap();
    assert_eq!(fs::read(d.p("hello.txt")).unwrap(), b"hello, drive");
    let md = fs::metadata(d.p("hello.txt")).unwrap();
    assert_eq!(md.len(), 12);
    assert!(md.is_file());
    // Overwrite in the middle through a read-write descriptor.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.p("hello.txt"))
        .unwrap();
    f.seek(SeekFrom::Start(7)).unwrap();
    f.write_all(b"DRIVE").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello, DRIVE");
    drop(f);
    // O_EXCL on an existing name.
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(d.p("hello.txt"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    // An empty file exists too.
    fs::File::create(d.p("empty")).unwrap();
    let tree = finish(d, &mem);
    assert_eq!(tree["hello.txt"], Entry::File(b"hello, DRIVE".to_vec()));
    assert_eq!(tree["empty"], Entry::File(Vec::new()));
}

#[test]
fn append() {
    let (d, mem) = Drive::memory();
    fs::write(d.p("log"), b"one\n").unwrap();
    for line in ["two\n", "three\n"] {
        let mut f = OpenOptions::new().append(true).open(d.p("log")).unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }
    assert_eq!(fs::read(d.p("log")).unwrap(), b"one\ntwo\nthree\n");
    let tree = finish(d, &mem);
    assert_eq!(tree["log"], Entry::File(b"one\ntwo\nthree\n".to_vec()));
}

#[test]
fn truncate_shorter_and_longer() {
    let (d, mem) = Drive::memory();
    fs::write(d.p("t"), b"0123456789").unwrap();
    let f = OpenOptions::new().write(true).open(d.p("t")).unwrap();
    f.set_len(4).unwrap();
    assert_eq!(fs::read(d.p("t")).unwrap(), b"0123");
    f.set_len(10).unwrap();
    drop(f);
    assert_eq!(fs::read(d.p("t")).unwrap(), b"0123\0\0\0\0\0\0");
    // A sparse tail far past the first chunk.
    let f = OpenOptions::new().write(true).open(d.p("t")).unwrap();
    f.set_len(3 << 20).unwrap();
    drop(f);
    let back = fs::read(d.p("t")).unwrap();
    assert_eq!(back.len(), 3 << 20);
    assert_eq!(&back[..4], b"0123");
    assert!(back[4..].iter().all(|b| *b == 0));
    // O_TRUNC.
    fs::write(d.p("t"), b"new").unwrap();
    assert_eq!(fs::read(d.p("t")).unwrap(), b"new");
    let tree = finish(d, &mem);
    assert_eq!(tree["t"], Entry::File(b"new".to_vec()));
}

#[test]
fn mkdir_readdir_rmdir() {
    mkdir_readdir_rmdir_with(Uploads::AtFlush);
}

#[test]
fn mkdir_readdir_rmdir_live_uploads() {
    mkdir_readdir_rmdir_with(Uploads::Live);
}

fn mkdir_readdir_rmdir_with(uploads: Uploads) {
    let (d, mem) = Drive::memory_with(uploads);
    fs::create_dir(d.p("dir")).unwrap();
    fs::create_dir(d.p("dir/sub")).unwrap();
    fs::write(d.p("dir/x"), b"x").unwrap();
    fs::write(d.p("dir/y"), b"yy").unwrap();
    let mut names: Vec<String> = fs::read_dir(d.p("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["sub", "x", "y"]);
    // `ls -a` sees . and .. too (readdir offsets and readdirplus through a real program).
    let out = std::process::Command::new("ls")
        .arg("-a1")
        .arg(d.p("dir"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), ".\n..\nsub\nx\ny\n");
    // Many entries: the kernel reads the listing in several requests.
    fs::create_dir(d.p("many")).unwrap();
    for i in 0..300 {
        fs::write(d.p(&format!("many/file-with-a-longish-name-{i:04}")), b"").unwrap();
    }
    assert_eq!(fs::read_dir(d.p("many")).unwrap().count(), 300);
    let e = fs::remove_dir(d.p("dir")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    let e = fs::create_dir(d.p("dir")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    fs::remove_file(d.p("dir/x")).unwrap();
    fs::remove_file(d.p("dir/y")).unwrap();
    fs::remove_dir(d.p("dir/sub")).unwrap();
    fs::remove_dir(d.p("dir")).unwrap();
    assert!(!d.p("dir").exists());
    fs::remove_dir_all(d.p("many")).unwrap();
    fs::create_dir(d.p("kept")).unwrap();
    let tree = finish(d, &mem);
    assert_eq!(tree.keys().collect::<Vec<_>>(), ["kept"]);
}

#[allow(unsafe_code)]
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes()).unwrap();
    let to = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn renames() {
    let (d, mem) = Drive::memory();
    fs::write(d.p("a"), b"contents of a").unwrap();
    fs::write(d.p("b"), b"b, soon replaced").unwrap();
    fs::rename(d.p("a"), d.p("b")).unwrap();
    assert!(!d.p("a").exists());
    assert_eq!(fs::read(d.p("b")).unwrap(), b"contents of a");

    fs::create_dir_all(d.p("d1/inner")).unwrap();
    fs::write(d.p("d1/x"), b"x").unwrap();
    fs::write(d.p("d1/inner/y"), b"y").unwrap();
    fs::rename(d.p("d1"), d.p("d2")).unwrap();
    assert!(!d.p("d1").exists());
    assert_eq!(fs::read(d.p("d2/x")).unwrap(), b"x");
    assert_eq!(fs::read(d.p("d2/inner/y")).unwrap(), b"y");

    fs::write(d.p("c"), b"c").unwrap();
    let e = rename_noreplace(&d.p("c"), &d.p("b")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    assert_eq!(fs::read(d.p("b")).unwrap(), b"contents of a");
    rename_noreplace(&d.p("c"), &d.p("c2")).unwrap();
    // Into a subdirectory, and a directory into its own child.
    fs::rename(d.p("c2"), d.p("d2/inner/c3")).unwrap();
    let e = fs::rename(d.p("d2"), d.p("d2/inner/loop")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));

    let tree = finish(d, &mem);
    let keys: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["b", "d2", "d2/inner", "d2/inner/c3", "d2/inner/y", "d2/x"]
    );
}

#[test]
fn symlink_and_readlink() {
    let (d, mem) = Drive::memory();
    fs::write(d.p("target.txt"), b"pointed at").unwrap();
    std::os::unix::fs::symlink("target.txt", d.p("link")).unwrap();
    std::os::unix::fs::symlink("../nowhere/at all", d.p("dangling")).unwrap();
    assert_eq!(fs::read_link(d.p("link")).unwrap(), Path::new("target.txt"));
    assert!(fs::symlink_metadata(d.p("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(d.p("link")).unwrap(), b"pointed at");
    assert_eq!(
        fs::read_link(d.p("dangling")).unwrap(),
        Path::new("../nowhere/at all")
    );
    let tree = finish(d, &mem);
    assert_eq!(tree["link"], Entry::Symlink("target.txt".into()));
}

#[test]
fn unlinked_open_file_stays_readable() {
    let (d, mem) = Drive::memory();
    fs::write(d.p("ghost"), b"still here").unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.p("ghost"))
        .unwrap();
    fs::remove_file(d.p("ghost")).unwrap();
    assert!(!d.p("ghost").exists());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    // Written after the unlink: readable through the descriptor, never uploaded.
    f.write_all(b", and more").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    s.clear();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here, and more");
    drop(f);
    let tree = finish(d, &mem);
    assert!(tree.is_empty(), "{tree:?}");
}

/// One extended attribute, read-only: `user.syncoxide.state` tells the file's state. Others
/// are absent (ENODATA), listing shows none (the state is not listed, so `cp -a` does not copy
/// it away), setting one is refused; the file itself is untouched.
#[test]
fn the_state_is_the_only_extended_attribute() {
    let (d, mem) = Drive::memory();
    fs::write(d.p("f"), b"data").unwrap();
    let f = d.p("f");
    for _ in 0..2 {
        let e = rustix::fs::getxattr(&f, "user.test", &mut [0u8; 64][..]).unwrap_err();
        assert_eq!(e, rustix::io::Errno::NODATA);
    }
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(&f, "user.syncoxide.state", &mut buf[..]).unwrap();
    let state = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(
        ["dirty", "uploading", "cached"].contains(&state),
        "a file just written: {state}"
    );
    let e = rustix::fs::getxattr(&f, "user.syncoxide.state", &mut [0u8; 2][..]).unwrap_err();
    assert_eq!(e, rustix::io::Errno::RANGE, "a buffer too small");
    let n = rustix::fs::getxattr(d.p(""), "user.syncoxide.state", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"directory");
    assert_eq!(rustix::fs::listxattr_query(&f), Ok(0));
    assert!(rustix::fs::setxattr(&f, "user.test", b"1", rustix::fs::XattrFlags::empty()).is_err());
    fs::write(d.p("f"), b"written after").unwrap();
    assert_eq!(fs::read(d.p("f")).unwrap(), b"written after");
    finish(d, &mem);
}

#[test]
fn hard_links_are_refused() {
    let (d, mem) = Drive::memory();
    fs::write(d.p("one"), b"1").unwrap();
    let e = fs::hard_link(d.p("one"), d.p("two")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    assert!(!d.p("two").exists());
    finish(d, &mem);
}

#[test]
fn five_mib_in_pieces() {
    let (d, mem) = Drive::memory();
    let big = data(5 << 20, 7);
    let mut f = fs::File::create(d.p("big.bin")).unwrap();
    for piece in big.chunks(128 << 10) {
        f.write_all(piece).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(d.p("big.bin")).unwrap().len(), 5 << 20);
    let back = fs::read(d.p("big.bin")).unwrap();
    assert_eq!(sha(&back), sha(&big));
    // A read at an odd offset across chunk boundaries.
    let mut f = fs::File::open(d.p("big.bin")).unwrap();
    f.seek(SeekFrom::Start((1 << 20) - 100)).unwrap();
    let mut buf = vec![0; 300_000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf[..], big[(1 << 20) - 100..(1 << 20) - 100 + 300_000]);
    drop(f);
    let tree = finish(d, &mem);
    match &tree["big.bin"] {
        Entry::File(b) => assert_eq!(sha(b), sha(&big)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn mmap_write() {
    let python = std::process::Command::new("python3")
        .arg("-c")
        .arg("import mmap")
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3 with mmap is not available");
        return;
    }
    let (d, mem) = Drive::memory();
    let script = r#"
import mmap, sys
p = sys.argv[1]
with open(p, "wb") as f:
    f.write(b"\0" * 10000)
with open(p, "r+b") as f:
    m = mmap.mmap(f.fileno(), 10000)
    m[0:5] = b"hello"
    m[8192:8197] = b"world"
    m.flush()
    m.close()
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(d.p("mapped"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = vec![0u8; 10000];
    want[..5].copy_from_slice(b"hello");
    want[8192..8197].copy_from_slice(b"world");
    assert_eq!(fs::read(d.p("mapped")).unwrap(), want);
    let tree = finish(d, &mem);
    assert_eq!(tree["mapped"], Entry::File(want));
}

#[test]
fn local_folder_matches_the_mount() {
    let folder = tempfile::tempdir().unwrap();
    fs::write(folder.path().join("already.txt"), b"was there").unwrap();
    fs::create_dir(folder.path().join("old")).unwrap();
    fs::write(folder.path().join("old/inside"), b"inside").unwrap();
    let local = Arc::new(LocalProvider::new(folder.path().to_path_buf()).unwrap());
    let d = Drive::new(local);
    assert_eq!(fs::read(d.p("already.txt")).unwrap(), b"was there");
    assert_eq!(fs::read(d.p("old/inside")).unwrap(), b"inside");
    fs::create_dir_all(d.p("docs/deep")).unwrap();
    fs::write(d.p("docs/deep/note.md"), b"# note\n").unwrap();
    let big = data(3 << 20, 3);
    fs::write(d.p("docs/big.bin"), &big).unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(d.p("already.txt"))
        .unwrap();
    f.write_all(b", and more").unwrap();
    drop(f);
    fs::rename(d.p("old"), d.p("renamed")).unwrap();
    std::os::unix::fs::symlink("docs/deep/note.md", d.p("shortcut")).unwrap();
    fs::write(d.p("gone"), b"soon gone").unwrap();
    fs::remove_file(d.p("gone")).unwrap();
    d.flush();
    let seen = d.tree();
    assert_same(&seen, &walk(folder.path()));
    assert_eq!(
        seen["already.txt"],
        Entry::File(b"was there, and more".to_vec())
    );
    assert_eq!(seen["docs/big.bin"], Entry::File(big));
    assert!(seen.contains_key("renamed/inside") && !seen.contains_key("old"));
    d.unmount();
}

#[test]
fn mount_errors() {
    let (d, _mem) = Drive::memory();
    let missing = d._cache.path().join("no-such-dir");
    let vfs = d.vfs.clone();
    let rt = d.rt.as_ref().unwrap().handle().clone();
    let e = mount(vfs.clone(), rt.clone(), &missing, &MountOptions::default()).unwrap_err();
    assert!(matches!(e, MountError::MountpointMissing { .. }), "{e}");
    let e = mount(vfs, rt, d.mnt.path(), &MountOptions::default()).unwrap_err();
    assert!(matches!(e, MountError::AlreadyMounted { .. }), "{e}");
    assert!(e.to_string().contains("fusermount3 -u"), "{e}");
    // The first mount still works, and `wait` returns once it is unmounted from outside.
    fs::write(d.p("still"), b"works").unwrap();
    let out = std::process::Command::new("umount")
        .arg(d.mnt.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    d.mounted.as_ref().unwrap().wait();
    assert!(!is_mounted(d.mnt.path()));
    d.unmount();
}

fn is_mounted(p: &Path) -> bool {
    let canon = p.canonicalize().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == canon.to_str())
}

#[test]
fn busy_unmount_keeps_the_mount() {
    let (mut d, _mem) = Drive::memory();
    fs::write(d.p("open"), b"x").unwrap();
    let f = fs::File::open(d.p("open")).unwrap();
    let m = d.mounted.take().unwrap();
    // Not consuming: fails while busy, works once the file is closed.
    let e = m.request_unmount().unwrap_err();
    assert!(
        matches!(&e, MountError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
        "{e}"
    );
    assert!(e.to_string().contains("umount -l"), "{e}");
    let e = m.unmount().unwrap_err();
    assert!(
        matches!(&e, MountError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
        "{e}"
    );
    // Still mounted and served after the handle is gone.
    assert!(is_mounted(d.mnt.path()));
    assert_eq!(fs::read(d.p("open")).unwrap(), b"x");
    drop(f);
    let out = std::process::Command::new("umount")
        .arg(d.mnt.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!is_mounted(d.mnt.path()));
}

#[test]
fn edits_after_upload() {
    let (d, mem) = Drive::memory();
    let big = data(3 << 20, 11);
    fs::write(d.p("big"), &big).unwrap();
    fs::write(d.p("short"), b"0123456789").unwrap();
    fs::write(d.p("log"), b"first\n").unwrap();
    fs::write(d.p("moved"), b"moved").unwrap();
    fs::create_dir(d.p("dir")).unwrap();
    fs::write(d.p("dir/f"), b"old dir").unwrap();
    d.flush();
    assert_same(&d.tree(), &snapshot(&mem));

    // A write in the middle of an uploaded file, across a chunk boundary.
    let mut want = big.clone();
    let at = (1 << 20) - 10;
    want[at..at + 20].copy_from_slice(b"XXXXXXXXXXXXXXXXXXXX");
    let mut f = OpenOptions::new().write(true).open(d.p("big")).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&want[at..at + 20]).unwrap();
    drop(f);
    assert_eq!(sha(&fs::read(d.p("big")).unwrap()), sha(&want));
    // Shorter, then longer again (the base bytes past the cut must read as zeros).
    let f = OpenOptions::new().write(true).open(d.p("short")).unwrap();
    f.set_len(3).unwrap();
    f.set_len(6).unwrap();
    drop(f);
    assert_eq!(fs::read(d.p("short")).unwrap(), b"012\0\0\0");
    let mut f = OpenOptions::new().append(true).open(d.p("log")).unwrap();
    f.write_all(b"second\n").unwrap();
    drop(f);
    fs::rename(d.p("moved"), d.p("moved2")).unwrap();
    fs::write(d.p("moved2"), b"rewritten after the move").unwrap();
    fs::remove_dir_all(d.p("dir")).unwrap();
    fs::create_dir(d.p("dir")).unwrap();
    fs::write(d.p("dir/f"), b"new dir").unwrap();

    let tree = finish(d, &mem);
    match &tree["big"] {
        Entry::File(b) => assert_eq!(sha(b), sha(&want)),
        other => panic!("{other:?}"),
    }
    assert_eq!(tree["short"], Entry::File(b"012\0\0\0".to_vec()));
    assert_eq!(tree["log"], Entry::File(b"first\nsecond\n".to_vec()));
    assert_eq!(
        tree["moved2"],
        Entry::File(b"rewritten after the move".to_vec())
    );
    assert_eq!(tree["dir/f"], Entry::File(b"new dir".to_vec()));
    assert!(!tree.contains_key("moved"));
}

#[test]
fn attributes_and_times() {
    use std::os::unix::fs::PermissionsExt;
    let (d, mem) = Drive::memory();
    fs::write(d.p("f"), b"x").unwrap();
    fs::set_permissions(d.p("f"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(d.p("f")).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let f = OpenOptions::new().write(true).open(d.p("f")).unwrap();
    f.set_modified(when).unwrap();
    drop(f);
    assert_eq!(fs::metadata(d.p("f")).unwrap().modified().unwrap(), when);
    // `touch` sets both times to now (UTIME_NOW).
    let out = std::process::Command::new("touch")
        .arg(d.p("f"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let m = fs::metadata(d.p("f")).unwrap().modified().unwrap();
    assert!(
        m.elapsed().unwrap_or_default() < Duration::from_secs(60),
        "{m:?}"
    );
    let md = fs::metadata(d.p("f")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&md),
            std::os::unix::fs::MetadataExt::gid(&md)
        ),
        ids()
    );
    fs::create_dir(d.p("d")).unwrap();
    fs::set_permissions(d.p("d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        fs::metadata(d.p("d")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    finish(d, &mem);
}

#[test]
fn read_only_mount() {
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("there.txt", b"read me");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        ChunkCache::open(
            CacheConfig::new(cache_dir.path(), CacheLimit::bytes(64 << 20)),
            &Passphrase::new("pw", KdfParams::FAST_INSECURE),
        )
        .unwrap(),
    );
    let cfg = VfsConfig {
        read_only: true,
        ..Default::default()
    };
    let vfs = Vfs::new(cfg, cache, mem.clone()).unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let opts = MountOptions {
        read_only: true,
        ..Default::default()
    };
    let m = mount(vfs, rt.handle().clone(), mnt.path(), &opts).unwrap();
    assert_eq!(fs::read(mnt.path().join("there.txt")).unwrap(), b"read me");
    let e = fs::write(mnt.path().join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = fs::create_dir(mnt.path().join("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    m.unmount().unwrap();
    rt.shutdown_timeout(Duration::from_secs(5));
}

#[test]
fn remount_keeps_everything() {
    // Unmount, drop the Vfs, open a new one over the same cache and provider.
    let mem = Arc::new(MemoryProvider::new());
    let cache_dir = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let (uid, gid) = ids();
    let open = |rt: &tokio::runtime::Runtime| {
        let cache = Arc::new(
            ChunkCache::open(
                CacheConfig::new(cache_dir.path(), CacheLimit::bytes(64 << 20)),
                &Passphrase::new("pw", KdfParams::FAST_INSECURE),
            )
            .unwrap(),
        );
        let cfg = VfsConfig {
            write_back_delay: Duration::from_millis(200),
            uid,
            gid,
            ..Default::default()
        };
        let vfs = Vfs::new(cfg, cache, mem.clone()).unwrap();
        {
            let _g = rt.enter();
            vfs.spawn_uploader();
        }
        let m = mount(
            vfs.clone(),
            rt.handle().clone(),
            mnt.path(),
            &MountOptions::default(),
        )
        .unwrap();
        (vfs, m)
    };
    let big = data(2 << 20, 5);
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (vfs, m) = open(&rt);
        fs::create_dir(mnt.path().join("d")).unwrap();
        fs::write(mnt.path().join("d/big"), &big).unwrap();
        fs::write(mnt.path().join("small"), b"small").unwrap();
        // Not flushed to the provider: the write-ahead log must carry it over.
        m.unmount().unwrap();
        drop(vfs);
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (vfs, m) = open(&rt);
    assert_eq!(fs::read(mnt.path().join("small")).unwrap(), b"small");
    assert_eq!(sha(&fs::read(mnt.path().join("d/big")).unwrap()), sha(&big));
    rt.block_on(vfs.flush_all(Duration::from_secs(10))).unwrap();
    assert_same(&walk(mnt.path()), &snapshot(&mem));
    m.unmount().unwrap();
    drop(vfs);
    rt.shutdown_timeout(Duration::from_secs(5));
}

#[test]
fn mount_options_are_visible() {
    let (d, _mem) = Drive::memory();
    let canon = d.mnt.path().canonicalize().unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap()))
        .expect("mount in mountinfo");
    let f: Vec<&str> = line.split(' ').collect();
    let dash = f.iter().position(|x| *x == "-").unwrap();
    let (fstype, source, superopts) = (f[dash + 1], f[dash + 2], f[dash + 3]);
    assert_eq!(fstype, "fuse.syncoxide", "{line}");
    assert_eq!(source, "syncoxide:test", "{line}");
    assert!(f[5].split(',').any(|o| o == "noatime"), "{line}");
    assert!(
        superopts.split(',').any(|o| o == "default_permissions"),
        "{line}"
    );
    let ra = format!("/sys/class/bdi/{}/read_ahead_kb", f[2]);
    match fs::read_to_string(&ra) {
        Ok(v) if ids().0 == 0 && !fs::metadata(&ra).unwrap().permissions().readonly() => {
            assert_eq!(v.trim(), "4096", "{ra}")
        }
        other => eprintln!("{ra}: {other:?} (not checked)"),
    }
    d.unmount();
}

fn sh(dir: &Path, script: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn real_programs() {
    real_programs_with(Uploads::AtFlush);
}

#[test]
fn real_programs_live_uploads() {
    real_programs_with(Uploads::Live);
}

fn real_programs_with(uploads: Uploads) {
    let (d, mem) = Drive::memory_with(uploads);
    let root = d.mnt.path().to_path_buf();
    // A tree made with cp and tar, then compared with diff.
    let src = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let sub = src.path().join(format!("s{}", i % 4));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(format!("f{i}")), data(1000 * i + 1, i as u8)).unwrap();
    }
    std::os::unix::fs::symlink("s0/f0", src.path().join("ln")).unwrap();
    sh(
        &root,
        &format!(
            "cp -a {}/. copied && diff -r {} copied",
            src.path().display(),
            src.path().display()
        ),
    );
    sh(
        &root,
        "tar cf t.tar copied && mkdir un && tar xf t.tar -C un && diff -r copied un/copied",
    );
    // git: lock files, O_EXCL, renames over existing files, fsync.
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok()
    {
        sh(
            &root,
            "git init -q repo && cd repo && git config user.email t@t && git config user.name t \
             && echo one > a && git add a && git commit -qm one && echo two >> a \
             && git commit -qam two && git log --oneline | wc -l && git fsck --no-progress",
        );
    }
    // sqlite: random writes, truncation, fsync, a journal file created and deleted.
    if std::process::Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok()
    {
        let out = sh(
            &root,
            "sqlite3 db.sqlite 'create table t(x); \
             with recursive c(i) as (select 1 union all select i+1 from c where i < 5000) \
             insert into t select randomblob(100) from c; delete from t where rowid % 3 = 0; \
             vacuum; select count(*) from t; pragma integrity_check;'",
        );
        assert_eq!(out, "3334\nok\n");
    }
    finish(d, &mem);
}

#[test]
fn parallel_writers() {
    // Uploads live: fresh directories are listed while their files upload (the race of
    // tests/listing_races.rs).
    let (d, mem) = Drive::memory_with(Uploads::Live);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let dir = d.p(&format!("t{t}"));
            s.spawn(move || {
                fs::create_dir(&dir).unwrap();
                for i in 0..10u8 {
                    let p = dir.join(format!("f{i}"));
                    let body = data(50_000 + usize::from(i) * 1000, t ^ i);
                    fs::write(&p, &body).unwrap();
                    assert_eq!(fs::read(&p).unwrap(), body);
                    if i % 3 == 0 {
                        fs::rename(&p, dir.join(format!("r{i}"))).unwrap();
                    }
                }
            });
        }
    });
    let tree = finish(d, &mem);
    assert_eq!(tree.len(), 4 + 40);
}

#[test]
fn changes_behind_our_back_reach_the_kernel() {
    let mem = Arc::new(MemoryProvider::new());
    mem.put_file("ext.txt", b"v1");
    mem.put_file("dir/gone.txt", b"soon removed");
    let d = Drive::with(mem.clone(), Uploads::Live, |c| {
        c.dir_cache_time = Duration::from_millis(200);
        // Long enough that only the core's invalidations can make the kernel see the change.
        c.attr_timeout = Duration::from_secs(60);
    });
    // Only stat: a read would make the kernel refetch attributes anyway (atime).
    assert_eq!(fs::metadata(d.p("ext.txt")).unwrap().len(), 2);
    assert_eq!(fs::metadata(d.p("dir/gone.txt")).unwrap().len(), 12);
    mem.put_file("ext.txt", b"version two");
    mem.remove("dir/gone.txt");
    mem.put_file("dir/new.txt", b"new");
    std::thread::sleep(Duration::from_millis(400));
    // The core refreshes the listings from the provider and invalidates what changed. (Asked
    // directly: a listing through the kernel would hand it fresh attributes by readdirplus.)
    let rt = d.rt.as_ref().unwrap();
    rt.block_on(async {
        d.vfs.readdir(fs_core::NodeId::ROOT).await.unwrap();
        let dir = d.vfs.lookup(fs_core::NodeId::ROOT, "dir").await.unwrap();
        d.vfs.readdir(dir.ino).await.unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fs::metadata(d.p("ext.txt")).unwrap().len(), 11);
    assert_eq!(
        fs::metadata(d.p("dir/gone.txt"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    let names: Vec<String> = fs::read_dir(d.p("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["new.txt"]);
    // Notifications travel on their own thread.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fs::read(d.p("ext.txt")).unwrap(), b"version two");
    assert_eq!(
        fs::metadata(d.p("dir/gone.txt"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    assert_eq!(fs::read(d.p("dir/new.txt")).unwrap(), b"new");
    finish(d, &mem);
}
