//! Bad input gets one clear error line, a non-zero exit, and changes nothing.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Every file under `p` with its size and mtime: "nothing changed" means equal.
fn snapshot(p: &Path) -> BTreeMap<String, (u64, i128)> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, p: &Path, out: &mut BTreeMap<String, (u64, i128)>) {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                let m = e.metadata().unwrap();
                let rel = e.path().strip_prefix(base).unwrap().to_string_lossy().into_owned();
                let mtime = m
                    .modified()
                    .unwrap()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as i128;
                out.insert(rel, (if m.is_dir() { 0 } else { m.len() }, mtime));
                if m.is_dir() {
                    walk(base, &e.path(), out);
                }
            }
        }
    }
    walk(p, p, &mut out);
    out
}

fn mounts() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// Runs a command expected to fail; checks exit code, one-line error, no changes.
fn fails_cleanly(data: &Path, args: &[&str], watch: &Path, expect: &str) {
    let before = (snapshot(watch), mounts());
    let out = cli(data, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one error line expected, got:\n{err}"
    );
    assert!(err.contains(expect), "error should mention {expect:?}: {err}");
    assert_eq!(before, (snapshot(watch), mounts()), "{args:?} changed something");
}

#[test]
fn bad_mount_points_are_refused_without_changes() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let missing = t.path().join("missing");
    fails_cleanly(&data, &["mount", missing.to_str().unwrap()], t.path(), "does not exist");
    assert!(!data.exists(), "a failed mount must not create the data dir");
    let full = t.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), b"x").unwrap();
    fails_cleanly(&data, &["mount", full.to_str().unwrap()], t.path(), "not empty");
    let file = t.path().join("file");
    fs::write(&file, b"x").unwrap();
    fails_cleanly(&data, &["mount", file.to_str().unwrap()], t.path(), "not a directory");
}

#[test]
fn already_mounted_and_locked_data_dir_are_refused() {
    let n = Node::start();
    // Same mount point, another data dir.
    let other = n.tmp.path().join("other-data");
    fails_cleanly(&other, &["mount", n.mnt.to_str().unwrap()], &n.data, "already mounted");
    // Same data dir, another mount point.
    let mnt2 = n.tmp.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    fails_cleanly(
        &n.data,
        &["mount", mnt2.to_str().unwrap()],
        &n.data,
        "in use by another running node",
    );
    assert!(!is_mounted(&mnt2));
}

#[test]
fn newer_format_data_dir_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("FORMAT"), "distribox-data-dir 99\n").unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    fails_cleanly(&data, &["mount", mnt.to_str().unwrap()], t.path(), "newer");
    assert!(!is_mounted(&mnt));
}

#[test]
fn commands_without_a_node_say_so() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    fails_cleanly(&data, &["status"], t.path(), "no node is running");
    fails_cleanly(&data, &["unmount", t.path().to_str().unwrap()], t.path(), "not mounted");
}

#[test]
fn corrupt_chunk_reads_as_eio_never_wrong_bytes() {
    let mut n = Node::start();
    let data = random_bytes(10_000, 99); // below the minimum chunk: exactly one chunk
    fs::write(n.path("victim"), &data).unwrap();
    fs::write(n.path("fine"), b"unrelated").unwrap();
    n.unmount();
    {
        let store = distribox::store::Store::open(&n.data.join("db")).unwrap();
        let id = distribox::model::ChunkId::of(&data);
        assert!(store.has_chunk(id).unwrap());
        let mut bad = data.clone();
        bad[5000] ^= 0xff;
        store.corrupt_chunk_for_test(id, &bad).unwrap();
    }
    n.mount();
    let err = fs::read(n.path("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(fs::read(n.path("fine")).unwrap(), b"unrelated");
    assert!(n.log().contains("hash check"), "corruption must be logged");
}
