//! Changes made on the remote behind the mount's back (issue 4): after the poll interval a program
//! reads the new content through the mount, sees new names and no longer sees removed ones; and a
//! file read while it changes remotely never yields a mix of two versions.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::{tempdir, wait_until, Drive};

fn read_all(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    fs::File::open(p)?.read_to_end(&mut v)?;
    Ok(v)
}

/// Replaces `path` the way a sync client or an editor would: a temporary file renamed over it.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-writer");
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn remote_changes_show_through_the_mount_after_the_poll_interval() {
    let base = tempdir("remote-change");
    let remote = base.path().join("remote");
    fs::create_dir_all(remote.join("dir")).unwrap();
    fs::write(remote.join("notes.txt"), b"version one\n").unwrap();
    fs::write(remote.join("dir/same-size.txt"), b"aaaa").unwrap();
    fs::write(remote.join("dir/doomed.txt"), b"bye").unwrap();
    let drive = Drive::builder(&remote)
        .arg("--poll-interval")
        .arg("1s")
        .arg("--attr-timeout")
        .arg("1s")
        .mount();
    let m = drive.path();
    assert_eq!(read_all(&m.join("notes.txt")).unwrap(), b"version one\n");
    assert_eq!(read_all(&m.join("dir/same-size.txt")).unwrap(), b"aaaa");
    assert_eq!(names(&m.join("dir")), ["doomed.txt", "same-size.txt"]);

    replace(&remote.join("notes.txt"), b"version two, longer\n");
    // Same size, changed in place (only the modification time and the bytes tell).
    std::thread::sleep(Duration::from_millis(20));
    fs::write(remote.join("dir/same-size.txt"), b"bbbb").unwrap();
    fs::remove_file(remote.join("dir/doomed.txt")).unwrap();
    fs::write(remote.join("dir/born.txt"), b"hello").unwrap();

    wait_until(
        Duration::from_secs(30),
        "the mount to show the remote changes",
        || {
            read_all(&m.join("notes.txt")).ok().as_deref() == Some(b"version two, longer\n")
                && read_all(&m.join("dir/same-size.txt")).ok().as_deref() == Some(b"bbbb")
                && names(&m.join("dir")) == ["born.txt", "same-size.txt"]
        },
    );
    assert_eq!(read_all(&m.join("dir/born.txt")).unwrap(), b"hello");
    assert_eq!(
        fs::metadata(m.join("notes.txt")).unwrap().len(),
        20,
        "the size follows the new version"
    );
    assert!(
        fs::File::open(m.join("dir/doomed.txt")).is_err(),
        "a file removed remotely is gone"
    );
    // The remote was only read: nothing was written back, and no conflict copy appeared.
    assert_eq!(
        names(&remote.join("dir")),
        ["born.txt", "same-size.txt"],
        "the drive must not write anything when only the remote changed"
    );
}

#[test]
fn a_file_read_while_it_changes_remotely_is_never_a_mix() {
    const LEN: usize = 12 << 20;
    const VERSIONS: u8 = 8;
    let base = tempdir("remote-mix");
    let remote = base.path().join("remote");
    fs::create_dir_all(&remote).unwrap();
    let file = remote.join("big.bin");
    fs::write(&file, vec![1u8; LEN]).unwrap();
    let drive = Drive::builder(&remote)
        .chunk_size("64KiB")
        .arg("--poll-interval")
        .arg("1s")
        .arg("--attr-timeout")
        .arg("100ms")
        .mount();
    let on_mount = drive.path().join("big.bin");
    assert_eq!(read_all(&on_mount).unwrap(), vec![1u8; LEN]);

    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (done, file) = (done.clone(), file.clone());
        std::thread::spawn(move || {
            for v in 2..=VERSIONS {
                std::thread::sleep(Duration::from_millis(600));
                replace(&file, &vec![v; LEN]);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let (mut whole, mut failed, mut newest) = (0u32, 0u32, 1u8);
    while !done.load(Ordering::SeqCst) {
        let mut f = match fs::File::open(&on_mount) {
            Ok(f) => f,
            Err(e) => panic!("open of a file that always exists failed: {e}"),
        };
        let mut got = Vec::with_capacity(LEN);
        let mut buf = vec![0u8; 128 << 10];
        let ok = loop {
            match f.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // Its version is gone from the remote and not cached: an error, not a mix.
                Err(_) => break false,
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let first = got.first().copied().unwrap_or(0);
        if let Some(at) = got.iter().position(|&b| b != first) {
            panic!(
                "read a mix of versions: byte {at} is from version {} while byte 0 is from version {first}",
                got[at]
            );
        }
        if ok {
            assert_eq!(got.len(), LEN, "a whole read of version {first} is short");
            whole += 1;
            newest = newest.max(first);
        } else {
            failed += 1;
        }
    }
    writer.join().unwrap();
    wait_until(
        Duration::from_secs(30),
        "the mount to show the last version",
        || read_all(&on_mount).ok() == Some(vec![VERSIONS; LEN]),
    );
    assert!(
        whole > 0,
        "no read completed while the file changed ({failed} failed)"
    );
    eprintln!("{whole} whole reads (newest version seen {newest}), {failed} ended with an error");
}
