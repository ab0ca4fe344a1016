//! Test harness: real `distribox` processes, real FUSE mounts, real RocksDB.
//!
//! `Node::start()` runs the built binary with its own temp data dir and mount dir; it
//! is ready when the mount shows in /proc/self/mountinfo. Dropping a `Node` unmounts
//! (distribox unmount, then fusermount3 -u, then a lazy umount), kills the process if
//! it must, and fails the test if the node's log contains `panicked`.

#![allow(dead_code)]

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
    pub pid: Option<u32>,
}

impl Node {
    /// A node with fresh data and mount dirs, mounted.
    pub fn start() -> Node {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Node {
        let tmp = tempfile::Builder::new().prefix("distribox-test").tempdir().unwrap();
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut n = Node {
            tmp,
            data,
            mnt,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            pid: None,
        };
        n.mount();
        n
    }

    pub fn mount(&mut self) {
        let mut args = vec!["mount", self.mnt.to_str().unwrap()];
        let extra: Vec<&str> = self.extra.iter().map(|s| s.as_str()).collect();
        args.extend(extra);
        let out = cli(&self.data, &args);
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
