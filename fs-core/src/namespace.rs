//! The namespace: every known node (file, directory, symlink) with its name, parent, attributes,
//! content map and what the provider is known to have for it. Stable node ids, persisted in
//! checkpoints (snapshot.rs) and rebuilt after a crash by replaying the journal.
//!
//! Held behind one mutex in the VFS, never across an await. Directories remember when they were
//! last listed from the provider; a listing is merged without undoing local changes that are
//! still queued (see `merge_listing`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Instant, SystemTime};

use cache::{ObjectId, Version};

use crate::content::Content;
use crate::provider::{EntryKind, RemoteEntry, RemotePath};
use crate::types::{FileKind, NodeId};

/// What the provider is known to hold for a node, at its current path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteState {
    pub version: Version,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub id: NodeId,
    pub generation: u64,
    pub parent: NodeId,
    pub name: String,
    pub kind: FileKind,
    pub perm: u16,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    /// Files: where the bytes come from.
    pub content: Content,
    /// Symlinks: the target.
    pub target: Option<String>,
    /// What the provider has at this node's path; `None`: not on the provider (yet).
    pub remote: Option<RemoteState>,
    /// Directories: children by name, once known.
    pub children: Option<BTreeMap<String, NodeId>>,
    /// When the children were last refreshed from the provider (not persisted).
    pub listed_at: Option<Instant>,
    /// Journal records about this node not yet applied to the provider.
    pub pending: u32,
    /// Written since the last commit (close/fsync makes a commit).
    pub dirty: bool,
    /// Open file handles (not persisted).
    pub open: u32,
    /// Removed from its directory while open: kept until the last handle closes.
    pub orphan: bool,
    /// Version of the content the kernel may have cached pages of (for keep_cache).
    pub cached_version: Option<u64>,
    /// How often a listing replaced this file's content with another remote version (not
    /// persisted): a handle opened before fails its reads instead of mixing two versions.
    pub remote_gen: u64,
    /// When the provider last told this entry's version (a listing or a stat; not persisted):
    /// an open after `attr_timeout` asks again (close-to-open consistency).
    pub checked_at: Option<Instant>,
}

impl Node {
    pub fn object_id(&self) -> ObjectId {
        ObjectId::from(format!("n{}.{}", self.id.0, self.generation))
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
}

/// The node table.
#[derive(Debug)]
pub struct Namespace {
    pub nodes: HashMap<NodeId, Node>,
    pub next_id: u64,
    /// Paths whose removal (unlink, rmdir, rename away) is queued but not applied yet: a listing
    /// that still shows them must not bring them back.
    pub tombstones: HashMap<RemotePath, u32>,
    /// Directories whose child map holds only entries made known by replaying the log (their
    /// listing was never known): they must be listed before they are answered from.
    pub partial: HashSet<NodeId>,
    /// Files replaced by a rename that is not applied yet (see [`Replaced`]). Not persisted:
    /// the replay of the log rebuilds it.
    pub replaced: HashMap<NodeId, Replaced>,
    /// Files renamed over another file with nothing of their own on the provider: their
    /// `remote` is what the rename found at the new path when it was made, until a rename of
    /// theirs is applied (see [`Namespace::rename_over_applied`]). Not persisted.
    pub stand_ins: HashSet<NodeId>,
}

impl Namespace {
    pub fn new(now: SystemTime) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            NodeId::ROOT,
            Node {
                id: NodeId::ROOT,
                generation: 0,
                parent: NodeId::ROOT,
                name: String::new(),
                kind: FileKind::Dir,
                perm: 0o755,
                mtime: now,
                atime: now,
                ctime: now,
                content: Content::default(),
                target: None,
                remote: None,
                children: None,
                listed_at: None,
                pending: 0,
                dirty: false,
                open: 0,
                orphan: false,
                cached_version: None,
                remote_gen: 0,
                checked_at: None,
            },
        );
        Namespace {
            nodes,
            next_id: 2,
            tombstones: HashMap::new(),
            partial: HashSet::new(),
            replaced: HashMap::new(),
            stand_ins: HashSet::new(),
        }
    }

    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(&id)
    }

    pub fn child(&self, parent: NodeId, name: &str) -> Option<NodeId> {
        self.nodes
            .get(&parent)?
            .children
            .as_ref()?
            .get(name)
            .copied()
    }

    /// The provider path of `id` (walks up to the root).
    pub fn path_of(&self, id: NodeId) -> Option<RemotePath> {
        let mut names = Vec::new();
        let mut cur = id;
        while cur != NodeId::ROOT {
            let n = self.nodes.get(&cur)?;
            if n.orphan {
                return None;
            }
            names.push(n.name.as_str());
            if names.len() > self.nodes.len() {
                // A cycle of parents (a bug): no path, rather than a walk that never ends.
                tracing::error!(node = id.0, "the node's parents form a cycle");
                return None;
            }
            cur = n.parent;
        }
        let mut p = RemotePath::root();
        for name in names.iter().rev() {
            p = p.join(name)?;
        }
        Some(p)
    }

    /// The node at `path`, if known.
    pub fn resolve(&self, path: &RemotePath) -> Option<NodeId> {
        let mut cur = NodeId::ROOT;
        if path.is_root() {
            return Some(cur);
        }
        for name in path.as_str().split('/') {
            cur = self.child(cur, name)?;
        }
        Some(cur)
    }

    /// Allocates a node id (never reused: ids only grow).
    pub fn alloc_id(&mut self) -> NodeId {
        let id = NodeId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Adds `node` under its parent (which must be a listed directory).
    pub fn insert(&mut self, node: Node) {
        let (parent, name, id) = (node.parent, node.name.clone(), node.id);
        self.next_id = self.next_id.max(id.0 + 1);
        self.nodes.insert(id, node);
        if let Some(p) = self.nodes.get_mut(&parent) {
            if p.children.is_none() {
                // A listing never known: what it holds now is not all there is.
                self.partial.insert(parent);
            }
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, id);
            }
        }
    }

    /// Detaches `id` from its directory. The node is dropped unless it is open (then it becomes
    /// an orphan until released). Directories are dropped with their (known) subtree.
    pub fn detach(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get(&id) else { return };
        let (parent, name) = (n.parent, n.name.clone());
        if let Some(p) = self.nodes.get_mut(&parent) {
            if let Some(c) = p.children.as_mut() {
                if c.get(&name) == Some(&id) {
                    c.remove(&name);
                }
            }
        }
        self.drop_subtree(id);
    }

    fn drop_subtree(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        // Open, or with records still queued for the provider (whose application needs to know
        // what the provider has for it): kept, out of the tree, until released.
        if n.open > 0 || n.pending > 0 {
            n.orphan = true;
            return;
        }
        let children: Vec<NodeId> = n
            .children
            .as_ref()
            .map(|c| c.values().copied().collect())
            .unwrap_or_default();
        self.nodes.remove(&id);
        for c in children {
            self.drop_subtree(c);
        }
    }

    /// Gives node `old` the id `new` (replay: a node the log names by an id the namespace does
    /// not know is the one at the path the record names, made again under an id of its own).
    /// Nothing happens if `new` is taken or `old` unknown or the root.
    pub fn rekey(&mut self, old: NodeId, new: NodeId) {
        if old == new || old == NodeId::ROOT || self.nodes.contains_key(&new) {
            return;
        }
        let Some(mut n) = self.nodes.remove(&old) else {
            return;
        };
        n.id = new;
        if let Some(c) = self
            .nodes
            .get_mut(&n.parent)
            .and_then(|p| p.children.as_mut())
        {
            if c.get(&n.name) == Some(&old) {
                c.insert(n.name.clone(), new);
            }
        }
        for c in n.children.iter().flat_map(|c| c.values()) {
            if let Some(child) = self.nodes.get_mut(c) {
                child.parent = new;
            }
        }
        if self.partial.remove(&old) {
            self.partial.insert(new);
        }
        self.next_id = self.next_id.max(new.0 + 1);
        self.nodes.insert(new, n);
    }

    /// Moves `id` to `new_parent/new_name` (the target slot must be free).
    pub fn move_node(&mut self, id: NodeId, new_parent: NodeId, new_name: &str) {
        let Some(n) = self.nodes.get(&id) else { return };
        let (old_parent, old_name) = (n.parent, n.name.clone());
        if let Some(p) = self.nodes.get_mut(&old_parent) {
            if let Some(c) = p.children.as_mut() {
                c.remove(&old_name);
            }
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.parent = new_parent;
            n.name = new_name.to_string();
        }
        if let Some(p) = self.nodes.get_mut(&new_parent) {
            p.children
                .get_or_insert_with(BTreeMap::new)
                .insert(new_name.to_string(), id);
        }
    }

    /// Drops an orphan once nothing holds it (no open handle, nothing queued); returns it, so
    /// that its cached data can be released too.
    pub fn release_orphan(&mut self, id: NodeId) -> Option<Node> {
        if self
            .nodes
            .get(&id)
            .is_some_and(|n| n.orphan && n.open == 0 && n.pending == 0)
        {
            return self.nodes.remove(&id);
        }
        None
    }

    /// Whether `ancestor` is `id` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: NodeId, id: NodeId) -> bool {
        let mut cur = id;
        for _ in 0..=self.nodes.len() {
            if cur == ancestor {
                return true;
            }
            if cur == NodeId::ROOT {
                return false;
            }
            match self.nodes.get(&cur) {
                Some(n) => cur = n.parent,
                None => return false,
            }
        }
        // A cycle of parents (a bug): answered as if it were, so that nothing moves into it.
        tracing::error!(node = id.0, "the node's parents form a cycle");
        true
    }

    /// `moved` is renamed over the file `replaced`. Without a version of its own on the
    /// provider, the moved file takes the replaced one's: its next upload at the new path is
    /// conditional on it, not a conflict with itself. That is what the provider has there when
    /// the rename is made; the rename's application corrects it (see [`Replaced`]).
    pub fn replace_by_rename(&mut self, moved: NodeId, replaced: NodeId) {
        let Some(r) = self.nodes.get(&replaced) else {
            return;
        };
        let remote = r.remote.clone();
        let Some(m) = self.nodes.get_mut(&moved) else {
            return;
        };
        if m.is_dir() {
            // Directories replace only empty directories, removed first.
            return;
        }
        if m.remote.is_none() {
            m.remote = remote.clone();
            self.stand_ins.insert(moved);
        }
        self.replaced
            .insert(replaced, Replaced { by: moved, remote });
    }

    /// The provider reported `remote` for `id` (one of its records was applied).
    pub fn reported(&mut self, id: NodeId, remote: &RemoteState) {
        self.stand_ins.remove(&id);
        if let Some(r) = self.replaced.get_mut(&id) {
            r.remote = Some(remote.clone());
        }
    }

    /// The rename of `moved` over `replaced` was applied; `moved_it`: it moved an object. If it
    /// did not and the moved file had nothing on the provider (it never got there under its old
    /// name), what the replaced file left at the path is what the moved file has there now. (If
    /// it had an object, that vanished from the source: it keeps what it knew.)
    pub fn rename_over_applied(&mut self, moved: NodeId, replaced: NodeId, moved_it: bool) {
        let Some(r) = self.replaced.remove(&replaced) else {
            return;
        };
        if !moved_it && self.stand_ins.contains(&moved) {
            if r.remote.is_some() {
                // An object at its path from now on: a later rename of it moves that one.
                self.stand_ins.remove(&moved);
            }
            if let Some(n) = self.nodes.get_mut(&moved) {
                n.remote = r.remote.clone();
            }
            if let Some(m) = self.replaced.get_mut(&moved) {
                m.remote = r.remote;
            }
        }
        if !self.replaced.values().any(|r| r.by == moved) {
            self.stand_ins.remove(&moved);
        }
    }

    pub fn add_tombstone(&mut self, path: RemotePath) {
        *self.tombstones.entry(path).or_insert(0) += 1;
    }

    pub fn remove_tombstone(&mut self, path: &RemotePath) {
        if let Some(n) = self.tombstones.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                self.tombstones.remove(path);
            }
        }
    }

    fn tombstoned(&self, path: &RemotePath) -> bool {
        self.tombstones.keys().any(|t| path.starts_with(t))
    }

    /// A node for a provider entry, under `parent`.
    pub fn node_from_remote(&mut self, parent: NodeId, e: &RemoteEntry) -> Node {
        let id = self.alloc_id();
        let kind = match e.kind {
            EntryKind::File => FileKind::File,
            EntryKind::Dir => FileKind::Dir,
            EntryKind::Symlink => FileKind::Symlink,
        };
        let default_perm = if kind == FileKind::Dir { 0o755 } else { 0o644 };
        Node {
            id,
            generation: 0,
            parent,
            name: e.name.clone(),
            kind,
            perm: e.mode.map(|m| (m & 0o7777) as u16).unwrap_or(default_perm),
            mtime: e.mtime,
            atime: e.mtime,
            ctime: e.mtime,
            content: if kind == FileKind::File {
                Content::remote(e.version.clone(), e.size)
            } else {
                Content::default()
            },
            target: e.symlink_target.clone(),
            remote: Some(RemoteState {
                version: e.version.clone(),
                size: e.size,
            }),
            children: None,
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

    /// Merges a full listing of directory `dir` from the provider. Local changes still queued
    /// win: nodes with pending records or local modifications are kept as they are, and names
    /// whose removal is queued are not brought back. Returns the nodes whose content changed
    /// remotely (the kernel's caches of them must be invalidated) and those that vanished.
    /// `remote_dir` is where the provider has `dir` now (its local path differs while a rename
    /// of it or of an ancestor is queued); queued removals are checked against it.
    pub fn merge_listing(
        &mut self,
        dir: NodeId,
        remote_dir: &RemotePath,
        entries: Vec<RemoteEntry>,
        now: Instant,
    ) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        let dir_path = remote_dir.clone();
        let mut seen = HashSet::new();
        for e in entries {
            seen.insert(e.name.clone());
            let Some(path) = dir_path.join(&e.name) else {
                continue;
            };
            if self.tombstoned(&path) && self.child(dir, &e.name).is_none() {
                continue;
            }
            self.merge_entry(dir, &e, &mut out);
            if let Some(n) = self
                .child(dir, &e.name)
                .and_then(|id| self.nodes.get_mut(&id))
            {
                n.checked_at = Some(now);
            }
        }
        let gone: Vec<(String, NodeId)> = self
            .nodes
            .get(&dir)
            .and_then(|d| d.children.as_ref())
            .map(|c| {
                c.iter()
                    .filter(|(name, _)| !seen.contains(*name))
                    .map(|(n, id)| (n.clone(), *id))
                    .collect()
            })
            .unwrap_or_default();
        for (name, id) in gone {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            // Only what is known to be on the provider, unchanged and with nothing queued, was
            // deleted there. A node never uploaded is local, not gone.
            if n.remote.is_none()
                || n.pending > 0
                || n.dirty
                || n.content.is_modified() && n.kind == FileKind::File
            {
                continue;
            }
            if n.kind == FileKind::Dir && self.subtree_has_local_changes(id) {
                continue;
            }
            self.detach(id);
            out.vanished.push((dir, name, id));
        }
        if let Some(d) = self.nodes.get_mut(&dir) {
            d.children.get_or_insert_with(BTreeMap::new);
            d.listed_at = Some(now);
        }
        self.partial.remove(&dir);
        out
    }

    /// Merges what the provider has at `dir`/`e.name` (from a listing or a stat) into the
    /// entry of that name: a file's new remote version replaces its content (unless it has
    /// local changes, which conflict when uploaded), another kind replaces the node, a new name
    /// becomes a node. What it changed goes into `out`.
    pub fn merge_entry(&mut self, dir: NodeId, e: &RemoteEntry, out: &mut MergeOutcome) {
        let Some(id) = self.child(dir, &e.name) else {
            let node = self.node_from_remote(dir, e);
            self.insert(node);
            return;
        };
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.pending > 0 || n.dirty || n.content.is_modified() && n.kind == FileKind::File {
            return;
        }
        let same_kind = matches!(
            (n.kind, e.kind),
            (FileKind::File, EntryKind::File)
                | (FileKind::Dir, EntryKind::Dir)
                | (FileKind::Symlink, EntryKind::Symlink)
        );
        if !same_kind {
            self.detach(id);
            out.vanished.push((dir, e.name.clone(), id));
            let node = self.node_from_remote(dir, e);
            self.insert(node);
            return;
        }
        let changed = n.remote.as_ref().map(|r| &r.version) != Some(&e.version);
        if changed && n.kind == FileKind::File {
            if let Some(old) = &n.remote {
                out.replaced.push((id, old.clone()));
            }
            n.content = Content::remote(e.version.clone(), e.size);
            n.cached_version = None;
            n.remote_gen += 1;
            out.changed.push(id);
        }
        if changed && n.kind != FileKind::Dir {
            out.learned.push((id, e.version.clone(), e.size));
        }
        n.remote = Some(RemoteState {
            version: e.version.clone(),
            size: e.size,
        });
        // A provider that keeps no attributes (no mode: S3, WebDAV) stamps what the drive
        // uploads with the time of the upload: the time set here (`cp -a`, `rsync -a`, `make`)
        // stays until another version comes from elsewhere.
        // One that keeps times in whole seconds (SFTP) gives back the drive's own time cut
        // short: the finer one stays.
        let cut_short = n
            .mtime
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| std::time::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()))
            == Some(e.mtime);
        if changed || (e.mode.is_some() && !cut_short) {
            n.mtime = e.mtime;
        }
        if let Some(m) = e.mode {
            n.perm = (m & 0o7777) as u16;
        }
        if n.kind == FileKind::Symlink {
            n.target = e.symlink_target.clone();
        }
    }

    fn subtree_has_local_changes(&self, id: NodeId) -> bool {
        let Some(n) = self.nodes.get(&id) else {
            return false;
        };
        if n.pending > 0 || n.dirty || (n.kind == FileKind::File && n.content.is_modified()) {
            return true;
        }
        n.children
            .as_ref()
            .is_some_and(|c| c.values().any(|&c| self.subtree_has_local_changes(c)))
    }
}

/// A file replaced by a rename that is not applied yet.
#[derive(Clone, Debug)]
pub struct Replaced {
    /// The file moved over it.
    pub by: NodeId,
    /// What the provider has for it, kept up to date as its own queued records are applied (its
    /// node may be gone meanwhile). When the rename finds nothing to move, this is what the
    /// moved file has at the path: its next upload or delete there is conditional on it.
    pub remote: Option<RemoteState>,
}

/// What a merge changed.
#[derive(Debug, Default)]
pub struct MergeOutcome {
    pub changed: Vec<NodeId>,
    /// Files and symlinks the provider has another version of (files: their content is now
    /// that version): `(node, version, size)`, for the journal (later records of these nodes
    /// are conditional on it, and replay must know it).
    pub learned: Vec<(NodeId, Version, u64)>,
    pub vanished: Vec<(NodeId, String, NodeId)>,
    /// Files whose content became another remote version: `(node, the version before)`.
    pub replaced: Vec<(NodeId, RemoteState)>,
}
