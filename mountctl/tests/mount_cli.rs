//! `mountctl mount`, `unmount`, `flush` and `status` from outside, on real FUSE mounts of
//! temporary folders: what a user sees, exit codes, and messages that say what to fix.
//!
//! Needs root and /dev/fuse (mount(2) is used directly, fusermount3 is optional); without them
//! every test here says so and passes without mounting. Each test has its own runtime directory
//! (XDG_RUNTIME_DIR), so the mounts of parallel tests never see each other, and every mount is
//! undone by a guard, even when the test fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASS: &str = "correct horse";

fn can_mount() -> bool {
    let root = fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: mounting needs root and /dev/fuse");
        return false;
    }
    true
}

/// A test's world: a remote folder, a mount point, a cache, a runtime directory.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["remote", "mnt", "run", "home"] {
            fs::create_dir(w.path(d)).unwrap();
        }
        fs::write(w.path("remote/hello.txt"), b"hello from the remote\n").unwrap();
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().canonicalize().unwrap().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_string()
    }

    fn run(&self, args: &[&str], pass: Option<&str>) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mountctl"));
        c.args(args)
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_CACHE_HOME", self.path("home"))
            .env_remove("SYNCOXIDE_PASSPHRASE")
            .env_remove("SYNCOXIDE_LOG")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.path("home/no-aws-credentials"),
            )
            .env("AWS_CONFIG_FILE", self.path("home/no-aws-config"))
            .env("SYNCOXIDE_REMOTES", self.path("home/remotes.toml"))
            .env_remove("SYNCOXIDE_WEBDAV_PASSWORD")
            .stdin(Stdio::null());
        if let Some(p) = pass {
            c.env("SYNCOXIDE_PASSPHRASE", p);
        }
        c.output().unwrap()
    }

    /// Mounts `remote` on `mnt` with the test's cache (`cache`); the guard unmounts.
    fn mount(&self, remote: &str, mnt: &str, extra: &[&str], pass: &str) -> (Output, Guard<'_>) {
        let (r, m) = (self.s(remote), self.s(mnt));
        let mut args = vec!["mount", &r, &m];
        if !extra.contains(&"--write-back-delay") {
            args.extend(["--write-back-delay", "200ms"]);
        }
        args.extend_from_slice(extra);
        let o = self.run(&args, Some(pass));
        (
            o,
            Guard {
                world: self,
                mnt: self.path(mnt),
            },
        )
    }

    fn mount_ok(&self, extra: &[&str]) -> Guard<'_> {
        let cache = self.s("cache");
        let mut args = vec!["--cache-dir", &cache];
        args.extend_from_slice(extra);
        let (o, g) = self.mount("remote", "mnt", &args, PASS);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(is_mounted(&self.path("mnt")), "{}", text(&o));
        g
    }

    fn status(&self, mnt: &str) -> serde_json::Value {
        let o = self.run(&["status", &self.s(mnt), "--json"], None);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

/// Unmounts on drop: politely, then by force, so a failing test leaves no mount behind.
struct Guard<'a> {
    world: &'a World,
    mnt: PathBuf,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !is_mounted(&self.mnt) {
            return;
        }
        let m = self.mnt.to_str().unwrap();
        let _ = self.world.run(&["unmount", m, "--timeout", "1s"], None);
        for (tool, args) in [
            ("fusermount3", &["-u"][..]),
            ("umount", &[][..]),
            ("umount", &["-l"][..]),
        ] {
            if !is_mounted(&self.mnt) {
                return;
            }
            let _ = Command::new(tool).args(args).arg(m).output();
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether `p` (canonical, no spaces) is a mount point, from /proc/self/mountinfo.
fn is_mounted(p: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == p.to_str())
}

fn alive(pid: u64) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 1..].trim_start().chars().next();
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn registered(w: &World) -> usize {
    match fs::read_dir(w.path("run/syncoxide/mounts")) {
        Ok(rd) => rd.count(),
        Err(_) => 0,
    }
}

#[test]
fn mount_write_flush_status_unmount_and_mount_again() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    let g = w.mount_ok(&["--cache-size", "64MiB"]);
    let mnt = w.path("mnt");
    assert_eq!(
        fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from the remote\n"
    );

    fs::write(mnt.join("new.txt"), b"written through the mount").unwrap();
    let o = w.run(&["flush", &w.s("mnt")], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("everything is uploaded"), "{}", text(&o));
    assert_eq!(
        fs::read(w.path("remote/new.txt")).unwrap(),
        b"written through the mount"
    );

    let s = w.status("mnt");
    assert_eq!(s["mountpoint"], w.s("mnt"));
    assert_eq!(s["remote"], w.s("remote"));
    assert_eq!(s["cache_dir"], w.s("cache"));
    assert_eq!(s["cache_limit_bytes"], 64u64 << 20);
    let used = s["cache_used_bytes"].as_u64().unwrap();
    assert!(used > 0 && used <= 64 << 20, "{s}");
    assert_eq!(s["dirty_bytes"], 0, "{s}");
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["in_flight"], 0, "{s}");
    assert_eq!(s["last_error"], serde_json::Value::Null, "{s}");
    assert!(s["uploads"].as_u64().unwrap() >= 1, "{s}");
    let pid = s["pid"].as_u64().unwrap();
    assert!(alive(pid));
    let all = w.run(&["status", "--json"], None);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let human = w.run(&["status"], None);
    assert!(
        text(&human).contains("0 operations queued"),
        "{}",
        text(&human)
    );

    // Private files: the control socket, the log beside the cache, the registry entry.
    let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(w.path("cache/control.sock")), 0o600);
    assert_eq!(mode(w.path("cache.log")), 0o600);
    assert_eq!(registered(&w), 1);

    let o = w.run(&["unmount", &w.s("mnt")], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("everything is uploaded"), "{}", text(&o));
    assert!(!is_mounted(&mnt));
    assert!(!alive(pid), "unmount returns once the process has ended");
    assert!(!w.path("cache/control.sock").exists());
    assert_eq!(registered(&w), 0);
    drop(g);

    // The same remote and cache again: the data is there, and unmount uploads what is new.
    let g = w.mount_ok(&[]);
    assert_eq!(
        fs::read(mnt.join("new.txt")).unwrap(),
        b"written through the mount"
    );
    fs::write(mnt.join("later.txt"), b"second mount").unwrap();
    let o = w.run(&["unmount", &w.s("mnt")], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        fs::read(w.path("remote/later.txt")).unwrap(),
        b"second mount"
    );
    drop(g);
}

#[test]
fn mistakes_are_refused_with_what_to_fix() {
    let w = World::new();
    let cache = w.s("cache");
    let check = |o: Output, code: i32, phrases: &[&str]| {
        let t = text(&o);
        assert_eq!(o.status.code(), Some(code), "{t}");
        for p in phrases {
            assert!(t.contains(p), "{p:?} not in {t}");
        }
    };
    let (r, m) = (w.s("remote"), w.s("mnt"));
    check(
        w.run(
            &["mount", &r, &w.s("nope"), "--cache-dir", &cache],
            Some(PASS),
        ),
        1,
        &["mountpoint", "does not exist", "mkdir -p"],
    );
    check(
        w.run(
            &["mount", &w.s("gone"), &m, "--cache-dir", &cache],
            Some(PASS),
        ),
        1,
        &["remote folder", "does not exist"],
    );
    check(
        w.run(&["mount", "ftp://me@host/dir", &m], Some(PASS)),
        1,
        &["\"ftp\"", "not supported yet"],
    );
    check(
        w.run(&["mount", "s3://bucket/dir", &m], Some(PASS)),
        1,
        &["no S3 credentials", "AWS_ACCESS_KEY_ID", "--s3-profile"],
    );
    let under_file = w.s("remote/hello.txt/cache");
    check(
        w.run(&["mount", &r, &m, "--cache-dir", &under_file], Some(PASS)),
        1,
        &["cache directory", "not a directory", "--cache-dir"],
    );
    check(
        w.run(&["mount", &r, &m, "--cache-dir", &cache], None),
        1,
        &["no passphrase: set SYNCOXIDE_PASSPHRASE"],
    );
    check(
        w.run(&["mount", &r, &m, "--cache-size", "lots"], Some(PASS)),
        2,
        &["--cache-size", "512MiB"],
    );
    check(
        w.run(&["mount", &r, &m, "--chunk-size", "64MiB"], Some(PASS)),
        2,
        &["--chunk-size", "16MiB"],
    );
    check(
        w.run(&["mount", &r, &m, "--write-back-delay", "5"], Some(PASS)),
        2,
        &["--write-back-delay", "250ms"],
    );
    check(
        w.run(&["mount", &r, &m, "--dir-cache-time", "soon"], Some(PASS)),
        2,
        &["--dir-cache-time", "5s"],
    );
    check(
        w.run(&["unmount", &m, "--timeout", "forever"], None),
        2,
        &["--timeout"],
    );
    check(w.run(&["unmount", &m], None), 1, &["nothing is mounted on"]);
    check(
        w.run(&["flush", &m], None),
        1,
        &["no running syncoxide mount", "mountctl status"],
    );
    check(
        w.run(&["status", &m], None),
        1,
        &["no running syncoxide mount"],
    );
    assert!(
        !w.path("cache").exists(),
        "nothing is created by a refused mount"
    );
    assert!(!is_mounted(&w.path("mnt")));
}

#[test]
fn mounting_twice_is_refused() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    let _g = w.mount_ok(&[]);
    let (o, _g2) = w.mount("remote", "mnt", &["--cache-dir", &w.s("cache")], PASS);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("already mounted"), "{t}");
    assert!(t.contains("mountctl unmount"), "{t}");

    // Another mount point, the same cache: the running mount holds it.
    fs::create_dir(w.path("mnt2")).unwrap();
    let (o, _g3) = w.mount("remote", "mnt2", &["--cache-dir", &w.s("cache")], PASS);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("in use by another process"),
        "{}",
        text(&o)
    );
    assert!(!is_mounted(&w.path("mnt2")));
}

#[test]
fn a_wrong_passphrase_is_refused() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    let g = w.mount_ok(&[]);
    let o = w.run(&["unmount", &w.s("mnt")], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    drop(g);
    let (o, _g) = w.mount(
        "remote",
        "mnt",
        &["--cache-dir", &w.s("cache")],
        "not the passphrase",
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("wrong passphrase"), "{t}");
    assert!(t.contains("nothing was changed"), "{t}");
    assert!(!is_mounted(&w.path("mnt")));
}

#[test]
fn an_unreachable_provider_keeps_the_queue_for_the_next_mount() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    let g = w.mount_ok(&[]);
    // Listed once while online (a folder never listed cannot be written to offline).
    assert_eq!(fs::read_dir(w.path("mnt")).unwrap().count(), 1);
    fs::rename(w.path("remote"), w.path("away")).unwrap();
    fs::write(w.path("mnt/offline.txt"), b"written offline").unwrap();
    let o = w.run(&["flush", &w.s("mnt"), "--timeout", "500ms"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot be reached"), "{}", text(&o));
    let o = w.run(&["unmount", &w.s("mnt"), "--timeout", "500ms"], None);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("the provider cannot be reached: 1 operations stay queued in the write-ahead log and will be uploaded by the next mount"),
        "{t}"
    );
    assert!(!is_mounted(&w.path("mnt")), "unmounted all the same");
    drop(g);

    fs::rename(w.path("away"), w.path("remote")).unwrap();
    let g = w.mount_ok(&[]);
    let o = w.run(&["flush", &w.s("mnt")], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        fs::read(w.path("remote/offline.txt")).unwrap(),
        b"written offline"
    );
    drop(g);
}

#[test]
fn signals_and_outside_unmounts_flush_and_stop() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    // A long write-back delay: only the shutdown's flush uploads in time.
    let g = w.mount_ok(&["--write-back-delay", "1h"]);
    fs::write(w.path("mnt/term.txt"), b"before SIGTERM").unwrap();
    let pid = w.status("mnt")["pid"].as_u64().unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_until("the mount's process ends", || !alive(pid));
    assert!(!is_mounted(&w.path("mnt")));
    assert_eq!(
        fs::read(w.path("remote/term.txt")).unwrap(),
        b"before SIGTERM"
    );
    assert_eq!(registered(&w), 0);
    drop(g);

    let g = w.mount_ok(&["--write-back-delay", "1h"]);
    fs::write(w.path("mnt/outside.txt"), b"before umount").unwrap();
    let pid = w.status("mnt")["pid"].as_u64().unwrap();
    let o = Command::new("umount").arg(w.path("mnt")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    wait_until("the mount's process ends", || !alive(pid));
    assert_eq!(
        fs::read(w.path("remote/outside.txt")).unwrap(),
        b"before umount"
    );
    assert_eq!(registered(&w), 0);
    drop(g);
}

#[test]
fn a_busy_mount_stays_until_its_files_are_closed_or_it_is_told_to_stop() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    let g = w.mount_ok(&[]);
    let open = fs::File::open(w.path("mnt/hello.txt")).unwrap();
    let o = w.run(&["unmount", &w.s("mnt")], None);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("still open"), "{t}");
    assert!(is_mounted(&w.path("mnt")));
    assert_eq!(w.status("mnt")["queued"], 0, "still served");
    drop(open);
    let o = w.run(&["unmount", &w.s("mnt")], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!is_mounted(&w.path("mnt")));
    drop(g);

    // SIGTERM while a file is open: detached lazily, and the process ends all the same.
    let g = w.mount_ok(&["--write-back-delay", "1h"]);
    fs::write(w.path("mnt/busy.txt"), b"flushed at SIGTERM").unwrap();
    let open = fs::File::open(w.path("mnt/hello.txt")).unwrap();
    let pid = w.status("mnt")["pid"].as_u64().unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_until("the mount's process ends", || !alive(pid));
    assert!(!is_mounted(&w.path("mnt")));
    assert_eq!(
        fs::read(w.path("remote/busy.txt")).unwrap(),
        b"flushed at SIGTERM"
    );
    drop(open);
    drop(g);
}

#[test]
fn a_mount_left_by_a_dead_process_is_cleared_by_unmount() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    let g = w.mount_ok(&[]);
    let pid = w.status("mnt")["pid"].as_u64().unwrap();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_until("the mount's process ends", || !alive(pid));
    let (o, _g2) = w.mount("remote", "mnt", &["--cache-dir", &w.s("cache")], PASS);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("mountctl unmount"), "{}", text(&o));
    let o = w.run(&["unmount", &w.s("mnt")], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("no running mount owned it"),
        "{}",
        text(&o)
    );
    assert!(!is_mounted(&w.path("mnt")));
    drop(g);
    let g = w.mount_ok(&[]);
    assert!(w.path("mnt/hello.txt").exists());
    drop(g);
}

#[test]
fn each_remote_gets_its_own_default_cache() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    fs::create_dir(w.path("remote2")).unwrap();
    fs::create_dir(w.path("mnt2")).unwrap();
    let (o, _g1) = w.mount("remote", "mnt", &[], PASS);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (o, _g2) = w.mount("remote2", "mnt2", &[], PASS);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (a, b) = (w.status("mnt"), w.status("mnt2"));
    let (a, b) = (
        a["cache_dir"].as_str().unwrap(),
        b["cache_dir"].as_str().unwrap(),
    );
    assert_ne!(a, b);
    for c in [a, b] {
        assert!(
            c.starts_with(&w.s("home/syncoxide/local-")),
            "{c} is not in the default cache directory"
        );
    }
}

#[test]
fn a_named_remote_mounts_by_its_name() {
    if !can_mount() {
        return;
    }
    let w = World::new();
    fs::create_dir(w.path("remote/sub")).unwrap();
    fs::write(w.path("remote/sub/inner.txt"), b"inside\n").unwrap();
    let o = w.run(&["remote", "add", "home", &w.s("remote")], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let (mnt, cache) = (w.s("mnt"), w.s("cache"));
    let g = Guard {
        world: &w,
        mnt: w.path("mnt"),
    };
    let o = w.run(
        &[
            "mount",
            "home:",
            &mnt,
            "--cache-dir",
            &cache,
            "--write-back-delay",
            "200ms",
        ],
        Some(PASS),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(&format!("mounted {} on {mnt}", w.s("remote"))));
    assert!(is_mounted(&w.path("mnt")));
    assert_eq!(
        fs::read_to_string(w.path("mnt/hello.txt")).unwrap(),
        "hello from the remote\n"
    );
    assert_eq!(w.status("mnt")["remote"], w.s("remote"));
    fs::write(w.path("mnt/by-name.txt"), b"through the named mount").unwrap();
    let o = w.run(&["unmount", &mnt], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        fs::read(w.path("remote/by-name.txt")).unwrap(),
        b"through the named mount"
    );
    drop(g);

    // A folder inside it.
    let g = Guard {
        world: &w,
        mnt: w.path("mnt"),
    };
    let cache2 = w.s("cache2");
    let o = w.run(
        &["mount", "home:sub", &mnt, "--cache-dir", &cache2],
        Some(PASS),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(w.path("mnt/inner.txt")).unwrap(),
        "inside\n"
    );
    assert!(!w.path("mnt/hello.txt").exists());
    assert_eq!(w.status("mnt")["remote"], w.s("remote/sub"));
    drop(g);
}

/// A WebDAV server on 127.0.0.1 that refuses every request (401) and records each request's
/// Authorization header; it stops after 64 connections.
fn refusing_dav_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let (mut auth, mut len) = (String::from("-"), 0usize);
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap_or((&line, ""));
                match k.to_ascii_lowercase().as_str() {
                    "authorization" => auth = v.trim().to_string(),
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            let _ = r.by_ref().take(len as u64).read_to_end(&mut Vec::new());
            let _ = tx.send(auth);
            let _ = conn.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, rx)
}

fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_stored_webdav_password_reaches_the_mount_and_nothing_else() {
    if !can_mount() {
        return;
    }
    const SECRET: &str = "stored-dav-pw-4711";
    assert_eq!(base64(b"me:pw"), "bWU6cHc=");
    let w = World::new();
    let (port, auth) = refusing_dav_server();
    let url = format!("webdav://me@127.0.0.1:{port}/dav/");
    let remotes = w.path("home/remotes.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_mountctl"))
        .args([
            "remote",
            "add",
            "dav",
            &url,
            "--password-from-env",
            "--request-timeout",
            "2s",
        ])
        .env("SYNCOXIDE_REMOTES", &remotes)
        .env("SYNCOXIDE_WEBDAV_PASSWORD", SECRET)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let (mnt, cache) = (w.s("mnt"), w.s("cache"));
    let _g = Guard {
        world: &w,
        mnt: w.path("mnt"),
    };
    // In the background, with the mount's log at its most detailed.
    let o = Command::new(env!("CARGO_BIN_EXE_mountctl"))
        .args(["mount", "dav:", &mnt, "--cache-dir", &cache])
        .env("XDG_RUNTIME_DIR", w.path("run"))
        .env("SYNCOXIDE_REMOTES", &remotes)
        .env("SYNCOXIDE_PASSPHRASE", PASS)
        .env("SYNCOXIDE_LOG", "trace")
        .env_remove("SYNCOXIDE_WEBDAV_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains(&format!("mounted {url} on")), "{t}");
    assert!(!t.contains(SECRET), "{t}");
    // Listing asks the server, which sees the stored password, and refuses it.
    let listed = fs::read_dir(w.path("mnt")).and_then(|rd| rd.collect::<Result<Vec<_>, _>>());
    assert!(listed.is_err(), "{listed:?}");
    let seen = auth.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        seen,
        format!("Basic {}", base64(format!("me:{SECRET}").as_bytes()))
    );

    let s = w.status("mnt");
    assert_eq!(s["remote"], url.as_str());
    assert!(!s.to_string().contains(SECRET));
    let pid = s["pid"].as_u64().unwrap();
    for f in ["cmdline", "environ"] {
        let b = fs::read(format!("/proc/{pid}/{f}")).unwrap();
        assert!(
            !String::from_utf8_lossy(&b).contains(SECRET),
            "the password is in the mount's {f}"
        );
    }
    let human = w.run(&["status"], None);
    assert!(!text(&human).contains(SECRET));
    let o = w.run(&["unmount", &mnt, "--timeout", "1s"], None);
    assert!(!text(&o).contains(SECRET), "{}", text(&o));
    let log = fs::read_to_string(w.path("cache.log")).unwrap();
    assert!(log.contains("TRACE") || log.contains("trace"), "{log}");
    assert!(!log.contains(SECRET), "the password is in the log");
    assert!(
        !log.contains(&base64(format!("me:{SECRET}").as_bytes())),
        "the Authorization header is in the log"
    );
}
