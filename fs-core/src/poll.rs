//! Seeing remote changes: every `poll_interval` the directories the drive has listed are
//! listed again, and the listing merge updates the namespace (new, changed and removed entries)
//! and invalidates the kernel's entries, attributes and cached pages of what changed. A file's
//! cached chunks are keyed by its remote version, so a changed file's old chunks are never
//! served for the new version; queued local changes are never undone by a listing (see
//! `Namespace::merge_listing`).
//!
//! Directories never listed (never looked into) are not polled: their first use lists them.
//! Offline, a listing fails and the known one stays (nothing is treated as deleted).
//!
//! Between polls, close-to-open consistency: opening a clean file whose version the provider
//! last told longer than `attr_timeout` ago asks the provider again (one `stat`, bounded by
//! `offline_timeout`), so a program that opens a file after another machine changed it reads
//! the new version. A file with local changes is not asked about: its upload is conditional
//! and conflicts, if it must, by the policy.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{FsError, FsResult};
use crate::namespace::MergeOutcome;
use crate::provider::ProviderError;
use crate::types::{FileKind, NodeId};
use crate::vfs::{lock, Vfs};

impl Vfs {
    /// Starts the poller (a no-op task when `poll_interval` is zero). It stops once the VFS is
    /// closed.
    pub fn spawn_poller(&self) -> tokio::task::JoinHandle<()> {
        let every = self.inner.cfg.poll_interval;
        let vfs = self.clone();
        self.spawn_background(async move {
            if every.is_zero() {
                return;
            }
            loop {
                tokio::time::sleep(every).await;
                if vfs.inner.shutdown.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                vfs.poll_once().await;
            }
        })
    }

    /// Lists every directory known from a listing again, parents before children; returns
    /// for how many no error came back (offline, a known listing stands in without error).
    pub async fn poll_once(&self) -> usize {
        let dirs = self.listed_dirs();
        let span = tracing::debug_span!("poll", dirs = dirs.len());
        let _e = span.enter();
        let mut ok = 0;
        for dir in dirs {
            // Each listing has the provider deadline; an unreachable provider keeps what is
            // known and the next round tries again.
            match tokio::time::timeout(
                self.inner.cfg.provider_timeout + Duration::from_secs(1),
                self.list_now(dir),
            )
            .await
            {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => tracing::debug!(error = %e, "poll: listing failed"),
                Err(_) => tracing::debug!("poll: listing timed out"),
            }
        }
        ok
    }

    /// Close-to-open: a clean file last confirmed longer than `attr_timeout` ago is asked
    /// about again before it is opened. A new version replaces what the node shows (its old
    /// chunks are keyed by the old version and never served for it); a file gone from the
    /// provider makes its directory be listed again (which removes it, unless it has local
    /// changes) and the open fail with NotFound. Offline, or when the provider does not answer
    /// within `offline_timeout`, the known version is opened.
    pub(crate) async fn revalidate_on_open(&self, ino: NodeId) -> FsResult<()> {
        let ttl = self.inner.cfg.attr_timeout;
        let (parent, name) = {
            let ns = lock(&self.inner.ns);
            let Some(n) = ns.get(ino) else {
                return Ok(());
            };
            let clean = n.kind == FileKind::File
                && n.remote.is_some()
                && n.pending == 0
                && !n.dirty
                && !n.orphan
                && !n.content.is_modified();
            if !clean || n.checked_at.is_some_and(|t| t.elapsed() < ttl) {
                return Ok(());
            }
            (n.parent, n.name.clone())
        };
        let Some(path) = self.remote_location(ino) else {
            return Ok(());
        };
        let span = tracing::debug_span!("revalidate", ino = ino.0);
        let _e = span.enter();
        let epoch = self.inner.applied_epoch.load(Ordering::SeqCst);
        let deadline = self
            .inner
            .cfg
            .offline_timeout
            .min(self.inner.cfg.provider_timeout);
        let answer = tokio::time::timeout(deadline, self.inner.provider.stat(&path)).await;
        match answer {
            Ok(Ok(mut e)) => {
                self.note_reachable(true);
                e.name.clone_from(&name);
                let outcome = {
                    let mut ns = lock(&self.inner.ns);
                    // An upload applied meanwhile may postdate the answer; a rename or a local
                    // write meanwhile makes it someone else's business.
                    let raced = self.inner.applied_epoch.load(Ordering::SeqCst) != epoch;
                    if raced || ns.child(parent, &name) != Some(ino) {
                        return Ok(());
                    }
                    let mut out = MergeOutcome::default();
                    ns.merge_entry(parent, &e, &mut out);
                    if let Some(n) = ns.get_mut(ino) {
                        n.checked_at = Some(Instant::now());
                    }
                    self.journal_learned(&out.learned);
                    out
                };
                self.invalidate_merged(outcome);
                Ok(())
            }
            Ok(Err(ProviderError::NotFound(_))) => {
                self.note_reachable(true);
                if let Err(e) = self.list_now(parent).await {
                    tracing::debug!(error = %e, "listing after a vanished file failed");
                }
                let ns = lock(&self.inner.ns);
                match ns.child(parent, &name) {
                    Some(id) if id == ino => Ok(()),
                    _ => Err(FsError::NotFound),
                }
            }
            Ok(Err(e)) if e.is_unreachable() => {
                self.note_reachable(false);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "revalidating on open failed; opening the known version");
                Ok(())
            }
            Err(_) => {
                self.note_reachable(false);
                Ok(())
            }
        }
    }

    /// Directories whose children are known from the provider, by depth (root first).
    fn listed_dirs(&self) -> Vec<NodeId> {
        let ns = lock(&self.inner.ns);
        let mut dirs: Vec<(usize, NodeId)> = ns
            .nodes
            .iter()
            .filter(|(id, n)| {
                n.kind == FileKind::Dir
                    && n.children.is_some()
                    && (n.remote.is_some() || **id == NodeId::ROOT)
            })
            .filter_map(|(id, _)| {
                let depth = ns.path_of(*id)?.as_str().matches('/').count();
                Some((depth, *id))
            })
            .collect();
        dirs.sort();
        dirs.into_iter().map(|(_, id)| id).collect()
    }
}
