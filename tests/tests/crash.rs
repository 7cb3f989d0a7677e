//! Crash consistency: `kill -9` of a `--foreground` mount while a writer works on it, many times
//! over, each time remounting on the same cache directory.
//!
//! The writer (a python3 script) creates, rewrites, renames and deletes files in three
//! directories; after each operation it fsyncs the file (and the directories touched) and only
//! then records the operation in a journal on the normal disk. The mount is SIGKILLed after a
//! random delay; the writer then fails with ECONNABORTED, ENOTCONN or EIO (expected). After every
//! remount the drive must show exactly the files the acknowledged operations made, the operation
//! in flight at the kill either done or not (a created file may also be there empty: creation is
//! durable at once, data at the fsync); after the last round `mountctl flush` and `unmount` must
//! leave exactly that in the remote folder. Variants: with renames over existing files, without,
//! and (without) checking only what the drive shows. A last test kills the mount during an
//! upload and looks for the upload's temporary file.
//!
//! `SYNCOXIDE_CRASH_SEED` and `SYNCOXIDE_CRASH_ROUNDS` (default 24) replay or lengthen a run; a
//! failure prints the history of every path that differs.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::remotes::TestRemote;
use harness::{fsync_dir, tempdir, wait_timeout, Drive, Rng};

const DIRS: [&str; 3] = ["d0", "d1", "d2"];

const WRITER: &str = r#"
import os, random, sys
mnt, journal, seed, opid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rename_over = float(sys.argv[5])
DIRS = ["d0", "d1", "d2"]
rng = random.Random(seed)
j = open(journal, "w", buffering=1)

def content(i, n):
    pat = b"<%08x>" % i
    return (pat * (n // len(pat) + 1))[:n]

def fsync_dir(d):
    fd = os.open(os.path.join(mnt, d), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def write_all(fd, data, off):
    view = memoryview(data)
    while len(view):
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n

try:
    files = {}
    for d in DIRS:
        for n in os.listdir(os.path.join(mnt, d)):
            files[d + "/" + n] = os.stat(os.path.join(mnt, d, n)).st_size
    j.write("S started with %d files\n" % len(files))
    while True:
        opid += 1
        names = sorted(files)
        r = rng.random()
        if not names or (r < 0.3 and len(names) < 40):
            d = rng.choice(DIRS)
            p = "%s/f%d" % (d, opid)
            n = rng.randint(0, 300000)
            j.write("B create %s %d %d\n" % (p, opid, n))
            fd = os.open(os.path.join(mnt, p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            write_all(fd, content(opid, n), 0)
            os.fsync(fd)
            os.close(fd)
            fsync_dir(d)
            files[p] = n
        elif r < 0.6:
            p = rng.choice(names)
            off = rng.randint(0, files[p])
            n = rng.randint(1, 300000)
            j.write("B write %s %d %d %d\n" % (p, off, n, opid))
            fd = os.open(os.path.join(mnt, p), os.O_WRONLY)
            write_all(fd, content(opid, n), off)
            os.fsync(fd)
            os.close(fd)
            files[p] = max(files[p], off + n)
        elif r < 0.8:
            src = rng.choice(names)
            if len(names) > 1 and rng.random() < rename_over:
                dst = rng.choice([x for x in names if x != src])
            else:
                dst = "%s/r%d" % (rng.choice(DIRS), opid)
            j.write("B rename %s %s\n" % (src, dst))
            os.rename(os.path.join(mnt, src), os.path.join(mnt, dst))
            fsync_dir(src.split("/")[0])
            if dst.split("/")[0] != src.split("/")[0]:
                fsync_dir(dst.split("/")[0])
            files[dst] = files.pop(src)
        else:
            p = rng.choice(names)
            j.write("B delete %s\n" % p)
            os.unlink(os.path.join(mnt, p))
            fsync_dir(p.split("/")[0])
            del files[p]
        j.write("A\n")
except OSError as e:
    j.write("E %d %s (%s)\n" % (e.errno, e.strerror, e.filename))
    sys.exit(3)
"#;

/// errno values a writer may die with once its mount is gone: EIO, ECONNABORTED, ENOTCONN.
const MOUNT_GONE: [i32; 3] = [5, 103, 107];

/// Path → bytes of every file under the three directories.
type Model = BTreeMap<String, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    Create {
        path: String,
        id: u64,
        len: usize,
    },
    Write {
        path: String,
        off: usize,
        len: usize,
        id: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Delete {
        path: String,
    },
}

/// The path an operation starts from.
fn op_path(op: &Op) -> &str {
    match op {
        Op::Create { path, .. } | Op::Write { path, .. } | Op::Delete { path } => path,
        Op::Rename { from, .. } => from,
    }
}

/// The lines of `history` that name `path`.
fn history_of(history: &[String], path: &str) -> String {
    let quoted = format!("{path:?}");
    history
        .iter()
        .filter(|l| l.contains(&quoted))
        .map(|l| format!("    {l}\n"))
        .collect()
}

fn content(id: u64, n: usize) -> Vec<u8> {
    let pat = format!("<{id:08x}>").into_bytes();
    pat.iter().copied().cycle().take(n).collect()
}

fn parse_op(line: &str) -> Op {
    let w: Vec<&str> = line.split(' ').collect();
    let num = |i: usize| -> u64 {
        w[i].parse()
            .unwrap_or_else(|_| panic!("bad journal line {line:?}"))
    };
    match w[1] {
        "create" => Op::Create {
            path: w[2].into(),
            id: num(3),
            len: num(4) as usize,
        },
        "write" => Op::Write {
            path: w[2].into(),
            off: num(3) as usize,
            len: num(4) as usize,
            id: num(5),
        },
        "rename" => Op::Rename {
            from: w[2].into(),
            to: w[3].into(),
        },
        "delete" => Op::Delete { path: w[2].into() },
        _ => panic!("bad journal line {line:?}"),
    }
}

fn apply(m: &mut Model, op: &Op) -> Result<(), String> {
    let missing = || format!("{op:?}: the model has no such file");
    match op {
        Op::Create { path, id, len } => {
            if m.insert(path.clone(), content(*id, *len)).is_some() {
                return Err(format!("{op:?}: the model has this file already"));
            }
        }
        Op::Write { path, off, len, id } => {
            let f = m.get_mut(path).ok_or_else(missing)?;
            let end = off + len;
            if f.len() < end {
                f.resize(end, 0);
            }
            f[*off..end].copy_from_slice(&content(*id, *len));
        }
        Op::Rename { from, to } => {
            let v = m.remove(from).ok_or_else(missing)?;
            m.insert(to.clone(), v);
        }
        Op::Delete { path } => {
            m.remove(path).ok_or_else(missing)?;
        }
    }
    Ok(())
}

/// What the tree may look like if `op` was in flight at the kill.
fn outcomes(m: &Model, op: Option<&Op>) -> Vec<(String, Model)> {
    let mut out = vec![("no operation in flight, or not done".to_string(), m.clone())];
    if let Some(op) = op {
        if let Op::Create { path, .. } = op {
            // create is durable at once; its data only at the fsync.
            let mut e = m.clone();
            e.insert(path.clone(), Vec::new());
            out.push((format!("{op:?} created but not written"), e));
        }
        let mut done = m.clone();
        apply(&mut done, op).expect("the operation in flight fits the model");
        out.push((format!("{op:?} done"), done));
    }
    out
}

/// The files of the three directories under `root`, which must hold nothing else.
fn observe(root: &Path) -> Model {
    let top: Vec<String> = fs::read_dir(root)
        .unwrap_or_else(|e| panic!("read_dir {root:?}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut sorted = top.clone();
    sorted.sort();
    assert_eq!(sorted, DIRS, "{root:?} holds other entries");
    let mut m = Model::new();
    for d in DIRS {
        for e in fs::read_dir(root.join(d)).unwrap() {
            let e = e.unwrap();
            let name = format!("{d}/{}", e.file_name().to_string_lossy());
            assert!(e.file_type().unwrap().is_file(), "{name} is not a file");
            let bytes = fs::read(e.path()).unwrap_or_else(|err| panic!("read {name}: {err}"));
            m.insert(name, bytes);
        }
    }
    m
}

fn model_diff(expected: &Model, actual: &Model) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => out.push(format!("missing    {p} ({} bytes)", e.len())),
            Some(a) if a.len() != e.len() => out.push(format!(
                "size       {p}: expected {} bytes, got {}",
                e.len(),
                a.len()
            )),
            Some(a) => {
                if let Some(i) = (0..e.len()).find(|&i| a[i] != e[i]) {
                    out.push(format!(
                        "content    {p} ({} bytes) differs from byte {i}",
                        e.len()
                    ));
                }
            }
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            out.push(format!("unexpected {p} ({} bytes)", a.len()));
        }
    }
    out
}

/// The tree must be one of the outcomes; returns which one, and it. Panics otherwise, with the
/// differences and the history of each path that differs.
fn check(
    actual: &Model,
    expected: &Model,
    pending: Option<&Op>,
    when: &str,
    history: &[String],
) -> (String, Model) {
    let cands = outcomes(expected, pending);
    if let Some(found) = cands.iter().find(|(_, m)| m == actual) {
        return found.clone();
    }
    let mut msg = format!("{when}: the tree matches no possible outcome\n");
    for (what, m) in &cands {
        msg.push_str(&format!("if {what}:\n"));
        for line in model_diff(m, actual).iter().take(30) {
            let path = line.split_whitespace().nth(1).unwrap_or_default();
            msg.push_str(&format!("  {line}\n{}", history_of(history, path)));
        }
    }
    panic!("{msg}");
}

struct Round {
    acked: Vec<Op>,
    pending: Option<Op>,
    error: Option<String>,
}

fn read_journal(path: &Path) -> Round {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut r = Round {
        acked: Vec::new(),
        pending: None,
        error: None,
    };
    for line in text.lines() {
        match line.split(' ').next() {
            Some("B") => {
                assert!(r.pending.is_none(), "two B lines in a row: {line}");
                r.pending = Some(parse_op(line));
            }
            Some("A") => r.acked.push(r.pending.take().expect("A without B")),
            Some("E") => r.error = Some(line.to_string()),
            Some("S") => {}
            _ => panic!("bad journal line {line:?}"),
        }
    }
    r
}

#[test]
fn kill9_during_fsynced_writes_loses_nothing_acknowledged() {
    crash_rounds(&TestRemote::folder(), 0.3, true);
}

/// The same over S3, WebDAV and SFTP (fewer rounds: `SYNCOXIDE_CRASH_ROUNDS` / 3).
#[test]
fn s3_kill9_during_fsynced_writes_loses_nothing_acknowledged() {
    crash_rounds(&TestRemote::s3("crash"), 0.3, true);
}

#[test]
fn webdav_kill9_during_fsynced_writes_loses_nothing_acknowledged() {
    crash_rounds(&TestRemote::webdav("crash"), 0.3, true);
}

#[test]
fn sftp_kill9_during_fsynced_writes_loses_nothing_acknowledged() {
    crash_rounds(&TestRemote::sftp("crash"), 0.3, true);
}

/// The same without renames over existing files.
#[test]
fn kill9_during_fsynced_writes_without_renames_over_files() {
    crash_rounds(&TestRemote::folder(), 0.0, true);
}

/// What the drive shows after each `kill -9` and replay (not what reaches the remote), without
/// renames over existing files: every acknowledged operation is there.
#[test]
fn kill9_then_replay_shows_every_acknowledged_operation() {
    crash_rounds(&TestRemote::folder(), 0.0, false);
}

/// After a remount: the drive must show the model, with the operation in flight at the kill
/// done or not; the model becomes what it shows.
fn verify(
    drive: &Drive,
    model: &mut Model,
    pending: &Option<Op>,
    history: &mut Vec<String>,
    when: &str,
) {
    let (what, m) = check(
        &observe(drive.path()),
        model,
        pending.as_ref(),
        when,
        history,
    );
    if pending.is_some() {
        history.push(format!("{when}: {what}"));
    }
    *model = m;
}

/// Rounds of writer + `kill -9`; `rename_over`: how often a rename replaces another file;
/// `remote_too`: also compare what the remote holds with the model at the end.
fn crash_rounds(remote: &TestRemote, rename_over: f64, remote_too: bool) {
    let started = Instant::now();
    let seed = Rng::seed_from_env("SYNCOXIDE_CRASH_SEED", 20_250_601);
    let rounds: u64 = std::env::var("SYNCOXIDE_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
        / if remote.kind() == "local" { 1 } else { 3 };
    let mut rng = Rng::new(seed);
    let work = tempdir("crash");
    let script = work.path().join("writer.py");
    fs::write(&script, WRITER).unwrap();
    let cache = work.path().join("cache");

    let mut drive = remote.builder().cache_dir(&cache).foreground();
    for d in DIRS {
        fs::create_dir(drive.path().join(d)).unwrap();
    }
    fsync_dir(drive.path());
    let mut model = Model::new();
    let mut pending: Option<Op> = None;
    let mut total_acked = 0;
    // What happened, for messages: acknowledged operations, and how those in flight ended.
    let mut history: Vec<String> = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            drive.remount();
            let when = format!("after the remount of round {round}");
            verify(&drive, &mut model, &pending, &mut history, &when);
        }
        let journal = work.path().join(format!("journal-{round}"));
        let out_path = work.path().join(format!("writer-{round}.out"));
        let out = fs::File::create(&out_path).unwrap();
        let mut writer = Command::new("python3")
            .arg(&script)
            .arg(drive.path())
            .arg(&journal)
            .arg(rng.next_u64().to_string())
            .arg((round * 1_000_000).to_string())
            .arg(rename_over.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start python3");
        std::thread::sleep(Duration::from_millis(rng.range(50, 400)));
        let early = writer.try_wait().unwrap();
        // The dead mount stays attached until the writer is gone: detached, the writer would
        // reach the empty directory underneath (ENOENT) instead of the dead mount.
        drive.sigkill();
        let status = match wait_timeout(&mut writer, Duration::from_secs(30)) {
            Some(s) => s,
            None => {
                let _ = writer.kill();
                let _ = writer.wait();
                panic!("round {round}: the writer still runs 30 s after the mount was killed");
            }
        };
        drive.detach();
        let r = read_journal(&journal);
        let printed = fs::read_to_string(&out_path).unwrap_or_default();
        assert!(
            early.is_none(),
            "round {round}: the writer ended before the kill ({status}): {:?}\n{printed}",
            r.error
        );
        match &r.error {
            Some(e) => {
                let errno: i32 = e.split(' ').nth(1).unwrap().parse().unwrap();
                assert!(
                    MOUNT_GONE.contains(&errno),
                    "round {round}: the writer failed with an unexpected error: {e}, in {:?}\n{printed}",
                    r.pending
                );
            }
            None => panic!("round {round}: the writer ended with {status} but no error\n{printed}"),
        }
        total_acked += r.acked.len();
        for op in &r.acked {
            if let Err(e) = apply(&mut model, op) {
                panic!(
                    "round {round}: the writer saw the drive differ from the model: {e}\n\
                     history of {}:\n{}",
                    op_path(op),
                    history_of(&history, op_path(op))
                );
            }
            history.push(format!("round {round}: {op:?}"));
        }
        pending = r.pending;
        eprintln!(
            "round {round}: {} operations acknowledged, in flight: {:?}, writer: {:?}",
            r.acked.len(),
            pending,
            r.error
        );
    }
    drive.remount();
    verify(
        &drive,
        &mut model,
        &pending,
        &mut history,
        "after the last remount",
    );
    drive.flush();
    drive.unmount();
    assert!(
        total_acked > rounds as usize,
        "too few operations were acknowledged: {total_acked}"
    );
    eprintln!(
        "{rounds} rounds, {total_acked} operations acknowledged, {} files at the end, {:?}",
        model.len(),
        started.elapsed()
    );
    if !remote_too {
        return;
    }
    let view = remote.view();
    let diff = model_diff(&model, &observe(&view));
    if !diff.is_empty() {
        let mut msg = String::new();
        for line in diff.iter().take(30) {
            let path = line.split_whitespace().nth(1).unwrap_or_default();
            msg.push_str(&format!("  {line}\n{}", history_of(&history, path)));
        }
        panic!(
            "the remote differs from the acknowledged operations ({} differences):\n{msg}",
            diff.len()
        );
    }
}

/// An upload cut by `kill -9` must not leave its temporary file in the remote folder once the
/// next mount has finished.
#[test]
fn kill9_during_an_upload_leaves_no_temporary_file() {
    let remote = tempdir("remote");
    let mut drive = Drive::builder(remote.path())
        .write_back_delay("1ms")
        .foreground();
    let len: u64 = 128 << 20;
    let zeros = vec![0u8; 1 << 20];
    let mut f = fs::File::create(drive.path().join("big")).unwrap();
    for _ in 0..len >> 20 {
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
    harness::wait_until(Duration::from_secs(60), "the upload to start", uploading);
    drive.kill9();
    drive.remount();
    drive.unmount();
    let names: Vec<String> = fs::read_dir(remote.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["big"], "the remote folder holds more than the file");
    assert_eq!(fs::metadata(remote.path().join("big")).unwrap().len(), len);
}
