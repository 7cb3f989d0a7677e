//! The drive over S3, through a real mount: `mountctl mount s3://BUCKET` against the test S3
//! server (moto on 127.0.0.1, started by the harness), with what is on the server checked by
//! the harness's own unsigned requests (never through the drive's S3 client), and changes made
//! behind the drive's back the same way.

use std::fs;
use std::path::Path;
use std::time::Duration;

use harness::servers::{self, S3Server};
use harness::{run, sample_tree, sh, tempdir, wait_until, Drive};

fn server() -> &'static S3Server {
    servers::s3()
}

/// A new, empty bucket.
fn bucket(what: &str) -> String {
    let b = server().bucket(what);
    server().create_bucket(&b);
    b
}

fn download(bucket: &str) -> harness::TempDir {
    server().download(bucket)
}

/// Only the kinds, names and bytes of two trees (S3 stores no modes).
fn assert_same_files(expected: &Path, actual: &Path) {
    let o = run(
        "diff",
        [
            "-r".as_ref(),
            "--no-dereference".as_ref(),
            expected.as_os_str(),
            actual.as_os_str(),
        ],
        Path::new("/"),
    );
    assert!(o.success(), "the trees differ:\n{}", o.text());
}

#[test]
fn files_and_folders_round_trip_through_the_bucket() {
    let b = bucket("round-trip");
    // Made by another S3 client: a file, and a folder with no marker object.
    server().put(&b, "hello.txt", b"hello from s3\n");
    server().put(&b, "docs/a/deep.txt", b"deep\n");
    let mut drive = Drive::builder_s3(&b).mount();
    let m = drive.path().to_path_buf();
    assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello from s3\n");
    assert_eq!(fs::read(m.join("docs/a/deep.txt")).unwrap(), b"deep\n");
    // Local changes of every kind.
    fs::write(m.join("new.txt"), b"written here\n").unwrap();
    fs::create_dir(m.join("empty")).unwrap();
    fs::create_dir_all(m.join("x/y")).unwrap();
    fs::write(m.join("x/y/z.bin"), vec![7u8; 3 << 20]).unwrap();
    fs::rename(m.join("docs"), m.join("papers")).unwrap();
    fs::rename(m.join("hello.txt"), m.join("papers/hello.txt")).unwrap();
    fs::remove_file(m.join("papers/a/deep.txt")).unwrap();
    std::os::unix::fs::symlink("../new.txt", m.join("x/link")).unwrap();
    drive.unmount();

    let keys = server().keys(&b);
    assert_eq!(
        keys,
        [
            "empty/",
            "new.txt",
            "papers/a/",
            "papers/hello.txt",
            "x/",
            "x/link.rclonelink",
            "x/y/",
            "x/y/z.bin"
        ],
        "the bucket's keys"
    );
    assert_eq!(server().get(&b, "new.txt").unwrap(), b"written here\n");
    assert_eq!(server().get(&b, "x/y/z.bin").unwrap(), vec![7u8; 3 << 20]);
    assert_eq!(
        server().get(&b, "papers/hello.txt").unwrap(),
        b"hello from s3\n"
    );
    assert_eq!(
        server().get(&b, "x/link.rclonelink").unwrap(),
        b"../new.txt"
    );
    // The emptied folder made by another tool is still a folder.
    let drive = Drive::builder_s3(&b).mount();
    assert!(drive.path().join("papers/a").is_dir());
    assert_eq!(
        fs::read_link(drive.path().join("x/link")).unwrap(),
        Path::new("../new.txt")
    );
}

#[test]
fn a_sample_tree_copied_in_is_what_another_client_downloads() {
    let b = bucket("sample-tree");
    let src = tempdir("sample");
    sample_tree(src.path(), 5);
    let mut drive = Drive::builder_s3(&b).mount();
    let o = sh(
        &format!(
            "cp -r --no-preserve=mode {}/. {}/t",
            src.path().display(),
            drive.path().display()
        ),
        Path::new("/"),
    );
    assert!(o.success(), "{}", o.text());
    drive.unmount();
    let got = download(&b);
    assert_same_files(src.path(), &got.path().join("t"));
    // A second drive with its own cache sees the same tree.
    let other = Drive::builder_s3(&b).mount();
    assert_same_files(src.path(), &other.path().join("t"));
}

#[test]
fn a_change_made_by_another_client_shows_after_the_poll() {
    let b = bucket("remote-change");
    server().put(&b, "f.txt", b"version one\n");
    let drive = Drive::builder_s3(&b)
        .arg("--poll-interval")
        .arg("1s")
        .arg("--attr-timeout")
        .arg("0s")
        .mount();
    let f = drive.path().join("f.txt");
    assert_eq!(fs::read(&f).unwrap(), b"version one\n");
    server().put(&b, "f.txt", b"version two, longer\n");
    wait_until(
        Duration::from_secs(30),
        "the new version through the mount",
        || fs::read(&f).ok().as_deref() == Some(b"version two, longer\n"),
    );
    server().delete(&b, "f.txt");
    wait_until(
        Duration::from_secs(30),
        "the removal through the mount",
        || !f.exists(),
    );
}

/// What an upload of small files into a folder the drive made costs the server, from its own
/// log: the `PUT` of each file, and a listing of the folder (is a folder or a link at a name?)
/// once the provider's view of it is older than `NAMES_TTL`, instead of a listing at each
/// name. An untar of many small files goes at the rate the server answers requests, so more per
/// file is a slowdown.
#[test]
fn small_files_are_uploaded_with_one_request_each() {
    const N: usize = 20;
    let b = bucket("small-files");
    let drive = Drive::builder_s3(&b)
        .write_back_delay("1h")
        .arg("--poll-interval")
        .arg("0")
        .mount();
    let m = drive.path();
    fs::create_dir(m.join("a")).unwrap();
    fs::write(m.join("a/first"), b"first").unwrap();
    drive.flush();
    let before = server().requests(&b).len();
    for i in 0..N {
        fs::write(m.join(format!("a/f{i}")), vec![i as u8; 4096]).unwrap();
    }
    drive.flush();
    let reqs = server().requests(&b)[before..].to_vec();
    let puts = reqs.iter().filter(|r| r.starts_with("PUT ")).count();
    assert_eq!(puts, N, "{reqs:#?}");
    let at_names = reqs.iter().filter(|r| r.contains("prefix=a%2Ff")).count();
    assert_eq!(at_names, 0, "no listing at a name: {reqs:#?}");
    // Besides: listings of the folder, one each NAMES_TTL at most (a few at once when
    // parallel uploads find the view old together).
    assert!(reqs.len() <= N + 4, "{} requests: {reqs:#?}", reqs.len());
    for i in [0, N - 1] {
        assert_eq!(
            server().get(&b, &format!("a/f{i}")).unwrap(),
            vec![i as u8; 4096]
        );
    }
}
