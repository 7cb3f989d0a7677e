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

    /// The requests the server has answered for `bucket` so far, from its log, in order: the
    /// method and the target as sent (`"PUT /bucket/a/b"`, `"GET /bucket?list-type=2&…"`). The
    /// server writes a request's line before it answers it, so a request whose answer came is
    /// in the log. For tests that count what an operation costs.
    pub fn requests(&self, bucket: &str) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let path = format!("/{bucket}");
        log.lines()
            .filter_map(|line| {
                let line = strip_ansi(line);
                let start = line.find('"')? + 1;
                let request = line[start..].split(" HTTP/").next()?;
                let (method, target) = request.split_once(' ')?;
                let ours = target == path
                    || target.starts_with(&format!("{path}/"))
                    || target.starts_with(&format!("{path}?"));
                ours.then(|| format!("{method} {target}"))
            })
            .collect()
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

/// An answer of [`S3Server::request`].
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl S3Server {
    /// One HTTP/1.1 request to the server, not really signed (moto checks no signatures): the
    /// harness's own view of the bucket, independent of the drive's client.
    pub fn request(&self, method: &str, path_and_query: &str, body: &[u8]) -> HttpAnswer {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the S3 server");
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        // moto checks no signature, but refuses requests without an Authorization header to
        // objects that are not public, and takes the account from the access key.
        let head = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={S3_ACCESS_KEY}/20260101/{S3_REGION}/s3/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).expect("send to the S3 server");
        s.write_all(body).expect("send to the S3 server");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read from the S3 server");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut body = raw[split + 4..].to_vec();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("an HTTP status");
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        HttpAnswer { status, body }
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        let a = self.request("PUT", &format!("/{bucket}"), b"");
        assert!(a.status == 200, "create bucket {bucket}: HTTP {}", a.status);
    }

    /// Puts an object behind the drive's back.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let a = self.request("PUT", &format!("/{bucket}/{}", encode_key(key)), data);
        assert!(
            a.status == 200,
            "put {bucket}/{key}: HTTP {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }

    /// An object's bytes, `None` when there is no such key.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let a = self.request("GET", &format!("/{bucket}/{}", encode_key(key)), b"");
        match a.status {
            200 => Some(a.body),
            404 => None,
            s => panic!("get {bucket}/{key}: HTTP {s}"),
        }
    }

    /// Removes an object behind the drive's back.
    pub fn delete(&self, bucket: &str, key: &str) {
        let a = self.request("DELETE", &format!("/{bucket}/{}", encode_key(key)), b"");
        assert!(
            a.status == 204 || a.status == 200,
            "delete {bucket}/{key}: HTTP {}",
            a.status
        );
    }

    /// Every key of the bucket, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = format!("/{bucket}?list-type=2&encoding-type=url");
            if let Some(t) = &token {
                q.push_str(&format!(
                    "&continuation-token={}",
                    encode_key(t).replace('/', "%2F")
                ));
            }
            let a = self.request("GET", &q, b"");
            assert!(a.status == 200, "list {bucket}: HTTP {}", a.status);
            let xml = String::from_utf8_lossy(&a.body).to_string();
            keys.extend(tag_values(&xml, "Key").into_iter().map(|k| decode_key(&k)));
            match tag_values(&xml, "NextContinuationToken").pop() {
                Some(t) if xml.contains("<IsTruncated>true</IsTruncated>") => token = Some(t),
                _ => break,
            }
        }
        keys.sort();
        keys
    }
}

impl S3Server {
    /// The bucket as a folder on disk, fetched with the harness's own requests: what another
    /// S3 client (`rclone copy --links`) would download (markers become folders, link objects
    /// symlinks).
    pub fn download(&self, bucket: &str) -> crate::TempDir {
        let out = crate::tempdir("s3-download");
        for key in self.keys(bucket) {
            // The provider's own probe objects (hidden from the drive; one is left behind when
            // a mount is killed during its probe, removed by a later probe an hour on).
            if key
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".syncoxide-probe-"))
            {
                continue;
            }
            let p = out.path().join(&key);
            if key.ends_with('/') {
                std::fs::create_dir_all(&p).expect("mkdir");
                continue;
            }
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            let data = self.get(bucket, &key).unwrap_or_default();
            match key.strip_suffix(".rclonelink") {
                Some(link) => std::os::unix::fs::symlink(
                    String::from_utf8_lossy(&data).into_owned(),
                    out.path().join(link),
                )
                .expect("symlink"),
                None => std::fs::write(&p, data).expect("write"),
            }
        }
        out
    }
}

/// `line` without terminal colour codes (moto colours its log lines by status).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters… final letter
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        b = &b[eol + 2..];
        out.extend_from_slice(&b[..size.min(b.len())]);
        b = &b[(size + 2).min(b.len())..];
    }
}

fn encode_key(k: &str) -> String {
    let mut out = String::new();
    for &b in k.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn decode_key(k: &str) -> String {
    let b = k.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&k[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// The texts of every `<tag>…</tag>` of a small XML document.
fn tag_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(after[..j].to_string());
        rest = &after[j + close.len()..];
    }
    out
}
