//! The conflict table of docs/CONFLICTS.md through a real mount: each test makes a change through
//! the mount, makes the concurrent change on the remote behind the mount's back (the upload
//! waits: `--write-back-delay 1h`, polling off), then `mountctl flush`es and checks what the
//! remote holds: at the name, and in conflict copies `NAME.conflict-<host>-<YYYYMMDD-HHMMSS>.EXT`.
//! Nothing a user wrote, here or there, may be lost. Every row runs on a local folder, an S3
//! bucket and a WebDAV folder (`local::…`, `s3::…`, `webdav::…`).

use std::fs;
use std::path::PathBuf;

use harness::remotes::TestRemote;
use harness::{on_every_remote, Drive};

on_every_remote!(
    modify_vs_modify_keeps_both,
    local_modify_vs_remote_delete_keeps_the_local_data,
    local_delete_vs_remote_modify_keeps_the_remote_data,
    create_vs_create_of_files_keeps_both,
    mkdir_vs_mkdir_merges_the_directories,
    directory_rename_vs_remote_change_inside_moves_the_change_along,
    local_write_inside_a_directory_removed_remotely_is_kept,
    local_write_inside_a_directory_replaced_remotely_by_a_file_keeps_both,
    policy_local_wins_and_keeps_the_remote_as_a_copy,
    policy_larger_with_loser_deleted_leaves_no_copy,
    auto_merge_joins_changes_to_different_lines,
    local_rename_vs_remote_modify_moves_the_remote_edit_along,
    local_rename_vs_remote_create_at_the_target_keeps_both,
    local_rename_over_a_file_vs_remote_modify_of_it_keeps_both,
    local_file_vs_remote_directory_of_the_same_name_keeps_both,
);

struct Case<'a> {
    remote: &'a TestRemote,
    drive: Drive,
}

impl<'a> Case<'a> {
    /// `remote` made by `setup`, mounted with uploads held back until a flush.
    fn new(remote: &'a TestRemote, setup: impl FnOnce(&TestRemote), extra: &[&str]) -> Case<'a> {
        setup(remote);
        let mut b = remote
            .builder()
            .write_back_delay("1h")
            .arg("--poll-interval")
            .arg("0");
        for a in extra {
            b = b.arg(a);
        }
        let drive = b.mount();
        Case { remote, drive }
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.drive.path().join(rel)
    }

    /// Uploads everything and unmounts.
    fn settle(mut self) -> Settled<'a> {
        self.drive.flush();
        let conflicts = self.drive.mountctl([
            std::ffi::OsString::from("conflicts"),
            self.drive.path().into(),
        ]);
        self.drive.unmount();
        Settled {
            remote: self.remote,
            conflicts_listed: conflicts.text(),
        }
    }
}

struct Settled<'a> {
    remote: &'a TestRemote,
    conflicts_listed: String,
}

impl Settled<'_> {
    fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.remote.view().join(rel)).unwrap_or_else(|e| panic!("remote {rel}: {e}"))
    }

    /// The names of the conflict copies of `name` in directory `dir` (relative), sorted.
    fn copies(&self, dir: &str, name: &str) -> Vec<String> {
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, ""),
        };
        let prefix = format!("{stem}.conflict-");
        self.remote
            .names(dir)
            .into_iter()
            .filter(|n| n.starts_with(&prefix) && n.ends_with(ext))
            .collect()
    }

    /// The one conflict copy of `name` in `dir`; its bytes.
    fn one_copy(&self, dir: &str, name: &str) -> Vec<u8> {
        let c = self.copies(dir, name);
        assert_eq!(
            c.len(),
            1,
            "expected exactly one conflict copy of {dir}/{name}, found {c:?}"
        );
        assert!(
            self.conflicts_listed.contains(&c[0]),
            "`mountctl conflicts` must list {}:\n{}",
            c[0],
            self.conflicts_listed
        );
        self.read(format!("{dir}/{}", c[0]).trim_start_matches('/'))
    }

    fn names(&self, dir: &str) -> Vec<String> {
        self.remote.names(dir)
    }
}

/// Reads a file through the mount so the drive knows the version it starts from.
fn learn(c: &Case, rel: &str) -> Vec<u8> {
    fs::read(c.m(rel)).unwrap_or_else(|e| panic!("read {rel} through the mount: {e}"))
}

fn modify_vs_modify_keeps_both(remote: &TestRemote) {
    let c = Case::new(remote, |r| r.put("report.txt", b"base\n"), &[]);
    assert_eq!(learn(&c, "report.txt"), b"base\n");
    fs::write(c.m("report.txt"), b"local edit\n").unwrap();
    c.remote.put("report.txt", b"remote edit\n");
    let s = c.settle();
    assert_eq!(s.read("report.txt"), b"remote edit\n");
    assert_eq!(s.one_copy("", "report.txt"), b"local edit\n");
}

fn local_modify_vs_remote_delete_keeps_the_local_data(remote: &TestRemote) {
    let c = Case::new(remote, |r| r.put("a.txt", b"base\n"), &[]);
    learn(&c, "a.txt");
    fs::write(c.m("a.txt"), b"local edit\n").unwrap();
    c.remote.remove("a.txt");
    let s = c.settle();
    assert_eq!(s.read("a.txt"), b"local edit\n");
    assert!(s.copies("", "a.txt").is_empty());
}

fn local_delete_vs_remote_modify_keeps_the_remote_data(remote: &TestRemote) {
    let c = Case::new(remote, |r| r.put("a.txt", b"base\n"), &[]);
    learn(&c, "a.txt");
    fs::remove_file(c.m("a.txt")).unwrap();
    c.remote.put("a.txt", b"remote edit\n");
    let s = c.settle();
    assert_eq!(s.read("a.txt"), b"remote edit\n");
}

fn create_vs_create_of_files_keeps_both(remote: &TestRemote) {
    let c = Case::new(remote, |_| {}, &[]);
    assert!(fs::read_dir(c.drive.path()).unwrap().next().is_none());
    fs::write(c.m("new.txt"), b"made here\n").unwrap();
    c.remote.put("new.txt", b"made there\n");
    let s = c.settle();
    assert_eq!(s.read("new.txt"), b"made there\n");
    assert_eq!(s.one_copy("", "new.txt"), b"made here\n");
}

fn mkdir_vs_mkdir_merges_the_directories(remote: &TestRemote) {
    let c = Case::new(remote, |_| {}, &[]);
    assert!(fs::read_dir(c.drive.path()).unwrap().next().is_none());
    fs::create_dir(c.m("shared")).unwrap();
    fs::write(c.m("shared/mine.txt"), b"mine\n").unwrap();
    // The drive may have made the directory on the remote already (a new directory is not
    // held back by the write-back delay); then the remote's file lands in the same one.
    c.remote.mkdir("shared");
    c.remote.put("shared/theirs.txt", b"theirs\n");
    let s = c.settle();
    assert_eq!(s.names("shared"), ["mine.txt", "theirs.txt"]);
    assert_eq!(s.read("shared/mine.txt"), b"mine\n");
    assert_eq!(s.read("shared/theirs.txt"), b"theirs\n");
}

fn directory_rename_vs_remote_change_inside_moves_the_change_along(remote: &TestRemote) {
    let c = Case::new(
        remote,
        |r| {
            r.mkdir("d");
            r.put("d/old.txt", b"old\n");
        },
        &[],
    );
    learn(&c, "d/old.txt");
    // The remote changes first, unseen by the drive (polling is off), then the local rename:
    // a directory rename may reach the remote at once, before a later remote change could.
    c.remote.put("d/old.txt", b"changed remotely\n");
    c.remote.put("d/new.txt", b"added remotely\n");
    fs::rename(c.m("d"), c.m("d2")).unwrap();
    let s = c.settle();
    assert_eq!(s.names(""), ["d2"]);
    assert_eq!(s.read("d2/old.txt"), b"changed remotely\n");
    assert_eq!(s.read("d2/new.txt"), b"added remotely\n");
}

fn local_write_inside_a_directory_removed_remotely_is_kept(remote: &TestRemote) {
    let c = Case::new(
        remote,
        |r| {
            r.mkdir("d/e");
            r.put("d/e/f.txt", b"base\n");
        },
        &[],
    );
    learn(&c, "d/e/f.txt");
    fs::write(c.m("d/e/f.txt"), b"local edit\n").unwrap();
    fs::write(c.m("d/e/g.txt"), b"new here\n").unwrap();
    c.remote.remove("d");
    let s = c.settle();
    assert_eq!(s.read("d/e/f.txt"), b"local edit\n");
    assert_eq!(s.read("d/e/g.txt"), b"new here\n");
}

fn local_write_inside_a_directory_replaced_remotely_by_a_file_keeps_both(remote: &TestRemote) {
    let c = Case::new(
        remote,
        |r| {
            r.mkdir("d");
            r.put("d/f.txt", b"base\n");
        },
        &[],
    );
    learn(&c, "d/f.txt");
    fs::write(c.m("d/f.txt"), b"local edit\n").unwrap();
    c.remote.remove("d");
    c.remote.put("d", b"a file put there\n");
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

fn policy_local_wins_and_keeps_the_remote_as_a_copy(remote: &TestRemote) {
    let c = Case::new(
        remote,
        |r| r.put("report.txt", b"base\n"),
        &["--conflict", "local"],
    );
    learn(&c, "report.txt");
    fs::write(c.m("report.txt"), b"local edit\n").unwrap();
    c.remote.put("report.txt", b"remote edit\n");
    let s = c.settle();
    assert_eq!(s.read("report.txt"), b"local edit\n");
    assert_eq!(s.one_copy("", "report.txt"), b"remote edit\n");
}

fn policy_larger_with_loser_deleted_leaves_no_copy(remote: &TestRemote) {
    let c = Case::new(
        remote,
        |r| r.put("report.txt", b"base\n"),
        &["--conflict", "larger", "--conflict-loser", "delete"],
    );
    learn(&c, "report.txt");
    fs::write(c.m("report.txt"), b"a much longer local edit\n").unwrap();
    c.remote.put("report.txt", b"short\n");
    let s = c.settle();
    assert_eq!(s.read("report.txt"), b"a much longer local edit\n");
    assert!(s.copies("", "report.txt").is_empty());
}

fn auto_merge_joins_changes_to_different_lines(remote: &TestRemote) {
    let base = "one\ntwo\nthree\nfour\nfive\n";
    let c = Case::new(remote, |r| r.put("list.txt", base), &["--auto-merge"]);
    learn(&c, "list.txt");
    fs::write(c.m("list.txt"), "ONE (here)\ntwo\nthree\nfour\nfive\n").unwrap();
    c.remote
        .put("list.txt", "one\ntwo\nthree\nfour\nFIVE (there)\n");
    let s = c.settle();
    assert_eq!(
        String::from_utf8(s.read("list.txt")).unwrap(),
        "ONE (here)\ntwo\nthree\nfour\nFIVE (there)\n"
    );
    assert!(s.copies("", "list.txt").is_empty());
}

fn local_rename_vs_remote_modify_moves_the_remote_edit_along(remote: &TestRemote) {
    let c = Case::new(remote, |r| r.put("a.txt", b"base\n"), &[]);
    learn(&c, "a.txt");
    c.remote.put("a.txt", b"remote edit\n");
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

fn local_rename_vs_remote_create_at_the_target_keeps_both(remote: &TestRemote) {
    let c = Case::new(remote, |r| r.put("a.txt", b"base\n"), &[]);
    learn(&c, "a.txt");
    // An edit first: the rename queues behind its upload, so the remote acts before it.
    fs::write(c.m("a.txt"), b"mine\n").unwrap();
    fs::rename(c.m("a.txt"), c.m("b.txt")).unwrap();
    c.remote.put("b.txt", b"theirs\n");
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

fn local_rename_over_a_file_vs_remote_modify_of_it_keeps_both(remote: &TestRemote) {
    let c = Case::new(
        remote,
        |r| {
            r.put("a.txt", b"base\n");
            r.put("b.txt", b"old\n");
        },
        &[],
    );
    learn(&c, "a.txt");
    learn(&c, "b.txt");
    fs::write(c.m("a.txt"), b"mine\n").unwrap();
    fs::rename(c.m("a.txt"), c.m("b.txt")).unwrap();
    c.remote.put("b.txt", b"their edit\n");
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

fn local_file_vs_remote_directory_of_the_same_name_keeps_both(remote: &TestRemote) {
    let c = Case::new(remote, |_| {}, &[]);
    assert!(fs::read_dir(c.drive.path()).unwrap().next().is_none());
    fs::write(c.m("x.txt"), b"a file made here\n").unwrap();
    c.remote.mkdir("x.txt");
    c.remote.put("x.txt/inside", b"theirs\n");
    let s = c.settle();
    assert_eq!(
        s.read("x.txt/inside"),
        b"theirs\n",
        "the remote directory stays"
    );
    assert_eq!(s.one_copy("", "x.txt"), b"a file made here\n");
}
