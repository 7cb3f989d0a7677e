//! [`WebDavProvider`]: a folder on a WebDAV server (RFC 4918; written and tested against Apache
//! httpd's `mod_dav` / `mod_dav_fs`) as the remote, spoken to with plain HTTP(S) requests over
//! reqwest (TLS is rustls on aws-lc-rs), optionally with Basic authentication.
//!
//! # How the tree maps onto the server
//!
//! * The configured URL is the root folder (a collection); `a/b` is `<url>a/b`, each path
//!   segment percent-encoded (every byte but `A-Za-z0-9-._~`).
//! * A file's version is its ETag as the server sends it, quoted, without a weak prefix:
//!   Apache marks the ETag of a file changed within the last second as weak (`W/"…"`) and the
//!   same tag as strong a second later, and a version must not change while the file does not.
//!   Its mtime is `getlastmodified` (whole seconds), its size `getcontentlength`; no mode
//!   (`attrs: false`).
//! * Every directory reports size 0 and version `dir` (so that `list` and `stat` agree without
//!   relying on the directory's own ETag, which changes with its entries), and its
//!   `getlastmodified`.
//! * The root always exists: when the server answers 404 / 409 for the root folder itself (it was
//!   removed, or the URL is wrong), or it is not a collection, every call fails with
//!   [`ProviderError::Unreachable`] naming the URL, never `NotFound` (a `NotFound` is only
//!   concluded once the root folder was seen to exist).
//! * A symlink at `a/l` is the file `a/l.rclonelink` whose body is the target (UTF-8, at most
//!   4096 bytes: rclone's `--links` convention, as on S3, so that links written by either tool
//!   are links to the other); names ending in [`LINK_SUFFIX`] are therefore refused for files
//!   and folders, and are `NotFound` to `stat` (`symlinks: true`). A symlink's version is the
//!   link file's ETag (strong form), its mtime the file's, its size the target's length. When a
//!   file or folder `l` exists next to `l.rclonelink` (made by another tool), `l` is what is
//!   there; a folder named `….rclonelink` is hidden from listings.
//! * Names starting with [`APACHE_TMP_PREFIX`] are Apache's uploads in progress: hidden from
//!   listings and reserved.
//!
//! # Operations
//!
//! * `stat`: `PROPFIND` with `Depth: 0` of `getetag`, `getcontentlength`, `getlastmodified`
//!   and `resourcetype`; when nothing is there, the same of `name.rclonelink` and, for a file,
//!   a `GET` of it (the target; its ETag and `Last-Modified` make the entry). `list`: the same
//!   with `Depth: 1`, one page; each link file's target is read with a `GET` (a few at a time).
//! * `read`: ranged `GET` with `If-Match: <version>`; the answer's ETag is compared as well, and
//!   a `200` to a range that does not start at 0 (a server that ignores `Range`) is skipped up to
//!   the offset, never served as if it were the range. A body cut midway is resumed from the
//!   byte reached with a new ranged, conditional `GET` (a few times).
//! * Weak ETags: Apache compares `If-Match` strongly, so it refuses every `If-Match` on a file
//!   changed within the last second. A read refused with 412 whose answer carries the weak form
//!   of the expected ETag is sent again without `If-Match`, comparing the answer's ETag (which is
//!   all Apache's own check does); a conditional write or delete of such a file uses the WebDAV
//!   `If: <url> (["etag"])` header instead, which `mod_dav` compares weakly and atomically.
//! * `write`: one `PUT` to the final name, with `Content-Length`. Apache's `mod_dav_fs` writes
//!   the body to a temporary file next to the target and renames it into place once the whole
//!   body arrived, so readers never see a partial file. A body that is short, long or fails
//!   aborts the request, so the server never stores it. `IfMatch` is checked first with a
//!   `PROPFIND` (a stale version is refused before any byte is sent) and then sent with the
//!   `PUT` (`If-Match`, or `If:` for a weak ETag); `IfNotExists` is `If-None-Match: *`. After
//!   the `PUT` the file is stat'ed, so that the entry returned equals a later `stat`; a stored
//!   size other than the one sent (or an ETag other than the one the `PUT` answered) means
//!   someone else wrote in between and fails the write (retryable) rather than hand out their
//!   version as ours. A file written over a symlink replaces it: the link file, looked for
//!   before the `PUT` (`IfNotExists` is then `AlreadyExists`), is deleted once the file is
//!   there (conditional on the link file's ETag seen).
//! * `symlink`: `PUT` of the link file with `If-None-Match: *`, once nothing is seen at the
//!   name (`AlreadyExists` otherwise, also for `mkdir` over a symlink). The link file's name is
//!   11 bytes longer, so a symlink's name is at most 244 bytes.
//! * `delete`: `PROPFIND` (a directory is `IsADirectory`: a WebDAV `DELETE` would remove it and
//!   everything in it), then `DELETE` conditional on the ETag just seen (or the one given); of
//!   a symlink, its link file's (its version).
//!   `mkdir`: `MKCOL`. `rmdir`: `PROPFIND` with `Depth: 1` (`NotEmpty` unless it lists nothing),
//!   then `DELETE` conditional on the directory's own ETag, which changes when an entry is added,
//!   so a file created in between is never removed with it.
//! * `rename`: `MOVE` with `Destination` and `Overwrite: T` / `F`, atomic on Apache
//!   (`rename: true`). What is at the target is checked first: a file never replaces a
//!   directory or the reverse, and a directory replaces only an empty one (`Overwrite: T` would
//!   remove a non-empty one with everything in it). A change at the target between that check
//!   and the `MOVE` is a window of one round trip. A symlink is moved as its link file
//!   (`x.rclonelink` to `y.rclonelink`); a link replacing a file or a file replacing a link
//!   moves without `Overwrite`, then deletes what it replaced (conditional on its ETag seen).
//! * `set_attrs` is `NotSupported`.
//!
//! # Errors
//!
//! Connection errors (refused, DNS, TLS) are `Unreachable` (naming the URL), timeouts
//! `TimedOut`, 401 / 403 `PermissionDenied`, 507 `NoSpace`, 5xx / 429 / 408 a retryable
//! `Other`, anything else a non-retryable `Other`. [`WebDavConfig::request_timeout`] bounds
//! connecting, waiting for an answer, and every wait for the next piece of a body (sent or
//! received), not the whole transfer of a large file.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::s3::{collect_exact, parse_http_date, uri_encode};
use super::s3::{BodyState, CheckedBody, Progress, LINK_SUFFIX};
use super::{
    ByteStream, Capabilities, EntryKind, ListPage, ObjectAttrs, Precondition, Provider,
    ProviderError, RemoteEntry, RemotePath, Result, Version,
};

/// Names of Apache `mod_dav_fs` uploads in progress (hidden, reserved).
pub const APACHE_TMP_PREFIX: &str = ".davfs.tmp";

/// Longest name component, in bytes (like the other providers, so names behave the same).
const MAX_NAME_LEN: usize = 255;
/// Bodies up to this size are gathered first and sent in one piece.
const SMALL_BODY: u64 = 1 << 20;
/// How many times a read whose body was cut is resumed.
const READ_RESUMES: u32 = 3;
/// Longest symlink target stored.
const MAX_LINK_TARGET: u64 = 4096;
/// How many times a delete or rmdir that lost a race with another change is tried.
const ATTEMPTS: u32 = 3;
/// The version of every directory.
const DIR_VERSION: &str = "dir";
/// Idle pooled connections are dropped before a server's usual keep-alive timeout (Apache: 5 s),
/// so that a request is never sent on a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);
const PROPFIND_BODY: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<D:propfind xmlns:D=\"DAV:\"><D:prop><D:resourcetype/><D:getcontentlength/><D:getetag/>\
<D:getlastmodified/></D:prop></D:propfind>";

/// Where and how to reach the folder.
#[derive(Clone)]
pub struct WebDavConfig {
    /// `http(s)://host[:port]/path/`: the folder that is the root of the tree.
    pub url: String,
    /// Basic authentication when set.
    pub username: Option<String>,
    pub password: Option<String>,
    /// See the module documentation, "Errors".
    pub request_timeout: Duration,
}

impl fmt::Debug for WebDavConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebDavConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A configuration the provider cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum WebDavConfigError {
    #[error("invalid WebDAV URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("a WebDAV password needs a user name")]
    PasswordWithoutUser,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

// ---------------------------------------------------------------------------------------------
// Names, ETags and hrefs

/// Percent-decodes a URL path (`+` is a plus sign in a path).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded path of an href (absolute URL or absolute path), without a trailing `/`.
fn href_path(href: &str) -> Option<String> {
    let href = href.trim();
    let path = match href.find("://") {
        Some(i) => {
            let rest = &href[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => href,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    Some(percent_decode(path)?.trim_end_matches('/').to_string())
}

/// An ETag quoted and without a weak prefix; whether it was weak.
fn strong_etag(e: &str) -> (String, bool) {
    let e = e.trim();
    let (e, weak) = match e.strip_prefix("W/") {
        Some(rest) => (rest, true),
        None => (e, false),
    };
    let e = if e.starts_with('"') {
        e.to_string()
    } else {
        format!("\"{e}\"")
    };
    (e, weak)
}

fn is_hidden(name: &str) -> bool {
    name.starts_with(APACHE_TMP_PREFIX)
}

fn precondition_failed(p: &RemotePath) -> ProviderError {
    ProviderError::PreconditionFailed { path: p.clone() }
}

/// The path of the file holding the symlink at `p` (not the root): `p.rclonelink`.
fn link_path(p: &RemotePath) -> RemotePath {
    let name = format!("{}{LINK_SUFFIX}", p.name());
    p.parent()
        .and_then(|d| d.join(&name))
        .unwrap_or_else(RemotePath::root)
}

fn link_entry(name: &str, target: String, mtime: SystemTime, etag: &str) -> RemoteEntry {
    RemoteEntry {
        name: name.to_string(),
        kind: EntryKind::Symlink,
        size: target.len() as u64,
        mtime,
        version: Version::from(etag),
        mode: None,
        symlink_target: Some(target),
    }
}

// ---------------------------------------------------------------------------------------------
// XML bodies

#[derive(Debug, Default, Deserialize)]
struct Multistatus {
    #[serde(rename = "response", default)]
    responses: Vec<DavResponse>,
}

#[derive(Debug, Deserialize)]
struct DavResponse {
    #[serde(default)]
    href: String,
    #[serde(rename = "propstat", default)]
    propstats: Vec<Propstat>,
}

#[derive(Debug, Deserialize)]
struct Propstat {
    #[serde(default)]
    prop: Prop,
    #[serde(default)]
    status: String,
}

#[derive(Debug, Default, Deserialize)]
struct Prop {
    resourcetype: Option<ResourceType>,
    getcontentlength: Option<String>,
    getetag: Option<String>,
    getlastmodified: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ResourceType {
    collection: Option<Empty>,
}

#[derive(Debug, Default, Deserialize)]
struct Empty {}

/// One resource of a `PROPFIND` answer, or a symlink (its link file's ETag, its target).
#[derive(Clone, Debug)]
struct Found {
    entry: RemoteEntry,
    /// The server's own ETag (also of a directory), strong form, and whether it was weak.
    etag: Option<(String, bool)>,
}

impl Found {
    fn is_dir(&self) -> bool {
        self.entry.kind == EntryKind::Dir
    }
    /// A symlink (its `etag` is the link file's).
    fn is_link(&self) -> bool {
        self.entry.kind == EntryKind::Symlink
    }
}

/// The resources of a `PROPFIND` answer as (decoded href path, what it is).
fn parse_multistatus(body: &[u8], what: &str) -> Result<Vec<(String, Found)>> {
    let bad = |reason: String| ProviderError::Other {
        message: format!("WebDAV {what}: cannot parse the answer: {reason}"),
        retryable: true,
    };
    let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8".into()))?;
    let ms: Multistatus = quick_xml::de::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(ms.responses.len());
    for r in ms.responses {
        let path = href_path(&r.href).ok_or_else(|| bad(format!("bad href {:?}", r.href)))?;
        let mut prop = Prop::default();
        for ps in r.propstats {
            // Only the properties the server has (a 404 propstat names those it has not).
            if ps.status.split_whitespace().nth(1) == Some("200") {
                let p = ps.prop;
                prop.resourcetype = prop.resourcetype.or(p.resourcetype);
                prop.getcontentlength = prop.getcontentlength.or(p.getcontentlength);
                prop.getetag = prop.getetag.or(p.getetag);
                prop.getlastmodified = prop.getlastmodified.or(p.getlastmodified);
            }
        }
        let name = path.rsplit('/').next().unwrap_or("").to_string();
        let is_dir = prop.resourcetype.is_some_and(|t| t.collection.is_some());
        let mtime = prop
            .getlastmodified
            .as_deref()
            .and_then(parse_http_date)
            .unwrap_or(UNIX_EPOCH);
        let etag = prop
            .getetag
            .as_deref()
            .filter(|e| !e.trim().is_empty())
            .map(strong_etag);
        let entry = if is_dir {
            RemoteEntry {
                name,
                kind: EntryKind::Dir,
                size: 0,
                mtime,
                version: Version::from(DIR_VERSION),
                mode: None,
                symlink_target: None,
            }
        } else {
            let Some((tag, _)) = &etag else {
                return Err(ProviderError::Other {
                    message: format!("WebDAV {what}: the server gives no ETag for {path}"),
                    retryable: false,
                });
            };
            RemoteEntry {
                name,
                kind: EntryKind::File,
                size: prop
                    .getcontentlength
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0),
                mtime,
                version: Version::from(tag.as_str()),
                mode: None,
                symlink_target: None,
            }
        };
        out.push((path, Found { entry, etag }));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The HTTP client

/// A request body.
enum Body {
    Empty,
    Bytes(Bytes),
    /// Watched by a [`Progress`].
    Stream {
        body: reqwest::Body,
        len: u64,
        progress: Arc<Progress>,
    },
}

struct Request {
    method: Method,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

impl Request {
    fn new(method: Method, url: String) -> Self {
        Request {
            method,
            url,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// An answer whose (small) body has been read.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn method(name: &'static str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap_or(Method::GET)
}

struct Client {
    http: reqwest::Client,
    /// The root folder's URL, ending in `/`.
    base: String,
    /// Its decoded path, without a trailing `/` (`""` for the server's root).
    base_path: String,
    auth: Option<(String, Option<String>)>,
    timeout: Duration,
}

impl Client {
    fn new(cfg: &WebDavConfig) -> std::result::Result<Self, WebDavConfigError> {
        let bad = |reason: &str| WebDavConfigError::Url {
            url: cfg.url.clone(),
            reason: reason.to_string(),
        };
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("no query or fragment allowed"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("put the user name and password in the configuration"));
        }
        if url.host_str().is_none() {
            return Err(bad("no host"));
        }
        if cfg.password.is_some() && cfg.username.is_none() {
            return Err(WebDavConfigError::PasswordWithoutUser);
        }
        let mut base = url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let base_path = percent_decode(url.path())
            .ok_or_else(|| bad("the path is not valid percent-encoded UTF-8"))?
            .trim_end_matches('/')
            .to_string();
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.request_timeout)
            .read_timeout(cfg.request_timeout)
            .pool_idle_timeout(POOL_IDLE)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebDavConfigError::Client(e.to_string()))?;
        Ok(Client {
            http,
            base,
            base_path,
            auth: cfg.username.clone().map(|u| (u, cfg.password.clone())),
            timeout: cfg.request_timeout,
        })
    }

    /// The URL of `p` (with a trailing `/` for a collection, when `dir`).
    fn url(&self, p: &RemotePath, dir: bool) -> String {
        let mut url = self.base.clone();
        if !p.is_root() {
            let segments: Vec<String> =
                p.as_str().split('/').map(|s| uri_encode(s, true)).collect();
            url.push_str(&segments.join("/"));
            if dir {
                url.push('/');
            }
        }
        url
    }

    /// The decoded path of `p` on the server, as hrefs name it (no trailing `/`).
    fn href_of(&self, p: &RemotePath) -> String {
        if p.is_root() {
            self.base_path.clone()
        } else {
            format!("{}/{}", self.base_path, p.as_str())
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::TimedOut
        } else if e.is_connect() {
            ProviderError::Unreachable(format!("WebDAV server {}: {e}", self.base))
        } else {
            // A connection reset or closed midway: the same request may well succeed.
            ProviderError::Other {
                message: format!("WebDAV server {}: {e}", self.base),
                retryable: true,
            }
        }
    }

    /// Sends `req`; the answer's head, its body not read yet.
    async fn send(&self, req: Request) -> Result<reqwest::Response> {
        tracing::debug!(method = %req.method, url = %req.url, "webdav request");
        let mut builder = self.http.request(req.method.clone(), &req.url);
        if let Some((user, password)) = &self.auth {
            builder = builder.basic_auth(user, password.as_ref());
        }
        for (k, v) in &req.headers {
            builder = builder.header(*k, v.as_str());
        }
        let (body, len, progress) = match req.body {
            Body::Empty => (None, 0, None),
            Body::Bytes(b) => {
                let len = b.len() as u64;
                (Some(reqwest::Body::from(b)), len, None)
            }
            Body::Stream {
                body,
                len,
                progress,
            } => (Some(body), len, Some(progress)),
        };
        if body.is_some() || req.method == Method::PUT {
            builder = builder.header("content-length", len.to_string());
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        let sent = builder.send();
        let result = match progress {
            // An upload takes as long as it takes, as long as the server keeps taking bytes.
            Some(p) => tokio::select! {
                r = sent => r,
                () = p.stalled(self.timeout) => return Err(ProviderError::TimedOut),
            },
            None => match tokio::time::timeout(self.timeout, sent).await {
                Ok(r) => r,
                Err(_) => return Err(ProviderError::TimedOut),
            },
        };
        result.map_err(|e| self.transport_error(&e))
    }

    /// [`Client::send`], reading the whole (small) body.
    async fn call(&self, req: Request) -> Result<Answer> {
        let resp = self.send(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = match tokio::time::timeout(self.timeout, resp.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(self.transport_error(&e)),
            Err(_) => return Err(ProviderError::TimedOut),
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// The error an unexpected answer means, for an operation on `path`.
    fn error(&self, path: &RemotePath, what: &str, status: StatusCode) -> ProviderError {
        let message = format!(
            "WebDAV {what} {path}: HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        match status.as_u16() {
            401 | 403 => {
                tracing::warn!("{message}");
                ProviderError::PermissionDenied(path.clone())
            }
            404 => ProviderError::NotFound(path.clone()),
            412 => precondition_failed(path),
            507 => ProviderError::NoSpace,
            408 | 429 | 500..=599 => ProviderError::Other {
                message,
                retryable: true,
            },
            _ => ProviderError::Other {
                message,
                retryable: false,
            },
        }
    }

    /// A header that makes a request conditional on `url` being at `etag`: `If-Match`, or for
    /// a tag the server just reported as weak, the WebDAV `If` header (compared weakly).
    fn condition(url: &str, etag: &str, weak: bool) -> (&'static str, String) {
        if weak {
            ("if", format!("<{url}> ([{etag}])"))
        } else {
            ("if-match", etag.to_string())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The provider

struct Inner {
    client: Client,
}

/// A WebDAV folder as the remote. See the module documentation.
#[derive(Clone)]
pub struct WebDavProvider {
    inner: Arc<Inner>,
}

impl fmt::Debug for WebDavProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebDavProvider")
            .field("url", &self.inner.client.base)
            .field("user", &self.inner.client.auth.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl WebDavProvider {
    /// A provider over the folder at `cfg.url`. Nothing is sent yet: an unreachable server or
    /// a missing folder shows up as [`ProviderError::Unreachable`] on each call.
    pub fn new(cfg: WebDavConfig) -> std::result::Result<Self, WebDavConfigError> {
        Ok(WebDavProvider {
            inner: Arc::new(Inner {
                client: Client::new(&cfg)?,
            }),
        })
    }
}

impl Inner {
    /// A name the provider can create at `p`.
    fn check_new_name(&self, p: &RemotePath) -> Result<()> {
        let invalid = |reason| {
            Err(ProviderError::InvalidName {
                name: p.name().to_string(),
                reason,
            })
        };
        if p.name().len() > MAX_NAME_LEN {
            return invalid("name too long");
        }
        if is_hidden(p.name()) {
            return invalid("reserved for the server's uploads in progress");
        }
        if p.name().ends_with(LINK_SUFFIX) {
            return invalid("names ending in .rclonelink hold symlinks");
        }
        Ok(())
    }

    fn missing_root(&self) -> ProviderError {
        ProviderError::Unreachable(format!(
            "the WebDAV folder {} does not exist",
            self.client.base
        ))
    }

    /// The resources of a `PROPFIND` of `p` with `depth` 0 or 1; `None` when the server
    /// says nothing is there (not checked further).
    async fn propfind_raw(
        &self,
        p: &RemotePath,
        depth: u8,
    ) -> Result<Option<Vec<(String, Found)>>> {
        let mut req = Request::new(method("PROPFIND"), self.client.url(p, false))
            .header("depth", depth.to_string())
            .header("content-type", "application/xml; charset=utf-8");
        req.body = Body::Bytes(Bytes::from_static(PROPFIND_BODY.as_bytes()));
        let a = self.client.call(req).await?;
        match a.status.as_u16() {
            207 | 200 => parse_multistatus(&a.body, "stat").map(Some),
            // 400: a file on the way (Apache: "extraneous path components").
            404 | 409 | 410 | 400 => Ok(None),
            _ => Err(self.client.error(p, "stat", a.status)),
        }
    }

    /// `Ok` when the root folder exists (so that nothing at `p` really means not found), else
    /// the error saying why not.
    async fn confirm_missing(&self, p: &RemotePath) -> Result<()> {
        if p.is_root() {
            return Err(self.missing_root());
        }
        match self.propfind_raw(&RemotePath::root(), 0).await? {
            None => Err(self.missing_root()),
            Some(found) if found.first().is_some_and(|(_, f)| f.is_dir()) => Ok(()),
            Some(_) => Err(self.root_not_a_folder()),
        }
    }

    fn root_not_a_folder(&self) -> ProviderError {
        ProviderError::Unreachable(format!(
            "the WebDAV URL {} is not a folder",
            self.client.base
        ))
    }

    /// `PROPFIND` of `p` with `depth` 0 or 1: what it is, and its entries for depth 1. `None`
    /// when nothing is at `p` (the root folder checked to exist).
    async fn propfind(&self, p: &RemotePath, depth: u8) -> Result<Option<(Found, Vec<Found>)>> {
        match self.propfind_here(p, depth).await? {
            Some(found) => Ok(Some(found)),
            None => self.confirm_missing(p).await.map(|()| None),
        }
    }

    /// [`Inner::propfind`], but `None` when nothing is at `p` without checking the root folder.
    async fn propfind_here(
        &self,
        p: &RemotePath,
        depth: u8,
    ) -> Result<Option<(Found, Vec<Found>)>> {
        if p.as_str().split('/').any(is_hidden) {
            return Ok(None);
        }
        let Some(mut found) = self.propfind_raw(p, depth).await? else {
            return Ok(None);
        };
        let own = self.client.href_of(p);
        // A server that names the resource otherwise (another host name…): the first
        // response is the resource itself.
        let me = found.iter().position(|(href, _)| *href == own).unwrap_or(0);
        if me >= found.len() {
            return Err(ProviderError::Other {
                message: format!("WebDAV stat {p}: the answer names no resource"),
                retryable: true,
            });
        }
        let (_, mut this) = found.swap_remove(me);
        this.entry.name = p.name().to_string();
        if p.is_root() && !this.is_dir() {
            return Err(self.root_not_a_folder());
        }
        // Uploads in progress are kept (a directory holding one is not empty); `list` hides them.
        let children = found
            .into_iter()
            .map(|(_, f)| f)
            .filter(|f| {
                let ok = super::valid_component(&f.entry.name);
                if !ok {
                    tracing::warn!(%p, name = %f.entry.name, "webdav list: skipping an invalid name");
                }
                ok
            })
            .collect();
        Ok(Some((this, children)))
    }

    /// The resource at `p` (a file or directory, never a symlink).
    async fn stat_opt(&self, p: &RemotePath) -> Result<Option<Found>> {
        Ok(self.propfind(p, 0).await?.map(|(f, _)| f))
    }

    /// What is at `p`: the resource there, else the symlink there. `None` when neither is (the
    /// root folder checked to exist); names ending in `.rclonelink` are never found.
    async fn lookup(&self, p: &RemotePath) -> Result<Option<Found>> {
        if !p.is_root() && p.name().ends_with(LINK_SUFFIX) {
            return self.confirm_missing(p).await.map(|()| None);
        }
        if let Some((f, _)) = self.propfind_here(p, 0).await? {
            return Ok(Some(f));
        }
        if let Some(l) = self.stat_link(p).await? {
            return Ok(Some(l));
        }
        self.confirm_missing(p).await.map(|()| None)
    }

    /// The link file of the symlink at `p` (as a file), if there is one. Not checking the
    /// root folder when there is none. A name whose link file's name would be too long has
    /// none (the server refuses such names, and so does [`Provider::symlink`]).
    async fn link_file(&self, p: &RemotePath) -> Result<Option<Found>> {
        let lp = link_path(p);
        if p.is_root() || is_hidden(p.name()) || lp.name().len() > MAX_NAME_LEN {
            return Ok(None);
        }
        let found = self.propfind_here(&lp, 0).await.map_err(|e| match e {
            // Errors are about `p`, not its link file.
            ProviderError::PermissionDenied(_) => ProviderError::PermissionDenied(p.clone()),
            ProviderError::NotFound(_) => ProviderError::NotFound(p.clone()),
            ProviderError::PreconditionFailed { .. } => precondition_failed(p),
            e => e,
        })?;
        Ok(found.map(|(f, _)| f).filter(|f| !f.is_dir()))
    }

    /// The symlink at `p`, if there is one. Not checking the root folder when there is none.
    async fn stat_link(&self, p: &RemotePath) -> Result<Option<Found>> {
        let Some(file) = self.link_file(p).await? else {
            return Ok(None);
        };
        self.link_target(p, &link_path(p), file).await
    }

    /// The symlink `p` held by the link file `lp`, `seen` by a `PROPFIND`: a `GET` of it, whose
    /// ETag and `Last-Modified` (which go with the body) make the entry. `None` when it went.
    async fn link_target(
        &self,
        p: &RemotePath,
        lp: &RemotePath,
        seen: Found,
    ) -> Result<Option<Found>> {
        let too_large = || ProviderError::Other {
            message: format!("WebDAV symlink {p}: the link file is too large to be a link"),
            retryable: false,
        };
        if seen.entry.size > MAX_LINK_TARGET {
            return Err(too_large());
        }
        let a = self
            .client
            .call(Request::new(Method::GET, self.client.url(lp, false)))
            .await?;
        match a.status.as_u16() {
            200 if a.body.len() as u64 <= MAX_LINK_TARGET => {
                let target =
                    String::from_utf8(a.body.to_vec()).map_err(|_| ProviderError::Other {
                        message: format!("WebDAV symlink {p}: the target is not UTF-8"),
                        retryable: false,
                    })?;
                let etag = a.header("etag").map(strong_etag).or(seen.etag);
                let Some((tag, _)) = &etag else {
                    return Err(ProviderError::Other {
                        message: format!("WebDAV symlink {p}: the server gives no ETag"),
                        retryable: false,
                    });
                };
                let mtime = a
                    .header("last-modified")
                    .and_then(parse_http_date)
                    .unwrap_or(seen.entry.mtime);
                let entry = link_entry(p.name(), target, mtime, tag);
                Ok(Some(Found { entry, etag }))
            }
            200 => Err(too_large()),
            404 | 410 => Ok(None),
            _ => Err(self.client.error(p, "readlink", a.status)),
        }
    }

    /// Removes `at`, seen as `seen`, which a write or rename to `p` replaced (a symlink's link
    /// file, a file under a symlink): conditional on what was seen, so that nothing put there
    /// meanwhile (a directory…) is removed. What changed or went meanwhile is left.
    async fn remove_replaced(&self, p: &RemotePath, at: &RemotePath, seen: &Found) -> Result<()> {
        let url = self.client.url(at, false);
        match self.delete_url(p, url, seen.etag.as_ref()).await {
            Ok(true) | Err(ProviderError::NotFound(_)) => Ok(()),
            Ok(false) => {
                tracing::debug!(%p, %at, "webdav: what was replaced changed since, left");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The parent of `p` must be a directory: `NotFound` / `NotADirectory` name the parent.
    async fn check_parent(&self, p: &RemotePath) -> Result<()> {
        let Some(parent) = p.parent() else {
            return Ok(());
        };
        match self.stat_opt(&parent).await? {
            Some(f) if f.is_dir() => Ok(()),
            Some(_) => Err(ProviderError::NotADirectory(parent)),
            None => Err(ProviderError::NotFound(parent)),
        }
    }

    /// What a failed change of `p` means, once what is there and at the parent is known: the
    /// parent's `NotFound` / `NotADirectory`, or `fallback`.
    async fn classify(&self, p: &RemotePath, fallback: ProviderError) -> ProviderError {
        if let Err(e) = self.check_parent(p).await {
            return e;
        }
        fallback
    }

    /// A ranged, conditional `GET` from `start` to `end` (exclusive, `None`: the end of the
    /// file), and how many bytes of its body come before `start` (a server that ignored the
    /// range). `None` when the range starts at or after the end of the file (checked to still
    /// be at `version`).
    async fn get_range(
        &self,
        p: &RemotePath,
        version: &Version,
        start: u64,
        end: Option<u64>,
    ) -> Result<Option<(reqwest::Response, u64)>> {
        let url = self.client.url(p, false);
        let range = match end {
            Some(end) => format!("bytes={start}-{}", end - 1),
            None => format!("bytes={start}-"),
        };
        let expected = String::from_utf8_lossy(version.as_bytes()).into_owned();
        let mut if_match = true;
        loop {
            let mut req = Request::new(Method::GET, url.clone()).header("range", range.clone());
            if if_match {
                req = req.header("if-match", expected.clone());
            }
            let resp = self.client.send(req).await?;
            let etag = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(strong_etag);
            let status = resp.status();
            match status.as_u16() {
                200 | 206 => {
                    if etag.as_ref().map(|(e, _)| e.as_bytes()) != Some(version.as_bytes()) {
                        return Err(precondition_failed(p));
                    }
                    if status.as_u16() == 200 {
                        return Ok(Some((resp, start)));
                    }
                    let from = resp
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|r| r.strip_prefix("bytes "))
                        .and_then(|r| r.split('-').next())
                        .and_then(|s| s.trim().parse::<u64>().ok());
                    if from != Some(start) {
                        return Err(ProviderError::Other {
                            message: format!(
                                "WebDAV read {p}: asked for bytes from {start}, got {from:?}"
                            ),
                            retryable: false,
                        });
                    }
                    return Ok(Some((resp, 0)));
                }
                // Apache refuses `If-Match` on a file changed within the last second (its ETag
                // is weak then): read without it, comparing the answer's ETag.
                412 if if_match && etag.as_ref().is_some_and(|(e, w)| *w && *e == expected) => {
                    tracing::debug!(%p, "webdav read: weak ETag, reading without If-Match");
                    if_match = false;
                    continue;
                }
                412 => return Err(precondition_failed(p)),
                416 => {
                    return match self.stat_opt(p).await? {
                        Some(f) if f.is_dir() => Err(ProviderError::IsADirectory(p.clone())),
                        Some(f) if f.entry.version == *version => Ok(None),
                        Some(_) => Err(precondition_failed(p)),
                        None => Err(ProviderError::NotFound(p.clone())),
                    };
                }
                404 | 409 | 400 | 405 => {
                    return match self.stat_opt(p).await? {
                        Some(f) if f.is_dir() => Err(ProviderError::IsADirectory(p.clone())),
                        None => Err(ProviderError::NotFound(p.clone())),
                        Some(f) if f.entry.version != *version => Err(precondition_failed(p)),
                        Some(_) => Err(ProviderError::Other {
                            message: format!("WebDAV read {p}: HTTP {status} for a file there"),
                            retryable: true,
                        }),
                    };
                }
                _ => return Err(self.client.error(p, "read", status)),
            }
        }
    }

    /// `DELETE` of `url`, conditional on `etag` when given. `Ok(false)` when the condition
    /// failed.
    async fn delete_url(
        &self,
        p: &RemotePath,
        url: String,
        etag: Option<&(String, bool)>,
    ) -> Result<bool> {
        let mut req = Request::new(Method::DELETE, url.clone());
        if let Some((e, weak)) = etag {
            let (k, v) = Client::condition(&url, e, *weak);
            req = req.header(k, v);
        }
        let a = self.client.call(req).await?;
        match a.status.as_u16() {
            200 | 204 => Ok(true),
            // 207: some resource inside could not be removed.
            412 => Ok(false),
            404 => match self.confirm_missing(p).await {
                Ok(()) => Err(ProviderError::NotFound(p.clone())),
                Err(e) => Err(e),
            },
            _ => Err(self.client.error(p, "delete", a.status)),
        }
    }

    /// The entry of `p` right after this provider changed it.
    async fn stat_after(&self, p: &RemotePath, what: &str) -> Result<Found> {
        self.stat_opt(p).await?.ok_or_else(|| ProviderError::Other {
            message: format!("WebDAV {what} {p}: gone right after the change"),
            retryable: true,
        })
    }

    /// `MOVE` of the resource `from_at` (a directory when `dir`) to `to_at`, for a rename of
    /// `from` to `to` (the same, or their symlinks' link files).
    async fn move_to(
        &self,
        (from, from_at): (&RemotePath, &RemotePath),
        (to, to_at): (&RemotePath, &RemotePath),
        dir: bool,
        overwrite: bool,
    ) -> Result<()> {
        let req = Request::new(method("MOVE"), self.client.url(from_at, dir))
            .header("destination", self.client.url(to_at, dir))
            .header("overwrite", if overwrite { "T" } else { "F" });
        let a = self.client.call(req).await?;
        match a.status.as_u16() {
            201 | 204 => Ok(()),
            412 => Err(ProviderError::AlreadyExists(to.clone())),
            409 => Err(self
                .classify(to, self.client.error(to, "rename", a.status))
                .await),
            404 => match self.confirm_missing(from).await {
                Ok(()) => Err(ProviderError::NotFound(from.clone())),
                Err(e) => Err(e),
            },
            207 => Err(ProviderError::Other {
                message: format!("WebDAV rename {from} to {to}: only partly done"),
                retryable: true,
            }),
            _ => Err(self.client.error(from, "rename", a.status)),
        }
    }

    /// Whether the directory `p` has no entries.
    async fn dir_empty(&self, p: &RemotePath) -> Result<bool> {
        Ok(match self.propfind(p, 1).await? {
            Some((_, children)) => children.is_empty(),
            None => true,
        })
    }
}

/// The state of a read stream (see [`Provider::read`] for WebDAV).
struct ReadState {
    inner: Arc<Inner>,
    path: RemotePath,
    version: Version,
    /// Next byte to deliver.
    pos: u64,
    /// End of the range (exclusive), if bounded.
    end: Option<u64>,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Bytes of the current body to drop before `pos` (a server that ignored the range).
    skip: u64,
    resumes_left: u32,
    done: bool,
}

impl ReadState {
    async fn next(mut self) -> Option<(Result<Bytes>, ReadState)> {
        loop {
            if self.done || self.end.is_some_and(|e| self.pos >= e) {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                match self
                    .inner
                    .get_range(&self.path, &self.version, self.pos, self.end)
                    .await
                {
                    Ok(Some((resp, skip))) => {
                        self.body = Some(resp.bytes_stream().boxed());
                        self.skip = skip;
                        continue;
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                }
            };
            let failure = match tokio::time::timeout(self.inner.client.timeout, body.next()).await {
                Ok(Some(Ok(mut b))) => {
                    if self.skip > 0 {
                        let n = self.skip.min(b.len() as u64);
                        self.skip -= n;
                        b = b.slice(n as usize..);
                    }
                    if let Some(end) = self.end {
                        let room = end - self.pos;
                        if b.len() as u64 > room {
                            b.truncate(room as usize);
                        }
                    }
                    if b.is_empty() {
                        continue;
                    }
                    self.pos += b.len() as u64;
                    return Some((Ok(b), self));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => self.inner.client.transport_error(&e),
                Err(_) => ProviderError::TimedOut,
            };
            self.body = None;
            if self.resumes_left == 0 {
                self.done = true;
                return Some((Err(failure), self));
            }
            self.resumes_left -= 1;
            tracing::debug!(path = %self.path, pos = self.pos, %failure, "webdav read resumed");
        }
    }
}

#[async_trait::async_trait]
impl Provider for WebDavProvider {
    fn describe(&self) -> String {
        format!("webdav:{}", self.inner.client.base)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rename: true,
            conditional_write: true,
            symlinks: true,
            attrs: false,
            max_name_len: MAX_NAME_LEN,
        }
    }

    async fn stat(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "webdav stat");
        match self.inner.lookup(path).await? {
            Some(f) => Ok(f.entry),
            None => Err(ProviderError::NotFound(path.clone())),
        }
    }

    async fn list(&self, dir: &RemotePath, page: Option<String>) -> Result<ListPage> {
        tracing::debug!(%dir, ?page, "webdav list");
        let Some((this, children)) = self.inner.propfind(dir, 1).await? else {
            return Err(ProviderError::NotFound(dir.clone()));
        };
        if !this.is_dir() {
            return Err(ProviderError::NotADirectory(dir.clone()));
        }
        let inner = &self.inner;
        let mut entries = Vec::new();
        let mut links = Vec::new();
        for f in children {
            let name = &f.entry.name;
            if is_hidden(name) {
                continue;
            }
            match name.strip_suffix(LINK_SUFFIX) {
                None => entries.push(f.entry),
                Some(stem) if !f.is_dir() && super::valid_component(stem) && !is_hidden(stem) => {
                    links.push((stem.to_string(), f));
                }
                Some(_) => {
                    tracing::warn!(%dir, %name, "webdav list: skipping a name that holds no link");
                }
            }
        }
        // A file or folder of the same name is what `stat` finds there.
        let taken: HashSet<String> = entries.iter().map(|e| e.name.clone()).collect();
        // A listing gives no link targets: each is read (a few at a time).
        let mut reading = futures::stream::iter(
            links
                .into_iter()
                .filter(|(stem, _)| !taken.contains(stem))
                .filter_map(|(stem, f)| Some((dir.join(&stem)?, dir.join(&f.entry.name)?, f)))
                .map(|(p, lp, f)| async move { inner.link_target(&p, &lp, f).await }),
        )
        .buffered(8);
        while let Some(l) = reading.next().await {
            if let Some(f) = l? {
                entries.push(f.entry);
            }
        }
        drop(reading);
        Ok(ListPage {
            entries,
            next: None,
        })
    }

    async fn read(
        &self,
        path: &RemotePath,
        version: &Version,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        tracing::debug!(%path, offset, len, "webdav read");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        if len == 0 {
            return match inner.stat_opt(path).await? {
                Some(f) if f.is_dir() => Err(ProviderError::IsADirectory(path.clone())),
                Some(f) if &f.entry.version == version => Ok(Box::pin(futures::stream::empty())),
                Some(_) => Err(precondition_failed(path)),
                None => Err(ProviderError::NotFound(path.clone())),
            };
        }
        if is_hidden(path.name()) || path.name().ends_with(LINK_SUFFIX) {
            inner.confirm_missing(path).await?;
            return Err(ProviderError::NotFound(path.clone()));
        }
        // Ranges past 2^63 are as good as "to the end".
        let end = offset.checked_add(len).filter(|e| *e <= i64::MAX as u64);
        let Some((resp, skip)) = inner.get_range(path, version, offset, end).await? else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let state = ReadState {
            inner: Arc::clone(inner),
            path: path.clone(),
            version: version.clone(),
            pos: offset,
            end,
            body: Some(resp.bytes_stream().boxed()),
            skip,
            resumes_left: READ_RESUMES,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, ReadState::next)))
    }

    async fn write(
        &self,
        path: &RemotePath,
        body: ByteStream,
        len: u64,
        pre: Precondition,
        _attrs: ObjectAttrs,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%path, len, ?pre, "webdav write");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        inner.check_new_name(path)?;
        let url = inner.client.url(path, false);
        let mut req = Request::new(Method::PUT, url.clone());
        // A file written over a symlink replaces it (once the file is there).
        let (here, link_here) = futures::join!(
            async {
                match &pre {
                    Precondition::IfMatch(_) => inner.stat_opt(path).await,
                    _ => Ok(None),
                }
            },
            inner.link_file(path)
        );
        let link_here = link_here?;
        if link_here.is_some() && pre == Precondition::IfNotExists {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        match &pre {
            Precondition::None => {}
            Precondition::IfMatch(v) => {
                // Checked here (no byte is sent for a stale version, and a weak ETag is
                // noticed) and again by the server, atomically with the PUT.
                let found = match here? {
                    // Gone: because its folder went (or became a file), which the caller
                    // must know to make the folder again, or on its own.
                    None => return Err(inner.classify(path, precondition_failed(path)).await),
                    Some(f) if f.is_dir() => return Err(ProviderError::IsADirectory(path.clone())),
                    Some(f) => f,
                };
                match &found.etag {
                    Some((e, weak)) if e.as_bytes() == v.as_bytes() => {
                        let (k, value) = Client::condition(&url, e, *weak);
                        req = req.header(k, value);
                    }
                    _ => return Err(precondition_failed(path)),
                }
            }
            Precondition::IfNotExists => req = req.header("if-none-match", "*"),
        }
        let state = Arc::new(Mutex::new(BodyState::default()));
        if len <= SMALL_BODY {
            req.body = Body::Bytes(collect_exact(path, body, len).await?);
        } else {
            let progress = Arc::new(Progress::new());
            let checked = CheckedBody {
                inner: body,
                len,
                path: path.clone(),
                state: Arc::clone(&state),
                progress: Arc::clone(&progress),
                finished: false,
            };
            req.body = Body::Stream {
                body: reqwest::Body::wrap_stream(checked),
                len,
                progress,
            };
        }
        let sent = inner.client.call(req).await;
        // The body's own failure (the source's error, a wrong length) explains a failed send.
        if let Some(e) = state.lock().unwrap_or_else(|e| e.into_inner()).error.take() {
            return Err(e);
        }
        let a = sent?;
        if !a.status.is_success() {
            let status = a.status;
            return Err(match (status.as_u16(), &pre) {
                (412, Precondition::IfNotExists) => ProviderError::AlreadyExists(path.clone()),
                (412, _) => precondition_failed(path),
                (400 | 404 | 405 | 409, _) => match inner.stat_opt(path).await {
                    Ok(Some(f)) if f.is_dir() => match pre {
                        Precondition::IfNotExists => ProviderError::AlreadyExists(path.clone()),
                        _ => ProviderError::IsADirectory(path.clone()),
                    },
                    Ok(_) => {
                        inner
                            .classify(path, inner.client.error(path, "write", status))
                            .await
                    }
                    Err(e) => e,
                },
                _ => inner.client.error(path, "write", status),
            });
        }
        let answered = a.header("etag").map(|e| strong_etag(e).0);
        let f = inner.stat_after(path, "write").await?;
        let ours = f.entry.kind == EntryKind::File
            && f.entry.size == len
            && answered.is_none_or(|e| e.as_bytes() == f.entry.version.as_bytes());
        if !ours {
            return Err(ProviderError::Other {
                message: format!("WebDAV write {path}: changed by someone else right after"),
                retryable: true,
            });
        }
        if let Some(l) = &link_here {
            inner.remove_replaced(path, &link_path(path), l).await?;
        }
        Ok(f.entry)
    }

    async fn delete(&self, path: &RemotePath, pre: Precondition) -> Result<()> {
        tracing::debug!(%path, ?pre, "webdav delete");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        for _ in 0..ATTEMPTS {
            let found = match inner.lookup(path).await? {
                None => return Err(ProviderError::NotFound(path.clone())),
                Some(f) if f.is_dir() => return Err(ProviderError::IsADirectory(path.clone())),
                Some(f) => f,
            };
            match &pre {
                Precondition::None => {}
                Precondition::IfMatch(v) if *v == found.entry.version => {}
                Precondition::IfMatch(_) | Precondition::IfNotExists => {
                    return Err(precondition_failed(path))
                }
            }
            // Conditional on what was just seen, so that a directory put there meanwhile is
            // never removed with everything in it. A symlink is its link file.
            let url = if found.is_link() {
                inner.client.url(&link_path(path), false)
            } else {
                inner.client.url(path, false)
            };
            if inner.delete_url(path, url, found.etag.as_ref()).await? {
                return Ok(());
            }
            if pre != Precondition::None {
                return Err(precondition_failed(path));
            }
        }
        Err(ProviderError::Other {
            message: format!("WebDAV delete {path}: keeps changing"),
            retryable: true,
        })
    }

    async fn mkdir(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "webdav mkdir");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        inner.check_new_name(path)?;
        if inner.link_file(path).await?.is_some() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        let a = inner
            .client
            .call(Request::new(method("MKCOL"), inner.client.url(path, true)))
            .await?;
        match a.status.as_u16() {
            201 => Ok(inner.stat_after(path, "mkdir").await?.entry),
            405 => Err(ProviderError::AlreadyExists(path.clone())),
            // 400: a file at `path` (or on the way), as Apache sees `path/`.
            400 | 404 | 409 => match inner.stat_opt(path).await? {
                Some(_) => Err(ProviderError::AlreadyExists(path.clone())),
                None => Err(inner
                    .classify(path, inner.client.error(path, "mkdir", a.status))
                    .await),
            },
            _ => Err(inner.client.error(path, "mkdir", a.status)),
        }
    }

    async fn rmdir(&self, path: &RemotePath) -> Result<()> {
        tracing::debug!(%path, "webdav rmdir");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::NotSupported("removing the root folder"));
        }
        for _ in 0..ATTEMPTS {
            let Some((this, children)) = inner.propfind(path, 1).await? else {
                return Err(match inner.link_file(path).await? {
                    Some(_) => ProviderError::NotADirectory(path.clone()),
                    None => ProviderError::NotFound(path.clone()),
                });
            };
            if !this.is_dir() {
                return Err(ProviderError::NotADirectory(path.clone()));
            }
            // Uploads in progress count: the directory is not empty.
            if !children.is_empty() {
                return Err(ProviderError::NotEmpty(path.clone()));
            }
            // A DELETE of a collection removes everything in it: conditional on the ETag of
            // the directory seen empty, which changes when an entry is added.
            let url = inner.client.url(path, true);
            if inner.delete_url(path, url, this.etag.as_ref()).await? {
                return Ok(());
            }
        }
        Err(ProviderError::Other {
            message: format!("WebDAV rmdir {path}: keeps changing"),
            retryable: true,
        })
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%from, %to, replace, "webdav rename");
        let inner = &self.inner;
        if from.is_root() || to.is_root() {
            return Err(ProviderError::NotSupported(
                "renaming to or from the root folder",
            ));
        }
        inner.check_new_name(to)?;
        if to != from && to.starts_with(from) {
            return Err(ProviderError::InvalidName {
                name: to.name().to_string(),
                reason: "cannot move a directory into itself",
            });
        }
        let src = inner
            .lookup(from)
            .await?
            .ok_or_else(|| ProviderError::NotFound(from.clone()))?;
        inner.check_parent(to).await?;
        if from == to {
            return Ok(src.entry);
        }
        let dst = inner.lookup(to).await?;
        let link = src.is_link();
        let overwrite = match (&dst, src.is_dir()) {
            (None, _) => false,
            (Some(_), _) if !replace => return Err(ProviderError::AlreadyExists(to.clone())),
            (Some(d), true) if !d.is_dir() => return Err(ProviderError::NotADirectory(to.clone())),
            (Some(d), false) if d.is_dir() => return Err(ProviderError::IsADirectory(to.clone())),
            (Some(_), true) => {
                if !inner.dir_empty(to).await? {
                    return Err(ProviderError::NotEmpty(to.clone()));
                }
                true
            }
            // A file over a file, a link over a link: the MOVE replaces it. Over one of the
            // other kind, which lives under the other name, that goes once the MOVE is done.
            (Some(d), false) => d.is_link() == link,
        };
        let replaced = dst.filter(|d| !d.is_dir() && d.is_link() != link);
        let (from_at, to_at) = if link {
            (link_path(from), link_path(to))
        } else {
            (from.clone(), to.clone())
        };
        inner
            .move_to((from, &from_at), (to, &to_at), src.is_dir(), overwrite)
            .await?;
        if let Some(d) = &replaced {
            let at = if d.is_link() {
                link_path(to)
            } else {
                to.clone()
            };
            inner.remove_replaced(to, &at, d).await?;
        }
        let moved = if link {
            inner.stat_link(to).await?
        } else {
            inner.stat_opt(to).await?
        };
        let mut moved = moved.ok_or_else(|| ProviderError::Other {
            message: format!("WebDAV rename {to}: gone right after the change"),
            retryable: true,
        })?;
        moved.entry.name = to.name().to_string();
        Ok(moved.entry)
    }

    async fn symlink(&self, path: &RemotePath, target: &str) -> Result<RemoteEntry> {
        tracing::debug!(%path, "webdav symlink");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        inner.check_new_name(path)?;
        let invalid = |reason| ProviderError::InvalidName {
            name: path.name().to_string(),
            reason,
        };
        if target.len() as u64 > MAX_LINK_TARGET {
            return Err(invalid("symlink target longer than 4096 bytes"));
        }
        let lp = link_path(path);
        if lp.name().len() > MAX_NAME_LEN {
            return Err(invalid(
                "name too long for a symlink (its file adds .rclonelink)",
            ));
        }
        let (parent, here) = futures::join!(inner.check_parent(path), inner.lookup(path));
        parent?;
        if here?.is_some() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        let mut req =
            Request::new(Method::PUT, inner.client.url(&lp, false)).header("if-none-match", "*");
        req.body = Body::Bytes(Bytes::copy_from_slice(target.as_bytes()));
        let a = inner.client.call(req).await?;
        if !a.status.is_success() {
            let status = a.status;
            return Err(match status.as_u16() {
                412 => ProviderError::AlreadyExists(path.clone()),
                400 | 404 | 405 | 409 => {
                    inner
                        .classify(path, inner.client.error(path, "symlink", status))
                        .await
                }
                _ => inner.client.error(path, "symlink", status),
            });
        }
        let answered = a.header("etag").map(|e| strong_etag(e).0);
        let l = inner
            .stat_link(path)
            .await?
            .ok_or_else(|| ProviderError::Other {
                message: format!("WebDAV symlink {path}: gone right after the change"),
                retryable: true,
            })?;
        let ours = l.entry.symlink_target.as_deref() == Some(target)
            && answered.is_none_or(|e| e.as_bytes() == l.entry.version.as_bytes());
        if !ours {
            return Err(ProviderError::Other {
                message: format!("WebDAV symlink {path}: changed by someone else right after"),
                retryable: true,
            });
        }
        Ok(l.entry)
    }

    async fn set_attrs(&self, path: &RemotePath, attrs: ObjectAttrs) -> Result<RemoteEntry> {
        tracing::debug!(%path, ?attrs, "webdav set_attrs");
        if self.inner.lookup(path).await?.is_none() {
            return Err(ProviderError::NotFound(path.clone()));
        }
        Err(ProviderError::NotSupported(
            "permission bits and modification times on WebDAV",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_etags_and_names() {
        assert_eq!(href_path("/a%20b/c+d/").as_deref(), Some("/a b/c+d"));
        assert_eq!(href_path("http://h:8080/x/%C3%A9").as_deref(), Some("/x/é"));
        assert_eq!(href_path("http://h").as_deref(), Some(""));
        assert_eq!(href_path("/bad%2"), None);
        assert_eq!(strong_etag("W/\"6-abc\""), ("\"6-abc\"".to_string(), true));
        assert_eq!(strong_etag("\"6-abc\""), ("\"6-abc\"".to_string(), false));
        assert_eq!(strong_etag("abc"), ("\"abc\"".to_string(), false));
        assert_eq!(
            Client::condition("http://h/f", "\"1\"", true),
            ("if", "<http://h/f> ([\"1\"])".to_string())
        );
    }

    #[test]
    fn multistatus_of_apache() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:ns0="DAV:">
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/" xmlns:g0="DAV:">
<D:href>/dav/t/</D:href>
<D:propstat>
<D:prop>
<lp1:resourcetype><D:collection/></lp1:resourcetype>
<lp1:getetag>W/"1000-66201ee9787a6"</lp1:getetag>
<lp1:getlastmodified>Mon, 07 Dec 2026 02:24:57 GMT</lp1:getlastmodified>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
<D:propstat>
<D:prop>
<g0:getcontentlength/>
</D:prop>
<D:status>HTTP/1.1 404 Not Found</D:status>
</D:propstat>
</D:response>
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/">
<D:href>/dav/t/a%20b.txt</D:href>
<D:propstat>
<D:prop>
<lp1:resourcetype/>
<lp1:getcontentlength>6</lp1:getcontentlength>
<lp1:getetag>"6-66201ee9787a6"</lp1:getetag>
<lp1:getlastmodified>Mon, 07 Dec 2026 02:24:57 GMT</lp1:getlastmodified>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
</D:multistatus>"#;
        let found = parse_multistatus(body, "test").unwrap();
        assert_eq!(found.len(), 2);
        let (href, dir) = &found[0];
        assert_eq!(href, "/dav/t");
        assert_eq!(dir.entry.kind, EntryKind::Dir);
        assert_eq!(dir.entry.version, Version::from(DIR_VERSION));
        assert_eq!(dir.etag, Some(("\"1000-66201ee9787a6\"".to_string(), true)));
        let (href, file) = &found[1];
        assert_eq!(href, "/dav/t/a b.txt");
        assert_eq!(file.entry.name, "a b.txt");
        assert_eq!(file.entry.kind, EntryKind::File);
        assert_eq!(file.entry.size, 6);
        assert_eq!(file.entry.version, Version::from("\"6-66201ee9787a6\""));
        assert_eq!(
            file.entry.mtime,
            parse_http_date("Mon, 07 Dec 2026 02:24:57 GMT").unwrap()
        );
    }

    #[test]
    fn config_checks_and_redaction() {
        let cfg = WebDavConfig {
            url: "http://127.0.0.1:9/dav/a%20b".into(),
            username: Some("me".into()),
            password: Some("TOPSECRET".into()),
            request_timeout: Duration::from_secs(5),
        };
        assert!(!format!("{cfg:?}").contains("SECRET"));
        let p = WebDavProvider::new(cfg.clone()).unwrap();
        assert!(!format!("{p:?}").contains("SECRET"));
        assert_eq!(p.describe(), "webdav:http://127.0.0.1:9/dav/a%20b/");
        assert_eq!(p.inner.client.base_path, "/dav/a b");
        assert_eq!(
            p.inner
                .client
                .url(&RemotePath::parse("x y/é#?").unwrap(), true),
            "http://127.0.0.1:9/dav/a%20b/x%20y/%C3%A9%23%3F/"
        );
        for url in ["ftp://x/", "http://u:p@h/", "http://h/?q", "not a url"] {
            assert!(
                WebDavProvider::new(WebDavConfig {
                    url: url.into(),
                    ..cfg.clone()
                })
                .is_err(),
                "{url}"
            );
        }
        assert!(WebDavProvider::new(WebDavConfig {
            username: None,
            ..cfg
        })
        .is_err());
    }
}
