//! The conflict table of docs/CONFLICTS.md through a real mount: each test makes a change through
//! the mount, makes the concurrent change on the remote folder behind the mount's back (the
//! upload waits: `--write-back-delay 1h`, polling off), then `mountctl flush`es and checks what the
//! remote holds: at the name, and in conflict copies `NAME.conflict-<host>-<YYYYMMDD-HHMMSS>.EXT`.
//! Nothing a user wrote, here or there, may be lost.

use std::fs;
use std::path::{Path, PathBuf};

use harness::{tempdir, Drive, TempDir};

struct Case {
    _base: TempDir,
    remote: PathBuf,
    drive: Drive,
}

impl Case {
    /// A remote folder made by `setup`, mounted with uploads held back until a flush.
    fn new(setup: impl FnOnce(&Path), extra: &[&str]) -> Case {
        let base = tempdir("conflict");
        let remote = base.path().join("remote");
        fs::create_dir_all(&remote).unwrap();
        setup(&remote);
        let mut b = Drive::builder(&remote)
            .write_back_delay("1h")
            .arg("--poll-interval")
            .arg("0");
        for a in extra {
            b = b.arg(a);
        }
        let drive = b.mount();
        Case {
            _base: base,
            remote,
            drive,
        }
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.drive.path().join(rel)
    }

    fn r(&self, rel: &str) -> PathBuf {
        self.remote.join(rel)
    }

    /// Uploads everything and unmounts.
    fn settle(mut self) -> Settled {
        self.drive.flush();
        let conflicts = self.drive.mountctl([
            std::ffi::OsString::from("conflicts"),
            self.drive.path().into(),
        ]);
        self.drive.unmount();
        Settled {
            _base: self._base,
            remote: self.remote,
            conflicts_listed: conflicts.text(),
        }
    }
}

struct Settled {
    _base: TempDir,
    remote: PathBuf,
    conflicts_listed: String,
}

impl Settled {
    fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.remote.join(rel)).unwrap_or_else(|e| panic!("remote {rel}: {e}"))
    }

    /// The conflict copies of `name` in directory `dir` (relative), sorted.
    fn copies(&self, dir: &str, name: &str) -> Vec<PathBuf> {
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, ""),
        };
        let prefix = format!("{stem}.conflict-");
        let mut v: Vec<PathBuf> = fs::read_dir(self.remote.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(ext)
            })
            .collect();
        v.sort();
        v
    }

    /// The one conflict copy of `name` in `dir`; its bytes.
    fn one_copy(&self, dir: &str, name: &str) -> Vec<u8> {
        let c = self.copies(dir, name);
        assert_eq!(
            c.len(),
            1,
            "expected exactly one conflict copy of {dir}/{name}, found {c:?}"
        );
        let n = c[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            self.conflicts_listed.contains(&n),
            "`mountctl conflicts` must list {n}:\n{}",
            self.conflicts_listed
        );
        fs::read(&c[0]).unwrap()
    }

    fn names(&self, dir: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.remote.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// Reads a file through the mount so the drive knows the version it starts from.
fn learn(c: &Case, rel: &str) -> Vec<u8> {
    fs::read(c.m(rel)).unwrap_or_else(|e| panic!("read {rel} through the mount: {e}"))
}

#[test]
fn modify_vs_modify_keeps_both() {
    let c = Case::new(|r| fs::write(r.join("report.txt"), b"base\n").unwrap(), &[]);
    assert_eq!(learn(&c, "report.txt"), b"base\n");
    fs::write(c.m("report.txt"), b"local edit\n").unwrap();
    fs::write(c.r("report.txt"), b"remote edit\n").unwrap();
    let s = c.settle();
    assert_eq!(s.read("report.txt"), b"remote edit\n");
    assert_eq!(s.one_copy("", "report.txt"), b"local edit\n");
}

#[test]
fn local_modify_vs_remote_delete_keeps_the_local_data() {
    let c = Case::new(|r| fs::write(r.join("a.txt"), b"base\n").unwrap(), &[]);
    learn(&c, "a.txt");
    fs::write(c.m("a.txt"), b"local edit\n").unwrap();
    fs::remove_file(c.r("a.txt")).unwrap();
    let s = c.settle();
    assert_eq!(s.read("a.txt"), b"local edit\n");
    assert!(s.copies("", "a.txt").is_empty());
}

#[test]
fn local_delete_vs_remote_modify_keeps_the_remote_data() {
    let c = Case::new(|r| fs::write(r.join("a.txt"), b"base\n").unwrap(), &[]);
    learn(&c, "a.txt");
    fs::remove_file(c.m("a.txt")).unwrap();
    fs::write(c.r("a.txt"), b"remote edit\n").unwrap();
    let s = c.settle();
    assert_eq!(s.read("a.txt"), b"remote edit\n");
}

#[test]
fn create_vs_create_of_files_keeps_both() {
    let c = Case::new(|_| {}, &[]);
    assert!(fs::read_dir(c.drive.path()).unwrap().next().is_none());
    fs::write(c.m("new.txt"), b"made here\n").unwrap();
    fs::write(c.r("new.txt"), b"made there\n").unwrap();
    let s = c.settle();
    assert_eq!(s.read("new.txt"), b"made there\n");
    assert_eq!(s.one_copy("", "new.txt"), b"made here\n");
}

#[test]
fn mkdir_vs_mkdir_merges_the_directories() {
    let c = Case::new(|_| {}, &[]);
    assert!(fs::read_dir(c.drive.path()).unwrap().next().is_none());
    fs::create_dir(c.m("shared")).unwrap();
    fs::write(c.m("shared/mine.txt"), b"mine\n").unwrap();
    // The drive may have made the directory on the remote already (a new directory is not
    // held back by the write-back delay); then the remote's file lands in the same one.
    fs::create_dir_all(c.r("shared")).unwrap();
    fs::write(c.r("shared/theirs.txt"), b"theirs\n").unwrap();
    let s = c.settle();
    assert_eq!(s.names("shared"), ["mine.txt", "theirs.txt"]);
    assert_eq!(s.read("shared/mine.txt"), b"mine\n");
    assert_eq!(s.read("shared/theirs.txt"), b"theirs\n");
}

#[test]
fn directory_rename_vs_remote_change_inside_moves_the_change_along() {
    let c = Case::new(
        |r| {
            fs::create_dir(r.join("d")).unwrap();
            fs::write(r.join("d/old.txt"), b"old\n").unwrap();
        },
        &[],
    );
    learn(&c, "d/old.txt");
    // The remote changes first, unseen by the drive (polling is off), then the local rename:
    // a directory rename may reach the remote at once, before a later remote change could.
    fs::write(c.r("d/old.txt"), b"changed remotely\n").unwrap();
    fs::write(c.r("d/new.txt"), b"added remotely\n").unwrap();
    fs::rename(c.m("d"), c.m("d2")).unwrap();
    let s = c.settle();
    assert_eq!(s.names(""), ["d2"]);
    assert_eq!(s.read("d2/old.txt"), b"changed remotely\n");
    assert_eq!(s.read("d2/new.txt"), b"added remotely\n");
}

#[test]
fn local_write_inside_a_directory_removed_remotely_is_kept() {
    let c = Case::new(
        |r| {
            fs::create_dir_all(r.join("d/e")).unwrap();
            fs::write(r.join("d/e/f.txt"), b"base\n").unwrap();
        },
        &[],
    );
    learn(&c, "d/e/f.txt");
    fs::write(c.m("d/e/f.txt"), b"local edit\n").unwrap();
    fs::write(c.m("d/e/g.txt"), b"new here\n").unwrap();
    fs::remove_dir_all(c.r("d")).unwrap();
    let s = c.settle();
    assert_eq!(s.read("d/e/f.txt"), b"local edit\n");
    assert_eq!(s.read("d/e/g.txt"), b"new here\n");
}

#[test]
fn local_write_inside_a_directory_replaced_remotely_by_a_file_keeps_both() {
    let c = Case::new(
        |r| {
            fs::create_dir_all(r.join("d")).unwrap();
            fs::write(r.join("d/f.txt"), b"base\n").unwrap();
        },
        &[],
    );
    learn(&c, "d/f.txt");
    fs::write(c.m("d/f.txt"), b"local edit\n").unwrap();
    fs::remove_dir_all(c.r("d")).unwrap();
    fs::write(c.r("d"), b"a file put there\n").unwrap();
    let s = c.settle();
    assert_eq!(
        s.read("d/f.txt"),
        b"local edit\n",
        "the directory is made again"
    );
    assert_eq!(
        s.one_copy("", "d"),
        b"a file put there\n",
        "the remote file moved aside"
    );
}

#[test]
fn policy_local_wins_and_keeps_the_remote_as_a_copy() {
    let c = Case::new(
        |r| fs::write(r.join("report.txt"), b"base\n").unwrap(),
        &["--conflict", "local"],
    );
    learn(&c, "report.txt");
    fs::write(c.m("report.txt"), b"local edit\n").unwrap();
    fs::write(c.r("report.txt"), b"remote edit\n").unwrap();
    let s = c.settle();
    assert_eq!(s.read("report.txt"), b"local edit\n");
    assert_eq!(s.one_copy("", "report.txt"), b"remote edit\n");
}

#[test]
fn policy_larger_with_loser_deleted_leaves_no_copy() {
    let c = Case::new(
        |r| fs::write(r.join("report.txt"), b"base\n").unwrap(),
        &["--conflict", "larger", "--conflict-loser", "delete"],
    );
    learn(&c, "report.txt");
    fs::write(c.m("report.txt"), b"a much longer local edit\n").unwrap();
    fs::write(c.r("report.txt"), b"short\n").unwrap();
    let s = c.settle();
    assert_eq!(s.read("report.txt"), b"a much longer local edit\n");
    assert!(s.copies("", "report.txt").is_empty());
}

#[test]
fn auto_merge_joins_changes_to_different_lines() {
    let base = "one\ntwo\nthree\nfour\nfive\n";
    let c = Case::new(
        |r| fs::write(r.join("list.txt"), base).unwrap(),
        &["--auto-merge"],
    );
    learn(&c, "list.txt");
    fs::write(c.m("list.txt"), "ONE (here)\ntwo\nthree\nfour\nfive\n").unwrap();
    fs::write(c.r("list.txt"), "one\ntwo\nthree\nfour\nFIVE (there)\n").unwrap();
    let s = c.settle();
    assert_eq!(
        String::from_utf8(s.read("list.txt")).unwrap(),
        "ONE (here)\ntwo\nthree\nfour\nFIVE (there)\n"
    );
    assert!(s.copies("", "list.txt").is_empty());
}

#[test]
fn local_rename_vs_remote_modify_moves_the_remote_edit_along() {
    let c = Case::new(|r| fs::write(r.join("a.txt"), b"base\n").unwrap(), &[]);
    learn(&c, "a.txt");
    fs::write(c.r("a.txt"), b"remote edit\n").unwrap();
    fs::rename(c.m("a.txt"), c.m("b.txt")).unwrap();
    c.drive.flush();
    assert_eq!(
        fs::read(c.m("b.txt")).unwrap(),
        b"remote edit\n",
        "the mount shows the edit the rename moved, not its older copy"
    );
    let s = c.settle();
    assert_eq!(s.names(""), ["b.txt"], "the rename is applied");
    assert_eq!(
        s.read("b.txt"),
        b"remote edit\n",
        "the remote edit moved along"
    );
}

#[test]
fn local_rename_vs_remote_create_at_the_target_keeps_both() {
    let c = Case::new(|r| fs::write(r.join("a.txt"), b"base\n").unwrap(), &[]);
    learn(&c, "a.txt");
    // An edit first: the rename queues behind its upload, so the remote acts before it.
    fs::write(c.m("a.txt"), b"mine\n").unwrap();
    fs::rename(c.m("a.txt"), c.m("b.txt")).unwrap();
    fs::write(c.r("b.txt"), b"theirs\n").unwrap();
    let s = c.settle();
    assert_eq!(
        s.read("b.txt"),
        b"mine\n",
        "the renamed file is at the target"
    );
    assert_eq!(
        s.one_copy("", "b.txt"),
        b"theirs\n",
        "what the remote made at the target is kept as a copy"
    );
}

#[test]
fn local_rename_over_a_file_vs_remote_modify_of_it_keeps_both() {
    let c = Case::new(
        |r| {
            fs::write(r.join("a.txt"), b"base\n").unwrap();
            fs::write(r.join("b.txt"), b"old\n").unwrap();
        },
        &[],
    );
    learn(&c, "a.txt");
    learn(&c, "b.txt");
    fs::write(c.m("a.txt"), b"mine\n").unwrap();
    fs::rename(c.m("a.txt"), c.m("b.txt")).unwrap();
    fs::write(c.r("b.txt"), b"their edit\n").unwrap();
    let s = c.settle();
    assert_eq!(
        s.read("b.txt"),
        b"mine\n",
        "the renamed file is at the target"
    );
    assert_eq!(
        s.one_copy("", "b.txt"),
        b"their edit\n",
        "the edit the user never saw is kept as a copy"
    );
}

#[test]
fn local_file_vs_remote_directory_of_the_same_name_keeps_both() {
    let c = Case::new(|_| {}, &[]);
    assert!(fs::read_dir(c.drive.path()).unwrap().next().is_none());
    fs::write(c.m("x.txt"), b"a file made here\n").unwrap();
    fs::create_dir(c.r("x.txt")).unwrap();
    fs::write(c.r("x.txt/inside"), b"theirs\n").unwrap();
    let s = c.settle();
    assert_eq!(
        s.read("x.txt/inside"),
        b"theirs\n",
        "the remote directory stays"
    );
    assert_eq!(s.one_copy("", "x.txt"), b"a file made here\n");
}
