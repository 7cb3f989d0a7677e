//! The data path: reads map to chunks (write buffer, cache, or one ranged fetch shared by all
//! concurrent readers of a chunk), sequential readers get a read-ahead window that doubles up
//! to `max_readahead_chunks` within one global prefetch budget; writes go to a per-file buffer
//! of whole chunks, spilled to the cache as dirty chunks, and a commit (close, fsync, truncate)
//! makes them durable with one journal record.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;

use cache::{ChunkKey, PutKind};

use crate::content::{local_key, ChunkSrc, Content};
use crate::error::{FsError, FsResult};
use crate::journal::Record;
use crate::provider::RemotePath;
use crate::types::{FileKind, NodeId};
use crate::vfs::{lock, PendingPut, Vfs};

/// Longest a writer waits for the uploader to free room in a full cache.
const MAX_PRESSURE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// What a read needs to know about one chunk, taken under the namespace lock.
struct Plan {
    index: u64,
    src: ChunkSrc,
    buffered: Option<Bytes>,
}

impl Vfs {
    /// Where the provider has `node` now: its local path with every queued rename undone.
    pub(crate) fn remote_location(&self, node: NodeId) -> Option<RemotePath> {
        let mut path = lock(&self.inner.ns).path_of(node)?;
        let q = lock(&self.inner.queue);
        for rec in q.pending_renames_rev() {
            if let crate::journal::Record::Rename { from, to, .. } = rec {
                if path.starts_with(to) {
                    let rest = &path.as_str()[to.as_str().len()..];
                    path = RemotePath::parse(&format!("{}{rest}", from.as_str()))?;
                }
            }
        }
        Some(path)
    }

    /// Fetches chunk `i` of the remote file at `path`/`version` into the cache, once for all
    /// concurrent callers.
    pub(crate) async fn fetch(
        &self,
        path: RemotePath,
        key: ChunkKey,
        version: cache::Version,
        i: u64,
    ) -> FsResult<Bytes> {
        match self.inner.cache.get(&key) {
            Ok(Some(b)) => return Ok(b),
            Ok(None) | Err(cache::CacheError::Integrity { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "cache read failed; fetching"),
        }
        let vfs = self.clone();
        self.inner
            .flights
            .run(key.clone(), || async move {
                let cs = vfs.inner.cfg.chunk_size;
                let deadline = vfs.inner.cfg.provider_timeout;
                // A provider that does not even start answering within `offline_timeout` is
                // taken as unreachable: the read fails (EIO) instead of hanging the program.
                let answer = vfs.inner.cfg.offline_timeout.min(deadline);
                let read = async {
                    let s = tokio::time::timeout(
                        answer,
                        vfs.inner.provider.read(&path, &version, i * cs, cs),
                    )
                    .await
                    .map_err(|_| {
                        crate::provider::ProviderError::Unreachable(format!(
                            "no answer within the offline timeout ({answer:?})"
                        ))
                    })??;
                    crate::provider::collect(s).await
                };
                let data = match tokio::time::timeout(deadline, read).await {
                    Ok(Ok(d)) => {
                        vfs.note_reachable(true);
                        Bytes::from(d)
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %path, i, "fetch failed");
                        if e.is_unreachable() {
                            vfs.note_reachable(false);
                        }
                        return Err(FsError::from(e));
                    }
                    Err(_) => {
                        vfs.note_reachable(false);
                        return Err(FsError::TimedOut);
                    }
                };
                vfs.inner.counters.fetches.fetch_add(1, Ordering::Relaxed);
                vfs.inner
                    .counters
                    .fetched_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let cache = vfs.inner.cache.clone();
                let (k, d) = (key.clone(), data.clone());
                // Best effort: a failing or full cache still serves this read.
                let _ =
                    tokio::task::spawn_blocking(move || cache.put(&k, &d, PutKind::Clean)).await;
                Ok(data)
            })
            .await
    }

    /// Bytes `[from, to)` of chunk `plan.index` (chunk-relative); shorter means zeros follow.
    /// Cached chunks are read by range (only the 64 KiB blocks needed are decrypted); a miss
    /// fetches the whole chunk once for every concurrent reader.
    async fn chunk_range(
        &self,
        node: NodeId,
        oid: &cache::ObjectId,
        content_base: Option<&cache::Version>,
        plan: &Plan,
        from: u64,
        to: u64,
    ) -> FsResult<Bytes> {
        let slice = |b: Bytes| {
            let f = (from as usize).min(b.len());
            let t = (to as usize).min(b.len());
            b.slice(f..t)
        };
        if let Some(b) = &plan.buffered {
            return Ok(slice(b.clone()));
        }
        let ranged = |key: cache::ChunkKey| {
            let cache = self.inner.cache.clone();
            async move {
                // A cache hit is a local read: on a thread that may wait for the disk, no
                // hand-off to the blocking pool and back.
                if crate::vfs::LocalDiskWaitAllowed::here() {
                    return Ok(cache.get_range(&key, from, to - from));
                }
                tokio::task::spawn_blocking(move || cache.get_range(&key, from, to - from))
                    .await
                    .map_err(FsError::io)
            }
        };
        match plan.src {
            ChunkSrc::Hole => Ok(Bytes::new()),
            ChunkSrc::Local(g) => {
                let key = local_key(oid, g, plan.index);
                if let Some(b) = self.pending_chunk(&key) {
                    return Ok(slice(b));
                }
                match ranged(key).await? {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => Err(FsError::Io(format!(
                        "written data of chunk {} of node {} is missing from the cache",
                        plan.index, node.0
                    ))),
                    Err(e) => Err(FsError::io(e)),
                }
            }
            ChunkSrc::Base { alias } => {
                let mut version = content_base.ok_or(FsError::BadHandle)?.clone();
                if let Some(g) = alias {
                    if let Ok(Some(b)) = ranged(local_key(oid, g, plan.index)).await? {
                        return Ok(b);
                    }
                }
                let mut tries = 0;
                loop {
                    let key = crate::content::remote_key(oid, &version, plan.index);
                    if let Some(b) = self.chunk_in_stream(node, &version, plan.index) {
                        return Ok(slice(b));
                    }
                    if let Ok(Some(b)) = ranged(key.clone()).await? {
                        return Ok(b);
                    }
                    if let Some(b) = self.chunk_from_stream(node, &version, plan.index).await {
                        return Ok(slice(b));
                    }
                    let path = self.remote_location(node).ok_or(FsError::NotFound)?;
                    match self
                        .fetch(path.clone(), key, version.clone(), plan.index)
                        .await
                    {
                        Ok(whole) => return Ok(slice(whole)),
                        Err(e @ (FsError::NotFound | FsError::Io(_))) if tries < 3 => {
                            tries += 1;
                            match self.moved(node, &path, &version).await {
                                Some(v) => version = v,
                                None => return Err(e),
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// After a fetch of `node`'s base chunk at `path`/`version` failed: the version to read
    /// now, if the node moved on the provider meanwhile. A rename or an upload of it may be done
    /// on the provider before the drive records its outcome: while a record touching the path
    /// is being applied, this waits (up to the provider timeout) for the drive to record it.
    async fn moved(
        &self,
        node: NodeId,
        path: &RemotePath,
        version: &cache::Version,
    ) -> Option<cache::Version> {
        let deadline = std::time::Instant::now() + self.inner.cfg.provider_timeout;
        loop {
            let now = lock(&self.inner.ns)
                .get(node)?
                .content
                .base
                .as_ref()?
                .version
                .clone();
            let at = self.remote_location(node)?;
            if &now != version || &at != path {
                return Some(now);
            }
            let busy = lock(&self.inner.queue).in_flight_at(path);
            if !busy || std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Reads up to `size` bytes at `offset` of the file open as `fh`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let node = h.node;
        let cs = self.inner.cfg.chunk_size;
        let (plans, oid, base_version, file_size, base_len) = {
            let ns = lock(&self.inner.ns);
            let n = ns.get(node).ok_or(FsError::BadHandle)?;
            if n.kind != FileKind::File {
                return Err(FsError::IsADirectory);
            }
            // Another version replaced this one on the provider since the open: never a mix
            // (the namespace lock orders this against the listing merge).
            if n.remote_gen != h.remote_gen {
                return Err(FsError::Io(
                    "the file changed on the remote while it was open; open it again to read the new version".into(),
                ));
            }
            let c = &n.content;
            let end = (offset + u64::from(size)).min(c.size);
            if offset >= end {
                return Ok(Bytes::new());
            }
            let bufs = lock(&self.inner.bufs);
            let buf = bufs.get(&node);
            let plans: Vec<Plan> = (offset / cs..=(end - 1) / cs)
                .map(|i| Plan {
                    index: i,
                    src: c.src(i, cs),
                    buffered: buf
                        .and_then(|b| b.get(&i))
                        .map(|v| Bytes::copy_from_slice(v)),
                })
                .collect();
            (
                plans,
                n.object_id(),
                c.base.as_ref().map(|b| b.version.clone()),
                c.size,
                c.base.as_ref().map_or(0, |b| b.len),
            )
        };
        let end = (offset + u64::from(size)).min(file_size);
        self.prefetch(fh, node, offset, end);
        let ranges: Vec<(u64, u64)> = plans
            .iter()
            .map(|p| {
                let start = p.index * cs;
                (offset.max(start) - start, end.min(start + cs) - start)
            })
            .collect();
        let fetched = futures::future::join_all(
            plans
                .iter()
                .zip(&ranges)
                .map(|(p, (f, t))| self.chunk_range(node, &oid, base_version.as_ref(), p, *f, *t)),
        )
        .await;
        if plans.len() == 1 && matches!(plans[0].src, ChunkSrc::Local(_) | ChunkSrc::Base { .. }) {
            // The common case: one chunk, all of it valid: no copy.
            let (from, to) = ranges[0];
            let start = plans[0].index * cs;
            let valid_to = match plans[0].src {
                ChunkSrc::Base { .. } if plans[0].buffered.is_none() => {
                    base_len.saturating_sub(start)
                }
                _ => u64::MAX,
            };
            if let Some(Ok(b)) = fetched.first() {
                if b.len() as u64 == to - from && to <= valid_to {
                    return Ok(b.clone());
                }
            }
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for ((p, data), (from, to)) in plans.iter().zip(fetched).zip(ranges) {
            let data = data?;
            let start = p.index * cs;
            // Base bytes past `base.len` were truncated away: they read as zeros.
            let valid_to = match p.src {
                ChunkSrc::Base { .. } if p.buffered.is_none() => base_len.saturating_sub(start),
                _ => u64::MAX,
            };
            let have = (data.len() as u64)
                .min(valid_to.saturating_sub(from))
                .min(to - from);
            out.extend_from_slice(&data[..have as usize]);
            out.resize(out.len() + (to - from - have) as usize, 0);
        }
        Ok(Bytes::from(out))
    }

    /// Read-ahead for sequential readers: the window doubles while reads follow each other and
    /// resets on a jump; the chunks ahead come from the node's read stream (`stream`): one
    /// provider read from there to the end of the file, consumed as the window moves.
    fn prefetch(&self, fh: u64, node: NodeId, offset: u64, end: u64) {
        let cs = self.inner.cfg.chunk_size;
        let (from, to) = {
            let mut handles = lock(&self.inner.handles);
            let Some(h) = handles.get_mut(&fh) else {
                return;
            };
            if h.next_offset == offset && offset > 0 {
                h.window = (h.window.max(1) * 2).min(self.inner.cfg.max_readahead_chunks);
            } else if h.next_offset != offset {
                h.window = 0;
                h.prefetched_to = 0;
                h.from_start = false;
            }
            h.next_offset = end;
            // A first read from the start: the stream starts with it (one request for a file
            // read through, as rclone's first chunk request does; a program that only reads
            // the header leaves the rest of the stream unread).
            let start = offset == 0 && h.window == 0;
            if start {
                h.window = 1;
                h.from_start = true;
            }
            if h.window == 0 {
                return;
            }
            let last = (end.max(1) - 1) / cs;
            let from = if start {
                0
            } else {
                (last + 1).max(h.prefetched_to)
            };
            let to = last + h.window;
            if from > to {
                return;
            }
            h.prefetched_to = to + 1;
            // The kernel sends the first reads of a file at once and they are answered
            // concurrently: the read of chunk 1 may ask for chunks 2.. before the read at
            // offset 0 asks for 0..: near the start, a reader's look-ahead covers the start too,
            // so that whichever comes first starts the stream at chunk 0 (not one at chunk 2,
            // leaving chunks 0 and 1 to a request each).
            let reach = self.inner.cfg.max_readahead_chunks.max(1) * 2;
            let from = if h.from_start && from <= reach {
                0
            } else {
                from
            };
            (from, to)
        };
        let (oid, base, srcs) = {
            let ns = lock(&self.inner.ns);
            let Some(n) = ns.get(node) else { return };
            let Some(b) = n.content.base.clone() else {
                return;
            };
            let srcs: Vec<(u64, ChunkSrc)> = (from..=to)
                .filter(|i| i * cs < n.content.size)
                .map(|i| (i, n.content.src(i, cs)))
                .collect();
            (n.object_id(), b, srcs)
        };
        // The chunks the provider is to give, first to last: one stream (one request) for all.
        let missing = |(i, src): &&(u64, ChunkSrc)| {
            matches!(src, ChunkSrc::Base { alias: None })
                && !self
                    .inner
                    .cache
                    .contains(&crate::content::remote_key(&oid, &base.version, *i))
        };
        let (Some(&(first, _)), Some(&(last, _))) =
            (srcs.iter().find(missing), srcs.iter().rev().find(missing))
        else {
            return;
        };
        let Some(path) = self.remote_location(node) else {
            return;
        };
        self.stream_ahead(node, path, oid, base.version, base.len, (first, last));
    }

    /// Writes `data` at `offset` (or at the end for O_APPEND) of the file open as `fh`.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        if self.inner.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        if !h.flags.write {
            return Err(FsError::BadHandle);
        }
        let node = h.node;
        let lock_ = self.node_lock(node);
        let _g = lock_.lock().await;
        let cs = self.inner.cfg.chunk_size;
        let offset = if h.flags.append {
            lock(&self.inner.ns).get(node).map_or(0, |n| n.content.size)
        } else {
            offset
        };
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::FileTooLarge)?;
        if data.is_empty() {
            return Ok(0);
        }
        for i in offset / cs..=(end - 1) / cs {
            let start = i * cs;
            let from = offset.max(start);
            let to = end.min(start + cs);
            let piece = &data[(from - offset) as usize..(to - offset) as usize];
            let whole = from == start && to == start + cs;
            let have = lock(&self.inner.bufs)
                .get(&node)
                .is_some_and(|b| b.contains_key(&i));
            if !have {
                let mut current = if whole {
                    Vec::new()
                } else {
                    self.current_chunk(node, i).await?.to_vec()
                };
                current.truncate(cs as usize);
                lock(&self.inner.bufs)
                    .entry(node)
                    .or_default()
                    .insert(i, current);
            }
            let mut bufs = lock(&self.inner.bufs);
            let chunk = bufs
                .get_mut(&node)
                .and_then(|b| b.get_mut(&i))
                .ok_or(FsError::BadHandle)?;
            let rel = (from - start) as usize;
            if chunk.len() < rel + piece.len() {
                chunk.resize(rel + piece.len(), 0);
            }
            chunk[rel..rel + piece.len()].copy_from_slice(piece);
        }
        {
            let mut ns = lock(&self.inner.ns);
            let n = ns.get_mut(node).ok_or(FsError::BadHandle)?;
            if end > n.content.size {
                n.content.size = end;
            }
            let now = SystemTime::now();
            n.mtime = now;
            n.ctime = now;
            n.dirty = true;
        }
        self.spill(node, false).await?;
        Ok(data.len() as u32)
    }

    /// The current bytes of chunk `i` of `node` (for a partial overwrite).
    async fn current_chunk(&self, node: NodeId, i: u64) -> FsResult<Bytes> {
        let cs = self.inner.cfg.chunk_size;
        let (plan, oid, base_version, base_len, size) = {
            let ns = lock(&self.inner.ns);
            let n = ns.get(node).ok_or(FsError::BadHandle)?;
            (
                Plan {
                    index: i,
                    src: n.content.src(i, cs),
                    buffered: None,
                },
                n.object_id(),
                n.content.base.as_ref().map(|b| b.version.clone()),
                n.content.base.as_ref().map_or(0, |b| b.len),
                n.content.size,
            )
        };
        let data = self
            .chunk_range(node, &oid, base_version.as_ref(), &plan, 0, cs)
            .await?;
        let start = i * cs;
        let mut valid = size.saturating_sub(start).min(cs) as usize;
        if matches!(plan.src, ChunkSrc::Base { .. }) {
            valid = valid.min(base_len.saturating_sub(start) as usize);
        }
        Ok(data.slice(..valid.min(data.len())))
    }

    /// Moves buffered chunks into the cache as dirty chunks of the current generation. `all`:
    /// every chunk (a commit); else only when the buffer is over its size, keeping the chunk
    /// being written.
    async fn spill(&self, node: NodeId, all: bool) -> FsResult<Vec<(u64, Vec<u8>)>> {
        let cs = self.inner.cfg.chunk_size;
        let size = {
            let ns = lock(&self.inner.ns);
            ns.get(node).ok_or(FsError::BadHandle)?.content.size
        };
        let take: Vec<(u64, Vec<u8>)> = {
            let mut bufs = lock(&self.inner.bufs);
            let Some(b) = bufs.get_mut(&node) else {
                return Ok(Vec::new());
            };
            if all {
                std::mem::take(b).into_iter().collect()
            } else if b.len() > self.inner.cfg.write_buffer_chunks {
                // Spill full chunks first (sequential writers fill chunks in order).
                let keys: Vec<u64> = b
                    .iter()
                    .filter(|(_, v)| v.len() as u64 == cs)
                    .map(|(k, _)| *k)
                    .collect();
                keys.into_iter()
                    .filter_map(|k| b.remove(&k).map(|v| (k, v)))
                    .collect()
            } else {
                Vec::new()
            }
        };
        if take.is_empty() {
            return Ok(take);
        }
        // Spilled chunks need not be durable before the commit: written unsynced, then synced
        // together by the commit (or carried inline in its record for a small file).
        let inline = all && size <= self.inner.cfg.inline_max;
        if inline {
            self.hand_over_inline(node, &take);
            return Ok(take);
        }
        for (i, data) in &take {
            let key = self
                .put_dirty(node, *i, data.clone(), PutKind::DirtyUnsynced)
                .await?;
            if !inline {
                lock(&self.inner.unsynced)
                    .entry(node)
                    .or_default()
                    .push(key);
            }
        }
        Ok(if inline { take } else { Vec::new() })
    }

    /// A small file's chunks at its commit: their bytes travel inline in the commit record (the
    /// one fsync of the close makes them durable), so putting them into the cache can happen
    /// after close returns. Until it has, readers and the uploader find them in `pending_puts`.
    fn hand_over_inline(&self, node: NodeId, chunks: &[(u64, Vec<u8>)]) {
        let cs = self.inner.cfg.chunk_size;
        let keys: Vec<(ChunkKey, Bytes)> = {
            let mut ns = lock(&self.inner.ns);
            let Some(n) = ns.get_mut(node) else { return };
            let (oid, gen) = (n.object_id(), n.content.gen);
            let mut keys = Vec::new();
            for (i, data) in chunks {
                if i * cs < n.content.size {
                    n.content.local.insert(*i, gen);
                    n.content.alias.remove(i);
                    keys.push((local_key(&oid, gen, *i), Bytes::from(data.clone())));
                }
            }
            keys
        };
        {
            let mut pending = lock(&self.inner.pending_puts);
            for (k, b) in &keys {
                pending.insert(
                    k.clone(),
                    PendingPut {
                        data: b.clone(),
                        released: None,
                    },
                );
            }
        }
        let vfs = self.clone();
        drop(self.spawn_background(async move {
            for (key, data) in keys {
                let put = vfs
                    .inner
                    .cache
                    .put_async(key.clone(), data, PutKind::DirtyUnsynced)
                    .await;
                // A release that came while the put ran is carried out now that it is done.
                let released = {
                    let mut pending = lock(&vfs.inner.pending_puts);
                    let released = pending.get(&key).and_then(|p| p.released);
                    if put.is_ok() || released.is_some() {
                        pending.remove(&key);
                    }
                    released
                };
                match put {
                    Ok(_) => {
                        if let Some(keep_clean) = released {
                            vfs.release_now(&key, keep_clean);
                        }
                    }
                    // Kept in memory (and inline in the log) until a later put or a restart.
                    Err(e) => {
                        tracing::warn!(error = %e, "could not store a small file in the cache")
                    }
                }
            }
        }));
    }

    /// A committed small file's chunk not yet in the cache.
    pub(crate) fn pending_chunk(&self, key: &ChunkKey) -> Option<Bytes> {
        lock(&self.inner.pending_puts)
            .get(key)
            .map(|p| p.data.clone())
    }

    /// A dirty chunk is no longer needed dirty: it becomes a clean cached copy (`keep_clean`:
    /// the provider has its bytes and the content still names it) or is removed. A small
    /// file's chunk whose put into the cache is still running is released once the put is
    /// done (else the put would leave it dirty for good).
    pub(crate) fn release_chunk(&self, key: &ChunkKey, keep_clean: bool) {
        {
            let mut pending = lock(&self.inner.pending_puts);
            if let Some(p) = pending.get_mut(key) {
                // Removal wins over keeping a clean copy.
                p.released = Some(p.released.unwrap_or(true) && keep_clean);
                return;
            }
        }
        self.release_now(key, keep_clean);
    }

    fn release_now(&self, key: &ChunkKey, keep_clean: bool) {
        let r = if keep_clean {
            self.inner.cache.mark_clean(key)
        } else {
            self.inner.cache.remove(key)
        };
        if let Err(e) = r {
            if !matches!(e, cache::CacheError::NotCached) {
                tracing::warn!(error = %e, "could not release a chunk no longer needed dirty");
            }
        }
    }

    /// Puts chunk `i` of `node` as a dirty chunk of the file's current generation. While the
    /// cache is full of dirty data, it commits what the file has so far (so the uploader can
    /// send it and free room) and waits: back-pressure, not failure. `NoSpace` only when the
    /// provider cannot be reached and nothing frees room.
    async fn put_dirty(
        &self,
        node: NodeId,
        i: u64,
        data: Vec<u8>,
        kind: PutKind,
    ) -> FsResult<ChunkKey> {
        let cs = self.inner.cfg.chunk_size;
        let data = Bytes::from(data);
        let step = std::time::Duration::from_millis(50);
        let mut waited = std::time::Duration::ZERO;
        let mut pressured = false;
        loop {
            let (key, gen) = {
                let ns = lock(&self.inner.ns);
                let n = ns.get(node).ok_or(FsError::BadHandle)?;
                (local_key(&n.object_id(), n.content.gen, i), n.content.gen)
            };
            match self
                .inner
                .cache
                .put_async(key.clone(), data.clone(), kind)
                .await
            {
                Ok(_) => {
                    let mut ns = lock(&self.inner.ns);
                    if let Some(n) = ns.get_mut(node) {
                        if i * cs < n.content.size {
                            n.content.local.insert(i, gen);
                            n.content.alias.remove(&i);
                        }
                    }
                    return Ok(key);
                }
                Err(cache::CacheError::NoRoom { .. }) => {
                    let offline = lock(&self.inner.queue).offline_since.is_some();
                    if (offline && waited > self.inner.cfg.provider_timeout)
                        || waited > MAX_PRESSURE_WAIT
                    {
                        return Err(FsError::NoSpace);
                    }
                    if !pressured {
                        self.pressure_commit(node)?;
                        pressured = true;
                    }
                    lock(&self.inner.queue).flush = true;
                    self.inner.queue_changed.notify_one();
                    tokio::time::sleep(step).await;
                    waited += step;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not store written data in the cache");
                    return Err(FsError::io(e));
                }
            }
        }
    }

    /// Journals what `node` has in the cache now (not its write buffer) as a commit to upload at
    /// once, so that a file larger than the cache can be written: the provider then sees
    /// intermediate states of a file that is still open (docs/SEMANTICS.md).
    fn pressure_commit(&self, node: NodeId) -> FsResult<()> {
        let unsynced = lock(&self.inner.unsynced).remove(&node).unwrap_or_default();
        self.inner.cache.sync_chunks(&unsynced)?;
        let mut ns = lock(&self.inner.ns);
        let Some(path) = ns.path_of(node) else {
            return Ok(());
        };
        let Some(n) = ns.get_mut(node) else {
            return Ok(());
        };
        if n.content.local.is_empty() {
            return Ok(());
        }
        let content = n.content.clone();
        let rec = Record::Commit {
            path,
            node,
            mtime: n.mtime,
            inline: Vec::new(),
            content,
        };
        n.content.gen += 1;
        self.journal_at(&mut ns, rec, std::time::Instant::now())?;
        Ok(())
    }

    /// Makes the written state of `node` durable and queues it for upload (close, fsync).
    pub(crate) async fn commit(&self, node: NodeId) -> FsResult<()> {
        let lock_ = self.node_lock(node);
        let _g = lock_.lock().await;
        self.commit_locked(node).await
    }

    pub(crate) async fn commit_locked(&self, node: NodeId) -> FsResult<()> {
        let dirty = lock(&self.inner.ns).get(node).is_some_and(|n| n.dirty);
        if !dirty {
            return Ok(());
        }
        let inline = self.spill(node, true).await?;
        let unsynced = lock(&self.inner.unsynced).remove(&node).unwrap_or_default();
        if !unsynced.is_empty() {
            let cache = self.inner.cache.clone();
            tokio::task::spawn_blocking(move || cache.sync_chunks(&unsynced))
                .await
                .map_err(FsError::io)??;
        }
        {
            let mut ns = lock(&self.inner.ns);
            let Some(path) = ns.path_of(node) else {
                // Unlinked while open: nothing to upload.
                if let Some(n) = ns.get_mut(node) {
                    n.dirty = false;
                }
                return Ok(());
            };
            let Some(n) = ns.get_mut(node) else {
                return Ok(());
            };
            let content = n.content.clone();
            let rec = Record::Commit {
                path,
                node,
                mtime: n.mtime,
                inline: inline
                    .into_iter()
                    .filter(|(i, _)| content.local.get(i) == Some(&content.gen))
                    .collect(),
                content,
            };
            n.content.gen += 1;
            n.dirty = false;
            self.journal(&mut ns, rec)?;
        }
        self.sync_log().await
    }

    /// Commits every file with uncommitted writes (flush, unmount).
    pub(crate) async fn commit_all(&self) -> FsResult<()> {
        let dirty: Vec<NodeId> = lock(&self.inner.ns)
            .nodes
            .values()
            .filter(|n| n.dirty)
            .map(|n| n.id)
            .collect();
        for id in dirty {
            self.commit(id).await?;
        }
        Ok(())
    }

    /// Sets the size of `node` (truncate or extend) and commits.
    pub(crate) async fn truncate(&self, node: NodeId, size: u64) -> FsResult<()> {
        let lock_ = self.node_lock(node);
        let _g = lock_.lock().await;
        let cs = self.inner.cfg.chunk_size;
        let old = lock(&self.inner.ns).get(node).map_or(0, |n| n.content.size);
        if size < old && !size.is_multiple_of(cs) {
            // The partial last chunk must read as zeros past the new end if the file grows again.
            let i = size / cs;
            let have = lock(&self.inner.bufs)
                .get(&node)
                .is_some_and(|b| b.contains_key(&i));
            if !have {
                let cur = self.current_chunk(node, i).await?.to_vec();
                lock(&self.inner.bufs)
                    .entry(node)
                    .or_default()
                    .insert(i, cur);
            }
            if let Some(c) = lock(&self.inner.bufs)
                .get_mut(&node)
                .and_then(|b| b.get_mut(&i))
            {
                c.truncate((size - i * cs) as usize);
            }
        }
        {
            let mut bufs = lock(&self.inner.bufs);
            if let Some(b) = bufs.get_mut(&node) {
                let first_gone = size.div_ceil(cs);
                b.split_off(&first_gone);
            }
        }
        {
            let mut ns = lock(&self.inner.ns);
            let n = ns.get_mut(node).ok_or(FsError::NotFound)?;
            let mut c: Content = std::mem::take(&mut n.content);
            c.truncate(size, cs);
            n.content = c;
            let now = SystemTime::now();
            n.mtime = now;
            n.ctime = now;
            n.dirty = true;
        }
        self.commit_locked(node).await
    }
}

impl crate::uploader::Queue {
    /// Queued renames, newest first.
    pub(crate) fn pending_renames_rev(&self) -> Vec<&Record> {
        self.records()
            .filter(|r| matches!(r, Record::Rename { .. }))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    }
}
