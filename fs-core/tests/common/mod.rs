//! What the reference-model tests share: deterministic contents, talking to a [`Vfs`] the way
//! the kernel would (lookups from the root, open/read/write/close), walking the whole drive,
//! and comparing trees (a tree is what `MemoryProvider::snapshot` gives).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cache::{CacheConfig, CacheError, CacheLimit, ChunkCache, KdfParams, Passphrase};
pub use fs_core::provider::memory::SnapshotEntry as ModelEntry;
use fs_core::provider::Provider;
use fs_core::{FileKind, FsError, NodeId, OpenFlags, Vfs, VfsConfig};

pub type Tree = BTreeMap<String, ModelEntry>;

/// A change made on the provider behind the drive's back: in `model.rs` after a flush (so
/// nothing is queued) and skipped when it does not fit the current tree; in
/// `conflict_model.rs` at once, whatever is queued.
#[derive(Clone, Debug)]
pub enum Change {
    /// Creates or replaces the file (the parent must be a directory; not over a dir/symlink).
    Put { path: &'static str, data: Data },
    /// Removes whatever is there, with everything below it.
    Remove { path: &'static str },
    /// Creates a directory (the parent must be a directory, the name free).
    Mkdir { path: &'static str },
}

/// Deterministic file contents: `len` bytes of a pattern chosen by `seed` (no period of a chunk
/// size, so misplaced chunks are seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data {
    pub len: usize,
    pub seed: u8,
}

pub fn d(len: usize, seed: u8) -> Data {
    Data { len, seed }
}

impl Data {
    pub fn bytes(self) -> Vec<u8> {
        (0..self.len as u64)
            .map(|i| {
                let x = (i ^ (u64::from(self.seed) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (x >> 56) as u8
            })
            .collect()
    }
}

pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

pub fn show(e: Option<&ModelEntry>) -> String {
    match e {
        None => "absent".into(),
        Some(ModelEntry::Dir) => "dir".into(),
        Some(ModelEntry::Symlink(t)) => format!("symlink -> {t:?}"),
        Some(ModelEntry::File(b)) => {
            let zeros = b.iter().filter(|x| **x == 0).count();
            format!("file of {} bytes ({zeros} zero bytes)", b.len())
        }
    }
}

/// `None` if equal, else one line per difference.
pub fn diff(want: &Tree, got: &Tree) -> Option<String> {
    let mut out = String::new();
    let keys: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for k in keys {
        let (w, g) = (want.get(k), got.get(k));
        if w == g {
            continue;
        }
        out.push_str(&format!("  {k}: want {}, got {}", show(w), show(g)));
        if let (Some(ModelEntry::File(a)), Some(ModelEntry::File(b))) = (w, g) {
            if let Some(i) = a.iter().zip(b.iter()).position(|(x, y)| x != y) {
                out.push_str(&format!(
                    "; first difference at byte {i} (want {}, got {})",
                    a[i], b[i]
                ));
            }
        }
        out.push('\n');
    }
    (!out.is_empty()).then_some(out)
}

// ---------------------------------------------------------------------------------------------
// Talking to the drive

pub const R: OpenFlags = OpenFlags {
    read: true,
    write: false,
    append: false,
    truncate: false,
    exclusive: false,
};
pub const W: OpenFlags = OpenFlags {
    read: true,
    write: true,
    append: false,
    truncate: false,
    exclusive: false,
};

/// The directory `path` is in, resolved by lookups from the root, and the last name.
pub async fn resolve_parent<'p>(vfs: &Vfs, path: &'p str) -> Result<(NodeId, &'p str), FsError> {
    let (dir, name) = split(path);
    let mut cur = NodeId::ROOT;
    if !dir.is_empty() {
        for c in dir.split('/') {
            let a = vfs.lookup(cur, c).await?;
            // Path resolution wants a directory here (the kernel checks before it asks).
            if a.kind != FileKind::Dir {
                return Err(FsError::NotADirectory);
            }
            cur = a.ino;
        }
    }
    Ok((cur, name))
}

pub async fn resolve(vfs: &Vfs, path: &str) -> Result<NodeId, FsError> {
    let (parent, name) = resolve_parent(vfs, path).await?;
    Ok(vfs.lookup(parent, name).await?.ino)
}

pub async fn read_all(vfs: &Vfs, ino: NodeId) -> Result<Vec<u8>, FsError> {
    let o = vfs.open(ino, R).await?;
    let mut out = Vec::new();
    let r = loop {
        match vfs.read(o.fh, out.len() as u64, 100_000).await {
            Ok(b) if b.is_empty() => break Ok(()),
            // No file of the model is that large: reads that never end are a failure, not a
            // process that eats all memory.
            Ok(_) if out.len() > 16 << 20 => {
                break Err(FsError::Io(format!(
                    "read on past {} bytes (size {})",
                    out.len(),
                    vfs.getattr(ino).await.map_or(0, |a| a.size)
                )))
            }
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => break Err(e),
        }
    };
    vfs.release(o.fh).await?;
    r.map(|()| out)
}

/// Writes `pieces` of `data` to the open file, then closes it (flush + release).
pub async fn write_and_close(
    vfs: &Vfs,
    fh: u64,
    offset: u64,
    data: &[u8],
    pieces: u8,
    backwards: bool,
) -> Result<(), FsError> {
    let n = usize::from(pieces.max(1));
    let mut parts: Vec<(usize, usize)> = (0..n)
        .map(|k| (data.len() * k / n, data.len() * (k + 1) / n))
        .filter(|(a, b)| a < b)
        .collect();
    if backwards {
        parts.reverse();
    }
    let mut r = Ok(());
    for (a, b) in parts {
        match vfs.write(fh, offset + a as u64, &data[a..b]).await {
            Ok(w) if w as usize == b - a => {}
            Ok(w) => {
                r = Err(FsError::Io(format!("short write: {w} of {}", b - a)));
                break;
            }
            Err(e) => {
                r = Err(e);
                break;
            }
        }
    }
    let f = vfs.flush(fh).await;
    let rel = vfs.release(fh).await;
    r.and(f).and(rel)
}

/// Everything the drive shows, by walking it from the root.
pub async fn walk(vfs: &Vfs) -> Result<Tree, String> {
    let mut out = Tree::new();
    let mut stack = vec![(NodeId::ROOT, String::new())];
    while let Some((ino, path)) = stack.pop() {
        let entries = vfs
            .readdir(ino)
            .await
            .map_err(|e| format!("walk: readdir {path:?}: {e:?}"))?;
        for e in entries {
            let p = if path.is_empty() {
                e.name.clone()
            } else {
                format!("{path}/{}", e.name)
            };
            let a = vfs
                .lookup(ino, &e.name)
                .await
                .map_err(|err| format!("walk: lookup of listed {p:?}: {err:?}"))?;
            if a.ino != e.attr.ino || a.kind != e.attr.kind {
                return Err(format!(
                    "walk: {p:?} listed as {:?} {:?} but looked up as {:?} {:?}",
                    e.attr.ino, e.attr.kind, a.ino, a.kind
                ));
            }
            match a.kind {
                FileKind::Dir => {
                    // The model is three levels deep: deeper is a cycle of directories.
                    if p.matches('/').count() > 8 {
                        return Err(format!("walk: {p:?}: a cycle of directories"));
                    }
                    out.insert(p.clone(), ModelEntry::Dir);
                    stack.push((a.ino, p));
                }
                FileKind::File => {
                    let data = read_all(vfs, a.ino)
                        .await
                        .map_err(|err| format!("walk: reading {p:?}: {err:?}"))?;
                    if data.len() as u64 != a.size {
                        return Err(format!(
                            "walk: {p:?} has size {} but {} bytes were read",
                            a.size,
                            data.len()
                        ));
                    }
                    out.insert(p, ModelEntry::File(data));
                }
                FileKind::Symlink => {
                    let t = vfs
                        .readlink(a.ino)
                        .await
                        .map_err(|err| format!("walk: readlink {p:?}: {err:?}"))?;
                    out.insert(p, ModelEntry::Symlink(t));
                }
            }
        }
    }
    Ok(out)
}

/// One drive "process": its own runtime, the cache in `dir` (waiting for a crashed process's
/// lock to go) and the drive over `provider`, with its uploader running. Dropping the runtime
/// with `shutdown_background` is a kill -9.
pub fn start_drive(
    dir: &Path,
    cfg: &VfsConfig,
    provider: Arc<dyn Provider>,
) -> Result<(tokio::runtime::Runtime, Vfs), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut tries = 0;
    let cache = loop {
        match ChunkCache::open(
            CacheConfig::new(dir, CacheLimit::bytes(256 << 20)),
            &Passphrase::new("pw", KdfParams::FAST_INSECURE),
        ) {
            Ok(c) => break Arc::new(c),
            Err(CacheError::InUse { .. }) if tries < 500 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("reopening the cache: {e}")),
        }
    };
    let vfs = rt.block_on(async {
        let vfs = Vfs::new(cfg.clone(), cache, provider)?;
        vfs.spawn_uploader();
        Ok::<_, FsError>(vfs)
    });
    let vfs = vfs.map_err(|e| format!("Vfs::new after a restart: {e:?}"))?;
    Ok((rt, vfs))
}

/// Logs of the drive on stderr when `RUST_LOG` is set (e.g. `RUST_LOG=fs_core=debug`), for
/// reading what a failing case did. Once per test binary.
#[allow(dead_code)]
pub fn trace_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}
