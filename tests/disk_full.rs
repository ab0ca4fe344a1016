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

#[test]
fn full_disk_gives_enospc_and_recovers() {
    let t = tempfile::tempdir().unwrap();
    let small = t.path().join("small");
    fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs needs root");
    let _tmpfs = Tmpfs(small.clone());
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut n = Node {
        tmp: tempfile::tempdir().unwrap(),
        data: small.join("node"),
        mnt: mnt.clone(),
        extra: vec!["--no-net".into()],
        env: vec![],
        pid: None,
    };
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
    // Free the space: the node works again.
    fs::remove_file(n.path("filler")).unwrap();
    fs::write(n.path("after.txt"), b"written after freeing space").unwrap();
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
