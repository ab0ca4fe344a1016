//! Crash safety: SIGKILL the node at random points during a write workload; after
//! remounting, every write whose close() returned reads back intact and every file is
//! one of its committed versions — never a torn mix.

mod common;

use common::*;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FILES: u64 = 6;

fn content(file: u64, gen: u64) -> Vec<u8> {
    // Sizes from tiny to several chunks, so commits span one or many chunk writes.
    // 12 MB exercises background chunking and WAL-less chunk writes.
    let size = [100usize, 70_000, 300_000, 1_000_000, 12_000_000][(gen % 5) as usize];
    let mut v = format!("file {file} gen {gen}\n").into_bytes();
    v.extend(random_bytes(size, file * 1000 + gen));
    v
}

#[test]
fn kill9_during_writes_never_loses_or_tears_a_version() {
    let mut n = Node::start();
    // gen of the last write to each file whose close() returned, and the gen in flight.
    let mut committed: HashMap<u64, u64> = HashMap::new();
    let mut next_gen = 1u64;
    let mut seed = 12345u64;
    for round in 0..20 {
        let stop = Arc::new(AtomicBool::new(false));
        let done: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
        let inflight: Arc<Mutex<HashMap<u64, u64>>> = Arc::new(Mutex::new(HashMap::new()));
        // Write through a directory fd opened on the live mount: once the node dies
        // and the mount is torn down, paths through it fail (ENOTCONN) instead of
        // silently landing in the empty directory underneath.
        let root = fs::File::open(&n.mnt).unwrap();
        use std::os::fd::AsRawFd;
        let mnt = std::path::PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()));
        let start_gen = next_gen;
        let writer = {
            let (stop, done, inflight) = (stop.clone(), done.clone(), inflight.clone());
            std::thread::spawn(move || {
                let mut gen = start_gen;
                while !stop.load(Ordering::Relaxed) {
                    let file = gen % FILES;
                    inflight.lock().unwrap().insert(file, gen);
                    let r = (|| -> std::io::Result<()> {
                        let mut f = fs::File::create(mnt.join(format!("f{file}")))?;
                        f.write_all(&content(file, gen))?;
                        if gen % 3 == 0 {
                            f.sync_all()?;
                        }
                        // close() must succeed too (dropping a File ignores its
                        // error, and the commit happens in close's flush).
                        use std::os::fd::IntoRawFd;
                        if unsafe { libc::close(f.into_raw_fd()) } != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    })();
                    if r.is_err() {
                        break; // the node is gone
                    }
                    done.lock().unwrap().push((file, gen));
                    gen += 1;
                }
                gen
            })
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(100 + seed % 400));
        n.kill9();
        stop.store(true, Ordering::Relaxed);
        next_gen = writer.join().unwrap() + 1;
        drop(root);
        for (file, gen) in done.lock().unwrap().iter() {
            committed.insert(*file, *gen);
        }
        n.mount();
        for file in 0..FILES {
            let path = n.path(&format!("f{file}"));
            let got = fs::read(&path).ok();
            let flying = inflight.lock().unwrap().get(&file).copied();
            let mut allowed: Vec<Vec<u8>> = Vec::new();
            if let Some(g) = committed.get(&file) {
                allowed.push(content(file, *g));
            }
            if let Some(g) = flying {
                if Some(&g) != committed.get(&file) {
                    allowed.push(content(file, g));
                    allowed.push(Vec::new()); // O_TRUNC committed, data not yet
                }
            }
            match got {
                None => assert!(!committed.contains_key(&file), "round {round}: f{file} vanished"),
                Some(bytes) => {
                    if allowed.is_empty() {
                        assert!(bytes.is_empty(), "round {round}: f{file} has data never written");
                    } else {
                        assert!(
                            allowed.contains(&bytes),
                            "round {round}: f{file} is not a committed version ({} bytes, head {:?}; last closed gen {:?}, in flight {:?}, matches gen {:?})",
                            bytes.len(),
                            String::from_utf8_lossy(&bytes[..bytes.len().min(20)]),
                            committed.get(&file),
                            flying,
                            (0..next_gen).find(|g| content(file, *g) == bytes)
                        );
                    }
                    // Whatever is there now is the new baseline.
                    if let Some(g) = flying {
                        if bytes == content(file, g) {
                            committed.insert(file, g);
                        }
                    }
                    if bytes.is_empty() {
                        committed.remove(&file);
                    }
                }
            }
        }
    }
}
