//! The VFS: one async method per file-system operation over the namespace, the encrypted cache,
//! the write-ahead log and the provider. Adapters (FUSE, WinFSP) call these and map `FsError`.
//!
//! # Life of a change
//! 1. An operation validates and changes the in-memory namespace, appends a journal record to
//!    the WAL (under the namespace lock, so log order is namespace order), then waits for the
//!    record to be durable (group commit) before it returns.
//! 2. The record is queued for the uploader (`uploader.rs`), which applies it to the provider
//!    in log order (independent paths in parallel) and journals an `Applied` marker.
//! 3. A checkpoint (`snapshot.rs`) saves the namespace; the log before it is discarded once
//!    applied.
//!
//! After a crash, [`Vfs::open`] loads the last checkpoint, replays the log into the namespace
//! (queued commits following the uploads of their file as they did live), requeues what was not
//! applied, drops dirty chunks no committed record references, and commits files created and
//! never closed (as their close would have).
//!
//! # State of a file's data
//! `Clean → Dirty (written, in the write buffer or dirty chunks) → Committed (close/fsync: a
//! Commit record; durable) → Uploading → Clean (rebased on the new remote version) | Conflict`.
//!
//! # Lock order
//! per-node async lock (`node_lock`) → `ns` → `bufs` → `unsynced` → `pending_puts` → `handles` →
//! `queue`; the WAL's and the
//! cache's own locks are leaves. No std mutex is held across an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use cache::{ChunkCache, ChunkKey, PutKind, SingleFlight};
use tokio::sync::{Notify, Semaphore};

use crate::config::VfsConfig;
use crate::content::{local_key, Content};
use crate::error::{FsError, FsResult};
use crate::journal::Record;
use crate::namespace::{Namespace, Node, RemoteState};
use crate::provider::{Provider, RemotePath};
use crate::snapshot::{Checkpoint, SnapshotStore};
use crate::types::{Attr, FileKind, NodeId, OpenFlags};
use crate::uploader::Queue;
use crate::wal::{Lsn, SpaceAccountant, Wal, WalError};

/// Tells the kernel to forget what it cached (FUSE notifications); set by the adapter.
pub trait Invalidator: Send + Sync {
    /// Attributes and cached pages of `ino`.
    fn inval_inode(&self, ino: NodeId);
    /// The entry `name` in `parent`.
    fn inval_entry(&self, parent: NodeId, name: &str);
}

/// An open file.
#[derive(Clone, Debug)]
pub(crate) struct Handle {
    pub node: NodeId,
    pub flags: OpenFlags,
    /// Where a sequential reader's next read starts.
    pub next_offset: u64,
    /// Current read-ahead window in chunks (grows while reads are sequential).
    pub window: u64,
    /// Last chunk prefetched.
    pub prefetched_to: u64,
    /// The sequential reading began at offset 0 (and has not jumped since).
    pub from_start: bool,
    /// The node's `remote_gen` when it was opened: a read after a listing replaced the file's
    /// content with another remote version fails instead of mixing two versions.
    pub remote_gen: u64,
}

/// Chunks written but not yet in the cache: chunk index → bytes (at most a chunk).
pub(crate) type WriteBuf = BTreeMap<u64, Vec<u8>>;

/// Figures for `mountctl status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub cache_used: u64,
    pub cache_limit: u64,
    pub dirty_bytes: u64,
    pub pinned_bytes: u64,
    /// Journal records waiting for the provider.
    pub queued: u64,
    pub in_flight: u64,
    pub last_error: Option<String>,
    /// Chunks fetched from the provider, and their bytes.
    pub fetches: u64,
    pub fetched_bytes: u64,
    /// Files uploaded and their bytes.
    pub uploads: u64,
    pub uploaded_bytes: u64,
    pub conflicts: u64,
    pub offline_since: Option<SystemTime>,
}

/// How many conflicts [`Vfs::conflicts`] remembers (the oldest are forgotten first; the copies
/// themselves stay on the provider).
pub const MAX_CONFLICTS_KEPT: usize = 1000;

/// Which version a conflict left at the file's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictWinner {
    Remote,
    Local,
}

/// One conflict: a file changed both here and on the provider, and what the policy did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictRecord {
    /// The file's path on the provider.
    pub path: String,
    /// Where the losing version was saved (None: deleted, as `--conflict-loser delete` asked).
    pub copy: Option<String>,
    /// Which version is at `path` now.
    pub winner: ConflictWinner,
    pub at: SystemTime,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub fetches: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub uploads: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub conflicts: AtomicU64,
    /// Bytes handed to the provider by uploads, including unfinished ones (flush progress).
    pub sent_bytes: AtomicU64,
}

pub(crate) struct Inner {
    /// Where background work runs (uploads, cache puts after a close): a runtime of
    /// lower-priority threads if the embedder gave one ([`Vfs::set_background`]).
    pub background: std::sync::OnceLock<tokio::runtime::Handle>,
    pub cfg: VfsConfig,
    pub cache: Arc<ChunkCache>,
    pub provider: Arc<dyn Provider>,
    pub ns: Mutex<Namespace>,
    pub wal: Wal,
    pub snapshots: Mutex<SnapshotStore>,
    pub handles: Mutex<HashMap<u64, Handle>>,
    pub next_fh: AtomicU64,
    pub bufs: Mutex<HashMap<NodeId, WriteBuf>>,
    /// Committed small files' chunks on their way into the cache (their bytes are inline in the
    /// log): readers and the uploader look here first.
    pub pending_puts: Mutex<HashMap<ChunkKey, PendingPut>>,
    /// Dirty chunks spilled without fsync, per file, synced by its next commit.
    pub unsynced: Mutex<HashMap<NodeId, Vec<ChunkKey>>>,
    pub node_locks: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    pub flights: SingleFlight<ChunkKey, Result<Bytes, FsError>>,
    pub prefetch: Arc<Semaphore>,
    /// Sequential read streams, by node (see `stream`).
    pub(crate) streams: crate::stream::Streams,
    pub queue: Mutex<Queue>,
    pub queue_changed: Arc<Notify>,
    pub invalidator: Mutex<Option<Arc<dyn Invalidator>>>,
    pub counters: Counters,
    pub last_error: Mutex<Option<String>>,
    /// The conflicts of this mount's life, oldest first (at most [`MAX_CONFLICTS_KEPT`]).
    pub conflict_log: Mutex<std::collections::VecDeque<ConflictRecord>>,
    /// Uploads whose every byte went out but whose answer never came (a timeout, a connection
    /// reset): the provider may hold them. See `uploader::MaybeSent`.
    pub maybe_sent: Mutex<Vec<crate::uploader::MaybeSent>>,
    pub hostname: String,
    /// Bumped (under the namespace lock) whenever a record is applied to the provider: a
    /// listing taken across a change is not merged.
    pub applied_epoch: AtomicU64,
    /// Set by [`Vfs::close`]: background tasks stop.
    pub shutdown: std::sync::atomic::AtomicBool,
}

/// A committed small file's chunk on its way into the cache.
pub(crate) struct PendingPut {
    pub data: Bytes,
    /// Released while the put ran (`Some(keep_clean)`): carried out once the put is done.
    pub released: Option<bool>,
}

/// The file system. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Vfs {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct CacheAccountant(Arc<ChunkCache>);

impl SpaceAccountant for CacheAccountant {
    fn charge(&self, bytes: u64) -> Result<(), WalError> {
        self.0.charge_external(bytes).map_err(|e| WalError::NoRoom {
            reason: e.to_string(),
        })
    }
    fn release(&self, bytes: u64) {
        self.0.release_external(bytes);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".to_string())
}

impl Vfs {
    /// Opens the drive over `cache` (already unlocked) and `provider`: loads the last checkpoint,
    /// replays the write-ahead log, and requeues what the provider does not have yet. Works
    /// offline: nothing here calls the provider. Start the uploader with [`Vfs::spawn_uploader`].
    pub fn new(
        cfg: VfsConfig,
        cache: Arc<ChunkCache>,
        provider: Arc<dyn Provider>,
    ) -> FsResult<Vfs> {
        if cfg.chunk_size == 0 || cfg.chunk_size > 16 << 20 {
            return Err(FsError::InvalidArgument);
        }
        let dir = cache.dir().to_path_buf();
        let (snapshots, loaded) = SnapshotStore::load(&dir, &cache).map_err(FsError::io)?;
        let (mut ns, cp) = match loaded {
            Some((ns, cp)) => (ns, cp),
            None => (Namespace::new(SystemTime::now()), Checkpoint::default()),
        };
        if let Some(root) = ns.get_mut(NodeId::ROOT) {
            // The root always exists on the provider.
            root.remote.get_or_insert(RemoteState {
                version: cache::Version::from(""),
                size: 0,
            });
        }
        let from = cp.lsn.min(cp.applied_below).max(1);
        let (wal, raw) = Wal::open(
            &dir.join("wal"),
            cache.record_cipher("wal"),
            Arc::new(CacheAccountant(cache.clone())),
            from,
        )
        .map_err(FsError::io)?;

        let mut applied: HashSet<Lsn> = cp.applied.iter().copied().collect();
        let mut records: Vec<(Lsn, Record)> = Vec::with_capacity(raw.len());
        for (lsn, payload) in raw {
            let rec = Record::decode(&payload).map_err(FsError::io)?;
            records.push((lsn, rec));
        }
        let by_lsn: HashMap<Lsn, usize> = records
            .iter()
            .enumerate()
            .map(|(i, (l, _))| (*l, i))
            .collect();
        for (_, rec) in &records {
            if let Record::Applied { lsn: target, .. } = rec {
                applied.insert(*target);
            }
        }
        let requeued = |lsn: Lsn, rec: &Record| {
            !matches!(rec, Record::Applied { .. } | Record::Learned { .. })
                && lsn >= cp.applied_below
                && !applied.contains(&lsn)
        };
        // Each node's records still to apply, counted before the replay (a checkpoint may have
        // saved other counts): a node the replay detaches is kept as an orphan while it has
        // some, as it was live, so that they are applied with what is known of it.
        let mut queued: HashMap<NodeId, u32> = HashMap::new();
        for (lsn, rec) in &records {
            if requeued(*lsn, rec) {
                *queued.entry(rec.node()).or_default() += 1;
            }
        }
        let pending_of = |id: NodeId| queued.get(&id).copied().unwrap_or(0);
        for n in ns.nodes.values_mut() {
            n.pending = pending_of(n.id);
        }
        // Directories that records need but the namespace does not know (learned from a
        // listing after the checkpoint; such news is not journaled) are made during replay with
        // ids of their own: above every id the log names, which live were allocated after the
        // checkpoint's `next_id` too (a collision made a node its own parent).
        let log_max = records
            .iter()
            .flat_map(|(_, r)| match r {
                Record::Rename {
                    node,
                    replaced: Some(t),
                    ..
                } => vec![node.0, t.0],
                r => vec![r.node().0],
            })
            .max()
            .unwrap_or(0);
        ns.next_id = ns.next_id.max(log_max + 1);
        // Queued commits whose content followed uploads done before the checkpoint: as the
        // checkpoint saved them (the log has them as they were journaled).
        let mut rebased = vec![false; records.len()];
        for (lsn, content) in &cp.rebased {
            if let Some(&i) = by_lsn.get(lsn) {
                if let Record::Commit { content: c, .. } = &mut records[i].1 {
                    *c = content.clone();
                    rebased[i] = true;
                }
            }
        }
        for p in 0..records.len() {
            let lsn = records[p].0;
            match &records[p].1 {
                Record::Applied {
                    lsn: target,
                    remote,
                    conflict,
                } => {
                    let Some(&i) = by_lsn.get(target).filter(|&&i| i < p) else {
                        continue;
                    };
                    if lsn < cp.lsn {
                        continue;
                    }
                    let (remote, conflict) = (remote.clone(), *conflict);
                    // The commits of the same node journaled between the record and its marker
                    // were queued when the marker was journaled: they follow as they did then.
                    let (head, tail) = records.split_at_mut(i + 1);
                    let rec = &head[i].1;
                    let node = rec.node();
                    let (mut later, idx): (Vec<&mut Content>, Vec<usize>) = tail[..p - i - 1]
                        .iter_mut()
                        .enumerate()
                        .filter_map(|(k, (_, r))| match r {
                            Record::Commit {
                                node: n, content, ..
                            } if *n == node => Some((content, i + 1 + k)),
                            _ => None,
                        })
                        .unzip();
                    let changed = replay_applied(
                        &mut ns,
                        rec,
                        remote.as_ref(),
                        conflict,
                        &mut later,
                        cfg.chunk_size,
                    );
                    for (k, c) in idx.into_iter().zip(changed) {
                        rebased[k] |= c;
                    }
                }
                rec if lsn >= cp.lsn => {
                    replay(&mut ns, rec);
                    if let Some(n) = ns.get_mut(rec.node()) {
                        n.pending = pending_of(n.id);
                    }
                }
                _ => {}
            }
        }
        ns.tombstones.clear();
        let mut queue = Queue::default();
        let now = Instant::now();
        for (k, (lsn, rec)) in records.iter().enumerate() {
            if !requeued(*lsn, rec) {
                continue;
            }
            queue.push_recovered(*lsn, rec.clone(), now, rebased[k]);
            match rec {
                Record::Remove { path, .. } => ns.add_tombstone(path.clone()),
                Record::Rename { from, .. } => ns.add_tombstone(from.clone()),
                _ => {}
            }
        }
        let queue_lsns: Vec<Lsn> = queue.lsns();
        let applied_below = queue_lsns.first().copied().unwrap_or(wal.next_lsn());
        queue.applied_below = applied_below;
        queue.applied = applied
            .into_iter()
            .filter(|l| *l >= applied_below)
            .collect();

        let inner = Inner {
            prefetch: Arc::new(Semaphore::new(
                (cfg.prefetch_budget / cfg.chunk_size).max(1) as usize,
            )),
            cfg,
            cache,
            provider,
            ns: Mutex::new(ns),
            wal,
            snapshots: Mutex::new(snapshots),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            bufs: Mutex::new(HashMap::new()),
            unsynced: Mutex::new(HashMap::new()),
            pending_puts: Mutex::new(HashMap::new()),
            background: std::sync::OnceLock::new(),
            node_locks: Mutex::new(HashMap::new()),
            flights: SingleFlight::new(),
            streams: Default::default(),
            queue: Mutex::new(queue),
            queue_changed: Arc::new(Notify::new()),
            invalidator: Mutex::new(None),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            conflict_log: Mutex::new(std::collections::VecDeque::new()),
            maybe_sent: Mutex::new(Vec::new()),
            hostname: hostname(),
            applied_epoch: AtomicU64::new(0),
            shutdown: std::sync::atomic::AtomicBool::new(false),
        };
        let vfs = Vfs {
            inner: Arc::new(inner),
        };
        vfs.restore_committed_chunks(&records)?;
        vfs.commit_unclosed()?;
        tracing::info!(
            replayed = records.len(),
            queued = lock(&vfs.inner.queue).len(),
            "drive opened"
        );
        Ok(vfs)
    }

    /// After a crash: inline chunks of commits are written back into the cache if missing, and
    /// dirty chunks that no committed content references (written, never closed or fsync'd)
    /// are dropped.
    fn restore_committed_chunks(&self, records: &[(Lsn, Record)]) -> FsResult<()> {
        let inner = &self.inner;
        let mut keep = HashSet::new();
        let mut clean = Vec::new();
        {
            let ns = lock(&inner.ns);
            for n in ns.nodes.values() {
                if n.kind == FileKind::File {
                    let oid = n.object_id();
                    for (&i, &g) in &n.content.local {
                        keep.insert(inner.cache.name_of(&local_key(&oid, g, i)));
                    }
                    // Uploaded: a cached copy of the remote version, no longer dirty (a crash
                    // may have come between the Applied marker and the release).
                    for (&i, &g) in &n.content.alias {
                        clean.push(local_key(&oid, g, i));
                    }
                }
            }
        }
        let queue = lock(&inner.queue);
        for (lsn, rec) in records {
            if let Record::Commit {
                node,
                content,
                inline,
                ..
            } = rec
            {
                if !queue.contains(*lsn) {
                    continue;
                }
                let gen_of = |i: u64| content.local.get(&i).copied();
                let oid = {
                    let ns = lock(&inner.ns);
                    ns.get(*node).map(|n| n.object_id())
                }
                .unwrap_or_else(|| cache::ObjectId::from(format!("n{}.0", node.0)));
                for (&i, &g) in &content.local {
                    keep.insert(inner.cache.name_of(&local_key(&oid, g, i)));
                }
                // Cached copies of what the provider has (an upload of the file finished
                // after this commit was journaled): needed clean, not dirty.
                for (&i, &g) in &content.alias {
                    clean.push(local_key(&oid, g, i));
                }
                for (i, data) in inline {
                    let Some(g) = gen_of(*i) else { continue };
                    let key = local_key(&oid, g, *i);
                    let intact = matches!(inner.cache.get(&key), Ok(Some(b)) if b[..] == data[..]);
                    if !intact {
                        inner.cache.put(&key, data, PutKind::Dirty)?;
                    }
                }
            }
        }
        drop(queue);
        for key in clean {
            if !keep.contains(&inner.cache.name_of(&key)) {
                let _ = inner.cache.mark_clean(&key);
            }
        }
        let dropped = inner.cache.retain_dirty(|n| keep.contains(n))?;
        if dropped > 0 {
            tracing::info!(dropped, "dropped dirty chunks of writes never committed");
        }
        Ok(())
    }

    /// After a crash: files created and never closed (their writer died with the mount) are
    /// committed as the replay left them, as their close would have done. A new file reaches the
    /// provider only with a commit (its Create record is applied as "nothing to do yet"), so
    /// without one the replayed file would stay on the drive and never reach the provider.
    fn commit_unclosed(&self) -> FsResult<()> {
        let mut ns = lock(&self.inner.ns);
        let dirty: Vec<NodeId> = ns
            .nodes
            .values()
            .filter(|n| n.dirty)
            .map(|n| n.id)
            .collect();
        let mut journaled = false;
        for id in dirty {
            let path = ns.path_of(id);
            let Some(n) = ns.get_mut(id) else { continue };
            n.dirty = false;
            let Some(path) = path.filter(|_| n.kind == FileKind::File) else {
                continue;
            };
            let rec = Record::Commit {
                path,
                node: id,
                content: n.content.clone(),
                mtime: n.mtime,
                inline: Vec::new(),
            };
            n.content.gen += 1;
            self.journal(&mut ns, rec)?;
            journaled = true;
        }
        drop(ns);
        if journaled {
            tracing::info!("committed files created and never closed before the crash");
            self.log_to_os()?;
        }
        Ok(())
    }

    /// Commits what is written, stops the background tasks, waits for those in flight (up to
    /// `grace`), and saves a checkpoint. Queued uploads stay in the log for the next open.
    pub async fn close(self, grace: std::time::Duration) -> FsResult<()> {
        self.commit_all().await?;
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.queue_changed.notify_waiters();
        let deadline = Instant::now() + grace;
        while Arc::strong_count(&self.inner) > 1 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.checkpoint()
    }

    /// Registers the kernel notifier.
    pub fn set_invalidator(&self, inv: Arc<dyn Invalidator>) {
        *lock(&self.inner.invalidator) = Some(inv);
    }

    pub fn config(&self) -> &VfsConfig {
        &self.inner.cfg
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.inner.cache
    }

    pub fn status(&self) -> Status {
        let inner = &self.inner;
        let u = inner.cache.usage();
        let q = lock(&inner.queue);
        Status {
            cache_used: u.used_bytes,
            cache_limit: u.limit_bytes,
            dirty_bytes: u.dirty_bytes,
            pinned_bytes: u.pinned_bytes,
            queued: q.len() as u64,
            in_flight: q.in_flight() as u64,
            last_error: lock(&inner.last_error).clone(),
            fetches: inner.counters.fetches.load(Ordering::Relaxed),
            fetched_bytes: inner.counters.fetched_bytes.load(Ordering::Relaxed),
            uploads: inner.counters.uploads.load(Ordering::Relaxed),
            uploaded_bytes: inner.counters.uploaded_bytes.load(Ordering::Relaxed),
            conflicts: inner.counters.conflicts.load(Ordering::Relaxed),
            offline_since: q.offline_since,
        }
    }

    /// Saves a checkpoint of the namespace and discards the log the checkpoint and the provider
    /// no longer need.
    pub fn checkpoint(&self) -> FsResult<()> {
        let inner = &self.inner;
        let dir = inner.cache.dir().to_path_buf();
        let mut store = lock(&inner.snapshots);
        let (bytes, discard) = {
            let ns = lock(&inner.ns);
            let q = lock(&inner.queue);
            let lsn = inner.wal.next_lsn();
            let applied_below = q.lsns().first().copied().unwrap_or(lsn);
            let cp = Checkpoint {
                lsn,
                applied_below,
                applied: q
                    .applied
                    .iter()
                    .copied()
                    .filter(|l| *l >= applied_below)
                    .collect(),
                rebased: q.rebased_commits(),
            };
            let bytes = store
                .save(&dir, &inner.cache, &ns, &cp)
                .map_err(FsError::io)?;
            (bytes, cp.applied_below)
        };
        inner.wal.discard_before(discard).map_err(FsError::io)?;
        tracing::debug!(bytes, discard, "checkpoint saved");
        Ok(())
    }

    pub(crate) fn node_lock(&self, id: NodeId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.node_locks)
            .entry(id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Appends `rec` to the log (call with the namespace lock held, so log order is namespace
    /// order) and queues it for the uploader. Durable only after [`Vfs::sync_log`].
    pub(crate) fn journal(&self, ns: &mut Namespace, rec: Record) -> FsResult<Lsn> {
        let ready = match rec {
            Record::Commit { .. } => Instant::now() + self.inner.cfg.write_back_delay,
            _ => Instant::now(),
        };
        self.journal_at(ns, rec, ready)
    }

    /// [`Vfs::journal`], ready for upload at `ready`.
    pub(crate) fn journal_at(
        &self,
        ns: &mut Namespace,
        rec: Record,
        ready: Instant,
    ) -> FsResult<Lsn> {
        let inner = &self.inner;
        let lsn = inner.wal.append(&rec.encode()).map_err(|e| {
            tracing::error!(error = %e, "write-ahead log append failed");
            FsError::io(e)
        })?;
        if let Some(n) = ns.get_mut(rec.node()) {
            n.pending += 1;
        }
        match &rec {
            Record::Remove { path, .. } => ns.add_tombstone(path.clone()),
            Record::Rename { from, .. } => ns.add_tombstone(from.clone()),
            _ => {}
        }
        lock(&inner.queue).push(lsn, rec, ready);
        inner.queue_changed.notify_one();
        Ok(lsn)
    }

    /// Hands everything journaled so far to the operating system: it survives a crash of this
    /// process at once, and a power loss after the next [`Vfs::sync_log`] (namespace changes
    /// get the durability of a local file system without `dirsync`; close and fsync sync).
    /// Runs background work (uploads, cache puts after a close) on `rt` from now on, e.g. a
    /// runtime whose threads have a lower priority than those answering requests. Set once,
    /// before [`Vfs::spawn_uploader`]; without it, background work runs on the current runtime.
    pub fn set_background(&self, rt: tokio::runtime::Handle) {
        let _ = self.inner.background.set(rt);
    }

    /// Spawns background work (see [`Vfs::set_background`]).
    pub(crate) fn spawn_background<F>(&self, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.inner.background.get() {
            Some(rt) => rt.spawn(fut),
            None => tokio::spawn(fut),
        }
    }

    pub(crate) fn log_to_os(&self) -> FsResult<()> {
        self.inner.wal.write_through().map_err(|e| {
            tracing::error!(error = %e, "write-ahead log write failed");
            FsError::io(e)
        })
    }

    /// Waits until everything journaled so far is durable (group commit): on this thread if
    /// it may wait for the local disk ([`LocalDiskWaitAllowed`]), else on the blocking pool.
    pub(crate) async fn sync_log(&self) -> FsResult<()> {
        let res = if LocalDiskWaitAllowed::here() {
            self.inner.wal.sync()
        } else {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.wal.sync())
                .await
                .map_err(FsError::io)?
        };
        res.map_err(|e| {
            tracing::error!(error = %e, "write-ahead log sync failed");
            FsError::io(e)
        })
    }

    pub(crate) fn attr_of(&self, n: &Node) -> Attr {
        let cfg = &self.inner.cfg;
        let size = match n.kind {
            FileKind::File => n.content.size,
            FileKind::Dir => 4096,
            FileKind::Symlink => n.target.as_ref().map_or(0, |t| t.len() as u64),
        };
        Attr {
            ino: n.id,
            kind: n.kind,
            size,
            blocks: size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            perm: n.perm,
            nlink: if n.kind == FileKind::Dir { 2 } else { 1 },
            uid: cfg.uid,
            gid: cfg.gid,
            generation: n.generation,
        }
    }

    pub(crate) fn invalidate_inode(&self, ino: NodeId) {
        let inv = lock(&self.inner.invalidator).clone();
        if let Some(inv) = inv {
            inv.inval_inode(ino);
        }
    }

    pub(crate) fn invalidate_entry(&self, parent: NodeId, name: &str) {
        let inv = lock(&self.inner.invalidator).clone();
        if let Some(inv) = inv {
            inv.inval_entry(parent, name);
        }
    }

    /// A node left the namespace for good: its write buffer and its dirty chunks go too (its
    /// data is no longer anyone's; clean copies are left to eviction).
    pub(crate) fn forget_node_data(&self, n: &Node) {
        lock(&self.inner.bufs).remove(&n.id);
        lock(&self.inner.unsynced).remove(&n.id);
        let oid = n.object_id();
        for (&i, &g) in &n.content.local {
            self.release_chunk(&local_key(&oid, g, i), false);
        }
    }

    /// The conflicts resolved since the mount started, oldest first.
    pub fn conflicts(&self) -> Vec<ConflictRecord> {
        lock(&self.inner.conflict_log).iter().cloned().collect()
    }

    /// What a provider call told about reachability: an unreachable provider marks the drive
    /// offline (since now, unless already), an answer marks it online.
    pub(crate) fn note_reachable(&self, reachable: bool) {
        let mut q = lock(&self.inner.queue);
        if reachable {
            if q.offline_since.take().is_some() {
                tracing::info!("the provider answers again: online");
            }
        } else if q.offline_since.is_none() {
            tracing::warn!("the provider cannot be reached: offline");
            q.offline_since = Some(SystemTime::now());
        }
    }

    pub(crate) fn record_conflict_entry(&self, c: ConflictRecord) {
        self.inner
            .counters
            .conflicts
            .fetch_add(1, Ordering::Relaxed);
        let mut log = lock(&self.inner.conflict_log);
        if log.len() == MAX_CONFLICTS_KEPT {
            log.pop_front();
        }
        log.push_back(c);
    }

    pub(crate) fn set_error(&self, e: impl std::fmt::Display) {
        *lock(&self.inner.last_error) = Some(e.to_string());
    }
}

/// Replays a journal record into the namespace (recovery). Mirrors what the live operation did.
/// The directory at `path`, made known if the namespace does not know it: a record was
/// journaled against it, so it existed (learned from a listing after the last checkpoint, or
/// made by a record replayed before). It is listed again on first use.
fn known_dir(ns: &mut Namespace, path: &RemotePath) -> Option<NodeId> {
    let mut cur = NodeId::ROOT;
    let mut at = RemotePath::root();
    if path.is_root() {
        return Some(cur);
    }
    for name in path.as_str().split('/') {
        at = at.join(name)?;
        cur = match ns.child(cur, name) {
            Some(id) => id,
            None => {
                let id = ns.alloc_id();
                let mut d = new_node(id, cur, name, FileKind::Dir, 0o755, SystemTime::now());
                d.children = None;
                d.remote = Some(RemoteState {
                    version: cache::Version::from(""),
                    size: 0,
                });
                ns.insert(d);
                id
            }
        };
    }
    Some(cur)
}

/// A record names `node` at `path`, but the namespace does not know the node: it was learned
/// from a listing after the last checkpoint (not journaled). If replay made it again under
/// another id (a directory a record's path needed), that node is this one.
fn adopt(ns: &mut Namespace, node: NodeId, path: &RemotePath) {
    if ns.get(node).is_none() {
        if let Some(id) = ns.resolve(path) {
            ns.rekey(id, node);
        }
    }
}

fn replay(ns: &mut Namespace, rec: &Record) {
    let now = SystemTime::now();
    let parent_of =
        |ns: &mut Namespace, path: &RemotePath| path.parent().and_then(|p| known_dir(ns, &p));
    match rec {
        Record::Remove { path, node, .. }
        | Record::Rename {
            from: path, node, ..
        }
        | Record::SetAttr { path, node, .. } => adopt(ns, *node, path),
        _ => {}
    }
    match rec {
        Record::Mkdir {
            path,
            node,
            perm,
            mtime,
        }
        | Record::Create {
            path,
            node,
            perm,
            mtime,
        } => {
            let Some(parent) = parent_of(ns, path) else {
                tracing::warn!(%path, "replay: parent missing");
                return;
            };
            if let Some(old) = ns.child(parent, path.name()) {
                ns.detach(old);
            }
            let dir = matches!(rec, Record::Mkdir { .. });
            let mut n = new_node(
                *node,
                parent,
                path.name(),
                if dir { FileKind::Dir } else { FileKind::File },
                *perm,
                *mtime,
            );
            // As `create` does: the empty file is a change its first close commits (a later
            // Commit record clears this; without one, the open commits it).
            n.dirty = !dir;
            ns.insert(n);
        }
        Record::Symlink {
            path,
            node,
            target,
            mtime,
        } => {
            let Some(parent) = parent_of(ns, path) else {
                return;
            };
            if let Some(old) = ns.child(parent, path.name()) {
                ns.detach(old);
            }
            let mut n = new_node(*node, parent, path.name(), FileKind::Symlink, 0o777, *mtime);
            n.target = Some(target.clone());
            ns.insert(n);
        }
        Record::Remove { node, .. } => ns.detach(*node),
        Record::Rename {
            to, node, replaced, ..
        } => {
            let Some(parent) = parent_of(ns, to) else {
                return;
            };
            if let Some(r) = replaced {
                ns.replace_by_rename(*node, *r);
                ns.detach(*r);
            }
            if let Some(old) = ns.child(parent, to.name()) {
                if old != *node {
                    ns.detach(old);
                }
            }
            ns.move_node(*node, parent, to.name());
        }
        Record::SetAttr {
            node, perm, mtime, ..
        } => {
            if let Some(n) = ns.get_mut(*node) {
                if let Some(p) = perm {
                    n.perm = *p;
                }
                if let Some(t) = mtime {
                    n.mtime = *t;
                }
                n.ctime = now;
            }
        }
        Record::Commit {
            path,
            node,
            content,
            mtime,
            ..
        } => {
            if ns.get(*node).is_none() {
                // A file learned from a listing after the last checkpoint: it is at `path`, based
                // on the remote version its content names.
                let Some(parent) = parent_of(ns, path) else {
                    tracing::warn!(%path, "replay: parent missing");
                    return;
                };
                if let Some(old) = ns.child(parent, path.name()) {
                    ns.detach(old);
                }
                let n = new_node(*node, parent, path.name(), FileKind::File, 0o644, *mtime);
                ns.insert(n);
            }
            if let Some(n) = ns.get_mut(*node) {
                // The commit was made on the remote version its content names: that is what the
                // provider had for the node then, and what its upload is conditional on. A
                // listing may have told the drive of it after the last checkpoint (such news is
                // not journaled), so the node's last replayed state may be older. A content
                // without a base (a new file, or one renamed over another) keeps what the node
                // knows.
                if let Some(b) = &content.base {
                    n.remote = Some(RemoteState {
                        version: b.version.clone(),
                        size: b.size,
                    });
                }
                n.content = content.clone();
                n.content.gen = content.gen + 1;
                n.mtime = *mtime;
                n.dirty = false;
            }
        }
        Record::Learned {
            node,
            remote: (v, size),
        } => {
            // What the merge of the listing did.
            if let Some(n) = ns.get_mut(*node) {
                if n.kind == FileKind::File {
                    let gen = n.content.gen;
                    n.content = Content::remote(v.clone(), *size);
                    n.content.gen = gen;
                    n.cached_version = None;
                }
                n.remote = Some(RemoteState {
                    version: v.clone(),
                    size: *size,
                });
            }
        }
        Record::Applied { .. } => {}
    }
}

/// Replays the provider's answer to an applied record into the namespace (live, the uploader
/// calls it when a record is done; after a crash, replay calls it for each `Applied` marker).
///
/// `later` are the contents of the commits of the same node journaled after `rec` and still
/// queued when its marker was journaled. They follow the node's content into the new frame (a
/// commit's upload rebases them on it too; a rename's or attribute change's new version
/// replaces the old one in their base), so that every queued commit stays an earlier state of
/// the node's content in the same frame, which is what [`Content::rebase`] reasons with, and
/// their uploads read base chunks of a version the provider still has. Returns, for each of
/// `later`, whether it changed.
///
/// A conflict (`conflict`: the provider had another version, `remote`, which stays at the name;
/// the local content went to a conflict copy) makes the node show that version, unless later
/// commits of it are queued or it has writes not committed yet: those were made on the same
/// older version, so they keep the node's content and remote state as they are and conflict in
/// turn, rather than overwrite the remote change or be dropped.
pub(crate) fn replay_applied(
    ns: &mut Namespace,
    rec: &Record,
    remote: Option<&(cache::Version, u64)>,
    conflict: bool,
    later: &mut [&mut Content],
    chunk_size: u64,
) -> Vec<bool> {
    let mut changed = vec![false; later.len()];
    let id = rec.node();
    if let Some((v, size)) = remote {
        let state = RemoteState {
            version: v.clone(),
            size: *size,
        };
        // A conflict's remote version was never seen here: a rename queued over this node
        // (which replaced what the user saw) must not take it for what it may replace.
        if !(conflict && ns.replaced.contains_key(&id)) {
            ns.reported(id, &state);
        }
    }
    if let Record::Rename {
        replaced: Some(r), ..
    } = rec
    {
        ns.rename_over_applied(id, *r, remote.is_some());
    }
    if conflict {
        let Some(n) = ns.get_mut(id) else {
            return changed;
        };
        if let Some((v, size)) = remote {
            if n.kind == FileKind::File && later.is_empty() && !n.dirty {
                // New writes still go to fresh generations.
                let gen = n.content.gen;
                n.content = Content::remote(v.clone(), *size);
                n.content.gen = gen;
                n.remote = Some(RemoteState {
                    version: v.clone(),
                    size: *size,
                });
                n.cached_version = None;
            }
        }
        // The conflict copy shows on the next listing.
        let parent = n.parent;
        if let Some(d) = ns.get_mut(parent) {
            d.listed_at = None;
        }
        return changed;
    }
    if let (Record::Commit { content, .. }, Some((v, _))) = (rec, remote) {
        for (c, ch) in later.iter_mut().zip(changed.iter_mut()) {
            *ch = c.rebase(content, v.clone(), chunk_size);
            if !*ch {
                tracing::warn!(node = id.0, "a queued commit could not follow an upload");
            }
        }
    }
    let Some(n) = ns.get_mut(id) else {
        return changed;
    };
    match rec {
        Record::Commit { content, .. } => {
            if let Some((v, size)) = remote {
                if !n.content.rebase(content, v.clone(), chunk_size) {
                    // Not in the frame of the commit (a log or checkpoint from before queued
                    // commits were rebased): if nothing was written since, the file is the
                    // uploaded state all the same.
                    let unchanged = n.content.gen == content.gen + 1 && !n.dirty;
                    tracing::warn!(node = id.0, unchanged, "upload in another frame");
                    if unchanged {
                        let gen = n.content.gen;
                        n.content = Content::settled(content, v.clone(), chunk_size);
                        n.content.gen = gen;
                    }
                }
                n.remote = Some(RemoteState {
                    version: v.clone(),
                    size: *size,
                });
            }
        }
        Record::Remove { .. } => {}
        Record::Mkdir { .. } => {
            // Made here: every child is known, nothing to list.
            if n.children.is_some() && n.listed_at.is_none() {
                n.listed_at = Some(Instant::now());
            }
            if let Some((v, size)) = remote {
                n.remote = Some(RemoteState {
                    version: v.clone(),
                    size: *size,
                });
            }
        }
        _ => {
            if let Some((v, size)) = remote {
                if n.kind == FileKind::File {
                    if let Some(old) = n.remote.as_ref().map(|r| r.version.clone()) {
                        // Same bytes under a new version (rename, attributes).
                        let follow = |c: &mut Content| match c.base.as_mut() {
                            Some(b) if b.version == old => {
                                b.version = v.clone();
                                true
                            }
                            _ => false,
                        };
                        follow(&mut n.content);
                        for (c, ch) in later.iter_mut().zip(changed.iter_mut()) {
                            *ch = follow(c);
                        }
                    }
                }
                n.remote = Some(RemoteState {
                    version: v.clone(),
                    size: *size,
                });
            }
        }
    }
    changed
}

pub(crate) fn new_node(
    id: NodeId,
    parent: NodeId,
    name: &str,
    kind: FileKind,
    perm: u16,
    mtime: SystemTime,
) -> Node {
    Node {
        id,
        generation: 0,
        parent,
        name: name.to_string(),
        kind,
        perm,
        mtime,
        atime: mtime,
        ctime: mtime,
        content: Content {
            gen: 1,
            ..Content::default()
        },
        target: None,
        remote: None,
        children: (kind == FileKind::Dir).then(BTreeMap::new),
        listed_at: None,
        pending: 0,
        dirty: false,
        open: 0,
        orphan: false,
        cached_version: None,
        remote_gen: 0,
        checked_at: None,
    }
}

thread_local! {
    static LOCAL_DISK_WAIT_ALLOWED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Declares, while alive, that the current thread may wait for the local disk (an adapter's
/// request thread polling an operation before handing it to the runtime): a close then makes
/// its log record durable on that thread, and a read hit decrypts from the cache there, instead
/// of handing the work to the blocking pool and back (two thread hand-offs each). Never held on a runtime worker, and the
/// core never waits for the network on such a thread either (provider calls are always
/// awaited).
pub struct LocalDiskWaitAllowed {
    was: bool,
}

impl LocalDiskWaitAllowed {
    pub fn enter() -> Self {
        LocalDiskWaitAllowed {
            was: LOCAL_DISK_WAIT_ALLOWED.with(|c| c.replace(true)),
        }
    }

    pub(crate) fn here() -> bool {
        LOCAL_DISK_WAIT_ALLOWED.with(std::cell::Cell::get)
    }
}

impl Drop for LocalDiskWaitAllowed {
    fn drop(&mut self) {
        LOCAL_DISK_WAIT_ALLOWED.with(|c| c.set(self.was));
    }
}
