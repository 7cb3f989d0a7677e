//! `fuser::Filesystem` over [`fs_core::Vfs`]. Each callback opens a `fuse` span, converts the
//! kernel's arguments to the core's types, spawns a task on the tokio runtime that awaits the
//! core and replies, and returns at once: a FUSE thread never waits for the network or the disk.
//! Callbacks whose answer does not depend on the core (`forget`, `access`, `opendir`) answer
//! inline, and so does `getxattr` (the file state is read from memory without waiting).
//!
//! Directory handles keep the listing taken by the first `readdir` (offset 0) until
//! `releasedir`, so offsets (1-based indexes) stay valid while a program deletes what it reads
//! (`rm -rf` of a large directory would skip entries with fresh listings).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use fs_core::{Attr, FileKind, FsError, NodeId, OpenFlags, RenameFlags, SetAttr, TimeSet, Vfs};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, debug_span, Instrument, Span};

use crate::errno::fuse_errno;

/// Largest write and read the kernel may send in one request.
pub(crate) const MAX_IO: u32 = 1 << 20;

/// The file system as fuser sees it: the core and the runtime its replies come from.
pub(crate) struct Adapter {
    vfs: Vfs,
    rt: Handle,
    /// Entry and attribute time-to-live in the kernel.
    ttl: Duration,
    dirs: Arc<DirHandles>,
}

impl Adapter {
    pub(crate) fn new(vfs: Vfs, rt: Handle) -> Self {
        let ttl = vfs.config().attr_timeout;
        Adapter {
            vfs,
            rt,
            ttl,
            dirs: Arc::new(DirHandles::default()),
        }
    }

    /// Runs `fut` inside `span`: first on this FUSE thread, as far as it gets without waiting
    /// (most operations are answered from memory: a lookup in a listed directory, a create, a
    /// buffered write), then, if it has to wait for the disk or the network, on the runtime.
    /// Saves thread hand-offs per request. The FUSE thread may wait for the local disk (the
    /// log's `fdatasync` on close), never for the network.
    fn spawn<F>(&self, span: Span, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut fut = Box::pin(fut.instrument(span));
        {
            // Tokio's own futures (spawn_blocking, timers, locks) need the runtime's context.
            let _rt = self.rt.enter();
            let _disk = fs_core::LocalDiskWaitAllowed::enter();
            let mut cx = Context::from_waker(Waker::noop());
            if fut.as_mut().poll(&mut cx).is_ready() {
                return;
            }
        }
        // Pending: whatever it waits for was registered with a no-op waker; the runtime polls
        // it again at once with its own, and futures keep the waker of their latest poll. If
        // the runtime is shutting down the task is dropped, and with it the reply, which
        // answers EIO on drop: the kernel is never left waiting.
        drop(self.rt.spawn(fut));
    }
}

/// The extended attribute that tells a file's state (`mountctl state` shows the same). Not
/// listed by listxattr: `cp -a`, `rsync -X` and `tar --xattrs` would copy it onto other file
/// systems.
pub const STATE_XATTR: &str = "user.syncoxide.state";

/// Answers a getxattr: the size when asked for it (`size` 0), else the value if it fits.
fn xattr_value(reply: ReplyXattr, value: &[u8], size: u32) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if size < len {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// Every fuser reply can carry an error.
trait ErrorReply {
    fn fail(self, e: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {
        $(impl ErrorReply for $t {
            fn fail(self, e: Errno) {
                self.error(e);
            }
        })*
    };
}
error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// Answers `reply` with the errno of `e`, logging it in the current span.
fn fail<R: ErrorReply>(reply: R, e: &FsError) {
    debug!(error = %e, "failed");
    reply.fail(fuse_errno(e));
}

/// A file name from the kernel as UTF-8; the core has no other kind of name.
fn utf8<R: ErrorReply>(name: &OsStr, reply: R) -> Option<(String, R)> {
    match name.to_str() {
        Some(s) => Some((s.to_string(), reply)),
        None => {
            fail(reply, &FsError::InvalidName);
            None
        }
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
    }
}

/// The core's attributes as the kernel's.
pub(crate) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// open(2) flags as the core's.
pub(crate) fn open_flags(flags: i32) -> OpenFlags {
    let acc = flags & libc::O_ACCMODE;
    OpenFlags {
        read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
        write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
        append: flags & libc::O_APPEND != 0,
        truncate: flags & libc::O_TRUNC != 0,
        exclusive: flags & libc::O_EXCL != 0,
    }
}

fn fopen_flags(o: &fs_core::Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    f
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    }
}

/// One line of a directory listing: `.`, `..` and the children, in the order of their
/// offsets (the 1-based index of the entry: the kernel asks for what follows an offset).
struct Listed {
    attr: Attr,
    name: String,
}

type Listing = Arc<Vec<Listed>>;

/// Open directories and the listing each is reading.
#[derive(Default)]
struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Listing>>,
}

impl DirHandles {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Listing>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn release(&self, fh: u64) {
        self.map().remove(&fh);
    }

    /// The listing `fh` reads: a fresh one at offset 0 (opendir or rewinddir), else the one
    /// taken then.
    async fn listing(
        &self,
        vfs: &Vfs,
        ino: NodeId,
        fh: u64,
        offset: u64,
    ) -> Result<Listing, FsError> {
        if offset > 0 {
            if let Some(l) = self.map().get(&fh) {
                return Ok(l.clone());
            }
        }
        let l = Arc::new(listing(vfs, ino).await?);
        self.map().insert(fh, l.clone());
        Ok(l)
    }
}

/// The listing of `ino` with `.` and `..` first.
async fn listing(vfs: &Vfs, ino: NodeId) -> Result<Vec<Listed>, FsError> {
    let entries = vfs.readdir(ino).await?;
    let dot = vfs.getattr(ino).await?;
    let parent = vfs.parent_of(ino);
    let dotdot = if parent == ino {
        dot
    } else {
        vfs.getattr(parent).await.unwrap_or(dot)
    };
    let mut out = Vec::with_capacity(entries.len() + 2);
    out.push(Listed {
        attr: dot,
        name: ".".into(),
    });
    out.push(Listed {
        attr: dotdot,
        name: "..".into(),
    });
    out.extend(entries.into_iter().map(|e| Listed {
        attr: e.attr,
        name: e.name,
    }));
    Ok(out)
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Not FUSE_WRITEBACK_CACHE: the core must see every write to make close and fsync
        // durable. Async reads and big writes are fuser's defaults.
        for (name, flag) in [
            ("readdirplus", InitFlags::FUSE_DO_READDIRPLUS),
            ("readdirplus_auto", InitFlags::FUSE_READDIRPLUS_AUTO),
            ("async_read", InitFlags::FUSE_ASYNC_READ),
            ("big_writes", InitFlags::FUSE_BIG_WRITES),
            ("atomic_o_trunc", InitFlags::FUSE_ATOMIC_O_TRUNC),
        ] {
            if let Err(missing) = config.add_capabilities(flag) {
                debug!(
                    capability = name,
                    ?missing,
                    "kernel lacks a FUSE capability"
                );
            }
        }
        if let Err(max) = config.set_max_write(MAX_IO) {
            debug!(max, "kernel refuses 1 MiB writes; using its largest");
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            // The kernel offers 128 KiB; more is set through the bdi after mounting.
            debug!(max, "kernel caps readahead at init");
            let _ = config.set_max_readahead(max);
        }
        debug!(abi = ?config.kernel_abi(), "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let span = debug_span!("fuse", op = "lookup", ino = parent.0, ?name);
        let Some((name, reply)) = utf8(name, reply) else {
            return;
        };
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.spawn(span, async move {
            match vfs.lookup(NodeId(parent.0), &name).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(a.generation)),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Node ids live as long as the namespace; nothing to count.
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let span = debug_span!("fuse", op = "getattr", ino = ino.0);
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.spawn(span, async move {
            match vfs.getattr(NodeId(ino.0)).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let span = debug_span!(
            "fuse",
            op = "setattr",
            ino = ino.0,
            ?mode,
            ?uid,
            ?gid,
            ?size,
            ?atime,
            ?mtime
        );
        let set = SetAttr {
            size,
            mode,
            uid,
            gid,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.spawn(span, async move {
            match vfs.setattr(NodeId(ino.0), set).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let span = debug_span!("fuse", op = "readlink", ino = ino.0);
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.readlink(NodeId(ino.0)).await {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        // Without FUSE_DONT_MASK the kernel has already applied the umask to `mode`.
        let span = debug_span!("fuse", op = "mkdir", ino = parent.0, ?name, mode);
        let Some((name, reply)) = utf8(name, reply) else {
            return;
        };
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.spawn(span, async move {
            match vfs.mkdir(NodeId(parent.0), &name, mode).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(a.generation)),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let span = debug_span!("fuse", op = "unlink", ino = parent.0, ?name);
        let Some((name, reply)) = utf8(name, reply) else {
            return;
        };
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.unlink(NodeId(parent.0), &name).await {
                Ok(()) => reply.ok(),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let span = debug_span!("fuse", op = "rmdir", ino = parent.0, ?name);
        let Some((name, reply)) = utf8(name, reply) else {
            return;
        };
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.rmdir(NodeId(parent.0), &name).await {
                Ok(()) => reply.ok(),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let span = debug_span!("fuse", op = "symlink", ino = parent.0, name = ?link_name, ?target);
        let Some((name, reply)) = utf8(link_name, reply) else {
            return;
        };
        let Some((target, reply)) = utf8(target.as_os_str(), reply) else {
            return;
        };
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.spawn(span, async move {
            match vfs.symlink(NodeId(parent.0), &name, &target).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(a.generation)),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let span = debug_span!(
            "fuse", op = "rename", ino = parent.0, ?name, newparent = newparent.0, ?newname, %flags
        );
        let Some((name, reply)) = utf8(name, reply) else {
            return;
        };
        let Some((newname, reply)) = utf8(newname, reply) else {
            return;
        };
        if flags.contains(fuser::RenameFlags::RENAME_WHITEOUT) {
            // Only overlayfs asks for whiteouts; this drive has no device nodes to make one.
            fail(reply, &FsError::InvalidArgument);
            return;
        }
        let flags = RenameFlags {
            no_replace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            let r = vfs
                .rename(
                    NodeId(parent.0),
                    &name,
                    NodeId(newparent.0),
                    &newname,
                    flags,
                )
                .await;
            match r {
                Ok(()) => reply.ok(),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let span = debug_span!(
            "fuse",
            op = "link",
            ino = ino.0,
            newparent = newparent.0,
            ?newname
        );
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.spawn(span, async move {
            match vfs.link().await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(a.generation)),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: fuser::OpenFlags, reply: ReplyOpen) {
        let span = debug_span!("fuse", op = "open", ino = ino.0, flags = flags.0);
        let flags = open_flags(flags.0);
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.open(NodeId(ino.0), flags).await {
                Ok(o) => reply.opened(FileHandle(o.fh), fopen_flags(&o)),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let span = debug_span!("fuse", op = "read", ino = ino.0, fh = fh.0, offset, size);
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.read(fh.0, offset, size).await {
                Ok(b) => reply.data(&b),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let span = debug_span!(
            "fuse",
            op = "write",
            ino = ino.0,
            fh = fh.0,
            offset,
            size = data.len()
        );
        // The request buffer is reused by the FUSE thread as soon as this returns.
        let data = data.to_vec();
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let span = debug_span!("fuse", op = "flush", ino = ino.0, fh = fh.0);
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.flush(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let span = debug_span!("fuse", op = "release", ino = ino.0, fh = fh.0);
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    // close(2) has returned already; the kernel drops this error.
                    tracing::warn!(error = %e, "release failed");
                    fail(reply, &e);
                }
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let span = debug_span!("fuse", op = "fsync", ino = ino.0, fh = fh.0, datasync);
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        let _span = debug_span!("fuse", op = "opendir", ino = ino.0).entered();
        reply.opened(FileHandle(self.dirs.open()), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let span = debug_span!("fuse", op = "readdir", ino = ino.0, fh = fh.0, offset);
        let (vfs, dirs) = (self.vfs.clone(), self.dirs.clone());
        self.spawn(span, async move {
            let all = match dirs.listing(&vfs, NodeId(ino.0), fh.0, offset).await {
                Ok(l) => l,
                Err(e) => return fail(reply, &e),
            };
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, e) in all.iter().enumerate().skip(skip) {
                let full = reply.add(
                    INodeNo(e.attr.ino.0),
                    i as u64 + 1,
                    kind(e.attr.kind),
                    &e.name,
                );
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let span = debug_span!("fuse", op = "readdirplus", ino = ino.0, fh = fh.0, offset);
        let (vfs, ttl, dirs) = (self.vfs.clone(), self.ttl, self.dirs.clone());
        self.spawn(span, async move {
            let all = match dirs.listing(&vfs, NodeId(ino.0), fh.0, offset).await {
                Ok(l) => l,
                Err(e) => return fail(reply, &e),
            };
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, e) in all.iter().enumerate().skip(skip) {
                // The kernel caches these attributes: take them now, not from the listing,
                // and leave out what is gone since (the offsets stay those of the listing).
                let attr = if i < 2 {
                    e.attr
                } else {
                    match vfs.getattr(e.attr.ino).await {
                        Ok(a) => a,
                        Err(_) => continue,
                    }
                };
                let full = reply.add(
                    INodeNo(attr.ino.0),
                    i as u64 + 1,
                    &e.name,
                    &ttl,
                    &file_attr(&attr),
                    Generation(attr.generation),
                );
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every namespace change is durable in the core's log before it is answered.
        let _span = debug_span!("fuse", op = "fsyncdir", ino = ino.0).entered();
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let span = debug_span!("fuse", op = "statfs", ino = ino.0);
        let vfs = self.vfs.clone();
        self.spawn(span, async move {
            match vfs.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.blocks_free,
                    s.blocks_free,
                    s.files,
                    s.files_free,
                    s.block_size,
                    s.name_max,
                    s.block_size,
                ),
                Err(e) => fail(reply, &e),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = debug_span!("fuse", op = "setxattr", ino = ino.0, ?name).entered();
        reply.error(Errno::ENOTSUP);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // One attribute, computed from the core's state without waiting: answered inline (the
        // kernel asks for security.capability before every write). No other is stored.
        let _span = debug_span!("fuse", op = "getxattr", ino = ino.0, ?name, size).entered();
        if name.as_encoded_bytes() != STATE_XATTR.as_bytes() {
            reply.error(Errno::ENODATA);
            return;
        }
        match self.vfs.file_state(NodeId(ino.0)) {
            Ok(state) => xattr_value(reply, state.name().as_bytes(), size),
            Err(e) => fail(reply, &e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = debug_span!("fuse", op = "listxattr", ino = ino.0, size).entered();
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = debug_span!("fuse", op = "removexattr", ino = ino.0, ?name).entered();
        reply.error(Errno::ENODATA);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks modes itself and rarely asks.
        let _span = debug_span!("fuse", op = "access", ino = ino.0, %mask).entered();
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let span = debug_span!("fuse", op = "create", ino = parent.0, ?name, mode, flags);
        let Some((name, reply)) = utf8(name, reply) else {
            return;
        };
        let flags = open_flags(flags);
        let (vfs, ttl) = (self.vfs.clone(), self.ttl);
        self.spawn(span, async move {
            match vfs.create(NodeId(parent.0), &name, mode, flags).await {
                Ok((a, o)) => reply.created(
                    &ttl,
                    &file_attr(&a),
                    Generation(a.generation),
                    FileHandle(o.fh),
                    fopen_flags(&o),
                ),
                Err(e) => fail(reply, &e),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_follow_the_access_mode() {
        let r = open_flags(libc::O_RDONLY);
        assert!(r.read && !r.write && !r.append && !r.truncate);
        let w = open_flags(libc::O_WRONLY | libc::O_TRUNC);
        assert!(!w.read && w.write && w.truncate);
        let rw = open_flags(libc::O_RDWR | libc::O_APPEND);
        assert!(rw.read && rw.write && rw.append);
        assert!(open_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL).exclusive);
    }

    #[test]
    fn attributes_convert() {
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = Attr {
            ino: NodeId(7),
            kind: FileKind::Symlink,
            size: 12,
            blocks: 1,
            atime: t,
            mtime: t,
            ctime: t,
            perm: 0o777,
            nlink: 1,
            uid: 1000,
            gid: 100,
            generation: 3,
        };
        let f = file_attr(&a);
        assert_eq!(f.ino, INodeNo(7));
        assert_eq!(f.kind, FileType::Symlink);
        assert_eq!((f.size, f.blocks, f.perm, f.nlink), (12, 1, 0o777, 1));
        assert_eq!((f.uid, f.gid, f.blksize), (1000, 100, 4096));
        assert_eq!(f.mtime, t);
    }
}
