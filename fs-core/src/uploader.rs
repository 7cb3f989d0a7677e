//! The uploader: applies journal records to the provider in log order, independent paths in
//! parallel (`--transfers`), commits after the write-back delay, with capped exponential backoff
//! on retryable errors. Each applied record gets an `Applied` marker in the log, so a restart
//! neither loses nor repeats work: a record is re-applied only if its marker was not durable,
//! and every apply is idempotent against its own earlier success (a re-upload that finds its own
//! bytes on the provider is recognised as done).
//!
//! Uploads are conditional on the version the file was based on (`IfMatch`, or `IfNotExists` for
//! a new file). When the provider has another version, the remote one stays at the name and the
//! local one is written beside it as `NAME.conflict-<host>-<YYYYMMDD-HHMMSS>[-N].EXT`: nothing
//! is silently overwritten. Commits of the file still queued were based on the same version, so
//! the node keeps its content and remote state until the last of them conflicted too (see
//! `replay_applied`).
//!
//! When an upload of a file is done, its content and its commits still queued are rebased on
//! the new version together (`replay_applied`), so that each later upload is compared with a
//! content of the same frame and reads base chunks of a version the provider has.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;

use crate::config::{ConflictLoser, ConflictPolicy};
use crate::content::{local_key, remote_key, ChunkSrc, Content};
use crate::error::FsError;
use crate::journal::Record;
use crate::namespace::RemoteState;
use crate::provider::{
    ByteStream, ObjectAttrs, Precondition, ProviderError, RemoteEntry, RemotePath,
};
use crate::types::{FileKind, NodeId};
use crate::vfs::{lock, replay_applied, ConflictRecord, ConflictWinner, Vfs};
use crate::wal::Lsn;

/// Longest wait between retries of a failing record.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Entries looked at per scheduling round (the rest wait their turn; keeps rounds cheap with
/// tens of thousands queued).
const SCAN_WINDOW: usize = 512;

#[derive(Clone, Debug)]
struct Entry {
    rec: Record,
    ready: Instant,
    in_flight: bool,
    /// In flight but no longer holding a transfer slot (waiting for [`Provider::sync`]).
    slot_free: bool,
    attempts: u32,
    retry_at: Option<Instant>,
    /// Queued again at start: it may have been applied before a crash.
    recovered: bool,
    /// A commit whose content followed an upload of its file done since it was journaled (see
    /// `replay_applied`): it differs from the log's, so checkpoints save it.
    rebased: bool,
    /// Applied, and the namespace says so; taken off the queue once its marker is handed on.
    done: bool,
}

/// Records waiting for the provider.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    entries: BTreeMap<Lsn, Entry>,
    /// Every record below this LSN is applied.
    pub applied_below: Lsn,
    /// Applied records at or above `applied_below`.
    pub applied: BTreeSet<Lsn>,
    pub offline_since: Option<SystemTime>,
    /// Make every entry ready now (flush, unmount).
    pub flush: bool,
    /// Queued records naming each path, and naming a descendant of each path (root `""`
    /// included): whether an earlier record overlaps is O(path depth), not a scan.
    by_path: HashMap<String, BTreeSet<Lsn>>,
    by_ancestor: HashMap<String, BTreeSet<Lsn>>,
    /// Queued records changing the entries of each directory (all but attribute changes).
    by_parent: HashMap<String, BTreeSet<Lsn>>,
    /// Queued records of each node: what else is queued for a node is found without a scan of
    /// the queue (an untar queues tens of thousands of records, and each upload asks).
    by_node: HashMap<NodeId, BTreeSet<Lsn>>,
    /// Entries not in flight and not ready yet, by the moment they become ready (write-back
    /// delay, retry backoff).
    waiting: BTreeSet<(Instant, Lsn)>,
    /// Entries not in flight whose moment has come; they start unless an earlier record
    /// overlaps or all transfer slots are taken.
    ready: BTreeSet<Lsn>,
    in_flight: usize,
}

/// The directory holding a remote path (`""` for a top-level entry); `None` for the root.
fn parent_of(p: &str) -> Option<&str> {
    if p.is_empty() {
        return None;
    }
    Some(p.rfind('/').map_or("", |i| &p[..i]))
}

/// Takes `lsn` off `index` under `key`, and the key with its last record.
fn unindex<K, Q>(index: &mut HashMap<K, BTreeSet<Lsn>>, key: &Q, lsn: Lsn)
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(s) = index.get_mut(key) {
        s.remove(&lsn);
        if s.is_empty() {
            index.remove(key);
        }
    }
}

/// The proper ancestors of a remote path, the root (`""`) included: `a/b/c` → `a`, `a/b`, `""`.
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/')
        .map(move |(i, _)| &p[..i])
        .chain((!p.is_empty()).then_some(""))
}

impl Queue {
    pub fn push(&mut self, lsn: Lsn, rec: Record, ready: Instant) {
        for p in rec.paths() {
            let p = p.as_str();
            self.by_path.entry(p.to_string()).or_default().insert(lsn);
            for a in ancestors(p) {
                self.by_ancestor
                    .entry(a.to_string())
                    .or_default()
                    .insert(lsn);
            }
            // Attribute changes leave the directory's entries (and time) alone.
            if let Some(parent) = parent_of(p).filter(|_| !matches!(rec, Record::SetAttr { .. })) {
                self.by_parent
                    .entry(parent.to_string())
                    .or_default()
                    .insert(lsn);
            }
        }
        self.by_node.entry(rec.node()).or_default().insert(lsn);
        self.waiting.insert((ready, lsn));
        self.entries.insert(
            lsn,
            Entry {
                rec,
                ready,
                in_flight: false,
                slot_free: false,
                attempts: 0,
                retry_at: None,
                recovered: false,
                rebased: false,
                done: false,
            },
        );
    }

    /// Queues a record found unapplied in the log at start (it may have been applied before the
    /// crash, its marker lost). `rebased`: a commit whose content is not the log's (it followed
    /// uploads of its file, see `replay_applied`).
    pub fn push_recovered(&mut self, lsn: Lsn, rec: Record, ready: Instant, rebased: bool) {
        self.push(lsn, rec, ready);
        if let Some(e) = self.entries.get_mut(&lsn) {
            e.recovered = true;
            e.rebased = rebased;
        }
    }

    /// Queued commits whose content is not the log's, for a checkpoint.
    pub fn rebased_commits(&self) -> Vec<(Lsn, Content)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.rebased)
            .filter_map(|(lsn, e)| match &e.rec {
                Record::Commit { content, .. } => Some((*lsn, content.clone())),
                _ => None,
            })
            .collect()
    }

    /// The records of `lsns` (an index's set) queued after `lsn`, in log order.
    fn after<'a>(
        &'a self,
        lsns: Option<&'a BTreeSet<Lsn>>,
        lsn: Lsn,
    ) -> impl Iterator<Item = (Lsn, &'a Entry)> + 'a {
        lsns.into_iter()
            .flat_map(move |s| s.range(lsn + 1..))
            .filter_map(|l| self.entries.get(l).map(|e| (*l, e)))
    }

    /// The records of `node` queued after `lsn`, in log order.
    fn node_after(&self, lsn: Lsn, node: NodeId) -> impl Iterator<Item = (Lsn, &Entry)> {
        self.after(self.by_node.get(&node), lsn)
    }

    /// The contents of the commits of `node` queued after `lsn`, with their `rebased` flags.
    fn later_commits(&mut self, lsn: Lsn, node: NodeId) -> (Vec<&mut Content>, Vec<&mut bool>) {
        let mut theirs = self.node_after(lsn, node).map(|(l, _)| l);
        let Some(first) = theirs.next() else {
            return (Vec::new(), Vec::new());
        };
        let last = theirs.last().unwrap_or(first);
        self.entries
            .range_mut(first..=last)
            .filter_map(|(_, e)| {
                let Entry { rec, rebased, .. } = e;
                match rec {
                    Record::Commit {
                        node: n, content, ..
                    } if *n == node => Some((content, rebased)),
                    _ => None,
                }
            })
            .unzip()
    }

    /// Whether a record after `lsn` puts something new at `path`.
    fn recreated_after(&self, lsn: Lsn, path: &RemotePath) -> bool {
        self.after(self.by_path.get(path.as_str()), lsn)
            .any(|(_, e)| match &e.rec {
                Record::Create { path: p, .. }
                | Record::Mkdir { path: p, .. }
                | Record::Symlink { path: p, .. }
                | Record::Commit { path: p, .. } => p == path,
                Record::Rename { to, .. } => to == path,
                _ => false,
            })
    }

    fn recovered(&self, lsn: Lsn) -> bool {
        self.entries.get(&lsn).is_some_and(|e| e.recovered)
    }

    /// Whether the record at `lsn` may have taken effect already: tried before (an error such
    /// as a timeout can come after the provider did it) or found in the log at start.
    fn maybe_done(&self, lsn: Lsn) -> bool {
        self.entries
            .get(&lsn)
            .is_some_and(|e| e.recovered || e.attempts > 0)
    }

    /// Whether a record after `lsn` touches `path`, an ancestor or a descendant of it.
    fn touched_after(&self, lsn: Lsn, path: &RemotePath) -> bool {
        let later = |m: &HashMap<String, BTreeSet<Lsn>>, k: &str| {
            m.get(k)
                .and_then(|s| s.last())
                .is_some_and(|last| *last > lsn)
        };
        let p = path.as_str();
        later(&self.by_path, p)
            || later(&self.by_ancestor, p)
            || ancestors(p).any(|a| later(&self.by_path, a))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn lsns(&self) -> Vec<Lsn> {
        self.entries.keys().copied().collect()
    }

    /// Queued records in log order, but those the namespace already knows to be applied.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.entries.values().filter(|e| !e.done).map(|e| &e.rec)
    }

    /// Whether a record touching `path` (it, or an ancestor) is being applied right now.
    pub fn in_flight_at(&self, path: &RemotePath) -> bool {
        self.entries
            .values()
            .filter(|e| e.in_flight && !e.done)
            .any(|e| e.rec.paths().iter().any(|p| path.starts_with(p)))
    }

    pub fn contains(&self, lsn: Lsn) -> bool {
        self.entries.contains_key(&lsn)
    }

    /// Whether a record after `lsn` supersedes the commit at `lsn` (a later commit or removal of
    /// the same node).
    fn superseded(&self, lsn: Lsn, node: NodeId) -> bool {
        self.node_after(lsn, node)
            .any(|(_, e)| matches!(e.rec, Record::Commit { .. } | Record::Remove { .. }))
    }

    /// Whether a queued record names `dir` or an entry of it.
    pub fn busy_dir(&self, dir: &str) -> bool {
        self.by_path.contains_key(dir) || self.by_parent.contains_key(dir)
    }

    /// Whether a queued record other than `lsn`, and not transferred yet, names `dir` or an
    /// entry of it.
    fn others_touch(&self, lsn: Lsn, dir: &str) -> bool {
        let other = |m: &HashMap<String, BTreeSet<Lsn>>| {
            m.get(dir).is_some_and(|s| {
                s.iter().any(|l| {
                    *l != lsn
                        && !self
                            .entries
                            .get(l)
                            .is_some_and(|e| e.in_flight && e.slot_free)
                })
            })
        };
        other(&self.by_path) || other(&self.by_parent)
    }

    /// Whether a record earlier than `lsn` names `p`, an ancestor of `p` or a descendant of
    /// `p` (the root overlaps everything).
    fn overlaps_earlier(&self, lsn: Lsn, p: &str) -> bool {
        let earlier = |m: &HashMap<String, BTreeSet<Lsn>>, k: &str| {
            m.get(k)
                .and_then(|s| s.first())
                .is_some_and(|first| *first < lsn)
        };
        earlier(&self.by_path, p)
            || earlier(&self.by_ancestor, p)
            || ancestors(p).any(|a| earlier(&self.by_path, a))
    }

    /// Moves waiting entries whose moment has come (all but backing-off ones in a flush) to
    /// `ready`.
    fn promote(&mut self, now: Instant) {
        while let Some(&(at, lsn)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(lsn);
        }
        if self.flush && !self.waiting.is_empty() {
            let entries = &self.entries;
            let (retrying, rest): (BTreeSet<_>, BTreeSet<_>) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|(_, l)| entries.get(l).is_some_and(|e| e.retry_at.is_some()));
            self.ready.extend(rest.into_iter().map(|(_, l)| l));
            self.waiting = retrying;
        }
    }

    /// Picks records that may start now: ready, not backing off, and touching no path that an
    /// earlier unfinished record touches (the same path, an ancestor or a descendant). Returns
    /// them and when to look again. Looks at no more than `SCAN_WINDOW` ready entries, each in
    /// O(path depth).
    fn runnable(&mut self, now: Instant, slots: usize) -> (Vec<(Lsn, Record)>, Option<Instant>) {
        self.promote(now);
        let mut chosen = Vec::new();
        for &lsn in self.ready.iter().take(SCAN_WINDOW) {
            if chosen.len() >= slots {
                break;
            }
            let Some(e) = self.entries.get(&lsn) else {
                continue;
            };
            if !e
                .rec
                .paths()
                .iter()
                .any(|p| self.overlaps_earlier(lsn, p.as_str()))
            {
                chosen.push(lsn);
            }
        }
        let mut out = Vec::with_capacity(chosen.len());
        for lsn in chosen {
            self.ready.remove(&lsn);
            if let Some(e) = self.entries.get_mut(&lsn) {
                e.in_flight = true;
                self.in_flight += 1;
                out.push((lsn, e.rec.clone()));
            }
        }
        (out, self.waiting.first().map(|(at, _)| *at))
    }

    /// An in-flight entry's transfer is done; it still waits (for the provider's sync) and
    /// still blocks what overlaps it, but another transfer may start.
    fn free_slot(&mut self, lsn: Lsn) {
        if let Some(e) = self.entries.get_mut(&lsn) {
            if e.in_flight && !e.slot_free {
                e.slot_free = true;
                self.in_flight -= 1;
            }
        }
    }

    fn complete(&mut self, lsn: Lsn) {
        if let Some(e) = self.entries.remove(&lsn) {
            if e.in_flight {
                if !e.slot_free {
                    self.in_flight -= 1;
                }
            } else {
                self.ready.remove(&lsn);
                let at = e.retry_at.unwrap_or(e.ready);
                self.waiting.remove(&(at, lsn));
            }
            unindex(&mut self.by_node, &e.rec.node(), lsn);
            for p in e.rec.paths() {
                let p = p.as_str();
                unindex(&mut self.by_path, p, lsn);
                for a in ancestors(p) {
                    unindex(&mut self.by_ancestor, a, lsn);
                }
                if let Some(parent) = parent_of(p) {
                    unindex(&mut self.by_parent, parent, lsn);
                }
            }
        }
        self.applied.insert(lsn);
        let floor = self.entries.keys().next().copied();
        if let Some(f) = floor {
            self.applied_below = f;
            self.applied = self.applied.split_off(&f);
        } else {
            self.applied_below = self
                .applied
                .iter()
                .next_back()
                .map_or(self.applied_below, |l| l + 1);
            self.applied.clear();
        }
    }

    fn defer(&mut self, lsn: Lsn) -> Duration {
        let Some(e) = self.entries.get_mut(&lsn) else {
            return Duration::ZERO;
        };
        if e.in_flight {
            e.in_flight = false;
            if !std::mem::take(&mut e.slot_free) {
                self.in_flight -= 1;
            }
        } else {
            self.ready.remove(&lsn);
            self.waiting.remove(&(e.retry_at.unwrap_or(e.ready), lsn));
        }
        e.attempts += 1;
        let backoff = Duration::from_millis(250 << e.attempts.min(8)).min(MAX_BACKOFF);
        // Jitter (up to a quarter) keeps many mounts from retrying in step.
        let jitter = backoff.mul_f64(f64::from(lsn as u32 % 97) / 388.0);
        let at = Instant::now() + backoff + jitter;
        e.retry_at = Some(at);
        self.waiting.insert((at, lsn));
        backoff
    }
}

/// What applying a record produced.
enum Outcome {
    /// Done; the provider now has this for the node (if it said).
    Applied(Option<RemoteEntry>),
    /// Done as a conflict: the provider keeps this other version at the name, and the local
    /// content was written to a conflict copy beside it.
    Conflict(RemoteEntry),
    /// Nothing to do any more (superseded, already there, or not on the provider).
    Skipped,
}

impl Vfs {
    /// Starts the uploader on the current tokio runtime. It runs until the VFS is dropped.
    pub fn spawn_uploader(&self) -> tokio::task::JoinHandle<()> {
        // Uploads cut by a crash may have left temporary files beside their targets; listing
        // those directories lets the provider clear what its dead writers left.
        let parents: BTreeSet<RemotePath> = lock(&self.inner.queue)
            .entries
            .values()
            .filter(|e| e.recovered && matches!(e.rec, Record::Commit { .. }))
            .filter_map(|e| e.rec.paths().first().and_then(|p| p.parent()))
            .collect();
        if !parents.is_empty() {
            let provider = self.inner.provider.clone();
            tokio::spawn(async move {
                for dir in parents {
                    let _ = provider.list(&dir, None).await;
                }
            });
        }
        let weak = std::sync::Arc::downgrade(&self.inner);
        self.spawn_background(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if inner.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                let vfs = Vfs { inner };
                let (batch, wake) = {
                    let mut q = lock(&vfs.inner.queue);
                    let slots = vfs.inner.cfg.transfers.saturating_sub(q.in_flight());
                    q.runnable(Instant::now(), slots)
                };
                for (lsn, rec) in batch {
                    let v = vfs.clone();
                    tokio::spawn(async move { v.apply(lsn, rec).await });
                }
                let changed = vfs.inner.queue_changed.clone();
                drop(vfs);
                let notified = changed.notified();
                let sleep = match wake {
                    Some(w) => tokio::time::sleep_until(w.into()),
                    None => tokio::time::sleep(Duration::from_secs(1)),
                };
                tokio::select! {
                    () = notified => {}
                    () = sleep => {}
                }
            }
        })
    }

    /// Makes everything queued ready now and waits until the queue is empty, or fails if it
    /// stops making progress for `stall` (provider unreachable, a record failing).
    pub async fn flush_all(&self, stall: Duration) -> Result<(), FsError> {
        self.commit_all().await?;
        lock(&self.inner.queue).flush = true;
        self.inner.queue_changed.notify_one();
        // Progress is a shorter queue or bytes moving: one big upload may take longer than
        // `stall` without the queue changing.
        let progress = || {
            (
                lock(&self.inner.queue).len(),
                self.inner.counters.sent_bytes.load(Ordering::Relaxed),
            )
        };
        let mut last = (progress(), Instant::now());
        let result = loop {
            let now = progress();
            if now.0 == 0 {
                self.sweep_maybe_sent().await;
                break Ok(());
            }
            if now.0 < last.0 .0 || now.1 > last.0 .1 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > stall {
                let n = now.0;
                let why = lock(&self.inner.last_error)
                    .clone()
                    .unwrap_or_else(|| "no progress".into());
                break Err(FsError::Io(format!(
                    "{n} operations still queued for the provider: {why}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        lock(&self.inner.queue).flush = false;
        result
    }

    async fn apply(&self, lsn: Lsn, rec: Record) {
        tracing::debug!(lsn, op = rec.kind_name(), path = %rec.paths()[0], "applying");
        let deadline = self.inner.cfg.provider_timeout * 4;
        // Durable on the provider before the marker that says so can be (see Provider::sync).
        let applied = async {
            let outcome = self.apply_record(lsn, &rec).await?;
            // Let the next transfer start meanwhile: syncs then cover several changes. Marked
            // done and checked in one step, so that of two changes in a directory finishing
            // together, the second restores the directory's time.
            let dirs = {
                let mut q = lock(&self.inner.queue);
                q.free_slot(lsn);
                // A skipped record changed nothing on the provider: no time to set back.
                if matches!(outcome, Outcome::Skipped) {
                    Vec::new()
                } else {
                    self.times_to_restore(&q, lsn, &rec)
                }
            };
            self.inner.queue_changed.notify_one();
            self.restore_times(dirs).await?;
            self.inner.provider.sync().await?;
            Ok(outcome)
        };
        let result = match tokio::time::timeout(deadline, applied).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::TimedOut),
        };
        match result {
            Ok(outcome) => {
                let (remote, conflict) = match outcome {
                    Outcome::Applied(Some(e)) => (Some((e.version, e.size)), false),
                    Outcome::Conflict(e) => (Some((e.version, e.size)), true),
                    Outcome::Applied(None) | Outcome::Skipped => (None, false),
                };
                if let Err(e) = self.finish(lsn, &rec, remote, conflict).await {
                    self.set_error(&e);
                    tracing::error!(error = %e, lsn, "could not record an applied operation");
                }
            }
            Err(e) => {
                let unreachable = e.is_unreachable();
                let backoff = lock(&self.inner.queue).defer(lsn);
                if unreachable {
                    lock(&self.inner.queue)
                        .offline_since
                        .get_or_insert_with(SystemTime::now);
                }
                tracing::warn!(error = %e, lsn, ?backoff, "provider operation failed; will retry");
                self.set_error(format!("{e}"));
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(backoff).await;
                    inner.queue_changed.notify_one();
                });
            }
        }
    }

    /// Applying a change inside a directory stamps the remote directory with the time of the
    /// upload, not the time of the change (and a new directory or symlink is made then): the
    /// directories and symlinks to set back to their time on the drive (an `rsync -a`, which
    /// sets their times, then finds nothing to do on the provider either). Once per burst: none
    /// while another change in it waits for its transfer.
    fn times_to_restore(&self, q: &Queue, lsn: Lsn, rec: &Record) -> Vec<RemotePath> {
        if matches!(rec, Record::SetAttr { .. } | Record::Applied { .. })
            || !self.inner.provider.capabilities().attrs
        {
            return Vec::new();
        }
        let mut dirs: BTreeSet<RemotePath> =
            rec.paths().iter().filter_map(|p| p.parent()).collect();
        // A new directory or symlink is stamped with the time it was made on the provider.
        if let Record::Mkdir { path, .. } | Record::Symlink { path, .. } = rec {
            dirs.insert(path.clone());
        }
        dirs.into_iter()
            .filter(|d| !q.others_touch(lsn, d.as_str()))
            .collect()
    }

    async fn restore_times(&self, dirs: Vec<RemotePath>) -> Result<(), ProviderError> {
        for dir in dirs {
            let mtime = {
                let ns = lock(&self.inner.ns);
                match ns.resolve(&dir).and_then(|id| ns.get(id)) {
                    Some(n) if n.kind != FileKind::File => n.mtime,
                    _ => continue,
                }
            };
            let attrs = ObjectAttrs {
                mode: None,
                mtime: Some(mtime),
            };
            tracing::debug!(path = %dir, ?mtime, "restoring the time of a directory or symlink");
            match self.inner.provider.set_attrs(&dir, attrs).await {
                Ok(e) => {
                    let mut ns = lock(&self.inner.ns);
                    if let Some(n) = ns.resolve(&dir).and_then(|id| ns.get_mut(id)) {
                        n.remote = Some(RemoteState {
                            version: e.version,
                            size: e.size,
                        });
                    }
                }
                // Gone or replaced since: whatever did that restores its own parent's time.
                Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Journals the `Applied` marker and updates the namespace with what the provider has now.
    /// The marker is handed to the OS (a lost marker only means an idempotent re-apply); before
    /// a commit's dirty chunks are released, it is made durable, since a re-apply needs them
    /// (not those that travel inline in the record).
    async fn finish(
        &self,
        lsn: Lsn,
        rec: &Record,
        remote: Option<(cache::Version, u64)>,
        conflict: bool,
    ) -> Result<(), FsError> {
        let inner = &self.inner;
        let (released, gone) = {
            let mut ns = lock(&inner.ns);
            inner
                .wal
                .append(
                    &Record::Applied {
                        lsn,
                        remote: remote.clone(),
                        conflict,
                    }
                    .encode(),
                )
                .map_err(FsError::io)?;
            {
                // What replay does with the marker, with the commits of the node queued after
                // this record (the same that replay finds between the two in the log).
                let mut q = lock(&inner.queue);
                let (mut later, flags) = q.later_commits(lsn, rec.node());
                let changed = replay_applied(
                    &mut ns,
                    rec,
                    remote.as_ref(),
                    conflict,
                    &mut later,
                    inner.cfg.chunk_size,
                );
                for (f, c) in flags.into_iter().zip(changed) {
                    *f |= c;
                }
                // The namespace has the outcome now: where the node is, say, no longer takes
                // this record for one still to come (see `remote_location`).
                if let Some(e) = q.entries.get_mut(&lsn) {
                    e.done = true;
                }
            }
            inner.applied_epoch.fetch_add(1, Ordering::SeqCst);
            let id = rec.node();
            if let Some(n) = ns.get_mut(id) {
                n.pending = n.pending.saturating_sub(1);
            }
            let gone = ns.release_orphan(id);
            match rec {
                Record::Remove { path, .. } => ns.remove_tombstone(path),
                Record::Rename { from, .. } => ns.remove_tombstone(from),
                _ => {}
            }
            lock(&inner.queue).offline_since = None;
            // Dirty chunks of an uploaded commit that nothing references any more.
            let released = match rec {
                Record::Commit { content, node, .. } => {
                    self.unreferenced_chunks(&ns, lsn, *node, content)
                }
                _ => Vec::new(),
            };
            (released, gone)
        };
        if let Some(n) = gone {
            self.forget_node_data(&n);
        }
        if conflict {
            self.invalidate_inode(rec.node());
        }
        // A re-apply after a crash takes inline chunks from the log record itself, so only
        // releasing chunks that exist nowhere else waits for the marker to be durable.
        let inline: BTreeSet<u64> = match rec {
            Record::Commit { inline, .. } => inline.iter().map(|(i, _)| *i).collect(),
            _ => BTreeSet::new(),
        };
        if released.iter().all(|(k, _)| inline.contains(&k.index)) {
            self.log_to_os()?;
        } else {
            self.sync_log().await?;
        }
        for (key, keep_clean) in released {
            self.release_chunk(&key, keep_clean);
        }
        // Done only now: a flush that sees the queue empty finds the chunks released too.
        lock(&inner.queue).complete(lsn);
        inner.queue_changed.notify_one();
        Ok(())
    }

    /// Chunks of `committed` no longer needed dirty: `(key, still referenced as a clean copy)`.
    fn unreferenced_chunks(
        &self,
        ns: &crate::namespace::Namespace,
        lsn: Lsn,
        node: NodeId,
        committed: &Content,
    ) -> Vec<(cache::ChunkKey, bool)> {
        let q = lock(&self.inner.queue);
        let mut needed_dirty = BTreeSet::new();
        // Cached copies of base chunks that queued commits still read.
        let mut queued_alias = BTreeSet::new();
        let theirs = q.by_node.get(&node).into_iter().flatten();
        for e in theirs
            .filter(|l| **l != lsn)
            .filter_map(|l| q.entries.get(l))
        {
            if let Record::Commit {
                node: n, content, ..
            } = &e.rec
            {
                if *n == node {
                    needed_dirty.extend(content.local.iter().map(|(i, g)| (*i, *g)));
                    queued_alias.extend(content.alias.iter().map(|(i, g)| (*i, *g)));
                }
            }
        }
        let (current_local, current_alias, oid) = match ns.get(node) {
            Some(n) => (
                n.content
                    .local
                    .iter()
                    .map(|(i, g)| (*i, *g))
                    .collect::<BTreeSet<_>>(),
                n.content
                    .alias
                    .iter()
                    .map(|(i, g)| (*i, *g))
                    .collect::<BTreeSet<_>>(),
                n.object_id(),
            ),
            None => (
                BTreeSet::new(),
                BTreeSet::new(),
                cache::ObjectId::from(format!("n{}.0", node.0)),
            ),
        };
        needed_dirty.extend(current_local.iter().copied());
        committed
            .local
            .iter()
            .map(|(i, g)| (*i, *g))
            .filter(|c| !needed_dirty.contains(c))
            .map(|c| {
                let clean = current_alias.contains(&c) || queued_alias.contains(&c);
                (local_key(&oid, c.1, c.0), clean)
            })
            .collect()
    }

    async fn apply_record(&self, lsn: Lsn, rec: &Record) -> Result<Outcome, ProviderError> {
        let r = self.apply_record_once(lsn, rec).await;
        // A directory, symlink or rename target whose parent the provider lost (removed, or
        // replaced by a file) while the change waited here: the parents are made again (a file
        // in the way is moved aside) and the change applied once more. Uploads do that
        // themselves (see `upload`).
        let made = match (&r, rec) {
            (
                Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_)),
                Record::Mkdir { path, .. } | Record::Symlink { path, .. },
            ) => Some(path),
            (Err(ProviderError::NotADirectory(_)), Record::Rename { to, .. }) => Some(to),
            _ => None,
        };
        match made {
            Some(path) if self.parent_lost(path).await? && self.make_parents(path).await? => {
                self.apply_record_once(lsn, rec).await
            }
            _ => r,
        }
    }

    /// Whether the parent of `path` is missing on the provider or is not a directory there.
    async fn parent_lost(&self, path: &RemotePath) -> Result<bool, ProviderError> {
        let Some(parent) = path.parent().filter(|p| !p.is_root()) else {
            return Ok(false);
        };
        match self.inner.provider.stat(&parent).await {
            Ok(e) => Ok(e.kind != crate::provider::EntryKind::Dir),
            Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_)) => Ok(true),
            Err(e) => Err(e),
        }
    }

    async fn apply_record_once(&self, lsn: Lsn, rec: &Record) -> Result<Outcome, ProviderError> {
        let p = &self.inner.provider;
        match rec {
            Record::Mkdir { path, perm, .. } => match p.mkdir(path).await {
                Ok(e) => {
                    // mkdir(2)'s mode: the provider made it with its default.
                    let default = e.mode.map(|m| (m & 0o7777) as u16);
                    if p.capabilities().attrs && default != Some(*perm) {
                        let attrs = ObjectAttrs {
                            mode: Some(u32::from(*perm)),
                            mtime: None,
                        };
                        return Ok(Outcome::Applied(Some(p.set_attrs(path, attrs).await?)));
                    }
                    Ok(Outcome::Applied(Some(e)))
                }
                Err(ProviderError::AlreadyExists(_)) => match p.stat(path).await {
                    Ok(e) if e.kind == crate::provider::EntryKind::Dir => {
                        Ok(Outcome::Applied(Some(e)))
                    }
                    // A file the remote put at the name of a directory made here (which may
                    // have local changes in it queued): both are kept, the remote file beside
                    // it under a conflict name, as for a write inside a directory the remote
                    // replaced by a file (`make_parents`).
                    Ok(_) => {
                        let aside = self.move_aside(path).await?;
                        tracing::warn!(dir = %path, moved = %aside, "a remote file took the name of a directory made here: moved aside");
                        self.record_conflict(path, Some(&aside), ConflictWinner::Local);
                        let e = match p.mkdir(path).await {
                            Ok(e) => e,
                            Err(ProviderError::AlreadyExists(_)) => p.stat(path).await?,
                            Err(e) => return Err(e),
                        };
                        if e.kind != crate::provider::EntryKind::Dir {
                            return Err(ProviderError::AlreadyExists(path.clone()));
                        }
                        // Shown as a conflict: the parent is listed again, with the copy.
                        Ok(Outcome::Conflict(e))
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            // A new file reaches the provider with its first commit (at close). Only a file
            // created before a crash and never closed has none: it is created empty.
            Record::Create {
                path, node, mtime, ..
            } => {
                let skip = {
                    let q = lock(&self.inner.queue);
                    !q.recovered(lsn) || q.superseded(lsn, *node)
                };
                if skip {
                    return Ok(Outcome::Skipped);
                }
                let empty = Content {
                    gen: 1,
                    ..Content::default()
                };
                self.upload(path, *node, &empty, *mtime, false).await
            }
            Record::Symlink { path, target, .. } => match p.symlink(path, target).await {
                Ok(e) => Ok(Outcome::Applied(Some(e))),
                Err(ProviderError::AlreadyExists(_)) => match p.stat(path).await {
                    Ok(e) if e.symlink_target.as_deref() == Some(target) => {
                        Ok(Outcome::Applied(Some(e)))
                    }
                    _ => Err(ProviderError::AlreadyExists(path.clone())),
                },
                Err(ProviderError::NotSupported(_)) => Ok(Outcome::Skipped),
                Err(e) => Err(e),
            },
            Record::Remove { path, node, dir } => {
                let known = self.remote_version(*node);
                let r = if *dir {
                    p.rmdir(path).await
                } else {
                    // Never uploaded in this run (made and removed here while queued):
                    // whatever the provider has at the name was put there by someone else. A
                    // record found in the log at start may follow an upload whose marker was
                    // lost, so it removes what is there (a window, see docs/CONFLICTS.md).
                    let pre = match known {
                        Some(v) => Precondition::IfMatch(v),
                        None if !lock(&self.inner.queue).recovered(lsn) => {
                            return Ok(Outcome::Skipped)
                        }
                        None => Precondition::None,
                    };
                    p.delete(path, pre).await
                };
                match r {
                    // Not there, or its parent is a file now: nothing of ours to remove.
                    Ok(()) | Err(ProviderError::NotFound(_)) => Ok(Outcome::Skipped),
                    // Replaced on the provider by a file (or a file took its parent's place):
                    // the remote data is kept.
                    Err(ProviderError::NotADirectory(_)) => {
                        tracing::info!(%path, "not removing: replaced on the provider by a file meanwhile");
                        Ok(Outcome::Skipped)
                    }
                    // Changed remotely since we last saw it: the remote data is kept.
                    Err(ProviderError::PreconditionFailed { .. }) => {
                        tracing::info!(%path, "not deleting: changed on the provider meanwhile");
                        Ok(Outcome::Skipped)
                    }
                    Err(ProviderError::NotEmpty(_)) => {
                        tracing::info!(%path, "not removing: the provider has entries in it we did not know");
                        Ok(Outcome::Skipped)
                    }
                    Err(e) => Err(e),
                }
            }
            Record::Rename {
                from,
                to,
                node,
                replaced,
            } => {
                // Tried even when the node is not known on the provider (a file renamed while
                // its upload ran): nothing at `from` is simply nothing to move.
                let known = self.remote_version(*node);
                let dir = self.is_dir(*node);
                // Re-applied after a crash: move only the object this record knew, never one
                // created at `from` by a later record that was applied too.
                let (recovered, recreated) = {
                    let q = lock(&self.inner.queue);
                    (q.recovered(lsn), q.recreated_after(lsn, from))
                };
                if recovered && !dir {
                    match (&known, p.stat(from).await) {
                        (Some(v), Ok(e)) if &e.version == v => {}
                        // Not known (a file learned from a listing after the last checkpoint):
                        // what is at `from` is this file unless a later record made another.
                        (None, Ok(_)) if !recreated => {}
                        (_, Err(ProviderError::NotFound(_))) => {
                            return self.renamed_already(lsn, to, *node).await
                        }
                        (None, _) | (Some(_), Ok(_)) => return Ok(Outcome::Skipped),
                        (_, Err(e)) => return Err(e),
                    }
                }
                // The remote edited the file since the drive last saw it: the rename moves that
                // edit along (CONFLICTS.md), and the node must show it, not its older content.
                let edited = match (&known, dir || recovered) {
                    (Some(v), false) => match p.stat(from).await {
                        Ok(e) => e.version != *v,
                        Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_)) => false,
                        Err(e) => return Err(e),
                    },
                    _ => false,
                };
                let mut aside =
                    !dir && self.clear_rename_target(from, to, *node, *replaced).await?;
                let mut r = p.rename(from, to, true).await;
                if matches!(
                    r,
                    Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_))
                ) && self.parent_lost(to).await?
                {
                    // Not a missing source: the target's directory is gone (see `apply_record`).
                    return Err(ProviderError::NotADirectory(to.clone()));
                }
                if r.is_err() && self.clear_refused_target(lsn, to, dir, &r).await? {
                    aside = true;
                    r = p.rename(from, to, true).await;
                }
                match r {
                    // Shown as a conflict's outcome: the remote version stays (here, at the new
                    // name); queued local changes made on the older one conflict in turn.
                    Ok(e) if edited => Ok(Outcome::Conflict(e)),
                    Ok(e) => {
                        if aside {
                            self.relist_parent(to);
                        }
                        Ok(Outcome::Applied(Some(e)))
                    }
                    Err(ProviderError::NotFound(_)) if lock(&self.inner.queue).maybe_done(lsn) => {
                        self.renamed_already(lsn, to, *node).await
                    }
                    Err(ProviderError::NotFound(_)) => Ok(Outcome::Skipped),
                    Err(e) => Err(e),
                }
            }
            Record::SetAttr {
                path,
                node,
                perm,
                mtime,
            } => {
                if self.remote_version(*node).is_none() || !p.capabilities().attrs {
                    return Ok(Outcome::Skipped);
                }
                let attrs = ObjectAttrs {
                    mode: perm.map(u32::from),
                    mtime: *mtime,
                };
                match p.set_attrs(path, attrs).await {
                    Ok(e) => Ok(Outcome::Applied(Some(e))),
                    Err(ProviderError::NotFound(_)) | Err(ProviderError::NotSupported(_)) => {
                        Ok(Outcome::Skipped)
                    }
                    Err(e) => Err(e),
                }
            }
            Record::Commit {
                path,
                node,
                content,
                mtime,
                ..
            } => {
                // A later commit makes this one moot, unless it was found in the log at start:
                // then it may have reached the provider before the crash, and the records after
                // it (a rename away, say) must find it there. Re-applying it is idempotent.
                let (recovered, superseded) = {
                    let q = lock(&self.inner.queue);
                    (q.recovered(lsn), q.superseded(lsn, *node))
                };
                if superseded && !recovered {
                    return Ok(Outcome::Skipped);
                }
                // Recovered and superseded: the provider must end with it only if it got there
                // before the crash; if the remote changed meanwhile, the later record decides
                // (a conflict copy of a version the user already replaced would be litter).
                let moot = superseded;
                self.upload(path, *node, content, *mtime, moot).await
            }
            Record::Applied { .. } | Record::Learned { .. } => Ok(Outcome::Skipped),
        }
    }

    /// A rename that may have taken effect before (see `Queue::maybe_done`) finds nothing at
    /// its source: if what is at its target is the node as the drive knew it (a directory, or
    /// a file or symlink of the size it knew) and no later record touches the target, the
    /// earlier try did it: applied, with what the provider has there now (its version changed
    /// with the rename; keeping the old one made the next upload a false conflict).
    async fn renamed_already(
        &self,
        lsn: Lsn,
        to: &RemotePath,
        node: NodeId,
    ) -> Result<Outcome, ProviderError> {
        let (kind, size) = {
            let ns = lock(&self.inner.ns);
            match ns.get(node) {
                Some(n) => (n.kind, n.remote.as_ref().map(|r| r.size)),
                None => return Ok(Outcome::Skipped),
            }
        };
        {
            let q = lock(&self.inner.queue);
            if q.recovered(lsn) && q.touched_after(lsn, to) {
                return Ok(Outcome::Skipped);
            }
        }
        use crate::provider::EntryKind;
        match self.inner.provider.stat(to).await {
            Ok(e) => {
                let same = match (kind, e.kind) {
                    (FileKind::Dir, EntryKind::Dir) => true,
                    (FileKind::File, EntryKind::File) | (FileKind::Symlink, EntryKind::Symlink) => {
                        size == Some(e.size)
                    }
                    _ => false,
                };
                Ok(if same {
                    Outcome::Applied(Some(e))
                } else {
                    Outcome::Skipped
                })
            }
            Err(ProviderError::NotFound(_)) => Ok(Outcome::Skipped),
            Err(e) => Err(e),
        }
    }

    fn remote_version(&self, node: NodeId) -> Option<cache::Version> {
        lock(&self.inner.ns)
            .get(node)
            .and_then(|n| n.remote.as_ref().map(|r| r.version.clone()))
    }

    fn is_dir(&self, node: NodeId) -> bool {
        lock(&self.inner.ns)
            .get(node)
            .is_some_and(|n| n.kind == FileKind::Dir)
    }

    async fn upload(
        &self,
        path: &RemotePath,
        node: NodeId,
        content: &Content,
        mtime: SystemTime,
        moot: bool,
    ) -> Result<Outcome, ProviderError> {
        let (oid, perm, known) = {
            let ns = lock(&self.inner.ns);
            match ns.get(node) {
                Some(n) => (n.object_id(), n.perm, n.remote.clone()),
                None => return Ok(Outcome::Skipped),
            }
        };
        let pre = match &known {
            Some(r) => Precondition::IfMatch(r.version.clone()),
            None => Precondition::IfNotExists,
        };
        let attrs = ObjectAttrs {
            mode: Some(u32::from(perm)),
            mtime: Some(mtime),
        };
        let body = self.watched_body(path, &oid, content);
        let mut written = self
            .inner
            .provider
            .write(path, body, content.size, pre.clone(), attrs)
            .await;
        if matches!(
            written,
            Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_))
        ) && self.make_parents(path).await?
        {
            // The directory was removed (or replaced by a file) remotely while this file had
            // local changes: the local data is kept, in directories made again.
            let body = self.watched_body(path, &oid, content);
            written = self
                .inner
                .provider
                .write(path, body, content.size, pre, attrs)
                .await;
        }
        if let Ok(e) = &written {
            self.sent_for_sure(&oid, path, e.size);
        }
        match written {
            Ok(e) => {
                self.count_upload(content.size);
                Ok(Outcome::Applied(Some(e)))
            }
            // A directory the remote made where this file was is a remote change like any other
            // (a provider may answer it so rather than as a failed precondition).
            Err(
                ProviderError::PreconditionFailed { .. }
                | ProviderError::AlreadyExists(_)
                | ProviderError::IsADirectory(_),
            ) => {
                self.resolve_conflict(path, &oid, content, attrs, known, moot)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    fn count_upload(&self, bytes: u64) {
        self.inner.counters.uploads.fetch_add(1, Ordering::Relaxed);
        self.inner
            .counters
            .uploaded_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Makes the missing ancestors of `path` on the provider (they were removed there while
    /// something in them changed here). Returns whether any was missing.
    async fn make_parents(&self, path: &RemotePath) -> Result<bool, ProviderError> {
        let p = &self.inner.provider;
        let mut missing = Vec::new();
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d.is_root() {
                break;
            }
            match p.stat(&d).await {
                Ok(e) if e.kind == crate::provider::EntryKind::Dir => break,
                Ok(_) => {
                    // A file (or symlink) was put where this directory was: both are kept,
                    // the remote one beside it under a conflict name, so the directory with
                    // the local changes in it can be made again.
                    let aside = self.move_aside(&d).await?;
                    tracing::warn!(dir = %d, moved = %aside, "a remote file took the place of a directory with local changes: moved aside");
                    self.record_conflict(&d, Some(&aside), ConflictWinner::Local);
                    missing.push(d);
                    break;
                }
                Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_)) => {
                    dir = d.parent();
                    missing.push(d);
                }
                Err(e) => return Err(e),
            }
        }
        for d in missing.iter().rev() {
            match p.mkdir(d).await {
                Ok(_) | Err(ProviderError::AlreadyExists(_)) => {
                    tracing::warn!(dir = %d, "made again: removed or replaced on the provider while a file in it changed here");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(!missing.is_empty())
    }

    /// The directory of `path` is listed again on its next lookup (a conflict copy appeared).
    fn relist_parent(&self, path: &RemotePath) {
        let mut ns = lock(&self.inner.ns);
        if let Some(d) = path.parent().and_then(|p| ns.resolve(&p)) {
            if let Some(n) = ns.get_mut(d) {
                n.listed_at = None;
            }
        }
    }

    /// A rename the provider refused because of what is at `to`, which the drive did not know
    /// of (the provider keeps no such thing there from the drive): a file where a directory is
    /// renamed, a directory where a file is renamed, a directory with entries where an empty
    /// one was replaced here. It moves aside to a conflict name, like any remote version a
    /// local change meets; returns whether it did (then the rename is tried again).
    async fn clear_refused_target(
        &self,
        lsn: Lsn,
        to: &RemotePath,
        dir: bool,
        r: &Result<RemoteEntry, ProviderError>,
    ) -> Result<bool, ProviderError> {
        use crate::provider::EntryKind;
        let refusal = match r {
            Err(ProviderError::NotADirectory(_)) => Some(false),
            Err(ProviderError::IsADirectory(_)) => Some(false),
            Err(ProviderError::NotEmpty(_)) => Some(true),
            _ => None,
        };
        let Some(not_empty) = refusal else {
            return Ok(false);
        };
        let cur = match self.inner.provider.stat(to).await {
            Ok(e) => e,
            Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let clash = match (dir, cur.kind) {
            (true, EntryKind::File | EntryKind::Symlink) => true,
            (false, EntryKind::Dir) => true,
            // A directory with entries at the target may be this very one, moved there by an
            // earlier try whose answer was lost: only a first try sets it aside.
            (true, EntryKind::Dir) => not_empty && !lock(&self.inner.queue).maybe_done(lsn),
            _ => false,
        };
        if !clash {
            return Ok(false);
        }
        let aside = self.move_aside(to).await?;
        tracing::warn!(%to, conflict = %aside, "a rename met what the provider put at its target meanwhile: that was kept as a copy");
        self.record_conflict(to, Some(&aside), ConflictWinner::Local);
        Ok(true)
    }

    /// Before a file or symlink is renamed over `to` (the provider's rename replaces): what is
    /// there must be what the local rename replaced (`replaced`, at the version the drive last
    /// had of it) or nothing. Anything else another machine put there meanwhile, unseen here:
    /// it moves aside to a conflict name first, so that the rename loses no version. (The
    /// window between this look and the rename is the provider's; see CONFLICTS.md.)
    async fn clear_rename_target(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        node: NodeId,
        replaced: Option<NodeId>,
    ) -> Result<bool, ProviderError> {
        let p = &self.inner.provider;
        let cur = match p.stat(to).await {
            Ok(e) => e,
            Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if cur.kind == crate::provider::EntryKind::Dir {
            // The rename itself refuses: see `clear_refused_target`.
            return Ok(false);
        }
        let (expected, own) = {
            let ns = lock(&self.inner.ns);
            let expected = replaced
                .and_then(|t| ns.replaced.get(&t))
                .and_then(|r| r.remote.as_ref().map(|s| s.version.clone()));
            let own = ns
                .get(node)
                .and_then(|n| n.remote.as_ref().map(|s| s.version.clone()));
            (expected, own)
        };
        if expected.as_ref() == Some(&cur.version) || own.as_ref() == Some(&cur.version) {
            return Ok(false);
        }
        // Nothing left to move (an earlier try did it): what is at `to` may be this very file,
        // which the rename's own handling recognises; nothing to set aside.
        if matches!(p.stat(from).await, Err(ProviderError::NotFound(_))) {
            return Ok(false);
        }
        let aside = self.move_aside(to).await?;
        tracing::warn!(%to, conflict = %aside, "renamed over a file the provider changed meanwhile: the remote one was kept as a copy");
        self.record_conflict(to, Some(&aside), ConflictWinner::Local);
        Ok(true)
    }

    /// Renames what the provider has at `path` to a free conflict name beside it.
    async fn move_aside(&self, path: &RemotePath) -> Result<RemotePath, ProviderError> {
        let mut n = 1;
        loop {
            let aside = self.conflict_path(path, n)?;
            match self.inner.provider.rename(path, &aside, false).await {
                Ok(_) => return Ok(aside),
                Err(ProviderError::AlreadyExists(_)) if n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The provider has something else at `path` than the version our commit was based on.
    /// If it is our own bytes (an upload whose marker was lost in a crash), that is success;
    /// otherwise keep both: ours goes beside it under a conflict name.
    async fn resolve_conflict(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        content: &Content,
        attrs: ObjectAttrs,
        known: Option<RemoteState>,
        moot: bool,
    ) -> Result<Outcome, ProviderError> {
        let p = &self.inner.provider;
        let current = match p.stat(path).await {
            Ok(e) => Some(e),
            Err(ProviderError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(cur) = &current {
            if cur.kind == crate::provider::EntryKind::File
                && cur.size == content.size
                && self
                    .same_as_remote(path, &cur.version, oid, content)
                    .await?
            {
                return Ok(Outcome::Applied(Some(cur.clone())));
            }
        }
        if let Some(cur) = &current {
            if cur.kind == crate::provider::EntryKind::File
                && self.ours_after_all(path, oid, cur).await?
            {
                // An earlier upload of this file whose answer was lost: what is there is
                // ours, the base of this one.
                tracing::info!(%path, "the provider holds an earlier upload whose answer was lost: not a conflict");
                let body = self.watched_body(path, oid, content);
                let e = p
                    .write(
                        path,
                        body,
                        content.size,
                        Precondition::IfMatch(cur.version.clone()),
                        attrs,
                    )
                    .await?;
                self.sent_for_sure(oid, path, e.size);
                return Ok(Outcome::Applied(Some(e)));
            }
        }
        let Some(cur) = current else {
            // Deleted remotely: the local data is kept, at its name.
            let body = self.body(path.clone(), oid.clone(), content.clone());
            let e = p
                .write(path, body, content.size, Precondition::IfNotExists, attrs)
                .await?;
            return Ok(Outcome::Applied(Some(e)));
        };
        if let Some(k) = &known {
            if cur.kind == crate::provider::EntryKind::File && cur.version == k.version {
                // The provider still has the version the commit was based on: the refusal
                // was not a remote change (a proxy, a retried request, a server's hiccup).
                // Nobody else wrote, so there is nothing to keep beside it: try again.
                return Err(ProviderError::Other {
                    message: format!(
                        "{path}: the conditional upload was refused although the base version is unchanged"
                    ),
                    retryable: true,
                });
            }
        }
        if moot {
            // A later record of the node carries what the user has now; it conflicts in turn.
            tracing::debug!(%path, "a replayed commit already replaced here finds a remote change: left to the later one");
            return Ok(Outcome::Skipped);
        }
        if let (true, Some(base)) = (self.inner.cfg.auto_merge, &known) {
            if cur.kind == crate::provider::EntryKind::File {
                if let Some(e) = self
                    .auto_merge(path, oid, content, attrs, base, &cur)
                    .await?
                {
                    return Ok(Outcome::Conflict(e));
                }
            }
        }
        let cfg = &self.inner.cfg;
        // Only a file at the name can lose to ours; a directory or symlink there always stays.
        let local_wins = cur.kind == crate::provider::EntryKind::File
            && match cfg.conflict {
                ConflictPolicy::KeepBoth | ConflictPolicy::Remote => false,
                ConflictPolicy::Local => true,
                ConflictPolicy::Larger => content.size > cur.size,
                ConflictPolicy::Smaller => content.size < cur.size,
                ConflictPolicy::Newer => attrs.mtime.is_some_and(|t| t > cur.mtime),
                ConflictPolicy::Older => attrs.mtime.is_some_and(|t| t < cur.mtime),
            };
        let keep_loser =
            cfg.conflict == ConflictPolicy::KeepBoth || cfg.conflict_loser == ConflictLoser::Keep;
        if local_wins {
            if let Some(e) = self
                .local_wins(path, oid, content, attrs, &cur, keep_loser)
                .await?
            {
                return Ok(Outcome::Applied(Some(e)));
            }
            // The name changed again under us: fall back to keeping both, remote at the name.
        } else if !keep_loser {
            tracing::warn!(%path, policy = cfg.conflict.name(), "changed on both sides: the local version lost and was dropped");
            self.record_conflict(path, None, ConflictWinner::Remote);
            return Ok(Outcome::Conflict(cur));
        }
        let cpath = self.write_conflict_copy(path, oid, content, attrs).await?;
        tracing::warn!(%path, conflict = %cpath, "changed on both sides: kept both");
        self.record_conflict(path, Some(&cpath), ConflictWinner::Remote);
        // What the node shows now is for `finish` to decide (`replay_applied`).
        Ok(Outcome::Conflict(cur))
    }

    /// `--auto-merge`: both sides changed a text file. With the base version still in the
    /// cache, a line-based three-way merge; if the changes do not overlap, the merged text is
    /// written over the remote version (only if it is still `cur`) and is what the node shows
    /// now. `None` (the policy decides) when the base is not cached, a version is not text or
    /// too large, or the changes overlap.
    async fn auto_merge(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        content: &Content,
        attrs: ObjectAttrs,
        base: &RemoteState,
        cur: &crate::provider::RemoteEntry,
    ) -> Result<Option<crate::provider::RemoteEntry>, ProviderError> {
        let max = crate::merge::MAX_MERGE_BYTES as u64;
        if content.size > max || base.size > max || cur.size > max {
            tracing::info!(%path, "auto-merge: too large; the conflict policy decides");
            return Ok(None);
        }
        let cs = self.inner.cfg.chunk_size;
        let mut base_bytes = Vec::with_capacity(base.size as usize);
        for i in 0..base.size.div_ceil(cs) {
            let key = remote_key(oid, &base.version, i);
            match self.inner.cache.get(&key) {
                Ok(Some(b)) => base_bytes.extend_from_slice(&b),
                Ok(None) | Err(_) => {
                    tracing::info!(%path, "auto-merge: the base version is no longer cached; the conflict policy decides");
                    return Ok(None);
                }
            }
        }
        base_bytes.truncate(base.size as usize);
        let theirs = crate::provider::collect(
            self.inner
                .provider
                .read(path, &cur.version, 0, cur.size)
                .await?,
        )
        .await?;
        let mut ours = Vec::with_capacity(content.size as usize);
        for i in 0..content.size.div_ceil(cs) {
            ours.extend_from_slice(&self.upload_chunk(path, oid, content, i).await?);
        }
        let merged = match crate::merge::merge3(&base_bytes, &ours, &theirs) {
            Ok(m) => m,
            Err(why) => {
                tracing::info!(%path, ?why, "auto-merge: not merged; the conflict policy decides");
                return Ok(None);
            }
        };
        let len = merged.len() as u64;
        let body = crate::provider::once(Bytes::from(merged));
        match self
            .inner
            .provider
            .write(
                path,
                body,
                len,
                Precondition::IfMatch(cur.version.clone()),
                attrs,
            )
            .await
        {
            Ok(e) => {
                tracing::info!(%path, "changed on both sides: merged");
                self.count_upload(len);
                Ok(Some(e))
            }
            // Changed once more meanwhile: the next attempt compares again.
            Err(ProviderError::PreconditionFailed { .. }) => Err(ProviderError::Other {
                message: format!("{path}: changed again on the provider while merging"),
                retryable: true,
            }),
            Err(e) => Err(e),
        }
    }

    /// A free conflict name beside `path`, for `attempt` (1, 2, ...).
    fn conflict_path(&self, path: &RemotePath, attempt: u32) -> Result<RemotePath, ProviderError> {
        let name = conflict_name(
            path.name(),
            &self.inner.hostname,
            SystemTime::now(),
            attempt,
        );
        path.parent()
            .and_then(|d| d.join(&name))
            .ok_or(ProviderError::InvalidName {
                name,
                reason: "conflict name",
            })
    }

    /// Writes our content beside `path` under a new conflict name; returns that name.
    async fn write_conflict_copy(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        content: &Content,
        attrs: ObjectAttrs,
    ) -> Result<RemotePath, ProviderError> {
        let mut n = 1;
        loop {
            let cpath = self.conflict_path(path, n)?;
            let body = self.body(path.clone(), oid.clone(), content.clone());
            match self
                .inner
                .provider
                .write(&cpath, body, content.size, Precondition::IfNotExists, attrs)
                .await
            {
                Ok(_) => return Ok(cpath),
                Err(ProviderError::AlreadyExists(_) | ProviderError::PreconditionFailed { .. })
                    if n < 100 =>
                {
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The policy picked our version: it goes to `path`. The remote version `cur` is first
    /// moved aside to a conflict name (`keep_loser`) or replaced only if it is still `cur`.
    /// `None` when the name changed again meanwhile (nothing was overwritten).
    async fn local_wins(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        content: &Content,
        attrs: ObjectAttrs,
        cur: &RemoteEntry,
        keep_loser: bool,
    ) -> Result<Option<RemoteEntry>, ProviderError> {
        let p = &self.inner.provider;
        let mut moved = None;
        let pre = if keep_loser {
            let mut n = 1;
            loop {
                let cpath = self.conflict_path(path, n)?;
                match p.rename(path, &cpath, false).await {
                    Ok(_) => {
                        moved = Some(cpath);
                        break;
                    }
                    Err(ProviderError::AlreadyExists(_)) if n < 100 => n += 1,
                    Err(ProviderError::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Precondition::IfNotExists
        } else {
            Precondition::IfMatch(cur.version.clone())
        };
        let body = self.body(path.clone(), oid.clone(), content.clone());
        match p.write(path, body, content.size, pre, attrs).await {
            Ok(e) => {
                self.count_upload(content.size);
                match &moved {
                    Some(c) => {
                        tracing::warn!(%path, conflict = %c, "changed on both sides: the local version won, the remote one was kept as a copy")
                    }
                    None => {
                        tracing::warn!(%path, "changed on both sides: the local version won, the remote one was replaced as the policy asked")
                    }
                }
                self.record_conflict(path, moved.as_ref(), ConflictWinner::Local);
                Ok(Some(e))
            }
            Err(ProviderError::AlreadyExists(_) | ProviderError::PreconditionFailed { .. }) => {
                if let Some(c) = moved {
                    // Somebody wrote the name again after the move: both remote versions stay.
                    self.record_conflict(path, Some(&c), ConflictWinner::Remote);
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn record_conflict(
        &self,
        path: &RemotePath,
        copy: Option<&RemotePath>,
        winner: ConflictWinner,
    ) {
        let message = match (copy, winner) {
            (Some(c), ConflictWinner::Remote) => format!("conflict: {path} kept, local version saved as {c}"),
            (Some(c), ConflictWinner::Local) => format!("conflict: local version of {path} won, remote version saved as {c}"),
            (None, ConflictWinner::Remote) => format!("conflict: {path} kept, local version dropped (--conflict-loser delete)"),
            (None, ConflictWinner::Local) => format!("conflict: local version of {path} won, remote version replaced (--conflict-loser delete)"),
        };
        self.set_error(message);
        self.record_conflict_entry(ConflictRecord {
            path: path.to_string(),
            copy: copy.map(|c| c.to_string()),
            winner,
            at: SystemTime::now(),
        });
    }

    /// Whether the provider's file at `path`/`version` has exactly the bytes of `content`.
    async fn same_as_remote(
        &self,
        path: &RemotePath,
        version: &cache::Version,
        oid: &cache::ObjectId,
        content: &Content,
    ) -> Result<bool, ProviderError> {
        let cs = self.inner.cfg.chunk_size;
        let chunks = content.size.div_ceil(cs);
        for i in 0..chunks {
            let len = cs.min(content.size - i * cs);
            let theirs = crate::provider::collect(
                self.inner.provider.read(path, version, i * cs, len).await?,
            )
            .await?;
            let ours = self.upload_chunk(path, oid, content, i).await?;
            if theirs[..] != ours[..] {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Self::body`], and once every byte of it went out, a [`MaybeSent`] record: until the
    /// provider's answer says so ([`Self::sent_for_sure`]), it may or may not hold it.
    fn watched_body(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        content: &Content,
    ) -> ByteStream {
        let inner = self.body(path.clone(), oid.clone(), content.clone());
        let vfs = self.clone();
        let (path, oid, size) = (path.clone(), oid.clone(), content.size);
        let digest = std::sync::Arc::new(std::sync::Mutex::new(Some(
            aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        )));
        let d2 = digest.clone();
        let tail = futures::stream::once(async move {
            let ctx = lock(&d2).take();
            if let Some(ctx) = ctx {
                let mut sha = [0u8; 32];
                sha.copy_from_slice(ctx.finish().as_ref());
                lock(&vfs.inner.maybe_sent).push(MaybeSent {
                    path,
                    oid,
                    size,
                    sha256: sha,
                });
            }
            None
        })
        .filter_map(|x: Option<Result<Bytes, ProviderError>>| async move { x });
        Box::pin(
            inner
                .map(move |chunk| {
                    if let Ok(b) = &chunk {
                        if let Some(ctx) = lock(&digest).as_mut() {
                            ctx.update(b);
                        }
                    }
                    chunk
                })
                .chain(tail),
        )
    }

    /// The provider answered the upload of `oid` to `path`: nothing of it is in doubt.
    fn sent_for_sure(&self, oid: &cache::ObjectId, path: &RemotePath, _size: u64) {
        lock(&self.inner.maybe_sent).retain(|m| !(&m.oid == oid && &m.path == path));
    }

    /// Whether the file `cur` at `path` is an earlier upload of `oid` whose answer was lost
    /// (same size, same SHA-256: the provider's bytes are read and hashed).
    async fn ours_after_all(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        cur: &crate::provider::RemoteEntry,
    ) -> Result<bool, ProviderError> {
        let candidates: Vec<[u8; 32]> = lock(&self.inner.maybe_sent)
            .iter()
            .filter(|m| &m.oid == oid && &m.path == path && m.size == cur.size)
            .map(|m| m.sha256)
            .collect();
        if candidates.is_empty() {
            return Ok(false);
        }
        let sha = self.remote_sha256(path, cur).await?;
        Ok(candidates.contains(&sha))
    }

    async fn remote_sha256(
        &self,
        path: &RemotePath,
        cur: &crate::provider::RemoteEntry,
    ) -> Result<[u8; 32], ProviderError> {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut s = self
            .inner
            .provider
            .read(path, &cur.version, 0, cur.size)
            .await?;
        while let Some(b) = s.next().await {
            ctx.update(&b?);
        }
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ctx.finish().as_ref());
        Ok(sha)
    }

    /// Once the queue is empty: an upload in doubt that did land after all, at a name where the
    /// drive has nothing any more (the file was renamed or removed here meanwhile), is removed
    /// from the provider (conditional on its version), so that nothing shows up twice. Records
    /// of names the drive uses again are dropped (their own uploads settled them).
    async fn sweep_maybe_sent(&self) {
        let doubts = std::mem::take(&mut *lock(&self.inner.maybe_sent));
        for m in doubts {
            let used = lock(&self.inner.ns).resolve(&m.path).is_some();
            if used {
                continue;
            }
            let cur = match self.inner.provider.stat(&m.path).await {
                Ok(e) if e.kind == crate::provider::EntryKind::File && e.size == m.size => e,
                Ok(_) | Err(ProviderError::NotFound(_) | ProviderError::NotADirectory(_)) => {
                    continue
                }
                Err(e) => {
                    tracing::debug!(path = %m.path, error = %e, "an upload in doubt stays in doubt");
                    lock(&self.inner.maybe_sent).push(m);
                    continue;
                }
            };
            match self.remote_sha256(&m.path, &cur).await {
                Ok(sha) if sha == m.sha256 => {
                    tracing::info!(path = %m.path, "an upload whose answer was lost landed at a name the drive no longer uses: removed");
                    match self
                        .inner
                        .provider
                        .delete(&m.path, Precondition::IfMatch(cur.version.clone()))
                        .await
                    {
                        Ok(()) | Err(ProviderError::NotFound(_)) => {}
                        // Tried again by the next sweep: the record is all that knows of it.
                        Err(e) if e.is_retryable() => {
                            tracing::debug!(path = %m.path, error = %e, "a stray upload stays until the provider answers");
                            lock(&self.inner.maybe_sent).push(m);
                        }
                        Err(e) => {
                            tracing::warn!(path = %m.path, error = %e, "could not remove a stray upload");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(path = %m.path, error = %e, "an upload in doubt stays in doubt");
                    lock(&self.inner.maybe_sent).push(m);
                }
            }
        }
    }

    /// The bytes of `content` as a stream of chunks, for an upload.
    fn body(&self, path: RemotePath, oid: cache::ObjectId, content: Content) -> ByteStream {
        let cs = self.inner.cfg.chunk_size;
        let chunks = content.size.div_ceil(cs);
        let vfs = self.clone();
        Box::pin(futures::stream::iter(0..chunks).then(move |i| {
            let (vfs, path, oid, content) =
                (vfs.clone(), path.clone(), oid.clone(), content.clone());
            async move { vfs.upload_chunk(&path, &oid, &content, i).await }
        }))
    }

    /// [`Vfs::chunk_for_upload`] as the provider side sees it: a local failure (the cache)
    /// is a retryable error of the transfer.
    async fn upload_chunk(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        content: &Content,
        i: u64,
    ) -> Result<Bytes, ProviderError> {
        self.chunk_for_upload(path, oid, content, i)
            .await
            .map_err(|e| ProviderError::Other {
                message: e.to_string(),
                retryable: true,
            })
    }

    /// Chunk `i` of `content`, exactly as long as it is in the file.
    async fn chunk_for_upload(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        content: &Content,
        i: u64,
    ) -> Result<Bytes, FsError> {
        let cs = self.inner.cfg.chunk_size;
        let len = cs.min(content.size.saturating_sub(i * cs)) as usize;
        let data = match content.src(i, cs) {
            ChunkSrc::Hole => Bytes::new(),
            ChunkSrc::Local(g) => match self
                .pending_chunk(&local_key(oid, g, i))
                .map(|b| Ok(Some(b)))
                .unwrap_or_else(|| self.inner.cache.get(&local_key(oid, g, i)))
            {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return Err(FsError::Io(format!(
                        "local data of chunk {i} of {path} is missing from the cache"
                    )))
                }
                Err(e) => return Err(FsError::io(e)),
            },
            ChunkSrc::Base { alias } => {
                let base = content.base.as_ref().ok_or(FsError::BadHandle)?;
                let valid = base.len.saturating_sub(i * cs).min(cs) as usize;
                let mut b = self.base_chunk(path, oid, &base.version, i, alias).await?;
                if b.len() > valid {
                    b.truncate(valid);
                }
                b
            }
        };
        if data.len() == len {
            return Ok(data);
        }
        let mut v = data.to_vec();
        v.resize(len, 0);
        Ok(Bytes::from(v))
    }

    /// A base chunk from its alias, the cache, or the provider.
    pub(crate) async fn base_chunk(
        &self,
        path: &RemotePath,
        oid: &cache::ObjectId,
        version: &cache::Version,
        i: u64,
        alias: Option<u64>,
    ) -> Result<Bytes, FsError> {
        if let Some(g) = alias {
            if let Ok(Some(b)) = self.inner.cache.get(&local_key(oid, g, i)) {
                return Ok(b);
            }
        }
        let key = remote_key(oid, version, i);
        self.fetch(path.clone(), key, version.clone(), i).await
    }
}

/// `NAME.conflict-<host>-<YYYYMMDD-HHMMSS>[-N].EXT` (the extension kept last, so programs still
/// know the file type).
pub fn conflict_name(name: &str, host: &str, at: SystemTime, n: u32) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d, h, mi, s) = civil(secs);
    let stamp = format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}");
    let suffix = if n > 1 {
        format!("-{n}")
    } else {
        String::new()
    };
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!(
            "{}.conflict-{host}-{stamp}{suffix}{}",
            &name[..dot],
            &name[dot..]
        ),
        _ => format!("{name}.conflict-{host}-{stamp}{suffix}"),
    }
}

/// UTC calendar fields of a Unix time (days-from-civil, Howard Hinnant's algorithm).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkdir(path: &str) -> Record {
        Record::Mkdir {
            path: RemotePath::parse(path).unwrap(),
            node: NodeId(2),
            perm: 0o755,
            mtime: UNIX_EPOCH,
        }
    }

    #[test]
    fn records_on_overlapping_paths_wait_for_earlier_ones() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.push(1, mkdir("a"), now);
        q.push(2, mkdir("a/b"), now);
        q.push(3, mkdir("c"), now);
        q.push(4, mkdir("ab"), now);
        q.push(5, mkdir("c/d/e"), now);
        let (run, _) = q.runnable(now, 10);
        let lsns: Vec<Lsn> = run.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            lsns,
            vec![1, 3, 4],
            "a/b waits for a, c/d/e for c; ab is independent"
        );
        q.complete(1);
        let (run, _) = q.runnable(now, 10);
        assert_eq!(run.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![2]);
        let later = now + Duration::from_secs(10);
        q.push(6, mkdir("x"), later);
        let (run, wake) = q.runnable(now, 10);
        assert!(run.is_empty());
        assert_eq!(wake, Some(later));
    }

    #[test]
    fn waiting_and_backing_off_entries_wake_the_uploader_and_flush_skips_only_the_delay() {
        let mut q = Queue::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        q.push(1, mkdir("a"), later);
        q.push(2, mkdir("b"), now);
        let (run, wake) = q.runnable(now, 10);
        assert_eq!(run.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![2]);
        assert_eq!(wake, Some(later));
        assert_eq!(q.in_flight(), 1);
        q.defer(2);
        assert_eq!(q.in_flight(), 0);
        q.flush = true;
        let (run, wake) = q.runnable(now, 10);
        assert_eq!(
            run.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![1],
            "a flush starts delayed records at once, not failing ones"
        );
        assert!(wake.is_some_and(|w| w > now), "the retry is still ahead");
        q.complete(1);
        q.complete(2);
        assert_eq!((q.len(), q.in_flight(), q.applied_below), (0, 0, 3));
        assert!(q.by_path.is_empty() && q.by_ancestor.is_empty() && q.by_parent.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]
        /// The indexed scheduler starts exactly what a full scan of the queue would.
        #[test]
        fn scheduling_equals_a_full_scan(
            ops in proptest::collection::vec((0u8..4, 0usize..12, 0u64..3), 1..80)
        ) {
            const PATHS: [&str; 12] =
                ["", "a", "a/b", "a/b/c", "a/c", "ab", "b", "b/a", "c", "a/b/d", "b/a/x", "ab/c"];
            let base = Instant::now();
            let mut q = Queue::default();
            let mut next: Lsn = 1;
            let mut now = base;
            for (op, i, t) in ops {
                match op {
                    0 | 1 => {
                        let rec = if i % 5 == 4 {
                            Record::Rename {
                                from: RemotePath::parse(PATHS[i]).unwrap(),
                                to: RemotePath::parse(PATHS[(i + 3) % 12]).unwrap(),
                                node: NodeId(2),
                                replaced: None,
                            }
                        } else {
                            mkdir(PATHS[i])
                        };
                        q.push(next, rec, base + Duration::from_secs(t));
                        next += 1;
                    }
                    2 => {
                        // Time only moves forward.
                        now = now.max(base + Duration::from_secs(t));
                        // The reference: every earlier unfinished record blocks what overlaps.
                        let mut expect = Vec::new();
                        let mut earlier: Vec<String> = Vec::new();
                        for (lsn, e) in &q.entries {
                            let ready_at = match e.retry_at {
                                Some(r) => r,
                                None => e.ready,
                            };
                            let paths: Vec<&str> =
                                e.rec.paths().iter().map(|p| p.as_str()).collect();
                            let free = !paths.iter().any(|p| {
                                earlier.iter().any(|o| {
                                    o == p
                                        || o.is_empty()
                                        || p.is_empty()
                                        || o.starts_with(&format!("{p}/"))
                                        || p.starts_with(&format!("{o}/"))
                                })
                            });
                            if !e.in_flight && free && ready_at <= now && expect.len() < 3 {
                                expect.push(*lsn);
                            }
                            earlier.extend(paths.iter().map(|p| p.to_string()));
                        }
                        let (run, _) = q.runnable(now, 3);
                        let got: Vec<Lsn> = run.iter().map(|(l, _)| *l).collect();
                        proptest::prop_assert_eq!(got, expect);
                    }
                    _ => {
                        let flying: Vec<Lsn> = q
                            .entries
                            .iter()
                            .filter(|(_, e)| e.in_flight)
                            .map(|(l, _)| *l)
                            .collect();
                        if let Some(l) = flying.get(i % flying.len().max(1)) {
                            if t == 0 {
                                q.defer(*l);
                            } else {
                                q.complete(*l);
                            }
                        }
                    }
                }
                proptest::prop_assert_eq!(
                    q.in_flight(),
                    q.entries.values().filter(|e| e.in_flight && !e.slot_free).count()
                );
            }
        }
    }

    #[test]
    fn conflict_names_keep_the_extension() {
        let t = UNIX_EPOCH + Duration::from_secs(1_763_769_600 + 3661); // 2025-11-22 01:01:01
        assert_eq!(
            conflict_name("report.docx", "laptop", t, 1),
            "report.conflict-laptop-20251122-010101.docx"
        );
        assert_eq!(
            conflict_name("Makefile", "h", t, 2),
            "Makefile.conflict-h-20251122-010101-2"
        );
        assert_eq!(
            conflict_name(".bashrc", "h", t, 1),
            ".bashrc.conflict-h-20251122-010101"
        );
    }
}

/// An upload whose body went out in full but whose answer never came: the provider may hold
/// it at `path`. Kept in memory (a crash forgets it: the next upload then sees a conflict and
/// keeps both versions, losing nothing).
#[derive(Clone, Debug)]
pub struct MaybeSent {
    pub path: RemotePath,
    pub oid: cache::ObjectId,
    pub size: u64,
    pub sha256: [u8; 32],
}
