//! A full disk gives the writer ENOSPC, loses no committed version, and the node works
//! again once space is freed. The data dir lives on a small tmpfs (needs root).

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::process::Command;

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A node whose data dir is on a fresh 48 MiB tmpfs (dropped in reverse order:
/// the node unmounts before the tmpfs goes).
fn node_on_a_small_disk() -> (tempfile::TempDir, Tmpfs, Node) {
    let t = tempfile::tempdir().unwrap();
    let small = t.path().join("small");
    fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs needs root");
    let tmpfs = Tmpfs(small.clone());
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let n = Node {
        tmp: tempfile::tempdir().unwrap(),
        data: small.join("node"),
        mnt,
        extra: vec!["--no-net".into()],
        env: vec![],
        open_files: None,
        pid: None,
    };
    (t, tmpfs, n)
}

#[test]
fn full_disk_gives_enospc_and_recovers() {
    let (_t, _tmpfs, mut n) = node_on_a_small_disk();
    n.mount();
    fs::write(n.path("keep.txt"), b"committed before the disk filled").unwrap();
    let keep_big = random_bytes(8 << 20, 1);
    fs::write(n.path("keep.bin"), &keep_big).unwrap();
    // Fill the disk.
    let mut f = fs::File::create(n.path("filler")).unwrap();
    let block = random_bytes(1 << 20, 2);
    let mut err = None;
    for i in 0..200u64 {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        if let Err(e) = f.write_all(&b) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a 48 MiB disk must fill up");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    // Committed versions are intact.
    assert_eq!(
        fs::read(n.path("keep.txt")).unwrap(),
        b"committed before the disk filled"
    );
    assert!(fs::read(n.path("keep.bin")).unwrap() == keep_big);
    // Free the space: the node works again. The filler's unsaved writes are dropped
    // when its handle is released, and the kernel sends RELEASE after close(2)
    // returned, so the space may come back a moment after the unlink (one full run
    // of the suite got ENOSPC here).
    fs::remove_file(n.path("filler")).unwrap();
    wait_until("a new file can be written once the filler's space is back", 10, || {
        fs::write(n.path("after.txt"), b"written after freeing space").is_ok()
    });
    let more = random_bytes(4 << 20, 3);
    fs::write(n.path("after.bin"), &more).unwrap();
    n.remount();
    assert_eq!(
        fs::read(n.path("keep.txt")).unwrap(),
        b"committed before the disk filled"
    );
    assert!(fs::read(n.path("keep.bin")).unwrap() == keep_big);
    assert_eq!(fs::read(n.path("after.txt")).unwrap(), b"written after freeing space");
    assert!(fs::read(n.path("after.bin")).unwrap() == more);
    n.unmount();
}

/// Free bytes on the disk holding `p`.
fn free_bytes(p: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes into a zeroed struct we own; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// Filled with committed files, the disk is won back through the mount: the files
/// are deleted, `distribox gc --only-deleted` lets their versions (and only theirs)
/// go, their space returns and a new file fits. The store itself never meets the
/// full disk (a RocksDB flush that did stopped every later write, the deletes
/// included, until restart).
#[test]
fn deleting_files_and_gc_win_a_full_disk_back() {
    let (_t, _tmpfs, mut n) = node_on_a_small_disk();
    n.mount();
    let first = random_bytes(1 << 20, 10);
    fs::write(n.path("keep.bin"), &first).unwrap();
    let keep = random_bytes(4 << 20, 11);
    fs::write(n.path("keep.bin"), &keep).unwrap();
    let mut written = Vec::new();
    let mut full = None;
    for i in 0..20u64 {
        let name = format!("old{i}.bin");
        match fs::write(n.path(&name), random_bytes(4 << 20, 100 + i)) {
            Ok(()) => written.push(name),
            Err(e) => {
                full = Some(e);
                let _ = fs::remove_file(n.path(&name));
                break;
            }
        }
    }
    let full = full.expect("a 48 MiB disk must fill up");
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    assert!(written.len() >= 3, "only {} files fit", written.len());

    for name in &written {
        fs::remove_file(n.path(name)).unwrap_or_else(|e| panic!("rm {name} on a full disk: {e}"));
    }
    let small = n.data.parent().unwrap().to_path_buf();
    let out = cli(
        &n.data,
        &["gc", "--only-deleted", "--keep-last", "0", "--keep-days", "0"],
    );
    assert!(out.status.success(), "gc: {}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let files: usize = out
        .split(" file(s)")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no file count in: {out}"));
    // The file whose write failed was created, and deleted again, too.
    assert!(files >= written.len(), "{out}");
    wait_until("the deleted files' space to come back", 30, || {
        n.log().contains("gave the disk space of deleted chunks back")
    });
    assert!(free_bytes(&small) >= 20 << 20, "{} bytes free", free_bytes(&small));

    // Only deleted files' versions went: keep.bin's history is whole.
    assert!(fs::read(n.path("keep.bin@v1")).unwrap() == first, "keep.bin@v1 changed");
    let after = random_bytes(12 << 20, 12);
    fs::write(n.path("after.bin"), &after).unwrap();
    n.remount();
    assert!(fs::read(n.path("keep.bin")).unwrap() == keep, "keep.bin changed");
    assert!(fs::read(n.path("after.bin")).unwrap() == after, "after.bin changed");
    n.unmount();
}
