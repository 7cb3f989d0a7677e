//! Namespace checkpoints: the whole namespace (every known node with its id, name, attributes,
//! content map and what the provider has) written to one encrypted file, so that a remount lists
//! at once from what the drive knew, and the write-ahead log only has to be replayed from the
//! checkpoint on.
//!
//! # Guarantees
//! - **Secret at rest.** File names, symlink targets, versions and sizes are inside one body
//!   sealed with AES-256-GCM under the cache's record subkey for `"namespace"`; only the header
//!   (magic, version, body length) is in clear.
//! - **Atomic.** A save writes `namespace.tmp` (0600, created exclusively), fsyncs it, renames it
//!   over `namespace` and fsyncs the directory: a crash leaves either the old or the new
//!   checkpoint, never a mix. A leftover `namespace.tmp` is removed by [`SnapshotStore::load`].
//! - **Never silently ignored.** A damaged file (bad magic, length, authentication, encoding or
//!   an inconsistent tree) is an error naming the file: it may hold state not yet on the
//!   provider, so only the user may decide to remove it (the namespace is then rebuilt from the
//!   provider). A file of an unknown version is an error naming the version.
//! - **Counted.** The file lives in the cache directory and counts against the cache limit: a save
//!   charges the new file's size (in whole blocks) *before* writing it, and releases the old
//!   file's charge once it is replaced, so the directory never exceeds the limit. With no room
//!   the save fails with [`SnapshotError::NoRoom`] and the previous checkpoint stays.
//! - **Exact round trip.** What [`SnapshotStore::save`] writes, [`SnapshotStore::load`] reads back
//!   field for field; a save refuses (with [`SnapshotError::Inconsistent`]) a namespace whose
//!   tree load would reject, rather than write a checkpoint that cannot be loaded.
//!
//! Not persisted, reset on load: `listed_at` (`None`: directories are listed again when needed),
//! `open` (0), `orphan` (orphans, and whatever is below them, are not saved at all: they were
//! removed from the tree and live only until their handles close) and `cached_version` (`None`).
//! A directory's child map is not stored either: it is rebuilt from the nodes' parents and names.
//!
//! # Format, version 2
//! ```text
//! "SOXN" | u16 version = 2 | u16 reserved = 0 | u64 body length | sealed body
//! sealed body = RecordCipher("namespace").seal(aad = "syncoxide namespace v2", body)
//!             = nonce (12) | ciphertext | tag (16)
//! body        = checkpoint | u64 next_id | u64 node count | node* | u64 tombstone count | tombstone*
//! checkpoint  = u64 lsn | u64 applied_below | u64 count | u64 applied LSN*
//!             | u64 count | rebased*
//! rebased     = u64 LSN of a queued commit | content (journal.rs encoding)
//! node        = u64 id | u64 generation | u64 parent | str name | u8 kind (1 file, 2 dir, 3 symlink)
//!             | u16 perm | time mtime | time atime | time ctime
//!             | content (journal.rs encoding) | opt(str) target | opt(bytes version, u64 size) remote
//!             | u8 children known (0|1) | u32 pending | u8 dirty (0|1)
//! tombstone   = str path | u32 count (> 0)
//! ```
//! Version 1 is the same without the `rebased` list (and with aad "syncoxide namespace v1");
//! this build still reads it (as an empty list). The list holds the queued commits whose
//! content followed uploads of the same file finished since they were journaled, so they differ
//! from the log's record (see `vfs::replay_applied`).
//!
//! Integers are little endian; `str`/`bytes` are `u32 len | bytes`; `time` is `i64 seconds |
//! u32 nanos` since the epoch (nanos < 10^9, seconds floored, so times before 1970 work);
//! `opt(x)` is `u8 0 | u8 1 x`; all as in the journal encoding (journal.rs). Nodes are written in
//! id order and tombstones in path order, so one namespace always encodes to the same body.
//!
//! On load the tree is checked: node ids unique and below `next_id`; the root (id 1) present, a
//! directory, its own parent; every other node's name a valid path component, its parent present,
//! a directory with its children known, and no two nodes with the same parent and name; every
//! node reachable from the root; only directories have children known; every applied LSN at or
//! above `applied_below`, and so is every rebased commit. Anything else is
//! [`SnapshotError::Damaged`].
//!
//! The file must live in the cache's own directory ([`ChunkCache::dir`]): the cache counts the
//! files there when it opens, and the charge this module keeps relies on that.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cache::{ChunkCache, Version};

use crate::content::Content;
use crate::journal::{decode_content, encode_content};
use crate::namespace::{Namespace, Node, RemoteState};
use crate::provider::{valid_component, RemotePath};
use crate::types::{FileKind, NodeId};

/// Positions in the write-ahead log a checkpoint stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The namespace reflects every log record with LSN < lsn.
    pub lsn: u64,
    /// Every record with LSN < applied_below has been applied to the provider...
    pub applied_below: u64,
    /// ...and so have these, all >= applied_below.
    pub applied: Vec<u64>,
    /// Queued commits (LSN >= applied_below) whose content is no longer the one in the log:
    /// it followed uploads of the same file done since (see `vfs::replay_applied`). Replay
    /// uses these instead. (Format version 2; empty when loading version 1.)
    pub rebased: Vec<(u64, Content)>,
}

/// Name of the checkpoint file in the cache directory.
pub const FILE_NAME: &str = "namespace";
/// Name of the file a save writes before renaming it over [`FILE_NAME`].
pub const TMP_FILE_NAME: &str = "namespace.tmp";
/// The format version this build writes. It reads this one and version 1.
pub const VERSION: u16 = 2;

const MAGIC: &[u8; 4] = b"SOXN";
const HEADER_LEN: usize = 16;

/// Associated data of the sealed body (binds the format version).
fn aad(version: u16) -> Vec<u8> {
    format!("syncoxide namespace v{version}").into_bytes()
}
const PURPOSE: &str = "namespace";

const KIND_FILE: u8 = 1;
const KIND_DIR: u8 = 2;
const KIND_SYMLINK: u8 = 3;

/// What can go wrong reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file system operation failed.
    #[error("namespace snapshot: {op} failed on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file exists but cannot be trusted. It is not ignored: it may hold changes that are
    /// not on the provider yet.
    #[error("the namespace snapshot {path} is damaged ({reason}); it may hold changes not yet uploaded, so it was not ignored. If it is removed, the namespace will be rebuilt from the provider")]
    Damaged { path: PathBuf, reason: &'static str },

    /// The file was written by another (probably newer) version of syncoxide.
    #[error("the namespace snapshot {path} has format version {found}, this build reads versions 1 to {VERSION}; upgrade syncoxide (if the file is removed, the namespace will be rebuilt from the provider)")]
    UnsupportedVersion { path: PathBuf, found: u16 },

    /// The cache has no room for the new file (pinned data fills it); the previous checkpoint
    /// stays in place.
    #[error("no room in the cache for the namespace snapshot: {0}")]
    NoRoom(String),

    /// The in-memory namespace is not a tree that could be loaded back (a bug elsewhere);
    /// nothing was written and the previous checkpoint stays in place.
    #[error("namespace snapshot not written: the namespace is inconsistent ({0})")]
    Inconsistent(String),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// Bytes a file occupies as the cache counts it at open (whole blocks, at least what `du` says).
fn disk_charge(md: &fs::Metadata, block_size: u64) -> u64 {
    round_up(md.len(), block_size).max(md.blocks().saturating_mul(512))
}

fn round_up(len: u64, block_size: u64) -> u64 {
    len.div_ceil(block_size).saturating_mul(block_size)
}

/// Reads and writes the namespace checkpoint of one cache directory, keeping its size counted
/// against the cache limit.
#[derive(Debug)]
pub struct SnapshotStore {
    /// Bytes currently charged to the cache for the checkpoint file.
    charged: u64,
}

impl SnapshotStore {
    /// Reads `dir/namespace` if present (`dir` is the cache's directory). Returns the store
    /// (charged with the existing file's size in whole blocks, which the cache already counted
    /// when it opened) and the namespace with its checkpoint, or `None` when there is no file.
    /// A leftover `namespace.tmp` (a save cut by a crash) is removed and its charge released.
    pub fn load(
        dir: &Path,
        cache: &ChunkCache,
    ) -> Result<(SnapshotStore, Option<(Namespace, Checkpoint)>), SnapshotError> {
        let bs = cache.block_size();
        let tmp = dir.join(TMP_FILE_NAME);
        match fs::symlink_metadata(&tmp) {
            Ok(md) => {
                let charge = disk_charge(&md, bs);
                fs::remove_file(&tmp).map_err(io_err("remove stale", &tmp))?;
                cache.release_external(charge);
                tracing::info!(path = %tmp.display(), "removed an unfinished namespace snapshot");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", &tmp)(e)),
        }

        let path = dir.join(FILE_NAME);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((SnapshotStore { charged: 0 }, None));
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let md = file.metadata().map_err(io_err("stat", &path))?;
        let store = SnapshotStore {
            charged: disk_charge(&md, bs),
        };
        let mut bytes = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
        io::Read::read_to_end(&mut file, &mut bytes).map_err(io_err("read", &path))?;
        drop(file);

        let damaged = |reason| SnapshotError::Damaged {
            path: path.clone(),
            reason,
        };
        if bytes.len() < HEADER_LEN {
            return Err(damaged("shorter than its header"));
        }
        if &bytes[..4] != MAGIC {
            return Err(damaged("bad magic"));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if !(1..=VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion {
                path,
                found: version,
            });
        }
        if bytes[6..8] != [0, 0] {
            return Err(damaged("reserved header bytes are not zero"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[8..16]);
        let sealed = &bytes[HEADER_LEN..];
        if u64::from_le_bytes(len) != sealed.len() as u64 {
            return Err(damaged("body length does not match the file size"));
        }
        let body = cache
            .record_cipher(PURPOSE)
            .open(&aad(version), sealed)
            .ok_or_else(|| damaged("authentication failed"))?;
        let (ns, cp) = decode(&body, version).map_err(damaged)?;
        Ok((store, Some((ns, cp))))
    }

    /// Writes a checkpoint atomically and returns the bytes written. The new file's size is
    /// charged to the cache before anything is written (no room: [`SnapshotError::NoRoom`],
    /// nothing written); the old file's charge is released once the new one replaced it. A
    /// namespace that is not a consistent tree is refused ([`SnapshotError::Inconsistent`]).
    /// `dir` is the cache's directory. If only the final fsync of the directory fails, the new
    /// file is already in place (and charged) but may not be durable: the error says so, and
    /// the caller must not discard log records on the strength of this checkpoint.
    pub fn save(
        &mut self,
        dir: &Path,
        cache: &ChunkCache,
        ns: &Namespace,
        cp: &Checkpoint,
    ) -> Result<u64, SnapshotError> {
        let body = encode(ns, cp).map_err(SnapshotError::Inconsistent)?;
        let sealed = cache.record_cipher(PURPOSE).seal(&aad(VERSION), &body);
        drop(body);
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(sealed.len() as u64).to_le_bytes());
        out.extend_from_slice(&sealed);
        drop(sealed);

        let new_charge = round_up(out.len() as u64, cache.block_size());
        cache
            .charge_external(new_charge)
            .map_err(|e| SnapshotError::NoRoom(e.to_string()))?;

        let tmp = dir.join(TMP_FILE_NAME);
        let path = dir.join(FILE_NAME);
        if let Err(e) = write_tmp(&tmp, &out) {
            let _ = fs::remove_file(&tmp);
            cache.release_external(new_charge);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            cache.release_external(new_charge);
            return Err(io_err("rename", &tmp)(e));
        }
        // The old file is gone (replaced): from here on the new one is what is charged.
        cache.release_external(self.charged);
        self.charged = new_charge;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))?;
        Ok(out.len() as u64)
    }

    /// Bytes currently charged to the cache for the checkpoint file.
    pub fn charged(&self) -> u64 {
        self.charged
    }
}

/// Creates `tmp` exclusively (after removing a stale one), writes `data` and fsyncs it.
fn write_tmp(tmp: &Path, data: &[u8]) -> Result<(), SnapshotError> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale", tmp)(e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    f.write_all(data).map_err(io_err("write", tmp))?;
    f.sync_all().map_err(io_err("fsync", tmp))
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), String> {
        let n = u32::try_from(b.len()).map_err(|_| "a name or version over 4 GiB".to_string())?;
        self.u32(n);
        self.0.extend_from_slice(b);
        Ok(())
    }
    fn str(&mut self, s: &str) -> Result<(), String> {
        self.bytes(s.as_bytes())
    }
    /// As journal.rs: seconds floored (times before 1970 have negative seconds, nanos >= 0).
    fn time(&mut self, t: SystemTime) {
        let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                }
            }
        };
        self.0.extend_from_slice(&secs.to_le_bytes());
        self.u32(nanos);
    }
}

fn kind_code(k: FileKind) -> u8 {
    match k {
        FileKind::File => KIND_FILE,
        FileKind::Dir => KIND_DIR,
        FileKind::Symlink => KIND_SYMLINK,
    }
}

/// The nodes a checkpoint keeps: every node reachable from the root through non-orphan parents.
/// Checks that the tree is one load accepts and rebuilds exactly.
fn persisted_nodes(ns: &Namespace) -> Result<Vec<&Node>, String> {
    let root = ns.nodes.get(&NodeId::ROOT).ok_or("no root node")?;
    if root.kind != FileKind::Dir || root.parent != NodeId::ROOT || root.orphan {
        return Err("the root is not a directory that is its own parent".into());
    }
    // live[id]: kept (true) or below an orphan (false).
    let mut live: HashMap<NodeId, bool> = HashMap::with_capacity(ns.nodes.len());
    live.insert(NodeId::ROOT, true);
    let mut chain = Vec::new();
    for (&id, _) in ns.nodes.iter() {
        chain.clear();
        let (mut cur, mut child) = (id, id);
        let verdict = loop {
            if let Some(&v) = live.get(&cur) {
                break v;
            }
            let Some(n) = ns.nodes.get(&cur) else {
                return Err(format!(
                    "node {} has a parent {} that does not exist",
                    child.0, cur.0
                ));
            };
            if n.orphan {
                break false;
            }
            if chain.len() > ns.nodes.len() {
                return Err(format!("node {} is in a parent cycle", id.0));
            }
            chain.push(cur);
            child = cur;
            cur = n.parent;
        };
        for c in &chain {
            live.insert(*c, verdict);
        }
    }
    let mut kept: Vec<&Node> = ns
        .nodes
        .values()
        .filter(|n| live.get(&n.id).copied().unwrap_or(false))
        .collect();
    kept.sort_unstable_by_key(|n| n.id);

    let mut entries = 0usize;
    for n in &kept {
        if n.id.0 >= ns.next_id {
            return Err(format!(
                "node id {} is not below next_id {}",
                n.id.0, ns.next_id
            ));
        }
        if let Some(c) = &n.children {
            if n.kind != FileKind::Dir {
                return Err(format!(
                    "node {} has children but is not a directory",
                    n.id.0
                ));
            }
            entries += c.len();
        }
        if n.id == NodeId::ROOT {
            continue;
        }
        if !valid_component(&n.name) {
            return Err(format!("node {} has an invalid name", n.id.0));
        }
        let slot = ns
            .nodes
            .get(&n.parent)
            .filter(|p| p.kind == FileKind::Dir)
            .and_then(|p| p.children.as_ref())
            .and_then(|c| c.get(&n.name));
        if slot != Some(&n.id) {
            return Err(format!(
                "node {} is not in its parent {}'s children",
                n.id.0, n.parent.0
            ));
        }
    }
    // Every kept non-root node is in its parent's map; equal counts mean the maps hold nothing
    // else (no orphans, no stale entries) and load rebuilds them exactly.
    if entries != kept.len() - 1 {
        return Err("a directory's children list nodes that are not in the tree".into());
    }
    Ok(kept)
}

fn encode(ns: &Namespace, cp: &Checkpoint) -> Result<Vec<u8>, String> {
    if let Some(a) = cp.applied.iter().find(|&&a| a < cp.applied_below) {
        return Err(format!(
            "checkpoint lists applied LSN {a} below applied_below {}",
            cp.applied_below
        ));
    }
    let nodes = persisted_nodes(ns)?;
    let mut w = W(Vec::with_capacity(64 + nodes.len() * 128));
    w.u64(cp.lsn);
    w.u64(cp.applied_below);
    w.u64(cp.applied.len() as u64);
    for a in &cp.applied {
        w.u64(*a);
    }
    w.u64(cp.rebased.len() as u64);
    for (lsn, content) in &cp.rebased {
        if *lsn < cp.applied_below {
            return Err(format!(
                "checkpoint lists the rebased commit {lsn} below applied_below {}",
                cp.applied_below
            ));
        }
        w.u64(*lsn);
        encode_content(&mut w.0, content);
    }
    w.u64(ns.next_id);
    w.u64(nodes.len() as u64);
    for n in nodes {
        w.u64(n.id.0);
        w.u64(n.generation);
        w.u64(n.parent.0);
        w.str(&n.name)?;
        w.u8(kind_code(n.kind));
        w.u16(n.perm);
        w.time(n.mtime);
        w.time(n.atime);
        w.time(n.ctime);
        encode_content(&mut w.0, &n.content);
        match &n.target {
            None => w.u8(0),
            Some(t) => {
                w.u8(1);
                w.str(t)?;
            }
        }
        match &n.remote {
            None => w.u8(0),
            Some(r) => {
                w.u8(1);
                w.bytes(r.version.as_bytes())?;
                w.u64(r.size);
            }
        }
        w.u8(u8::from(n.children.is_some()));
        w.u32(n.pending);
        w.u8(u8::from(n.dirty));
    }
    let mut tombs: Vec<(&RemotePath, &u32)> = ns.tombstones.iter().collect();
    tombs.sort_unstable();
    w.u64(tombs.len() as u64);
    for (p, &count) in tombs {
        if count == 0 {
            return Err(format!("tombstone {p} has a count of 0"));
        }
        w.str(p.as_str())?;
        w.u32(count);
    }
    Ok(w.0)
}

// ---------------------------------------------------------------------------------------------
// Decoding

type Reason = &'static str;

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reason> {
        if self.0.len() < n {
            return Err("truncated body");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, Reason> {
        Ok(self.take(1)?[0])
    }
    fn flag(&mut self) -> Result<bool, Reason> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("bad flag"),
        }
    }
    fn u16(&mut self) -> Result<u16, Reason> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Reason> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, Reason> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], Reason> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, Reason> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "bad utf-8")
    }
    fn time(&mut self) -> Result<SystemTime, Reason> {
        let secs = self.u64()? as i64;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err("bad time");
        }
        let t = if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(nanos.into())))
        };
        t.ok_or("time out of range")
    }
    /// A count of items each at least `min` bytes long, checked against what is left.
    fn count(&mut self, min: usize) -> Result<usize, Reason> {
        let n = self.u64()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min) <= self.0.len() => Ok(n),
            _ => Err("count larger than the body"),
        }
    }
}

fn decode(body: &[u8], version: u16) -> Result<(Namespace, Checkpoint), Reason> {
    let mut r = R(body);
    let lsn = r.u64()?;
    let applied_below = r.u64()?;
    let n = r.count(8)?;
    let mut applied = Vec::with_capacity(n);
    for _ in 0..n {
        let a = r.u64()?;
        if a < applied_below {
            return Err("applied LSN below applied_below");
        }
        applied.push(a);
    }
    let mut rebased = Vec::new();
    if version >= 2 {
        // LSN + the smallest content (8+1+8+8+8).
        let n = r.count(8 + 33)?;
        for _ in 0..n {
            let l = r.u64()?;
            if l < applied_below {
                return Err("rebased commit below applied_below");
            }
            let content = decode_content(&mut r.0).map_err(|_| "bad content map")?;
            rebased.push((l, content));
        }
    }
    let cp = Checkpoint {
        lsn,
        applied_below,
        applied,
        rebased,
    };
    let next_id = r.u64()?;

    // Smallest node: 3 ids + name len + kind + perm + 3 times + content (8+1+8+8+8) + 2 options
    // + flag + pending + dirty.
    let count = r.count(24 + 4 + 1 + 2 + 36 + 33 + 2 + 1 + 4 + 1)?;
    let mut nodes: HashMap<NodeId, Node> = HashMap::with_capacity(count);
    let mut order = Vec::with_capacity(count);
    for _ in 0..count {
        let id = NodeId(r.u64()?);
        let generation = r.u64()?;
        let parent = NodeId(r.u64()?);
        let name = r.str()?;
        let kind = match r.u8()? {
            KIND_FILE => FileKind::File,
            KIND_DIR => FileKind::Dir,
            KIND_SYMLINK => FileKind::Symlink,
            _ => return Err("unknown node kind"),
        };
        let perm = r.u16()?;
        let mtime = r.time()?;
        let atime = r.time()?;
        let ctime = r.time()?;
        let content: Content = decode_content(&mut r.0).map_err(|_| "bad content map")?;
        let target = if r.flag()? { Some(r.str()?) } else { None };
        let remote = if r.flag()? {
            Some(RemoteState {
                version: Version::from(r.bytes()?),
                size: r.u64()?,
            })
        } else {
            None
        };
        let children_known = r.flag()?;
        let pending = r.u32()?;
        let dirty = r.flag()?;
        if children_known && kind != FileKind::Dir {
            return Err("children known for a node that is not a directory");
        }
        if id.0 >= next_id {
            return Err("node id not below next_id");
        }
        let node = Node {
            id,
            generation,
            parent,
            name,
            kind,
            perm,
            mtime,
            atime,
            ctime,
            content,
            target,
            remote,
            children: children_known.then(BTreeMap::new),
            listed_at: None,
            pending,
            dirty,
            open: 0,
            orphan: false,
            cached_version: None,
            remote_gen: 0,
            checked_at: None,
        };
        if nodes.insert(id, node).is_some() {
            return Err("duplicate node id");
        }
        order.push(id);
    }

    let tcount = r.count(8)?;
    let mut tombstones = HashMap::with_capacity(tcount);
    for _ in 0..tcount {
        let path = RemotePath::parse(&r.str()?).ok_or("bad tombstone path")?;
        let n = r.u32()?;
        if n == 0 || tombstones.insert(path, n).is_some() {
            return Err("bad tombstone");
        }
    }
    if !r.0.is_empty() {
        return Err("trailing bytes");
    }

    // The tree.
    match nodes.get(&NodeId::ROOT) {
        Some(root) if root.kind == FileKind::Dir && root.parent == NodeId::ROOT => {}
        Some(_) => return Err("the root is not a directory that is its own parent"),
        None => return Err("no root node"),
    }
    for &id in &order {
        if id == NodeId::ROOT {
            continue;
        }
        let (parent, name) = match nodes.get(&id) {
            Some(n) => (n.parent, n.name.clone()),
            None => return Err("node vanished"),
        };
        if !valid_component(&name) {
            return Err("invalid node name");
        }
        let p = nodes.get_mut(&parent).ok_or("a node's parent is missing")?;
        if p.kind != FileKind::Dir {
            return Err("a node's parent is not a directory");
        }
        let children = p
            .children
            .as_mut()
            .ok_or("a node's parent does not have its children known")?;
        if children.insert(name, id).is_some() {
            return Err("two nodes with the same parent and name");
        }
    }
    // Every node reachable from the root (no cycles of parents).
    let mut seen = 1usize;
    let mut stack = vec![NodeId::ROOT];
    while let Some(id) = stack.pop() {
        if let Some(c) = nodes.get(&id).and_then(|n| n.children.as_ref()) {
            for &child in c.values() {
                seen += 1;
                stack.push(child);
            }
        }
    }
    if seen != nodes.len() {
        return Err("nodes not reachable from the root");
    }
    Ok((
        Namespace {
            nodes,
            next_id,
            tombstones,
            partial: Default::default(),
            replaced: Default::default(),
            stand_ins: Default::default(),
        },
        cp,
    ))
}
