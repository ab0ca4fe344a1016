//! Members syncing over libp2p: real node processes with real mounts, talking over
//! 127.0.0.1. Waits are bounded polls (a hang fails the test); how fast changes
//! propagate is measured in bench/sync-bench.sh, not asserted here.

mod common;

use common::*;
use std::fs;

/// Three members, each change made on one shows up on the others.
#[test]
fn three_nodes_see_each_others_changes() {
    let a = Node::member(None);
    let token = a.invite();
    assert!(token.starts_with("dbx1-"), "{token}");
    let b = Node::member(Some(&token));
    let c = Node::member(Some(&token));
    wait_until("A to see B and C online", PROPAGATE_SECS, || a.online_peers() == 2);
    // B and C only had A's address; they find each other through A.
    wait_until("B to see A and C online", PROPAGATE_SECS, || b.online_peers() == 2);

    fs::write(a.path("hello.txt"), b"hello from A\n").unwrap();
    wait_content(&b, "hello.txt", b"hello from A\n");
    wait_content(&c, "hello.txt", b"hello from A\n");

    // An edit on B replaces the content everywhere (no conflict: B saw A's version).
    fs::write(b.path("hello.txt"), b"edited on B\n").unwrap();
    wait_content(&a, "hello.txt", b"edited on B\n");
    wait_content(&c, "hello.txt", b"edited on B\n");

    fs::create_dir(c.path("docs")).unwrap();
    fs::write(c.path("docs/notes.md"), b"# notes\n").unwrap();
    wait_content(&a, "docs/notes.md", b"# notes\n");

    fs::rename(a.path("hello.txt"), a.path("docs/hello.txt")).unwrap();
    wait_content(&b, "docs/hello.txt", b"edited on B\n");
    wait_gone(&b, "hello.txt");
    wait_gone(&c, "hello.txt");

    fs::remove_file(b.path("docs/notes.md")).unwrap();
    wait_gone(&a, "docs/notes.md");
    wait_gone(&c, "docs/notes.md");
    // Deleted on another member, it stays readable by its old name; brought back
    // on one member, it is back on all.
    assert_eq!(fs::read(a.path("docs/notes.md@v1")).unwrap(), b"# notes\n");
    let out = cli(&c.data, &["restore", c.path("docs/notes.md@v1").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_content(&a, "docs/notes.md", b"# notes\n");
    wait_content(&b, "docs/notes.md", b"# notes\n");

    // A file of many chunks arrives whole.
    let big = random_bytes(24 << 20, 7);
    fs::write(a.path("big.bin"), &big).unwrap();
    wait_until("big.bin on B and C", PROPAGATE_SECS * 2, || {
        read(&b, "big.bin").map(|d| d.len()) == Some(big.len())
            && read(&c, "big.bin").map(|d| d.len()) == Some(big.len())
    });
    assert!(read(&b, "big.bin").unwrap() == big, "big.bin differs on B");
    assert!(read(&c, "big.bin").unwrap() == big, "big.bin differs on C");

    // A copy moves no data: every chunk is already there.
    let before = b.status()["bytes_received"].as_u64().unwrap();
    fs::copy(a.path("big.bin"), a.path("copy.bin")).unwrap();
    wait_until("copy.bin on B", PROPAGATE_SECS, || {
        read(&b, "copy.bin").map(|d| d.len()) == Some(big.len())
    });
    let after = b.status()["bytes_received"].as_u64().unwrap();
    assert!(
        after - before < 64 * 1024,
        "a copy transferred {} bytes",
        after - before
    );

    wait_same_tree(&[&a, &b, &c]);
}

/// A node that was away catches up completely; concurrent edits of one file keep
/// both versions.
#[test]
fn partitioned_node_catches_up_and_nothing_is_lost() {
    let a = Node::member(None);
    let token = a.invite();
    let b = Node::member(Some(&token));
    let mut c = Node::member(Some(&token));
    wait_until("A to see B and C", PROPAGATE_SECS, || a.online_peers() == 2);
    fs::write(a.path("shared.txt"), b"v1\n").unwrap();
    wait_content(&c, "shared.txt", b"v1\n");
    wait_content(&b, "shared.txt", b"v1\n");

    c.unmount();
    wait_until("A to see C offline", PROPAGATE_SECS, || a.online_peers() == 1);
    for i in 0..20 {
        fs::write(a.path(&format!("from-a-{i}.txt")), format!("a{i}\n")).unwrap();
        fs::write(b.path(&format!("from-b-{i}.txt")), format!("b{i}\n")).unwrap();
    }
    fs::create_dir(b.path("dir")).unwrap();
    fs::write(b.path("dir/deep.txt"), b"deep\n").unwrap();
    c.mount();
    wait_same_tree(&[&a, &b, &c]);
    assert_eq!(read(&c, "dir/deep.txt").as_deref(), Some(&b"deep\n"[..]));

    // Concurrent edits: B is away while A edits, B edits its own copy offline
    // (--no-net), then B comes back: both edits must survive as versions.
    let mut b = b;
    b.unmount();
    fs::write(a.path("shared.txt"), b"A's edit\n").unwrap();
    let net_args = std::mem::take(&mut b.extra);
    b.extra = vec!["--no-net".into()];
    b.mount();
    fs::write(b.path("shared.txt"), b"B's edit\n").unwrap();
    b.unmount();
    b.extra = net_args;
    b.mount();
    wait_same_tree(&[&a, &b, &c]);
    for n in [&a, &b, &c] {
        let log = n.log_json("shared.txt");
        let heads = log.iter().filter(|l| l["head"] == true).count();
        assert_eq!(
            heads,
            2,
            "both edits should be heads of shared.txt on {}: {log:#?}",
            n.mnt.display()
        );
        // v1, A's edit, B's edit.
        assert!(log.len() >= 3, "history of shared.txt on {}: {log:#?}", n.mnt.display());
    }
    let shown = read(&a, "shared.txt").unwrap();
    assert!(shown == b"A's edit\n" || shown == b"B's edit\n", "{shown:?}");
}

/// A node with another group's secret cannot connect and receives nothing.
#[test]
fn wrong_secret_gets_nothing() {
    let a = Node::member(None);
    fs::write(a.path("secret.txt"), b"members only\n").unwrap();
    let addr = a.status()["listen"][0].as_str().unwrap().to_string();
    // Same protocol, own group: under A's group stream key its Noise handshake
    // cannot succeed.
    let mut x = Node::prepare_member();
    x.extra.push(format!("--peer={addr}"));
    x.mount();
    wait_until("A to log the refused connection", PROPAGATE_SECS, || {
        a.log().contains("refused a connection")
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(x.online_peers(), 0, "{:?}", x.peers());
    assert_eq!(a.online_peers(), 0, "{:?}", a.peers());
    assert!(!x.path("secret.txt").exists());
    assert_eq!(fs::read_dir(&x.mnt).unwrap().count(), 0);
    assert_eq!(x.status()["bytes_received"].as_u64(), Some(0));
}

/// The always-on node keeps the group's data while the others come and go.
#[test]
fn serve_node_relays_to_a_member_that_was_away() {
    let mut a = Node::member(None);
    let token_a = a.invite();
    let s = Server::start(&token_a);
    let token_s = s.invite();
    let mut b = Node::member(Some(&token_s));
    wait_until("A to see S and B", PROPAGATE_SECS, || a.online_peers() == 2);
    b.unmount();
    let data = random_bytes(3 << 20, 11);
    fs::write(a.path("report.bin"), &data).unwrap();
    fs::write(a.path("small.txt"), b"written while B was away\n").unwrap();
    wait_until("S to hold A's records and data", PROPAGATE_SECS, || {
        let st = s.status();
        st["versions_pending"] == 0 && st["chunk_bytes"].as_u64().unwrap_or(0) >= data.len() as u64
    });
    a.unmount();
    b.mount();
    wait_content(&b, "small.txt", b"written while B was away\n");
    wait_content(&b, "report.bin", &data);
    assert!(!common::is_mounted(&a.mnt));
}

/// A peer that sends chunk bytes not matching their hash is caught: the bad data
/// never becomes visible, the liar is logged, and the data comes from an honest
/// member once one is reachable.
#[test]
fn lying_peer_is_caught_and_data_comes_from_elsewhere() {
    let mut a = Node::member(None);
    let token = a.invite();
    let data = random_bytes(2 << 20, 5);
    fs::write(a.path("data.bin"), &data).unwrap();
    // L holds the data too, then restarts corrupting every chunk it sends.
    let mut l = Node::prepare_member();
    assert!(cli(&l.data, &["join", &token]).status.success());
    l.mount();
    wait_content(&l, "data.bin", &data);
    l.unmount();
    a.unmount();
    l.env.push(("DISTRIBOX_TEST_CORRUPT_SENT_CHUNKS".into(), "1".into()));
    l.mount();
    let b = Node::member(Some(&l.invite()));
    wait_until("B to log the bad chunk", PROPAGATE_SECS, || {
        b.log().contains("does not match its hash")
    });
    // What B shows is a committed version: the empty file A created first (it
    // needs no chunks), never bytes that failed their hash.
    let shown = read(&b, "data.bin");
    assert!(
        shown.as_deref().map(|d| d.is_empty()).unwrap_or(true),
        "unverified data became visible ({} bytes)",
        shown.map(|d| d.len()).unwrap_or(0)
    );
    a.mount();
    wait_content(&b, "data.bin", &data);
}

/// `peers` shows RTT and sync state; a node that exits is offline at once, one
/// that stops answering (SIGSTOP) within 30 s, and it is back once it answers.
#[test]
fn peers_report_online_state() {
    let a = Node::member(None);
    let mut b = Node::member(Some(&a.invite()));
    wait_until("A to see B online with a round-trip time", PROPAGATE_SECS, || {
        a.peers()
            .as_array()
            .map(|l| l.iter().any(|p| p["online"] == true && p["rtt_ms"].is_number()))
            .unwrap_or(false)
    });
    fs::write(b.path("x.txt"), b"x").unwrap();
    wait_content(&a, "x.txt", b"x");
    wait_until("A and B to report being in sync", PROPAGATE_SECS, || {
        let p = &a.peers()[0];
        p["missing_here"] == 0 && p["missing_there"] == 0
    });
    let human = cli(&a.data, &["peers"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("online"));

    let pid = b.pid.expect("mount reports the node pid") as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_until("A to show the stopped B offline (spec: within 30 s)", 30, || {
        a.online_peers() == 0
    });
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_until("B to come back online", PROPAGATE_SECS, || a.online_peers() == 1);

    b.unmount();
    wait_until("A to show the exited B offline", 5, || a.online_peers() == 0);
}

/// A node killed mid-transfer fetches only what it still lacks after a restart,
/// and the file appears whole.
#[test]
fn transfer_resumes_after_a_crash() {
    let a = Node::member(None);
    let size = 256usize << 20;
    let data = random_bytes(size, 21);
    fs::write(a.path("big.bin"), &data).unwrap();
    let mut b = Node::prepare_member();
    assert!(cli(&b.data, &["join", &a.invite()]).status.success());
    b.mount();
    let mut before = 0;
    wait_until("B to be half-way through the transfer", PROPAGATE_SECS, || {
        let st = b.status();
        before = st["bytes_received"].as_u64().unwrap_or(0);
        assert!(
            st["versions_pending"] != 0 || before < (size as u64) / 2,
            "the transfer finished before the test could interrupt it"
        );
        before >= (size as u64) / 2
    });
    b.kill9();
    b.mount();
    let ok = (0..PROPAGATE_SECS * 10).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        read(&b, "big.bin").as_deref() == Some(&data[..])
    });
    assert!(
        ok,
        "big.bin did not arrive after the restart\nstatus: {}\nlog:\n{}",
        b.status(),
        b.log()
    );
    let after = b.status()["bytes_received"].as_u64().unwrap();
    // Chunks stored before the kill are not fetched again (a few in-flight batches
    // and the unflushed memtable may be).
    assert!(
        after < size as u64 - (size as u64) / 4,
        "after the restart B fetched {after} of {size} bytes (had {before} before)"
    );
}

/// Several changes of one entry reaching a peer in one batch (a rename and back,
/// a create and delete) land as the author's tree shows them.
#[test]
fn a_burst_of_renames_lands_as_written() {
    let a = Node::member(None);
    sh_ok(
        &a.mnt,
        "touch a && mv a b && mv b a && echo x > gone && rm gone && mkdir d && mv a d/a && mv d/a a",
    );
    let b = Node::member(Some(&a.invite()));
    wait_same_tree(&[&a, &b]);
    assert!(b.path("a").exists() && !b.path("b").exists() && !b.path("gone").exists());
    // The name is free again on B: creating it works.
    fs::write(b.path("gone"), b"new").unwrap();
    wait_content(&a, "gone", b"new");
}

/// A file being written on one node while another node's version of it lands:
/// closing it keeps both versions (ours does not silently replace theirs).
#[test]
fn writing_while_a_peer_version_lands_keeps_both() {
    let a = Node::member(None);
    let b = Node::member(Some(&a.invite()));
    fs::write(a.path("f.txt"), b"base\n").unwrap();
    wait_content(&b, "f.txt", b"base\n");
    let before = b.log_json("f.txt").len();
    // The writer is a separate process that never forks: when a process holding
    // the descriptor forks, the copy is closed at exec or exit, and that close is a
    // FUSE flush, which commits (as it must).
    let sig = b.tmp.path().join("close-now");
    let writer = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os,time\nfd=os.open({:?},os.O_WRONLY)\nos.write(fd,b'B was here\\n')\nprint('written',flush=True)\nwhile not os.path.exists({:?}): time.sleep(0.02)\nos.close(fd)\n",
            b.path("f.txt").display().to_string(),
            sig.display().to_string()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut writer = writer;
    let mut out = std::io::BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "written");
    fs::write(a.path("f.txt"), b"A's version\n").unwrap();
    wait_until("A's version to land on B", PROPAGATE_SECS, || {
        b.log_json("f.txt").len() > before
    });
    fs::write(&sig, b"").unwrap();
    assert!(writer.wait().unwrap().success());
    let both = |n: &Node| n.log_json("f.txt").iter().filter(|l| l["head"] == true).count() == 2;
    let ok = (0..PROPAGATE_SECS * 20).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        both(&a) && both(&b)
    });
    assert!(
        ok,
        "both nodes should hold both heads\nA: {:#?}\nB: {:#?}",
        a.log_json("f.txt"),
        b.log_json("f.txt"),
    );
    wait_same_tree(&[&a, &b]);
}

/// A large file moves while it is still being written: a member fetches the chunks
/// its writer has already stored before the file is closed (and shows nothing
/// until the version exists), and no chunk is fetched twice.
#[test]
fn a_file_being_written_streams_to_members_before_its_close() {
    let listen = format!("--listen=/ip4/127.0.0.1/tcp/{}", free_port());
    // No idle commit while the file stays open below.
    let mut a = Node::prepare(&[&listen, "--no-mdns", "--idle-commit-ms=600000"]);
    a.mount();
    let token = a.invite();
    let b = Node::member(Some(&token));
    wait_until("A and B online", PROPAGATE_SECS, || {
        a.online_peers() == 1 && b.online_peers() == 1
    });
    fs::write(a.path("warm-up.txt"), b"up\n").unwrap();
    wait_content(&b, "warm-up.txt", b"up\n");

    let data = random_bytes(64 << 20, 11);
    let src = tempfile::NamedTempFile::new().unwrap();
    fs::write(src.path(), &data).unwrap();
    let before = b.status()["bytes_received"].as_u64().unwrap();
    // The writer keeps the file open in a process of its own (see `OpenWriter`).
    let writer = OpenWriter::start(&a.path("growing.bin"), src.path());
    // At most 32 MiB of a file written from scratch waits unchunked in memory, so
    // at least half of it is chunked and stored on A by now.
    wait_until("B to fetch chunks of the still open file", PROPAGATE_SECS, || {
        b.status()["bytes_received"].as_u64().unwrap() - before >= 16 << 20
    });
    // What B holds came from hints, not from a version (there is none yet).
    assert!(
        !cli(&a.data, &["log", "growing.bin"]).status.success(),
        "A committed the open file early"
    );
    assert!(
        read(&b, "growing.bin").is_none(),
        "B shows a file that has no version yet"
    );
    assert!(writer.close(), "closing growing.bin failed");
    wait_until("growing.bin on B", PROPAGATE_SECS * 2, || {
        read(&b, "growing.bin").map(|d| d.len()) == Some(data.len())
    });
    assert!(read(&b, "growing.bin").unwrap() == data, "growing.bin differs on B");
    let got = b.status()["bytes_received"].as_u64().unwrap() - before;
    assert!(
        got < data.len() as u64 + (2 << 20),
        "B fetched {got} bytes for a file of {} bytes",
        data.len()
    );
}
