//! A running mount, start to end: open the cache, the provider and the drive, mount it, answer
//! on the control socket, register, report readiness, then wait for SIGTERM, SIGINT, SIGHUP, an
//! `unmount` request, or the kernel unmounting it from outside (`fusermount3 -u`, `umount`).
//!
//! Shutting down: after a signal or an outside unmount the queue is flushed first, for at most
//! [`SHUTDOWN_FLUSH`] (whatever the provider does not take stays in the write-ahead log for the
//! next mount); after an `unmount` request the client has flushed already. Then the drive is
//! unmounted, a checkpoint saved, the socket and the registry entry removed, and the process
//! exits. An unmount that fails (files still open) is reported to the requester and the mount
//! keeps running; after a signal the mount is detached lazily instead (`umount -l`), and the
//! files still open lose it when the process ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use cache::{CacheConfig, CacheLimit, ChunkCache, KdfParams, Passphrase};
use fs_core::provider::local::LocalProvider;
use fs_core::provider::s3::S3Provider;
use fs_core::provider::sftp::SftpProvider;
use fs_core::provider::webdav::WebDavProvider;
use fs_core::provider::Provider;
use fs_core::Vfs;
use serde_json::json;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, Notify};

use crate::control::{self, UnmountRequest};
use crate::daemon::Ready;
use crate::plan::{MountPlan, PlanRemote};
use crate::{mountinfo, registry};

/// Longest a signal or an outside unmount waits for the queue to drain.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(30);
/// ... and how long it waits without progress before giving up sooner.
const SHUTDOWN_STALL: Duration = Duration::from_secs(5);

/// Serves `plan` until it is unmounted. Errors before readiness mean nothing stays mounted.
pub fn run(plan: &MountPlan, passphrase: String, ready: &mut Ready) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("syncoxide-rt")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    // The uploader and its provider calls run on threads of lower priority (nice +10): when
    // the CPU is busy, requests of programs on the mount come first and uploads take the rest.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("syncoxide-upload")
        .on_thread_start(|| {
            // Linux: the calling thread only.
            if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
                tracing::debug!(error = %e, "could not lower the priority of an upload thread");
            }
        })
        .enable_all()
        .build()
        .context("cannot start the upload runtime")?;
    let r = serve(&rt, &background, plan, passphrase, ready);
    // Uploads still running are cut off; the write-ahead log keeps them for the next mount.
    background.shutdown_timeout(Duration::from_secs(2));
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

/// Nice value of the upload threads.
const BACKGROUND_NICE: i32 = 10;

fn serve(
    rt: &tokio::runtime::Runtime,
    background: &tokio::runtime::Runtime,
    plan: &MountPlan,
    passphrase: String,
    ready: &mut Ready,
) -> Result<()> {
    let _entered = rt.enter();

    let limit = CacheLimit {
        max_bytes: plan.cache_size,
        min_free_bytes: 0,
    };
    let cache = ChunkCache::open(
        CacheConfig::new(&plan.cache_dir, limit),
        &Passphrase::new(passphrase, KdfParams::DEFAULT),
    )
    .with_context(|| format!("cannot open the cache in {}", plan.cache_dir.display()))?;
    let provider: Arc<dyn Provider> = match &plan.remote {
        PlanRemote::Local(folder) => Arc::new(
            LocalProvider::new(folder.clone())
                .map_err(|e| anyhow!("cannot use the remote folder {}: {e}", folder.display()))?,
        ),
        PlanRemote::S3 {
            bucket,
            prefix,
            options,
            ..
        } => {
            let cfg = crate::plan::s3_config(bucket, prefix, options, plan.request_timeout)?;
            Arc::new(S3Provider::new(cfg).map_err(|e| anyhow!("{e}"))?)
        }
        PlanRemote::WebDav {
            url,
            user,
            password,
        } => {
            let cfg = crate::plan::webdav_config(
                url,
                user.as_deref(),
                password.as_ref(),
                plan.request_timeout,
            );
            Arc::new(WebDavProvider::new(cfg).map_err(|e| anyhow!("{e}"))?)
        }
        PlanRemote::Sftp {
            user,
            host,
            port,
            path,
            key,
            known_hosts,
        } => {
            let cfg = crate::plan::sftp_config(
                user,
                host,
                *port,
                path,
                key,
                known_hosts.as_deref(),
                plan.request_timeout,
            );
            Arc::new(SftpProvider::new(cfg).map_err(|e| anyhow!("{e}"))?)
        }
    };
    let vfs = Vfs::new(plan.vfs_config(), Arc::new(cache), provider).map_err(|e| {
        anyhow!(
            "cannot open the drive's saved state in {}: {e}",
            plan.cache_dir.display()
        )
    })?;
    vfs.set_background(background.handle().clone());
    let _uploader = vfs.spawn_uploader();
    let _poller = vfs.spawn_poller();

    let mut signals = Signals::new()?;
    let opts = fs_unix::MountOptions {
        allow_other: plan.allow_other,
        read_only: plan.read_only,
        fsname: format!(
            "{}:{}:{}",
            mountinfo::FSNAME,
            plan.remote.kind(),
            plan.remote.display()
        ),
        threads: 2,
    };
    let mounted = fs_unix::mount(vfs.clone(), rt.handle().clone(), &plan.mountpoint, &opts)
        .map_err(|e| anyhow!("{e}"))?;
    // Dropping the guard (an error below) unmounts.
    let mounted = MountGuard(Some(Arc::new(mounted)));
    let gone = Arc::new(Notify::new());
    let waiter = {
        let (m, gone) = (mounted.get().clone(), gone.clone());
        std::thread::Builder::new()
            .name("syncoxide-wait".into())
            .spawn(move || {
                m.wait();
                gone.notify_one();
            })
            .context("cannot start a thread")?
    };

    let socket = plan.socket();
    let _ = std::fs::remove_file(&socket); // left by a crash; the cache lock says it is ours
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot create the control socket {}", socket.display()))?;
    let _socket = RemoveOnDrop(socket.clone());
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", socket.display()))?;
    let entry = registry::Entry {
        mountpoint: plan.mountpoint.clone(),
        cache_dir: plan.cache_dir.clone(),
        remote: plan.remote.display(),
        pid: std::process::id(),
    };
    let mount_json = json!({
        "mountpoint": plan.mountpoint.to_string_lossy(),
        "remote": plan.remote.display(),
        "cache_dir": plan.cache_dir.to_string_lossy(),
        "pid": entry.pid,
    });
    let (unmount_tx, mut unmount_rx) = mpsc::channel::<UnmountRequest>(4);
    let server = rt.spawn(control::serve(
        listener,
        vfs.clone(),
        mount_json,
        unmount_tx,
    ));
    let registration = registry::register(&entry)?;

    ready.ready(&format!(
        "mounted {} on {}",
        plan.remote.display(),
        plan.mountpoint.display()
    ));

    let mut detached_lazily = false;
    let request = loop {
        let why = rt.block_on(wait(&mut signals, &mut unmount_rx, &gone));
        let request = match why {
            Why::Request(r) => Some(r),
            Why::Signal(name) => {
                tracing::info!("{name}: flushing, then unmounting");
                flush_bounded(rt, &vfs);
                None
            }
            Why::Gone => {
                tracing::info!("unmounted from outside: flushing, then stopping");
                flush_bounded(rt, &vfs);
                break None;
            }
        };
        match mounted.get().request_unmount() {
            Ok(()) => break request,
            Err(e) => {
                let msg = format!("cannot unmount {}: {e}", plan.mountpoint.display());
                tracing::error!("{msg}");
                match request {
                    // Still mounted: say why and keep serving.
                    Some(r) => drop(r.answer(control::failure(msg))),
                    None => {
                        // Told to stop: detach now; the files still open lose their mount
                        // when this process ends.
                        tracing::warn!("detaching lazily; files still open lose the mount");
                        if let Err(e) = mountinfo::force_unmount(&plan.mountpoint, true) {
                            tracing::error!("{e:#}");
                        }
                        detached_lazily = true;
                        break None;
                    }
                }
            }
        }
    };
    if detached_lazily {
        // The session ends only once the open files are closed: do not wait for it.
        mounted.abandon();
    } else {
        let _ = waiter.join();
        mounted.finish();
    }
    if let Err(e) = vfs.checkpoint() {
        tracing::error!("cannot save a checkpoint (the write-ahead log keeps everything): {e}");
    }
    server.abort();
    drop(registration);
    let _ = std::fs::remove_file(&socket);
    if let Some(r) = request {
        let written = r.answer(json!({"ok": true}));
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(2), written.notified()).await;
        });
    }
    tracing::info!("stopped");
    Ok(())
}

enum Why {
    Request(UnmountRequest),
    Signal(&'static str),
    Gone,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        let s = |k| signal(k).context("cannot install a signal handler");
        Ok(Signals {
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
            hup: s(SignalKind::hangup())?,
        })
    }
}

async fn wait(
    signals: &mut Signals,
    requests: &mut mpsc::Receiver<UnmountRequest>,
    gone: &Notify,
) -> Why {
    tokio::select! {
        Some(r) = requests.recv() => Why::Request(r),
        _ = signals.term.recv() => Why::Signal("SIGTERM"),
        _ = signals.int.recv() => Why::Signal("SIGINT"),
        _ = signals.hup.recv() => Why::Signal("SIGHUP"),
        () = gone.notified() => Why::Gone,
    }
}

fn flush_bounded(rt: &tokio::runtime::Runtime, vfs: &Vfs) {
    let r = rt.block_on(tokio::time::timeout(
        SHUTDOWN_FLUSH,
        vfs.flush_all(SHUTDOWN_STALL),
    ));
    let queued = vfs.status().queued;
    match r {
        Ok(Ok(())) => tracing::info!("everything uploaded"),
        Ok(Err(e)) => tracing::warn!(
            "the provider cannot be reached ({e}): {queued} operations stay queued in the write-ahead log and will be uploaded by the next mount"
        ),
        Err(_) => tracing::warn!(
            "flushing took longer than {} s: {queued} operations stay queued in the write-ahead log and will be uploaded by the next mount",
            SHUTDOWN_FLUSH.as_secs()
        ),
    }
}

/// Owns the mount; dropping it before [`MountGuard::finish`] (an error path) unmounts.
struct MountGuard(Option<Arc<fs_unix::Mounted>>);

impl MountGuard {
    fn get(&self) -> &Arc<fs_unix::Mounted> {
        self.0.as_ref().expect("the mount is held until finish")
    }

    /// Lets go of the mount without unmounting it again.
    fn abandon(mut self) {
        self.0.take();
    }

    /// After the session has ended: reaps the session thread.
    fn finish(mut self) {
        if let Some(m) = self.0.take() {
            match Arc::try_unwrap(m) {
                Ok(m) => {
                    if let Err(e) = m.unmount() {
                        tracing::warn!("after the unmount: {e}");
                    }
                }
                Err(_) => tracing::warn!("the mount is still referenced; not reaping its session"),
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            if let Err(e) = m.request_unmount() {
                tracing::error!("cannot unmount: {e}");
            }
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
