//! Real servers on 127.0.0.1 that tests talk to, started once per test process and stopped when
//! it exits (even when it is killed: each server runs under a `sh` that kills it as soon as the
//! pipe from the test process closes).
//!
//! * [`s3`]: an S3 server, moto (`moto_server`, from PyPI `moto[server]`; `.ci/run` installs it
//!   into `~/.cache/syncoxide/test-servers/moto`). `SYNCOXIDE_MOTO_SERVER` names another binary.
//!   Every test takes its own bucket ([`S3Server::bucket`]), so tests share one server.
//!
//! A missing server program is a test failure that says how to install it, never a skip.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The credentials the test S3 server accepts (moto accepts any).
pub const S3_ACCESS_KEY: &str = "syncoxide-test";
pub const S3_SECRET_KEY: &str = "syncoxide-test-secret";
pub const S3_REGION: &str = "us-east-1";

/// A running S3 server.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub port: u16,
    /// Where the server writes its request log.
    pub log: PathBuf,
    /// Held open for the life of the process: when it closes, the server is killed.
    _lifeline: Mutex<ChildStdin>,
}

impl S3Server {
    /// A new bucket name, unique in this process and across processes (it does not create the
    /// bucket).
    pub fn bucket(&self, what: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let what: String = what
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(30)
            .collect();
        format!("t{}-{n}-{}", std::process::id(), what.trim_matches('-'))
    }

    /// Environment variables that point AWS tools and `mountctl` at this server.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()),
            ("AWS_REGION", S3_REGION.to_string()),
        ]
    }
}

fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("SYNCOXIDE_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cache/syncoxide/test-servers/moto/bin/moto_server");
        if p.exists() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("moto_server");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "the S3 tests need moto's server (moto_server): run .ci/run, or \
         `python3 -m venv ~/.cache/syncoxide/test-servers/moto && \
         ~/.cache/syncoxide/test-servers/moto/bin/pip install 'moto[server]'`, \
         or set SYNCOXIDE_MOTO_SERVER"
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free TCP port on 127.0.0.1")
}

/// Starts `program args…` under a `sh` that kills it when our end of its stdin closes, and
/// waits until `port` accepts connections.
fn start(program: &Path, args: &[String], port: u16, log: &Path) -> ChildStdin {
    let script = r#"prog="$1"; log="$2"; shift 2
"$prog" "$@" </dev/null >"$log" 2>&1 &
pid=$!
read _ignored
kill "$pid" 2>/dev/null
sleep 1
kill -9 "$pid" 2>/dev/null
exit 0"#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(program)
        .arg(log)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let stdin = child.stdin.take().expect("piped stdin");
    let t0 = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{} exited ({status}) before listening on port {port}; its log:\n{}",
                program.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if t0.elapsed() > START_TIMEOUT {
            panic!(
                "{} did not listen on port {port} within {START_TIMEOUT:?}; its log:\n{}",
                program.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The sh keeps running; it is reaped by init when this process exits.
    std::mem::forget(child);
    stdin
}

/// The S3 server of this test process, started on first use.
pub fn s3() -> &'static S3Server {
    static S3: OnceLock<S3Server> = OnceLock::new();
    S3.get_or_init(|| {
        let program = moto_server();
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("syncoxide-moto-{}-{port}.log", std::process::id()));
        let args = vec![
            "-H".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            port.to_string(),
        ];
        let stdin = start(&program, &args, port, &log);
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            log,
            _lifeline: Mutex::new(stdin),
        }
    })
}
