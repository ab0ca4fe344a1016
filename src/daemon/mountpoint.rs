//! Checks on a mount point before anything is changed: it must exist, be a directory,
//! be empty, and not already be a mount point.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountpointError {
    #[error("mount point {0} does not exist; create it first (mkdir -p {0})")]
    Missing(PathBuf),
    #[error("mount point {0} is not a directory")]
    NotDir(PathBuf),
    #[error("mount point {0} is not empty; Distribox mounts only on an empty directory")]
    NotEmpty(PathBuf),
    #[error("{0} is already mounted; unmount it first (distribox unmount {0})")]
    AlreadyMounted(PathBuf),
    #[error("mount point {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Validates `dir` and returns its canonical path.
pub fn check_mountpoint(dir: &Path) -> Result<PathBuf, MountpointError> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MountpointError::Missing(dir.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountpointError::AlreadyMounted(dir.to_path_buf()))
        }
        Err(source) => {
            return Err(MountpointError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(MountpointError::NotDir(dir.to_path_buf()));
    }
    let canon = std::fs::canonicalize(dir).map_err(|source| MountpointError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if is_mounted(&canon) {
        return Err(MountpointError::AlreadyMounted(canon));
    }
    let mut rd = std::fs::read_dir(&canon).map_err(|source| MountpointError::Io {
        path: canon.clone(),
        source,
    })?;
    if rd.next().is_some() {
        return Err(MountpointError::NotEmpty(canon));
    }
    Ok(canon)
}

/// True if `path` (canonical) is a mount point in /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*want))
}

/// The "major:minor" device of the mount at `path` (canonical), from mountinfo.
pub fn mount_device(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*want))
        .and_then(|l| l.split(' ').nth(2).map(str::to_owned))
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn rejects_missing_file_and_nonempty() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_mountpoint(&t.path().join("nope")),
            Err(MountpointError::Missing(_))
        ));
        std::fs::write(t.path().join("f"), b"x").unwrap();
        assert!(matches!(
            check_mountpoint(&t.path().join("f")),
            Err(MountpointError::NotDir(_))
        ));
        assert!(matches!(check_mountpoint(t.path()), Err(MountpointError::NotEmpty(_))));
        std::fs::remove_file(t.path().join("f")).unwrap();
        assert!(check_mountpoint(t.path()).is_ok());
    }
}
