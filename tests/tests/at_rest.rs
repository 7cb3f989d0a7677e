//! Encryption at rest: a workload writes files whose names and contents carry a unique marker
//! (small files that travel inline in the write-ahead log, large ones that go to chunks, renamed
//! and deleted files, a symlink, directories); then no file under the cache directory (chunks,
//! index, WAL segments, namespace checkpoints, anything else) may contain the marker or any of
//! the names, and no file there may be named after them. Checked while mounted (after a flush),
//! after an unmount, and after a `kill -9` (the WAL not yet checkpointed).

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use harness::{fsync_dir, scan, tempdir, Cmd, Drive};

/// A marker no other run and no other file can contain.
fn marker() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("Qz{:x}{:x}Mk", t.as_nanos(), std::process::id())
}

fn text(marker: &str, len: usize) -> Vec<u8> {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!("{marker} secret line {i}\n"));
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

/// Writes the workload under `root` (on the mount); returns every name it used.
fn workload(root: &Path, m: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut name = |n: String| {
        names.push(n.clone());
        n
    };
    let dir = root.join(name(format!("vault-{m}")));
    let inner = dir.join(name(format!("inner-{m}")));
    fs::create_dir_all(&inner).unwrap();
    for (i, len) in [0usize, 10, 100, 5000, 60_000, 200_000, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let p = if i % 2 == 0 { &dir } else { &inner }.join(name(format!("note-{m}-{i}.txt")));
        fs::write(&p, text(m, len)).unwrap();
    }
    // Renamed: the old name was in the log.
    let draft = dir.join(name(format!("draft-{m}.txt")));
    fs::write(&draft, text(m, 3000)).unwrap();
    fs::rename(&draft, dir.join(name(format!("final-{m}.txt")))).unwrap();
    // Deleted.
    let gone = inner.join(name(format!("gone-{m}.txt")));
    fs::write(&gone, text(m, 70_000)).unwrap();
    fs::remove_file(&gone).unwrap();
    // Symlink: its name and its target.
    let target = format!("{}/x", name(format!("target-{m}")));
    std::os::unix::fs::symlink(&target, dir.join(name(format!("link-{m}")))).unwrap();
    // Written in place and fsync'd, still open.
    let open = dir.join(name(format!("open-{m}.log")));
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&open)
        .unwrap();
    std::io::Write::write_all(&mut f, &text(m, 9000)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&dir);
    fsync_dir(&inner);
    names
}

/// Panics if a file under `cache` contains any of `needles`, or is named after one.
fn assert_nothing_readable(cache: &Path, needles: &[String], when: &str) {
    let entries = scan(cache);
    assert!(!entries.is_empty(), "{when}: the cache {cache:?} is empty");
    let named: Vec<&PathBuf> = entries
        .keys()
        .filter(|p| {
            needles
                .iter()
                .any(|n| p.to_string_lossy().contains(n.as_str()))
        })
        .collect();
    assert!(
        named.is_empty(),
        "{when}: cache files named after the workload: {named:?}"
    );

    let patterns = tempdir("needles");
    let list = patterns.path().join("needles");
    fs::write(&list, needles.join("\n") + "\n").unwrap();
    let o = Cmd::new("grep")
        .args(["-r", "-a", "-F", "-o", "-f"])
        .arg(&list)
        .arg(cache)
        .output();
    match o.status.code() {
        Some(1) => {}
        Some(0) => {
            let hits = o.text();
            let lines: Vec<&str> = hits.lines().take(30).collect();
            panic!(
                "{when}: the cache holds plaintext of the workload ({} hits):\n{}",
                hits.lines().count(),
                lines.join("\n")
            );
        }
        _ => panic!("{when}: grep failed: {}", o.describe()),
    }
}

/// Names and marker, longest first (so that grep -o shows the longest match).
fn needles(m: &str, names: Vec<String>) -> Vec<String> {
    let mut v = names;
    v.push(m.to_string());
    v.sort_by_key(|n| std::cmp::Reverse(n.len()));
    v
}

#[test]
fn nothing_readable_at_rest_after_flush_and_unmount() {
    let remote = tempdir("remote");
    let m = marker();
    let mut drive = Drive::mount(remote.path());
    let names = workload(drive.path(), &m);
    let needles = needles(&m, names);
    drive.flush();
    assert_nothing_readable(drive.cache_dir(), &needles, "mounted, after a flush");
    drive.unmount();
    assert_nothing_readable(drive.cache_dir(), &needles, "after unmount");
    // The workload did arrive (the check above is not vacuous).
    let final_name = format!("vault-{m}/final-{m}.txt");
    assert_eq!(
        fs::read(remote.path().join(final_name)).unwrap(),
        text(&m, 3000)
    );
    // The mount's log lives beside the cache directory; names there are not encrypted.
    let mut log = drive.cache_dir().as_os_str().to_os_string();
    log.push(".log");
    if let Ok(l) = fs::read_to_string(&log) {
        if l.contains(&m) {
            eprintln!("note: the mount log {log:?} names files of the workload");
        }
    }
}

#[test]
fn nothing_readable_at_rest_after_kill9() {
    let remote = tempdir("remote");
    let m = marker();
    // A long write-back delay: the log holds everything when the mount dies.
    let mut drive = Drive::builder(remote.path())
        .write_back_delay("1h")
        .foreground();
    let names = workload(drive.path(), &m);
    let needles = needles(&m, names);
    drive.kill9();
    assert_nothing_readable(drive.cache_dir(), &needles, "after kill -9");
    // The next mount replays the log and uploads it.
    drive.remount();
    drive.unmount();
    let final_name = format!("vault-{m}/final-{m}.txt");
    assert_eq!(
        fs::read(remote.path().join(final_name)).unwrap(),
        text(&m, 3000)
    );
    assert_nothing_readable(drive.cache_dir(), &needles, "after replay and unmount");
}
