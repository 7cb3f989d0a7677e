//! The client side of `unmount`, `flush` and `status`: find the running mount of a mount point
//! through the registry, talk to its control socket, show flush progress, wait for the mount's
//! process to end, and clear stale FUSE mounts whose process died.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::control::{self, CallError, Request};
use crate::registry::{self, Entry};
use crate::{mountinfo, units};

/// How long a status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unmount request (unmount and checkpoint) may take, and then the process's exit.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The mount point as the registry knows it: canonical, or, when it cannot be resolved (a FUSE
/// mount whose process died answers ENOTCONN), absolute.
pub fn resolve_mountpoint(p: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(p) {
        Ok(c) => Ok(c),
        Err(_) => {
            std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
        }
    }
}

/// The running mount on `mountpoint`, if its process is there to answer. A registry entry whose
/// process is gone is removed.
pub fn find_running(mountpoint: &Path) -> Result<Option<Entry>> {
    let Some(e) = registry::find(mountpoint)? else {
        return Ok(None);
    };
    if registry::process_alive(e.pid) && e.socket().exists() {
        return Ok(Some(e));
    }
    registry::remove(mountpoint);
    Ok(None)
}

/// `find_running`, or a message saying there is no such mount.
pub fn require_running(mountpoint: &Path) -> Result<Entry> {
    match find_running(mountpoint)? {
        Some(e) => Ok(e),
        None => bail!(
            "no running syncoxide mount on {}; `mountctl status` lists the running mounts",
            mountpoint.display()
        ),
    }
}

fn call(e: &Entry, req: &Request, timeout: Option<Duration>) -> Result<Value> {
    control::call(&e.socket(), req, timeout).with_context(|| {
        format!(
            "cannot reach the mount on {} (process {})",
            e.mountpoint.display(),
            e.pid
        )
    })
}

/// A mount's status: the mount's description and the core's figures in one flat object.
pub fn status(e: &Entry) -> Result<Value> {
    let v = call(e, &Request::Status, Some(STATUS_TIMEOUT))?;
    if let Some(err) = control::error_of(&v) {
        bail!("{err}");
    }
    let mut out = v["mount"].as_object().cloned().unwrap_or_default();
    if let Some(s) = v["status"].as_object() {
        out.extend(s.clone());
    }
    Ok(Value::Object(out))
}

/// The conflicts a mount resolved since it started, each with the mount's `mountpoint`.
pub fn conflicts(e: &Entry) -> Result<Vec<Value>> {
    let v = call(e, &Request::Conflicts, Some(STATUS_TIMEOUT))?;
    if let Some(err) = control::error_of(&v) {
        bail!("{err}");
    }
    let mp = e.mountpoint.display().to_string();
    Ok(v["conflicts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            c["mountpoint"] = Value::String(mp.clone());
            c
        })
        .collect())
}

/// The running mount that holds `path`, and the path relative to its root.
pub fn mount_of(path: &Path) -> Result<(Entry, String)> {
    let abs =
        std::fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    let mut best: Option<Entry> = None;
    for e in running()? {
        if abs.starts_with(&e.mountpoint)
            && best
                .as_ref()
                .is_none_or(|b| e.mountpoint.as_os_str().len() > b.mountpoint.as_os_str().len())
        {
            best = Some(e);
        }
    }
    let Some(e) = best else {
        bail!(
            "{} is not on a running syncoxide mount (see `mountctl status`)",
            path.display()
        );
    };
    let rel = abs
        .strip_prefix(&e.mountpoint)
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((e, rel))
}

/// Sends a pin/unpin/state request; the per-path results.
pub fn per_path(e: &Entry, req: &Request) -> Result<Vec<Value>> {
    let v = call(e, req, None)?;
    if let Some(err) = control::error_of(&v) {
        bail!("{err}");
    }
    Ok(v["results"].as_array().cloned().unwrap_or_default())
}

/// How a flush ended.
#[derive(Debug)]
pub enum Flushed {
    /// The queue is empty: the provider has everything.
    All,
    /// The queue stopped shrinking for the stall limit.
    Stuck { queued: u64, error: String },
}

/// Flushes the mount's queue. With `progress`, the queued count is shown on stderr, updated in
/// place, while it goes down.
pub fn flush(e: &Entry, stall: Duration, progress: bool) -> Result<Flushed> {
    let (tx, rx) = std::sync::mpsc::channel();
    let entry = e.clone();
    std::thread::spawn(move || {
        let _ = tx.send(call(&entry, &Request::Flush { stall }, None));
    });
    let mut shown = false;
    let answer = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => break r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if progress {
                    if let Ok(s) = status(e) {
                        let mut err = std::io::stderr();
                        let _ = write!(
                            err,
                            "\r\x1b[Kuploading: {} operations queued, {} in flight, {} dirty",
                            s["queued"],
                            s["in_flight"],
                            units::human(s["dirty_bytes"].as_u64().unwrap_or(0))
                        );
                        let _ = err.flush();
                        shown = true;
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the flush request ended without an answer")
            }
        }
    };
    if shown {
        eprint!("\r\x1b[K");
    }
    let v = answer?;
    if control::error_of(&v).is_none() {
        return Ok(Flushed::All);
    }
    let queued = v["queued"].as_u64().unwrap_or(0);
    let error = v["last_error"]
        .as_str()
        .or(control::error_of(&v))
        .unwrap_or("no progress")
        .to_string();
    Ok(Flushed::Stuck { queued, error })
}

/// Whether to show progress: stderr is a terminal.
pub fn show_progress() -> bool {
    std::io::stderr().is_terminal()
}

/// Asks the mount to unmount and stop, then waits for its process to end.
pub fn unmount(e: &Entry) -> Result<()> {
    let v = match control::call(&e.socket(), &Request::Unmount, Some(UNMOUNT_TIMEOUT)) {
        Ok(v) => v,
        // It stopped between our look and our request: the unmount happened.
        Err(CallError::NotRunning(_)) if !registry::process_alive(e.pid) => return Ok(()),
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "cannot ask the mount on {} to unmount",
                    e.mountpoint.display()
                )
            })
        }
    };
    if let Some(err) = control::error_of(&v) {
        bail!("{err}");
    }
    let start = Instant::now();
    while registry::process_alive(e.pid) {
        if start.elapsed() > EXIT_TIMEOUT {
            bail!(
                "{} is unmounted, but its process {} has not ended after {} s",
                e.mountpoint.display(),
                e.pid,
                EXIT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Unmounts a mount no running process owns: a syncoxide FUSE mount left behind. Returns the
/// tool that unmounted it.
pub fn unmount_stale(mountpoint: &Path) -> Result<&'static str> {
    match mountinfo::mount_at(mountpoint).context("cannot read /proc/self/mountinfo")? {
        Some(m) if m.is_ours() => mountinfo::force_unmount(mountpoint, false),
        Some(m) => bail!(
            "{} is mounted, but not by syncoxide ({} from {}); unmount it with umount",
            mountpoint.display(),
            m.fstype,
            m.source
        ),
        None => bail!(
            "nothing is mounted on {}; `mountctl status` lists the running mounts",
            mountpoint.display()
        ),
    }
}

/// Every registered mount whose process still runs (stale entries are removed).
pub fn running() -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in registry::list()? {
        if registry::process_alive(e.pid) {
            out.push(e);
        } else {
            registry::remove(&e.mountpoint);
        }
    }
    Ok(out)
}
