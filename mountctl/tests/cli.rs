//! The command line from outside: exact messages for what a user gets wrong.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mountctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mountctl"));
    c.args(args)
        .env_remove("SYNCOXIDE_PASSPHRASE")
        .env_remove("SYNCOXIDE_NEW_PASSPHRASE")
        .env_remove("SYNCOXIDE_WEBDAV_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dir_arg(d: &Path) -> String {
    d.join("cache").to_str().unwrap().to_string()
}

#[test]
fn init_status_passwd_and_wipe() {
    let d = tempfile::tempdir().unwrap();
    let dir = dir_arg(d.path());
    let pw = [("SYNCOXIDE_PASSPHRASE", "first")];
    let o = mountctl(
        &[
            "cache",
            "init",
            "--cache-dir",
            &dir,
            "--cache-size",
            "64MiB",
        ],
        &pw,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cache ready"), "{}", text(&o));

    let o = mountctl(&["cache", "status", "--cache-dir", &dir, "--json"], &pw);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["limit_bytes"], 10u64 << 30);
    assert_eq!(v["dirty_bytes"], 0);
    assert_eq!(v["health"], "healthy");

    let o = mountctl(
        &["cache", "passwd", "--cache-dir", &dir],
        &[
            ("SYNCOXIDE_PASSPHRASE", "first"),
            ("SYNCOXIDE_NEW_PASSPHRASE", "second"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = mountctl(&["cache", "status", "--cache-dir", &dir], &pw);
    assert!(!o.status.success());
    let o = mountctl(
        &["cache", "status", "--cache-dir", &dir],
        &[("SYNCOXIDE_PASSPHRASE", "second")],
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = mountctl(&["cache", "wipe", "--cache-dir", &dir], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--yes"), "{}", text(&o));
    assert!(Path::new(&dir).exists());
    let o = mountctl(&["cache", "wipe", "--cache-dir", &dir, "--yes"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!Path::new(&dir).exists());
}

#[test]
fn a_wrong_passphrase_is_refused_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let dir = dir_arg(d.path());
    let o = mountctl(
        &["cache", "init", "--cache-dir", &dir],
        &[("SYNCOXIDE_PASSPHRASE", "right")],
    );
    assert!(o.status.success(), "{}", text(&o));
    let key_before = std::fs::read(Path::new(&dir).join("key")).unwrap();
    let o = mountctl(
        &["cache", "status", "--cache-dir", &dir],
        &[("SYNCOXIDE_PASSPHRASE", "wrong")],
    );
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains("wrong passphrase"), "{t}");
    assert!(t.contains("nothing was changed"), "{t}");
    assert_eq!(
        std::fs::read(Path::new(&dir).join("key")).unwrap(),
        key_before
    );
}

#[test]
fn no_passphrase_and_no_terminal_says_how_to_give_one() {
    let d = tempfile::tempdir().unwrap();
    let dir = dir_arg(d.path());
    let o = mountctl(&["cache", "init", "--cache-dir", &dir], &[]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("no passphrase: set SYNCOXIDE_PASSPHRASE, pass --passphrase-file FILE, or run mountctl on a terminal"),
        "{t}"
    );
    assert!(
        !Path::new(&dir).exists(),
        "nothing is created without a passphrase"
    );
}

#[test]
fn a_passphrase_file_works_and_an_empty_one_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = dir_arg(d.path());
    let f = d.path().join("pw");
    std::fs::write(&f, "from a file\n").unwrap();
    let o = mountctl(
        &[
            "cache",
            "init",
            "--cache-dir",
            &dir,
            "--passphrase-file",
            f.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = mountctl(
        &["cache", "status", "--cache-dir", &dir],
        &[("SYNCOXIDE_PASSPHRASE", "from a file")],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(&f, "").unwrap();
    let o = mountctl(
        &[
            "cache",
            "status",
            "--cache-dir",
            &dir,
            "--passphrase-file",
            f.to_str().unwrap(),
        ],
        &[],
    );
    assert!(text(&o).contains("is empty"), "{}", text(&o));
}

#[test]
fn a_bad_size_names_the_flag_and_the_fix() {
    let o = mountctl(&["cache", "init", "--cache-size", "lots"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(t.contains("--cache-size"), "{t}");
    assert!(t.contains("512MiB"), "{t}");
}

/// A world of named remotes: the remotes file (SYNCOXIDE_REMOTES) in a temporary directory.
struct Named {
    dir: tempfile::TempDir,
}

impl Named {
    fn new() -> Named {
        Named {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("config/syncoxide/remotes.toml")
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_string()
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_in(self.dir.path(), args, env)
    }

    fn run_in(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let file = self.file();
        let mut all = vec![("SYNCOXIDE_REMOTES", file.to_str().unwrap())];
        all.extend_from_slice(env);
        let mut c = Command::new(env!("CARGO_BIN_EXE_mountctl"));
        c.args(args)
            .current_dir(cwd)
            .env_remove("SYNCOXIDE_PASSPHRASE")
            .env_remove("SYNCOXIDE_WEBDAV_PASSWORD")
            .stdin(Stdio::null());
        for (k, v) in all {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// Runs and expects exit code `code` and every phrase in the output.
    fn expect(&self, args: &[&str], env: &[(&str, &str)], code: i32, phrases: &[&str]) -> String {
        let o = self.run(args, env);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {t}");
        for p in phrases {
            assert!(t.contains(p), "{args:?}: {p:?} not in {t}");
        }
        t
    }
}

const DAV_PASSWORD: &str = "pa55-never-printed";

#[test]
fn remotes_are_added_listed_and_removed() {
    use std::os::unix::fs::PermissionsExt;
    let n = Named::new();
    n.expect(&["remote", "list"], &[], 0, &["no named remotes"]);
    std::fs::create_dir(n.dir.path().join("data")).unwrap();
    // A relative folder is stored absolute.
    n.expect(
        &["remote", "add", "home", "data"],
        &[],
        0,
        &["added remote home", "mountctl mount home: MOUNTPOINT"],
    );
    n.expect(
        &[
            "remote",
            "add",
            "dav",
            "webdavs://me@dav.example/files",
            "--password-from-env",
            "--request-timeout",
            "1m",
        ],
        &[("SYNCOXIDE_WEBDAV_PASSWORD", DAV_PASSWORD)],
        0,
        &["added remote dav (webdavs://me@dav.example/files/)"],
    );
    n.expect(
        &[
            "remote",
            "add",
            "work_s3",
            "s3://bkt/pre",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-addressing",
            "path",
        ],
        &[],
        0,
        &[],
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&n.file()), 0o600);
    assert_eq!(mode(n.file().parent().unwrap()), 0o700);

    let t = n.expect(
        &["remote", "list"],
        &[],
        0,
        &[
            &format!("home     {}", n.path("data")),
            "dav      webdavs://me@dav.example/files/  (request-timeout: 1m, password: stored)",
            "work_s3  s3://bkt/pre  (s3-endpoint: http://127.0.0.1:9000, s3-addressing: path)",
        ],
    );
    assert!(!t.contains(DAV_PASSWORD), "{t}");
    let o = n.run(&["remote", "list", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains(DAV_PASSWORD));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dav", "home", "work_s3"]);
    assert_eq!(v[0]["password"], "stored");
    assert_eq!(v[0]["options"]["request-timeout"], "1m");
    assert_eq!(v[1]["url"], n.path("data"));
    assert_eq!(v[1]["password"], serde_json::Value::Null);
    assert_eq!(v[2]["options"]["s3-endpoint"], "http://127.0.0.1:9000");
    // The password is in the (private) file, for the mount.
    assert!(std::fs::read_to_string(n.file())
        .unwrap()
        .contains(DAV_PASSWORD));

    n.expect(
        &["remote", "remove", "home"],
        &[],
        0,
        &["removed remote home"],
    );
    let t = n.expect(&["remote", "list"], &[], 0, &["dav", "work_s3"]);
    assert!(!t.contains("home"), "{t}");
    n.expect(
        &["remote", "remove", "home"],
        &[],
        1,
        &["no remote named \"home\"", "mountctl remote list"],
    );
    assert_eq!(mode(&n.file()), 0o600);
}

#[test]
fn a_name_already_used_is_refused_unless_forced() {
    let n = Named::new();
    n.expect(&["remote", "add", "home", "/srv/a"], &[], 0, &[]);
    n.expect(
        &["remote", "add", "home", "/srv/b"],
        &[],
        1,
        &[
            "already a remote named \"home\" (/srv/a)",
            "mountctl remote remove home",
            "--force",
        ],
    );
    n.expect(&["remote", "list"], &[], 0, &["home  /srv/a"]);
    n.expect(
        &["remote", "add", "home", "/srv/b", "--force"],
        &[],
        0,
        &["replaced remote home (/srv/b)"],
    );
    n.expect(&["remote", "list"], &[], 0, &["home  /srv/b"]);
}

#[test]
fn bad_names_urls_and_options_are_refused_and_nothing_is_written() {
    let n = Named::new();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["my home", "/srv"],
            &["\"my home\"", "only letters, digits, - and _"],
        ),
        (&["a.b", "/srv"], &["only letters"]),
        (&["h", "/srv"], &["one character", "drive letter"]),
        (
            &["ftpbox", "ftp://host/dir"],
            &["\"ftp\"", "not supported yet"],
        ),
        (
            &["dav", "webdav://me:pw@h/x"],
            &["password", "never be on a command line"],
        ),
        (&["s3", "s3:///x"], &["no bucket"]),
        (&["box", "sftp://h/x"], &["names no user"]),
        (
            &["home", "/srv", "--s3-region", "eu-west-1"],
            &[
                "--s3-region is an option of s3:// remotes",
                "a local folder",
            ],
        ),
        (
            &["bkt", "s3://b", "--sftp-key", "/k"],
            &["--sftp-key is an option of sftp:// remotes"],
        ),
        (
            &["home", "/srv", "--request-timeout", "5s"],
            &["--request-timeout is an option of network remotes"],
        ),
        (
            &["box", "sftp://me@h/x", "--sftp-key", "/no/such/key"],
            &["the SSH key /no/such/key does not exist"],
        ),
        (
            &["bkt", "s3://b", "--password-from-env"],
            &["only a WebDAV remote has a password", "--s3-profile"],
        ),
        (
            &["dav", "webdav://h/x", "--password-from-env"],
            &["names no user"],
        ),
        (
            &["dav", "webdav://me@h/x", "--password-from-env"],
            &["SYNCOXIDE_WEBDAV_PASSWORD is not set"],
        ),
        (
            &["dav", "webdav://me@h/x", "--ask-password"],
            &["--ask-password needs a terminal", "--password-from-env"],
        ),
    ];
    for (args, phrases) in cases {
        let mut a = vec!["remote", "add"];
        a.extend_from_slice(args);
        n.expect(&a, &[], 1, phrases);
    }
    // A password is never a flag's value.
    n.expect(
        &[
            "remote",
            "add",
            "dav",
            "webdav://me@h/x",
            "--password",
            "pw",
        ],
        &[],
        2,
        &["--password"],
    );
    assert!(!n.file().exists(), "a refused add writes nothing");
}

#[test]
fn mounting_an_unknown_name_says_how_to_find_one() {
    let n = Named::new();
    std::fs::create_dir(n.dir.path().join("mnt")).unwrap();
    let mnt = n.path("mnt");
    n.expect(
        &["mount", "work:", &mnt],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &[
            "no remote named \"work\"",
            "mountctl remote list",
            "mountctl remote add work URL",
            "./work:",
        ],
    );
    n.expect(&["remote", "add", "home", "/srv/a"], &[], 0, &[]);
    n.expect(
        &["mount", "work:", &mnt],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &["no remote named \"work\""],
    );
    // A bad sub-folder of a known one.
    n.expect(
        &["mount", "home:a/../b", &mnt],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &[". or .. component"],
    );
}

#[test]
fn local_paths_with_a_colon_still_mount_as_paths() {
    let n = Named::new();
    std::fs::create_dir(n.dir.path().join("backup:")).unwrap();
    let gone = n.path("no-such-mountpoint");
    // A folder named like a remote, no remote of that name: the folder (the refusal is about
    // the mount point, so the remote was taken as the folder).
    n.expect(
        &["mount", "backup:", &gone],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &["the mountpoint", "does not exist"],
    );
    // NAME:SUB of an unknown name is a path, as before named remotes.
    n.expect(
        &["mount", "data:2024", &gone],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &["the remote folder data:2024 does not exist"],
    );
    // A stored remote of that name wins over the folder; ./NAME: is the folder.
    n.expect(
        &["remote", "add", "backup", &n.path("elsewhere")],
        &[],
        0,
        &[],
    );
    n.expect(
        &["mount", "backup:", &gone],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &[&format!(
            "the remote folder {} does not exist",
            n.path("elsewhere")
        )],
    );
    n.expect(
        &["mount", "./backup:", &gone],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &["the mountpoint", "does not exist"],
    );
}

#[test]
fn a_stored_webdav_password_is_used_unless_the_environment_has_one() {
    let n = Named::new();
    let gone = n.path("no-such-mountpoint");
    n.expect(
        &["remote", "add", "bare", "webdav://me@127.0.0.1:1/x"],
        &[],
        0,
        &["no password stored", "SYNCOXIDE_WEBDAV_PASSWORD"],
    );
    // Without a password anywhere the plan is refused...
    n.expect(
        &["mount", "bare:", &gone],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &[
            "give the password in SYNCOXIDE_WEBDAV_PASSWORD",
            "--ask-password",
        ],
    );
    // ... with one from the environment it goes on to the mount point.
    n.expect(
        &["mount", "bare:", &gone],
        &[
            ("SYNCOXIDE_PASSPHRASE", "x"),
            ("SYNCOXIDE_WEBDAV_PASSWORD", "pw"),
        ],
        1,
        &["the mountpoint", "does not exist"],
    );
    // ... and so with the stored one.
    n.expect(
        &[
            "remote",
            "add",
            "dav",
            "webdav://me@127.0.0.1:1/x",
            "--password-from-env",
        ],
        &[("SYNCOXIDE_WEBDAV_PASSWORD", DAV_PASSWORD)],
        0,
        &[],
    );
    let t = n.expect(
        &["mount", "dav:sub", &gone],
        &[("SYNCOXIDE_PASSPHRASE", "x")],
        1,
        &["the mountpoint", "does not exist"],
    );
    assert!(!t.contains(DAV_PASSWORD), "{t}");
}

#[test]
fn the_remotes_file_must_be_private_and_well_formed() {
    use std::os::unix::fs::PermissionsExt;
    let n = Named::new();
    n.expect(&["remote", "add", "home", "/srv/a"], &[], 0, &[]);
    let file = n.file();
    let f = file.to_str().unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [
        &["remote", "list"][..],
        &["remote", "add", "other", "/srv/b"],
        &["remote", "remove", "home"],
        &["mount", "home:", "/nowhere"],
    ] {
        n.expect(
            args,
            &[("SYNCOXIDE_PASSPHRASE", "x")],
            1,
            &[f, "mode 0644", &format!("chmod 600 {f}")],
        );
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\n[remotes.broken]\nurl = \"/srv/c\"\ncolour = \"blue\"\n");
    std::fs::write(&file, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    n.expect(
        &["remote", "list"],
        &[],
        1,
        &[&format!("{f} is malformed at line {line}:"), "colour"],
    );
}
