//! Retention on real nodes: `distribox gc` purges old versions' data on every
//! member, keeps what is shown, says so when a purged version is read, and a member
//! that joins later catches up past versions whose data nobody has any more.

mod common;

use common::*;
use std::fs;

fn chunk_bytes(n: &Node) -> u64 {
    n.status()["chunk_bytes"].as_u64().unwrap()
}

fn gc(n: &Node, args: &[&str]) -> String {
    let mut all = vec!["gc"];
    all.extend(args);
    let out = cli(&n.data, &all);
    assert!(out.status.success(), "gc: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn purged(n: &Node, rel: &str) -> Vec<String> {
    let out = cli(&n.data, &["versions", n.path(rel).to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    vs.iter()
        .filter(|v| v["purged"] == true)
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn gc_purges_old_versions_everywhere_and_keeps_what_is_shown() {
    let a = Node::member(None);
    let token = a.invite();
    let b = Node::member(Some(&token));
    wait_until("A and B online", PROPAGATE_SECS, || a.online_peers() == 1);
    let mut last = Vec::new();
    for i in 0..5 {
        last = random_bytes(1 << 20, i);
        fs::write(a.path("f.bin"), &last).unwrap();
    }
    wait_content(&b, "f.bin", &last);

    let dry = gc(&a, &["--keep-last", "1", "--keep-days", "0", "--dry-run"]);
    assert!(dry.contains("would purge 4 old version(s) of 1 file(s)"), "{dry}");
    let before = chunk_bytes(&a);
    let out = gc(&a, &["--keep-last", "1", "--keep-days", "0"]);
    assert!(out.contains("purged 4 old version(s)"), "{out}");
    let freed = before - chunk_bytes(&a);
    assert!(freed >= 4 << 20, "gc freed only {freed} bytes:\n{out}");

    // What is shown stays; a purged version says so.
    assert!(fs::read(a.path("f.bin")).unwrap() == last);
    let err = fs::read(a.path("f.bin@v3")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODATA), "{err}");
    assert!(a.log().contains("gc purged"), "the read is explained in the log");
    let out = cli(&a.data, &["restore", a.path("f.bin@v3").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("purged"));

    // The decision travels: B sees the same versions purged and frees the space.
    wait_until("B to learn the purge", PROPAGATE_SECS, || {
        purged(&b, "f.bin").len() == 4
    });
    assert_eq!(purged(&a, "f.bin"), purged(&b, "f.bin"));
    assert_eq!(
        fs::read(b.path("f.bin@v3")).unwrap_err().raw_os_error(),
        Some(libc::ENODATA)
    );
    let before = chunk_bytes(&b);
    gc(&b, &[]);
    assert!(before - chunk_bytes(&b) >= 4 << 20, "B's sweep freed too little");

    // A member joining now gets every record; the purged versions join without
    // data (nobody has it), and the tree is the same.
    let c = Node::member(Some(&token));
    wait_content(&c, "f.bin", &last);
    wait_same_tree(&[&a, &b, &c]);
    wait_until("C to show the purged versions", PROPAGATE_SECS, || {
        purged(&c, "f.bin").len() == 4
    });
    assert_eq!(c.status()["versions_pending"].as_u64(), Some(0));
}

/// Chunks that no version names — here, the part of a large file that background
/// chunking stored before the node was killed with the file still open — are
/// freed by the next gc, and nothing a version needs goes with them.
#[test]
fn gc_frees_chunks_of_a_write_that_never_got_a_version() {
    let mut n = Node::start_with(&["--idle-commit-ms=600000"]);
    let keep = random_bytes(1 << 20, 21);
    fs::write(n.path("keep.bin"), &keep).unwrap();
    let base = chunk_bytes(&n);

    let data = random_bytes(96 << 20, 22);
    let src = tempfile::NamedTempFile::new().unwrap();
    fs::write(src.path(), &data).unwrap();
    // The writer keeps the file open in a process of its own (see `OpenWriter`).
    let writer = OpenWriter::start(&n.path("never-closed.bin"), src.path());
    // At most 32 MiB of it waits unchunked in memory: the rest is stored already.
    wait_until("background chunking to store the open file", PROPAGATE_SECS, || {
        chunk_bytes(&n) >= base + (48 << 20)
    });
    n.kill9();
    let _ = writer.close(); // fails: the node is gone
    n.mount();
    assert!(
        read(&n, "never-closed.bin").is_none(),
        "a file never closed has no version"
    );
    let before = chunk_bytes(&n);
    assert!(
        before >= base + (16 << 20),
        "expected the chunks stored ahead to survive the kill: {before} bytes, {base} before the write"
    );

    let out = gc(&n, &[]);
    assert!(out.contains("freed"), "{out}");
    assert_eq!(chunk_bytes(&n), base, "gc left chunks no version names:\n{out}");
    assert!(fs::read(n.path("keep.bin")).unwrap() == keep, "keep.bin changed");
    let again = gc(&n, &[]);
    assert!(again.contains("freed 0 chunk(s)"), "{again}");
    n.remount();
    assert!(
        fs::read(n.path("keep.bin")).unwrap() == keep,
        "keep.bin changed after remount"
    );
}

/// Bytes of RocksDB blob files in the data dir: where chunk data sits on disk.
fn blob_file_bytes(n: &Node) -> u64 {
    fs::read_dir(n.data.join("db"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".blob"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Purged versions leave the disk, not only the index: the blob file they share
/// with data that stays is rewritten without them, and what stays reads back, also
/// after a remount.
#[test]
fn gc_gives_the_disk_space_of_purged_versions_back() {
    let mut n = Node::start();
    let keep = random_bytes(2 << 20, 31);
    fs::write(n.path("keep.bin"), &keep).unwrap();
    let mut last = Vec::new();
    for i in 0..5 {
        last = random_bytes(2 << 20, 32 + i);
        fs::write(n.path("f.bin"), &last).unwrap();
    }
    n.remount(); // flushes the memtables: all 12 MiB are in blob files now
    let before = blob_file_bytes(&n);
    assert!(
        before >= 12 << 20,
        "expected 12 MiB of blob files, found {before} bytes"
    );

    let out = gc(&n, &["--keep-last", "1", "--keep-days", "0"]);
    assert!(out.contains("purged 4 old version(s)"), "{out}");
    assert!(out.contains("in the background"), "{out}");
    wait_until("the node to give the disk space back", PROPAGATE_SECS, || {
        n.log().contains("gave the disk space of deleted chunks back")
    });
    let log = n.log();
    let line = log.lines().find(|l| l.contains("gave the disk space")).unwrap();
    // The 12 MiB went to disk in one flush (the remount), so the blob file is
    // shared: only a rewrite gives the 8 MiB back.
    assert!(line.contains("rewrote=true"), "{line}");
    let after = blob_file_bytes(&n);
    assert!(after < 5 << 20, "{after} bytes of blob files left: {line}");
    assert!(fs::read(n.path("keep.bin")).unwrap() == keep, "keep.bin changed");
    assert!(fs::read(n.path("f.bin")).unwrap() == last, "f.bin changed");

    n.remount();
    assert!(
        fs::read(n.path("keep.bin")).unwrap() == keep,
        "keep.bin changed after remount"
    );
    assert!(
        fs::read(n.path("f.bin")).unwrap() == last,
        "f.bin changed after remount"
    );
    let again = blob_file_bytes(&n);
    assert!(again < 5 << 20, "{again} bytes of blob files after a remount");
}

/// A sweep walks every kept manifest. When nothing changed since the last complete
/// sweep (no batch, and the orphan mark did not move), the next one skips the
/// walk; any change makes the one after walk again, and what it frees is freed.
#[test]
fn a_sweep_with_nothing_changed_since_the_last_skips_its_walk() {
    let mut n = Node::prepare(&[]);
    n.env.push(("RUST_LOG".into(), "info,distribox::repo::gc=debug".into()));
    n.mount();
    let skips = |n: &Node| n.log().matches("gc sweep: nothing changed since the last one").count();
    fs::write(n.path("a.bin"), random_bytes(1 << 20, 1)).unwrap();
    gc(&n, &[]);
    assert_eq!(skips(&n), 0, "the first sweep must walk");
    gc(&n, &[]);
    assert_eq!(skips(&n), 1, "nothing changed: the second sweep skips its walk");
    // Two versions of b.bin; keeping one frees the other's chunks.
    fs::write(n.path("b.bin"), random_bytes(1 << 20, 2)).unwrap();
    fs::write(n.path("b.bin"), random_bytes(1 << 20, 3)).unwrap();
    let before = chunk_bytes(&n);
    let out = gc(&n, &["--keep-last", "1", "--keep-days", "0"]);
    assert_eq!(skips(&n), 1, "a sweep after changes must walk");
    assert!(
        before - chunk_bytes(&n) >= 1 << 20,
        "the old b.bin was not freed: {out}"
    );
    // That gc's purge records were made before its sweep looked.
    gc(&n, &["--keep-last", "1", "--keep-days", "0"]);
    assert_eq!(skips(&n), 2);
    assert_eq!(fs::read(n.path("b.bin")).unwrap(), random_bytes(1 << 20, 3));
}
