//! What `REMOTE` names: a local folder, given as a path or a `file://` URL, an S3 bucket,
//! `s3://BUCKET[/PREFIX]`, or a WebDAV folder, `webdav://[USER@]HOST[:PORT]/PATH` (HTTP) or
//! `webdavs://…` (HTTPS), or an SFTP folder, `sftp://USER@HOST[:PORT]/PATH` (PATH relative to
//! the login folder; `sftp://USER@HOST[:PORT]//abs/path` for an absolute one). Other schemes are
//! refused with a message naming the scheme until their providers exist. A named remote
//! (`NAME:`, `NAME:SUB/DIR`) is looked up in `named.rs` and becomes one of these.
//!
//! Also the stable short hash that names per-remote cache directories and per-mountpoint
//! registry files: 64-bit FNV-1a of the canonical path's bytes, as 16 hex digits. It is written
//! here rather than taken from `std` because its value must never change between releases (a
//! changed hash would silently start a new, empty cache for the same remote).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// A parsed `REMOTE` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// A local folder (not yet checked for existence).
    Local(PathBuf),
    /// A bucket, and the key prefix inside it (`""`, or `a/b` without slashes at the ends).
    S3 { bucket: String, prefix: String },
    /// A WebDAV folder: its `http(s)://host[:port]/path/` URL and the user name of the URL.
    WebDav { url: String, user: Option<String> },
    /// An SFTP folder.
    Sftp {
        user: String,
        host: String,
        port: u16,
        path: String,
    },
}

/// The `webdav[s]://[USER@]HOST/PATH` form of a WebDAV folder's `http(s)://` URL.
pub fn webdav_url(url: &str, user: Option<&str>) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => ("webdavs", rest),
        Some((_, rest)) => ("webdav", rest),
        None => ("webdav", url),
    };
    match user {
        Some(u) => format!("{scheme}://{u}@{rest}"),
        None => format!("{scheme}://{rest}"),
    }
}

impl Remote {
    /// Parses `REMOTE`: `file:///abs/path` (with `%XX` escapes), or a plain path. A string of the
    /// form `scheme://...` with another scheme is refused.
    pub fn parse(s: &str) -> Result<Remote> {
        if s.is_empty() {
            bail!("the remote is empty; give a folder path or a file:// URL");
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(Remote::Local(PathBuf::from(s)));
        };
        let looks_like_scheme = !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !looks_like_scheme {
            return Ok(Remote::Local(PathBuf::from(s)));
        }
        if scheme.eq_ignore_ascii_case("s3") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("the S3 URL {s:?} names no bucket; write s3://BUCKET or s3://BUCKET/PREFIX");
            }
            let prefix = prefix.trim_matches('/');
            if prefix
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
                && !prefix.is_empty()
            {
                bail!("the key prefix of the S3 URL {s:?} has an empty, . or .. component; write s3://BUCKET/a/b");
            }
            return Ok(Remote::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if scheme.eq_ignore_ascii_case("webdav") || scheme.eq_ignore_ascii_case("webdavs") {
            let http = if scheme.eq_ignore_ascii_case("webdavs") {
                "https"
            } else {
                "http"
            };
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (user, host) = match authority.rsplit_once('@') {
                Some((u, _)) if u.contains(':') => bail!(
                    "the WebDAV URL holds a password (USER:PASSWORD@), which must never be on a command line; give only the user (webdav://USER@HOST/PATH) and the password in SYNCOXIDE_WEBDAV_PASSWORD"
                ),
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, authority),
            };
            if host.is_empty() {
                bail!("the WebDAV URL {s:?} names no host; write webdav://HOST[:PORT]/PATH");
            }
            let path = path.trim_matches('/');
            let url = if path.is_empty() {
                format!("{http}://{host}/")
            } else {
                format!("{http}://{host}/{path}/")
            };
            return Ok(Remote::WebDav { url, user });
        }
        if scheme.eq_ignore_ascii_case("sftp") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let Some((user, hostport)) = authority.rsplit_once('@') else {
                bail!("the SFTP URL {s:?} names no user; write sftp://USER@HOST[:PORT]/PATH");
            };
            if user.is_empty() || user.contains(':') {
                bail!("the SFTP URL {s:?} needs a user and no password (keys only): sftp://USER@HOST[:PORT]/PATH");
            }
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) => match p.parse::<u16>() {
                    Ok(p) if p > 0 => (h, p),
                    _ => bail!("the port of the SFTP URL {s:?} is not a number from 1 to 65535"),
                },
                None => (hostport, 22),
            };
            if host.is_empty() {
                bail!("the SFTP URL {s:?} names no host; write sftp://USER@HOST[:PORT]/PATH");
            }
            let path = if let Some(abs) = path.strip_prefix('/') {
                format!("/{}", abs.trim_matches('/'))
            } else {
                path.trim_matches('/').to_string()
            };
            return Ok(Remote::Sftp {
                user: user.to_string(),
                host: host.to_string(),
                port,
                path,
            });
        }
        if !scheme.eq_ignore_ascii_case("file") {
            bail!(
                "remotes of scheme {scheme:?} are not supported yet; give a folder path, a file:// URL, an s3://BUCKET[/PREFIX], webdav(s)://HOST/PATH or sftp://USER@HOST/PATH URL"
            );
        }
        // file://host/path: only an empty host or localhost is this machine.
        let path = if let Some(p) = rest.strip_prefix("localhost/") {
            format!("/{p}")
        } else if rest.starts_with('/') {
            rest.to_string()
        } else {
            bail!(
                "the file:// URL {s:?} names another host; write file:///absolute/path for a folder on this machine"
            );
        };
        Ok(Remote::Local(PathBuf::from(std::ffi::OsStr::from_bytes(
            &percent_decode(&path)?,
        ))))
    }
}

impl Remote {
    /// The remote as a `REMOTE` argument that [`Remote::parse`] reads back as this remote: a
    /// local folder's path (UTF-8 only), else its URL.
    pub fn url(&self) -> Result<String> {
        Ok(match self {
            Remote::Local(p) => match p.to_str() {
                Some(s) => s.to_string(),
                None => bail!(
                    "the folder {} is not valid UTF-8; choose one with a UTF-8 name",
                    p.display()
                ),
            },
            Remote::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Remote::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Remote::WebDav { url, user } => webdav_url(url, user.as_deref()),
            Remote::Sftp {
                user,
                host,
                port,
                path,
            } => {
                let port = if *port == 22 {
                    String::new()
                } else {
                    format!(":{port}")
                };
                format!("sftp://{user}@{host}{port}/{path}")
            }
        })
    }

    /// The folder `sub` (`a/b`, relative) inside this remote. Empty, `.` and `..` components
    /// are refused: a sub-folder never leaves the remote.
    pub fn join(&self, sub: &str) -> Result<Remote> {
        let sub = sub.trim_matches('/');
        if sub.is_empty() {
            return Ok(self.clone());
        }
        if sub
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("the folder {sub:?} inside the remote has an empty, . or .. component; write NAME:a/b");
        }
        let under = |base: &str| {
            if base.is_empty() {
                sub.to_string()
            } else {
                format!("{}/{sub}", base.trim_end_matches('/'))
            }
        };
        Ok(match self {
            Remote::Local(p) => Remote::Local(p.join(sub)),
            Remote::S3 { bucket, prefix } => Remote::S3 {
                bucket: bucket.clone(),
                prefix: under(prefix),
            },
            // The URL always ends in '/'.
            Remote::WebDav { url, user } => Remote::WebDav {
                url: format!("{url}{sub}/"),
                user: user.clone(),
            },
            Remote::Sftp {
                user,
                host,
                port,
                path,
            } => Remote::Sftp {
                user: user.clone(),
                host: host.clone(),
                port: *port,
                path: under(path),
            },
        })
    }
}

fn percent_decode(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = hex else {
                bail!("bad %-escape in the file:// URL {s:?}; write %20 for a space, %25 for %");
            };
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// 64-bit FNV-1a of `bytes` as 16 lowercase hex digits.
pub fn short_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The default cache directory of an S3 remote: `BASE/s3-HASH`, HASH naming the endpoint,
/// bucket and prefix (another endpoint with a bucket of the same name is another remote).
pub fn default_cache_dir_for_s3(
    base: &Path,
    endpoint: &str,
    bucket: &str,
    prefix: &str,
) -> PathBuf {
    base.join(format!(
        "s3-{}",
        short_hash(format!("{endpoint}\n{bucket}\n{prefix}").as_bytes())
    ))
}

/// The default cache directory of a WebDAV remote: `BASE/webdav-HASH` of its URL and user.
pub fn default_cache_dir_for_webdav(base: &Path, url: &str, user: Option<&str>) -> PathBuf {
    base.join(format!(
        "webdav-{}",
        short_hash(format!("{url}\n{}", user.unwrap_or("")).as_bytes())
    ))
}

/// The default cache directory of an SFTP remote: `BASE/sftp-HASH` of user, host, port, path.
pub fn default_cache_dir_for_sftp(
    base: &Path,
    user: &str,
    host: &str,
    port: u16,
    path: &str,
) -> PathBuf {
    base.join(format!(
        "sftp-{}",
        short_hash(format!("{user}\n{host}\n{port}\n{path}").as_bytes())
    ))
}

/// The default cache directory of a local remote: `BASE/local-HASH`, HASH being
/// [`short_hash`] of the remote's canonical path, so that two remotes never share a cache and
/// the same remote always finds its own again.
pub fn default_cache_dir_for(base: &Path, canonical_remote: &Path) -> PathBuf {
    base.join(format!(
        "local-{}",
        short_hash(canonical_remote.as_os_str().as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_file_urls() {
        assert_eq!(
            Remote::parse("/data/x").unwrap(),
            Remote::Local("/data/x".into())
        );
        assert_eq!(
            Remote::parse("rel/dir").unwrap(),
            Remote::Local("rel/dir".into())
        );
        assert_eq!(
            Remote::parse("file:///data/a%20b").unwrap(),
            Remote::Local("/data/a b".into())
        );
        assert_eq!(
            Remote::parse("FILE://localhost/srv").unwrap(),
            Remote::Local("/srv".into())
        );
        assert_eq!(
            Remote::parse("s3://my-bucket/a/b/").unwrap(),
            Remote::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Remote::parse("s3://my-bucket").unwrap(),
            Remote::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Remote::parse("webdav://me@dav.example:8080/a/b/").unwrap(),
            Remote::WebDav {
                url: "http://dav.example:8080/a/b/".into(),
                user: Some("me".into())
            }
        );
        assert_eq!(
            Remote::parse("webdavs://dav.example").unwrap(),
            Remote::WebDav {
                url: "https://dav.example/".into(),
                user: None
            }
        );
        let e = Remote::parse("webdav://me:pw@h/x").unwrap_err().to_string();
        assert!(
            e.contains("SYNCOXIDE_WEBDAV_PASSWORD") && !e.contains("pw@"),
            "{e}"
        );
        // Not a scheme: a folder whose name happens to contain "://".
        assert_eq!(
            Remote::parse("./a://b").unwrap(),
            Remote::Local("./a://b".into())
        );
    }

    #[test]
    fn other_schemes_and_bad_urls_are_refused() {
        let e = Remote::parse("ftp://me@host/dir").unwrap_err().to_string();
        assert!(
            e.contains("\"ftp\"") && e.contains("not supported yet"),
            "{e}"
        );
        assert_eq!(
            Remote::parse("sftp://me@h:2222/data/x/").unwrap(),
            Remote::Sftp {
                user: "me".into(),
                host: "h".into(),
                port: 2222,
                path: "data/x".into()
            }
        );
        assert_eq!(
            Remote::parse("sftp://me@h//srv/x").unwrap(),
            Remote::Sftp {
                user: "me".into(),
                host: "h".into(),
                port: 22,
                path: "/srv/x".into()
            }
        );
        assert!(Remote::parse("sftp://h/x").is_err());
        assert!(Remote::parse("sftp://me:pw@h/x").is_err());
        let e = Remote::parse("s3:///dir").unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = Remote::parse("s3://b/a/../c").unwrap_err().to_string();
        assert!(e.contains("component"), "{e}");
        let e = Remote::parse("file://server/share")
            .unwrap_err()
            .to_string();
        assert!(e.contains("another host"), "{e}");
        let e = Remote::parse("file:///a%zz").unwrap_err().to_string();
        assert!(e.contains("%-escape"), "{e}");
        assert!(Remote::parse("").is_err());
    }

    #[test]
    fn urls_read_back_as_the_same_remote() {
        for s in [
            "/data/x",
            "/data/a b",
            "s3://b",
            "s3://b/a/c",
            "webdav://dav.example/",
            "webdavs://me@dav.example:8443/a/b/",
            "sftp://me@h/",
            "sftp://me@h:2222/rel/dir",
            "sftp://me@h//srv/x",
        ] {
            let r = Remote::parse(s).unwrap();
            let url = r.url().unwrap();
            assert_eq!(Remote::parse(&url).unwrap(), r, "{s} -> {url}");
        }
        assert_eq!(
            Remote::parse("webdavs://me@h/a").unwrap().url().unwrap(),
            "webdavs://me@h/a/"
        );
    }

    #[test]
    fn sub_folders_join_inside_the_remote() {
        let j = |s: &str, sub: &str| Remote::parse(s).unwrap().join(sub).unwrap();
        assert_eq!(j("/data", "a/b"), Remote::Local("/data/a/b".into()));
        assert_eq!(j("/data", ""), Remote::Local("/data".into()));
        assert_eq!(j("/data", "/a/"), Remote::Local("/data/a".into()));
        assert_eq!(
            j("s3://b", "x"),
            Remote::S3 {
                bucket: "b".into(),
                prefix: "x".into()
            }
        );
        assert_eq!(
            j("s3://b/p", "x/y"),
            Remote::S3 {
                bucket: "b".into(),
                prefix: "p/x/y".into()
            }
        );
        assert_eq!(
            j("webdav://me@h/dav", "x"),
            Remote::WebDav {
                url: "http://h/dav/x/".into(),
                user: Some("me".into())
            }
        );
        let path = |r: Remote| match r {
            Remote::Sftp { path, .. } => path,
            other => panic!("{other:?}"),
        };
        assert_eq!(path(j("sftp://me@h", "x")), "x");
        assert_eq!(path(j("sftp://me@h/rel", "x")), "rel/x");
        assert_eq!(path(j("sftp://me@h//", "x")), "/x");
        assert_eq!(path(j("sftp://me@h//srv", "x")), "/srv/x");
        for bad in ["..", "a/../b", "a//b", "./a"] {
            let e = Remote::parse("/data")
                .unwrap()
                .join(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(". or .. component"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_hash_is_stable() {
        // Reference values of FNV-1a 64; a change here would orphan every existing cache.
        assert_eq!(short_hash(b""), "cbf29ce484222325");
        assert_eq!(short_hash(b"a"), "af63dc4c8601ec8c");
        assert_eq!(
            default_cache_dir_for(Path::new("/c"), Path::new("/data")),
            PathBuf::from(format!("/c/local-{}", short_hash(b"/data")))
        );
        assert_ne!(short_hash(b"/data/a"), short_hash(b"/data/b"));
    }
}
