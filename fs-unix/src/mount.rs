//! Mounting: checks that say what to fix before fuser is asked, the session on background
//! threads, kernel readahead, and unmounting.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use fs_core::Vfs;
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tokio::runtime::Handle;

use crate::adapter::Adapter;
use crate::invalidate::FuseInvalidator;

/// Kernel readahead asked for after mounting, in KiB (the kernel offers 128 KiB at init).
const READ_AHEAD_KB: u32 = 4096;

/// Unmount attempts while the mount point is busy: a file closed just before may still be
/// held for a moment (by a child process between fork and exec, for one).
const UNMOUNT_TRIES: u32 = 10;
const UNMOUNT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

fn is_busy(e: &MountError) -> bool {
    matches!(e, MountError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
}

/// How to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Let users other than the one mounting in (needs `user_allow_other` in /etc/fuse.conf
    /// when not root).
    pub allow_other: bool,
    /// Mount read-only (the kernel refuses writes with EROFS).
    pub read_only: bool,
    /// The source shown in `mount` and /proc/mounts, e.g. `syncoxide:local:/srv`. Commas are
    /// replaced by `_` (they separate mount options); empty means `syncoxide`.
    pub fsname: String,
    /// FUSE worker threads reading requests from the kernel (at least 1). They only decode
    /// and hand requests to the runtime, so few are needed.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            read_only: false,
            fsname: "syncoxide".to_string(),
            threads: 2,
        }
    }
}

/// Why mounting or unmounting failed, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {} does not exist: create the directory first (mkdir -p)", path.display())]
    MountpointMissing { path: PathBuf },
    #[error("mount point {} is not a directory: choose an empty directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "{} is already a mount point (or a dead FUSE mount): unmount it first with \
         `fusermount3 -u {}` or `umount {}`",
        path.display(), path.display(), path.display()
    )]
    AlreadyMounted { path: PathBuf },
    #[error("FUSE is not available: {reason}")]
    FuseUnavailable { reason: String },
    #[error("{op} {}: {source}{}", path.display(), hint(source))]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A suggestion for the common I/O failures of mounting and unmounting.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBUSY) => {
            " (files are still open under the mount point: close them, or detach lazily \
             with `umount -l`)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (not permitted: mount as root, install fuse3 for fusermount3, or for \
             allow_other set user_allow_other in /etc/fuse.conf)"
        }
        _ => "",
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let path = path.to_path_buf();
    move |source| MountError::Io { op, path, source }
}

/// How the session ended, for whoever waits.
#[derive(Default)]
struct SessionState {
    ended: Mutex<bool>,
    cv: Condvar,
}

impl SessionState {
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self) {
        *self.lock() = true;
        self.cv.notify_all();
    }

    fn ended(&self) -> bool {
        *self.lock()
    }

    fn wait(&self) {
        let mut ended = self.lock();
        while !*ended {
            ended = self.cv.wait(ended).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A live mount, served on background threads until it is unmounted. Dropping it (without
/// [`Mounted::unmount`]) unmounts, lazily if files are still open under it.
pub struct Mounted {
    mountpoint: PathBuf,
    /// fuser's own unmount (umount(2) as root, `fusermount3 -u` otherwise); it can be used
    /// once, after which the commands are used.
    unmounter: Mutex<Option<SessionUnmounter>>,
    /// An unmount succeeded (the session ends shortly).
    unmounted: AtomicBool,
    state: Arc<SessionState>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .field("ended", &self.state.ended())
            .finish()
    }
}

impl Mounted {
    /// Where it is mounted (canonical path).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (umount(2) as root, `fusermount3 -u` otherwise) and waits for the session to
    /// end. Fails with EBUSY (as [`MountError::Io`]) while files are open under the mount
    /// point; the mount then stays mounted and served (the session thread lives on until the
    /// kernel lets go: retry by path with `fusermount3 -u` / `umount`, or use
    /// [`Mounted::request_unmount`], which does not consume the handle, to retry with it).
    /// Not as root, fuser detaches lazily instead (`fusermount3 -u -z`): that does not fail
    /// while busy, and this then waits until the last file under the mount point is closed.
    pub fn unmount(mut self) -> Result<(), MountError> {
        if let Err(e) = self.request_unmount() {
            // Detach the session thread so that dropping `self` leaves the mount alone.
            drop(self.thread.take());
            return Err(e);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Ok(())
    }

    /// Asks the kernel to unmount without consuming `self` (e.g. from a signal-handling thread
    /// while another one is in [`Mounted::wait`]); the session then ends and `wait` returns.
    /// Ok if the session has ended or was unmounted already. While the mount point is busy it
    /// retries for half a second, then fails with EBUSY and can be called again.
    pub fn request_unmount(&self) -> Result<(), MountError> {
        let mut busy = None;
        for attempt in 0..UNMOUNT_TRIES {
            if attempt > 0 {
                std::thread::sleep(UNMOUNT_RETRY);
            }
            if self.state.ended() || self.unmounted.load(Ordering::SeqCst) {
                return Ok(());
            }
            let first = self
                .unmounter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let r = match first {
                Some(mut u) => u.unmount().map_err(io_err("unmount", &self.mountpoint)),
                None => unmount_command(&self.mountpoint, false),
            };
            match r {
                Ok(()) => {
                    self.unmounted.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                Err(e) if is_busy(&e) => busy = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(busy.unwrap_or_else(|| MountError::Io {
            op: "unmount",
            path: self.mountpoint.clone(),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        }))
    }

    /// Blocks until the session ends: after [`Mounted::request_unmount`], or when someone ran
    /// `fusermount3 -u` or `umount` on the mount point. `self` stays usable (call
    /// [`Mounted::unmount`] afterwards to reap the session thread; it is then a no-op).
    pub fn wait(&self) {
        self.state.wait();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        match self.request_unmount() {
            Ok(()) => {
                let _ = thread.join();
            }
            Err(e) => {
                tracing::warn!(error = %e, "unmount failed; detaching lazily");
                if let Err(e) = unmount_command(&self.mountpoint, true) {
                    tracing::warn!(error = %e, "lazy unmount failed");
                }
                // The session thread ends by itself once the kernel lets go.
            }
        }
    }
}

/// Unmounts with the system's commands: `fusermount3 -u` (works for root too), else
/// `umount`; `lazy` detaches even while busy.
fn unmount_command(path: &Path, lazy: bool) -> Result<(), MountError> {
    let mut cmd = if let Some(fm) = fusermount_bin() {
        let mut c = Command::new(fm);
        c.arg(if lazy { "-uz" } else { "-u" });
        c
    } else {
        let mut c = Command::new("umount");
        if lazy {
            c.arg("-l");
        }
        c
    };
    cmd.arg("--").arg(path);
    let out = cmd.output().map_err(io_err("unmount", path))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let kind = if stderr.contains("busy") {
        io::Error::from_raw_os_error(libc::EBUSY)
    } else {
        io::Error::other(stderr)
    };
    Err(MountError::Io {
        op: "unmount",
        path: path.to_path_buf(),
        source: kind,
    })
}

/// `fusermount3` (or `fusermount`) as fuser would find it: `$FUSERMOUNT_PATH`, then `$PATH`.
fn fusermount_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["fusermount3", "fusermount"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            let exec = std::fs::metadata(&candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if exec {
                return Some(candidate);
            }
        }
    }
    None
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One line of /proc/self/mountinfo: the device (`major:minor`) and the mount point.
fn mount_entries() -> Vec<(String, PathBuf)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?.to_string();
            let point = f.nth(1)?;
            Some((dev, PathBuf::from(unescape_mountinfo(point))))
        })
        .collect()
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let esc = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = esc {
            let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The checks before mounting, each with its own error. Returns the canonical mount point.
fn check(mountpoint: &Path) -> Result<PathBuf, MountError> {
    let md = match std::fs::metadata(mountpoint) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::MountpointMissing {
                path: mountpoint.to_path_buf(),
            })
        }
        // A FUSE mount whose daemon died answers ENOTCONN ("transport endpoint is not
        // connected").
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError::AlreadyMounted {
                path: mountpoint.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err("stat", mountpoint)(e)),
    };
    if !md.is_dir() {
        return Err(MountError::NotADirectory {
            path: mountpoint.to_path_buf(),
        });
    }
    let canon = mountpoint
        .canonicalize()
        .map_err(io_err("canonicalize", mountpoint))?;
    let listed = mount_entries().iter().any(|(_, p)| *p == canon);
    let other_dev = match canon.parent() {
        Some(parent) => {
            std::fs::metadata(parent)
                .map_err(io_err("stat", parent))?
                .dev()
                != md.dev()
        }
        None => true, // "/" is always a mount point
    };
    if listed || other_dev {
        return Err(MountError::AlreadyMounted { path: canon });
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::FuseUnavailable {
            reason: "/dev/fuse is missing: load the module (modprobe fuse) or, in a \
                     container, pass the device in (--device /dev/fuse)"
                .into(),
        });
    }
    if !is_root() {
        if fusermount_bin().is_none() {
            return Err(MountError::FuseUnavailable {
                reason: "fusermount3 is not on PATH: install fuse3 (apt install fuse3), or \
                         mount as root"
                    .into(),
            });
        }
        // fuser opens /dev/fuse itself before it falls back to fusermount3, so a user who
        // cannot open it cannot mount, even though fusermount3 could.
        let open = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse");
        if let Err(e) = open {
            return Err(MountError::FuseUnavailable {
                reason: format!(
                    "/dev/fuse cannot be opened ({e}): make it usable by everyone \
                     (chmod 0666 /dev/fuse, the usual default) or mount as root"
                ),
            });
        }
    }
    Ok(canon)
}

/// Raises the kernel's readahead of the mount to [`READ_AHEAD_KB`] (best effort).
fn raise_readahead(mountpoint: &Path) {
    // The bdi of a FUSE mount is named after its device number, which mountinfo gives without
    // a FUSE request (a stat of the mount point would be one).
    let Some((dev, _)) = mount_entries()
        .into_iter()
        .rev()
        .find(|(_, p)| p == mountpoint)
    else {
        tracing::debug!(mountpoint = %mountpoint.display(), "mount not in mountinfo");
        return;
    };
    let file = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&file, READ_AHEAD_KB.to_string()) {
        Ok(()) => tracing::debug!(%file, kb = READ_AHEAD_KB, "kernel readahead raised"),
        Err(e) => tracing::debug!(%file, error = %e, "could not raise kernel readahead"),
    }
}

/// Mounts `vfs` at `mountpoint` and serves it on background threads; replies are answered
/// from tasks on `rt`, so `rt` must keep running while mounted (a multi-thread runtime). It
/// blocks briefly for the kernel's handshake and needs nothing from `rt` meanwhile; prefer
/// calling it (and [`Mounted::wait`] / [`Mounted::unmount`]) outside the runtime's workers.
///
/// Before mounting it checks that the mount point exists, is a directory and is not a mount
/// point already, that /dev/fuse exists, and, when not root, that `fusermount3` is on PATH.
/// The kernel is asked for `default_permissions` (it checks modes against the uid/gid the
/// core reports), `noatime`, subtype `syncoxide`, and `ro`/`allow_other` as asked. Kernel
/// notifications of the core go through a thread of their own.
pub fn mount(
    vfs: Vfs,
    rt: Handle,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<Mounted, MountError> {
    let canon = check(mountpoint)?;
    let fsname = if opts.fsname.is_empty() {
        "syncoxide".to_string()
    } else {
        opts.fsname.replace(',', "_")
    };
    let mut options = vec![
        MountOption::FSName(fsname),
        // Not `MountOption::Subtype`: fuser drops it on the mount(2) path (root), where the
        // kernel takes `subtype=` in the mount data itself; fusermount3 reads the same option.
        MountOption::CUSTOM("subtype=syncoxide".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    options.push(if opts.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;

    let adapter = Adapter::new(vfs.clone(), rt);
    // Mounts and completes the INIT handshake: when it returns the mount is live.
    let mut session = Session::new(adapter, &canon, &config).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound && !Path::new("/dev/fuse").exists() {
            MountError::FuseUnavailable {
                reason: format!("{e}: /dev/fuse is missing"),
            }
        } else {
            io_err("mount", &canon)(e)
        }
    })?;
    let unmounter = session.unmount_callable();
    let invalidator = match FuseInvalidator::start(session.notifier()) {
        Ok(i) => i,
        Err(e) => {
            let _ = session.unmount();
            return Err(io_err("start the notifier thread for", &canon)(e));
        }
    };
    vfs.set_invalidator(invalidator.clone());

    let state = Arc::new(SessionState::default());
    let st = state.clone();
    let path = canon.clone();
    let thread = std::thread::Builder::new()
        .name("syncoxide-fuse".into())
        .spawn(move || {
            match session.run() {
                Ok(()) => tracing::info!(mountpoint = %path.display(), "unmounted"),
                Err(e) => {
                    tracing::error!(mountpoint = %path.display(), error = %e, "FUSE session failed")
                }
            }
            invalidator.stop();
            st.finish();
        })
        .map_err(io_err("start the FUSE session for", &canon))?;
    tracing::info!(mountpoint = %canon.display(), threads = opts.threads.max(1), "mounted");
    raise_readahead(&canon);
    Ok(Mounted {
        mountpoint: canon,
        unmounter: Mutex::new(Some(unmounter)),
        unmounted: AtomicBool::new(false),
        state,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y\011"), "/x\\y\t");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn root_is_in_mountinfo() {
        assert!(mount_entries().iter().any(|(_, p)| p == Path::new("/")));
    }

    #[test]
    fn missing_and_file_mount_points() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert!(matches!(
            check(&missing),
            Err(MountError::MountpointMissing { .. })
        ));
        let file = d.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            check(&file),
            Err(MountError::NotADirectory { .. })
        ));
        assert!(matches!(
            check(Path::new("/")),
            Err(MountError::AlreadyMounted { .. })
        ));
    }

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Mounted>();
        send_sync::<MountError>();
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = MountError::AlreadyMounted {
            path: "/mnt/x".into(),
        };
        assert!(e.to_string().contains("fusermount3 -u /mnt/x"));
        let e = MountError::Io {
            op: "unmount",
            path: "/mnt/x".into(),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(e.to_string().contains("umount -l"), "{e}");
    }
}
