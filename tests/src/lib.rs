//! Harness of the integration tests: real mounts made by the `mountctl` binary over a local folder
//! used as the remote, child processes with timeouts, and tree comparisons.
//!
//! * [`Drive`] mounts a remote folder (`mountctl mount`, or `--foreground` as a child process that
//!   [`Drive::kill9`] can SIGKILL), and never leaves a mount behind: dropping it (also while a test
//!   panics) unmounts, falling back to a lazy unmount.
//!   `SYNCOXIDE_TEST_KEEP=1` keeps the mount's log (and mount point) of a failed test.
//! * [`Cmd`] and [`run`] run programs with a timeout and show their output when they fail.
//! * [`tree_diff`] and [`assert_same_tree`] compare two directories: relative paths, kinds, bytes,
//!   symlink targets and permission bits.
//! * [`Rng`] is a small seeded generator, [`sample_tree`] the tree the program tests copy around.
//!
//! The tests need these programs (Debian packages fuse3, git, sqlite3, tar, rsync, python3,
//! coreutils, grep, mount): `fusermount3` (or `umount`), `sha256sum`, `du`, `sh`, `grep`, and
//! the ones each test drives (git, sqlite3, tar, rsync, python3, cp, dd, truncate, seq).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod proxy;
pub mod remotes;
pub mod servers;
pub mod sftp_server;
pub mod webdav_server;

pub use serde_json::Value;
pub use tempfile::TempDir;

/// The passphrase of every test cache (given through `SYNCOXIDE_PASSPHRASE`).
pub const PASSPHRASE: &str = "syncoxide integration tests: not a secret";
/// `--write-back-delay` of test mounts unless a builder says otherwise.
pub const WRITE_BACK_DELAY: &str = "200ms";
/// How long a mount may take to become live.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(90);
/// Default deadline of a [`Cmd`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline of `mountctl unmount` (it uploads everything first).
pub const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(600);

/// A temporary directory on the normal disk, named after what it holds.
pub fn tempdir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("syncoxide-{what}-"))
        .tempdir()
        .expect("cannot create a temporary directory")
}

/// The `mountctl` binary: `$SYNCOXIDE_MOUNTCTL`, else `mountctl` beside the test binary's
/// `deps/` directory (`target/debug/mountctl`), built with `cargo build -p mountctl` if missing.
pub fn mountctl() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SYNCOXIDE_MOUNTCTL") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary is not in target/<profile>/deps");
        let bin = profile_dir.join("mountctl");
        // Always: cargo test does not rebuild another package's binary, and a stale one would
        // test old code (cheap when it is up to date).
        {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace root");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut c = Cmd::new(cargo)
                .args(["build", "-j1", "-p", "mountctl"])
                .cwd(workspace);
            if profile_dir.file_name() == Some(OsStr::new("release")) {
                c = c.arg("--release");
            }
            c.run();
            assert!(bin.exists(), "cargo build -p mountctl did not make {bin:?}");
        }
        bin
    })
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The command line, for messages.
    pub line: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// A readable account of the command and what it printed.
    pub fn describe(&self) -> String {
        format!(
            "`{}` ended with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.line,
            self.status,
            tail(&String::from_utf8_lossy(&self.stdout), 8000),
            tail(&String::from_utf8_lossy(&self.stderr), 8000)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A command run with a deadline; stdout and stderr go to anonymous files (not pipes, so that a
/// daemon that keeps them open cannot block us).
pub struct Cmd {
    cmd: Command,
    line: String,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        let program = program.as_ref();
        Cmd {
            cmd: Command::new(program),
            line: program.to_string_lossy().into_owned(),
            timeout: COMMAND_TIMEOUT,
            stdin: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        let a = a.as_ref();
        self.line.push(' ');
        self.line.push_str(&a.to_string_lossy());
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cmd {
        self.cmd.current_dir(dir);
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env(k, v);
        self
    }

    /// Feeds these bytes on stdin (else stdin is /dev/null).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    /// Runs to the end (or the deadline: then the process is killed and this panics).
    pub fn output(mut self) -> Output {
        let mut out = tempfile::tempfile().expect("tempfile");
        let mut err = tempfile::tempfile().expect("tempfile");
        self.cmd
            .stdout(out.try_clone().expect("dup"))
            .stderr(err.try_clone().expect("dup"));
        match self.stdin.take() {
            Some(bytes) => {
                let mut f = tempfile::tempfile().expect("tempfile");
                f.write_all(&bytes).expect("write stdin file");
                f.seek(SeekFrom::Start(0)).expect("seek");
                self.cmd.stdin(f);
            }
            None => {
                self.cmd.stdin(Stdio::null());
            }
        }
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", self.line));
        let status = match wait_timeout(&mut child, self.timeout) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                let o = collect(status, &mut out, &mut err, &self.line);
                panic!("timed out after {:?}: {}", self.timeout, o.describe());
            }
        };
        collect(status, &mut out, &mut err, &self.line)
    }

    /// Runs and asserts success; shows stdout and stderr when it fails.
    pub fn run(self) -> Output {
        let o = self.output();
        assert!(o.success(), "{}", o.describe());
        o
    }
}

fn collect(status: ExitStatus, out: &mut File, err: &mut File, line: &str) -> Output {
    let read = |f: &mut File| {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut v).expect("read output");
        v
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
        line: line.to_string(),
    }
}

/// Waits for a child at most `t`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + t;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `program args` in `cwd`, asserts success, returns what it printed.
pub fn run<I, S>(program: impl AsRef<OsStr>, args: I, cwd: &Path) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::new(program).args(args).cwd(cwd).run()
}

/// Runs a `sh -c` script in `cwd`, asserts success, returns what it printed.
pub fn sh(script: &str, cwd: &Path) -> Output {
    Cmd::new("sh").arg("-c").arg(script).cwd(cwd).run()
}

/// Polls `f` until it holds; panics naming `what` after `t`.
pub fn wait_until(t: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + t;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {t:?} waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Mounts

/// Is `path` a mount point of this process's mount namespace (per `/proc/self/mountinfo`)?
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let want = path.as_os_str().to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches a (possibly dead) mount: `fusermount3 -u -z`, else `umount -l`.
pub fn lazy_unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok || is_mounted(path) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// How to mount; see [`Drive::builder`].
#[derive(Clone, Debug)]
pub struct DriveBuilder {
    remote: PathBuf,
    cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
    chunk_size: Option<String>,
    write_back_delay: String,
    extra: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl DriveBuilder {
    /// Use this cache directory (else a fresh temporary one owned by the drive).
    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_path_buf());
        self
    }

    /// `--cache-size`, e.g. `64MiB`.
    pub fn cache_size(mut self, size: &str) -> Self {
        self.cache_size = Some(size.to_string());
        self
    }

    /// `--chunk-size`, e.g. `256KiB`.
    pub fn chunk_size(mut self, size: &str) -> Self {
        self.chunk_size = Some(size.to_string());
        self
    }

    /// `--write-back-delay` (default [`WRITE_BACK_DELAY`]).
    pub fn write_back_delay(mut self, d: &str) -> Self {
        self.write_back_delay = d.to_string();
        self
    }

    /// An environment variable of `mountctl mount`.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    /// Any other argument of `mountctl mount`.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.extra.push(a.as_ref().to_os_string());
        self
    }

    /// `mountctl mount` (it returns once the mount is live).
    pub fn mount(self) -> Drive {
        let mut d = self.into_drive(false);
        d.start();
        d
    }

    /// `mountctl mount --foreground` as a child process, returned once the mount is live.
    pub fn foreground(self) -> Drive {
        let mut d = self.into_drive(true);
        d.start();
        d
    }

    fn into_drive(self, foreground: bool) -> Drive {
        let work = tempdir("drive");
        let mut owned = Vec::new();
        let mountpoint = work.path().join("mnt");
        fs::create_dir(&mountpoint).expect("mkdir mountpoint");
        let cache_dir = match self.cache_dir {
            Some(d) => d,
            None => {
                let t = tempdir("cache");
                let p = t.path().join("cache");
                owned.push(t);
                p
            }
        };
        let mut args: Vec<OsString> = vec![
            "--cache-dir".into(),
            cache_dir.clone().into(),
            "--write-back-delay".into(),
            self.write_back_delay.into(),
        ];
        if let Some(s) = self.cache_size {
            args.extend(["--cache-size".into(), s.into()]);
        }
        if let Some(s) = self.chunk_size {
            args.extend(["--chunk-size".into(), s.into()]);
        }
        args.extend(self.extra);
        Drive {
            remote: self.remote,
            env: self.env,
            log: work.path().join("mountctl.log"),
            mountpoint: mountpoint.canonicalize().expect("canonicalize mountpoint"),
            cache_dir,
            args,
            foreground,
            child: None,
            mounted: false,
            _owned: owned,
            work: Some(work),
        }
    }
}

/// A live (or dead, or unmounted) mount of a remote folder. Dropping it unmounts.
pub struct Drive {
    remote: PathBuf,
    /// Environment of `mountctl mount` (an S3 remote's credentials).
    env: Vec<(OsString, OsString)>,
    mountpoint: PathBuf,
    cache_dir: PathBuf,
    /// Arguments after `mount REMOTE MOUNTPOINT`.
    args: Vec<OsString>,
    foreground: bool,
    child: Option<Child>,
    mounted: bool,
    /// stdout and stderr of every `mountctl mount` of this drive.
    log: PathBuf,
    // Dropped after `Drop::drop` has unmounted.
    _owned: Vec<TempDir>,
    /// The mount point and the log; kept after a failure if `SYNCOXIDE_TEST_KEEP` is set.
    work: Option<TempDir>,
}

impl Drive {
    /// How to mount `remote`: a fresh mount point and cache, the test passphrase,
    /// `--write-back-delay 200ms`.
    pub fn builder(remote: &Path) -> DriveBuilder {
        DriveBuilder {
            remote: remote.to_path_buf(),
            cache_dir: None,
            cache_size: None,
            chunk_size: None,
            write_back_delay: WRITE_BACK_DELAY.to_string(),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// How to mount `s3://BUCKET` of the test S3 server ([`servers::s3`]), as
    /// [`Drive::builder`] does a folder; the bucket must exist.
    pub fn builder_s3(bucket: &str) -> DriveBuilder {
        let server = servers::s3();
        let mut b = Drive::builder(Path::new(&format!("s3://{bucket}")))
            .arg("--s3-endpoint")
            .arg(&server.endpoint)
            .arg("--request-timeout")
            .arg("10s");
        for (k, v) in server.aws_env() {
            b = b.env(k, v);
        }
        b
    }

    /// `mountctl mount remote` with the defaults of [`Drive::builder`].
    pub fn mount(remote: &Path) -> Drive {
        Drive::builder(remote).mount()
    }

    /// `mountctl mount remote --foreground` with the defaults of [`Drive::builder`].
    pub fn foreground(remote: &Path) -> Drive {
        Drive::builder(remote).foreground()
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    pub fn remote(&self) -> &Path {
        &self.remote
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub fn is_mounted(&self) -> bool {
        self.mounted
    }

    /// The end of what the `mountctl mount` processes printed, and of the mount's own log
    /// (`CACHE_DIR.log`).
    pub fn log(&self) -> String {
        let printed = fs::read(&self.log).unwrap_or_default();
        let mut own = self.cache_dir.clone().into_os_string();
        own.push(".log");
        let own = fs::read(own).unwrap_or_default();
        format!(
            "--- printed by mountctl mount ---\n{}\n--- {}.log ---\n{}",
            tail(&String::from_utf8_lossy(&printed), 8000),
            self.cache_dir.display(),
            tail(&String::from_utf8_lossy(&own), 12000)
        )
    }

    fn log_file(&self) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the mount log")
    }

    fn mount_command(&self) -> Command {
        let mut c = Command::new(mountctl());
        c.arg("mount")
            .arg(&self.remote)
            .arg(&self.mountpoint)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SYNCOXIDE_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::null())
            .stdout(self.log_file())
            .stderr(self.log_file());
        c
    }

    fn start(&mut self) {
        assert!(!self.mounted, "already mounted");
        if self.child.is_none() && self.foreground && is_mounted(&self.mountpoint) {
            // Killed by `sigkill` and not detached yet.
            self.detach();
        }
        assert!(
            !is_mounted(&self.mountpoint),
            "{:?} is still a mount point",
            self.mountpoint
        );
        let mut c = self.mount_command();
        if self.foreground {
            c.arg("--foreground");
        }
        let mut child = c.spawn().expect("cannot start mountctl mount");
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        if self.foreground {
            loop {
                if is_mounted(&self.mountpoint) {
                    break;
                }
                if let Some(s) = child.try_wait().expect("try_wait") {
                    panic!(
                        "mountctl mount --foreground exited with {s} before the mount was live\n{}",
                        self.log()
                    );
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    lazy_unmount(&self.mountpoint);
                    panic!("no mount after {MOUNT_TIMEOUT:?}\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.child = Some(child);
        } else {
            let status = match wait_timeout(&mut child, MOUNT_TIMEOUT) {
                Some(s) => s,
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    lazy_unmount(&self.mountpoint);
                    panic!(
                        "mountctl mount did not return within {MOUNT_TIMEOUT:?}\n{}",
                        self.log()
                    );
                }
            };
            if !status.success() {
                lazy_unmount(&self.mountpoint);
                panic!("mountctl mount failed with {status}\n{}", self.log());
            }
            // It returns once the mount is live; poll briefly all the same.
            if !is_mounted(&self.mountpoint) {
                std::thread::sleep(Duration::from_millis(200));
                self.mounted = is_mounted(&self.mountpoint);
                assert!(
                    self.mounted,
                    "mountctl mount succeeded but {:?} is not a mount point\n{}",
                    self.mountpoint,
                    self.log()
                );
            }
        }
        self.mounted = true;
    }

    /// Mounts again with the same arguments (and cache directory) after [`Drive::unmount`] or
    /// [`Drive::kill9`].
    pub fn remount(&mut self) {
        self.start();
    }

    fn ctl(&self, args: &[&str]) -> Cmd {
        Cmd::new(mountctl())
            .args(args)
            .env("SYNCOXIDE_PASSPHRASE", PASSPHRASE)
    }

    /// `mountctl ARGS...` (any subcommand), with the test passphrase, run to its end.
    pub fn mountctl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd::new(mountctl())
            .args(args)
            .env("SYNCOXIDE_PASSPHRASE", PASSPHRASE)
            .timeout(Duration::from_secs(120))
            .output()
    }

    /// `mountctl unmount` while the provider cannot be reached: it must exit 1 (what is queued
    /// stays in the log for the next mount) and unmount all the same.
    pub fn unmount_offline(&mut self) {
        assert!(self.mounted, "not mounted");
        let o = self
            .ctl(&["unmount", "--timeout", "3s"])
            .arg(&self.mountpoint)
            .timeout(UNMOUNT_TIMEOUT)
            .output();
        assert_eq!(
            o.status.code(),
            Some(1),
            "unmount while offline must report that uploads are still queued\n{}\n--- mount log ---\n{}",
            o.describe(),
            self.log()
        );
        wait_until(
            Duration::from_secs(30),
            "the mount point to go away after mountctl unmount",
            || !is_mounted(&self.mountpoint),
        );
        self.mounted = false;
        if let Some(mut child) = self.child.take() {
            if wait_timeout(&mut child, Duration::from_secs(60)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mountctl mount --foreground still runs 60 s after unmount");
            }
        }
    }

    /// `mountctl flush MOUNTPOINT`: returns once everything is on the provider.
    pub fn flush(&self) {
        let o = self
            .ctl(&["flush"])
            .arg(&self.mountpoint)
            .timeout(UNMOUNT_TIMEOUT)
            .output();
        assert!(
            o.success(),
            "{}\n--- mount log ---\n{}",
            o.describe(),
            self.log()
        );
    }

    /// `mountctl status MOUNTPOINT --json`.
    pub fn status_json(&self) -> Value {
        let o = self
            .ctl(&["status"])
            .arg(&self.mountpoint)
            .arg("--json")
            .timeout(Duration::from_secs(60))
            .output();
        assert!(
            o.success(),
            "{}\n--- mount log ---\n{}",
            o.describe(),
            self.log()
        );
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", o.describe()))
    }

    /// A number from `status --json` (panics naming the field if it is missing).
    pub fn status_u64(&self, field: &str) -> u64 {
        let v = self.status_json();
        v.get(field)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("status --json has no number {field:?}: {v}"))
    }

    /// `mountctl unmount MOUNTPOINT`: uploads everything, then unmounts; a foreground child must
    /// then exit successfully.
    pub fn unmount(&mut self) {
        assert!(self.mounted, "not mounted");
        let o = self
            .ctl(&["unmount"])
            .arg(&self.mountpoint)
            .timeout(UNMOUNT_TIMEOUT)
            .output();
        assert!(
            o.success(),
            "{}\n--- mount log ---\n{}",
            o.describe(),
            self.log()
        );
        wait_until(
            Duration::from_secs(30),
            "the mount point to go away after mountctl unmount",
            || !is_mounted(&self.mountpoint),
        );
        self.mounted = false;
        if let Some(mut child) = self.child.take() {
            match wait_timeout(&mut child, Duration::from_secs(60)) {
                Some(s) => assert!(
                    s.success(),
                    "mountctl mount --foreground exited with {s} after unmount\n{}",
                    self.log()
                ),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mountctl mount --foreground still runs 60 s after unmount\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// SIGKILLs the foreground `mountctl mount`, then detaches the dead mount.
    pub fn kill9(&mut self) {
        self.sigkill();
        self.detach();
    }

    /// SIGKILLs the foreground `mountctl mount` and leaves the dead mount attached: programs
    /// using it get ENOTCONN/ECONNABORTED (rather than reaching the directory underneath, as
    /// they would after [`Drive::detach`]).
    pub fn sigkill(&mut self) {
        let mut child = self
            .child
            .take()
            .expect("sigkill needs a mount made with foreground()");
        child.kill().expect("SIGKILL the mount");
        child.wait().expect("wait for the killed mount");
        self.mounted = false;
    }

    /// Detaches a dead mount (`fusermount3 -u -z`, else `umount -l`).
    pub fn detach(&mut self) {
        lazy_unmount(&self.mountpoint);
        wait_until(
            Duration::from_secs(30),
            "the dead mount to be detached",
            || !is_mounted(&self.mountpoint),
        );
        self.mounted = false;
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of the mount at {:?} ---\n{}",
                self.mountpoint,
                self.log()
            );
            if std::env::var_os("SYNCOXIDE_TEST_KEEP").is_some() {
                if let Some(w) = self.work.take() {
                    // The cache's own log goes with its directory; keep a copy beside the mount.
                    let _ = fs::copy(
                        self.cache_dir.with_extension("log"),
                        w.path().join("cache.log"),
                    );
                    eprintln!("kept {:?} (SYNCOXIDE_TEST_KEEP)", w.keep());
                }
            }
        }
        if self.mounted && is_mounted(&self.mountpoint) {
            let alive = match &mut self.child {
                Some(c) => matches!(c.try_wait(), Ok(None)),
                None => true,
            };
            if alive {
                let _ = Command::new(mountctl())
                    .arg("unmount")
                    .arg(&self.mountpoint)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map(|mut c| {
                        if wait_timeout(&mut c, Duration::from_secs(120)).is_none() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                    });
            }
        }
        if let Some(mut c) = self.child.take() {
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        lazy_unmount(&self.mountpoint);
        self.mounted = false;
    }
}

// ---------------------------------------------------------------------------------------------
// Trees

/// What a path is, for [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File {
        len: u64,
    },
    Dir,
    Symlink(PathBuf),
    /// FIFOs, sockets, devices.
    Special,
}

/// One entry of a tree: its kind and permission bits (`mode & 0o7777`, 0 for symlinks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::File { len } => write!(f, "file {:04o}, {len} bytes", self.mode),
            Kind::Dir => write!(f, "dir {:04o}", self.mode),
            Kind::Symlink(t) => write!(f, "symlink -> {}", t.display()),
            Kind::Special => write!(f, "special file {:04o}", self.mode),
        }
    }
}

/// Every entry under `root` (not `root` itself), by path relative to `root`; symlinks are not
/// followed.
pub fn scan(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    scan_into(root, Path::new(""), &mut out);
    out
}

fn scan_into(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    let dir = root.join(rel);
    let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
    for de in rd {
        let de = de.unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
        let rel = rel.join(de.file_name());
        let abs = root.join(&rel);
        let md = fs::symlink_metadata(&abs).unwrap_or_else(|e| panic!("lstat {abs:?}: {e}"));
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        let entry = if ft.is_dir() {
            Entry {
                kind: Kind::Dir,
                mode,
            }
        } else if ft.is_file() {
            Entry {
                kind: Kind::File { len: md.len() },
                mode,
            }
        } else if ft.is_symlink() {
            let t = fs::read_link(&abs).unwrap_or_else(|e| panic!("readlink {abs:?}: {e}"));
            Entry {
                kind: Kind::Symlink(t),
                mode: 0,
            }
        } else {
            Entry {
                kind: Kind::Special,
                mode,
            }
        };
        let is_dir = entry.kind == Kind::Dir;
        out.insert(rel.clone(), entry);
        if is_dir {
            scan_into(root, &rel, out);
        }
    }
}

/// Where two files first differ (`None`: same bytes).
pub fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let mut fa = File::open(a).unwrap_or_else(|e| panic!("open {a:?}: {e}"));
    let mut fb = File::open(b).unwrap_or_else(|e| panic!("open {b:?}: {e}"));
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).unwrap_or_else(|e| panic!("read {a:?}: {e}"));
        let nb = read_full(&mut fb, &mut bb).unwrap_or_else(|e| panic!("read {b:?}: {e}"));
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Some(pos + i as u64);
        }
        if na != nb {
            return Some(pos + n as u64);
        }
        if na == 0 {
            return None;
        }
        pos += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The differences between the trees at `expected` and `actual`, one line each: paths present on
/// one side only, other kinds, other permission bits (if `modes`), other symlink targets, other
/// bytes (with the first differing offset).
pub fn tree_diff(expected: &Path, actual: &Path, modes: bool) -> Vec<String> {
    let e = scan(expected);
    let a = scan(actual);
    let mut out = Vec::new();
    for (p, ee) in &e {
        let Some(ae) = a.get(p) else {
            out.push(format!("missing    {}  ({ee})", p.display()));
            continue;
        };
        match (&ee.kind, &ae.kind) {
            (Kind::File { len: l1 }, Kind::File { len: l2 }) => {
                if l1 != l2 {
                    out.push(format!(
                        "size       {}  expected {l1} bytes, got {l2}",
                        p.display()
                    ));
                } else if let Some(at) = first_difference(&expected.join(p), &actual.join(p)) {
                    out.push(format!(
                        "content    {}  ({l1} bytes) differs from byte {at}",
                        p.display()
                    ));
                }
            }
            (Kind::Symlink(t1), Kind::Symlink(t2)) if t1 != t2 => out.push(format!(
                "target     {}  expected -> {}, got -> {}",
                p.display(),
                t1.display(),
                t2.display()
            )),
            (k1, k2) if std::mem::discriminant(k1) != std::mem::discriminant(k2) => {
                out.push(format!(
                    "kind       {}  expected {ee}, got {ae}",
                    p.display()
                ));
                continue;
            }
            _ => {}
        }
        if modes && ee.mode != ae.mode {
            out.push(format!(
                "mode       {}  expected {:04o}, got {:04o}",
                p.display(),
                ee.mode,
                ae.mode
            ));
        }
    }
    for (p, ae) in &a {
        if !e.contains_key(p) {
            out.push(format!("unexpected {}  ({ae})", p.display()));
        }
    }
    out
}

/// Asserts that `actual` holds the same tree as `expected`: paths, kinds, bytes, symlink targets
/// and permission bits.
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let d = tree_diff(expected, actual, true);
    assert!(
        d.is_empty(),
        "{} differs from {} ({} differences):\n{}",
        actual.display(),
        expected.display(),
        d.len(),
        format_lines(&d, 60)
    );
}

/// The first `max` lines, then how many more there are.
pub fn format_lines(lines: &[String], max: usize) -> String {
    let mut s = String::new();
    for l in lines.iter().take(max) {
        let _ = writeln!(s, "  {l}");
    }
    if lines.len() > max {
        let _ = writeln!(s, "  ... and {} more", lines.len() - max);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Data

/// `sha256sum FILE`, the hex digest.
pub fn sha256(path: &Path) -> String {
    let o = Cmd::new("sha256sum").arg(path).run();
    o.text()
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// fsync of a directory.
pub fn fsync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .unwrap_or_else(|e| panic!("fsync {dir:?}: {e}"));
}

/// A small seeded generator (SplitMix64): the same seed gives the same run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `$var` if set, else `default`; printed so that a failure can be replayed.
    pub fn seed_from_env(var: &str, default: u64) -> u64 {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        eprintln!("seed: {var}={seed}");
        seed
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

/// Writes `len` random bytes to a new file at `path`.
pub fn write_random_file(path: &Path, len: u64, rng: &mut Rng) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        left -= n as u64;
    }
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync {path:?}: {e}"));
}

/// The tree the program tests copy around, made under `root` (which must exist): a few hundred
/// files in nested directories (text, binary, executable and private ones), an empty file, a
/// 3 MiB file, an empty directory, a private directory, a relative symlink, a dangling symlink
/// and names with spaces and non-ASCII letters.
pub fn sample_tree(root: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    let dirs = [
        "src",
        "src/core",
        "src/core/deep",
        "src/core/deep/deeper",
        "docs",
        "docs/img",
        "data",
        "data/2024",
        "data/2025",
        "bin",
        "empty-dir",
        "private",
    ];
    for d in dirs {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    for i in 0..320u64 {
        let dir = dirs[(rng.next_u64() % 10) as usize];
        let name = format!(
            "{dir}/file-{i:03}.{}",
            ["txt", "rs", "bin", "md"][i as usize % 4]
        );
        let len = match rng.next_u64() % 10 {
            0..=5 => rng.range(1, 2000),
            6..=8 => rng.range(2000, 70_000),
            _ => rng.range(70_000, 300_000),
        } as usize;
        let bytes = if name.ends_with(".bin") {
            rng.bytes(len)
        } else {
            let mut s = String::new();
            while s.len() < len {
                let _ = writeln!(s, "line {} of {name}: {:x}", s.len(), rng.next_u64());
            }
            s.truncate(len);
            s.into_bytes()
        };
        fs::write(root.join(&name), bytes).expect("write");
        let mode = match rng.next_u64() % 8 {
            0 => 0o755,
            1 => 0o600,
            2 => 0o444,
            _ => 0o644,
        };
        fs::set_permissions(root.join(&name), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    fs::write(root.join("bin/run.sh"), "#!/bin/sh\necho hello\n").expect("write");
    fs::set_permissions(root.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(root.join("empty"), b"").expect("write");
    write_random_file(&root.join("data/big.bin"), 3 << 20, &mut rng);
    fs::write(root.join("docs/name with spaces.txt"), b"spaces\n").expect("write");
    fs::write(
        root.join("docs/\u{e9}t\u{e9} \u{65e5}\u{672c}.txt"),
        b"utf-8\n",
    )
    .expect("write");
    std::os::unix::fs::symlink("../bin/run.sh", root.join("src/run-link")).expect("symlink");
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).expect("symlink");
    fs::write(root.join("private/secret.txt"), b"secret\n").expect("write");
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).expect("chmod");
}
