//! Concurrent changes on two real nodes (separate processes, real mounts, libp2p on
//! 127.0.0.1): every case keeps every version, both nodes show the same names, and
//! conflicts are dismissed and resolved everywhere.

mod common;

use common::*;
use std::fs;

/// Lets `on_a` run on A and `on_b` on B while the two cannot talk (B is unmounted,
/// then remounted with --no-net), then reconnects B and waits for one tree.
fn concurrently(a: &Node, b: &mut Node, on_a: impl FnOnce(&Node), on_b: impl FnOnce(&Node)) {
    b.unmount();
    on_a(a);
    let net = std::mem::replace(&mut b.extra, vec!["--no-net".into()]);
    b.mount();
    on_b(b);
    b.unmount();
    b.extra = net;
    b.mount();
    wait_same_tree(&[a, b]);
}

fn pair() -> (Node, Node) {
    let a = Node::member(None);
    let b = Node::member(Some(&a.invite()));
    wait_until("A and B to see each other", PROPAGATE_SECS, || a.online_peers() == 1);
    (a, b)
}

fn listing(n: &Node, rel: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(n.path(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn text(n: &Node, rel: &str) -> String {
    String::from_utf8(fs::read(n.path(rel)).unwrap()).unwrap()
}

/// Every case of DESIGN's merge rules in one partition: both nodes end with the
/// same tree and no content is lost.
#[test]
fn concurrent_changes_keep_every_version() {
    let (a, mut b) = pair();
    for f in ["edit.txt", "del.txt", "ren.txt", "two.txt"] {
        fs::write(a.path(f), format!("{f} base\n")).unwrap();
    }
    for d in ["gone", "p", "q"] {
        fs::create_dir(a.path(d)).unwrap();
    }
    wait_content(&b, "two.txt", b"two.txt base\n");
    wait_until("q on B", PROPAGATE_SECS, || b.path("q").is_dir());

    concurrently(
        &a,
        &mut b,
        |a| {
            fs::write(a.path("edit.txt"), b"A's edit\n").unwrap();
            fs::remove_file(a.path("del.txt")).unwrap();
            fs::rename(a.path("ren.txt"), a.path("renamed.txt")).unwrap();
            fs::rename(a.path("two.txt"), a.path("two-a.txt")).unwrap();
            fs::write(a.path("same.txt"), b"A made me\n").unwrap();
            fs::remove_dir(a.path("gone")).unwrap();
            fs::rename(a.path("p"), a.path("q/p")).unwrap();
        },
        |b| {
            fs::write(b.path("edit.txt"), b"B's edit\n").unwrap();
            fs::write(b.path("del.txt"), b"B's edit of a deleted file\n").unwrap();
            fs::write(b.path("ren.txt"), b"B's edit of a renamed file\n").unwrap();
            fs::rename(b.path("two.txt"), b.path("two-b.txt")).unwrap();
            fs::write(b.path("same.txt"), b"B made me\n").unwrap();
            fs::write(b.path("gone/new.txt"), b"made in a deleted dir\n").unwrap();
            fs::rename(b.path("q"), b.path("p/q")).unwrap();
        },
    );
    let root = listing(&a, "");
    assert_eq!(root, listing(&b, ""), "both nodes list the same names");

    // Edit vs edit: one under the plain name, the other as edit.txt@vN.
    let conflicts: Vec<&String> = root.iter().filter(|n| n.starts_with("edit.txt@v")).collect();
    assert_eq!(conflicts.len(), 1, "{root:?}");
    let mut both = vec![text(&a, "edit.txt"), text(&a, conflicts[0])];
    both.sort();
    assert_eq!(both, ["A's edit\n", "B's edit\n"]);

    // Delete vs edit: the edit survives.
    assert_eq!(text(&a, "del.txt"), "B's edit of a deleted file\n");
    // Rename vs edit: the edit lands in the renamed file; no conflict.
    assert_eq!(text(&a, "renamed.txt"), "B's edit of a renamed file\n");
    assert!(
        !root
            .iter()
            .any(|n| n.starts_with("ren.txt") || n.starts_with("renamed.txt@")),
        "{root:?}"
    );
    // Renamed two ways: one of the two names, content intact.
    let two: Vec<&String> = root.iter().filter(|n| n.starts_with("two")).collect();
    assert_eq!(two.len(), 1, "{root:?}");
    assert_eq!(text(&a, two[0]), "two.txt base\n");
    // Two files created with one name: both listed.
    let same: Vec<String> = root.iter().filter(|n| n.starts_with("same.txt")).cloned().collect();
    assert_eq!(same.len(), 2, "{root:?}");
    let mut contents: Vec<String> = same.iter().map(|n| text(&b, n)).collect();
    contents.sort();
    assert_eq!(contents, ["A made me\n", "B made me\n"]);
    // A directory deleted while a file was created in it: the file survives.
    assert_eq!(text(&a, "gone/new.txt"), "made in a deleted dir\n");
    // Moves that would make a cycle: both directories stay reachable.
    let t = tree(&a.mnt);
    let dirs: Vec<&str> = t.iter().filter(|e| e.1 == "dir").map(|e| e.0.as_str()).collect();
    assert!(
        dirs.iter().any(|d| d.ends_with('p')) && dirs.iter().any(|d| d.ends_with('q')),
        "{dirs:?}"
    );
    assert!(
        dirs.contains(&"q/p") ^ dirs.contains(&"p/q"),
        "exactly one of the two moves applies: {dirs:?}"
    );
}

/// Removing `name@vN` dismisses it on every node; `resolve --keep` picks a version
/// everywhere; writing to the plain name does not resolve; restore brings an old
/// content back as a new version.
#[test]
fn conflicts_are_dismissed_and_resolved_everywhere() {
    let (a, mut b) = pair();
    // `distribox conflicts` on A, as the paths it lists. Asked once before any
    // conflict (the node's conflict index is built then) and after each change
    // below: the index must follow them.
    let conflicts = |n: &Node| -> Vec<String> {
        let out = cli(&n.data, &["conflicts", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(conflicts(&a).is_empty());
    fs::write(a.path("r.txt"), b"base\n").unwrap();
    wait_content(&b, "r.txt", b"base\n");
    let edit = |who: &'static str| move |n: &Node| fs::write(n.path("r.txt"), format!("{who}\n")).unwrap();
    concurrently(&a, &mut b, edit("A1"), edit("B1"));
    let names = listing(&a, "");
    assert_eq!(names.len(), 2, "{names:?}");
    let other = names[1].clone();
    assert!(other.starts_with("r.txt@v"), "{names:?}");
    assert_eq!(conflicts(&a), ["r.txt"]);

    // The versions graph marks the shown content and the conflict.
    let out = cli(&a.data, &["versions", a.path("r.txt").to_str().unwrap()]);
    let graph = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(graph.contains("(shown)") && graph.contains("(conflict)"), "{graph}");
    assert!(graph.contains(&other["r.txt@".len()..]), "{graph}");

    // Writing to the plain name keeps the conflict.
    fs::write(a.path("r.txt"), b"A2\n").unwrap();
    wait_content(&b, "r.txt", b"A2\n");
    assert_eq!(listing(&b, "").len(), 2, "a write must not resolve silently");

    // Dismiss on B: gone on both, the plain content stays.
    let conflict_now = listing(&b, "")[1].clone();
    fs::remove_file(b.path(&conflict_now)).unwrap();
    wait_until("the dismissed version to disappear on A", PROPAGATE_SECS, || {
        listing(&a, "") == ["r.txt"]
    });
    assert_eq!(text(&a, "r.txt"), "A2\n");
    assert_eq!(text(&b, "r.txt"), "A2\n");
    assert!(conflicts(&a).is_empty(), "{:?}", conflicts(&a));
    // ... yet it stays in history.
    assert!(fs::read(a.path(&conflict_now)).is_ok(), "{conflict_now} still readable");

    // Resolve with --keep: the kept content shows everywhere, the rest retires.
    concurrently(&a, &mut b, edit("A3"), edit("B3"));
    let names = listing(&b, "");
    assert_eq!(names.len(), 2, "{names:?}");
    let keep_name = names[1].clone();
    let kept = text(&b, &keep_name);
    let keep = &keep_name["r.txt@".len()..];
    let out = cli(&a.data, &["resolve", a.path("r.txt").to_str().unwrap(), "--keep", keep]);
    assert!(
        out.status.success(),
        "resolve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in [&a, &b] {
        wait_until("the resolution on both nodes", PROPAGATE_SECS, || {
            listing(n, "") == ["r.txt"] && text(n, "r.txt") == kept
        });
    }

    // Restore: an old content comes back as a new version.
    let out = cli(&b.data, &["restore", b.path("r.txt@v1").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_content(&a, "r.txt", b"base\n");
    let out = cli(
        &b.data,
        &["resolve", b.path("r.txt").to_str().unwrap(), "--keep", "v99"],
    );
    assert!(!out.status.success(), "an unknown version is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("v99"));
}
