//! Offline work through a real mount (issue 4): the remote folder is moved away while the drive
//! is mounted (for the local-folder provider a missing root means "unreachable", never "all was
//! deleted"). The drive must keep answering: listings from what it knows, cached and pinned files
//! readable, an uncached read failing fast with EIO, writes, renames and deletes queued. It is
//! unmounted and mounted again while still offline, from its persisted state. Then the remote
//! comes back, a flush uploads the queue, and the remote must equal the reference tree that the
//! same operations made on a normal disk.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{assert_same_tree, tempdir, write_random_file, Drive, Rng};

/// `--offline-timeout` of the mount.
const OFFLINE_TIMEOUT: Duration = Duration::from_secs(2);
/// What a call may take beyond its deadline before we call it a hang (a loaded CI machine).
const SLACK: Duration = Duration::from_secs(8);

/// Runs `f`, failing the test if it took longer than `OFFLINE_TIMEOUT + SLACK`.
fn within_deadline<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    assert!(
        took <= OFFLINE_TIMEOUT + SLACK,
        "{what} took {took:?} while offline: calls must end within their deadline ({OFFLINE_TIMEOUT:?} + slack)"
    );
    r
}

fn read_all(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn offline_reads_writes_and_a_remount_then_everything_reaches_the_remote() {
    let base = tempdir("offline");
    let remote = base.path().join("remote");
    let away = base.path().join("remote-unplugged");
    let reference = base.path().join("reference");
    let mut rng = Rng::new(Rng::seed_from_env("SYNCOXIDE_TEST_SEED", 4));
    fs::create_dir_all(remote.join("docs/deep")).unwrap();
    fs::create_dir_all(remote.join("media")).unwrap();
    write_random_file(&remote.join("read-me.bin"), 3 << 20, &mut rng);
    write_random_file(&remote.join("never-read.bin"), 2 << 20, &mut rng);
    fs::write(remote.join("docs/a.txt"), b"alpha\n").unwrap();
    write_random_file(&remote.join("docs/deep/b.bin"), 1 << 20, &mut rng);
    write_random_file(&remote.join("media/song.bin"), 1 << 20, &mut rng);
    harness::run("cp", ["-a", "remote", "reference"], base.path());

    let mut drive = Drive::builder(&remote)
        .arg("--offline-timeout")
        .arg("2s")
        .arg("--poll-interval")
        .arg("1s")
        .foreground();
    let m = drive.path().to_path_buf();

    // Online: read one file whole, pin a directory, list everything once.
    assert_eq!(
        read_all(&m.join("read-me.bin")).unwrap(),
        fs::read(remote.join("read-me.bin")).unwrap()
    );
    let o = drive.mountctl([OsString::from("pin"), m.join("docs").into()]);
    assert!(o.success(), "mountctl pin failed:\n{}", o.describe());
    let state = drive.mountctl([
        OsString::from("state"),
        m.join("docs/deep/b.bin").into(),
        m.join("never-read.bin").into(),
    ]);
    assert!(state.success(), "{}", state.describe());
    let st = state.text();
    assert!(
        st.lines()
            .any(|l| l.contains("b.bin") && l.contains("pinned")),
        "a pinned file must say so:\n{st}"
    );
    assert!(
        st.lines()
            .any(|l| l.contains("never-read.bin") && l.contains("online-only")),
        "a file never read is online-only:\n{st}"
    );
    // The same through the extended attribute, as a file manager would ask.
    assert_eq!(state_xattr(&m.join("docs/deep/b.bin")), "pinned");
    assert_eq!(state_xattr(&m.join("never-read.bin")), "online-only");
    assert_eq!(state_xattr(&m.join("read-me.bin")), "cached");
    assert_eq!(state_xattr(&m.join("docs")), "directory");
    assert_eq!(
        names(&m),
        ["docs", "media", "never-read.bin", "read-me.bin"]
    );
    assert_eq!(names(&m.join("docs")), ["a.txt", "deep"]);
    assert_eq!(names(&m.join("media")), ["song.bin"]);

    // The remote goes away (an unplugged disk, an unmounted share).
    fs::rename(&remote, &away).unwrap();

    // Listings come from what the drive knows; nothing is taken for deleted.
    let listed = within_deadline("ls of the root", || names(&m));
    assert_eq!(listed, ["docs", "media", "never-read.bin", "read-me.bin"]);
    within_deadline("ls -lR", || {
        let o = harness::run("ls", ["-lR", "."], &m);
        assert!(o.success(), "{}", o.describe());
    });
    within_deadline("df", || {
        let o = harness::run("df", [m.as_os_str()], base.path());
        assert!(o.success(), "{}", o.describe());
    });
    // Cached and pinned data is served.
    assert_eq!(
        within_deadline("a cached read", || read_all(&m.join("read-me.bin"))).unwrap(),
        fs::read(reference.join("read-me.bin")).unwrap()
    );
    assert_eq!(
        within_deadline("a pinned read", || read_all(&m.join("docs/deep/b.bin"))).unwrap(),
        fs::read(reference.join("docs/deep/b.bin")).unwrap()
    );
    assert_eq!(read_all(&m.join("docs/a.txt")).unwrap(), b"alpha\n");
    // A file never read cannot be served: it fails, and fast.
    let err = within_deadline("an uncached read", || read_all(&m.join("media/song.bin")))
        .expect_err("an uncached file cannot be read while offline");
    assert_eq!(
        err.raw_os_error(),
        Some(libc_eio()),
        "an uncached read offline fails with EIO, got {err}"
    );
    let status = drive.status_json();
    assert!(
        !status["offline_since"].is_null(),
        "status must say the drive is offline: {status}"
    );

    // Changes queue: on the mount and, the same, on the reference.
    for root in [&m, &reference] {
        within_deadline("offline writes", || {
            fs::write(root.join("new.txt"), b"written offline\n").unwrap();
            let mut a = fs::read(root.join("docs/a.txt")).unwrap();
            a.extend_from_slice(b"beta\n");
            fs::write(root.join("docs/a.txt"), a).unwrap();
            fs::rename(root.join("read-me.bin"), root.join("docs/moved.bin")).unwrap();
            fs::remove_file(root.join("docs/deep/b.bin")).unwrap();
            fs::create_dir(root.join("made-offline")).unwrap();
            fs::write(root.join("made-offline/inner.txt"), b"inner\n").unwrap();
        });
    }
    assert_eq!(
        names(&m),
        ["docs", "made-offline", "media", "never-read.bin", "new.txt"]
    );

    // Unmount and mount again, still offline: from the persisted state.
    drive.unmount_offline();
    drive.remount();
    assert_eq!(
        within_deadline("ls after an offline remount", || names(&m)),
        ["docs", "made-offline", "media", "never-read.bin", "new.txt"]
    );
    assert_eq!(names(&m.join("docs")), ["a.txt", "deep", "moved.bin"]);
    assert_eq!(
        read_all(&m.join("docs/a.txt")).unwrap(),
        b"alpha\nbeta\n",
        "a change made offline survives the remount"
    );
    assert_eq!(
        read_all(&m.join("docs/moved.bin")).unwrap(),
        fs::read(reference.join("docs/moved.bin")).unwrap()
    );
    within_deadline("a write after the remount", || {
        for root in [&m, &reference] {
            fs::write(root.join("made-offline/second.txt"), b"after remount\n").unwrap();
        }
    });

    // The remote comes back: flush, and it equals the reference.
    fs::rename(&away, &remote).unwrap();
    drive.flush();
    drive.unmount();
    assert_same_tree(&reference, &remote);
}

fn libc_eio() -> i32 {
    5
}

/// `getxattr(path, "user.syncoxide.state")` (no crate in std for it).
#[allow(unsafe_code)]
fn state_xattr(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = c"user.syncoxide.state";
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and `buf` is valid for its length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(
        n >= 0,
        "getxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    String::from_utf8(buf[..n as usize].to_vec()).unwrap()
}
