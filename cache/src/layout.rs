//! The cache directory on disk: creation with private modes, the process lock, the format marker,
//! and the scan that rebuilds the in-memory index at open (repairing what a crash left behind).
//!
//! ```text
//! <dir>/            0700
//!   format          "syncoxide-cache 1\n": layout version
//!   lock            flock'ed while a process has the cache open
//!   key             wrapped data key (crypto/keys.rs)
//!   index           eviction-order snapshot (index.rs)
//!   tmp/            chunk files being written; emptied at open
//!   chunks/<32 hex>.<state>   one file per chunk, state c | d | p | dp
//! ```
//! Every file is 0600. State lives in the file name so that a state change is one atomic rename.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{CacheError, Result};
use crate::format;
use crate::key::ChunkName;

pub const FORMAT_FILE: &str = "format";
pub const LOCK_FILE: &str = "lock";
pub const TMP_DIR: &str = "tmp";
pub const CHUNKS_DIR: &str = "chunks";
/// Version of the directory layout (not of the chunk files, which carry their own).
pub const LAYOUT_VERSION: u16 = 1;
const FORMAT_PREFIX: &str = "syncoxide-cache ";

/// Where a chunk stands. Explicit, never encoded in a sentinel: it is the suffix of the file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkState {
    /// Fetched from the provider; may be evicted.
    Clean,
    /// Written locally, not yet on the provider: pinned until the upload commits.
    Dirty,
    /// Kept offline by the user: pinned until unpinned.
    Pinned,
    /// Both dirty and kept offline.
    DirtyPinned,
}

impl ChunkState {
    pub fn is_dirty(self) -> bool {
        matches!(self, ChunkState::Dirty | ChunkState::DirtyPinned)
    }
    pub fn is_user_pinned(self) -> bool {
        matches!(self, ChunkState::Pinned | ChunkState::DirtyPinned)
    }
    pub fn is_evictable(self) -> bool {
        self == ChunkState::Clean
    }
    /// The state with these two flags.
    pub fn from_flags(dirty: bool, user_pinned: bool) -> Self {
        match (dirty, user_pinned) {
            (false, false) => ChunkState::Clean,
            (true, false) => ChunkState::Dirty,
            (false, true) => ChunkState::Pinned,
            (true, true) => ChunkState::DirtyPinned,
        }
    }
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            ChunkState::Clean => "c",
            ChunkState::Dirty => "d",
            ChunkState::Pinned => "p",
            ChunkState::DirtyPinned => "dp",
        }
    }
    fn from_suffix(s: &str) -> Option<Self> {
        Some(match s {
            "c" => ChunkState::Clean,
            "d" => ChunkState::Dirty,
            "p" => ChunkState::Pinned,
            "dp" => ChunkState::DirtyPinned,
            _ => return None,
        })
    }
}

pub(crate) fn chunk_file_name(name: ChunkName, state: ChunkState) -> String {
    format!("{}.{}", name.to_hex(), state.suffix())
}

pub(crate) fn parse_chunk_file_name(s: &str) -> Option<(ChunkName, ChunkState)> {
    let (hex, suffix) = s.split_once('.')?;
    Some((ChunkName::from_hex(hex)?, ChunkState::from_suffix(suffix)?))
}

/// Creates `path` as a private directory, or makes an existing one private.
pub(crate) fn private_dir(path: &Path) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let md = fs::metadata(path).map_err(|e| CacheError::io("stat", path, e))?;
            if !md.is_dir() {
                return Err(CacheError::io(
                    "open directory",
                    path,
                    io::Error::other("exists and is not a directory"),
                ));
            }
            if md.mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "cache directory was readable by others; making it private (0700)");
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                    .map_err(|e| CacheError::io("chmod", path, e))?;
            }
            Ok(())
        }
        Err(e) => Err(CacheError::io("create directory", path, e)),
    }
}

/// Opens a file for writing with mode 0600, failing if it exists.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Holds the process lock of a cache directory for as long as it lives.
pub(crate) struct DirLock {
    _file: File,
}

pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    // Held read-only, so that the cache's file system can still be remounted read-only under a
    // running cache (which then degrades instead of blocking the remount).
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match create_private(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CacheError::io("create lock file", &path, e)),
            }
            File::open(&path).map_err(|e| CacheError::io("open lock file", &path, e))?
        }
        Err(e) => return Err(CacheError::io("open lock file", &path, e)),
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(CacheError::InUse {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(CacheError::io("lock", &path, e.into())),
    }
}

/// Whether `dir` looks like a cache directory (has the layout marker or a key file), so that a
/// destructive operation never runs on a directory given by mistake.
pub fn is_cache_dir(dir: &Path) -> bool {
    dir.join(FORMAT_FILE).is_file() || dir.join(crate::crypto::keys::KEY_FILE_NAME).is_file()
}

/// Checks the layout marker, writing it for a new cache.
pub(crate) fn check_format(dir: &Path) -> Result<()> {
    let path = dir.join(FORMAT_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let v = s
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| v.trim().parse::<u16>().ok())
                .ok_or_else(|| CacheError::KeyFileCorrupt {
                    path: path.clone(),
                    reason: "not a syncoxide cache format marker".into(),
                })?;
            if v != LAYOUT_VERSION {
                return Err(CacheError::UnsupportedFormat {
                    what: "cache directory layout",
                    path,
                    found: v,
                    supported: LAYOUT_VERSION,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = dir.join("format.tmp");
            let _ = fs::remove_file(&tmp);
            let mut f = create_private(&tmp).map_err(|e| CacheError::io("create", &tmp, e))?;
            f.write_all(format!("{FORMAT_PREFIX}{LAYOUT_VERSION}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| CacheError::io("write", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| CacheError::io("rename", &path, e))?;
            Ok(())
        }
        Err(e) => Err(CacheError::io("read", &path, e)),
    }
}

/// Bytes a file of `len` bytes, `blocks` 512-byte blocks occupies, as counted against the limit:
/// whole file-system blocks, never less than what `du` would report.
pub(crate) fn charge(len: u64, blocks: u64, block_size: u64) -> u64 {
    len.div_ceil(block_size)
        .saturating_mul(block_size)
        .max(blocks.saturating_mul(512))
}

/// One chunk file found by the scan.
pub(crate) struct Found {
    pub state: ChunkState,
    pub charge: u64,
    pub mtime: SystemTime,
}

/// What the scan found: the chunks, and the bytes of everything else (files and directories).
pub(crate) struct Scan {
    pub chunks: HashMap<ChunkName, Found>,
    pub other_bytes: u64,
    pub chunks_dir_bytes: u64,
    pub repaired: usize,
}

/// Scans the cache directory, removing what does not belong: tmp files, unknown names, files too
/// short to be a chunk (torn by a power loss), and the clean twin of a name that also has a dirty
/// file (a crash between writing the dirty file and removing the older one).
pub(crate) fn scan(dir: &Path, block_size: u64) -> Result<Scan> {
    let mut repaired = 0;
    // Leftovers of an atomic replace cut by a crash (the key file's own is the key module's).
    for leftover in ["index.tmp", "format.tmp"] {
        let p = dir.join(leftover);
        if p.exists() {
            remove_any(&p)?;
            repaired += 1;
        }
    }
    let tmp = dir.join(TMP_DIR);
    for ent in fs::read_dir(&tmp).map_err(|e| CacheError::io("list", &tmp, e))? {
        let ent = ent.map_err(|e| CacheError::io("list", &tmp, e))?;
        remove_any(&ent.path())?;
        repaired += 1;
    }
    let chunks_dir = dir.join(CHUNKS_DIR);
    let mut chunks: HashMap<ChunkName, Found> = HashMap::new();
    for ent in fs::read_dir(&chunks_dir).map_err(|e| CacheError::io("list", &chunks_dir, e))? {
        let ent = ent.map_err(|e| CacheError::io("list", &chunks_dir, e))?;
        let path = ent.path();
        let parsed = ent.file_name().to_str().and_then(parse_chunk_file_name);
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CacheError::io("stat", &path, e)),
        };
        let Some((name, state)) = parsed.filter(|_| md.is_file()) else {
            tracing::warn!(path = %path.display(), "removing a file that is not a chunk");
            remove_any(&path)?;
            repaired += 1;
            continue;
        };
        if md.len() < format::OVERHEAD as u64 {
            tracing::warn!(path = %path.display(), "removing a torn chunk file");
            remove_any(&path)?;
            repaired += 1;
            continue;
        }
        let found = Found {
            state,
            charge: charge(md.len(), md.blocks(), block_size),
            mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        };
        match chunks.get(&name) {
            None => {
                chunks.insert(name, found);
            }
            Some(prev) => {
                // Two files for one name: keep the dirty one (it is newer local data).
                let (keep_new, loser) = if found.state.is_dirty() && !prev.state.is_dirty() {
                    (true, prev.state)
                } else {
                    (false, found.state)
                };
                remove_any(&chunks_dir.join(chunk_file_name(name, loser)))?;
                repaired += 1;
                if keep_new {
                    chunks.insert(name, found);
                }
            }
        }
    }
    let mut other_bytes = 0;
    for ent in fs::read_dir(dir).map_err(|e| CacheError::io("list", dir, e))? {
        let ent = ent.map_err(|e| CacheError::io("list", dir, e))?;
        if ent.file_name() == CHUNKS_DIR {
            continue;
        }
        if let Ok(md) = fs::symlink_metadata(ent.path()) {
            other_bytes += charge(md.len(), md.blocks(), block_size);
        }
    }
    let root = fs::metadata(dir).map_err(|e| CacheError::io("stat", dir, e))?;
    other_bytes += charge(root.len(), root.blocks(), block_size);
    let cd = fs::metadata(&chunks_dir).map_err(|e| CacheError::io("stat", &chunks_dir, e))?;
    Ok(Scan {
        chunks,
        other_bytes,
        chunks_dir_bytes: charge(cd.len(), cd.blocks(), block_size),
        repaired,
    })
}

fn remove_any(path: &Path) -> Result<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(|e| CacheError::io("remove", path, e))
}

/// Reads a whole file without zero-filling the buffer first.
pub(crate) fn read_whole(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0).saturating_add(1));
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Block size the limit is counted in: the file system's fragment size, at least 512.
pub(crate) fn block_size(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(|e| CacheError::io("statvfs", dir, e.into()))?;
    Ok(st.f_frsize.max(512))
}

/// Bytes available to unprivileged writers on the file system of `dir`.
pub(crate) fn available_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub(crate) fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

pub(crate) fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CHUNKS_DIR), dir.join(TMP_DIR))
}
