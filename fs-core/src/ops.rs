//! Namespace operations of the VFS: lookup, getattr, setattr, readdir, open/create/release,
//! mkdir, rmdir, unlink, rename, symlink, readlink, statfs. Each validates against the namespace
//! (refreshing a directory from the provider when its listing is older than `dir_cache_time`),
//! journals the change durably, and returns; the uploader applies it later.

use std::time::{Instant, SystemTime};

use crate::error::{FsError, FsResult};
use crate::journal::Record;
use crate::provider::{valid_component, ProviderError};
use crate::types::{
    Attr, DirEntry, FileKind, FsStats, NodeId, OpenFlags, Opened, RenameFlags, SetAttr, TimeSet,
};
use crate::vfs::{lock, new_node, Handle, Vfs};

/// Times a directory is listed again when uploads change the provider during the listing.
const LIST_ATTEMPTS: usize = 3;

fn check_name(name: &str, max: usize) -> FsResult<()> {
    if name.len() > max {
        return Err(FsError::NameTooLong);
    }
    if !valid_component(name) {
        return Err(FsError::InvalidName);
    }
    Ok(())
}

impl Vfs {
    fn writable(&self) -> FsResult<()> {
        if self.inner.cfg.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    pub(crate) fn handle(&self, fh: u64) -> FsResult<Handle> {
        lock(&self.inner.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Makes sure `dir`'s children are known and fresh enough, listing it from the provider if
    /// not. Offline, a known listing is used as it is; an unknown one is an error.
    pub(crate) async fn ensure_listed(&self, dir: NodeId) -> FsResult<()> {
        self.ensure_listed_for(dir, false).await
    }

    /// [`Vfs::ensure_listed`] before a change in `dir`: a listing known only from the last
    /// checkpoint is refreshed first (a create must not miss a file that appeared meanwhile).
    pub(crate) async fn ensure_listed_to_change(&self, dir: NodeId) -> FsResult<()> {
        self.ensure_listed_for(dir, true).await
    }

    async fn ensure_listed_for(&self, dir: NodeId, to_change: bool) -> FsResult<()> {
        let ttl = self.inner.cfg.dir_cache_time;
        {
            let ns = lock(&self.inner.ns);
            let n = ns.get(dir).ok_or(FsError::NotFound)?;
            if n.kind != FileKind::Dir {
                return Err(FsError::NotADirectory);
            }
            let fresh =
                n.listed_at.is_some_and(|t| t.elapsed() < ttl) && !ns.partial.contains(&dir);
            // A directory made here and not uploaded yet has nothing on the provider to list.
            if n.children.is_some() && (fresh || (n.remote.is_none() && !ns.partial.contains(&dir)))
            {
                return Ok(());
            }
            // Known from the last checkpoint: answer from it at once and refresh behind.
            if n.children.is_some()
                && n.listed_at.is_none()
                && !to_change
                && !ns.partial.contains(&dir)
            {
                drop(ns);
                self.refresh_in_background(dir);
                return Ok(());
            }
        }
        self.list_now(dir).await
    }

    fn refresh_in_background(&self, dir: NodeId) {
        {
            let mut ns = lock(&self.inner.ns);
            match ns.get_mut(dir) {
                // Marks it listed now so that only one refresh starts.
                Some(n) => n.listed_at = Some(Instant::now()),
                None => return,
            }
        }
        let vfs = self.clone();
        tokio::spawn(async move {
            if let Err(e) = vfs.list_now(dir).await {
                tracing::debug!(error = %e, "background refresh of a directory failed");
                if let Some(n) = lock(&vfs.inner.ns).get_mut(dir) {
                    n.listed_at = None;
                }
            }
        });
    }

    /// Lists `dir` from the provider and merges the result.
    pub(crate) async fn list_now(&self, dir: NodeId) -> FsResult<()> {
        // A listing taken while the uploader changes the provider may predate that change; it
        // is merged only if no record was applied meanwhile (else listed again).
        for attempt in 1..=LIST_ATTEMPTS {
            let epoch = self
                .inner
                .applied_epoch
                .load(std::sync::atomic::Ordering::SeqCst);
            let Some(remote_dir) = self.remote_location(dir) else {
                return Err(FsError::NotFound);
            };
            let entries = match self.list_remote(dir).await? {
                Some(e) => e,
                None => return Ok(()),
            };
            let outcome = {
                let mut ns = lock(&self.inner.ns);
                let raced = self
                    .inner
                    .applied_epoch
                    .load(std::sync::atomic::Ordering::SeqCst)
                    != epoch;
                // A directory never listed has no local state a stale listing could undo.
                let first = ns.get(dir).is_some_and(|n| n.children.is_none());
                if raced && !(first && attempt == LIST_ATTEMPTS) {
                    continue;
                }
                // A directory whose entries still have changes queued shows the time of the
                // uploads so far on the provider; its time here stays (the uploader sets the
                // provider's back to it once they are done).
                let busy: Vec<(NodeId, SystemTime)> = {
                    let q = lock(&self.inner.queue);
                    entries
                        .iter()
                        .filter(|e| e.kind == crate::provider::EntryKind::Dir)
                        .filter_map(|e| {
                            let id = ns.child(dir, &e.name)?;
                            let path = remote_dir.join(&e.name)?;
                            q.busy_dir(path.as_str())
                                .then(|| ns.get(id).map(|n| (id, n.mtime)))
                                .flatten()
                        })
                        .collect()
                };
                let outcome = ns.merge_listing(dir, &remote_dir, entries, Instant::now());
                for (id, mtime) in busy {
                    if let Some(n) = ns.get_mut(id) {
                        n.mtime = mtime;
                    }
                }
                self.journal_learned(&outcome.learned);
                outcome
            };
            self.invalidate_merged(outcome);
            return Ok(());
        }
        // The provider keeps changing under the uploader: keep what is known for now.
        tracing::debug!("directory listing raced with uploads; keeping the known listing");
        Ok(())
    }

    /// Later records of these nodes are conditional on what the provider told: replay must
    /// know it. Called with the namespace locked (the order of the log). Not synced: it only
    /// matters to records after it, whose own sync makes it durable too.
    pub(crate) fn journal_learned(&self, learned: &[(NodeId, crate::provider::Version, u64)]) {
        if self.inner.cfg.read_only {
            return;
        }
        for (node, version, size) in learned {
            let rec = Record::Learned {
                node: *node,
                remote: (version.clone(), *size),
            };
            if let Err(e) = self.inner.wal.append(&rec.encode()) {
                tracing::warn!(error = %e, "could not journal a remote change");
            }
        }
    }

    /// Tells the kernel what a merge changed (called without the namespace lock).
    pub(crate) fn invalidate_merged(&self, outcome: crate::namespace::MergeOutcome) {
        self.follow_pins(&outcome.replaced);
        for id in outcome.changed {
            self.invalidate_inode(id);
        }
        for (parent, name, _) in outcome.vanished {
            self.invalidate_entry(parent, &name);
        }
    }

    /// Every entry of `dir` on the provider; `None` when the provider is unavailable and a
    /// known listing stands in.
    async fn list_remote(
        &self,
        dir: NodeId,
    ) -> FsResult<Option<Vec<crate::provider::RemoteEntry>>> {
        let Some(path) = self.remote_location(dir) else {
            return Err(FsError::NotFound);
        };
        let deadline = self.inner.cfg.provider_timeout;
        let listing = async {
            let mut entries = Vec::new();
            let mut page = None;
            loop {
                let p = self.inner.provider.list(&path, page).await?;
                entries.extend(p.entries);
                match p.next {
                    Some(t) => page = Some(t),
                    None => return Ok::<_, ProviderError>(entries),
                }
            }
        };
        let listed = tokio::time::timeout(deadline, listing).await;
        match &listed {
            Ok(Ok(_)) | Ok(Err(ProviderError::NotFound(_))) => self.note_reachable(true),
            Ok(Err(e)) if e.is_unreachable() => self.note_reachable(false),
            Err(_) => self.note_reachable(false),
            Ok(Err(_)) => {}
        }
        match listed {
            Ok(Ok(e)) => Ok(Some(e)),
            // Where a queued rename says it still is, it may have moved already (the rename is
            // on its way): unknown, not empty.
            Ok(Err(e @ ProviderError::NotFound(_)))
                if lock(&self.inner.ns).path_of(dir).as_ref() != Some(&path) =>
            {
                self.stale_listing(dir, FsError::from(e)).map(|()| None)
            }
            // Gone on the provider: an empty listing lets the merge drop what was there.
            Ok(Err(ProviderError::NotFound(_))) => Ok(Some(Vec::new())),
            Ok(Err(e)) => self.stale_listing(dir, FsError::from(e)).map(|()| None),
            Err(_) => self.stale_listing(dir, FsError::TimedOut).map(|()| None),
        }
    }

    fn stale_listing(&self, dir: NodeId, e: FsError) -> FsResult<()> {
        let known = lock(&self.inner.ns)
            .get(dir)
            .is_some_and(|n| n.children.is_some());
        if known {
            tracing::debug!(error = %e, "provider unavailable; using the known listing");
            Ok(())
        } else {
            Err(e)
        }
    }

    pub async fn lookup(&self, parent: NodeId, name: &str) -> FsResult<Attr> {
        if name.len() > 255 {
            return Err(FsError::NameTooLong);
        }
        self.ensure_listed(parent).await?;
        let ns = lock(&self.inner.ns);
        let id = ns.child(parent, name).ok_or(FsError::NotFound)?;
        let n = ns.get(id).ok_or(FsError::NotFound)?;
        Ok(self.attr_of(n))
    }

    pub async fn getattr(&self, ino: NodeId) -> FsResult<Attr> {
        let ns = lock(&self.inner.ns);
        let n = ns.get(ino).ok_or(FsError::NotFound)?;
        Ok(self.attr_of(n))
    }

    pub async fn setattr(&self, ino: NodeId, set: SetAttr) -> FsResult<Attr> {
        if set.uid.is_some_and(|u| u != self.inner.cfg.uid)
            || set.gid.is_some_and(|g| g != self.inner.cfg.gid)
        {
            return Err(FsError::NotPermitted);
        }
        let changes =
            set.size.is_some() || set.mode.is_some() || set.mtime.is_some() || set.atime.is_some();
        if changes {
            self.writable()?;
        }
        if let Some(size) = set.size {
            let kind = lock(&self.inner.ns).get(ino).map(|n| n.kind);
            match kind {
                Some(FileKind::File) => self.truncate(ino, size).await?,
                Some(FileKind::Dir) => return Err(FsError::IsADirectory),
                Some(FileKind::Symlink) => return Err(FsError::InvalidArgument),
                None => return Err(FsError::NotFound),
            }
        }
        let now = SystemTime::now();
        let resolve = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(t) => t,
        };
        if set.mode.is_some() || set.mtime.is_some() || set.atime.is_some() {
            let mut ns = lock(&self.inner.ns);
            let path = ns.path_of(ino);
            let n = ns.get_mut(ino).ok_or(FsError::NotFound)?;
            let perm = set.mode.map(|m| (m & 0o7777) as u16);
            if let Some(p) = perm {
                n.perm = p;
            }
            if let Some(t) = set.atime {
                n.atime = resolve(t);
            }
            let mtime = set.mtime.map(resolve);
            if let Some(t) = mtime {
                n.mtime = t;
            }
            n.ctime = now;
            if perm.is_some() || mtime.is_some() {
                if let Some(path) = path {
                    let rec = Record::SetAttr {
                        path,
                        node: ino,
                        perm,
                        mtime,
                    };
                    self.journal(&mut ns, rec)?;
                }
            }
        }
        self.log_to_os()?;
        self.getattr(ino).await
    }

    /// Every entry of directory `ino` with attributes (readdirplus). `.` and `..` are the
    /// adapter's.
    pub async fn readdir(&self, ino: NodeId) -> FsResult<Vec<DirEntry>> {
        self.ensure_listed(ino).await?;
        let ns = lock(&self.inner.ns);
        let d = ns.get(ino).ok_or(FsError::NotFound)?;
        let children = d.children.as_ref().ok_or(FsError::NotADirectory)?;
        Ok(children
            .iter()
            .filter_map(|(name, id)| {
                ns.get(*id).map(|n| DirEntry {
                    name: name.clone(),
                    attr: self.attr_of(n),
                })
            })
            .collect())
    }

    /// The parent of a directory (for `..`).
    pub fn parent_of(&self, ino: NodeId) -> NodeId {
        lock(&self.inner.ns)
            .get(ino)
            .map_or(NodeId::ROOT, |n| n.parent)
    }

    pub async fn open(&self, ino: NodeId, flags: OpenFlags) -> FsResult<Opened> {
        if flags.write || flags.truncate {
            self.writable()?;
        }
        {
            let ns = lock(&self.inner.ns);
            let n = ns.get(ino).ok_or(FsError::NotFound)?;
            match n.kind {
                FileKind::Dir => return Err(FsError::IsADirectory),
                FileKind::Symlink => return Err(FsError::InvalidArgument),
                FileKind::File => {}
            }
        }
        self.revalidate_on_open(ino).await?;
        if flags.truncate {
            let size = lock(&self.inner.ns).get(ino).map_or(0, |n| n.content.size);
            if size > 0 {
                self.truncate(ino, 0).await?;
            }
        }
        Ok(self.new_handle(ino, flags))
    }

    fn new_handle(&self, ino: NodeId, flags: OpenFlags) -> Opened {
        let fh = self
            .inner
            .next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (keep_cache, remote_gen) = {
            let mut ns = lock(&self.inner.ns);
            match ns.get_mut(ino) {
                Some(n) => {
                    n.open += 1;
                    // Same remote version as when the kernel last read it: its pages are good.
                    let tag = n.remote.as_ref().map(|r| version_tag(&r.version));
                    let keep = tag.is_some() && n.cached_version == tag && !n.content.is_modified();
                    n.cached_version = tag;
                    (keep, n.remote_gen)
                }
                None => (false, 0),
            }
        };
        lock(&self.inner.handles).insert(
            fh,
            Handle {
                node: ino,
                flags,
                next_offset: 0,
                window: 0,
                prefetched_to: 0,
                from_start: false,
                remote_gen,
            },
        );
        Opened {
            fh,
            keep_cache,
            direct_io: false,
        }
    }

    pub async fn create(
        &self,
        parent: NodeId,
        name: &str,
        mode: u32,
        flags: OpenFlags,
    ) -> FsResult<(Attr, Opened)> {
        self.writable()?;
        check_name(name, self.inner.provider.capabilities().max_name_len)?;
        self.ensure_listed_to_change(parent).await?;
        let existing = lock(&self.inner.ns).child(parent, name);
        if let Some(id) = existing {
            if flags.exclusive {
                return Err(FsError::Exists);
            }
            let opened = self.open(id, flags).await?;
            return Ok((self.getattr(id).await?, opened));
        }
        let attr = {
            let mut ns = lock(&self.inner.ns);
            if ns.child(parent, name).is_some() {
                return Err(FsError::Exists);
            }
            let pdir = ns.path_of(parent).ok_or(FsError::NotFound)?;
            let path = pdir.join(name).ok_or(FsError::InvalidName)?;
            let id = ns.alloc_id();
            let now = SystemTime::now();
            let mut n = new_node(
                id,
                parent,
                name,
                FileKind::File,
                (mode & 0o7777) as u16,
                now,
            );
            // An empty file is a change too: the first close commits it.
            n.dirty = true;
            let attr = self.attr_of(&n);
            ns.insert(n);
            touch_dir(&mut ns, parent, now);
            self.journal(
                &mut ns,
                Record::Create {
                    path,
                    node: id,
                    perm: attr.perm,
                    mtime: now,
                },
            )?;
            attr
        };
        self.log_to_os()?;
        let opened = self.new_handle(attr.ino, flags);
        Ok((attr, opened))
    }

    /// close(2) of one descriptor: commits written data so that it is durable when close
    /// returns.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if h.flags.write {
            self.commit(h.node).await?;
        }
        Ok(())
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        self.commit(h.node).await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let r = if h.flags.write {
            self.commit(h.node).await
        } else {
            Ok(())
        };
        lock(&self.inner.handles).remove(&fh);
        let mut ns = lock(&self.inner.ns);
        if let Some(n) = ns.get_mut(h.node) {
            n.open = n.open.saturating_sub(1);
        }
        let gone = ns.release_orphan(h.node);
        drop(ns);
        if let Some(n) = gone {
            self.forget_node_data(&n);
        }
        r
    }

    pub async fn mkdir(&self, parent: NodeId, name: &str, mode: u32) -> FsResult<Attr> {
        self.writable()?;
        check_name(name, self.inner.provider.capabilities().max_name_len)?;
        self.ensure_listed_to_change(parent).await?;
        let attr = {
            let mut ns = lock(&self.inner.ns);
            if ns.child(parent, name).is_some() {
                return Err(FsError::Exists);
            }
            let path = ns
                .path_of(parent)
                .and_then(|p| p.join(name))
                .ok_or(FsError::NotFound)?;
            let id = ns.alloc_id();
            let now = SystemTime::now();
            let n = new_node(id, parent, name, FileKind::Dir, (mode & 0o7777) as u16, now);
            let attr = self.attr_of(&n);
            ns.insert(n);
            touch_dir(&mut ns, parent, now);
            self.journal(
                &mut ns,
                Record::Mkdir {
                    path,
                    node: id,
                    perm: attr.perm,
                    mtime: now,
                },
            )?;
            attr
        };
        self.log_to_os()?;
        Ok(attr)
    }

    pub async fn symlink(&self, parent: NodeId, name: &str, target: &str) -> FsResult<Attr> {
        self.writable()?;
        check_name(name, self.inner.provider.capabilities().max_name_len)?;
        if !self.inner.provider.capabilities().symlinks {
            return Err(FsError::NotSupported);
        }
        self.ensure_listed_to_change(parent).await?;
        let attr = {
            let mut ns = lock(&self.inner.ns);
            if ns.child(parent, name).is_some() {
                return Err(FsError::Exists);
            }
            let path = ns
                .path_of(parent)
                .and_then(|p| p.join(name))
                .ok_or(FsError::NotFound)?;
            let id = ns.alloc_id();
            let now = SystemTime::now();
            let mut n = new_node(id, parent, name, FileKind::Symlink, 0o777, now);
            n.target = Some(target.to_string());
            let attr = self.attr_of(&n);
            ns.insert(n);
            touch_dir(&mut ns, parent, now);
            self.journal(
                &mut ns,
                Record::Symlink {
                    path,
                    node: id,
                    target: target.to_string(),
                    mtime: now,
                },
            )?;
            attr
        };
        self.log_to_os()?;
        Ok(attr)
    }

    pub async fn readlink(&self, ino: NodeId) -> FsResult<String> {
        let ns = lock(&self.inner.ns);
        let n = ns.get(ino).ok_or(FsError::NotFound)?;
        n.target.clone().ok_or(FsError::InvalidArgument)
    }

    pub async fn unlink(&self, parent: NodeId, name: &str) -> FsResult<()> {
        self.remove(parent, name, false).await
    }

    pub async fn rmdir(&self, parent: NodeId, name: &str) -> FsResult<()> {
        self.remove(parent, name, true).await
    }

    async fn remove(&self, parent: NodeId, name: &str, dir: bool) -> FsResult<()> {
        self.writable()?;
        self.ensure_listed_to_change(parent).await?;
        let id = lock(&self.inner.ns)
            .child(parent, name)
            .ok_or(FsError::NotFound)?;
        if dir {
            self.ensure_listed(id).await?;
        }
        {
            let mut ns = lock(&self.inner.ns);
            if ns.child(parent, name) != Some(id) {
                return Err(FsError::NotFound);
            }
            let n = ns.get(id).ok_or(FsError::NotFound)?;
            match (dir, n.kind) {
                (true, FileKind::Dir) => {
                    if n.children.as_ref().is_some_and(|c| !c.is_empty()) {
                        return Err(FsError::NotEmpty);
                    }
                }
                (true, _) => return Err(FsError::NotADirectory),
                (false, FileKind::Dir) => return Err(FsError::IsADirectory),
                (false, _) => {}
            }
            let path = ns.path_of(id).ok_or(FsError::NotFound)?;
            self.journal(
                &mut ns,
                Record::Remove {
                    path,
                    node: id,
                    dir,
                },
            )?;
            ns.detach(id);
            touch_dir(&mut ns, parent, SystemTime::now());
        }
        if !dir {
            // Unlinked: no upload of what it was still going to get.
            if let Some(n) = lock(&self.inner.ns).get_mut(id) {
                n.dirty = false;
            }
        }
        self.log_to_os()
    }

    pub async fn rename(
        &self,
        parent: NodeId,
        name: &str,
        new_parent: NodeId,
        new_name: &str,
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.writable()?;
        if flags.exchange {
            return Err(FsError::NotSupported);
        }
        check_name(new_name, self.inner.provider.capabilities().max_name_len)?;
        self.ensure_listed_to_change(parent).await?;
        self.ensure_listed_to_change(new_parent).await?;
        let (id, target) = {
            let ns = lock(&self.inner.ns);
            (
                ns.child(parent, name).ok_or(FsError::NotFound)?,
                ns.child(new_parent, new_name),
            )
        };
        if let Some(t) = target {
            if lock(&self.inner.ns).get(t).is_some_and(|n| n.is_dir()) {
                self.ensure_listed(t).await?;
            }
        }
        // Written but not committed data follows the file: commit it under its old name first,
        // so that the log says where it was.
        self.commit(id).await?;
        {
            let mut ns = lock(&self.inner.ns);
            if ns.child(parent, name) != Some(id) || ns.child(new_parent, new_name) != target {
                return Err(FsError::NotFound);
            }
            if target == Some(id) {
                return Ok(());
            }
            let src_dir = ns.get(id).is_some_and(|n| n.is_dir());
            if src_dir && ns.is_ancestor(id, new_parent) {
                return Err(FsError::InvalidArgument);
            }
            if let Some(t) = target {
                if flags.no_replace {
                    return Err(FsError::Exists);
                }
                let tn = ns.get(t).ok_or(FsError::NotFound)?;
                match (src_dir, tn.is_dir()) {
                    (true, true) => {
                        if tn.children.as_ref().is_some_and(|c| !c.is_empty()) {
                            return Err(FsError::NotEmpty);
                        }
                    }
                    (true, false) => return Err(FsError::NotADirectory),
                    (false, true) => return Err(FsError::IsADirectory),
                    (false, false) => {}
                }
            }
            let from = ns.path_of(id).ok_or(FsError::NotFound)?;
            let to = ns
                .path_of(new_parent)
                .and_then(|p| p.join(new_name))
                .ok_or(FsError::NotFound)?;
            if let Some(t) = target {
                // What the provider has at `to` is what the moved node will replace.
                ns.replace_by_rename(id, t);
                // A replaced directory is removed on the provider first (it is empty).
                if ns.get(t).is_some_and(|n| n.is_dir()) {
                    self.journal(
                        &mut ns,
                        Record::Remove {
                            path: to.clone(),
                            node: t,
                            dir: true,
                        },
                    )?;
                }
                ns.detach(t);
            }
            self.journal(
                &mut ns,
                Record::Rename {
                    from,
                    to,
                    node: id,
                    replaced: target,
                },
            )?;
            ns.move_node(id, new_parent, new_name);
            let now = SystemTime::now();
            touch_dir(&mut ns, parent, now);
            touch_dir(&mut ns, new_parent, now);
            if let Some(n) = ns.get_mut(id) {
                n.ctime = now;
            }
        }
        self.log_to_os()
    }

    /// Hard links are not supported (a cloud object has one name).
    pub async fn link(&self) -> FsResult<Attr> {
        Err(FsError::NotPermitted)
    }

    pub async fn statfs(&self) -> FsResult<FsStats> {
        // Cloud storage reports no capacity: like rclone, answer a large free space, so
        // programs that check it before writing go ahead; the cache limit is enforced on writes.
        const BLOCK: u64 = 4096;
        const TOTAL: u64 = 1 << 50;
        let used = self.inner.cache.usage().dirty_bytes;
        let files = lock(&self.inner.ns).nodes.len() as u64;
        Ok(FsStats {
            block_size: BLOCK as u32,
            blocks: TOTAL / BLOCK,
            blocks_free: (TOTAL - used) / BLOCK,
            files: files + (1 << 30),
            files_free: 1 << 30,
            name_max: self.inner.provider.capabilities().max_name_len as u32,
        })
    }
}

fn touch_dir(ns: &mut crate::namespace::Namespace, dir: NodeId, now: SystemTime) {
    if let Some(d) = ns.get_mut(dir) {
        d.mtime = now;
        d.ctime = now;
    }
}

/// A small stable tag of a version, for `keep_cache`.
fn version_tag(v: &cache::Version) -> u64 {
    // FNV-1a: only compared for equality within one mount.
    v.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x1000_0000_01b3)
    })
}
