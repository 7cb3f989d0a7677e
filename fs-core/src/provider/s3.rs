//! [`S3Provider`]: a bucket (and a key prefix inside it) of any S3-compatible object store as the
//! remote, spoken to with plain HTTP(S) requests signed by hand (AWS Signature Version 4), so that
//! the core needs no AWS SDK and no OpenSSL (TLS is rustls on aws-lc-rs).
//!
//! # How the tree maps onto keys
//!
//! * A file at `a/b` is the object `<prefix>a/b`. Its version is the object's ETag, quoted, as
//!   the server returns it; its mtime is the object's `LastModified` (whole seconds); it has no
//!   mode (`attrs: false`). A server that lists objects without their ETag (s3s-fs) costs a
//!   `HEAD` per file the first time it is listed; the ETag is then remembered with the listed
//!   size and `LastModified` (a stale one is caught by the next read's `If-Match`).
//! * A directory is a key prefix: `a/` exists if the empty *marker* object `<prefix>a/` exists
//!   (what [`mkdir`](Provider::mkdir) writes) or any key starts with `<prefix>a/` (folders made
//!   by other tools often have no marker). Every directory reports size 0, version `dir` and
//!   mtime `UNIX_EPOCH`: a listing names subdirectories only by their common prefix, with no
//!   time, and a constant keeps `list` and `stat` in agreement without a request per directory.
//! * The root always exists; a missing bucket is [`ProviderError::Unreachable`] naming the
//!   bucket, never an empty tree (a `NotFound` is only concluded from a listing or a `GET`
//!   answer, which say `NoSuchBucket` when the bucket is gone; a `HEAD` cannot tell).
//! * A symlink at `a/l` is the object `a/l.rclonelink` whose body is the target (rclone's
//!   `--links` convention, so links written by either tool are links to the other); names
//!   ending in `.rclonelink` are therefore refused for files and folders. A listing reads each
//!   link's target (a `GET` per link).
//! * S3 has a folder only while keys are under it: before the last key of a folder without a
//!   marker (made by another tool) is deleted or moved away, the marker is written, so the
//!   folder stays, as it would on a disk.
//! * Keys of probe objects (`.syncoxide-probe-…`, see below) are hidden and cannot be created.
//!
//! # Operations
//!
//! * `stat`: `HEAD` of the key (a file), else a listing of `key/` limited to one key (a
//!   directory), else `NotFound`.
//! * `list`: `ListObjectsV2` with delimiter `/`; the continuation token is the page token.
//! * `read`: ranged `GET` with `If-Match: <version>` (the answer's ETag is compared as well, for
//!   servers that ignore `If-Match`), so a read never mixes versions. A body cut midway is
//!   resumed from the byte reached with a new ranged, conditional `GET` (a few times). A read
//!   that covers the whole object (from byte 0 to its end, as the drive's fetch of a file that
//!   fits in one chunk does) is checked against the MD5 the ETag publishes (a single-part
//!   upload's, not SSE-KMS or SSE-C), hashed as the pieces are handed out (above
//!   [`VERIFY_INLINE_MAX`] on a thread of its own, at most [`VERIFY_BACKLOG`] pieces behind):
//!   the last piece is handed out only once the bytes match,
//!   else the stream ends with a retryable error and nothing wrong is kept. A part of an object
//!   has no published hash to check against (S3 has none per range).
//! * `write`: up to [`MULTIPART_THRESHOLD`] (64 MiB), one `PUT` with `Content-Length`; larger
//!   files (up to S3's 5 TiB) are uploaded in parts, see "Multipart uploads". A body of up to
//!   1 MiB is gathered first and sent with `Content-MD5` and a signed payload hash (the server
//!   checks both); a larger one is streamed as `UNSIGNED-PAYLOAD` while its MD5 is computed,
//!   and the ETag the server answers is compared with it (an ETag that is not a plain MD5, as
//!   with SSE-KMS, is not compared). A body that is short, long or fails aborts the request,
//!   so the server never stores it. `IfMatch` is sent as `If-Match`, `IfNotExists` as
//!   `If-None-Match: *`.
//! * `mkdir` and `symlink` check the name and the parent as a write does (below), then `PUT` the
//!   marker or the link object with `If-None-Match: *`.
//! * Conditional writes: some S3-compatible servers ignore `If-Match` / `If-None-Match` on `PUT`.
//!   Before the first conditional write the provider probes once (two `PUT`s of a probe key with
//!   `If-None-Match: *`, the second must be refused with 412; one with a wrong `If-Match`, which
//!   must be refused too). Where the server does not honour a header, that precondition falls
//!   back to a `HEAD` and compare just before the `PUT`: a change by someone else in that window
//!   (one round trip) is overwritten. [`Capabilities::conditional_write`] is `true` until a probe
//!   shows otherwise. The probe key is deleted after; one left by a process killed during its
//!   probe stays hidden and is removed by a later probe once it is an hour old.
//! * `delete`: `HEAD` and compare the version, then `DELETE` with `If-Match` (AWS and moto
//!   honour it; on a server that ignores it, the same window applies). `rmdir`: `NotEmpty` if any key but the marker is
//!   under the prefix, else the marker is deleted.
//! * `rename` is not atomic (`rename: false`). A file is copied server-side (`CopyObject` with
//!   `x-amz-copy-source-if-match` and the source's ETag, and the copy's ETag is compared with
//!   it for servers that ignore that header), then the source is deleted. A directory is moved
//!   key by key: every object is copied (the marker last), then the sources are deleted (the
//!   marker last). A rename interrupted while copying can be run again: a target that has no
//!   marker and holds only same-ETag copies of source keys is taken as that earlier attempt,
//!   and keys already copied are skipped.
//! * `set_attrs` is `NotSupported` (S3 keeps neither modes nor settable times; the drive keeps
//!   them locally).
//!
//! # Checks before a write
//!
//! A small file costs two requests where nothing is in the way: the listing below and the `PUT`
//! (an untar of many small files goes at the rate the server answers requests); into a folder
//! this provider made, the `PUT` alone (see "Folders made here").
//!
//! * At the name: one `ListObjectsV2` with `prefix=<key>`, delimiter `/` and at most
//!   [`NAME_PROBE_KEYS`] keys shows the file `<key>`, the link object `<key>.rclonelink` and
//!   the folder `<key>/` (keys sort bytewise: `name` < `name-x` < `name.rclonelink` < `name/` <
//!   `name0`). A page filled by siblings sorting in between (`name.txt`, `name-2`, …) before it
//!   reaches the link or the folder is followed by a `HEAD` of the link or a listing of `<key>/`,
//!   whichever it could not show. A folder of the name refuses the write (`IsADirectory`, or
//!   `AlreadyExists` for `IfNotExists`); a link is replaced by the file (`AlreadyExists` for
//!   `IfNotExists`), its object deleted once the file is there.
//! * The parent: anything that listing found lies in the parent, which is therefore a folder.
//!   Else a folder this provider wrote a key under (or checked) less than [`DIR_SEEN_TTL`] (2 s)
//!   ago is taken as there; else a `HEAD` of its marker, else a listing of one key under it
//!   confirms it; only when none is there does a `stat` of the parent choose between
//!   `NotFound` and `NotADirectory`. A folder with keys under it counts as a folder even when
//!   another tool put a file of the same name beside it (`stat` calls that name a file).
//! * The window: a folder removed by someone else less than [`DIR_SEEN_TTL`] after this
//!   provider last wrote into it is not noticed by the next write into it. On S3 a folder is
//!   only its keys, so the `PUT` makes it again, holding just that file (what the drive does
//!   anyway on `NotFound`: it makes the parents again and writes the file there; only the
//!   marker is missing, and it is written before the folder's last key is deleted, see
//!   above): nothing is lost. A folder *replaced* by a file in that window ends up beside the
//!   file, both kept, where the drive would otherwise have moved the file aside and made the
//!   folder again (a conflict). Removing, renaming or putting a file over a folder through this
//!   provider ends the window for it at once.
//! * Folders made here: a folder this provider made (its `mkdir`'s check found nothing under
//!   it) has a view of its names ([`names`]): empty at first, renewed by one listing of the
//!   folder (one page, up to 1000 names) once older than [`NAMES_TTL`] (60 s, the drive's
//!   default poll interval: another tool's change is not seen sooner by the drive either),
//!   and every name this provider writes, removes or moves in it is noted before the request
//!   goes. A write, `mkdir` or `symlink` at a name the fresh view has no entry for needs no
//!   listing at the name (the folder is there, nothing is at the name); a name the view holds
//!   other than as a file this provider wrote is checked as above. The window: what another tool puts in such a folder
//!   is seen within [`NAMES_TTL`]; a folder or link it makes at a name in that time ends up
//!   beside the file written there (both kept, as above; a file it puts there is still caught
//!   by `If-None-Match`). A folder with more than one page of names, or made by another tool,
//!   is checked name by name.
//! * After the `PUT`: the entry's time is the `Last-Modified` of the `PUT`'s answer, the time
//!   the server gave the object (moto sends it); a server that sends none (AWS) is asked with a
//!   `HEAD`, since the answer's `Date` may be a second later than the object's time that a
//!   `stat` or a listing shows.
//!
//! # Multipart uploads
//!
//! * A file above the threshold is sent as parts of [`MIN_PART_SIZE`] (8 MiB; more for files
//!   above 78 GiB, so as to stay within S3's 10 000 parts): `CreateMultipartUpload`, then the
//!   parts read from the body in order, each gathered in memory and sent (`UploadPart`, 4 at a
//!   time, so at most 5 parts are in memory) with `Content-MD5`; the part's ETag is compared
//!   with its MD5. A request is watched like a streamed `PUT` (a server that stops taking bytes
//!   or answering for the request timeout fails it), and a part that fails retryably is tried
//!   again (4 tries, exponential backoff with jitter). Then `CompleteMultipartUpload` with the
//!   part list, given time in proportion to the size (the server joins the parts first).
//! * Resuming: the server is the journal. Before creating an upload, the provider looks for an
//!   unfinished upload of the same key (`ListMultipartUploads` with `prefix=<key>`, exact key,
//!   newest first) and lists its parts (`ListParts`, paged). A part already there whose ETag is
//!   the MD5 of the bytes this write would send as that part, with the same size, is skipped;
//!   anything else is sent (over it). Nothing is recorded locally: the local record could only
//!   say what was *sent*, the server's says what it *kept*, and a record beside the cache would
//!   have to be kept in step with the write-ahead log across crashes. As the part size depends
//!   only on the file's size, a write of the same file after a crash finds its parts; the MD5
//!   check makes skipping safe even if the upload was someone else's or held other data (and
//!   the completion names every part by its ETag, so parts changed by a concurrent writer in
//!   between make the completion fail, never a mixed object). Uploads of other keys and older
//!   uploads of the same key are left alone (they may be another machine's work in progress;
//!   a bucket lifecycle rule `AbortIncompleteMultipartUpload` removes forgotten ones).
//! * Preconditions: checked with a `HEAD` before the first part (so nothing is sent in vain)
//!   and again just before the completion; where the probe found conditional `PUT`s honoured,
//!   the completion also carries `If-Match` / `If-None-Match: *` (AWS honours both on
//!   `CompleteMultipartUpload`), so the check is atomic; elsewhere a change in the window between
//!   that `HEAD` and the completion is overwritten. A refusal (412, 409) aborts the upload
//!   (`AbortMultipartUpload`) and is `PreconditionFailed`, or `AlreadyExists` for `IfNotExists`.
//! * Integrity: S3 names an object made of parts `"<MD5 of the parts' MD5s>-<number of parts>"`;
//!   the answer's ETag is compared with that (a mismatch is a retryable error). If the object
//!   already has exactly that ETag and size when the upload is to be completed (an earlier
//!   attempt completed it but its answer was lost), the write is done and the upload aborted.
//!   A completion that fails retryably is tried again; a 200 carrying an error document (AWS
//!   can fail after its header) is a failure.
//! * A body that fails, is short or is long is never completed: after a retryable failure (of
//!   the source, or of the parts' requests) the upload and its finished parts stay for the
//!   next attempt (parts in flight are let finish); after any other failure the upload is
//!   aborted. A write dropped midway leaves the upload to be resumed.
//! * moto (the test server, 5.x) differs from AWS: it ignores `If-Match` on the completion
//!   (only the `HEAD` check holds there; it honours `If-None-Match: *`); it ignores
//!   `encoding-type=url` and paging in `ListMultipartUploads` and gives every upload the same
//!   `Initiated` time (the later listed counts as newer, which is right for both); its
//!   `ListParts` treats `part-number-marker` as an index and undercounts `IsTruncated` when parts
//!   are missing, so its paging is only right for up to 1000 parts (requests use the default
//!   page size, and a marker that does not advance ends the listing); it checks no
//!   `Content-MD5`; it answers a part for an unknown upload with a 500 rather than
//!   `NoSuchUpload`; and it answers the completion only after joining the parts (~40 s for
//!   2 GiB), where AWS sends its header at once and blanks while it works.
//!
//! # Errors
//!
//! Connection errors (refused, DNS, TLS) are `Unreachable` (naming the endpoint), timeouts
//! `TimedOut`, 403 `PermissionDenied`, 5xx / 429 / `SlowDown` a retryable `Other`, anything else
//! a non-retryable `Other` carrying the S3 error code and message. [`S3Config::request_timeout`]
//! bounds connecting, waiting for an answer, and every wait for the next piece of a body (sent
//! or received), not the whole transfer of a large file.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::{
    ByteStream, Capabilities, EntryKind, ListPage, ObjectAttrs, Precondition, Provider,
    ProviderError, RemoteEntry, RemotePath, Result, Version,
};

mod names;
pub use names::NAMES_TTL;
use names::{FolderNames, Lookup, Named, FOLDER_NAMES_MAX};

/// Names of the objects written by the conditional-write probe (hidden, reserved).
pub const PROBE_PREFIX: &str = ".syncoxide-probe-";
/// Age after which a probe object left behind is removed by the next probe.
const PROBE_MAX_AGE: Duration = Duration::from_secs(3600);

/// Longest name component, in bytes (like the other providers, so names behave the same).
const MAX_NAME_LEN: usize = 255;
/// S3's limit on a whole key, in bytes.
const MAX_KEY_LEN: usize = 1024;
/// Largest object one `PUT` may create.
const MAX_PUT: u64 = 5 << 30;
/// Files larger than this are uploaded in parts (multipart upload).
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// The smallest part this provider sends (but the last); larger files get larger parts, so as
/// to stay within [`MAX_PARTS`].
pub const MIN_PART_SIZE: u64 = 8 << 20;
/// S3's smallest part (but the last).
const S3_MIN_PART: u64 = 5 << 20;
/// S3's largest part.
const MAX_PART: u64 = 5 << 30;
/// S3's most parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// S3's largest object.
const MAX_OBJECT: u64 = 5 << 40;
/// Parts sent at the same time.
const PARTS_IN_FLIGHT: usize = 4;
/// How many times one part (or the completion) is tried on a retryable error.
const PART_ATTEMPTS: u32 = 4;
/// The first pause before a part is tried again (doubled each time, plus jitter).
const RETRY_BASE: Duration = Duration::from_millis(250);
/// Pieces a part's body is handed to the HTTP stack in (so that a stall is noticed).
const PART_PIECE: usize = 256 << 10;
/// The longest wait for `CompleteMultipartUpload` (the server joins the parts before it answers:
/// moto takes ~40 s for 2 GiB; AWS sends its 200 header early and blanks while it works).
const MAX_COMPLETE_WAIT: Duration = Duration::from_secs(15 * 60);
/// Bodies up to this size are gathered and sent with `Content-MD5`.
const SMALL_BODY: u64 = 1 << 20;
/// How many times a read whose body was cut is resumed.
const READ_RESUMES: u32 = 3;
/// The version of every directory.
const DIR_VERSION: &str = "dir";
/// A symlink `a/l` is the object `a/l.rclonelink` holding its target (rclone's `--links`
/// convention, so that links made by either tool are links to the other).
pub const LINK_SUFFIX: &str = ".rclonelink";
/// Longest symlink target stored.
const MAX_LINK_TARGET: u64 = 4096;
/// How long a folder this provider itself just wrote into (or made) is taken to exist without
/// asking again before a write into it: the window in which a folder removed by someone else is
/// not noticed by a write into it (see "Checks before a write" in the module documentation).
pub const DIR_SEEN_TTL: Duration = Duration::from_secs(2);
/// Folders remembered at most (expired ones are dropped when there are more).
const DIRS_SEEN_MAX: usize = 4096;
/// ETags learnt by `HEAD` for keys a server listed without one, kept at most (then forgotten
/// all at once and learnt again).
const LISTED_ETAGS_MAX: usize = 100_000;
/// `HEAD`s in flight for the ETags a listing left out.
const ETAG_HEADS_IN_FLIGHT: usize = 8;
/// Keys asked for in the listing that checks what else is at a name before a write: enough for
/// the usual siblings that sort between `name` and `name/` (`name.ext`, `name-2`, …).
const NAME_PROBE_KEYS: usize = 16;
/// SHA-256 of the empty string.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3Config {
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`, … (an optional path is
    /// kept in front of every request path).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Key prefix under which the tree lives (`""` for the whole bucket; `a/b` and `a/b/` are
    /// the same).
    pub prefix: String,
    /// `http://endpoint/bucket/key` (MinIO, most self-hosted servers) instead of
    /// `http://bucket.endpoint/key`.
    pub path_style: bool,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    /// See the module documentation, "Errors".
    pub request_timeout: Duration,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A configuration the provider cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("invalid S3 endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("invalid S3 bucket name {0:?}")]
    Bucket(String),
    #[error("invalid S3 key prefix {0:?} (components must be valid path names)")]
    Prefix(String),
    #[error("invalid S3 region {0:?}")]
    Region(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

// ---------------------------------------------------------------------------------------------
// Encoding, hashing and times

/// Percent-encodes `s` as SigV4 wants it: every byte but `A-Za-z0-9-._~` (and `/` unless
/// `encode_slash`).
pub(crate) fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Undoes the `encoding-type=url` of a listing (`+` is a space there).
fn url_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `20130524T000000Z`.
fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn from_civil(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> Option<SystemTime> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    })
}

/// `2026-12-06T14:34:13.000Z` (a listing's `LastModified`); fractions are dropped.
fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if s.get(4..5)? != "-" || s.get(10..11)? != "T" {
        return None;
    }
    from_civil(
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    )
}

/// `Sun, 06 Dec 2026 14:34:03 GMT` (the `Last-Modified` header).
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut it = s.split_whitespace().skip(1);
    let d = it.next()?.parse().ok()?;
    let m = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let y = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    from_civil(y, m, d, hh, mm, ss)
}

/// Now, truncated to whole seconds like the server's times.
fn now_secs() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// ETags with their quotes, whatever the server sent.
fn normalize_etag(e: &str) -> String {
    let e = e.trim();
    if e.starts_with('"') || e.starts_with("W/") {
        e.to_string()
    } else {
        format!("\"{e}\"")
    }
}

/// The MD5 inside a single-part upload's ETag (`None` for other ETags: multipart, SSE-KMS…).
fn etag_md5(etag: &str) -> Option<&str> {
    let inner = etag.strip_prefix('"')?.strip_suffix('"')?;
    (inner.len() == 32 && inner.bytes().all(|b| b.is_ascii_hexdigit())).then_some(inner)
}

// ---------------------------------------------------------------------------------------------
// SigV4

/// AWS Signature Version 4 for the `s3` service.
struct Signer {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    region: String,
}

impl Signer {
    /// The `Authorization` header for a request. `headers` are every header to sign
    /// (lowercase names; `host`, `x-amz-date` and `x-amz-content-sha256` among them); the
    /// canonical URI and query must already be encoded.
    fn authorization(
        &self,
        method: &str,
        canonical_uri: &str,
        canonical_query: &str,
        headers: &[(String, String)],
        payload_hash: &str,
        amz_date: &str,
    ) -> String {
        let mut sorted: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
                (k.to_ascii_lowercase(), v)
            })
            .collect();
        sorted.sort();
        let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_headers = sorted
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical_request = format!(
            "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
        );
        let date = &amz_date[..8.min(amz_date.len())];
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );
        let k_date = hmac_sha256(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac_sha256(&k_date, self.region.as_bytes());
        let k_service = hmac_sha256(&k_region, b"s3");
        let k_signing = hmac_sha256(&k_service, b"aws4_request");
        let signature = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_headers},Signature={signature}",
            self.access_key
        )
    }
}

// ---------------------------------------------------------------------------------------------
// XML bodies

#[derive(Debug, Default, Deserialize)]
struct ListBucketResult {
    #[serde(rename = "Contents", default)]
    contents: Vec<ListedObject>,
    #[serde(rename = "CommonPrefixes", default)]
    common_prefixes: Vec<CommonPrefix>,
    #[serde(rename = "IsTruncated", default)]
    is_truncated: bool,
    #[serde(rename = "NextContinuationToken")]
    next_continuation_token: Option<String>,
    #[serde(rename = "EncodingType")]
    encoding_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ListedObject {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "LastModified", default)]
    last_modified: String,
    #[serde(rename = "ETag", default)]
    etag: String,
    #[serde(rename = "Size", default)]
    size: u64,
}

#[derive(Debug, Deserialize)]
struct CommonPrefix {
    #[serde(rename = "Prefix")]
    prefix: String,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct CopyObjectResult {
    #[serde(rename = "ETag", default)]
    etag: String,
}

fn xml<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T> {
    let text = std::str::from_utf8(body).map_err(|_| ProviderError::Other {
        message: format!("S3 {what}: the answer is not UTF-8"),
        retryable: true,
    })?;
    quick_xml::de::from_str(text).map_err(|e| ProviderError::Other {
        message: format!("S3 {what}: cannot parse the answer: {e}"),
        retryable: true,
    })
}

/// The error document of an answer, if it has one.
fn error_body(body: &[u8]) -> Option<ErrorBody> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<Error") {
        return None;
    }
    quick_xml::de::from_str(text).ok()
}

// ---------------------------------------------------------------------------------------------
// The HTTP client

/// A request body.
enum Body {
    Empty,
    /// Sent with its SHA-256 as the signed payload hash.
    Bytes(Bytes),
    /// Sent as `UNSIGNED-PAYLOAD`, watched by a [`Progress`].
    Stream {
        body: reqwest::Body,
        len: u64,
        progress: Arc<Progress>,
    },
}

struct Request<'a> {
    method: Method,
    /// The full key; `None` for the bucket itself.
    key: Option<&'a str>,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Body,
    /// How long to wait for the answer (and its body) instead of the request timeout: a
    /// `CompleteMultipartUpload`, which the server may take minutes to answer.
    deadline: Option<Duration>,
}

impl<'a> Request<'a> {
    fn new(method: Method, key: Option<&'a str>) -> Self {
        Request {
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: Body::Empty,
            deadline: None,
        }
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }
}

/// An answer whose body has been read (small answers: listings, errors, copies).
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

/// When the HTTP stack last asked an upload body for more, so that a server that stops taking
/// bytes is noticed (a slow *source* is not the server's fault and is not counted).
pub(crate) struct Progress {
    start: Instant,
    /// Milliseconds since `start` of the last poll, or of the body's end.
    last_ms: AtomicU64,
    /// 0: the HTTP stack is waiting for us, 1: we are waiting for the source.
    waiting_on_source: AtomicU8,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_on_source: AtomicU8::new(0),
        }
    }
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    /// Resolves once the HTTP stack has not asked for more for `timeout`.
    pub(crate) async fn stalled(&self, timeout: Duration) {
        let tick = (timeout / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            if self.waiting_on_source.load(Ordering::Relaxed) == 1 {
                continue;
            }
            let idle = self
                .start
                .elapsed()
                .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
            if idle > timeout {
                return;
            }
        }
    }
}

/// Signs and sends requests to one bucket.
struct Client {
    http: reqwest::Client,
    /// Without a read timeout, for requests with a [`Request::deadline`] of their own.
    http_long: reqwest::Client,
    scheme: String,
    /// `host[:port]` as sent in the `Host` header.
    host: String,
    /// Path of the endpoint, without a trailing `/` (usually empty).
    base_path: String,
    bucket: String,
    path_style: bool,
    signer: Signer,
    timeout: Duration,
    endpoint: String,
}

/// Bucket names that work in both URL styles (DNS-compatible).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

impl Client {
    fn new(cfg: &S3Config) -> std::result::Result<Self, S3ConfigError> {
        let bad = |reason: &str| S3ConfigError::Endpoint {
            endpoint: cfg.endpoint.clone(),
            reason: reason.to_string(),
        };
        let url = reqwest::Url::parse(&cfg.endpoint).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("no query, fragment or user name allowed"));
        }
        let host_name = url.host_str().ok_or_else(|| bad("no host"))?;
        if !valid_bucket(&cfg.bucket) {
            return Err(S3ConfigError::Bucket(cfg.bucket.clone()));
        }
        if cfg.region.is_empty() || !cfg.region.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(S3ConfigError::Region(cfg.region.clone()));
        }
        let mut host = if cfg.path_style {
            host_name.to_string()
        } else {
            format!("{}.{host_name}", cfg.bucket)
        };
        if let Some(port) = url.port() {
            host = format!("{host}:{port}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.request_timeout)
            .read_timeout(cfg.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| S3ConfigError::Client(e.to_string()))?;
        let http_long = reqwest::Client::builder()
            .connect_timeout(cfg.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| S3ConfigError::Client(e.to_string()))?;
        Ok(Client {
            http,
            http_long,
            scheme: url.scheme().to_string(),
            host,
            base_path: url.path().trim_end_matches('/').to_string(),
            bucket: cfg.bucket.clone(),
            path_style: cfg.path_style,
            signer: Signer {
                access_key: cfg.access_key.clone(),
                secret_key: cfg.secret_key.clone(),
                session_token: cfg.session_token.clone(),
                region: cfg.region.clone(),
            },
            timeout: cfg.request_timeout,
            endpoint: cfg.endpoint.clone(),
        })
    }

    /// Another client to the same bucket, with the same settings.
    fn duplicate(&self) -> Client {
        Client {
            http: self.http.clone(),
            http_long: self.http_long.clone(),
            scheme: self.scheme.clone(),
            host: self.host.clone(),
            base_path: self.base_path.clone(),
            bucket: self.bucket.clone(),
            path_style: self.path_style,
            signer: Signer {
                access_key: self.signer.access_key.clone(),
                secret_key: self.signer.secret_key.clone(),
                session_token: self.signer.session_token.clone(),
                region: self.signer.region.clone(),
            },
            timeout: self.timeout,
            endpoint: self.endpoint.clone(),
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::TimedOut
        } else if e.is_connect() {
            ProviderError::Unreachable(format!("S3 endpoint {}: {e}", self.endpoint))
        } else {
            // A connection reset or closed midway: the same request may well succeed.
            ProviderError::Other {
                message: format!("S3 endpoint {}: {e}", self.endpoint),
                retryable: true,
            }
        }
    }

    /// Signs and sends `req`; the answer's head, its body not read yet.
    async fn send(&self, req: Request<'_>) -> Result<reqwest::Response> {
        let mut canonical_uri = self.base_path.clone();
        if self.path_style {
            canonical_uri.push('/');
            canonical_uri.push_str(&self.bucket);
        }
        match req.key {
            Some(key) => {
                canonical_uri.push('/');
                canonical_uri.push_str(&uri_encode(key, false));
            }
            None if self.path_style => {}
            None => canonical_uri.push('/'),
        }
        if canonical_uri.is_empty() {
            canonical_uri.push('/');
        }
        let mut query: Vec<(String, String)> = req
            .query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut url = format!("{}://{}{canonical_uri}", self.scheme, self.host);
        if !canonical_query.is_empty() {
            url.push('?');
            url.push_str(&canonical_query);
        }

        let (payload_hash, body, len, progress) = match req.body {
            Body::Empty => (EMPTY_SHA256.to_string(), None, 0, None),
            Body::Bytes(b) => {
                let len = b.len() as u64;
                (sha256_hex(&b), Some(reqwest::Body::from(b)), len, None)
            }
            Body::Stream {
                body,
                len,
                progress,
            } => (
                UNSIGNED_PAYLOAD.to_string(),
                Some(body),
                len,
                Some(progress),
            ),
        };
        let date = amz_date(SystemTime::now());
        let mut signed: Vec<(String, String)> = vec![
            ("host".into(), self.host.clone()),
            ("x-amz-date".into(), date.clone()),
            ("x-amz-content-sha256".into(), payload_hash.clone()),
        ];
        if let Some(token) = &self.signer.session_token {
            signed.push(("x-amz-security-token".into(), token.clone()));
        }
        for (k, v) in &req.headers {
            signed.push((k.to_string(), v.clone()));
        }
        let auth = self.signer.authorization(
            req.method.as_str(),
            &canonical_uri,
            &canonical_query,
            &signed,
            &payload_hash,
            &date,
        );
        let (http, timeout) = match req.deadline {
            Some(d) => (&self.http_long, d),
            None => (&self.http, self.timeout),
        };
        let mut builder = http.request(req.method.clone(), &url);
        for (k, v) in signed.iter().filter(|(k, _)| k != "host") {
            builder = builder.header(k.as_str(), v.as_str());
        }
        builder = builder.header("authorization", auth);
        if req.method == Method::PUT || req.method == Method::POST {
            builder = builder.header("content-length", len.to_string());
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        tracing::debug!(method = %req.method, key = ?req.key, query = %canonical_query, "s3 request");
        let sent = builder.send();
        let result = match progress {
            // An upload takes as long as it takes, as long as the server keeps taking bytes.
            Some(p) => tokio::select! {
                r = sent => r,
                () = p.stalled(self.timeout) => return Err(ProviderError::TimedOut),
            },
            None => match tokio::time::timeout(timeout, sent).await {
                Ok(r) => r,
                Err(_) => return Err(ProviderError::TimedOut),
            },
        };
        result.map_err(|e| self.transport_error(&e))
    }

    /// [`Client::send`], reading the whole (small) body.
    async fn call(&self, req: Request<'_>) -> Result<Answer> {
        let timeout = req.deadline.unwrap_or(self.timeout);
        let resp = self.send(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = match tokio::time::timeout(timeout, resp.bytes()).await {
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
    fn error(
        &self,
        path: &RemotePath,
        what: &str,
        status: StatusCode,
        body: &[u8],
    ) -> ProviderError {
        let err = error_body(body).unwrap_or_default();
        let code = err.code.as_str();
        if code == "NoSuchBucket" {
            return ProviderError::Unreachable(format!(
                "S3 bucket {:?} does not exist at {}",
                self.bucket, self.endpoint
            ));
        }
        let message = format!(
            "S3 {what} {path}: HTTP {}{}{}",
            status.as_u16(),
            if code.is_empty() {
                String::new()
            } else {
                format!(" {code}")
            },
            if err.message.is_empty() {
                String::new()
            } else {
                format!(": {}", err.message)
            }
        );
        match status.as_u16() {
            403 => {
                tracing::warn!("{message}");
                ProviderError::PermissionDenied(path.clone())
            }
            404 if code.is_empty() || code == "NoSuchKey" => ProviderError::NotFound(path.clone()),
            412 => ProviderError::PreconditionFailed { path: path.clone() },
            408 | 429 | 500..=599 => ProviderError::Other {
                message,
                retryable: true,
            },
            _ if matches!(
                code,
                "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
            ) =>
            {
                ProviderError::Other {
                    message,
                    retryable: true,
                }
            }
            _ => ProviderError::Other {
                message,
                retryable: false,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upload bodies

/// What a [`CheckedBody`] saw.
#[derive(Default)]
pub(crate) struct BodyState {
    sent: u64,
    md5: Option<Md5>,
    digest: Option<Vec<u8>>,
    /// Why the body was aborted: the source's error, or a length mismatch.
    pub(crate) error: Option<ProviderError>,
}

/// The error handed to the HTTP stack to abort an upload (the real one is in [`BodyState`]).
#[derive(Debug, thiserror::Error)]
#[error("upload body aborted")]
pub(crate) struct BodyAborted;

/// Streams a [`ByteStream`] into a request body: exactly `len` bytes or the request is aborted
/// (so the server never stores a partial object), computing the MD5 on the way.
pub(crate) struct CheckedBody {
    pub(crate) inner: ByteStream,
    pub(crate) len: u64,
    pub(crate) path: RemotePath,
    pub(crate) state: Arc<Mutex<BodyState>>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) finished: bool,
}

impl CheckedBody {
    fn abort(&mut self, e: ProviderError) -> Poll<Option<std::result::Result<Bytes, BodyAborted>>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.error.get_or_insert(e);
        self.finished = true;
        Poll::Ready(Some(Err(BodyAborted)))
    }
}

impl Stream for CheckedBody {
    type Item = std::result::Result<Bytes, BodyAborted>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        this.progress.touch();
        let item = this.inner.poll_next_unpin(cx);
        this.progress
            .waiting_on_source
            .store(u8::from(item.is_pending()), Ordering::Relaxed);
        match item {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => this.abort(e),
            Poll::Ready(Some(Ok(b))) => {
                let sent = {
                    let mut st = this.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.sent += b.len() as u64;
                    if let Some(m) = st.md5.as_mut() {
                        m.update(&b);
                    }
                    st.sent
                };
                if sent > this.len {
                    let msg = format!(
                        "{}: body is longer than the declared {} bytes",
                        this.path, this.len
                    );
                    return this.abort(ProviderError::Other {
                        message: msg,
                        retryable: false,
                    });
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(None) => {
                let mut st = this.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.sent != this.len {
                    let msg = format!(
                        "{}: body ended after {} of {} bytes",
                        this.path, st.sent, this.len
                    );
                    drop(st);
                    return this.abort(ProviderError::Other {
                        message: msg,
                        retryable: false,
                    });
                }
                if let Some(m) = st.md5.take() {
                    st.digest = Some(m.finalize().to_vec());
                }
                this.finished = true;
                this.progress.touch();
                Poll::Ready(None)
            }
        }
    }
}

/// Gathers a small body, exactly `len` bytes.
pub(crate) async fn collect_exact(
    path: &RemotePath,
    mut body: ByteStream,
    len: u64,
) -> Result<Bytes> {
    let mut data = Vec::with_capacity(len as usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (data.len() + chunk.len()) as u64 > len {
            return Err(ProviderError::Other {
                message: format!("{path}: body is longer than the declared {len} bytes"),
                retryable: false,
            });
        }
        data.extend_from_slice(&chunk);
    }
    if data.len() as u64 != len {
        return Err(ProviderError::Other {
            message: format!("{path}: body ended after {} of {len} bytes", data.len()),
            retryable: false,
        });
    }
    Ok(Bytes::from(data))
}

// ---------------------------------------------------------------------------------------------
// The provider

/// Which conditional `PUT` headers the server honours (see the module documentation).
#[derive(Clone, Copy, Debug)]
struct Conditions {
    if_none_match: bool,
    if_match: bool,
}

const PROBE_UNKNOWN: u8 = 0;
const PROBE_HONOURED: u8 = 1;
const PROBE_IGNORED: u8 = 2;

/// What is at a name besides what is asked for, see [`Inner::at_name`].
struct AtName {
    /// The object `name` (a file).
    file: bool,
    /// The link object `name.rclonelink`.
    link: bool,
    /// Keys under `name/` (a folder).
    dir: bool,
    /// Keys found beginning with `name` at all: they lie in the parent, which is a folder.
    parent_seen: bool,
    /// When the request this comes from was sent.
    as_of: Instant,
}

/// What a `HEAD` of a file says.
struct Head {
    etag: String,
    size: u64,
    mtime: SystemTime,
}

struct Inner {
    client: Client,
    /// `""` or `a/b/`.
    prefix: String,
    page_size: Option<usize>,
    /// Files larger than this are uploaded in parts.
    multipart_threshold: u64,
    /// The smallest part of a multipart upload.
    part_size: u64,
    conditions: tokio::sync::OnceCell<Conditions>,
    /// For `capabilities()`, which cannot wait for the probe.
    probe_state: AtomicU8,
    /// Folders this provider wrote a key under, and when it sent that request (see
    /// [`DIR_SEEN_TTL`]).
    dirs_seen: Mutex<std::collections::HashMap<RemotePath, Instant>>,
    /// The names in the folders this provider made (see [`names`]).
    names: Mutex<FolderNames>,
    /// For servers that list objects without their ETag (s3s-fs): key → (size, last modified
    /// as listed, the ETag a `HEAD` gave for them). See [`Inner::listed_etag`].
    listed_etags: Mutex<std::collections::HashMap<String, (u64, String, String)>>,
}

/// An S3 bucket (and prefix) as the remote. See the module documentation.
#[derive(Clone)]
pub struct S3Provider {
    inner: Arc<Inner>,
}

impl fmt::Debug for S3Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Provider")
            .field("endpoint", &self.inner.client.endpoint)
            .field("bucket", &self.inner.client.bucket)
            .field("prefix", &self.inner.prefix)
            .field("path_style", &self.inner.client.path_style)
            .finish_non_exhaustive()
    }
}

fn file_entry(name: &str, size: u64, mtime: SystemTime, etag: &str) -> RemoteEntry {
    RemoteEntry {
        name: name.to_string(),
        kind: EntryKind::File,
        size,
        mtime,
        version: Version::from(etag),
        mode: None,
        symlink_target: None,
    }
}

fn dir_entry(name: &str) -> RemoteEntry {
    RemoteEntry {
        name: name.to_string(),
        kind: EntryKind::Dir,
        size: 0,
        mtime: UNIX_EPOCH,
        version: Version::from(DIR_VERSION),
        mode: None,
        symlink_target: None,
    }
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

fn precondition_failed(p: &RemotePath) -> ProviderError {
    ProviderError::PreconditionFailed { path: p.clone() }
}

fn is_probe(p: &RemotePath) -> bool {
    p.as_str().split('/').any(|c| c.starts_with(PROBE_PREFIX))
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // Uniqueness, not secrecy, is what matters here.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = t.to_le_bytes();
    }
    hex(&b)
}

impl S3Provider {
    /// A provider over `cfg.bucket` under `cfg.prefix`. Nothing is sent yet: an unreachable
    /// endpoint or a missing bucket shows up as [`ProviderError::Unreachable`] on each call.
    pub fn new(cfg: S3Config) -> std::result::Result<Self, S3ConfigError> {
        let trimmed = cfg.prefix.trim_matches('/');
        let prefix = match RemotePath::parse(trimmed) {
            Some(p) if p.is_root() => String::new(),
            Some(p) if !is_probe(&p) => format!("{}/", p.as_str()),
            _ => return Err(S3ConfigError::Prefix(cfg.prefix.clone())),
        };
        if prefix.len() > MAX_KEY_LEN / 2 {
            return Err(S3ConfigError::Prefix(cfg.prefix.clone()));
        }
        let client = Client::new(&cfg)?;
        Ok(S3Provider {
            inner: Arc::new(Inner {
                client,
                prefix,
                page_size: None,
                multipart_threshold: MULTIPART_THRESHOLD,
                part_size: MIN_PART_SIZE,
                conditions: tokio::sync::OnceCell::new(),
                probe_state: AtomicU8::new(PROBE_UNKNOWN),
                dirs_seen: Mutex::default(),
                names: Mutex::new(FolderNames::new(NAMES_TTL)),
                listed_etags: Mutex::default(),
            }),
        })
    }

    /// Takes a listing of a folder this provider made as its names for `ttl` instead of
    /// [`NAMES_TTL`]; for tests of the renewal.
    pub fn with_names_ttl(self, ttl: Duration) -> Self {
        self.with_inner(|inner| inner.names = Mutex::new(FolderNames::new(ttl)))
    }

    /// Lists in pages of at most `n` keys (S3's default and maximum is 1000); for tests of
    /// paging.
    pub fn with_list_page_size(self, n: usize) -> Self {
        self.with_inner(|inner| inner.page_size = Some(n.clamp(1, 1000)))
    }

    /// Uploads files larger than `threshold` bytes (at most 5 GiB) in parts of at least
    /// `part_size` bytes (5 MiB to 5 GiB, S3's limits), instead of [`MULTIPART_THRESHOLD`] and
    /// [`MIN_PART_SIZE`]; for tests of multipart uploads with small files.
    pub fn with_multipart(self, threshold: u64, part_size: u64) -> Self {
        self.with_inner(|inner| {
            inner.multipart_threshold = threshold.min(MAX_PUT);
            inner.part_size = part_size.clamp(S3_MIN_PART, MAX_PART);
        })
    }

    /// This provider with a setting changed (a fresh copy when it is shared already).
    fn with_inner(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|arc| Inner {
            client: arc.client.duplicate(),
            prefix: arc.prefix.clone(),
            page_size: arc.page_size,
            multipart_threshold: arc.multipart_threshold,
            part_size: arc.part_size,
            conditions: tokio::sync::OnceCell::new(),
            probe_state: AtomicU8::new(PROBE_UNKNOWN),
            dirs_seen: Mutex::default(),
            names: Mutex::new(FolderNames::new(NAMES_TTL)),
            listed_etags: Mutex::default(),
        });
        change(&mut inner);
        S3Provider {
            inner: Arc::new(inner),
        }
    }

    /// The list page size set by [`S3Provider::with_list_page_size`].
    pub fn list_page_size(&self) -> Option<usize> {
        self.inner.page_size
    }

    /// Creates the bucket (in the configured region); an existing bucket of ours is fine. For
    /// test servers and first-time setup.
    pub async fn create_bucket(&self) -> Result<()> {
        let c = &self.inner.client;
        let mut req = Request::new(Method::PUT, None);
        if c.signer.region != "us-east-1" {
            let xml = format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                c.signer.region
            );
            req.body = Body::Bytes(Bytes::from(xml));
        }
        let a = c.call(req).await?;
        let code = error_body(&a.body).map(|e| e.code).unwrap_or_default();
        if a.status.is_success() || code == "BucketAlreadyOwnedByYou" {
            Ok(())
        } else {
            Err(c.error(&RemotePath::root(), "create bucket", a.status, &a.body))
        }
    }

    /// Every key under the prefix (relative to it, directory markers and probe objects
    /// included), sorted: the raw view of the tree, for tests and diagnostics.
    pub async fn object_keys(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .inner
                .list_raw(&RemotePath::root(), &self.inner.prefix, false, token, None)
                .await?;
            out.extend(
                page.contents
                    .iter()
                    .filter_map(|o| o.key.strip_prefix(&self.inner.prefix))
                    .map(str::to_string),
            );
            match page.next_continuation_token {
                Some(t) if page.is_truncated => token = Some(t),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }
}

impl S3Provider {
    /// Stores `data` at the key `<prefix><rel_key>` as is, with no checks: what another S3
    /// tool does (a folder with no marker, a name the drive cannot show). For tests.
    pub async fn put_raw(&self, rel_key: &str, data: &[u8]) -> Result<()> {
        let c = &self.inner.client;
        let key = format!("{}{rel_key}", self.inner.prefix);
        let mut req = Request::new(Method::PUT, Some(&key));
        req.body = Body::Bytes(Bytes::copy_from_slice(data));
        let a = c.call(req).await?;
        if a.status.is_success() {
            Ok(())
        } else {
            Err(c.error(&RemotePath::root(), "put", a.status, &a.body))
        }
    }
}

impl Inner {
    fn key(&self, p: &RemotePath) -> String {
        format!("{}{}", self.prefix, p.as_str())
    }

    /// The prefix of the keys inside directory `p` (its marker's key).
    fn dir_prefix(&self, p: &RemotePath) -> String {
        if p.is_root() {
            self.prefix.clone()
        } else {
            format!("{}{}/", self.prefix, p.as_str())
        }
    }

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
        if p.name().starts_with(PROBE_PREFIX) {
            return invalid("reserved for the provider's probe objects");
        }
        if p.name().ends_with(LINK_SUFFIX) {
            return invalid("names ending in .rclonelink hold symlinks on S3");
        }
        // The marker of a directory is one byte longer than the key.
        if self.dir_prefix(p).len() > MAX_KEY_LEN {
            return invalid("path too long for an S3 key (1024 bytes)");
        }
        Ok(())
    }

    /// One page of `ListObjectsV2` under `prefix` (keys decoded).
    async fn list_raw(
        &self,
        path: &RemotePath,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
        max_keys: Option<usize>,
    ) -> Result<ListBucketResult> {
        let mut req = Request::new(Method::GET, None)
            .query("list-type", "2")
            .query("encoding-type", "url")
            .query("prefix", prefix);
        if delimiter {
            req = req.query("delimiter", "/");
        }
        if let Some(t) = token {
            req = req.query("continuation-token", t);
        }
        if let Some(n) = max_keys {
            req = req.query("max-keys", n.to_string());
        }
        let a = self.client.call(req).await?;
        if !a.status.is_success() {
            return Err(self.client.error(path, "list", a.status, &a.body));
        }
        let mut page: ListBucketResult = xml(&a.body, "list")?;
        if page.encoding_type.as_deref() == Some("url") {
            let bad = || ProviderError::Other {
                message: format!("S3 list {path}: a key is not valid percent-encoded UTF-8"),
                retryable: false,
            };
            for o in &mut page.contents {
                o.key = url_decode(&o.key).ok_or_else(bad)?;
            }
            for c in &mut page.common_prefixes {
                c.prefix = url_decode(&c.prefix).ok_or_else(bad)?;
            }
        }
        Ok(page)
    }

    /// `HEAD` of the file at `p`; `None` when there is no such key.
    async fn head(&self, p: &RemotePath) -> Result<Option<Head>> {
        if p.is_root() || is_probe(p) {
            return Ok(None);
        }
        self.head_key(p, &self.key(p)).await
    }

    /// The key of the symlink at `p`.
    fn link_key(&self, p: &RemotePath) -> String {
        format!("{}{}{LINK_SUFFIX}", self.prefix, p.as_str())
    }

    /// `HEAD` of the symlink object of `p`.
    async fn head_link(&self, p: &RemotePath) -> Result<Option<Head>> {
        if p.is_root() || is_probe(p) {
            return Ok(None);
        }
        self.head_key(p, &self.link_key(p)).await
    }

    /// The target held by the link object `key` (of `p`), and the object's ETag.
    async fn link_target(&self, p: &RemotePath, key: &str) -> Result<Option<(String, String)>> {
        let a = self
            .client
            .call(Request::new(Method::GET, Some(key)))
            .await?;
        match a.status.as_u16() {
            200 if a.body.len() as u64 <= MAX_LINK_TARGET => {
                let etag = a.header("etag").map(normalize_etag).unwrap_or_default();
                let target =
                    String::from_utf8(a.body.to_vec()).map_err(|_| ProviderError::Other {
                        message: format!("S3 symlink {p}: the target is not UTF-8"),
                        retryable: false,
                    })?;
                Ok(Some((target, etag)))
            }
            200 => Err(ProviderError::Other {
                message: format!("S3 symlink {p}: the link object is too large to be a link"),
                retryable: false,
            }),
            404 => match self.client.error(p, "readlink", a.status, &a.body) {
                ProviderError::NotFound(_) => Ok(None),
                e => Err(e),
            },
            _ => Err(self.client.error(p, "readlink", a.status, &a.body)),
        }
    }

    /// The symlink at `p`, if there is one.
    async fn stat_link(&self, p: &RemotePath) -> Result<Option<RemoteEntry>> {
        let Some(h) = self.head_link(p).await? else {
            return Ok(None);
        };
        Ok(self
            .link_target(p, &self.link_key(p))
            .await?
            .map(|(target, etag)| {
                let etag = if etag.is_empty() { h.etag } else { etag };
                link_entry(p.name(), target, h.mtime, &etag)
            }))
    }

    /// Keeps directory `dir` in existence once its last key goes: S3 has folders only as long
    /// as keys are under them, and one made by another tool may have no marker.
    async fn keep_dir(&self, dir: &RemotePath) -> Result<()> {
        if dir.is_root() {
            return Ok(());
        }
        let marker = self.dir_prefix(dir);
        if self.head_key(dir, &marker).await?.is_some() {
            return Ok(());
        }
        let req = Request::new(Method::PUT, Some(&marker))
            .header("content-md5", base64(&Md5::digest(b"")));
        let a = self.client.call(req).await?;
        if a.status.is_success() {
            Ok(())
        } else {
            Err(self.client.error(dir, "mkdir", a.status, &a.body))
        }
    }

    /// `HEAD` of `key` (of `p`).
    async fn head_key(&self, p: &RemotePath, key: &str) -> Result<Option<Head>> {
        let a = self
            .client
            .call(Request::new(Method::HEAD, Some(key)))
            .await?;
        match a.status.as_u16() {
            200 => {
                let etag =
                    a.header("etag")
                        .map(normalize_etag)
                        .ok_or_else(|| ProviderError::Other {
                            message: format!("S3 head {p}: no ETag in the answer"),
                            retryable: false,
                        })?;
                let size = a
                    .header("content-length")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let mtime = a
                    .header("last-modified")
                    .and_then(parse_http_date)
                    .unwrap_or(UNIX_EPOCH);
                Ok(Some(Head { etag, size, mtime }))
            }
            404 => Ok(None),
            _ => Err(self.client.error(p, "head", a.status, &a.body)),
        }
    }

    /// The ETag of a listed object. Some servers (s3s-fs) list objects without one; the
    /// ETag then comes from a `HEAD`, remembered with the size and time the key was listed
    /// with, so that listing the folder again costs no `HEAD` while those stay the same.
    /// The size comes with it: the `HEAD`'s, which differs from the listed one when the object
    /// was replaced in between. `None`: the key is gone. A remembered ETag that is stale (the
    /// object was replaced within the listing's time resolution by one of the same size) is
    /// caught by the `If-Match` of the next read, which then fails as a changed file and is
    /// looked up again.
    async fn listed_etag(&self, p: &RemotePath, o: &ListedObject) -> Result<Option<(String, u64)>> {
        if !o.etag.is_empty() {
            return Ok(Some((normalize_etag(&o.etag), o.size)));
        }
        if let Some((size, modified, etag)) = self
            .listed_etags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&o.key)
        {
            if *size == o.size && *modified == o.last_modified {
                return Ok(Some((etag.clone(), o.size)));
            }
        }
        let Some(h) = self.head_key(p, &o.key).await? else {
            return Ok(None);
        };
        let mut memo = self.listed_etags.lock().unwrap_or_else(|e| e.into_inner());
        if memo.len() >= LISTED_ETAGS_MAX {
            memo.clear();
        }
        if h.size == o.size {
            memo.insert(
                o.key.clone(),
                (o.size, o.last_modified.clone(), h.etag.clone()),
            );
        }
        Ok(Some((h.etag, h.size)))
    }

    /// Whether any key lies under `p/` (its marker included). Fails with `Unreachable` when
    /// the bucket is missing, which is what makes a `NotFound` trustworthy.
    async fn dir_exists(&self, p: &RemotePath) -> Result<bool> {
        let page = self
            .list_raw(p, &self.dir_prefix(p), false, None, Some(1))
            .await?;
        Ok(!page.contents.is_empty() || !page.common_prefixes.is_empty())
    }

    async fn stat_opt(&self, p: &RemotePath) -> Result<Option<RemoteEntry>> {
        if p.is_root() {
            // Lists one key to tell a missing bucket from an empty one.
            self.dir_exists(p).await?;
            return Ok(Some(dir_entry("")));
        }
        if is_probe(p) || p.name().ends_with(LINK_SUFFIX) {
            return Ok(None);
        }
        // One round trip: the file, the link and the folder of that name.
        let (file, link, dir) = futures::join!(self.head(p), self.stat_link(p), self.dir_exists(p));
        if let Some(h) = file? {
            return Ok(Some(file_entry(p.name(), h.size, h.mtime, &h.etag)));
        }
        if let Some(l) = link? {
            return Ok(Some(l));
        }
        Ok(dir?.then(|| dir_entry(p.name())))
    }

    /// The parent of `p` must be a directory: `NotFound` / `NotADirectory` name the parent.
    /// A folder this provider wrote into (or checked) within [`DIR_SEEN_TTL`] is taken as
    /// there; else its marker is asked for (a `HEAD`: the folders the drive makes have one),
    /// else whether any key is under it; only when nothing is, what is at its name (a file, a
    /// link, nothing) says which error. A folder with keys under it is a folder even if a file
    /// of the same name lies beside it (another tool can make both; `stat` calls that name a
    /// file): the write goes into the folder, and nothing is lost.
    async fn check_parent(&self, p: &RemotePath) -> Result<()> {
        let Some(parent) = p.parent().filter(|q| !q.is_root()) else {
            return Ok(());
        };
        if self.dir_seen(&parent) {
            return Ok(());
        }
        let asked = Instant::now();
        let marker = self.dir_prefix(&parent);
        if self.head_key(&parent, &marker).await?.is_some() || self.dir_exists(&parent).await? {
            self.saw_dir(&parent, asked);
            return Ok(());
        }
        match self.stat_opt(&parent).await? {
            Some(e) if e.kind == EntryKind::Dir => Ok(()),
            Some(_) => Err(ProviderError::NotADirectory(parent)),
            None => Err(ProviderError::NotFound(parent)),
        }
    }

    /// What is at the name of `p`: the file, the link object and the folder of that name, from
    /// one listing of the keys that begin with `p`'s key (delimiter `/`), in place of a `HEAD`
    /// of the file, a `HEAD` of the link and a listing of `p/`. Keys come in byte order:
    /// `p` < `p-x` < `p.rclonelink` < `p/` < `p0`, so the first page holds the file, and the
    /// link and the folder unless siblings sorting between them (`p.txt`, `p-2`, …) fill it
    /// first: what a truncated page could not show is then asked for on its own.
    async fn at_name(&self, p: &RemotePath) -> Result<AtName> {
        if let Some(at) = self.at_name_known(p).await? {
            return Ok(at);
        }
        let key = self.key(p);
        let link_key = self.link_key(p);
        let dir_key = format!("{key}/");
        let max = self
            .page_size
            .map_or(NAME_PROBE_KEYS, |n| n.min(NAME_PROBE_KEYS));
        let as_of = Instant::now();
        let page = self.list_raw(p, &key, true, None, Some(max)).await?;
        let mut at = AtName {
            file: page.contents.iter().any(|o| o.key == key),
            link: page.contents.iter().any(|o| o.key == link_key),
            dir: page.common_prefixes.iter().any(|c| c.prefix == dir_key),
            parent_seen: !page.contents.is_empty() || !page.common_prefixes.is_empty(),
            as_of,
        };
        if page.is_truncated {
            // The page holds every name up to the last it lists.
            let last = page
                .contents
                .iter()
                .map(|o| o.key.as_str())
                .chain(page.common_prefixes.iter().map(|c| c.prefix.as_str()))
                .max()
                .unwrap_or("");
            let (link_known, dir_known) = (last >= link_key.as_str(), last >= dir_key.as_str());
            let (link, dir) = futures::join!(
                async {
                    if link_known {
                        Ok(at.link)
                    } else {
                        self.head_link(p).await.map(|h| h.is_some())
                    }
                },
                async {
                    if dir_known {
                        Ok(at.dir)
                    } else {
                        self.dir_exists(p).await
                    }
                },
            );
            at.link = link?;
            at.dir = dir?;
        }
        Ok(at)
    }

    /// What is at the name of `p` by the view of its folder, where this provider made that
    /// folder (see [`names`]): one listing of the folder when the view is older than
    /// [`NAMES_TTL`], in place of one at each name. `None`: check the name itself.
    async fn at_name_known(&self, p: &RemotePath) -> Result<Option<AtName>> {
        let known = |l: Lookup| {
            let (file, as_of) = match l {
                Lookup::Free(t) => (false, t),
                Lookup::File(t) => (true, t),
                Lookup::Unknown | Lookup::Refresh(_) => return None,
            };
            Some(AtName {
                file,
                link: false,
                dir: false,
                parent_seen: true,
                as_of,
            })
        };
        let Some(dir) = p.parent() else {
            return Ok(None);
        };
        let ticket = match self.names().lookup(p) {
            Lookup::Refresh(t) => t,
            l => return Ok(known(l)),
        };
        let asked = Instant::now();
        let prefix = self.dir_prefix(&dir);
        let max = self
            .page_size
            .map_or(FOLDER_NAMES_MAX, |n| n.min(FOLDER_NAMES_MAX));
        let page = match self.list_raw(&dir, &prefix, true, None, Some(max)).await {
            Ok(page) => page,
            Err(e) => {
                self.names().refresh_failed(&dir, ticket);
                return Err(e);
            }
        };
        let mut listed = Vec::with_capacity(page.contents.len() + page.common_prefixes.len());
        for o in &page.contents {
            let Some(name) = o.key.strip_prefix(&prefix).filter(|n| !n.is_empty()) else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(LINK_SUFFIX) {
                listed.push((stem.to_string(), Named::Maybe));
                listed.push((name.to_string(), Named::Maybe));
            } else {
                listed.push((name.to_string(), Named::File));
            }
        }
        for c in &page.common_prefixes {
            if let Some(name) = c.prefix.strip_prefix(&prefix) {
                listed.push((name.trim_end_matches('/').to_string(), Named::Maybe));
            }
        }
        let anything = !page.contents.is_empty() || !page.common_prefixes.is_empty();
        let mut names = self.names();
        names.refreshed(&dir, ticket, asked, listed, anything, !page.is_truncated);
        Ok(known(names.known(p)))
    }

    fn names(&self) -> std::sync::MutexGuard<'_, FolderNames> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this provider wrote a key under folder `d` (or found it there before a write)
    /// less than [`DIR_SEEN_TTL`] ago.
    fn dir_seen(&self, d: &RemotePath) -> bool {
        self.dirs_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(d)
            .is_some_and(|t| t.elapsed() < DIR_SEEN_TTL)
    }

    /// Folder `d` was there when a request sent at `at` was answered.
    fn saw_dir(&self, d: &RemotePath, at: Instant) {
        if d.is_root() {
            return;
        }
        let mut seen = self.dirs_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= DIRS_SEEN_MAX {
            seen.retain(|_, t| t.elapsed() < DIR_SEEN_TTL);
            if seen.len() >= DIRS_SEEN_MAX {
                seen.clear();
            }
        }
        let t = seen.entry(d.clone()).or_insert(at);
        *t = (*t).max(at);
    }

    /// `p` and everything under it are no folders this provider vouches for any more (it
    /// removed or moved them, or put a file or link at `p`).
    fn forget_dirs(&self, p: &RemotePath) {
        self.dirs_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d, _| !d.starts_with(p));
        self.names().forget(p);
    }

    /// The conditional headers the server honours, probed once.
    async fn conditions(&self) -> Result<Conditions> {
        self.conditions
            .get_or_try_init(|| async {
                let c = self.probe().await?;
                tracing::debug!(?c, "s3 conditional write probe");
                if !(c.if_none_match && c.if_match) {
                    tracing::warn!(
                        bucket = %self.client.bucket,
                        "the S3 server ignores conditional PUT headers ({c:?}): \
                         preconditions fall back to a check just before each write"
                    );
                }
                let state = if c.if_none_match && c.if_match {
                    PROBE_HONOURED
                } else {
                    PROBE_IGNORED
                };
                self.probe_state.store(state, Ordering::Relaxed);
                Ok(c)
            })
            .await
            .copied()
    }

    async fn probe(&self) -> Result<Conditions> {
        let path = RemotePath::root();
        let key = format!("{}{PROBE_PREFIX}{}", self.prefix, random_hex());
        let put = |header: Option<(&'static str, &'static str)>| {
            let mut req = Request::new(Method::PUT, Some(&key))
                .header("content-md5", base64(&Md5::digest(b"probe")));
            if let Some((k, v)) = header {
                req = req.header(k, v);
            }
            req.body = Body::Bytes(Bytes::from_static(b"probe"));
            self.client.call(req)
        };
        let first = put(Some(("if-none-match", "*"))).await?;
        let result = async {
            if !first.status.is_success() {
                return Err(self.client.error(&path, "probe", first.status, &first.body));
            }
            let second = put(Some(("if-none-match", "*"))).await?;
            let if_none_match = match second.status.as_u16() {
                412 | 409 => true,
                s if (200..300).contains(&s) || s == 501 || s == 400 => false,
                _ => {
                    return Err(self
                        .client
                        .error(&path, "probe", second.status, &second.body))
                }
            };
            let third = put(Some(("if-match", "\"syncoxide-no-such-etag\""))).await?;
            let if_match = match third.status.as_u16() {
                412 | 409 => true,
                s if (200..300).contains(&s) || s == 501 || s == 400 => false,
                _ => return Err(self.client.error(&path, "probe", third.status, &third.body)),
            };
            Ok(Conditions {
                if_none_match,
                if_match,
            })
        }
        .await;
        // Best effort: a probe object left behind is hidden anyway.
        if let Err(e) = self
            .client
            .call(Request::new(Method::DELETE, Some(&key)))
            .await
        {
            tracing::debug!(%e, "s3 probe cleanup failed");
        }
        self.sweep_old_probes().await;
        result
    }

    /// Removes probe objects that a process killed in the middle of its probe left behind, once
    /// they are an hour old (a younger one may be another machine's probe in progress). Best
    /// effort, one page.
    async fn sweep_old_probes(&self) {
        let prefix = format!("{}{PROBE_PREFIX}", self.prefix);
        let page = match self
            .list_raw(&RemotePath::root(), &prefix, true, None, Some(100))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%e, "s3 probe sweep: listing failed");
                return;
            }
        };
        let old = SystemTime::now() - PROBE_MAX_AGE;
        for o in &page.contents {
            let stale = parse_iso8601(&o.last_modified).is_some_and(|t| t < old);
            // Probe names are hex: the key is the same URL-encoded or not.
            if stale && o.key.starts_with(&prefix) {
                let key = o.key.clone();
                if let Err(e) = self
                    .client
                    .call(Request::new(Method::DELETE, Some(&key)))
                    .await
                {
                    tracing::debug!(%e, %key, "s3 probe sweep: delete failed");
                }
            }
        }
    }

    /// A ranged, conditional `GET` from `start` to `end` (exclusive, `None`: the end of the
    /// file). `None` when the range starts at or after the end of the file (checked to still be
    /// at `version`).
    async fn get_range(
        &self,
        p: &RemotePath,
        version: &Version,
        start: u64,
        end: Option<u64>,
    ) -> Result<Option<reqwest::Response>> {
        let key = self.key(p);
        let range = match end {
            Some(end) => format!("bytes={start}-{}", end - 1),
            None => format!("bytes={start}-"),
        };
        let req = Request::new(Method::GET, Some(&key))
            .header("range", range)
            .header("if-match", String::from_utf8_lossy(version.as_bytes()));
        let resp = self.client.send(req).await?;
        match resp.status().as_u16() {
            200 | 206 => {
                let etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(normalize_etag);
                if etag.as_deref().map(str::as_bytes) != Some(version.as_bytes()) {
                    return Err(precondition_failed(p));
                }
                if resp.status().as_u16() == 200 && start > 0 {
                    // A server that ignores Range: only a full body from 0 is usable as is.
                    return Err(ProviderError::Other {
                        message: format!("S3 read {p}: the server ignored the Range header"),
                        retryable: false,
                    });
                }
                Ok(Some(resp))
            }
            status => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let body = tokio::time::timeout(self.client.timeout, resp.bytes())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or_default();
                match status.as_u16() {
                    412 => Err(precondition_failed(p)),
                    416 => match self.head(p).await? {
                        Some(h) if h.etag.as_bytes() == version.as_bytes() => Ok(None),
                        Some(_) => Err(precondition_failed(p)),
                        None => Err(ProviderError::NotFound(p.clone())),
                    },
                    404 => match self.client.error(p, "read", status, &body) {
                        ProviderError::NotFound(_) if self.dir_exists(p).await? => {
                            Err(ProviderError::IsADirectory(p.clone()))
                        }
                        e => Err(e),
                    },
                    _ => Err(self.client.error(p, "read", status, &body)),
                }
            }
        }
    }

    /// Copies `from_key` to `to_key` if the source is still at `etag`; the copy's ETag.
    async fn copy(
        &self,
        path: &RemotePath,
        from_key: &str,
        to_key: &str,
        etag: &str,
    ) -> Result<String> {
        let source = uri_encode(&format!("{}/{from_key}", self.client.bucket), false);
        let req = Request::new(Method::PUT, Some(to_key))
            .header("x-amz-copy-source", source)
            .header("x-amz-copy-source-if-match", etag);
        let a = self.client.call(req).await?;
        if !a.status.is_success() {
            return Err(match a.status.as_u16() {
                412 => precondition_failed(path),
                404 => match self.client.error(path, "copy", a.status, &a.body) {
                    ProviderError::NotFound(_) => precondition_failed(path),
                    e => e,
                },
                _ => self.client.error(path, "copy", a.status, &a.body),
            });
        }
        // A copy can fail after its 200 header was sent: the body is then an error document.
        if error_body(&a.body).is_some() {
            return Err(self.client.error(
                path,
                "copy",
                StatusCode::INTERNAL_SERVER_ERROR,
                &a.body,
            ));
        }
        let result: CopyObjectResult = xml(&a.body, "copy")?;
        let copied = normalize_etag(&result.etag);
        // For servers that ignore x-amz-copy-source-if-match: a plain object's copy has the
        // same ETag, so a different one means the source changed in between.
        if copied != etag && etag_md5(etag).is_some() {
            return Err(precondition_failed(path));
        }
        Ok(copied)
    }

    async fn delete_key(&self, path: &RemotePath, key: &str) -> Result<()> {
        self.delete_key_if(path, key, None).await
    }

    /// `DELETE` of `key`, with `If-Match: etag` when given (AWS and moto honour it; where a
    /// server ignores it, the caller's `HEAD` just before is the only check).
    async fn delete_key_if(&self, path: &RemotePath, key: &str, etag: Option<&str>) -> Result<()> {
        let mut req = Request::new(Method::DELETE, Some(key));
        if let Some(e) = etag {
            req = req.header("if-match", e);
        }
        let a = self.client.call(req).await?;
        if a.status == StatusCode::PRECONDITION_FAILED && etag.is_some() {
            return Err(precondition_failed(path));
        }
        if a.status.is_success()
            || a.status == StatusCode::NOT_FOUND
                && error_body(&a.body).is_none_or(|e| e.code != "NoSuchBucket")
        {
            Ok(())
        } else {
            Err(self.client.error(path, "delete", a.status, &a.body))
        }
    }

    /// Every object under `prefix` (no delimiter): relative key → ETag.
    async fn all_under(&self, path: &RemotePath, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_raw(path, prefix, false, token, None).await?;
            for o in &page.contents {
                if let Some(rel) = o.key.strip_prefix(prefix) {
                    if let Some((etag, _)) = self.listed_etag(path, o).await? {
                        out.push((rel.to_string(), etag));
                    }
                }
            }
            match page.next_continuation_token {
                Some(t) if page.is_truncated => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn rename_dir(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry> {
        let src_prefix = self.dir_prefix(from);
        let dst_prefix = self.dir_prefix(to);
        let src = self.all_under(from, &src_prefix).await?;
        let dst = self.all_under(to, &dst_prefix).await?;
        let src_map: std::collections::HashMap<&str, &str> =
            src.iter().map(|(k, e)| (k.as_str(), e.as_str())).collect();
        // An earlier attempt that stopped while copying: no marker yet, only same-ETag copies.
        let resumed = !dst.is_empty()
            && dst
                .iter()
                .all(|(k, e)| !k.is_empty() && src_map.get(k.as_str()) == Some(&e.as_str()));
        if !dst.is_empty() && !resumed {
            if !replace {
                return Err(ProviderError::AlreadyExists(to.clone()));
            }
            if dst.iter().any(|(k, _)| !k.is_empty()) {
                return Err(ProviderError::NotEmpty(to.clone()));
            }
        }
        let dst_map: std::collections::HashMap<&str, &str> =
            dst.iter().map(|(k, e)| (k.as_str(), e.as_str())).collect();
        // Children first, the marker (the empty relative key) last, so that the target has a
        // marker only once everything is there.
        let mut order: Vec<(String, String)> = src.clone();
        order.sort_by_key(|(k, _)| k.is_empty());
        let copies: Vec<(String, String, String)> = order
            .iter()
            .filter(|(k, e)| k.is_empty() || dst_map.get(k.as_str()) != Some(&e.as_str()))
            .map(|(k, e)| {
                (
                    format!("{src_prefix}{k}"),
                    format!("{dst_prefix}{k}"),
                    e.clone(),
                )
            })
            .collect();
        let deletes: Vec<String> = order
            .iter()
            .map(|(k, _)| format!("{src_prefix}{k}"))
            .collect();
        let mut copying = futures::stream::iter(
            copies
                .into_iter()
                .map(|(f, t, e)| async move { self.copy(from, &f, &t, &e).await }),
        )
        .buffered(4);
        while let Some(r) = copying.next().await {
            r?;
        }
        drop(copying);
        let mut deleting = futures::stream::iter(
            deletes
                .into_iter()
                .map(|key| async move { self.delete_key(from, &key).await }),
        )
        .buffered(4);
        while let Some(r) = deleting.next().await {
            r?;
        }
        Ok(dir_entry(to.name()))
    }
}

// ---------------------------------------------------------------------------------------------
// Multipart uploads (see the module documentation, "Multipart uploads")

#[derive(Debug, Default, Deserialize)]
struct ListMultipartUploadsResult {
    #[serde(rename = "Upload", default)]
    uploads: Vec<UploadItem>,
    #[serde(rename = "IsTruncated", default)]
    is_truncated: bool,
    #[serde(rename = "NextKeyMarker")]
    next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker")]
    next_upload_id_marker: Option<String>,
    #[serde(rename = "EncodingType")]
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UploadItem {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "UploadId")]
    upload_id: String,
    #[serde(rename = "Initiated", default)]
    initiated: String,
}

#[derive(Debug, Default, Deserialize)]
struct ListPartsResult {
    #[serde(rename = "Part", default)]
    parts: Vec<ListedPart>,
    #[serde(rename = "IsTruncated", default)]
    is_truncated: bool,
    #[serde(rename = "NextPartNumberMarker")]
    next_part_number_marker: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct ListedPart {
    #[serde(rename = "PartNumber")]
    part_number: u32,
    #[serde(rename = "ETag", default)]
    etag: String,
    #[serde(rename = "Size", default)]
    size: u64,
}

#[derive(Debug, Deserialize)]
struct InitiateMultipartUploadResult {
    #[serde(rename = "UploadId")]
    upload_id: String,
}

#[derive(Debug, Deserialize)]
struct CompleteMultipartUploadResult {
    #[serde(rename = "ETag", default)]
    etag: String,
}

/// The part size for a file of `len` bytes: at least `min` (and S3's minimum), large enough
/// for at most [`MAX_PARTS`] parts (rounded up to whole MiB).
fn part_size_for(len: u64, min: u64) -> u64 {
    let needed = len.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    min.max(needed).clamp(S3_MIN_PART, MAX_PART)
}

/// The ETag S3 gives an object completed from parts with these MD5s: the MD5 of their
/// concatenation, a dash and the number of parts.
fn multipart_etag(md5s: &[[u8; 16]]) -> String {
    let mut all = Md5::new();
    for m in md5s {
        all.update(m);
    }
    format!("\"{}-{}\"", hex(&all.finalize()), md5s.len())
}

/// Whether an answer says the upload id is unknown (aborted, completed, expired).
fn no_such_upload(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::NOT_FOUND && error_body(body).is_some_and(|e| e.code == "NoSuchUpload")
}

/// The pause before attempt `attempt + 1`: exponential, with up to as much again of jitter.
fn backoff(attempt: u32) -> Duration {
    let base = RETRY_BASE * 2u32.saturating_pow(attempt.min(6));
    let mut b = [0u8; 2];
    let jitter = if aws_lc_rs::rand::fill(&mut b).is_ok() {
        f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
    } else {
        0.5
    };
    base + base.mul_f64(jitter)
}

/// Reads a body part by part, exactly `len` bytes in all.
struct PartReader {
    body: ByteStream,
    /// What the last chunk had beyond the part before.
    leftover: Bytes,
    path: RemotePath,
    len: u64,
    read: u64,
}

impl PartReader {
    /// The next `size` bytes.
    async fn next_part(&mut self, size: usize) -> Result<Bytes> {
        if self.leftover.is_empty() || self.leftover.len() < size {
            let mut buf = bytes::BytesMut::with_capacity(size);
            while buf.len() < size {
                if self.leftover.is_empty() {
                    match self.body.next().await {
                        Some(Ok(b)) => self.leftover = b,
                        Some(Err(e)) => return Err(e),
                        None => {
                            return Err(ProviderError::Other {
                                message: format!(
                                    "{}: body ended after {} of {} bytes",
                                    self.path,
                                    self.read + buf.len() as u64,
                                    self.len
                                ),
                                retryable: false,
                            })
                        }
                    }
                    continue;
                }
                let take = (size - buf.len()).min(self.leftover.len());
                buf.extend_from_slice(&self.leftover.split_to(take));
            }
            self.read += size as u64;
            return Ok(buf.freeze());
        }
        self.read += size as u64;
        Ok(self.leftover.split_to(size))
    }

    /// Checks that nothing follows the last part.
    async fn finish(&mut self) -> Result<()> {
        loop {
            if !self.leftover.is_empty() {
                return Err(ProviderError::Other {
                    message: format!(
                        "{}: body is longer than the declared {} bytes",
                        self.path, self.len
                    ),
                    retryable: false,
                });
            }
            match self.body.next().await {
                Some(Ok(b)) => self.leftover = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }
}

/// One multipart upload of `key` (of `path`).
struct Upload {
    inner: Arc<Inner>,
    path: RemotePath,
    key: String,
    id: String,
}

impl Upload {
    fn request(&self, method: Method) -> Request<'_> {
        Request::new(method, Some(&self.key)).query("uploadId", self.id.clone())
    }

    /// `UploadPart` of part `n`, tried again on retryable errors; the part's ETag.
    async fn put_part(
        self: Arc<Self>,
        n: u32,
        data: Bytes,
        md5: [u8; 16],
    ) -> Result<(u32, String)> {
        let mut attempt = 0;
        loop {
            match self.put_part_once(n, &data, &md5).await {
                Ok(etag) => return Ok((n, etag)),
                Err((e, again)) if again && e.is_retryable() && attempt + 1 < PART_ATTEMPTS => {
                    tracing::debug!(path = %self.path, part = n, attempt, %e, "s3 part retried");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One try of [`Upload::put_part`]; on failure, whether trying again can help.
    async fn put_part_once(
        &self,
        n: u32,
        data: &Bytes,
        md5: &[u8; 16],
    ) -> std::result::Result<String, (ProviderError, bool)> {
        let c = &self.inner.client;
        let len = data.len() as u64;
        let pieces: Vec<Result<Bytes>> = (0..data.len())
            .step_by(PART_PIECE)
            .map(|i| Ok(data.slice(i..(i + PART_PIECE).min(data.len()))))
            .collect();
        let progress = Arc::new(Progress::new());
        let state = Arc::new(Mutex::new(BodyState::default()));
        let checked = CheckedBody {
            inner: Box::pin(futures::stream::iter(pieces)),
            len,
            path: self.path.clone(),
            state: Arc::clone(&state),
            progress: Arc::clone(&progress),
            finished: false,
        };
        let mut req = self
            .request(Method::PUT)
            .query("partNumber", n.to_string())
            .header("content-md5", base64(md5));
        req.body = Body::Stream {
            body: reqwest::Body::wrap_stream(checked),
            len,
            progress,
        };
        let a = c.call(req).await.map_err(|e| (e, true))?;
        if !a.status.is_success() {
            if no_such_upload(a.status, &a.body) {
                // Aborted or completed by someone else: a later write starts another upload.
                return Err((
                    ProviderError::Other {
                        message: format!("S3 write {}: the multipart upload is gone", self.path),
                        retryable: true,
                    },
                    false,
                ));
            }
            return Err((c.error(&self.path, "upload part", a.status, &a.body), true));
        }
        let etag = a.header("etag").map(normalize_etag).ok_or_else(|| {
            let e = ProviderError::Other {
                message: format!("S3 write {} part {n}: no ETag in the answer", self.path),
                retryable: false,
            };
            (e, false)
        })?;
        if let Some(server) = etag_md5(&etag) {
            if !server.eq_ignore_ascii_case(&hex(md5)) {
                let e = ProviderError::Other {
                    message: format!(
                        "S3 write {} part {n}: integrity check failed: the server stored MD5 \
                         {server}, {} was sent",
                        self.path,
                        hex(md5)
                    ),
                    retryable: true,
                };
                return Err((e, true));
            }
        }
        Ok(etag)
    }

    /// `AbortMultipartUpload`, best effort (an upload left behind is found and reused, or
    /// removed by the bucket's lifecycle rules).
    async fn abort(&self) {
        match self.inner.client.call(self.request(Method::DELETE)).await {
            Ok(a) if a.status.is_success() || a.status == StatusCode::NOT_FOUND => {}
            Ok(a) => {
                tracing::warn!(path = %self.path, status = %a.status, "s3 abort of a multipart upload failed")
            }
            Err(e) => {
                tracing::warn!(path = %self.path, %e, "s3 abort of a multipart upload failed")
            }
        }
    }

    /// The parts already on the server: part number → (ETag, size).
    async fn parts(&self) -> Result<Option<std::collections::HashMap<u32, (String, u64)>>> {
        let c = &self.inner.client;
        let mut out = std::collections::HashMap::new();
        let mut marker: Option<u32> = None;
        loop {
            let mut req = self.request(Method::GET);
            if let Some(m) = marker {
                req = req.query("part-number-marker", m.to_string());
            }
            let a = c.call(req).await?;
            if no_such_upload(a.status, &a.body) {
                return Ok(None);
            }
            if !a.status.is_success() {
                return Err(c.error(&self.path, "list parts", a.status, &a.body));
            }
            let page: ListPartsResult = xml(&a.body, "list parts")?;
            for p in page.parts {
                out.insert(p.part_number, (normalize_etag(&p.etag), p.size));
            }
            match page.next_part_number_marker {
                // A marker that does not advance would loop forever.
                Some(m) if page.is_truncated && marker.is_none_or(|old| m > old) => {
                    marker = Some(m)
                }
                _ => break,
            }
        }
        Ok(Some(out))
    }
}

impl Inner {
    /// The newest unfinished multipart upload of exactly `key`, if any.
    async fn find_upload(&self, path: &RemotePath, key: &str) -> Result<Option<String>> {
        let mut found: Vec<(SystemTime, usize, String)> = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut req = Request::new(Method::GET, None)
                .query("uploads", "")
                .query("encoding-type", "url")
                .query("prefix", key);
            if let Some((k, u)) = &markers {
                req = req.query("key-marker", k.clone());
                req = req.query("upload-id-marker", u.clone());
            }
            let a = self.client.call(req).await?;
            if !a.status.is_success() {
                return Err(self.client.error(path, "list uploads", a.status, &a.body));
            }
            let page: ListMultipartUploadsResult = xml(&a.body, "list uploads")?;
            let url = page.encoding_type.as_deref() == Some("url");
            for u in page.uploads {
                let k = if url { url_decode(&u.key) } else { Some(u.key) };
                if k.as_deref() == Some(key) {
                    let initiated = parse_iso8601(&u.initiated).unwrap_or(UNIX_EPOCH);
                    found.push((initiated, found.len(), u.upload_id));
                }
            }
            match (page.next_key_marker, page.next_upload_id_marker) {
                (Some(k), Some(u))
                    if page.is_truncated && markers.as_ref() != Some(&(k.clone(), u.clone())) =>
                {
                    let k = if url { url_decode(&k).unwrap_or(k) } else { k };
                    markers = Some((k, u));
                }
                _ => break,
            }
        }
        // Newest first; of two started in the same second, the later listed (S3 lists the
        // uploads of a key oldest first).
        Ok(found
            .into_iter()
            .max_by_key(|(t, i, _)| (*t, *i))
            .map(|(_, _, id)| id))
    }

    /// `CreateMultipartUpload` of `key`.
    async fn create_upload(&self, path: &RemotePath, key: &str) -> Result<String> {
        let req = Request::new(Method::POST, Some(key)).query("uploads", "");
        let a = self.client.call(req).await?;
        if !a.status.is_success() {
            return Err(self.client.error(path, "create upload", a.status, &a.body));
        }
        let r: InitiateMultipartUploadResult = xml(&a.body, "create upload")?;
        Ok(r.upload_id)
    }

    /// The entry of the file just written at `path` by a write that started at `started` (a
    /// symlink it replaced removed now). `last_modified`: the time the write's answer gave the
    /// new object, if it gave one.
    async fn written(
        &self,
        path: &RemotePath,
        len: u64,
        etag: String,
        over_link: bool,
        last_modified: Option<SystemTime>,
        started: Instant,
    ) -> Result<RemoteEntry> {
        if let Some(parent) = path.parent() {
            self.saw_dir(&parent, started);
        }
        self.forget_dirs(path);
        if over_link {
            self.delete_key(path, &self.link_key(path)).await?;
        }
        self.names().note(path, Named::File);
        // The server's time of the new object, so that the entry equals a later `stat`: the
        // `PUT` answer's `Last-Modified` where the server sends one (moto does), else a `HEAD`
        // (AWS's answer has none, and its `Date` is the answer's time, not the object's).
        let mtime = match last_modified {
            Some(t) => t,
            None => match self.head(path).await {
                Ok(Some(h)) if h.etag == etag => h.mtime,
                _ => now_secs(),
            },
        };
        Ok(file_entry(path.name(), len, mtime, &etag))
    }

    /// Whether `pre` holds for what a `HEAD` of `path` found.
    fn check_pre(&self, path: &RemotePath, pre: &Precondition, head: Option<&Head>) -> Result<()> {
        match pre {
            Precondition::None => Ok(()),
            Precondition::IfMatch(v) => match head {
                Some(h) if h.etag.as_bytes() == v.as_bytes() => Ok(()),
                _ => Err(precondition_failed(path)),
            },
            Precondition::IfNotExists => match head {
                Some(_) => Err(ProviderError::AlreadyExists(path.clone())),
                None => Ok(()),
            },
        }
    }
}

/// A multipart upload of `body` (`len` bytes) to `path` under `pre`; the new object's ETag.
async fn write_multipart(
    inner: &Arc<Inner>,
    path: &RemotePath,
    body: ByteStream,
    len: u64,
    pre: &Precondition,
) -> Result<String> {
    let key = inner.key(path);
    // Fail early, before sending gigabytes, when the precondition does not hold already.
    inner.check_pre(path, pre, inner.head(path).await?.as_ref())?;
    let part_size = part_size_for(len, inner.part_size);
    let count = len.div_ceil(part_size) as u32;
    let (id, existing) = match inner.find_upload(path, &key).await? {
        Some(id) => {
            let up = Upload {
                inner: Arc::clone(inner),
                path: path.clone(),
                key: key.clone(),
                id: id.clone(),
            };
            match up.parts().await? {
                Some(parts) => (id, parts),
                None => (inner.create_upload(path, &key).await?, Default::default()),
            }
        }
        None => (inner.create_upload(path, &key).await?, Default::default()),
    };
    let upload = Arc::new(Upload {
        inner: Arc::clone(inner),
        path: path.clone(),
        key,
        id,
    });
    tracing::debug!(%path, upload = %upload.id, count, part_size, found = existing.len(), "s3 multipart upload");
    let sent = send_parts(&upload, body, len, part_size, count, &existing).await;
    let (md5s, etags) = match sent {
        Ok(x) => x,
        Err(e) => {
            // A retryable failure keeps the upload (and its parts) for the next attempt.
            if !e.is_retryable() {
                upload.abort().await;
            }
            return Err(e);
        }
    };
    let expected = etags
        .iter()
        .all(|e| etag_md5(e).is_some())
        .then(|| multipart_etag(&md5s));
    complete(&upload, len, pre, &etags, expected.as_deref()).await
}

/// Reads the parts from `body` in order and sends those the server does not have yet, a few
/// at a time; the MD5 and ETag of every part.
async fn send_parts(
    upload: &Arc<Upload>,
    body: ByteStream,
    len: u64,
    part_size: u64,
    count: u32,
    existing: &std::collections::HashMap<u32, (String, u64)>,
) -> Result<(Vec<[u8; 16]>, Vec<String>)> {
    let mut reader = PartReader {
        body,
        leftover: Bytes::new(),
        path: upload.path.clone(),
        len,
        read: 0,
    };
    let parallel = PARTS_IN_FLIGHT.min(count as usize).max(1);
    let mut tasks: tokio::task::JoinSet<Result<(u32, String)>> = tokio::task::JoinSet::new();
    let mut md5s: Vec<[u8; 16]> = Vec::with_capacity(count as usize);
    let mut etags: Vec<Option<String>> = vec![None; count as usize];
    let mut failure: Option<ProviderError> = None;
    let mut skipped = 0u32;
    let record = |r: std::result::Result<Result<(u32, String)>, tokio::task::JoinError>,
                  etags: &mut Vec<Option<String>>,
                  failure: &mut Option<ProviderError>| match r {
        Ok(Ok((n, etag))) => etags[n as usize - 1] = Some(etag),
        Ok(Err(e)) => {
            failure.get_or_insert(e);
        }
        Err(e) => {
            failure.get_or_insert(ProviderError::Other {
                message: format!("S3 write: a part upload task failed: {e}"),
                retryable: true,
            });
        }
    };
    'parts: for n in 1..=count {
        while let Some(r) = tasks.try_join_next() {
            record(r, &mut etags, &mut failure);
        }
        if failure.is_some() {
            break;
        }
        let size = part_size.min(len - u64::from(n - 1) * part_size) as usize;
        let data = match reader.next_part(size).await {
            Ok(d) => d,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let md5: [u8; 16] = Md5::digest(&data).into();
        md5s.push(md5);
        if let Some((etag, sz)) = existing.get(&n) {
            if *sz == size as u64
                && etag_md5(etag).is_some_and(|m| m.eq_ignore_ascii_case(&hex(&md5)))
            {
                etags[n as usize - 1] = Some(etag.clone());
                skipped += 1;
                continue;
            }
        }
        while tasks.len() >= parallel {
            match tasks.join_next().await {
                Some(r) => record(r, &mut etags, &mut failure),
                None => break,
            }
            if failure.is_some() {
                break 'parts;
            }
        }
        tasks.spawn(Arc::clone(upload).put_part(n, data, md5));
    }
    if failure.is_none() {
        if let Err(e) = reader.finish().await {
            failure = Some(e);
        }
    }
    // Parts in flight are let finish even after a failure: a later attempt skips them.
    while let Some(r) = tasks.join_next().await {
        record(r, &mut etags, &mut failure);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    tracing::debug!(path = %upload.path, count, skipped, "s3 parts sent");
    let etags = etags.into_iter().map(Option::unwrap_or_default).collect();
    Ok((md5s, etags))
}

/// `CompleteMultipartUpload` under `pre` (see the module documentation); the object's ETag.
async fn complete(
    upload: &Upload,
    len: u64,
    pre: &Precondition,
    etags: &[String],
    expected: Option<&str>,
) -> Result<String> {
    let inner = &upload.inner;
    let path = &upload.path;
    let c = &inner.client;
    // The object already is what this upload would make (an earlier attempt completed, and
    // its answer was lost): done.
    let done_already = |h: &Option<Head>| {
        h.as_ref()
            .is_some_and(|h| h.size == len && Some(h.etag.as_str()) == expected)
    };
    let head = inner.head(path).await?;
    if done_already(&head) {
        upload.abort().await;
        return Ok(head.map(|h| h.etag).unwrap_or_default());
    }
    if let Err(e) = inner.check_pre(path, pre, head.as_ref()) {
        upload.abort().await;
        return Err(e);
    }
    let conditions = match pre {
        Precondition::None => None,
        _ => Some(inner.conditions().await?),
    };
    let mut xml_body =
        String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (i, e) in etags.iter().enumerate() {
        xml_body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            i + 1,
            e.replace('&', "&amp;").replace('<', "&lt;")
        ));
    }
    xml_body.push_str("</CompleteMultipartUpload>");
    let xml_body = Bytes::from(xml_body);
    // The server joins the parts before it answers: give it time in proportion to the size.
    let deadline =
        (c.timeout + Duration::from_secs(len >> 24)).min(MAX_COMPLETE_WAIT.max(c.timeout));
    let mut attempt = 0;
    let a = loop {
        let mut req = upload.request(Method::POST);
        match (pre, conditions) {
            (Precondition::IfMatch(v), Some(cd)) if cd.if_match => {
                req = req.header("if-match", String::from_utf8_lossy(v.as_bytes()));
            }
            (Precondition::IfNotExists, Some(cd)) if cd.if_none_match => {
                req = req.header("if-none-match", "*");
            }
            _ => {}
        }
        req.body = Body::Bytes(xml_body.clone());
        req.deadline = Some(deadline);
        let failure = match c.call(req).await {
            // A 200 may still carry an error, found once the parts were joined.
            Ok(a) if a.status.is_success() && error_body(&a.body).is_some() => c.error(
                path,
                "complete upload",
                StatusCode::INTERNAL_SERVER_ERROR,
                &a.body,
            ),
            Ok(a) if a.status.is_success() => break a,
            Ok(a) => {
                let gone = no_such_upload(a.status, &a.body);
                if gone || matches!(a.status.as_u16(), 412 | 409) {
                    // Perhaps an earlier try of ours that timed out did it.
                    let head = inner.head(path).await?;
                    if done_already(&head) {
                        return Ok(head.map(|h| h.etag).unwrap_or_default());
                    }
                }
                if gone {
                    return Err(ProviderError::Other {
                        message: format!("S3 write {path}: the multipart upload is gone"),
                        retryable: true,
                    });
                }
                match (a.status.as_u16(), pre) {
                    (412 | 409, Precondition::IfNotExists) => {
                        upload.abort().await;
                        return Err(ProviderError::AlreadyExists(path.clone()));
                    }
                    (412 | 409, _) => {
                        upload.abort().await;
                        return Err(precondition_failed(path));
                    }
                    (404, Precondition::IfMatch(_))
                        if matches!(
                            c.error(path, "complete upload", a.status, &a.body),
                            ProviderError::NotFound(_)
                        ) =>
                    {
                        upload.abort().await;
                        return Err(precondition_failed(path));
                    }
                    _ => c.error(path, "complete upload", a.status, &a.body),
                }
            }
            Err(e) => e,
        };
        if !failure.is_retryable() || attempt + 1 >= PART_ATTEMPTS {
            if !failure.is_retryable() {
                upload.abort().await;
            }
            return Err(failure);
        }
        tracing::debug!(%path, attempt, %failure, "s3 complete retried");
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    };
    let etag = match xml::<CompleteMultipartUploadResult>(&a.body, "complete upload") {
        Ok(r) if !r.etag.is_empty() => normalize_etag(&r.etag),
        _ => a
            .header("etag")
            .map(normalize_etag)
            .ok_or_else(|| ProviderError::Other {
                message: format!("S3 write {path}: no ETag in the answer"),
                retryable: false,
            })?,
    };
    if let Some(expected) = expected {
        if etag != expected {
            return Err(ProviderError::Other {
                message: format!(
                    "S3 write {path}: integrity check failed: the server made ETag {etag} of the \
                     parts, {expected} was expected"
                ),
                retryable: true,
            });
        }
    }
    Ok(etag)
}

/// The state of a read stream (see [`Provider::read`] for S3).
struct ReadState {
    inner: Arc<Inner>,
    path: RemotePath,
    version: Version,
    /// Next byte to deliver.
    pos: u64,
    /// End of the range (exclusive), if bounded.
    end: Option<u64>,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<Bytes>>>,
    resumes_left: u32,
    done: bool,
    /// The whole object is read: checked against its published MD5.
    verify: Option<Verify>,
}

/// The MD5 of a whole-object read, compared with the one the object's ETag publishes.
struct Verify {
    hash: Hashing,
    /// The ETag's MD5, lowercase hex.
    expect: String,
    /// The object's size.
    total: u64,
}

/// Where the MD5 of a whole-object read is computed.
enum Hashing {
    /// On the read path: objects of up to [`VERIFY_INLINE_MAX`], where handing the pieces to
    /// another thread costs more than hashing them.
    Inline(Md5),
    /// On a thread of its own (MD5 runs at well under the speed of a local network), fed the
    /// pieces as they are handed out, at most [`VERIFY_BACKLOG`] pieces behind.
    Thread {
        /// To the hashing thread; dropped at the end of the object.
        pieces: Option<tokio::sync::mpsc::Sender<Bytes>>,
        /// The MD5 of what was fed, lowercase hex, once `pieces` is dropped.
        done: Option<tokio::sync::oneshot::Receiver<String>>,
    },
}

/// Whole objects up to this size are hashed on the read path.
const VERIFY_INLINE_MAX: u64 = 1 << 20;

/// Pieces of a whole-object read received but not hashed yet (each is what one socket read
/// brought, tens of KiB).
const VERIFY_BACKLOG: usize = 64;

impl Verify {
    /// For the answer `headers` to a `GET` from byte `start` to `end` of the object at
    /// `version` (its ETag, which the answer's was checked to be): `Some` when it brings the
    /// whole object and the ETag is a plain MD5 of the bytes (not SSE-KMS or SSE-C).
    fn of(
        headers: &reqwest::header::HeaderMap,
        version: &Version,
        start: u64,
        end: Option<u64>,
    ) -> Option<Verify> {
        if start != 0 {
            return None;
        }
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        if h("x-amz-server-side-encryption").is_some_and(|e| e.starts_with("aws:kms"))
            || h("x-amz-server-side-encryption-customer-algorithm").is_some()
        {
            return None;
        }
        let total = match h("content-range") {
            // bytes 0-N/TOTAL
            Some(r) => r.rsplit_once('/')?.1.trim().parse::<u64>().ok()?,
            None => h("content-length")?.trim().parse::<u64>().ok()?,
        };
        if end.is_some_and(|e| e < total) {
            return None;
        }
        let expect = etag_md5(std::str::from_utf8(version.as_bytes()).ok()?)?.to_ascii_lowercase();
        let hash = if total <= VERIFY_INLINE_MAX {
            Hashing::Inline(Md5::new())
        } else {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(VERIFY_BACKLOG);
            let (done_tx, done) = tokio::sync::oneshot::channel();
            tokio::task::spawn_blocking(move || {
                let mut md5 = Md5::new();
                while let Some(piece) = rx.blocking_recv() {
                    md5.update(&piece);
                }
                let _ = done_tx.send(hex(&md5.finalize()));
            });
            Hashing::Thread {
                pieces: Some(tx),
                done: Some(done),
            }
        };
        Some(Verify {
            hash,
            expect,
            total,
        })
    }

    /// Adds the piece that ends at `pos`; at the end of the object, `Err` with the MD5 received
    /// when it is not the one published.
    async fn feed(&mut self, piece: &Bytes, pos: u64) -> std::result::Result<(), String> {
        const STOPPED: &str = "nothing (the hashing thread stopped)";
        match &mut self.hash {
            Hashing::Inline(md5) => md5.update(piece),
            Hashing::Thread {
                pieces: Some(tx), ..
            } => {
                if tx.send(piece.clone()).await.is_err() {
                    return Err(STOPPED.into());
                }
            }
            Hashing::Thread { pieces: None, .. } => {}
        }
        if pos < self.total {
            return Ok(());
        }
        let got = match &mut self.hash {
            Hashing::Inline(md5) => hex(&std::mem::take(md5).finalize()),
            Hashing::Thread { pieces, done } => {
                *pieces = None;
                match done.take() {
                    Some(rx) => rx.await.unwrap_or_else(|_| STOPPED.into()),
                    None => "nothing (the object was already hashed)".into(),
                }
            }
        };
        if got == self.expect {
            Ok(())
        } else {
            Err(got)
        }
    }
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
                    Ok(Some(resp)) => {
                        self.body = Some(resp.bytes_stream().boxed());
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
                    if let Some(v) = self.verify.as_mut() {
                        if let Err(got) = v.feed(&b, self.pos).await {
                            tracing::warn!(path = %self.path, expected = %v.expect, %got, "s3 read: the bytes received are not the object's (MD5 differs from its ETag)");
                            self.done = true;
                            let e = ProviderError::Other {
                                message: format!(
                                    "S3 read {}: the bytes received do not match the object's MD5 ({got}, its ETag says {})",
                                    self.path, v.expect
                                ),
                                retryable: true,
                            };
                            return Some((Err(e), self));
                        }
                    }
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
            tracing::debug!(path = %self.path, pos = self.pos, %failure, "s3 read resumed");
        }
    }
}

#[async_trait::async_trait]
impl Provider for S3Provider {
    fn describe(&self) -> String {
        let c = &self.inner.client;
        format!(
            "s3://{}/{} ({})",
            c.bucket,
            self.inner.prefix.trim_end_matches('/'),
            c.endpoint
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rename: false,
            conditional_write: self.inner.probe_state.load(Ordering::Relaxed) != PROBE_IGNORED,
            symlinks: true,
            attrs: false,
            max_name_len: MAX_NAME_LEN,
        }
    }

    async fn stat(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "s3 stat");
        self.inner
            .stat_opt(path)
            .await?
            .ok_or_else(|| ProviderError::NotFound(path.clone()))
    }

    async fn list(&self, dir: &RemotePath, page: Option<String>) -> Result<ListPage> {
        tracing::debug!(%dir, ?page, "s3 list");
        let inner = &self.inner;
        let prefix = inner.dir_prefix(dir);
        let first = page.is_none();
        let got = inner
            .list_raw(dir, &prefix, true, page, inner.page_size)
            .await?;
        let mut entries = Vec::new();
        let mut links = Vec::new();
        let mut unversioned = Vec::new();
        let mut marker = false;
        for o in &got.contents {
            let Some(name) = o.key.strip_prefix(&prefix) else {
                continue;
            };
            if name.is_empty() {
                marker = true;
                continue;
            }
            if !super::valid_component(name) || name.starts_with(PROBE_PREFIX) {
                continue;
            }
            let mtime = parse_iso8601(&o.last_modified).unwrap_or(UNIX_EPOCH);
            match name.strip_suffix(LINK_SUFFIX) {
                Some(stem) if !stem.is_empty() => {
                    links.push((stem.to_string(), o.key.clone(), mtime));
                }
                _ if o.etag.is_empty() => unversioned.push((name.to_string(), o.clone(), mtime)),
                _ => entries.push(file_entry(name, o.size, mtime, &normalize_etag(&o.etag))),
            }
        }
        // A server that lists no ETags: each file's comes from a HEAD (remembered).
        let mut heads =
            futures::stream::iter(unversioned.into_iter().map(|(name, o, mtime)| async move {
                let p = dir.join(&name).unwrap_or_else(RemotePath::root);
                let got = inner.listed_etag(&p, &o).await?;
                Ok::<_, ProviderError>(got.map(|(e, size)| file_entry(&name, size, mtime, &e)))
            }))
            .buffered(ETAG_HEADS_IN_FLIGHT);
        while let Some(e) = heads.next().await {
            if let Some(e) = e? {
                entries.push(e);
            }
        }
        drop(heads);
        // A listing gives no link targets: each is read (a few at a time).
        let mut reading =
            futures::stream::iter(links.into_iter().map(|(stem, key, mtime)| async move {
                let p = dir.join(&stem).unwrap_or_else(RemotePath::root);
                let got = inner.link_target(&p, &key).await?;
                Ok::<_, ProviderError>(
                    got.map(|(target, etag)| link_entry(&stem, target, mtime, &etag)),
                )
            }))
            .buffered(8);
        while let Some(l) = reading.next().await {
            if let Some(e) = l? {
                entries.push(e);
            }
        }
        drop(reading);
        for cp in &got.common_prefixes {
            let Some(name) = cp
                .prefix
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix('/'))
            else {
                continue;
            };
            if !super::valid_component(name) || name.starts_with(PROBE_PREFIX) {
                if !name.starts_with(PROBE_PREFIX) {
                    tracing::warn!(%dir, name, "s3 list: skipping a prefix that is not a valid name");
                }
                continue;
            }
            entries.push(dir_entry(name));
        }
        let next = got.next_continuation_token.filter(|_| got.is_truncated);
        if first
            && next.is_none()
            && !dir.is_root()
            && !marker
            && got.contents.is_empty()
            && got.common_prefixes.is_empty()
        {
            // Nothing under `dir/`: a file, or nothing at all.
            return Err(match inner.head(dir).await? {
                Some(_) => ProviderError::NotADirectory(dir.clone()),
                None => ProviderError::NotFound(dir.clone()),
            });
        }
        Ok(ListPage { entries, next })
    }

    async fn read(
        &self,
        path: &RemotePath,
        version: &Version,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        tracing::debug!(%path, offset, len, "s3 read");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        if is_probe(path) {
            return Err(ProviderError::NotFound(path.clone()));
        }
        if len == 0 {
            return match inner.stat_opt(path).await? {
                Some(e) if e.kind == EntryKind::Dir => {
                    Err(ProviderError::IsADirectory(path.clone()))
                }
                Some(e) if &e.version == version => Ok(Box::pin(futures::stream::empty())),
                Some(_) => Err(precondition_failed(path)),
                None => Err(ProviderError::NotFound(path.clone())),
            };
        }
        // Ranges past 2^63 are as good as "to the end".
        let end = offset.checked_add(len).filter(|e| *e <= i64::MAX as u64);
        let Some(resp) = inner.get_range(path, version, offset, end).await? else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let verify = Verify::of(resp.headers(), version, offset, end);
        let state = ReadState {
            inner: Arc::clone(inner),
            path: path.clone(),
            version: version.clone(),
            pos: offset,
            end,
            body: Some(resp.bytes_stream().boxed()),
            resumes_left: READ_RESUMES,
            done: false,
            verify,
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
        tracing::debug!(%path, len, ?pre, "s3 write");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        inner.check_new_name(path)?;
        if len > MAX_OBJECT {
            return Err(ProviderError::NotSupported("files larger than 5 TiB on S3"));
        }
        let started = Instant::now();
        // No folder of the name, and whether a link is there, in one listing that also shows
        // the parent is a folder when it finds anything (see "Checks before a write").
        let here = inner.at_name(path).await?;
        if !here.parent_seen {
            inner.check_parent(path).await?;
        }
        if here.dir {
            return Err(match pre {
                Precondition::IfNotExists => ProviderError::AlreadyExists(path.clone()),
                _ => ProviderError::IsADirectory(path.clone()),
            });
        }
        // A file written over a symlink replaces it (once the file is there).
        if here.link && matches!(pre, Precondition::IfNotExists) {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        inner.names().note(path, Named::Maybe);
        if len > inner.multipart_threshold {
            let etag = write_multipart(inner, path, body, len, &pre).await?;
            return inner
                .written(path, len, etag, here.link, None, started)
                .await;
        }
        let key = inner.key(path);
        let mut req = Request::new(Method::PUT, Some(&key));
        match &pre {
            Precondition::None => {}
            Precondition::IfMatch(v) => {
                if inner.conditions().await?.if_match {
                    req = req.header("if-match", String::from_utf8_lossy(v.as_bytes()));
                } else {
                    match inner.head(path).await? {
                        Some(h) if h.etag.as_bytes() == v.as_bytes() => {}
                        _ => return Err(precondition_failed(path)),
                    }
                }
            }
            Precondition::IfNotExists => {
                if inner.conditions().await?.if_none_match {
                    req = req.header("if-none-match", "*");
                } else if inner.head(path).await?.is_some() {
                    return Err(ProviderError::AlreadyExists(path.clone()));
                }
            }
        }
        let state = Arc::new(Mutex::new(BodyState::default()));
        if len <= SMALL_BODY {
            let data = collect_exact(path, body, len).await?;
            req = req.header("content-md5", base64(&Md5::digest(&data)));
            req.body = Body::Bytes(data);
        } else {
            state.lock().unwrap_or_else(|e| e.into_inner()).md5 = Some(Md5::new());
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
            return Err(match (a.status.as_u16(), &pre) {
                (412 | 409, Precondition::IfNotExists) => {
                    ProviderError::AlreadyExists(path.clone())
                }
                (412 | 409, _) => precondition_failed(path),
                (404, Precondition::IfMatch(_)) => {
                    match inner.client.error(path, "write", a.status, &a.body) {
                        ProviderError::NotFound(_) => precondition_failed(path),
                        e => e,
                    }
                }
                _ => inner.client.error(path, "write", a.status, &a.body),
            });
        }
        let etag = a
            .header("etag")
            .map(normalize_etag)
            .ok_or_else(|| ProviderError::Other {
                message: format!("S3 write {path}: no ETag in the answer"),
                retryable: false,
            })?;
        let digest = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .digest
            .take();
        if let (Some(d), Some(server)) = (digest, etag_md5(&etag)) {
            if !server.eq_ignore_ascii_case(&hex(&d)) {
                return Err(ProviderError::Other {
                    message: format!(
                        "S3 write {path}: integrity check failed: the server stored MD5 {server}, \
                         {} was sent",
                        hex(&d)
                    ),
                    retryable: true,
                });
            }
        }
        let last_modified = a.header("last-modified").and_then(parse_http_date);
        inner
            .written(path, len, etag, here.link, last_modified, started)
            .await
    }

    async fn delete(&self, path: &RemotePath, pre: Precondition) -> Result<()> {
        tracing::debug!(%path, ?pre, "s3 delete");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        let (file, link, dir) = futures::join!(
            inner.head(path),
            inner.head_link(path),
            inner.dir_exists(path)
        );
        let (h, key) = match (file?, link?) {
            (Some(h), _) => (h, inner.key(path)),
            (None, Some(h)) => (h, inner.link_key(path)),
            (None, None) if dir? => return Err(ProviderError::IsADirectory(path.clone())),
            (None, None) => return Err(ProviderError::NotFound(path.clone())),
        };
        match pre {
            Precondition::None => {}
            Precondition::IfMatch(v) if v.as_bytes() == h.etag.as_bytes() => {}
            Precondition::IfMatch(_) | Precondition::IfNotExists => {
                return Err(precondition_failed(path))
            }
        }
        if let Some(parent) = path.parent() {
            inner.keep_dir(&parent).await?;
        }
        inner.names().note(path, Named::Maybe);
        inner.delete_key_if(path, &key, Some(&h.etag)).await
    }

    async fn mkdir(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "s3 mkdir");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        inner.check_new_name(path)?;
        let started = Instant::now();
        let here = inner.at_name(path).await?;
        if here.file || here.link || here.dir {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        if !here.parent_seen {
            inner.check_parent(path).await?;
        }
        let marker = inner.dir_prefix(path);
        let mut req = Request::new(Method::PUT, Some(&marker))
            .header("content-md5", base64(&Md5::digest(b"")));
        let if_none_match = inner.conditions().await?.if_none_match;
        if if_none_match {
            req = req.header("if-none-match", "*");
        }
        inner.names().note(path, Named::Maybe);
        let a = inner.client.call(req).await?;
        match a.status.as_u16() {
            s if (200..300).contains(&s) => {
                if let Some(parent) = path.parent() {
                    inner.saw_dir(&parent, started);
                }
                inner.saw_dir(path, started);
                // Empty as of the check above, which found nothing under it; the marker's
                // `PUT` would have found another marker, where the server honours that.
                if if_none_match {
                    inner.names().made(path, here.as_of);
                }
                Ok(dir_entry(path.name()))
            }
            412 | 409 => Err(ProviderError::AlreadyExists(path.clone())),
            _ => Err(inner.client.error(path, "mkdir", a.status, &a.body)),
        }
    }

    async fn rmdir(&self, path: &RemotePath) -> Result<()> {
        tracing::debug!(%path, "s3 rmdir");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::NotSupported("removing the root folder"));
        }
        let marker = inner.dir_prefix(path);
        let page = inner.list_raw(path, &marker, true, None, Some(2)).await?;
        let has_marker = page.contents.iter().any(|o| o.key == marker);
        let others =
            page.contents.iter().filter(|o| o.key != marker).count() + page.common_prefixes.len();
        if others > 0 {
            return Err(ProviderError::NotEmpty(path.clone()));
        }
        inner.forget_dirs(path);
        if has_marker {
            return inner.delete_key(path, &marker).await;
        }
        Err(match inner.head(path).await? {
            Some(_) => ProviderError::NotADirectory(path.clone()),
            None => ProviderError::NotFound(path.clone()),
        })
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%from, %to, replace, "s3 rename");
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
            .stat_opt(from)
            .await?
            .ok_or_else(|| ProviderError::NotFound(from.clone()))?;
        inner.check_parent(to).await?;
        if from == to {
            return Ok(src);
        }
        // What was at either name, or under it, is to be checked again.
        inner.names().forget(from);
        inner.names().forget(to);
        if src.kind == EntryKind::Dir {
            if inner.head(to).await?.is_some() || inner.head_link(to).await?.is_some() {
                return Err(if replace {
                    ProviderError::NotADirectory(to.clone())
                } else {
                    ProviderError::AlreadyExists(to.clone())
                });
            }
            if let Some(parent) = from.parent() {
                inner.keep_dir(&parent).await?;
            }
            inner.forget_dirs(from);
            return inner.rename_dir(from, to, replace).await;
        }
        let target = inner.stat_opt(to).await?;
        match &target {
            Some(_) if !replace => return Err(ProviderError::AlreadyExists(to.clone())),
            Some(e) if e.kind == EntryKind::Dir => {
                return Err(ProviderError::IsADirectory(to.clone()))
            }
            _ => {}
        }
        let etag = String::from_utf8_lossy(src.version.as_bytes()).into_owned();
        let link = src.kind == EntryKind::Symlink;
        let (from_key, to_key) = if link {
            (inner.link_key(from), inner.link_key(to))
        } else {
            (inner.key(from), inner.key(to))
        };
        // What the target was, if of the other kind (a file over a link, a link over a file),
        // lives under the other key and goes once the copy is there.
        let replaced = match &target {
            Some(e) if (e.kind == EntryKind::Symlink) != link => Some(if link {
                inner.key(to)
            } else {
                inner.link_key(to)
            }),
            _ => None,
        };
        let etag = inner.copy(from, &from_key, &to_key, &etag).await?;
        inner.forget_dirs(to);
        if let Some(k) = replaced {
            inner.delete_key(to, &k).await?;
        }
        if let Some(parent) = from.parent() {
            inner.keep_dir(&parent).await?;
        }
        inner.delete_key(from, &from_key).await?;
        let head = if link {
            inner.head_link(to).await
        } else {
            inner.head(to).await
        };
        let mtime = match head {
            Ok(Some(h)) if h.etag == etag => h.mtime,
            _ => now_secs(),
        };
        Ok(match src.symlink_target {
            Some(t) if link => link_entry(to.name(), t, mtime, &etag),
            _ => file_entry(to.name(), src.size, mtime, &etag),
        })
    }

    async fn symlink(&self, path: &RemotePath, target: &str) -> Result<RemoteEntry> {
        tracing::debug!(%path, "s3 symlink");
        let inner = &self.inner;
        if path.is_root() {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        inner.check_new_name(path)?;
        if target.len() as u64 > MAX_LINK_TARGET {
            return Err(ProviderError::InvalidName {
                name: path.name().to_string(),
                reason: "symlink target longer than 4096 bytes",
            });
        }
        let started = Instant::now();
        let here = inner.at_name(path).await?;
        if here.file || here.link || here.dir {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        if !here.parent_seen {
            inner.check_parent(path).await?;
        }
        let key = inner.link_key(path);
        inner.names().note(path, Named::Maybe);
        let data = Bytes::copy_from_slice(target.as_bytes());
        let mut req = Request::new(Method::PUT, Some(&key))
            .header("content-md5", base64(&Md5::digest(&data)));
        if inner.conditions().await?.if_none_match {
            req = req.header("if-none-match", "*");
        }
        req.body = Body::Bytes(data);
        let a = inner.client.call(req).await?;
        match a.status.as_u16() {
            s if (200..300).contains(&s) => {}
            412 | 409 => return Err(ProviderError::AlreadyExists(path.clone())),
            _ => return Err(inner.client.error(path, "symlink", a.status, &a.body)),
        }
        if let Some(parent) = path.parent() {
            inner.saw_dir(&parent, started);
        }
        inner.forget_dirs(path);
        let etag = a.header("etag").map(normalize_etag).unwrap_or_default();
        // As for a file (see `written`): the answer's time of the object where it gives one.
        let answered = a
            .header("last-modified")
            .and_then(parse_http_date)
            .filter(|_| !etag.is_empty());
        let mtime = match answered {
            Some(t) => t,
            None => match inner.head_link(path).await {
                Ok(Some(h)) if h.etag == etag || etag.is_empty() => h.mtime,
                _ => now_secs(),
            },
        };
        let etag = if etag.is_empty() {
            inner
                .head_link(path)
                .await?
                .map(|h| h.etag)
                .unwrap_or_default()
        } else {
            etag
        };
        Ok(link_entry(path.name(), target.to_string(), mtime, &etag))
    }

    async fn set_attrs(&self, path: &RemotePath, attrs: ObjectAttrs) -> Result<RemoteEntry> {
        tracing::debug!(%path, ?attrs, "s3 set_attrs");
        if self.inner.stat_opt(path).await?.is_none() {
            return Err(ProviderError::NotFound(path.clone()));
        }
        Err(ProviderError::NotSupported(
            "permission bits and modification times on S3",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_signer() -> Signer {
        Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            region: "us-east-1".into(),
        }
    }

    /// The "GET Object" example of the SigV4 documentation (first 10 bytes of test.txt).
    #[test]
    fn sigv4_get_object_example() {
        let headers = vec![
            (
                "host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let auth = example_signer().authorization(
            "GET",
            "/test.txt",
            "",
            &headers,
            EMPTY_SHA256,
            "20130524T000000Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The "GET Bucket (List Objects)" example of the SigV4 documentation (a query string).
    #[test]
    fn sigv4_list_objects_example() {
        let headers = vec![
            (
                "host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let auth = example_signer().authorization(
            "GET",
            "/",
            "max-keys=2&prefix=J",
            &headers,
            EMPTY_SHA256,
            "20130524T000000Z",
        );
        assert!(
            auth.ends_with(
                "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            ),
            "{auth}"
        );
    }

    #[test]
    fn encodings_and_dates() {
        assert_eq!(uri_encode("a b/c~d+é", false), "a%20b/c~d%2B%C3%A9");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        assert_eq!(url_decode("a%20b+c%2B%C3%A9").as_deref(), Some("a b c+é"));
        assert_eq!(url_decode("bad%2"), None);
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&Md5::digest(b"")), "1B2M2Y8AsgTpgAmY7PhCfg==");
        let t = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t), "20130524T000000Z");
        assert_eq!(parse_iso8601("2013-05-24T00:00:00.000Z"), Some(t));
        assert_eq!(parse_http_date("Fri, 24 May 2013 00:00:00 GMT"), Some(t));
        assert_eq!(
            parse_http_date("Sun, 06 Dec 2026 14:34:03 GMT"),
            parse_iso8601("2026-12-06T14:34:03Z")
        );
        assert_eq!(
            parse_iso8601("1969-12-31T23:59:59Z"),
            Some(UNIX_EPOCH - Duration::from_secs(1))
        );
        assert_eq!(
            etag_md5("\"5d41402abc4b2a76b9719d911017c592\""),
            Some("5d41402abc4b2a76b9719d911017c592")
        );
        assert_eq!(etag_md5("\"5d41402abc4b2a76b9719d911017c592-2\""), None);
        assert_eq!(normalize_etag("abc"), "\"abc\"");
    }

    #[test]
    fn debug_and_describe_hide_secrets() {
        let cfg = S3Config {
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            bucket: "my-bucket".into(),
            prefix: "/a/b/".into(),
            path_style: true,
            access_key: "AKID".into(),
            secret_key: "TOPSECRET".into(),
            session_token: Some("TOKENSECRET".into()),
            request_timeout: Duration::from_secs(5),
        };
        assert!(!format!("{cfg:?}").contains("SECRET"));
        let p = S3Provider::new(cfg.clone()).unwrap();
        assert!(!format!("{p:?}").contains("SECRET"));
        assert_eq!(p.describe(), "s3://my-bucket/a/b (http://127.0.0.1:9)");
        assert!(S3Provider::new(S3Config {
            bucket: "No_Such".into(),
            ..cfg.clone()
        })
        .is_err());
        assert!(S3Provider::new(S3Config {
            prefix: "a/../b".into(),
            ..cfg.clone()
        })
        .is_err());
        assert!(S3Provider::new(S3Config {
            endpoint: "ftp://x".into(),
            ..cfg
        })
        .is_err());
    }
}
