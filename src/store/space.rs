//! Free-space guard: user data (chunks, spill files) may not eat the last few percent
//! of the disk holding the data dir. That reserve is what lets RocksDB keep writing
//! records — a delete that frees space, a commit of data already stored — when the
//! disk is otherwise full; RocksDB itself never sees ENOSPC, because a RocksDB write
//! that fails on a full disk can leave the database read-only until restart.

use parking_lot::Mutex;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a free-space reading is trusted (minus what we wrote since).
const RECHECK: Duration = Duration::from_millis(100);

pub struct SpaceGuard {
    path: CString,
    reserve: u64,
    /// (when read, bytes available then, bytes admitted since).
    last: Mutex<Option<(Instant, u64, u64)>>,
    /// Bytes promised to work under way that statvfs cannot see yet (a
    /// compaction's output, see `hold`).
    held: AtomicU64,
}

/// Space set aside by `SpaceGuard::hold`, given back on drop.
pub struct Held<'a> {
    guard: &'a SpaceGuard,
    bytes: u64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.guard.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn statvfs(path: &CString) -> Option<(u64, u64)> {
    // SAFETY: statvfs writes into a zeroed struct we own; path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

impl SpaceGuard {
    /// Reserve: 5% of the filesystem, at least 2 MiB, at most 256 MiB.
    pub fn new(path: &Path) -> Self {
        let path = CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
        let total = statvfs(&path).map(|t| t.0).unwrap_or(0);
        let reserve = (total / 20).clamp(2 << 20, 256 << 20);
        SpaceGuard {
            path,
            reserve,
            last: Mutex::new(None),
            held: AtomicU64::new(0),
        }
    }

    /// Sets `bytes` aside above the reserve if they fit now beside `unflushed`
    /// (see `admit`): writers are admitted only beyond them until the `Held`
    /// drops.
    pub fn hold(&self, bytes: u64, unflushed: u64) -> Option<Held<'_>> {
        if !self.room_for(bytes + unflushed) {
            return None;
        }
        self.held.fetch_add(bytes, Ordering::Relaxed);
        Some(Held { guard: self, bytes })
    }

    /// True if `bytes` more would still leave the reserve free (a fresh reading;
    /// nothing is admitted).
    pub fn room_for(&self, bytes: u64) -> bool {
        match statvfs(&self.path) {
            Some((_, avail)) => avail >= bytes + self.held.load(Ordering::Relaxed) + self.reserve,
            None => true,
        }
    }

    /// Admits `bytes` of user data if that leaves the reserve free. `unflushed`
    /// says how much data already accepted into memory a flush will write to
    /// disk later (everything in RocksDB's memtables, whether its WAL holds it too
    /// or not): statvfs cannot see it yet. It is asked only along with a fresh
    /// statvfs reading (it costs a property read per column family); what is
    /// admitted is counted twice (it may go to the WAL now and to a blob file at
    /// the flush).
    pub fn admit(&self, bytes: u64, unflushed: impl FnOnce() -> u64) -> bool {
        let mut last = self.last.lock();
        let now = Instant::now();
        let held = self.held.load(Ordering::Relaxed);
        if let Some((at, avail, used)) = *last {
            let used = used + 2 * bytes;
            if now.duration_since(at) < RECHECK && avail > used + held + self.reserve * 2 {
                *last = Some((at, avail, used));
                return true;
            }
        }
        let Some((_, avail)) = statvfs(&self.path) else {
            return true; // cannot tell: let the write itself report
        };
        let used = unflushed() + 2 * bytes;
        if avail < used + held + self.reserve {
            *last = None;
            return false;
        }
        *last = Some((now, avail, used));
        true
    }
}
