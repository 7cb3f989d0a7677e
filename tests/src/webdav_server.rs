//! A real WebDAV server on 127.0.0.1 for tests: Apache httpd with `mod_dav` / `mod_dav_fs`
//! (Debian package `apache2`; `.ci/run` installs it), started once per test process from a
//! generated minimal configuration in a temporary directory, and stopped when the process exits
//! (even when it is killed: it runs under a `sh` that stops it, and removes the directory, as
//! soon as the pipe from the test process closes). `SYNCOXIDE_APACHE2` names another binary,
//! `SYNCOXIDE_APACHE2_MODULES` another module directory.
//!
//! Every test takes its own folder under the DAV root ([`WebDavServer::folder`]), whose path on
//! disk is the independent view of what the server stores. Folders under
//! [`WebDavServer::private_folder`] need Basic authentication ([`WEBDAV_USER`],
//! [`WEBDAV_PASSWORD`]).
//!
//! Apache refuses to serve as root: when the tests run as root its workers run as `nobody`, and
//! [`WebDavServer::give`] hands files made behind its back to that user.
//!
//! A missing server program is a test failure that says how to install it, never a skip.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The credentials of [`WebDavServer::private_folder`]s.
pub const WEBDAV_USER: &str = "syncoxide";
pub const WEBDAV_PASSWORD: &str = "syncoxide-test-password";

/// How long Apache may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Apache with a DAV root.
pub struct WebDavServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    /// The DAV root on disk (served at `/`).
    pub root: PathBuf,
    /// Apache's error log.
    pub error_log: PathBuf,
    /// The user and group Apache's workers run as, when not ours.
    owner: Option<(u32, u32)>,
    /// Held open for the life of the process: when it closes, the server is stopped.
    _lifeline: Mutex<ChildStdin>,
}

/// A folder of the DAV root, fresh for one test.
#[derive(Clone, Debug)]
pub struct DavFolder {
    /// Its URL, ending in `/`.
    pub url: String,
    /// Where it is on disk.
    pub path: PathBuf,
}

impl WebDavServer {
    /// A new, empty folder named after `what` (unique in this process).
    pub fn folder(&self, what: &str) -> DavFolder {
        self.make_folder("", what)
    }

    /// A new, empty folder that needs Basic authentication with [`WEBDAV_USER`] and
    /// [`WEBDAV_PASSWORD`].
    pub fn private_folder(&self, what: &str) -> DavFolder {
        self.make_folder("private/", what)
    }

    fn make_folder(&self, under: &str, what: &str) -> DavFolder {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let what: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!("t{n}-{}", what.trim_matches('-'));
        let path = self.root.join(under).join(&name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        self.give(&path);
        DavFolder {
            url: format!("{}/{under}{name}/", self.url),
            path,
        }
    }

    /// Makes `path` (made behind the server's back) belong to the user Apache runs as, so that
    /// it can change and remove it.
    pub fn give(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot chown {}: {e}", path.display()));
        }
    }
}

fn apache2() -> PathBuf {
    if let Some(p) = std::env::var_os("SYNCOXIDE_APACHE2") {
        return PathBuf::from(p);
    }
    let default = Path::new("/usr/sbin/apache2");
    if default.exists() {
        return default.to_path_buf();
    }
    panic!(
        "the WebDAV tests need Apache httpd with mod_dav (/usr/sbin/apache2): run .ci/run, or \
         `apt-get install apache2`, or set SYNCOXIDE_APACHE2"
    )
}

/// The uid and gid of `nobody`, from `/etc/passwd`.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"nobody") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .unwrap_or((65534, 65534))
}

fn config(dir: &Path, port: u16, modules: &Path, owner: Option<(u32, u32)>) -> String {
    let d = dir.display();
    let m = modules.display();
    let mut conf = format!(
        r#"ServerRoot "{d}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
DefaultRuntimeDir "{d}"
PidFile "{d}/httpd.pid"
ErrorLog "{d}/error.log"
LogLevel warn
StartServers 1
ServerLimit 4
ThreadsPerChild 16
MaxRequestWorkers 64
"#
    );
    for (name, file) in [
        ("mpm_event", "mpm_event"),
        ("authz_core", "authz_core"),
        ("authn_core", "authn_core"),
        ("auth_basic", "auth_basic"),
        ("authn_file", "authn_file"),
        ("authz_user", "authz_user"),
        ("dav", "dav"),
        ("dav_fs", "dav_fs"),
    ] {
        conf.push_str(&format!("LoadModule {name}_module \"{m}/mod_{file}.so\"\n"));
    }
    if let Some((uid, gid)) = owner {
        conf.push_str(&format!("User #{uid}\nGroup #{gid}\n"));
    }
    conf.push_str(&format!(
        r#"DavLockDB "{d}/lock/DavLock"
DocumentRoot "{d}/dav"
<Directory "{d}/dav">
    Dav On
    Options None
    AllowOverride None
    Require all granted
</Directory>
<Directory "{d}/dav/private">
    AuthType Basic
    AuthName "syncoxide test"
    AuthBasicProvider file
    AuthUserFile "{d}/htpasswd"
    Require valid-user
</Directory>
"#
    ));
    conf
}

/// Waits until `port` accepts connections; Apache's logs if it does not.
fn wait_listening(port: u16, dir: &Path) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let why = if let Ok(status) = std::fs::read_to_string(dir.join("exited")) {
            format!("exited (status {})", status.trim())
        } else if t0.elapsed() > START_TIMEOUT {
            format!("did not listen within {START_TIMEOUT:?}")
        } else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        panic!(
            "apache2 {why} on port {port}; its output:\n{}\nits error log:\n{}",
            log("stdout.log"),
            log("error.log")
        );
    }
}

/// The WebDAV server of this test process, started on first use.
pub fn webdav() -> &'static WebDavServer {
    static SERVER: OnceLock<WebDavServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let program = apache2();
        let modules = std::env::var_os("SYNCOXIDE_APACHE2_MODULES")
            .map_or_else(|| PathBuf::from("/usr/lib/apache2/modules"), PathBuf::from);
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free TCP port on 127.0.0.1");
        let dir =
            std::env::temp_dir().join(format!("syncoxide-apache-{}-{port}", std::process::id()));
        let root = dir.join("dav");
        for d in [&root, &root.join("private"), &dir.join("lock")] {
            std::fs::create_dir_all(d)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let owner = as_root.then(nobody);
        if let Some((uid, gid)) = owner {
            // The workers must get into the directory and write the lock database.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the server directory");
            for d in [&root, &root.join("private"), &dir.join("lock")] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown for apache2");
            }
        }
        let htpasswd = Command::new("htpasswd")
            .args(["-c", "-b"])
            .arg(dir.join("htpasswd"))
            .args([WEBDAV_USER, WEBDAV_PASSWORD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            htpasswd.is_ok_and(|s| s.success()),
            "htpasswd (apache2-utils) failed: run .ci/run or `apt-get install apache2`"
        );
        let conf = dir.join("httpd.conf");
        std::fs::write(&conf, config(&dir, port, &modules, owner)).expect("write httpd.conf");

        // Apache in the foreground under a sh that stops it, and removes its directory, once
        // our end of the pipe closes (this process exited, however it ended).
        let script = r#"dir="$1"; prog="$2"
"$prog" -f "$dir/httpd.conf" -DFOREGROUND </dev/null >"$dir/stdout.log" 2>&1 &
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
        WebDavServer {
            url: format!("http://127.0.0.1:{port}"),
            port,
            root,
            error_log: dir.join("error.log"),
            owner,
            _lifeline: Mutex::new(lifeline),
        }
    })
}
