//! `node.log`: the stderr of a node started by `distribox mount`, kept bounded.
//!
//! A node can run for months; its log must not fill the disk that also holds the
//! store (a full disk costs the user writes). Like Syncthing, we keep the current
//! file and one older one: past `ROTATE_AT` bytes the file becomes `node.log.1`
//! (replacing an older one) and the node carries on in a fresh `node.log`. The
//! check runs when a node starts and once a minute while it runs; lines written
//! between the rename and the switch land at the end of `node.log.1`, so none is
//! lost.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Size past which `node.log` is rotated. At the usual rate (a few lines per
/// mount, unmount or peer change) this is years of history.
pub const ROTATE_AT: u64 = 16 << 20;

/// How often a running node looks at its log's size.
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Where a rotated log goes: `node.log` → `node.log.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Moves `path` to `path.1` if it has grown past `limit` bytes. True if it did.
pub fn rotate_if_large(path: &Path, limit: u64) -> std::io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > limit => {
            std::fs::rename(path, rotated_path(path))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// In a node whose stderr is the file at `path`: once a minute, rotates it if it
/// is past `ROTATE_AT` (or it was deleted) and points stderr at a fresh file there.
/// Nothing happens while stderr is some other file.
pub fn keep_bounded(path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("log-rotate".into())
        .spawn(move || loop {
            std::thread::sleep(CHECK_EVERY);
            if let Err(e) = rotate_stderr(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot rotate the node log");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the log rotation thread; node.log will grow unbounded");
    }
}

fn rotate_stderr(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // Only ever touch the file stderr really is: fd 2 and `path` must be one inode.
    let fd2 = {
        // SAFETY: fstat on fd 2 into a zeroed stat buffer we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(2, &mut st) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        (st.st_dev, st.st_ino, st.st_nlink)
    };
    let reason = match std::fs::metadata(path) {
        Ok(m) if (m.dev(), m.ino()) != (fd2.0, fd2.1) => return Ok(()),
        Ok(m) if m.len() > ROTATE_AT => {
            std::fs::rename(path, rotated_path(path))?;
            "rotated"
        }
        Ok(_) => return Ok(()),
        // Removed by hand while we held it open: we were logging into a file
        // nobody can read any more.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && fd2.2 == 0 => "removed",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let fresh = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto fd 2 with a valid fd we own; fd 2 stays open throughout
    // (dup2 replaces it atomically), so concurrent writers never see it closed.
    if unsafe { libc::dup2(fresh.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    tracing::info!(path = %path.display(), reason, "node log started afresh");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_log_past_the_limit_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        assert!(!rotate_if_large(&log, 10).unwrap(), "no log yet");
        std::fs::write(&log, b"0123456789").unwrap();
        assert!(!rotate_if_large(&log, 10).unwrap());
        assert_eq!(std::fs::read(&log).unwrap(), b"0123456789");
        std::fs::write(rotated_path(&log), b"older").unwrap();
        std::fs::write(&log, b"0123456789a").unwrap();
        assert!(rotate_if_large(&log, 10).unwrap());
        assert!(!log.exists());
        assert_eq!(std::fs::read(rotated_path(&log)).unwrap(), b"0123456789a");
        assert_eq!(rotated_path(&log), dir.path().join("node.log.1"));
    }
}
