//! Real programs on a real mount: git, sqlite3, tar, rsync, an editor's save, `cp -a`, shell
//! appends, truncate and mmap, and a remount that reuses the cache. Each test checks what it
//! reads through the mount, then unmounts (which uploads everything) and checks that the remote
//! holds exactly the tree and bytes that were written, against a reference copy made on a
//! normal disk. The scenarios run on a local folder, an S3 bucket and a WebDAV folder
//! (`local::…`, `s3::…`, `webdav::…`; permission bits and times are checked on the remote only
//! where it keeps them).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use harness::remotes::TestRemote;
use harness::{
    assert_same_tree, format_lines, on_every_remote, run, sample_tree, scan, sh, sha256, tempdir,
    write_random_file, Cmd, Drive, Kind, Output, Rng, TempDir,
};

on_every_remote!(
    git_clone_fsck_commit_and_gc,
    sqlite_rollback_journal,
    sqlite_wal_mode,
    tar_extract_and_recreate,
    rsync_archive_then_checksum_compare,
    editor_style_save,
    cp_archive_tree,
    appends_truncates_and_mmap,
    remount_reuses_the_cache,
    rename_over_an_uploaded_file_then_write,
);

/// git, isolated from the machine's configuration, with a fixed identity.
fn git(args: &[&str], cwd: &Path) -> Output {
    Cmd::new("git")
        .args([
            "-c",
            "user.name=syncoxide tests",
            "-c",
            "user.email=tests@syncoxide.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "safe.directory=*",
        ])
        .args(args)
        .cwd(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .run()
}

fn git_log(repo: &Path) -> String {
    git(&["log", "--format=%H %T %s", "--all"], repo).text()
}

/// A copy of `dir` on a normal disk (`cp -a`), taken through the mount before unmounting.
fn snapshot(dir: &Path) -> TempDir {
    let t = tempdir("snapshot");
    run(
        "cp",
        [
            "-a".as_ref(),
            dir.as_os_str(),
            t.path().join("copy").as_os_str(),
        ],
        t.path(),
    );
    t
}

fn git_clone_fsck_commit_and_gc(remote: &TestRemote) {
    let src = tempdir("git-src");
    let s = src.path();
    git(&["init", "-q"], s);
    fs::create_dir_all(s.join("src/bin")).unwrap();
    fs::write(s.join("README.md"), "# demo\n").unwrap();
    fs::write(s.join("src/lib.rs"), "pub fn one() -> u32 { 1 }\n").unwrap();
    git(&["add", "-A"], s);
    git(&["commit", "-q", "-m", "first"], s);
    fs::write(s.join("src/bin/tool.rs"), "fn main() {}\n").unwrap();
    fs::write(s.join("run.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    git(&["add", "-A"], s);
    git(&["update-index", "--chmod=+x", "run.sh"], s);
    git(&["commit", "-q", "-m", "second: a tool and a script"], s);
    let mut rng = Rng::new(7);
    fs::write(s.join("blob.bin"), rng.bytes(300_000)).unwrap();
    git(&["mv", "README.md", "README"], s);
    git(&["add", "-A"], s);
    git(&["commit", "-q", "-m", "third: binary, rename"], s);
    git(&["rm", "-q", "src/lib.rs"], s);
    git(&["commit", "-q", "-m", "fourth: delete"], s);
    git(&["tag", "v1"], s);

    let mut drive = remote.mount();
    git(&["clone", "-q", s.to_str().unwrap(), "repo"], drive.path());
    let repo = drive.path().join("repo");
    git(&["fsck", "--full", "--strict"], &repo);
    assert_eq!(
        git_log(s),
        git_log(&repo),
        "git log differs after the clone"
    );
    assert_eq!(git(&["status", "--porcelain"], &repo).text(), "");

    // Work on the mount: a commit (index.lock, renames of refs) and a gc (packs, prune).
    fs::write(repo.join("NEW.txt"), "made on the mount\n").unwrap();
    fs::write(repo.join("README"), "# demo, edited on the mount\n").unwrap();
    git(&["add", "-A"], &repo);
    git(&["commit", "-q", "-m", "fifth: on the mount"], &repo);
    git(&["gc", "-q", "--prune=now"], &repo);
    git(&["fsck", "--full", "--strict"], &repo);
    let log = git_log(&repo);
    assert_eq!(log.lines().count(), 5, "{log}");
    let reference = snapshot(&repo);
    drive.unmount();

    // First, before git refreshes the index.
    remote.assert_holds(&reference.path().join("copy"), "repo");
    let view = remote.view();
    let rrepo = view.join("repo");
    git(&["fsck", "--full", "--strict"], &rrepo);
    assert_eq!(log, git_log(&rrepo), "git log on the remote differs");
    // Where the remote keeps no modes, run.sh comes back without its x bit.
    let file_mode = format!("core.fileMode={}", remote.keeps_attrs());
    assert_eq!(
        git(&["-c", &file_mode, "status", "--porcelain"], &rrepo).text(),
        ""
    );
}

/// The sqlite3 script: a table, 10k inserts in one transaction, an index, a few hundred
/// autocommit inserts, deletes (free pages) and a vacuum.
fn sqlite_script(journal_mode: &str) -> String {
    let mut s = format!(
        "PRAGMA journal_mode={journal_mode};\n\
         CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB);\nBEGIN;\n"
    );
    for i in 0..10_000 {
        s.push_str(&format!(
            "INSERT INTO t(name, payload) VALUES ('row-{i}', randomblob({}));\n",
            i % 700
        ));
    }
    s.push_str("COMMIT;\nCREATE INDEX t_name ON t(name);\n");
    for i in 0..300 {
        s.push_str(&format!(
            "INSERT INTO t(name, payload) VALUES ('auto-{i}', zeroblob({}));\n",
            100 + i
        ));
    }
    s.push_str("DELETE FROM t WHERE id % 7 = 0;\n");
    s
}

fn sqlite(db: &Path, sql: &str) -> String {
    Cmd::new("sqlite3")
        .arg("-bail")
        .arg(db)
        .stdin(sql)
        .run()
        .text()
        .trim()
        .to_string()
}

fn sqlite_on_mount(remote: &TestRemote, journal_mode: &str) {
    let mut drive = remote.mount();
    let dir = drive.path().join("db");
    fs::create_dir(&dir).unwrap();
    let db = dir.join("test.sqlite");
    sqlite(&db, &sqlite_script(journal_mode));
    if journal_mode == "WAL" {
        sqlite(&db, "PRAGMA wal_checkpoint(TRUNCATE);");
    }
    sqlite(&db, "VACUUM;");
    let expected_rows = (1..=10_300).filter(|i| i % 7 != 0).count().to_string();
    assert_eq!(sqlite(&db, "PRAGMA integrity_check;"), "ok");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t;"), expected_rows);
    let dump = sqlite(&db, ".dump");
    let reference = snapshot(&dir);
    drive.unmount();

    remote.assert_holds(&reference.path().join("copy"), "db");
    let view = remote.view();
    let rdb = view.join("db/test.sqlite");
    assert_eq!(sqlite(&rdb, "PRAGMA integrity_check;"), "ok");
    assert_eq!(sqlite(&rdb, "SELECT count(*) FROM t;"), expected_rows);
    assert!(
        sqlite(&rdb, ".dump") == dump,
        "the dump differs on the remote"
    );
}

fn sqlite_rollback_journal(remote: &TestRemote) {
    sqlite_on_mount(remote, "DELETE");
}

fn sqlite_wal_mode(remote: &TestRemote) {
    sqlite_on_mount(remote, "WAL");
}

/// `tar` with everything that varies between machines fixed, to FILE.
fn canonical_tar(dir: &Path, out: &Path) -> String {
    run(
        "tar",
        [
            "--sort=name".as_ref(),
            "--mtime=@0".as_ref(),
            "--owner=0".as_ref(),
            "--group=0".as_ref(),
            "--numeric-owner".as_ref(),
            "-cf".as_ref(),
            out.as_os_str(),
            "-C".as_ref(),
            dir.as_os_str(),
            ".".as_ref(),
        ],
        Path::new("/"),
    );
    sha256(out)
}

fn tar_extract_and_recreate(remote: &TestRemote) {
    let work = tempdir("tar");
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    sample_tree(&tree, 1);
    let tarball = work.path().join("tree.tar");
    run(
        "tar",
        [
            "-cf".as_ref(),
            tarball.as_os_str(),
            "-C".as_ref(),
            tree.as_os_str(),
            ".".as_ref(),
        ],
        work.path(),
    );
    let want = canonical_tar(&tree, &work.path().join("want.tar"));

    let mut drive = remote.mount();
    let x = drive.path().join("x");
    fs::create_dir(&x).unwrap();
    run(
        "tar",
        [
            "-xpf".as_ref(),
            tarball.as_os_str(),
            "-C".as_ref(),
            x.as_os_str(),
        ],
        work.path(),
    );
    assert_eq!(
        canonical_tar(&x, &work.path().join("mount.tar")),
        want,
        "the tar of the mount differs"
    );
    assert_same_tree(&tree, &x);
    drive.unmount();

    remote.assert_holds(&tree, "x");
    if remote.keeps_attrs() {
        let view = remote.view();
        assert_eq!(
            canonical_tar(&view.join("x"), &work.path().join("remote.tar")),
            want,
            "the tar of the remote differs"
        );
    }
}

fn rsync_changes(from: &Path, to: &Path) -> String {
    let mut f = from.as_os_str().to_os_string();
    f.push("/");
    let mut t = to.as_os_str().to_os_string();
    t.push("/");
    run(
        "rsync",
        [
            "-c".as_ref(),
            "-a".as_ref(),
            "-n".as_ref(),
            "--itemize-changes".as_ref(),
            f.as_os_str(),
            t.as_os_str(),
        ],
        Path::new("/"),
    )
    .text()
}

fn rsync_archive_then_checksum_compare(remote: &TestRemote) {
    let work = tempdir("rsync");
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    sample_tree(&tree, 2);

    let mut drive = remote.mount();
    let r = drive.path().join("r");
    let mut from = tree.as_os_str().to_os_string();
    from.push("/");
    let mut to = r.as_os_str().to_os_string();
    to.push("/");
    run(
        "rsync",
        ["-a".as_ref(), from.as_os_str(), to.as_os_str()],
        work.path(),
    );
    let changes = rsync_changes(&tree, &r);
    assert!(
        changes.trim().is_empty(),
        "rsync sees differences on the mount:\n{changes}"
    );
    assert_same_tree(&tree, &r);
    // A second rsync after a change: only the changed file is sent, in place of the old one.
    fs::write(tree.join("src/file-000.txt"), "changed\n").unwrap();
    run(
        "rsync",
        ["-a".as_ref(), from.as_os_str(), to.as_os_str()],
        work.path(),
    );
    let changes = rsync_changes(&tree, &r);
    assert!(
        changes.trim().is_empty(),
        "rsync sees differences on the mount:\n{changes}"
    );
    drive.unmount();

    remote.assert_holds(&tree, "r");
    if remote.keeps_attrs() {
        let view = remote.view();
        let changes = rsync_changes(&tree, &view.join("r"));
        assert!(
            changes.trim().is_empty(),
            "rsync sees differences on the remote:\n{changes}"
        );
    }
}

const EDITOR_SAVE: &str = r#"
import os, sys
d, text = sys.argv[1], sys.argv[2].encode()
tmp, doc = os.path.join(d, "doc.txt.tmp"), os.path.join(d, "doc.txt")
with open(tmp, "wb") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, doc)
fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
os.fsync(fd)
os.close(fd)
"#;

fn editor_style_save(remote: &TestRemote) {
    let mut drive = remote.mount();
    let dir = drive.path().join("notes");
    fs::create_dir(&dir).unwrap();
    let save = |text: &str| {
        Cmd::new("python3")
            .arg("-c")
            .arg(EDITOR_SAVE)
            .arg(&dir)
            .arg(text)
            .run();
    };
    fs::write(dir.join("doc.txt"), "version 0\n").unwrap();
    drive.flush();
    assert_eq!(
        fs::read_to_string(remote.view().join("notes/doc.txt")).unwrap(),
        "version 0\n"
    );
    save("version 1\n");
    assert_eq!(
        fs::read_to_string(dir.join("doc.txt")).unwrap(),
        "version 1\n"
    );
    drive.flush();
    // Two saves before the write-back delay runs out.
    save("version 2, longer than the first ones\n");
    save("version 3\n");
    assert_eq!(
        fs::read_to_string(dir.join("doc.txt")).unwrap(),
        "version 3\n"
    );
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["doc.txt"], "the mount lists more than doc.txt");
    drive.unmount();

    assert_eq!(
        remote.names("notes"),
        ["doc.txt"],
        "the remote holds more than doc.txt"
    );
    assert_eq!(
        fs::read_to_string(remote.view().join("notes/doc.txt")).unwrap(),
        "version 3\n"
    );
}

/// Modification times of the regular files and symlinks under `dir` (seconds and nanoseconds).
fn mtimes(dir: &Path) -> Vec<(String, i64, i64)> {
    scan(dir)
        .into_iter()
        .filter(|(_, e)| !matches!(e.kind, Kind::Dir))
        .map(|(p, _)| {
            let md = fs::symlink_metadata(dir.join(&p)).unwrap();
            (p.display().to_string(), md.mtime(), md.mtime_nsec())
        })
        .collect()
}

fn assert_same_mtimes(expected: &Path, actual: &Path) {
    assert_same_mtimes_to(expected, actual, false);
}

/// [`assert_same_mtimes`], to the second only if `whole_seconds` (SFTP keeps no finer times).
fn assert_same_mtimes_to(expected: &Path, actual: &Path, whole_seconds: bool) {
    let cut = |v: Vec<(String, i64, i64)>| -> Vec<(String, i64, i64)> {
        v.into_iter()
            .map(|(p, s, ns)| (p, s, if whole_seconds { 0 } else { ns }))
            .collect()
    };
    let (e, a) = (cut(mtimes(expected)), cut(mtimes(actual)));
    let diff: Vec<String> = e
        .iter()
        .zip(&a)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| {
            format!(
                "{}: expected {}.{:09}, got {}.{:09}",
                x.0, x.1, x.2, y.1, y.2
            )
        })
        .collect();
    assert!(
        diff.is_empty() && e.len() == a.len(),
        "modification times differ under {}:\n{}",
        actual.display(),
        format_lines(&diff, 30)
    );
}

fn cp_archive_tree(remote: &TestRemote) {
    let work = tempdir("cp");
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    sample_tree(&tree, 3);

    let mut drive = remote.mount();
    let c = drive.path().join("c");
    run(
        "cp",
        ["-a".as_ref(), tree.as_os_str(), c.as_os_str()],
        work.path(),
    );
    assert_same_tree(&tree, &c);
    assert_same_mtimes(&tree, &c);
    drive.unmount();

    remote.assert_holds(&tree, "c");
    if remote.keeps_attrs() {
        let whole_seconds = remote.kind() == "sftp";
        assert_same_mtimes_to(&tree, &remote.view().join("c"), whole_seconds);
    }
}

/// Shell appends, truncate to shorter and longer, and a python mmap write across a chunk
/// boundary; run the same way in a directory on the normal disk (the reference) and on the mount.
const APPEND_TRUNCATE_MMAP: &str = r#"
set -e
for i in $(seq 1 100); do echo "append line $i" >> appended.txt; done
seq 1 3000 > shrink.txt
truncate -s 4000 shrink.txt
seq 1 1000 > grow.txt
truncate -s 9000 grow.txt
python3 - <<'EOF'
import mmap
size = 3 * 1024 * 1024
with open("mapped.bin", "wb") as f:
    f.write(bytes(range(256)) * (size // 256))
with open("mapped.bin", "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    m[1048476:1048676] = b"M" * 200
    m[2097157:2097167] = b"0123456789"
    m.flush()
    m.close()
with open("mapped.bin", "rb") as f:
    data = f.read()
assert data[1048476:1048676] == b"M" * 200, "mmap write not read back"
assert len(data) == size
EOF
"#;

/// The second round, after the first one was uploaded: append to and truncate uploaded files,
/// map an uploaded file again.
const APPEND_TRUNCATE_MMAP_2: &str = r#"
set -e
for i in $(seq 101 120); do echo "append line $i" >> appended.txt; done
truncate -s 2000 grow.txt
truncate -s 0 shrink.txt
echo "after empty" >> shrink.txt
python3 - <<'EOF'
import mmap
with open("mapped.bin", "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
    m[0:5] = b"START"
    m[-3:] = b"END"
    m.flush()
    m.close()
EOF
"#;

fn appends_truncates_and_mmap(remote: &TestRemote) {
    let reference = tempdir("reference");
    let r = reference.path().join("w");
    fs::create_dir(&r).unwrap();
    sh(APPEND_TRUNCATE_MMAP, &r);

    let mut drive = remote.mount();
    let w = drive.path().join("w");
    fs::create_dir(&w).unwrap();
    sh(APPEND_TRUNCATE_MMAP, &w);

    let appended: String = (1..=100).map(|i| format!("append line {i}\n")).collect();
    assert_eq!(
        fs::read_to_string(w.join("appended.txt")).unwrap(),
        appended
    );
    let seq: String = (1..=3000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        fs::read(w.join("shrink.txt")).unwrap(),
        &seq.as_bytes()[..4000]
    );
    let mut grow: Vec<u8> = (1..=1000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into();
    grow.resize(9000, 0);
    assert_eq!(fs::read(w.join("grow.txt")).unwrap(), grow);
    let mut mapped: Vec<u8> = (0..3 << 20).map(|i| (i % 256) as u8).collect();
    mapped[1048476..1048676].fill(b'M');
    mapped[2097157..2097167].copy_from_slice(b"0123456789");
    assert!(
        fs::read(w.join("mapped.bin")).unwrap() == mapped,
        "mapped.bin differs"
    );
    assert_same_tree(&r, &w);

    drive.flush();
    sh(APPEND_TRUNCATE_MMAP_2, &r);
    sh(APPEND_TRUNCATE_MMAP_2, &w);
    assert_same_tree(&r, &w);
    drive.unmount();

    remote.assert_holds(&r, "w");
}

fn remount_reuses_the_cache(remote: &TestRemote) {
    let work = tempdir("remount");
    let src = work.path().join("big.bin");
    write_random_file(&src, 20 << 20, &mut Rng::new(8));
    let want = sha256(&src);
    let cache = work.path().join("cache");

    let mut drive = remote.builder().cache_dir(&cache).mount();
    run(
        "cp",
        [src.as_os_str(), drive.path().join("big.bin").as_os_str()],
        work.path(),
    );
    drive.unmount();
    assert_eq!(sha256(&remote.view().join("big.bin")), want);

    drive.remount();
    assert_eq!(sha256(&drive.path().join("big.bin")), want);
    let status = drive.status_json();
    assert_eq!(
        status["fetched_bytes"].as_u64(),
        Some(0),
        "the remount fetched from the provider instead of reading the cache: {status}"
    );
    drive.unmount();
}

/// `mkdir -m MODE` (what tar and rsync do): the mode must reach the remote.
#[test]
fn mkdir_mode_reaches_the_remote() {
    let remote = tempdir("remote");
    let mut drive = Drive::mount(remote.path());
    run("mkdir", ["-m", "700", "private"], drive.path());
    run("mkdir", ["-m", "750", "shared"], drive.path());
    fs::write(drive.path().join("shared/f"), "x").unwrap();
    let mode = |p: &Path| format!("{:04o}", fs::metadata(p).unwrap().mode() & 0o7777);
    assert_eq!(mode(&drive.path().join("private")), "0700");
    assert_eq!(mode(&drive.path().join("shared")), "0750");
    drive.unmount();
    assert_eq!(
        mode(&remote.path().join("private")),
        "0700",
        "private/ on the remote"
    );
    assert_eq!(
        mode(&remote.path().join("shared")),
        "0750",
        "shared/ on the remote"
    );
}

/// A new file renamed over one that is already on the remote, then changed in place.
fn rename_over_an_uploaded_file_then_write(remote: &TestRemote) {
    let mut drive = remote.mount();
    let (x, z) = (drive.path().join("x"), drive.path().join("z"));
    fs::write(&x, "old").unwrap();
    drive.flush();
    fs::write(&z, "new").unwrap();
    fs::rename(&z, &x).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&x).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"N", 1).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(&x).unwrap(), "nNw");
    drive.unmount();
    assert_eq!(remote.names(""), ["x"], "the remote holds other files");
    assert_eq!(fs::read_to_string(remote.view().join("x")).unwrap(), "nNw");
}

/// A file renamed and then deleted while its upload runs (git: tmp_obj_*, renamed to the object,
/// pruned by gc) must not stay on the remote under its first name.
#[test]
fn rename_then_delete_during_the_upload() {
    let remote = tempdir("remote");
    let mut drive = Drive::mount(remote.path());
    let zeros = vec![0u8; 1 << 20];
    let mut f = fs::File::create(drive.path().join("x")).unwrap();
    for _ in 0..100 {
        std::io::Write::write_all(&mut f, &zeros).unwrap();
    }
    drop(f);
    let uploading = || {
        fs::read_dir(remote.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".syncoxide-tmp-")
        })
    };
    harness::wait_until(
        std::time::Duration::from_secs(30),
        "the upload to start",
        uploading,
    );
    fs::rename(drive.path().join("x"), drive.path().join("y")).unwrap();
    fs::remove_file(drive.path().join("y")).unwrap();
    drive.unmount();
    let names: Vec<String> = fs::read_dir(remote.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_empty(), "the remote still holds {names:?}");
}
