//! Convergence under random operations and partitions: three real nodes (separate
//! processes, real mounts, libp2p on 127.0.0.1). Each seed runs phases; in each, a
//! random subset of nodes is networked and the rest work offline (`--no-net`), and
//! random operations run on random nodes. After the final heal every node must show
//! the identical tree (names, contents, modes, conflict entries) and every content
//! ever written must still be readable by some name, unless the test itself deleted
//! the file holding it after seeing that content.
//!
//! Garbage collection runs among the operations (`gc --keep-last 2`), so the
//! contents owed are those still shown, plus history not yet purged.
//!
//! DISTRIBOX_SEEDS (default 3) and DISTRIBOX_OPS (operations per seed, default 40)
//! make longer runs; a failure prints its seed, and DISTRIBOX_SEED=N reruns one.

mod common;

use common::*;
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len())])
        }
    }
}

fn hash(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// Files and directories a node shows now (conflict entries excluded: they are
/// read-only and only ever removed, by the dismiss operation).
fn entries(n: &Node) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut files, mut dirs, mut conflicts) = (Vec::new(), vec![String::new()], Vec::new());
    for (rel, kind, _, _) in tree(&n.mnt) {
        let last = rel.rsplit('/').next().unwrap_or(&rel);
        if last.contains("@v") {
            conflicts.push(rel);
        } else if kind == "dir" {
            dirs.push(rel);
        } else if kind == "file" {
            files.push(rel);
        }
    }
    (files, dirs, conflicts)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The contents of every file version of `rel`'s entry, readable as `rel@vN`.
fn history_hashes(n: &Node, rel: &str) -> Vec<String> {
    let out = cli(&n.data, &["versions", n.path(rel).to_str().unwrap(), "--json"]);
    if !out.status.success() {
        return Vec::new(); // gone meanwhile
    }
    let vs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    vs.iter()
        .filter(|v| v["kind"] == "file")
        .filter_map(|v| fs::read(n.path(&format!("{rel}@{}", v["name"].as_str().unwrap()))).ok())
        .map(|b| hash(&b))
        .collect()
}

fn short(hashes: &[String]) -> String {
    let s: Vec<&str> = hashes.iter().map(|h| &h[..12]).collect();
    s.join(" ")
}

struct World {
    nodes: Vec<Node>,
    net_args: Vec<Vec<String>>,
    online: Vec<bool>,
    written: Vec<(String, String)>,
    deleted: HashSet<String>,
    log: Vec<String>,
}

impl World {
    fn set_online(&mut self, i: usize, on: bool) {
        if self.online[i] == on {
            return;
        }
        self.nodes[i].unmount();
        self.nodes[i].extra = if on {
            self.net_args[i].clone()
        } else {
            vec!["--no-net".into()]
        };
        self.nodes[i].mount();
        self.online[i] = on;
    }

    fn op(&mut self, rng: &mut Rng, step: usize) {
        let mut i = rng.below(3);
        let mut kind = rng.below(13);
        if matches!(kind, 4 | 5 | 6 | 12) {
            // Operations that end versions (delete, rename over, gc) run on the node
            // cut off in this phase: the test notes what they end from the history it
            // reads first, and no peer's version may land in between. They are still
            // concurrent with everything the other nodes do.
            match self.online.iter().position(|on| !on) {
                Some(off) => i = off,
                None => kind = 99,
            }
        }
        let n = &self.nodes[i];
        let (files, dirs, conflicts) = entries(n);
        self.log.push(format!("  node {i} shows {files:?} {conflicts:?}"));
        let data = format!("seed-step {step} node {i} {}\n", rng.next()).repeat(1 + rng.below(40));
        let what: String;
        let r: std::io::Result<()> = match kind {
            0 | 1 => {
                let d = rng.pick(&dirs).cloned().unwrap_or_default();
                let p = join(&d, &format!("f{}.txt", rng.below(6)));
                what = format!("write {p}");
                let r = fs::write(n.path(&p), &data);
                if r.is_ok() {
                    self.written
                        .push((hash(data.as_bytes()), format!("step {step}: {what}")));
                }
                r
            }
            2 if !files.is_empty() => {
                let p = rng.pick(&files).unwrap().clone();
                what = format!("append {p}");
                let r = fs::OpenOptions::new()
                    .append(true)
                    .open(n.path(&p))
                    .and_then(|mut f| std::io::Write::write_all(&mut f, data.as_bytes()));
                if let Ok(b) = fs::read(n.path(&p)) {
                    self.written.push((hash(&b), format!("step {step}: {what}")));
                }
                r
            }
            3 if !files.is_empty() => {
                let p = rng.pick(&files).unwrap().clone();
                let len = rng.below(200) as u64;
                what = format!("truncate {p} {len}");
                let r = fs::OpenOptions::new()
                    .write(true)
                    .open(n.path(&p))
                    .and_then(|f| f.set_len(len));
                if let Ok(b) = fs::read(n.path(&p)) {
                    self.written.push((hash(&b), format!("step {step}: {what}")));
                }
                r
            }
            4 | 5 if !files.is_empty() => {
                let p = rng.pick(&files).unwrap().clone();
                let d = rng.pick(&dirs).cloned().unwrap_or_default();
                let to = join(&d, &format!("f{}.txt", rng.below(6)));
                what = format!("rename {p} -> {to}");
                // Over an existing file, the source entry ends: its older versions
                // are no longer reachable by name, and the test saw them go.
                let hist = history_hashes(n, &p);
                self.log.push(format!("  history of {p}: {}", short(&hist)));
                self.deleted.extend(hist);
                fs::rename(n.path(&p), n.path(&to))
            }
            6 if !files.is_empty() => {
                let p = rng.pick(&files).unwrap().clone();
                what = format!("delete {p}");
                let hist = history_hashes(n, &p);
                self.log.push(format!("  history of {p}: {}", short(&hist)));
                self.deleted.extend(hist);
                fs::remove_file(n.path(&p))
            }
            7 => {
                let d = rng.pick(&dirs).cloned().unwrap_or_default();
                let p = join(&d, &format!("d{}", rng.below(6)));
                what = format!("mkdir {p}");
                fs::create_dir(n.path(&p))
            }
            8 if dirs.len() > 1 => {
                let p = rng.pick(&dirs[1..]).unwrap().clone();
                what = format!("rmdir {p}");
                fs::remove_dir(n.path(&p))
            }
            9 if dirs.len() > 1 => {
                let p = rng.pick(&dirs[1..]).unwrap().clone();
                let d = rng.pick(&dirs).cloned().unwrap_or_default();
                let to = join(&d, &format!("d{}", rng.below(6)));
                what = format!("move {p} -> {to}");
                fs::rename(n.path(&p), n.path(&to))
            }
            10 if !files.is_empty() => {
                let p = rng.pick(&files).unwrap().clone();
                let mode = [0o600, 0o640, 0o644, 0o755][rng.below(4)];
                what = format!("chmod {p} {mode:o}");
                fs::set_permissions(n.path(&p), fs::Permissions::from_mode(mode))
            }
            11 if !conflicts.is_empty() => {
                let p = rng.pick(&conflicts).unwrap().clone();
                what = format!("dismiss {p}");
                fs::remove_file(n.path(&p))
            }
            12 => {
                // Retention may drop any version that is not shown: the contents the
                // test saw in history so far are no longer owed.
                what = "gc --keep-last 2 --keep-days 0".into();
                for f in &files {
                    self.deleted.extend(history_hashes(n, f));
                }
                let out = cli(&n.data, &["gc", "--keep-last", "2", "--keep-days", "0"]);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()))
                }
            }
            _ => {
                what = "nothing".into();
                Ok(())
            }
        };
        let outcome = match r {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{}", e.kind()),
        };
        let written = match self.written.last() {
            Some((h, w)) if *w == format!("step {step}: {what}") => format!(" -> {}", &h[..12]),
            _ => String::new(),
        };
        self.log
            .push(format!("step {step}: node {i} {what}: {outcome}{written}"));
    }
}

fn run_seed(seed: u64, ops: usize) {
    let a = Node::member(None);
    let token = a.invite();
    let b = Node::member(Some(&token));
    let c = Node::member(Some(&token));
    wait_until("all three online", PROPAGATE_SECS, || a.online_peers() == 2);
    let nodes = vec![a, b, c];
    let net_args = nodes.iter().map(|n| n.extra.clone()).collect();
    let mut w = World {
        nodes,
        net_args,
        online: vec![true; 3],
        written: Vec::new(),
        deleted: HashSet::new(),
        log: Vec::new(),
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let phases = 4;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for phase in 0..phases {
            let cut = rng.below(4); // 3: everyone online
            for i in 0..3 {
                w.set_online(i, i != cut);
            }
            w.log.push(format!("phase {phase}: node {cut} offline"));
            for k in 0..ops / phases {
                w.op(&mut rng, phase * 1000 + k);
            }
        }
        for i in 0..3 {
            w.set_online(i, true);
        }
        let refs: Vec<&Node> = w.nodes.iter().collect();
        wait_same_tree(&refs);
        // Every content written is readable by some name (or the test deleted it).
        let n = &w.nodes[0];
        let mut readable = BTreeSet::new();
        for (rel, kind, _, h) in tree(&n.mnt) {
            if kind == "file" {
                readable.insert(h);
                if !rel.rsplit('/').next().unwrap_or(&rel).contains("@v") {
                    readable.extend(history_hashes(n, &rel));
                }
            }
        }
        for (h, what) in &w.written {
            assert!(
                readable.contains(h) || w.deleted.contains(h),
                "content {} written by `{what}` is readable by no name (readable: {readable:?})",
                &h[..12]
            );
        }
    }));
    let count = |what: &str| w.log.iter().filter(|l| l.contains(what) && l.contains(": ok")).count();
    eprintln!(
        "seed {seed}: {} writes, {} renames/moves, {} deletes, {} dismissals, {} gc runs succeeded",
        count(" write "),
        count(" rename ") + count(" move "),
        count(" delete "),
        count(" dismiss "),
        count(" gc ")
    );
    if let Err(e) = result {
        eprintln!("convergence failed for seed {seed}; operations:\n{}", w.log.join("\n"));
        for (i, n) in w.nodes.iter().enumerate() {
            eprintln!("node {i}: {} versions pending", n.status()["versions_pending"]);
            for (rel, kind, _, h) in tree(&n.mnt) {
                if kind == "file" && !rel.contains("@v") {
                    let out = cli(&n.data, &["versions", n.path(&rel).to_str().unwrap()]);
                    eprintln!("node {i} {rel} {h}\n{}", String::from_utf8_lossy(&out.stdout));
                }
            }
        }
        let _ = fs::write("/proc/sys/vm/drop_caches", "3");
        let trees: Vec<_> = w.nodes.iter().map(|n| tree(&n.mnt)).collect();
        eprintln!(
            "after dropping kernel caches the trees are equal: {}",
            trees.windows(2).all(|t| t[0] == t[1])
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn random_operations_with_partitions_converge() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let ops = env("DISTRIBOX_OPS", 40) as usize;
    let seeds: Vec<u64> = match std::env::var("DISTRIBOX_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(s) => vec![s],
        None => (1..=env("DISTRIBOX_SEEDS", 3)).collect(),
    };
    for seed in seeds {
        eprintln!("seed {seed}: {ops} operations");
        run_seed(seed, ops);
    }
}
