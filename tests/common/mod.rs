//! Test harness: real `distribox` processes, real FUSE mounts, real RocksDB.
//!
//! `Node::start()` runs the built binary with its own temp data dir and mount dir; it
//! is ready when the mount shows in /proc/self/mountinfo. Dropping a `Node` unmounts
//! (distribox unmount, then fusermount3 -u, then a lazy umount), kills the process if
//! it must, and fails the test if the node's log contains `panicked`.

#![allow(dead_code)]

pub mod http;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_distribox")
}

/// Runs `distribox --data-dir D args...` and returns its output.
pub fn cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run distribox")
}

pub fn is_mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = p.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

pub struct Node {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub mnt: PathBuf,
    pub extra: Vec<String>,
    /// Environment for the node process (test hooks).
    pub env: Vec<(String, String)>,
    /// Open-files limit (soft and hard) for the node process, set with prlimit(1).
    pub open_files: Option<u32>,
    pub pid: Option<u32>,
}

/// A free TCP port on 127.0.0.1 (kept for the node's lifetime, so a remounted node
/// is found again at the address its peers remember).
///
/// Taken below the kernel's ephemeral range: binding port 0 hands out a port from
/// that range, and between this probe and the node's own bind an outgoing
/// connection (a node dialing its peer) could get the same one — CI once failed with
/// "Address already in use" that way. Below the range only listeners compete, and
/// each call in this process moves on to the next candidate.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, span) = (10_000, ephemeral_start.saturating_sub(10_000).max(1000));
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (low + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{}", low + span);
}

impl Node {
    /// A node with fresh data and mount dirs, mounted.
    pub fn start() -> Node {
        Self::start_with(&[])
    }

    /// A mounted single node without a network (`--no-net`) unless `extra` names
    /// a `--listen` address.
    pub fn start_with(extra: &[&str]) -> Node {
        let mut n = Self::prepare(extra);
        n.mount();
        n
    }

    /// Data and mount dirs, not mounted yet (run `join` first, then `mount`).
    pub fn prepare(extra: &[&str]) -> Node {
        let tmp = tempfile::Builder::new().prefix("distribox-test").tempdir().unwrap();
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.iter().any(|e| e.starts_with("--listen")) {
            extra.push("--no-net".into());
        }
        // Every test node serves its GUI/API on a port of its own (the default
        // 127.0.0.1:7468 is for the one node a user runs).
        if !extra.iter().any(|e| e.starts_with("--gui-listen")) {
            extra.push("--gui-listen=127.0.0.1:0".into());
        }
        Node {
            tmp,
            data,
            mnt,
            extra,
            env: Vec::new(),
            open_files: None,
            pid: None,
        }
    }

    /// A networked node on 127.0.0.1 (a free port, no mDNS) that has joined `token`'s
    /// group (a new group when None), mounted.
    pub fn member(token: Option<&str>) -> Node {
        let mut n = Self::prepare_member();
        if let Some(t) = token {
            let out = cli(&n.data, &["join", t]);
            assert!(
                out.status.success(),
                "join failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        n.mount();
        n
    }

    /// A networked node's dirs and arguments (own port on 127.0.0.1, no mDNS).
    pub fn prepare_member() -> Node {
        let listen = format!("--listen=/ip4/127.0.0.1/tcp/{}", free_port());
        Self::prepare(&[&listen, "--no-mdns"])
    }

    /// `distribox status --json`.
    pub fn status(&self) -> serde_json::Value {
        status_of(&self.data)
    }

    /// `127.0.0.1:PORT` of the node's web GUI / REST API.
    pub fn gui_addr(&self) -> String {
        let gui = self.status()["gui"].as_str().expect("node runs a GUI").to_string();
        gui.trim_start_matches("http://").trim_end_matches('/').to_string()
    }

    /// The API key (`distribox gui --key`).
    pub fn api_key(&self) -> String {
        let out = cli(&self.data, &["gui", "--key"]);
        assert!(
            out.status.success(),
            "gui --key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `GET /api/v1/{what}` with the key; panics unless 200.
    pub fn api(&self, what: &str) -> serde_json::Value {
        let key = self.api_key();
        let r = http::request(
            &self.gui_addr(),
            "GET",
            &format!("/api/v1/{what}"),
            &[("X-API-Key", &key)],
            b"",
        );
        assert_eq!(r.status, 200, "GET /api/v1/{what}: {}", r.text());
        r.json()
    }

    /// `distribox log PATH --json` (PATH relative to the mount).
    pub fn log_json(&self, rel: &str) -> Vec<serde_json::Value> {
        let p = self.path(rel);
        let out = cli(&self.data, &["log", p.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "log failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// An invitation to this node's group, naming its addresses.
    pub fn invite(&self) -> String {
        let out = cli(&self.data, &["invite"]);
        assert!(
            out.status.success(),
            "invite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `distribox peers --json` of this node.
    pub fn peers(&self) -> serde_json::Value {
        let out = cli(&self.data, &["peers", "--json"]);
        assert!(
            out.status.success(),
            "peers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn online_peers(&self) -> usize {
        self.peers()
            .as_array()
            .map(|a| a.iter().filter(|p| p["online"] == true).count())
            .unwrap_or(0)
    }

    pub fn mount(&mut self) {
        let mut args = vec!["mount", self.mnt.to_str().unwrap()];
        let extra: Vec<&str> = self.extra.iter().map(|s| s.as_str()).collect();
        args.extend(extra);
        let mut cmd = match self.open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let out = cmd
            .arg("--data-dir")
            .arg(&self.data)
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run distribox");
        assert!(
            out.status.success(),
            "mount failed: {}{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        assert!(
            is_mounted(&self.mnt),
            "mount returned but {} is not mounted",
            self.mnt.display()
        );
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        self.pid = s
            .split("node pid ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.trim().parse().ok());
    }

    /// Clean unmount through the CLI; asserts the node exited.
    pub fn unmount(&mut self) {
        let out = cli(&self.data, &["unmount", self.mnt.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "unmount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!is_mounted(&self.mnt));
        self.wait_exit();
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// Simulates a crash: SIGKILL the node, then clean up the dead mount.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.pid.take() {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while unsafe { libc::kill(pid as i32, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        force_unmount(&self.mnt);
    }

    fn wait_exit(&mut self) {
        if let Some(pid) = self.pid.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while unsafe { libc::kill(pid as i32, 0) } == 0 {
                assert!(Instant::now() < deadline, "node {pid} did not exit after unmount");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("node.log")).unwrap_or_default()
    }

    /// Bytes the data dir occupies (store, WAL, everything).
    pub fn data_bytes(&self) -> u64 {
        dir_bytes(&self.data)
    }
}

pub fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
        }
    }
    total
}

pub fn force_unmount(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = Command::new("fusermount3").arg("-u").arg(mnt).output();
    }
    if is_mounted(mnt) {
        let _ = Command::new("umount").arg("-l").arg(mnt).output();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = cli(&self.data, &["unmount", self.mnt.to_str().unwrap()]);
        }
        force_unmount(&self.mnt);
        if let Some(pid) = self.pid.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while unsafe { libc::kill(pid as i32, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let log = self.log();
        if log.contains("panicked") && !std::thread::panicking() {
            panic!("node log contains a panic:\n{log}");
        }
    }
}

pub fn status_of(data: &Path) -> serde_json::Value {
    let out = cli(data, &["status", "--json"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An always-on member (`distribox serve`) in its own process.
pub struct Server {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    child: std::process::Child,
}

impl Server {
    pub fn start(token: &str) -> Server {
        let tmp = tempfile::Builder::new().prefix("distribox-serve").tempdir().unwrap();
        let data = tmp.path().join("data");
        let out = cli(&data, &["join", token]);
        assert!(
            out.status.success(),
            "join failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
        let child = Command::new(bin())
            .arg("--data-dir")
            .arg(&data)
            .args([
                "serve",
                &format!("--listen=/ip4/127.0.0.1/tcp/{}", free_port()),
                "--no-mdns",
                "--gui-listen=127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Server { tmp, data, child };
        wait_until("the serve node to answer on its control socket", 60, || {
            cli(&s.data, &["status", "--json"]).status.success()
        });
        s
    }

    pub fn status(&self) -> serde_json::Value {
        status_of(&self.data)
    }

    pub fn invite(&self) -> String {
        let out = cli(&self.data, &["invite"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log();
        if log.contains("panicked") && !std::thread::panicking() {
            panic!("serve node log contains a panic:\n{log}");
        }
    }
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after `secs` seconds.
/// (A bound against hangs, not a speed assertion: speed is in the benchmarks.)
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every path under `root` with a fingerprint of what it is: (relative path, kind,
/// mode, BLAKE3 of content or link target): exactly what `ls -R` shows, including
/// conflicting versions listed as `x@v3` (history that is not listed is not walked).
pub fn tree(root: &Path) -> Vec<(String, String, u32, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        // A name listed but gone when read (a peer's change landed meanwhile, or a
        // listing the node cannot resolve) shows as "vanished": a caller comparing
        // trees retries, and a persistent one shows up in the difference.
        let Ok(listing) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = listing.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (Ok(m), Ok(content)) = (
                std::fs::symlink_metadata(&p),
                std::fs::read(&p).or_else(|e| {
                    if p.is_dir() || p.is_symlink() {
                        Ok(Vec::new())
                    } else {
                        Err(e)
                    }
                }),
            ) else {
                out.push((rel, "vanished".into(), 0, String::new()));
                continue;
            };
            let mode = m.permissions().mode() & 0o7777;
            if m.is_dir() {
                out.push((rel, "dir".into(), mode, String::new()));
                stack.push(p);
            } else if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap_or_default();
                out.push((rel, "symlink".into(), mode, t.to_string_lossy().into_owned()));
            } else {
                let h = blake3::hash(&content).to_hex().to_string();
                out.push((rel, "file".into(), mode, h));
            }
        }
    }
    out.sort();
    out
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A memory figure of process `pid` in KiB, as /proc/PID/status gives it
/// (`field` such as "VmHWM:" or "VmRSS:").
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn sh(dir: &Path, script: &str) -> Output {
    Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap()
}

pub fn sh_ok(dir: &Path, script: &str) -> String {
    let o = sh(dir, script);
    assert!(
        o.status.success(),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Time allowed for a change to reach another node before the test fails.
pub const PROPAGATE_SECS: u64 = 60;

pub fn read(n: &Node, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(n.path(rel)).ok()
}

pub fn wait_content(n: &Node, rel: &str, want: &[u8]) {
    wait_until(
        &format!("{rel} on {} to hold the new content", n.mnt.display()),
        PROPAGATE_SECS,
        || read(n, rel).as_deref() == Some(want),
    );
}

pub fn wait_gone(n: &Node, rel: &str) {
    wait_until(
        &format!("{rel} to disappear on {}", n.mnt.display()),
        PROPAGATE_SECS,
        || !n.path(rel).exists(),
    );
}

pub fn wait_same_tree(nodes: &[&Node]) {
    let mut last = Vec::new();
    let ok = (0..(PROPAGATE_SECS * 20)).any(|_| {
        last = nodes.iter().map(|n| tree(&n.mnt)).collect::<Vec<_>>();
        if last.windows(2).all(|w| w[0] == w[1]) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        false
    });
    if !ok {
        let mut diff = String::new();
        for (i, t) in last.iter().enumerate().skip(1) {
            let only_first: Vec<_> = last[0].iter().filter(|e| !t.contains(e)).collect();
            let only_here: Vec<_> = t.iter().filter(|e| !last[0].contains(e)).collect();
            diff.push_str(&format!(
                "node 0 has, node {i} not: {only_first:#?}\nnode {i} has, node 0 not: {only_here:#?}\n"
            ));
        }
        panic!("trees did not converge:\n{diff}");
    }
}

/// A process of its own that writes a file's bytes into `dst` and keeps `dst` open
/// until `close`. A test process must not hold a written file open itself: every
/// `cli` call forks it, and the fork's copy of the descriptor closes at exec, which
/// commits a version.
pub struct OpenWriter(std::process::Child);

impl OpenWriter {
    /// Copies `src` into `dst`; returns once all of it is written (`dst` stays open).
    pub fn start(dst: &Path, src: &Path) -> OpenWriter {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import sys\nf = open(sys.argv[1], 'wb')\nf.write(open(sys.argv[2], 'rb').read())\nprint('written', flush=True)\nsys.stdin.read()\nf.close()",
            ])
            .arg(dst)
            .arg(src)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run python3");
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "written", "the writer failed");
        OpenWriter(child)
    }

    /// Closes `dst`; true if the close succeeded.
    pub fn close(mut self) -> bool {
        drop(self.0.stdin.take());
        self.0.wait().map(|s| s.success()).unwrap_or(false)
    }
}
