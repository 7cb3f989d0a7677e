//! What is mounted where, from `/proc/self/mountinfo`: whether a directory is a mount point,
//! and whether that mount is a syncoxide FUSE mount (possibly left behind by a dead process).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The FUSE file-system name syncoxide mounts with (`fsname`, the "source" column).
pub const FSNAME: &str = "syncoxide";

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// A FUSE mount made by syncoxide.
    pub fn is_ours(&self) -> bool {
        let fuse = self.fstype == "fuse" || self.fstype.starts_with("fuse.");
        fuse && (self.source == FSNAME
            || self.source.starts_with("syncoxide:")
            || self.fstype == "fuse.syncoxide")
    }
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    l.next()?.parse::<u64>().ok()?; // the mount id
    let mount_point = unescape(l.nth(3)?);
    let mut r = right.split(' ');
    let fstype = r.next()?.to_string();
    let source = String::from_utf8_lossy(&unescape_bytes(r.next()?)).into_owned();
    Some(MountEntry {
        mount_point,
        fstype,
        source,
    })
}

/// The kernel writes space, tab, newline and backslash in paths as `\\ooo` octal escapes.
fn unescape(s: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_bytes(s)))
}

fn unescape_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Everything mounted, as this process sees it.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount at `path` (the last one listed there), if `path` is a mount point. `path`
/// must be absolute and canonical (or, for a dead FUSE mount, absolute and lexically clean).
pub fn mount_at(path: &Path) -> std::io::Result<Option<MountEntry>> {
    Ok(read()?.into_iter().rfind(|e| e.mount_point == path))
}

/// Unmounts `path` by its path alone (a mount whose process died): `fusermount3 -u`, else
/// `fusermount -u`, else `umount`; with `lazy`, detached even while files are open (`-z`,
/// `-l`). Returns the tool that did it.
pub fn force_unmount(path: &Path, lazy: bool) -> anyhow::Result<&'static str> {
    let mut errors = Vec::new();
    let (fm, um): (&[&str], &[&str]) = if lazy {
        (&["-uz"], &["-l"])
    } else {
        (&["-u"], &[])
    };
    for (tool, args) in [("fusermount3", fm), ("fusermount", fm), ("umount", um)] {
        match std::process::Command::new(tool)
            .args(args)
            .arg(path)
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => return Ok(tool),
            Ok(o) => errors.push(format!(
                "{tool}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{tool}: {e}")),
        }
        if !matches!(mount_at(path), Ok(Some(_))) {
            return Ok(tool);
        }
    }
    anyhow::bail!(
        "cannot unmount {} ({}); close the files open there and try again",
        path.display(),
        if errors.is_empty() {
            "neither fusermount3 nor umount is installed".to_string()
        } else {
            errors.join("; ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 22 0:45 / /mnt/my\\040drive rw,nosuid,nodev,relatime shared:20 - fuse syncoxide rw,user_id=0,group_id=0
37 22 0:46 / /mnt/other rw,relatime - fuse.sshfs host:/x rw
38 22 0:47 / /tmp rw - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn parses_and_unescapes() {
        let v = parse(SAMPLE);
        assert_eq!(v.len(), 4);
        assert_eq!(v[1].mount_point, PathBuf::from("/mnt/my drive"));
        assert_eq!(v[1].fstype, "fuse");
        assert_eq!(v[1].source, "syncoxide");
        assert!(v[1].is_ours());
        assert!(!v[2].is_ours());
        assert!(!v[3].is_ours());
        assert_eq!(unescape("a\\134b\\011"), PathBuf::from("a\\b\t"));
        assert_eq!(unescape("trailing\\04"), PathBuf::from("trailing\\04"));
    }

    #[test]
    fn the_root_is_a_mount_point() {
        assert!(mount_at(Path::new("/")).unwrap().is_some());
    }
}
