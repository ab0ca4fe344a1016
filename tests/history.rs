//! Versions: `name@vN` reads, the log, editor-style saves keeping history.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

fn log_of(n: &Node, rel: &str) -> String {
    let out = cli(&n.data, &["log", n.path(rel).to_str().unwrap()]);
    assert!(
        out.status.success(),
        "log failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn old_versions_are_readable_and_read_only() {
    let n = Node::start();
    fs::write(n.path("notes.txt"), b"first").unwrap(); // v1
    fs::write(n.path("notes.txt"), b"second").unwrap();
    assert_eq!(fs::read(n.path("notes.txt")).unwrap(), b"second");
    let log = log_of(&n, "notes.txt");
    let versions: Vec<&str> = log.lines().skip(1).collect();
    assert_eq!(versions.len(), 2, "log:\n{log}");
    // Find the version holding "first" by its size (5 bytes).
    let v_first = versions
        .iter()
        .find(|l| l.split_whitespace().nth(3) == Some("5"))
        .expect("a 5-byte version");
    let name = format!("notes.txt@{}", v_first.split_whitespace().next().unwrap());
    assert_eq!(fs::read(n.path(&name)).unwrap(), b"first");
    // Not listed, read-only, unknown versions are ENOENT.
    let listed: Vec<String> = fs::read_dir(&n.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, vec!["notes.txt"], "history is not listed");
    let err = fs::OpenOptions::new().write(true).open(n.path(&name)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // A truncating read-only open too (the kernel would show it empty otherwise).
    let err = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(n.path(&name))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::read(n.path(&name)).unwrap(), b"first");
    assert_eq!(
        fs::read(n.path("notes.txt@v999")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    // A real file called x@v1 wins over history lookup of x.
    fs::write(n.path("other@v1"), b"real").unwrap();
    fs::write(n.path("other"), b"history").unwrap();
    assert_eq!(fs::read(n.path("other@v1")).unwrap(), b"real");
}

#[test]
fn editor_style_save_keeps_the_targets_history() {
    let n = Node::start();
    fs::write(n.path("doc.md"), b"draft one").unwrap();
    let before = log_of(&n, "doc.md").lines().count();
    // What vim/gedit/rsync do: write a temp file, rename it over the target.
    fs::write(n.path(".doc.md.swp"), b"draft two").unwrap();
    fs::rename(n.path(".doc.md.swp"), n.path("doc.md")).unwrap();
    assert_eq!(fs::read(n.path("doc.md")).unwrap(), b"draft two");
    let log = log_of(&n, "doc.md");
    assert_eq!(
        log.lines().count(),
        before + 1,
        "one more version of the same entry:\n{log}"
    );
    let v_old = log
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(3) == Some("9") && !l.contains("current"))
        .unwrap();
    let gen = v_old.split_whitespace().next().unwrap();
    // The latest version is the new content; the older one still reads "draft one".
    let contents: Vec<Vec<u8>> = log
        .lines()
        .skip(1)
        .map(|l| fs::read(n.path(&format!("doc.md@{}", l.split_whitespace().next().unwrap()))).unwrap_or_default())
        .collect();
    assert!(contents.contains(&b"draft one".to_vec()), "{gen}");
    assert_eq!(contents.last().unwrap(), b"draft two");
}

#[test]
fn versions_and_tree_survive_remount() {
    let mut n = Node::start();
    fs::create_dir(n.path("dir")).unwrap();
    fs::write(n.path("dir/a"), b"v-one").unwrap();
    fs::write(n.path("dir/a"), b"v-two").unwrap();
    let data = random_bytes(1 << 20, 11);
    fs::write(n.path("dir/big"), &data).unwrap();
    std::os::unix::fs::symlink("a", n.path("dir/ln")).unwrap();
    let log_before = log_of(&n, "dir/a");
    n.remount();
    assert_eq!(fs::read(n.path("dir/a")).unwrap(), b"v-two");
    assert_eq!(fs::read(n.path("dir/big")).unwrap(), data);
    assert_eq!(fs::read_link(n.path("dir/ln")).unwrap().to_str(), Some("a"));
    assert_eq!(log_of(&n, "dir/a"), log_before);
    // New versions continue after a remount.
    fs::write(n.path("dir/a"), b"v-three").unwrap();
    assert_eq!(log_of(&n, "dir/a").lines().count(), log_before.lines().count() + 1);
}

fn chunk_bytes(n: &Node) -> u64 {
    let out = cli(&n.data, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["chunk_bytes"].as_u64().unwrap()
}

#[test]
fn copying_data_stores_it_once() {
    let n = Node::start();
    let data = random_bytes(32 << 20, 5);
    let src = n.tmp.path().join("src.bin");
    fs::write(&src, &data).unwrap();
    fs::copy(&src, n.path("one.bin")).unwrap();
    let after_first = chunk_bytes(&n);
    assert!(after_first >= data.len() as u64, "the first copy is stored");
    fs::copy(n.path("one.bin"), n.path("two.bin")).unwrap();
    fs::copy(&src, n.path("three.bin")).unwrap();
    fs::write(n.path("one.bin"), &data).unwrap(); // rewrite with identical bytes
    let growth = chunk_bytes(&n) - after_first;
    assert!(
        growth < 64 << 10,
        "three more writes of the same 32 MiB stored {growth} new bytes"
    );
    assert_eq!(fs::read(n.path("two.bin")).unwrap(), data);
}

#[test]
fn file_kept_open_is_committed_after_idle_period() {
    let n = Node::start_with(&["--idle-commit-ms=300"]);
    use std::io::Write;
    let mut f = fs::File::create(n.path("open.log")).unwrap();
    f.write_all(b"line one\n").unwrap();
    // No close: wait for the idle commit to show up in the log (no timing asserted;
    // we poll until the version exists, with a generous cap).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if log_of(&n, "open.log")
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(3) == Some("9"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no idle commit happened");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(f);
}

#[test]
fn unlinked_open_file_stays_deleted() {
    let n = Node::start();
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(n.path("tmp"))
        .unwrap();
    f.write_all(b"abc").unwrap();
    fs::remove_file(n.path("tmp")).unwrap();
    f.write_all(b"def").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "abcdef");
    drop(f);
    assert!(!n.path("tmp").exists());
    assert_eq!(fs::read_dir(&n.mnt).unwrap().count(), 0);
}

#[test]
fn every_record_is_signed_and_verifies_after_unmount() {
    let mut n = Node::start();
    fs::create_dir(n.path("d")).unwrap();
    for i in 0..20 {
        fs::write(n.path(&format!("d/f{i}")), format!("content {i}")).unwrap();
    }
    fs::rename(n.path("d/f0"), n.path("f0")).unwrap();
    n.unmount();
    let store = distribox::store::Store::open(&n.data.join("db")).unwrap();
    let mut all = Vec::new();
    store
        .for_each_version(|author, seq, v| -> Result<(), distribox::store::StoreError> {
            all.push((author, seq, v));
            Ok(())
        })
        .unwrap();
    // d, 20 files (one version each), the rename, and the root.
    assert!(all.len() >= 23, "{} records", all.len());
    for (author, seq, v) in all {
        let bytes = store.get_record(v).unwrap().unwrap();
        let r = distribox::model::SignedRecord::decode(&bytes, true)
            .unwrap_or_else(|e| panic!("record {seq} of {author} does not verify: {e}"));
        assert_eq!(r.id, v);
    }
}

#[test]
fn shell_redirection_records_one_version_per_write() {
    let n = Node::start();
    // bash opens with O_TRUNC, dup2s the fd onto stdout and closes the original
    // before writing: that close must not record an empty version.
    sh_ok(
        &n.mnt,
        "echo 'first draft' > notes.txt; echo 'second draft' > notes.txt",
    );
    let log = log_of(&n, "notes.txt");
    let sizes: Vec<&str> = log
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(
        sizes,
        vec!["12", "13"],
        "v1 is the file as first written, v2 the second write:\n{log}"
    );
    assert_eq!(fs::read(n.path("notes.txt@v1")).unwrap(), b"first draft\n");
    // Emptying a file on purpose is still recorded.
    sh_ok(&n.mnt, ": > notes.txt");
    assert_eq!(fs::metadata(n.path("notes.txt")).unwrap().len(), 0);
    let log = log_of(&n, "notes.txt");
    assert_eq!(log.lines().skip(1).count(), 3, "{log}");
}

fn sizes_of(n: &Node, rel: &str) -> Vec<String> {
    log_of(n, rel)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(3).unwrap().to_string())
        .collect()
}

#[test]
fn a_new_file_is_one_version_made_at_its_first_close() {
    use std::io::Write;
    let n = Node::start();
    let mut f = fs::File::create(n.path("new.txt")).unwrap();
    // Before any close it is there by name, with the size written so far. (Not
    // read here: closing any handle of a file commits its pending writes.)
    f.write_all(b"hello").unwrap();
    assert_eq!(fs::metadata(n.path("new.txt")).unwrap().len(), 5);
    // Its name is taken.
    let err = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(n.path("new.txt"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    assert_eq!(
        fs::create_dir(n.path("new.txt")).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );
    f.write_all(b" world").unwrap();
    drop(f);
    assert_eq!(
        sizes_of(&n, "new.txt"),
        vec!["11"],
        "one version, holding what was written"
    );
    assert_eq!(fs::read(n.path("new.txt@v1")).unwrap(), b"hello world");

    // Created and closed without a write: one empty version.
    fs::File::create(n.path("empty.txt")).unwrap();
    assert_eq!(sizes_of(&n, "empty.txt"), vec!["0"]);

    // Anything else done to a new file before its close (here a rename and a
    // listing) first records it as the empty file it is then; nothing written is lost.
    let mut g = fs::File::create(n.path("moved.tmp")).unwrap();
    g.write_all(b"draft").unwrap();
    let names: Vec<String> = fs::read_dir(&n.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"moved.tmp".to_string()), "{names:?}");
    fs::rename(n.path("moved.tmp"), n.path("moved.txt")).unwrap();
    g.write_all(b" two").unwrap();
    drop(g);
    assert_eq!(fs::read(n.path("moved.txt")).unwrap(), b"draft two");
    let sizes = sizes_of(&n, "moved.txt");
    assert_eq!(sizes.last().map(String::as_str), Some("9"), "{sizes:?}");

    // A new file unlinked while open stays deleted, as any file does.
    let mut h = fs::File::create(n.path("gone.txt")).unwrap();
    h.write_all(b"bye").unwrap();
    fs::remove_file(n.path("gone.txt")).unwrap();
    h.write_all(b" again").unwrap();
    drop(h);
    assert!(!n.path("gone.txt").exists());

    // And everything is still there after a remount.
    let mut n = n;
    n.remount();
    assert_eq!(fs::read(n.path("new.txt")).unwrap(), b"hello world");
    assert_eq!(fs::read(n.path("empty.txt")).unwrap(), b"");
    assert_eq!(fs::read(n.path("moved.txt")).unwrap(), b"draft two");
    assert!(!n.path("gone.txt").exists());
}

#[test]
fn a_new_file_kept_open_without_writes_is_committed_when_idle() {
    let n = Node::start_with(&["--idle-commit-ms=300"]);
    let f = fs::File::create(n.path("held.txt")).unwrap();
    wait_until("the held-open new file gets its first version", 20, || {
        let out = cli(&n.data, &["log", n.path("held.txt").to_str().unwrap()]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 2
    });
    drop(f);
    assert_eq!(
        sizes_of(&n, "held.txt"),
        vec!["0"],
        "closing adds no second empty version"
    );
}

#[test]
fn a_new_files_times_do_not_move_when_its_first_version_is_made() {
    use std::os::unix::fs::MetadataExt;
    let n = Node::start();
    fs::create_dir(n.path("d")).unwrap();
    let before = fs::metadata(n.path("d")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Created and closed without a write: its version is made on the release,
    // which the kernel sends after close() returns.
    fs::File::create(n.path("d/f")).unwrap();
    let (f1, d1) = (fs::metadata(n.path("d/f")).unwrap(), fs::metadata(n.path("d")).unwrap());
    assert!(
        d1.mtime_nsec() != before.mtime_nsec() || d1.mtime() != before.mtime(),
        "the create changed d's mtime"
    );
    wait_until("f's first version", 10, || {
        let out = cli(&n.data, &["log", n.path("d/f").to_str().unwrap()]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 2
    });
    // Past the kernel's 1 s attribute cache, so these come from the node.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (f2, d2) = (fs::metadata(n.path("d/f")).unwrap(), fs::metadata(n.path("d")).unwrap());
    assert_eq!(
        (f1.ctime(), f1.ctime_nsec()),
        (f2.ctime(), f2.ctime_nsec()),
        "f's ctime moved"
    );
    assert_eq!(
        (d1.mtime(), d1.mtime_nsec()),
        (d2.mtime(), d2.mtime_nsec()),
        "d's mtime moved"
    );
    assert_eq!(
        (d1.ctime(), d1.ctime_nsec()),
        (d2.ctime(), d2.ctime_nsec()),
        "d's ctime moved"
    );
}

fn cli_ok(n: &Node, args: &[&str]) -> (String, String) {
    let out = cli(&n.data, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    (stdout, stderr)
}

fn errno_of(n: &Node, rel: &str) -> Option<i32> {
    fs::read(n.path(rel)).err().and_then(|e| e.raw_os_error())
}

/// `distribox deleted --json` of the folder's top, and its paths in order.
fn deleted_listing(n: &Node) -> (serde_json::Value, Vec<String>) {
    let (out, _) = cli_ok(n, &["deleted", n.mnt.to_str().unwrap(), "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let paths = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect();
    (listed, paths)
}

#[test]
fn a_deleted_file_stays_readable_and_can_be_brought_back() {
    let mut n = Node::start();
    fs::write(n.path("notes.txt"), b"first").unwrap(); // v1
    fs::write(n.path("notes.txt"), b"second").unwrap(); // v2
    std::os::unix::fs::symlink("notes.txt", n.path("link")).unwrap();
    fs::create_dir_all(n.path("d/e")).unwrap();
    fs::write(n.path("d/e/deep.txt"), b"deep").unwrap();
    fs::remove_file(n.path("notes.txt")).unwrap(); // v3: deleted
    fs::remove_file(n.path("link")).unwrap();
    fs::remove_dir_all(n.path("d")).unwrap();
    assert!(fs::read_dir(&n.mnt).unwrap().next().is_none(), "nothing is listed");

    // Its versions are still there under its old name, read-only; the plain name
    // and the deletion itself are not.
    assert_eq!(fs::read(n.path("notes.txt@v1")).unwrap(), b"first");
    assert_eq!(fs::read(n.path("notes.txt@v2")).unwrap(), b"second");
    assert_eq!(fs::read_link(n.path("link@v1")).unwrap(), Path::new("notes.txt"));
    assert_eq!(errno_of(&n, "notes.txt"), Some(libc::ENOENT));
    assert_eq!(errno_of(&n, "notes.txt@v3"), Some(libc::ENOENT));
    let err = fs::OpenOptions::new()
        .write(true)
        .open(n.path("notes.txt@v1"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // A file in a deleted directory has no path until the directory is back.
    assert_eq!(errno_of(&n, "d/e/deep.txt@v1"), Some(libc::ENOENT));

    // `distribox deleted` lists what can be brought back, latest deletion first.
    let (listed, paths) = deleted_listing(&n);
    assert_eq!(paths, ["d", "link", "notes.txt"], "{listed}");
    assert_eq!(listed[2]["last"], "v2");
    assert_eq!(listed[2]["size"], 6);
    assert_eq!(listed[0]["kind"], "dir");

    // The log of the path lists them and says the file is deleted.
    let (log, hint) = cli_ok(&n, &["log", n.path("notes.txt").to_str().unwrap()]);
    assert_eq!(log.lines().count(), 4, "header and three versions:\n{log}");
    assert!(log.lines().last().unwrap().contains("deleted"), "{log}");
    assert!(hint.contains("is deleted"), "{hint}");
    let recent = n.log_json("");
    assert!(
        recent.iter().any(|l| l["path"] == "notes.txt" && l["deleted"] == true),
        "{recent:?}"
    );

    // Its plain name brings back its last content; a version name, that version.
    let (msg, _) = cli_ok(&n, &["restore", n.path("notes.txt").to_str().unwrap()]);
    assert!(msg.contains("notes.txt@v2"), "{msg}");
    assert_eq!(fs::read(n.path("notes.txt")).unwrap(), b"second"); // v4
    fs::remove_file(n.path("notes.txt")).unwrap(); // v5
    cli_ok(&n, &["restore", n.path("notes.txt@v1").to_str().unwrap()]);
    assert_eq!(fs::read(n.path("notes.txt")).unwrap(), b"first");
    let log = log_of(&n, "notes.txt");
    assert!(log.lines().last().unwrap().starts_with("v6"), "{log}");
    // A file that is there needs a version named.
    let out = cli(&n.data, &["restore", n.path("notes.txt").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name a version"));

    // A directory comes back with what was deleted with it.
    let (msg, _) = cli_ok(&n, &["restore", n.path("d@v1").to_str().unwrap()]);
    assert!(msg.contains("and 2 entries deleted with it"), "{msg}");
    assert_eq!(fs::read(n.path("d/e/deep.txt")).unwrap(), b"deep");
    // The index of deleted names survives a remount.
    fs::remove_file(n.path("d/e/deep.txt")).unwrap();
    n.remount();
    assert_eq!(fs::read(n.path("d/e/deep.txt@v1")).unwrap(), b"deep");
    assert_eq!(errno_of(&n, "d/e/deep.txt"), Some(libc::ENOENT));
    // A live file is not "brought back": its version is restored as before.
    let (msg, _) = cli_ok(&n, &["restore", n.path("notes.txt@v2").to_str().unwrap()]);
    assert!(msg.contains("restored"), "{msg}");
    assert_eq!(fs::read(n.path("notes.txt")).unwrap(), b"second");

    let (listed, _) = cli_ok(&n, &["deleted", n.mnt.to_str().unwrap()]);
    assert!(listed.contains("link") && !listed.contains("notes.txt"), "{listed}");

    // A new file under the old name: the name means the new file and its history.
    fs::remove_file(n.path("notes.txt")).unwrap();
    fs::write(n.path("notes.txt"), b"new").unwrap();
    assert_eq!(fs::read(n.path("notes.txt@v1")).unwrap(), b"new");
    assert_eq!(errno_of(&n, "notes.txt@v2"), Some(libc::ENOENT));
}

#[test]
fn a_name_means_the_file_deleted_there_last() {
    let n = Node::start();
    // A: deleted at x, brought back, moved to y. B: made at x and deleted there.
    // Then A is deleted at y, later than B at x.
    fs::write(n.path("x"), b"A").unwrap();
    fs::remove_file(n.path("x")).unwrap();
    cli_ok(&n, &["restore", n.path("x").to_str().unwrap()]);
    fs::rename(n.path("x"), n.path("y")).unwrap();
    fs::write(n.path("x"), b"B").unwrap();
    fs::remove_file(n.path("x")).unwrap();
    fs::remove_file(n.path("y")).unwrap();
    assert_eq!(fs::read(n.path("x@v1")).unwrap(), b"B");
    assert_eq!(fs::read(n.path("y@v1")).unwrap(), b"A");
    let (listed, paths) = deleted_listing(&n);
    assert_eq!(paths, ["y", "x"], "{listed}");
    cli_ok(&n, &["restore", n.path("x").to_str().unwrap()]);
    assert_eq!(fs::read(n.path("x")).unwrap(), b"B");
    assert_eq!(errno_of(&n, "y"), Some(libc::ENOENT));
}

#[test]
fn a_directory_comes_back_with_what_was_deleted_with_it_only() {
    let n = Node::start();
    fs::create_dir_all(n.path("proj/src")).unwrap();
    fs::write(n.path("proj/old.txt"), b"removed on purpose").unwrap();
    fs::write(n.path("proj/src/main.rs"), b"fn main() {}").unwrap();
    fs::write(n.path("proj/README"), b"readme").unwrap();
    fs::remove_file(n.path("proj/old.txt")).unwrap();
    // More than `BURST_GAP` (10 s) before the `rm -r`: not part of it.
    std::thread::sleep(std::time::Duration::from_secs(11));
    fs::remove_dir_all(n.path("proj")).unwrap();
    let (msg, _) = cli_ok(&n, &["restore", n.path("proj").to_str().unwrap()]);
    assert!(msg.contains("and 3 entries deleted with it"), "{msg}");
    assert_eq!(fs::read(n.path("proj/src/main.rs")).unwrap(), b"fn main() {}");
    assert_eq!(fs::read(n.path("proj/README")).unwrap(), b"readme");
    assert_eq!(errno_of(&n, "proj/old.txt"), Some(libc::ENOENT));
    assert_eq!(fs::read(n.path("proj/old.txt@v1")).unwrap(), b"removed on purpose");
}

/// `distribox restore` returns once the mount shows what it restored: a read right
/// after it gets the restored content, not the size the kernel cached for the
/// content it replaced. The node's invalidator is slowed down (a test hook), so a
/// restore that returned before it ran would be seen.
#[test]
fn a_restore_returns_once_the_mount_shows_it() {
    let mut n = Node::prepare(&[]);
    n.env.push(("DISTRIBOX_TEST_INVALIDATE_DELAY_MS".into(), "700".into()));
    n.mount();
    fs::write(n.path("notes.txt"), vec![b'a'; 8000]).unwrap();
    // Truncated through a handle: the kernel takes the size from our reply and
    // keeps it for the attribute timeout. (`wc`, not std::fs: Rust asks for the
    // birth time too, which makes the kernel fetch the attributes every time.)
    sh_ok(&n.mnt, "truncate -s 4000 notes.txt");
    assert_eq!(sh_ok(&n.mnt, "wc -c < notes.txt").trim(), "4000");
    cli_ok(&n, &["restore", n.path("notes.txt@v1").to_str().unwrap()]);
    assert_eq!(
        sh_ok(&n.mnt, "wc -c < notes.txt").trim(),
        "8000",
        "notes.txt's size right after `distribox restore notes.txt@v1` returned"
    );
}
