//! A real SFTP server on 127.0.0.1 for tests: Debian's OpenSSH `sshd` (package
//! `openssh-server`; `.ci/run` installs it) with its built-in `internal-sftp`, started once per
//! test process ([`sftp`]) from a generated configuration in a temporary directory, with a
//! generated host key and client keys, and stopped when the process exits (even when it is
//! killed: it runs under a `sh` that stops it, and removes the directory, as soon as the pipe from
//! the test process closes). A test that breaks connections on purpose starts a server of its own
//! ([`SftpServer::start`], stopped when dropped), so that it never cuts another test's connection.
//! `SYNCOXIDE_SSHD` names another `sshd` binary.
//!
//! The user is the one running the tests (root may log in with a key only); the server is on the
//! same machine, so every folder's remote path is also its path on disk, the independent view of
//! what the server stores ([`SftpServer::folder`]).
//!
//! A missing server program is a test failure that says how to install it, never a skip.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long sshd may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The passphrase of [`SftpServer::encrypted_key`].
pub const KEY_PASSPHRASE: &str = "syncoxide-test-key-passphrase";

/// A running sshd with an SFTP subsystem.
pub struct SftpServer {
    pub host: String,
    pub port: u16,
    /// The user to log in as (the one running the tests).
    pub user: String,
    /// An authorised ed25519 key without a passphrase.
    pub client_key: PathBuf,
    /// An authorised ed25519 key encrypted with [`KEY_PASSPHRASE`].
    pub encrypted_key: PathBuf,
    /// A valid key the server does not know.
    pub unknown_key: PathBuf,
    /// The server's host key as `ssh-keygen -l` prints it (`SHA256:…`).
    pub host_key_fingerprint: String,
    /// A `known_hosts` file with the server's host key for `[host]:port`.
    pub known_hosts: PathBuf,
    /// Where the test folders are.
    pub root: PathBuf,
    /// sshd's output (`-e`: its log).
    pub log: PathBuf,
    pid_file: PathBuf,
    /// Held open for the life of the server: when it closes, the server is stopped.
    _lifeline: Mutex<ChildStdin>,
}

/// A folder fresh for one test.
#[derive(Clone, Debug)]
pub struct SftpFolder {
    /// Its path as the SFTP server sees it.
    pub remote: String,
    /// Where it is on disk (the same path: the server is on this machine).
    pub path: PathBuf,
}

impl SftpServer {
    /// A new, empty folder named after `what` (unique in this process).
    pub fn folder(&self, what: &str) -> SftpFolder {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let what: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let path = self.root.join(format!("t{n}-{}", what.trim_matches('-')));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        SftpFolder {
            remote: path.display().to_string(),
            path,
        }
    }

    /// The pid of the listening sshd.
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", self.pid_file.display()))
    }

    /// The processes serving connections (every descendant of the listening sshd).
    pub fn session_pids(&self) -> Vec<u32> {
        descendants(self.pid())
    }

    /// Kills every process serving a connection (`SIGKILL`): each client sees its connection
    /// cut. The listener keeps accepting new ones. Returns how many processes were killed.
    pub fn kill_connections(&self) -> usize {
        let pids = self.session_pids();
        if pids.is_empty() {
            return 0;
        }
        let status = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        assert!(status.is_ok(), "cannot run kill");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p))
        {
            assert!(Instant::now() < deadline, "sshd sessions {pids:?} survive");
            std::thread::sleep(Duration::from_millis(10));
        }
        pids.len()
    }

    /// Starts a server of its own (stopped when dropped).
    pub fn start() -> SftpServer {
        let program = sshd();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free TCP port on 127.0.0.1");
        let dir =
            std::env::temp_dir().join(format!("syncoxide-sshd-{}-{port}", std::process::id()));
        let root = dir.join("folders");
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        // sshd insists on its privilege separation directory (the Debian service makes it).
        let _ = std::fs::create_dir_all("/run/sshd");
        let _ = std::fs::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755));

        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        let encrypted_key = dir.join("client_encrypted_ed25519");
        let unknown_key = dir.join("unknown_ed25519");
        keygen(&host_key, "");
        keygen(&client_key, "");
        keygen(&encrypted_key, KEY_PASSPHRASE);
        keygen(&unknown_key, "");
        let public = |k: &Path| {
            let p = k.with_extension("pub");
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
        };
        let authorized = dir.join("authorized_keys");
        std::fs::write(
            &authorized,
            format!("{}{}", public(&client_key), public(&encrypted_key)),
        )
        .expect("write authorized_keys");
        let host_public = public(&host_key);
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_public}"))
            .expect("write known_hosts");
        let host_key_fingerprint = fingerprint(&host_key.with_extension("pub"));

        let user = current_user();
        let pid_file = dir.join("sshd.pid");
        let conf = dir.join("sshd_config");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "ListenAddress 127.0.0.1:{port}
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {user}
StrictModes no
UsePAM no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
Subsystem sftp internal-sftp
"
            ),
        )
        .expect("write sshd_config");

        // sshd in the foreground under a sh that stops it, and removes its directory, once our
        // end of the pipe closes (the server was dropped, or this process exited).
        let script = r#"dir="$1"; prog="$2"
"$prog" -D -e -f "$dir/sshd_config" </dev/null >"$dir/sshd.log" 2>&1 &
pid=$!
exec 3<&0
(
  read _ignored <&3
  kill -TERM "$pid" 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null
) &
exec 3<&-
wait "$pid"
echo "$?" >"$dir/exited"
wait
rm -rf "$dir"
exit 0"#;
        let mut child = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&dir)
            .arg(&program)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let lifeline = child.stdin.take().expect("piped stdin");
        wait_listening(port, &dir);
        // The sh keeps running; it is reaped by init when this process exits.
        std::mem::forget(child);
        SftpServer {
            host: "127.0.0.1".into(),
            port,
            user,
            client_key,
            encrypted_key,
            unknown_key,
            host_key_fingerprint,
            known_hosts,
            root,
            log: dir.join("sshd.log"),
            pid_file,
            _lifeline: Mutex::new(lifeline),
        }
    }
}

/// The SFTP server of this test process, started on first use.
pub fn sftp() -> &'static SftpServer {
    static SERVER: OnceLock<SftpServer> = OnceLock::new();
    SERVER.get_or_init(SftpServer::start)
}

fn sshd() -> PathBuf {
    if let Some(p) = std::env::var_os("SYNCOXIDE_SSHD") {
        return PathBuf::from(p);
    }
    let default = Path::new("/usr/sbin/sshd");
    if default.exists() {
        return default.to_path_buf();
    }
    panic!(
        "the SFTP tests need OpenSSH's sshd (/usr/sbin/sshd): run .ci/run, or \
         `apt-get install openssh-server`, or set SYNCOXIDE_SSHD"
    )
}

/// A new ed25519 key pair at `path` (and `path.pub`).
fn keygen(path: &Path, passphrase: &str) {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-C",
            "syncoxide-test",
            "-N",
            passphrase,
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "ssh-keygen failed for {}: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            panic!("cannot run ssh-keygen ({e}): run .ci/run or `apt-get install openssh-server`")
        }
    }
}

/// `SHA256:…` of a public key file.
fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public)
        .output()
        .expect("run ssh-keygen -l");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .filter(|f| f.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("ssh-keygen -l printed {text:?}"))
        .to_string()
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    let user = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!user.is_empty(), "id -un printed nothing");
    user
}

/// Every process below `pid` (children, their children, ...).
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) = stat_field(p, 1).and_then(|s| s.parse().ok()) {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Field `n` after the command of `/proc/PID/stat` (0: the state, 1: the parent's pid).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_string)
}

fn is_zombie(pid: u32) -> bool {
    stat_field(pid, 0).is_some_and(|s| s == "Z")
}

/// Waits until `port` accepts connections; sshd's log if it does not.
fn wait_listening(port: u16, dir: &Path) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() || !dir.join("sshd.pid").exists() {
        let why = if let Ok(status) = std::fs::read_to_string(dir.join("exited")) {
            format!("exited (status {})", status.trim())
        } else if t0.elapsed() > START_TIMEOUT {
            format!("did not listen within {START_TIMEOUT:?}")
        } else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        panic!(
            "sshd {why} on port {port}; its log:\n{}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
    }
}
