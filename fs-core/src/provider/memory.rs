//! [`MemoryProvider`]: a provider that keeps its tree in memory, for unit and property tests of
//! the core (fast, deterministic, inspectable, and able to change "behind the back" of the core).
//!
//! # What it guarantees
//!
//! * The whole tree lives behind one `std::sync::Mutex` (never held across an `.await`), so every
//!   operation is atomic; preconditions are checked atomically with the change
//!   (`conditional_write: true`).
//! * Versions are `m{n}` from one process-wide counter: never reused, even across instances. A
//!   new version is given on every change of an entry: content, attributes, rename (like the
//!   ctime-based versions of [`LocalProvider`](super::local::LocalProvider)), and to a directory
//!   whenever an entry is added to or removed from it.
//! * A write collects the whole body first and commits only if it delivered exactly `len` bytes:
//!   a short, long, failed or cancelled body never becomes visible.
//! * A read checks the version when called and then serves a snapshot of that version (in
//!   pieces of up to 64 KiB), so it never mixes versions.
//! * `list` is paged: at most `page_size` entries per page, sorted by name; the `next` token is
//!   the last name returned.
//! * Errors mirror [`LocalProvider`](super::local::LocalProvider): a lookup below a file is
//!   `NotFound`; creating below a missing parent or a file names the parent (`NotFound` /
//!   `NotADirectory`); names longer than 255 bytes are `InvalidName`; the mode of a symlink is
//!   ignored by `set_attrs`; a write without a mode keeps the mode of the file it replaces.
//!
//! Test helpers ([`put_file`](MemoryProvider::put_file), [`remove`](MemoryProvider::remove),
//! [`mkdir_all`](MemoryProvider::mkdir_all), [`file`](MemoryProvider::file),
//! [`snapshot`](MemoryProvider::snapshot)) change or inspect the tree directly: they do not count
//! as operations and work even while [`set_unreachable`](MemoryProvider::set_unreachable) makes
//! every operation fail with `Unreachable`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;

use super::{
    ByteStream, Capabilities, EntryKind, ListPage, ObjectAttrs, Precondition, Provider,
    ProviderError, RemoteEntry, RemotePath, Result, Version,
};

/// Default number of entries per `list` page.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// Largest piece of a read stream.
const READ_PIECE: usize = 64 * 1024;

const MAX_NAME_LEN: usize = 255;

/// How many operations reached the provider (counted when called, whether they succeed or not),
/// and how many bytes were served by reads (the range, counted when the read is called) and
/// stored by successful writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub stat: u64,
    pub list: u64,
    pub read: u64,
    pub read_bytes: u64,
    pub write: u64,
    pub write_bytes: u64,
    pub delete: u64,
    pub mkdir: u64,
    pub rmdir: u64,
    pub rename: u64,
    pub symlink: u64,
    pub set_attrs: u64,
}

/// One entry of [`MemoryProvider::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotEntry {
    File(Vec<u8>),
    Dir,
    /// The target.
    Symlink(String),
}

#[derive(Clone, Debug)]
enum Content {
    File(Bytes),
    Dir,
    Symlink(String),
}

#[derive(Clone, Debug)]
struct Node {
    content: Content,
    mtime: SystemTime,
    version: Version,
    mode: u32,
}

impl Node {
    fn new(content: Content) -> Self {
        let mode = match content {
            Content::File(_) => 0o644,
            Content::Dir => 0o755,
            Content::Symlink(_) => 0o777,
        };
        Node {
            content,
            mtime: SystemTime::now(),
            version: next_version(),
            mode,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.content, Content::Dir)
    }

    fn entry(&self, name: &str) -> RemoteEntry {
        let (kind, size, symlink_target) = match &self.content {
            Content::File(b) => (EntryKind::File, b.len() as u64, None),
            Content::Dir => (EntryKind::Dir, 0, None),
            Content::Symlink(t) => (EntryKind::Symlink, t.len() as u64, Some(t.clone())),
        };
        RemoteEntry {
            name: name.to_string(),
            kind,
            size,
            mtime: self.mtime,
            version: self.version.clone(),
            mode: Some(self.mode),
            symlink_target,
        }
    }
}

fn next_version() -> Version {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Version::from(format!("m{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// The tree, keyed by full path (`""` is the root, always a directory).
struct State {
    nodes: BTreeMap<String, Node>,
    counters: Counters,
}

impl State {
    fn get(&self, p: &RemotePath) -> Result<&Node> {
        self.nodes
            .get(p.as_str())
            .ok_or_else(|| ProviderError::NotFound(p.clone()))
    }

    /// The parent of `p` must be an existing directory.
    fn check_parent(&self, p: &RemotePath) -> Result<()> {
        let parent = p.parent().unwrap_or_else(RemotePath::root);
        let mut prefix = RemotePath::root();
        for component in parent.as_str().split('/').filter(|c| !c.is_empty()) {
            prefix = prefix.join(component).unwrap_or_else(RemotePath::root);
            match self.nodes.get(prefix.as_str()) {
                None => return Err(ProviderError::NotFound(parent)),
                Some(n) if !n.is_dir() => return Err(ProviderError::NotADirectory(parent)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// New version and mtime for the parent directory of `p` (an entry came or went).
    fn touch_parent(&mut self, p: &RemotePath) {
        let parent = p.parent().unwrap_or_else(RemotePath::root);
        if let Some(n) = self.nodes.get_mut(parent.as_str()) {
            n.mtime = SystemTime::now();
            n.version = next_version();
        }
    }

    /// Keys of `p` and everything below it.
    fn subtree_keys(&self, p: &RemotePath) -> Vec<String> {
        if p.is_root() {
            return self.nodes.keys().cloned().collect();
        }
        let prefix = format!("{}/", p.as_str());
        let mut keys = vec![p.as_str().to_string()];
        keys.extend(
            self.nodes
                .range::<String, _>((Bound::Excluded(prefix.clone()), Bound::Unbounded))
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&prefix))
                .cloned(),
        );
        keys
    }

    fn has_children(&self, p: &RemotePath) -> bool {
        let prefix = if p.is_root() {
            String::new()
        } else {
            format!("{}/", p.as_str())
        };
        self.nodes
            .range::<String, _>((Bound::Excluded(prefix.clone()), Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// Creates missing directories down to `p` (test helper).
    fn mkdir_all(&mut self, p: &RemotePath) {
        let mut prefix = RemotePath::root();
        for component in p.as_str().split('/').filter(|c| !c.is_empty()) {
            prefix = prefix.join(component).unwrap_or_else(RemotePath::root);
            match self.nodes.get(prefix.as_str()) {
                Some(n) if n.is_dir() => {}
                _ => {
                    // A file in the way is replaced (with everything below it) by a directory.
                    for k in self.subtree_keys(&prefix) {
                        self.nodes.remove(&k);
                    }
                    self.nodes
                        .insert(prefix.as_str().to_string(), Node::new(Content::Dir));
                    self.touch_parent(&prefix);
                }
            }
        }
    }
}

/// An in-memory provider. See the module documentation.
pub struct MemoryProvider {
    state: Mutex<State>,
    page_size: usize,
    unreachable: AtomicBool,
}

impl Default for MemoryProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryProvider")
            .field("page_size", &self.page_size)
            .field("unreachable", &self.unreachable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn parse(path: &str) -> RemotePath {
    match RemotePath::parse(path) {
        Some(p) => p,
        None => panic!("MemoryProvider test helper: invalid path {path:?}"),
    }
}

fn check_new_name(p: &RemotePath) -> Result<()> {
    if p.name().len() > MAX_NAME_LEN {
        return Err(ProviderError::InvalidName {
            name: p.name().to_string(),
            reason: "name too long",
        });
    }
    Ok(())
}

fn precondition_failed(p: &RemotePath) -> ProviderError {
    ProviderError::PreconditionFailed { path: p.clone() }
}

impl MemoryProvider {
    /// An empty tree, listed in pages of [`DEFAULT_PAGE_SIZE`].
    pub fn new() -> Self {
        Self::with_page_size(DEFAULT_PAGE_SIZE)
    }

    /// An empty tree, listed in pages of `page_size` entries (at least 1).
    pub fn with_page_size(page_size: usize) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), Node::new(Content::Dir));
        MemoryProvider {
            state: Mutex::new(State {
                nodes,
                counters: Counters::default(),
            }),
            page_size: page_size.max(1),
            unreachable: AtomicBool::new(false),
        }
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-changed in a way that
        // matters to tests; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the operation, then fails if the provider is set unreachable.
    fn begin(&self, count: impl FnOnce(&mut Counters)) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        count(&mut st.counters);
        self.reachable()?;
        Ok(st)
    }

    fn reachable(&self) -> Result<()> {
        if self.unreachable.load(Ordering::SeqCst) {
            Err(ProviderError::Unreachable(
                "memory provider (set unreachable)".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Operations counted so far.
    pub fn counters(&self) -> Counters {
        self.lock().counters
    }

    pub fn reset_counters(&self) {
        self.lock().counters = Counters::default();
    }

    /// Makes every operation fail with `Unreachable` (or work again).
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::SeqCst);
    }

    /// Behind the back: creates or replaces the file at `path` (creating missing parent
    /// directories; a file in the way of a parent is replaced by a directory).
    ///
    /// # Panics
    /// If `path` is not a valid [`RemotePath`] or is the root.
    pub fn put_file(&self, path: &str, data: &[u8]) {
        self.put_file_replacing(path, data);
    }

    /// [`MemoryProvider::put_file`], answering, in the same step, the contents of the files
    /// it replaced (at `path`, below it, or in the way of a parent): what a test model knows
    /// the remote side overwrote, with no upload slipping in between.
    ///
    /// # Panics
    /// If `path` is not a valid [`RemotePath`] or is the root.
    pub fn put_file_replacing(&self, path: &str, data: &[u8]) -> Vec<Vec<u8>> {
        let p = parse(path);
        assert!(
            !p.is_root(),
            "MemoryProvider::put_file: the root is a directory"
        );
        let mut st = self.lock();
        let mut replaced = Vec::new();
        let mut up = p.parent();
        while let Some(d) = up {
            if let Some(Node {
                content: Content::File(b),
                ..
            }) = st.nodes.get(d.as_str())
            {
                replaced.push(b.to_vec());
            }
            up = d.parent();
        }
        st.mkdir_all(&p.parent().unwrap_or_else(RemotePath::root));
        for k in st.subtree_keys(&p) {
            if let Some(Node {
                content: Content::File(b),
                ..
            }) = st.nodes.remove(&k)
            {
                replaced.push(b.to_vec());
            }
        }
        st.nodes.insert(
            p.as_str().to_string(),
            Node::new(Content::File(Bytes::copy_from_slice(data))),
        );
        st.touch_parent(&p);
        replaced
    }

    /// Behind the back: removes whatever is at `path`, with everything below it (no-op if
    /// nothing is there; the root itself is emptied, not removed).
    ///
    /// # Panics
    /// If `path` is not a valid [`RemotePath`].
    pub fn remove(&self, path: &str) {
        self.remove_returning(path);
    }

    /// [`MemoryProvider::remove`], answering, in the same step, the contents of the files it
    /// removed.
    ///
    /// # Panics
    /// If `path` is not a valid [`RemotePath`].
    pub fn remove_returning(&self, path: &str) -> Vec<Vec<u8>> {
        let p = parse(path);
        let mut st = self.lock();
        let mut removed = Vec::new();
        if !st.nodes.contains_key(p.as_str()) {
            return removed;
        }
        for k in st.subtree_keys(&p) {
            if k.is_empty() {
                continue;
            }
            if let Some(Node {
                content: Content::File(b),
                ..
            }) = st.nodes.remove(&k)
            {
                removed.push(b.to_vec());
            }
        }
        st.touch_parent(&p);
        removed
    }

    /// Behind the back: creates the directory `path` and its missing parents.
    ///
    /// # Panics
    /// If `path` is not a valid [`RemotePath`].
    pub fn mkdir_all(&self, path: &str) {
        let p = parse(path);
        self.lock().mkdir_all(&p);
    }

    /// The contents of the file at `path`, if there is a file there.
    ///
    /// # Panics
    /// If `path` is not a valid [`RemotePath`].
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        let p = parse(path);
        match &self.lock().nodes.get(p.as_str())?.content {
            Content::File(b) => Some(b.to_vec()),
            _ => None,
        }
    }

    /// The whole tree (without the root), keyed by path (`a/b`).
    pub fn snapshot(&self) -> BTreeMap<String, SnapshotEntry> {
        self.lock()
            .nodes
            .iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, n)| {
                let e = match &n.content {
                    Content::File(b) => SnapshotEntry::File(b.to_vec()),
                    Content::Dir => SnapshotEntry::Dir,
                    Content::Symlink(t) => SnapshotEntry::Symlink(t.clone()),
                };
                (k.clone(), e)
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Provider for MemoryProvider {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rename: true,
            conditional_write: true,
            symlinks: true,
            attrs: true,
            max_name_len: MAX_NAME_LEN,
        }
    }

    async fn stat(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "memory stat");
        let st = self.begin(|c| c.stat += 1)?;
        Ok(st.get(path)?.entry(path.name()))
    }

    async fn list(&self, dir: &RemotePath, page: Option<String>) -> Result<ListPage> {
        tracing::debug!(%dir, ?page, "memory list");
        let st = self.begin(|c| c.list += 1)?;
        if !st.get(dir)?.is_dir() {
            return Err(ProviderError::NotADirectory(dir.clone()));
        }
        let prefix = if dir.is_root() {
            String::new()
        } else {
            format!("{}/", dir.as_str())
        };
        let start = match &page {
            Some(last) => Bound::Excluded(format!("{prefix}{last}")),
            None => Bound::Excluded(prefix.clone()),
        };
        let mut children = st
            .nodes
            .range::<String, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, n)| {
                let name = &k[prefix.len()..];
                (!name.is_empty() && !name.contains('/')).then(|| n.entry(name))
            });
        let entries: Vec<RemoteEntry> = children.by_ref().take(self.page_size).collect();
        let next = if children.next().is_some() {
            entries.last().map(|e| e.name.clone())
        } else {
            None
        };
        Ok(ListPage { entries, next })
    }

    async fn read(
        &self,
        path: &RemotePath,
        version: &Version,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        tracing::debug!(%path, offset, len, "memory read");
        let mut st = self.begin(|c| c.read += 1)?;
        let node = st.get(path)?;
        let data = match &node.content {
            Content::File(b) => b.clone(),
            Content::Dir => return Err(ProviderError::IsADirectory(path.clone())),
            Content::Symlink(_) => {
                return Err(ProviderError::Other {
                    message: format!("{path}: is a symlink"),
                    retryable: false,
                })
            }
        };
        if &node.version != version {
            return Err(precondition_failed(path));
        }
        let size = data.len() as u64;
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        let range = data.slice(start..end);
        st.counters.read_bytes += range.len() as u64;
        let pieces: Vec<Result<Bytes>> = (0..range.len())
            .step_by(READ_PIECE)
            .map(|i| Ok(range.slice(i..(i + READ_PIECE).min(range.len()))))
            .collect();
        Ok(Box::pin(futures::stream::iter(pieces)))
    }

    async fn write(
        &self,
        path: &RemotePath,
        mut body: ByteStream,
        len: u64,
        pre: Precondition,
        attrs: ObjectAttrs,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%path, len, ?pre, "memory write");
        drop(self.begin(|c| c.write += 1)?);
        if path.is_root() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        check_new_name(path)?;
        let mut data = Vec::with_capacity(len.min(64 << 20) as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if (data.len() + chunk.len()) as u64 > len {
                return Err(ProviderError::Other {
                    message: format!("{path}: body is longer than the declared {len} bytes"),
                    retryable: false,
                });
            }
            data.extend_from_slice(&chunk);
        }
        if data.len() as u64 != len {
            return Err(ProviderError::Other {
                message: format!("{path}: body ended after {} of {len} bytes", data.len()),
                retryable: false,
            });
        }

        let mut st = self.lock();
        self.reachable()?;
        st.check_parent(path)?;
        match (st.nodes.get(path.as_str()), &pre) {
            (Some(_), Precondition::IfNotExists) => {
                return Err(ProviderError::AlreadyExists(path.clone()))
            }
            (Some(n), _) if n.is_dir() => return Err(ProviderError::IsADirectory(path.clone())),
            (Some(n), Precondition::IfMatch(v)) if &n.version != v => {
                return Err(precondition_failed(path))
            }
            (None, Precondition::IfMatch(_)) => return Err(precondition_failed(path)),
            _ => {}
        }
        let mut node = Node::new(Content::File(Bytes::from(data)));
        // Without a mode, a replaced file keeps its permission bits (like LocalProvider).
        let old_mode = st
            .nodes
            .get(path.as_str())
            .filter(|n| matches!(n.content, Content::File(_)))
            .map(|n| n.mode);
        if let Some(mode) = attrs.mode.or(old_mode) {
            node.mode = mode & 0o7777;
        }
        if let Some(mtime) = attrs.mtime {
            node.mtime = mtime;
        }
        let entry = node.entry(path.name());
        let existed = st.nodes.insert(path.as_str().to_string(), node).is_some();
        if !existed {
            st.touch_parent(path);
        }
        st.counters.write_bytes += len;
        Ok(entry)
    }

    async fn delete(&self, path: &RemotePath, pre: Precondition) -> Result<()> {
        tracing::debug!(%path, ?pre, "memory delete");
        let mut st = self.begin(|c| c.delete += 1)?;
        let node = st.get(path)?;
        if node.is_dir() {
            return Err(ProviderError::IsADirectory(path.clone()));
        }
        match pre {
            Precondition::None => {}
            Precondition::IfMatch(v) if node.version == v => {}
            Precondition::IfMatch(_) | Precondition::IfNotExists => {
                return Err(precondition_failed(path))
            }
        }
        st.nodes.remove(path.as_str());
        st.touch_parent(path);
        Ok(())
    }

    async fn mkdir(&self, path: &RemotePath) -> Result<RemoteEntry> {
        tracing::debug!(%path, "memory mkdir");
        let mut st = self.begin(|c| c.mkdir += 1)?;
        if st.nodes.contains_key(path.as_str()) {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        check_new_name(path)?;
        st.check_parent(path)?;
        let node = Node::new(Content::Dir);
        let entry = node.entry(path.name());
        st.nodes.insert(path.as_str().to_string(), node);
        st.touch_parent(path);
        Ok(entry)
    }

    async fn rmdir(&self, path: &RemotePath) -> Result<()> {
        tracing::debug!(%path, "memory rmdir");
        let mut st = self.begin(|c| c.rmdir += 1)?;
        if path.is_root() {
            return Err(ProviderError::NotSupported("removing the root folder"));
        }
        if !st.get(path)?.is_dir() {
            return Err(ProviderError::NotADirectory(path.clone()));
        }
        if st.has_children(path) {
            return Err(ProviderError::NotEmpty(path.clone()));
        }
        st.nodes.remove(path.as_str());
        st.touch_parent(path);
        Ok(())
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry> {
        tracing::debug!(%from, %to, replace, "memory rename");
        let mut st = self.begin(|c| c.rename += 1)?;
        if from.is_root() || to.is_root() {
            return Err(ProviderError::NotSupported(
                "renaming to or from the root folder",
            ));
        }
        check_new_name(to)?;
        if to != from && to.starts_with(from) {
            return Err(ProviderError::InvalidName {
                name: to.name().to_string(),
                reason: "cannot move a directory into itself",
            });
        }
        let src_is_dir = st.get(from)?.is_dir();
        st.check_parent(to)?;
        if let Some(dst) = st.nodes.get(to.as_str()) {
            if !replace {
                return Err(ProviderError::AlreadyExists(to.clone()));
            }
            match (src_is_dir, dst.is_dir()) {
                (true, false) => return Err(ProviderError::NotADirectory(to.clone())),
                (false, true) => return Err(ProviderError::IsADirectory(to.clone())),
                (true, true) if st.has_children(to) => {
                    return Err(ProviderError::NotEmpty(to.clone()))
                }
                _ => {}
            }
        }
        if from != to {
            st.nodes.remove(to.as_str());
            let keys = st.subtree_keys(from);
            for k in keys {
                if let Some(node) = st.nodes.remove(&k) {
                    let new_key = format!("{}{}", to.as_str(), &k[from.as_str().len()..]);
                    st.nodes.insert(new_key, node);
                }
            }
            st.touch_parent(from);
            st.touch_parent(to);
        }
        let node = st
            .nodes
            .get_mut(to.as_str())
            .ok_or_else(|| ProviderError::NotFound(to.clone()))?;
        node.version = next_version();
        Ok(node.entry(to.name()))
    }

    async fn symlink(&self, path: &RemotePath, target: &str) -> Result<RemoteEntry> {
        tracing::debug!(%path, "memory symlink");
        let mut st = self.begin(|c| c.symlink += 1)?;
        if st.nodes.contains_key(path.as_str()) {
            return Err(ProviderError::AlreadyExists(path.clone()));
        }
        check_new_name(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(ProviderError::InvalidName {
                name: path.name().to_string(),
                reason: "invalid symlink target",
            });
        }
        st.check_parent(path)?;
        let node = Node::new(Content::Symlink(target.to_string()));
        let entry = node.entry(path.name());
        st.nodes.insert(path.as_str().to_string(), node);
        st.touch_parent(path);
        Ok(entry)
    }

    async fn set_attrs(&self, path: &RemotePath, attrs: ObjectAttrs) -> Result<RemoteEntry> {
        tracing::debug!(%path, ?attrs, "memory set_attrs");
        let mut st = self.begin(|c| c.set_attrs += 1)?;
        let node = st
            .nodes
            .get_mut(path.as_str())
            .ok_or_else(|| ProviderError::NotFound(path.clone()))?;
        if let Some(mode) = attrs.mode {
            if !matches!(node.content, Content::Symlink(_)) {
                node.mode = mode & 0o7777;
            }
        }
        if let Some(mtime) = attrs.mtime {
            node.mtime = mtime;
        }
        node.version = next_version();
        Ok(node.entry(path.name()))
    }
}
