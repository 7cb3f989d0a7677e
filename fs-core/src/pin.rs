//! Pinning ("available offline") and file states. A pin fetches every chunk of a file (of every
//! file below a directory) into the cache and marks it pinned there: pinned chunks are never
//! evicted and count toward the cache limit. Unpinning lets them be evicted again. A pin that
//! cannot fit beside what is already pinned or dirty is refused before anything is fetched.
//!
//! The pin is on the chunks of the version that is cached: when the file changes on the
//! provider, the new version's chunks are not pinned until the file is pinned again.

use crate::content::{local_key, remote_key, ChunkSrc};
use crate::error::{FsError, FsResult};
use crate::namespace::RemoteState;
use crate::types::{FileKind, NodeId};
use crate::vfs::{lock, Vfs};

/// What `mountctl state` shows for a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Nothing of it is cached: reading it needs the provider.
    OnlineOnly,
    /// Some of it is cached (evictable).
    PartlyCached,
    /// All of it is cached (evictable).
    Cached,
    /// All of it is cached and kept offline.
    Pinned,
    /// Changed here, not yet uploaded.
    Dirty,
    /// Being uploaded now.
    Uploading,
    /// The file, or a conflict copy of it, came out of a conflict during this mount.
    Conflict,
    Directory,
    Symlink,
}

impl FileState {
    pub fn name(self) -> &'static str {
        match self {
            FileState::OnlineOnly => "online-only",
            FileState::PartlyCached => "partly-cached",
            FileState::Cached => "cached",
            FileState::Pinned => "pinned",
            FileState::Dirty => "dirty",
            FileState::Uploading => "uploading",
            FileState::Conflict => "conflict",
            FileState::Directory => "directory",
            FileState::Symlink => "symlink",
        }
    }
}

/// One chunk of a file that holds data.
struct DataChunk {
    key: cache::ChunkKey,
    index: u64,
    len: u64,
    /// Of the remote version (fetchable), not written here.
    remote: bool,
}

/// What a pin or unpin did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinReport {
    pub files: u64,
    /// Bytes of the files concerned.
    pub bytes: u64,
}

impl Vfs {
    /// The node at `rel` (components separated by `/`, relative to the root of the mount).
    pub async fn resolve(&self, rel: &str) -> FsResult<NodeId> {
        let mut cur = NodeId::ROOT;
        for name in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
            cur = self.lookup(cur, name).await?.ino;
        }
        Ok(cur)
    }

    /// Files below `node` (itself if a file), listing directories as needed.
    async fn files_below(&self, node: NodeId) -> FsResult<Vec<NodeId>> {
        let mut out = Vec::new();
        let mut todo = vec![node];
        while let Some(n) = todo.pop() {
            let kind = lock(&self.inner.ns).get(n).map(|x| x.kind);
            match kind {
                Some(FileKind::File) => out.push(n),
                Some(FileKind::Dir) => {
                    for e in self.readdir(n).await? {
                        if e.name != "." && e.name != ".." {
                            todo.push(e.attr.ino);
                        }
                    }
                }
                Some(FileKind::Symlink) => {}
                None => return Err(FsError::NotFound),
            }
        }
        Ok(out)
    }

    /// Pins (or with `pin == false` unpins) `node`, recursively for a directory. A pin fails
    /// with `NoSpace` before fetching anything when the files do not fit beside what is
    /// already pinned or dirty.
    pub async fn pin(&self, node: NodeId, pin: bool) -> FsResult<PinReport> {
        let files = self.files_below(node).await?;
        let mut report = PinReport::default();
        if pin {
            let mut need = 0u64;
            for &f in &files {
                need += self
                    .chunks_of(f)
                    .iter()
                    .filter(|c| {
                        !self
                            .inner
                            .cache
                            .state(&c.key)
                            .is_some_and(|s| s.is_user_pinned() || s.is_dirty())
                    })
                    .map(|c| c.len)
                    .sum::<u64>();
            }
            let u = self.inner.cache.usage();
            let room = u.limit_bytes.saturating_sub(u.pinned_bytes + u.dirty_bytes);
            if need > room {
                return Err(FsError::NoSpace);
            }
        }
        for f in files {
            let (path, version, size) = {
                let ns = lock(&self.inner.ns);
                let n = ns.get(f).ok_or(FsError::NotFound)?;
                (
                    ns.path_of(f),
                    n.content.base.as_ref().map(|b| b.version.clone()),
                    n.content.size,
                )
            };
            for DataChunk {
                key, index, remote, ..
            } in self.chunks_of(f)
            {
                if pin {
                    if !self.inner.cache.contains(&key) {
                        // A local chunk not in the cache yet is on its way there, dirty (kept
                        // until uploaded); only chunks of the remote version are fetched.
                        let (Some(path), Some(version), true) =
                            (path.clone(), version.clone(), remote)
                        else {
                            continue;
                        };
                        self.fetch(path, key.clone(), version, index).await?;
                    }
                    self.inner
                        .cache
                        .pin(&key)
                        .map_err(|e| FsError::Io(format!("cannot pin a chunk: {e}")))?;
                } else {
                    match self.inner.cache.unpin(&key) {
                        Ok(()) | Err(cache::CacheError::NotCached) => {}
                        Err(e) => return Err(FsError::Io(format!("cannot unpin a chunk: {e}"))),
                    }
                }
            }
            report.files += 1;
            report.bytes += size;
        }
        Ok(report)
    }

    /// A pinned file that changed remotely stays available offline: the old version's chunks
    /// are unpinned (evictable now) and the new version is fetched and pinned in the
    /// background. A new version that does not fit is left online-only, with a warning.
    pub(crate) fn follow_pins(&self, replaced: &[(NodeId, RemoteState)]) {
        let cs = self.inner.cfg.chunk_size;
        for (node, old) in replaced {
            let Some(oid) = lock(&self.inner.ns).get(*node).map(|n| n.object_id()) else {
                continue;
            };
            let pinned = (0..old.size.div_ceil(cs)).any(|i| {
                self.inner
                    .cache
                    .state(&remote_key(&oid, &old.version, i))
                    .is_some_and(|s| s.is_user_pinned())
            });
            if !pinned {
                continue;
            }
            for i in 0..old.size.div_ceil(cs) {
                let _ = self.inner.cache.unpin(&remote_key(&oid, &old.version, i));
            }
            let (vfs, node) = (self.clone(), *node);
            drop(self.spawn_background(async move {
                match vfs.pin(node, true).await {
                    Ok(_) => tracing::info!(node = node.0, "a pinned file changed remotely: its new version is pinned"),
                    Err(e) => tracing::warn!(node = node.0, error = %e, "a pinned file changed remotely and its new version could not be pinned; it is online-only until pinned again"),
                }
            }));
        }
    }

    /// `node`'s chunks that hold data.
    fn chunks_of(&self, node: NodeId) -> Vec<DataChunk> {
        let cs = self.inner.cfg.chunk_size;
        let ns = lock(&self.inner.ns);
        let Some(n) = ns.get(node) else {
            return Vec::new();
        };
        let c = &n.content;
        let oid = n.object_id();
        (0..c.size.div_ceil(cs))
            .filter_map(|i| {
                let len = cs.min(c.size - i * cs);
                let (key, remote) = match c.src(i, cs) {
                    ChunkSrc::Local(g) | ChunkSrc::Base { alias: Some(g) } => {
                        (local_key(&oid, g, i), false)
                    }
                    ChunkSrc::Base { alias: None } => {
                        (remote_key(&oid, &c.base.as_ref()?.version, i), true)
                    }
                    ChunkSrc::Hole => return None,
                };
                Some(DataChunk {
                    key,
                    index: i,
                    len,
                    remote,
                })
            })
            .collect()
    }

    /// What `mountctl state` shows for `node`.
    pub fn file_state(&self, node: NodeId) -> FsResult<FileState> {
        let (kind, path, modified) = {
            let ns = lock(&self.inner.ns);
            let n = ns.get(node).ok_or(FsError::NotFound)?;
            (n.kind, ns.path_of(node), n.content.is_modified())
        };
        match kind {
            FileKind::Dir => return Ok(FileState::Directory),
            FileKind::Symlink => return Ok(FileState::Symlink),
            FileKind::File => {}
        }
        if let Some(p) = &path {
            let p = p.to_string();
            if lock(&self.inner.conflict_log)
                .iter()
                .any(|c| c.path == p || c.copy.as_deref() == Some(p.as_str()))
            {
                return Ok(FileState::Conflict);
            }
        }
        if let Some(p) = &path {
            if lock(&self.inner.queue).in_flight_at(p) {
                return Ok(FileState::Uploading);
            }
        }
        if modified {
            return Ok(FileState::Dirty);
        }
        let chunks = self.chunks_of(node);
        let states: Vec<_> = chunks
            .iter()
            .map(|c| self.inner.cache.state(&c.key))
            .collect();
        let cached = states.iter().filter(|s| s.is_some()).count();
        Ok(if chunks.is_empty() {
            FileState::Cached
        } else if states.iter().all(|s| s.is_some_and(|s| s.is_user_pinned())) {
            FileState::Pinned
        } else if cached == chunks.len() {
            FileState::Cached
        } else if cached > 0 {
            FileState::PartlyCached
        } else {
            FileState::OnlineOnly
        })
    }
}
