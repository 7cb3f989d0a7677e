//! The remotes a scenario runs against, so that one test body runs over a local folder, an S3
//! bucket (moto) and a WebDAV folder (Apache), each through a real mount: [`TestRemote`].
//!
//! What a remote holds is checked from outside the drive: the folder itself, the WebDAV folder
//! on Apache's disk, or the bucket downloaded by the harness's own requests (link objects made
//! symlinks, as `rclone copy --links` would).

use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::servers::s3;
use crate::webdav_server::{webdav, DavFolder};
use crate::{format_lines, tempdir, tree_diff, Drive, DriveBuilder, TempDir};

/// A fresh, empty remote of one kind.
pub enum TestRemote {
    Folder(TempDir),
    S3 { bucket: String },
    WebDav(DavFolder),
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

    /// `local`, `s3` or `webdav`.
    pub fn kind(&self) -> &'static str {
        match self {
            TestRemote::Folder(_) => "local",
            TestRemote::S3 { .. } => "s3",
            TestRemote::WebDav(_) => "webdav",
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
        }
    }

    pub fn mount(&self) -> Drive {
        self.builder().mount()
    }

    /// Whether permission bits and modification times are stored on the remote (S3 and
    /// WebDAV keep neither: the drive keeps them while it has the file's state).
    pub fn keeps_attrs(&self) -> bool {
        matches!(self, TestRemote::Folder(_))
    }

    /// What the remote holds now, as a folder.
    pub fn view(&self) -> RemoteView {
        match self {
            TestRemote::Folder(d) => RemoteView {
                path: d.path().to_path_buf(),
                _download: None,
            },
            TestRemote::WebDav(f) => RemoteView {
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

/// Runs each scenario `fn NAME(remote: &TestRemote)` on a local folder, an S3 bucket and a
/// WebDAV folder, as the tests `local::NAME`, `s3::NAME` and `webdav::NAME`.
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
    };
}
