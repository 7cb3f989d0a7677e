//! The registry of running mounts, so that `unmount`, `status` and `flush` find a mount's control
//! socket from its mount point: one file per mount,
//! `RUNTIME/syncoxide/mounts/HASH.json` holding `{mountpoint, cache_dir, remote, pid}`, HASH being
//! the short hash of the canonical mount point. RUNTIME is `$XDG_RUNTIME_DIR`, else
//! `/tmp/syncoxide-UID` (created 0700 and refused if another user owns it). The running mount
//! writes its file once it is ready and removes it when it exits; a file whose process is gone
//! is stale and removed by whoever finds it.
//!
//! The control socket itself lives at `CACHE_DIR/control.sock`: the cache directory is private
//! (0700) and locked by the running mount, so only its owner reaches it and no two mounts can
//! race for it.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::remote::short_hash;

/// Name of the control socket inside the cache directory.
pub const SOCKET_NAME: &str = "control.sock";

/// A registered mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    /// The remote as the user wrote it (a folder, `s3://…`).
    pub remote: String,
    pub pid: u32,
}

impl Entry {
    pub fn socket(&self) -> PathBuf {
        control_socket(&self.cache_dir)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mountpoint": self.mountpoint.to_string_lossy(),
            "cache_dir": self.cache_dir.to_string_lossy(),
            "remote": self.remote,
            "pid": self.pid,
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<Entry> {
        let path = |k: &str| v.get(k)?.as_str().map(PathBuf::from);
        Some(Entry {
            mountpoint: path("mountpoint")?,
            cache_dir: path("cache_dir")?,
            remote: v
                .get("remote")
                .and_then(|r| r.as_str())
                .unwrap_or_default()
                .to_string(),
            pid: u32::try_from(v.get("pid")?.as_u64()?).ok()?,
        })
    }
}

/// Where the control socket of the mount using `cache_dir` listens.
pub fn control_socket(cache_dir: &Path) -> PathBuf {
    cache_dir.join(SOCKET_NAME)
}

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A directory only we may use: created 0700, or checked to be ours and not a symlink.
fn private_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
    let md =
        fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    if !md.is_dir() || md.uid() != uid() {
        bail!(
            "{} is not a directory owned by you; remove it, or set XDG_RUNTIME_DIR to a private directory",
            path.display()
        );
    }
    Ok(())
}

/// `RUNTIME/syncoxide/mounts`, created when `create`.
pub fn mounts_dir(create: bool) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => {
            let b = PathBuf::from(format!("/tmp/syncoxide-{}", uid()));
            if create {
                private_dir(&b)?;
            }
            b
        }
    };
    let dir = base.join("syncoxide").join("mounts");
    if create {
        fs::create_dir_all(base.join("syncoxide"))
            .with_context(|| format!("cannot create {}", base.join("syncoxide").display()))?;
        private_dir(&base.join("syncoxide"))?;
        private_dir(&dir)?;
    }
    Ok(dir)
}

fn entry_path(dir: &Path, mountpoint: &Path) -> PathBuf {
    dir.join(format!(
        "{}.json",
        short_hash(mountpoint.as_os_str().as_bytes())
    ))
}

/// Writes the entry (atomically, mode 0600). The returned guard removes it when dropped.
pub fn register(entry: &Entry) -> Result<Registration> {
    let dir = mounts_dir(true)?;
    let path = entry_path(&dir, &entry.mountpoint);
    let tmp = dir.join(format!(".{}.tmp", entry.pid));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    writeln!(f, "{}", entry.to_json())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Registration { path })
}

/// Removes the registry file when dropped.
pub struct Registration {
    path: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn read_entry(path: &Path) -> Option<Entry> {
    let text = fs::read_to_string(path).ok()?;
    Entry::from_json(&serde_json::from_str(&text).ok()?)
}

/// The entry registered for `mountpoint` (canonical), if any.
pub fn find(mountpoint: &Path) -> Result<Option<Entry>> {
    let dir = mounts_dir(false)?;
    Ok(read_entry(&entry_path(&dir, mountpoint)).filter(|e| e.mountpoint == mountpoint))
}

/// Every registered mount, sorted by mount point.
pub fn list() -> Result<Vec<Entry>> {
    let dir = mounts_dir(false)?;
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut v: Vec<Entry> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().as_bytes().ends_with(b".json"))
        .filter_map(|e| read_entry(&e.path()))
        .collect();
    v.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(v)
}

/// Removes the entry of `mountpoint` (a stale one, found by someone else).
pub fn remove(mountpoint: &Path) {
    if let Ok(dir) = mounts_dir(false) {
        let _ = fs::remove_file(entry_path(&dir, mountpoint));
    }
}

/// Whether process `pid` still runs (a zombie does not: it has released everything).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain anything.
        Ok(s) => match s.rfind(')') {
            Some(i) => !matches!(s[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_json() {
        let e = Entry {
            mountpoint: "/mnt/a b".into(),
            cache_dir: "/c/local-1".into(),
            remote: "/data".into(),
            pid: 42,
        };
        assert_eq!(Entry::from_json(&e.to_json()), Some(e.clone()));
        assert_eq!(e.socket(), PathBuf::from("/c/local-1/control.sock"));
        assert_eq!(Entry::from_json(&serde_json::json!({"pid": 1})), None);
    }

    #[test]
    fn liveness() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }
}
