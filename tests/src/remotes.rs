//! The remotes a scenario runs against, so that one test body runs over a local folder, an S3
//! bucket (moto) and a WebDAV folder (Apache), each through a real mount: [`TestRemote`].
//!
//! What a remote holds is checked from outside the drive: the folder itself, a copy of the
//! WebDAV folder from Apache's disk, or the bucket downloaded by the harness's own requests
//! (link files made symlinks, as `rclone copy --links` would).

use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::servers::s3;
use crate::sftp_server::{sftp, SftpFolder};
use crate::webdav_server::{webdav, DavFolder};
use crate::{format_lines, tempdir, tree_diff, Drive, DriveBuilder, TempDir};

/// A fresh, empty remote of one kind.
pub enum TestRemote {
    Folder(TempDir),
    S3 { bucket: String },
    WebDav(DavFolder),
    Sftp(SftpFolder),
}

/// A remote's tree as a folder on disk (kept as long as this lives).
pub struct RemoteView {
    path: PathBuf,
    _download: Option<TempDir>,
}

impl Deref for RemoteView {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for RemoteView {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl TestRemote {
    pub fn folder() -> TestRemote {
        TestRemote::Folder(tempdir("remote"))
    }

    /// A new bucket of the test S3 server.
    pub fn s3(what: &str) -> TestRemote {
        let bucket = s3().bucket(what);
        s3().create_bucket(&bucket);
        TestRemote::S3 { bucket }
    }

    /// A new folder of the test WebDAV server.
    pub fn webdav(what: &str) -> TestRemote {
        TestRemote::WebDav(webdav().folder(what))
    }

    /// A new folder of the test SFTP server (sshd).
    pub fn sftp(what: &str) -> TestRemote {
        TestRemote::Sftp(sftp().folder(what))
    }

    /// `local`, `s3`, `webdav` or `sftp`.
    pub fn kind(&self) -> &'static str {
        match self {
            TestRemote::Folder(_) => "local",
            TestRemote::S3 { .. } => "s3",
            TestRemote::WebDav(_) => "webdav",
            TestRemote::Sftp(_) => "sftp",
        }
    }

    /// How to mount it (see [`Drive::builder`]).
    pub fn builder(&self) -> DriveBuilder {
        match self {
            TestRemote::Folder(d) => Drive::builder(d.path()),
            TestRemote::S3 { bucket } => Drive::builder_s3(bucket),
            TestRemote::WebDav(f) => {
                let url = f.url.replacen("http://", "webdav://", 1);
                Drive::builder(Path::new(&url))
                    .arg("--request-timeout")
                    .arg("10s")
            }
            TestRemote::Sftp(f) => sftp_builder(f, sftp().port),
        }
    }

    /// The TCP port of the server behind this remote (`None` for a folder).
    pub fn server_port(&self) -> Option<u16> {
        match self {
            TestRemote::Folder(_) => None,
            TestRemote::S3 { .. } => Some(s3().port),
            TestRemote::WebDav(_) => Some(webdav().port),
            TestRemote::Sftp(_) => Some(sftp().port),
        }
    }

    /// How to mount it with the drive talking to the server through 127.0.0.1:`port` (a
    /// [`crate::proxy::Proxy`]); the harness still looks at the server directly.
    pub fn builder_via(&self, port: u16) -> DriveBuilder {
        match self {
            TestRemote::Folder(d) => Drive::builder(d.path()),
            TestRemote::S3 { bucket } => {
                let mut b = Drive::builder(Path::new(&format!("s3://{bucket}")))
                    .arg("--s3-endpoint")
                    .arg(format!("http://127.0.0.1:{port}"))
                    .arg("--s3-addressing")
                    .arg("path")
                    .arg("--request-timeout")
                    .arg("5s");
                for (k, v) in s3().aws_env() {
                    b = b.env(k, v);
                }
                b
            }
            TestRemote::WebDav(f) => {
                let url = f.url.replacen(
                    &format!("http://127.0.0.1:{}", webdav().port),
                    &format!("webdav://127.0.0.1:{port}"),
                    1,
                );
                Drive::builder(Path::new(&url))
                    .arg("--request-timeout")
                    .arg("5s")
            }
            TestRemote::Sftp(f) => sftp_builder(f, port),
        }
    }

    pub fn mount(&self) -> Drive {
        self.builder().mount()
    }

    /// Whether permission bits and modification times are stored on the remote (S3 and
    /// WebDAV keep neither: the drive keeps them while it has the file's state; SFTP keeps
    /// both, times in whole seconds).
    pub fn keeps_attrs(&self) -> bool {
        matches!(self, TestRemote::Folder(_) | TestRemote::Sftp(_))
    }

    /// What the remote holds now, as a folder.
    pub fn view(&self) -> RemoteView {
        match self {
            TestRemote::Folder(d) => RemoteView {
                path: d.path().to_path_buf(),
                _download: None,
            },
            TestRemote::WebDav(f) => {
                // A copy with the link files made symlinks, as `rclone copy --links` would.
                let t = tempdir("webdav-view");
                let copy = t.path().join("v");
                let o = crate::run(
                    "cp",
                    ["-a".as_ref(), f.path.as_os_str(), copy.as_os_str()],
                    Path::new("/"),
                );
                assert!(o.success(), "{}", o.describe());
                links_from_files(&copy);
                RemoteView {
                    path: copy,
                    _download: Some(t),
                }
            }
            TestRemote::Sftp(f) => RemoteView {
                path: f.path.clone(),
                _download: None,
            },
            TestRemote::S3 { bucket } => {
                let t = s3().download(bucket);
                RemoteView {
                    path: t.path().to_path_buf(),
                    _download: Some(t),
                }
            }
        }
    }

    /// Asserts that the remote holds the tree `expected` at `sub`: paths, kinds, bytes,
    /// symlink targets, and permission bits where the remote keeps them.
    #[track_caller]
    pub fn assert_holds(&self, expected: &Path, sub: &str) {
        let view = self.view();
        let actual = view.join(sub);
        let d = tree_diff(expected, &actual, self.keeps_attrs());
        assert!(
            d.is_empty(),
            "the {} remote's {sub} differs from {} ({} differences):\n{}",
            self.kind(),
            expected.display(),
            d.len(),
            format_lines(&d, 60)
        );
    }

    /// Behind the drive's back, as another program or machine would: writes the file at `rel`
    /// (its folders made as needed).
    pub fn put(&self, rel: &str, data: impl AsRef<[u8]>) {
        let data = data.as_ref();
        match self {
            TestRemote::Folder(d) => write_under(d.path(), rel, data, |_| {}),
            TestRemote::Sftp(f) => write_under(&f.path, rel, data, |_| {}),
            TestRemote::WebDav(f) => write_under(&f.path, rel, data, |p| webdav().give(p)),
            TestRemote::S3 { bucket } => s3().put(bucket, rel, data),
        }
    }

    /// Behind the drive's back: makes the folder `rel` (and its parents).
    pub fn mkdir(&self, rel: &str) {
        match self {
            TestRemote::Folder(d) => mkdirs_under(d.path(), rel, |_| {}),
            TestRemote::Sftp(f) => mkdirs_under(&f.path, rel, |_| {}),
            TestRemote::WebDav(f) => mkdirs_under(&f.path, rel, |p| webdav().give(p)),
            TestRemote::S3 { bucket } => s3().put(bucket, &format!("{rel}/"), b""),
        }
    }

    /// Behind the drive's back: removes the file, or the folder with all in it, at `rel`.
    pub fn remove(&self, rel: &str) {
        let rm = |p: &Path| {
            let md = std::fs::symlink_metadata(p)
                .unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
            if md.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            }
            .unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
        };
        match self {
            TestRemote::Folder(d) => rm(&d.path().join(rel)),
            TestRemote::Sftp(f) => rm(&f.path.join(rel)),
            TestRemote::WebDav(f) => rm(&f.path.join(rel)),
            TestRemote::S3 { bucket } => {
                let dir = format!("{rel}/");
                for k in s3().keys(bucket) {
                    if k == rel || k.starts_with(&dir) || k == format!("{rel}.rclonelink") {
                        s3().delete(bucket, &k);
                    }
                }
            }
        }
    }

    /// The names in folder `sub` of the remote (hidden ones included), sorted.
    pub fn names(&self, sub: &str) -> Vec<String> {
        let view = self.view();
        let mut names: Vec<String> = std::fs::read_dir(view.join(sub))
            .unwrap_or_else(|e| panic!("cannot list {sub} of the {} remote: {e}", self.kind()))
            .map(|e| {
                e.expect("readdir")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| !n.starts_with(".davfs.tmp"))
            .collect();
        names.sort();
        names
    }
}

/// Runs each scenario `fn NAME(remote: &TestRemote)` on a local folder, an S3 bucket, a WebDAV
/// folder and an SFTP folder, as the tests `local::NAME`, `s3::NAME`, `webdav::NAME` and
/// `sftp::NAME`.
#[macro_export]
macro_rules! on_every_remote {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(&$crate::remotes::TestRemote::folder());
                }
            )*
        }
        mod s3 {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(&$crate::remotes::TestRemote::s3(stringify!($scenario)));
                }
            )*
        }
        mod webdav {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(&$crate::remotes::TestRemote::webdav(stringify!($scenario)));
                }
            )*
        }
        mod sftp {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(&$crate::remotes::TestRemote::sftp(stringify!($scenario)));
                }
            )*
        }
    };
}

fn mkdirs_under(root: &Path, rel: &str, give: impl Fn(&Path)) {
    let mut p = root.to_path_buf();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        p.push(c);
        if !p.exists() {
            match std::fs::create_dir(&p) {
                Ok(()) => give(&p),
                // The mount made it meanwhile (a scenario racing a local mkdir with this one).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                Err(e) => panic!("mkdir {}: {e}", p.display()),
            }
        }
    }
}

fn write_under(root: &Path, rel: &str, data: &[u8], give: impl Fn(&Path)) {
    if let Some((dir, _)) = rel.rsplit_once('/') {
        mkdirs_under(root, dir, &give);
    }
    let p = root.join(rel);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    give(&p);
}

/// Turns every `X.rclonelink` file under `dir` into the symlink `X`.
fn links_from_files(dir: &Path) {
    for e in std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("readdir"))
    {
        let p = e.path();
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            links_from_files(&p);
        } else if let Some(stem) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".rclonelink"))
        {
            let target = std::fs::read_to_string(&p).expect("read a link file");
            std::fs::remove_file(&p).expect("remove a link file");
            std::os::unix::fs::symlink(target, dir.join(stem)).expect("symlink");
        }
    }
}

/// `mountctl mount sftp://USER@127.0.0.1:PORT//ABS/PATH` with the test server's key and
/// known_hosts.
fn sftp_builder(f: &SftpFolder, port: u16) -> DriveBuilder {
    let server = sftp();
    let url = format!(
        "sftp://{}@127.0.0.1:{port}//{}",
        server.user,
        f.remote.trim_start_matches('/')
    );
    // Through a proxy the server is `[127.0.0.1]:PORT` of the proxy: the same key there.
    let known_hosts = if port == server.port {
        server.known_hosts.clone()
    } else {
        let line = std::fs::read_to_string(&server.known_hosts).expect("read known_hosts");
        let via = server
            .known_hosts
            .with_file_name(format!("known_hosts-{port}"));
        let line = line.replacen(
            &format!("[127.0.0.1]:{}", server.port),
            &format!("[127.0.0.1]:{port}"),
            1,
        );
        std::fs::write(&via, line).expect("write known_hosts");
        via
    };
    Drive::builder(Path::new(&url))
        .arg("--sftp-key")
        .arg(&server.client_key)
        .arg("--sftp-known-hosts")
        .arg(&known_hosts)
        .arg("--request-timeout")
        .arg("10s")
}
