//! The command line from outside: exact messages for what a user gets wrong.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mountctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mountctl"));
    c.args(args)
        .env_remove("SYNCOXIDE_PASSPHRASE")
        .env_remove("SYNCOXIDE_NEW_PASSPHRASE")
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
