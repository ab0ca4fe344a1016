//! Drop-behind for chunk reads: once nobody has read a blob file for a moment, its
//! pages leave the page cache.
//!
//! Why: every chunk read is a `pread` from a RocksDB blob file, and the pages it
//! brings into the page cache are seldom read again. A peer asks for a chunk once,
//! and what a reader of the mount gets is cached by the kernel under the mounted
//! file already (the node's own chunk cache holds the hot chunks). Left there,
//! those pages push out pages the user's other programs need, and every chunk read
//! takes fresh pages from the allocator. On the VMs this project runs on (virtio
//! free page reporting: the host takes back memory the guest has left free) a
//! fresh page costs a host fault on first touch: a node serving a 1 GiB file to a
//! peer spent 2.6 s of CPU in the kernel's page-cache copy alone, and a `pread`
//! loop over a 1 GiB file took 0.67–0.73 s of CPU against 0.08–0.10 s when it
//! dropped what it had read (docs/performance.md, "Drop-behind for chunk reads").
//! Dropped pages go back to the allocator warm and the next reads reuse them.
//!
//! How: chunk storage keys are handed out in write order and a flush writes a
//! memtable's chunks into one blob file in key order, so each blob file holds a run
//! of keys that starts with the key of its first record (roughly: writers that
//! took keys at the same moment can land on both sides of a flush, chunks under
//! 4 KiB live in table files, and a chunk read from the memtable maps to the
//! newest blob file; each such miss drops pages of a file nobody needed, or none).
//! The trimmer thread learns that first key from the file's first 70 bytes
//! (RocksDB's blob log format: a 30-byte header, a 32-byte record header, then the
//! key), maps every key read to
//! the file with the greatest first key at or below it, and advises
//! `POSIX_FADV_DONTNEED` on files that were read but not in the last `IDLE`. A file
//! it cannot parse (not yet written, or chunks keyed by id from before format 3) is
//! left alone. This never decides what a read returns: a wrong guess drops clean
//! pages that are then read from disk again.

use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A file read less recently than this has its pages dropped. Long enough that a
/// reader streaming through the file (and the kernel's read-ahead for it) is done
/// with it; short enough that the pages come back to the allocator while warm.
const IDLE: Duration = Duration::from_millis(300);
/// How often the trimmer looks at what was read, while anything was.
const TICK: Duration = Duration::from_millis(100);
/// Reads noted between two ticks; past it keys are not noted (a missed drop).
const MAX_PENDING: usize = 1 << 16;

/// RocksDB's blob log format (db/blob/blob_log_format.h): header, then records of
/// key size (u64 LE), value size, expiration, two CRCs, key, value.
const BLOB_MAGIC: u32 = 2_395_959;
const BLOB_HEADER: usize = 30;
const RECORD_HEADER: usize = 32;
/// Chunk storage keys are u64 big-endian.
const KEY_LEN: usize = 8;
/// Bytes from the start of a blob file to the end of its first key.
const HEAD_LEN: usize = BLOB_HEADER + RECORD_HEADER + KEY_LEN;

/// The first chunk storage key in a blob file, from its first bytes; None if they
/// are not a blob file with an 8-byte first key (yet).
pub(crate) fn first_key(head: &[u8]) -> Option<u64> {
    let u64_at = |at: usize| Some(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?));
    let magic = u32::from_le_bytes(head.get(..4)?.try_into().ok()?);
    if magic != BLOB_MAGIC || u64_at(BLOB_HEADER)? != KEY_LEN as u64 {
        return None;
    }
    let key = head.get(HEAD_LEN - KEY_LEN..HEAD_LEN)?;
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Notes chunk reads and drops the pages of blob files read a moment ago.
pub(crate) struct DropBehind {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    keys: Vec<u64>,
    stop: bool,
}

impl DropBehind {
    /// Starts the trimmer for the blob files in `dir` (the RocksDB directory).
    pub fn start(dir: &Path) -> std::io::Result<DropBehind> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let mut trimmer = Trimmer::new(dir.to_path_buf());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("drop-behind".into())
            .spawn(move || trimmer.run(&s))?;
        Ok(DropBehind {
            shared,
            thread: Some(thread),
        })
    }

    /// Notes that the chunk stored under `key` was just read.
    pub fn note(&self, key: u64) {
        let mut p = self.shared.pending.lock();
        if p.keys.len() < MAX_PENDING {
            p.keys.push(key);
            if p.keys.len() == 1 {
                self.shared.wake.notify_one();
            }
        }
    }
}

impl Drop for DropBehind {
    fn drop(&mut self) {
        self.shared.pending.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Trimmer {
    dir: PathBuf,
    /// First key → blob file, for every file whose first key is known.
    files: BTreeMap<u64, PathBuf>,
    /// Files looked at that hold no 8-byte keys; never parsed again.
    ignored: HashSet<PathBuf>,
    /// The directory's mtime when `files` was last brought up to date.
    listed: Option<SystemTime>,
    /// Files read since their pages were last dropped, and when last.
    read: HashMap<PathBuf, Instant>,
}

impl Trimmer {
    fn new(dir: PathBuf) -> Trimmer {
        Trimmer {
            dir,
            files: BTreeMap::new(),
            ignored: HashSet::new(),
            listed: None,
            read: HashMap::new(),
        }
    }

    fn run(&mut self, shared: &Shared) {
        loop {
            let keys = {
                let mut p = shared.pending.lock();
                while !p.stop && p.keys.is_empty() && self.read.is_empty() {
                    shared.wake.wait(&mut p);
                }
                if p.stop {
                    return;
                }
                std::mem::take(&mut p.keys)
            };
            self.note(&keys);
            self.drop_idle(Instant::now());
            // Batch the reads of one tick; only `stop` ends the wait early.
            let mut p = shared.pending.lock();
            if !p.stop {
                shared.wake.wait_while_for(&mut p, |p| !p.stop, TICK);
            }
        }
    }

    fn note(&mut self, keys: &[u64]) {
        if keys.is_empty() {
            return;
        }
        self.refresh();
        let now = Instant::now();
        for key in keys {
            if let Some((_, file)) = self.files.range(..=key).next_back() {
                self.read.insert(file.clone(), now);
            }
        }
    }

    /// Brings `files` up to date when the directory changed (files written or
    /// deleted since the last look).
    fn refresh(&mut self) {
        let mtime = std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime == self.listed {
            return;
        }
        let Ok(blobs) = blob_files(&self.dir) else {
            return;
        };
        self.files.retain(|_, f| blobs.contains(f));
        self.ignored.retain(|f| blobs.contains(f));
        self.read.retain(|f, _| blobs.contains(f));
        let known: HashSet<PathBuf> = self.files.values().cloned().collect();
        let mut complete = true;
        for path in blobs {
            if known.contains(&path) || self.ignored.contains(&path) {
                continue;
            }
            match read_head(&path) {
                Some(head) => match first_key(&head) {
                    Some(key) => {
                        self.files.insert(key, path);
                    }
                    None if head.len() >= HEAD_LEN => {
                        self.ignored.insert(path);
                    }
                    None => complete = false, // still being written
                },
                None => complete = false,
            }
        }
        // A file not parsed yet is tried again at the next look.
        self.listed = if complete { mtime } else { None };
    }

    fn drop_idle(&mut self, now: Instant) {
        self.read.retain(|file, last| {
            if now.duration_since(*last) < IDLE {
                return true;
            }
            if let Ok(f) = std::fs::File::open(file) {
                drop_pages(&f, file);
            }
            false
        });
    }
}

/// The blob files in a RocksDB directory.
pub(super) fn blob_files(dir: &Path) -> std::io::Result<HashSet<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "blob"))
        .collect())
}

/// The first bytes of a blob file, leaving none of its pages cached (the read
/// brings in the kernel's read-ahead too).
fn read_head(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(HEAD_LEN);
    let f = std::fs::File::open(path).ok()?;
    let read = (&f).take(HEAD_LEN as u64).read_to_end(&mut head);
    drop_pages(&f, path);
    read.ok()?;
    Some(head)
}

fn drop_pages(f: &std::fs::File, path: &Path) {
    // SAFETY: a plain syscall on a descriptor the caller holds open.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::debug!(file = %path.display(), errno = rc, "cannot drop a blob file's pages");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob_head(key: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend(BLOB_MAGIC.to_le_bytes());
        h.extend(1u32.to_le_bytes()); // version
        h.extend(7u32.to_le_bytes()); // column family
        h.extend([0u8, 0u8]); // compression, ttl
        h.extend([0u8; 16]); // expiration range
        h.extend((key.len() as u64).to_le_bytes());
        h.extend(65536u64.to_le_bytes());
        h.extend([0u8; 16]); // expiration, CRCs
        h.extend(key);
        h
    }

    #[test]
    fn first_keys_come_from_8_byte_keys_of_blob_files_only() {
        assert_eq!(first_key(&blob_head(&42u64.to_be_bytes())), Some(42));
        // Chunks keyed by their 32-byte id (before format 3).
        assert_eq!(first_key(&blob_head(&[1u8; 32])), None);
        // A file cut short, or not a blob file.
        assert_eq!(first_key(&blob_head(&42u64.to_be_bytes())[..60]), None);
        let mut other = blob_head(&42u64.to_be_bytes());
        other[0] ^= 1;
        assert_eq!(first_key(&other), None);
        assert_eq!(first_key(&[]), None);
    }
}
