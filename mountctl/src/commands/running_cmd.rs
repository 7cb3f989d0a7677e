//! `mountctl unmount`, `flush` and `status`: requests to running mounts, and their output.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::client::{self, Flushed};
use crate::units::human;

pub fn unmount(mountpoint: &Path, stall: Duration) -> Result<()> {
    let mp = client::resolve_mountpoint(mountpoint)?;
    let Some(entry) = client::find_running(&mp)? else {
        let tool = client::unmount_stale(&mp)?;
        println!(
            "unmounted {} with {tool}: no running mount owned it (changes not yet uploaded stay queued in its cache and are uploaded by the next mount)",
            mp.display()
        );
        return Ok(());
    };
    let flushed = client::flush(&entry, stall, client::show_progress())?;
    client::unmount(&entry)?;
    match flushed {
        Flushed::All => {
            println!("unmounted {}: everything is uploaded", mp.display());
            Ok(())
        }
        Flushed::Stuck { queued, error } => bail!(
            "unmounted {}, but the provider cannot be reached: {queued} operations stay queued in the write-ahead log and will be uploaded by the next mount (last error: {error})",
            mp.display()
        ),
    }
}

pub fn flush(mountpoint: &Path, stall: Duration) -> Result<()> {
    let mp = client::resolve_mountpoint(mountpoint)?;
    let entry = client::require_running(&mp)?;
    match client::flush(&entry, stall, client::show_progress())? {
        Flushed::All => {
            println!("{}: everything is uploaded", mp.display());
            Ok(())
        }
        Flushed::Stuck { queued, error } => bail!(
            "the provider cannot be reached: {queued} operations stay queued in the write-ahead log and are retried (last error: {error})"
        ),
    }
}

/// Paths on one mount: as the user gave them, and relative to the mount's root.
type MountPaths = (crate::registry::Entry, Vec<(String, String)>);

/// The paths grouped by the mount that holds them (in the order given).
fn by_mount(paths: &[std::path::PathBuf]) -> Result<Vec<MountPaths>> {
    let mut groups: Vec<MountPaths> = Vec::new();
    for p in paths {
        let (e, rel) = client::mount_of(p)?;
        let shown = p.display().to_string();
        match groups
            .iter_mut()
            .find(|(g, _)| g.mountpoint == e.mountpoint)
        {
            Some((_, v)) => v.push((shown, rel)),
            None => groups.push((e, vec![(shown, rel)])),
        }
    }
    Ok(groups)
}

/// Sends one per-path request (made by `req` from the paths relative to their mount) to each
/// mount that holds some of `paths`; prints each success with `ok`, each failure on stderr.
/// Returns how many failed.
fn per_path(
    paths: &[std::path::PathBuf],
    req: impl Fn(Vec<String>) -> crate::control::Request,
    ok: impl Fn(&str, &Value),
) -> Result<usize> {
    let mut failed = 0;
    for (e, items) in by_mount(paths)? {
        let r = req(items.iter().map(|(_, r)| r.clone()).collect());
        for ((shown, _), r) in items.iter().zip(client::per_path(&e, &r)?) {
            if r["ok"] == Value::Bool(true) {
                ok(shown, &r);
            } else {
                failed += 1;
                eprintln!(
                    "mountctl: {shown}: {}",
                    r["error"].as_str().unwrap_or("failed")
                );
            }
        }
    }
    Ok(failed)
}

pub fn pin(paths: &[std::path::PathBuf], pin: bool) -> Result<()> {
    let what = if pin { "pinned" } else { "unpinned" };
    let failed = per_path(
        paths,
        |paths| crate::control::Request::Pin { paths, pin },
        |shown, r| {
            let (files, bytes) = (
                r["files"].as_u64().unwrap_or(0),
                r["bytes"].as_u64().unwrap_or(0),
            );
            println!("{shown}: {what} ({files} files, {})", human(bytes));
        },
    )?;
    if failed > 0 {
        bail!("{failed} of {} paths could not be {what}", paths.len());
    }
    Ok(())
}

pub fn state(paths: &[std::path::PathBuf]) -> Result<()> {
    let failed = per_path(
        paths,
        |paths| crate::control::Request::State { paths },
        |shown, r| println!("{shown}: {}", r["state"].as_str().unwrap_or("?")),
    )?;
    if failed > 0 {
        bail!("{failed} of {} paths have no state", paths.len());
    }
    Ok(())
}

pub fn conflicts(mountpoint: Option<&Path>, json: bool) -> Result<()> {
    let entries = match mountpoint {
        Some(m) => vec![client::require_running(&client::resolve_mountpoint(m)?)?],
        None => client::running()?,
    };
    let mut all = Vec::new();
    for e in &entries {
        all.extend(client::conflicts(e)?);
    }
    if json {
        println!("{}", Value::Array(all));
        return Ok(());
    }
    if all.is_empty() {
        println!("no conflicts");
    }
    for c in &all {
        let path = c["path"].as_str().unwrap_or("?");
        let mp = c["mountpoint"].as_str().unwrap_or("?");
        let line = match (c["copy"].as_str(), c["winner"].as_str()) {
            (Some(copy), Some("local")) => {
                format!("{path}: the local version won; the remote one is saved as {copy}")
            }
            (Some(copy), _) => {
                format!("{path}: the remote version stays; the local one is saved as {copy}")
            }
            (None, Some("local")) => {
                format!("{path}: the local version won; the remote one was deleted (--conflict-loser delete)")
            }
            (None, _) => {
                format!("{path}: the remote version stays; the local one was deleted (--conflict-loser delete)")
            }
        };
        println!("{mp}: {line}");
    }
    Ok(())
}

pub fn status(mountpoint: Option<&Path>, json: bool) -> Result<()> {
    if let Some(m) = mountpoint {
        let mp = client::resolve_mountpoint(m)?;
        let s = client::status(&client::require_running(&mp)?)?;
        if json {
            println!("{s}");
        } else {
            print_status(&s);
        }
        return Ok(());
    }
    let mut all = Vec::new();
    for e in client::running()? {
        match client::status(&e) {
            Ok(s) => all.push(s),
            Err(err) => eprintln!("mountctl: {}: {err:#}", e.mountpoint.display()),
        }
    }
    if json {
        println!("{}", Value::Array(all));
    } else if all.is_empty() {
        println!("no syncoxide mounts are running");
    } else {
        for (i, s) in all.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print_status(s);
        }
    }
    Ok(())
}

fn print_status(s: &Value) {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let t = |k: &str| s[k].as_str().unwrap_or("?").to_string();
    println!("{}", t("mountpoint"));
    println!("  remote:      {}", t("remote"));
    println!(
        "  cache:       {} of {} used, in {}",
        human(n("cache_used_bytes")),
        human(n("cache_limit_bytes")),
        t("cache_dir")
    );
    println!(
        "  dirty:       {} ({} pinned)",
        human(n("dirty_bytes")),
        human(n("pinned_bytes"))
    );
    println!(
        "  queue:       {} operations queued, {} uploads in flight",
        n("queued"),
        n("in_flight")
    );
    println!(
        "  transfers:   {} files uploaded ({}), {} chunks fetched ({}), {} conflicts",
        n("uploads"),
        human(n("uploaded_bytes")),
        n("fetches"),
        human(n("fetched_bytes")),
        n("conflicts")
    );
    if let Some(since) = s["offline_since"].as_u64() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(since);
        println!("  offline:     for {} s", now.saturating_sub(since));
    }
    println!(
        "  last error:  {}",
        s["last_error"].as_str().unwrap_or("none")
    );
    println!("  process:     {}", n("pid"));
}
