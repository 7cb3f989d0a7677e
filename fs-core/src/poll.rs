//! Seeing remote changes: every `poll_interval` the directories the drive has listed are
//! listed again, and the listing merge updates the namespace (new, changed and removed entries)
//! and invalidates the kernel's entries, attributes and cached pages of what changed. A file's
//! cached chunks are keyed by its remote version, so a changed file's old chunks are never
//! served for the new version; queued local changes are never undone by a listing (see
//! `Namespace::merge_listing`).
//!
//! Directories never listed (never looked into) are not polled: their first use lists them.
//! Offline, a listing fails and the known one stays (nothing is treated as deleted).

use std::time::Duration;

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
